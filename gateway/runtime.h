/*
 * runtime.h - what the supervisor hands to every child it forks.
 *
 * All pointers are to memory mapped before the fork (shared) or copied by it (the config), so a
 * child never needs to ask the supervisor for anything. A reload hands new children a new
 * runtime with the new config and stats; `events` and `shared` stay the same for the life of
 * the supervisor.
 */
#ifndef GW_RUNTIME_H
#define GW_RUNTIME_H

#include "config.h"
#include "events.h"
#include "keytable.h"
#include "outq.h"
#include "stats.h"
#include "upstate.h"

typedef struct gw_runtime {
    uint64_t generation; /* config generation: 1 at start, +1 per reload */
    const gw_config_t *cfg;
    const char *config_path;          /* NULL: the embedded default */
    gw_stats_t *stats;                /* this generation's counters */
    gw_outq_t *outq;                  /* this generation's outcome rings */
    const uint32_t *slot_of;          /* cfg->upstreams[i] -> its slot in `upstates` */
    br_keytable_t *const *limiter_of; /* cfg->routes[i] -> its rate-limit table, or NULL */
    gw_upstates_t *upstates;          /* for the life of the supervisor */
    gw_events_t *events;              /* for the life of the supervisor */
    gw_shared_t *shared;              /* for the life of the supervisor */
} gw_runtime_t;

/* The shared state of cfg->upstreams[i]. */
static inline gw_upstate_t *gw_runtime_upstate(const gw_runtime_t *rt, size_t i)
{
    return gw_upstates_slot(rt->upstates, rt->slot_of[i]);
}

#endif
