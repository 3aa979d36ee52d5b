/*
 * admin.h - the admin API handlers (SPEC section 6), served by the control process.
 *
 * JSON everywhere; Bearer token required on every path except /healthz when admin.token is
 * configured (the token is compared in constant time and never logged).
 */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <h2o.h>

#include "config.h"
#include "db.h"
#include "stats.h"

typedef struct gw_admin {
    const gw_config_t *cfg;
    gw_stats_t *stats;
    al_db_t *db;
    uint64_t started_ms;
} gw_admin_t;

/* Installs the admin handler on `pathconf`. */
void gw_admin_register(gw_admin_t *a, h2o_pathconf_t *pathconf);

/* Renders the Prometheus text exposition of every metric into a malloc'd NUL-terminated string
 * (metrics.c). Returns NULL when out of memory. */
char *gw_metrics_render(const gw_config_t *cfg, gw_stats_t *stats);

#endif
