/*
 * router.h - picks the route for a request: first match on host and path prefix (SPEC section 3).
 *
 * Matching is by path segment: prefix "/api/users" matches "/api/users", "/api/users/7" and
 * "/api/users?x", but not "/api/usersettings" (a plain string prefix would quietly route the
 * latter too). A prefix ending in '/' matches anything under it; "/" matches everything.
 * Host matching is exact and case-insensitive, on the authority without its port. Routes are
 * tried in config order and the first match wins.
 *
 * Pure code over the config; it never allocates after gw_router_init.
 */
#ifndef GW_ROUTER_H
#define GW_ROUTER_H

#include <stddef.h>

#include "config.h"

typedef struct gw_router {
    const gw_config_t *cfg;
} gw_router_t;

void gw_router_init(gw_router_t *r, const gw_config_t *cfg);

/* Returns the index of the first route matching, or -1 when none does. `path` is the normalized
 * request path (no query needed, one is ignored); `host` is the Host/authority (a port is
 * ignored); host may be NULL or empty. */
int gw_router_match(const gw_router_t *r, const char *host, size_t host_len, const char *path,
                    size_t path_len);

/* True when `prefix` matches `path` by the segment rule above (exposed for tests). */
int gw_path_prefix_matches(const char *prefix, const char *path, size_t path_len);

#endif
