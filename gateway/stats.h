/*
 * stats.h - counters and gauges in shared memory, one slot per worker.
 *
 * The supervisor maps the region before forking, so every process sees it. Each worker writes
 * only its own slot (no atomic read-modify-write, no contention: GW_STAT_ADD is a relaxed load
 * plus a relaxed store), and the control process reads all slots to render /metrics and the
 * admin API. A replacement worker takes over its predecessor's slot: counters carry on (so they
 * never go backwards, as Prometheus requires) and the supervisor zeroes the gauges.
 *
 * Bounded by construction: the layout is fixed by the route and upstream counts at creation.
 * Status codes per route are kept in a small open-addressed table of GW_STATS_CODES entries;
 * codes beyond that are counted under code 0 ("other").
 */
#ifndef GW_STATS_H
#define GW_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "outcome.h"

#define GW_STATS_CODES 24
#define GW_STATS_LATENCY_BUCKETS 14

/* Upper bounds of the latency histogram buckets, in microseconds (the last is +Inf). */
extern const uint64_t gw_stats_latency_bounds_us[GW_STATS_LATENCY_BUCKETS];

#define GW_STAT_ADD(field, n)                                                                      \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define GW_STAT_SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)
#define GW_STAT_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

typedef struct gw_code_count {
    uint64_t code; /* 0 = free slot, or "other" in the last slot */
    uint64_t count;
} gw_code_count_t;

typedef struct gw_route_stats {
    gw_code_count_t codes[GW_STATS_CODES];
    uint64_t latency_buckets[GW_STATS_LATENCY_BUCKETS]; /* not cumulative */
    uint64_t latency_sum_us;
    uint64_t latency_count;
    uint64_t rl_admitted, rl_rejected; /* rate limit decisions */
} gw_route_stats_t;

typedef struct gw_upstream_stats {
    uint64_t requests;          /* admitted to the upstream */
    uint64_t conn_opened;       /* TCP connections established */
    uint64_t conn_reused;       /* requests sent on a pooled connection */
    uint64_t conn_failed;       /* connect attempts that failed or timed out */
    uint64_t bulkhead_rejected; /* refused by max_concurrent */
    uint64_t breaker_rejected;  /* refused by an open breaker (circuit_open) */
    uint64_t retries;           /* re-sent after a pooled connection turned out stale */
    uint64_t outcomes[GW_OUTCOME_KIND_COUNT];
    /* gauges: zeroed by the supervisor when the worker is replaced */
    int64_t inflight; /* requests admitted and not finished: the bulkhead counts these */
    int64_t conn_active;
    int64_t conn_idle;
} gw_upstream_stats_t;

#define GW_CRASH_FRAMES 32

/* Written by a worker's fatal-signal handler (async-signal-safe stores only), read by the
 * supervisor after it reaped the worker. `signal` is non-zero once a record was written. */
typedef struct gw_crash_record {
    int64_t signal;
    int64_t pid;
    uint64_t fault_addr;
    int64_t route; /* route index, -1 when no request was being handled */
    char request_id[136];
    uint64_t nframes;
    uint64_t frames[GW_CRASH_FRAMES]; /* raw return addresses: the supervisor symbolizes them */
} gw_crash_record_t;

typedef struct gw_worker_stats {
    int64_t pid;           /* 0 = no process in this slot */
    int64_t ready;         /* 1 once the worker accepts connections */
    uint64_t started_ms;   /* monotonic */
    uint64_t heartbeat_ms; /* monotonic, bumped by the worker's loop */
    uint64_t bufpool_hits, bufpool_misses;
    uint64_t requests_total;
    int64_t requests_inflight;
    uint64_t handler_faults;
    gw_crash_record_t crash;
} gw_worker_stats_t;

typedef struct gw_stats gw_stats_t;

/* Maps a new shared region for `nworkers` workers, cfg->nroutes routes (+1 slot for requests that
 * matched no route) and cfg->nupstreams upstreams. Returns NULL (errno set) on failure. */
gw_stats_t *gw_stats_new(const gw_config_t *cfg, uint32_t nworkers);
void gw_stats_free(gw_stats_t *st);

uint32_t gw_stats_nworkers(const gw_stats_t *st);
gw_worker_stats_t *gw_stats_worker(gw_stats_t *st, uint32_t worker);
/* route == cfg->nroutes is the "no route" slot. */
gw_route_stats_t *gw_stats_route(gw_stats_t *st, uint32_t worker, uint32_t route);
gw_upstream_stats_t *gw_stats_upstream(gw_stats_t *st, uint32_t worker, uint32_t upstream);

/* Called by the owning worker only. */
void gw_stats_count_response(gw_route_stats_t *rs, int status, uint64_t latency_us);

/* Zeroes the gauges of a worker slot whose process is gone (supervisor). */
void gw_stats_reset_gauges(gw_stats_t *st, uint32_t worker);

/* Why the supervisor replaced a worker (breakwater_worker_restarts_total{reason}). */
typedef enum gw_restart_reason {
    GW_RESTART_CRASH = 0, /* killed by a signal it did not ask for */
    GW_RESTART_STALL,     /* killed by the watchdog */
    GW_RESTART_EXIT,      /* exited on its own while it should have kept running */
    GW_RESTART_REASON_COUNT
} gw_restart_reason_t;

const char *gw_restart_reason_name(gw_restart_reason_t r);

/*
 * State owned by the supervisor that outlives any one config (a reload maps a new gw_stats_t for
 * the new route and upstream layout, but not a new gw_shared_t). Written by the supervisor only,
 * except `reload_requested`, which the control process sets.
 */
typedef struct gw_shared {
    uint64_t restarts[GW_RESTART_REASON_COUNT];
    int64_t crash_loop;  /* 1 while respawns are being delayed */
    uint64_t reload_seq; /* bumped after each reload attempt, when its result is in place */
    int64_t reload_ok;   /* result of the latest attempt */
    char reload_message[2048];
    uint64_t config_generation; /* 1 at start, +1 per applied reload */
    uint8_t ack_secret[32];     /* signs /ack/ links (alerts/acklink.h); read from the database */
    int64_t ack_secret_set;
} gw_shared_t;

gw_shared_t *gw_shared_new(void);
void gw_shared_free(gw_shared_t *sh);

#endif
