/*
 * crashloop.h - when to respawn a crashed worker: at once, or after a growing delay.
 *
 * Pure logic with time as an argument (the supervisor passes its monotonic clock), so the
 * policy is unit-tested exactly. More than GW_CRASH_LOOP_COUNT crashes within
 * GW_CRASH_LOOP_WINDOW_MS is a crash loop: each respawn then waits GW_RESPAWN_BASE_MS, doubling
 * up to GW_RESPAWN_MAX_MS. A whole window without a crash ends the loop. (The supervisor adds one
 * rule of its own: the last live worker is never held back.)
 */
#ifndef GW_CRASHLOOP_H
#define GW_CRASHLOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_CRASH_LOOP_COUNT 5
#define GW_CRASH_LOOP_WINDOW_MS 60000
#define GW_RESPAWN_BASE_MS 500
#define GW_RESPAWN_MAX_MS 30000

typedef struct gw_crashloop {
    uint64_t times[GW_CRASH_LOOP_COUNT + 1]; /* ring of the latest crash times */
    size_t n;                                /* crashes recorded so far */
    uint32_t backoff_ms;                     /* 0 outside a loop */
} gw_crashloop_t;

/* Records a crash at now_ms and returns the respawn delay (0 outside a crash loop). Sets
 * *entered when this crash starts a loop (raise crash_loop once). */
uint64_t gw_crashloop_note(gw_crashloop_t *cl, uint64_t now_ms, bool *entered);

/* True (once) when a loop is over: a whole window passed since the last crash. */
bool gw_crashloop_quiet(gw_crashloop_t *cl, uint64_t now_ms);

/* True while respawns are being delayed. */
static inline bool gw_crashloop_active(const gw_crashloop_t *cl)
{
    return cl->backoff_ms != 0;
}

#endif
