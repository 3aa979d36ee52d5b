/*
 * test_breaker_keytable.c - the per-key limiter table (breaker/keytable.c) with an injected
 * clock: geometry and memory, eviction order, the no-free-refill invariant under churn (against
 * an unbounded reference), a full table, two processes sharing one table exactly, crashes at
 * exact points of the locked path (through keytable_int.h), SIGKILL mid-hammer, and threads.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "keytable_int.h"

#define US 1000ull
#define MS 1000000ull
#define SEC 1000000000ull

typedef struct table {
    br_keytable_t *t;
    void *mem;
    size_t size;
} table_t;

static void *map_shared(size_t size)
{
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(mem != MAP_FAILED);
    return mem;
}

static br_gcra_params_t params(uint64_t tokens, uint64_t period_ms, uint32_t burst)
{
    br_gcra_params_t p;
    assert_int_equal(br_gcra_params_init(&p, tokens, period_ms, burst), 0);
    return p;
}

static br_keytable_config_t config(uint32_t max_keys, br_gcra_params_t p)
{
    br_keytable_config_t cfg = {.max_keys = max_keys, .params = p};
    for (int i = 0; i < 16; i++)
        cfg.hash_key[i] = (uint8_t)i;
    return cfg;
}

static table_t make(uint32_t max_keys, uint64_t tokens, uint64_t period_ms, uint32_t burst)
{
    table_t x;
    br_keytable_config_t cfg = config(max_keys, params(tokens, period_ms, burst));
    x.size = br_keytable_size(max_keys);
    assert_true(x.size > 0);
    x.mem = map_shared(x.size);
    assert_int_equal(br_keytable_init(&x.t, x.mem, x.size, &cfg), 0);
    return x;
}

static void drop(table_t *x)
{
    munmap(x->mem, x->size);
}

static int admit(table_t *x, uint64_t key, uint64_t now)
{
    int rc = br_keytable_admit(x->t, key, now, NULL);
    assert_true(rc == 0 || rc == 1);
    return rc;
}

/* Slot of a key (keytable_int.h), or NULL when the table does not hold it. */
static uint64_t *tat_of(table_t *x, uint64_t key_hash, uint64_t **key_word)
{
    uint64_t k = br_kt_key(key_hash), s[2];
    br_kt_candidates(x->t, k, &s[0], &s[1]);
    for (int c = 0; c < 2; c++) {
        br_kt_set_t *set = &br_kt_sets(x->t)[s[c]];
        for (uint32_t w = 0; w < BR_KT_WAYS; w++)
            if (set->key[w] == k) {
                if (key_word != NULL)
                    *key_word = &set->key[w];
                return &set->tat[w];
            }
    }
    return NULL;
}

static bool present(table_t *x, uint64_t key_hash)
{
    return tat_of(x, key_hash, NULL) != NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Every key is in one of its two candidate sets, at most once; returns the keys held and the
 * number of frozen slots. */
static uint64_t check_integrity(table_t *x, uint64_t *frozen)
{
    uint64_t n = 0, *keys = calloc(x->t->max_keys, sizeof *keys);
    assert_non_null(keys);
    *frozen = 0;
    for (uint64_t s = 0; s < x->t->nsets; s++) {
        br_kt_set_t *set = &br_kt_sets(x->t)[s];
        for (uint32_t w = 0; w < BR_KT_WAYS; w++) {
            *frozen += (set->tat[w] & BR_KT_FROZEN) != 0;
            if (set->key[w] == 0)
                continue;
            uint64_t s1, s2;
            br_kt_candidates(x->t, set->key[w], &s1, &s2);
            assert_true(s == s1 || s == s2);
            keys[n++] = set->key[w];
        }
    }
    qsort(keys, n, sizeof *keys, cmp_u64);
    for (uint64_t i = 1; i < n; i++)
        assert_true(keys[i] != keys[i - 1]);
    free(keys);
    return n;
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* Reference: the unbounded limiter, one GCRA word per key. */
static bool ref_take(const br_gcra_params_t *p, uint64_t *tat, uint64_t now)
{
    uint64_t next;
    bool ok = br_gcra_decide(p, *tat, now, &next, NULL);
    *tat = next;
    return ok;
}

/* ---- geometry, init, hashing ---- */

static void size_init_attach_and_compatibility(void **state)
{
    (void)state;
    br_keytable_t *t;

    assert_int_equal(br_keytable_size(0), 0);
    assert_int_equal(br_keytable_size(BR_KEYTABLE_MAX_KEYS + 1u), 0);
    /* documented: 1.25 slots of 20 bytes per key (16 key + 16 TAT + 8 ghost words per
     * 320-byte set), 64 KiB of locks, a 192-byte header */
    size_t one_m = br_keytable_size(1000000);
    assert_int_equal(one_m, 192 + 1024 * 64 + 78125 * 320);
    assert_int_equal(one_m, 25065728);
    assert_true(one_m <= 64u << 20);
    print_message("max_keys=1000000: %zu bytes (%.2f MiB), %.1f bytes per key\n", one_m,
                  one_m / 1048576.0, one_m / 1e6);
    assert_int_equal(br_keytable_size(8), 192 + 64 + 320);          /* 10 slots: one set */
    assert_int_equal(br_keytable_size(13), 192 + 2 * 64 + 2 * 320); /* 17 slots: two */

    br_keytable_config_t cfg = config(100, params(100, 1000, 50));
    size_t size = br_keytable_size(100);
    char *mem = map_shared(size + 64);
    assert_int_equal(br_keytable_init(&t, mem + 8, size, &cfg), -EINVAL); /* misaligned */
    assert_int_equal(br_keytable_init(&t, mem, size - 1, &cfg), -EINVAL); /* too small */
    assert_int_equal(br_keytable_attach(&t, mem, size), -EINVAL);         /* not formatted */
    cfg.max_keys = 0;
    assert_int_equal(br_keytable_init(&t, mem, size, &cfg), -EINVAL);
    cfg.max_keys = 100;
    cfg.params.interval++; /* not from br_gcra_params_init() */
    assert_int_equal(br_keytable_init(&t, mem, size, &cfg), -EINVAL);
    cfg.params.interval--;
    assert_int_equal(br_keytable_init(&t, mem, size, &cfg), 0);
    assert_ptr_equal(t, mem);

    br_keytable_t *again;
    assert_int_equal(br_keytable_attach(&again, mem, size), 0);
    assert_ptr_equal(again, t);
    assert_int_equal(br_keytable_attach(&again, mem, size - 1), -EINVAL);

    /* a reload keeps the table only when the limit and the size are unchanged */
    br_gcra_params_t same = params(6000, 60000, 50), other = params(100, 1000, 51);
    assert_true(br_keytable_compatible(t, 100, &same));
    assert_false(br_keytable_compatible(t, 100, &other));
    assert_false(br_keytable_compatible(t, 101, &same));
    assert_true(br_gcra_params_equal(br_keytable_params(t), &same));
    munmap(mem, size + 64);
}

static void siphash_matches_reference_vectors(void **state)
{
    (void)state;
    table_t x = make(8, 1, 1000, 1); /* hash key 00 01 .. 0f, as in the SipHash paper */
    uint8_t msg[15];
    for (int i = 0; i < 15; i++)
        msg[i] = (uint8_t)i;
    assert_int_equal(br_keytable_hash(x.t, msg, 0), 0x726fdb47dd0e0e31ull);
    assert_int_equal(br_keytable_hash(x.t, msg, 15), 0xa129ca6149be45e5ull);
    assert_int_equal(br_keytable_hash(x.t, msg, 8), 0x93f5f5799a932462ull);
    drop(&x);
}

/* ---- behaviour ---- */

static void new_keys_get_a_full_burst_and_are_independent(void **state)
{
    (void)state;
    table_t x = make(1000, 10, 1000, 5);
    br_gcra_info_t info;
    br_keytable_stats_t st;

    for (uint64_t k = 0; k < 200; k++) {
        for (int i = 0; i < 5; i++) {
            assert_int_equal(br_keytable_admit(x.t, k, 10 * SEC, &info), 1);
            assert_int_equal(info.remaining, 4 - i);
        }
        assert_int_equal(br_keytable_admit(x.t, k, 10 * SEC, &info), 0);
        assert_int_equal(info.retry_after_ns, 100 * MS);
        assert_int_equal(info.retry_after_s, 1);
    }
    br_keytable_stats(x.t, &st);
    assert_int_equal(st.capacity, 1000);
    assert_int_equal(st.in_use, 200);
    assert_int_equal(st.evictions, 0);
    uint64_t frozen;
    assert_int_equal(check_integrity(&x, &frozen), 200);
    assert_int_equal(frozen, 0);
    /* an older clock reading (another worker) is not a refill */
    assert_int_equal(admit(&x, 7, 10 * SEC - 5 * MS), 0);
    assert_int_equal(admit(&x, 7, 10 * SEC + 100 * MS), 1);
    drop(&x);
}

static void eviction_prefers_full_buckets_in_lru_order(void **state)
{
    (void)state;
    table_t x = make(8, 1, 1000, 1); /* 8 keys at most (one set); 1/s, burst 1 */
    br_keytable_stats_t st;

    for (uint64_t k = 0; k < 8; k++) /* key k: TAT = 2 s + k ms */
        assert_int_equal(admit(&x, k, 1 * SEC + k * MS), 1);
    uint64_t now = 2 * SEC + 3500 * US;       /* keys 0..3 are full again, 4..7 still refilling */
    assert_int_equal(admit(&x, 100, now), 1); /* a full burst: the victim's state was "full" */
    assert_false(present(&x, 0));
    assert_int_equal(admit(&x, 101, now), 1);
    assert_false(present(&x, 1));
    for (uint64_t k = 2; k < 8; k++)
        assert_true(present(&x, k));
    br_keytable_stats(x.t, &st);
    assert_int_equal(st.in_use, 8);
    assert_int_equal(st.evictions, 2);
    assert_int_equal(st.evictions_active, 0);
    /* key 0 returns: its bucket was full, so it is simply admitted */
    assert_int_equal(admit(&x, 0, now), 1);
    drop(&x);
}

static void table_full_behaviour(void **state)
{
    (void)state;
    table_t x = make(8, 1, 1000, 2); /* 1/s, burst 2, capacity 2 s */
    br_keytable_stats_t st;
    br_gcra_info_t info;

    /* 8 keys drained at 10 s + k * 100 ms: TAT = 12 s + k * 100 ms, none full before 12 s */
    for (uint64_t k = 0; k < 8; k++) {
        assert_int_equal(admit(&x, k, 10 * SEC + k * 100 * MS), 1);
        assert_int_equal(admit(&x, k, 10 * SEC + k * 100 * MS), 1);
    }
    /* At 10.8 s every candidate is draining. The newcomer takes the slot with the least debt
     * (key 0) and inherits that debt plus one tick: denied now, first token at 11 s + 1 us. */
    uint64_t now = 10 * SEC + 800 * MS;
    assert_int_equal(br_keytable_admit(x.t, 50, now, &info), 0);
    assert_int_equal(info.retry_after_ns, 200 * MS + 1 * US);
    assert_false(present(&x, 0));
    br_keytable_stats(x.t, &st);
    assert_int_equal(st.in_use, 8);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.evictions_active, 1);

    /* key 0 comes back at once: judged against its own TAT (12 s), still denied, exactly as
     * the unbounded reference would; it displaced the newcomer (the smaller TAT) */
    assert_int_equal(br_keytable_admit(x.t, 0, now, &info), 0);
    assert_true(info.retry_after_ns >= 200 * MS);
    assert_false(present(&x, 50));
    /* the reference admits key 0 again at 11 s; the table at most 2 us later (two ticks of
     * inherited "+1"), never earlier */
    assert_int_equal(admit(&x, 0, 11 * SEC - 1), 0);
    assert_int_equal(admit(&x, 0, 11 * SEC + 2 * US), 1);
    /* once time has passed the ghosts are harmless: forgotten keys come back full */
    for (uint64_t k = 100; k < 107; k++) /* 7 newcomers replace keys 1..7 (TATs < 13 s) */
        assert_int_equal(admit(&x, k, 20 * SEC), 1);
    assert_false(present(&x, 3));
    assert_int_equal(admit(&x, 3, 20 * SEC), 1); /* replaces key 0, full since 13 s */
    assert_int_equal(admit(&x, 3, 20 * SEC), 1);
    assert_int_equal(admit(&x, 3, 20 * SEC), 0);
    uint64_t frozen;
    assert_true(check_integrity(&x, &frozen) <= 8);
    drop(&x);
}

static void eviction_under_key_churn_never_refills(void **state)
{
    (void)state;
    /* A drained key is evicted by churn and returns: it gets no more than it would have. */
    {
        table_t x = make(64, 10, 1000, 10); /* 10/s, burst 10 */
        br_gcra_params_t p = *br_keytable_params(x.t);
        uint64_t t0 = 100 * SEC, ref = 0, a = 1u << 30;
        for (int i = 0; i < 10; i++) {
            assert_int_equal(admit(&x, a, t0), 1);
            ref_take(&p, &ref, t0);
        }
        assert_int_equal(admit(&x, a, t0), 0);
        /* churn: 20000 new keys in 200 ms, each drained (TAT later than A's), so A becomes
         * its candidates' smallest TAT and is evicted while still draining */
        for (uint64_t j = 0; j < 20000; j++)
            for (int i = 0; i < 11; i++)
                admit(&x, j, t0 + j * 10 * US);
        assert_false(present(&x, a));
        br_keytable_stats_t st;
        br_keytable_stats(x.t, &st);
        assert_true(st.evictions_active > 0); /* the fallback ran, not only full evictions */
        uint64_t back = t0 + 200 * MS, got = 0, want = 0;
        for (int i = 0; i < 20; i++) {
            got += (uint64_t)admit(&x, a, back);
            want += ref_take(&p, &ref, back);
        }
        assert_int_equal(want, 2);
        assert_true(got <= want);
        drop(&x);
    }
    /* Property: random keys (a few hot ones) over a table smaller than the key space. For
     * every key, at every moment, the table has admitted no more than the unbounded reference.
     * Regimes: overloaded (more keys active within burst / rate than max_keys: evictions of
     * draining buckets, the conservative fallback) and right-sized (evictions of full buckets
     * only, which cost nothing: the table then matches the reference). */
    const struct {
        uint32_t max_keys, burst, min_percent;
    } regimes[] = {{32, 1, 0}, {32, 20, 0}, {160, 1, 99}, {320, 3, 99}};
    for (size_t r = 0; r < sizeof regimes / sizeof regimes[0]; r++) {
        enum { KEYS = 400 };
        table_t x = make(regimes[r].max_keys, 10, 1000, regimes[r].burst);
        br_gcra_params_t p = *br_keytable_params(x.t);
        uint64_t ref[KEYS] = {0}, got[KEYS] = {0}, want[KEYS] = {0}, now = 5 * SEC;
        uint64_t total_got = 0, total_want = 0;
        for (int i = 0; i < 200000; i++) {
            now += rnd() % (3 * MS);
            uint64_t k = rnd() % 8 == 0 ? rnd() % 4 : rnd() % KEYS; /* keys 0..3 are hot */
            got[k] += (uint64_t)admit(&x, k, now);
            want[k] += ref_take(&p, &ref[k], now);
            assert_true(got[k] <= want[k]);
        }
        for (int k = 0; k < KEYS; k++) {
            total_got += got[k];
            total_want += want[k];
        }
        br_keytable_stats_t st;
        br_keytable_stats(x.t, &st);
        print_message("max_keys %u burst %u: admitted %lu of the reference's %lu; evictions "
                      "%lu (%lu of draining buckets)\n",
                      regimes[r].max_keys, regimes[r].burst, (unsigned long)total_got,
                      (unsigned long)total_want, (unsigned long)st.evictions,
                      (unsigned long)st.evictions_active);
        assert_true(st.evictions > 0);
        if (regimes[r].min_percent == 0)
            assert_true(st.evictions_active > 0);
        assert_true(total_got * 100 >= total_want * regimes[r].min_percent);
        uint64_t frozen;
        assert_int_equal(check_integrity(&x, &frozen), regimes[r].max_keys);
        assert_int_equal(frozen, 0);
        drop(&x);
    }
}

static void max_keys_distinct_keys_fit(void **state)
{
    (void)state;
    /* max_keys distinct keys, all active at once (each took the only token of a 1/s bucket):
     * all are held, none is evicted by a placement conflict; one more key evicts one. */
    const uint32_t n = 1000000;
    table_t x = make(n, 1, 1000, 1);
    br_keytable_stats_t st;

    for (uint32_t k = 0; k < n; k++)
        assert_int_equal(admit(&x, br_keytable_hash(x.t, &k, sizeof k), 10 * SEC), 1);
    br_keytable_stats(x.t, &st);
    print_message("%u keys in %zu bytes: %lu held, %lu evictions\n", n, x.size,
                  (unsigned long)st.in_use, (unsigned long)st.evictions);
    assert_int_equal(st.in_use, n);
    assert_int_equal(st.evictions, 0);
    for (uint32_t k = n; k < n + 1000; k++)
        admit(&x, br_keytable_hash(x.t, &k, sizeof k), 10 * SEC);
    br_keytable_stats(x.t, &st);
    assert_int_equal(st.in_use, n);
    assert_int_equal(st.evictions, 1000);
    assert_int_equal(st.evictions_active, 1000);
    drop(&x);
}

/* ---- processes ---- */

#define PROC_STEPS 5000
#define PROC_TRIES 3

typedef struct shared_ctl {
    uint64_t arrived;
    uint64_t admitted[2];
} shared_ctl_t;

static void proc_barrier(shared_ctl_t *c, uint64_t step, uint64_t parties)
{
    __atomic_fetch_add(&c->arrived, 1, __ATOMIC_ACQ_REL);
    while (__atomic_load_n(&c->arrived, __ATOMIC_ACQUIRE) < parties * (step + 1))
        sched_yield();
}

static void two_processes_share_one_table_exactly(void **state)
{
    (void)state;
    table_t x = make(1024, 1000, 1000, 20); /* 1 per ms; demand is 6 per ms */
    shared_ctl_t *ctl = map_shared(sizeof *ctl);
    br_gcra_params_t p = *br_keytable_params(x.t);
    const uint64_t hot = 42, t0 = 1000 * SEC;
    pid_t pid[2];

    for (int c = 0; c < 2; c++) {
        pid[c] = fork();
        assert_true(pid[c] >= 0);
        if (pid[c] == 0) {
            uint64_t mine = 0;
            for (uint64_t s = 0; s < PROC_STEPS; s++) {
                proc_barrier(ctl, s, 2); /* both at the same simulated time */
                uint64_t now = t0 + s * MS;
                for (int i = 0; i < PROC_TRIES; i++) {
                    int rc = br_keytable_admit(x.t, hot, now, NULL);
                    /* churn through the locked path too: a new key every try */
                    int rc2 =
                        br_keytable_admit(x.t, (uint64_t)c << 40 | s << 8 | (uint64_t)i, now, NULL);
                    if (rc < 0 || rc2 < 0)
                        _exit(2);
                    mine += (uint64_t)rc;
                }
            }
            ctl->admitted[c] = mine;
            _exit(0);
        }
    }
    for (int c = 0; c < 2; c++) {
        int status;
        assert_int_equal(waitpid(pid[c], &status, 0), pid[c]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    /* what one process would admit: the same demand, in order, on one word */
    uint64_t ref = 0, expect = 0;
    for (uint64_t s = 0; s < PROC_STEPS; s++)
        for (int i = 0; i < 2 * PROC_TRIES; i++)
            expect += ref_take(&p, &ref, t0 + s * MS);
    print_message("two processes admitted %lu + %lu = %lu; one process: %lu\n",
                  (unsigned long)ctl->admitted[0], (unsigned long)ctl->admitted[1],
                  (unsigned long)(ctl->admitted[0] + ctl->admitted[1]), (unsigned long)expect);
    assert_int_equal(ctl->admitted[0] + ctl->admitted[1], expect);
    assert_int_equal(*tat_of(&x, hot, NULL), ref);
    br_keytable_stats_t st;
    br_keytable_stats(x.t, &st);
    assert_true(st.evictions > 0);
    uint64_t frozen;
    assert_int_equal(check_integrity(&x, &frozen), 1024);
    assert_int_equal(frozen, 0);
    munmap(ctl, sizeof *ctl);
    drop(&x);
}

/* A key whose candidate sets include set s (for placing it in a given slot). */
static uint64_t key_with_set(table_t *x, uint64_t s, uint64_t avoid)
{
    for (uint64_t h = 1000;; h++) {
        uint64_t s1, s2;
        br_kt_candidates(x->t, br_kt_key(h), &s1, &s2);
        if ((s1 == s || s2 == s) && h != avoid && !present(x, h))
            return h;
    }
}

/* The slot of key h: its set and way. */
static void slot_of(table_t *x, uint64_t h, uint64_t *set, uint32_t *way)
{
    uint64_t *key_word, *tat = tat_of(x, h, &key_word);
    assert_non_null(tat);
    uint64_t off = (uint64_t)((char *)tat - (char *)br_kt_sets(x->t));
    *set = off / sizeof(br_kt_set_t);
    *way = (uint32_t)(tat - br_kt_sets(x->t)[*set].tat);
}

typedef enum crash_point {
    CRASH_HOLDING_LOCK = 0, /* locked, nothing changed */
    CRASH_FROZEN,           /* ghost recorded, victim frozen */
    CRASH_KEY_SWITCHED,     /* ... and the newcomer's key stored, its TAT not yet */
} crash_point_t;

/* Runs the first steps of an eviction of `victim` by `newcomer` in a child, which then dies by
 * SIGKILL while holding the set locks. */
static void crash_child(table_t *x, uint64_t victim, uint64_t newcomer, crash_point_t at)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        uint64_t set;
        uint32_t way;
        slot_of(x, victim, &set, &way);
        br_kt_set_t *st = &br_kt_sets(x->t)[set];
        pthread_mutex_lock(br_kt_set_lock(x->t, set));
        if (at >= CRASH_FROZEN) {
            uint64_t v = st->tat[way];
            uint64_t *g = &st->ghost[br_kt_ghost_index(st->key[way])];
            if (*g < v)
                *g = v;
            st->tat[way] = v | BR_KT_FROZEN;
        }
        if (at >= CRASH_KEY_SWITCHED)
            st->key[way] = br_kt_key(newcomer);
        kill(getpid(), SIGKILL);
        _exit(3);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

static void crash_in_locked_path_is_repaired_without_refill(void **state)
{
    (void)state;
    alarm(20); /* a lock left held forever would hang here: fail instead */
    for (crash_point_t at = CRASH_HOLDING_LOCK; at <= CRASH_KEY_SWITCHED; at++) {
        table_t x = make(64, 1, 1000, 2); /* 1/s, burst 2 */
        const uint64_t a = 7;
        assert_int_equal(admit(&x, a, 10 * SEC), 1);
        assert_int_equal(admit(&x, a, 10 * SEC), 1); /* A drained: TAT 12 s */
        uint64_t set;
        uint32_t way;
        slot_of(&x, a, &set, &way);
        uint64_t b = key_with_set(&x, set, a);

        crash_child(&x, a, b, at);

        /* B needs the dead child's lock (it is absent, or frozen in A's slot) */
        br_gcra_info_t info;
        int rc = br_keytable_admit(x.t, b, 10 * SEC + 500 * MS, &info);
        br_keytable_stats_t st;
        br_keytable_stats(x.t, &st);
        assert_int_equal(st.lock_recoveries, 1);
        uint64_t frozen;
        check_integrity(&x, &frozen);
        assert_int_equal(frozen, 0);
        if (at == CRASH_KEY_SWITCHED) {
            /* B took A's slot: it starts from A's TAT + 1 tick (conservative), not from 0 */
            assert_int_equal(rc, 0);
            assert_int_equal(*tat_of(&x, b, NULL), 12 * SEC / US + 1);
        } else {
            assert_int_equal(rc, 1);
        }
        /* A, present (repaired) or forgotten (ghost), gets no token before 11 s, as the
         * reference would (12 s + 1 s - 11 s = 2 s of capacity), at most 1 us later */
        assert_int_equal(admit(&x, a, 10 * SEC + 999 * MS), 0);
        assert_int_equal(admit(&x, a, 11 * SEC + 1 * US), 1);
        assert_int_equal(admit(&x, a, 11 * SEC + 1 * US), 0);
        drop(&x);
    }
    alarm(0);
}

static void sigkill_mid_hammer_leaves_table_usable(void **state)
{
    (void)state;
    table_t x = make(256, 100, 1000, 5);
    shared_ctl_t *ctl = map_shared(sizeof *ctl);
    uint64_t kills = 0;

    alarm(50);
    for (int round = 0; round < 30; round++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            /* mostly new keys: nearly every call takes the set locks */
            uint64_t now = 10 * SEC + (uint64_t)round * 10 * SEC;
            for (uint64_t i = 0;; i++) {
                br_keytable_admit(x.t, i % 16 == 0 ? i % 5 : (uint64_t)round << 32 | i, now, NULL);
                now += 10 * US;
                if (i == 100)
                    __atomic_store_n(&ctl->arrived, 1, __ATOMIC_RELEASE);
            }
        }
        while (__atomic_load_n(&ctl->arrived, __ATOMIC_ACQUIRE) == 0)
            sched_yield();
        usleep((useconds_t)(200 + rnd() % 3000));
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        kills += WIFSIGNALED(status);
        __atomic_store_n(&ctl->arrived, 0, __ATOMIC_RELEASE);

        /* the parent carries on through every set: nothing hangs, nothing is duplicated */
        uint64_t now = 10 * SEC + (uint64_t)round * 10 * SEC + 5 * SEC;
        for (uint64_t k = 0; k < 2000; k++)
            admit(&x, (uint64_t)0xabc << 40 | (uint64_t)round << 20 | k, now);
        uint64_t frozen;
        check_integrity(&x, &frozen);
        assert_int_equal(frozen, 0); /* 2000 keys over 32 sets: every set was repaired */
    }
    alarm(0);
    br_keytable_stats_t st;
    br_keytable_stats(x.t, &st);
    print_message("%lu children killed mid-hammer; %lu locks recovered from dead holders\n",
                  (unsigned long)kills, (unsigned long)st.lock_recoveries);
    assert_int_equal(kills, 30);
    munmap(ctl, sizeof *ctl);
    drop(&x);
}

/* ---- threads (also built with -fsanitize=thread) ---- */

#define THREADS 4
#define THREAD_STEPS 2000

typedef struct thread_ctx {
    pthread_barrier_t barrier;
    table_t *x;
    uint64_t admitted[THREADS];
    int failed;
} thread_ctx_t;

typedef struct thread_arg {
    thread_ctx_t *ctx;
    uint64_t id;
} thread_arg_t;

static void *thread_main(void *arg)
{
    thread_arg_t *a = arg;
    for (uint64_t s = 0; s < THREAD_STEPS; s++) {
        pthread_barrier_wait(&a->ctx->barrier);
        uint64_t now = 50 * SEC + s * MS;
        for (uint64_t i = 0; i < 3; i++) {
            int rc = br_keytable_admit(a->ctx->x->t, 42, now, NULL);
            int rc2 = br_keytable_admit(a->ctx->x->t, a->id << 40 | s << 8 | i, now, NULL);
            if (rc < 0 || rc2 < 0)
                __atomic_store_n(&a->ctx->failed, 1, __ATOMIC_RELAXED);
            a->ctx->admitted[a->id] += (uint64_t)(rc > 0);
        }
    }
    return NULL;
}

static void threads_share_one_table_exactly(void **state)
{
    (void)state;
    table_t x = make(512, 1000, 1000, 10);
    br_gcra_params_t p = *br_keytable_params(x.t);
    thread_ctx_t ctx;
    thread_arg_t args[THREADS];
    pthread_t th[THREADS];
    uint64_t ref = 0, expect = 0, total = 0;

    memset(&ctx, 0, sizeof ctx);
    ctx.x = &x;
    for (uint64_t s = 0; s < THREAD_STEPS; s++)
        for (int i = 0; i < THREADS * 3; i++)
            expect += ref_take(&p, &ref, 50 * SEC + s * MS);
    assert_int_equal(pthread_barrier_init(&ctx.barrier, NULL, THREADS), 0);
    for (int i = 0; i < THREADS; i++) {
        args[i] = (thread_arg_t){&ctx, (uint64_t)i};
        assert_int_equal(pthread_create(&th[i], NULL, thread_main, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        total += ctx.admitted[i];
    }
    pthread_barrier_destroy(&ctx.barrier);
    assert_int_equal(ctx.failed, 0);
    assert_int_equal(total, expect);
    uint64_t frozen;
    assert_int_equal(check_integrity(&x, &frozen), 512);
    assert_int_equal(frozen, 0);
    drop(&x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(size_init_attach_and_compatibility),
        cmocka_unit_test(siphash_matches_reference_vectors),
        cmocka_unit_test(new_keys_get_a_full_burst_and_are_independent),
        cmocka_unit_test(eviction_prefers_full_buckets_in_lru_order),
        cmocka_unit_test(table_full_behaviour),
        cmocka_unit_test(eviction_under_key_churn_never_refills),
        cmocka_unit_test(max_keys_distinct_keys_fit),
        cmocka_unit_test(two_processes_share_one_table_exactly),
        cmocka_unit_test(crash_in_locked_path_is_repaired_without_refill),
        cmocka_unit_test(sigkill_mid_hammer_leaves_table_usable),
        cmocka_unit_test(threads_share_one_table_exactly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
