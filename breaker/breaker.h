/*
 * breaker.h - the per-upstream circuit breaker: a pure state machine (owner side) and its
 * lock-free published state in shared memory (worker side).
 *
 * Why split in two: the state machine needs every outcome in order and a single writer, but the
 * request path must decide in a few nanoseconds, in any of N worker processes, without locks
 * (a worker may die at any instruction). So:
 *
 *   worker:  br_admit(shared, now) -> ticket ... request ... outcome record --channel-->
 *   owner:   br_breaker_record() / br_breaker_tick() / br_breaker_force()  (the state machine)
 *            br_breaker_publish(shared)   (the only writer of the published state)
 *
 * Workers never change the state. The only thing they write to shared memory is the claim of a
 * half-open trial permit (one CAS). The owner is a single process (the control process) that
 * drains the outcome channel, runs the state machine and publishes. docs/breaker.md has the
 * diagram, the transitions and the lag expectations; breaker/state.c has the invariants.
 *
 * Everything here is pure: no I/O, no clock reads (every `now` is a monotonic time in ms passed
 * by the caller), no allocation, integer maths only (ratios in parts per million).
 *
 * Errors: functions that can fail return 0 (or a non-negative value where stated) on success and
 * a negative BR_E* code on failure; br_strerror() names them.
 */
#ifndef BR_BREAKER_H
#define BR_BREAKER_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* XX(name, value, message) */
#define BR_ERRORS(XX) XX(EINVAL, -EINVAL, "invalid argument")

enum br_error {
    BR_OK = 0,
#define BR_ERROR_ENUM(name, value, msg) BR_##name = (value),
    BR_ERRORS(BR_ERROR_ENUM)
#undef BR_ERROR_ENUM
};

#define BR_PPM_ONE 1000000u              /* a ratio of 100% */
#define BR_MAX_HALF_OPEN_REQUESTS 65535u /* trial permits fit in 16 bits of the published word */
#define BR_NO_DEADLINE UINT64_MAX        /* br_breaker_next_deadline(): no timer needed */
#define BR_WINDOW_BUCKETS 100            /* sliding window resolution: window / 100 */
/* Generations are 44-bit (the published word's top bits): at one transition per ms they would
 * last 557 years, so wrap-around is not handled. */
#define BR_GENERATION_MASK ((1ull << 44) - 1)

typedef enum br_state {
    BR_STATE_CLOSED = 0, /* zero: zero-filled shared memory reads as closed */
    BR_STATE_OPEN,
    BR_STATE_HALF_OPEN,
    BR_STATE_FORCED_OPEN,
    BR_STATE_FORCED_CLOSED,
    BR_STATE_COUNT
} br_state_t;

/* Why a transition happened (for events, logs and breakwater_breaker_transitions_total). */
typedef enum br_reason {
    BR_REASON_CONSECUTIVE_FAILURES = 0, /* closed -> open */
    BR_REASON_FAILURE_RATE,             /* closed -> open */
    BR_REASON_SLOW_CALL_RATE,           /* closed -> open, or half_open -> open (slow trials) */
    BR_REASON_TRIAL_FAILED,             /* half_open -> open */
    BR_REASON_TRIALS_SUCCEEDED,         /* half_open -> closed */
    BR_REASON_PROBE_TIMEOUT,            /* half_open -> open: a trial never reported back */
    BR_REASON_OPEN_ELAPSED,             /* open -> half_open */
    BR_REASON_FORCED,                   /* any -> forced_open / forced_closed (admin) */
    BR_REASON_RESET,                    /* any -> closed (admin), counters cleared */
    BR_REASON_COUNT
} br_reason_t;

typedef enum br_outcome_kind {
    BR_OUTCOME_SUCCESS = 0, /* a response whose status is not a failure status (4xx included) */
    BR_OUTCOME_FAILURE,     /* connect failure, reset, timeout, or a status in failure_statuses */
    BR_OUTCOME_NEUTRAL,     /* the client cancelled: says nothing about the upstream */
    BR_OUTCOME_KIND_COUNT
} br_outcome_kind_t;

typedef enum br_action {
    BR_ACTION_FORCE_OPEN = 0, /* -> forced_open: reject everything until reset/force_close */
    BR_ACTION_FORCE_CLOSE,    /* -> forced_closed: admit everything, never trip */
    BR_ACTION_RESET,          /* -> closed, counters cleared, open duration back to its base */
    BR_ACTION_COUNT
} br_action_t;

typedef enum br_decision {
    BR_ADMIT = 0,
    BR_REJECT,
} br_decision_t;

/* The breaker's configuration: SPEC section 2 `breaker`, durations in ms, ratios in ppm. */
typedef struct br_config {
    uint32_t consecutive_failures;  /* 0 = this trigger disabled */
    uint32_t failure_rate_ppm;      /* 0 = this trigger disabled; trips when rate >= this */
    uint64_t window_ms;             /* >= 1 */
    uint32_t min_calls;             /* both rate triggers wait for this many calls in the window */
    uint64_t slow_call_duration_ms; /* 0 = slow calls not tracked; slow = latency > this */
    uint32_t slow_call_rate_ppm;    /* 0 = this trigger disabled; trips when slow share >= this */
    uint64_t open_duration_ms;      /* >= 1: the first open period */
    uint64_t max_open_duration_ms;  /* >= open_duration_ms: cap for the doubling */
    uint32_t half_open_requests;    /* 1..BR_MAX_HALF_OPEN_REQUESTS trial requests */
    /* Not in the SPEC: how long the owner waits for news of the trials in flight before failing
     * them (a worker died with a trial). 0 = open_duration_ms. It must exceed the longest
     * request timeout of the upstream plus the channel lag, or live trials get failed. */
    uint64_t probe_timeout_ms;
} br_config_t;

/* What br_admit() decided, kept by the request until its outcome is recorded. */
typedef struct br_ticket {
    uint64_t generation;     /* the published generation the decision was made under */
    br_state_t state;        /* the published state the decision was made in */
    bool trial;              /* admitted on a half-open trial permit */
    uint64_t retry_after_ms; /* BR_REJECT: ms left in the open period; 0 when unknown (all
                                trials taken, or forced open): the gateway sends >= 1 s */
} br_ticket_t;

/* One outcome record, as the owner consumes it from the channel. */
typedef struct br_outcome {
    uint64_t generation; /* from the ticket */
    bool trial;          /* from the ticket */
    br_outcome_kind_t kind;
    uint64_t latency_us; /* from admission to the response head (or the failure) */
} br_outcome_t;

/* What br_breaker_record() did with an outcome (non-negative results). */
typedef enum br_record_result {
    BR_RECORD_COUNTED = 0, /* counted (in the window, the consecutive count, or as a trial) */
    BR_RECORD_NEUTRAL,     /* a cancellation, or an outcome the current state does not count */
    BR_RECORD_STALE,       /* admitted under an older generation: ignored */
} br_record_result_t;

typedef struct br_transition {
    br_state_t from, to;
    br_reason_t reason;
    uint64_t generation; /* the generation after the transition */
    uint64_t at_ms;      /* the owner's time of the transition */
    uint64_t open_ms;    /* to == open: the length of this open period; else 0 */
} br_transition_t;

/* At most two transitions happen in one call: open -> half_open -> closed|open when the first
 * trial outcome arrives before the owner's timer noticed the end of the open period. */
#define BR_MAX_TRANSITIONS 2
typedef struct br_transitions {
    unsigned n;
    br_transition_t t[BR_MAX_TRANSITIONS];
} br_transitions_t;

/* The sliding window (fields private; see window.c). */
typedef struct br_window_bucket {
    uint32_t calls, failures, slow;
} br_window_bucket_t;

typedef struct br_window {
    uint64_t width_ms;              /* bucket width */
    uint32_t nbuckets;              /* live buckets: nbuckets * width_ms <= window */
    uint64_t head;                  /* number (now / width_ms) of the newest bucket */
    uint64_t last_now;              /* time never goes backwards below this */
    uint64_t calls, failures, slow; /* sums over the live buckets */
    br_window_bucket_t b[BR_WINDOW_BUCKETS];
} br_window_t;

/* The owner's breaker: plain memory in the owner process (fields private; see state.c). */
typedef struct br_breaker {
    br_config_t cfg;
    br_state_t state;
    uint64_t generation;
    uint64_t last_now;
    uint64_t open_ms;    /* length of the current (open) or next open period */
    uint64_t open_until; /* open / half_open: when the open period ends(ed) */
    uint32_t consecutive;
    br_window_t window;
    /* the trial batch of the current open/half_open generation */
    uint32_t granted;     /* permits published for this generation: n + returned ones */
    uint32_t returns;     /* permits of neutral trials still to be given back at publish */
    uint32_t claimed;     /* claims seen (published permits taken, or outcomes received) */
    uint32_t finished;    /* trial outcomes received, neutral ones included */
    uint32_t ok;          /* successful trials */
    uint32_t slow;        /* slow successful trials */
    uint64_t progress_ms; /* half_open: last news of the trials (claim seen, outcome, entry) */
} br_breaker_t;

/* The published state: place it in memory shared by all processes (MAP_SHARED). Fixed size, no
 * pointers, no locks; fields private (see shared.c). Zero-filled memory is a valid closed state
 * of generation 0. */
typedef struct br_shared {
    uint64_t word;          /* generation | state | slot | permits, changed only by CAS/store */
    uint64_t open_until[2]; /* double buffer, selected by the word's slot bit */
    uint64_t reserved[5];
} __attribute__((aligned(64))) br_shared_t;

/* A consistent read of the published state. */
typedef struct br_snapshot {
    br_state_t state;
    uint64_t generation;
    uint32_t permits;    /* trial permits left (open / half_open) */
    uint64_t open_until; /* open / half_open, else 0 */
} br_snapshot_t;

/* Owner-side statistics for the admin API and metrics. */
typedef struct br_stats {
    br_state_t state;
    uint64_t generation;
    uint32_t consecutive_failures;
    uint64_t window_calls, window_failures, window_slow;
    uint64_t open_until; /* open / half_open, else 0 */
    uint64_t open_ms;    /* length of the current or next open period */
    uint32_t trials_claimed, trials_ok;
} br_stats_t;

/* ---- names and helpers ---- */

/* The message for a BR_E* code; "unknown error" for anything else. */
const char *br_strerror(int err);
/* Stable lower-case names ("half_open", "consecutive_failures"); NULL when out of range. */
const char *br_state_name(br_state_t state);
const char *br_reason_name(br_reason_t reason);

/* Checks a configuration: 0, or BR_EINVAL when a ratio exceeds BR_PPM_ONE, window_ms or
 * open_duration_ms is 0, max_open_duration_ms < open_duration_ms, or half_open_requests is not
 * in 1..BR_MAX_HALF_OPEN_REQUESTS. */
int br_config_validate(const br_config_t *cfg);

/* Classifies a response head: BR_OUTCOME_FAILURE when `status` is in failure_statuses (n
 * entries, any order; may be NULL when n is 0) and is not a 4xx, else BR_OUTCOME_SUCCESS. 4xx
 * is always a success (SPEC 3): the client's mistake says nothing about the upstream's health.
 * Connect failures, resets and timeouts are BR_OUTCOME_FAILURE and cancellations
 * BR_OUTCOME_NEUTRAL without asking this function. */
br_outcome_kind_t br_classify_status(uint16_t status, const uint16_t *failure_statuses, size_t n);

/* ---- owner side (one owner per breaker; not thread-safe: one thread calls these) ---- */

/* Initialises `b` closed, generation 0 (which matches zero-filled shared memory), with empty
 * counters. Returns 0, or BR_EINVAL when br_config_validate() rejects cfg (b is then untouched). */
int br_breaker_init(br_breaker_t *b, const br_config_t *cfg, uint64_t now);

/* For an owner that restarts while shared memory survived: continues from the published state
 * so workers see no jump back. Call after br_breaker_init(). The generation becomes the
 * published one + 1 (outcomes in flight from before are stale); closed and forced states are
 * kept; open keeps its open_until; half_open becomes open with open_until = now (a new trial
 * batch at once; the doubling history is lost: the next re-open waits 2 * open_duration).
 * No transition is reported. Returns 0. */
int br_breaker_adopt(br_breaker_t *b, const br_shared_t *s, uint64_t now);

/* Records one outcome drained from the channel. Outcomes of an older generation are ignored
 * (BR_RECORD_STALE); cancellations and outcomes the state does not count are
 * BR_RECORD_NEUTRAL (a neutral trial gives its permit back); else BR_RECORD_COUNTED. A trial
 * outcome while the owner still thinks open means the open period ended (the worker saw it):
 * the owner moves to half_open first. Transitions made are written to `tr` (may be NULL; tr->n
 * is reset first). Returns a br_record_result_t, or BR_EINVAL for a bad outcome kind. */
int br_breaker_record(br_breaker_t *b, const br_outcome_t *o, uint64_t now, br_transitions_t *tr);

/* Time-driven transitions: open -> half_open once now >= open_until; half_open -> open when
 * trials are outstanding and nothing was heard of them for probe_timeout_ms. Call at (or after)
 * br_breaker_next_deadline(), and after draining the channel. Returns 0. */
int br_breaker_tick(br_breaker_t *b, uint64_t now, br_transitions_t *tr);

/* Admin action (see br_action_t). force_open in forced_open and force_close in forced_closed
 * change nothing; reset always starts a new closed generation. Returns 0, or BR_EINVAL for an
 * unknown action. */
int br_breaker_force(br_breaker_t *b, br_action_t action, uint64_t now, br_transitions_t *tr);

/* When the owner must call br_breaker_tick() next (ms), or BR_NO_DEADLINE. In half_open this is
 * finite even with no trial outstanding: the owner learns of claims only by looking, at publish. */
uint64_t br_breaker_next_deadline(const br_breaker_t *b);

br_state_t br_breaker_state(const br_breaker_t *b);

/* Fills `out` (the window advanced to now). */
void br_breaker_stats(br_breaker_t *b, uint64_t now, br_stats_t *out);

/* Publishes the owner's state to `s` (shared memory), and reads back the trial permits workers
 * claimed (time `now` is when the owner saw them). Lock-free: a CAS loop that retries only when
 * a worker claimed a permit meanwhile. Call after every batch of record/tick/force calls.
 * Returns 1 when the published word changed, 0 when it was already current. */
int br_breaker_publish(br_breaker_t *b, br_shared_t *s, uint64_t now);

/* ---- worker side (any thread of any process; lock-free, never blocks) ---- */

/* Zero-fills `s`: closed, generation 0. Only before any process uses it. */
void br_shared_init(br_shared_t *s);

/* Decides one request. Closed / forced_closed: BR_ADMIT. Open before open_until: BR_REJECT with
 * retry_after_ms = open_until - now. Open after open_until, or half_open: BR_ADMIT with
 * t->trial set if a permit could be claimed (exactly the published number across all
 * processes), else BR_REJECT with retry_after_ms 0. Forced_open: BR_REJECT, 0. `t` is always
 * filled; keep generation and trial for the outcome record. */
br_decision_t br_admit(br_shared_t *s, uint64_t now, br_ticket_t *t);

/* A consistent (never torn) read of the published state. */
void br_shared_read(const br_shared_t *s, br_snapshot_t *out);

#endif
