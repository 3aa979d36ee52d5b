/*
 * test_gateway_events.c - the shared events ring: order, drop-oldest, abandoned writers,
 * two-phase consumption, cross-process producers.
 *
 * White-box: includes events.c to reach the slot layout (to play a producer that dies mid-write).
 */
#include "../../gateway/events.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

static void events_come_out_in_order_with_their_fields(void **state)
{
    gw_events_t *ev = gw_events_new();
    gw_event_t e;
    assert_int_equal(gw_events_next(ev, 0, &e), 0);
    assert_int_equal(gw_events_emit(ev, "worker_crash", 1, "{\"signal\":11}"), 0);
    assert_int_equal(gw_events_emit(ev, "reload", -1, NULL), 0);
    assert_int_equal(gw_events_next(ev, 0, &e), 1);
    assert_string_equal(e.kind, "worker_crash");
    assert_int_equal(e.worker, 1);
    assert_string_equal(e.fields, "{\"signal\":11}");
    assert_true(e.ts_ms > 1600000000000ull);
    assert_int_equal(gw_events_next(ev, 0, &e), 1);
    assert_string_equal(e.kind, "reload");
    assert_string_equal(e.fields, "{}");
    assert_int_equal(gw_events_next(ev, 0, &e), 0);
    assert_int_equal(gw_events_dropped(ev), 0);
    gw_events_free(ev);
}

static void unusable_records_are_refused(void **state)
{
    gw_events_t *ev = gw_events_new();
    static char big[GW_EVENT_FIELDS_MAX + 10];
    memset(big, 'x', sizeof(big) - 1);
    assert_int_equal(gw_events_emit(ev, "", 0, NULL), -EINVAL);
    assert_int_equal(gw_events_emit(ev, "a_kind_name_that_is_far_too_long_to_fit", 0, NULL),
                     -EINVAL);
    assert_int_equal(gw_events_emit(ev, "k", 0, big), -EMSGSIZE);
    assert_int_equal(gw_events_emitted(ev), 0);
    gw_events_free(ev);
}

static void a_full_ring_drops_the_oldest_and_counts_them(void **state)
{
    gw_events_t *ev = gw_events_new();
    char fields[32];
    for (int i = 0; i < GW_EVENTS_SLOTS + 10; i++) {
        snprintf(fields, sizeof(fields), "{\"i\":%d}", i);
        assert_int_equal(gw_events_emit(ev, "tick", 0, fields), 0);
    }
    gw_event_t e;
    assert_int_equal(gw_events_next(ev, 0, &e), 1);
    assert_string_equal(e.fields, "{\"i\":10}");
    assert_int_equal(gw_events_dropped(ev), 10);
    int n = 1;
    while (gw_events_next(ev, 0, &e) == 1)
        n++;
    assert_int_equal(n, GW_EVENTS_SLOTS);
    snprintf(fields, sizeof(fields), "{\"i\":%d}", GW_EVENTS_SLOTS + 9);
    assert_string_equal(e.fields, fields);
    gw_events_free(ev);
}

static void a_producer_dying_mid_write_is_skipped_after_a_while(void **state)
{
    gw_events_t *ev = gw_events_new();
    /* a producer claims position 0, marks it being written, and dies */
    uint64_t p = __atomic_fetch_add(&ev->head, 1, __ATOMIC_ACQ_REL);
    ev->slots[p].seq = 2 * p + 1;
    assert_int_equal(gw_events_emit(ev, "after", 0, NULL), 0);
    gw_event_t e;
    assert_int_equal(gw_events_next(ev, 1000, &e), 0); /* waits for the writer ... */
    assert_int_equal(gw_events_next(ev, 1000 + GW_EVENTS_STUCK_MS - 1, &e), 0);
    assert_int_equal(gw_events_next(ev, 1000 + GW_EVENTS_STUCK_MS, &e), 1); /* ... not forever */
    assert_string_equal(e.kind, "after");
    assert_int_equal(gw_events_dropped(ev), 1);
    gw_events_free(ev);
}

static void uncommitted_events_are_read_again_after_a_rewind(void **state)
{
    gw_events_t *ev = gw_events_new();
    gw_event_t e;
    gw_events_emit(ev, "a", 0, NULL);
    gw_events_emit(ev, "b", 0, NULL);
    assert_int_equal(gw_events_next(ev, 0, &e), 1);
    gw_events_commit(ev); /* "a" persisted */
    assert_int_equal(gw_events_next(ev, 0, &e), 1);
    assert_string_equal(e.kind, "b");
    gw_events_rewind(ev); /* the consumer crashed before storing "b" */
    assert_int_equal(gw_events_next(ev, 0, &e), 1);
    assert_string_equal(e.kind, "b");
    assert_int_equal(gw_events_next(ev, 0, &e), 0);
    gw_events_free(ev);
}

static void producers_in_other_processes_are_all_received(void **state)
{
    gw_events_t *ev = gw_events_new();
    enum { CHILDREN = 4, EACH = 100 };
    for (int c = 0; c < CHILDREN; c++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            for (int i = 0; i < EACH; i++)
                gw_events_emit(ev, "child", c, NULL);
            _exit(0);
        }
    }
    for (int c = 0; c < CHILDREN; c++)
        wait(NULL);
    gw_event_t e;
    int per_child[CHILDREN] = {0}, n = 0;
    while (gw_events_next(ev, 0, &e) == 1) {
        per_child[e.worker]++;
        n++;
    }
    assert_int_equal(n, CHILDREN * EACH);
    for (int c = 0; c < CHILDREN; c++)
        assert_int_equal(per_child[c], EACH);
    gw_events_free(ev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(events_come_out_in_order_with_their_fields),
        cmocka_unit_test(unusable_records_are_refused),
        cmocka_unit_test(a_full_ring_drops_the_oldest_and_counts_them),
        cmocka_unit_test(a_producer_dying_mid_write_is_skipped_after_a_while),
        cmocka_unit_test(uncommitted_events_are_read_again_after_a_rewind),
        cmocka_unit_test(producers_in_other_processes_are_all_received),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
