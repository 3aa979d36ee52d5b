/*
 * crashloop.c - crash-loop detection and respawn back-off. See crashloop.h.
 */
#include "crashloop.h"

#define RING (GW_CRASH_LOOP_COUNT + 1)

uint64_t gw_crashloop_note(gw_crashloop_t *cl, uint64_t now_ms, bool *entered)
{
    *entered = false;
    cl->times[cl->n++ % RING] = now_ms;
    /* the oldest of the last COUNT + 1 crashes is still inside the window */
    bool loop =
        cl->n > GW_CRASH_LOOP_COUNT && now_ms - cl->times[cl->n % RING] < GW_CRASH_LOOP_WINDOW_MS;
    if (!loop) {
        cl->backoff_ms = 0;
        return 0;
    }
    if (cl->backoff_ms == 0) {
        *entered = true;
        cl->backoff_ms = GW_RESPAWN_BASE_MS;
    } else {
        cl->backoff_ms =
            cl->backoff_ms * 2 > GW_RESPAWN_MAX_MS ? GW_RESPAWN_MAX_MS : cl->backoff_ms * 2;
    }
    return cl->backoff_ms;
}

bool gw_crashloop_quiet(gw_crashloop_t *cl, uint64_t now_ms)
{
    if (cl->backoff_ms == 0 || cl->n == 0 ||
        now_ms - cl->times[(cl->n - 1) % RING] < GW_CRASH_LOOP_WINDOW_MS)
        return false;
    cl->backoff_ms = 0;
    return true;
}
