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
    struct al_engine *engine; /* the alert engine; NULL until the database is open */
    struct al_sender *sender; /* the delivery loop; NULL likewise */
    void (*kick)(void *ctx);  /* something may have become due for delivery */
    void *kick_ctx;
    /* breakwater_alerts_firing / breakwater_alerts_acknowledged by tier, as last read from the
     * store: printed again when it cannot be read (busy, full, I/O error) or is not open */
    uint64_t alerts_firing[GW_TIER_COUNT];
    uint64_t alerts_acked[GW_TIER_COUNT];
} gw_admin_t;

/* Sends a malloc'd JSON text (freed here) with `status`, as every admin answer: Content-Type
 * application/json, Cache-Control: no-store. json NULL (out of memory): a plain 500. */
void gw_admin_send_json_text(h2o_req_t *req, int status, char *json);

/* Sends {"error": code, "message": message} with `status`. */
void gw_admin_send_error(h2o_req_t *req, int status, const char *code, const char *message);

/* Tells the delivery loop to look for due notifications (after acks, new alerts, ...). */
void gw_admin_kick(gw_admin_t *a);

/* The alert metrics in Prometheus text (admin_alerts.c): deliveries by channel and result, the
 * outbox depth, alerts firing and acknowledged by tier. malloc'd; NULL when out of memory. */
char *gw_admin_alert_metrics(gw_admin_t *a);

/* The alert and silence endpoints (admin_alerts.c). Returns 1 when it answered the request (the
 * path was one of them), 0 otherwise. */
int gw_admin_alerts(gw_admin_t *a, h2o_req_t *req);

/* Installs the admin handler on `pathconf`. */
void gw_admin_register(gw_admin_t *a, h2o_pathconf_t *pathconf);

/* Renders the Prometheus text exposition of every metric into a malloc'd NUL-terminated string
 * (metrics.c). Returns NULL when out of memory. */
struct gw_health_stats;
char *gw_metrics_render(const gw_runtime_t *rt, uint64_t now_ms,
                        const struct gw_health_stats *health);

#endif
