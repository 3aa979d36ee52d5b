/*
 * channel_webhook.c - the generic `webhook` channel: SPEC section 5's body, one alert per request.
 *
 * Body (exactly these keys, in this order; nothing else, so receivers can validate strictly):
 *   {"version":"1","alert_id","delivery_id","dedup_key","tier","status","event","labels",
 *    "summary","started_at","escalation_level","count","source"}
 * POSTed as application/json to the channel's `url` with its extra `headers`. The sender adds
 * Idempotency-Key, User-Agent and Content-Type.
 *
 * Grouped notifications (group_wait, or several alerts decided together) carry up to 50 alerts;
 * the body speaks about one alert, so a group is sent as one request per alert, in order, all with
 * the same body "delivery_id". Their Idempotency-Keys differ ("<delivery_id>:<alert_id>"): a
 * receiver that honours the header would otherwise keep the first alert and drop the rest. A
 * notification about one alert uses the delivery id itself, as SPEC says.
 *
 * Success is any 2xx: the generic webhook has no success field in its reply (al_classify_http).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel.h"

/* The SPEC keys, in order; the engine's payload element holds each under the same name. */
static const char *const spec_keys[] = {
    "alert_id", "delivery_id", "dedup_key",        "tier",  "status", "event", "labels",
    "summary",  "started_at",  "escalation_level", "count", "source",
};

static json_t *field(const al_channel_ctx_t *ctx, const al_message_t *m, json_t *el,
                     const char *key)
{
    json_t *v = json_object_get(el, key);

    if (strcmp(key, "delivery_id") == 0)
        return json_string(m->d->delivery_id); /* the row's id is the authority */
    if (strcmp(key, "source") == 0 && !json_is_string(v))
        return ctx->source != NULL ? json_string(ctx->source) : json_null();
    if (strcmp(key, "labels") == 0 && !json_is_object(v))
        return json_object();
    return v != NULL ? json_incref(v) : json_null();
}

json_t *al_webhook_body(const al_channel_ctx_t *ctx, const al_message_t *m, size_t i)
{
    json_t *el = json_array_get(m->alerts, i);
    json_t *body;

    if (!json_is_object(el))
        return NULL;
    body = json_object();
    if (body == NULL || json_object_set_new(body, "version", json_string("1")) != 0)
        goto fail;
    for (size_t k = 0; k < sizeof(spec_keys) / sizeof(spec_keys[0]); k++)
        if (json_object_set_new(body, spec_keys[k], field(ctx, m, el, spec_keys[k])) != 0)
            goto fail;
    return body;
fail:
    json_decref(body);
    return NULL;
}

static size_t webhook_parts(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    return m->nalerts;
}

static int webhook_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                         al_request_t *out)
{
    json_t *body;
    int r = 0;

    if (ctx->cfg == NULL || ctx->cfg->url == NULL || part >= m->nalerts)
        return AL_EBADINPUT;
    body = al_webhook_body(ctx, m, part);
    if (body == NULL)
        return json_is_object(json_array_get(m->alerts, part)) ? AL_DB_ENOMEM : AL_EBADINPUT;
    out->method = "POST";
    out->content_type = "application/json";
    out->body = json_dumps(body, JSON_COMPACT);
    out->url = strdup(ctx->cfg->url);
    if (out->body == NULL || out->url == NULL)
        r = AL_DB_ENOMEM;
    else
        out->body_len = strlen(out->body);
    for (size_t i = 0; r == 0 && i < ctx->cfg->nheaders; i++)
        r = al_request_header(out, ctx->cfg->headers[i].key, ctx->cfg->headers[i].value);
    if (r == 0 && m->nalerts > 1)
        snprintf(out->idempotency_key, sizeof(out->idempotency_key), "%s:%s", m->d->delivery_id,
                 json_string_value(json_object_get(body, "alert_id")) != NULL
                     ? json_string_value(json_object_get(body, "alert_id"))
                     : "?");
    json_decref(body);
    if (r != 0)
        al_request_dispose(out);
    return r;
}

const al_channel_ops_t al_channel_webhook = {
    .type = "webhook",
    .parts = webhook_parts,
    .build = webhook_build,
    .classify = NULL, /* al_classify_http: any 2xx is success */
    .deliver = NULL,
};
