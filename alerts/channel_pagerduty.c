/*
 * channel_pagerduty.c - the `pagerduty` channel: PagerDuty Events API v2, one event per alert.
 *
 * Provider behaviour this file relies on (Events API v2, POST
 * https://events.pagerduty.com/v2/enqueue, application/json; the routing key in the body is the
 * credential):
 *   - trigger: {"routing_key","event_action":"trigger","dedup_key","payload":{"summary" (at most
 *     1024 characters),"source","severity" (critical|error|warning|info),"timestamp","class",
 *     "custom_details"},"client","links"} (links: the Breakwater ack link, when there is one).
 *   - acknowledge / resolve: {"routing_key","event_action":"acknowledge"|"resolve","dedup_key"}:
 *     PagerDuty finds the incident by dedup_key, so every event of an alert carries the same
 *     one: the alert's dedup_key (at most 255 characters; a longer one is replaced by its stable
 *     hash, see al_stable_key, so all three actions still agree).
 *   - Replies: 202 {"status":"success","message":"Event processed","dedup_key":..} is success;
 *     400 {"status":"invalid event","message":..,"errors":[..]} is permanent (the event is
 *     malformed or the routing key invalid for it); 429 (too many events for the routing key)
 *     and 5xx are retried; 401/403/404 mean the URL or key is wrong (broken). A 2xx without
 *     status "success" is not a success (retry).
 *
 * One request per alert (parts() = the number of alerts): the Events API takes one event per
 * call. Parts of a group carry Idempotency-Keys "<delivery_id>:<alert_id>" as the webhook does.
 * Severity from the alert's tier: P0 critical, P1 error, P2 warning.
 */
#include <stdio.h>
#include <string.h>

#include "channel_int.h"

#define DEFAULT_URL "https://events.pagerduty.com/v2/enqueue"
#define DEDUP_MAX 255
#define SUMMARY_MAX 1024
#define LINK_MAX 1024

static const char *severity(const char *tier)
{
    if (strcmp(tier, "P0") == 0)
        return "critical";
    if (strcmp(tier, "P1") == 0)
        return "error";
    return "warning";
}

static const char *action_name(al_alert_action_t a)
{
    return a == AL_ACTION_RESOLVE       ? "resolve"
           : a == AL_ACTION_ACKNOWLEDGE ? "acknowledge"
                                        : "trigger";
}

static json_t *details(const al_alert_view_t *v)
{
    json_t *d = json_object();

    if (d == NULL)
        return NULL;
    if (v->labels != NULL && json_object_update(d, v->labels) != 0)
        goto fail;
    if (json_object_set_new(d, "alert_id", json_string(v->alert_id)) != 0 ||
        json_object_set_new(d, "dedup_key", json_string(v->dedup_key)) != 0 ||
        json_object_set_new(d, "tier", json_string(v->tier)) != 0 ||
        json_object_set_new(d, "event", json_string(v->event)) != 0 ||
        json_object_set_new(d, "count", json_integer(v->count)) != 0 ||
        json_object_set_new(d, "escalation_level", json_integer(v->escalation_level)) != 0 ||
        json_object_set_new(d, "flapping", json_boolean(v->flapping)) != 0)
        goto fail;
    return d;
fail:
    json_decref(d);
    return NULL;
}

static json_t *trigger_fields(const al_channel_ctx_t *ctx, const al_message_t *m,
                              const al_alert_view_t *v, json_t *body)
{
    const char *text = *v->summary ? v->summary : v->event;
    char summary[SUMMARY_MAX + 1], link[LINK_MAX];
    size_t n = al_utf8_prefix(text, strlen(text), SUMMARY_MAX);
    json_t *payload;

    memcpy(summary, text, n);
    summary[n] = '\0';
    payload = json_pack("{s:s, s:s, s:s, s:s, s:o}", "summary", summary, "source",
                        *v->source ? v->source : "breakwater", "severity", severity(v->tier),
                        "class", v->event, "custom_details", details(v));
    if (payload == NULL)
        return NULL;
    if (*v->started_at && json_object_set_new(payload, "timestamp", json_string(v->started_at)))
        goto fail;
    if (json_object_set_new(body, "payload", payload) != 0 ||
        json_object_set_new(body, "client", json_string("Breakwater")) != 0)
        return NULL;
    if (al_channel_ack_link(ctx, v->alert_id, link, sizeof(link)) > 0 &&
        json_object_set_new(
            body, "links",
            json_pack("[{s:s, s:s}]", "href", link, "text", "Acknowledge in Breakwater")) != 0)
        return NULL;
    return body;
fail:
    json_decref(payload);
    return NULL;
}

static size_t pagerduty_parts(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    return m->nalerts;
}

static int pagerduty_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                           al_request_t *out)
{
    const char *url;
    al_alert_view_t v;
    al_alert_action_t action;
    char dedup[DEDUP_MAX + 1];
    json_t *body;

    if (ctx->cfg == NULL || ctx->cfg->routing_key == NULL || part >= m->nalerts ||
        al_alert_view(ctx, m, part, &v) != 0 || *v.dedup_key == '\0')
        return AL_EBADINPUT;
    url = ctx->cfg->url != NULL ? ctx->cfg->url : DEFAULT_URL;
    action = al_alert_action(m, &v);
    al_stable_key(v.dedup_key, DEDUP_MAX, dedup);
    body = json_pack("{s:s, s:s, s:s}", "routing_key", ctx->cfg->routing_key, "event_action",
                     action_name(action), "dedup_key", dedup);
    if (body == NULL || (action == AL_ACTION_TRIGGER && trigger_fields(ctx, m, &v, body) == NULL)) {
        json_decref(body);
        return AL_DB_ENOMEM;
    }
    if (m->nalerts > 1)
        snprintf(out->idempotency_key, sizeof(out->idempotency_key), "%s:%s", m->d->delivery_id,
                 v.alert_id);
    return al_request_json(out, url, body);
}

static al_reply_class_t pagerduty_classify(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                           uint64_t *retry_after_ms)
{
    al_reply_class_t cls = al_classify_http(ctx, r, retry_after_ms);
    json_t *j;
    bool ok;

    if (cls != AL_REPLY_SENT)
        return cls;
    j = al_reply_json(r);
    ok = r->status == 202 && al_json_str_is(j, "status", "success");
    json_decref(j);
    return ok ? AL_REPLY_SENT : AL_REPLY_RETRY;
}

const al_channel_ops_t al_channel_pagerduty = {
    .type = "pagerduty",
    .parts = pagerduty_parts,
    .build = pagerduty_build,
    .classify = pagerduty_classify,
    .deliver = NULL,
};
