/*
 * upstate.h - per-upstream state that outlives workers, control processes and reloads.
 *
 * One shared region, mapped by the supervisor at start and never remapped, holds a slot per
 * upstream name: the breaker's published state (read lock-free by workers on the request path),
 * the breaker's owner state (written only by the control process that owns breakers), and the
 * per-host health and ejection state. Because it is keyed by name and lives outside any one
 * process, a worker crash, a control-process crash or a reload that leaves an upstream unchanged
 * keeps its breaker and host state; an upstream whose breaker settings or host list changed is
 * reset when the new config is bound.
 *
 * Writers: the supervisor binds slots (before forking a generation's children); the owning
 * control process writes `owner`, `pub`, host `ejected_until_ms`/`down` and the counters; workers
 * only read (br_admit claims trial permits inside `pub` atomically).
 *
 * Bounds: GW_UPSTATE_MAX upstreams over the life of the process (slots of upstreams removed by a
 * reload are reused once no generation names them), GW_MAX_HOSTS hosts per upstream.
 */
#ifndef GW_UPSTATE_H
#define GW_UPSTATE_H

#include <stdbool.h>
#include <stdint.h>

#include "breaker.h"
#include "config.h"

#define GW_UPSTATE_MAX 256
#define GW_MAX_HOSTS 64

typedef struct gw_host_state {
    /* published (workers read) */
    int64_t down;              /* 1: active health checks marked it unhealthy */
    uint64_t ejected_until_ms; /* monotonic ms; 0 = not ejected */
    /* owner's bookkeeping */
    uint32_t consecutive_failures; /* outlier detection */
    uint32_t ejections;            /* how many times it was ejected (ejection time grows) */
    uint32_t passes, fails;        /* consecutive health probe results */
    uint32_t probed;               /* 1 once any probe finished */
} gw_host_state_t;

typedef struct gw_upstate {
    char name[72];             /* "" = free slot */
    uint64_t signature;        /* breaker settings + host list; a change resets the slot */
    uint64_t bound_generation; /* newest config generation that names this upstream */
    br_shared_t pub;           /* published breaker state */
    br_breaker_t owner;        /* the owner's state machine */
    uint64_t transitions[BR_STATE_COUNT][BR_STATE_COUNT];
    int64_t unavailable;          /* 1 while no host is usable (no_healthy_hosts is firing) */
    uint64_t state_since_unix_ms; /* wall clock of the breaker's last transition (0: never) */
    int64_t sensitive; /* 1 while any outcome could trip the breaker: workers then wake the owner
                          for every outcome, not only failures (published by the owner) */
    uint32_t nhosts;
    gw_host_state_t hosts[GW_MAX_HOSTS];
} gw_upstate_t;

typedef struct gw_upstates gw_upstates_t;

/* Maps the region. NULL (errno set) on failure. */
gw_upstates_t *gw_upstates_new(void);
void gw_upstates_free(gw_upstates_t *u);

gw_upstate_t *gw_upstates_slot(gw_upstates_t *u, uint32_t index);

/* The breaker settings of an upstream as the breaker library takes them. */
void gw_upstate_breaker_config(const gw_config_t *cfg, const gw_upstream_config_t *uc,
                               br_config_t *out);

/*
 * Binds every upstream of `cfg` to a slot (supervisor, before forking generation `generation`):
 * an existing slot of the same name keeps its state when its signature is unchanged, else it is
 * reset; new names get a free slot (freeing those no generation at or after `oldest_live` names).
 * Fills slot_of[i] for cfg->upstreams[i]. Returns 0, or -ENOSPC / -E2BIG (too many upstreams or
 * hosts) with nothing changed.
 */
int gw_upstates_bind(gw_upstates_t *u, const gw_config_t *cfg, uint64_t generation,
                     uint64_t oldest_live, uint64_t now_ms, uint32_t *slot_of);

/* Worker side: may host h of slot s take a request now? */
static inline bool gw_host_usable(const gw_upstate_t *s, uint32_t h, uint64_t now_ms)
{
    const gw_host_state_t *hs = &s->hosts[h];
    return __atomic_load_n(&hs->down, __ATOMIC_RELAXED) == 0 &&
           __atomic_load_n(&hs->ejected_until_ms, __ATOMIC_RELAXED) <= now_ms;
}

#endif
