/*
 * bucket.h - the rate limiter's token bucket as GCRA (generic cell rate algorithm): pure integer
 * maths over one 64-bit word of state per key, the TAT ("theoretical arrival time").
 *
 * Why GCRA: a token bucket of capacity `burst` refilled at `tokens` per `period_ms` is exactly
 * described by one timestamp, the time at which the bucket would be full again if nothing else
 * happened. A request at time n is admitted when max(TAT, n) + T - n <= tau, and then
 * TAT = max(TAT, n) + T, where T is the emission interval (time per token) and tau = burst * T
 * (the capacity in time units). So the state is 8 bytes, and one CAS applies a decision
 * atomically across processes.
 *
 * Units (docs/ratelimit.md has the derivations and the proofs of the rounding claims):
 *   - Callers pass `now_ns`, monotonic nanoseconds (CLOCK_MONOTONIC; a wall-clock jump changes
 *     nothing). It is floored to microseconds: 1 us is the limiter's time resolution.
 *   - Internally time is counted in ticks of 1/S us, where S (params.scale) is chosen so the
 *     emission interval T = period_us * S / tokens is an exact integer: with g =
 *     gcd(tokens, period_us), S = tokens / g and T = period_us / g. 7/s: S = 7, T = 1000000
 *     ticks, so 7 tokens cost exactly one second and nothing drifts, ever.
 *   - When tokens / g > BR_GCRA_SCALE_MAX (rates like 1031/s), S = BR_GCRA_SCALE_MAX and T is
 *     rounded UP (params.exact = 0): the limiter is then slower than configured by less than
 *     1/T = tokens / (period_us * 1024) (0.0001% at 1031/s, 0.01% at 99991/s), and never
 *     faster. A rate whose rounded T would be below 100 ticks (over ~10 million per second,
 *     and not exact) is refused, so the error is always < 1%.
 *   - Limits: now_ns is clamped at BR_GCRA_MAX_NOW_US microseconds (~142 years of uptime);
 *     the full-burst refill time burst * period / tokens must be at most BR_GCRA_MAX_TAU_US
 *     (~50 days). With those, every tick value is below 2^63 (BR_GCRA_TAT_LIMIT) and no
 *     computation overflows; bit 63 of a stored TAT is free for the key table's use.
 *
 * Rounding of what callers see (all derived from ticks exactly, never early):
 *   - remaining: tokens a request at the same `now` could still take (floor).
 *   - retry_after_ns: the exact wait until the next request is admitted (0 if one would be now):
 *     a request at now + retry_after_ns - 1 is denied, one at now + retry_after_ns admitted.
 *     retry_after_ms and retry_after_s are its ceilings; retry_after_s >= 1 when denied (the
 *     Retry-After header).
 *   - reset_ns: the wait until the bucket is full again (RateLimit t= is reset_s, its ceiling).
 *
 * Time going backwards (a `now` older than one already used, e.g. two workers reading the clock
 * a few microseconds apart): the decision is evaluated at the `now` given, and that is as safe
 * as "no time passing". After any request at time m the TAT is >= m (admitted: max(TAT, m) + T;
 * denied: TAT > m + tau - T), so a later request read at x < m starts from the same TAT as one at
 * m would, needs TAT + T - x <= tau (stricter), and adds the same T if admitted. Cumulatively a
 * stream of readings admits no more than the same stream with every reading replaced by the
 * running maximum (docs/ratelimit.md proves it); the TAT never moves backwards. The info is
 * relative to the caller's own `now`, so it is never early on the caller's clock.
 *
 * Who may call: anyone; everything is pure except br_gcra_admit(), which is lock-free and safe
 * from any thread of any process on a TAT word in shared memory. No allocation, no I/O.
 * Errors: -EINVAL (the value of BR_EINVAL in breaker.h).
 */
#ifndef BR_BUCKET_H
#define BR_BUCKET_H

#include <stdbool.h>
#include <stdint.h>

#define BR_GCRA_SCALE_MAX 1024u           /* largest ticks-per-microsecond scale S */
#define BR_GCRA_MAX_NOW_US (1ull << 52)   /* now is clamped here: ~142.7 years */
#define BR_GCRA_MAX_TAU_US (1ull << 42)   /* longest full-burst refill time: ~50.9 days */
#define BR_GCRA_MIN_INEXACT_INTERVAL 100u /* a rounded T is >= this: error < 1 / T < 1% */
#define BR_GCRA_TAT_LIMIT (1ull << 63)    /* every TAT and tick value is below this */

/* A rate limit, resolved once (br_gcra_params_init). Plain integers, no pointers: may be copied
 * into shared memory. Fields are read-only after init. */
typedef struct br_gcra_params {
    uint64_t tokens; /* as configured: `tokens` per `period_ms` */
    uint64_t period_ms;
    uint64_t scale;    /* S: ticks per microsecond, 1..BR_GCRA_SCALE_MAX */
    uint64_t interval; /* T: ticks per token (the emission interval) */
    uint64_t tau;      /* burst * T: the bucket's capacity in ticks */
    uint32_t burst;    /* capacity in tokens, >= 1 */
    uint32_t exact;    /* 1: T is exact; 0: T was rounded up (slower by < 1 / T) */
} br_gcra_params_t;

/* The outcome of one decision, for the 429 and the RateLimit header fields. */
typedef struct br_gcra_info {
    bool admitted;
    uint32_t limit;          /* = burst: RateLimit-Policy q= */
    uint32_t remaining;      /* tokens left after this decision (floor): RateLimit r= */
    uint32_t reset_s;        /* ceil(reset_ns / 1 s): RateLimit t= */
    uint32_t retry_after_s;  /* ceil(retry_after_ns / 1 s); >= 1 when denied: Retry-After */
    uint64_t reset_ns;       /* until the bucket is full again */
    uint64_t retry_after_ns; /* until the next request would be admitted; 0 if it would be now */
    uint64_t retry_after_ms; /* ceil(retry_after_ns / 1 ms) */
} br_gcra_info_t;

/* Resolves `tokens` per `period_ms` with capacity `burst`. Returns 0, or -EINVAL (p untouched)
 * when tokens, period_ms or burst is 0, the rate is inexact and too fast to hold 1% accuracy
 * (rounded T < BR_GCRA_MIN_INEXACT_INTERVAL), or burst * period / tokens exceeds
 * BR_GCRA_MAX_TAU_US microseconds. */
int br_gcra_params_init(br_gcra_params_t *p, uint64_t tokens, uint64_t period_ms, uint32_t burst);

/* True when a and b describe the same limit (TATs made under one are valid under the other). */
bool br_gcra_params_equal(const br_gcra_params_t *a, const br_gcra_params_t *b);

/* RateLimit-Policy w=: the time to refill a whole burst, in seconds, rounded up, at least 1. */
uint32_t br_gcra_window_s(const br_gcra_params_t *p);

/* `now_ns` in ticks: floor(now_ns / 1000) (clamped at BR_GCRA_MAX_NOW_US) * scale. */
uint64_t br_gcra_now_ticks(const br_gcra_params_t *p, uint64_t now_ns);

/* Decides one request (one token) against state `tat` at `now_ns`. Pure. Returns true when
 * admitted; *new_tat is then the state to store, else it is `tat` unchanged. A `tat` of 0 is a
 * fresh (full) bucket. `tat` must be < BR_GCRA_TAT_LIMIT. `info` may be NULL. */
bool br_gcra_decide(const br_gcra_params_t *p, uint64_t tat, uint64_t now_ns, uint64_t *new_tat,
                    br_gcra_info_t *info);

/* br_gcra_decide() applied to a shared TAT word with a CAS loop: lock-free, linearizable, safe
 * from any thread of any process (the word may live in MAP_SHARED memory; 0 = full bucket). A
 * CAS fails only because another caller's decision was applied meanwhile; the decision is then
 * remade on the new state. A denial writes nothing. `info` may be NULL. */
bool br_gcra_admit(const br_gcra_params_t *p, uint64_t *tat, uint64_t now_ns, br_gcra_info_t *info);

#endif
