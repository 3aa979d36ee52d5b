/*
 * http1.c - incremental HTTP/1.x response parsing for the upstream client. See http1.h for the
 * contract.
 *
 * Design. picohttpparser (exported by libh2o 2.2.5, which ships no header for it, hence the
 * declarations below) does the byte-level work: phr_parse_response() tokenises the status line and
 * the header fields, phr_decode_chunked() strips chunked framing in place. This file adds what
 * picohttpparser leaves to its caller, and that is where response smuggling and connection-pool
 * desync bugs live: message framing (RFC 9112 section 6.3), Content-Length validation, the
 * Transfer-Encoding list, and whether the connection may be reused.
 *
 * Framing, decided once per head by decide_framing(), in this order:
 *   status 101 or outside 100..599          -> GW_H1_INVALID (we never ask to upgrade)
 *   obs-fold, bad/conflicting Content-Length,
 *   chunked applied twice, empty or quoted Transfer-Encoding -> GW_H1_INVALID
 *   HEAD request, 1xx, 204, 304             -> NONE (Content-Length / Transfer-Encoding ignored)
 *   Transfer-Encoding, last coding chunked  -> CHUNKED
 *   Transfer-Encoding, last coding other    -> CLOSE (RFC 9112 6.3 item 4, response case)
 *   Content-Length: 0                       -> NONE
 *   Content-Length: N                       -> LENGTH
 *   neither                                 -> CLOSE
 * keep_alive starts from the version and Connection tokens (1.1: unless "close"; 1.0: only with
 * "keep-alive" and no "close"), and is forced false for CLOSE framing, for Content-Length together
 * with Transfer-Encoding (a smuggling signal: the upstream and some other hop may disagree about
 * where this response ends), and for Transfer-Encoding in an HTTP/1.0 response (RFC 9112 6.1:
 * framing is suspect, close after the message).
 *
 * Body decoding invariants (gw_h1_body_t):
 *   - done is set exactly once, when the last payload byte and (for chunked) the trailer section
 *     have been consumed; after that every byte offered is reported as *extra.
 *   - LENGTH never hands out more than `remaining` bytes; remaining + bytes handed out ==
 *     content_length at all times.
 *   - CLOSE is never done before EOF; gw_h1_body_eof() is the only way it ends.
 *   - the chunked decoder runs with consume_trailer set, so trailers and the final CRLF are
 *     consumed (and dropped: a proxy does not forward them) and *extra counts only what follows.
 *   - on return, extra bytes are at buf[*len .. *len + *extra): phr_decode_chunked() moves the
 *     undecoded tail down behind the decoded bytes, and LENGTH decoding moves nothing.
 *
 * Inherited leniency of picohttpparser 2.2.5, accepted knowingly (none of it lets one upstream
 * response be read as two): bare LF ends a line; any bytes between the chunk-size digits and the LF
 * are taken as a chunk extension ("5zz\r\n" is a 5-byte chunk); CRs before a chunk's closing LF are
 * skipped; trailer lines are not validated; a header value may keep trailing whitespace (we trim
 * it where we interpret a value). It is strict where it matters: a status line needs
 * "HTTP/1.d SP ddd SP", header names must be tokens, and CR (not followed by LF), NUL and other
 * controls except HT in a value are errors.
 *
 * Pure code, no allocation, no I/O, no globals: any thread may call it on its own objects.
 */
#include "http1.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* picohttpparser as built into libh2o 2.2.5 (deps/picohttpparser/picohttpparser.h). */
struct phr_header {
    const char *name; /* NULL for an obs-fold continuation line */
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* Returns the head length, -2 when incomplete, -1 on a syntax error or when more than
 * *num_headers (in: capacity, out: count) headers arrive. last_len: bytes seen by the previous
 * call that returned -2, so that only the new tail is scanned for the end of the head. */
int phr_parse_response(const char *buf, size_t len, int *minor_version, int *status,
                       const char **msg, size_t *msg_len, struct phr_header *headers,
                       size_t *num_headers, size_t last_len);

/* Zero-filled before the first call. */
struct phr_chunked_decoder {
    size_t bytes_left_in_chunk;
    char consume_trailer;
    char _hex_count;
    char _state;
};

/* Decodes buf[0..*bufsz) in place; *bufsz becomes the decoded length. Returns -2 when more data
 * is needed (all input consumed), -1 on error, or, at the end of the chunked body, the number of
 * bytes that followed it, which have been moved to buf[*bufsz ..). */
ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);

/* gw_h1_body_t keeps the decoder state without exposing picohttpparser; the two must agree. */
static_assert(sizeof(((gw_h1_body_t *)0)->chunked) == sizeof(struct phr_chunked_decoder),
              "gw_h1_body_t.chunked must match struct phr_chunked_decoder");
#define SAME_MEMBER(m)                                                                             \
    static_assert(offsetof(gw_h1_body_t, chunked.m) - offsetof(gw_h1_body_t, chunked) ==           \
                      offsetof(struct phr_chunked_decoder, m),                                     \
                  "gw_h1_body_t.chunked." #m " misplaced")
SAME_MEMBER(bytes_left_in_chunk);
SAME_MEMBER(consume_trailer);
SAME_MEMBER(_hex_count);
SAME_MEMBER(_state);
#undef SAME_MEMBER

/* Largest body or chunk length accepted: it must fit in int64_t/off_t for the caller. */
#define MAX_LENGTH ((uint64_t)INT64_MAX)

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* ASCII case-insensitive equality of two counted strings (independent of the locale). */
static bool equals_ci(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    return true;
}

#define EQUALS_LIT(s, n, lit) equals_ci((s), (n), (lit), sizeof(lit) - 1)

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static void trim_ows(const char **s, size_t *n)
{
    while (*n > 0 && is_ows(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && is_ows((*s)[*n - 1]))
        (*n)--;
}

/*
 * Iterates a comma-separated field value. *cursor starts at the value and becomes NULL after the
 * last element. Returns false when the list is exhausted; otherwise sets *elem and *elem_len to the
 * next element with OWS trimmed, which may be empty ("a,,b" and "a," have empty elements; callers
 * decide whether that is allowed). Commas inside quoted strings are not special: Connection and
 * Content-Length cannot hold quotes, and add_transfer_encoding() refuses them.
 */
static bool next_element(const char **cursor, const char *end, const char **elem, size_t *elem_len)
{
    const char *s = *cursor;
    if (s == NULL)
        return false;
    const char *comma = memchr(s, ',', (size_t)(end - s));
    const char *e = comma != NULL ? comma : end;
    *cursor = comma != NULL ? comma + 1 : NULL;
    *elem = s;
    *elem_len = (size_t)(e - s);
    trim_ows(elem, elem_len);
    return true;
}

bool gw_h1_connection_lists(const char *conn_value, size_t conn_len, const char *name, size_t len)
{
    const char *cursor = conn_value, *elem;
    size_t elem_len;
    if (conn_value == NULL || len == 0)
        return false;
    while (next_element(&cursor, conn_value + conn_len, &elem, &elem_len))
        if (equals_ci(elem, elem_len, name, len))
            return true;
    return false;
}

bool gw_h1_is_hop_by_hop(const char *name, size_t len)
{
    static const char *const hop[] = {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    };
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (equals_ci(name, len, hop[i], strlen(hop[i])))
            return true;
    return false;
}

/* What the framing decision needs from the header fields. */
typedef struct head_facts {
    bool has_cl;
    uint64_t cl;
    bool has_te;
    size_t te_codings; /* non-empty codings across all Transfer-Encoding fields */
    size_t te_chunked; /* how many of them are "chunked" */
    bool te_chunked_last;
    bool conn_close;
    bool conn_keep_alive;
} head_facts_t;

/* 1*DIGIT, at most MAX_LENGTH. */
static bool parse_length(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (MAX_LENGTH - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* One Content-Length field: a number or a list of identical numbers (RFC 9110 8.6), which must
 * also equal any earlier field's. Returns false on bad syntax or a differing value. */
static bool add_content_length(head_facts_t *f, const char *v, size_t n)
{
    const char *cursor = v, *elem;
    size_t elem_len;
    while (next_element(&cursor, v + n, &elem, &elem_len)) {
        uint64_t cl;
        if (!parse_length(elem, elem_len, &cl))
            return false;
        if (f->has_cl && cl != f->cl)
            return false;
        f->has_cl = true;
        f->cl = cl;
    }
    return true;
}

/* One Transfer-Encoding field; codings accumulate across fields in order. Empty list elements
 * are skipped (RFC 9110 5.6.1); a coding's parameters are ignored. Returns false for an element
 * with parameters but no name, and for any quote: a quoted parameter could hide a comma and so
 * change which coding is last, and no registered transfer coding takes parameters. */
static bool add_transfer_encoding(head_facts_t *f, const char *v, size_t n)
{
    const char *cursor = v, *elem;
    size_t elem_len;
    f->has_te = true;
    if (memchr(v, '"', n) != NULL)
        return false;
    while (next_element(&cursor, v + n, &elem, &elem_len)) {
        if (elem_len == 0)
            continue;
        const char *semi = memchr(elem, ';', elem_len);
        size_t name_len = semi != NULL ? (size_t)(semi - elem) : elem_len;
        trim_ows(&elem, &name_len);
        if (name_len == 0)
            return false;
        f->te_codings++;
        f->te_chunked_last = EQUALS_LIT(elem, name_len, "chunked");
        if (f->te_chunked_last)
            f->te_chunked++;
    }
    return true;
}

static void add_connection(head_facts_t *f, const char *v, size_t n)
{
    f->conn_close |= gw_h1_connection_lists(v, n, "close", 5);
    f->conn_keep_alive |= gw_h1_connection_lists(v, n, "keep-alive", 10);
}

/* Copies the headers into res and collects the framing facts. Returns false for obs-fold and
 * for malformed framing fields. */
static bool scan_headers(const struct phr_header *h, size_t n, gw_h1_response_t *res,
                         head_facts_t *f)
{
    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < n; i++) {
        if (h[i].name == NULL)
            return false; /* obs-fold (RFC 9112 5.2): reject rather than guess */
        res->headers[i] = (gw_h1_header_t){h[i].name, h[i].name_len, h[i].value, h[i].value_len};
        const char *v = h[i].value;
        size_t vlen = h[i].value_len;
        trim_ows(&v, &vlen);
        if (EQUALS_LIT(h[i].name, h[i].name_len, "content-length")) {
            if (!add_content_length(f, v, vlen))
                return false;
        } else if (EQUALS_LIT(h[i].name, h[i].name_len, "transfer-encoding")) {
            if (!add_transfer_encoding(f, v, vlen))
                return false;
        } else if (EQUALS_LIT(h[i].name, h[i].name_len, "connection")) {
            add_connection(f, v, vlen);
        }
    }
    res->nheaders = n;
    return true;
}

static bool status_has_no_body(int status)
{
    return (status >= 100 && status <= 199) || status == 204 || status == 304;
}

/* Sets res->body, res->content_length and res->keep_alive (see the table at the top). */
static int decide_framing(const head_facts_t *f, bool head_request, gw_h1_response_t *res)
{
    if (f->has_te && (f->te_codings == 0 || f->te_chunked > 1))
        return GW_H1_INVALID;
    if (res->minor_version >= 1)
        res->keep_alive = !f->conn_close;
    else
        res->keep_alive = f->conn_keep_alive && !f->conn_close;
    if (f->has_te && (f->has_cl || res->minor_version == 0))
        res->keep_alive = false;
    res->content_length = f->has_cl ? f->cl : 0;
    res->has_content_length = f->has_cl;

    if (head_request || status_has_no_body(res->status)) {
        res->body = GW_H1_BODY_NONE;
    } else if (f->has_te) {
        res->body = f->te_chunked_last ? GW_H1_BODY_CHUNKED : GW_H1_BODY_CLOSE;
    } else if (f->has_cl) {
        res->body = f->cl == 0 ? GW_H1_BODY_NONE : GW_H1_BODY_LENGTH;
    } else {
        res->body = GW_H1_BODY_CLOSE;
    }
    if (res->body == GW_H1_BODY_CLOSE)
        res->keep_alive = false;
    return 0;
}

int gw_h1_parse_response(const char *buf, size_t len, size_t prev_len, bool head_request,
                         gw_h1_response_t *res)
{
    struct phr_header h[GW_H1_MAX_HEADERS];
    size_t n = GW_H1_MAX_HEADERS;
    int minor, status;
    const char *msg;
    size_t msg_len;
    head_facts_t facts;

    /* picohttpparser starts its end-of-head scan at prev_len - 3 without a bound check. */
    if (prev_len > len)
        prev_len = 0;
    int r = phr_parse_response(buf, len, &minor, &status, &msg, &msg_len, h, &n, prev_len);
    if (r == -2)
        return GW_H1_INCOMPLETE;
    if (r < 0)
        return GW_H1_INVALID;

    /* RFC 9110 2.5: a higher 1.x minor version is processed as the highest we implement. */
    res->minor_version = minor > 1 ? 1 : minor;
    res->status = status;
    res->reason = msg;
    res->reason_len = msg_len;
    if (status < 100 || status > 599 || status == 101)
        return GW_H1_INVALID;
    if (!scan_headers(h, n, res, &facts))
        return GW_H1_INVALID;
    if (decide_framing(&facts, head_request, res) != 0)
        return GW_H1_INVALID;
    return r;
}

void gw_h1_body_init(gw_h1_body_t *b, const gw_h1_response_t *res)
{
    memset(b, 0, sizeof(*b));
    b->kind = res->body;
    b->remaining = res->body == GW_H1_BODY_LENGTH ? res->content_length : 0;
    b->done = res->body == GW_H1_BODY_NONE ||
              (res->body == GW_H1_BODY_LENGTH && res->content_length == 0);
    b->chunked.consume_trailer = 1;
}

static int decode_length(gw_h1_body_t *b, size_t *len, size_t *extra)
{
    if ((uint64_t)*len >= b->remaining) {
        *extra = *len - (size_t)b->remaining;
        *len = (size_t)b->remaining;
        b->remaining = 0;
        b->done = true;
        return 1;
    }
    b->remaining -= *len;
    return 0;
}

static int decode_chunked(gw_h1_body_t *b, char *buf, size_t *len, size_t *extra)
{
    struct phr_chunked_decoder d;
    memcpy(&d, &b->chunked, sizeof(d));
    ssize_t r = phr_decode_chunked(&d, buf, len);
    memcpy(&b->chunked, &d, sizeof(d));
    /* The decoder accepts up to 16 hex digits; hold chunk sizes to the Content-Length limit.
     * bytes_left_in_chunk only grows while digits arrive, so a partial size over it is final. */
    if (r == -1 || d.bytes_left_in_chunk > MAX_LENGTH)
        return GW_H1_INVALID;
    if (r == -2)
        return 0;
    *extra = (size_t)r;
    b->done = true;
    return 1;
}

int gw_h1_body_decode(gw_h1_body_t *b, char *buf, size_t *len, size_t *extra)
{
    *extra = 0;
    if (b->done) {
        *extra = *len;
        *len = 0;
        return 1;
    }
    switch (b->kind) {
    case GW_H1_BODY_LENGTH:
        return decode_length(b, len, extra);
    case GW_H1_BODY_CHUNKED:
        return decode_chunked(b, buf, len, extra);
    case GW_H1_BODY_CLOSE:
        return 0;
    case GW_H1_BODY_NONE:
        break;
    }
    assert(!"gw_h1_body_t corrupt: NONE is always done");
    return GW_H1_INVALID;
}

int gw_h1_body_eof(const gw_h1_body_t *b)
{
    return b->kind == GW_H1_BODY_CLOSE || b->done ? 1 : 0;
}
