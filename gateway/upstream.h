/*
 * upstream.h - a worker's view of its upstreams: hosts, round robin, keep-alive pools.
 *
 * Each worker process has one gw_upstreams_t on its event loop. For every host it keeps a
 * bounded LIFO list of idle keep-alive connections (LIFO keeps the warmest sockets in use and
 * lets the rest age out). Idle connections are watched for reads: an upstream that closes one
 * (or sends stray bytes) gets it dropped at once, which keeps the "reused a connection the
 * upstream had just closed" race narrow. A sweep timer closes connections idle longer than
 * GW_POOL_IDLE_TIMEOUT_MS.
 *
 * Bounds: at most GW_POOL_MAX_IDLE idle connections per host per worker; active connections are
 * bounded by the upstream's max_concurrent bulkhead (enforced by the proxy before it asks for a
 * connection).
 *
 * A connection is owned either by the pool (idle) or by one exchange (active). The exchange gets
 * it from gw_conn_acquire() and gives it back with gw_conn_release() (reusable) or
 * gw_conn_close(). Memory is freed only in the libuv close callback.
 */
#ifndef GW_UPSTREAM_H
#define GW_UPSTREAM_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "config.h"
#include "stats.h"
#include "upstate.h"

#define GW_POOL_MAX_IDLE 128
#define GW_POOL_IDLE_TIMEOUT_MS 10000

typedef struct gw_conn gw_conn_t;
typedef struct gw_upstreams gw_upstreams_t;
typedef struct gw_upstream gw_upstream_t;

/* How the owner of a connection gets its bytes: one pair per worker, installed once with
 * gw_upstreams_set_reader(). alloc gives the buffer to read into; read gets nread (> 0 bytes,
 * or a negative libuv error / UV_EOF). Called only while the connection has an owner. */
typedef void (*gw_conn_alloc_cb)(gw_conn_t *c, uv_buf_t *buf);
typedef void (*gw_conn_read_cb)(gw_conn_t *c, ssize_t nread);

typedef struct gw_host {
    gw_upstream_t *up;
    const gw_addr_t *addr;
    uint32_t index;
    struct sockaddr_storage sa;
    gw_conn_t *idle_head; /* LIFO of idle connections */
    uint32_t nidle;
} gw_host_t;

struct gw_upstream {
    gw_upstreams_t *all;
    const gw_upstream_config_t *cfg;
    uint32_t index;
    gw_host_t *hosts;
    size_t nhosts;
    uint32_t rr; /* next host for round robin */
    gw_upstream_stats_t *stats;
};

struct gw_upstreams {
    uv_loop_t *loop;
    gw_conn_alloc_cb owner_alloc;
    gw_conn_read_cb owner_read;
    gw_upstream_t *ups;
    size_t n;
    uv_timer_t sweep;
    bool closing;
};

/* Called when a connect finishes: status 0 or a negative libuv error. Not called after
 * gw_conn_close(). */
typedef void (*gw_conn_connect_cb)(gw_conn_t *c, int status);

struct gw_conn {
    uv_tcp_t tcp; /* tcp.data points back to this conn */
    uv_connect_t connect_req;
    gw_host_t *host;
    gw_conn_t *next_idle;
    uint64_t idle_since_ms;
    enum { GW_CONN_CONNECTING = 0, GW_CONN_ACTIVE, GW_CONN_IDLE, GW_CONN_CLOSING } state;
    bool reused; /* it served a request before the current one */
    bool paused; /* reading stopped for backpressure (gw_conn_pause) */
    void *owner; /* the exchange while active */
    gw_conn_connect_cb on_connect;
};

/* Builds the per-worker upstream table for cfg. stats is this worker's slot; may be NULL in
 * tests. Returns 0 or a negative libuv error. */
int gw_upstreams_init(gw_upstreams_t *u, uv_loop_t *loop, const gw_config_t *cfg, gw_stats_t *stats,
                      uint32_t worker);

/* Installs the callbacks through which connection owners receive data. */
void gw_upstreams_set_reader(gw_upstreams_t *u, gw_conn_alloc_cb alloc, gw_conn_read_cb read);

/* Closes every idle connection and the sweep timer. Active connections stay with their
 * exchanges, which close them when they finish. */
void gw_upstreams_close(gw_upstreams_t *u);

/* Picks the next usable host by round robin, skipping hosts that health checks marked down or
 * that are ejected (state: the upstream's shared state, NULL to skip no host). Returns NULL when
 * no host is usable; *all_ejected then says whether ejection (not health) is the reason. */
gw_host_t *gw_upstream_pick(gw_upstream_t *up, const gw_upstate_t *state, uint64_t now_ms,
                            bool *all_ejected);

/*
 * Gets a connection to `host` for `owner`. When an idle one exists it is returned ready
 * (*ready = true, on_connect is not called). Otherwise a connect starts (*ready = false) and
 * on_connect runs when it finishes. Returns 0, or a negative libuv error when even starting the
 * connect failed (then no callback runs).
 */
int gw_conn_acquire(gw_host_t *host, void *owner, gw_conn_connect_cb on_connect, gw_conn_t **out,
                    bool *ready);

/* Like gw_conn_acquire, but always opens a new connection (never a pooled one). */
int gw_conn_connect(gw_host_t *host, void *owner, gw_conn_connect_cb on_connect, gw_conn_t **out);

/* The exchange is done with a connection whose last response was complete and keep-alive: it
 * goes back to the idle pool (or is closed when the pool is full or shutting down). */
void gw_conn_release(gw_conn_t *c);

/* Backpressure: stop reading until gw_conn_resume(). Connections otherwise read all the time
 * (an idle one to notice the upstream closing it), which saves two epoll_ctl calls per request
 * compared with stopping and starting reads as a connection changes hands. */
void gw_conn_pause(gw_conn_t *c);
void gw_conn_resume(gw_conn_t *c);

/* Closes a connection (any state); `abortive` sends RST instead of FIN. */
void gw_conn_close(gw_conn_t *c, bool abortive);

#endif
