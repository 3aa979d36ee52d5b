/*
 * channel_wecom.c - the `wecom` channel: a WeCom (企业微信) group robot message.
 *
 * Provider behaviour this file relies on (WeCom group robot webhook,
 * https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY; the key in the URL is the only
 * credential, there is no signature):
 *   - POST application/json {"msgtype":"markdown","markdown":{"content":..}} with content at
 *     most 4096 bytes (UTF-8), or {"msgtype":"text","text":{"content":..,
 *     "mentioned_mobile_list":[..]}} with content at most 2048 bytes. Only the text type
 *     honours mentioned_mobile_list, so a channel with mentions sends text, others markdown.
 *     Longer content is refused, so the content is cut here, at a UTF-8 boundary.
 *   - Failures come back as HTTP 200 with {"errcode":N,"errmsg":".."}; success is errcode 0.
 *     45009 = over the robot's limit of 20 messages a minute (retry, not before a minute);
 *     93000 = invalid webhook URL (key wrong or robot removed: broken); -1 = system busy (retry).
 *     Any other non-zero errcode refuses this message (permanent); a 200 without errcode is not
 *     a success (retry).
 *
 * Markdown: bold title, one quoted block per alert (summary coloured "warning", or "info" when
 * resolved, dedup key, labels, since/count/escalation, [Acknowledge](link)), "...and N more",
 * "Breakwater · SOURCE". Mentions: the channel's `to` list (mobiles; the config loader has to
 * allow `to` for wecom for this to be configurable).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel_int.h"

#define MARKDOWN_MAX 4096
#define TEXT_MAX 2048
#define FOOTER_RESERVE 256
#define TITLE_MAX 200
#define LINK_MAX 1024

static const al_code_rule_t codes[] = {
    {45009, AL_REPLY_RETRY, 60 * 1000},
    {93000, AL_REPLY_BROKEN, 0},
    {-1, AL_REPLY_RETRY, 0},
};

static void alert_markdown(const al_channel_ctx_t *ctx, const al_message_t *m,
                           const al_alert_view_t *v, al_buf_t *b)
{
    char link[LINK_MAX];
    bool trigger = al_alert_action(m, v) == AL_ACTION_TRIGGER;

    al_buf_printf(b, "> <font color=\"%s\">%s</font>\n> `%s`", trigger ? "warning" : "info",
                  *v->summary ? v->summary : v->event, v->dedup_key);
    if (json_object_size(v->labels) > 0) {
        al_buf_puts(b, " ");
        al_labels_text(b, v->labels);
    }
    al_buf_puts(b, "\n> ");
    al_facts_text(b, v, AL_MIDDOT);
    if (trigger && al_channel_ack_link(ctx, v->alert_id, link, sizeof(link)) > 0)
        al_buf_printf(b, "\n> [Acknowledge](%s)", link);
    al_buf_puts(b, "\n\n");
}

static void alert_text(const al_channel_ctx_t *ctx, const al_message_t *m, const al_alert_view_t *v,
                       al_buf_t *b)
{
    char link[LINK_MAX];

    al_buf_printf(b, "- %s\n  %s", *v->summary ? v->summary : v->event, v->dedup_key);
    if (json_object_size(v->labels) > 0) {
        al_buf_puts(b, " ");
        al_labels_text(b, v->labels);
    }
    al_buf_puts(b, "\n  ");
    al_facts_text(b, v, AL_MIDDOT);
    if (al_alert_action(m, v) == AL_ACTION_TRIGGER &&
        al_channel_ack_link(ctx, v->alert_id, link, sizeof(link)) > 0)
        al_buf_printf(b, "\n  Acknowledge: %s", link);
    al_buf_puts(b, "\n");
}

/* The content, at most max bytes. */
static char *content(const al_channel_ctx_t *ctx, const al_message_t *m, bool markdown, size_t max)
{
    char title[TITLE_MAX];
    al_buf_t b;
    size_t shown;

    al_message_title(m, title, sizeof(title));
    al_buf_init(&b, max - FOOTER_RESERVE);
    al_buf_printf(&b, markdown ? "**%s**\n" : "%s\n", title);
    shown = al_render_alerts(ctx, m, &b, markdown ? alert_markdown : alert_text, m->nalerts);
    b.max = max;
    if (shown < m->nalerts)
        al_buf_printf(&b, AL_ELLIPSIS "and %zu more\n", m->nalerts - shown);
    al_buf_printf(&b, "Breakwater" AL_MIDDOT "%s", ctx->source != NULL ? ctx->source : "");
    return al_buf_steal(&b);
}

static int wecom_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                       al_request_t *out)
{
    bool markdown;
    json_t *body = NULL, *mobiles;
    char *text;

    if (ctx->cfg == NULL || ctx->cfg->url == NULL || part != 0 || m->nalerts == 0)
        return AL_EBADINPUT;
    markdown = ctx->cfg->nto == 0;
    text = content(ctx, m, markdown, markdown ? MARKDOWN_MAX : TEXT_MAX);
    mobiles = json_array();
    for (size_t i = 0; mobiles != NULL && i < ctx->cfg->nto; i++) {
        if (json_array_append_new(mobiles, json_string(ctx->cfg->to[i])) != 0) {
            json_decref(mobiles);
            mobiles = NULL;
        }
    }
    if (text != NULL && mobiles != NULL)
        body = markdown
                   ? json_pack("{s:s, s:{s:s}}", "msgtype", "markdown", "markdown", "content", text)
                   : json_pack("{s:s, s:{s:s, s:O}}", "msgtype", "text", "text", "content", text,
                               "mentioned_mobile_list", mobiles);
    free(text);
    json_decref(mobiles);
    if (body == NULL)
        return AL_DB_ENOMEM;
    return al_request_json(out, ctx->cfg->url, body);
}

static al_reply_class_t wecom_classify(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                       uint64_t *retry_after_ms)
{
    json_t *j = al_reply_json(r);
    int64_t code = 0;
    bool has = al_json_int(j, "errcode", &code);

    json_decref(j);
    return al_classify_code(ctx, r, has, code, codes, sizeof(codes) / sizeof(codes[0]),
                            retry_after_ms);
}

const al_channel_ops_t al_channel_wecom = {
    .type = "wecom",
    .parts = NULL,
    .build = wecom_build,
    .classify = wecom_classify,
    .deliver = NULL,
};
