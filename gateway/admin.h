/*
 * admin.h - the admin API handlers (SPEC section 6), served by the control process.
 *
 * JSON everywhere; Bearer token required on every path except /healthz when admin.token is
 * configured (the token is compared in constant time and never logged).
 */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <h2o.h>
#include <uv.h>

#include "config.h"
#include "db.h"
#include "eventlog.h"
#include "runtime.h"
#include "stats.h"

typedef struct gw_admin {
    uv_loop_t *loop;
    const gw_runtime_t *rt;
    const gw_config_t *cfg;
    gw_stats_t *stats;
    al_db_t *db;              /* NULL when the database could not be opened */
    al_eventlog_t *eventlog;  /* NULL likewise */
    uint64_t inflight;        /* admin requests not yet disposed (graceful stop waits for 0) */
    struct gw_owner *owner;   /* the breaker owner in this process */
    bool retiring;            /* this control process is being replaced: its database is closed */
    struct gw_health *health; /* the prober in this process (metrics) */
} gw_admin_t;

/* Installs the admin handler on `pathconf`. */
void gw_admin_register(gw_admin_t *a, h2o_pathconf_t *pathconf);

/* Renders the Prometheus text exposition of every metric into a malloc'd NUL-terminated string
 * (metrics.c). Returns NULL when out of memory. */
struct gw_health_stats;
char *gw_metrics_render(const gw_runtime_t *rt, uint64_t now_ms,
                        const struct gw_health_stats *health);

#endif
