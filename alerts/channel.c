/*
 * channel.c - what every channel shares: the registry by type, request and reply helpers,
 * Retry-After, the transport table (curl outcome -> sent or not) and the common HTTP table.
 *
 * The two tables here decide the at-least-once story, so they are kept in one place and driven
 * by tests/unit/test_alerts_channels.c row by row:
 *   transport: a failure before the request head left us (resolve, connect, TLS, connect timeout)
 *              is a plain retry: the receiver cannot have acted on it. After the head left, a
 *              timeout or a closed/reset connection is ambiguous: it may have arrived (P0/P1 are
 *              sent again with the same Idempotency-Key; P2 ends as "ambiguous", see outbox.c).
 *   HTTP:      2xx sent; 408/425/429/5xx retry (Retry-After honoured, capped at one hour);
 *              3xx, 401/403/404/410 mean the channel is misconfigured (broken); other statuses
 *              permanent for this notification.
 * No I/O, no clock: now comes in ctx.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "channel.h"

static const al_channel_ops_t *const registry[GW_CHANNEL_TYPE_COUNT] = {
    [GW_CHANNEL_SLACK] = &al_channel_slack,
    [GW_CHANNEL_DINGTALK] = &al_channel_dingtalk,
    [GW_CHANNEL_FEISHU] = &al_channel_feishu,
    [GW_CHANNEL_WECOM] = &al_channel_wecom,
    [GW_CHANNEL_PAGERDUTY] = &al_channel_pagerduty,
    [GW_CHANNEL_TWILIO] = &al_channel_twilio,
    [GW_CHANNEL_EMAIL] = &al_channel_email,
    [GW_CHANNEL_TEAMS] = &al_channel_teams,
    [GW_CHANNEL_OPSGENIE] = &al_channel_opsgenie,
    [GW_CHANNEL_ALERTMANAGER] = &al_channel_alertmanager,
    [GW_CHANNEL_WEBHOOK] = &al_channel_webhook,
    [GW_CHANNEL_CONSOLE] = &al_channel_console,
};

static const char *const type_names[GW_CHANNEL_TYPE_COUNT] = {
    [GW_CHANNEL_SLACK] = "slack",         [GW_CHANNEL_DINGTALK] = "dingtalk",
    [GW_CHANNEL_FEISHU] = "feishu",       [GW_CHANNEL_WECOM] = "wecom",
    [GW_CHANNEL_PAGERDUTY] = "pagerduty", [GW_CHANNEL_TWILIO] = "twilio",
    [GW_CHANNEL_EMAIL] = "email",         [GW_CHANNEL_TEAMS] = "teams",
    [GW_CHANNEL_OPSGENIE] = "opsgenie",   [GW_CHANNEL_ALERTMANAGER] = "alertmanager",
    [GW_CHANNEL_WEBHOOK] = "webhook",     [GW_CHANNEL_CONSOLE] = "console",
};

const al_channel_ops_t *al_channel_ops(gw_channel_type_t type)
{
    return (unsigned)type < GW_CHANNEL_TYPE_COUNT ? registry[type] : NULL;
}

const char *al_channel_type_name(gw_channel_type_t type)
{
    return (unsigned)type < GW_CHANNEL_TYPE_COUNT ? type_names[type] : "unknown";
}

const gw_channel_config_t *al_channel_find(const gw_alerts_config_t *cfg, const char *name)
{
    if (cfg == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->nchannels; i++)
        if (strcmp(cfg->channels[i].name, name) == 0)
            return &cfg->channels[i];
    return NULL;
}

const char *al_reply_class_name(al_reply_class_t c)
{
    static const char *const names[AL_REPLY_CLASS_COUNT] = {"sent", "retry", "permanent", "broken",
                                                            "ambiguous"};
    return (unsigned)c < AL_REPLY_CLASS_COUNT ? names[c] : NULL;
}

al_send_result_t al_reply_class_result(al_reply_class_t c)
{
    switch (c) {
    case AL_REPLY_SENT:
        return AL_SEND_OK;
    case AL_REPLY_RETRY:
        return AL_SEND_RETRY;
    case AL_REPLY_AMBIGUOUS:
        return AL_SEND_AMBIGUOUS;
    default:
        return AL_SEND_PERMANENT;
    }
}

al_transport_t al_curl_transport(int curl_code, bool request_sent)
{
    switch ((CURLcode)curl_code) {
    case CURLE_OK:
        return AL_XFER_REPLY;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_FAILED_INIT:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_OUT_OF_MEMORY:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_UNKNOWN_OPTION:
        return AL_XFER_LOCAL;
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
        return AL_XFER_NOT_SENT; /* nothing of the request can have reached the receiver */
    case CURLE_OPERATION_TIMEDOUT:
        return request_sent ? AL_XFER_TIMEOUT_SENT : AL_XFER_NOT_SENT;
    default:
        /* Closed, reset, garbled reply, HTTP/2 stream error, send error: what matters is whether
         * the receiver may have read the whole request. */
        return request_sent ? AL_XFER_CLOSED_SENT : AL_XFER_NOT_SENT;
    }
}

int al_message_parse(al_message_t *m, const al_delivery_t *d)
{
    json_error_t err;

    memset(m, 0, sizeof(*m));
    m->d = d;
    if (d == NULL || d->payload_json == NULL)
        return AL_EBADINPUT;
    m->root = json_loads(d->payload_json, 0, &err);
    if (m->root == NULL)
        return json_error_code(&err) == json_error_out_of_memory ? AL_DB_ENOMEM : AL_EBADINPUT;
    m->alerts = json_object_get(m->root, "alerts");
    if (!json_is_object(m->root) || !json_is_array(m->alerts)) {
        al_message_dispose(m);
        return AL_EBADINPUT;
    }
    m->nalerts = json_array_size(m->alerts);
    return 0;
}

void al_message_dispose(al_message_t *m)
{
    json_decref(m->root);
    m->root = NULL;
    m->alerts = NULL;
    m->nalerts = 0;
}

static bool token_char(unsigned char c)
{
    return isalnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

int al_request_header(al_request_t *r, const char *name, const char *value)
{
    char **grown;
    char *line;

    if (name == NULL || value == NULL || *name == '\0' || strpbrk(value, "\r\n") != NULL)
        return AL_EBADINPUT;
    for (const char *p = name; *p; p++)
        if (!token_char((unsigned char)*p))
            return AL_EBADINPUT;
    if (r->nheaders >= AL_REQUEST_HEADERS_MAX)
        return AL_ELIMIT;
    grown = realloc(r->headers, (r->nheaders + 1) * sizeof(*r->headers));
    if (grown == NULL)
        return AL_DB_ENOMEM;
    r->headers = grown;
    if (asprintf(&line, "%s: %s", name, value) < 0)
        return AL_DB_ENOMEM;
    r->headers[r->nheaders++] = line;
    return 0;
}

void al_request_dispose(al_request_t *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nheaders; i++)
        free(r->headers[i]);
    free(r->headers);
    for (size_t i = 0; i < r->nrcpt; i++)
        free(r->rcpt[i]);
    free(r->rcpt);
    free(r->mail_from);
    free(r->url);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

int al_reply_header(const al_reply_t *r, const char *name, char *buf, size_t buflen)
{
    size_t nlen = strlen(name);
    const char *p = r->headers;

    while (p != NULL && *p != '\0') {
        const char *eol = strchr(p, '\n');
        const char *end = eol != NULL ? eol : p + strlen(p);
        if ((size_t)(end - p) > nlen && strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            while (end > v && isspace((unsigned char)end[-1]))
                end--;
            if ((size_t)(end - v) + 1 > buflen)
                return -1;
            memcpy(buf, v, (size_t)(end - v));
            buf[end - v] = '\0';
            return (int)(end - v);
        }
        p = eol != NULL ? eol + 1 : NULL;
    }
    return -1;
}

json_t *al_reply_json(const al_reply_t *r)
{
    if (r->body == NULL || r->body_truncated)
        return NULL;
    return json_loadb(r->body, r->body_len, 0, NULL);
}

int al_retry_after_parse(const char *value, uint64_t now_ms, uint64_t *out)
{
    uint64_t secs = 0;
    const char *p = value;
    time_t at;

    if (value == NULL || *value == '\0')
        return -1;
    if (isdigit((unsigned char)*p)) {
        for (; isdigit((unsigned char)*p); p++)
            if ((secs = secs * 10 + (uint64_t)(*p - '0')) > AL_RETRY_AFTER_MAX_MS / 1000)
                secs = AL_RETRY_AFTER_MAX_MS / 1000; /* saturate, keep reading the digits */
        if (*p != '\0')
            return -1;
        *out = secs * 1000;
        return 0;
    }
    at = curl_getdate(value, NULL);
    if (at < 0)
        return -1;
    if ((uint64_t)at * 1000 <= now_ms)
        *out = 0;
    else if ((uint64_t)at * 1000 - now_ms > AL_RETRY_AFTER_MAX_MS)
        *out = AL_RETRY_AFTER_MAX_MS;
    else
        *out = (uint64_t)at * 1000 - now_ms;
    return 0;
}

al_reply_class_t al_classify_http(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                  uint64_t *retry_after_ms)
{
    long s = r->status;
    char v[128];

    if (s >= 200 && s <= 299)
        return AL_REPLY_SENT;
    if (s == 408 || s == 425 || s == 429 || (s >= 500 && s <= 599)) {
        if (al_reply_header(r, "Retry-After", v, sizeof(v)) >= 0 &&
            al_retry_after_parse(v, ctx->now_ms, retry_after_ms) != 0)
            *retry_after_ms = 0;
        return AL_REPLY_RETRY;
    }
    if ((s >= 300 && s <= 399) || s == 401 || s == 403 || s == 404 || s == 410)
        return AL_REPLY_BROKEN; /* wrong URL or credentials: every delivery would fail alike */
    return AL_REPLY_PERMANENT;
}

al_reply_class_t al_channel_classify(const al_channel_ops_t *ops, const al_channel_ctx_t *ctx,
                                     const al_reply_t *r, uint64_t *retry_after_ms)
{
    *retry_after_ms = 0;
    switch (r->transport) {
    case AL_XFER_REPLY:
        break;
    case AL_XFER_NOT_SENT:
        return AL_REPLY_RETRY;
    case AL_XFER_TIMEOUT_SENT:
    case AL_XFER_CLOSED_SENT:
        return AL_REPLY_AMBIGUOUS;
    default:
        return AL_REPLY_BROKEN;
    }
    if (ops != NULL && ops->classify != NULL)
        return ops->classify(ctx, r, retry_after_ms);
    return al_classify_http(ctx, r, retry_after_ms);
}
