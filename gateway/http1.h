/*
 * http1.h - incremental HTTP/1.x response parsing for the upstream client.
 *
 * Pure code, no I/O: the upstream client feeds whatever bytes the socket gave it, in any split,
 * and gets back a parsed head and then decoded body bytes. Built on picohttpparser, which libh2o
 * exports (phr_parse_response, phr_decode_chunked).
 *
 * Framing follows RFC 9112 section 6.3: a response to HEAD, any 1xx, 204 and 304 have no body;
 * Transfer-Encoding with chunked last is chunked (and any Content-Length is ignored, the
 * connection is then not reused); Transfer-Encoding whose last coding is not chunked runs to
 * connection close; otherwise a valid Content-Length gives the length (several differing values
 * are an error); otherwise the body runs to connection close. A body that runs to close never
 * leaves a reusable connection.
 */
#ifndef GW_HTTP1_H
#define GW_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define GW_H1_MAX_HEADERS 100

/* Results shared by the functions below. */
#define GW_H1_INCOMPLETE (-2) /* need more bytes */
#define GW_H1_INVALID (-1)    /* malformed: the connection must be dropped */

typedef enum gw_h1_body_kind {
    GW_H1_BODY_NONE = 0, /* no body at all (HEAD, 1xx, 204, 304, or Content-Length: 0) */
    GW_H1_BODY_LENGTH,   /* exactly content_length bytes */
    GW_H1_BODY_CHUNKED,  /* chunked transfer coding */
    GW_H1_BODY_CLOSE,    /* until the upstream closes the connection */
} gw_h1_body_kind_t;

typedef struct gw_h1_header {
    const char *name; /* points into the caller's buffer; not NUL-terminated */
    size_t name_len;
    const char *value;
    size_t value_len;
} gw_h1_header_t;

typedef struct gw_h1_response {
    int minor_version; /* 0 or 1 (HTTP/1.2..1.9 are read as 1.1, RFC 9110 2.5) */
    int status;
    const char *reason;
    size_t reason_len;
    gw_h1_header_t headers[GW_H1_MAX_HEADERS];
    size_t nheaders;
    gw_h1_body_kind_t body;
    uint64_t content_length; /* valid for GW_H1_BODY_LENGTH; at most INT64_MAX */
    bool has_content_length; /* a valid Content-Length was present; its value is in
                                content_length even when the body is NONE (HEAD, 304) */
    /* The connection may be reused after this response's body ends: HTTP/1.1 unless
     * "Connection: close", HTTP/1.0 only with "Connection: keep-alive"; never for
     * GW_H1_BODY_CLOSE, for Content-Length together with Transfer-Encoding, or for
     * Transfer-Encoding in an HTTP/1.0 response (RFC 9112 6.1). */
    bool keep_alive;
} gw_h1_response_t;

/*
 * Parses a response head from buf[0..len). `prev_len` is the length already offered in an earlier
 * call that returned GW_H1_INCOMPLETE (0 on the first call), as phr_parse_response wants.
 * `head_request` is true when the request was HEAD (its response has no body).
 *
 * Returns the length of the head (> 0) when complete, GW_H1_INCOMPLETE, or GW_H1_INVALID (bad
 * syntax, obs-fold continuation lines, more than GW_H1_MAX_HEADERS headers, status 101 or outside
 * 100-599, a Content-Length that is not 1*DIGIT up to INT64_MAX or a list of identical such
 * values, differing Content-Lengths, an empty Transfer-Encoding, chunked applied twice, a quote
 * in Transfer-Encoding). A Transfer-Encoding that does not end in chunked is not an error: the
 * body is GW_H1_BODY_CLOSE.
 * The caller skips 1xx responses (status 100-199 other than 101) by parsing again after them,
 * with prev_len 0. Pointers in *res point into buf; *res is unspecified unless the head is
 * complete and valid. The caller bounds len (picohttpparser returns the head length as an int).
 */
int gw_h1_parse_response(const char *buf, size_t len, size_t prev_len, bool head_request,
                         gw_h1_response_t *res);

/* Body decoder for one response; embed it, no allocation. Initialise with gw_h1_body_init(). */
typedef struct gw_h1_body {
    gw_h1_body_kind_t kind;
    uint64_t remaining; /* GW_H1_BODY_LENGTH: bytes still expected */
    bool done;
    /* chunked decoder state (struct phr_chunked_decoder, kept opaque here; http1.c
     * static_asserts that the layouts match) */
    struct {
        size_t bytes_left_in_chunk;
        char consume_trailer;
        char _hex_count;
        char _state;
    } chunked;
} gw_h1_body_t;

void gw_h1_body_init(gw_h1_body_t *b, const gw_h1_response_t *res);

/*
 * Decodes body bytes in place. On entry buf[0..*len) holds raw bytes read from the socket after
 * the head; on return buf[0..*len) holds the decoded payload bytes (framing removed).
 * Returns:
 *   0  the body is not finished yet: feed more bytes (for GW_H1_BODY_CLOSE, until EOF);
 *   1  the body is complete; *extra is set to the count of raw bytes that followed the end of the
 *      body (for chunked: after the last chunk, the trailers and the final CRLF, which are
 *      consumed and dropped). On return those bytes are at buf[*len .. *len + *extra). A
 *      non-zero count means the upstream sent more than it framed, and the connection must not
 *      be reused. Once complete, further calls return 1 with *len 0 and every byte as *extra;
 *   GW_H1_INVALID on a chunked syntax error or a chunk size over INT64_MAX; the decoder and
 *      the connection must then be dropped.
 * *extra is 0 unless 1 is returned. For GW_H1_BODY_CLOSE it never returns 1 and leaves buf as
 * it is: the caller calls gw_h1_body_eof() on EOF. For GW_H1_BODY_NONE it returns 1 at once.
 */
int gw_h1_body_decode(gw_h1_body_t *b, char *buf, size_t *len, size_t *extra);

/* Called on EOF from the upstream. Returns 1 when the body ended cleanly (close-delimited, or
 * already done), 0 when the EOF truncated it. */
int gw_h1_body_eof(const gw_h1_body_t *b);

/* Hop-by-hop headers (RFC 9110 7.6.1) that a proxy must not forward, case-insensitive:
 * connection, keep-alive, proxy-connection, te, trailer, transfer-encoding, upgrade,
 * proxy-authenticate, proxy-authorization. Returns true for those. */
bool gw_h1_is_hop_by_hop(const char *name, size_t len);

/* True when `name` appears as a token in a Connection header value (case-insensitive,
 * comma-separated, OWS around tokens): such headers are hop-by-hop too. */
bool gw_h1_connection_lists(const char *conn_value, size_t conn_len, const char *name, size_t len);

#endif
