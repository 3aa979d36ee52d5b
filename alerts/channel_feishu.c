/*
 * channel_feishu.c - the `feishu` channel: a Feishu/Lark custom bot (自定义机器人) message card.
 *
 * Provider behaviour this file relies on (Feishu custom bot webhook,
 * https://open.feishu.cn/open-apis/bot/v2/hook/TOKEN):
 *   - POST application/json {"msg_type":"interactive","card":{...}} (or "text" with
 *     content.text). A request body may not exceed 20 KB.
 *   - Signing ("签名校验", when the bot has a secret): timestamp = now in unix SECONDS, sent as
 *     the string "timestamp" in the body; sign = base64(HMAC-SHA256(key = timestamp + "\n" +
 *     secret, msg = "")) in "sign". Key and message are the other way round from DingTalk, and
 *     the timestamp is in seconds, not milliseconds. A timestamp more than an hour off fails
 *     like a bad signature.
 *   - Replies: {"code":0,"msg":"success","data":{}} on success (older deployments answer
 *     {"StatusCode":0,"StatusMessage":"success"}); failures keep HTTP 200 (some 400) with a
 *     non-zero code: 19021 = sign match fail or timestamp out of range, 19022 = IP not allowed,
 *     19024 = keyword not found (the bot's security settings refuse us: broken); 11232 =
 *     frequency limited (100/min, 5/s per bot: retry); 9499 = bad request (our payload:
 *     permanent). Feishu's gateway answers an over-limit call with HTTP 429 and the wait in
 *     x-ogw-ratelimit-reset (seconds) when there is no Retry-After.
 *   - Keyword security: every card contains "Breakwater" (note element).
 *
 * Card: header (title, colour by tier: red P0, orange P1, yellow P2, green resolved, blue
 * acknowledged), one plain_text div per alert (plain text: summaries cannot inject markup), an
 * "Acknowledge" button per alert when there is a link, alerts separated by an hr; at most
 * AL_RENDER_SHOWN_MAX (5) alerts within BODY_BUDGET (al_render_blocks), then a div "…and N more
 * alerts" for the rest, and a note "Breakwater · SOURCE".
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel_int.h"

#define BODY_BUDGET 18000 /* bytes of the alerts' elements and the "more" line (Feishu: 20 KB) */
#define ALERT_MAX 3000    /* bytes of one alert's text */
#define TITLE_MAX 200
#define LINK_MAX 1024

static const al_code_rule_t codes[] = {
    {19021, AL_REPLY_BROKEN, 0},   {19022, AL_REPLY_BROKEN, 0},   {19024, AL_REPLY_BROKEN, 0},
    {11232, AL_REPLY_RETRY, 1000}, {9499, AL_REPLY_PERMANENT, 0},
};

static const char *template_for(const al_message_t *m)
{
    const char *word = al_message_word(m);

    if (strcmp(word, "RESOLVED") == 0)
        return "green";
    if (strcmp(word, "ACKNOWLEDGED") == 0)
        return "blue";
    return m->d->tier == GW_TIER_P0 ? "red" : m->d->tier == GW_TIER_P1 ? "orange" : "yellow";
}

static void alert_text(const al_channel_ctx_t *ctx, const al_message_t *m, const al_alert_view_t *v,
                       al_buf_t *b)
{
    al_buf_printf(b, "%s\n%s", *v->summary ? v->summary : v->event, v->dedup_key);
    if (json_object_size(v->labels) > 0) {
        al_buf_puts(b, "  ");
        al_labels_text(b, v->labels);
    }
    al_buf_puts(b, "\n");
    al_facts_text(b, v, AL_MIDDOT);
}

static json_t *plain(const char *text)
{
    return json_pack("{s:s, s:s}", "tag", "plain_text", "content", text);
}

/* Appends one alert's elements (its div, and its Acknowledge button when there is a link) to
 * els. Returns 0 or -1 (out of memory). */
static int add_alert(const al_channel_ctx_t *ctx, const al_message_t *m, const al_alert_view_t *v,
                     json_t *els)
{
    char link[LINK_MAX];
    al_buf_t b;
    json_t *div;

    al_buf_init(&b, ALERT_MAX);
    alert_text(ctx, m, v, &b);
    div = b.p != NULL ? json_pack("{s:s, s:o}", "tag", "div", "text", plain(b.p)) : NULL;
    al_buf_dispose(&b);
    if (div == NULL || json_array_append_new(els, div) != 0)
        return -1;
    if (al_alert_action(m, v) == AL_ACTION_TRIGGER &&
        al_channel_ack_link(ctx, v->alert_id, link, sizeof(link)) > 0 &&
        json_array_append_new(els,
                              json_pack("{s:s, s:[{s:s, s:o, s:s, s:s}]}", "tag", "action",
                                        "actions", "tag", "button", "text", plain("Acknowledge"),
                                        "type", "primary", "url", link)) != 0)
        return -1;
    return 0;
}

/* The elements of one alert, after an hr unless it is the first; or the "more" line after an
 * hr (al_render_blocks). */
static json_t *alert_elements(const al_channel_ctx_t *ctx, const al_message_t *m,
                              const al_alert_view_t *v, const char *more, size_t shown)
{
    json_t *els = json_array();

    if (els == NULL ||
        (shown > 0 && json_array_append_new(els, json_pack("{s:s}", "tag", "hr")) != 0))
        goto fail;
    if (v == NULL) {
        if (json_array_append_new(els,
                                  json_pack("{s:s, s:o}", "tag", "div", "text", plain(more))) != 0)
            goto fail;
    } else if (add_alert(ctx, m, v, els) != 0) {
        goto fail;
    }
    return els;
fail:
    json_decref(els);
    return NULL;
}

static json_t *card(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    char title[TITLE_MAX], note[256];
    json_t *elements = json_array(), *c = NULL;

    if (elements == NULL)
        return NULL;
    al_message_title(m, title, sizeof(title));
    if (al_render_blocks(ctx, m, elements, alert_elements, BODY_BUDGET, m->nalerts) < 0)
        goto done;
    snprintf(note, sizeof(note), "Breakwater" AL_MIDDOT "%s",
             ctx->source != NULL ? ctx->source : "");
    if (json_array_append_new(
            elements, json_pack("{s:s, s:[o]}", "tag", "note", "elements", plain(note))) != 0)
        goto done;
    c = json_pack("{s:{s:b}, s:{s:s, s:o}, s:O}", "config", "wide_screen_mode", 1, "header",
                  "template", template_for(m), "title", plain(title), "elements", elements);
done:
    json_decref(elements);
    return c;
}

/* Adds "timestamp" and "sign" to body when the channel has a secret. Returns 0 or -1. */
static int sign_body(const al_channel_ctx_t *ctx, json_t *body)
{
    const char *secret = ctx->cfg->secret;
    char ts[24], b64[48], *key = NULL;
    unsigned char mac[32];
    int n, r;

    if (secret == NULL || *secret == '\0')
        return 0;
    snprintf(ts, sizeof(ts), "%" PRIu64, ctx->now_ms / 1000);
    n = asprintf(&key, "%s\n%s", ts, secret);
    if (n < 0)
        return -1;
    r = al_hmac_sha256(key, (size_t)n, "", 0, mac);
    explicit_bzero(key, (size_t)n); /* it holds the secret */
    free(key);
    if (r != 0)
        return -1;
    al_base64(mac, sizeof(mac), b64);
    if (json_object_set_new(body, "timestamp", json_string(ts)) != 0 ||
        json_object_set_new(body, "sign", json_string(b64)) != 0)
        return -1;
    return 0;
}

static int feishu_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                        al_request_t *out)
{
    json_t *body;

    if (ctx->cfg == NULL || ctx->cfg->url == NULL || part != 0 || m->nalerts == 0)
        return AL_EBADINPUT;
    body = json_object();
    if (body == NULL || sign_body(ctx, body) != 0 ||
        json_object_set_new(body, "msg_type", json_string("interactive")) != 0 ||
        json_object_set_new(body, "card", card(ctx, m)) != 0) {
        json_decref(body);
        return AL_DB_ENOMEM;
    }
    return al_request_json(out, ctx->cfg->url, body);
}

static al_reply_class_t feishu_classify(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                        uint64_t *retry_after_ms)
{
    json_t *j = al_reply_json(r);
    int64_t code = 0;
    bool has = al_json_int(j, "code", &code) || al_json_int(j, "StatusCode", &code);
    al_reply_class_t cls;
    char v[32];

    json_decref(j);
    cls = al_classify_code(ctx, r, has, code, codes, sizeof(codes) / sizeof(codes[0]),
                           retry_after_ms);
    if (r->status == 429 && *retry_after_ms == 0 &&
        al_reply_header(r, "x-ogw-ratelimit-reset", v, sizeof(v)) > 0)
        *retry_after_ms = al_retry_secs(strtoll(v, NULL, 10));
    return cls;
}

const al_channel_ops_t al_channel_feishu = {
    .type = "feishu",
    .parts = NULL,
    .build = feishu_build,
    .classify = feishu_classify,
    .deliver = NULL,
};
