/*
 * test_breaker_window.c - the breaker's sliding time window: bucket geometry, exact expiry,
 * time going backwards, jumps forward, saturation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "breaker_int.h"

static void expect_counts(br_window_t *w, uint64_t now, uint64_t calls, uint64_t failures,
                          uint64_t slow)
{
    br_window_counts_t c;
    br_window_counts(w, now, &c);
    assert_int_equal(c.calls, calls);
    assert_int_equal(c.failures, failures);
    assert_int_equal(c.slow, slow);
}

static void geometry_divides_the_window_into_buckets(void **state)
{
    (void)state;
    br_window_t w;

    br_window_init(&w, 10000, 0);
    assert_int_equal(w.width_ms, 100);
    assert_int_equal(w.nbuckets, 100);
    br_window_init(&w, 50, 0);
    assert_int_equal(w.width_ms, 1);
    assert_int_equal(w.nbuckets, 50);
    /* not a multiple of 100 ms: the window never covers more than asked */
    br_window_init(&w, 10007, 0);
    assert_int_equal(w.width_ms, 101);
    assert_int_equal(w.nbuckets, 99);
    assert_true(w.width_ms * w.nbuckets <= 10007);
    br_window_init(&w, 1, 0);
    assert_int_equal(w.width_ms, 1);
    assert_int_equal(w.nbuckets, 1);
}

static void counts_calls_failures_and_slow_calls(void **state)
{
    (void)state;
    br_window_t w;

    br_window_init(&w, 10000, 1000);
    br_window_add(&w, 1000, false, false);
    br_window_add(&w, 1000, true, false);
    br_window_add(&w, 1500, false, true);
    br_window_add(&w, 2000, true, true);
    expect_counts(&w, 2000, 4, 2, 2);
}

static void old_buckets_expire_exactly(void **state)
{
    (void)state;
    br_window_t w;

    /* 10 s window, 100 ms buckets: a call in bucket k expires when now reaches (k + 100) * 100 */
    br_window_init(&w, 10000, 0);
    br_window_add(&w, 50, true, false);  /* bucket 0 */
    br_window_add(&w, 150, false, true); /* bucket 1 */
    br_window_add(&w, 199, false, false);
    expect_counts(&w, 9999, 3, 1, 1);
    expect_counts(&w, 10000, 2, 0, 1);
    expect_counts(&w, 10099, 2, 0, 1);
    expect_counts(&w, 10100, 0, 0, 0);
}

static void expiry_is_exact_with_one_ms_buckets(void **state)
{
    (void)state;
    br_window_t w;

    br_window_init(&w, 20, 100);
    br_window_add(&w, 100, true, false);
    br_window_add(&w, 110, true, false);
    expect_counts(&w, 119, 2, 2, 0);
    expect_counts(&w, 120, 1, 1, 0);
    expect_counts(&w, 129, 1, 1, 0);
    expect_counts(&w, 130, 0, 0, 0);
}

static void time_going_backwards_counts_as_the_last_time_seen(void **state)
{
    (void)state;
    br_window_t w;

    br_window_init(&w, 10000, 0);
    br_window_add(&w, 5000, false, false); /* bucket 50 */
    br_window_add(&w, 4990, true, false);  /* a little earlier: treated as 5000, bucket 50 */
    expect_counts(&w, 4000, 2, 1, 0);      /* reading in the past reads "now" */
    /* both expire together at (50 + 100) * 100, not the second one at 14900 */
    expect_counts(&w, 14999, 2, 1, 0);
    expect_counts(&w, 15000, 0, 0, 0);
    /* and the window did not move back: a call "at" 4000 lands at 15000 */
    br_window_add(&w, 4000, true, false);
    expect_counts(&w, 24999, 1, 1, 0);
    expect_counts(&w, 25000, 0, 0, 0);
}

static void jump_forward_larger_than_the_window_clears_it(void **state)
{
    (void)state;
    br_window_t w;

    br_window_init(&w, 10000, 0);
    for (uint64_t t = 0; t < 10000; t += 100)
        br_window_add(&w, t, t % 200 == 0, true);
    expect_counts(&w, 9999, 100, 50, 100);
    expect_counts(&w, 1000000, 0, 0, 0);
    for (int i = 0; i < BR_WINDOW_BUCKETS; i++)
        assert_int_equal(w.b[i].calls, 0);
    br_window_add(&w, 1000000, true, false);
    expect_counts(&w, 1000000, 1, 1, 0);
    expect_counts(&w, 1009999, 1, 1, 0);
    expect_counts(&w, 1010000, 0, 0, 0);
}

static void jump_forward_of_part_of_the_window_keeps_the_rest(void **state)
{
    (void)state;
    br_window_t w;

    br_window_init(&w, 10000, 0);
    br_window_add(&w, 0, true, false);
    br_window_add(&w, 5000, false, false);
    br_window_add(&w, 9900, false, true);
    expect_counts(&w, 14999, 2, 0, 1); /* 0 gone; 5000 (bucket 50) lives until 15000 */
    expect_counts(&w, 15000, 1, 0, 1);
    expect_counts(&w, 19899, 1, 0, 1);
    expect_counts(&w, 19900, 0, 0, 0);
}

static void clear_empties_and_keeps_time_monotonic(void **state)
{
    (void)state;
    br_window_t w;

    br_window_init(&w, 1000, 0);
    br_window_add(&w, 500, true, true);
    br_window_clear(&w, 400); /* earlier than seen: clears at 500 */
    expect_counts(&w, 500, 0, 0, 0);
    br_window_add(&w, 500, true, false);
    expect_counts(&w, 1499, 1, 1, 0);
    expect_counts(&w, 1500, 0, 0, 0);
}

static void full_bucket_stops_counting_without_skewing_sums(void **state)
{
    (void)state;
    br_window_t w;

    br_window_init(&w, 1000, 0);
    br_window_add(&w, 0, false, false);
    w.b[0].calls = UINT32_MAX; /* pretend the bucket filled up */
    w.calls = UINT32_MAX;
    br_window_add(&w, 0, true, true);
    expect_counts(&w, 0, UINT32_MAX, 0, 0);
    br_window_add(&w, 10, true, true); /* the next bucket counts again */
    expect_counts(&w, 10, (uint64_t)UINT32_MAX + 1, 1, 1);
    expect_counts(&w, 1000, 1, 1, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(geometry_divides_the_window_into_buckets),
        cmocka_unit_test(counts_calls_failures_and_slow_calls),
        cmocka_unit_test(old_buckets_expire_exactly),
        cmocka_unit_test(expiry_is_exact_with_one_ms_buckets),
        cmocka_unit_test(time_going_backwards_counts_as_the_last_time_seen),
        cmocka_unit_test(jump_forward_larger_than_the_window_clears_it),
        cmocka_unit_test(jump_forward_of_part_of_the_window_keeps_the_rest),
        cmocka_unit_test(clear_empties_and_keeps_time_monotonic),
        cmocka_unit_test(full_bucket_stops_counting_without_skewing_sums),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
