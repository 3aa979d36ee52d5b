/*
 * channel_dingtalk.c - the `dingtalk` channel: a DingTalk custom robot (群自定义机器人) message.
 *
 * Provider behaviour this file relies on (DingTalk custom robot webhook):
 *   - POST application/json to https://oapi.dingtalk.com/robot/send?access_token=TOKEN with
 *     {"msgtype":"markdown","markdown":{"title":..,"text":..},"at":{"atMobiles":[..],
 *     "isAtAll":false}}. "title" is what the notification preview shows; a mobile in atMobiles
 *     is only highlighted in a markdown message when "@MOBILE" also appears in the text.
 *   - Signing ("加签", when the robot has a secret): timestamp = now in unix milliseconds,
 *     sign = urlencode(base64(HMAC-SHA256(key = secret, msg = timestamp + "\n" + secret))),
 *     appended to the URL as &timestamp=..&sign=..; DingTalk refuses a timestamp more than an
 *     hour off.
 *   - Failures come back as HTTP 200 with {"errcode":N,"errmsg":".."}; success is errcode 0.
 *     310000 = sign not match, keyword not in content, or IP not in the whitelist: the robot's
 *     security settings refuse us, every message would fail alike (broken). 130101 = more than
 *     20 messages in a minute: the robot is throttled for 10 minutes (retry, not before 10 min).
 *     300001 = the access token does not exist (robot removed: broken). -1 = system busy (retry).
 *     Any other non-zero errcode refuses this message (permanent); a 200 without errcode is not
 *     a success (retry).
 *   - Keyword security: every message contains "Breakwater" (footer), so a robot whose keyword is
 *     "Breakwater" accepts it.
 *
 * Mentions: the channel's `to` list (mobile numbers) becomes at.atMobiles and "@MOBILE" in the
 * text (the config loader has to allow `to` for dingtalk for this to be configurable).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel_int.h"

#define TEXT_MAX 15000 /* bytes of markdown text (DingTalk's limit is about 20000) */
#define TITLE_MAX 128
#define LINK_MAX 1024
#define FOOTER_RESERVE 512 /* room kept for the "...and N more", mentions and footer lines */

static const al_code_rule_t codes[] = {
    {310000, AL_REPLY_BROKEN, 0},
    {130101, AL_REPLY_RETRY, 10 * 60 * 1000},
    {300001, AL_REPLY_BROKEN, 0},
    {-1, AL_REPLY_RETRY, 0},
};

/* One alert as markdown lines (DingTalk needs a blank line to break a paragraph). */
static void alert_md(const al_channel_ctx_t *ctx, const al_message_t *m, const al_alert_view_t *v,
                     al_buf_t *b)
{
    char link[LINK_MAX];

    al_buf_printf(b, "**%s**\n\n> `%s`", *v->summary ? v->summary : v->event, v->dedup_key);
    if (json_object_size(v->labels) > 0) {
        al_buf_puts(b, " ");
        al_labels_text(b, v->labels);
    }
    al_buf_puts(b, "\n\n> ");
    al_facts_text(b, v, AL_MIDDOT);
    if (al_alert_action(m, v) == AL_ACTION_TRIGGER &&
        al_channel_ack_link(ctx, v->alert_id, link, sizeof(link)) > 0)
        al_buf_printf(b, "\n\n> [Acknowledge](%s)", link);
    al_buf_puts(b, "\n\n");
}

static char *markdown_text(const al_channel_ctx_t *ctx, const al_message_t *m, const char *title)
{
    al_buf_t b;
    size_t shown;

    al_buf_init(&b, TEXT_MAX - FOOTER_RESERVE);
    al_buf_printf(&b, "### %s\n\n", title);
    shown = al_render_alerts(ctx, m, &b, alert_md, m->nalerts);
    b.max = TEXT_MAX;
    if (shown < m->nalerts)
        al_buf_printf(&b, AL_ELLIPSIS "and %zu more\n\n", m->nalerts - shown);
    for (size_t i = 0; i < ctx->cfg->nto; i++)
        al_buf_printf(&b, "@%s ", ctx->cfg->to[i]);
    if (ctx->cfg->nto > 0)
        al_buf_puts(&b, "\n\n");
    al_buf_printf(&b, "Breakwater" AL_MIDDOT "%s", ctx->source != NULL ? ctx->source : "");
    return al_buf_steal(&b);
}

static json_t *dingtalk_body(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    char title[TITLE_MAX];
    char *text;
    json_t *mobiles = json_array(), *body = NULL;

    al_message_title(m, title, sizeof(title));
    text = markdown_text(ctx, m, title);
    for (size_t i = 0; mobiles != NULL && i < ctx->cfg->nto; i++)
        if (json_array_append_new(mobiles, json_string(ctx->cfg->to[i])) != 0)
            goto done;
    if (text != NULL && mobiles != NULL)
        body = json_pack("{s:s, s:{s:s, s:s}, s:{s:O, s:b}}", "msgtype", "markdown", "markdown",
                         "title", title, "text", text, "at", "atMobiles", mobiles, "isAtAll", 0);
done:
    free(text);
    json_decref(mobiles);
    return body;
}

/* The URL with &timestamp=MS&sign=SIGN when the channel has a secret. NULL: out of memory. */
static char *signed_url(const al_channel_ctx_t *ctx)
{
    const char *url = ctx->cfg->url, *secret = ctx->cfg->secret;
    char ts[24], b64[48], *msg = NULL;
    unsigned char mac[32];
    al_buf_t b;
    int n, r;

    if (secret == NULL || *secret == '\0')
        return strdup(url);
    snprintf(ts, sizeof(ts), "%" PRIu64, ctx->now_ms);
    n = asprintf(&msg, "%s\n%s", ts, secret);
    if (n < 0)
        return NULL;
    r = al_hmac_sha256(secret, strlen(secret), msg, (size_t)n, mac);
    explicit_bzero(msg, (size_t)n); /* it holds the secret */
    free(msg);
    if (r != 0)
        return NULL;
    al_base64(mac, sizeof(mac), b64);
    al_buf_init(&b, strlen(url) + 256);
    al_buf_printf(&b, "%s%ctimestamp=%s&sign=", url, strchr(url, '?') != NULL ? '&' : '?', ts);
    al_url_escape(&b, b64);
    if (b.full) /* cannot happen with the room reserved above */
        b.oom = true;
    return al_buf_steal(&b);
}

static int dingtalk_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                          al_request_t *out)
{
    json_t *body;
    char *url;
    int r;

    if (ctx->cfg == NULL || ctx->cfg->url == NULL || part != 0 || m->nalerts == 0)
        return AL_EBADINPUT;
    body = dingtalk_body(ctx, m);
    url = signed_url(ctx);
    if (body == NULL || url == NULL) {
        json_decref(body);
        free(url);
        return AL_DB_ENOMEM;
    }
    r = al_request_json(out, url, body);
    free(url);
    return r;
}

static al_reply_class_t dingtalk_classify(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                          uint64_t *retry_after_ms)
{
    json_t *j = al_reply_json(r);
    int64_t code = 0;
    bool has = al_json_int(j, "errcode", &code);
    al_reply_class_t cls;

    json_decref(j);
    cls = al_classify_code(ctx, r, has, code, codes, sizeof(codes) / sizeof(codes[0]),
                           retry_after_ms);
    return cls;
}

const al_channel_ops_t al_channel_dingtalk = {
    .type = "dingtalk",
    .parts = NULL,
    .build = dingtalk_build,
    .classify = dingtalk_classify,
    .deliver = NULL,
};
