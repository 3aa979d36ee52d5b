/*
 * health.c - the active health prober (control process). See health.h for the contract and
 * docs/health.md for the design.
 *
 * Three layers, in this order in the file:
 *   1. gw_health_record(): the threshold state machine of one host, on shared memory.
 *   2. gw_health_sched_*: which host to probe when, within the concurrency and queue bounds.
 *   3. the I/O: a fixed array of GW_HEALTH_MAX_INFLIGHT probe slots, each a uv_tcp_t (opened per
 *      probe) and a uv_timer_t (the probe's timeout, kept for the life of the prober), driven by
 *      one scheduler timer (`tick`).
 *
 * Host state machine (per host, in upstate.h's gw_host_state_t; `passes`/`fails` are the
 * consecutive counts, at most one of them non-zero; H/U the healthy/unhealthy thresholds):
 *
 *                  fails >= U
 *   UNKNOWN ---------------------------+       UNKNOWN  probed 0, down 0: usable
 *      |                               v       UP       down 0: usable
 *      | passes >= H      fails >= U           DOWN     down 1: workers skip it
 *      +----------> UP --------------> DOWN
 *                   ^                   |      -> DOWN: on_change(down); DOWN -> UP:
 *                   +-------------------+      on_change(up); UNKNOWN -> UP: nothing (it was
 *                       passes >= H            usable already)
 *
 * Only this file writes `down`, `passes`, `fails`, `probed`; the owner (outlier detection) writes
 * `ejected_until_ms`, and this file clears it when a passing probe finds a healthy host ejected.
 * Both run on the control process's one loop, so they never race each other; workers only read.
 *
 * Probe slot lifecycle: free (target -1) -> start_probe (tcp opened, timer armed) -> conclude
 * (result taken once, tcp closed) -> on_tcp_close (slot free again, target rescheduled). A slot's
 * socket exists from start_probe to on_tcp_close, and the scheduler counts the target RUNNING
 * for exactly that span, so the socket count never exceeds GW_HEALTH_MAX_INFLIGHT.
 *
 * Closing: every handle (tick, the slot timers, the open sockets) is closed; `pending` counts the
 * close callbacks still to come; the last one calls done() and frees.
 */
#include "health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http1.h"
#include "log.h"

#define SWEEP_RETRY_MS 250 /* while the gate is closed, how often to retry the start-up sweep */
#define REASON_MAX 64

const char *gw_health_strerror(int err)
{
    switch (err) {
    case GW_HEALTH_OK:
        return "ok";
#define GW_HEALTH_ERROR_STR(name, value, msg)                                                      \
    case GW_HEALTH_##name:                                                                         \
        return msg;
        GW_HEALTH_ERRORS(GW_HEALTH_ERROR_STR)
#undef GW_HEALTH_ERROR_STR
    default:
        return "unknown error";
    }
}

/* ---- 1. thresholds -----------------------------------------------------------------------------
 */

static uint32_t load32(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void store32(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

bool gw_health_status_passes(int status)
{
    return status >= 200 && status <= 399;
}

unsigned gw_health_record(gw_host_state_t *hs, const gw_health_check_config_t *hc, bool pass,
                          uint64_t now_ms)
{
    uint32_t healthy = hc->healthy_threshold > 0 ? hc->healthy_threshold : 1;
    uint32_t unhealthy = hc->unhealthy_threshold > 0 ? hc->unhealthy_threshold : 1;
    bool down = __atomic_load_n(&hs->down, __ATOMIC_RELAXED) != 0;
    unsigned changed = 0;

    store32(&hs->probed, 1);
    if (pass) {
        uint32_t passes = load32(&hs->passes);
        passes += passes < UINT32_MAX;
        store32(&hs->passes, passes);
        store32(&hs->fails, 0);
        if (passes < healthy)
            return 0;
        if (down) {
            __atomic_store_n(&hs->down, 0, __ATOMIC_RELAXED);
            changed |= GW_HEALTH_WENT_UP;
        }
        if (__atomic_load_n(&hs->ejected_until_ms, __ATOMIC_RELAXED) > now_ms) {
            /* 1, not 0: "ejection over" (any time in the past), so that the owner's next tick
             * sees an ejection that has ended, reports host_restored and clears it */
            __atomic_store_n(&hs->ejected_until_ms, 1, __ATOMIC_RELAXED);
            changed |= GW_HEALTH_UNEJECTED;
        }
        return changed;
    }
    uint32_t fails = load32(&hs->fails);
    fails += fails < UINT32_MAX;
    store32(&hs->fails, fails);
    store32(&hs->passes, 0);
    if (fails >= unhealthy && !down) {
        __atomic_store_n(&hs->down, 1, __ATOMIC_RELAXED);
        changed |= GW_HEALTH_WENT_DOWN;
    }
    return changed;
}

/* ---- 2. scheduler ------------------------------------------------------------------------------
 */

int gw_health_sched_init(gw_health_sched_t *s, uint32_t ntargets, uint32_t qcap,
                         uint32_t max_running)
{
    memset(s, 0, sizeof(*s));
    if (qcap == 0 || max_running == 0)
        return GW_HEALTH_EINVAL;
    size_t n = ntargets > 0 ? ntargets : 1;
    s->targets = calloc(n, sizeof(*s->targets));
    s->heap = calloc(n, sizeof(*s->heap));
    s->queue = calloc(qcap, sizeof(*s->queue));
    if (s->targets == NULL || s->heap == NULL || s->queue == NULL) {
        gw_health_sched_dispose(s);
        return GW_HEALTH_ENOMEM;
    }
    s->ntargets = ntargets;
    s->qcap = qcap;
    s->max_running = max_running;
    return 0;
}

void gw_health_sched_dispose(gw_health_sched_t *s)
{
    free(s->targets);
    free(s->heap);
    free(s->queue);
    memset(s, 0, sizeof(*s));
}

static bool earlier(const gw_health_sched_t *s, uint32_t a, uint32_t b)
{
    return s->targets[s->heap[a]].due_ms < s->targets[s->heap[b]].due_ms;
}

static void heap_swap(gw_health_sched_t *s, uint32_t a, uint32_t b)
{
    uint32_t t = s->heap[a];
    s->heap[a] = s->heap[b];
    s->heap[b] = t;
}

static void heap_push(gw_health_sched_t *s, uint32_t target)
{
    uint32_t i = s->nheap++;
    s->heap[i] = target;
    s->targets[target].state = GW_HEALTH_T_WAITING;
    while (i > 0 && earlier(s, i, (i - 1) / 2)) {
        heap_swap(s, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static uint32_t heap_pop(gw_health_sched_t *s)
{
    uint32_t top = s->heap[0];
    s->heap[0] = s->heap[--s->nheap];
    for (uint32_t i = 0;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->nheap && earlier(s, l, m))
            m = l;
        if (r < s->nheap && earlier(s, r, m))
            m = r;
        if (m == i)
            break;
        heap_swap(s, i, m);
        i = m;
    }
    return top;
}

void gw_health_sched_add(gw_health_sched_t *s, uint32_t i, uint64_t first_due_ms,
                         uint64_t interval_ms)
{
    s->targets[i].due_ms = first_due_ms;
    s->targets[i].interval_ms = interval_ms > 0 ? interval_ms : 1;
    heap_push(s, i);
}

/* Next due time of a target that did not run (skipped, deferred): never at or before now. */
static void reschedule_idle(gw_health_sched_t *s, uint32_t i, uint64_t now_ms)
{
    gw_health_target_t *t = &s->targets[i];
    t->due_ms += t->interval_ms;
    if (t->due_ms <= now_ms)
        t->due_ms = now_ms + t->interval_ms;
    heap_push(s, i);
}

uint32_t gw_health_sched_collect(gw_health_sched_t *s, uint64_t now_ms, bool admit)
{
    uint32_t queued = 0;
    /* A target rescheduled here is due after now, so this loop ends. */
    while (s->nheap > 0 && s->targets[s->heap[0]].due_ms <= now_ms) {
        uint32_t i = heap_pop(s);
        if (!admit) {
            reschedule_idle(s, i, now_ms);
        } else if (s->qlen == s->qcap) {
            s->skipped++;
            reschedule_idle(s, i, now_ms);
        } else {
            s->queue[(s->qhead + s->qlen++) % s->qcap] = i;
            s->targets[i].state = GW_HEALTH_T_QUEUED;
            queued++;
        }
    }
    return queued;
}

int64_t gw_health_sched_start(gw_health_sched_t *s)
{
    if (s->qlen == 0 || s->running >= s->max_running)
        return -1;
    uint32_t i = s->queue[s->qhead];
    s->qhead = (s->qhead + 1) % s->qcap;
    s->qlen--;
    s->running++;
    s->targets[i].state = GW_HEALTH_T_RUNNING;
    return i;
}

void gw_health_sched_finish(gw_health_sched_t *s, uint32_t i, uint64_t now_ms, bool ran)
{
    gw_health_target_t *t = &s->targets[i];
    s->running--;
    if (!ran) {
        s->skipped++;
        reschedule_idle(s, i, now_ms);
        return;
    }
    t->due_ms += t->interval_ms;
    if (t->due_ms < now_ms)
        t->due_ms = now_ms; /* fell behind in the queue: again as soon as possible */
    heap_push(s, i);
}

uint64_t gw_health_sched_next_due(const gw_health_sched_t *s)
{
    return s->nheap > 0 ? s->targets[s->heap[0]].due_ms : UINT64_MAX;
}

uint64_t gw_health_stagger(uint64_t now_ms, uint64_t interval_ms, uint32_t k, uint32_t n)
{
    return n == 0 ? now_ms : now_ms + interval_ms * k / n;
}

/* ---- 3. I/O ------------------------------------------------------------------------------------
 */

typedef enum verdict {
    V_PASS = 0,
    V_FAIL,
    V_SKIP, /* a local problem (no fds, no memory): says nothing about the host */
} verdict_t;

/* What a target needs for I/O; targets[i] of the scheduler is hosts[i] here. */
typedef struct host_ref {
    uint32_t upstream, host;
    struct sockaddr_storage addr;
} host_ref_t;

typedef struct probe {
    gw_health_t *h;
    int64_t target; /* -1: slot free (no socket) */
    bool finished;  /* the result was taken; the socket is closing */
    verdict_t verdict;
    size_t len, prev_len;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_write_t write;
    char buf[GW_HEALTH_HEAD_MAX];
} probe_t;

struct gw_health {
    uv_loop_t *loop;
    const gw_runtime_t *rt;
    gw_health_cb on_change;
    void *ctx;
    gw_health_gate_cb gate;
    void *gate_ctx;
    uv_timer_t tick;
    gw_health_sched_t sched;
    host_ref_t *hosts;
    char **prefix; /* per upstream: "GET <path> HTTP/1.1\r\nHost: " (NULL: not probed) */
    probe_t probes[GW_HEALTH_MAX_INFLIGHT];
    gw_health_stats_t stats;
    bool swept; /* stale `down` flags of unprobed upstreams cleared */
    bool closing;
    uint32_t pending; /* close callbacks still to come */
    gw_health_close_cb done;
    gw_log_limit_t local_errors, probe_errors, transition_logs;
};

static const char REQUEST_SUFFIX[] =
    "\r\nUser-Agent: breakwater-health\r\nConnection: close\r\n\r\n";

static void conclude(probe_t *p, verdict_t v, const char *reason);
static void pump(gw_health_t *h);

static bool gate_open(gw_health_t *h)
{
    return h->gate == NULL || h->gate(h->gate_ctx);
}

static gw_host_state_t *host_state(gw_health_t *h, uint32_t upstream, uint32_t host)
{
    return &gw_runtime_upstate(h->rt, upstream)->hosts[host];
}

/* "GET <path> HTTP/1.1\r\nHost: ", with bytes that may not appear in a request-target (controls,
 * space, non-ASCII) percent-encoded so that no config value can break the request line. */
static char *request_prefix(const char *path)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(path);
    char *out = malloc(n * 3 + sizeof("GET  HTTP/1.1\r\nHost: "));
    if (out == NULL)
        return NULL;
    char *o = out;
    o += sprintf(o, "GET ");
    for (const unsigned char *s = (const unsigned char *)path; *s != '\0'; s++) {
        if (*s <= 0x20 || *s >= 0x7f) {
            *o++ = '%';
            *o++ = hex[*s >> 4];
            *o++ = hex[*s & 15];
        } else {
            *o++ = (char)*s;
        }
    }
    strcpy(o, " HTTP/1.1\r\nHost: ");
    return out;
}

static void on_tcp_close(uv_handle_t *handle);
static void on_handle_close(uv_handle_t *handle);

static void free_health(gw_health_t *h)
{
    if (h->prefix != NULL)
        for (size_t u = 0; u < h->rt->cfg->nupstreams; u++)
            free(h->prefix[u]);
    free(h->prefix);
    free(h->hosts);
    gw_health_sched_dispose(&h->sched);
    free(h);
}

static void close_step(gw_health_t *h)
{
    if (--h->pending > 0)
        return;
    if (h->done != NULL)
        h->done(h);
    free_health(h);
}

static void on_handle_close(uv_handle_t *handle)
{
    close_step(handle->data);
}

/* Writes a probe's result into the shared state and reports transitions. */
static void apply(gw_health_t *h, uint32_t target, bool pass, const char *reason)
{
    const host_ref_t *ref = &h->hosts[target];
    const gw_upstream_config_t *uc = &h->rt->cfg->upstreams[ref->upstream];
    gw_host_state_t *hs = host_state(h, ref->upstream, ref->host);
    uint64_t now = uv_now(h->loop);
    unsigned changed = gw_health_record(hs, &uc->health_check, pass, now);
    if (changed & GW_HEALTH_UNEJECTED) {
        h->stats.unejected++;
        gw_log_limited(&h->transition_logs, now, GW_LOG_INFO, "health check ended an ejection",
                       "{s:s, s:s}", "upstream", uc->name, "host", uc->hosts[ref->host].text);
    }
    if (changed & (GW_HEALTH_WENT_UP | GW_HEALTH_WENT_DOWN)) {
        bool up = (changed & GW_HEALTH_WENT_UP) != 0;
        h->stats.transitions++;
        /* limited: a partition can flip thousands of hosts at once; every transition still
         * reaches on_change (and so the event trail) */
        gw_log_limited(&h->transition_logs, now, up ? GW_LOG_INFO : GW_LOG_WARN,
                       up ? "health check marked host up" : "health check marked host down",
                       "{s:s, s:s, s:s}", "upstream", uc->name, "host", uc->hosts[ref->host].text,
                       "reason", reason);
        if (h->on_change != NULL)
            h->on_change(h->ctx, ref->upstream, ref->host, up);
    }
}

/* Takes a probe's result exactly once: closes the socket first (so that a callback that closes
 * the prober finds nothing half done), then counts and applies the result. */
static void conclude(probe_t *p, verdict_t v, const char *reason)
{
    gw_health_t *h = p->h;
    if (p->finished)
        return;
    p->finished = true;
    p->verdict = v;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->tcp, on_tcp_close);
    if (h->closing)
        return;
    const host_ref_t *ref = &h->hosts[p->target];
    const gw_upstream_config_t *uc = &h->rt->cfg->upstreams[ref->upstream];
    if (v == V_SKIP) {
        gw_log_limited(&h->local_errors, uv_now(h->loop), GW_LOG_WARN,
                       "health probe could not start", "{s:s, s:s, s:s}", "upstream", uc->name,
                       "host", uc->hosts[ref->host].text, "error", reason);
        return;
    }
    if (v == V_PASS) {
        h->stats.ok++;
    } else {
        h->stats.failed++;
        if (gw_log_enabled(GW_LOG_DEBUG))
            gw_log_limited(&h->probe_errors, uv_now(h->loop), GW_LOG_DEBUG, "health probe failed",
                           "{s:s, s:s, s:s}", "upstream", uc->name, "host",
                           uc->hosts[ref->host].text, "reason", reason);
    }
    if (gate_open(h))
        apply(h, (uint32_t)p->target, v == V_PASS, reason);
}

static void on_tcp_close(uv_handle_t *handle)
{
    probe_t *p = handle->data;
    gw_health_t *h = p->h;
    uint32_t target = (uint32_t)p->target;
    p->target = -1;
    if (h->closing) {
        close_step(h);
        return;
    }
    gw_health_sched_finish(&h->sched, target, uv_now(h->loop), p->verdict != V_SKIP);
    pump(h);
}

static void on_timeout(uv_timer_t *t)
{
    conclude(t->data, V_FAIL, "timeout");
}

/* The reason text for a libuv error: its name ("ECONNREFUSED"), without uv_err_name()'s leak
 * for unknown codes. */
static const char *err_text(int err, char *buf)
{
    return uv_err_name_r(err, buf, REASON_MAX);
}

static bool local_error(int err)
{
    return err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOBUFS || err == UV_ENOMEM ||
           err == UV_EADDRNOTAVAIL;
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    probe_t *p = handle->data;
    /* The head is bounded: once the buffer is full without a complete head the probe failed (in
     * on_read), so this always offers at least one byte while reading goes on. */
    *buf = uv_buf_init(p->buf + p->len, (unsigned)(sizeof(p->buf) - p->len));
}

/* Parses what has arrived; concludes when the head (after any 1xx) is complete or broken. */
static void parse(probe_t *p)
{
    gw_h1_response_t res;
    for (;;) {
        int r = gw_h1_parse_response(p->buf, p->len, p->prev_len, false, &res);
        if (r == GW_H1_INCOMPLETE) {
            p->prev_len = p->len;
            if (p->len == sizeof(p->buf))
                conclude(p, V_FAIL, "response head too large");
            return;
        }
        if (r < 0) {
            conclude(p, V_FAIL, "malformed response");
            return;
        }
        if (res.status >= 200) {
            char reason[REASON_MAX];
            snprintf(reason, sizeof(reason), "status %d", res.status);
            conclude(p, gw_health_status_passes(res.status) ? V_PASS : V_FAIL, reason);
            return;
        }
        /* 1xx interim response: drop it and parse what follows */
        memmove(p->buf, p->buf + r, p->len - (size_t)r);
        p->len -= (size_t)r;
        p->prev_len = 0;
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    probe_t *p = stream->data;
    if (p->finished)
        return;
    if (nread < 0) {
        char text[REASON_MAX];
        conclude(p, V_FAIL,
                 nread == UV_EOF ? "closed before the response head" : err_text((int)nread, text));
        return;
    }
    p->len += (size_t)nread;
    if (nread > 0)
        parse(p);
}

static void on_write(uv_write_t *req, int status)
{
    probe_t *p = req->data;
    char text[REASON_MAX];
    if (status < 0 && status != UV_ECANCELED)
        conclude(p, V_FAIL, err_text(status, text));
}

static void on_connect(uv_connect_t *req, int status)
{
    probe_t *p = req->data;
    char text[REASON_MAX];
    if (p->finished)
        return;
    if (status < 0) {
        conclude(p, local_error(status) ? V_SKIP : V_FAIL, err_text(status, text));
        return;
    }
    gw_health_t *h = p->h;
    const host_ref_t *ref = &h->hosts[p->target];
    char *host_text = h->rt->cfg->upstreams[ref->upstream].hosts[ref->host].text;
    /* libuv does not write through these pointers; the strings outlive the write */
    uv_buf_t bufs[3] = {
        uv_buf_init(h->prefix[ref->upstream], (unsigned)strlen(h->prefix[ref->upstream])),
        uv_buf_init(host_text, (unsigned)strlen(host_text)),
        uv_buf_init((char *)REQUEST_SUFFIX, sizeof(REQUEST_SUFFIX) - 1),
    };
    int r = uv_write(&p->write, (uv_stream_t *)&p->tcp, bufs, 3, on_write);
    if (r == 0)
        r = uv_read_start((uv_stream_t *)&p->tcp, on_alloc, on_read);
    if (r != 0)
        conclude(p, local_error(r) ? V_SKIP : V_FAIL, err_text(r, text));
}

/* Opens a probe for target i in free slot p. Every path ends in conclude() or in an immediate
 * gw_health_sched_finish(), so the target never stays RUNNING without a socket. */
static void start_probe(gw_health_t *h, probe_t *p, uint32_t i)
{
    const host_ref_t *ref = &h->hosts[i];
    p->target = i;
    p->finished = false;
    p->verdict = V_SKIP;
    p->len = p->prev_len = 0;
    int r = uv_tcp_init(h->loop, &p->tcp);
    if (r != 0) {
        p->target = -1;
        gw_health_sched_finish(&h->sched, i, uv_now(h->loop), false);
        return;
    }
    p->tcp.data = p;
    p->connect.data = p;
    p->write.data = p;
    if (h->sched.running > h->stats.inflight_max)
        h->stats.inflight_max = h->sched.running;
    r = uv_tcp_connect(&p->connect, &p->tcp, (const struct sockaddr *)&ref->addr, on_connect);
    if (r != 0) {
        char text[REASON_MAX];
        conclude(p, local_error(r) ? V_SKIP : V_FAIL, err_text(r, text));
        return;
    }
    uv_timer_start(&p->timer, on_timeout,
                   h->rt->cfg->upstreams[ref->upstream].health_check.timeout_ms, 0);
}

static void on_tick(uv_timer_t *t);

/* Arms the scheduler timer for the next due target (and for the sweep while it is pending). */
static void arm(gw_health_t *h)
{
    uint64_t now = uv_now(h->loop), next = gw_health_sched_next_due(&h->sched);
    if (!h->swept && next > now + SWEEP_RETRY_MS)
        next = now + SWEEP_RETRY_MS;
    if (next == UINT64_MAX)
        uv_timer_stop(&h->tick);
    else
        uv_timer_start(&h->tick, on_tick, next > now ? next - now : 0, 0);
}

/* Starts queued probes in free slots, then re-arms the timer. */
static void pump(gw_health_t *h)
{
    for (size_t k = 0; k < GW_HEALTH_MAX_INFLIGHT && !h->closing; k++) {
        probe_t *p = &h->probes[k];
        if (p->target != -1)
            continue;
        int64_t i = gw_health_sched_start(&h->sched);
        if (i < 0)
            break;
        start_probe(h, p, (uint32_t)i);
    }
    if (!h->closing)
        arm(h);
}

/* An upstream without health checks must not keep a `down` left by an earlier config (a reload
 * that removed health_check keeps the upstream's slot): nothing would ever clear it. */
static void sweep(gw_health_t *h)
{
    const gw_config_t *cfg = h->rt->cfg;
    h->swept = true;
    for (size_t u = 0; u < cfg->nupstreams && !h->closing; u++) {
        if (cfg->upstreams[u].health_check.enabled)
            continue;
        for (size_t k = 0; k < cfg->upstreams[u].nhosts && k < GW_MAX_HOSTS; k++) {
            gw_host_state_t *hs = host_state(h, (uint32_t)u, (uint32_t)k);
            store32(&hs->passes, 0);
            store32(&hs->fails, 0);
            store32(&hs->probed, 0);
            if (__atomic_exchange_n(&hs->down, 0, __ATOMIC_RELAXED) == 0)
                continue;
            h->stats.transitions++;
            gw_log_limited(&h->transition_logs, uv_now(h->loop), GW_LOG_INFO,
                           "health checks off: host marked up", "{s:s, s:s}", "upstream",
                           cfg->upstreams[u].name, "host", cfg->upstreams[u].hosts[k].text);
            if (h->on_change != NULL)
                h->on_change(h->ctx, u, k, true);
        }
    }
}

static void on_tick(uv_timer_t *t)
{
    gw_health_t *h = t->data;
    bool open = gate_open(h);
    if (open && !h->swept)
        sweep(h);
    if (h->closing)
        return;
    gw_health_sched_collect(&h->sched, uv_now(h->loop), open);
    pump(h);
}

static int count_targets(const gw_config_t *cfg, uint32_t *out)
{
    uint64_t n = 0;
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        const gw_upstream_config_t *uc = &cfg->upstreams[u];
        if (!uc->health_check.enabled)
            continue;
        if (uc->nhosts > GW_MAX_HOSTS || uc->health_check.path == NULL)
            return GW_HEALTH_EINVAL;
        n += uc->nhosts;
    }
    if (n > UINT32_MAX)
        return GW_HEALTH_EINVAL;
    *out = (uint32_t)n;
    return 0;
}

static int make_addr(const gw_addr_t *a, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    if (a->family == AF_INET6)
        return uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *)out);
    return uv_ip4_addr(a->host, a->port, (struct sockaddr_in *)out);
}

/* Resolves addresses, builds request prefixes and the first, staggered, round. */
static int setup_targets(gw_health_t *h, uint32_t n)
{
    const gw_config_t *cfg = h->rt->cfg;
    uint64_t now = uv_now(h->loop);
    uint32_t i = 0;
    h->prefix = calloc(cfg->nupstreams > 0 ? cfg->nupstreams : 1, sizeof(*h->prefix));
    h->hosts = calloc(n > 0 ? n : 1, sizeof(*h->hosts));
    if (h->prefix == NULL || h->hosts == NULL)
        return GW_HEALTH_ENOMEM;
    int r = gw_health_sched_init(&h->sched, n, GW_HEALTH_QUEUE_MAX, GW_HEALTH_MAX_INFLIGHT);
    if (r != 0)
        return r;
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        const gw_upstream_config_t *uc = &cfg->upstreams[u];
        if (!uc->health_check.enabled)
            continue;
        if ((h->prefix[u] = request_prefix(uc->health_check.path)) == NULL)
            return GW_HEALTH_ENOMEM;
        for (size_t k = 0; k < uc->nhosts; k++, i++) {
            h->hosts[i].upstream = (uint32_t)u;
            h->hosts[i].host = (uint32_t)k;
            if (make_addr(&uc->hosts[k], &h->hosts[i].addr) != 0)
                return GW_HEALTH_EINVAL;
            uint64_t interval = uc->health_check.interval_ms;
            gw_health_sched_add(&h->sched, i, gw_health_stagger(now, interval, i, n), interval);
        }
    }
    h->stats.targets = n;
    return 0;
}

gw_health_t *gw_health_new(uv_loop_t *loop, const gw_runtime_t *rt, gw_health_cb on_change,
                           void *ctx)
{
    uint32_t n = 0;
    if (loop == NULL || rt == NULL || rt->cfg == NULL || count_targets(rt->cfg, &n) != 0) {
        errno = EINVAL;
        return NULL;
    }
    gw_health_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    h->loop = loop;
    h->rt = rt;
    h->on_change = on_change;
    h->ctx = ctx;
    h->local_errors.interval_ms = 10000;
    h->probe_errors.interval_ms = 1000;
    h->transition_logs.interval_ms = 100;
    int r = setup_targets(h, n);
    if (r != 0) {
        free_health(h);
        errno = -r;
        return NULL;
    }
    /* No failure paths below this point: once a handle is initialised, memory may only be freed
     * from close callbacks. uv_timer_init cannot fail. */
    uv_timer_init(loop, &h->tick);
    h->tick.data = h;
    for (size_t k = 0; k < GW_HEALTH_MAX_INFLIGHT; k++) {
        probe_t *p = &h->probes[k];
        p->h = h;
        p->target = -1;
        uv_timer_init(loop, &p->timer);
        p->timer.data = p;
    }
    uv_timer_start(&h->tick, on_tick, 0, 0);
    return h;
}

void gw_health_set_gate(gw_health_t *h, gw_health_gate_cb gate, void *ctx)
{
    h->gate = gate;
    h->gate_ctx = ctx;
}

int gw_health_close(gw_health_t *h, gw_health_close_cb done)
{
    if (h->closing)
        return GW_HEALTH_EALREADY;
    h->closing = true;
    h->done = done;
    h->pending = 1;
    uv_close((uv_handle_t *)&h->tick, on_handle_close);
    for (size_t k = 0; k < GW_HEALTH_MAX_INFLIGHT; k++) {
        probe_t *p = &h->probes[k];
        h->pending++;
        p->timer.data = h;
        uv_close((uv_handle_t *)&p->timer, on_handle_close);
        if (p->target == -1)
            continue;
        h->pending++; /* on_tcp_close, whether the socket is closing already or closes now */
        if (!p->finished) {
            p->finished = true;
            uv_close((uv_handle_t *)&p->tcp, on_tcp_close);
        }
    }
    return 0;
}

void gw_health_stats(const gw_health_t *h, gw_health_stats_t *out)
{
    *out = h->stats;
    out->skipped = h->sched.skipped;
    out->inflight = h->sched.running;
    out->queued = h->sched.qlen;
}
