/*
 * test_breaker_shared.c - the published breaker state in shared memory: the word's encoding,
 * publish/claim semantics, and concurrency: readers never see a torn state while the owner
 * publishes, exactly n trial permits are claimed per generation across threads and across
 * processes, and a worker killed at any instruction leaves nothing locked.
 *
 * Also built with -fsanitize=thread (see docs/breaker.md, "Testing").
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "breaker_int.h"

static br_config_t config(uint32_t n)
{
    return (br_config_t){
        .consecutive_failures = 1,
        .window_ms = 10000,
        .min_calls = 20,
        .open_duration_ms = 1000,
        .max_open_duration_ms = 1000,
        .half_open_requests = n,
    };
}

/* Trips the owner at `now` with one failure of the current generation and publishes. */
static void trip_at(br_breaker_t *b, br_shared_t *s, uint64_t now)
{
    br_outcome_t o = {b->generation, false, BR_OUTCOME_FAILURE, 0};
    assert_int_equal(br_breaker_record(b, &o, now, NULL), BR_RECORD_COUNTED);
    assert_int_equal(br_breaker_state(b), BR_STATE_OPEN);
    br_breaker_publish(b, s, now);
}

static void reset_at(br_breaker_t *b, br_shared_t *s, uint64_t now)
{
    br_breaker_force(b, BR_ACTION_RESET, now, NULL);
    br_breaker_publish(b, s, now);
}

/* ---- single-threaded semantics ---- */

static void word_encoding_round_trips(void **state)
{
    (void)state;
    uint64_t w = br_word_make(BR_GENERATION_MASK, BR_STATE_FORCED_CLOSED, 1, 65535);
    assert_int_equal(br_word_gen(w), BR_GENERATION_MASK);
    assert_int_equal(br_word_state(w), BR_STATE_FORCED_CLOSED);
    assert_int_equal(br_word_slot(w), 1);
    assert_int_equal(br_word_permits(w), 65535);
    w = br_word_make(12345, BR_STATE_HALF_OPEN, 0, 7);
    assert_int_equal(br_word_gen(w - 1), 12345); /* a claim touches only the permits */
    assert_int_equal(br_word_state(w - 1), BR_STATE_HALF_OPEN);
    assert_int_equal(br_word_permits(w - 1), 6);
    assert_int_equal(br_word_gen(br_word_make(BR_GENERATION_MASK + 1, BR_STATE_OPEN, 0, 0)), 0);
}

static void zero_filled_memory_is_closed(void **state)
{
    (void)state;
    br_shared_t s;
    br_snapshot_t snap;
    br_ticket_t t;

    br_shared_init(&s);
    br_shared_read(&s, &snap);
    assert_int_equal(snap.state, BR_STATE_CLOSED);
    assert_int_equal(snap.generation, 0);
    assert_int_equal(snap.permits, 0);
    assert_int_equal(snap.open_until, 0);
    assert_int_equal(br_admit(&s, 123, &t), BR_ADMIT);
    assert_int_equal(t.generation, 0);
    assert_false(t.trial);
}

static void publish_reports_whether_it_changed_anything(void **state)
{
    (void)state;
    br_breaker_t b;
    br_shared_t s;
    br_config_t c = config(2);

    br_shared_init(&s);
    br_breaker_init(&b, &c, 0);
    assert_int_equal(br_breaker_publish(&b, &s, 0), 0); /* closed gen 0 == zeroed memory */
    trip_at(&b, &s, 10);
    assert_int_equal(br_breaker_publish(&b, &s, 10), 0);
    br_breaker_tick(&b, 1010, NULL);
    assert_int_equal(br_breaker_publish(&b, &s, 1010), 1); /* open -> half_open, same gen */
    assert_int_equal(br_breaker_publish(&b, &s, 1010), 0);
}

/* The double buffer's rule, checked deterministically: a reader that loaded the word may still
 * be reading the slot it points at, so publish writes only the other one. */
static void publish_never_writes_the_slot_readers_use(void **state)
{
    (void)state;
    br_breaker_t b;
    br_shared_t s;
    br_config_t c = config(2);

    br_shared_init(&s);
    br_breaker_init(&b, &c, 0);
    trip_at(&b, &s, 0);
    unsigned used = br_word_slot(s.word);
    assert_int_equal(s.open_until[used], 1000);
    for (uint64_t now = 10; now < 100; now += 10) {
        uint64_t before = s.open_until[used];
        if (br_breaker_state(&b) == BR_STATE_OPEN)
            reset_at(&b, &s, now);
        else
            trip_at(&b, &s, now);
        assert_int_equal(s.open_until[used], before); /* the old slot is untouched */
        assert_int_not_equal(br_word_slot(s.word), used);
        used = br_word_slot(s.word);
        assert_int_equal(s.open_until[used],
                         br_breaker_state(&b) == BR_STATE_OPEN ? now + 1000 : 0);
    }
    /* open -> half_open keeps the generation, so it keeps the slot */
    trip_at(&b, &s, 100);
    used = br_word_slot(s.word);
    br_breaker_tick(&b, 1100, NULL);
    br_breaker_publish(&b, &s, 1100);
    assert_int_equal(br_word_slot(s.word), used);
    assert_int_equal(br_word_state(s.word), BR_STATE_HALF_OPEN);
}

static void owner_keeps_worker_claims_when_moving_to_half_open(void **state)
{
    (void)state;
    br_breaker_t b;
    br_shared_t s;
    br_config_t c = config(3);
    br_snapshot_t snap;
    br_ticket_t t;

    br_shared_init(&s);
    br_breaker_init(&b, &c, 0);
    trip_at(&b, &s, 0);
    br_shared_read(&s, &snap);
    assert_int_equal(snap.state, BR_STATE_OPEN);
    assert_int_equal(snap.permits, 3);
    assert_int_equal(snap.open_until, 1000);
    assert_int_equal(br_admit(&s, 999, &t), BR_REJECT);
    assert_int_equal(t.retry_after_ms, 1);
    assert_int_equal(br_admit(&s, 1000, &t), BR_ADMIT);
    assert_true(t.trial);
    br_breaker_tick(&b, 1001, NULL);
    br_breaker_publish(&b, &s, 1001);
    br_shared_read(&s, &snap);
    assert_int_equal(snap.state, BR_STATE_HALF_OPEN);
    assert_int_equal(snap.permits, 2);
    assert_int_equal(snap.generation, t.generation);
    /* half_open admits trials even when a worker's clock reads before open_until */
    assert_int_equal(br_admit(&s, 500, &t), BR_ADMIT);
    assert_true(t.trial);
}

static void a_new_generation_gets_a_fresh_batch(void **state)
{
    (void)state;
    br_breaker_t b;
    br_shared_t s;
    br_config_t c = config(2);
    br_snapshot_t snap;
    br_ticket_t t;

    br_shared_init(&s);
    br_breaker_init(&b, &c, 0);
    trip_at(&b, &s, 0);
    assert_int_equal(br_admit(&s, 1000, &t), BR_ADMIT);
    assert_int_equal(br_admit(&s, 1000, &t), BR_ADMIT);
    assert_int_equal(br_admit(&s, 1000, &t), BR_REJECT);
    reset_at(&b, &s, 1000);
    trip_at(&b, &s, 1000);
    br_shared_read(&s, &snap);
    assert_int_equal(snap.permits, 2);
    assert_int_equal(snap.open_until, 2000);
    assert_int_equal(snap.generation, 3);
    assert_int_equal(br_admit(&s, 2000, &t), BR_ADMIT);
    assert_int_equal(t.generation, 3);
}

/* ---- concurrency: threads ----
 *
 * The races these tests look for last a few instructions, so the tests run for a wall-clock
 * budget (BR_STRESS_MS, default 1000 ms each) rather than a fixed count: on a machine with few
 * CPUs a race shows only when the scheduler preempts a thread inside the window. Mutating
 * shared.c (writing open_until into the slot readers use; claiming with load+store instead of
 * CAS) makes them fail within that budget on a 2-CPU machine. */

static uint64_t stress_ms(void)
{
    const char *e = getenv("BR_STRESS_MS");
    return e != NULL && atoi(e) > 0 ? (uint64_t)atoi(e) : 1000;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#define OPEN_MS 1000

typedef struct torn_ctx {
    br_shared_t s;
    int done;        /* atomic */
    uint32_t n;      /* trial permits per generation */
    uint64_t checks; /* atomic */
    uint64_t cycles; /* written by the writer before done */
    int errors;      /* atomic */
} torn_ctx_t;

static void bad(int *errors)
{
    __atomic_add_fetch(errors, 1, __ATOMIC_RELAXED);
}

/* The writer trips at now = generation * 1000 so that every open generation g has
 * open_until == g * 1000 + OPEN_MS, and resets (even generations are closed). */
static void *torn_writer(void *arg)
{
    torn_ctx_t *x = arg;
    br_breaker_t b;
    br_config_t c = config(x->n);
    uint64_t end = mono_ms() + stress_ms(), i;

    c.open_duration_ms = c.max_open_duration_ms = OPEN_MS;
    br_breaker_init(&b, &c, 0);
    for (i = 0; i % 1024 != 0 || mono_ms() < end; i++) {
        uint64_t now = (b.generation + 1) * 1000;
        br_outcome_t o = {b.generation, false, BR_OUTCOME_FAILURE, 0};
        br_breaker_record(&b, &o, now, NULL);
        br_breaker_publish(&b, &x->s, now);
        br_breaker_force(&b, BR_ACTION_RESET, now, NULL);
        br_breaker_publish(&b, &x->s, now);
    }
    x->cycles = i;
    __atomic_store_n(&x->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void check_snapshot(torn_ctx_t *x, const br_snapshot_t *s)
{
    if (s->state == BR_STATE_OPEN) {
        if (s->generation % 2 != 1 || s->open_until != s->generation * 1000 + OPEN_MS ||
            s->permits > x->n)
            bad(&x->errors);
    } else if (s->state == BR_STATE_CLOSED) {
        if (s->generation % 2 != 0 || s->open_until != 0 || s->permits != 0)
            bad(&x->errors);
    } else {
        bad(&x->errors);
    }
}

/* Readers: snapshots, and admissions before open_until (rejections carry the ms left). */
static void *torn_reader(void *arg)
{
    torn_ctx_t *x = arg;
    uint64_t n = 0;

    while (!__atomic_load_n(&x->done, __ATOMIC_ACQUIRE)) {
        br_snapshot_t snap;
        br_ticket_t t;

        br_shared_read(&x->s, &snap);
        check_snapshot(x, &snap);
        if (br_admit(&x->s, 0, &t) == BR_REJECT) {
            if (t.state != BR_STATE_OPEN || t.generation % 2 != 1 ||
                t.retry_after_ms != t.generation * 1000 + OPEN_MS)
                bad(&x->errors);
        } else if (t.state != BR_STATE_CLOSED || t.generation % 2 != 0 || t.trial) {
            bad(&x->errors);
        }
        n++;
    }
    __atomic_add_fetch(&x->checks, n, __ATOMIC_RELAXED);
    return NULL;
}

/* Claimers: always past open_until, so every open generation hands out trial permits (the
 * word changes under the readers; exactly-n per generation is the next test's business). */
static void *torn_claimer(void *arg)
{
    torn_ctx_t *x = arg;

    while (!__atomic_load_n(&x->done, __ATOMIC_ACQUIRE)) {
        br_ticket_t t;
        if (br_admit(&x->s, UINT64_MAX / 2, &t) == BR_ADMIT &&
            (t.trial ? t.state != BR_STATE_OPEN || t.generation % 2 != 1
                     : t.state != BR_STATE_CLOSED || t.generation % 2 != 0))
            bad(&x->errors);
    }
    return NULL;
}

static void published_state_is_never_torn(void **state)
{
    (void)state;
    torn_ctx_t *x = calloc(1, sizeof *x);
    pthread_t w, r, cl;

    assert_non_null(x);
    x->n = 3;
    br_shared_init(&x->s);
    assert_int_equal(pthread_create(&r, NULL, torn_reader, x), 0);
    assert_int_equal(pthread_create(&cl, NULL, torn_claimer, x), 0);
    assert_int_equal(pthread_create(&w, NULL, torn_writer, x), 0);
    pthread_join(w, NULL);
    pthread_join(r, NULL);
    pthread_join(cl, NULL);
    print_message("%llu publish cycles, %llu reader checks\n", (unsigned long long)x->cycles,
                  (unsigned long long)x->checks);
    assert_int_equal(x->errors, 0);
    assert_true(x->checks > 0);
    free(x);
}

#define HAMMERS 3
#define MAX_ROUNDS 100000

typedef struct hammer_ctx {
    br_shared_t s;
    uint64_t clock;     /* the workers' clock (atomic) */
    int stop;           /* atomic */
    uint32_t *admitted; /* [generation] trials admitted (atomic) */
    int errors;         /* atomic */
} hammer_ctx_t;

/* A worker: admits continuously on the shared clock, like a busy gateway worker. */
static void *hammer(void *arg)
{
    hammer_ctx_t *x = arg;

    while (!__atomic_load_n(&x->stop, __ATOMIC_ACQUIRE)) {
        br_ticket_t t;
        uint64_t now = __atomic_load_n(&x->clock, __ATOMIC_ACQUIRE);

        if (br_admit(&x->s, now, &t) != BR_ADMIT)
            continue;
        if (!t.trial) {
            if (t.state != BR_STATE_CLOSED)
                bad(&x->errors);
        } else if (t.generation > 2 * (uint64_t)MAX_ROUNDS + 2) {
            bad(&x->errors);
        } else {
            __atomic_add_fetch(&x->admitted[t.generation], 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

static void half_open_admits_exactly_n_trials_under_concurrency(void **state)
{
    (void)state;
    hammer_ctx_t *x = calloc(1, sizeof *x);
    uint8_t *open_gen = calloc(2 * (size_t)MAX_ROUNDS + 3, 1);
    pthread_t th[HAMMERS];
    br_breaker_t b;
    br_config_t c = config(5);
    uint64_t now = 0, end = mono_ms() + stress_ms(), rounds;

    assert_non_null(x);
    assert_non_null(open_gen);
    x->admitted = calloc(2 * (size_t)MAX_ROUNDS + 3, sizeof *x->admitted);
    assert_non_null(x->admitted);
    br_shared_init(&x->s);
    br_breaker_init(&b, &c, 0);
    for (int i = 0; i < HAMMERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, x), 0);
    for (rounds = 0; rounds < MAX_ROUNDS && (rounds % 64 != 0 || mono_ms() < end); rounds++) {
        br_snapshot_t snap;

        reset_at(&b, &x->s, now);
        trip_at(&b, &x->s, now); /* open until now + 1000, 5 permits */
        open_gen[b.generation] = 1;
        now += 1000;
        /* every worker sees the open period end at once and races for the permits, while the
         * owner notices it too and publishes half_open over their claims */
        __atomic_store_n(&x->clock, now, __ATOMIC_RELEASE);
        br_breaker_tick(&b, now, NULL);
        br_breaker_publish(&b, &x->s, now);
        do {
            br_shared_read(&x->s, &snap);
        } while (snap.permits > 0);
        br_breaker_publish(&b, &x->s, now);
        assert_int_equal(b.claimed, 5);
    }
    __atomic_store_n(&x->stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < HAMMERS; i++)
        pthread_join(th[i], NULL);
    print_message("%llu rounds\n", (unsigned long long)rounds);
    assert_int_equal(x->errors, 0);
    for (size_t g = 0; g < 2 * (size_t)MAX_ROUNDS + 3; g++)
        assert_int_equal(x->admitted[g], open_gen[g] ? 5 : 0);
    free(x->admitted);
    free(open_gen);
    free(x);
}

/* ---- concurrency: processes ---- */

#define PROCS 6

typedef struct proc_region {
    br_shared_t s;
    uint32_t go;       /* atomic: start flag */
    uint32_t admitted; /* atomic */
    uint32_t spins;    /* atomic: evidence that children are running */
} proc_region_t;

static proc_region_t *map_region(void)
{
    void *p = mmap(NULL, sizeof(proc_region_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    assert_true(p != MAP_FAILED);
    memset(p, 0, sizeof(proc_region_t));
    return p;
}

static void claim_child(proc_region_t *m, uint64_t now)
{
    while (!__atomic_load_n(&m->go, __ATOMIC_ACQUIRE))
        ;
    for (int i = 0; i < 20000; i++) {
        br_ticket_t t;
        if (br_admit(&m->s, now, &t) == BR_ADMIT && t.trial)
            __atomic_add_fetch(&m->admitted, 1, __ATOMIC_RELAXED);
    }
    _exit(0);
}

static void half_open_admits_exactly_n_trials_across_processes(void **state)
{
    (void)state;
    proc_region_t *m = map_region();
    br_breaker_t b;
    br_config_t c = config(7);
    pid_t pids[PROCS];
    int status;

    br_shared_init(&m->s);
    br_breaker_init(&b, &c, 0);
    trip_at(&b, &m->s, 0);
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0)
            claim_child(m, 1000);
    }
    __atomic_store_n(&m->go, 1, __ATOMIC_RELEASE);
    br_breaker_tick(&b, 1000, NULL); /* the owner moves to half_open meanwhile */
    br_breaker_publish(&b, &m->s, 1000);
    for (int i = 0; i < PROCS; i++) {
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    assert_int_equal(m->admitted, 7);
    br_breaker_publish(&b, &m->s, 1000);
    br_snapshot_t snap;
    br_shared_read(&m->s, &snap);
    assert_int_equal(snap.state, BR_STATE_HALF_OPEN);
    assert_int_equal(snap.permits, 0);
    munmap(m, sizeof *m);
}

static void spin_child(proc_region_t *m)
{
    for (;;) {
        br_ticket_t t;
        br_snapshot_t snap;
        br_admit(&m->s, UINT64_MAX / 2, &t);
        br_shared_read(&m->s, &snap);
        __atomic_add_fetch(&m->spins, 1, __ATOMIC_RELAXED);
    }
}

static void killed_workers_leave_nothing_locked(void **state)
{
    (void)state;
    proc_region_t *m = map_region();
    br_breaker_t b;
    br_config_t c = config(1000);
    pid_t pids[PROCS];
    uint64_t now = 0;

    br_shared_init(&m->s);
    br_breaker_init(&b, &c, 0);
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0)
            spin_child(m);
    }
    /* the owner keeps publishing while workers claim, and kills them at arbitrary points */
    for (int i = 0; i < PROCS; i++) {
        for (int k = 0; k < 200; k++) {
            trip_at(&b, &m->s, now);
            now += 1000;
            br_breaker_tick(&b, now, NULL);
            br_breaker_publish(&b, &m->s, now);
            reset_at(&b, &m->s, now);
        }
        kill(pids[i], SIGKILL);
        waitpid(pids[i], NULL, 0);
    }
    assert_true(__atomic_load_n(&m->spins, __ATOMIC_RELAXED) > 0);
    /* the survivors' view: the owner can still publish and readers still read */
    trip_at(&b, &m->s, now);
    br_snapshot_t snap;
    br_shared_read(&m->s, &snap);
    assert_int_equal(snap.state, BR_STATE_OPEN);
    assert_int_equal(snap.generation, b.generation);
    assert_int_equal(snap.open_until, now + 1000);
    br_ticket_t t;
    assert_int_equal(br_admit(&m->s, now + 1000, &t), BR_ADMIT);
    assert_true(t.trial);
    munmap(m, sizeof *m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(word_encoding_round_trips),
        cmocka_unit_test(zero_filled_memory_is_closed),
        cmocka_unit_test(publish_reports_whether_it_changed_anything),
        cmocka_unit_test(publish_never_writes_the_slot_readers_use),
        cmocka_unit_test(owner_keeps_worker_claims_when_moving_to_half_open),
        cmocka_unit_test(a_new_generation_gets_a_fresh_batch),
        cmocka_unit_test(published_state_is_never_torn),
        cmocka_unit_test(half_open_admits_exactly_n_trials_under_concurrency),
        cmocka_unit_test(half_open_admits_exactly_n_trials_across_processes),
        cmocka_unit_test(killed_workers_leave_nothing_locked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
