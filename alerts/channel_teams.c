/*
 * channel_teams.c - the `teams` channel: a Microsoft Teams incoming webhook (Workflows / Power
 * Automate "post to a channel when a webhook request is received", or a legacy Office 365
 * connector) carrying one Adaptive Card.
 *
 * Provider behaviour this file relies on:
 *   - POST application/json {"type":"message","attachments":[{"contentType":
 *     "application/vnd.microsoft.card.adaptive","contentUrl":null,"content":{AdaptiveCard}}]}.
 *     Teams renders Adaptive Card schema up to 1.5; 1.4 is used for older clients. A message is
 *     limited to about 28 KB.
 *   - A 2xx reply means "accepted", not "posted": Workflows answers 202 and runs the flow
 *     later, a legacy connector answers 200 with body "1". There is no success field to read.
 *     One exception is known: a legacy connector that is throttled still answers HTTP 200, with
 *     the text "Webhook message delivery failed with error: Microsoft Teams endpoint returned
 *     HTTP error 429 ..." in the body. That reply is not a delivery (retry).
 *   - Errors otherwise follow HTTP: 400 bad card (permanent), 401/403/404 (URL revoked or flow
 *     deleted: broken), 429/5xx retry (al_classify_http).
 *
 * Card: the title as a bold TextBlock (colour by state), one Container per alert with the
 * summary, a FactSet (key, labels, since, count, escalation) and an Acknowledge Action.OpenUrl
 * when there is a link; at most AL_RENDER_SHOWN_MAX (5) alerts within BODY_BUDGET
 * (al_render_blocks), then a TextBlock "…and N more alerts" for the rest, and "Breakwater ·
 * SOURCE" at the end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel_int.h"

#define BODY_BUDGET 20000 /* bytes of the alerts and the "more" line (Teams: about 28 KB) */
/* Bytes of one fact's value. An alert has up to 32 labels (names up to 128 B): with 200-byte
 * values the largest alert is about 12 KB of JSON, so even one alert alone stays within the
 * body budget (the first alert of a message always goes in whole). */
#define FACT_MAX 200
#define SUMMARY_MAX 1000 /* bytes of the summary */
#define TITLE_MAX 256
#define LINK_MAX 1024

static json_t *text_block(const char *text, const char *weight)
{
    return json_pack("{s:s, s:s, s:b, s:s}", "type", "TextBlock", "text", text, "wrap", 1, "weight",
                     weight);
}

static int add_fact(json_t *facts, const char *title, const char *value)
{
    char v[FACT_MAX + 1];
    size_t n = strlen(value);

    n = al_utf8_prefix(value, n, FACT_MAX);
    memcpy(v, value, n);
    v[n] = '\0';
    return json_array_append_new(facts, json_pack("{s:s, s:s}", "title", title, "value", v));
}

static json_t *facts_of(const al_alert_view_t *v)
{
    json_t *facts = json_array(), *val;
    const char *key;
    char num[32];
    int r = facts != NULL ? add_fact(facts, "Key", v->dedup_key) : -1;

    json_object_foreach(v->labels, key, val)
    {
        if (r == 0 && json_is_string(val))
            r = add_fact(facts, key, json_string_value(val));
    }
    if (r == 0)
        r = add_fact(facts, "Since", *v->started_at ? v->started_at : "?");
    if (r == 0 && v->count > 1) {
        snprintf(num, sizeof(num), "%lld", (long long)v->count);
        r = add_fact(facts, "Count", num);
    }
    if (r == 0 && v->escalation_level > 0) {
        snprintf(num, sizeof(num), "%lld", (long long)v->escalation_level);
        r = add_fact(facts, "Escalation", num);
    }
    if (r == 0 && v->flapping)
        r = add_fact(facts, "Flapping", "yes");
    if (r != 0) {
        json_decref(facts);
        return NULL;
    }
    return facts;
}

static json_t *container(const al_channel_ctx_t *ctx, const al_message_t *m,
                         const al_alert_view_t *v)
{
    char link[LINK_MAX], summary[SUMMARY_MAX + 1];
    size_t n = al_utf8_prefix(*v->summary ? v->summary : v->event,
                              strlen(*v->summary ? v->summary : v->event), SUMMARY_MAX);
    json_t *items, *c;

    memcpy(summary, *v->summary ? v->summary : v->event, n);
    summary[n] = '\0';
    items = json_pack("[o, {s:s, s:o}]", text_block(summary, "Bolder"), "type", "FactSet", "facts",
                      facts_of(v));
    if (items != NULL && al_alert_action(m, v) == AL_ACTION_TRIGGER &&
        al_channel_ack_link(ctx, v->alert_id, link, sizeof(link)) > 0 &&
        json_array_append_new(items, json_pack("{s:s, s:[{s:s, s:s, s:s}]}", "type", "ActionSet",
                                               "actions", "type", "Action.OpenUrl", "title",
                                               "Acknowledge", "url", link)) != 0) {
        json_decref(items);
        return NULL;
    }
    c = json_pack("{s:s, s:b, s:o}", "type", "Container", "separator", 1, "items", items);
    return c;
}

/* The Container of one alert, or the "more" line (al_render_blocks). */
static json_t *alert_block(const al_channel_ctx_t *ctx, const al_message_t *m,
                           const al_alert_view_t *v, const char *more, size_t shown)
{
    json_t *tb;

    (void)shown;
    if (v != NULL)
        return container(ctx, m, v);
    tb = text_block(more, "Default");
    if (tb != NULL && json_object_set_new(tb, "separator", json_true()) != 0) {
        json_decref(tb);
        return NULL;
    }
    return tb;
}

static const char *title_color(const al_message_t *m)
{
    const char *word = al_message_word(m);

    if (strcmp(word, "RESOLVED") == 0)
        return "Good";
    if (strcmp(word, "ACKNOWLEDGED") == 0)
        return "Accent";
    return m->d->tier == GW_TIER_P2 ? "Warning" : "Attention";
}

static json_t *card_body(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    char title[TITLE_MAX], footer[256];
    json_t *body = json_array(), *tb;

    al_message_title(m, title, sizeof(title));
    tb = text_block(title, "Bolder");
    if (body == NULL || tb == NULL || json_object_set_new(tb, "size", json_string("Medium")) ||
        json_object_set_new(tb, "color", json_string(title_color(m))) ||
        json_array_append_new(body, tb) != 0) {
        json_decref(body);
        return NULL;
    }
    if (al_render_blocks(ctx, m, body, alert_block, BODY_BUDGET, m->nalerts) < 0) {
        json_decref(body);
        return NULL;
    }
    snprintf(footer, sizeof(footer), "Breakwater" AL_MIDDOT "%s",
             ctx->source != NULL ? ctx->source : "");
    tb = text_block(footer, "Default");
    if (tb == NULL || json_object_set_new(tb, "isSubtle", json_true()) != 0 ||
        json_array_append_new(body, tb) != 0) {
        json_decref(body);
        return NULL;
    }
    return body;
}

static int teams_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                       al_request_t *out)
{
    json_t *content, *msg;

    if (ctx->cfg == NULL || ctx->cfg->url == NULL || part != 0 || m->nalerts == 0)
        return AL_EBADINPUT;
    content =
        json_pack("{s:s, s:s, s:s, s:{s:s}, s:o}", "$schema",
                  "http://adaptivecards.io/schemas/adaptive-card.json", "type", "AdaptiveCard",
                  "version", "1.4", "msteams", "width", "Full", "body", card_body(ctx, m));
    msg = json_pack("{s:s, s:[{s:s, s:n, s:o}]}", "type", "message", "attachments", "contentType",
                    "application/vnd.microsoft.card.adaptive", "contentUrl", "content", content);
    if (msg == NULL)
        return AL_DB_ENOMEM;
    return al_request_json(out, ctx->cfg->url, msg);
}

static bool contains(const al_reply_t *r, const char *needle)
{
    return r->body != NULL && memmem(r->body, r->body_len, needle, strlen(needle)) != NULL;
}

static al_reply_class_t teams_classify(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                       uint64_t *retry_after_ms)
{
    al_reply_class_t cls = al_classify_http(ctx, r, retry_after_ms);

    if (cls == AL_REPLY_SENT && (contains(r, "Webhook message delivery failed") ||
                                 contains(r, "Microsoft Teams endpoint returned HTTP error")))
        return AL_REPLY_RETRY;
    return cls;
}

const al_channel_ops_t al_channel_teams = {
    .type = "teams",
    .parts = NULL,
    .build = teams_build,
    .classify = teams_classify,
    .deliver = NULL,
};
