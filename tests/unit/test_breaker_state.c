/*
 * test_breaker_state.c - the circuit breaker's state machine, driven exactly with an injected
 * clock. Requests go through the real worker path (br_admit on a br_shared_t the owner
 * publishes to), so tickets, generations and trial permits are the ones production uses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "breaker.h"

/* SPEC defaults: 5 consecutive, 50% over 10 s once 20 calls, slow > 2 s at 100%, open 5 s
 * doubling up to 2 min, 2 trials. */
static br_config_t defaults(void)
{
    return (br_config_t){
        .consecutive_failures = 5,
        .failure_rate_ppm = 500000,
        .window_ms = 10000,
        .min_calls = 20,
        .slow_call_duration_ms = 2000,
        .slow_call_rate_ppm = BR_PPM_ONE,
        .open_duration_ms = 5000,
        .max_open_duration_ms = 120000,
        .half_open_requests = 2,
        .probe_timeout_ms = 0,
    };
}

typedef struct fx {
    br_breaker_t b;
    br_shared_t s;
    br_transitions_t tr;
} fx_t;

static void fx_init(fx_t *f, const br_config_t *c, uint64_t now)
{
    memset(f, 0, sizeof *f);
    br_shared_init(&f->s);
    assert_int_equal(br_breaker_init(&f->b, c, now), 0);
    br_breaker_publish(&f->b, &f->s, now);
}

static br_outcome_t outcome_of(const br_ticket_t *t, br_outcome_kind_t kind, uint64_t latency_ms)
{
    return (br_outcome_t){t->generation, t->trial, kind, latency_ms * 1000};
}

/* The owner records one outcome and publishes, as after draining the channel. */
static int finish(fx_t *f, const br_ticket_t *t, br_outcome_kind_t kind, uint64_t latency_ms,
                  uint64_t now)
{
    br_outcome_t o = outcome_of(t, kind, latency_ms);
    int r = br_breaker_record(&f->b, &o, now, &f->tr);
    br_breaker_publish(&f->b, &f->s, now);
    return r;
}

static br_ticket_t admitted(fx_t *f, uint64_t now)
{
    br_ticket_t t;
    assert_int_equal(br_admit(&f->s, now, &t), BR_ADMIT);
    return t;
}

/* One request from admission to recorded outcome, all at `now`. */
static int call(fx_t *f, uint64_t now, br_outcome_kind_t kind, uint64_t latency_ms)
{
    br_ticket_t t = admitted(f, now);
    return finish(f, &t, kind, latency_ms, now);
}

static void calls(fx_t *f, int n, uint64_t now, br_outcome_kind_t kind, uint64_t latency_ms)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(call(f, now, kind, latency_ms), BR_RECORD_COUNTED);
}

static void tick(fx_t *f, uint64_t now)
{
    assert_int_equal(br_breaker_tick(&f->b, now, &f->tr), 0);
    br_breaker_publish(&f->b, &f->s, now);
}

static void expect_transition(const fx_t *f, unsigned i, br_state_t from, br_state_t to,
                              br_reason_t reason)
{
    assert_true(f->tr.n > i);
    assert_int_equal(f->tr.t[i].from, from);
    assert_int_equal(f->tr.t[i].to, to);
    assert_int_equal(f->tr.t[i].reason, reason);
}

static br_state_t st_of(const fx_t *f)
{
    return br_breaker_state(&f->b);
}

static br_stats_t stats(fx_t *f, uint64_t now)
{
    br_stats_t st;
    br_breaker_stats(&f->b, now, &st);
    return st;
}

static void expect_rejected(fx_t *f, uint64_t now, uint64_t retry_after_ms)
{
    br_ticket_t t;
    assert_int_equal(br_admit(&f->s, now, &t), BR_REJECT);
    assert_int_equal(t.retry_after_ms, retry_after_ms);
}

/* Trips a default-config breaker by consecutive failures at `now`. */
static void trip(fx_t *f, uint64_t now)
{
    int n = (int)f->b.cfg.consecutive_failures;
    calls(f, n, now, BR_OUTCOME_FAILURE, 1);
    assert_int_equal(st_of(f), BR_STATE_OPEN);
}

/* From open: to half_open at open_until, then n successful trials: closed. */
static void recover(fx_t *f)
{
    uint64_t at = br_breaker_next_deadline(&f->b);
    tick(f, at);
    assert_int_equal(st_of(f), BR_STATE_HALF_OPEN);
    for (uint32_t i = 0; i < f->b.cfg.half_open_requests; i++) {
        br_ticket_t t = admitted(f, at);
        assert_true(t.trial);
        assert_int_equal(finish(f, &t, BR_OUTCOME_SUCCESS, 1, at), BR_RECORD_COUNTED);
    }
    assert_int_equal(st_of(f), BR_STATE_CLOSED);
}

/* From open: to half_open at open_until, first trial fails: open again. Returns its open_ms. */
static uint64_t reopen(fx_t *f)
{
    uint64_t at = br_breaker_next_deadline(&f->b);
    tick(f, at);
    br_ticket_t t = admitted(f, at);
    assert_true(t.trial);
    finish(f, &t, BR_OUTCOME_FAILURE, 1, at);
    expect_transition(f, 0, BR_STATE_HALF_OPEN, BR_STATE_OPEN, BR_REASON_TRIAL_FAILED);
    uint64_t ms = f->tr.t[0].open_ms;
    assert_int_equal(br_breaker_next_deadline(&f->b), at > UINT64_MAX - ms ? UINT64_MAX : at + ms);
    return ms;
}

/* ---- closed: the triggers ---- */

static void opens_after_consecutive_failures(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    fx_init(&f, &c, 1000);
    calls(&f, 4, 1000, BR_OUTCOME_FAILURE, 1);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    assert_int_equal(f.tr.n, 0);
    assert_int_equal(call(&f, 1200, BR_OUTCOME_FAILURE, 1), BR_RECORD_COUNTED);
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
    assert_int_equal(f.tr.n, 1);
    expect_transition(&f, 0, BR_STATE_CLOSED, BR_STATE_OPEN, BR_REASON_CONSECUTIVE_FAILURES);
    assert_int_equal(f.tr.t[0].at_ms, 1200);
    assert_int_equal(f.tr.t[0].open_ms, 5000);
    assert_int_equal(f.tr.t[0].generation, 1);
    assert_int_equal(br_breaker_next_deadline(&f.b), 6200);
    expect_rejected(&f, 1200, 5000);
}

static void success_resets_consecutive_count(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    fx_init(&f, &c, 0);
    calls(&f, 4, 0, BR_OUTCOME_FAILURE, 1);
    calls(&f, 1, 0, BR_OUTCOME_SUCCESS, 1);
    assert_int_equal(stats(&f, 0).consecutive_failures, 0);
    calls(&f, 4, 0, BR_OUTCOME_FAILURE, 1);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    assert_int_equal(stats(&f, 0).consecutive_failures, 4);
    calls(&f, 1, 0, BR_OUTCOME_FAILURE, 1);
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
}

static void failure_rate_trips_only_after_min_calls(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.consecutive_failures = 0; /* disabled: only the rate can trip */
    fx_init(&f, &c, 0);
    calls(&f, 19, 0, BR_OUTCOME_FAILURE, 1); /* 100% failures, but 19 < min_calls */
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    /* the 20th call, even a success, brings the window to min_calls: 19/20 >= 50% */
    assert_int_equal(call(&f, 0, BR_OUTCOME_SUCCESS, 1), BR_RECORD_COUNTED);
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
    expect_transition(&f, 0, BR_STATE_CLOSED, BR_STATE_OPEN, BR_REASON_FAILURE_RATE);
}

static void failure_rate_threshold_is_inclusive(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.consecutive_failures = 0;
    fx_init(&f, &c, 0);
    calls(&f, 9, 0, BR_OUTCOME_FAILURE, 1);
    calls(&f, 11, 0, BR_OUTCOME_SUCCESS, 1); /* 9/20 = 45% */
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);

    fx_init(&f, &c, 0);
    calls(&f, 10, 0, BR_OUTCOME_FAILURE, 1);
    calls(&f, 9, 0, BR_OUTCOME_SUCCESS, 1);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    calls(&f, 1, 0, BR_OUTCOME_SUCCESS, 1); /* 10/20 = exactly 50% */
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
    expect_transition(&f, 0, BR_STATE_CLOSED, BR_STATE_OPEN, BR_REASON_FAILURE_RATE);
}

static void failure_rate_counts_only_the_window(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.consecutive_failures = 0;
    c.min_calls = 4;
    /* 3 failures at t=0 live in bucket 0 of 100 ms: they count until t=10000 exactly */
    fx_init(&f, &c, 0);
    calls(&f, 3, 0, BR_OUTCOME_FAILURE, 1);
    calls(&f, 1, 9999, BR_OUTCOME_SUCCESS, 1); /* 3/4 */
    assert_int_equal(st_of(&f), BR_STATE_OPEN);

    fx_init(&f, &c, 0);
    calls(&f, 3, 0, BR_OUTCOME_FAILURE, 1);
    calls(&f, 1, 10000, BR_OUTCOME_SUCCESS, 1); /* the failures expired: 0/1 */
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    assert_int_equal(stats(&f, 10000).window_calls, 1);
    assert_int_equal(stats(&f, 10000).window_failures, 0);
    calls(&f, 2, 10000, BR_OUTCOME_FAILURE, 1);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED); /* 2/3 but only 3 calls */
    calls(&f, 1, 10000, BR_OUTCOME_SUCCESS, 1);   /* 2/4 = 50% */
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
}

static void slow_call_rate_100_percent_trips_only_when_all_slow(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.consecutive_failures = 0;
    c.failure_rate_ppm = 0;
    c.min_calls = 4;
    fx_init(&f, &c, 0);
    calls(&f, 3, 0, BR_OUTCOME_SUCCESS, 2001); /* slow: latency > 2000 ms */
    calls(&f, 1, 0, BR_OUTCOME_SUCCESS, 2000); /* exactly the limit: not slow */
    assert_int_equal(stats(&f, 0).window_slow, 3);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    calls(&f, 10, 5000, BR_OUTCOME_SUCCESS, 3000); /* 13/14 slow */
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    /* at 10000 the t=0 calls (with the fast one) expire: 10 slow remain, the next makes 11/11 */
    assert_int_equal(call(&f, 10000, BR_OUTCOME_SUCCESS, 2500), BR_RECORD_COUNTED);
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
    expect_transition(&f, 0, BR_STATE_CLOSED, BR_STATE_OPEN, BR_REASON_SLOW_CALL_RATE);
}

static void slow_call_rate_below_100_percent_is_inclusive(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.consecutive_failures = 0;
    c.failure_rate_ppm = 0;
    c.min_calls = 4;
    c.slow_call_rate_ppm = 750000;
    fx_init(&f, &c, 0);
    calls(&f, 1, 0, BR_OUTCOME_SUCCESS, 10);
    calls(&f, 2, 0, BR_OUTCOME_FAILURE, 2500); /* failures count as slow too */
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    calls(&f, 1, 0, BR_OUTCOME_SUCCESS, 2500); /* 3/4 = 75% */
    expect_transition(&f, 0, BR_STATE_CLOSED, BR_STATE_OPEN, BR_REASON_SLOW_CALL_RATE);
}

static void zero_disables_each_trigger(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.consecutive_failures = 0;
    c.failure_rate_ppm = 0;
    c.slow_call_duration_ms = 0; /* slow calls not even tracked */
    fx_init(&f, &c, 0);
    calls(&f, 1000, 0, BR_OUTCOME_FAILURE, 60000);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    assert_int_equal(stats(&f, 0).window_failures, 1000);
    assert_int_equal(stats(&f, 0).window_slow, 0);

    c = defaults();
    c.consecutive_failures = 0;
    c.failure_rate_ppm = 0;
    c.slow_call_rate_ppm = 0; /* tracked (for stats) but never trips */
    fx_init(&f, &c, 0);
    calls(&f, 100, 0, BR_OUTCOME_SUCCESS, 60000);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    assert_int_equal(stats(&f, 0).window_slow, 100);
}

static void four_xx_is_success(void **state)
{
    (void)state;
    static const uint16_t statuses[] = {500, 502, 503, 504};
    static const uint16_t with_4xx[] = {429, 500};
    fx_t f;
    br_config_t c = defaults();

    assert_int_equal(br_classify_status(404, statuses, 4), BR_OUTCOME_SUCCESS);
    assert_int_equal(br_classify_status(400, statuses, 4), BR_OUTCOME_SUCCESS);
    assert_int_equal(br_classify_status(499, statuses, 4), BR_OUTCOME_SUCCESS);
    assert_int_equal(br_classify_status(429, with_4xx, 2), BR_OUTCOME_SUCCESS);
    assert_int_equal(br_classify_status(200, statuses, 4), BR_OUTCOME_SUCCESS);
    assert_int_equal(br_classify_status(503, statuses, 4), BR_OUTCOME_FAILURE);
    assert_int_equal(br_classify_status(501, statuses, 4), BR_OUTCOME_SUCCESS);
    assert_int_equal(br_classify_status(500, NULL, 0), BR_OUTCOME_SUCCESS);

    /* a 4xx between failures resets the consecutive count like any success */
    fx_init(&f, &c, 0);
    calls(&f, 4, 0, br_classify_status(503, statuses, 4), 1);
    calls(&f, 1, 0, br_classify_status(404, statuses, 4), 1);
    calls(&f, 4, 0, br_classify_status(502, statuses, 4), 1);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    calls(&f, 100, 0, br_classify_status(404, statuses, 4), 1);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    assert_int_equal(stats(&f, 0).window_failures, 8);
}

/* ---- open and half-open ---- */

static void open_rejects_with_ms_left(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();
    br_ticket_t t;

    fx_init(&f, &c, 1000);
    trip(&f, 1000); /* open until 6000 */
    expect_rejected(&f, 1000, 5000);
    expect_rejected(&f, 4500, 1500);
    assert_int_equal(br_admit(&f.s, 5999, &t), BR_REJECT);
    assert_int_equal(t.retry_after_ms, 1);
    assert_int_equal(t.state, BR_STATE_OPEN);
    assert_false(t.trial);
}

static void open_elapsed_moves_to_half_open(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();
    br_snapshot_t snap;

    fx_init(&f, &c, 1000);
    trip(&f, 1000);
    assert_int_equal(br_breaker_next_deadline(&f.b), 6000);
    tick(&f, 5999);
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
    assert_int_equal(f.tr.n, 0);
    tick(&f, 6000);
    assert_int_equal(st_of(&f), BR_STATE_HALF_OPEN);
    assert_int_equal(f.tr.n, 1);
    expect_transition(&f, 0, BR_STATE_OPEN, BR_STATE_HALF_OPEN, BR_REASON_OPEN_ELAPSED);
    /* the trial batch was published with open: same generation */
    assert_int_equal(f.tr.t[0].generation, 1);
    br_shared_read(&f.s, &snap);
    assert_int_equal(snap.state, BR_STATE_HALF_OPEN);
    assert_int_equal(snap.generation, 1);
    assert_int_equal(snap.permits, 2);
    assert_int_equal(snap.open_until, 6000);
}

static void half_open_admits_exactly_n_trials(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();
    br_ticket_t t;

    c.half_open_requests = 3;
    fx_init(&f, &c, 0);
    trip(&f, 0);
    /* workers see the period over before the owner does: they claim on the open state */
    for (int i = 0; i < 2; i++) {
        t = admitted(&f, 5000);
        assert_true(t.trial);
        assert_int_equal(t.state, BR_STATE_OPEN);
    }
    tick(&f, 5001); /* the owner notices; the claims are kept */
    t = admitted(&f, 5001);
    assert_true(t.trial);
    assert_int_equal(t.state, BR_STATE_HALF_OPEN);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(br_admit(&f.s, 5002, &t), BR_REJECT);
        assert_int_equal(t.retry_after_ms, 0);
        assert_int_equal(t.state, BR_STATE_HALF_OPEN);
    }
    /* the owner learns of claims when it publishes */
    assert_int_equal(stats(&f, 5002).trials_claimed, 2);
    br_breaker_publish(&f.b, &f.s, 5002);
    assert_int_equal(stats(&f, 5002).trials_claimed, 3);
}

static void half_open_all_trials_succeed_closes(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    fx_init(&f, &c, 0);
    trip(&f, 0);
    tick(&f, 5000);
    br_ticket_t a = admitted(&f, 5000), b = admitted(&f, 5000);
    assert_int_equal(finish(&f, &a, BR_OUTCOME_SUCCESS, 5, 5010), BR_RECORD_COUNTED);
    assert_int_equal(st_of(&f), BR_STATE_HALF_OPEN);
    assert_int_equal(f.tr.n, 0);
    assert_int_equal(finish(&f, &b, BR_OUTCOME_SUCCESS, 5, 5020), BR_RECORD_COUNTED);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    expect_transition(&f, 0, BR_STATE_HALF_OPEN, BR_STATE_CLOSED, BR_REASON_TRIALS_SUCCEEDED);
    assert_int_equal(f.tr.t[0].generation, 2);
    assert_int_equal(br_breaker_next_deadline(&f.b), BR_NO_DEADLINE);
    br_ticket_t t = admitted(&f, 5020);
    assert_false(t.trial);
    assert_int_equal(t.generation, 2);
}

static void half_open_first_failure_reopens_with_doubled_wait(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    fx_init(&f, &c, 0);
    trip(&f, 1000);
    tick(&f, 6000);
    br_ticket_t a = admitted(&f, 6000), b = admitted(&f, 6000);
    assert_int_equal(finish(&f, &a, BR_OUTCOME_FAILURE, 5, 6100), BR_RECORD_COUNTED);
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
    expect_transition(&f, 0, BR_STATE_HALF_OPEN, BR_STATE_OPEN, BR_REASON_TRIAL_FAILED);
    assert_int_equal(f.tr.t[0].open_ms, 10000);
    assert_int_equal(br_breaker_next_deadline(&f.b), 16100);
    expect_rejected(&f, 6100, 10000);
    /* the other trial of the failed batch no longer counts */
    assert_int_equal(finish(&f, &b, BR_OUTCOME_SUCCESS, 5, 6200), BR_RECORD_STALE);
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
}

static void slow_trials_reopen_when_they_reach_the_slow_rate(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults(); /* slow_call_rate 100% of 2 trials */

    fx_init(&f, &c, 0);
    trip(&f, 0);
    tick(&f, 5000);
    br_ticket_t a = admitted(&f, 5000), b = admitted(&f, 5000);
    finish(&f, &a, BR_OUTCOME_SUCCESS, 2500, 7500);
    assert_int_equal(st_of(&f), BR_STATE_HALF_OPEN);
    finish(&f, &b, BR_OUTCOME_SUCCESS, 2500, 7500);
    expect_transition(&f, 0, BR_STATE_HALF_OPEN, BR_STATE_OPEN, BR_REASON_SLOW_CALL_RATE);
    assert_int_equal(f.tr.t[0].open_ms, 10000);

    /* one slow trial of two is below 100%: closes */
    tick(&f, 17500);
    a = admitted(&f, 17500);
    b = admitted(&f, 17500);
    finish(&f, &a, BR_OUTCOME_SUCCESS, 2500, 20000);
    finish(&f, &b, BR_OUTCOME_SUCCESS, 10, 20000);
    expect_transition(&f, 0, BR_STATE_HALF_OPEN, BR_STATE_CLOSED, BR_REASON_TRIALS_SUCCEEDED);
}

static void trial_outcome_before_the_owner_tick_passes_through_half_open(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.half_open_requests = 1;
    fx_init(&f, &c, 0);
    trip(&f, 1000); /* open until 6000 */
    br_ticket_t t = admitted(&f, 6000);
    assert_true(t.trial);
    /* the owner's clock reads a little behind the worker's */
    assert_int_equal(finish(&f, &t, BR_OUTCOME_SUCCESS, 3, 5990), BR_RECORD_COUNTED);
    assert_int_equal(f.tr.n, 2);
    expect_transition(&f, 0, BR_STATE_OPEN, BR_STATE_HALF_OPEN, BR_REASON_OPEN_ELAPSED);
    assert_int_equal(f.tr.t[0].at_ms, 6000);
    expect_transition(&f, 1, BR_STATE_HALF_OPEN, BR_STATE_CLOSED, BR_REASON_TRIALS_SUCCEEDED);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
}

static void open_duration_caps_at_max(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.max_open_duration_ms = 12000;
    fx_init(&f, &c, 0);
    trip(&f, 0);
    assert_int_equal(stats(&f, 0).open_ms, 5000);
    assert_int_equal(reopen(&f), 10000);
    assert_int_equal(reopen(&f), 12000);
    assert_int_equal(reopen(&f), 12000);
    assert_int_equal(stats(&f, 0).open_ms, 12000);
}

static void open_duration_doubling_saturates(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.open_duration_ms = UINT64_MAX / 4;
    c.max_open_duration_ms = UINT64_MAX - 1;
    fx_init(&f, &c, 0);
    trip(&f, 0);
    assert_int_equal(reopen(&f), UINT64_MAX / 4 * 2);
    assert_int_equal(reopen(&f), UINT64_MAX / 4 * 4); /* still below the cap */
    assert_int_equal(reopen(&f), UINT64_MAX - 1);     /* doubling would overflow: the cap */
    assert_int_equal(br_breaker_next_deadline(&f.b), UINT64_MAX); /* open_until saturates */
}

static void close_resets_open_duration(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    fx_init(&f, &c, 0);
    trip(&f, 0);
    assert_int_equal(reopen(&f), 10000);
    assert_int_equal(reopen(&f), 20000);
    recover(&f);
    assert_int_equal(stats(&f, 0).open_ms, 5000);
    uint64_t now = f.b.last_now;
    trip(&f, now);
    expect_transition(&f, 0, BR_STATE_CLOSED, BR_STATE_OPEN, BR_REASON_CONSECUTIVE_FAILURES);
    assert_int_equal(f.tr.t[0].open_ms, 5000);
}

/* ---- neutral outcomes ---- */

static void stale_generation_outcome_is_neutral(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();
    br_transitions_t tr;

    fx_init(&f, &c, 0);
    br_ticket_t old = admitted(&f, 0); /* generation 0 */
    trip(&f, 0);
    assert_int_equal(br_breaker_force(&f.b, BR_ACTION_RESET, 10, &tr), 0);
    br_breaker_publish(&f.b, &f.s, 10);
    calls(&f, 4, 10, BR_OUTCOME_FAILURE, 1);
    /* admitted under closed gen 0, finished under closed gen 2: it would have been the 5th */
    assert_int_equal(finish(&f, &old, BR_OUTCOME_FAILURE, 1, 20), BR_RECORD_STALE);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
    assert_int_equal(stats(&f, 20).consecutive_failures, 4);
    assert_int_equal(stats(&f, 20).window_calls, 4);

    /* a closed-state success finishing in half_open is not a trial */
    calls(&f, 1, 20, BR_OUTCOME_FAILURE, 1);
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
    br_ticket_t late = old;
    late.generation = f.b.generation - 1;
    tick(&f, 5020);
    assert_int_equal(finish(&f, &late, BR_OUTCOME_SUCCESS, 1, 5020), BR_RECORD_STALE);
    assert_int_equal(stats(&f, 5020).trials_ok, 0);
    assert_int_equal(st_of(&f), BR_STATE_HALF_OPEN);
}

static void cancellation_is_neutral(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();
    br_snapshot_t snap;

    c.consecutive_failures = 3;
    fx_init(&f, &c, 0);
    calls(&f, 2, 0, BR_OUTCOME_FAILURE, 1);
    assert_int_equal(call(&f, 0, BR_OUTCOME_NEUTRAL, 1), BR_RECORD_NEUTRAL);
    assert_int_equal(stats(&f, 0).consecutive_failures, 2); /* neither reset nor counted */
    assert_int_equal(stats(&f, 0).window_calls, 2);
    calls(&f, 1, 0, BR_OUTCOME_FAILURE, 1);
    assert_int_equal(st_of(&f), BR_STATE_OPEN);

    /* a cancelled trial gives its permit back: the batch still needs n real results */
    tick(&f, 5000);
    br_ticket_t a = admitted(&f, 5000), b = admitted(&f, 5000);
    expect_rejected(&f, 5000, 0);
    assert_int_equal(finish(&f, &a, BR_OUTCOME_NEUTRAL, 1, 5001), BR_RECORD_NEUTRAL);
    assert_int_equal(st_of(&f), BR_STATE_HALF_OPEN);
    br_shared_read(&f.s, &snap);
    assert_int_equal(snap.permits, 1);
    assert_int_equal(finish(&f, &b, BR_OUTCOME_SUCCESS, 1, 5002), BR_RECORD_COUNTED);
    assert_int_equal(st_of(&f), BR_STATE_HALF_OPEN);
    br_ticket_t d = admitted(&f, 5003);
    assert_true(d.trial);
    expect_rejected(&f, 5003, 0);
    assert_int_equal(finish(&f, &d, BR_OUTCOME_SUCCESS, 1, 5004), BR_RECORD_COUNTED);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
}

/* ---- the probe deadline ---- */

static void trial_that_never_finishes_fails_at_probe_deadline(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.probe_timeout_ms = 3000;
    fx_init(&f, &c, 0);
    trip(&f, 1000);
    tick(&f, 6000);
    assert_int_equal(br_breaker_next_deadline(&f.b), 9000);
    br_ticket_t t = admitted(&f, 6500); /* and its worker dies: no outcome, ever */
    (void)t;
    br_breaker_publish(&f.b, &f.s, 6600); /* the owner sees the claim at 6600 */
    assert_int_equal(br_breaker_next_deadline(&f.b), 9600);
    tick(&f, 9599);
    assert_int_equal(st_of(&f), BR_STATE_HALF_OPEN);
    tick(&f, 9600);
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
    expect_transition(&f, 0, BR_STATE_HALF_OPEN, BR_STATE_OPEN, BR_REASON_PROBE_TIMEOUT);
    assert_int_equal(f.tr.t[0].open_ms, 10000);
    expect_rejected(&f, 9600, 10000);
}

static void idle_half_open_waits_for_trials_without_failing(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    c.probe_timeout_ms = 3000;
    fx_init(&f, &c, 0);
    trip(&f, 0);
    tick(&f, 5000);
    tick(&f, 8000); /* nobody asked: nothing outstanding, the deadline only re-arms */
    assert_int_equal(st_of(&f), BR_STATE_HALF_OPEN);
    assert_int_equal(br_breaker_next_deadline(&f.b), 11000);
    tick(&f, 60000);
    assert_int_equal(st_of(&f), BR_STATE_HALF_OPEN);
    /* a trial that reports back in time is not failed */
    br_ticket_t a = admitted(&f, 60100);
    br_breaker_publish(&f.b, &f.s, 60100);
    tick(&f, 63099);
    finish(&f, &a, BR_OUTCOME_SUCCESS, 2999, 63099);
    tick(&f, 66098);
    assert_int_equal(st_of(&f), BR_STATE_HALF_OPEN);
    br_ticket_t b = admitted(&f, 66098);
    assert_true(b.trial);
    finish(&f, &b, BR_OUTCOME_SUCCESS, 1, 66099);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
}

static void probe_deadline_defaults_to_open_duration(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    fx_init(&f, &c, 0);
    assert_int_equal(f.b.cfg.probe_timeout_ms, 5000);
    trip(&f, 0);
    tick(&f, 5000);
    assert_int_equal(br_breaker_next_deadline(&f.b), 10000);
}

/* ---- admin ---- */

static void forced_open_rejects_everything(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();
    br_ticket_t t;

    fx_init(&f, &c, 0);
    br_ticket_t before = admitted(&f, 0);
    assert_int_equal(br_breaker_force(&f.b, BR_ACTION_FORCE_OPEN, 0, &f.tr), 0);
    br_breaker_publish(&f.b, &f.s, 0);
    expect_transition(&f, 0, BR_STATE_CLOSED, BR_STATE_FORCED_OPEN, BR_REASON_FORCED);
    for (uint64_t now = 0; now < 1000000; now += 99999) {
        assert_int_equal(br_admit(&f.s, now, &t), BR_REJECT);
        assert_int_equal(t.state, BR_STATE_FORCED_OPEN);
        assert_int_equal(t.retry_after_ms, 0);
        tick(&f, now);
    }
    assert_int_equal(st_of(&f), BR_STATE_FORCED_OPEN);
    assert_int_equal(br_breaker_next_deadline(&f.b), BR_NO_DEADLINE);
    assert_int_equal(finish(&f, &before, BR_OUTCOME_FAILURE, 1, 1000000), BR_RECORD_STALE);
    /* forcing again changes nothing */
    uint64_t gen = stats(&f, 1000000).generation;
    assert_int_equal(br_breaker_force(&f.b, BR_ACTION_FORCE_OPEN, 1000000, &f.tr), 0);
    assert_int_equal(f.tr.n, 0);
    assert_int_equal(stats(&f, 1000000).generation, gen);
}

static void forced_closed_never_trips(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    fx_init(&f, &c, 0);
    trip(&f, 0);
    assert_int_equal(br_breaker_force(&f.b, BR_ACTION_FORCE_CLOSE, 10, &f.tr), 0);
    br_breaker_publish(&f.b, &f.s, 10);
    expect_transition(&f, 0, BR_STATE_OPEN, BR_STATE_FORCED_CLOSED, BR_REASON_FORCED);
    calls(&f, 100, 10, BR_OUTCOME_FAILURE, 5000);
    assert_int_equal(st_of(&f), BR_STATE_FORCED_CLOSED);
    br_stats_t st = stats(&f, 10);
    assert_int_equal(st.consecutive_failures, 100);
    assert_int_equal(st.window_calls, 100);
    assert_int_equal(st.window_failures, 100);
    assert_int_equal(st.window_slow, 100);
    tick(&f, 1000000);
    assert_int_equal(st_of(&f), BR_STATE_FORCED_CLOSED);
    assert_false(admitted(&f, 1000000).trial);
}

static void reset_clears_everything(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    fx_init(&f, &c, 0);
    trip(&f, 0);
    assert_int_equal(reopen(&f), 10000); /* open_ms doubled, a trial batch spent */
    uint64_t now = f.b.last_now;
    uint64_t gen = stats(&f, now).generation;
    br_ticket_t t;
    assert_int_equal(br_admit(&f.s, now, &t), BR_REJECT);

    assert_int_equal(br_breaker_force(&f.b, BR_ACTION_RESET, now, &f.tr), 0);
    br_breaker_publish(&f.b, &f.s, now);
    expect_transition(&f, 0, BR_STATE_OPEN, BR_STATE_CLOSED, BR_REASON_RESET);
    br_stats_t st = stats(&f, now);
    assert_int_equal(st.state, BR_STATE_CLOSED);
    assert_int_equal(st.generation, gen + 1);
    assert_int_equal(st.consecutive_failures, 0);
    assert_int_equal(st.window_calls, 0);
    assert_int_equal(st.open_ms, 5000);
    assert_int_equal(st.open_until, 0);
    assert_int_equal(st.trials_claimed, 0);
    assert_int_equal(br_breaker_next_deadline(&f.b), BR_NO_DEADLINE);
    assert_false(admitted(&f, now).trial);

    /* reset in closed still starts afresh (and is reported for the audit trail) */
    calls(&f, 4, now, BR_OUTCOME_FAILURE, 1);
    assert_int_equal(br_breaker_force(&f.b, BR_ACTION_RESET, now, &f.tr), 0);
    br_breaker_publish(&f.b, &f.s, now);
    expect_transition(&f, 0, BR_STATE_CLOSED, BR_STATE_CLOSED, BR_REASON_RESET);
    assert_int_equal(stats(&f, now).consecutive_failures, 0);
    trip(&f, now);
    assert_int_equal(f.tr.t[0].open_ms, 5000);

    /* and leaves the forced states */
    br_breaker_force(&f.b, BR_ACTION_FORCE_OPEN, now, NULL);
    br_breaker_force(&f.b, BR_ACTION_RESET, now, &f.tr);
    expect_transition(&f, 0, BR_STATE_FORCED_OPEN, BR_STATE_CLOSED, BR_REASON_RESET);
}

/* ---- the rest of the API ---- */

static void owner_time_never_goes_backwards(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();

    fx_init(&f, &c, 0);
    trip(&f, 10000); /* open until 15000 */
    tick(&f, 9000);  /* earlier: treated as 10000 */
    assert_int_equal(st_of(&f), BR_STATE_OPEN);
    assert_int_equal(br_breaker_next_deadline(&f.b), 15000);
}

static void config_is_validated(void **state)
{
    (void)state;
    br_breaker_t b;
    br_config_t c = defaults();

    assert_int_equal(br_config_validate(&c), 0);
    c.failure_rate_ppm = BR_PPM_ONE + 1;
    assert_int_equal(br_breaker_init(&b, &c, 0), BR_EINVAL);
    c = defaults();
    c.slow_call_rate_ppm = BR_PPM_ONE + 1;
    assert_int_equal(br_config_validate(&c), BR_EINVAL);
    c = defaults();
    c.window_ms = 0;
    assert_int_equal(br_config_validate(&c), BR_EINVAL);
    c = defaults();
    c.open_duration_ms = 0;
    assert_int_equal(br_config_validate(&c), BR_EINVAL);
    c = defaults();
    c.max_open_duration_ms = c.open_duration_ms - 1;
    assert_int_equal(br_config_validate(&c), BR_EINVAL);
    c = defaults();
    c.half_open_requests = 0;
    assert_int_equal(br_config_validate(&c), BR_EINVAL);
    c.half_open_requests = BR_MAX_HALF_OPEN_REQUESTS + 1;
    assert_int_equal(br_config_validate(&c), BR_EINVAL);
    c.half_open_requests = BR_MAX_HALF_OPEN_REQUESTS;
    assert_int_equal(br_config_validate(&c), 0);
    assert_int_equal(br_config_validate(NULL), BR_EINVAL);
}

static void bad_arguments_are_refused(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();
    br_outcome_t o = {0, false, BR_OUTCOME_KIND_COUNT, 0};

    fx_init(&f, &c, 0);
    assert_int_equal(br_breaker_record(&f.b, &o, 0, &f.tr), BR_EINVAL);
    assert_int_equal(br_breaker_force(&f.b, BR_ACTION_COUNT, 0, &f.tr), BR_EINVAL);
    assert_int_equal(st_of(&f), BR_STATE_CLOSED);
}

static void names_are_stable(void **state)
{
    (void)state;
    assert_string_equal(br_state_name(BR_STATE_HALF_OPEN), "half_open");
    assert_string_equal(br_state_name(BR_STATE_FORCED_CLOSED), "forced_closed");
    assert_null(br_state_name(BR_STATE_COUNT));
    assert_string_equal(br_reason_name(BR_REASON_CONSECUTIVE_FAILURES), "consecutive_failures");
    assert_string_equal(br_reason_name(BR_REASON_PROBE_TIMEOUT), "probe_timeout");
    assert_null(br_reason_name(BR_REASON_COUNT));
    for (int i = 0; i < BR_STATE_COUNT; i++)
        assert_non_null(br_state_name((br_state_t)i));
    for (int i = 0; i < BR_REASON_COUNT; i++)
        assert_non_null(br_reason_name((br_reason_t)i));
    assert_string_equal(br_strerror(BR_EINVAL), "invalid argument");
    assert_string_equal(br_strerror(-4999), "unknown error");
}

static void a_restarted_owner_adopts_the_published_state(void **state)
{
    (void)state;
    fx_t f;
    br_config_t c = defaults();
    br_breaker_t b2;

    fx_init(&f, &c, 0);
    trip(&f, 1000); /* open until 6000, generation 1 */
    br_ticket_t stale = {1, BR_STATE_OPEN, true, 0};
    assert_int_equal(br_breaker_init(&b2, &c, 2000), 0);
    assert_int_equal(br_breaker_adopt(&b2, &f.s, 2000), 0);
    assert_int_equal(br_breaker_state(&b2), BR_STATE_OPEN);
    assert_int_equal(br_breaker_next_deadline(&b2), 6000);
    assert_int_equal(br_breaker_publish(&b2, &f.s, 2000), 1);
    expect_rejected(&f, 2000, 4000);
    br_outcome_t o = outcome_of(&stale, BR_OUTCOME_SUCCESS, 1);
    assert_int_equal(br_breaker_record(&b2, &o, 2000, NULL), BR_RECORD_STALE);

    /* forced states survive a restart */
    br_breaker_force(&b2, BR_ACTION_FORCE_OPEN, 2000, NULL);
    br_breaker_publish(&b2, &f.s, 2000);
    assert_int_equal(br_breaker_init(&f.b, &c, 3000), 0);
    br_breaker_adopt(&f.b, &f.s, 3000);
    assert_int_equal(st_of(&f), BR_STATE_FORCED_OPEN);

    /* half_open becomes a fresh trial batch at once */
    br_breaker_force(&f.b, BR_ACTION_RESET, 3000, NULL);
    br_breaker_publish(&f.b, &f.s, 3000);
    trip(&f, 3000);
    tick(&f, 8000);
    assert_int_equal(br_breaker_init(&b2, &c, 8500), 0);
    br_breaker_adopt(&b2, &f.s, 8500);
    br_breaker_publish(&b2, &f.s, 8500);
    assert_int_equal(br_breaker_state(&b2), BR_STATE_OPEN);
    br_ticket_t t;
    assert_int_equal(br_admit(&f.s, 8500, &t), BR_ADMIT);
    assert_true(t.trial);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(opens_after_consecutive_failures),
        cmocka_unit_test(success_resets_consecutive_count),
        cmocka_unit_test(failure_rate_trips_only_after_min_calls),
        cmocka_unit_test(failure_rate_threshold_is_inclusive),
        cmocka_unit_test(failure_rate_counts_only_the_window),
        cmocka_unit_test(slow_call_rate_100_percent_trips_only_when_all_slow),
        cmocka_unit_test(slow_call_rate_below_100_percent_is_inclusive),
        cmocka_unit_test(zero_disables_each_trigger),
        cmocka_unit_test(four_xx_is_success),
        cmocka_unit_test(open_rejects_with_ms_left),
        cmocka_unit_test(open_elapsed_moves_to_half_open),
        cmocka_unit_test(half_open_admits_exactly_n_trials),
        cmocka_unit_test(half_open_all_trials_succeed_closes),
        cmocka_unit_test(half_open_first_failure_reopens_with_doubled_wait),
        cmocka_unit_test(slow_trials_reopen_when_they_reach_the_slow_rate),
        cmocka_unit_test(trial_outcome_before_the_owner_tick_passes_through_half_open),
        cmocka_unit_test(open_duration_caps_at_max),
        cmocka_unit_test(open_duration_doubling_saturates),
        cmocka_unit_test(close_resets_open_duration),
        cmocka_unit_test(stale_generation_outcome_is_neutral),
        cmocka_unit_test(cancellation_is_neutral),
        cmocka_unit_test(trial_that_never_finishes_fails_at_probe_deadline),
        cmocka_unit_test(idle_half_open_waits_for_trials_without_failing),
        cmocka_unit_test(probe_deadline_defaults_to_open_duration),
        cmocka_unit_test(forced_open_rejects_everything),
        cmocka_unit_test(forced_closed_never_trips),
        cmocka_unit_test(reset_clears_everything),
        cmocka_unit_test(owner_time_never_goes_backwards),
        cmocka_unit_test(config_is_validated),
        cmocka_unit_test(bad_arguments_are_refused),
        cmocka_unit_test(names_are_stable),
        cmocka_unit_test(a_restarted_owner_adopts_the_published_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
