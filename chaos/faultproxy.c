/*
 * bw_faultproxy: a TCP proxy that injects network faults, driven by a small HTTP control API.
 *
 * The chaos suite needs the failures a network gives a gateway: added latency, stalls in the
 * middle of a body, resets, blackholes, refused connects, thin pipes. This kernel has no tc netem
 * (PLATFORM.md, "Network faults"), and nft/iptables can only drop, reject or rate-limit packets,
 * so everything that needs timing or byte counts is done here, in user space, between Breakwater
 * and an upstream or webhook receiver:
 *
 *     breakwater --> [listen] bw_faultproxy [target] --> bw_upstream / webhook receiver
 *                               ^ control: POST/GET/DELETE /faults, GET /stats,
 *                                          DELETE /connections
 *
 * chaos/README.md is the reference for the command line and the control API.
 *
 * Why it is built this way
 * - One libuv loop, no threads, no locks. A scenario drives the faults over HTTP while traffic
 *   flows, so fault changes and data never race.
 * - Each connection has two pipes: UP carries client->target bytes, DOWN target->client bytes.
 *   A pipe reads its source into a queue of chunks and writes them to its destination when they
 *   are due (latency), when the byte budget allows it (bandwidth) and only up to a byte limit
 *   (stall, close/reset after N). pipe_pump is the one place that decides what may be written.
 * - Every read is copied into an exact-size chunk (one shared 64 KiB read buffer for the loop),
 *   so a slow destination costs the bytes queued, not 64 KiB per read. Each chunk also counts a
 *   fixed overhead, so many tiny chunks cannot exceed the bound either.
 * - Backpressure: a pipe stops reading its source when its queue reaches --buffer bytes and
 *   starts again below half. A held (stalled) pipe therefore fills to the bound and then leaves
 *   the rest in the kernel, like a real stalled peer.
 * - When faults take effect:
 *   - decided once, at accept, for the life of the connection: reset, close, blackhole and
 *     refuse. Removing such a fault affects only later connections.
 *   - evaluated live on every piece of data, so they also act on connections that are already
 *     open (keep-alive pools): latency (rolled per chunk read), bandwidth and stall (rolled once
 *     per connection and fault, with a stable hash, so a connection does not flip in and out).
 *     Removing a stall fault releases the held bytes, intact and in order.
 *   - refuse in "listener" mode closes the listening socket while the fault exists (connects are
 *     refused by the kernel) and re-opens it on the same port when it is removed.
 * - Stall byte counts on a connection that was already open when the fault was added start at
 *   the moment it was added (struct mark); a new connection counts from its first byte.
 * - EOF travels like data: a FIN is passed on only after the bytes before it, waits out the
 *   latency it was given, and is held by a stall, so a stalled client never sees the close.
 * - DELETE /connections resets every open connection. A gateway's keep-alive pool would
 *   otherwise keep using connections that predate an accept-time fault and never meet it.
 *
 * Connection states (struct conn.state); the function named makes the transition.
 *
 *   on_accept -> conn_decide:
 *       reset/refuse(rst) chosen                  -> conn_abort (RST to the client)
 *       close after 0 chosen                      -> conn_cut   -> CS_LINGER
 *       blackhole of the upstream direction       -> CS_OPEN, no target; client input discarded
 *       otherwise                                 -> CS_CONNECTING (uv_tcp_connect, timer)
 *   CS_CONNECTING --on_connect ok--> CS_OPEN;  --error or timer--> conn_abort
 *   CS_OPEN --pipe_pump: close/reset budget spent--> conn_cut:
 *       close -> CS_LINGER: FIN both ways (after queued writes), input discarded, closed when both
 *                sources send EOF or after LINGER_MS
 *       reset -> CS_DRAIN: reading stops; polled every ms until no write is pending and both
 *                kernel send queues are empty (at most DRAIN_MS), then conn_abort, so the N bytes
 *                really arrive before the RST
 *   CS_OPEN --both pipes done (EOF passed on as FIN, or discarded)--> conn_close
 *   any state --read/write error--> conn_abort (an RST from one side is passed on as an RST)
 *   conn_abort = SO_LINGER 0 on both sockets + conn_close -> CS_CLOSING (uv_close of all handles)
 *
 * Invariants
 * - At most one uv_write per pipe is in flight (pipe.writing); the bytes it carries stay in the
 *   head chunk until on_write, so a chunk is never freed while libuv may still write from it.
 * - pipe.queued <= buffer + one read (64 KiB) + overhead: reading stops once it reaches --buffer.
 * - A conn's memory (and its queued chunks) is freed only in the close callback of its last
 *   handle; write, shutdown and connect callbacks after conn_close see CS_CLOSING and return.
 * - A conn is on its proxy's list from accept until conn_close, never after.
 * - Faults live in one array in insertion order (at most FAULTS_MAX); ids are never reused.
 * - Every table has a bound and a behaviour when full: FAULTS_MAX faults (409), --max-conns
 *   proxied connections (more are accepted and reset), CTL_CONNS_MAX control connections (more
 *   are closed), CTL_REQ_MAX bytes per control request (431/413), MARKS_MAX stall marks per
 *   connection (more stall faults count from the connection's first byte).
 *
 * Who calls it: chaos scenarios and tests start the binary, read "PORT <n>" (one line per proxy)
 * and "CONTROL <n>" from stdout, and drive it over HTTP. It has no library interface.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
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
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <linux/sockios.h>
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
int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len,
                      const char **path, size_t *path_len, int *minor_version,
                      struct phr_header *headers, size_t *num_headers, size_t last_len);

#define KIB 1024
#define PROXIES_MAX 16
#define FAULTS_MAX 64
#define MARKS_MAX 8                /* stall marks per connection (see struct mark) */
#define READ_BUF (64 * KIB)        /* the loop's one read buffer */
#define CHUNK_OVERHEAD 64          /* counted per queued chunk against --buffer */
#define BUFFER_DEFAULT (256 * KIB) /* per pipe */
#define BUFFER_MIN (4 * KIB)
#define BUFFER_MAX (64 * KIB * KIB) /* 64 MiB */
#define CONNS_DEFAULT 1024
#define CONNS_LIMIT 100000
#define CONNECT_TIMEOUT_DEFAULT_MS 5000
#define LINGER_MS 2000
#define DRAIN_MS 2000
#define BACKLOG 1024
#define CTL_REQ_MAX (64 * KIB)
#define CTL_CONNS_MAX 16
#define CTL_HEADERS_MAX 64
#define NAME_MAX_LEN 63
#define LATENCY_MAX_MS 3600000ULL
#define BW_SLICES_PER_SEC 50 /* bandwidth: one write carries at most 1/50 s worth of bytes */
#define NS_PER_MS 1000000ULL
#define NS_PER_SEC 1000000000ULL

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

enum kind { K_LATENCY = 0, K_BLACKHOLE, K_RESET, K_REFUSE, K_CLOSE, K_BANDWIDTH, K_STALL, K_COUNT };
static const char *const KIND_NAME[K_COUNT] = {"latency", "blackhole", "reset", "refuse",
                                               "close",   "bandwidth", "stall"};

/* Parameters each kind accepts besides kind, direction, percent and proxy. */
static const char *const KIND_PARAMS[K_COUNT][3] = {
    [K_LATENCY] = {"ms", "jitter_ms", NULL}, [K_BLACKHOLE] = {NULL},
    [K_RESET] = {"after_bytes", NULL},       [K_REFUSE] = {"mode", NULL},
    [K_CLOSE] = {"after_bytes", NULL},       [K_BANDWIDTH] = {"bytes_per_sec", NULL},
    [K_STALL] = {"after_bytes", NULL},
};

enum { UP = 0, DOWN = 1 }; /* pipe index: UP carries client->target bytes, DOWN the reverse */
#define MASK(d) (1u << (d))
#define MASK_BOTH (MASK(UP) | MASK(DOWN))

enum refuse_mode { REFUSE_LISTENER = 0, REFUSE_RST };

struct fault {
    uint32_t id;
    enum kind kind;
    unsigned dirs; /* MASK() bits */
    int proxy;     /* proxy index, or -1: every proxy */
    double percent;
    uint64_t ms, jitter_ms, after_bytes, bytes_per_sec;
    enum refuse_mode mode;
    uint64_t first_serial; /* connections with this serial or higher were accepted after it */
    uint64_t applied;      /* times it took effect (README: "applied") */
};

struct chunk {
    struct chunk *next;
    uint64_t release_ns; /* not written before this (latency) */
    size_t len, off;     /* data[off, len) is still to be written */
    char data[];
};

struct conn;

struct pipe {
    struct conn *conn;
    int dir;
    uv_stream_t *src, *dst; /* NULL when that side does not exist (blackhole without target) */
    struct chunk *head, *tail;
    size_t queued; /* bytes in chunks plus CHUNK_OVERHEAD each */
    uint64_t fwd;  /* bytes written to dst */
    uint64_t last_release_ns, bw_next_ns, eof_release_ns;
    uv_timer_t timer; /* wakes the pump for latency and bandwidth */
    uv_write_t wreq;
    uv_shutdown_t sreq;
    size_t wlen;   /* bytes carried by wreq */
    bool writing;  /* wreq in flight */
    bool reading;  /* uv_read_start is active on src */
    bool eof;      /* src sent EOF */
    bool shutting; /* uv_shutdown(dst) issued */
    bool done;     /* EOF passed on (or discarded): nothing more will flow */
    bool discard;  /* blackhole: read and drop */
    bool held;     /* a stall fault holds it (counted once per hold in fault.applied) */
};

/* Where a stall fault added while the connection was open starts counting. */
struct mark {
    uint32_t fault_id;
    uint64_t base[2];
};

enum cstate { CS_CONNECTING = 0, CS_OPEN, CS_LINGER, CS_DRAIN, CS_CLOSING };

struct proxy;

struct conn {
    struct proxy *px;
    struct conn *prev, *next;
    uint64_t serial;
    enum cstate state;
    uv_tcp_t client, target;
    bool target_init;
    uv_connect_t creq;
    uv_timer_t timer; /* connect timeout, linger, drain polls */
    int handles;      /* open uv handles; the conn is freed when it drops to 0 */
    struct pipe pipes[2];
    bool cut; /* close or reset after cut_after bytes counted over cut_dirs */
    enum kind cut_kind;
    unsigned cut_dirs;
    uint64_t cut_after;
    uint64_t drain_deadline_ns;
    struct mark marks[MARKS_MAX];
    int nmarks;
};

struct app;

struct proxy {
    struct app *app;
    int index;
    char name[NAME_MAX_LEN + 1];
    const char *listen_text, *target_text;
    bool listen_explicit;
    struct sockaddr_storage listen_addr, target_addr;
    uv_tcp_t *listener; /* NULL while a refuse(listener) fault holds it closed */
    int port;
    int refusing; /* refuse(listener) faults that apply */
    struct conn *conns;
    uint64_t accepted, active, refused, resets, closes, blackholed, connect_failed, over_limit;
    uint64_t bytes[2], dropped[2];
};

struct ctl {
    struct app *app;
    struct ctl *prev, *next;
    uv_tcp_t tcp;
    uv_write_t wreq;
    char *out;
    size_t len;
    bool answered;
    char in[CTL_REQ_MAX];
};

struct app {
    uv_loop_t loop;
    struct proxy proxies[PROXIES_MAX];
    int nproxies;
    struct fault faults[FAULTS_MAX];
    int nfaults;
    uint32_t next_fault_id;
    const char *control_text;
    struct sockaddr_storage control_addr;
    uv_tcp_t control;
    bool control_init;
    int control_port;
    struct ctl *ctls;
    int nctls;
    uv_signal_t sigterm, sigint;
    uint64_t conn_serial, seed, rng;
    uint64_t conns_active, conns_max;
    size_t buffer_max;
    uint64_t connect_timeout_ms;
    bool stopping;
    uint64_t log_last_ns, log_dropped;
    char rbuf[READ_BUF];
};

static void conn_abort(struct conn *c);
static void conn_close(struct conn *c);
static void conn_cut(struct conn *c);
static void pipe_pump(struct pipe *p);

/* ---- logging ---------------------------------------------------------------------------- */

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bw_faultproxy: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Errors that can repeat per connection are logged at most once a second (no log floods). */
static void log_limited(struct app *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_limited(struct app *a, const char *fmt, ...)
{
    uint64_t now = uv_hrtime();
    if (a->log_last_ns != 0 && now - a->log_last_ns < NS_PER_SEC) {
        a->log_dropped++;
        return;
    }
    a->log_last_ns = now;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bw_faultproxy: ");
    vfprintf(stderr, fmt, ap);
    if (a->log_dropped > 0)
        fprintf(stderr, " (%" PRIu64 " similar messages suppressed)", a->log_dropped);
    fputc('\n', stderr);
    va_end(ap);
    a->log_dropped = 0;
}

/* ---- randomness ------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static double unit_of(uint64_t x)
{
    return (double)(x >> 11) * 0x1.0p-53;
}

/* A fresh roll: true with probability percent/100. */
static bool roll(struct app *a, double percent)
{
    if (percent >= 100.0)
        return true;
    if (percent <= 0.0)
        return false;
    a->rng = mix64(a->rng);
    return unit_of(a->rng) * 100.0 < percent;
}

/* A stable roll per (connection, fault): the same answer every time it is asked. */
static bool selected(const struct conn *c, const struct fault *f)
{
    if (f->percent >= 100.0)
        return true;
    if (f->percent <= 0.0)
        return false;
    uint64_t h = mix64(c->px->app->seed ^ mix64(c->serial * 0x100000001b3ULL ^ f->id));
    return unit_of(h) * 100.0 < f->percent;
}

/* ---- fault lookups ---------------------------------------------------------------------- */

static bool fault_on(const struct fault *f, const struct proxy *px, enum kind k)
{
    return f->kind == k && (f->proxy < 0 || f->proxy == px->index);
}

static uint64_t counted(const struct conn *c, unsigned dirs)
{
    uint64_t n = 0;
    for (int d = UP; d <= DOWN; d++)
        if (dirs & MASK(d))
            n += c->pipes[d].fwd;
    return n;
}

/* Bytes left before a close/reset cut; UINT64_MAX when the connection has none. */
static uint64_t cut_remaining(const struct conn *c)
{
    if (!c->cut)
        return UINT64_MAX;
    uint64_t used = counted(c, c->cut_dirs);
    return used >= c->cut_after ? 0 : c->cut_after - used;
}

static const struct mark *mark_find(const struct conn *c, uint32_t id)
{
    for (int i = 0; i < c->nmarks; i++)
        if (c->marks[i].fault_id == id)
            return &c->marks[i];
    return NULL;
}

/* Bytes pipe p may forward before a stall fault holds it; UINT64_MAX when none applies.
 * *which is set to the fault that gives the smallest budget. */
static uint64_t stall_remaining(const struct pipe *p, struct fault **which)
{
    const struct conn *c = p->conn;
    struct app *a = c->px->app;
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < a->nfaults; i++) {
        struct fault *f = &a->faults[i];
        if (!fault_on(f, c->px, K_STALL) || !(f->dirs & MASK(p->dir)) || !selected(c, f))
            continue;
        uint64_t base = 0;
        const struct mark *m = c->serial < f->first_serial ? mark_find(c, f->id) : NULL;
        if (m != NULL)
            for (int d = UP; d <= DOWN; d++)
                if (f->dirs & MASK(d))
                    base += m->base[d];
        uint64_t used = counted(c, f->dirs) - base;
        uint64_t rem = used >= f->after_bytes ? 0 : f->after_bytes - used;
        if (rem < best) {
            best = rem;
            *which = f;
        }
    }
    return best;
}

/* The tightest bandwidth fault on pipe p in bytes/s, 0 when none applies. */
static uint64_t pipe_rate(const struct pipe *p, struct fault **which)
{
    const struct conn *c = p->conn;
    struct app *a = c->px->app;
    uint64_t rate = 0;
    for (int i = 0; i < a->nfaults; i++) {
        struct fault *f = &a->faults[i];
        if (!fault_on(f, c->px, K_BANDWIDTH) || !(f->dirs & MASK(p->dir)) || !selected(c, f))
            continue;
        if (rate == 0 || f->bytes_per_sec < rate) {
            rate = f->bytes_per_sec;
            *which = f;
        }
    }
    return rate;
}

/* Delay for one chunk read now: the sum of every latency fault that rolls in. */
static uint64_t latency_ns(struct pipe *p)
{
    struct proxy *px = p->conn->px;
    struct app *a = px->app;
    uint64_t total = 0;
    for (int i = 0; i < a->nfaults; i++) {
        struct fault *f = &a->faults[i];
        if (!fault_on(f, px, K_LATENCY) || !(f->dirs & MASK(p->dir)) || !roll(a, f->percent))
            continue;
        int64_t ms = (int64_t)f->ms;
        if (f->jitter_ms > 0) {
            a->rng = mix64(a->rng);
            ms += (int64_t)(a->rng % (2 * f->jitter_ms + 1)) - (int64_t)f->jitter_ms;
        }
        if (ms > 0)
            total += (uint64_t)ms * NS_PER_MS;
        f->applied++;
    }
    return total;
}

/* ---- pipes ------------------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    (void)suggested;
    /* Safe to share: libuv hands the buffer to on_read before it asks for another, and on_read
     * copies what it keeps. */
    *buf = uv_buf_init(c->px->app->rbuf, sizeof(c->px->app->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void pipe_start_reading(struct pipe *p)
{
    if (p->reading || p->eof || p->src == NULL)
        return;
    if (uv_read_start(p->src, on_alloc, on_read) == 0)
        p->reading = true;
}

static void pipe_stop_reading(struct pipe *p)
{
    if (p->reading)
        uv_read_stop(p->src);
    p->reading = false;
}

static void pipe_free_queue(struct pipe *p)
{
    while (p->head != NULL) {
        struct chunk *next = p->head->next;
        free(p->head);
        p->head = next;
    }
    p->tail = NULL;
    p->queued = 0;
}

static int pipe_enqueue(struct pipe *p, const char *data, size_t n)
{
    struct chunk *ch = malloc(sizeof(*ch) + n);
    if (ch == NULL)
        return UV_ENOMEM;
    memcpy(ch->data, data, n);
    ch->len = n;
    ch->off = 0;
    ch->next = NULL;
    /* Never earlier than the chunk before it: jitter delays data, it does not reorder a
     * byte stream. */
    uint64_t release = uv_hrtime() + latency_ns(p);
    if (release < p->last_release_ns)
        release = p->last_release_ns;
    p->last_release_ns = release;
    ch->release_ns = release;
    if (p->tail != NULL)
        p->tail->next = ch;
    else
        p->head = ch;
    p->tail = ch;
    p->queued += n + CHUNK_OVERHEAD;
    if (p->queued >= p->conn->px->app->buffer_max)
        pipe_stop_reading(p);
    return 0;
}

/* n bytes of the head chunk reached the kernel. */
static void pipe_advance(struct pipe *p, size_t n)
{
    struct chunk *ch = p->head;
    ch->off += n;
    p->fwd += n;
    p->queued -= n;
    p->conn->px->bytes[p->dir] += n;
    if (ch->off == ch->len) {
        p->head = ch->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->queued -= CHUNK_OVERHEAD;
        free(ch);
    }
}

static void on_pipe_timer(uv_timer_t *t)
{
    pipe_pump(container_of(t, struct pipe, timer));
}

static void pipe_arm(struct pipe *p, uint64_t wait_ns)
{
    uint64_t ms = (wait_ns + NS_PER_MS - 1) / NS_PER_MS;
    uv_timer_start(&p->timer, on_pipe_timer, ms > 0 ? ms : 1, 0);
}

static void conn_check(struct conn *c);

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct pipe *p = container_of(req, struct pipe, sreq);
    (void)status; /* an error means the peer is gone: nothing more flows either way */
    if (p->conn->state == CS_CLOSING)
        return;
    p->done = true;
    conn_check(p->conn);
}

/* Passes EOF on as a FIN once everything queued has been written. */
static void pipe_shutdown(struct pipe *p)
{
    if (p->shutting || p->dst == NULL)
        return;
    p->shutting = true;
    if (uv_shutdown(&p->sreq, p->dst, on_shutdown) != 0) {
        p->done = true;
        conn_check(p->conn);
    }
}

static void on_write(uv_write_t *req, int status)
{
    struct pipe *p = container_of(req, struct pipe, wreq);
    struct conn *c = p->conn;
    p->writing = false;
    if (c->state == CS_CLOSING)
        return;
    if (status < 0) {
        conn_abort(c);
        return;
    }
    pipe_advance(p, p->wlen);
    if (c->state == CS_OPEN)
        pipe_pump(p);
}

/* Writes what is due and allowed; arms the pipe timer for what is due later. Returns false
 * when the connection was cut or aborted. */
static bool pump_queue(struct pipe *p)
{
    struct conn *c = p->conn;
    for (;;) {
        if (cut_remaining(c) == 0) {
            conn_cut(c);
            return false;
        }
        struct chunk *ch = p->head;
        if (ch == NULL)
            return true;
        uint64_t now = uv_hrtime();
        if (ch->release_ns > now) {
            pipe_arm(p, ch->release_ns - now);
            return true;
        }
        uint64_t n = ch->len - ch->off;
        if (c->cut && (c->cut_dirs & MASK(p->dir)) && cut_remaining(c) < n)
            n = cut_remaining(c);
        struct fault *f = NULL;
        uint64_t rem = stall_remaining(p, &f);
        if (rem == 0) {
            if (!p->held)
                f->applied++;
            p->held = true;
            return true;
        }
        p->held = false;
        if (rem < n)
            n = rem;
        uint64_t rate = pipe_rate(p, &f);
        if (rate > 0) {
            uint64_t slice_ns = NS_PER_SEC / BW_SLICES_PER_SEC;
            if (p->bw_next_ns > now) {
                f->applied++;
                pipe_arm(p, p->bw_next_ns - now);
                return true;
            }
            uint64_t slice = rate / BW_SLICES_PER_SEC > 0 ? rate / BW_SLICES_PER_SEC : 1;
            if (slice < n)
                n = slice;
            /* A timer that fired a little late does not lower the rate: catch up from where
             * the budget ended unless that is more than a slice in the past. */
            uint64_t base = now - p->bw_next_ns < slice_ns ? p->bw_next_ns : now;
            p->bw_next_ns = base + n * NS_PER_SEC / rate;
        }
        uv_buf_t b = uv_buf_init(ch->data + ch->off, (unsigned)n);
        int r = uv_try_write(p->dst, &b, 1);
        if (r == UV_EAGAIN)
            r = 0;
        if (r < 0) {
            conn_abort(c);
            return false;
        }
        bool partial = (uint64_t)r < n;
        if (r > 0)
            pipe_advance(p, (size_t)r);
        if (partial) {
            /* The head chunk still holds the rest: pipe_advance frees a chunk only when it is
             * fully written. */
            b = uv_buf_init(p->head->data + p->head->off, (unsigned)(n - (uint64_t)r));
            p->wlen = b.len;
            if (uv_write(&p->wreq, p->dst, &b, 1, on_write) != 0) {
                conn_abort(c);
                return false;
            }
            p->writing = true;
            return true;
        }
    }
}

/* The one place that moves data: see the top of the file. */
static void pipe_pump(struct pipe *p)
{
    struct conn *c = p->conn;
    if (c->state != CS_OPEN || p->writing || p->discard)
        return;
    if (!pump_queue(p) || c->state != CS_OPEN)
        return;
    if (p->queued < c->px->app->buffer_max / 2)
        pipe_start_reading(p);
    if (p->head != NULL || !p->eof || p->shutting)
        return;
    /* The FIN is data too: it waits out the latency it was given and is held by a stall. */
    uint64_t now = uv_hrtime();
    if (p->eof_release_ns > now) {
        pipe_arm(p, p->eof_release_ns - now);
        return;
    }
    struct fault *f = NULL;
    if (stall_remaining(p, &f) > 0)
        pipe_shutdown(p);
}

static void pipe_eof(struct pipe *p)
{
    struct conn *c = p->conn;
    p->eof = true;
    p->reading = false;
    p->eof_release_ns = uv_hrtime() + latency_ns(p);
    if (p->eof_release_ns < p->last_release_ns)
        p->eof_release_ns = p->last_release_ns;
    if (c->state == CS_LINGER || p->discard) {
        p->done = true;
        conn_check(c);
    } else if (c->state == CS_OPEN) {
        pipe_pump(p);
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    struct pipe *p = &c->pipes[s == (uv_stream_t *)&c->client ? UP : DOWN];
    if (n == 0 || c->state == CS_CLOSING)
        return;
    if (n == UV_EOF) {
        pipe_eof(p);
        return;
    }
    if (n < 0) {
        conn_abort(c); /* an RST (or error) on one side becomes an RST on the other */
        return;
    }
    if (c->state != CS_OPEN || p->discard) {
        c->px->dropped[p->dir] += (uint64_t)n;
        return;
    }
    if (pipe_enqueue(p, buf->base, (size_t)n) != 0) {
        log_limited(c->px->app, "out of memory queueing %zd bytes; connection reset", n);
        conn_abort(c);
        return;
    }
    pipe_pump(p);
}

/* ---- connections ------------------------------------------------------------------------ */

static void conn_free(struct conn *c)
{
    pipe_free_queue(&c->pipes[UP]);
    pipe_free_queue(&c->pipes[DOWN]);
    free(c);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles == 0)
        conn_free(c);
}

static void conn_close(struct conn *c)
{
    if (c->state == CS_CLOSING)
        return;
    c->state = CS_CLOSING;
    struct proxy *px = c->px;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        px->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    px->active--;
    px->app->conns_active--;
    uv_close((uv_handle_t *)&c->client, on_conn_handle_closed);
    if (c->target_init)
        uv_close((uv_handle_t *)&c->target, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->pipes[UP].timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->pipes[DOWN].timer, on_conn_handle_closed);
}

static void set_rst(uv_tcp_t *t)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)t, &fd) == 0) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
}

/* Closes both sides with an RST (SO_LINGER 0): queued bytes are dropped. */
static void conn_abort(struct conn *c)
{
    if (c->state == CS_CLOSING)
        return;
    set_rst(&c->client);
    if (c->target_init)
        set_rst(&c->target);
    conn_close(c);
}

static void conn_check(struct conn *c)
{
    if (c->state == CS_CLOSING)
        return;
    bool finished = true;
    for (int d = UP; d <= DOWN; d++) {
        const struct pipe *p = &c->pipes[d];
        if (p->src == NULL)
            continue;
        if (c->state == CS_LINGER ? !p->eof : !p->done)
            finished = false;
    }
    if (finished)
        conn_close(c);
}

static size_t outq(uv_tcp_t *t)
{
    uv_os_fd_t fd;
    int n = 0;
    if (uv_fileno((uv_handle_t *)t, &fd) != 0 || ioctl(fd, SIOCOUTQ, &n) != 0)
        return 0;
    return n > 0 ? (size_t)n : 0;
}

static void on_conn_timer(uv_timer_t *t)
{
    struct conn *c = container_of(t, struct conn, timer);
    switch (c->state) {
    case CS_CONNECTING:
        c->px->connect_failed++;
        log_limited(c->px->app, "connect to %s timed out", c->px->target_text);
        conn_abort(c);
        break;
    case CS_LINGER:
        conn_close(c);
        break;
    case CS_DRAIN: {
        bool pending = c->pipes[UP].writing || c->pipes[DOWN].writing || outq(&c->client) > 0 ||
                       (c->target_init && outq(&c->target) > 0);
        if (!pending || uv_hrtime() >= c->drain_deadline_ns)
            conn_abort(c);
        break;
    }
    default:
        break;
    }
}

/* The close/reset budget is spent (or was 0): see the state diagram at the top. */
static void conn_cut(struct conn *c)
{
    if (c->state == CS_CLOSING || c->state == CS_LINGER || c->state == CS_DRAIN)
        return;
    for (int d = UP; d <= DOWN; d++)
        uv_timer_stop(&c->pipes[d].timer);
    if (c->cut_kind == K_RESET) {
        c->state = CS_DRAIN;
        c->px->resets++;
        pipe_stop_reading(&c->pipes[UP]);
        pipe_stop_reading(&c->pipes[DOWN]);
        c->drain_deadline_ns = uv_hrtime() + DRAIN_MS * NS_PER_MS;
        uv_timer_start(&c->timer, on_conn_timer, 1, 1);
        return;
    }
    c->state = CS_LINGER;
    c->px->closes++;
    for (int d = UP; d <= DOWN; d++) {
        struct pipe *p = &c->pipes[d];
        p->discard = true;
        pipe_start_reading(p); /* to see the EOF, and so unread input does not become an RST */
        pipe_shutdown(p);
    }
    uv_timer_start(&c->timer, on_conn_timer, LINGER_MS, 0);
    conn_check(c);
}

enum accept_action { ACT_PROXY = 0, ACT_RST, ACT_CLOSE };

/* Rolls the faults decided at accept; sets cut and discard on c. */
static enum accept_action conn_decide(struct conn *c)
{
    struct proxy *px = c->px;
    struct app *a = px->app;
    for (int i = 0; i < a->nfaults; i++) {
        struct fault *f = &a->faults[i];
        if (f->proxy >= 0 && f->proxy != px->index)
            continue;
        bool cut_kind = f->kind == K_RESET || f->kind == K_CLOSE;
        if (f->kind == K_REFUSE && f->mode == REFUSE_RST && roll(a, f->percent)) {
            f->applied++;
            px->refused++;
            return ACT_RST;
        }
        if (cut_kind && !c->cut && roll(a, f->percent)) {
            f->applied++;
            c->cut = true;
            c->cut_kind = f->kind;
            c->cut_dirs = f->dirs;
            c->cut_after = f->after_bytes;
            if (f->after_bytes == 0) {
                if (f->kind == K_RESET)
                    px->resets++;
                return f->kind == K_RESET ? ACT_RST : ACT_CLOSE;
            }
        }
        if (f->kind == K_BLACKHOLE && roll(a, f->percent)) {
            f->applied++;
            px->blackholed++;
            for (int d = UP; d <= DOWN; d++)
                if (f->dirs & MASK(d))
                    c->pipes[d].discard = true;
        }
    }
    return ACT_PROXY;
}

static void on_connect(uv_connect_t *req, int status)
{
    struct conn *c = container_of(req, struct conn, creq);
    if (c->state == CS_CLOSING)
        return;
    uv_timer_stop(&c->timer);
    if (status < 0) {
        c->px->connect_failed++;
        log_limited(c->px->app, "connect to %s: %s", c->px->target_text, uv_strerror(status));
        conn_abort(c); /* the client sees a reset, the closest a proxy can get to "refused" */
        return;
    }
    c->state = CS_OPEN;
    uv_tcp_nodelay(&c->client, 1);
    uv_tcp_nodelay(&c->target, 1);
    pipe_start_reading(&c->pipes[UP]);
    pipe_start_reading(&c->pipes[DOWN]);
}

static int conn_init(struct proxy *px, struct conn *c)
{
    uv_loop_t *loop = &px->app->loop;
    c->px = px;
    c->serial = ++px->app->conn_serial;
    uv_tcp_init(loop, &c->client);
    c->client.data = c;
    c->handles = 1;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->handles++;
    for (int d = UP; d <= DOWN; d++) {
        struct pipe *p = &c->pipes[d];
        p->conn = c;
        p->dir = d;
        uv_timer_init(loop, &p->timer);
        p->timer.data = c;
        c->handles++;
    }
    c->next = px->conns;
    if (c->next != NULL)
        c->next->prev = c;
    px->conns = c;
    px->active++;
    px->app->conns_active++;
    c->state = CS_CONNECTING;
    return 0;
}

static void conn_connect(struct conn *c)
{
    struct app *a = c->px->app;
    uv_tcp_init(&a->loop, &c->target);
    c->target.data = c;
    c->target_init = true;
    c->handles++;
    c->pipes[UP].src = (uv_stream_t *)&c->client;
    c->pipes[UP].dst = (uv_stream_t *)&c->target;
    c->pipes[DOWN].src = (uv_stream_t *)&c->target;
    c->pipes[DOWN].dst = (uv_stream_t *)&c->client;
    int r = uv_tcp_connect(&c->creq, &c->target, (const struct sockaddr *)&c->px->target_addr,
                           on_connect);
    if (r != 0) {
        c->px->connect_failed++;
        log_limited(a, "connect to %s: %s", c->px->target_text, uv_strerror(r));
        conn_abort(c);
        return;
    }
    uv_timer_start(&c->timer, on_conn_timer, a->connect_timeout_ms, 0);
}

static void on_accept(uv_stream_t *server, int status)
{
    struct proxy *px = server->data;
    struct app *a = px->app;
    if (status < 0) {
        log_limited(a, "accept on port %d: %s", px->port, uv_strerror(status));
        return;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        log_limited(a, "out of memory accepting a connection");
        return;
    }
    conn_init(px, c);
    if (uv_accept(server, (uv_stream_t *)&c->client) != 0) {
        conn_close(c);
        return;
    }
    px->accepted++;
    c->pipes[UP].src = (uv_stream_t *)&c->client;
    c->pipes[DOWN].dst = (uv_stream_t *)&c->client;
    if (a->conns_active > a->conns_max) {
        px->over_limit++;
        log_limited(a, "more than %" PRIu64 " connections; resetting new ones", a->conns_max);
        conn_abort(c);
        return;
    }
    switch (conn_decide(c)) {
    case ACT_RST:
        conn_abort(c);
        return;
    case ACT_CLOSE:
        c->pipes[DOWN].done = true;
        conn_cut(c);
        return;
    case ACT_PROXY:
        break;
    }
    if (c->pipes[UP].discard) {
        /* Blackhole towards the target: nobody to connect to; swallow what the client sends. */
        c->state = CS_OPEN;
        c->pipes[DOWN].done = true;
        pipe_start_reading(&c->pipes[UP]);
        return;
    }
    conn_connect(c);
}

/* ---- listeners -------------------------------------------------------------------------- */

static void on_free_handle_closed(uv_handle_t *h)
{
    free(h);
}

static int bound_port(uv_tcp_t *t)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getsockname(t, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
}

/* Opens the listener; after the first time on the port it got then, so a refuse(listener)
 * fault can close it and re-open it where the clients expect it. */
static int proxy_listen(struct proxy *px)
{
    uv_tcp_t *l = malloc(sizeof(*l));
    if (l == NULL)
        return UV_ENOMEM;
    uv_tcp_init(&px->app->loop, l);
    l->data = px;
    if (px->port != 0)
        set_port(&px->listen_addr, px->port);
    int r = uv_tcp_bind(l, (const struct sockaddr *)&px->listen_addr, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)l, BACKLOG, on_accept);
    if (r != 0) {
        uv_close((uv_handle_t *)l, on_free_handle_closed);
        return r;
    }
    if (px->port == 0)
        px->port = bound_port(l);
    px->listener = l;
    return 0;
}

static void proxy_unlisten(struct proxy *px)
{
    if (px->listener != NULL)
        uv_close((uv_handle_t *)px->listener, on_free_handle_closed);
    px->listener = NULL;
}

/* ---- the fault table -------------------------------------------------------------------- */

static bool fault_hits(const struct fault *f, const struct proxy *px)
{
    return f->proxy < 0 || f->proxy == px->index;
}

/* Re-evaluates every open connection of the proxies f applies to (stall released, bandwidth
 * changed, ...). */
static void repump(struct app *a, const struct fault *f)
{
    for (int i = 0; i < a->nproxies; i++) {
        struct proxy *px = &a->proxies[i];
        if (!fault_hits(f, px))
            continue;
        struct conn *next;
        for (struct conn *c = px->conns; c != NULL; c = next) {
            next = c->next; /* pumping may close c (never another conn) */
            pipe_pump(&c->pipes[UP]);
            pipe_pump(&c->pipes[DOWN]);
        }
    }
}

static void fault_activate(struct app *a, struct fault *f)
{
    for (int i = 0; i < a->nproxies; i++) {
        struct proxy *px = &a->proxies[i];
        if (!fault_hits(f, px))
            continue;
        if (f->kind == K_REFUSE && f->mode == REFUSE_LISTENER && px->refusing++ == 0) {
            proxy_unlisten(px);
            f->applied++;
        }
        if (f->kind != K_STALL)
            continue;
        for (struct conn *c = px->conns; c != NULL; c = c->next) {
            if (c->nmarks == MARKS_MAX)
                continue; /* documented: counts from the connection's first byte */
            struct mark *m = &c->marks[c->nmarks++];
            m->fault_id = f->id;
            m->base[UP] = c->pipes[UP].fwd;
            m->base[DOWN] = c->pipes[DOWN].fwd;
        }
    }
    repump(a, f);
}

static void fault_deactivate(struct app *a, const struct fault *f)
{
    for (int i = 0; i < a->nproxies; i++) {
        struct proxy *px = &a->proxies[i];
        if (!fault_hits(f, px))
            continue;
        if (f->kind == K_REFUSE && f->mode == REFUSE_LISTENER && --px->refusing == 0 &&
            !a->stopping) {
            int r = proxy_listen(px);
            if (r != 0)
                log_line("cannot re-open port %d: %s", px->port, uv_strerror(r));
        }
        if (f->kind != K_STALL)
            continue;
        for (struct conn *c = px->conns; c != NULL; c = c->next)
            for (int m = 0; m < c->nmarks; m++)
                if (c->marks[m].fault_id == f->id)
                    c->marks[m] = c->marks[--c->nmarks];
    }
}

/* Removes faults[idx]; the caller re-pumps with the copy so released stalls flow again. */
static void fault_remove(struct app *a, int idx)
{
    struct fault gone = a->faults[idx];
    memmove(&a->faults[idx], &a->faults[idx + 1], (size_t)(a->nfaults - idx - 1) * sizeof(gone));
    a->nfaults--;
    fault_deactivate(a, &gone);
    repump(a, &gone);
}

static const char *dir_name(unsigned dirs)
{
    return dirs == MASK_BOTH ? "both" : dirs == MASK(UP) ? "upstream" : "downstream";
}

static json_t *fault_json(const struct app *a, const struct fault *f)
{
    json_t *o = json_pack("{s:I, s:s, s:s, s:f, s:I}", "id", (json_int_t)f->id, "kind",
                          KIND_NAME[f->kind], "direction", dir_name(f->dirs), "percent", f->percent,
                          "applied", (json_int_t)f->applied);
    json_object_set_new(o, "proxy",
                        f->proxy < 0 ? json_null() : json_string(a->proxies[f->proxy].name));
    switch (f->kind) {
    case K_LATENCY:
        json_object_set_new(o, "ms", json_integer((json_int_t)f->ms));
        json_object_set_new(o, "jitter_ms", json_integer((json_int_t)f->jitter_ms));
        break;
    case K_RESET:
    case K_CLOSE:
    case K_STALL:
        json_object_set_new(o, "after_bytes", json_integer((json_int_t)f->after_bytes));
        break;
    case K_BANDWIDTH:
        json_object_set_new(o, "bytes_per_sec", json_integer((json_int_t)f->bytes_per_sec));
        break;
    case K_REFUSE:
        json_object_set_new(o, "mode",
                            json_string(f->mode == REFUSE_LISTENER ? "listener" : "rst"));
        break;
    default:
        break;
    }
    return o;
}

/* Reads an optional non-negative integer field. Returns false (with err set) when it is
 * present and not an integer in [0, max]. */
static bool get_uint(json_t *body, const char *key, uint64_t max, uint64_t *out, char *err,
                     size_t errlen)
{
    json_t *v = json_object_get(body, key);
    if (v == NULL)
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max) {
        snprintf(err, errlen, "'%s' must be an integer from 0 to %" PRIu64, key, max);
        return false;
    }
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static bool parse_kind(json_t *body, struct fault *f, char *err, size_t errlen)
{
    const char *kind = json_string_value(json_object_get(body, "kind"));
    if (kind == NULL) {
        snprintf(err, errlen,
                 "'kind' is required: latency, blackhole, reset, refuse, close, "
                 "bandwidth or stall");
        return false;
    }
    for (int k = 0; k < K_COUNT; k++)
        if (strcmp(kind, KIND_NAME[k]) == 0) {
            f->kind = (enum kind)k;
            return true;
        }
    snprintf(err, errlen, "unknown kind '%.40s'", kind);
    return false;
}

static bool check_keys(json_t *body, const struct fault *f, char *err, size_t errlen)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        bool ok = strcmp(key, "kind") == 0 || strcmp(key, "direction") == 0 ||
                  strcmp(key, "percent") == 0 || strcmp(key, "proxy") == 0;
        for (int i = 0; !ok && KIND_PARAMS[f->kind][i] != NULL; i++)
            ok = strcmp(key, KIND_PARAMS[f->kind][i]) == 0;
        if (!ok) {
            snprintf(err, errlen, "unknown field '%.40s' for kind %s", key, KIND_NAME[f->kind]);
            return false;
        }
    }
    return true;
}

static bool parse_common(const struct app *a, json_t *body, struct fault *f, char *err,
                         size_t errlen)
{
    json_t *dir = json_object_get(body, "direction");
    const char *d = dir == NULL ? "both" : json_string_value(dir);
    if (d != NULL && (strcmp(d, "both") == 0))
        f->dirs = MASK_BOTH;
    else if (d != NULL && (strcmp(d, "upstream") == 0 || strcmp(d, "up") == 0))
        f->dirs = MASK(UP);
    else if (d != NULL && (strcmp(d, "downstream") == 0 || strcmp(d, "down") == 0))
        f->dirs = MASK(DOWN);
    else {
        snprintf(err, errlen, "'direction' must be upstream, downstream or both");
        return false;
    }
    json_t *pct = json_object_get(body, "percent");
    f->percent = pct == NULL ? 100.0 : json_number_value(pct);
    if (pct != NULL && (!json_is_number(pct) || f->percent < 0.0 || f->percent > 100.0)) {
        snprintf(err, errlen, "'percent' must be a number from 0 to 100");
        return false;
    }
    json_t *px = json_object_get(body, "proxy");
    f->proxy = -1;
    if (json_is_integer(px) && json_integer_value(px) >= 0 &&
        json_integer_value(px) < a->nproxies) {
        f->proxy = (int)json_integer_value(px);
    } else if (json_is_string(px)) {
        for (int i = 0; i < a->nproxies; i++)
            if (strcmp(a->proxies[i].name, json_string_value(px)) == 0)
                f->proxy = i;
    }
    if (px != NULL && !json_is_null(px) && f->proxy < 0) {
        snprintf(err, errlen, "'proxy' must be a proxy's index or --name");
        return false;
    }
    return true;
}

static bool parse_params(json_t *body, struct fault *f, char *err, size_t errlen)
{
    switch (f->kind) {
    case K_LATENCY:
        if (json_object_get(body, "ms") == NULL) {
            snprintf(err, errlen, "latency needs 'ms'");
            return false;
        }
        return get_uint(body, "ms", LATENCY_MAX_MS, &f->ms, err, errlen) &&
               get_uint(body, "jitter_ms", LATENCY_MAX_MS, &f->jitter_ms, err, errlen);
    case K_RESET:
    case K_CLOSE:
    case K_STALL:
        return get_uint(body, "after_bytes", UINT32_MAX * 1024ULL, &f->after_bytes, err, errlen);
    case K_BANDWIDTH:
        if (!get_uint(body, "bytes_per_sec", UINT32_MAX, &f->bytes_per_sec, err, errlen))
            return false;
        if (f->bytes_per_sec == 0) {
            snprintf(err, errlen, "bandwidth needs 'bytes_per_sec' of at least 1");
            return false;
        }
        return true;
    case K_REFUSE: {
        json_t *m = json_object_get(body, "mode");
        const char *mode = m == NULL ? "listener" : json_string_value(m);
        if (mode != NULL && strcmp(mode, "listener") == 0) {
            f->mode = REFUSE_LISTENER;
        } else if (mode != NULL && strcmp(mode, "rst") == 0) {
            f->mode = REFUSE_RST;
        } else {
            snprintf(err, errlen, "'mode' must be listener or rst");
            return false;
        }
        if (f->mode == REFUSE_LISTENER && f->percent != 100.0) {
            snprintf(err, errlen, "refuse in listener mode needs percent 100 (use mode rst)");
            return false;
        }
        return true;
    }
    default:
        return true;
    }
}

/* POST /faults. Returns the HTTP status and sets *reply. */
static int fault_add(struct app *a, const char *text, size_t len, json_t **reply)
{
    char err[160] = "";
    json_error_t jerr;
    json_t *body = json_loadb(text, len, 0, &jerr);
    struct fault f = {0};
    int status = 400;
    if (!json_is_object(body)) {
        snprintf(err, sizeof(err), "the body must be a JSON object");
        goto out;
    }
    if (!parse_kind(body, &f, err, sizeof(err)) || !check_keys(body, &f, err, sizeof(err)) ||
        !parse_common(a, body, &f, err, sizeof(err)) || !parse_params(body, &f, err, sizeof(err)))
        goto out;
    if (a->nfaults == FAULTS_MAX) {
        status = 409;
        snprintf(err, sizeof(err), "at most %d faults at a time", FAULTS_MAX);
        goto out;
    }
    f.id = ++a->next_fault_id;
    f.first_serial = a->conn_serial + 1;
    a->faults[a->nfaults] = f;
    fault_activate(a, &a->faults[a->nfaults++]);
    status = 201;
    *reply = json_pack("{s:I}", "id", (json_int_t)f.id);
out:
    json_decref(body);
    if (status != 201)
        *reply = json_pack("{s:s}", "error", err);
    return status;
}

static json_t *faults_json(const struct app *a)
{
    json_t *list = json_array();
    for (int i = 0; i < a->nfaults; i++)
        json_array_append_new(list, fault_json(a, &a->faults[i]));
    return json_pack("{s:o}", "faults", list);
}

static json_t *stats_json(const struct app *a)
{
    json_t *list = json_array();
    uint64_t conns = 0, up = 0, down = 0;
    for (int i = 0; i < a->nproxies; i++) {
        const struct proxy *px = &a->proxies[i];
        conns += px->accepted;
        up += px->bytes[UP];
        down += px->bytes[DOWN];
        json_t *o = json_pack(
            "{s:s, s:i, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "name", px->name,
            "port", px->port, "target", px->target_text, "listening", px->listener != NULL,
            "connections", (json_int_t)px->accepted, "active", (json_int_t)px->active, "refused",
            (json_int_t)px->refused, "resets", (json_int_t)px->resets, "closes",
            (json_int_t)px->closes, "blackholed", (json_int_t)px->blackholed, "connect_failed",
            (json_int_t)px->connect_failed, "over_limit", (json_int_t)px->over_limit);
        json_object_set_new(o, "bytes_upstream", json_integer((json_int_t)px->bytes[UP]));
        json_object_set_new(o, "bytes_downstream", json_integer((json_int_t)px->bytes[DOWN]));
        json_object_set_new(o, "dropped_upstream", json_integer((json_int_t)px->dropped[UP]));
        json_object_set_new(o, "dropped_downstream", json_integer((json_int_t)px->dropped[DOWN]));
        json_array_append_new(list, o);
    }
    return json_pack("{s:I, s:I, s:I, s:I, s:o}", "connections", (json_int_t)conns, "active",
                     (json_int_t)a->conns_active, "bytes_upstream", (json_int_t)up,
                     "bytes_downstream", (json_int_t)down, "proxies", list);
}

/* ---- control API ------------------------------------------------------------------------ */

static const char *reason_of(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 431:
        return "Request Header Fields Too Large";
    default:
        return "Internal Server Error";
    }
}

static void on_ctl_closed(uv_handle_t *h)
{
    struct ctl *k = h->data;
    free(k->out);
    free(k);
}

static void ctl_close(struct ctl *k)
{
    if (uv_is_closing((uv_handle_t *)&k->tcp))
        return;
    struct app *a = k->app;
    if (k->prev != NULL)
        k->prev->next = k->next;
    else
        a->ctls = k->next;
    if (k->next != NULL)
        k->next->prev = k->prev;
    a->nctls--;
    uv_close((uv_handle_t *)&k->tcp, on_ctl_closed);
}

static void on_ctl_write(uv_write_t *req, int status)
{
    (void)status;
    ctl_close(req->data);
}

/* Sends status + body (reference stolen) and closes: one request per connection. */
static void ctl_respond(struct ctl *k, int status, json_t *body)
{
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    k->answered = true;
    uv_read_stop((uv_stream_t *)&k->tcp);
    size_t blen = text != NULL ? strlen(text) : 0;
    size_t cap = blen + 256;
    k->out = malloc(cap);
    if (k->out == NULL) {
        free(text);
        ctl_close(k);
        return;
    }
    int n = snprintf(k->out, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s\n",
                     status, reason_of(status), blen + 1, text != NULL ? text : "");
    free(text);
    uv_buf_t b = uv_buf_init(k->out, (unsigned)n);
    k->wreq.data = k;
    if (uv_write(&k->wreq, (uv_stream_t *)&k->tcp, &b, 1, on_ctl_write) != 0)
        ctl_close(k);
}

static void ctl_error(struct ctl *k, int status, const char *msg)
{
    ctl_respond(k, status, json_pack("{s:s}", "error", msg));
}

static int fault_index(const struct app *a, const char *idtext)
{
    char *end;
    errno = 0;
    unsigned long id = strtoul(idtext, &end, 10);
    if (*idtext == '\0' || *end != '\0' || errno != 0)
        return -1;
    for (int i = 0; i < a->nfaults; i++)
        if (a->faults[i].id == id)
            return i;
    return -1;
}

static void ctl_dispatch(struct ctl *k, const char *method, const char *path, const char *body,
                         size_t blen)
{
    struct app *a = k->app;
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0,
         del = strcmp(method, "DELETE") == 0;
    if (strcmp(path, "/faults") == 0) {
        if (get) {
            ctl_respond(k, 200, faults_json(a));
        } else if (post) {
            json_t *reply = NULL;
            int status = fault_add(a, body, blen, &reply);
            ctl_respond(k, status, reply);
        } else if (del) {
            int n = a->nfaults;
            while (a->nfaults > 0)
                fault_remove(a, a->nfaults - 1);
            ctl_respond(k, 200, json_pack("{s:i}", "deleted", n));
        } else {
            ctl_error(k, 405, "use GET, POST or DELETE");
        }
    } else if (strncmp(path, "/faults/", 8) == 0) {
        int idx = fault_index(a, path + 8);
        if (idx < 0) {
            ctl_error(k, 404, "no such fault");
        } else if (get) {
            ctl_respond(k, 200, fault_json(a, &a->faults[idx]));
        } else if (del) {
            json_int_t id = a->faults[idx].id;
            fault_remove(a, idx);
            ctl_respond(k, 200, json_pack("{s:I}", "deleted", id));
        } else {
            ctl_error(k, 405, "use GET or DELETE");
        }
    } else if (strcmp(path, "/connections") == 0 && del) {
        /* Resets every open connection, so clients reconnect and meet the accept-time
         * faults (a gateway's keep-alive pool would otherwise never see them). */
        json_int_t n = 0;
        for (int i = 0; i < a->nproxies; i++)
            while (a->proxies[i].conns != NULL) {
                conn_abort(a->proxies[i].conns);
                n++;
            }
        ctl_respond(k, 200, json_pack("{s:I}", "reset", n));
    } else if (strcmp(path, "/stats") == 0 && get) {
        ctl_respond(k, 200, stats_json(a));
    } else if ((strcmp(path, "/") == 0 || strcmp(path, "/health") == 0) && get) {
        ctl_respond(k, 200, json_pack("{s:b}", "ok", 1));
    } else {
        ctl_error(k, 404, "not found: try /faults, /faults/ID, /connections or /stats");
    }
}

/* Parses k->in; answers once the head and the Content-Length body are complete. */
static void ctl_process(struct ctl *k)
{
    const char *method, *path;
    size_t mlen, plen, nh = CTL_HEADERS_MAX;
    int minor;
    struct phr_header h[CTL_HEADERS_MAX];
    int r = phr_parse_request(k->in, k->len, &method, &mlen, &path, &plen, &minor, h, &nh, 0);
    if (r == -2) {
        if (k->len == sizeof(k->in))
            ctl_error(k, 431, "request head too large");
        return;
    }
    if (r < 0) {
        ctl_error(k, 400, "malformed request");
        return;
    }
    size_t clen = 0;
    for (size_t i = 0; i < nh; i++)
        if (h[i].name_len == 14 && strncasecmp(h[i].name, "content-length", 14) == 0)
            clen = strtoul(h[i].value, NULL, 10); /* ends at CR: the head is in the buffer */
    if (clen > sizeof(k->in) - (size_t)r) {
        ctl_error(k, 413, "body too large");
        return;
    }
    if (k->len < (size_t)r + clen)
        return;
    char m[16], p[256];
    if (mlen >= sizeof(m) || plen >= sizeof(p)) {
        ctl_error(k, 404, "not found");
        return;
    }
    memcpy(m, method, mlen);
    m[mlen] = '\0';
    memcpy(p, path, plen);
    p[plen] = '\0';
    p[strcspn(p, "?")] = '\0';
    ctl_dispatch(k, m, p, k->in + r, clen);
}

static void on_ctl_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct ctl *k = h->data;
    (void)suggested;
    *buf = uv_buf_init(k->in + k->len, (unsigned)(sizeof(k->in) - k->len));
}

static void on_ctl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct ctl *k = s->data;
    (void)buf;
    if (n == 0 || k->answered)
        return;
    if (n < 0) {
        ctl_close(k);
        return;
    }
    k->len += (size_t)n;
    ctl_process(k);
}

static void on_ctl_accept(uv_stream_t *server, int status)
{
    struct app *a = server->data;
    if (status < 0)
        return;
    struct ctl *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return;
    k->app = a;
    uv_tcp_init(&a->loop, &k->tcp);
    k->tcp.data = k;
    k->next = a->ctls;
    if (k->next != NULL)
        k->next->prev = k;
    a->ctls = k;
    a->nctls++;
    if (uv_accept(server, (uv_stream_t *)&k->tcp) != 0 || a->nctls > CTL_CONNS_MAX) {
        ctl_close(k);
        return;
    }
    uv_read_start((uv_stream_t *)&k->tcp, on_ctl_alloc, on_ctl_read);
}

/* ---- start and stop --------------------------------------------------------------------- */

static void app_stop(struct app *a)
{
    if (a->stopping)
        return;
    a->stopping = true;
    for (int i = 0; i < a->nproxies; i++) {
        struct proxy *px = &a->proxies[i];
        proxy_unlisten(px);
        while (px->conns != NULL)
            conn_close(px->conns);
    }
    if (a->control_init)
        uv_close((uv_handle_t *)&a->control, NULL);
    while (a->ctls != NULL)
        ctl_close(a->ctls);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
}

static void on_signal(uv_signal_t *s, int signum)
{
    log_line("signal %d: stopping", signum);
    app_stop(s->data);
}

/* HOST:PORT, [V6]:PORT, :PORT (all IPv4 interfaces) or PORT (127.0.0.1). Names are resolved
 * once, at start. Returns 0 or -1. */
static int parse_addr(const char *text, struct sockaddr_storage *out)
{
    char host[256];
    const char *port;
    const char *colon = strrchr(text, ':');
    if (colon == NULL) {
        snprintf(host, sizeof(host), "127.0.0.1");
        port = text;
    } else {
        size_t hl = (size_t)(colon - text);
        if (hl >= sizeof(host))
            return -1;
        memcpy(host, text, hl);
        host[hl] = '\0';
        port = colon + 1;
        if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
            memmove(host, host + 1, hl - 2);
            host[hl - 2] = '\0';
        } else if (hl == 0) {
            snprintf(host, sizeof(host), "0.0.0.0");
        }
    }
    char *end;
    long p = strtol(port, &end, 10);
    if (*port == '\0' || *end != '\0' || p < 0 || p > 65535)
        return -1;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return -1;
    memset(out, 0, sizeof(*out));
    memcpy(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bw_faultproxy --target HOST:PORT [--listen HOST:PORT] [--name NAME]\n"
               "                     [--target ... [--listen ...] [--name ...]]...\n"
               "                     [--control HOST:PORT] [--buffer BYTES] [--max-conns N]\n"
               "                     [--connect-timeout MS] [--seed N]\n"
               "Prints PORT <n> per proxy, then CONTROL <n>. See chaos/README.md.\n");
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

/* Each --target starts a proxy; --listen and --name apply to the latest one. Returns 0, or 2
 * for a bad command line. */
static int parse_args(struct app *a, int argc, char **argv)
{
    static const struct option opts[] = {{"target", required_argument, NULL, 't'},
                                         {"listen", required_argument, NULL, 'l'},
                                         {"name", required_argument, NULL, 'n'},
                                         {"control", required_argument, NULL, 'c'},
                                         {"buffer", required_argument, NULL, 'b'},
                                         {"max-conns", required_argument, NULL, 'm'},
                                         {"connect-timeout", required_argument, NULL, 'T'},
                                         {"seed", required_argument, NULL, 's'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *pending_listen = NULL;
    uint64_t v;
    int o;
    while ((o = getopt_long(argc, argv, "t:l:n:c:b:m:T:s:h", opts, NULL)) != -1) {
        struct proxy *cur = a->nproxies > 0 ? &a->proxies[a->nproxies - 1] : NULL;
        switch (o) {
        case 't':
            if (a->nproxies == PROXIES_MAX) {
                fprintf(stderr, "bw_faultproxy: at most %d proxies\n", PROXIES_MAX);
                return 2;
            }
            cur = &a->proxies[a->nproxies];
            cur->index = a->nproxies++;
            cur->app = a;
            cur->target_text = optarg;
            cur->listen_text = pending_listen != NULL ? pending_listen : "127.0.0.1:0";
            cur->listen_explicit = pending_listen != NULL;
            pending_listen = NULL;
            snprintf(cur->name, sizeof(cur->name), "%d", cur->index);
            break;
        case 'l':
            /* A --listen belongs to the latest --target unless that one has one already (or
             * there is none yet): then it waits for the next --target. */
            if (cur != NULL && !cur->listen_explicit && pending_listen == NULL) {
                cur->listen_text = optarg;
                cur->listen_explicit = true;
            } else if (pending_listen == NULL) {
                pending_listen = optarg;
            } else {
                goto bad;
            }
            break;
        case 'n':
            if (cur == NULL || strlen(optarg) == 0 || strlen(optarg) > NAME_MAX_LEN) {
                fprintf(stderr, "bw_faultproxy: --name (1-%d chars) follows its --target\n",
                        NAME_MAX_LEN);
                return 2;
            }
            snprintf(cur->name, sizeof(cur->name), "%s", optarg);
            break;
        case 'c':
            a->control_text = optarg;
            break;
        case 'b':
            if (!parse_u64(optarg, BUFFER_MIN, BUFFER_MAX, &v))
                goto bad;
            a->buffer_max = (size_t)v;
            break;
        case 'm':
            if (!parse_u64(optarg, 1, CONNS_LIMIT, &a->conns_max))
                goto bad;
            break;
        case 'T':
            if (!parse_u64(optarg, 1, 3600000, &a->connect_timeout_ms))
                goto bad;
            break;
        case 's':
            if (!parse_u64(optarg, 0, UINT64_MAX, &a->seed))
                goto bad;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            goto bad;
        }
    }
    if (optind != argc || a->nproxies == 0 || pending_listen != NULL)
        goto bad;
    return 0;
bad:
    usage(stderr);
    return 2;
}

static int app_start(struct app *a)
{
    for (int i = 0; i < a->nproxies; i++) {
        struct proxy *px = &a->proxies[i];
        for (int j = 0; j < i; j++)
            if (strcmp(a->proxies[j].name, px->name) == 0) {
                log_line("duplicate --name %s", px->name);
                return -1;
            }
        if (parse_addr(px->listen_text, &px->listen_addr) != 0 ||
            parse_addr(px->target_text, &px->target_addr) != 0) {
            log_line("bad address in --listen %s / --target %s", px->listen_text, px->target_text);
            return -1;
        }
        int r = proxy_listen(px);
        if (r != 0) {
            log_line("listen %s: %s", px->listen_text, uv_strerror(r));
            return -1;
        }
    }
    if (parse_addr(a->control_text, &a->control_addr) != 0) {
        log_line("bad --control address %s", a->control_text);
        return -1;
    }
    uv_tcp_init(&a->loop, &a->control);
    a->control.data = a;
    a->control_init = true;
    int r = uv_tcp_bind(&a->control, (const struct sockaddr *)&a->control_addr, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&a->control, 64, on_ctl_accept);
    if (r != 0) {
        log_line("control listen %s: %s", a->control_text, uv_strerror(r));
        return -1;
    }
    a->control_port = bound_port(&a->control);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    struct app *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return 1;
    a->control_text = "127.0.0.1:0";
    a->buffer_max = BUFFER_DEFAULT;
    a->conns_max = CONNS_DEFAULT;
    a->connect_timeout_ms = CONNECT_TIMEOUT_DEFAULT_MS;
    a->seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    int rc = parse_args(a, argc, argv);
    if (rc != 0) {
        free(a);
        return rc;
    }
    a->rng = mix64(a->seed);
    uv_loop_init(&a->loop);
    uv_signal_init(&a->loop, &a->sigterm);
    uv_signal_init(&a->loop, &a->sigint);
    a->sigterm.data = a->sigint.data = a;
    if (app_start(a) != 0) {
        rc = 1;
        app_stop(a);
    } else {
        uv_signal_start(&a->sigterm, on_signal, SIGTERM);
        uv_signal_start(&a->sigint, on_signal, SIGINT);
        for (int i = 0; i < a->nproxies; i++)
            printf("PORT %d\n", a->proxies[i].port);
        printf("CONTROL %d\n", a->control_port);
        fflush(stdout);
        log_line("ready: %d prox%s, control port %d, seed %" PRIu64, a->nproxies,
                 a->nproxies == 1 ? "y" : "ies", a->control_port, a->seed);
    }
    uv_run(&a->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&a->loop) != 0) {
        log_line("handles left open at exit");
        rc = 1;
    }
    free(a);
    return rc;
}
