/*
 * health.h - active health checks: the prober that marks upstream hosts up and down.
 *
 * Runs in the control process, on its libuv loop, never in workers. For every host of every
 * upstream whose config has `health_check:`, it sends `GET <path>` every `interval` and counts
 * consecutive results: `healthy_threshold` passes in a row mark a host up, `unhealthy_threshold`
 * failures in a row mark it down. The verdict is written into the shared per-upstream state
 * (upstate.h: hosts[h].down, passes, fails, probed), which workers read lock-free when they pick
 * a host, so the request path never waits for a probe. A passing probe on a healthy host also
 * ends an outlier ejection (ejected_until_ms = 0). docs/health.md has the design.
 *
 * Why a scheduler and not a timer per host: with GW_UPSTATE_MAX upstreams of GW_MAX_HOSTS hosts
 * there may be 16k hosts, and 16k simultaneous connects would exhaust file descriptors and look
 * like an attack. At most GW_HEALTH_MAX_INFLIGHT probes (sockets) exist at once over all
 * upstreams; due probes wait in a bounded FIFO, and a probe that falls due while that FIFO is full
 * is skipped (counted) - it neither passes nor fails the host.
 *
 * Restarts: the counters and verdicts live in shared memory keyed by upstream name, so a
 * restarted control process (or the next one after a reload that kept the upstream) resumes from
 * the current values; nothing is reset at start.
 *
 * Errors: negative GW_HEALTH_E* codes (-errno values); gw_health_strerror() names them.
 *
 * Who calls: the control process (control.c) creates one prober per control process and feeds
 * its transitions to the owner (owner.h); the admin API / metrics read gw_health_stats(). The
 * pure parts at the end are exposed for the unit tests. Everything runs on the loop passed to
 * gw_health_new(); nothing here is thread-safe.
 */
#ifndef GW_HEALTH_H
#define GW_HEALTH_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "runtime.h"
#include "upstate.h"

/* XX(name, value, message) */
#define GW_HEALTH_ERRORS(XX)                                                                       \
    XX(EINVAL, -EINVAL, "invalid argument")                                                        \
    XX(ENOMEM, -ENOMEM, "out of memory")                                                           \
    XX(EALREADY, -EALREADY, "already closing")

enum gw_health_error {
    GW_HEALTH_OK = 0,
#define GW_HEALTH_ERROR_ENUM(name, value, msg) GW_HEALTH_##name = (value),
    GW_HEALTH_ERRORS(GW_HEALTH_ERROR_ENUM)
#undef GW_HEALTH_ERROR_ENUM
};

const char *gw_health_strerror(int err);

#define GW_HEALTH_MAX_INFLIGHT 64 /* probes (sockets) open at once, over all upstreams */
#define GW_HEALTH_QUEUE_MAX 1024  /* due probes waiting for a free probe slot */
#define GW_HEALTH_HEAD_MAX 4096   /* a response head longer than this fails the probe */

typedef struct gw_health gw_health_t;

/* A host changed state: up = marked healthy (down -> up), !up = marked unhealthy (up -> down).
 * `upstream` indexes rt->cfg->upstreams, `host` that upstream's hosts. Called on the loop, after
 * the shared state has been written. Not called for a host that stays "unknown". */
typedef void (*gw_health_cb)(void *ctx, size_t upstream, size_t host, bool up);

/* Whether this process may probe and write results now (see gw_health_set_gate). */
typedef bool (*gw_health_gate_cb)(void *ctx);

typedef void (*gw_health_close_cb)(gw_health_t *h);

typedef struct gw_health_stats {
    uint64_t ok;           /* probes that passed (2xx, 3xx) */
    uint64_t failed;       /* probes that failed (any other status, connect/read error, timeout) */
    uint64_t skipped;      /* probes not run: the queue was full, or a local error (EMFILE...) */
    uint64_t transitions;  /* up/down transitions reported through on_change */
    uint64_t unejected;    /* ejections ended by a passing probe */
    uint32_t targets;      /* hosts being probed */
    uint32_t inflight;     /* probes (sockets) open now */
    uint32_t inflight_max; /* most probes open at once since start */
    uint32_t queued;       /* due probes waiting for a slot now */
} gw_health_stats_t;

/*
 * Starts probing every host of every upstream of rt->cfg that has health_check enabled; the first
 * round is staggered over one interval so hosts are not all probed at the same instant. Upstreams
 * without health checks get any `down` left in shared memory by an earlier config cleared (with
 * on_change(up)) once the gate is open, since nothing would ever clear it otherwise.
 * `on_change` may be NULL. Returns NULL with errno set (ENOMEM, EINVAL) on failure; nothing is
 * left running then.
 */
gw_health_t *gw_health_new(uv_loop_t *loop, const gw_runtime_t *rt, gw_health_cb on_change,
                           void *ctx);

/*
 * Optional gate: while gate(ctx) returns false no probe is started and no result is written
 * (probes already running are finished but their results dropped). Meant for reloads, when the
 * old and the new control process run side by side and only the one that owns the upstream
 * state should write it (pass the owner's "active" test). Without a gate the prober always runs.
 */
void gw_health_set_gate(gw_health_t *h, gw_health_gate_cb gate, void *ctx);

/*
 * Stops probing: open sockets are closed (a probe cut short writes no result). Memory is freed
 * after every handle's close callback; then done(h) is called (done may be NULL). Returns 0, or
 * GW_HEALTH_EALREADY when h is already closing (done is then never called for this call).
 */
int gw_health_close(gw_health_t *h, gw_health_close_cb done);

/* Copies the probe counters into *out. */
void gw_health_stats(const gw_health_t *h, gw_health_stats_t *out);

/* ---- pure parts, exposed for tests ----------------------------------------------------------- */

/* What gw_health_record() changed (a bit set). */
enum {
    GW_HEALTH_WENT_UP = 1 << 0,   /* down -> up: healthy_threshold passes in a row */
    GW_HEALTH_WENT_DOWN = 1 << 1, /* up or unknown -> down: unhealthy_threshold failures */
    GW_HEALTH_UNEJECTED = 1 << 2, /* a pass on a healthy host ended an outlier ejection */
};

/*
 * Applies one probe result to a host's shared state at monotonic time now_ms:
 *   pass: passes += 1, fails = 0; once passes >= healthy_threshold the host is healthy:
 *         down 1 -> 0 (WENT_UP), and an ejection still running (ejected_until_ms > now) ends.
 *   fail: fails += 1, passes = 0; once fails >= unhealthy_threshold: down 0 -> 1 (WENT_DOWN).
 * A host starts "unknown" (probed 0, down 0): usable until proven down, so unknown -> down needs
 * unhealthy_threshold failures and unknown -> healthy reports no transition. Counters saturate.
 * `down` and `ejected_until_ms` are written with atomic stores (workers read them lock-free).
 * Thresholds of 0 are read as 1. Returns the GW_HEALTH_* bits of what changed (0: nothing).
 */
unsigned gw_health_record(gw_host_state_t *hs, const gw_health_check_config_t *hc, bool pass,
                          uint64_t now_ms);

/* True when a probe response status passes (2xx and 3xx). */
bool gw_health_status_passes(int status);

/*
 * The probe scheduler: when each host is due, the bounded FIFO of due hosts, and the count of
 * probes running. No I/O and no clock reads: every `now_ms` is passed in.
 *
 * A target (a host) is in exactly one state: WAITING (in the due-time heap), QUEUED (in the FIFO)
 * or RUNNING (a probe is open; it counts in `running`). So a host never has two probes at once,
 * and running <= max_running always.
 *
 * Rescheduling: a target that ran is next due at due + interval, or now when that has already
 * passed (it waited in the FIFO longer than an interval: probe it again as soon as possible, but
 * never twice at once). A target that was skipped or deferred is next due at due + interval, or
 * now + interval when that has passed, so a saturated scheduler sheds load instead of spinning.
 */
typedef enum gw_health_tstate {
    GW_HEALTH_T_WAITING = 0,
    GW_HEALTH_T_QUEUED,
    GW_HEALTH_T_RUNNING,
} gw_health_tstate_t;

typedef struct gw_health_target {
    uint64_t due_ms;
    uint64_t interval_ms;
    gw_health_tstate_t state;
} gw_health_target_t;

typedef struct gw_health_sched {
    gw_health_target_t *targets;
    uint32_t ntargets;
    uint32_t *heap; /* WAITING targets, min-heap on due_ms */
    uint32_t nheap;
    uint32_t *queue; /* QUEUED targets, FIFO ring */
    uint32_t qcap, qhead, qlen;
    uint32_t running, max_running;
    uint64_t skipped; /* due while the FIFO was full */
} gw_health_sched_t;

/* Allocates room for `ntargets` targets (each then set with gw_health_sched_add), a FIFO of
 * `qcap` and at most `max_running` running. Returns 0, GW_HEALTH_EINVAL (qcap or max_running 0),
 * or GW_HEALTH_ENOMEM. */
int gw_health_sched_init(gw_health_sched_t *s, uint32_t ntargets, uint32_t qcap,
                         uint32_t max_running);
void gw_health_sched_dispose(gw_health_sched_t *s);

/* Sets target i (< ntargets, added once) to be first due at first_due_ms, then every
 * interval_ms (>= 1). */
void gw_health_sched_add(gw_health_sched_t *s, uint32_t i, uint64_t first_due_ms,
                         uint64_t interval_ms);

/* Moves every target due at now_ms into the FIFO; when the FIFO is full the target is skipped
 * (counted) and rescheduled. With admit false, due targets are rescheduled without being queued
 * or counted (the gate is closed). Returns how many were queued. */
uint32_t gw_health_sched_collect(gw_health_sched_t *s, uint64_t now_ms, bool admit);

/* Takes the next queued target to run, if fewer than max_running run: returns its index (now
 * RUNNING), or -1. */
int64_t gw_health_sched_start(gw_health_sched_t *s);

/* A RUNNING target finished (ran, or could not start): reschedules it. `ran` false counts it as
 * skipped and reschedules it like one. */
void gw_health_sched_finish(gw_health_sched_t *s, uint32_t i, uint64_t now_ms, bool ran);

/* Earliest due time of a WAITING target, or UINT64_MAX when none waits. */
uint64_t gw_health_sched_next_due(const gw_health_sched_t *s);

/* When the first round of target k of n (0 <= k < n) is due, starting at now_ms: spread evenly
 * over one interval. */
uint64_t gw_health_stagger(uint64_t now_ms, uint64_t interval_ms, uint32_t k, uint32_t n);

#endif
