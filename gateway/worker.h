/*
 * worker.h - one worker process: an h2o front end on a libuv loop that proxies requests.
 *
 * A worker inherits the listening sockets from the supervisor, accepts on them (every worker
 * accepts on the same sockets, so connections queued in the kernel survive a worker's death),
 * and serves requests through the proxy handler. It writes only its own slot of the shared stats.
 *
 * Stop: SIGTERM/SIGINT stop accepting, ask h2o to close idle keep-alive connections, and let
 * in-flight requests finish for up to shutdown_timeout; then the worker exits 0.
 */
#ifndef GW_WORKER_H
#define GW_WORKER_H

#include <h2o.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "bufpool.h"
#include "config.h"
#include "crash.h"
#include "events.h"
#include "log.h"
#include "runtime.h"
#include "outcome.h"
#include "router.h"
#include "stats.h"
#include "upstream.h"

/* How often a worker's loop bumps its heartbeat (the supervisor's watchdog reads it). */
#define GW_HEARTBEAT_MS 100

typedef struct gw_worker {
    uint32_t index;
    const gw_runtime_t *rt;
    const gw_config_t *cfg;
    gw_events_t *events;
    gw_crash_context_t crash_ctx; /* what the loop is handling now, for the crash record */
    uint64_t rng;                 /* xorshift state for fault percentages */
    uv_loop_t *loop;
    gw_stats_t *stats;
    gw_worker_stats_t *wstats;
    gw_router_t router;
    gw_upstreams_t upstreams;
    gw_bufpool_t bufs;
    h2o_globalconf_t h2o_config;
    h2o_context_t h2o_ctx;
    h2o_accept_ctx_t accept_ctx;
    uv_tcp_t *listeners;
    size_t nlisteners;
    uv_signal_t sig_term, sig_int;
    uv_timer_t heartbeat, stop_timer;
    uint64_t reqid_prefix, reqid_seq;
    uint64_t inflight; /* proxied requests not yet disposed */
    uint64_t stop_deadline_ms;
    uint64_t open_conns; /* client connections accepted and not yet closed */
    gw_log_limit_t ratelimit_errors;
    bool stopping;
} gw_worker_t;

/* Runs a worker until it is told to stop. `listen_fds` are the supervisor's listening sockets.
 * Returns the process exit status. */
int gw_worker_main(const gw_runtime_t *rt, uint32_t index, const int *listen_fds, size_t nfds);

/* Emits an event from this worker (fields: a JSON object text, or NULL). */
void gw_worker_event(gw_worker_t *w, const char *kind, const char *fields_json);

/* The proxy handler (proxy.c): installs itself on `pathconf` for worker `w`. */
void gw_proxy_register(gw_worker_t *w, h2o_pathconf_t *pathconf);

#endif
