/*
 * channel_twilio.c - the `twilio` channel: a voice call per number in `to`, reading the alert.
 *
 * Provider behaviour this file relies on (Twilio Programmable Voice REST API, 2010-04-01):
 *   - POST https://api.twilio.com/2010-04-01/Accounts/{AccountSid}/Calls.json, form-encoded
 *     To, From (E.164) and Twiml (the call's instructions inline, at most 4000 characters),
 *     HTTP basic auth AccountSid:AuthToken. `url` in the channel config replaces the base
 *     (https://api.twilio.com) for a fake provider or a proxy.
 *   - Success: 201 Created with the call resource as JSON, "status":"queued" (the call is placed
 *     shortly after; "initiated", "ringing" and "in-progress" are accepted too). Any other 2xx
 *     or status is not a placed call (retry).
 *   - Errors: JSON {"code":N,"message":..,"more_info":..,"status":S}. 401 code 20003 =
 *     authentication (broken); 404 code 20404 = account or resource not found (broken); 429
 *     code 20429 = too many requests (retry); 400 code 21211 = invalid To (permanent: this
 *     number will never work), 21212 = invalid From, 21210 = From not verified, 21215 = no
 *     geo permission for the destination (all three are the channel's config: broken).
 *   - TwiML: <Say> speaks text; <Gather numDigits="1" action=URL method="GET"> collects a digit
 *     and requests URL with Digits=N added to the query. The ack link (needs alerts.external_url
 *     and the token scheme) is that URL: pressing a key acknowledges; the /ack handler should
 *     check Digits=1 when Digits is present.
 *
 * Only firing, escalated and repeat notifications place calls: a resolved or acknowledged one
 * has nothing to say that is worth waking someone (parts() = 0: recorded as sent, nothing sent).
 * One part per number; the Idempotency-Key of part i is "<delivery_id>:call<i>". A group is read
 * as "N alerts" and its first three summaries; the Gather (ack) is only offered for a single
 * alert, since a link acknowledges one alert.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel_int.h"

#define DEFAULT_BASE "https://api.twilio.com"
#define SPEECH_MAX 1400  /* bytes of spoken text before XML escaping */
#define TWIML_MAX 3900   /* under Twilio's 4000 characters */
#define TWIML_MARKUP 300 /* bytes of TwiML around the two <Say> texts and the link */
#define SPOKEN_ALERTS 3
#define LINK_MAX 1024

static const al_code_rule_t codes[] = {
    {20003, AL_REPLY_BROKEN, 0},    {20404, AL_REPLY_BROKEN, 0}, {20429, AL_REPLY_RETRY, 1000},
    {21211, AL_REPLY_PERMANENT, 0}, {21212, AL_REPLY_BROKEN, 0}, {21210, AL_REPLY_BROKEN, 0},
    {21215, AL_REPLY_BROKEN, 0},
};

/* Appends s XML-escaped; an entity goes in whole or not at all (a cut "&am" would make the
 * document invalid). Returns true when all of s fitted. */
static bool add_xml(al_buf_t *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        size_t run = strcspn(p, "&<>\"'");
        const char *ent;
        if (!al_buf_add(b, p, run))
            return false;
        p += run;
        if (*p == '\0')
            break;
        ent = *p == '&'   ? "&amp;"
              : *p == '<' ? "&lt;"
              : *p == '>' ? "&gt;"
              : *p == '"' ? "&quot;"
                          : "&apos;";
        if (al_buf_room(b) < strlen(ent)) {
            b->full = true;
            return false;
        }
        al_buf_puts(b, ent);
    }
    return true;
}

static void spoken_alert(const al_channel_ctx_t *ctx, const al_message_t *m,
                         const al_alert_view_t *v, al_buf_t *b)
{
    al_buf_printf(b, " %s.", *v->summary ? v->summary : v->event);
}

/* What the call says, plain text. */
static char *speech(const al_channel_ctx_t *ctx, const al_message_t *m, bool ack)
{
    al_buf_t b;
    size_t shown;
    const char *tier = al_message_tier(m);

    al_buf_init(&b, SPEECH_MAX - 120);
    /* "P 0" so that text-to-speech reads "P zero", not "pee-oh". */
    al_buf_printf(&b, "Breakwater alert, priority P %s, %s.", tier + 1,
                  m->d->kind == AL_NOTIFY_ESCALATED ? "escalated" : "firing");
    if (m->nalerts > 1)
        al_buf_printf(&b, " %zu alerts.", m->nalerts);
    shown = al_render_alerts(ctx, m, &b, spoken_alert, SPOKEN_ALERTS);
    b.max = SPEECH_MAX;
    if (shown < m->nalerts)
        al_buf_printf(&b, " And %zu more.", m->nalerts - shown);
    if (ack)
        al_buf_puts(&b, " Press 1 to acknowledge.");
    return al_buf_steal(&b);
}

static char *twiml(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    char link[LINK_MAX];
    al_alert_view_t v;
    bool ack = m->nalerts == 1 && al_alert_view(ctx, m, 0, &v) == 0 &&
               al_channel_ack_link(ctx, v.alert_id, link, sizeof(link)) > 0;
    char *text = speech(ctx, m, ack);
    al_buf_t say, b;

    if (text == NULL)
        return NULL;
    /* The text is said twice: each copy gets half of what the markup and the link leave. */
    al_buf_init(&say, (TWIML_MAX - TWIML_MARKUP - (ack ? 6 * strlen(link) : 0)) / 2);
    add_xml(&say, text);
    free(text);
    al_buf_init(&b, TWIML_MAX);
    al_buf_puts(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>");
    if (ack) {
        al_buf_puts(&b, "<Gather numDigits=\"1\" timeout=\"10\" method=\"GET\" action=\"");
        add_xml(&b, link);
        al_buf_printf(&b, "\"><Say>%s</Say><Say>%s</Say></Gather>", say.p, say.p);
        al_buf_puts(&b, "<Say>No key pressed. Goodbye.</Say>");
    } else {
        al_buf_printf(&b, "<Say>%s</Say><Pause length=\"1\"/><Say>%s</Say>", say.p, say.p);
    }
    if (say.p == NULL || say.oom || !al_buf_puts(&b, "</Response>") || b.full)
        b.oom = true; /* a cut TwiML document is invalid: cannot happen with the budgets above */
    al_buf_dispose(&say);
    return al_buf_steal(&b);
}

static bool add_field(al_buf_t *b, const char *name, const char *value)
{
    return al_buf_printf(b, "%s%s=", b->len > 0 ? "&" : "", name) && al_url_escape(b, value);
}

static size_t twilio_parts(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    al_alert_view_t v;

    if (ctx->cfg == NULL || m->nalerts == 0 || al_alert_view(ctx, m, 0, &v) != 0)
        return 1; /* build() reports what is wrong */
    return al_alert_action(m, &v) == AL_ACTION_TRIGGER ? ctx->cfg->nto : 0;
}

/* "Authorization: Basic base64(sid:token)" value into out. */
static int basic_auth(const gw_channel_config_t *cfg, char *out, size_t cap)
{
    char plain[512];
    int n = snprintf(plain, sizeof(plain), "%s:%s", cfg->account_sid, cfg->auth_token);

    if (n < 0 || (size_t)n >= sizeof(plain) || cap < 6 + 4 * ((size_t)n + 2) / 3 + 1)
        return AL_EBADINPUT;
    memcpy(out, "Basic ", 6);
    al_base64((const unsigned char *)plain, (size_t)n, out + 6);
    explicit_bzero(plain, sizeof(plain));
    return 0;
}

/* base + "/2010-04-01/Accounts/" + SID + "/Calls.json". */
static char *calls_url(const gw_channel_config_t *c)
{
    const char *base = c->url != NULL ? c->url : DEFAULT_BASE;
    size_t blen = strlen(base);
    al_buf_t b;

    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    al_buf_init(&b, blen + 3 * strlen(c->account_sid) + 64);
    al_buf_printf(&b, "%.*s/2010-04-01/Accounts/", (int)blen, base);
    al_url_escape(&b, c->account_sid);
    al_buf_puts(&b, "/Calls.json");
    return al_buf_steal(&b);
}

/* The form body To=..&From=..&Twiml=.. (NULL: out of memory). */
static char *form_body(const al_channel_ctx_t *ctx, const al_message_t *m, const char *to)
{
    char *doc = twiml(ctx, m);
    al_buf_t b;

    if (doc == NULL)
        return NULL;
    al_buf_init(&b, 64 * 1024);
    if (!add_field(&b, "To", to) || !add_field(&b, "From", ctx->cfg->from) ||
        !add_field(&b, "Twiml", doc))
        b.oom = true;
    free(doc);
    return al_buf_steal(&b);
}

static int twilio_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                        al_request_t *out)
{
    const gw_channel_config_t *c = ctx->cfg;
    char auth[800];
    int r;

    if (c == NULL || c->account_sid == NULL || c->auth_token == NULL || c->from == NULL ||
        part >= c->nto || m->nalerts == 0 || basic_auth(c, auth, sizeof(auth)) != 0)
        return AL_EBADINPUT;
    out->kind = AL_REQ_HTTP;
    out->method = "POST";
    out->content_type = "application/x-www-form-urlencoded";
    out->url = calls_url(c);
    out->body = form_body(ctx, m, c->to[part]);
    r = out->url != NULL && out->body != NULL ? 0 : AL_DB_ENOMEM;
    if (r == 0) {
        out->body_len = strlen(out->body);
        r = al_request_header(out, "Authorization", auth);
    }
    explicit_bzero(auth, sizeof(auth));
    if (r == 0)
        snprintf(out->idempotency_key, sizeof(out->idempotency_key), "%s:call%zu",
                 m->d->delivery_id, part);
    if (r != 0)
        al_request_dispose(out);
    return r;
}

static bool call_placed(json_t *j)
{
    static const char *const ok[] = {"queued", "initiated", "ringing", "in-progress"};

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (al_json_str_is(j, "status", ok[i]))
            return true;
    return false;
}

static al_reply_class_t twilio_classify(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                        uint64_t *retry_after_ms)
{
    al_reply_class_t cls = al_classify_http(ctx, r, retry_after_ms);
    json_t *j = al_reply_json(r);
    int64_t code;

    if (cls == AL_REPLY_SENT)
        cls = r->status == 201 && call_placed(j) ? AL_REPLY_SENT : AL_REPLY_RETRY;
    else if (r->status != 429 && r->status < 500 && al_json_int(j, "code", &code))
        cls = al_code_lookup(codes, sizeof(codes) / sizeof(codes[0]), code, cls, retry_after_ms);
    json_decref(j);
    return cls;
}

const al_channel_ops_t al_channel_twilio = {
    .type = "twilio",
    .parts = twilio_parts,
    .build = twilio_build,
    .classify = twilio_classify,
    .deliver = NULL,
};
