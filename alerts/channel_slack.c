/*
 * channel_slack.c - the `slack` channel: one Slack incoming-webhook message per notification.
 *
 * Provider behaviour this file relies on (Slack incoming webhooks):
 *   - POST application/json {"text": ..., "blocks": [...]} to the webhook URL (the URL is the
 *     credential). "text" is the fallback shown in notifications; "blocks" is what is rendered.
 *     "unfurl_links"/"unfurl_media" false: an unfurler fetching the ack link (GET /ack/TOKEN
 *     acknowledges, SPEC 6) must not ack the alert the moment it is posted.
 *   - At most 50 blocks; a header block's plain_text at most 150 characters; a section's mrkdwn
 *     text at most 3000 characters. mrkdwn needs &, < and > escaped as &amp; &lt; &gt; (a bare <
 *     starts a link or mention); links are <URL|label>.
 *   - Success is HTTP 200 with the plain-text body "ok". Errors are plain-text codes: 400
 *     invalid_payload / no_text (our bug: permanent), 403 action_prohibited / invalid_token,
 *     404 no_service / channel_not_found, 410 channel_is_archived (the webhook is unusable:
 *     broken), 429 rate_limited with Retry-After (about one message per second per webhook),
 *     500 rollup_error (retry). Some gateways answer 429 with a JSON {"retry_after": N} body
 *     instead of the header: honoured too.
 *   - Any other 2xx reply is not "ok": it is never counted as sent (retry).
 *
 * Message: a header block with the title ("[P1] FIRING: ..."), one section per alert (summary in
 * bold, dedup key, labels, since/count/escalation, the ack link when there is one), at most
 * AL_RENDER_SHOWN_MAX (5) of them within BODY_BUDGET bytes (al_render_blocks), then a section
 * "…and N more alerts" for the rest, then a context block "Breakwater · SOURCE": at most 8
 * blocks.
 */
#include <stdlib.h>
#include <string.h>

#include "channel_int.h"

#define HEADER_MAX 150    /* bytes; Slack counts characters, so bytes are the safe bound */
#define SECTION_MAX 2900  /* under Slack's 3000 characters per section */
#define BODY_BUDGET 30000 /* bytes of section blocks (JSON) in one message */
#define LINK_MAX 1024

/* Appends s with Slack's three mrkdwn escapes. */
static bool add_escaped(al_buf_t *b, const char *s)
{
    bool ok = true;

    for (const char *p = s; ok && *p; p++) {
        size_t run = strcspn(p, "&<>");
        ok = al_buf_add(b, p, run);
        p += run;
        if (!ok || *p == '\0')
            break;
        ok = al_buf_puts(b, *p == '&' ? "&amp;" : *p == '<' ? "&lt;" : "&gt;");
    }
    return ok;
}

/* The section text of one alert (mrkdwn). */
static char *section_text(const al_channel_ctx_t *ctx, const al_message_t *m,
                          const al_alert_view_t *v)
{
    al_buf_t b, plain;
    char link[LINK_MAX];
    char *text;

    al_buf_init(&b, SECTION_MAX);
    al_buf_init(&plain, SECTION_MAX);
    al_buf_puts(&b, "*");
    add_escaped(&b, *v->summary ? v->summary : v->event);
    al_buf_puts(&b, "*\n`");
    add_escaped(&b, v->dedup_key);
    al_buf_puts(&b, "`");
    if (json_object_size(v->labels) > 0 && al_labels_text(&plain, v->labels)) {
        al_buf_puts(&b, "  ");
        add_escaped(&b, plain.p);
    }
    al_buf_dispose(&plain);
    al_buf_puts(&b, "\n");
    al_facts_text(&b, v, AL_MIDDOT);
    if (al_alert_action(m, v) == AL_ACTION_TRIGGER &&
        al_channel_ack_link(ctx, v->alert_id, link, sizeof(link)) > 0)
        al_buf_printf(&b, "\n<%s|Acknowledge>", link);
    text = al_buf_steal(&b);
    return text;
}

static json_t *mrkdwn(const char *text)
{
    return json_pack("{s:s, s:s}", "type", "mrkdwn", "text", text);
}

/* mrkdwn of text, escaped (NULL out of memory). */
static json_t *escaped_mrkdwn(const char *text)
{
    al_buf_t b;
    json_t *o;

    al_buf_init(&b, strlen(text) * 5 + 1);
    add_escaped(&b, text);
    o = b.p != NULL && !b.oom ? mrkdwn(b.p) : NULL;
    al_buf_dispose(&b);
    return o;
}

/* The section of one alert, or the "more" section (al_render_blocks). */
static json_t *section(const al_channel_ctx_t *ctx, const al_message_t *m, const al_alert_view_t *v,
                       const char *more, size_t shown)
{
    char *text;
    json_t *s;

    (void)shown;
    if (v == NULL)
        return json_pack("{s:s, s:o}", "type", "section", "text", escaped_mrkdwn(more));
    text = section_text(ctx, m, v);
    if (text == NULL)
        return NULL;
    s = json_pack("{s:s, s:o}", "type", "section", "text", mrkdwn(text));
    free(text);
    return s;
}

static json_t *slack_body(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    char title[HEADER_MAX + 1], fallback[512], footer[256];
    json_t *blocks = json_array(), *text = NULL, *body = NULL;
    const char *source = ctx->source != NULL ? ctx->source : "breakwater";

    al_message_title(m, title, sizeof(title));
    al_message_title(m, fallback, sizeof(fallback));
    if (blocks == NULL ||
        json_array_append_new(blocks,
                              json_pack("{s:s, s:{s:s, s:s, s:b}}", "type", "header", "text",
                                        "type", "plain_text", "text", title, "emoji", 1)) != 0)
        goto done;
    if (al_render_blocks(ctx, m, blocks, section, BODY_BUDGET, m->nalerts) < 0)
        goto done;
    snprintf(footer, sizeof(footer), "Breakwater" AL_MIDDOT "%s", source);
    if (json_array_append_new(blocks, json_pack("{s:s, s:[o?]}", "type", "context", "elements",
                                                escaped_mrkdwn(footer))) != 0)
        goto done;
    text = escaped_mrkdwn(fallback);
    if (text != NULL)
        body = json_pack("{s:O, s:O, s:b, s:b}", "text", json_object_get(text, "text"), "blocks",
                         blocks, "unfurl_links", 0, "unfurl_media", 0);
done:
    json_decref(text);
    json_decref(blocks);
    return body;
}

static int slack_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                       al_request_t *out)
{
    json_t *body;

    if (ctx->cfg == NULL || ctx->cfg->url == NULL || part != 0 || m->nalerts == 0)
        return AL_EBADINPUT;
    body = slack_body(ctx, m);
    if (body == NULL)
        return AL_DB_ENOMEM;
    return al_request_json(out, ctx->cfg->url, body);
}

/* True when the body is exactly "ok" (blanks around it allowed). */
static bool body_is_ok(const al_reply_t *r)
{
    const char *p = r->body;
    size_t n = r->body_len;

    while (n > 0 && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) {
        p++;
        n--;
    }
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r' || p[n - 1] == '\n'))
        n--;
    return !r->body_truncated && n == 2 && memcmp(p, "ok", 2) == 0;
}

static al_reply_class_t slack_classify(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                       uint64_t *retry_after_ms)
{
    al_reply_class_t cls = al_classify_http(ctx, r, retry_after_ms);
    int64_t secs;
    json_t *j;

    if (r->status == 429 && *retry_after_ms == 0) {
        j = al_reply_json(r);
        if (al_json_int(j, "retry_after", &secs))
            *retry_after_ms = al_retry_secs(secs);
        json_decref(j);
    }
    if (cls != AL_REPLY_SENT)
        return cls;
    return r->status == 200 && body_is_ok(r) ? AL_REPLY_SENT : AL_REPLY_RETRY;
}

const al_channel_ops_t al_channel_slack = {
    .type = "slack",
    .parts = NULL,
    .build = slack_build,
    .classify = slack_classify,
    .deliver = NULL,
};
