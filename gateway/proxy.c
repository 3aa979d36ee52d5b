/*
 * proxy.c - the request path: route, admit, forward to an upstream host, stream the answer back.
 *
 * Breakwater does not use h2o's built-in proxy (PLATFORM.md: one timeout for everything, an
 * unbounded pool, socket churn per request). Each request becomes an exchange:
 *
 *   on_req --route--> admit (bulkhead) --pick host--> CONNECTING --connected--> WAITING_HEAD
 *        \--> 404                 \--> 503                 |                       |
 *                                               502 <-- refused/timeout   head parsed: start
 * response
 *                                                                                  v
 *                                  DONE <--body complete / EOF / error / deadline-- STREAMING
 *
 * Timing: one uv timer per exchange. While connecting it fires at the earlier of the connect
 * timeout and the request deadline; then at the deadline until the response head arrives. The
 * deadline is the route's timeout, shortened by an inbound X-Request-Timeout-Ms, and what is left
 * of it is sent upstream in X-Request-Timeout-Ms. While the body streams, the timer is an idle
 * timeout instead (see arm_body_timer): the upstream must keep sending, the client may be slow.
 *
 * Streaming: response bytes are read into one pooled 64 KiB buffer, de-chunked in place and handed
 * to h2o_send(); reading stops until h2o calls proceed (the client took the bytes). So memory per
 * exchange is bounded whatever the response size, and a slow client slows the upstream read
 * instead of filling memory.
 *
 * Outcomes: every exchange that reached host selection ends in exactly one gw_outcome_t, emitted
 * by finish(), which is idempotent (the DONE state guards it).
 *
 * Lifetime: the exchange is malloc'd and reference counted. References: the h2o request (dropped
 * when h2o disposes the request's pool), the timer (dropped in its close callback), a pending
 * write (dropped in the write callback), and one held across each callback so that nothing frees
 * the exchange under our feet. The pooled buffer is returned when the exchange is freed, because
 * h2o may still be writing from it until the request is disposed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "acklink.h"
#include "http1.h"
#include "log.h"
#include "query.h"
#include "reply.h"
#include "worker.h"

#define MAX_REQUEST_HEAD 65536

typedef struct proxy_handler {
    h2o_handler_t super;
    gw_worker_t *w;
} proxy_handler_t;

typedef enum ex_state {
    EX_DELAYED = 0, /* held by the route's fault.delay before anything is sent */
    EX_CONNECTING,
    EX_WAITING_HEAD,
    EX_STREAMING,
    EX_DONE,
} ex_state_t;

typedef struct exchange {
    h2o_generator_t gen;
    gw_worker_t *w;
    h2o_req_t *req;      /* NULL once h2o has stopped or disposed the request */
    h2o_req_t *orig_req; /* valid until on_req_dispose returns */
    uint32_t route_idx;
    const gw_route_config_t *route;
    gw_upstream_t *up;
    gw_host_t *host;
    gw_conn_t *conn;
    uv_timer_t timer;
    uv_write_t write_req;
    ex_state_t state;
    int refs;
    int attempts;
    bool head_request;
    bool response_started;
    bool waiting_proceed; /* bytes handed to h2o, proceed not called yet */
    bool resp_keep_alive;
    uint16_t status;
    uint64_t start_ns;    /* uv_hrtime at admission */
    uint64_t timeout_ms;  /* the deadline's length */
    uint64_t deadline_ms; /* uv_now() clock */
    uint64_t connect_deadline_ms;
    char *buf; /* pooled read buffer */
    size_t buf_len;
    size_t head_prev_len;
    gw_h1_body_t body;
    br_ticket_t ticket; /* the breaker's admission, echoed in the outcome record */
    char request_id[GW_REQUEST_ID_MAX + 1];
} exchange_t;

/* ---- small helpers ---------------------------------------------------------------------- */

/* Writes v as exactly 16 lower-case hex digits (no NUL). */
static void put_hex64(char *out, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[i] = hex[v & 15];
}

/* Writes v in decimal (no NUL); returns the number of digits. */
static size_t put_u64(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* Marks what the worker is handling, for the crash record (see crash.h). */
static void guard(gw_worker_t *w, int64_t route, const char *request_id)
{
    w->crash_ctx.route = route;
    w->crash_ctx.request_id = request_id;
}

static void unguard(gw_worker_t *w)
{
    w->crash_ctx.route = -1;
    w->crash_ctx.request_id = NULL;
}

#define GUARD_EX(ex) guard((ex)->w, (int64_t)(ex)->route_idx, (ex)->request_id)

/* A uniform draw in [0, 1000000) for fault percentages (xorshift64; not for secrets). */
static uint32_t roll_ppm(gw_worker_t *w)
{
    uint64_t x = w->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    w->rng = x;
    return (uint32_t)(x % GW_PPM_ONE);
}

static uint64_t now_ms(const exchange_t *ex)
{
    return uv_now(ex->w->loop);
}

static void ex_free(exchange_t *ex)
{
    gw_buf_put(&ex->w->bufs, ex->buf);
    free(ex);
}

static void unref(exchange_t *ex)
{
    if (--ex->refs == 0)
        ex_free(ex);
}

static int is_idempotent(h2o_iovec_t m)
{
    static const char *const methods[] = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (h2o_memis(m.base, m.len, methods[i], strlen(methods[i])))
            return 1;
    return 0;
}

static void make_request_id(gw_worker_t *w, h2o_req_t *req, char *out)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-request-id"), -1);
    if (i >= 0) {
        h2o_iovec_t v = req->headers.entries[i].value;
        if (gw_request_id_valid(v.base, v.len)) {
            memcpy(out, v.base, v.len);
            out[v.len] = '\0';
            return;
        }
    }
    /* 32 hex digits: this worker's random prefix, then its counter (no printf: hot path) */
    put_hex64(out, w->reqid_prefix);
    put_hex64(out + 16, ++w->reqid_seq);
    out[32] = '\0';
}

static void add_request_id_header(h2o_req_t *req, const char *id)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, id,
                          strlen(id));
}

/* Parses a non-negative decimal; -1 when malformed. */
static int64_t parse_uint(h2o_iovec_t v)
{
    if (v.len == 0 || v.len > 12)
        return -1;
    int64_t n = 0;
    for (size_t k = 0; k < v.len; k++) {
        if (v.base[k] < '0' || v.base[k] > '9')
            return -1;
        n = n * 10 + (v.base[k] - '0');
    }
    return n;
}

/* The smallest well-formed value among all fields `name` (a deadline can only be shortened);
 * -1 when there is none. */
static int64_t header_min_uint(h2o_req_t *req, const char *name, size_t name_len)
{
    int64_t best = -1;
    for (ssize_t i = -1; (i = h2o_find_header_by_str(&req->headers, name, name_len, i)) >= 0;) {
        int64_t n = parse_uint(req->headers.entries[i].value);
        if (n >= 0 && (best < 0 || n < best))
            best = n;
    }
    return best;
}

static void client_ip(h2o_req_t *req, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    out[0] = '\0';
    if (len == 0)
        return;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out, (socklen_t)cap);
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, out, (socklen_t)cap);
}

/* ---- ending an exchange ------------------------------------------------------------------ */

static void on_timer_close(uv_handle_t *h)
{
    unref(h->data);
}

/* Hands the outcome to the breaker owner. Failures and trials wake it at once (a breaker must
 * open on the failure that trips it, not at the next poll); successes ride the next poll. */
static void push_outcome(const exchange_t *ex, const gw_outcome_t *o)
{
    const gw_upstream_config_t *uc = ex->up->cfg;
    bool failed = o->kind != GW_OUTCOME_RESPONSE && o->kind != GW_OUTCOME_CANCELLED;
    if (o->kind == GW_OUTCOME_RESPONSE)
        failed = br_classify_status(o->status, uc->failure_statuses, uc->nfailure_statuses) ==
                 BR_OUTCOME_FAILURE;
    gw_outq_rec_t rec = {
        .t_ns = uv_hrtime(),
        .generation = ex->ticket.generation,
        .latency_us = o->latency_us,
        .upstream = o->upstream,
        .host = (uint16_t)o->host,
        .status = o->status,
        .kind = (uint8_t)o->kind,
        .trial = ex->ticket.trial,
    };
    /* a success matters at once too while the owner's window holds failures or slow calls
     * (it may complete a failure-rate or slow-call trip): the owner publishes that flag */
    const gw_upstate_t *st = gw_runtime_upstate(ex->w->rt, ex->up->index);
    bool urgent = failed || ex->ticket.trial || __atomic_load_n(&st->sensitive, __ATOMIC_RELAXED);
    gw_outq_push(ex->w->rt->outq, ex->w->index, &rec, urgent);
}

/*
 * Ends the upstream side exactly once: emits the outcome, stops the timer, and gives the
 * connection back (reusable) or closes it. Does not touch the client side.
 */
static void finish(exchange_t *ex, gw_outcome_kind_t kind, bool conn_reusable)
{
    if (ex->state == EX_DONE)
        return;
    ex->state = EX_DONE;

    gw_outcome_t o = {
        .route = ex->route_idx,
        .upstream = ex->up->index,
        .host = ex->host != NULL ? ex->host->index : 0,
        .kind = kind,
        .status = ex->status,
        .latency_us = (uv_hrtime() - ex->start_ns) / 1000,
        .finished_ms = now_ms(ex),
    };
    GW_STAT_ADD(ex->up->stats->outcomes[kind], 1);
    GW_STAT_ADD(ex->up->stats->inflight, -1);
    push_outcome(ex, &o);

    uv_close((uv_handle_t *)&ex->timer, on_timer_close);
    if (ex->conn != NULL) {
        if (conn_reusable)
            gw_conn_release(ex->conn);
        else
            gw_conn_close(ex->conn, false);
        ex->conn = NULL;
    }
}

/* Sends body bytes (or just the end) to the client. The exchange must hold a reference. */
static void send_to_client(exchange_t *ex, char *data, size_t len, h2o_send_state_t state)
{
    if (ex->req == NULL)
        return;
    h2o_iovec_t v = h2o_iovec_init(data, len);
    ex->waiting_proceed = state == H2O_SEND_STATE_IN_PROGRESS;
    h2o_send(ex->req, &v, len > 0 ? 1 : 0, state);
}

/*
 * The upstream failed. Before the response started the client gets our JSON error; after, the
 * stream is cut (h2o closes the client connection or resets the stream).
 */
static void fail(exchange_t *ex, gw_outcome_kind_t kind, const char *detail)
{
    if (ex->state == EX_DONE)
        return;
    finish(ex, kind, false);
    if (ex->req == NULL)
        return;
    if (ex->response_started) {
        send_to_client(ex, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    h2o_req_t *req = ex->req;
    const char *upstream = ex->up->cfg->name;
    add_request_id_header(req, ex->request_id);
    if (kind == GW_OUTCOME_TIMEOUT)
        gw_reply_error(req, 504, "upstream_timeout", "timeout", ex->request_id, NULL,
                       "upstream '%s' did not answer within the request deadline", upstream);
    else
        gw_reply_error(req, 502, "upstream_unavailable", "unavailable", ex->request_id, NULL,
                       "upstream '%s' host %s: %s", upstream, ex->host->addr->text, detail);
}

/* ---- the response -------------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

/*
 * Once the head has arrived the request deadline no longer applies (a 1 GB download to a slow
 * client may rightly take longer): instead the upstream must send something at least every
 * `timeout` (the route's), counted only while we are reading. While h2o is still sending our
 * last bytes to the client the timer is stopped: a slow client is not the upstream's fault.
 */
static void arm_body_timer(exchange_t *ex)
{
    uv_timer_start(&ex->timer, on_timer, ex->route->timeout_ms, 0);
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *req);
static void on_stop(h2o_generator_t *gen, h2o_req_t *req);
static void on_upstream_read(gw_conn_t *c, ssize_t nread);

static void alloc_cb(gw_conn_t *c, uv_buf_t *out)
{
    exchange_t *ex = c->owner;
    out->base = ex->buf + ex->buf_len;
    out->len = GW_BUF_SIZE - ex->buf_len;
}

static bool header_is_forwardable(const gw_h1_header_t *hd, const gw_h1_response_t *res)
{
    if (gw_h1_is_hop_by_hop(hd->name, hd->name_len) ||
        h2o_lcstris(hd->name, hd->name_len, H2O_STRLIT("content-length")) ||
        h2o_lcstris(hd->name, hd->name_len, H2O_STRLIT("server")) ||
        h2o_lcstris(hd->name, hd->name_len, H2O_STRLIT("date")))
        return false;
    for (size_t i = 0; i < res->nheaders; i++) {
        const gw_h1_header_t *c = &res->headers[i];
        if (h2o_lcstris(c->name, c->name_len, H2O_STRLIT("connection")) &&
            gw_h1_connection_lists(c->value, c->value_len, hd->name, hd->name_len))
            return false;
    }
    return true;
}

/* Copies the upstream's head into h2o's response (strings into the request pool: the read buffer
 * is reused for the body). */
static void start_response(exchange_t *ex, const gw_h1_response_t *res)
{
    h2o_req_t *req = ex->req;
    req->res.status = res->status;
    req->res.reason = h2o_strdup(&req->pool, res->reason, res->reason_len).base;
    for (size_t i = 0; i < res->nheaders; i++) {
        const gw_h1_header_t *hd = &res->headers[i];
        if (!header_is_forwardable(hd, res))
            continue;
        h2o_iovec_t name = h2o_strdup(&req->pool, hd->name, hd->name_len);
        h2o_strtolower(name.base, name.len);
        h2o_iovec_t value = h2o_strdup(&req->pool, hd->value, hd->value_len);
        h2o_add_header_by_str(&req->pool, &req->res.headers, name.base, name.len, 1, NULL,
                              value.base, value.len);
    }
    add_request_id_header(req, ex->request_id);
    /* h2o writes Content-Length from res.content_length: the body's length, or for HEAD the length
     * a GET would have had; 204 and 304 get none at all (RFC 9110 8.6) */
    if (res->body == GW_H1_BODY_LENGTH || (ex->head_request && res->has_content_length))
        req->res.content_length = res->content_length;
    else if (res->body == GW_H1_BODY_NONE && !ex->head_request && res->status != 204 &&
             res->status != 304)
        req->res.content_length = 0;
    ex->gen.proceed = on_proceed;
    ex->gen.stop = on_stop;
    h2o_start_response(req, &ex->gen);
    ex->response_started = true;
}

/*
 * Handles decoded-or-not body bytes at ex->buf[off..off+len): decodes in place and forwards them.
 * Returns true when the caller should keep reading.
 */
static bool handle_body(exchange_t *ex, size_t off, size_t len)
{
    size_t extra = 0;
    int r = gw_h1_body_decode(&ex->body, ex->buf + off, &len, &extra);
    if (r == GW_H1_INVALID) {
        fail(ex, GW_OUTCOME_RESET, "malformed chunked body");
        return false;
    }
    if (r == 1) {
        finish(ex, GW_OUTCOME_RESPONSE, ex->resp_keep_alive && extra == 0);
        send_to_client(ex, ex->buf + off, len, H2O_SEND_STATE_FINAL);
        return false;
    }
    ex->buf_len = 0; /* the next read starts at the buffer's beginning again */
    if (len == 0)
        return true;
    gw_conn_pause(ex->conn);
    uv_timer_stop(&ex->timer);
    send_to_client(ex, ex->buf + off, len, H2O_SEND_STATE_IN_PROGRESS);
    return false;
}

/* Parses what has been read of the head; starts the response once it is complete. */
static void handle_head(exchange_t *ex)
{
    gw_h1_response_t res;
    int hl;
    for (;;) {
        hl = gw_h1_parse_response(ex->buf, ex->buf_len, ex->head_prev_len, ex->head_request, &res);
        if (hl == GW_H1_INCOMPLETE) {
            if (ex->buf_len == GW_BUF_SIZE)
                fail(ex, GW_OUTCOME_RESET, "response head larger than 64 KiB");
            ex->head_prev_len = ex->buf_len;
            return;
        }
        if (hl < 0) {
            fail(ex, GW_OUTCOME_RESET, "malformed response head");
            return;
        }
        if (res.status >= 200)
            break;
        /* 1xx: h2o 2.2.5 cannot relay informational responses; drop it and parse on */
        memmove(ex->buf, ex->buf + hl, ex->buf_len - (size_t)hl);
        ex->buf_len -= (size_t)hl;
        ex->head_prev_len = 0;
    }
    ex->status = (uint16_t)res.status;
    ex->resp_keep_alive = res.keep_alive;
    gw_h1_body_init(&ex->body, &res);
    ex->state = EX_STREAMING;
    if (ex->req == NULL)
        return;
    start_response(ex, &res);
    arm_body_timer(ex);
    if (handle_body(ex, (size_t)hl, ex->buf_len - (size_t)hl))
        ex->buf_len = 0;
}

static void retry_or_fail(exchange_t *ex, const char *detail);

static void on_upstream_read(gw_conn_t *c, ssize_t nread)
{
    exchange_t *ex = c->owner;
    ex->refs++;
    GUARD_EX(ex);
    if (nread > 0) {
        ex->buf_len += (size_t)nread;
        if (ex->state == EX_WAITING_HEAD) {
            handle_head(ex);
        } else if (ex->state == EX_STREAMING) {
            arm_body_timer(ex);
            if (handle_body(ex, 0, ex->buf_len))
                ex->buf_len = 0;
        } else { /* bytes before we asked for anything */
            fail(ex, GW_OUTCOME_RESET, "unsolicited data from the upstream");
        }
    } else if (ex->state == EX_WAITING_HEAD) {
        if (ex->buf_len == 0)
            retry_or_fail(ex, nread == UV_EOF ? "connection closed before a response"
                                              : uv_strerror((int)nread));
        else
            fail(ex, GW_OUTCOME_RESET, "connection closed inside the response head");
    } else if (ex->state == EX_STREAMING) {
        if (nread == UV_EOF && gw_h1_body_eof(&ex->body)) {
            finish(ex, GW_OUTCOME_RESPONSE, false);
            send_to_client(ex, NULL, 0, H2O_SEND_STATE_FINAL);
        } else {
            fail(ex, GW_OUTCOME_RESET, "response body cut short");
        }
    }
    unguard(ex->w);
    unref(ex);
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    exchange_t *ex = H2O_STRUCT_FROM_MEMBER(exchange_t, gen, gen);
    ex->waiting_proceed = false;
    if (ex->state == EX_STREAMING && ex->conn != NULL) {
        arm_body_timer(ex);
        gw_conn_resume(ex->conn);
    }
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    exchange_t *ex = H2O_STRUCT_FROM_MEMBER(exchange_t, gen, gen);
    ex->req = NULL;
    ex->refs++;
    finish(ex, GW_OUTCOME_CANCELLED, false);
    unref(ex);
}

/* ---- the request ------------------------------------------------------------------------- */

static size_t append(char *dst, const char *s, size_t n)
{
    memcpy(dst, s, n);
    return n;
}

static bool request_header_is_forwardable(const h2o_header_t *hd, h2o_req_t *req, ssize_t conn_idx)
{
    const h2o_iovec_t *n = hd->name;
    if (gw_h1_is_hop_by_hop(n->base, n->len) ||
        h2o_lcstris(n->base, n->len, H2O_STRLIT("content-length")) ||
        h2o_lcstris(n->base, n->len, H2O_STRLIT("host")) ||
        h2o_lcstris(n->base, n->len, H2O_STRLIT("expect")) ||
        h2o_lcstris(n->base, n->len, H2O_STRLIT("x-request-id")) ||
        h2o_lcstris(n->base, n->len, H2O_STRLIT("x-forwarded-for")) ||
        h2o_lcstris(n->base, n->len, H2O_STRLIT("x-request-timeout-ms")) ||
        h2o_lcstris(n->base, n->len, H2O_STRLIT("x-breakwater-fault")) ||
        (n->len > 0 && n->base[0] == ':'))
        return false;
    if (conn_idx >= 0) {
        h2o_iovec_t cv = req->headers.entries[conn_idx].value;
        if (gw_h1_connection_lists(cv.base, cv.len, n->base, n->len))
            return false;
    }
    return true;
}

/* The path sent upstream: the raw one, unless h2o had to normalize it (dot segments, etc.), in
 * which case the normalized path the route was matched on, plus the query. */
static h2o_iovec_t upstream_path(h2o_req_t *req)
{
    size_t raw_path_len = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
    if (h2o_memis(req->path.base, raw_path_len, req->path_normalized.base,
                  req->path_normalized.len))
        return req->path;
    if (req->query_at == SIZE_MAX)
        return req->path_normalized;
    return h2o_concat(
        &req->pool, req->path_normalized,
        h2o_iovec_init(req->path.base + req->query_at, req->path.len - req->query_at));
}

/* Builds the upstream request head in the request's pool. */
static h2o_iovec_t build_request_head(exchange_t *ex)
{
    h2o_req_t *req = ex->req;
    char ip[INET6_ADDRSTRLEN];
    client_ip(req, ip, sizeof(ip));
    h2o_iovec_t path = upstream_path(req);
    ssize_t conn_idx = h2o_find_header(&req->headers, H2O_TOKEN_CONNECTION, -1);
    uint64_t now = now_ms(ex);
    uint64_t left = ex->deadline_ms > now ? ex->deadline_ms - now : 1;

    size_t cap =
        req->method.len + path.len + req->authority.len + strlen(ex->request_id) + strlen(ip) + 256;
    for (size_t i = 0; i < req->headers.size; i++)
        cap += req->headers.entries[i].name->len + req->headers.entries[i].value.len + 4;
    char *head = h2o_mem_alloc_pool(&req->pool, cap), *p = head;

    p += append(p, req->method.base, req->method.len);
    *p++ = ' ';
    p += append(p, path.base, path.len);
    p += append(p, H2O_STRLIT(" HTTP/1.1\r\nhost: "));
    p += append(p, req->authority.base, req->authority.len);
    p += append(p, H2O_STRLIT("\r\n"));
    for (size_t i = 0; i < req->headers.size; i++) {
        const h2o_header_t *hd = &req->headers.entries[i];
        if (!request_header_is_forwardable(hd, req, conn_idx))
            continue;
        p += append(p, hd->name->base, hd->name->len);
        p += append(p, H2O_STRLIT(": "));
        p += append(p, hd->value.base, hd->value.len);
        p += append(p, H2O_STRLIT("\r\n"));
    }
    p += append(p, H2O_STRLIT("x-forwarded-for: "));
    /* every X-Forwarded-For field the client sent, in order, then the client's address */
    for (ssize_t i = -1;
         (i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-forwarded-for"), i)) >= 0;) {
        h2o_iovec_t v = req->headers.entries[i].value;
        p += append(p, v.base, v.len);
        p += append(p, H2O_STRLIT(", "));
    }
    p += append(p, ip, strlen(ip));
    p += append(p, H2O_STRLIT("\r\nx-request-id: "));
    p += append(p, ex->request_id, strlen(ex->request_id));
    p += append(p, H2O_STRLIT("\r\nx-request-timeout-ms: "));
    p += put_u64(p, left);
    p += append(p, H2O_STRLIT("\r\n"));
    if (req->entity.base != NULL) {
        p += append(p, H2O_STRLIT("content-length: "));
        p += put_u64(p, req->entity.len);
        p += append(p, H2O_STRLIT("\r\n"));
    }
    p += append(p, H2O_STRLIT("\r\n"));
    return h2o_iovec_init(head, (size_t)(p - head));
}

static void on_write(uv_write_t *wr, int status)
{
    exchange_t *ex = wr->data;
    if (status < 0 && status != UV_ECANCELED && ex->state == EX_WAITING_HEAD && ex->buf_len == 0 &&
        ex->conn != NULL) {
        retry_or_fail(ex, uv_strerror(status)); /* our write reference holds ex meanwhile */
    }
    unref(ex);
}

static void send_request(exchange_t *ex)
{
    h2o_iovec_t head = build_request_head(ex);
    uv_buf_t bufs[2] = {uv_buf_init(head.base, (unsigned)head.len)};
    unsigned nbufs = 1;
    if (ex->req->entity.base != NULL && ex->req->entity.len > 0)
        bufs[nbufs++] = uv_buf_init(ex->req->entity.base, (unsigned)ex->req->entity.len);

    ex->state = EX_WAITING_HEAD;
    ex->buf_len = 0;
    ex->head_prev_len = 0;
    ex->write_req.data = ex;
    int r = uv_write(&ex->write_req, (uv_stream_t *)&ex->conn->tcp, bufs, nbufs, on_write);
    if (r == 0)
        ex->refs++;
    else
        retry_or_fail(ex, uv_strerror(r));
}

static void start_attempt(exchange_t *ex, bool fresh);

static void on_timer(uv_timer_t *t)
{
    exchange_t *ex = t->data;
    ex->refs++;
    GUARD_EX(ex);
    if (ex->state == EX_DELAYED) {
        /* the injected delay is over: the deadline starts now */
        ex->deadline_ms = now_ms(ex) + ex->timeout_ms;
        ex->connect_deadline_ms = now_ms(ex) + ex->up->cfg->connect_timeout_ms;
        start_attempt(ex, false);
    } else if (ex->state == EX_CONNECTING && now_ms(ex) < ex->deadline_ms)
        fail(ex, GW_OUTCOME_CONNECT_TIMEOUT, "connect timed out");
    else if (ex->state == EX_STREAMING)
        fail(ex, GW_OUTCOME_TIMEOUT, "response body stalled");
    else
        fail(ex, GW_OUTCOME_TIMEOUT, "deadline passed");
    unguard(ex->w);
    unref(ex);
}

static void arm_timer(exchange_t *ex, uint64_t at_ms)
{
    uint64_t now = now_ms(ex);
    uv_timer_start(&ex->timer, on_timer, at_ms > now ? at_ms - now : 0, 0);
}

static void on_connected(gw_conn_t *c, int status)
{
    exchange_t *ex = c->owner;
    ex->refs++;
    GUARD_EX(ex);
    if (status != 0) {
        fail(ex, GW_OUTCOME_CONNECT_REFUSED, uv_strerror(status));
    } else if (ex->req == NULL) {
        finish(ex, GW_OUTCOME_CANCELLED, false);
    } else {
        arm_timer(ex, ex->deadline_ms);
        send_request(ex);
    }
    unguard(ex->w);
    unref(ex);
}

/* Starts an attempt on a connection. `fresh` skips the idle pool (used for the retry after a
 * pooled connection turned out to be stale). */
static void start_attempt(exchange_t *ex, bool fresh)
{
    bool ready = false;
    ex->attempts++;
    ex->state = EX_CONNECTING;
    ex->conn = NULL;
    int r = fresh ? gw_conn_connect(ex->host, ex, on_connected, &ex->conn)
                  : gw_conn_acquire(ex->host, ex, on_connected, &ex->conn, &ready);
    if (r != 0) {
        ex->conn = NULL;
        fail(ex, GW_OUTCOME_CONNECT_REFUSED, uv_strerror(r));
        return;
    }
    if (ready) {
        arm_timer(ex, ex->deadline_ms);
        send_request(ex);
    } else {
        uint64_t cd = ex->connect_deadline_ms;
        arm_timer(ex, cd < ex->deadline_ms ? cd : ex->deadline_ms);
    }
}

/*
 * A connection broke before any byte of the response. A pooled connection may simply have been
 * closed by the upstream while idle (the keep-alive race): then the request never reached it and
 * an idempotent request is safely sent again, once, on a new connection. Anything else fails.
 */
static void retry_or_fail(exchange_t *ex, const char *detail)
{
    bool stale = ex->conn != NULL && ex->conn->reused;
    if (stale && ex->attempts == 1 && ex->req != NULL && is_idempotent(ex->req->method)) {
        gw_conn_close(ex->conn, false);
        ex->conn = NULL;
        GW_STAT_ADD(ex->up->stats->retries, 1);
        ex->connect_deadline_ms = now_ms(ex) + ex->up->cfg->connect_timeout_ms;
        start_attempt(ex, true);
        return;
    }
    fail(ex, GW_OUTCOME_RESET, detail);
}

/* ---- the handler ------------------------------------------------------------------------- */

/* The h2o request's pool is being cleared: the request is gone. */
static void on_req_dispose(void *p)
{
    exchange_t *ex = *(exchange_t **)p;
    gw_worker_t *w = ex->w;
    int status = ex->orig_req->res.status;
    ex->req = NULL;
    finish(ex, GW_OUTCOME_CANCELLED, false); /* the request's reference holds ex meanwhile */
    gw_stats_count_response(gw_stats_route(w->stats, w->index, ex->route_idx),
                            status != 0 ? status : 499, (uv_hrtime() - ex->start_ns) / 1000);
    w->inflight--;
    GW_STAT_ADD(w->wstats->requests_inflight, -1);
    unref(ex); /* the request's reference */
}

static int64_t bulkhead_inflight(gw_worker_t *w, uint32_t upstream)
{
    int64_t sum = 0;
    uint32_t n = gw_stats_nworkers(w->stats);
    for (uint32_t i = 0; i < n; i++)
        sum += GW_STAT_GET(gw_stats_upstream(w->stats, i, upstream)->inflight);
    return sum;
}

/* Counts a response that Breakwater answered itself, before any exchange existed. */
static void count_local_reply(gw_worker_t *w, uint32_t route, int status, uint64_t start_ns)
{
    gw_stats_count_response(gw_stats_route(w->stats, w->index, route), status,
                            (uv_hrtime() - start_ns) / 1000);
}

/* Answers a request that never became an exchange (refusals, faults), counting it. */
static int reply_local(gw_worker_t *w, h2o_req_t *req, uint32_t route, uint64_t start_ns,
                       const char *request_id, int status, const char *code, const char *reason,
                       const char *fmt, ...) __attribute__((format(printf, 9, 10)));

static int reply_local(gw_worker_t *w, h2o_req_t *req, uint32_t route, uint64_t start_ns,
                       const char *request_id, int status, const char *code, const char *reason,
                       const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_request_id_header(req, request_id);
    gw_reply_verror(req, status, code, reason, request_id, NULL, fmt, ap);
    va_end(ap);
    count_local_reply(w, route, status, start_ns);
    return 1;
}

/*
 * X-Breakwater-Fault (only with debug.fault_headers: true): `crash` faults inside the guarded
 * handler (the worker dies and leaves a crash record), `stall=MS` blocks this worker's event loop,
 * `abort=STATUS` answers STATUS. Returns 1 when it answered the request.
 */
static int apply_fault_header(gw_worker_t *w, h2o_req_t *req, uint32_t route, uint64_t start_ns,
                              const char *request_id)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-breakwater-fault"), -1);
    if (i < 0)
        return 0;
    h2o_iovec_t v = req->headers.entries[i].value;
    char val[32];
    snprintf(val, sizeof(val), "%.*s", (int)(v.len < 31 ? v.len : 31), v.base);
    unsigned n = 0;
    if (strcmp(val, "crash") == 0) {
        gw_log(GW_LOG_WARN, "fault header: crashing this worker", "{s:s}", "request_id",
               request_id);
        volatile int *volatile bad = (volatile int *)(uintptr_t)16;
        *bad = 1; /* a real invalid access, caught by crash.c */
        return 0;
    }
    if (sscanf(val, "stall=%u", &n) == 1 && n <= 600000) {
        struct timespec ts = {.tv_sec = n / 1000, .tv_nsec = (long)(n % 1000) * 1000000};
        while (nanosleep(&ts, &ts) != 0)
            ;
        return 0;
    }
    if (sscanf(val, "abort=%u", &n) == 1 && n >= 200 && n <= 599)
        return reply_local(w, req, route, start_ns, request_id, (int)n, "fault_injected", NULL,
                           "fault injected by X-Breakwater-Fault: abort=%u", n);
    return reply_local(w, req, route, start_ns, request_id, 400, "bad_fault_header", NULL,
                       "X-Breakwater-Fault must be crash, stall=MS or abort=STATUS");
}

/* 503 circuit_open: the breaker is open; Retry-After is the time left in the open period. */
static int reply_circuit_open(gw_worker_t *w, h2o_req_t *req, uint32_t route, uint64_t start_ns,
                              const char *request_id, gw_upstream_t *up, uint64_t retry_after_ms)
{
    uint64_t secs = (retry_after_ms + 999) / 1000;
    if (secs < 1)
        secs = 1;
    char extra[200], upstream[150];
    gw_json_escape(upstream, sizeof(upstream), up->cfg->name, strlen(up->cfg->name));
    snprintf(extra, sizeof(extra), ",\"upstream\":\"%s\",\"retry_after_s\":%llu", upstream,
             (unsigned long long)secs);
    char *ra = h2o_mem_alloc_pool(&req->pool, 24);
    size_t ralen = (size_t)snprintf(ra, 24, "%llu", (unsigned long long)secs);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, ra, ralen);
    add_request_id_header(req, request_id);
    GW_STAT_ADD(up->stats->breaker_rejected, 1);
    gw_reply_error(req, 503, "circuit_open", "breaker", request_id, extra,
                   "upstream '%s' is failing; its circuit breaker is open", up->cfg->name);
    count_local_reply(w, route, 503, start_ns);
    return 1;
}

/* A trial permit was taken but the request will not reach the upstream: give it back. */
static void return_trial(gw_worker_t *w, gw_upstream_t *up, const br_ticket_t *t)
{
    if (!t->trial)
        return;
    gw_outq_rec_t rec = {.t_ns = uv_hrtime(),
                         .generation = t->generation,
                         .upstream = up->index,
                         .kind = GW_OUTCOME_CANCELLED,
                         .trial = 1};
    gw_outq_push(w->rt->outq, w->index, &rec, true);
}

/* Breaker, bulkhead, host, deadline. Returns 1 when the request was answered. */
static int admit_upstream(gw_worker_t *w, h2o_req_t *req, uint32_t r, uint64_t start_ns,
                          const char *request_id, gw_host_t **host, uint64_t *timeout,
                          br_ticket_t *ticket)
{
    const gw_route_config_t *route = &w->cfg->routes[r];
    gw_upstream_t *up = &w->upstreams.ups[route->upstream_index];
    gw_upstate_t *st = gw_runtime_upstate(w->rt, up->index);
    uint64_t now = uv_now(w->loop);
    if (br_admit(&st->pub, now, ticket) == BR_REJECT)
        return reply_circuit_open(w, req, r, start_ns, request_id, up, ticket->retry_after_ms);
    if (bulkhead_inflight(w, up->index) >= (int64_t)up->cfg->max_concurrent) {
        GW_STAT_ADD(up->stats->bulkhead_rejected, 1);
        return_trial(w, up, ticket);
        return reply_local(w, req, r, start_ns, request_id, 503, "upstream_overloaded", "bulkhead",
                           "upstream '%s' is at its limit of %u concurrent requests", up->cfg->name,
                           up->cfg->max_concurrent);
    }
    bool all_ejected = false;
    if ((*host = gw_upstream_pick(up, st, now, &all_ejected)) == NULL) {
        return_trial(w, up, ticket);
        return reply_local(w, req, r, start_ns, request_id, 503, "no_healthy_upstream",
                           all_ejected ? "outlier" : "no_host",
                           "upstream '%s' has no healthy host%s", up->cfg->name,
                           all_ejected ? " (all ejected after repeated failures)" : "");
    }
    /* the deadline: the route's timeout, shortened by the caller's own */
    *timeout = route->timeout_ms;
    int64_t inbound = header_min_uint(req, H2O_STRLIT("x-request-timeout-ms"));
    if (inbound >= 0 && (uint64_t)inbound < *timeout)
        *timeout = (uint64_t)inbound;
    if (*timeout == 0) {
        return_trial(w, up, ticket);
        return reply_local(w, req, r, start_ns, request_id, 504, "upstream_timeout", "timeout",
                           "the request's deadline had already passed");
    }
    return 0;
}

/* The bytes that identify the caller for a rate limit keyed by client_ip. */
static size_t client_ip_bytes(h2o_req_t *req, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    if (len == 0)
        return 0;
    if (ss.ss_family == AF_INET && cap >= 4) {
        memcpy(out, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        return 4;
    }
    if (ss.ss_family == AF_INET6 && cap >= 16) {
        memcpy(out, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
        return 16;
    }
    return 0;
}

/*
 * The key hash of this request under the route's limit (global, client_ip, header:NAME; a
 * missing header falls back to the client's address). Each kind of key is hashed behind its own
 * prefix byte, so that a header value can never collide with some client's address bytes (and
 * drain that client's bucket).
 */
static uint64_t ratelimit_key(const gw_ratelimit_config_t *rl, br_keytable_t *t, h2o_req_t *req)
{
    char buf[1 + 256];
    if (rl->key == GW_RL_KEY_HEADER) {
        ssize_t i =
            h2o_find_header_by_str(&req->headers, rl->key_header, strlen(rl->key_header), -1);
        if (i >= 0) {
            h2o_iovec_t v = req->headers.entries[i].value;
            if (v.len > sizeof(buf) - 1) { /* long values: hash them first */
                uint64_t inner = br_keytable_hash(t, v.base, v.len);
                buf[0] = 'H';
                memcpy(buf + 1, &inner, sizeof(inner));
                return br_keytable_hash(t, buf, 1 + sizeof(inner));
            }
            buf[0] = 'h';
            memcpy(buf + 1, v.base, v.len);
            return br_keytable_hash(t, buf, 1 + v.len);
        }
    }
    if (rl->key == GW_RL_KEY_GLOBAL)
        return br_keytable_hash(t, "g", 1);
    buf[0] = 'i';
    return br_keytable_hash(t, buf, 1 + client_ip_bytes(req, buf + 1, sizeof(buf) - 1));
}

static void add_header_uint_fmt(h2o_req_t *req, const char *name, const char *fmt, uint64_t a,
                                uint64_t b)
{
    char *v = h2o_mem_alloc_pool(&req->pool, 64);
    int n = snprintf(v, 64, fmt, (unsigned long long)a, (unsigned long long)b);
    h2o_add_header_by_str(&req->pool, &req->res.headers, name, strlen(name), 0, NULL, v, (size_t)n);
}

/*
 * The route's token bucket. Every response on a limited route carries the IETF RateLimit
 * fields (added here, before anything answers, so our own errors and the upstream's responses
 * both get them); a denial is 429 rate_limited with Retry-After. Returns 1 when it answered.
 */
static int apply_ratelimit(gw_worker_t *w, h2o_req_t *req, uint32_t r, uint64_t start_ns,
                           const char *request_id)
{
    br_keytable_t *t = w->rt->limiter_of[r];
    if (t == NULL)
        return 0;
    const gw_ratelimit_config_t *rl = &w->cfg->routes[r].rate_limit;
    br_gcra_info_t info;
    int ok = br_keytable_admit(t, ratelimit_key(rl, t, req), uv_hrtime(), &info);
    gw_route_stats_t *rs = gw_stats_route(w->stats, w->index, r);
    if (ok < 0) { /* cannot happen short of a broken lock: fail open, and say so */
        gw_log_limited(&w->ratelimit_errors, uv_now(w->loop), GW_LOG_ERROR,
                       "rate limiter failed; admitting", "{s:s}", "route", w->cfg->routes[r].name);
        return 0;
    }
    add_header_uint_fmt(req, "ratelimit-policy", "\"default\";q=%llu;w=%llu", info.limit,
                        br_gcra_window_s(br_keytable_params(t)));
    add_header_uint_fmt(req, "ratelimit", "\"default\";r=%llu;t=%llu", info.remaining,
                        info.reset_s);
    if (ok == 1) {
        GW_STAT_ADD(rs->rl_admitted, 1);
        return 0;
    }
    GW_STAT_ADD(rs->rl_rejected, 1);
    uint32_t retry = info.retry_after_s < 1 ? 1 : info.retry_after_s; /* never earlier */
    char *v = h2o_mem_alloc_pool(&req->pool, 16);
    int n = snprintf(v, 16, "%u", retry);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, v, (size_t)n);
    return reply_local(w, req, r, start_ns, request_id, 429, "rate_limited", "ratelimit",
                       "rate limit of route '%s' exceeded; retry in %u s", w->cfg->routes[r].name,
                       retry);
}

/* Checks that do not need an exchange. Returns 1 when the request was answered. */
static int admit(gw_worker_t *w, h2o_req_t *req, int route_idx, uint64_t start_ns,
                 const char *request_id, gw_host_t **host, uint64_t *timeout, br_ticket_t *ticket)
{
    uint32_t r = route_idx < 0 ? (uint32_t)w->cfg->nroutes : (uint32_t)route_idx;
    if (w->cfg->debug_fault_headers && apply_fault_header(w, req, r, start_ns, request_id))
        return 1;
    if (route_idx < 0)
        return reply_local(w, req, r, start_ns, request_id, 404, "no_route", "no_route",
                           "no route matches %.*s %.*s", (int)req->method.len, req->method.base,
                           (int)(req->path.len > 200 ? 200 : req->path.len), req->path.base);
    const gw_route_config_t *route = &w->cfg->routes[route_idx];
    if (apply_ratelimit(w, req, r, start_ns, request_id))
        return 1;
    if (route->fault.abort_status != 0 && roll_ppm(w) < route->fault.abort_ppm)
        return reply_local(w, req, r, start_ns, request_id, route->fault.abort_status,
                           "fault_injected", NULL, "fault injected by route '%s'", route->name);
    return admit_upstream(w, req, r, start_ns, request_id, host, timeout, ticket);
}

/*
 * GET /ack/TOKEN: a signed, expiring acknowledgement link from an alert message (alerts/acklink.h).
 * The worker only verifies the token (no SQLite here); the acknowledgement itself travels to the
 * control process as an `ack_request` event. Returns 1 when it answered.
 */
static int handle_ack_link(gw_worker_t *w, h2o_req_t *req, uint64_t start_ns,
                           const char *request_id)
{
    h2o_iovec_t p = req->path_normalized;
    if (p.len <= 5 || memcmp(p.base, "/ack/", 5) != 0 ||
        GW_STAT_GET(w->rt->shared->ack_secret_set) != 1)
        return 0;
    uint32_t r = (uint32_t)w->cfg->nroutes;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t id = 0;
    int v = al_ack_token_verify(w->rt->shared->ack_secret, p.base + 5, p.len - 5,
                                (uint64_t)now.tv_sec, &id);
    if (v == -ETIMEDOUT)
        return reply_local(w, req, r, start_ns, request_id, 403, "ack_link_expired", NULL,
                           "this acknowledgement link has expired");
    if (v != 0)
        return reply_local(w, req, r, start_ns, request_id, 403, "invalid_ack_link", NULL,
                           "this acknowledgement link is not valid");
    /* A phone call's <Gather> comes back with Digits=N (Twilio): in the query for our TwiML's
     * method="GET", in a form body when the Gather POSTs (Twilio's default method). Only "1"
     * acknowledges, and the answer must be TwiML. A Digits that is present but too long for
     * the buffer is a key press too (not "1"), never a click. A click in a chat or an email
     * has no Digits. */
    char digits[8];
    int d = gw_query_param(req, "Digits", digits, sizeof(digits));
    if (d == 0)
        d = gw_form_param(req, "Digits", digits, sizeof(digits));
    bool phone = d != 0;
    bool ack = !phone || (d == 1 && strcmp(digits, "1") == 0);
    if (ack) {
        char fields[96];
        snprintf(fields, sizeof(fields), "{\"alert_id\":%lld,\"via\":\"%s\"}", (long long)id,
                 phone ? "phone" : "link");
        gw_worker_event(w, "ack_request", fields);
    }
    /* The worker has no store: the ack is handed to the control process (events channel), which
     * applies it within about DRAIN_INTERVAL_MS; the page says it was received, not done (an
     * alert resolved meanwhile stays resolved). */
    char *body = h2o_mem_alloc_pool(&req->pool, 160);
    int n = phone ? snprintf(body, 160,
                             "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>%s"
                             "</Say></Response>",
                             ack ? "Acknowledged. Thank you." : "Not acknowledged. Goodbye.")
                  : snprintf(body, 160, "Acknowledgement of alert %lld received.\n", (long long)id);
    add_request_id_header(req, request_id);
    gw_reply_send(req, 200, phone ? "text/xml; charset=utf-8" : "text/plain; charset=utf-8", true,
                  NULL, h2o_iovec_init(body, (size_t)n));
    count_local_reply(w, r, 200, start_ns);
    return 1;
}

/* A guarded handler's own failure: 500 internal_error, a handler_fault event, and the worker
 * carries on. */
static int handler_fault(gw_worker_t *w, h2o_req_t *req, uint32_t route, uint64_t start_ns,
                         const char *request_id, const char *what)
{
    char fields[256];
    snprintf(fields, sizeof(fields), "{\"route\":%u,\"request_id\":\"%s\",\"error\":\"%s\"}", route,
             request_id, what);
    GW_STAT_ADD(w->wstats->handler_faults, 1);
    gw_worker_event(w, "handler_fault", fields);
    return reply_local(w, req, route, start_ns, request_id, 500, "internal_error", NULL,
                       "internal error: %s", what);
}

static exchange_t *exchange_new(gw_worker_t *w, h2o_req_t *req)
{
    exchange_t *ex = calloc(1, sizeof(*ex));
    char *buf = ex != NULL ? gw_buf_get(&w->bufs) : NULL;
    exchange_t **link =
        buf != NULL ? h2o_mem_alloc_shared(&req->pool, sizeof(*link), on_req_dispose) : NULL;
    if (link == NULL) {
        gw_buf_put(&w->bufs, buf);
        free(ex);
        return NULL;
    }
    *link = ex;
    ex->buf = buf;
    ex->refs = 3; /* the request, the timer, and the caller */
    return ex;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    gw_worker_t *w = ((proxy_handler_t *)self)->w;
    uint64_t start_ns = uv_hrtime(), timeout = 0;
    char request_id[GW_REQUEST_ID_MAX + 1];
    make_request_id(w, req, request_id);
    GW_STAT_ADD(w->wstats->requests_total, 1);
    int route_idx = gw_router_match(&w->router, req->authority.base, req->authority.len,
                                    req->path_normalized.base, req->path_normalized.len);
    guard(w, route_idx, request_id);
    if (handle_ack_link(w, req, start_ns, request_id)) {
        unguard(w);
        return 0;
    }
    gw_host_t *host = NULL;
    br_ticket_t ticket = {0};
    if (admit(w, req, route_idx, start_ns, request_id, &host, &timeout, &ticket)) {
        unguard(w);
        return 0;
    }
    const gw_route_config_t *route = &w->cfg->routes[route_idx];
    exchange_t *ex = exchange_new(w, req);
    if (ex == NULL) {
        return_trial(w, host->up, &ticket);
        handler_fault(w, req, (uint32_t)route_idx, start_ns, request_id, "out of memory");
        unguard(w);
        return 0;
    }
    ex->w = w;
    ex->req = req;
    ex->orig_req = req;
    ex->route_idx = (uint32_t)route_idx;
    ex->route = route;
    ex->up = host->up;
    ex->host = host;
    ex->ticket = ticket;
    ex->head_request = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    ex->start_ns = start_ns;
    ex->timeout_ms = timeout;
    ex->deadline_ms = uv_now(w->loop) + timeout;
    ex->connect_deadline_ms = uv_now(w->loop) + host->up->cfg->connect_timeout_ms;
    memcpy(ex->request_id, request_id, sizeof(request_id));
    uv_timer_init(w->loop, &ex->timer);
    ex->timer.data = ex;
    w->inflight++;
    GW_STAT_ADD(w->wstats->requests_inflight, 1);
    GW_STAT_ADD(ex->up->stats->inflight, 1);
    GW_STAT_ADD(ex->up->stats->requests, 1);

    if (route->fault.delay_ms > 0 && roll_ppm(w) < route->fault.delay_ppm) {
        ex->state = EX_DELAYED;
        uv_timer_start(&ex->timer, on_timer, route->fault.delay_ms, 0);
    } else {
        start_attempt(ex, false);
    }
    unguard(w);
    unref(ex);
    return 0;
}

void gw_proxy_register(gw_worker_t *w, h2o_pathconf_t *pathconf)
{
    proxy_handler_t *h = (proxy_handler_t *)h2o_create_handler(pathconf, sizeof(*h));
    h->super.on_req = on_req;
    h->w = w;
    gw_upstreams_set_reader(&w->upstreams, alloc_cb, on_upstream_read);
}
