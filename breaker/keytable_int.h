/*
 * keytable_int.h - the key table's region layout and slot encoding, shared by keytable.c and its
 * unit tests (which inject crashes at exact points of the slow path). Not for the gateway.
 *
 * Region layout (offsets from the start; no pointers):
 *   0          struct br_keytable       header: geometry, params, hash key, counters
 *   locks_off  br_kt_lock_t[nlocks]     robust process-shared mutexes, one cache line each
 *   sets_off   br_kt_set_t[nsets]       16 key words, 16 TAT words, 8 ghost words (320 bytes)
 *
 * Geometry: nsets = ceil(max_keys * 5/4 / 16): 25% more slots than keys, because two-choice
 * placement into 16-way sets fills ~85% of its slots before a set pair overflows; with the
 * headroom, max_keys keys fit without a conflict eviction (measured: docs/ratelimit.md). The
 * number of keys held is bounded by max_keys with the in_use counter, not by the slot count.
 *
 * Slot encoding:
 *   key word   0 = free (never used yet); else the mixed key (br_kt_key(), never 0)
 *   TAT word   a GCRA TAT (< 2^63), or BR_KT_FROZEN | TAT while the slow path evicts it
 * Lock of set s: locks[s & (nlocks - 1)] (nlocks is a power of two).
 */
#ifndef BR_KEYTABLE_INT_H
#define BR_KEYTABLE_INT_H

#include <pthread.h>

#include "keytable.h"

#define BR_KT_MAGIC 0x4272574b65795462ull /* "BrWKeyTb" */
#define BR_KT_VERSION 1u
#define BR_KT_WAYS 16u
#define BR_KT_GHOSTS 8u
#define BR_KT_MAX_LOCKS 1024u
#define BR_KT_FROZEN (1ull << 63)
#define BR_KT_KEY_ZERO 0x9e3779b97f4a7c15ull /* stands for a key that mixes to 0 */

typedef struct br_kt_set {
    uint64_t key[BR_KT_WAYS];
    uint64_t tat[BR_KT_WAYS];
    uint64_t ghost[BR_KT_GHOSTS]; /* max TAT of keys evicted from this set, by ghost index */
} __attribute__((aligned(64))) br_kt_set_t;

typedef struct br_kt_lock {
    pthread_mutex_t m;
} __attribute__((aligned(64))) br_kt_lock_t;

struct br_keytable {
    uint64_t magic;
    uint32_t version, ways;
    uint64_t size;     /* bytes of the region that are in use */
    uint64_t max_keys; /* keys held at most (in_use <= max_keys) */
    uint64_t nsets, nlocks;
    uint64_t locks_off, sets_off;
    uint64_t hash_k0, hash_k1;
    br_gcra_params_t params;
    /* counters, written by the slow path only; own cache line */
    uint64_t in_use __attribute__((aligned(64)));
    uint64_t evictions, evictions_active, lock_recoveries;
} __attribute__((aligned(64)));

static inline br_kt_set_t *br_kt_sets(const br_keytable_t *t)
{
    return (br_kt_set_t *)((char *)t + t->sets_off);
}

static inline br_kt_lock_t *br_kt_locks(const br_keytable_t *t)
{
    return (br_kt_lock_t *)((char *)t + t->locks_off);
}

static inline pthread_mutex_t *br_kt_set_lock(const br_keytable_t *t, uint64_t s)
{
    return &br_kt_locks(t)[s & (t->nlocks - 1)].m;
}

/* The key word for a caller's key hash: a bijective mix (murmur3's finalizer), so weak hashes
 * (an IPv4 address as an integer) still spread over the sets; 0 is reserved for free slots. */
static inline uint64_t br_kt_key(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h != 0 ? h : BR_KT_KEY_ZERO;
}

/* The key's two candidate sets (distinct when there are two sets or more). */
static inline void br_kt_candidates(const br_keytable_t *t, uint64_t key, uint64_t *s1,
                                    uint64_t *s2)
{
    *s1 = ((key & 0xffffffffull) * t->nsets) >> 32;
    *s2 = ((key >> 32) * t->nsets) >> 32;
    if (*s2 == *s1 && t->nsets > 1)
        *s2 = *s1 + 1 == t->nsets ? 0 : *s1 + 1;
}

static inline unsigned br_kt_ghost_index(uint64_t key)
{
    return (unsigned)((key * 0x9e3779b97f4a7c15ull) >> 61); /* top 3 bits: 0..7 */
}

#endif
