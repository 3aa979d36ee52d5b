/*
 * test_gateway_crashloop.c - crash-loop detection and respawn back-off, with an injected clock.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "crashloop.h"

static void five_crashes_in_a_window_respawn_at_once(void **state)
{
    gw_crashloop_t cl = {0};
    bool entered;
    for (int i = 0; i < GW_CRASH_LOOP_COUNT; i++) {
        assert_int_equal(gw_crashloop_note(&cl, 1000 + (uint64_t)i * 100, &entered), 0);
        assert_false(entered);
    }
    assert_false(gw_crashloop_active(&cl));
}

static void the_sixth_crash_in_a_window_enters_the_loop_with_the_base_delay(void **state)
{
    gw_crashloop_t cl = {0};
    bool entered;
    for (int i = 0; i < GW_CRASH_LOOP_COUNT; i++)
        gw_crashloop_note(&cl, 1000 + (uint64_t)i, &entered);
    assert_int_equal(gw_crashloop_note(&cl, 1000 + GW_CRASH_LOOP_COUNT, &entered),
                     GW_RESPAWN_BASE_MS);
    assert_true(entered);
    assert_true(gw_crashloop_active(&cl));
}

static void delays_double_up_to_the_cap_and_entering_is_reported_once(void **state)
{
    gw_crashloop_t cl = {0};
    bool entered;
    uint64_t t = 0, want = GW_RESPAWN_BASE_MS;
    int entries = 0;
    for (int i = 0; i < GW_CRASH_LOOP_COUNT; i++)
        gw_crashloop_note(&cl, t++, &entered);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(gw_crashloop_note(&cl, t++, &entered), want);
        entries += entered;
        want = want * 2 > GW_RESPAWN_MAX_MS ? GW_RESPAWN_MAX_MS : want * 2;
    }
    assert_int_equal(entries, 1);
    assert_int_equal(cl.backoff_ms, GW_RESPAWN_MAX_MS);
}

static void crashes_spread_wider_than_the_window_are_not_a_loop(void **state)
{
    gw_crashloop_t cl = {0};
    bool entered;
    uint64_t step = GW_CRASH_LOOP_WINDOW_MS / GW_CRASH_LOOP_COUNT; /* 6 crashes span > 1 window */
    for (int i = 0; i < 20; i++)
        assert_int_equal(gw_crashloop_note(&cl, (uint64_t)i * step, &entered), 0);
}

static void a_quiet_window_ends_the_loop_once_and_the_next_loop_starts_from_the_base(void **state)
{
    gw_crashloop_t cl = {0};
    bool entered;
    for (int i = 0; i <= GW_CRASH_LOOP_COUNT + 2; i++)
        gw_crashloop_note(&cl, 1000 + (uint64_t)i, &entered);
    uint64_t last = 1000 + GW_CRASH_LOOP_COUNT + 2;
    assert_false(gw_crashloop_quiet(&cl, last + GW_CRASH_LOOP_WINDOW_MS - 1));
    assert_true(gw_crashloop_quiet(&cl, last + GW_CRASH_LOOP_WINDOW_MS));
    assert_false(gw_crashloop_quiet(&cl, last + GW_CRASH_LOOP_WINDOW_MS + 1));
    assert_false(gw_crashloop_active(&cl));
    uint64_t t = last + 2 * GW_CRASH_LOOP_WINDOW_MS;
    for (int i = 0; i < GW_CRASH_LOOP_COUNT; i++)
        assert_int_equal(gw_crashloop_note(&cl, t++, &entered), 0);
    assert_int_equal(gw_crashloop_note(&cl, t, &entered), GW_RESPAWN_BASE_MS);
    assert_true(entered);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(five_crashes_in_a_window_respawn_at_once),
        cmocka_unit_test(the_sixth_crash_in_a_window_enters_the_loop_with_the_base_delay),
        cmocka_unit_test(delays_double_up_to_the_cap_and_entering_is_reported_once),
        cmocka_unit_test(crashes_spread_wider_than_the_window_are_not_a_loop),
        cmocka_unit_test(a_quiet_window_ends_the_loop_once_and_the_next_loop_starts_from_the_base),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
