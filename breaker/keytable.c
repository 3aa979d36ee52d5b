/*
 * keytable.c - per-key GCRA state for one route in shared memory (see keytable.h for the design
 * and keytable_int.h for the layout; docs/ratelimit.md has the proofs in full).
 *
 * A slot's states and who moves it (key word, TAT word):
 *
 *        claim (slow path, under the set locks)
 *   FREE (0, t) --------------------------------> LIVE (K, t')        t' = max(ghost(K), t + 1)
 *                                                  |  ^  admit: CAS t -> max(t, now) + T > t
 *                                                  |  |  (fast path, any process, lock-free)
 *          evict (slow path): ghost[K] = max(., t) |  +--+
 *          then CAS t -> FROZEN|t                  v
 *                                             FROZEN (K, F|t)
 *                    store key K2 (slow path)      |
 *                                                  v
 *                                             FROZEN (K2, F|t)
 *                    store t2 = max(ghost(K2), t + 1)  --> LIVE (K2, t2)
 *
 * Invariants:
 *   I1  Key words change only under the locks of the slot's set, and only while the slot is FREE
 *       or FROZEN. The slow path inserts a key only after checking both of its sets under both
 *       locks, so a key is never in two slots.
 *   I2  A slot's TAT value (ignoring the FROZEN bit) never decreases, and every change of the
 *       word makes it differ from every earlier value except FROZEN|t after t. So a fast-path
 *       CAS from a value it loaded succeeds only if the word did not change since the load, and
 *       then (by I1) the key word did not change either: it still names the caller's key. A
 *       denial is likewise returned only if the word still holds the value it was decided on
 *       after the key check, so (key, TAT) was a snapshot at that check.
 *   I3  ghost(K) = max of K's ghost words in its two sets is >= the TAT of every slot K ever
 *       left; a key entering a slot starts at >= ghost(K). With I2, the TAT a key is judged
 *       against is never earlier than the one an unbounded table would hold for it, and since
 *       admission is monotone in the TAT, eviction never refills (proof: docs/ratelimit.md).
 *   I4  A FROZEN slot exists only inside a slow-path critical section. Whoever holds the set's
 *       lock and still sees one knows its maker died, and repairs it: TAT = max(ghost(key),
 *       t + 1), whatever key it shows (the old key keeps its state, the new one starts safely).
 *
 * Capacity: in_use is reserved (CAS below max_keys) before a free slot is claimed, so at most
 * max_keys keys are held; at max_keys a newcomer evicts even if a candidate slot is free. A
 * process killed between the reservation and the claim leaks one place (in_use stays 1 high).
 *
 * Crash safety: a process may die at any instruction. The fast path holds nothing. A death in
 * the slow path leaves one of the states above (every step is a single store or CAS) and a
 * robust mutex, whose next locker gets EOWNERDEAD, marks it consistent and repairs by I4.
 *
 * Callers: the gateway's workers (admit), the supervisor (size/init), metrics (stats).
 */
#include <errno.h>
#include <string.h>

#include "keytable_int.h"

_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0), "64-bit atomics must be lock-free");
_Static_assert(sizeof(br_kt_set_t) == 320, "a set is five cache lines");
_Static_assert(sizeof(br_kt_lock_t) == 64, "a lock is one cache line");
_Static_assert(BR_GCRA_TAT_LIMIT == BR_KT_FROZEN, "TATs leave bit 63 free for FROZEN");

#define FAST_PATH_TRIES 8 /* CAS failures before the fast path yields to the locked path */

/* ---- geometry ---- */

/* 25% more slots than keys, in whole sets (keytable_int.h says why). */
static uint64_t nsets_for(uint64_t max_keys)
{
    uint64_t slots = max_keys + (max_keys + 3) / 4;
    return (slots + BR_KT_WAYS - 1) / BR_KT_WAYS;
}

static uint64_t nlocks_for(uint64_t nsets)
{
    uint64_t n = 1;
    while (n < nsets && n < BR_KT_MAX_LOCKS)
        n <<= 1;
    return n;
}

static uint64_t align64(uint64_t v)
{
    return (v + 63) & ~(uint64_t)63;
}

size_t br_keytable_size(uint32_t max_keys)
{
    if (max_keys == 0 || max_keys > BR_KEYTABLE_MAX_KEYS)
        return 0;
    uint64_t nsets = nsets_for(max_keys);
    uint64_t locks_off = align64(sizeof(struct br_keytable));
    uint64_t sets_off = locks_off + nlocks_for(nsets) * sizeof(br_kt_lock_t);
    return (size_t)(sets_off + nsets * sizeof(br_kt_set_t));
}

/* ---- shared words ---- */

static uint64_t load(const uint64_t *w)
{
    return __atomic_load_n(w, __ATOMIC_ACQUIRE);
}

static void store(uint64_t *w, uint64_t v)
{
    __atomic_store_n(w, v, __ATOMIC_RELEASE);
}

static bool cas(uint64_t *w, uint64_t *expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(w, expected, desired, false, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

static void count(uint64_t *counter)
{
    __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

static uint64_t max64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* ghost(K): K may have been evicted from either of its sets. */
static uint64_t ghost_of(const br_keytable_t *t, uint64_t key)
{
    br_kt_set_t *sets = br_kt_sets(t);
    uint64_t s1, s2;
    unsigned g = br_kt_ghost_index(key);

    br_kt_candidates(t, key, &s1, &s2);
    return max64(load(&sets[s1].ghost[g]), load(&sets[s2].ghost[g]));
}

/* Way of `key` in set s, or -1. The loads acquire: a key word seen here was stored (release)
 * after the TAT its inserter wrote, so the caller's TAT load sees that TAT or a later one. A
 * hit is still validated by the caller (I2): the slot may change meanwhile. */
static int find_way(const br_keytable_t *t, uint64_t s, uint64_t key)
{
    br_kt_set_t *set = &br_kt_sets(t)[s];

    for (uint32_t w = 0; w < BR_KT_WAYS; w++)
        if (load(&set->key[w]) == key)
            return (int)w;
    return -1;
}

/* ---- init ---- */

static int init_locks(br_keytable_t *t)
{
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);

    if (rc != 0)
        return -rc;
    rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    for (uint64_t i = 0; rc == 0 && i < t->nlocks; i++)
        rc = pthread_mutex_init(&br_kt_locks(t)[i].m, &a);
    pthread_mutexattr_destroy(&a);
    return -rc;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int br_keytable_init(br_keytable_t **out, void *mem, size_t mem_size,
                     const br_keytable_config_t *cfg)
{
    size_t need = br_keytable_size(cfg->max_keys);
    br_keytable_t *t = mem;
    br_gcra_params_t check;

    if (need == 0 || mem_size < need || ((uintptr_t)mem & (BR_KEYTABLE_ALIGN - 1)) != 0)
        return -EINVAL;
    if (br_gcra_params_init(&check, cfg->params.tokens, cfg->params.period_ms, cfg->params.burst) !=
            0 ||
        !br_gcra_params_equal(&check, &cfg->params))
        return -EINVAL; /* params must come from br_gcra_params_init() */

    memset(mem, 0, need);
    t->version = BR_KT_VERSION;
    t->ways = BR_KT_WAYS;
    t->size = need;
    t->max_keys = cfg->max_keys;
    t->nsets = nsets_for(cfg->max_keys);
    t->nlocks = nlocks_for(t->nsets);
    t->locks_off = align64(sizeof(struct br_keytable));
    t->sets_off = t->locks_off + t->nlocks * sizeof(br_kt_lock_t);
    t->hash_k0 = le64(cfg->hash_key);
    t->hash_k1 = le64(cfg->hash_key + 8);
    t->params = check;
    int rc = init_locks(t);
    if (rc != 0)
        return rc;
    store(&t->magic, BR_KT_MAGIC); /* last: a half-formatted region never attaches */
    *out = t;
    return 0;
}

int br_keytable_attach(br_keytable_t **out, void *mem, size_t mem_size)
{
    br_keytable_t *t = mem;

    if (mem_size < sizeof *t || ((uintptr_t)mem & (BR_KEYTABLE_ALIGN - 1)) != 0 ||
        load(&t->magic) != BR_KT_MAGIC || t->version != BR_KT_VERSION || t->ways != BR_KT_WAYS ||
        t->max_keys > UINT32_MAX || br_keytable_size((uint32_t)t->max_keys) != t->size ||
        t->size > mem_size)
        return -EINVAL;
    *out = t;
    return 0;
}

bool br_keytable_compatible(const br_keytable_t *t, uint32_t max_keys,
                            const br_gcra_params_t *params)
{
    return t->max_keys == max_keys && br_gcra_params_equal(&t->params, params);
}

const br_gcra_params_t *br_keytable_params(const br_keytable_t *t)
{
    return &t->params;
}

void br_keytable_stats(const br_keytable_t *t, br_keytable_stats_t *out)
{
    out->capacity = t->max_keys;
    out->in_use = __atomic_load_n(&t->in_use, __ATOMIC_RELAXED);
    out->evictions = __atomic_load_n(&t->evictions, __ATOMIC_RELAXED);
    out->evictions_active = __atomic_load_n(&t->evictions_active, __ATOMIC_RELAXED);
    out->lock_recoveries = __atomic_load_n(&t->lock_recoveries, __ATOMIC_RELAXED);
}

/* ---- SipHash-2-4 (Aumasson and Bernstein), for br_keytable_hash() ---- */

static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static void sip_rounds(uint64_t v[4], int n)
{
    for (int i = 0; i < n; i++) {
        v[0] += v[1];
        v[1] = rotl(v[1], 13) ^ v[0];
        v[0] = rotl(v[0], 32);
        v[2] += v[3];
        v[3] = rotl(v[3], 16) ^ v[2];
        v[0] += v[3];
        v[3] = rotl(v[3], 21) ^ v[0];
        v[2] += v[1];
        v[1] = rotl(v[1], 17) ^ v[2];
        v[2] = rotl(v[2], 32);
    }
}

uint64_t br_keytable_hash(const br_keytable_t *t, const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t v[4] = {t->hash_k0 ^ 0x736f6d6570736575ull, t->hash_k1 ^ 0x646f72616e646f6dull,
                     t->hash_k0 ^ 0x6c7967656e657261ull, t->hash_k1 ^ 0x7465646279746573ull};
    uint64_t last = (uint64_t)len << 56;
    size_t i = 0;

    for (; i + 8 <= len; i += 8) {
        uint64_t m = le64(p + i);
        v[3] ^= m;
        sip_rounds(v, 2);
        v[0] ^= m;
    }
    for (size_t j = 0; i + j < len; j++)
        last |= (uint64_t)p[i + j] << (8 * j);
    v[3] ^= last;
    sip_rounds(v, 2);
    v[0] ^= last;
    v[2] ^= 0xff;
    sip_rounds(v, 4);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* ---- slow path: under the locks of the key's two sets ---- */

static int lock_one(br_keytable_t *t, pthread_mutex_t *m)
{
    int rc = pthread_mutex_lock(m);

    if (rc == EOWNERDEAD) {
        /* its holder died; what it left frozen is repaired by whoever touches the set (I4) */
        rc = pthread_mutex_consistent(m);
        if (rc != 0) {
            pthread_mutex_unlock(m);
            return -rc;
        }
        count(&t->lock_recoveries);
    }
    return -rc;
}

/* Locks in address order (one lock when both sets share it): no deadlock between processes. */
static int lock_pair(br_keytable_t *t, pthread_mutex_t *a, pthread_mutex_t *b)
{
    if (a == b)
        return lock_one(t, a);
    if (a > b) {
        pthread_mutex_t *x = a;
        a = b;
        b = x;
    }
    int rc = lock_one(t, a);
    if (rc == 0 && (rc = lock_one(t, b)) != 0)
        pthread_mutex_unlock(a);
    return rc;
}

static void unlock_pair(pthread_mutex_t *a, pthread_mutex_t *b)
{
    pthread_mutex_unlock(a);
    if (b != a)
        pthread_mutex_unlock(b);
}

/* I4: under set s's lock a FROZEN slot means its maker died mid-eviction. */
static void repair_set(br_keytable_t *t, uint64_t s)
{
    br_kt_set_t *set = &br_kt_sets(t)[s];

    for (uint32_t w = 0; w < BR_KT_WAYS; w++) {
        uint64_t v = load(&set->tat[w]);
        if ((v & BR_KT_FROZEN) == 0)
            continue;
        uint64_t key = load(&set->key[w]);
        uint64_t floor = (v & ~BR_KT_FROZEN) + 1;
        store(&set->tat[w], key != 0 ? max64(ghost_of(t, key), floor) : floor);
    }
}

typedef struct slot_ref {
    uint64_t set;
    uint32_t way;
} slot_ref_t;

/* A free way in the emptier of the two sets (the "two choices" balance), else false. */
static bool pick_free(const br_keytable_t *t, uint64_t s1, uint64_t s2, slot_ref_t *out)
{
    uint64_t cand[2] = {s1, s2};
    uint32_t best_free = 0;

    for (int c = 0; c < (s1 == s2 ? 1 : 2); c++) {
        br_kt_set_t *set = &br_kt_sets(t)[cand[c]];
        uint32_t nfree = 0, first = 0;
        for (uint32_t w = 0; w < BR_KT_WAYS; w++)
            if (load(&set->key[w]) == 0 && nfree++ == 0)
                first = w;
        if (nfree > best_free) {
            best_free = nfree;
            out->set = cand[c];
            out->way = first;
        }
    }
    return best_free > 0;
}

/* The victim: the occupied slot with the smallest TAT among the candidates (full longest, or
 * least in debt). False when every candidate slot is free. */
static bool pick_victim(const br_keytable_t *t, uint64_t s1, uint64_t s2, slot_ref_t *out)
{
    uint64_t cand[2] = {s1, s2}, best = UINT64_MAX;
    bool found = false;

    for (int c = 0; c < (s1 == s2 ? 1 : 2); c++) {
        br_kt_set_t *set = &br_kt_sets(t)[cand[c]];
        for (uint32_t w = 0; w < BR_KT_WAYS; w++) {
            uint64_t v = load(&set->tat[w]);
            if (load(&set->key[w]) != 0 && (!found || v < best)) {
                best = v;
                out->set = cand[c];
                out->way = w;
                found = true;
            }
        }
    }
    return found;
}

/* Takes one of the max_keys places, or returns false when all are taken. */
static bool reserve_key(br_keytable_t *t)
{
    uint64_t n = __atomic_load_n(&t->in_use, __ATOMIC_RELAXED);
    do {
        if (n >= t->max_keys)
            return false;
    } while (!__atomic_compare_exchange_n(&t->in_use, &n, n + 1, false, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    return true;
}

static void claim_free(br_keytable_t *t, slot_ref_t r, uint64_t key)
{
    br_kt_set_t *set = &br_kt_sets(t)[r.set];
    uint64_t init = max64(ghost_of(t, key), load(&set->tat[r.way]) + 1);

    store(&set->tat[r.way], init); /* TAT first: a dying claimer leaves a FREE slot */
    store(&set->key[r.way], key);
}

/* Replaces the victim's key by `key`: the steps of the diagram, each one store or CAS. */
static void evict(br_keytable_t *t, slot_ref_t r, uint64_t key, uint64_t now_ticks)
{
    br_kt_set_t *set = &br_kt_sets(t)[r.set];
    uint64_t *tat = &set->tat[r.way];
    uint64_t *ghost = &set->ghost[br_kt_ghost_index(load(&set->key[r.way]))];
    uint64_t v = load(tat);

    for (;;) {
        /* record before freezing (I3); a value a failed CAS leaves behind is merely strict */
        if (load(ghost) < v)
            store(ghost, v);
        if (cas(tat, &v, v | BR_KT_FROZEN))
            break; /* else a fast-path admission moved it: record the new value */
    }
    store(&set->key[r.way], key);
    store(tat, max64(ghost_of(t, key), v + 1));
    count(&t->evictions);
    if (v >= now_ticks)
        count(&t->evictions_active);
}

/* Decides on the slot that holds `key` (it cannot be frozen: we hold its lock and repaired). */
static int admit_at(br_keytable_t *t, slot_ref_t r, uint64_t now_ns, br_gcra_info_t *info)
{
    uint64_t *tat = &br_kt_sets(t)[r.set].tat[r.way];
    uint64_t v = load(tat);

    for (;;) {
        uint64_t next;
        if (!br_gcra_decide(&t->params, v, now_ns, &next, info))
            return 0;
        if (cas(tat, &v, next))
            return 1; /* fast-path peers may CAS meanwhile: decide again on their result */
    }
}

static int slow_path(br_keytable_t *t, uint64_t key, uint64_t s1, uint64_t s2, uint64_t now_ns,
                     br_gcra_info_t *info)
{
    pthread_mutex_t *l1 = br_kt_set_lock(t, s1), *l2 = br_kt_set_lock(t, s2);
    slot_ref_t r = {0, 0};
    int w, rc = lock_pair(t, l1, l2);

    if (rc != 0) {
        if (info != NULL)
            memset(info, 0, sizeof *info);
        return rc;
    }
    repair_set(t, s1);
    if (s2 != s1)
        repair_set(t, s2);
    if ((w = find_way(t, s1, key)) >= 0) {
        r = (slot_ref_t){s1, (uint32_t)w};
    } else if ((w = find_way(t, s2, key)) >= 0) {
        r = (slot_ref_t){s2, (uint32_t)w};
    } else if (pick_free(t, s1, s2, &r) && reserve_key(t)) {
        claim_free(t, r, key);
    } else if (pick_victim(t, s1, s2, &r)) {
        evict(t, r, key, br_gcra_now_ticks(&t->params, now_ns));
    } else {
        /* max_keys held, yet all 32 candidate slots free (a placement so unbalanced it is not
         * expected to ever happen): exceed max_keys rather than refuse the key; the slot count
         * still bounds the table */
        count(&t->in_use);
        claim_free(t, r, key);
    }
    rc = admit_at(t, r, now_ns, info);
    unlock_pair(l1, l2);
    return rc;
}

/* ---- fast path ---- */

int br_keytable_admit(br_keytable_t *t, uint64_t key_hash, uint64_t now_ns, br_gcra_info_t *info)
{
    uint64_t key = br_kt_key(key_hash), s1, s2;
    br_kt_set_t *sets = br_kt_sets(t);

    br_kt_candidates(t, key, &s1, &s2);
    /* both sets' key lines at once: with a big table they are cache misses, now overlapped */
    __builtin_prefetch(&sets[s1].key[0]);
    __builtin_prefetch(&sets[s1].key[BR_KT_WAYS / 2]);
    __builtin_prefetch(&sets[s2].key[0]);
    __builtin_prefetch(&sets[s2].key[BR_KT_WAYS / 2]);
    for (int tries = 0; tries < FAST_PATH_TRIES; tries++) {
        uint64_t s = s1;
        int w = find_way(t, s1, key);
        if (w < 0) {
            s = s2;
            w = find_way(t, s2, key);
        }
        if (w < 0)
            break;
        br_kt_set_t *set = &sets[s];
        uint64_t v = load(&set->tat[w]); /* acquire: the key load below stays after it */
        if (__atomic_load_n(&set->key[w], __ATOMIC_RELAXED) != key)
            continue; /* evicted between the scan and the load */
        if (v & BR_KT_FROZEN)
            break; /* being evicted, or its evictor died: the locked path waits or repairs */
        uint64_t next;
        if (br_gcra_decide(&t->params, v, now_ns, &next, info)) {
            if (cas(&set->tat[w], &v, next))
                return 1; /* the word stayed v since the load, so the key stayed ours (I2) */
        } else if (load(&set->tat[w]) == v) {
            return 0; /* v before and after the key check: (key, v) was a snapshot (I2) */
        }
    }
    return slow_path(t, key, s1, s2, now_ns, info);
}
