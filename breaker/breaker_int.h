/*
 * breaker_int.h - internals shared by the files of breaker/: the sliding window (window.c), the
 * published word's layout (shared.c) and the owner's hook for observed trial claims (state.c).
 * Not for use outside breaker/ (tests excepted).
 */
#ifndef BR_BREAKER_INT_H
#define BR_BREAKER_INT_H

#include "breaker.h"

/* ---- window.c: calls, failures and slow calls over a sliding time window ---- */

typedef struct br_window_counts {
    uint64_t calls, failures, slow;
} br_window_counts_t;

/* Sets up an empty window of window_ms (>= 1) at time now. */
void br_window_init(br_window_t *w, uint64_t window_ms, uint64_t now);
/* Empties the window; time stays monotonic (now below the last seen time counts as that). */
void br_window_clear(br_window_t *w, uint64_t now);
/* Adds one call at now. */
void br_window_add(br_window_t *w, uint64_t now, bool failure, bool slow);
/* The sums over the calls still in the window at now. */
void br_window_counts(br_window_t *w, uint64_t now, br_window_counts_t *out);

/* ---- shared.c: the published word ----
 *
 *   63                         20  19  18  16 15            0
 *   +----------------------------+----+------+---------------+
 *   | generation (44 bits)       |slot|state | permits (16)  |
 *   +----------------------------+----+------+---------------+
 */
#define BR_W_PERMITS_MASK 0xffffull
#define BR_W_STATE_SHIFT 16
#define BR_W_STATE_MASK 0x7ull
#define BR_W_SLOT_SHIFT 19
#define BR_W_GEN_SHIFT 20

static inline uint64_t br_word_make(uint64_t gen, br_state_t state, unsigned slot, uint32_t permits)
{
    return ((gen & BR_GENERATION_MASK) << BR_W_GEN_SHIFT) |
           ((uint64_t)(slot & 1u) << BR_W_SLOT_SHIFT) |
           (((uint64_t)state & BR_W_STATE_MASK) << BR_W_STATE_SHIFT) |
           (permits & BR_W_PERMITS_MASK);
}

static inline uint64_t br_word_gen(uint64_t w)
{
    return w >> BR_W_GEN_SHIFT;
}

static inline br_state_t br_word_state(uint64_t w)
{
    return (br_state_t)((w >> BR_W_STATE_SHIFT) & BR_W_STATE_MASK);
}

static inline unsigned br_word_slot(uint64_t w)
{
    return (unsigned)(w >> BR_W_SLOT_SHIFT) & 1u;
}

static inline uint32_t br_word_permits(uint64_t w)
{
    return (uint32_t)(w & BR_W_PERMITS_MASK);
}

/* ---- state.c: owner hooks used by br_breaker_publish() ---- */

/* The owner saw `claimed` permits of the current generation taken, at now. */
void br_breaker_observe_claims(br_breaker_t *b, uint32_t claimed, uint64_t now);

#endif
