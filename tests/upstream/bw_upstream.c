/*
 * bw_upstream: the test upstream HTTP/1.1 server with knobs.
 *
 * Integration tests, the chaos suite, the benchmarks and the quick-start demo need an upstream
 * that can be told, per request, to misbehave: answer slowly, stream a huge body, cut the body
 * short, reset, stall, drop framing, send 1xx heads, echo. Every behaviour is a query parameter
 * ("knob") on any path, so a test makes a bad upstream with a URL instead of a bespoke server.
 * tests/upstream/README.md is the reference for the CLI and every knob.
 *
 * Why it is built this way
 * - One libuv loop per thread and no locks: a connection lives and dies on the loop that accepted
 *   it. With --threads N each loop owns an SO_REUSEPORT listening socket (libuv 1.44 has no flag
 *   for it, so the sockets are made by hand) and the kernel spreads connections. The only state
 *   shared between loops is the atomic counters served at /_stats.
 * - Requests are parsed by picohttpparser (exported by libh2o; prototypes below) straight out of a
 *   per-connection input buffer. Request bodies are consumed as they arrive and only echo=1 keeps
 *   one, so uploads cost no memory.
 * - Responses are written one piece at a time, the next piece only when the last is fully in the
 *   kernel, so a slow reader slows us instead of growing a queue. size= bodies come from a
 *   read-only 64 KiB pattern block owned by the loop: a 1 GB body costs time, not memory. The
 *   happy path (a small JSON answer) allocates nothing once a connection's buffers have grown to
 *   fit, and costs three syscalls: read, writev (uv_try_write) and a share of epoll_wait.
 * - A connection answers one request at a time, in order. Pipelined requests wait in the input
 *   buffer; when it is full we stop reading until the response in flight is done. conn_process
 *   is the one loop that parses requests and finishes responses, so a deep pipeline never
 *   recurses.
 *
 * Connection states (struct conn.state); the function named makes the transition.
 *
 *   ST_HEAD  --parse_head: head complete, body expected-----------------------> ST_BODY
 *   ST_HEAD  --parse_head: no body; ST_BODY --read_body: body complete--> response_start:
 *                delay= given: ST_DELAY --on_timer--> response_send
 *                otherwise:    response_send (reset=1: RST, nothing sent)
 *   response_send, ST_PAUSE --write_next: the next piece goes out:
 *                the socket took it all and more body is due  -> the next piece, at once
 *                the socket took it all, body_delay= given    -> ST_PAUSE (timer: write_next)
 *                the socket took it all, nothing more is due  -> ST_DONE
 *                the socket took part of it                   -> ST_WRITE (on_write continues)
 *   ST_DONE  --conn_process -> response_done:
 *                keep-alive                                   -> ST_HEAD (next pipelined request)
 *                close (keepalive=0, close_after=, nolength=, HTTP/1.0, our errors) -> ST_LINGER
 *                reset_after=                                 -> ST_DRAIN
 *                stall_after=                                 -> ST_STALLED
 *   ST_LINGER: FIN sent (uv_shutdown); input discarded; closed on peer EOF or after LINGER_MS,
 *              so unread input never turns our FIN into an RST.
 *   ST_DRAIN:  waits (1 ms polls, at most DRAIN_MS) until the kernel send queue is empty, then
 *              closes with SO_LINGER 0 (RST): reset_after=N delivers exactly N bytes first.
 *   ST_STALLED: sends nothing more; input discarded; closed on peer EOF.
 *   Any state --read error, write error, worker stop--> conn_close.
 *   ST_DONE is transient: it never survives a return to the loop.
 *
 * Invariants
 * - At most one response write (conn.write_req) is in flight; struct response is advanced before
 *   the write is issued. The 100-continue and interim 1xx writes use their own requests and
 *   static bytes, so they never race with a buffer we reuse; uv_try_write refuses (EAGAIN) while
 *   any uv_write is queued, so they keep their place before the response.
 * - in.data[in_off, in.len) holds received, unconsumed bytes. In ST_HEAD and ST_BODY they are
 *   consumed before returning to the loop unless incomplete; in the discarding states (LINGER,
 *   DRAIN, STALLED) they are dropped.
 * - Peer EOF is a half-close: requests already received are answered, then the connection closes.
 *   EOF with an incomplete request, or while stalled or lingering, closes at once.
 * - A conn's memory is freed only in the close callback of its last handle (tcp and timer).
 * - Every buffer has a maximum: head 64 KiB (431), body 64 MiB (413), 10000 connections (more are
 *   accepted and closed at once).
 *
 * Who calls it: tests, chaos scenarios, bench scripts and the quick-start run command start the
 * binary and read "PORT <n>" from its stdout. It has no library interface.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <linux/sockios.h>
#include <unistd.h>

#include <uv.h>

/* picohttpparser, exported by libh2o without a header. */
struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};
int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len,
                      const char **path, size_t *path_len, int *minor_version,
                      struct phr_header *headers, size_t *num_headers, size_t last_len);
struct phr_chunked_decoder {
    size_t bytes_left_in_chunk;
    char consume_trailer;
    char _hex_count;
    char _state;
};
ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);

#define KIB 1024
#define HEAD_MAX (64 * KIB)          /* request head limit: 431 beyond */
#define BODY_MAX (64 * KIB * KIB)    /* request body limit: 413 beyond */
#define CONN_MAX 10000               /* open connections per process */
#define HEADERS_MAX 100              /* request header fields: 400 beyond */
#define EXTRA_HEADERS_MAX 32         /* header= knobs per request */
#define PIECE_MAX (64 * KIB)         /* body bytes per write */
#define CHUNK_DEFAULT 16384          /* chunked=1 chunk size unless chunk= */
#define CHUNKS_PER_WRITE 16          /* chunked: chunks batched into one write */
#define SYNC_PIECES 16               /* pieces written synchronously before yielding */
#define READ_MIN (4 * KIB)           /* smallest read buffer handed to libuv */
#define OUT_MAX (256 * KIB)          /* response head */
#define SCRATCH_MAX (HEAD_MAX + 256) /* decoded knob values; derived from the head */
#define BODY_KEEP (256 * KIB)        /* larger body buffers are freed after each response */
#define LINGER_MS 5000
#define DRAIN_MS 5000
#define DELAY_MAX_MS (24ULL * 3600 * 1000)
#define THREADS_MAX 64
#define BACKLOG 4096

static const char PATTERN[] = "0123456789abcdef";
#define PATTERN_LEN 16

static const char CONTINUE_100[] = "HTTP/1.1 100 Continue\r\n\r\n";
static const char INTERIM[] = "HTTP/1.1 100 Continue\r\n\r\n"
                              "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n";

/* ---- growable buffers with a maximum ---------------------------------------------------- */

struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
    int err; /* sticky: the first failure of buf_append/buf_appendf, 0 if none */
};

static void buf_init(struct buf *b, size_t max)
{
    memset(b, 0, sizeof(*b));
    b->max = max;
}

static void buf_dispose(struct buf *b)
{
    free(b->data);
    buf_init(b, b->max);
}

static void buf_clear(struct buf *b)
{
    b->len = 0;
    b->err = 0;
}

/* Makes room for `extra` more bytes. Returns 0, -E2BIG past the maximum, or -ENOMEM. */
static int buf_reserve(struct buf *b, size_t extra)
{
    if (extra <= b->cap - b->len)
        return 0;
    if (extra > b->max - b->len)
        return -E2BIG;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap - b->len < extra)
        cap *= 2;
    if (cap > b->max)
        cap = b->max;
    char *p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

static void buf_append(struct buf *b, const void *p, size_t n)
{
    if (b->err || n == 0)
        return;
    int r = buf_reserve(b, n);
    if (r) {
        b->err = r;
        return;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* String literals only: "" s refuses anything else at compile time. */
#define buf_lit(b, s) buf_append((b), "" s, sizeof(s) - 1)

__attribute__((format(printf, 2, 3))) static void buf_appendf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    if (b->err || (b->err = buf_reserve(b, 64)))
        return;
    va_start(ap, fmt);
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->err = -EINVAL;
        return;
    }
    if ((size_t)n >= b->cap - b->len) {
        if ((b->err = buf_reserve(b, (size_t)n + 1)))
            return;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

/* ---- small string helpers ---------------------------------------------------------------- */

static bool str_is(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

static bool str_case_is(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(s, lit, n) == 0;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* Strict decimal: digits only, at most `max`. Returns 0, -EINVAL or -ERANGE. */
static int parse_u64(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        unsigned d = (unsigned)(s[i] - '0');
        if (d > max || v > (max - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int parse_bool(const char *s, size_t n, bool *out)
{
    if (str_is(s, n, "1") || str_is(s, n, "true") || str_is(s, n, "yes") || str_is(s, n, "on")) {
        *out = true;
        return 0;
    }
    if (str_is(s, n, "0") || str_is(s, n, "false") || str_is(s, n, "no") || str_is(s, n, "off")) {
        *out = false;
        return 0;
    }
    return -EINVAL;
}

static bool is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* A field value or reason phrase we may write: no control bytes except HTAB. */
static bool is_field_text(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

static void trim_ows(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

/* Whether a comma-separated header value (Connection) contains `token`, case-insensitively. */
static bool has_token(const char *s, size_t n, const char *token)
{
    while (n > 0) {
        const char *comma = memchr(s, ',', n);
        size_t len = comma ? (size_t)(comma - s) : n;
        const char *t = s;
        size_t tlen = len;
        trim_ows(&t, &tlen);
        if (str_case_is(t, tlen, token))
            return true;
        if (!comma)
            break;
        s += len + 1;
        n -= len + 1;
    }
    return false;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes `src` into `dst` (room for n bytes), '+' as space. Bad escapes stay literal. */
static size_t url_decode(char *dst, const char *src, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%' && i + 2 < n) {
            int hi = hex_value(src[i + 1]), lo = hex_value(src[i + 2]);
            if (hi >= 0 && lo >= 0) {
                c = (char)(hi << 4 | lo);
                i += 2;
            }
        }
        dst[o++] = c;
    }
    return o;
}

/* ---- JSON -------------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (overlongs, surrogates and > U+10FFFF rejected), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    size_t len;
    uint32_t cp, min;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2, cp = p[0] & 0x1f, min = 0x80;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3, cp = p[0] & 0x0f, min = 0x800;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4, cp = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static bool json_plain(unsigned char c, bool lower)
{
    return c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && !(lower && c >= 'A' && c <= 'Z');
}

/*
 * Appends s as the inside of a JSON string, lower-casing ASCII when `lower`. Valid UTF-8 passes
 * through; any other byte is written as \u00XX (read as Latin-1), so the output is always valid
 * JSON whatever a client sent.
 */
static void json_escape(struct buf *b, const char *s, size_t n, bool lower)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t start = i;
        while (i < n && json_plain(p[i], lower))
            i++;
        buf_append(b, s + start, i - start);
        if (i == n)
            break;
        unsigned char c = p[i];
        size_t ulen;
        if (lower && c >= 'A' && c <= 'Z') {
            char l = (char)(c - 'A' + 'a');
            buf_append(b, &l, 1);
        } else if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            buf_append(b, e, 2);
        } else if (c == '\n') {
            buf_lit(b, "\\n");
        } else if (c == '\r') {
            buf_lit(b, "\\r");
        } else if (c == '\t') {
            buf_lit(b, "\\t");
        } else if (c >= 0x80 && (ulen = utf8_len(p + i, n - i)) > 0) {
            buf_append(b, s + i, ulen);
            i += ulen;
            continue;
        } else {
            buf_appendf(b, "\\u%04x", c);
        }
        i++;
    }
}

static void json_string(struct buf *b, const char *s, size_t n)
{
    buf_lit(b, "\"");
    json_escape(b, s, n, false);
    buf_lit(b, "\"");
}

/* ---- types ------------------------------------------------------------------------------- */

enum end_action {
    END_KEEP = 0, /* the whole response, then keep-alive or close as negotiated */
    END_CLOSE,    /* close_after=: FIN after N body bytes */
    END_RESET,    /* reset_after=: RST after N body bytes */
    END_STALL,    /* stall_after=: nothing more after N body bytes */
};

struct extra_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* A request's knobs; strings point into conn.scratch. */
struct knobs {
    unsigned status;
    bool status_set;
    const char *reason; /* NULL: the standard phrase */
    size_t reason_len;
    uint64_t delay_ms;
    uint64_t body_delay_ms;
    bool has_size;
    uint64_t size;
    bool chunked;
    uint64_t chunk; /* 0: default piece size */
    enum end_action cut_action;
    uint64_t cut_after;
    bool reset;
    bool nolength;
    bool keepalive;
    bool interim;
    bool echo;
    size_t nheaders;
    struct extra_header headers[EXTRA_HEADERS_MAX];
};

enum body_kind {
    BODY_JSON = 0, /* the request, described */
    BODY_ECHO,     /* the request body */
    BODY_PATTERN,  /* size= bytes of PATTERN */
    BODY_HEALTH,   /* /health */
    BODY_STATS,    /* /_stats */
    BODY_ERROR,    /* our own 4xx/5xx */
};

struct request {
    int minor_version;
    bool is_head;
    bool keepalive; /* what the client asked for */
    bool chunked;
    uint64_t content_length;
    uint64_t body_len;
    uint32_t body_sum;
    enum body_kind kind;
    const char *content_type; /* in scratch; echo only */
    size_t content_type_len;
    /* Room past the declared struct in case the library's decoder is a newer, larger one. */
    union {
        struct phr_chunked_decoder d;
        uint64_t pad[8];
    } dec;
};

enum framing {
    FRAME_NONE = 0, /* 1xx/204/304: no body, no length */
    FRAME_LENGTH,
    FRAME_CHUNKED,
    FRAME_CLOSE, /* no length: the body ends when we close */
};

struct response {
    unsigned status;
    enum framing framing;
    enum end_action end;
    bool close;        /* END_KEEP: close instead of keep-alive */
    bool head_sent;    /* the head is in the first write */
    bool from_pattern; /* body bytes come from worker.pattern, else conn.body */
    bool chunked_body; /* body bytes go out chunk-encoded */
    bool terminated;   /* chunked: last-chunk written */
    uint64_t total;    /* body length a GET gets */
    uint64_t limit;    /* body bytes to send: 0 when bodiless, else total or the cut */
    uint64_t sent;
    uint64_t chunk_left; /* payload left in the current chunk */
    uint64_t piece;      /* chunk size, or payload per write */
};

enum conn_state {
    ST_HEAD = 0,
    ST_BODY,
    ST_DELAY,
    ST_WRITE,
    ST_PAUSE,
    ST_DONE,
    ST_LINGER,
    ST_DRAIN,
    ST_STALLED,
};

struct worker;

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* delay=, body_delay=, drain polls, linger; one use at a time */
    uv_write_t write_req;
    uv_write_t continue_req;
    uv_write_t interim_req;
    uv_shutdown_t shutdown_req;
    struct worker *w;
    struct conn *prev, *next;
    enum conn_state state;
    int open_handles;
    bool reading;
    bool peer_eof;
    bool closing;
    uint64_t drain_start;
    struct buf in; /* received bytes; [in_off, in.len) unconsumed */
    size_t in_off;
    struct buf out;     /* response head */
    struct buf body;    /* response body: JSON, echo, text */
    struct buf scratch; /* decoded knob values, echo Content-Type */
    struct knobs knobs;
    struct request req;
    struct response res;
    uv_buf_t bufs[2 + 2 * CHUNKS_PER_WRITE];
    char chunk_hdr[CHUNKS_PER_WRITE][24];
};

struct server;

struct worker {
    struct server *srv;
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;
    uv_thread_t thread;
    bool listening;
    bool stopping;
    struct conn *conns;
    bool logged;
    uint64_t last_log_ms;
    unsigned suppressed;
    char pattern[PIECE_MAX + PATTERN_LEN];
};

struct server {
    const char *name;
    size_t name_len;
    const char *listen;
    const char *unhealthy_file;
    unsigned nthreads;
    bool blackhole;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int port;
    int blackhole_fd;
    struct worker *workers;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    _Atomic uint64_t requests;
    _Atomic uint64_t health_checks;
    _Atomic uint64_t connections;
    _Atomic uint64_t active;
};

static void conn_close(struct conn *c, bool reset);
static void conn_process(struct conn *c);
static void response_start(struct conn *c);
static void response_send(struct conn *c);
static bool response_done(struct conn *c);
static void on_timer(uv_timer_t *t);

/* Logs to stderr, at most once a second per loop, counting what it drops. */
__attribute__((format(printf, 2, 3))) static void log_limited(struct worker *w, const char *fmt,
                                                              ...)
{
    uint64_t now = uv_now(&w->loop);
    if (w->logged && now - w->last_log_ms < 1000) {
        w->suppressed++;
        return;
    }
    w->logged = true;
    w->last_log_ms = now;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bw_upstream[%s]: ", w->srv->name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (w->suppressed)
        fprintf(stderr, " (%u similar messages suppressed)", w->suppressed);
    fputc('\n', stderr);
    w->suppressed = 0;
}

/* ---- knobs ------------------------------------------------------------------------------- */

static void knobs_init(struct knobs *k)
{
    memset(k, 0, sizeof(*k));
    k->status = 200;
    k->keepalive = true;
}

/* header=NAME:VALUE. Returns 0, -EINVAL for a bad name or value, -E2BIG when too many. */
static int knob_header(struct knobs *k, const char *v, size_t n)
{
    const char *colon = memchr(v, ':', n);
    if (!colon || colon == v)
        return -EINVAL;
    for (const char *p = v; p < colon; p++) {
        if (!is_tchar((unsigned char)*p))
            return -EINVAL;
    }
    const char *value = colon + 1;
    size_t value_len = n - (size_t)(value - v);
    trim_ows(&value, &value_len);
    if (!is_field_text(value, value_len))
        return -EINVAL;
    if (k->nheaders == EXTRA_HEADERS_MAX)
        return -E2BIG;
    k->headers[k->nheaders++] = (struct extra_header){v, (size_t)(colon - v), value, value_len};
    return 0;
}

static int knob_cut(struct knobs *k, enum end_action action, const char *v, size_t n)
{
    k->cut_action = action;
    return parse_u64(v, n, UINT64_MAX, &k->cut_after);
}

/* Applies one knob. Unknown names are ignored. Returns 0 or a negative errno for a bad value. */
static int knob_set(struct knobs *k, const char *name, size_t nlen, const char *v, size_t n)
{
    uint64_t u = 0;
    int r = 0;
    if (str_is(name, nlen, "status")) {
        if ((r = parse_u64(v, n, 999, &u)) == 0 && u < 100)
            r = -ERANGE;
        k->status = (unsigned)u;
        k->status_set = true;
    } else if (str_is(name, nlen, "reason")) {
        r = is_field_text(v, n) ? 0 : -EINVAL;
        k->reason = v;
        k->reason_len = n;
    } else if (str_is(name, nlen, "delay")) {
        r = parse_u64(v, n, DELAY_MAX_MS, &k->delay_ms);
    } else if (str_is(name, nlen, "body_delay")) {
        r = parse_u64(v, n, DELAY_MAX_MS, &k->body_delay_ms);
    } else if (str_is(name, nlen, "size")) {
        r = parse_u64(v, n, UINT64_MAX / 2, &k->size);
        k->has_size = true;
    } else if (str_is(name, nlen, "chunk")) {
        if ((r = parse_u64(v, n, UINT32_MAX, &k->chunk)) == 0 && k->chunk == 0)
            r = -ERANGE;
    } else if (str_is(name, nlen, "chunked")) {
        r = parse_bool(v, n, &k->chunked);
    } else if (str_is(name, nlen, "close_after")) {
        r = knob_cut(k, END_CLOSE, v, n);
    } else if (str_is(name, nlen, "reset_after")) {
        r = knob_cut(k, END_RESET, v, n);
    } else if (str_is(name, nlen, "stall_after")) {
        r = knob_cut(k, END_STALL, v, n);
    } else if (str_is(name, nlen, "reset")) {
        r = parse_bool(v, n, &k->reset);
    } else if (str_is(name, nlen, "nolength")) {
        r = parse_bool(v, n, &k->nolength);
    } else if (str_is(name, nlen, "keepalive")) {
        r = parse_bool(v, n, &k->keepalive);
    } else if (str_is(name, nlen, "interim")) {
        r = parse_bool(v, n, &k->interim);
    } else if (str_is(name, nlen, "echo")) {
        r = parse_bool(v, n, &k->echo);
    } else if (str_is(name, nlen, "header")) {
        r = knob_header(k, v, n);
    }
    return r;
}

/*
 * Parses the query string q (without '?') into k. Decoded values go to scratch, which the caller
 * has reserved qlen bytes of, so the pointers stay valid. Returns 0, or -EINVAL with the knob's
 * name in *bad.
 */
static int knobs_parse(struct knobs *k, const char *q, size_t qlen, struct buf *scratch,
                       const char **bad, size_t *bad_len)
{
    const char *end = q + qlen;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        if (!amp)
            amp = end;
        const char *eq = memchr(q, '=', (size_t)(amp - q));
        const char *raw = eq ? eq + 1 : amp;
        size_t nlen = (size_t)((eq ? eq : amp) - q);
        char *v = scratch->data + scratch->len;
        size_t vlen = url_decode(v, raw, (size_t)(amp - raw));
        scratch->len += vlen;
        if (knob_set(k, q, nlen, v, vlen) < 0) {
            *bad = q;
            *bad_len = nlen;
            return -EINVAL;
        }
        if (amp == end)
            break;
        q = amp + 1;
    }
    return 0;
}

static bool knobs_has_header(const struct knobs *k, const char *name)
{
    for (size_t i = 0; i < k->nheaders; i++) {
        if (str_case_is(k->headers[i].name, k->headers[i].name_len, name))
            return true;
    }
    return false;
}

/* ---- request state ----------------------------------------------------------------------- */

struct head {
    const char *method;
    size_t method_len;
    const char *path;
    size_t path_len;
    int minor_version;
    struct phr_header *headers;
    size_t num_headers;
};

static void request_reset(struct conn *c)
{
    memset(&c->req, 0, sizeof(c->req));
    memset(&c->res, 0, sizeof(c->res));
    knobs_init(&c->knobs);
    buf_clear(&c->out);
    buf_clear(&c->scratch);
    if (c->body.cap > BODY_KEEP)
        buf_dispose(&c->body);
    else
        buf_clear(&c->body);
}

static void set_reading(struct conn *c, bool on);

static bool discarding(const struct conn *c)
{
    return c->state == ST_LINGER || c->state == ST_DRAIN || c->state == ST_STALLED;
}

/* Reads when input is useful (or must be drained) and there is room for it. */
static void update_reading(struct conn *c)
{
    bool room = c->in.len - c->in_off < c->in.max;
    set_reading(c, !c->closing && !c->peer_eof && (discarding(c) || room));
}

static void enter_discarding(struct conn *c, enum conn_state st)
{
    c->state = st;
    c->in.len = c->in_off = 0;
    update_reading(c);
}

/* Answers with our own error (400, 413, 431, 500, 501) and closes afterwards. */
__attribute__((format(printf, 3, 4))) static void respond_error(struct conn *c, unsigned status,
                                                                const char *fmt, ...)
{
    va_list ap;
    char msg[256];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    knobs_init(&c->knobs);
    c->knobs.status = status;
    c->knobs.keepalive = false;
    c->req.kind = BODY_ERROR;
    buf_clear(&c->body);
    buf_append(&c->body, msg, strlen(msg));
    buf_lit(&c->body, "\n");
    response_send(c);
}

static void on_static_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    if (!c->closing && status < 0)
        conn_close(c, false);
}

/* Writes bytes that live forever (1xx heads) without disturbing the response write. */
static void write_static(struct conn *c, uv_write_t *req, const char *s, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)s, (unsigned)n);
    req->data = c;
    if (uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, on_static_write) < 0)
        conn_close(c, false);
}

/* Reads framing and connection fields. Returns 0, or the error status to answer with. */
static unsigned scan_headers(struct conn *c, const struct head *h, bool *expect_continue,
                             const char **ctype, size_t *ctype_len)
{
    struct request *rq = &c->req;
    bool has_length = false;
    for (size_t i = 0; i < h->num_headers; i++) {
        const struct phr_header *f = &h->headers[i];
        if (!f->name) /* obs-fold continuation line */
            continue;
        if (str_case_is(f->name, f->name_len, "content-length")) {
            uint64_t v;
            if (parse_u64(f->value, f->value_len, UINT64_MAX, &v) < 0 ||
                (has_length && v != rq->content_length))
                return 400;
            has_length = true;
            rq->content_length = v;
        } else if (str_case_is(f->name, f->name_len, "transfer-encoding")) {
            if (!str_case_is(f->value, f->value_len, "chunked"))
                return 501;
            rq->chunked = true;
        } else if (str_case_is(f->name, f->name_len, "connection")) {
            if (has_token(f->value, f->value_len, "close"))
                rq->keepalive = false;
            else if (has_token(f->value, f->value_len, "keep-alive"))
                rq->keepalive = true;
        } else if (str_case_is(f->name, f->name_len, "expect")) {
            *expect_continue = str_case_is(f->value, f->value_len, "100-continue");
        } else if (str_case_is(f->name, f->name_len, "content-type")) {
            *ctype = f->value;
            *ctype_len = f->value_len;
        }
    }
    if (has_length && rq->chunked)
        return 400;
    if (rq->content_length > BODY_MAX)
        return 413;
    return 0;
}

/* Opens the default JSON body; body_prepare closes it once the body sum is known. */
static void json_prefix(struct conn *c, const struct head *h)
{
    struct buf *b = &c->body;
    const struct phr_header *hd = h->headers;
    buf_lit(b, "{\"upstream\":");
    json_string(b, c->w->srv->name, c->w->srv->name_len);
    buf_lit(b, ",\"method\":");
    json_string(b, h->method, h->method_len);
    buf_lit(b, ",\"path\":");
    json_string(b, h->path, h->path_len);
    buf_lit(b, ",\"headers\":{");
    bool first = true;
    for (size_t i = 0; i < h->num_headers; i++) {
        bool seen = hd[i].name == NULL;
        for (size_t j = 0; j < i && !seen; j++)
            seen = hd[j].name && hd[j].name_len == hd[i].name_len &&
                   strncasecmp(hd[j].name, hd[i].name, hd[i].name_len) == 0;
        if (seen)
            continue;
        if (!first)
            buf_lit(b, ",");
        buf_lit(b, "\"");
        first = false;
        json_escape(b, hd[i].name, hd[i].name_len, true);
        buf_lit(b, "\":\"");
        json_escape(b, hd[i].value, hd[i].value_len, false);
        /* Repeated fields are combined, as HTTP allows: "a, b". */
        for (size_t j = i + 1; j < h->num_headers; j++) {
            if (hd[j].name && hd[j].name_len == hd[i].name_len &&
                strncasecmp(hd[j].name, hd[i].name, hd[i].name_len) == 0) {
                buf_lit(b, ", ");
                json_escape(b, hd[j].value, hd[j].value_len, false);
            }
        }
        buf_lit(b, "\"");
    }
    buf_lit(b, "},");
}

static enum body_kind classify_path(const char *path, size_t n)
{
    if (str_is(path, n, "/health"))
        return BODY_HEALTH;
    if (str_is(path, n, "/_stats"))
        return BODY_STATS;
    return BODY_JSON;
}

/*
 * Starts a request whose head has just been parsed: framing, knobs, counters, then either the
 * body (ST_BODY) or the response. Pointers in h are valid only during this call.
 */
static void request_begin(struct conn *c, const struct head *h)
{
    struct request *rq = &c->req;
    struct server *s = c->w->srv;
    bool expect = false;
    const char *ctype = NULL;
    size_t ctype_len = 0;

    rq->minor_version = h->minor_version;
    rq->is_head = str_is(h->method, h->method_len, "HEAD");
    rq->keepalive = h->minor_version >= 1;
    const char *q = memchr(h->path, '?', h->path_len);
    size_t path_len = q ? (size_t)(q - h->path) : h->path_len;
    size_t qlen = q ? h->path_len - path_len - 1 : 0;
    rq->kind = classify_path(h->path, path_len);
    if (rq->kind == BODY_HEALTH)
        atomic_fetch_add(&s->health_checks, 1);
    else if (rq->kind != BODY_STATS)
        atomic_fetch_add(&s->requests, 1);

    unsigned err = scan_headers(c, h, &expect, &ctype, &ctype_len);
    if (err == 413) {
        respond_error(c, 413, "request body larger than %d bytes", BODY_MAX);
        return;
    }
    if (err) {
        respond_error(c, err, "%s",
                      err == 501 ? "only Transfer-Encoding: chunked is supported"
                                 : "bad or conflicting Content-Length/Transfer-Encoding");
        return;
    }

    if (buf_reserve(&c->scratch, qlen + ctype_len) < 0) {
        respond_error(c, 500, "out of memory");
        return;
    }
    const char *bad;
    size_t bad_len;
    if (qlen > 0 && knobs_parse(&c->knobs, q + 1, qlen, &c->scratch, &bad, &bad_len) < 0) {
        respond_error(c, 400, "bad value for knob %.*s", (int)bad_len, bad);
        return;
    }
    if (c->knobs.echo) {
        rq->kind = BODY_ECHO;
        rq->content_type = ctype ? c->scratch.data + c->scratch.len : NULL;
        rq->content_type_len = ctype_len;
        buf_append(&c->scratch, ctype, ctype_len);
        if (!rq->chunked)
            (void)buf_reserve(&c->body, rq->content_length);
    } else if (c->knobs.has_size) {
        rq->kind = BODY_PATTERN;
    } else if (rq->kind == BODY_JSON) {
        json_prefix(c, h);
    }

    if (!rq->chunked && rq->content_length == 0) {
        response_start(c);
        return;
    }
    rq->dec.d.consume_trailer = 1;
    c->state = ST_BODY;
    if (expect && rq->minor_version >= 1)
        write_static(c, &c->continue_req, CONTINUE_100, sizeof(CONTINUE_100) - 1);
}

/* Parses a request head from the input. Returns false when more input is needed. */
static bool parse_head(struct conn *c)
{
    size_t len = c->in.len - c->in_off;
    if (len == 0)
        return false;
    struct phr_header headers[HEADERS_MAX];
    struct head h = {.headers = headers, .num_headers = HEADERS_MAX};
    int r = phr_parse_request(c->in.data + c->in_off, len, &h.method, &h.method_len, &h.path,
                              &h.path_len, &h.minor_version, headers, &h.num_headers, 0);
    if (r == -2) {
        if (len < HEAD_MAX)
            return false;
        respond_error(c, 431, "request head larger than %d bytes", HEAD_MAX);
        return true;
    }
    if (r < 0) {
        respond_error(c, 400, "malformed request head (or more than %d fields)", HEADERS_MAX);
        return true;
    }
    c->in_off += (size_t)r;
    request_begin(c, &h);
    return true;
}

/* Accounts n request body bytes. Returns 0, or -1 after answering 413/500. */
static int body_take(struct conn *c, const char *p, size_t n)
{
    struct request *rq = &c->req;
    if (n > BODY_MAX - rq->body_len) {
        respond_error(c, 413, "request body larger than %d bytes", BODY_MAX);
        return -1;
    }
    uint32_t sum = rq->body_sum;
    for (size_t i = 0; i < n; i++)
        sum += (unsigned char)p[i];
    rq->body_sum = sum;
    rq->body_len += n;
    if (rq->kind == BODY_ECHO) {
        buf_append(&c->body, p, n);
        if (c->body.err) {
            respond_error(c, 500, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* Consumes request body from the input. Returns 1 when complete, 0 for more, -1 after an error. */
static int read_body(struct conn *c)
{
    struct request *rq = &c->req;
    char *p = c->in.data + c->in_off;
    size_t avail = c->in.len - c->in_off;
    if (!rq->chunked) {
        size_t n = (size_t)min_u64(avail, rq->content_length - rq->body_len);
        if (body_take(c, p, n) < 0)
            return -1;
        c->in_off += n;
        return rq->body_len == rq->content_length;
    }
    if (avail == 0)
        return 0;
    /* Decodes in place: p[0, n) becomes payload, and on completion the r bytes after the body
     * (a pipelined request) are moved to p + n. */
    size_t n = avail;
    ssize_t r = phr_decode_chunked(&rq->dec.d, p, &n);
    if (r == -1) {
        respond_error(c, 400, "malformed chunked request body");
        return -1;
    }
    if (body_take(c, p, n) < 0)
        return -1;
    if (r == -2) {
        c->in.len = c->in_off = 0;
        return 0;
    }
    c->in_off += n;
    c->in.len = c->in_off + (size_t)r;
    return 1;
}

/*
 * Runs the connection over buffered input until it needs more, or a response is in flight: the
 * one loop that parses requests and finishes responses (ST_DONE), so pipelining never recurses.
 */
static void conn_process(struct conn *c)
{
    while (!c->closing) {
        if (c->state == ST_HEAD) {
            if (!parse_head(c))
                break;
        } else if (c->state == ST_BODY) {
            int r = read_body(c);
            if (r == 0)
                break;
            if (r > 0)
                response_start(c);
        } else if (c->state == ST_DONE) {
            if (!response_done(c))
                break;
        } else {
            break;
        }
    }
    if (c->closing)
        return;
    if (c->peer_eof && (c->state == ST_HEAD || c->state == ST_BODY)) {
        conn_close(c, false);
        return;
    }
    update_reading(c);
}

/* ---- responses --------------------------------------------------------------------------- */

static const char *reason_phrase(unsigned status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 103:
        return "Early Hints";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

static const char *content_type(const struct request *rq, size_t *len)
{
    const char *t = NULL;
    switch (rq->kind) {
    case BODY_JSON:
    case BODY_STATS:
        t = "application/json";
        break;
    case BODY_PATTERN:
    case BODY_HEALTH:
    case BODY_ERROR:
        t = "text/plain";
        break;
    case BODY_ECHO:
        *len = rq->content_type_len;
        return rq->content_type;
    }
    *len = strlen(t);
    return t;
}

static void stats_render(struct server *s, struct buf *b)
{
    buf_appendf(b,
                "{\"requests\":%" PRIu64 ",\"connections\":%" PRIu64 ",\"active\":%" PRIu64
                ",\"health_checks\":%" PRIu64 "}",
                atomic_load(&s->requests), atomic_load(&s->connections), atomic_load(&s->active),
                atomic_load(&s->health_checks));
}

/* Finishes the body source and decides status, framing, length, cut and close. */
static int body_prepare(struct conn *c)
{
    struct request *rq = &c->req;
    struct response *res = &c->res;
    const struct knobs *k = &c->knobs;
    struct server *s = c->w->srv;
    struct buf *b = &c->body;

    res->status = k->status;
    switch (rq->kind) {
    case BODY_JSON:
        buf_appendf(b, "\"body_len\":%" PRIu64 ",\"body_sum\":%" PRIu32 "}", rq->body_len,
                    rq->body_sum);
        break;
    case BODY_STATS:
        stats_render(s, b);
        break;
    case BODY_HEALTH: {
        /* A stat() on a local file: cheap enough for a test server's health endpoint. */
        bool healthy = !s->unhealthy_file || access(s->unhealthy_file, F_OK) != 0;
        if (healthy)
            buf_lit(b, "ok");
        else
            buf_lit(b, "unhealthy");
        if (!k->status_set)
            res->status = healthy ? 200 : 503;
        break;
    }
    case BODY_PATTERN:
        res->from_pattern = true;
        break;
    case BODY_ECHO:
    case BODY_ERROR:
        break;
    }
    if (b->err)
        return b->err;
    res->total = res->from_pattern ? k->size : b->len;

    bool bodiless = res->status < 200 || res->status == 204 || res->status == 304;
    if (bodiless)
        res->framing = FRAME_NONE;
    else if (k->nolength || (k->chunked && rq->minor_version == 0))
        res->framing = FRAME_CLOSE;
    else if (k->chunked)
        res->framing = FRAME_CHUNKED;
    else
        res->framing = FRAME_LENGTH;
    bool send_body = !bodiless && !rq->is_head;
    res->limit = send_body ? res->total : 0;
    res->chunked_body = send_body && res->framing == FRAME_CHUNKED;
    res->end = k->cut_action;
    if (res->end != END_KEEP)
        res->limit = min_u64(res->limit, k->cut_after);
    res->close =
        !rq->keepalive || !k->keepalive || res->framing == FRAME_CLOSE || rq->kind == BODY_ERROR;
    if (res->chunked_body)
        res->piece = k->chunk ? k->chunk : CHUNK_DEFAULT;
    else
        res->piece = k->chunk ? min_u64(k->chunk, PIECE_MAX) : PIECE_MAX;
    return 0;
}

static int head_render(struct conn *c)
{
    struct buf *o = &c->out;
    const struct knobs *k = &c->knobs;
    const struct response *res = &c->res;
    const struct server *s = c->w->srv;

    buf_appendf(o, "HTTP/1.1 %u ", res->status);
    if (k->reason)
        buf_append(o, k->reason, k->reason_len);
    else
        buf_append(o, reason_phrase(res->status), strlen(reason_phrase(res->status)));
    buf_lit(o, "\r\nServer: bw_upstream\r\nX-Upstream: ");
    buf_append(o, s->name, s->name_len);
    buf_lit(o, "\r\n");
    size_t ctlen = 0;
    const char *ct = content_type(&c->req, &ctlen);
    if (res->framing != FRAME_NONE && ct && !knobs_has_header(k, "content-type")) {
        buf_lit(o, "Content-Type: ");
        buf_append(o, ct, ctlen);
        buf_lit(o, "\r\n");
    }
    if (res->framing == FRAME_LENGTH)
        buf_appendf(o, "Content-Length: %" PRIu64 "\r\n", res->total);
    else if (res->framing == FRAME_CHUNKED)
        buf_lit(o, "Transfer-Encoding: chunked\r\n");
    if (res->close)
        buf_lit(o, "Connection: close\r\n");
    else if (c->req.minor_version == 0)
        buf_lit(o, "Connection: keep-alive\r\n");
    for (size_t i = 0; i < k->nheaders; i++) {
        buf_append(o, k->headers[i].name, k->headers[i].name_len);
        buf_lit(o, ": ");
        buf_append(o, k->headers[i].value, k->headers[i].value_len);
        buf_lit(o, "\r\n");
    }
    buf_lit(o, "\r\n");
    return o->err;
}

static bool body_pending(const struct response *r)
{
    return r->sent < r->limit || (r->chunked_body && r->limit == r->total && !r->terminated);
}

static uv_buf_t body_slice(struct conn *c, uint64_t off, uint64_t n)
{
    if (c->res.from_pattern)
        return uv_buf_init(c->w->pattern + off % PATTERN_LEN, (unsigned)n);
    return uv_buf_init(c->body.data + off, (unsigned)n);
}

/*
 * Appends the next body piece to c->bufs from index n and returns the new count: up to
 * PIECE_MAX payload bytes; chunked, up to CHUNKS_PER_WRITE chunks (one with body_delay=), each
 * chunk header declaring the full chunk even if a cut ends the body inside it.
 */
static size_t body_fill(struct conn *c, size_t n)
{
    struct response *r = &c->res;
    uint64_t payload = 0;
    unsigned chunks = 0;
    while (r->sent < r->limit && payload < PIECE_MAX) {
        uint64_t want = r->limit - r->sent;
        if (r->chunked_body) {
            if (r->chunk_left == 0) {
                if (chunks == CHUNKS_PER_WRITE || (chunks > 0 && c->knobs.body_delay_ms))
                    break;
                r->chunk_left = min_u64(r->piece, r->total - r->sent);
                char *h = c->chunk_hdr[chunks++];
                int len = snprintf(h, sizeof(c->chunk_hdr[0]), "%s%" PRIx64 "\r\n",
                                   r->sent ? "\r\n" : "", r->chunk_left);
                c->bufs[n++] = uv_buf_init(h, (unsigned)len);
            }
            want = min_u64(want, r->chunk_left);
        } else {
            want = min_u64(want, r->piece);
        }
        want = min_u64(want, PIECE_MAX - payload);
        c->bufs[n++] = body_slice(c, r->sent, want);
        r->sent += want;
        payload += want;
        if (!r->chunked_body)
            break;
        r->chunk_left -= want;
    }
    if (r->chunked_body && r->sent == r->total && r->limit == r->total && !r->terminated) {
        static const char last[] = "\r\n0\r\n\r\n";
        size_t skip = r->total ? 0 : 2; /* no chunk before: no CRLF to close */
        c->bufs[n++] = uv_buf_init((char *)last + skip, (unsigned)(sizeof(last) - 1 - skip));
        r->terminated = true;
    }
    return n;
}

static void on_write(uv_write_t *req, int status);

/* A piece is fully written. Returns true when the next one should go now; otherwise the state
 * is ST_DONE (the caller runs conn_process) or ST_PAUSE (body_delay= timer running). */
static bool piece_written(struct conn *c)
{
    if (!body_pending(&c->res)) {
        c->state = ST_DONE;
        return false;
    }
    if (c->knobs.body_delay_ms) {
        c->state = ST_PAUSE;
        uv_timer_start(&c->timer, on_timer, c->knobs.body_delay_ms, 0);
        return false;
    }
    return true;
}

/*
 * Writes the next piece (the head with the first one). Up to SYNC_PIECES pieces go out with
 * uv_try_write, which costs one writev: a uv_write that completes at once still costs libuv 1.44
 * an epoll_ctl and a loop iteration. What the socket does not take goes through uv_write, whose
 * callback continues. A response written completely here ends in ST_DONE: callers run
 * conn_process, which keeps deep pipelines iterative instead of recursive.
 */
static void write_next(struct conn *c)
{
    for (unsigned i = 0;; i++) {
        size_t n = 0, total = 0;
        if (!c->res.head_sent) {
            c->bufs[n++] = uv_buf_init(c->out.data, (unsigned)c->out.len);
            c->res.head_sent = true;
        }
        n = body_fill(c, n);
        for (size_t j = 0; j < n; j++)
            total += c->bufs[j].len;
        c->state = ST_WRITE;
        uv_buf_t *b = c->bufs;
        if (i < SYNC_PIECES) {
            int w = uv_try_write((uv_stream_t *)&c->tcp, b, (unsigned)n);
            if (w == UV_EAGAIN)
                w = 0;
            if (w < 0) {
                conn_close(c, false);
                return;
            }
            if ((size_t)w == total) {
                if (piece_written(c))
                    continue;
                return;
            }
            for (size_t skip = (size_t)w; skip > 0;) { /* drop what the socket took */
                size_t k = skip < b->len ? skip : b->len;
                b->base += k;
                b->len -= k;
                skip -= k;
                if (b->len == 0) {
                    b++;
                    n--;
                }
            }
        }
        c->write_req.data = c;
        if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, b, (unsigned)n, on_write) < 0)
            conn_close(c, false);
        return;
    }
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    if (!c->closing && (status < 0 || c->peer_eof))
        conn_close(c, false);
}

/* Sends FIN, then drops input until the peer closes or LINGER_MS pass. */
static void linger_start(struct conn *c)
{
    enter_discarding(c, ST_LINGER);
    if (c->closing)
        return;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c, false);
        return;
    }
    uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
}

/* Resets once the kernel has sent (and had acknowledged) all we wrote, or after DRAIN_MS. */
static void drain_check(struct conn *c)
{
    uv_os_fd_t fd;
    int queued = 0;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 && ioctl(fd, SIOCOUTQ, &queued) == 0 &&
        queued > 0 && uv_now(&c->w->loop) - c->drain_start < DRAIN_MS) {
        uv_timer_start(&c->timer, on_timer, 1, 0);
        return;
    }
    conn_close(c, true);
}

/* Ends a written response (ST_DONE). Returns true when the next request may be parsed. */
static bool response_done(struct conn *c)
{
    switch (c->res.end) {
    case END_KEEP:
        if (!c->res.close) {
            request_reset(c);
            c->state = ST_HEAD;
            return true;
        }
        linger_start(c);
        break;
    case END_CLOSE:
        linger_start(c);
        break;
    case END_RESET:
        enter_discarding(c, ST_DRAIN);
        c->drain_start = uv_now(&c->w->loop);
        drain_check(c);
        break;
    case END_STALL:
        if (c->peer_eof)
            conn_close(c, false);
        else
            enter_discarding(c, ST_STALLED);
        break;
    }
    return false;
}

static void on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c, false);
        return;
    }
    if (piece_written(c))
        write_next(c);
    conn_process(c);
}

/* The request is complete: interim heads now, then the response after delay=. */
static void response_start(struct conn *c)
{
    if (c->knobs.interim && c->req.minor_version >= 1) {
        write_static(c, &c->interim_req, INTERIM, sizeof(INTERIM) - 1);
        if (c->closing)
            return;
    }
    if (c->knobs.delay_ms) {
        c->state = ST_DELAY;
        uv_timer_start(&c->timer, on_timer, c->knobs.delay_ms, 0);
        return;
    }
    response_send(c);
}

static void response_send(struct conn *c)
{
    if (c->knobs.reset) {
        conn_close(c, true);
        return;
    }
    int r = body_prepare(c);
    if (r == 0)
        r = head_render(c);
    if (r < 0) {
        log_limited(c->w, "cannot build a response: %s", strerror(-r));
        conn_close(c, false);
        return;
    }
    write_next(c);
}

static void on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    switch (c->state) {
    case ST_DELAY:
        response_send(c);
        conn_process(c);
        break;
    case ST_PAUSE:
        write_next(c);
        conn_process(c);
        break;
    case ST_DRAIN:
        drain_check(c);
        break;
    case ST_LINGER:
        conn_close(c, false);
        break;
    default:
        break;
    }
}

/* ---- connections ------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    (void)suggested;
    struct conn *c = h->data;
    struct buf *in = &c->in;
    if (discarding(c) || c->in_off == in->len) {
        in->len = c->in_off = 0;
    } else if (c->in_off > 0 && in->cap - in->len < READ_MIN) {
        memmove(in->data, in->data + c->in_off, in->len - c->in_off);
        in->len -= c->in_off;
        c->in_off = 0;
    }
    /* Bodies stream through: give them big reads. Heads start small (10000 idle connections). */
    size_t want = c->state == ST_BODY ? in->max : READ_MIN;
    if (in->cap - in->len < want)
        (void)buf_reserve(in, want); /* past the maximum: hand out what is left */
    *out = uv_buf_init(in->data ? in->data + in->len : NULL, (unsigned)(in->cap - in->len));
}

static void on_peer_eof(struct conn *c)
{
    c->peer_eof = true;
    update_reading(c);
    switch (c->state) {
    case ST_HEAD:
    case ST_BODY:
    case ST_LINGER:
    case ST_STALLED:
        conn_close(c, false);
        break;
    default: /* finish the response in flight; response_done sees peer_eof */
        break;
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b)
{
    (void)b; /* always c->in past its length: see on_alloc */
    struct conn *c = stream->data;
    if (nread > 0) {
        if (discarding(c))
            return;
        c->in.len += (size_t)nread;
        conn_process(c);
    } else if (nread == UV_ENOBUFS) {
        if (c->in.len - c->in_off < c->in.max) { /* not full: on_alloc could not allocate */
            log_limited(c->w, "out of memory for input: closing a connection");
            conn_close(c, false);
            return;
        }
        update_reading(c); /* input full behind a response: resume when it is done */
    } else if (nread == UV_EOF) {
        on_peer_eof(c);
    } else if (nread < 0) {
        conn_close(c, false);
    }
}

static void set_reading(struct conn *c, bool on)
{
    if (on == c->reading)
        return;
    c->reading = on;
    if (!on) {
        uv_read_stop((uv_stream_t *)&c->tcp);
    } else if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        c->reading = false;
        conn_close(c, false);
    }
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    atomic_fetch_sub(&c->w->srv->active, 1);
    buf_dispose(&c->in);
    buf_dispose(&c->out);
    buf_dispose(&c->body);
    buf_dispose(&c->scratch);
    free(c);
}

/* Closes the connection, with RST when `reset`. Memory goes in the last close callback. */
static void conn_close(struct conn *c, bool reset)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    if (reset && uv_tcp_close_reset(&c->tcp, on_conn_handle_closed) == 0)
        return;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_reject_closed(uv_handle_t *h)
{
    free(h);
}

/* Accepts a connection only to close it (over the limit, or out of memory for a conn). */
static void reject_connection(struct worker *w, uv_stream_t *listener)
{
    uv_tcp_t *t = malloc(sizeof(*t));
    if (!t) {
        fprintf(stderr, "bw_upstream: out of memory\n");
        abort(); /* libuv would stop accepting until this connection is taken */
    }
    uv_tcp_init(&w->loop, t);
    (void)uv_accept(listener, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, on_reject_closed);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct worker *w = listener->data;
    struct server *s = w->srv;
    if (status < 0) {
        log_limited(w, "accept failed: %s", uv_strerror(status));
        return;
    }
    if (atomic_fetch_add(&s->active, 1) >= CONN_MAX) {
        atomic_fetch_sub(&s->active, 1);
        log_limited(w, "%d connections open: refusing more", CONN_MAX);
        reject_connection(w, listener);
        return;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        atomic_fetch_sub(&s->active, 1);
        log_limited(w, "out of memory for a connection: refusing it");
        reject_connection(w, listener);
        return;
    }
    c->w = w;
    uv_tcp_init(&w->loop, &c->tcp);
    uv_timer_init(&w->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    buf_init(&c->in, HEAD_MAX);
    buf_init(&c->out, OUT_MAX);
    buf_init(&c->body, BODY_MAX);
    buf_init(&c->scratch, SCRATCH_MAX);
    knobs_init(&c->knobs);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c, false);
        return;
    }
    atomic_fetch_add(&s->connections, 1);
    uv_tcp_nodelay(&c->tcp, 1);
    update_reading(c);
}

/* ---- workers and server ------------------------------------------------------------------ */

static void worker_stop(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = true;
    if (w->listening)
        uv_close((uv_handle_t *)&w->listener, NULL);
    uv_close((uv_handle_t *)&w->stop, NULL);
    while (w->conns)
        conn_close(w->conns, false);
}

static void on_stop(uv_async_t *a)
{
    worker_stop(a->data);
}

static void worker_run(void *arg)
{
    struct worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

/* Sets up w's loop; fd >= 0 is a listening socket for it to accept on. */
static int worker_init(struct worker *w, struct server *s, int fd)
{
    int r;
    w->srv = s;
    for (size_t i = 0; i < sizeof(w->pattern); i++)
        w->pattern[i] = PATTERN[i % PATTERN_LEN];
    if ((r = uv_loop_init(&w->loop)) < 0)
        return r;
    if ((r = uv_async_init(&w->loop, &w->stop, on_stop)) < 0)
        return r;
    w->stop.data = w;
    if (fd < 0)
        return 0;
    uv_tcp_init(&w->loop, &w->listener);
    w->listener.data = w;
    w->listening = true;
    if ((r = uv_tcp_open(&w->listener, fd)) < 0)
        return r;
    return uv_listen((uv_stream_t *)&w->listener, BACKLOG, on_connection);
}

static void set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
}

/* A bound, listening socket on s->addr; the first one fixes s->port when it was 0. */
static int listen_socket(struct server *s, bool reuseport, int backlog)
{
    int one = 1;
    int fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    set_port(&s->addr, s->port);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
        bind(fd, (struct sockaddr *)&s->addr, s->addr_len) < 0 || listen(fd, backlog) < 0)
        goto fail;
    if (s->port == 0) {
        struct sockaddr_storage bound;
        socklen_t len = sizeof(bound);
        if (getsockname(fd, (struct sockaddr *)&bound, &len) < 0)
            goto fail;
        s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
    }
    return fd;
fail:;
    int r = -errno;
    close(fd);
    return r;
}

/* HOST:PORT, [V6]:PORT, :PORT (all interfaces) or PORT (127.0.0.1). Numeric or resolvable. */
static int parse_listen(struct server *s, const char *spec)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    const char *port = colon ? colon + 1 : spec;
    size_t hlen = colon ? (size_t)(colon - spec) : 0;
    if (hlen >= sizeof(host))
        return -EINVAL;
    memcpy(host, spec, hlen);
    host[hlen] = '\0';
    if (!colon)
        strcpy(host, "127.0.0.1");
    else if (hlen == 0)
        strcpy(host, "0.0.0.0");
    char *h = host;
    if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']') {
        h[hlen - 1] = '\0';
        h++;
    }
    uint64_t p;
    if (parse_u64(port, strlen(port), 65535, &p) < 0)
        return -EINVAL;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res;
    if (getaddrinfo(h, port, &hints, &res) != 0)
        return -EINVAL;
    memcpy(&s->addr, res->ai_addr, res->ai_addrlen);
    s->addr_len = res->ai_addrlen;
    s->port = (int)p;
    freeaddrinfo(res);
    return 0;
}

static void on_signal(uv_signal_t *sig, int signum)
{
    struct server *s = sig->data;
    fprintf(stderr, "bw_upstream[%s]: signal %d, stopping\n", s->name, signum);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    for (unsigned i = 1; i < s->nthreads; i++)
        uv_async_send(&s->workers[i].stop);
    worker_stop(&s->workers[0]);
}

/* Binds, listens and sets up every loop. Returns 0 or a negative errno (already logged). */
static int server_start(struct server *s)
{
    int r;
    s->blackhole_fd = -1;
    s->workers = calloc(s->nthreads, sizeof(*s->workers));
    if (!s->workers)
        return -ENOMEM;
    if (s->blackhole) {
        /* Backlog 0 and nobody accepting: one connection queues, later SYNs are dropped. */
        if ((r = s->blackhole_fd = listen_socket(s, false, 0)) < 0)
            goto fail;
        if ((r = worker_init(&s->workers[0], s, -1)) < 0)
            goto fail;
    } else {
        for (unsigned i = 0; i < s->nthreads; i++) {
            int fd = listen_socket(s, s->nthreads > 1, BACKLOG);
            if ((r = fd) < 0 || (r = worker_init(&s->workers[i], s, fd)) < 0)
                goto fail;
        }
    }
    uv_loop_t *main_loop = &s->workers[0].loop;
    uv_signal_init(main_loop, &s->sigterm);
    uv_signal_init(main_loop, &s->sigint);
    s->sigterm.data = s->sigint.data = s;
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    return 0;
fail:
    fprintf(stderr, "bw_upstream: cannot listen on %s: %s\n", s->listen, strerror(-r));
    return r;
}

/* Joins the threads and closes every loop. Returns 0, or 1 if a loop still had handles. */
static int server_dispose(struct server *s)
{
    int rc = 0;
    for (unsigned i = 1; i < s->nthreads; i++)
        uv_thread_join(&s->workers[i].thread);
    for (unsigned i = 0; i < s->nthreads; i++) {
        if (uv_loop_close(&s->workers[i].loop) != 0) {
            fprintf(stderr, "bw_upstream: loop %u still has handles at exit\n", i);
            rc = 1;
        }
    }
    if (s->blackhole_fd >= 0)
        close(s->blackhole_fd);
    free(s->workers);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bw_upstream [--listen HOST:PORT] [--name NAME] [--threads N] [--blackhole]\n"
               "                   [--unhealthy-file PATH]\n"
               "Prints \"PORT <n>\" on stdout when ready. Knobs: see tests/upstream/README.md.\n");
}

/* Returns 0 to run, 1 after --help, -1 on a bad command line (reported). */
static int parse_args(struct server *s, int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"name", required_argument, NULL, 'n'},
        {"threads", required_argument, NULL, 't'},
        {"blackhole", no_argument, NULL, 'b'},
        {"unhealthy-file", required_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    uint64_t n;
    int opt;
    memset(s, 0, sizeof(*s));
    s->name = "upstream";
    s->listen = "127.0.0.1:0";
    s->nthreads = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'l':
            s->listen = optarg;
            break;
        case 'n':
            s->name = optarg;
            break;
        case 't':
            if (parse_u64(optarg, strlen(optarg), THREADS_MAX, &n) < 0 || n == 0) {
                fprintf(stderr, "bw_upstream: --threads must be 1..%d\n", THREADS_MAX);
                return -1;
            }
            s->nthreads = (unsigned)n;
            break;
        case 'b':
            s->blackhole = true;
            break;
        case 'u':
            s->unhealthy_file = optarg;
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return -1;
    }
    s->name_len = strlen(s->name);
    if (s->name_len == 0 || s->name_len > 128 || !is_field_text(s->name, s->name_len)) {
        fprintf(stderr, "bw_upstream: --name must be 1..128 printable characters\n");
        return -1;
    }
    if (parse_listen(s, s->listen) < 0) {
        fprintf(stderr, "bw_upstream: bad --listen %s (want HOST:PORT)\n", s->listen);
        return -1;
    }
    if (s->blackhole)
        s->nthreads = 1;
    return 0;
}

int main(int argc, char **argv)
{
    struct server s;
    int r = parse_args(&s, argc, argv);
    if (r != 0)
        return r > 0 ? 0 : 2;
    signal(SIGPIPE, SIG_IGN);
    if (server_start(&s) < 0)
        return 1;
    printf("PORT %d\n", s.port);
    fflush(stdout);
    fprintf(stderr, "bw_upstream[%s]: listening on %s (port %d), %u thread(s)%s\n", s.name,
            s.listen, s.port, s.nthreads, s.blackhole ? ", blackhole" : "");
    for (unsigned i = 1; i < s.nthreads; i++) {
        if (uv_thread_create(&s.workers[i].thread, worker_run, &s.workers[i]) != 0) {
            fprintf(stderr, "bw_upstream: cannot start thread %u\n", i);
            return 1;
        }
    }
    uv_run(&s.workers[0].loop, UV_RUN_DEFAULT);
    return server_dispose(&s);
}
