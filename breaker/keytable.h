/*
 * keytable.h - the rate limiter's per-key state for one route: a fixed-capacity table of GCRA
 * TATs (bucket.h) that lives in a caller-provided memory region, shared by every worker.
 *
 * The region holds no pointers (offsets only) and is initialised once, before any other process
 * uses it (the supervisor, before forking workers); then any thread of any process that maps it
 * may call br_keytable_admit(). Two workers together admit exactly what one would: every
 * decision is applied with a CAS on the key's TAT word.
 *
 * Design (docs/ratelimit.md has the diagrams and the proofs):
 *   - Placement: 16-way set-associative with two candidate sets per key ("two choices"): a key
 *     lives in one of the 32 slots of its two sets. A slot is a 64-bit key word and a 64-bit TAT
 *     word; each set also keeps 8 "ghost" words (below). There are 25% more slots than max_keys,
 *     so max_keys keys fit without placement conflicts; the in_use count is bounded by max_keys.
 *   - Fast path (the key is present): lock-free. Load TAT, check the key word, decide, CAS TAT.
 *   - Slow path (the key is absent, or a slot was left frozen by a crashed process): takes the
 *     locks of the key's two sets (robust, process-shared mutexes; a holder that dies is
 *     detected by the kernel and the next locker repairs what it left), inserts the key, then
 *     decides as above. Only the slow path changes key words, so a key is never in two slots.
 *   - Eviction once max_keys keys are held (or both sets are full): the occupied candidate slot
 *     with the smallest TAT among the 32 (the bucket that has been full longest, or else the one
 *     closest to full: an LRU approximation by "least recently full", sampled over 32 slots).
 *     NO FREE REFILL: before a key is forgotten its TAT is recorded in a ghost word of its set
 *     (by max), and a key entering a slot starts from max(its ghost words, the evicted TAT + 1
 *     tick). So a returning key is judged against a TAT at least as late as the one it left
 *     with, and can never be admitted more than an unbounded table would have admitted it.
 *     The "+ 1 tick" keeps every slot's TAT strictly increasing over its whole history, which
 *     makes a stale fast-path CAS impossible (no ABA). It costs the newcomer nothing when the
 *     evicted bucket was full (the common case); when every candidate was still draining (the
 *     table is too small for the keys active within burst / rate), the newcomer inherits the
 *     smallest remaining debt, at most burst / rate: the conservative fallback, counted in
 *     evictions_active.
 *   - Memory: 1.25 slots of 20 bytes per key (25 bytes), plus up to 64 KiB of locks and a
 *     192-byte header: max_keys = 1000000 takes 25,065,728 bytes (23.9 MiB).
 *
 * Errors: -EINVAL (= BR_EINVAL in breaker.h) for bad arguments; a lock failure is returned as
 * the negative errno pthread gave (never expected).
 */
#ifndef BR_KEYTABLE_H
#define BR_KEYTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bucket.h"

#define BR_KEYTABLE_MAX_KEYS (1u << 28) /* 6.3 GiB of table: a sanity bound, not a target */
#define BR_KEYTABLE_ALIGN 64u           /* the region must be aligned to this (mmap is) */

typedef struct br_keytable br_keytable_t; /* the region itself, opaque */

typedef struct br_keytable_config {
    uint32_t max_keys;       /* 1..BR_KEYTABLE_MAX_KEYS: at most this many keys are held */
    br_gcra_params_t params; /* the route's limit (copied into the region) */
    uint8_t hash_key[16];    /* SipHash key for br_keytable_hash(): random per table, so
                                clients cannot pick keys that collide */
} br_keytable_config_t;

typedef struct br_keytable_stats {
    uint64_t capacity;         /* max_keys */
    uint64_t in_use;           /* keys held, <= max_keys (+1 per process killed mid-insert) */
    uint64_t evictions;        /* keys forgotten to make room */
    uint64_t evictions_active; /* of which the bucket was not full: the newcomer inherited debt */
    uint64_t lock_recoveries;  /* set locks taken over from a process that died holding them */
} br_keytable_stats_t;

/* Bytes needed for a table of max_keys keys; 0 when max_keys is 0 or above
 * BR_KEYTABLE_MAX_KEYS. */
size_t br_keytable_size(uint32_t max_keys);

/* Formats `mem` (mem_size >= br_keytable_size(cfg->max_keys), aligned to BR_KEYTABLE_ALIGN) as
 * an empty table. Only while no other thread or process uses the region. Returns 0 and sets
 * *out (== mem), or -EINVAL (bad size, alignment or max_keys), or a negative errno from
 * pthread_mutex_init. */
int br_keytable_init(br_keytable_t **out, void *mem, size_t mem_size,
                     const br_keytable_config_t *cfg);

/* Checks that `mem` holds a table made by br_keytable_init() (this version) that fits in
 * mem_size; returns 0 and sets *out, or -EINVAL. For a process that maps an existing region. */
int br_keytable_attach(br_keytable_t **out, void *mem, size_t mem_size);

/* True when the table can be kept for a route limited by (max_keys, params): a reload that
 * leaves the limit unchanged keeps its state; otherwise the caller formats a new region. */
bool br_keytable_compatible(const br_keytable_t *t, uint32_t max_keys,
                            const br_gcra_params_t *params);

const br_gcra_params_t *br_keytable_params(const br_keytable_t *t);

/* SipHash-2-4 of `data` under the table's hash_key: the key_hash for br_keytable_admit() (client
 * IP bytes, a header value, or "" for the global key). Pure. */
uint64_t br_keytable_hash(const br_keytable_t *t, const void *data, size_t len);

/* Decides one request of the key `key_hash` at monotonic time now_ns with the table's limit,
 * inserting the key if absent (evicting as described above). Returns 1 admitted, 0 denied (info
 * filled either way; info may be NULL), or a negative errno when a set lock cannot be taken
 * (not expected; info is then zeroed): the caller chooses to fail open or closed. Lock-free when
 * the key is present; otherwise it holds two set locks for well under a microsecond. Never
 * blocks on a dead process. Any key_hash is accepted (it is mixed again internally). */
int br_keytable_admit(br_keytable_t *t, uint64_t key_hash, uint64_t now_ns, br_gcra_info_t *info);

/* Counters for metrics (relaxed reads; each value is exact or lags by a few operations). */
void br_keytable_stats(const br_keytable_t *t, br_keytable_stats_t *out);

#endif
