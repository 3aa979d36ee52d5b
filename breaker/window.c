/*
 * window.c - the breaker's sliding time window: a ring of time buckets with exact integer counts
 * of calls, failures and slow calls.
 *
 * Why buckets: the failure-rate and slow-rate triggers need "the share of calls in the last
 * `window`" after every outcome. Keeping every call would cost memory proportional to the
 * traffic; a ring of BR_WINDOW_BUCKETS buckets costs 1.2 KiB whatever the rate, and running sums
 * make each read O(1) (expiring a bucket subtracts it once).
 *
 * Geometry (all integer): width = ceil(window / BR_WINDOW_BUCKETS) ms, nbuckets = window / width
 * (so nbuckets * width <= window; equal when window is a multiple of BR_WINDOW_BUCKETS ms, e.g.
 * 10 s -> 100 buckets of 100 ms). Time t falls in bucket number k = t / width. A call recorded in
 * bucket k counts while the newest bucket number is < k + nbuckets, i.e. it expires exactly when
 * now reaches (k + nbuckets) * width: a call counts for at most `window` ms and more than
 * `window - width` ms.
 *
 * Time: `now` is monotonic ms from the caller. A now below the last one seen (another process's
 * clock read a little earlier, a cached loop time) is treated as the last one seen, so buckets
 * never run backwards. A jump forward of a whole window or more clears everything at once.
 *
 * Invariants: calls/failures/slow equal the sums over the live buckets; each bucket holds
 * failures <= calls and slow <= calls; buckets not yet reached since the last clear are zero.
 * Counts saturate at UINT32_MAX per bucket (the call is then not counted at all, so the sums stay
 * consistent).
 *
 * Callers: the owner's state machine (state.c) only.
 */
#include <string.h>

#include "breaker_int.h"

void br_window_init(br_window_t *w, uint64_t window_ms, uint64_t now)
{
    memset(w, 0, sizeof *w);
    if (window_ms == 0)
        window_ms = 1; /* br_config_validate() refuses 0; stay defined anyway */
    w->width_ms = (window_ms + BR_WINDOW_BUCKETS - 1) / BR_WINDOW_BUCKETS;
    w->nbuckets = (uint32_t)(window_ms / w->width_ms);
    w->head = now / w->width_ms;
    w->last_now = now;
}

void br_window_clear(br_window_t *w, uint64_t now)
{
    if (now < w->last_now)
        now = w->last_now;
    memset(w->b, 0, sizeof w->b);
    w->calls = w->failures = w->slow = 0;
    w->head = now / w->width_ms;
    w->last_now = now;
}

/* Moves the newest bucket to now's, expiring the buckets that fell out of the window. */
static void advance(br_window_t *w, uint64_t now)
{
    uint64_t k;

    if (now < w->last_now)
        now = w->last_now;
    w->last_now = now;
    k = now / w->width_ms;
    if (k == w->head)
        return;
    if (k - w->head >= w->nbuckets) {
        br_window_clear(w, now);
        return;
    }
    while (w->head < k) {
        br_window_bucket_t *e = &w->b[++w->head % w->nbuckets];
        w->calls -= e->calls;
        w->failures -= e->failures;
        w->slow -= e->slow;
        *e = (br_window_bucket_t){0, 0, 0};
    }
}

void br_window_add(br_window_t *w, uint64_t now, bool failure, bool slow)
{
    br_window_bucket_t *e;

    advance(w, now);
    e = &w->b[w->head % w->nbuckets];
    if (e->calls == UINT32_MAX)
        return;
    e->calls++;
    w->calls++;
    if (failure) {
        e->failures++;
        w->failures++;
    }
    if (slow) {
        e->slow++;
        w->slow++;
    }
}

void br_window_counts(br_window_t *w, uint64_t now, br_window_counts_t *out)
{
    advance(w, now);
    out->calls = w->calls;
    out->failures = w->failures;
    out->slow = w->slow;
}
