/*
 * channel_int.h - what the provider channels (channel_slack.c, channel_dingtalk.c, ...) share and
 * nothing else needs: a bounded text buffer, one alert of a message read into plain fields, the
 * words and titles every chat message starts with, and the signing primitives (HMAC-SHA256,
 * base64, percent-encoding) the providers' signatures and auth headers are made of.
 *
 * Why a shared layer: ten providers render the same facts (summary, tier, dedup key, labels,
 * since, count, ack link) in ten markups under ten size limits. Reading the payload and cutting
 * text safely (never inside a UTF-8 sequence, never past a provider's byte limit) is done once
 * here and tested once (test_alerts_channel_render.c); each channel file keeps only its markup,
 * its signature and its reply table.
 *
 * Invariants: al_buf_t never grows past its max (appends are cut at a UTF-8 boundary and mark it
 * full); nothing here logs, and nothing here keeps a secret beyond the call that uses it.
 * Callers: the channel_*.c builders and classifiers, on the control loop; unit tests.
 */
#ifndef AL_CHANNEL_INT_H
#define AL_CHANNEL_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.h"

#define AL_ELLIPSIS "\xE2\x80\xA6" /* U+2026, before "and N more" */
#define AL_MIDDOT " \xC2\xB7 "     /* " U+00B7 ", between facts in chat text */

/* ---- a bounded, growable text buffer ---- */

typedef struct al_buf {
    char *p; /* NUL-terminated once anything was added (NULL before) */
    size_t len, cap, max;
    bool full; /* an append was cut or refused at max */
    bool oom;  /* an allocation failed: the content is incomplete */
} al_buf_t;

void al_buf_init(al_buf_t *b, size_t max);
void al_buf_dispose(al_buf_t *b); /* accepts a zeroed or disposed buffer */

/* Appends n bytes of s, cut at the last whole UTF-8 sequence that fits under max. Returns true
 * when all of it was appended. */
bool al_buf_add(al_buf_t *b, const char *s, size_t n);
bool al_buf_puts(al_buf_t *b, const char *s);
bool al_buf_printf(al_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Bytes still free under max. */
size_t al_buf_room(const al_buf_t *b);

/* Hands the text over (malloc'ed, "" when empty; NULL when out of memory) and resets b. */
char *al_buf_steal(al_buf_t *b);

/* The longest prefix of s (at most max bytes of its n) that does not end inside a UTF-8
 * sequence. */
size_t al_utf8_prefix(const char *s, size_t n, size_t max);

/* ---- one alert of a message, read once ---- */

/* Borrowed from the message (valid while it lives). Missing strings read as "" and missing
 * numbers as 0, so renderers need no NULL checks. */
typedef struct al_alert_view {
    const char *alert_id, *dedup_key, *tier, *status, *event, *summary, *started_at, *source;
    json_t *labels; /* an object (possibly empty, never NULL) */
    int64_t count, escalation_level;
    bool flapping;
} al_alert_view_t;

/* Reads element i. Returns 0, or AL_EBADINPUT when it is not an object. */
int al_alert_view(const al_channel_ctx_t *ctx, const al_message_t *m, size_t i, al_alert_view_t *v);

/* What this notification says about its alerts, as channels map it to provider actions:
 * RESOLVED for a resolved notification (or an alert whose status is "resolved"), ACKNOWLEDGED
 * for an alert whose status is "acknowledged", else TRIGGER (firing, escalated, repeat). */
typedef enum al_alert_action {
    AL_ACTION_TRIGGER = 0,
    AL_ACTION_ACKNOWLEDGE,
    AL_ACTION_RESOLVE,
} al_alert_action_t;

al_alert_action_t al_alert_action(const al_message_t *m, const al_alert_view_t *v);

/* "FIRING", "ESCALATED", "REPEAT", "ACKNOWLEDGED", "RESOLVED" for the message (its first alert
 * decides acknowledged/resolved). */
const char *al_message_word(const al_message_t *m);

/* The message's title: "[P1] FIRING: <summary>" for one alert, "[P1] FIRING: 3 alerts" for a
 * group, always starting with the tier and carrying "Breakwater" somewhere in the message body
 * (DingTalk/Feishu keyword security), cut at max bytes (UTF-8 safe) into buf. */
void al_message_title(const al_message_t *m, char *buf, size_t cap);

/* The tier of the message ("P0".."P2"), from the delivery. */
const char *al_message_tier(const al_message_t *m);

/* Appends the labels as "k=v, k=v", sorted by key (whatever order the payload had). */
bool al_labels_text(al_buf_t *b, json_t *labels);

/* Renders one alert into out (an al_buf_t of its own). */
typedef void (*al_alert_render_fn)(const al_channel_ctx_t *ctx, const al_message_t *m,
                                   const al_alert_view_t *v, al_buf_t *out);

#define AL_RENDER_SHOWN_MAX 5 /* alerts a grouped or folded message spells out */
#define AL_RENDER_MORE_MAX 64 /* bytes kept under b's max for the "more" line */

/* Appends the message's alerts, each rendered by fn, while they fit whole under b's max (less
 * AL_RENDER_MORE_MAX when there is more than one alert; the first one always goes in, cut if it
 * must) and at most min(max_alerts, AL_RENDER_SHOWN_MAX) of them. When some are left out it
 * appends the line "…and N more alerts" itself, in the renderer's layout (the white space an
 * alert starts and ends with; a sentence when alerts are sentences), within b's max.
 * Returns how many alerts the text accounts for: m->nalerts once the "more" line is in, else how
 * many were appended (out of memory, or nothing fit), for which the caller may still say
 * "...and N more". */
size_t al_render_alerts(const al_channel_ctx_t *ctx, const al_message_t *m, al_buf_t *b,
                        al_alert_render_fn fn, size_t max_alerts);

/* The words of al_render_alerts' "more" line without its layout: "…and N more alerts" ("…and 1
 * more alert") for a message of nalerts that spells out `shown` of them, into buf (cap bytes;
 * AL_RENDER_MORE_MAX is enough). Returns its length; 0 (buf "") when none are left out. */
size_t al_render_more(size_t nalerts, size_t shown, char *buf, size_t cap);

/* One alert, or the "more" line (v NULL, text its words), as JSON blocks for a provider that
 * lays a message out as blocks (Slack sections, Feishu card elements, Teams Adaptive Card
 * elements): an object, or an array of them (appended one by one). `shown`: how many alerts
 * come before it. NULL when out of memory. */
typedef json_t *(*al_alert_block_fn)(const al_channel_ctx_t *ctx, const al_message_t *m,
                                     const al_alert_view_t *v, const char *text, size_t shown);

/* al_render_alerts for block layouts: appends to blocks (a JSON array) the message's alerts,
 * each built by fn, while what they add to the array's compact JSON stays within budget bytes
 * (less room for the "more" block when there is more than one alert; the first alert always
 * goes in) and at most min(max_alerts, AL_RENDER_SHOWN_MAX) of them. When some are left out it
 * appends fn's block for the al_render_more line itself, within budget.
 * Returns how many alerts the blocks account for (m->nalerts once the "more" block is in, else
 * how many were appended), or -1 when out of memory. */
long al_render_blocks(const al_channel_ctx_t *ctx, const al_message_t *m, json_t *blocks,
                      al_alert_block_fn fn, size_t budget, size_t max_alerts);

/* Appends "since STARTED_AT · count N · escalation L · flapping" (count only above 1, escalation
 * only above 0, flapping only when set), with sep between the parts (" · " in chat). */
bool al_facts_text(al_buf_t *b, const al_alert_view_t *v, const char *sep);

/* ---- provider error codes ---- */

/* One row of a provider's error-code table (DingTalk errcode, Feishu code, WeCom errcode,
 * Twilio code): what the code means for the delivery, and the least wait before a retry. */
typedef struct al_code_rule {
    int64_t code;
    al_reply_class_t cls;
    uint64_t retry_after_ms;
} al_code_rule_t;

/* The class of code in rules (n rows; *retry_after_ms raised to the row's wait), or otherwise. */
al_reply_class_t al_code_lookup(const al_code_rule_t *rules, size_t n, int64_t code,
                                al_reply_class_t otherwise, uint64_t *retry_after_ms);

/* Classifies the reply of a provider that reports failures as a code in the body (DingTalk and
 * WeCom "errcode", Feishu "code"), often under HTTP 200. has_code: the body is JSON and carried
 * the code. 429 and 5xx keep the HTTP meaning (retry, Retry-After honoured). Otherwise a known
 * code decides (rules); code 0 under 2xx is sent; an unknown non-zero code is permanent under
 * 2xx (the provider refused this message) and the HTTP meaning otherwise; a 2xx reply without
 * the code is never sent (retry). */
al_reply_class_t al_classify_code(const al_channel_ctx_t *ctx, const al_reply_t *r, bool has_code,
                                  int64_t code, const al_code_rule_t *rules, size_t n,
                                  uint64_t *retry_after_ms);

/* ---- signing primitives ---- */

/* HMAC-SHA256(key, msg) into out (32 bytes). Returns 0 or -1. */
int al_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                   unsigned char out[32]);

/* Standard base64 (with padding) of n bytes into out (needs 4 * ((n + 2) / 3) + 1 bytes).
 * Returns the length written. */
size_t al_base64(const unsigned char *in, size_t n, char *out);

/* Percent-encodes s (RFC 3986: everything but ALPHA DIGIT - . _ ~) into b. */
bool al_url_escape(al_buf_t *b, const char *s);

/* Hex SHA-256 of s (64 characters + NUL). */
void al_sha256_hex(const char *s, char out[65]);

/* key itself when it is at most max bytes, else "sha256:" + its hex SHA-256 (71 bytes): a
 * provider key (PagerDuty dedup_key <= 255, Opsgenie alias <= 512) that stays the same for
 * every notification of the alert, so ack and resolve still find what trigger created.
 * out needs max + 1 bytes and at least 72. */
void al_stable_key(const char *key, size_t max, char *out);

/* ---- ack links ---- */

/* The signed ack link of an alert (acklink.h: "EXTERNAL_URL/ack/TOKEN", valid AL_ACK_TTL_S from
 * ctx->now_ms) for the payload's alert_id (a decimal string) into buf. Returns its length, or 0
 * when there is none (no alerts.external_url, no process secret, an id that is not a positive
 * integer, or cap too small): the channel leaves the link out then. */
size_t al_channel_ack_link(const al_channel_ctx_t *ctx, const char *alert_id, char *buf,
                           size_t cap);

/* ---- shared request setup ---- */

/* Fills out as a JSON POST of body (stolen) to url (copied). Returns 0 or AL_DB_ENOMEM (out is
 * disposed then). */
int al_request_json(al_request_t *out, const char *url, json_t *body);

/* secs (a provider's retry hint) in ms, at most AL_RETRY_AFTER_MAX_MS; 0 when secs <= 0. */
uint64_t al_retry_secs(int64_t secs);

/* True when o[key] is the string val. */
bool al_json_str_is(json_t *o, const char *key, const char *val);

/* The integer value of key in a JSON object, when it is an integer. */
bool al_json_int(json_t *o, const char *key, int64_t *out);

#endif
