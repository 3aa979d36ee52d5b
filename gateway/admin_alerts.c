/*
 * admin_alerts.c - the admin API's alert and silence endpoints (SPEC section 6).
 *
 *   GET  /api/v1/alerts?status=firing&limit=N     POST /api/v1/alerts (generic or Alertmanager v4)
 *   GET  /api/v1/alerts/{id}                      with its deliveries and full history
 *   POST /api/v1/alerts/{id}/ack                  POST /api/v1/alerts/{id}/resolve
 *   GET|POST /api/v1/silences                     DELETE /api/v1/silences/{id}
 *
 * Thin: each handler maps the request to one alerts/ engine call and its result to a status.
 * The engine does blocking SQLite work; it runs here, in the control process, never in a worker.
 * After anything that may make a notification due, the sender is kicked.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "acklink.h"
#include "alerts.h"
#include "log.h"
#include "query.h"
#include "sender.h"

/* Maps an engine error to an HTTP answer. */
static void send_engine_error(h2o_req_t *req, int r, const char *detail)
{
    int status = r == AL_ENOENT      ? 404
                 : r == AL_ESTATE    ? 409
                 : r == AL_EBADINPUT ? 400
                 : r == AL_ELIMIT    ? 429
                                     : 503;
    const char *code = r == AL_ENOENT      ? "not_found"
                       : r == AL_ESTATE    ? "conflict"
                       : r == AL_EBADINPUT ? "bad_request"
                       : r == AL_ELIMIT    ? "limit_reached"
                                           : "store_unavailable";
    gw_admin_send_error(req, status, code,
                        detail != NULL && detail[0] != '\0' ? detail : al_strerror(r));
}

/* The id in "/api/v1/<what>/{id}[/suffix]"; -1 when malformed. */
static int64_t path_id(h2o_req_t *req, size_t prefix_len)
{
    h2o_iovec_t p = req->path_normalized;
    int64_t id = 0;
    size_t i = prefix_len, digits = 0;
    for (; i < p.len && p.base[i] >= '0' && p.base[i] <= '9' && digits < 18; i++, digits++)
        id = id * 10 + (p.base[i] - '0');
    if (digits == 0 || (i < p.len && p.base[i] != '/'))
        return -1;
    return id;
}

static bool path_ends_with(h2o_req_t *req, const char *s)
{
    size_t n = strlen(s), len = req->path_normalized.len;
    return len >= n && memcmp(req->path_normalized.base + len - n, s, n) == 0;
}

static void list_alerts(gw_admin_t *a, h2o_req_t *req)
{
    char status[32], limit_s[16];
    const char *st = gw_query_param(req, "status", status, sizeof(status)) == 1 ? status : NULL;
    const char *lim = gw_query_param(req, "limit", limit_s, sizeof(limit_s)) == 1 ? limit_s : NULL;
    char *json = NULL;
    int r =
        al_alerts_json(a->engine, st, lim != NULL ? (uint32_t)strtoul(lim, NULL, 10) : 0, &json);
    if (r != 0)
        send_engine_error(
            req, r, r == AL_EBADINPUT ? "status must be firing, acknowledged or resolved" : NULL);
    else
        gw_admin_send_json_text(req, 200, json);
}

static void raise_external(gw_admin_t *a, h2o_req_t *req)
{
    char err[256] = "";
    al_external_result_t res;
    int r = al_engine_external(a->engine, req->entity.base != NULL ? req->entity.base : "",
                               req->entity.len, gw_unix_ms(), &res, err, sizeof(err));
    if (r < 0) {
        send_engine_error(req, r, err);
        return;
    }
    gw_admin_kick(a);
    json_t *ids = json_array();
    for (size_t i = 0; r == 0 && i < res.nids; i++)
        json_array_append_new(ids, json_integer((json_int_t)res.ids[i]));
    json_t *body =
        r == AL_QUEUED
            ? json_pack("{s:s, s:o}", "status", "queued", "ids", ids)
            : json_pack("{s:s, s:I, s:I, s:I, s:I, s:o}", "status", "accepted", "raised",
                        (json_int_t)res.raised, "updated", (json_int_t)res.updated, "resolved",
                        (json_int_t)res.resolved, "ignored", (json_int_t)res.ignored, "ids", ids);
    gw_admin_send_json_text(req, r == AL_QUEUED ? 202 : 201, json_dumps(body, JSON_COMPACT));
    json_decref(body);
}

static void alert_action(gw_admin_t *a, h2o_req_t *req, bool ack)
{
    int64_t id = path_id(req, strlen("/api/v1/alerts/"));
    if (id < 0) {
        gw_admin_send_error(req, 404, "not_found", "no such alert");
        return;
    }
    int r = ack ? al_engine_ack(a->engine, id, "admin-api", gw_unix_ms())
                : al_engine_resolve(a->engine, id, "admin-api", gw_unix_ms());
    if (r != 0) {
        send_engine_error(req, r, NULL);
        return;
    }
    gw_admin_kick(a);
    char *json = NULL;
    if (al_alert_json(a->engine, id, &json) != 0)
        gw_admin_send_error(req, 500, "internal_error", "cannot read the alert back");
    else
        gw_admin_send_json_text(req, 200, json);
}

/* The alert with its deliveries and history, plus its signed ack link when alerts.external_url
 * is set (the admin API is the operator's; the link is what messages carry). */
static void get_alert(gw_admin_t *a, h2o_req_t *req)
{
    int64_t id = path_id(req, strlen("/api/v1/alerts/"));
    char *json = NULL;
    int r = id < 0 ? AL_ENOENT : al_alert_json(a->engine, id, &json);
    if (r != 0) {
        send_engine_error(req, r, NULL);
        return;
    }
    char link[512];
    size_t n =
        al_ack_link(a->cfg->alerts.external_url, id, gw_unix_ms() / 1000, link, sizeof(link));
    json_t *doc = n > 0 ? json_loads(json, 0, NULL) : NULL;
    if (doc != NULL) {
        json_object_set_new(doc, "ack_link", json_stringn(link, n));
        free(json);
        json = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(doc);
    }
    if (json == NULL)
        gw_admin_send_error(req, 500, "internal_error", "out of memory");
    else
        gw_admin_send_json_text(req, 200, json);
}

static void silences(gw_admin_t *a, h2o_req_t *req, bool get, bool post, bool del)
{
    char *json = NULL, err[256] = "";
    if (get && req->path_normalized.len == strlen("/api/v1/silences")) {
        char all[8];
        bool include_all = gw_query_param(req, "all", all, sizeof(all)) == 1 && !strcmp(all, "1");
        int r = al_silences_json(a->engine, gw_unix_ms(), include_all, &json);
        if (r != 0)
            send_engine_error(req, r, NULL);
        else
            gw_admin_send_json_text(req, 200, json);
    } else if (post && req->path_normalized.len == strlen("/api/v1/silences")) {
        int64_t id = 0;
        int r = al_silence_create_json(a->engine, req->entity.base != NULL ? req->entity.base : "",
                                       req->entity.len, gw_unix_ms(), &id, err, sizeof(err));
        if (r != 0) {
            send_engine_error(req, r, err);
            return;
        }
        json_t *body = json_pack("{s:I}", "id", (json_int_t)id);
        gw_admin_send_json_text(req, 201, json_dumps(body, JSON_COMPACT));
        json_decref(body);
    } else if (del) {
        int64_t id = path_id(req, strlen("/api/v1/silences/"));
        int r = id < 0 ? AL_ENOENT : al_silence_expire(a->engine, id, gw_unix_ms());
        if (r != 0) {
            send_engine_error(req, r, NULL);
            return;
        }
        gw_admin_kick(a);
        json_t *body = json_pack("{s:I, s:s}", "id", (json_int_t)id, "status", "expired");
        gw_admin_send_json_text(req, 200, json_dumps(body, JSON_COMPACT));
        json_decref(body);
    } else {
        gw_admin_send_error(req, 405, "method_not_allowed",
                            "GET or POST /api/v1/silences, DELETE /api/v1/silences/{id}");
    }
}

static void delivery_row(void *ctx, const char *channel, const char *result, uint64_t n)
{
    fprintf(ctx, "breakwater_alert_deliveries_total{channel=\"%s\",result=\"%s\"} %llu\n", channel,
            result, (unsigned long long)n);
}

char *gw_admin_alert_metrics(gw_admin_t *a)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (f == NULL)
        return NULL;
    fputs("# HELP breakwater_alert_deliveries_total Notification attempts by channel and result.\n"
          "# TYPE breakwater_alert_deliveries_total counter\n",
          f);
    if (a->sender != NULL)
        al_sender_stats(a->sender, delivery_row, f);
    uint64_t depth = 0;
    if (a->engine != NULL)
        al_outbox_depth(a->engine, &depth);
    fprintf(f,
            "# HELP breakwater_alert_queue_depth Notifications waiting to be delivered, plus "
            "alerts held in memory while the store is unavailable.\n"
            "# TYPE breakwater_alert_queue_depth gauge\n"
            "breakwater_alert_queue_depth %llu\n",
            (unsigned long long)(depth + (a->engine != NULL ? al_engine_queued(a->engine) : 0)));
    /* the last known counts stay when the store cannot be read: a scrape never fails on it */
    if (a->engine != NULL)
        al_alerts_count_active(a->engine, a->alerts_firing, a->alerts_acked);
    fputs("# HELP breakwater_alerts_firing Alerts firing and not acknowledged, by current tier.\n"
          "# TYPE breakwater_alerts_firing gauge\n",
          f);
    for (int t = 0; t < GW_TIER_COUNT; t++)
        fprintf(f, "breakwater_alerts_firing{tier=\"%s\"} %llu\n", al_tier_name(t),
                (unsigned long long)a->alerts_firing[t]);
    fputs("# HELP breakwater_alerts_acknowledged Alerts acknowledged and not resolved, by current "
          "tier.\n"
          "# TYPE breakwater_alerts_acknowledged gauge\n",
          f);
    for (int t = 0; t < GW_TIER_COUNT; t++)
        fprintf(f, "breakwater_alerts_acknowledged{tier=\"%s\"} %llu\n", al_tier_name(t),
                (unsigned long long)a->alerts_acked[t]);
    if (fclose(f) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

int gw_admin_alerts(gw_admin_t *a, h2o_req_t *req)
{
    h2o_iovec_t p = req->path_normalized;
    bool get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    bool post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    bool del = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("DELETE"));
    bool alerts = h2o_memis(p.base, p.len, H2O_STRLIT("/api/v1/alerts")) ||
                  (p.len > 15 && memcmp(p.base, "/api/v1/alerts/", 15) == 0);
    bool sil = h2o_memis(p.base, p.len, H2O_STRLIT("/api/v1/silences")) ||
               (p.len > 17 && memcmp(p.base, "/api/v1/silences/", 17) == 0);
    if (!alerts && !sil)
        return 0;
    if (a->engine == NULL) {
        gw_admin_send_error(req, 503, "store_unavailable",
                            "the alert store is not open yet (see the control process's log)");
        return 1;
    }
    if (sil)
        silences(a, req, get, post, del);
    else if (p.len == strlen("/api/v1/alerts") && get)
        list_alerts(a, req);
    else if (p.len == strlen("/api/v1/alerts") && post)
        raise_external(a, req);
    else if (p.len == strlen("/api/v1/alerts"))
        gw_admin_send_error(req, 405, "method_not_allowed", "GET or POST");
    else if (post && path_ends_with(req, "/ack"))
        alert_action(a, req, true);
    else if (post && path_ends_with(req, "/resolve"))
        alert_action(a, req, false);
    else if (get)
        get_alert(a, req);
    else
        gw_admin_send_error(req, 405, "method_not_allowed", "see the admin API in README.md");
    return 1;
}
