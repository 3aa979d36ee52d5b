/*
 * limiter.h - the per-route rate-limit tables in shared memory, and their life across reloads.
 *
 * Each route with a `rate_limit` gets a key table (breaker/keytable.h) in its own shared mapping,
 * made by the supervisor before it forks the generation's children, so that every worker admits
 * against the same buckets (two workers together admit exactly what one would) and a worker
 * crash loses nothing. A reload keeps a route's table when the route keeps its name and its
 * limit (rate, burst, max_keys); a changed limit gets a fresh table. Tables that no live
 * generation uses any more are unmapped.
 *
 * Only the supervisor calls this module; children use the table pointers it hands them through
 * the runtime (the mappings are at the same address in every child).
 */
#ifndef GW_LIMITER_H
#define GW_LIMITER_H

#include <stdint.h>

#include "config.h"
#include "keytable.h"

#define GW_LIMITERS_MAX 256

typedef struct gw_limiters gw_limiters_t;

gw_limiters_t *gw_limiters_new(void);
void gw_limiters_free(gw_limiters_t *l); /* unmaps every table */

/*
 * Gives every rate-limited route of cfg a table (kept or new): table_of[i] for cfg->routes[i],
 * NULL for routes without a limit. Tables last bound by generations older than `oldest_live`
 * are unmapped first. Returns 0, or a negative errno (-ENOSPC: too many tables; -ENOMEM: a
 * mapping failed; -EINVAL: a limit the bucket maths rejects) with nothing bound.
 */
int gw_limiters_bind(gw_limiters_t *l, const gw_config_t *cfg, uint64_t generation,
                     uint64_t oldest_live, br_keytable_t **table_of);

/* Unmaps tables that no generation at or after `oldest_live` uses. */
void gw_limiters_collect(gw_limiters_t *l, uint64_t oldest_live);

/* The bucket parameters of a route's limit (as the key table takes them). */
int gw_limiter_params(const gw_ratelimit_config_t *rl, br_gcra_params_t *out);

#endif
