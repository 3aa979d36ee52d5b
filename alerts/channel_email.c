/*
 * channel_email.c - the `email` channel: one plain-text mail per notification, over SMTP.
 *
 * Provider behaviour this file relies on (SMTP, RFC 5321/5322, through libcurl):
 *   - The request is an AL_REQ_SMTP request (channel.h): url = the channel's smtp_url
 *     (smtp://host:587 upgrades with STARTTLS when the server offers it, smtps://host:465 is TLS
 *     from the start; user:password in the URL are used for AUTH), the envelope MAIL FROM and
 *     RCPT TO (bare addresses), and the message itself as the body. The sender (sender.c) runs
 *     it with CURLOPT_MAIL_FROM / CURLOPT_MAIL_RCPT / CURLOPT_UPLOAD; libcurl dot-stuffs lines
 *     that start with ".".
 *   - The message: header lines (From, To, Subject, Date, Message-ID, MIME-Version,
 *     Content-Type text/plain; charset=UTF-8, Content-Transfer-Encoding 8bit, Auto-Submitted:
 *     auto-generated), a blank line, the text; every line ends in CRLF and stays under 998
 *     bytes (RFC 5322 2.1.1); a non-ASCII Subject is RFC 2047 encoded-words (UTF-8, base64),
 *     each under 75 characters and never splitting a character. Message-ID is stable across
 *     attempts ("<DELIVERY_ID@HOST>"), so a receiving system can drop a duplicate.
 *   - The reply is the server's last reply code (the sender passes it as the reply status):
 *     250 after the data is accepted (sent). 4xx are transient (421 service closing, 450/451/452
 *     mailbox busy, local error, storage: retry). 5xx are permanent, but which kind matters:
 *     530/534/535/538 (authentication required / too weak / failed / encryption required) and
 *     500-504 (syntax, command not implemented or out of sequence) mean the channel's SMTP
 *     settings are wrong (broken); 550/551/552/553/554 (mailbox unavailable, not local, storage
 *     exceeded, name not allowed, transaction failed) refuse this mail (permanent).
 *
 * Text: the title, one block per alert (summary, key, labels, since/count/escalation, the ack
 * link), "...and N more", a signature "Breakwater · SOURCE".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "channel_int.h"

#define BODY_MAX (128 * 1024)
#define LINE_MAX 900 /* bytes per line, under RFC 5322's 998 */
#define SUBJECT_MAX 240
#define WORD_BYTES 45 /* raw bytes per encoded-word: 60 base64 chars + 12 = 72 < 75 */
#define TITLE_MAX 256
#define LINK_MAX 1024

/* The bare address of "Name <addr>" or "addr" into out. Returns 0 or AL_EBADINPUT. */
static int bare_address(const char *s, char *out, size_t cap)
{
    const char *lt = strrchr(s, '<'), *gt = lt != NULL ? strchr(lt, '>') : NULL;
    const char *start = s, *end = s + strlen(s);

    if (lt != NULL && gt != NULL) {
        start = lt + 1;
        end = gt;
    }
    while (start < end && (*start == ' ' || *start == '\t'))
        start++;
    while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    if (end == start || (size_t)(end - start) >= cap)
        return AL_EBADINPUT;
    for (const char *p = start; p < end; p++)
        if (*p == '\r' || *p == '\n' || *p == '<' || *p == '>' || *p == ' ')
            return AL_EBADINPUT;
    memcpy(out, start, (size_t)(end - start));
    out[end - start] = '\0';
    return 0;
}

static bool ascii_printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* "Subject: ..." with RFC 2047 encoded-words when it is not plain ASCII. */
static void subject_header(al_buf_t *b, const char *subject)
{
    size_t n = strlen(subject), off = 0;
    char b64[4 * ((WORD_BYTES + 2) / 3) + 1];

    if (ascii_printable(subject)) {
        al_buf_printf(b, "Subject: %s\r\n", subject);
        return;
    }
    al_buf_puts(b, "Subject:");
    while (off < n) {
        size_t take = al_utf8_prefix(subject + off, n - off, WORD_BYTES);
        if (take == 0)
            take = 1; /* a stray continuation byte: encode it alone rather than loop */
        al_base64((const unsigned char *)subject + off, take, b64);
        al_buf_printf(b, "%s=?UTF-8?B?%s?=", off > 0 ? "\r\n " : " ", b64);
        off += take;
    }
    al_buf_puts(b, "\r\n");
}

/* RFC 5322 date of ms (UTC), independent of the locale. */
static void rfc5322_date(uint64_t ms, char *out, size_t cap)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;

    if (gmtime_r(&secs, &tm) == NULL)
        memset(&tm, 0, sizeof(tm));
    snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7], tm.tm_mday,
             months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void alert_text(const al_channel_ctx_t *ctx, const al_message_t *m, const al_alert_view_t *v,
                       al_buf_t *b)
{
    char link[LINK_MAX];

    al_buf_printf(b, "* %s\n  Key: %s\n", *v->summary ? v->summary : v->event, v->dedup_key);
    if (json_object_size(v->labels) > 0) {
        al_buf_puts(b, "  Labels: ");
        al_labels_text(b, v->labels);
        al_buf_puts(b, "\n");
    }
    al_buf_puts(b, "  ");
    al_facts_text(b, v, ", ");
    al_buf_puts(b, "\n");
    if (al_alert_action(m, v) == AL_ACTION_TRIGGER &&
        al_channel_ack_link(ctx, v->alert_id, link, sizeof(link)) > 0)
        al_buf_printf(b, "  Acknowledge: %s\n", link);
    al_buf_puts(b, "\n");
}

/* Appends text with every line ending in CRLF and cut at LINE_MAX bytes. */
static void add_lines(al_buf_t *b, const char *text)
{
    while (*text) {
        size_t n = strcspn(text, "\r\n");
        al_buf_add(b, text, al_utf8_prefix(text, n, LINE_MAX));
        al_buf_puts(b, "\r\n");
        text += n;
        if (*text == '\r')
            text++;
        if (*text == '\n')
            text++;
    }
}

static char *text_part(const al_channel_ctx_t *ctx, const al_message_t *m, const char *title)
{
    al_buf_t b;
    size_t shown;

    al_buf_init(&b, BODY_MAX / 3 - 1024); /* CRLF may double it: still under BODY_MAX */
    al_buf_printf(&b, "%s\n\n", title);
    shown = al_render_alerts(ctx, m, &b, alert_text, m->nalerts);
    b.max = BODY_MAX / 3;
    if (shown < m->nalerts)
        al_buf_printf(&b, AL_ELLIPSIS "and %zu more\n\n", m->nalerts - shown);
    al_buf_printf(&b, "-- \nBreakwater" AL_MIDDOT "%s\n", ctx->source != NULL ? ctx->source : "");
    return al_buf_steal(&b);
}

/* The Message-ID's right side: the host of "breakwater@HOST", reduced to safe characters. */
static void id_host(const al_channel_ctx_t *ctx, char *out, size_t cap)
{
    const char *at = ctx->source != NULL ? strchr(ctx->source, '@') : NULL;
    size_t n = 0;

    for (const char *p = at != NULL ? at + 1 : ""; *p && n + 1 < cap; p++)
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '.' || *p == '-')
            out[n++] = *p;
    if (n == 0)
        n = (size_t)snprintf(out, cap, "breakwater.invalid");
    out[n] = '\0';
}

static char *message(const al_channel_ctx_t *ctx, const al_message_t *m)
{
    const gw_channel_config_t *c = ctx->cfg;
    char title[TITLE_MAX], short_title[SUBJECT_MAX - 16], subject[SUBJECT_MAX + 1], date[64];
    char host[128], *text;
    al_buf_t b;

    al_message_title(m, title, sizeof(title));
    al_message_title(m, short_title, sizeof(short_title)); /* cut UTF-8-safe, fits the subject */
    snprintf(subject, sizeof(subject), "[Breakwater] %s", short_title);
    rfc5322_date(ctx->now_ms, date, sizeof(date));
    id_host(ctx, host, sizeof(host));
    text = text_part(ctx, m, title);
    if (text == NULL)
        return NULL;
    al_buf_init(&b, BODY_MAX);
    al_buf_printf(&b, "From: %s\r\nTo: ", c->from);
    for (size_t i = 0; i < c->nto; i++)
        al_buf_printf(&b, "%s%s", i > 0 ? ", " : "", c->to[i]);
    al_buf_puts(&b, "\r\n");
    subject_header(&b, subject);
    al_buf_printf(&b,
                  "Date: %s\r\nMessage-ID: <%s@%s>\r\nMIME-Version: 1.0\r\n"
                  "Content-Type: text/plain; charset=UTF-8\r\n"
                  "Content-Transfer-Encoding: 8bit\r\nAuto-Submitted: auto-generated\r\n"
                  "X-Breakwater-Delivery-Id: %s\r\n\r\n",
                  date, m->d->delivery_id, host, m->d->delivery_id);
    add_lines(&b, text);
    free(text);
    if (b.full)
        b.oom = true; /* a cut message would lose its end; cannot happen with the budgets above */
    return al_buf_steal(&b);
}

static int envelope(const gw_channel_config_t *c, al_request_t *out)
{
    char addr[512];

    if (bare_address(c->from, addr, sizeof(addr)) != 0)
        return AL_EBADINPUT;
    out->mail_from = strdup(addr);
    out->rcpt = calloc(c->nto, sizeof(*out->rcpt));
    if (out->mail_from == NULL || out->rcpt == NULL)
        return AL_DB_ENOMEM;
    for (size_t i = 0; i < c->nto; i++) {
        if (bare_address(c->to[i], addr, sizeof(addr)) != 0)
            return AL_EBADINPUT;
        if ((out->rcpt[out->nrcpt] = strdup(addr)) == NULL)
            return AL_DB_ENOMEM;
        out->nrcpt++;
    }
    return 0;
}

static int email_build(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                       al_request_t *out)
{
    const gw_channel_config_t *c = ctx->cfg;
    int r;

    if (c == NULL || c->smtp_url == NULL || c->from == NULL || c->nto == 0 || part != 0 ||
        m->nalerts == 0 || strpbrk(c->from, "\r\n") != NULL)
        return AL_EBADINPUT;
    for (size_t i = 0; i < c->nto; i++)
        if (strpbrk(c->to[i], "\r\n") != NULL)
            return AL_EBADINPUT;
    out->kind = AL_REQ_SMTP;
    out->method = "SMTP";
    out->content_type = "text/plain; charset=UTF-8";
    r = envelope(c, out);
    if (r == 0) {
        out->url = strdup(c->smtp_url);
        out->body = message(ctx, m);
        if (out->url == NULL || out->body == NULL)
            r = AL_DB_ENOMEM;
        else
            out->body_len = strlen(out->body);
    }
    if (r != 0)
        al_request_dispose(out);
    return r;
}

static al_reply_class_t email_classify(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                       uint64_t *retry_after_ms)
{
    long s = r->status;

    if (s >= 200 && s <= 299)
        return AL_REPLY_SENT;
    if (s >= 400 && s <= 499)
        return AL_REPLY_RETRY;
    if ((s >= 500 && s <= 504) || s == 530 || s == 534 || s == 535 || s == 538)
        return AL_REPLY_BROKEN;
    if (s >= 505 && s <= 599)
        return AL_REPLY_PERMANENT;
    return AL_REPLY_RETRY; /* no final reply code: never counted as sent */
}

const al_channel_ops_t al_channel_email = {
    .type = "email",
    .parts = NULL,
    .build = email_build,
    .classify = email_classify,
    .deliver = NULL,
};
