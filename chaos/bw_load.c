/*
 * bw_load: an HTTP/1.1 load client that records every request, failed ones included.
 *
 * The chaos suite measures what clients see while a fault is on: how many requests fail, how,
 * and how slow the rest get. wrk and hey leave failed and timed-out requests out of their latency
 * figures (PLATFORM.md, "Load tools"), which hides exactly the window a scenario is about. So
 * this tool writes one CSV line per request (t_start_ms,latency_us,status,error) and computes its
 * percentiles over all requests. chaos/README.md is the reference for the command line.
 *
 * Why it is built this way
 * - One libuv loop, N keep-alive connections, at most one request in flight on each (no
 *   pipelining), like a gateway's own clients.
 * - Two modes. Closed loop (no --rate): a connection sends its next request as soon as the last
 *   one finished. Open loop (--rate R): request i is due at t0 + i/R whatever happened before, so
 *   a slow server cannot slow the offered load down (no coordinated omission). A due request
 *   waits for a free connection; its latency runs from the time it was due ("intended start"),
 *   so queueing counts. Due requests are not stored: they are the indexes between `issued` and
 *   the schedule, so the backlog costs no memory.
 * - The per-request timeout also runs from the intended start. A request still waiting for a
 *   connection when it expires is recorded as a timeout without being sent, which bounds the
 *   backlog to rate x timeout and keeps every latency <= timeout (+ timer slack).
 * - A request that finds its connection closed connects first; the connect time is part of its
 *   latency and a failed connect is its error. Any error closes the connection; the next request
 *   on it reconnects.
 * - Responses are parsed with picohttpparser (exported by libh2o): the head from a per-connection
 *   32 KiB buffer, then the body is counted and dropped (Content-Length, chunked, or until
 *   close), so a large body costs no memory. 1xx interim responses are skipped.
 * - Latency percentiles come from a log-linear histogram (128 sub-buckets per power of two:
 *   under 1% error), so memory does not grow with the request count; the maximum is exact.
 * - The CSV goes through a 1 MiB stdio buffer. That is blocking file I/O on the loop, accepted
 *   here: about 30 bytes per request is a few hundred KB/s at 10k req/s.
 *
 * Connection states (struct lconn.state); the function named makes the transition.
 *
 *   LC_DOWN  --conn_start: request assigned--> LC_CONNECTING (uv_tcp_connect, timer)
 *   LC_IDLE  --conn_start: request assigned--> LC_BUSY (send_request)
 *   LC_CONNECTING --on_connect ok--> LC_BUSY (send_request)
 *   LC_BUSY  --parse: response complete, keep-alive--> LC_IDLE
 *   LC_BUSY  --parse: response complete, close--> LC_CLOSING
 *   LC_CONNECTING, LC_BUSY --error, EOF, timer--> conn_fail (request recorded) --> LC_CLOSING
 *   LC_IDLE  --EOF, error or unexpected bytes--> LC_CLOSING (no request involved)
 *   LC_CLOSING --on_tcp_closed--> LC_DOWN
 *
 * Invariants
 * - A request is recorded exactly once: by conn_done, by conn_fail or, unsent, by dispatch
 *   (expired while waiting). `busy` counts connections holding an unrecorded request.
 * - A connection is on an idle list only in LC_IDLE (idle_up) or LC_DOWN (idle_down).
 * - The request bytes are built once and never change, so a pending uv_write can point at them.
 * - in[0, len) holds unparsed response bytes; every buffer has a fixed maximum.
 *
 * Who calls it: chaos scenarios, the integration tests and people measuring by hand.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

/* picohttpparser, exported by libh2o without a header. */
struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};
int phr_parse_response(const char *buf, size_t len, int *minor_version, int *status,
                       const char **msg, size_t *msg_len, struct phr_header *headers,
                       size_t *num_headers, size_t last_len);
struct phr_chunked_decoder {
    size_t bytes_left_in_chunk;
    char consume_trailer;
    char _hex_count;
    char _state;
};
ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);

#define KIB 1024
#define IN_MAX (32 * KIB)  /* response head limit per connection */
#define REQ_MAX (64 * KIB) /* the request we send */
#define HEADERS_MAX 100
#define USER_HEADERS_MAX 32
#define CONNS_MAX 10000
#define TICK_MS 1
#define CSV_BUFFER (1024 * KIB)
#define NS_PER_US 1000ULL
#define NS_PER_MS 1000000ULL
#define NS_PER_SEC 1000000000ULL
#define SUB_BITS 7 /* histogram: 2^7 = 128 sub-buckets per power of two */
#define SUB_COUNT (1u << SUB_BITS)
#define HIST_BUCKETS ((64 - SUB_BITS) * SUB_COUNT + SUB_COUNT)

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

enum err {
    E_NONE = 0,
    E_CONNECT_REFUSED,
    E_CONNECT_TIMEOUT,
    E_UNREACHABLE,
    E_RESET,
    E_TIMEOUT,
    E_CLOSED,
    E_BAD_RESPONSE,
    E_OTHER,
    E_COUNT
};
static const char *const ERR_NAME[E_COUNT] = {
    "",        "connect_refused", "connect_timeout", "unreachable", "reset",
    "timeout", "closed",          "bad_response",    "error"};

enum lstate { LC_DOWN = 0, LC_CONNECTING, LC_IDLE, LC_BUSY, LC_CLOSING };
enum phase { PH_HEAD = 0, PH_BODY };
enum body_mode { B_NONE = 0, B_LENGTH, B_CHUNKED, B_CLOSE };

struct app;

struct lconn {
    struct app *app;
    struct lconn *prev, *next; /* on an idle list (see invariants) */
    enum lstate state;
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    uv_timer_t timer;
    bool has_req;
    uint64_t intended_ns;
    enum phase phase;
    enum body_mode mode;
    uint64_t remaining;
    struct phr_chunked_decoder dec;
    int status;
    bool keepalive;
    size_t len;
    char in[IN_MAX];
};

struct list {
    struct lconn *head;
};

struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t n, max, sum;
};

struct opts {
    const char *url;
    uint64_t conns;
    double rate; /* 0: closed loop */
    double duration_s;
    uint64_t requests;
    uint64_t timeout_ms, connect_timeout_ms;
    const char *method;
    const char *headers[USER_HEADERS_MAX];
    int nheaders;
    const char *data;
    const char *csv_path, *json_path;
    bool quiet;
};

struct app {
    uv_loop_t loop;
    struct opts o;
    struct sockaddr_storage addr;
    char hostport[300];
    char path[4096];
    bool head_method;
    char *req;
    size_t reqlen;
    struct lconn *conns;
    struct list idle_up, idle_down;
    uv_timer_t tick;
    uv_signal_t sigint, sigterm;
    uint64_t t0_ns, end_ns, wall0_ms, last_done_ns;
    uint64_t issued, busy;
    bool stopping, finished;
    FILE *csv;
    struct hist hist;
    uint64_t total, ok, non2xx, status_counts[1000], err_counts[E_COUNT];
};

static void dispatch(struct app *a);

/* ---- histogram -------------------------------------------------------------------------- */

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * SUB_COUNT)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* v in [2^e, 2^(e+1)), e >= SUB_BITS+1 */
    unsigned shift = e - SUB_BITS;
    return (shift + 1) * SUB_COUNT + (unsigned)((v >> shift) - SUB_COUNT);
}

/* The middle of the bucket's range (its only value for the exact buckets). */
static uint64_t hist_value(unsigned idx)
{
    if (idx < 2 * SUB_COUNT)
        return idx;
    unsigned shift = idx / SUB_COUNT - 1;
    uint64_t lo = ((uint64_t)(idx % SUB_COUNT) + SUB_COUNT) << shift;
    return lo + ((1ULL << shift) - 1) / 2;
}

static void hist_add(struct hist *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->n++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
}

/* The smallest recorded value with at least q of all values at or below it (0 when empty). */
static uint64_t hist_quantile(const struct hist *h, double q)
{
    if (h->n == 0)
        return 0;
    uint64_t want = (uint64_t)ceil(q * (double)h->n), seen = 0;
    if (want == 0)
        want = 1;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            uint64_t v = hist_value(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

/* ---- idle lists ------------------------------------------------------------------------- */

static void list_push(struct list *l, struct lconn *c)
{
    c->prev = NULL;
    c->next = l->head;
    if (l->head != NULL)
        l->head->prev = c;
    l->head = c;
}

static void list_remove(struct list *l, struct lconn *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* A connection to send on: an open idle one first, else a closed one (it will connect). */
static struct lconn *take_conn(struct app *a)
{
    struct list *l = a->idle_up.head != NULL ? &a->idle_up : &a->idle_down;
    struct lconn *c = l->head;
    if (c != NULL)
        list_remove(l, c);
    return c;
}

/* ---- recording -------------------------------------------------------------------------- */

static void record(struct app *a, uint64_t intended_ns, int status, enum err err)
{
    uint64_t now = uv_hrtime();
    uint64_t lat_us = now > intended_ns ? (now - intended_ns) / NS_PER_US : 0;
    uint64_t t_ms = a->wall0_ms + (intended_ns - a->t0_ns) / NS_PER_MS;
    if (a->csv != NULL)
        fprintf(a->csv, "%" PRIu64 ",%" PRIu64 ",%d,%s\n", t_ms, lat_us, status, ERR_NAME[err]);
    hist_add(&a->hist, lat_us);
    a->total++;
    a->last_done_ns = now;
    if (err != E_NONE) {
        a->err_counts[err]++;
    } else if (status >= 200 && status < 300) {
        a->ok++;
    } else {
        a->non2xx++;
        a->status_counts[status >= 0 && status < 1000 ? status : 0]++;
    }
}

static enum err err_of(int uverr, bool connecting)
{
    switch (uverr) {
    case UV_ECONNREFUSED:
        return connecting ? E_CONNECT_REFUSED : E_RESET;
    case UV_ETIMEDOUT:
        return connecting ? E_CONNECT_TIMEOUT : E_TIMEOUT;
    case UV_EHOSTUNREACH:
    case UV_ENETUNREACH:
        return E_UNREACHABLE;
    case UV_ECONNRESET:
    case UV_EPIPE:
    case UV_ECONNABORTED:
        return E_RESET;
    case UV_EOF:
        return E_CLOSED;
    default:
        return E_OTHER;
    }
}

/* ---- connections ------------------------------------------------------------------------ */

static void on_tcp_closed(uv_handle_t *h)
{
    struct lconn *c = h->data;
    struct app *a = c->app;
    c->state = LC_DOWN;
    if (!a->finished) {
        list_push(&a->idle_down, c);
        dispatch(a);
    }
}

static void conn_close(struct lconn *c)
{
    if (c->state == LC_IDLE)
        list_remove(&c->app->idle_up, c);
    c->state = LC_CLOSING;
    c->len = 0;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
}

/* The request failed: record it and drop the connection. */
static void conn_fail(struct lconn *c, enum err err)
{
    struct app *a = c->app;
    if (c->has_req) {
        c->has_req = false;
        a->busy--;
        record(a, c->intended_ns, 0, err);
    }
    conn_close(c);
}

static void conn_done(struct lconn *c)
{
    struct app *a = c->app;
    c->has_req = false;
    a->busy--;
    record(a, c->intended_ns, c->status, E_NONE);
    if (c->keepalive && c->len == 0 && !a->finished) {
        uv_timer_stop(&c->timer);
        c->state = LC_IDLE;
        list_push(&a->idle_up, c);
        dispatch(a);
    } else {
        conn_close(c);
    }
}

static void on_timer(uv_timer_t *t)
{
    struct lconn *c = container_of(t, struct lconn, timer);
    conn_fail(c, c->state == LC_CONNECTING ? E_CONNECT_TIMEOUT : E_TIMEOUT);
}

static uint64_t ms_until(uint64_t deadline_ns)
{
    uint64_t now = uv_hrtime();
    return deadline_ns > now ? (deadline_ns - now + NS_PER_MS - 1) / NS_PER_MS : 0;
}

static void on_write(uv_write_t *req, int status)
{
    struct lconn *c = container_of(req, struct lconn, wreq);
    if (status < 0 && c->state == LC_BUSY)
        conn_fail(c, err_of(status, false));
}

static void send_request(struct lconn *c)
{
    struct app *a = c->app;
    c->state = LC_BUSY;
    c->phase = PH_HEAD;
    c->len = 0;
    uv_timer_start(&c->timer, on_timer, ms_until(c->intended_ns + a->o.timeout_ms * NS_PER_MS), 0);
    uv_buf_t b = uv_buf_init(a->req, (unsigned)a->reqlen);
    int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (r == UV_EAGAIN)
        r = 0;
    if (r < 0) {
        conn_fail(c, err_of(r, false));
        return;
    }
    if ((size_t)r == a->reqlen)
        return;
    b = uv_buf_init(a->req + r, (unsigned)(a->reqlen - (size_t)r));
    r = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (r < 0)
        conn_fail(c, err_of(r, false));
}

static bool has_token(const char *v, size_t len, const char *token)
{
    size_t tl = strlen(token);
    for (size_t i = 0; i + tl <= len; i++)
        if (strncasecmp(v + i, token, tl) == 0)
            return true;
    return false;
}

/* Content-Length digits; false when it is not a plain number. */
static bool parse_length(const char *v, size_t len, uint64_t *out)
{
    uint64_t n = 0;
    size_t i = 0;
    while (i < len && (v[i] == ' ' || v[i] == '\t'))
        i++;
    if (i == len)
        return false;
    for (; i < len && v[i] >= '0' && v[i] <= '9'; i++) {
        if (n > (UINT64_MAX - 9) / 10)
            return false;
        n = n * 10 + (uint64_t)(v[i] - '0');
    }
    while (i < len && (v[i] == ' ' || v[i] == '\t'))
        i++;
    *out = n;
    return i == len;
}

static void consume(struct lconn *c, size_t n)
{
    memmove(c->in, c->in + n, c->len - n);
    c->len -= n;
}

/* Parses a response head; returns 1 when a final head was taken, 0 when more bytes are
 * needed, -1 when the connection failed. */
static int parse_head(struct lconn *c)
{
    for (;;) {
        int minor, status;
        const char *msg;
        size_t msglen, nh = HEADERS_MAX;
        struct phr_header h[HEADERS_MAX];
        int r = phr_parse_response(c->in, c->len, &minor, &status, &msg, &msglen, h, &nh, 0);
        if (r == -2 && c->len < sizeof(c->in))
            return 0;
        if (r < 0) {
            conn_fail(c, E_BAD_RESPONSE);
            return -1;
        }
        bool close = false, keep = false, chunked = false, has_len = false;
        uint64_t clen = 0;
        for (size_t i = 0; i < nh; i++) {
            if (h[i].name_len == 10 && strncasecmp(h[i].name, "connection", 10) == 0) {
                close |= has_token(h[i].value, h[i].value_len, "close");
                keep |= has_token(h[i].value, h[i].value_len, "keep-alive");
            } else if (h[i].name_len == 17 &&
                       strncasecmp(h[i].name, "transfer-encoding", 17) == 0) {
                chunked |= has_token(h[i].value, h[i].value_len, "chunked");
            } else if (h[i].name_len == 14 && strncasecmp(h[i].name, "content-length", 14) == 0) {
                if (!parse_length(h[i].value, h[i].value_len, &clen)) {
                    conn_fail(c, E_BAD_RESPONSE);
                    return -1;
                }
                has_len = true;
            }
        }
        consume(c, (size_t)r);
        if (status >= 100 && status < 200 && status != 101)
            continue; /* interim (100 Continue, 103 Early Hints): the final head follows */
        c->status = status;
        c->keepalive = minor >= 1 ? !close : keep;
        if (c->app->head_method || status == 204 || status == 304 || status < 200) {
            c->mode = B_NONE;
        } else if (chunked) {
            c->mode = B_CHUNKED;
            memset(&c->dec, 0, sizeof(c->dec));
            c->dec.consume_trailer = 1;
        } else if (has_len) {
            c->mode = clen > 0 ? B_LENGTH : B_NONE;
            c->remaining = clen;
        } else {
            c->mode = B_CLOSE;
            c->keepalive = false;
        }
        c->phase = PH_BODY;
        return 1;
    }
}

enum body_result { BODY_MORE = 0, BODY_DONE, BODY_BAD };

/* Consumes the body bytes in the buffer. */
static enum body_result parse_body(struct lconn *c)
{
    switch (c->mode) {
    case B_NONE:
        return BODY_DONE;
    case B_LENGTH: {
        uint64_t take = c->len < c->remaining ? c->len : c->remaining;
        consume(c, (size_t)take);
        c->remaining -= take;
        return c->remaining == 0 ? BODY_DONE : BODY_MORE;
    }
    case B_CHUNKED: {
        size_t size = c->len;
        ssize_t r = phr_decode_chunked(&c->dec, c->in, &size);
        if (r == -1)
            return BODY_BAD;
        /* The decoded payload is dropped; what follows the last chunk (r bytes, not expected
         * without pipelining) stays and makes conn_done close the connection. */
        if (r >= 0)
            memmove(c->in, c->in + size, (size_t)r);
        c->len = r >= 0 ? (size_t)r : 0;
        return r >= 0 ? BODY_DONE : BODY_MORE;
    }
    case B_CLOSE:
        c->len = 0;
        return BODY_MORE;
    }
    return BODY_BAD;
}

static void parse(struct lconn *c)
{
    if (c->phase == PH_HEAD && parse_head(c) <= 0)
        return;
    switch (parse_body(c)) {
    case BODY_MORE:
        return;
    case BODY_BAD:
        conn_fail(c, E_BAD_RESPONSE);
        return;
    case BODY_DONE:
        conn_done(c);
        return;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct lconn *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->in + c->len, (unsigned)(sizeof(c->in) - c->len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct lconn *c = s->data;
    (void)buf;
    if (n == 0 || c->state == LC_CLOSING)
        return;
    if (c->state != LC_BUSY) {
        conn_close(c); /* idle: the server closed it, or sent bytes nobody asked for */
        return;
    }
    if (n == UV_EOF && c->phase == PH_BODY && c->mode == B_CLOSE) {
        c->keepalive = false;
        conn_done(c);
        return;
    }
    if (n < 0) {
        conn_fail(c, err_of((int)n, false));
        return;
    }
    c->len += (size_t)n;
    parse(c);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct lconn *c = container_of(req, struct lconn, creq);
    if (c->state != LC_CONNECTING)
        return; /* cancelled by conn_fail (timeout) */
    if (status < 0) {
        conn_fail(c, err_of(status, true));
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    send_request(c);
}

static void conn_start(struct lconn *c, uint64_t intended_ns)
{
    struct app *a = c->app;
    c->has_req = true;
    c->intended_ns = intended_ns;
    a->busy++;
    if (c->state == LC_IDLE) {
        send_request(c);
        return;
    }
    uv_tcp_init(&a->loop, &c->tcp);
    c->tcp.data = c;
    c->state = LC_CONNECTING;
    uint64_t deadline = intended_ns + a->o.timeout_ms * NS_PER_MS;
    uint64_t connect_deadline = uv_hrtime() + a->o.connect_timeout_ms * NS_PER_MS;
    uv_timer_start(&c->timer, on_timer,
                   ms_until(deadline < connect_deadline ? deadline : connect_deadline), 0);
    int r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&a->addr, on_connect);
    if (r != 0)
        conn_fail(c, err_of(r, true));
}

/* ---- scheduling ------------------------------------------------------------------------- */

static uint64_t intended_of(const struct app *a, uint64_t i)
{
    return a->t0_ns + (uint64_t)((double)i * 1e9 / a->o.rate);
}

static bool more_to_issue(const struct app *a, uint64_t now)
{
    if (a->stopping || (a->o.requests > 0 && a->issued >= a->o.requests))
        return false;
    if (a->end_ns == 0)
        return true;
    return (a->o.rate > 0 ? intended_of(a, a->issued) : now) < a->end_ns;
}

static void finish(struct app *a);

/* Starts every request that is due on a free connection (see the top of the file). */
static void dispatch(struct app *a)
{
    if (a->finished)
        return;
    for (;;) {
        uint64_t now = uv_hrtime();
        if (!more_to_issue(a, now))
            break;
        uint64_t intended = now;
        if (a->o.rate > 0) {
            intended = intended_of(a, a->issued);
            if (intended > now)
                break;
            if (now - intended >= a->o.timeout_ms * NS_PER_MS) {
                a->issued++;
                record(a, intended, 0, E_TIMEOUT); /* waited out its timeout in the queue */
                continue;
            }
        }
        struct lconn *c = take_conn(a);
        if (c == NULL)
            break;
        a->issued++;
        conn_start(c, intended);
    }
    if (a->busy == 0 && !more_to_issue(a, uv_hrtime()))
        finish(a);
}

static void on_tick(uv_timer_t *t)
{
    dispatch(t->data);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct app *a = s->data;
    (void)signum;
    if (a->stopping) {
        /* Second signal: do not wait for requests in flight. */
        for (uint64_t i = 0; i < a->o.conns; i++)
            if (a->conns[i].has_req)
                conn_fail(&a->conns[i], E_TIMEOUT);
    }
    a->stopping = true;
    dispatch(a);
}

/* Nothing more to issue or wait for: close every handle so uv_run returns. */
static void finish(struct app *a)
{
    a->finished = true;
    for (uint64_t i = 0; i < a->o.conns; i++) {
        struct lconn *c = &a->conns[i];
        if (c->state == LC_IDLE || c->state == LC_CONNECTING || c->state == LC_BUSY)
            conn_close(c);
        uv_close((uv_handle_t *)&c->timer, NULL);
    }
    uv_close((uv_handle_t *)&a->tick, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
}

/* ---- summary ---------------------------------------------------------------------------- */

static double run_seconds(const struct app *a)
{
    uint64_t end = a->last_done_ns > a->t0_ns ? a->last_done_ns : uv_hrtime();
    return (double)(end - a->t0_ns) / 1e9;
}

static void print_summary(const struct app *a, FILE *f)
{
    double secs = run_seconds(a);
    fprintf(f, "bw_load: %s, %" PRIu64 " connections, ", a->o.url, a->o.conns);
    if (a->o.rate > 0)
        fprintf(f, "open loop at %.1f req/s\n", a->o.rate);
    else
        fprintf(f, "closed loop (as fast as possible)\n");
    fprintf(f, "requests %" PRIu64 "  ok %" PRIu64 "  non-2xx %" PRIu64 "  errors %" PRIu64 "\n",
            a->total, a->ok, a->non2xx, a->total - a->ok - a->non2xx);
    for (int s = 0; s < 1000; s++)
        if (a->status_counts[s] > 0)
            fprintf(f, "  status %d: %" PRIu64 "\n", s, a->status_counts[s]);
    for (int e = 1; e < E_COUNT; e++)
        if (a->err_counts[e] > 0)
            fprintf(f, "  error %s: %" PRIu64 "\n", ERR_NAME[e], a->err_counts[e]);
    fprintf(f,
            "latency (all requests, from intended start): p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  "
            "max %.3f ms\n",
            (double)hist_quantile(&a->hist, 0.50) / 1e3,
            (double)hist_quantile(&a->hist, 0.90) / 1e3,
            (double)hist_quantile(&a->hist, 0.99) / 1e3, (double)a->hist.max / 1e3);
    fprintf(f, "duration %.3f s  rate %.1f req/s  ok rate %.1f req/s\n", secs,
            secs > 0 ? (double)a->total / secs : 0.0, secs > 0 ? (double)a->ok / secs : 0.0);
}

static int write_json(const struct app *a, const char *path)
{
    double secs = run_seconds(a);
    json_t *non2xx = json_object(), *errors = json_object();
    for (int s = 0; s < 1000; s++)
        if (a->status_counts[s] > 0) {
            char key[16];
            snprintf(key, sizeof(key), "%d", s);
            json_object_set_new(non2xx, key, json_integer((json_int_t)a->status_counts[s]));
        }
    for (int e = 1; e < E_COUNT; e++)
        json_object_set_new(errors, ERR_NAME[e], json_integer((json_int_t)a->err_counts[e]));
    json_t *lat =
        json_pack("{s:I, s:I, s:I, s:I, s:f}", "p50", (json_int_t)hist_quantile(&a->hist, 0.50),
                  "p90", (json_int_t)hist_quantile(&a->hist, 0.90), "p99",
                  (json_int_t)hist_quantile(&a->hist, 0.99), "max", (json_int_t)a->hist.max, "mean",
                  a->hist.n > 0 ? (double)a->hist.sum / (double)a->hist.n : 0.0);
    json_t *o = json_pack(
        "{s:s, s:I, s:f, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:f, s:f, s:f}", "url", a->o.url,
        "connections", (json_int_t)a->o.conns, "target_rate", a->o.rate, "requests",
        (json_int_t)a->total, "ok", (json_int_t)a->ok, "non_2xx", (json_int_t)a->non2xx,
        "errors_total", (json_int_t)(a->total - a->ok - a->non2xx), "status", non2xx, "errors",
        errors, "latency_us", lat, "duration_s", secs, "rate",
        secs > 0 ? (double)a->total / secs : 0.0, "ok_rate", secs > 0 ? (double)a->ok / secs : 0.0);
    int r = strcmp(path, "-") == 0 ? json_dumpf(o, stdout, JSON_COMPACT)
                                   : json_dump_file(o, path, JSON_COMPACT);
    if (strcmp(path, "-") == 0)
        putchar('\n');
    json_decref(o);
    return r;
}

/* ---- command line ----------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bw_load [options] URL          URL: [http://]HOST[:PORT][/PATH]\n"
            "  -c, --connections N       keep-alive connections (default 10)\n"
            "  -r, --rate R              total requests/s, open loop (default: closed loop)\n"
            "  -d, --duration SECONDS    stop issuing after this long\n"
            "  -n, --requests N          stop after N requests\n"
            "  -t, --timeout MS          per request, from its intended start (default 5000)\n"
            "      --connect-timeout MS  (default: --timeout)\n"
            "  -H, --header 'Name: v'    extra request header (repeatable)\n"
            "  -m, --method METHOD       (default GET)\n"
            "      --data STRING         request body\n"
            "  -o, --csv FILE            one line per request: t_start_ms,latency_us,status,error\n"
            "      --json FILE           the summary as JSON ('-': stdout)\n"
            "  -q, --quiet               no text summary\n"
            "At least one of --duration and --requests. See chaos/README.md.\n");
}

static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == '\0' || *s == '-' || *end != '\0' || errno != 0 || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || errno != 0 || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

static int parse_args(struct opts *o, int argc, char **argv)
{
    static const struct option longs[] = {{"connections", required_argument, NULL, 'c'},
                                          {"rate", required_argument, NULL, 'r'},
                                          {"duration", required_argument, NULL, 'd'},
                                          {"requests", required_argument, NULL, 'n'},
                                          {"timeout", required_argument, NULL, 't'},
                                          {"connect-timeout", required_argument, NULL, 'C'},
                                          {"header", required_argument, NULL, 'H'},
                                          {"method", required_argument, NULL, 'm'},
                                          {"data", required_argument, NULL, 'D'},
                                          {"csv", required_argument, NULL, 'o'},
                                          {"json", required_argument, NULL, 'j'},
                                          {"quiet", no_argument, NULL, 'q'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "c:r:d:n:t:H:m:o:qh", longs, NULL)) != -1) {
        bool ok = true;
        switch (opt) {
        case 'c':
            ok = parse_u64(optarg, 1, CONNS_MAX, &o->conns);
            break;
        case 'r':
            ok = parse_double(optarg, 0.0, 1e7, &o->rate);
            break;
        case 'd':
            ok = parse_double(optarg, 0.001, 1e7, &o->duration_s);
            break;
        case 'n':
            ok = parse_u64(optarg, 1, UINT64_MAX / 2, &o->requests);
            break;
        case 't':
            ok = parse_u64(optarg, 1, 3600000, &o->timeout_ms);
            break;
        case 'C':
            ok = parse_u64(optarg, 1, 3600000, &o->connect_timeout_ms);
            break;
        case 'H':
            ok = o->nheaders < USER_HEADERS_MAX && strchr(optarg, ':') != NULL &&
                 strpbrk(optarg, "\r\n") == NULL;
            if (ok)
                o->headers[o->nheaders++] = optarg;
            break;
        case 'm':
            ok = strlen(optarg) > 0 && strpbrk(optarg, " \r\n") == NULL;
            o->method = optarg;
            break;
        case 'D':
            o->data = optarg;
            break;
        case 'o':
            o->csv_path = optarg;
            break;
        case 'j':
            o->json_path = optarg;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            ok = false;
        }
        if (!ok) {
            if (opt != '?')
                fprintf(stderr, "bw_load: bad value for -%c: %s\n", opt, optarg);
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1 || (o->duration_s == 0 && o->requests == 0)) {
        usage(stderr);
        return 2;
    }
    o->url = argv[optind];
    if (o->connect_timeout_ms == 0)
        o->connect_timeout_ms = o->timeout_ms;
    return 0;
}

/* [http://]HOST[:PORT][/PATH]; HOST may be [v6]. Resolves the name once. */
static int parse_url(struct app *a)
{
    const char *u = a->o.url;
    if (strncmp(u, "https://", 8) == 0) {
        fprintf(stderr, "bw_load: https is not supported\n");
        return -1;
    }
    if (strncmp(u, "http://", 7) == 0)
        u += 7;
    const char *slash = strchr(u, '/');
    size_t hplen = slash != NULL ? (size_t)(slash - u) : strlen(u);
    if (hplen == 0 || hplen >= sizeof(a->hostport))
        return -1;
    memcpy(a->hostport, u, hplen);
    a->hostport[hplen] = '\0';
    snprintf(a->path, sizeof(a->path), "%s", slash != NULL ? slash : "/");
    char host[300];
    const char *port = "80";
    snprintf(host, sizeof(host), "%s", a->hostport);
    char *close = host[0] == '[' ? strchr(host, ']') : NULL;
    char *colon = strrchr(close != NULL ? close : host, ':');
    if (colon != NULL) {
        *colon = '\0';
        port = colon + 1;
    }
    if (close != NULL) {
        *close = '\0';
        memmove(host, host + 1, strlen(host));
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    int r = getaddrinfo(host, port, &hints, &res);
    if (r != 0) {
        fprintf(stderr, "bw_load: %s: %s\n", a->hostport, gai_strerror(r));
        return -1;
    }
    memcpy(&a->addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

static int build_request(struct app *a)
{
    a->req = malloc(REQ_MAX);
    if (a->req == NULL)
        return -1;
    bool has_host = false;
    for (int i = 0; i < a->o.nheaders; i++)
        has_host |= strncasecmp(a->o.headers[i], "host:", 5) == 0;
    size_t n = (size_t)snprintf(a->req, REQ_MAX, "%s %s HTTP/1.1\r\n", a->o.method, a->path);
    if (!has_host && n < REQ_MAX)
        n += (size_t)snprintf(a->req + n, REQ_MAX - n, "Host: %s\r\n", a->hostport);
    for (int i = 0; i < a->o.nheaders && n < REQ_MAX; i++)
        n += (size_t)snprintf(a->req + n, REQ_MAX - n, "%s\r\n", a->o.headers[i]);
    if (a->o.data != NULL && n < REQ_MAX)
        n +=
            (size_t)snprintf(a->req + n, REQ_MAX - n, "Content-Length: %zu\r\n", strlen(a->o.data));
    if (n < REQ_MAX)
        n +=
            (size_t)snprintf(a->req + n, REQ_MAX - n, "\r\n%s", a->o.data != NULL ? a->o.data : "");
    if (n >= REQ_MAX) {
        fprintf(stderr, "bw_load: the request is over %d bytes\n", REQ_MAX);
        return -1;
    }
    a->reqlen = n;
    a->head_method = strcmp(a->o.method, "HEAD") == 0;
    return 0;
}

static int open_csv(struct app *a)
{
    if (a->o.csv_path == NULL)
        return 0;
    a->csv = strcmp(a->o.csv_path, "-") == 0 ? stdout : fopen(a->o.csv_path, "w");
    if (a->csv == NULL) {
        fprintf(stderr, "bw_load: %s: %s\n", a->o.csv_path, strerror(errno));
        return -1;
    }
    setvbuf(a->csv, NULL, _IOFBF, CSV_BUFFER);
    fputs("t_start_ms,latency_us,status,error\n", a->csv);
    return 0;
}

static int run(struct app *a)
{
    a->conns = calloc(a->o.conns, sizeof(*a->conns));
    if (a->conns == NULL) {
        fprintf(stderr, "bw_load: out of memory for %" PRIu64 " connections\n", a->o.conns);
        return 1;
    }
    uv_loop_init(&a->loop);
    for (uint64_t i = a->o.conns; i-- > 0;) {
        struct lconn *c = &a->conns[i];
        c->app = a;
        uv_timer_init(&a->loop, &c->timer);
        list_push(&a->idle_down, c);
    }
    uv_timer_init(&a->loop, &a->tick);
    a->tick.data = a;
    uv_signal_init(&a->loop, &a->sigint);
    uv_signal_init(&a->loop, &a->sigterm);
    a->sigint.data = a->sigterm.data = a;
    uv_signal_start(&a->sigint, on_signal, SIGINT);
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    a->t0_ns = uv_hrtime();
    a->wall0_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / NS_PER_MS;
    if (a->o.duration_s > 0)
        a->end_ns = a->t0_ns + (uint64_t)(a->o.duration_s * 1e9);
    uv_timer_start(&a->tick, on_tick, TICK_MS, TICK_MS);
    dispatch(a);
    uv_run(&a->loop, UV_RUN_DEFAULT);
    int rc = 0;
    if (uv_loop_close(&a->loop) != 0) {
        fprintf(stderr, "bw_load: handles left open at exit\n");
        rc = 1;
    }
    free(a->conns);
    return rc;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    struct app *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return 1;
    a->o.conns = 10;
    a->o.timeout_ms = 5000;
    a->o.method = "GET";
    int rc = parse_args(&a->o, argc, argv);
    if (rc == 0 && (parse_url(a) != 0 || build_request(a) != 0 || open_csv(a) != 0))
        rc = 1;
    if (rc == 0)
        rc = run(a);
    if (a->csv != NULL && (fflush(a->csv) != 0 || (a->csv != stdout && fclose(a->csv) != 0))) {
        fprintf(stderr, "bw_load: writing %s: %s\n", a->o.csv_path, strerror(errno));
        rc = 1;
    }
    if (rc == 0 && !a->o.quiet)
        print_summary(a, a->csv == stdout ? stderr : stdout);
    if (rc == 0 && a->o.json_path != NULL && write_json(a, a->o.json_path) != 0) {
        fprintf(stderr, "bw_load: writing %s failed\n", a->o.json_path);
        rc = 1;
    }
    free(a->req);
    free(a);
    return rc;
}
