/*
 * shared.c - the breaker's published state in shared memory: what workers read on the request
 * path, and the half-open trial permits they claim.
 *
 * Layout (br_shared_t, 64 bytes, one cache line, no pointers, lives in a MAP_SHARED region):
 *   word           generation (44 bits) | slot (1) | state (3) | permits (16)  (breaker_int.h)
 *   open_until[2]  a double buffer: open_until of the word's generation is open_until[slot]
 *
 * Why one word: everything a worker decides on, except open_until, is in one 64-bit value read
 * with one atomic load, so state, generation and permits can never be seen torn. A trial claim
 * is a CAS that decrements permits on exactly the word the worker decided on; it fails if the
 * generation changed or another claim got in first, and is retried. So across all processes at
 * most `permits` claims succeed per generation.
 *
 * Why a double buffer and not a seqlock: a seqlock's writer leaves the sequence odd while it
 * writes; if the owner died there, every reader would spin forever. Here nothing is ever "being
 * written" from a reader's point of view. The owner writes open_until into the slot the
 * published word does NOT point at, then publishes a word pointing at it, so a reader that loads
 * the word and then open_until[slot] gets the value of that generation, unless the owner has
 * since published another generation and reused the slot; the reader detects that by loading
 * the word again and comparing generations, and retries. A crash at any instruction leaves the
 * word pointing at a complete slot.
 *
 * Memory ordering (no fences, so ThreadSanitizer understands it):
 *   owner:  store open_until[!slot] (release); store/CAS word (release)
 *   reader: load word (acquire); load open_until[slot] (acquire); load word again
 * The release store of a reused slot is ordered after the word that moved away from it; a reader
 * that sees the new slot value therefore sees that newer word on its second load.
 *
 * Progress: br_admit() and br_shared_read() are lock-free (a retry means the owner published or
 * another worker claimed a permit; each happens a bounded number of times per generation) and
 * never block. br_breaker_publish() retries its CAS only when a worker claimed a permit.
 *
 * Writers: the owner (br_breaker_publish: everything) and workers (br_admit: permits only).
 * The 64-bit atomics must be lock-free (address-free), which makes them work across processes.
 */
#include <string.h>

#include "breaker_int.h"

_Static_assert(sizeof(br_shared_t) == 64, "br_shared_t is one cache line");
_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0), "64-bit atomics must be lock-free");
_Static_assert(BR_STATE_COUNT <= BR_W_STATE_MASK + 1, "states fit the word's state bits");
_Static_assert(BR_MAX_HALF_OPEN_REQUESTS <= BR_W_PERMITS_MASK, "permits fit the word");

void br_shared_init(br_shared_t *s)
{
    memset(s, 0, sizeof *s);
}

static bool has_trials(br_state_t st)
{
    return st == BR_STATE_OPEN || st == BR_STATE_HALF_OPEN;
}

/* Loads open_until for the generation in *w, retrying until the word's generation is the same
 * before and after; *w is then the second load (same generation, maybe fewer permits, maybe
 * half_open instead of open). */
static uint64_t load_until(const br_shared_t *s, uint64_t *w)
{
    for (;;) {
        uint64_t until = __atomic_load_n(&s->open_until[br_word_slot(*w)], __ATOMIC_ACQUIRE);
        uint64_t again = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
        bool same = br_word_gen(again) == br_word_gen(*w);
        *w = again;
        if (same)
            return until;
    }
}

void br_shared_read(const br_shared_t *s, br_snapshot_t *out)
{
    uint64_t w = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
    uint64_t until = 0;

    if (has_trials(br_word_state(w)))
        until = load_until(s, &w);
    /* load_until may have moved to a generation without trials: then until means nothing */
    out->state = br_word_state(w);
    out->generation = br_word_gen(w);
    out->permits = has_trials(out->state) ? br_word_permits(w) : 0;
    out->open_until = has_trials(out->state) ? until : 0;
}

br_decision_t br_admit(br_shared_t *s, uint64_t now, br_ticket_t *t)
{
    uint64_t w = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);

    for (;;) {
        uint64_t until;

        *t = (br_ticket_t){br_word_gen(w), br_word_state(w), false, 0};
        switch (t->state) {
        case BR_STATE_FORCED_OPEN:
            return BR_REJECT;
        case BR_STATE_OPEN:
        case BR_STATE_HALF_OPEN:
            break;
        default: /* closed, forced_closed; an unknown value fails open */
            return BR_ADMIT;
        }
        /* load_until may move w to a newer generation: the ticket must describe that one */
        until = load_until(s, &w);
        if (!has_trials(br_word_state(w)))
            continue; /* a new generation without trials: decide again on it */
        t->generation = br_word_gen(w);
        t->state = br_word_state(w);
        if (t->state == BR_STATE_OPEN && now < until) {
            t->retry_after_ms = until - now;
            return BR_REJECT;
        }
        if (br_word_permits(w) == 0)
            return BR_REJECT;
        if (__atomic_compare_exchange_n(&s->word, &w, w - 1, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            t->trial = true;
            return BR_ADMIT;
        }
        /* w now holds the current word: someone claimed first, or the owner published */
    }
}

int br_breaker_publish(br_breaker_t *b, br_shared_t *s, uint64_t now)
{
    bool trials = has_trials(b->state);
    uint64_t old = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);

    if (br_word_gen(old) != b->generation) {
        /* A new generation: fill the slot readers are not using, then point the word at it.
         * The old generation's unclaimed permits die with it (workers' CAS on it now fail). */
        unsigned slot = br_word_slot(old) ^ 1u;
        uint32_t permits = trials ? b->granted + b->returns : 0;

        __atomic_store_n(&s->open_until[slot], trials ? b->open_until : 0, __ATOMIC_RELEASE);
        __atomic_store_n(&s->word, br_word_make(b->generation, b->state, slot, permits),
                         __ATOMIC_RELEASE);
        b->granted = permits;
        b->returns = 0;
        return 1;
    }
    for (;;) {
        /* Same generation: workers may be claiming permits; keep their claims, add returns. */
        uint32_t left = br_word_permits(old);
        uint64_t nw = br_word_make(b->generation, b->state, br_word_slot(old),
                                   trials ? left + b->returns : 0);

        if (nw == old) {
            br_breaker_observe_claims(b, b->granted - left, now);
            return 0;
        }
        if (__atomic_compare_exchange_n(&s->word, &old, nw, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            b->granted += b->returns;
            b->returns = 0;
            if (trials)
                br_breaker_observe_claims(b, b->granted - br_word_permits(nw), now);
            return 1;
        }
    }
}
