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
#include "stats.h"

typedef struct gw_runtime {
    const gw_config_t *cfg;
    const char *config_path; /* NULL: the embedded default */
    gw_stats_t *stats;
    gw_events_t *events;
    gw_shared_t *shared;
} gw_runtime_t;

#endif
