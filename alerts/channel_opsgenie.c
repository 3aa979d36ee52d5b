/*
 * channel_opsgenie.c - the `opsgenie` channel: Opsgenie Alert API v2, one request per alert.
 *
 * Provider behaviour this file relies on (Opsgenie Alert API, base https://api.opsgenie.com or
 * https://api.eu.opsgenie.com, header "Authorization: GenieKey API_KEY"):
 *   - create: POST /v2/alerts {"message" (at most 130 characters),"alias" (at most 512),
 *     "description" (at most 15000),"tags","details" (string values),"entity","source",
 *     "priority" (P1..P5)}. An open alert with the same alias is de-duplicated by Opsgenie
 *     (its count goes up), so repeats and escalations do not open new alerts.
 *   - close: POST /v2/alerts/{alias}/close?identifierType=alias {"source","user","note"};
 *     acknowledge: POST /v2/alerts/{alias}/acknowledge?identifierType=alias, same body. The
 *     alias (our dedup key, or its stable hash when longer than 512) is percent-encoded in the
 *     path.
 *   - Every call is asynchronous: success is 202 {"result":"Request will be processed",
 *     "took":..,"requestId":..} ("queued", not "done"). 422 = invalid request (permanent),
 *     401/403 = key wrong or lacking rights (broken), 429 = rate limited (retry), 5xx retry.
 *     Any other 2xx is not what Opsgenie answers: not counted as sent (retry).
 *
 * Priority from the alert's tier: P0 -> P1, P1 -> P2, P2 -> P3. Parts of a group carry
 * Idempotency-Keys "<delivery_id>:<alert_id>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel_int.h"

#define DEFAULT_URL "https://api.opsgenie.com"
#define ALIAS_MAX 512
#define MESSAGE_MAX 130
#define DESCRIPTION_MAX 15000
#define LINK_MAX 1024
#define DETAIL_MAX 8000

static const char *priority(const char *tier)
{
    if (strcmp(tier, "P0") == 0)
        return "P1";
    if (strcmp(tier, "P1") == 0)
        return "P2";
    return "P3";
}

static char *description(const al_channel_ctx_t *ctx, const al_message_t *m,
                         const al_alert_view_t *v)
{
    char link[LINK_MAX];
    al_buf_t b;

    al_buf_init(&b, DESCRIPTION_MAX);
    al_buf_printf(&b, "%s\n\nKey: %s\n", *v->summary ? v->summary : v->event, v->dedup_key);
    if (json_object_size(v->labels) > 0) {
        al_buf_puts(&b, "Labels: ");
        al_labels_text(&b, v->labels);
        al_buf_puts(&b, "\n");
    }
    al_facts_text(&b, v, ", ");
    if (al_channel_ack_link(ctx, v->alert_id, link, sizeof(link)) > 0)
        al_buf_printf(&b, "\nAcknowledge in Breakwater: %s", link);
    al_buf_printf(&b, "\n\nBreakwater" AL_MIDDOT "%s", *v->source ? v->source : "");
    return al_buf_steal(&b);
}

/* details: the labels (string values only, each cut to DETAIL_MAX) plus our own fields. */
static json_t *details(const al_alert_view_t *v)
{
    json_t *d = json_object(), *val;
    const char *key;
    char num[32];
    int r = d != NULL ? 0 : -1;

    json_object_foreach(v->labels, key, val)
    {
        const char *s = json_string_value(val);
        if (r == 0 && s != NULL) {
            size_t n = al_utf8_prefix(s, strlen(s), DETAIL_MAX);
            r = json_object_set_new(d, key, json_stringn(s, n));
        }
    }
    snprintf(num, sizeof(num), "%lld", (long long)v->count);
    if (r == 0)
        r = json_object_set_new(d, "breakwater_alert_id", json_string(v->alert_id)) ||
            json_object_set_new(d, "dedup_key", json_string(v->dedup_key)) ||
            json_object_set_new(d, "tier", json_string(v->tier)) ||
            json_object_set_new(d, "count", json_string(num));
    if (r != 0) {
        json_decref(d);
        return NULL;
    }
    return d;
}

static json_t *create_body(const al_channel_ctx_t *ctx, const al_message_t *m,
                           const al_alert_view_t *v, const char *alias)
{
    const char *text = *v->summary ? v->summary : v->event;
    char message[MESSAGE_MAX + 1], *desc = description(ctx, m, v);
    size_t n = al_utf8_prefix(text, strlen(text), MESSAGE_MAX);
    json_t *body = NULL;

    memcpy(message, text, n);
    message[n] = '\0';
    if (desc != NULL)
        body = json_pack("{s:s, s:s, s:s, s:[s, s, s], s:o, s:s, s:s, s:s}", "message", message,
                         "alias", alias, "description", desc, "tags", "breakwater", v->event,
                         v->tier, "details", details(v), "entity", v->event, "source",
                         *v->source ? v->source : "breakwater", "priority", priority(v->tier));
    free(desc);
    return body;
}

/* base + "/v2/alerts/" + escaped alias + "/" + verb + "?identifierType=alias". */
static char *action_url(const char *base, size_t blen, const char *alias, const char *verb)
{
    al_buf_t b;

    al_buf_init(&b, blen + 3 * strlen(alias) + 64);
    al_buf_printf(&b, "%.*s/v2/alerts/", (int)blen, base);
    al_url_escape(&b, alias);
    al_buf_printf(&b, "/%s?identifierType=alias", verb);
    return al_buf_steal(&b);
}

static size_t opsgenie_parts(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    return m->nalerts;
}

static int opsgenie_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                          al_request_t *out)
{
    const char *base;
    size_t blen;
    char alias[ALIAS_MAX + 1], auth[512];
    al_alert_view_t v;
    al_alert_action_t action;
    json_t *body;
    char *url;
    int r;

    if (ctx->cfg == NULL || ctx->cfg->api_key == NULL || part >= m->nalerts ||
        al_alert_view(ctx, m, part, &v) != 0 || *v.dedup_key == '\0')
        return AL_EBADINPUT;
    if ((size_t)snprintf(auth, sizeof(auth), "GenieKey %s", ctx->cfg->api_key) >= sizeof(auth))
        return AL_EBADINPUT;
    base = ctx->cfg->url != NULL ? ctx->cfg->url : DEFAULT_URL;
    blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    al_stable_key(v.dedup_key, ALIAS_MAX, alias);
    action = al_alert_action(m, &v);
    if (action == AL_ACTION_TRIGGER) {
        body = create_body(ctx, m, &v, alias);
        url = NULL;
        if (asprintf(&url, "%.*s/v2/alerts", (int)blen, base) < 0)
            url = NULL;
    } else {
        body = json_pack("{s:s, s:s, s:s}", "source", *v.source ? v.source : "breakwater", "user",
                         "Breakwater", "note",
                         action == AL_ACTION_RESOLVE ? "Resolved in Breakwater"
                                                     : "Acknowledged in Breakwater");
        url = action_url(base, blen, alias, action == AL_ACTION_RESOLVE ? "close" : "acknowledge");
    }
    if (body == NULL || url == NULL) {
        json_decref(body);
        free(url);
        return AL_DB_ENOMEM;
    }
    r = al_request_json(out, url, body);
    free(url);
    if (r == 0)
        r = al_request_header(out, "Authorization", auth);
    if (r == 0 && m->nalerts > 1)
        snprintf(out->idempotency_key, sizeof(out->idempotency_key), "%s:%s", m->d->delivery_id,
                 v.alert_id);
    if (r != 0)
        al_request_dispose(out);
    explicit_bzero(auth, sizeof(auth));
    return r;
}

static al_reply_class_t opsgenie_classify(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                          uint64_t *retry_after_ms)
{
    al_reply_class_t cls = al_classify_http(ctx, r, retry_after_ms);

    if (cls == AL_REPLY_SENT && r->status != 202)
        return AL_REPLY_RETRY;
    return cls;
}

const al_channel_ops_t al_channel_opsgenie = {
    .type = "opsgenie",
    .parts = opsgenie_parts,
    .build = opsgenie_build,
    .classify = opsgenie_classify,
    .deliver = NULL,
};
