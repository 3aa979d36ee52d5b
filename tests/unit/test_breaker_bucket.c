/*
 * test_breaker_bucket.c - GCRA maths (breaker/bucket.c) with an injected clock: burst and steady
 * rate, exact long-run counts (no drift), Retry-After never early, the RateLimit values, time
 * going backwards, the limits, and threads sharing one TAT word.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bucket.h"

#define US 1000ull
#define MS 1000000ull
#define SEC 1000000000ull
#define MINUTE (60 * SEC)
#define HOUR (3600 * SEC)

static br_gcra_params_t params(uint64_t tokens, uint64_t period_ms, uint32_t burst)
{
    br_gcra_params_t p;
    assert_int_equal(br_gcra_params_init(&p, tokens, period_ms, burst), 0);
    return p;
}

/* Sequential admit on a plain word (the decision the CAS version applies). */
static bool take(const br_gcra_params_t *p, uint64_t *tat, uint64_t now, br_gcra_info_t *info)
{
    uint64_t next;
    bool ok = br_gcra_decide(p, *tat, now, &next, info);
    assert_true(ok ? next > *tat : next == *tat); /* the TAT only ever moves forward */
    *tat = next;
    return ok;
}

/* Admits as many as it can at `now`. */
static uint64_t drain(const br_gcra_params_t *p, uint64_t *tat, uint64_t now)
{
    uint64_t n = 0;
    while (take(p, tat, now, NULL))
        n++;
    return n;
}

/* A tiny deterministic PRNG (xorshift64*), so failures reproduce. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static void assert_info_equal(const br_gcra_info_t *a, const br_gcra_info_t *b)
{
    assert_int_equal(a->admitted, b->admitted);
    assert_int_equal(a->limit, b->limit);
    assert_int_equal(a->remaining, b->remaining);
    assert_int_equal(a->reset_s, b->reset_s);
    assert_int_equal(a->retry_after_s, b->retry_after_s);
    assert_int_equal(a->reset_ns, b->reset_ns);
    assert_int_equal(a->retry_after_ns, b->retry_after_ns);
    assert_int_equal(a->retry_after_ms, b->retry_after_ms);
}

static void params_reject_bad_arguments_and_resolve_exact_units(void **state)
{
    (void)state;
    br_gcra_params_t p, q;

    assert_int_equal(br_gcra_params_init(&p, 0, 1000, 1), -EINVAL);
    assert_int_equal(br_gcra_params_init(&p, 1, 0, 1), -EINVAL);
    assert_int_equal(br_gcra_params_init(&p, 1, 1000, 0), -EINVAL);
    assert_int_equal(br_gcra_params_init(&p, 1, UINT64_MAX / 10, 1), -EINVAL);

    p = params(7, 1000, 1); /* 7/s: ticks of 1/7 us, T = 1 s exactly per 7 tokens */
    assert_int_equal(p.scale, 7);
    assert_int_equal(p.interval, 1000000);
    assert_int_equal(p.exact, 1);
    p = params(100, 1000, 50);
    assert_int_equal(p.scale, 1);
    assert_int_equal(p.interval, 10000);
    assert_int_equal(p.tau, 500000);
    q = params(6000, 60000, 50); /* 6000/m is 100/s: the same limit */
    assert_true(br_gcra_params_equal(&p, &q));
    q = params(100, 1000, 51);
    assert_false(br_gcra_params_equal(&p, &q));
    p = params(1, 3600000, 1);
    assert_int_equal(p.interval, 3600000000ull);
    p = params(1000000000, 1000, 1000); /* 1e9/s: exact (S = 1000, T = 1) */
    assert_int_equal(p.exact, 1);
    assert_int_equal(p.interval, 1);

    /* 1031/s cannot be exact within S <= 1024: T rounded up (slower, never faster) */
    p = params(1031, 1000, 5);
    assert_int_equal(p.exact, 0);
    assert_int_equal(p.scale, BR_GCRA_SCALE_MAX);
    assert_int_equal(p.interval, 993211); /* ceil(1e6 * 1024 / 1031) = ceil(993210.47) */
    /* an inexact rate so fast that T < 100 ticks would be off by more than 1%: refused */
    assert_int_equal(br_gcra_params_init(&p, 19999999, 1000, 1), -EINVAL);

    /* the full-burst refill time is bounded by BR_GCRA_MAX_TAU_US (~50.9 days) */
    p = params(1, 3600000, 1200); /* 1200 h = 50 days */
    assert_int_equal(br_gcra_params_init(&p, 1, 3600000, 1300), -EINVAL);
    assert_int_equal(br_gcra_params_init(&p, 1, 3600000, UINT32_MAX), -EINVAL);
}

static void window_is_full_burst_refill_time_rounded_up(void **state)
{
    (void)state;
    br_gcra_params_t p = params(100, 1000, 50);
    assert_int_equal(br_gcra_window_s(&p), 1); /* 0.5 s -> 1 */
    p = params(7, 1000, 7);
    assert_int_equal(br_gcra_window_s(&p), 1);
    p = params(7, 1000, 8);
    assert_int_equal(br_gcra_window_s(&p), 2); /* 8/7 s */
    p = params(1, 3600000, 2);
    assert_int_equal(br_gcra_window_s(&p), 7200);
    p = params(6000, 60000, 12000);
    assert_int_equal(br_gcra_window_s(&p), 120);
}

static void burst_then_steady_rate(void **state)
{
    (void)state;
    br_gcra_params_t p = params(100, 1000, 50);
    uint64_t tat = 0, t0 = 1000 * SEC + 123; /* not on a microsecond boundary */
    br_gcra_info_t info;

    assert_int_equal(drain(&p, &tat, t0), 50);
    assert_false(take(&p, &tat, t0, &info));
    /* t0 is 123 ns past a microsecond: the token comes at t0's microsecond + 10 ms */
    assert_int_equal(info.retry_after_ns, 10 * MS - 123);

    /* then exactly one every 10 ms, at t0 + 10 ms * i (rounded down to the microsecond) */
    uint64_t admitted = 0;
    for (uint64_t t = t0 + 1 * MS; t <= t0 + SEC; t += MS) {
        uint64_t n = drain(&p, &tat, t);
        assert_int_equal(n, (t - t0) % (10 * MS) == 0 ? 1 : 0);
        admitted += n;
    }
    assert_int_equal(admitted, 100);
}

/* Hammers from time t0 to t0 + duration inclusive in steps of `step`, taking everything each
 * step; returns the number admitted. */
static uint64_t hammer(const br_gcra_params_t *p, uint64_t t0, uint64_t duration, uint64_t step)
{
    uint64_t tat = 0, admitted = 0;
    for (uint64_t t = t0; t <= t0 + duration; t += step)
        admitted += drain(p, &tat, t);
    return admitted;
}

static void exact_admit_count_over_long_run_no_drift(void **state)
{
    (void)state;
    br_gcra_params_t p;
    uint64_t t0 = 5 * SEC + 777; /* arbitrary, sub-microsecond offset */

    p = params(7, 1000, 3);
    assert_int_equal(hammer(&p, t0, HOUR, MS), 7 * 3600 + 3);
    p = params(100, 1000, 50);
    assert_int_equal(hammer(&p, t0, HOUR, MS), 100 * 3600 + 50);
    p = params(6000, 60000, 10);
    assert_int_equal(hammer(&p, t0, HOUR, MS), 6000 * 60 + 10);
    p = params(1, 3600000, 1);
    assert_int_equal(hammer(&p, t0, 48 * HOUR, SEC), 48 + 1);
    p = params(3, 7000, 2); /* 3 per 7 s: S = 3 */
    assert_int_equal(hammer(&p, t0, HOUR, MS), 3 * 3600 / 7 + 2);
    p = params(999983, 1000, 100); /* a prime above BR_GCRA_SCALE_MAX: T rounded up */
    assert_int_equal(p.exact, 0);
    /* rounded T: never above the ideal count, and below it by less than ideal / T (steps far
     * shorter than burst / rate, so the bucket never overflows between them) */
    uint64_t ideal = 999983ull * 10 + 100, got = hammer(&p, t0, 10 * SEC, 10 * US);
    assert_true(got <= ideal);
    assert_true(got >= ideal - ideal / p.interval - 1);
    p = params(1031, 1000, 5);
    ideal = 1031ull * 600 + 5;
    got = hammer(&p, t0, 10 * MINUTE, MS);
    assert_true(got <= ideal && got >= ideal - 1);
}

/* After a denial at `now`, a request at now + retry_after - 1 ns is denied and one at
 * now + retry_after admitted; the seconds and milliseconds are never below the nanoseconds. */
static void check_retry_exact(const br_gcra_params_t *p, uint64_t tat, uint64_t now)
{
    br_gcra_info_t info;
    uint64_t next;

    assert_false(br_gcra_decide(p, tat, now, &next, &info));
    uint64_t r = info.retry_after_ns;
    assert_true(r > 0);
    assert_false(br_gcra_decide(p, tat, now + r - 1, &next, NULL));
    assert_true(br_gcra_decide(p, tat, now + r, &next, NULL));
    assert_true(info.retry_after_s >= 1);
    assert_true((uint64_t)info.retry_after_s * SEC >= r);
    assert_true((uint64_t)info.retry_after_s * SEC < r + SEC);
    assert_true(info.retry_after_ms * MS >= r && info.retry_after_ms * MS < r + MS);
    assert_int_equal(info.remaining, 0);
}

static void retry_after_is_never_early(void **state)
{
    (void)state;
    const uint64_t rates[][3] = {{7, 1000, 3},    {100, 1000, 50},    {1, 3600000, 1},
                                 {1031, 1000, 5}, {6000, 60000, 1},   {1000000000, 1000, 1000},
                                 {3, 7000, 2},    {999983, 1000, 100}};

    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        br_gcra_params_t p = params(rates[i][0], rates[i][1], (uint32_t)rates[i][2]);
        uint64_t tat = 0, now = rnd() % (1000 * HOUR);
        for (int round = 0; round < 2000; round++) {
            now += rnd() % (p.interval / p.scale * US * 2 + 1); /* up to two tokens' worth */
            drain(&p, &tat, now);
            check_retry_exact(&p, tat, now);
            /* and from a random later moment that is still denied */
            uint64_t later = now + rnd() % (p.interval / p.scale * US + 1);
            uint64_t next;
            if (!br_gcra_decide(&p, tat, later, &next, NULL))
                check_retry_exact(&p, tat, later);
        }
    }
}

static void remaining_and_reset_values(void **state)
{
    (void)state;
    br_gcra_params_t p = params(10, 1000, 5); /* T = 100 ms, capacity 500 ms */
    br_gcra_info_t info;
    uint64_t tat = 0, t0 = 50 * SEC;

    assert_true(take(&p, &tat, t0, &info));
    assert_int_equal(info.limit, 5);
    assert_int_equal(info.remaining, 4);
    assert_int_equal(info.reset_ns, 100 * MS);
    assert_int_equal(info.reset_s, 1);
    assert_int_equal(info.retry_after_ns, 0); /* another would be admitted now */
    assert_int_equal(info.retry_after_s, 0);
    for (int i = 0; i < 3; i++)
        assert_true(take(&p, &tat, t0, &info));
    assert_int_equal(info.remaining, 1);
    assert_true(take(&p, &tat, t0, &info));
    assert_int_equal(info.remaining, 0);
    assert_int_equal(info.reset_ns, 500 * MS);
    assert_int_equal(info.retry_after_ns, 100 * MS); /* admitted, but the next must wait */

    assert_false(take(&p, &tat, t0 + 1, &info));
    assert_false(info.admitted);
    assert_int_equal(info.remaining, 0);
    assert_int_equal(info.reset_ns, 500 * MS - 1);
    assert_int_equal(info.retry_after_ns, 100 * MS - 1);
    assert_int_equal(info.retry_after_ms, 100);
    assert_int_equal(info.retry_after_s, 1);

    /* 250 ms later 2.5 tokens are back: take one, 1.5 left -> remaining 1 */
    assert_true(take(&p, &tat, t0 + 250 * MS, &info));
    assert_int_equal(info.remaining, 1);
    assert_int_equal(info.reset_ns, 350 * MS); /* TAT = t0 + 600 ms */
    assert_int_equal(info.retry_after_ns, 0);

    /* after a long idle the bucket is full: a fresh TAT of 0 and an old one look the same */
    br_gcra_info_t a, b;
    uint64_t next;
    assert_true(br_gcra_decide(&p, tat, t0 + HOUR, &next, &a));
    assert_true(br_gcra_decide(&p, 0, t0 + HOUR, &next, &b));
    assert_info_equal(&a, &b);
    assert_int_equal(a.remaining, 4);

    /* 1/h, burst 1: the one token comes back in an hour */
    p = params(1, 3600000, 1);
    tat = 0;
    assert_true(take(&p, &tat, t0, &info));
    assert_int_equal(info.remaining, 0);
    assert_int_equal(info.reset_s, 3600);
    assert_int_equal(info.retry_after_s, 3600);
    assert_false(take(&p, &tat, t0 + HOUR - 1, &info));
    assert_int_equal(info.retry_after_ns, 1);
    assert_int_equal(info.retry_after_s, 1); /* Retry-After is never 0 */
    assert_true(take(&p, &tat, t0 + HOUR, &info));
}

static void time_going_backwards_is_safe(void **state)
{
    (void)state;
    br_gcra_params_t p = params(100, 1000, 5);
    uint64_t tat = 0, t = 10 * SEC, next;

    assert_int_equal(drain(&p, &tat, t), 5);
    uint64_t drained = tat;
    /* a clock read a little earlier (another worker, jitter) is still denied, state unchanged */
    for (uint64_t back = 1; back <= 5 * SEC; back *= 3) {
        br_gcra_info_t info;
        assert_false(br_gcra_decide(&p, tat, t - back, &next, &info));
        assert_int_equal(next, drained);
        assert_true(info.retry_after_ns > 10 * MS - 1000); /* never earlier on its own clock */
    }
    /* the token that comes at t + 10 ms is not handed out early by a backwards reading */
    assert_false(take(&p, &tat, t + 10 * MS - 1 * US, NULL));
    assert_true(take(&p, &tat, t + 10 * MS, NULL));
    assert_false(take(&p, &tat, t + 5 * MS, NULL));

    /* Random backwards jitter of up to 3 ms on a clock that moves forward. Against the same
     * readings clamped to their running maximum ("no time passing"), the jittered stream never
     * has more admitted, at any point; and the total never exceeds burst + (latest reading -
     * first reading) / T, the bound of a clean clock. */
    for (int run = 0; run < 200; run++) {
        uint64_t tj = 0, tm = 0, base = 100 * SEC, first = 0, maxseen = 0, aj = 0, am = 0;
        for (int i = 0; i < 5000; i++) {
            base += rnd() % (2 * MS);
            uint64_t reading = base - rnd() % (3 * MS);
            if (i == 0)
                first = reading;
            if (reading > maxseen)
                maxseen = reading;
            aj += take(&p, &tj, reading, NULL);
            am += take(&p, &tm, maxseen, NULL);
            assert_true(aj <= am);
            assert_true(aj <= 5 + (br_gcra_now_ticks(&p, maxseen) - br_gcra_now_ticks(&p, first)) /
                                      p.interval);
        }
    }
}

static void admit_cas_matches_decide_and_handles_extremes(void **state)
{
    (void)state;
    br_gcra_params_t p = params(7, 1000, 2);
    uint64_t word = 0, tat = 0;
    br_gcra_info_t a, b;

    for (uint64_t t = 0; t < 3 * SEC; t += 37 * MS) {
        bool x = br_gcra_admit(&p, &word, t, &a);
        bool y = take(&p, &tat, t, &b);
        assert_int_equal(x, y);
        assert_int_equal(word, tat);
        assert_info_equal(&a, &b);
    }
    /* now beyond ~142 years is clamped, not wrapped (UBSan checks the arithmetic) */
    word = 0;
    assert_true(br_gcra_admit(&p, &word, UINT64_MAX, &a));
    assert_true(word < BR_GCRA_TAT_LIMIT);
    assert_true(br_gcra_admit(&p, &word, UINT64_MAX, &a));
    assert_false(br_gcra_admit(&p, &word, UINT64_MAX, &a));
    assert_true(a.retry_after_ns > 0);
    /* the slowest allowed bucket at the end of time stays below the limit */
    p = params(1, 3600000, 1200);
    word = 0;
    while (br_gcra_admit(&p, &word, UINT64_MAX - 1, NULL))
        ;
    assert_true(word < BR_GCRA_TAT_LIMIT);
}

/* ---- threads sharing one TAT word (also built with -fsanitize=thread) ---- */

#define THREADS 4
#define STEPS 3000
#define TRIES_PER_STEP 3

typedef struct hammer_ctx {
    pthread_barrier_t barrier;
    br_gcra_params_t p;
    uint64_t tat;
    uint64_t admitted[THREADS];
} hammer_ctx_t;

typedef struct hammer_arg {
    hammer_ctx_t *ctx;
    int id;
} hammer_arg_t;

static void *hammer_thread(void *arg)
{
    hammer_arg_t *a = arg;
    for (uint64_t s = 0; s < STEPS; s++) {
        pthread_barrier_wait(&a->ctx->barrier); /* everyone at the same simulated time */
        for (int i = 0; i < TRIES_PER_STEP; i++)
            a->ctx->admitted[a->id] += br_gcra_admit(&a->ctx->p, &a->ctx->tat, s * MS, NULL);
    }
    return NULL;
}

static void threads_share_one_word_exactly(void **state)
{
    (void)state;
    hammer_ctx_t ctx;
    hammer_arg_t args[THREADS];
    pthread_t th[THREADS];
    uint64_t ref_tat = 0, expect = 0, total = 0;

    memset(&ctx, 0, sizeof ctx);
    ctx.p = params(2000, 1000, 20); /* 2 per ms; demand is 12 per ms */
    for (uint64_t s = 0; s < STEPS; s++)
        for (int i = 0; i < THREADS * TRIES_PER_STEP; i++)
            expect += take(&ctx.p, &ref_tat, s * MS, NULL);
    assert_int_equal(pthread_barrier_init(&ctx.barrier, NULL, THREADS), 0);
    for (int i = 0; i < THREADS; i++) {
        args[i] = (hammer_arg_t){&ctx, i};
        assert_int_equal(pthread_create(&th[i], NULL, hammer_thread, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        total += ctx.admitted[i];
    }
    pthread_barrier_destroy(&ctx.barrier);
    assert_int_equal(total, expect);
    assert_int_equal(ctx.tat, ref_tat);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(params_reject_bad_arguments_and_resolve_exact_units),
        cmocka_unit_test(window_is_full_burst_refill_time_rounded_up),
        cmocka_unit_test(burst_then_steady_rate),
        cmocka_unit_test(exact_admit_count_over_long_run_no_drift),
        cmocka_unit_test(retry_after_is_never_early),
        cmocka_unit_test(remaining_and_reset_values),
        cmocka_unit_test(time_going_backwards_is_safe),
        cmocka_unit_test(admit_cas_matches_decide_and_handles_extremes),
        cmocka_unit_test(threads_share_one_word_exactly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
