/*
 * channel.h - the channel interface: how one notification becomes HTTP requests for one kind of
 * receiver (webhook, console, and later Slack, DingTalk, PagerDuty, ...), and how a reply is read.
 *
 * Why this shape: the delivery loop (sender.c) owns everything that is the same for every channel:
 * claiming, the re-check, curl, timeouts, Idempotency-Key, bounded reply capture, the difference
 * between "never sent" and "sent, no answer", recording the attempt. A channel is then two pure
 * functions over plain data, so each further channel is a small file that a unit test drives
 * without a network:
 *   build(ctx, message, part, &request)   the request for part `part` of the message;
 *   classify(ctx, reply, &retry_after)    sent / retry (maybe after) / permanent / channel broken.
 * A channel whose receiver takes one alert per request (the generic webhook) says how many parts a
 * message has (parts()); a channel that renders a group in one message has one part. A channel
 * with no network (console) implements deliver() instead and is called synchronously.
 *
 * Classification is layered: al_channel_classify() first maps the transport outcome (connect
 * failure, timeout before or after the request went out, connection closed without a reply)
 * the same way for every channel, and only hands real HTTP replies to the channel's classify.
 * al_classify_http() is the common HTTP table (2xx sent; 408, 425, 429, 5xx retry, honouring
 * Retry-After; 401, 403, 404, 410 channel broken; other 3xx/4xx permanent); channels with their
 * own success field (Slack "ok", DingTalk/WeCom "errcode", Feishu "code") call it and then read
 * the body (al_reply_json()).
 *
 * Invariants: builders never put secrets anywhere but the request itself; every string a builder
 * puts in a header is checked for CR/LF; requests and replies are bounded (AL_REQUEST_HEADERS_MAX
 * headers; the sender keeps at most a configured number of reply bytes).
 *
 * Callers: sender.c on the control loop; unit tests. Nothing here does I/O except the console
 * channel's deliver() (one write(2) per line on ctx->console_fd).
 */
#ifndef AL_CHANNEL_H
#define AL_CHANNEL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alerts.h"
#include "config.h"

#define AL_REQUEST_HEADERS_MAX 64           /* headers one request may carry (channel's + ours) */
#define AL_RETRY_AFTER_MAX_MS (3600 * 1000) /* a longer Retry-After is cut to one hour */
#define AL_IDEMPOTENCY_KEY_MAX 96           /* bytes of an Idempotency-Key, NUL included */

/* What a reply means for the delivery. */
typedef enum al_reply_class {
    AL_REPLY_SENT = 0,  /* delivered: 2xx and the channel's own success field */
    AL_REPLY_RETRY,     /* not delivered, may succeed later (*retry_after_ms: receiver's hint) */
    AL_REPLY_PERMANENT, /* this notification will never be accepted (400, 422, bad payload) */
    AL_REPLY_BROKEN,    /* the channel itself is unusable (unknown, bad URL, 401/403/404/410) */
    AL_REPLY_AMBIGUOUS, /* the request went out and no complete reply came back */
    AL_REPLY_CLASS_COUNT
} al_reply_class_t;

/* "sent", "retry", "permanent", "broken", "ambiguous" (NULL out of range). */
const char *al_reply_class_name(al_reply_class_t c);

/* The engine's result for a class: BROKEN and PERMANENT are both AL_SEND_PERMANENT. */
al_send_result_t al_reply_class_result(al_reply_class_t c);

/* How the transfer ended, before any HTTP meaning. */
typedef enum al_transport {
    AL_XFER_REPLY = 0,    /* a complete HTTP reply (status, headers, body) */
    AL_XFER_NOT_SENT,     /* resolve/connect/TLS failure or timeout before the request went out */
    AL_XFER_TIMEOUT_SENT, /* timed out after the request went out */
    AL_XFER_CLOSED_SENT,  /* connection closed or reset after the request went out, no reply */
    AL_XFER_LOCAL,        /* our side: bad URL, unsupported protocol, out of memory */
    AL_XFER_COUNT
} al_transport_t;

/* Maps a CURLcode (as int, so this header needs no curl) and whether the request head went out
 * (CURLINFO_REQUEST_SIZE > 0) to a transport outcome. CURLE_OK is AL_XFER_REPLY. */
al_transport_t al_curl_transport(int curl_code, bool request_sent);

/* Everything a channel may read while building or classifying. */
typedef struct al_channel_ctx {
    const gw_channel_config_t *cfg;   /* this channel; NULL in classify after a reload removed it */
    const gw_alerts_config_t *alerts; /* external_url (ack links); NULL in the same case */
    const char *source;               /* "breakwater@HOST": default "source" of a notification */
    uint64_t now_ms;                  /* unix ms (HTTP-date Retry-After, timestamps) */
    int console_fd;                   /* where the console channel writes (stderr) */
} al_channel_ctx_t;

/* One claimed notification, parsed once for every part (see al_delivery_t.payload_json). */
typedef struct al_message {
    const al_delivery_t *d;
    json_t *root;   /* the parsed payload (owned) */
    json_t *alerts; /* root["alerts"], an array (borrowed) */
    size_t nalerts;
} al_message_t;

/* Parses d->payload_json. Returns 0, AL_EBADINPUT (not the engine's payload shape) or
 * AL_DB_ENOMEM. d must outlive the message. */
int al_message_parse(al_message_t *m, const al_delivery_t *d);
void al_message_dispose(al_message_t *m); /* accepts a zeroed or disposed message */

/* How the sender carries a request. */
typedef enum al_request_kind {
    AL_REQ_HTTP = 0, /* method, url, content_type, body, headers */
    AL_REQ_SMTP,     /* url smtp(s)://, mail_from, rcpt, body = the whole RFC 5322 message (CRLF) */
} al_request_kind_t;

/* One request. Strings are owned (malloc) unless marked. */
typedef struct al_request {
    al_request_kind_t kind;   /* AL_REQ_HTTP unless set (a zeroed request is HTTP) */
    const char *method;       /* "POST" (static) */
    char *url;                /* contains secrets for many channels: never log it */
    const char *content_type; /* static, e.g. "application/json" */
    char *body;
    size_t body_len;
    char **headers; /* "Name: value" lines, the channel's own (e.g. webhook `headers`) */
    size_t nheaders;
    /* Idempotency-Key for this request; empty: the delivery id. Parts of a grouped delivery
     * need distinct keys (a receiver that honours the header would drop parts 2..n). */
    char idempotency_key[AL_IDEMPOTENCY_KEY_MAX];
    /* AL_REQ_SMTP only: the envelope (MAIL FROM, RCPT TO), bare addresses. The sender reports
     * the server's last reply code as the reply's status (250 sent; an SMTP refusal such as
     * RCPT 550 or AUTH 535 is a reply, not a transport failure). */
    char *mail_from;
    char **rcpt;
    size_t nrcpt;
} al_request_t;

/* Adds "name: value". Returns 0, AL_EBADINPUT (CR/LF/NUL in it, empty or invalid name),
 * AL_ELIMIT (AL_REQUEST_HEADERS_MAX reached) or AL_DB_ENOMEM. */
int al_request_header(al_request_t *r, const char *name, const char *value);

/* Frees what the request owns and zeroes it. Accepts a zeroed or disposed request. */
void al_request_dispose(al_request_t *r);

/* A reply as the sender captured it (all borrowed; text is NUL-terminated). */
typedef struct al_reply {
    al_transport_t transport;
    long status;         /* HTTP status (0 when there was no reply) */
    const char *headers; /* header lines of the final response, "Name: value\r\n"... ("" none) */
    const char *body;    /* the first bytes of the body (bounded by the sender) */
    size_t body_len;
    bool body_truncated;
} al_reply_t;

/* The value of header `name` (case-insensitive, first occurrence, surrounding blanks removed) in
 * buf. Returns its length, or -1 when absent or longer than buflen - 1. */
int al_reply_header(const al_reply_t *r, const char *name, char *buf, size_t buflen);

/* The body parsed as JSON (a new reference), or NULL when it is not JSON or was truncated. */
json_t *al_reply_json(const al_reply_t *r);

/* Parses a Retry-After value: delta-seconds ("120") or an HTTP-date (IMF-fixdate, RFC 850 or
 * asctime), relative to now_ms. Returns 0 and *out (0 for a date in the past; at most
 * AL_RETRY_AFTER_MAX_MS), or -1 when the value is neither. */
int al_retry_after_parse(const char *value, uint64_t now_ms, uint64_t *out);

/* The common HTTP table: 2xx sent; 408, 425, 429, 5xx retry (with the reply's Retry-After, if
 * any, in *retry_after_ms); 401, 403, 404, 410 broken; any other status permanent. */
al_reply_class_t al_classify_http(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                  uint64_t *retry_after_ms);

/* A channel type. */
typedef struct al_channel_ops {
    const char *type; /* "webhook" */
    /* Requests the message needs (HTTP channels); NULL: one. 0 means nothing to send. */
    size_t (*parts)(const al_channel_ctx_t *ctx, const al_message_t *m);
    /* Fills *out (zeroed by the caller) for part `part`. Returns 0, AL_EBADINPUT (the message or
     * the channel config cannot make a request: the delivery fails as broken) or AL_DB_ENOMEM. */
    int (*build)(const al_channel_ctx_t *ctx, const al_message_t *m, size_t part,
                 al_request_t *out);
    /* Classifies an HTTP reply (transport AL_XFER_REPLY only); NULL: al_classify_http. */
    al_reply_class_t (*classify)(const al_channel_ctx_t *ctx, const al_reply_t *r,
                                 uint64_t *retry_after_ms);
    /* Local channels only (no HTTP): delivers the whole message now. Writes a short reason into
     * err on failure. NULL for HTTP channels. */
    al_reply_class_t (*deliver)(const al_channel_ctx_t *ctx, const al_message_t *m, char *err,
                                size_t errlen);
} al_channel_ops_t;

extern const al_channel_ops_t al_channel_webhook;
extern const al_channel_ops_t al_channel_console;
extern const al_channel_ops_t al_channel_slack;
extern const al_channel_ops_t al_channel_dingtalk;
extern const al_channel_ops_t al_channel_feishu;
extern const al_channel_ops_t al_channel_wecom;
extern const al_channel_ops_t al_channel_teams;
extern const al_channel_ops_t al_channel_pagerduty;
extern const al_channel_ops_t al_channel_opsgenie;
extern const al_channel_ops_t al_channel_twilio;
extern const al_channel_ops_t al_channel_email;
extern const al_channel_ops_t al_channel_alertmanager;

/* The implementation of a channel type, or NULL when this build has none yet. */
const al_channel_ops_t *al_channel_ops(gw_channel_type_t type);

/* The channel named `name` in cfg, or NULL. */
const gw_channel_config_t *al_channel_find(const gw_alerts_config_t *cfg, const char *name);

/* The type's config name ("webhook"), "unknown" out of range. */
const char *al_channel_type_name(gw_channel_type_t type);

/* Classifies a reply: transport first (NOT_SENT -> retry, TIMEOUT_SENT/CLOSED_SENT -> ambiguous,
 * LOCAL -> broken), then ops->classify (or al_classify_http) for an HTTP reply. *retry_after_ms
 * is set to 0 first. */
al_reply_class_t al_channel_classify(const al_channel_ops_t *ops, const al_channel_ctx_t *ctx,
                                     const al_reply_t *r, uint64_t *retry_after_ms);

/* The generic webhook body (SPEC section 5) for element i of the message: exactly
 * {"version":"1","alert_id","delivery_id","dedup_key","tier","status","event","labels","summary",
 *  "started_at","escalation_level","count","source"} in that order. NULL when i is out of range
 * or memory ran out. Other channels may start from it. */
json_t *al_webhook_body(const al_channel_ctx_t *ctx, const al_message_t *m, size_t i);

#endif
