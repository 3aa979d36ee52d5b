/*
 * channel_alertmanager.c - the `alertmanager` channel: the notification as an Alertmanager
 * webhook (version "4") body, so receivers written for Alertmanager's webhook_config (bots,
 * ticket bridges, another Breakwater's POST /api/v1/alerts) consume Breakwater unchanged.
 *
 * Provider behaviour this file relies on (Alertmanager's webhook notifier, "version": "4"):
 *   {"version":"4","groupKey":..,"truncatedAlerts":0,"status":"firing"|"resolved",
 *    "receiver":..,"groupLabels":{..},"commonLabels":{..},"commonAnnotations":{..},
 *    "externalURL":..,"alerts":[{"status","labels","annotations","startsAt","endsAt",
 *    "generatorURL","fingerprint"}]}
 *   - The group's status is "resolved" only when every alert in it is resolved.
 *   - endsAt of a firing alert is Go's zero time "0001-01-01T00:00:00Z"; of a resolved alert,
 *     when it resolved (the payload's resolved_at/updated_at when present, else now).
 *   - fingerprint is 16 hex digits identifying the alert's label set: here the first 64 bits
 *     of SHA-256(dedup_key), stable for every notification of the alert.
 *   - Receivers answer 2xx when they took it; there is no success field (al_classify_http).
 *
 * Labels: the alert's labels plus alertname (the event), tier, and severity (P0 critical, P1
 * warning, P2 info), each only when the alert's labels lack it. Breakwater's own external
 * endpoint maps tier, else severity, back to the same tier, so Breakwater -> Breakwater keeps it.
 * Annotations: summary, dedup_key, breakwater_alert_id, ack_url (when there is a link).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "channel_int.h"

#define ZERO_TIME "0001-01-01T00:00:00Z"
#define LINK_MAX 1024

static const char *severity(const char *tier)
{
    if (strcmp(tier, "P0") == 0)
        return "critical";
    if (strcmp(tier, "P1") == 0)
        return "warning";
    return "info";
}

static void rfc3339(uint64_t ms, char out[32])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;

    if (gmtime_r(&secs, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, 32, "%s", ZERO_TIME);
}

static int set_default(json_t *o, const char *key, const char *value)
{
    if (json_object_get(o, key) != NULL)
        return 0;
    return json_object_set_new(o, key, json_string(value));
}

static json_t *am_labels(const al_alert_view_t *v)
{
    json_t *l = json_object(), *val;
    const char *key;

    if (l == NULL)
        return NULL;
    json_object_foreach(v->labels, key, val)
    {
        if (json_is_string(val) && json_object_set(l, key, val) != 0)
            goto fail;
    }
    if (set_default(l, "alertname", *v->event ? v->event : "breakwater") != 0 ||
        set_default(l, "tier", v->tier) != 0 || set_default(l, "severity", severity(v->tier)) != 0)
        goto fail;
    return l;
fail:
    json_decref(l);
    return NULL;
}

static json_t *am_alert(const al_channel_ctx_t *ctx, const al_message_t *m, size_t i,
                        bool *resolved)
{
    json_t *el = json_array_get(m->alerts, i), *a, *ann;
    const char *ext =
        ctx->alerts != NULL && ctx->alerts->external_url != NULL ? ctx->alerts->external_url : "";
    char ends[32], fp[65], link[LINK_MAX];
    al_alert_view_t v;
    const char *at;

    if (al_alert_view(ctx, m, i, &v) != 0)
        return NULL;
    *resolved = al_alert_action(m, &v) == AL_ACTION_RESOLVE;
    at = json_string_value(json_object_get(el, "resolved_at"));
    if (at == NULL)
        at = json_string_value(json_object_get(el, "updated_at"));
    if (!*resolved)
        snprintf(ends, sizeof(ends), "%s", ZERO_TIME);
    else if (at != NULL)
        snprintf(ends, sizeof(ends), "%s", at);
    else
        rfc3339(ctx->now_ms, ends);
    al_sha256_hex(v.dedup_key, fp);
    fp[16] = '\0';
    ann = json_pack("{s:s, s:s, s:s}", "summary", v.summary, "dedup_key", v.dedup_key,
                    "breakwater_alert_id", v.alert_id);
    if (ann != NULL && !*resolved && al_channel_ack_link(ctx, v.alert_id, link, sizeof(link)) > 0 &&
        json_object_set_new(ann, "ack_url", json_string(link)) != 0) {
        json_decref(ann);
        return NULL;
    }
    a = json_pack("{s:s, s:o, s:o, s:s, s:s, s:s, s:s}", "status",
                  *resolved ? "resolved" : "firing", "labels", am_labels(&v), "annotations", ann,
                  "startsAt", *v.started_at ? v.started_at : ZERO_TIME, "endsAt", ends,
                  "generatorURL", ext, "fingerprint", fp);
    return a;
}

/* Keeps in common only the pairs of obj that every alert's `field` shares. */
static void intersect(json_t *common, json_t *obj)
{
    const char *key;
    json_t *val;
    void *tmp;

    json_object_foreach_safe(common, tmp, key, val)
    {
        if (!json_equal(val, json_object_get(obj, key)))
            json_object_del(common, key);
    }
}

static json_t *common_of(json_t *alerts, const char *field)
{
    json_t *common = json_deep_copy(json_object_get(json_array_get(alerts, 0), field));
    size_t i;
    json_t *a;

    if (common == NULL)
        return json_object();
    json_array_foreach(alerts, i, a)
    {
        intersect(common, json_object_get(a, field));
    }
    return common;
}

static json_t *am_body(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    json_t *alerts = json_array(), *common, *group, *body;
    bool all_resolved = true;
    char key[600];
    const char *ext =
        ctx->alerts != NULL && ctx->alerts->external_url != NULL ? ctx->alerts->external_url : "";

    for (size_t i = 0; alerts != NULL && i < m->nalerts; i++) {
        bool resolved = false;
        json_t *a = am_alert(ctx, m, i, &resolved);
        if (a == NULL || json_array_append_new(alerts, a) != 0) {
            json_decref(alerts);
            return NULL;
        }
        all_resolved = all_resolved && resolved;
    }
    if (alerts == NULL)
        return NULL;
    common = common_of(alerts, "labels");
    group = json_object();
    if (group != NULL && json_object_get(common, "alertname") != NULL)
        json_object_set(group, "alertname", json_object_get(common, "alertname"));
    if (m->nalerts == 1)
        snprintf(key, sizeof(key), "breakwater:%s:%s", al_message_tier(m),
                 json_string_value(json_object_get(
                     json_object_get(json_array_get(alerts, 0), "annotations"), "dedup_key")));
    else
        snprintf(key, sizeof(key), "breakwater:%s:group:%s", al_message_tier(m), m->d->delivery_id);
    body = json_pack("{s:s, s:s, s:i, s:s, s:s, s:o, s:o, s:o, s:s, s:o}", "version", "4",
                     "groupKey", key, "truncatedAlerts", 0, "status",
                     all_resolved ? "resolved" : "firing", "receiver",
                     ctx->cfg != NULL && ctx->cfg->name != NULL ? ctx->cfg->name : "breakwater",
                     "groupLabels", group, "commonLabels", common, "commonAnnotations",
                     common_of(alerts, "annotations"), "externalURL", ext, "alerts", alerts);
    return body;
}

static int alertmanager_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                              al_request_t *out)
{
    json_t *body;

    if (ctx->cfg == NULL || ctx->cfg->url == NULL || part != 0 || m->nalerts == 0)
        return AL_EBADINPUT;
    body = am_body(ctx, m);
    if (body == NULL)
        return json_is_object(json_array_get(m->alerts, 0)) ? AL_DB_ENOMEM : AL_EBADINPUT;
    return al_request_json(out, ctx->cfg->url, body);
}

const al_channel_ops_t al_channel_alertmanager = {
    .type = "alertmanager",
    .parts = NULL,
    .build = alertmanager_build,
    .classify = NULL, /* al_classify_http: a 2xx from the receiver is success */
    .deliver = NULL,
};
