/* test_alerts_channel_fixture.h - shared by the per-provider channel tests
 * (tests/unit/test_alerts_channel_*.c): notification payloads written the way the engine writes
 * them (docs/alerts.md, "The outbox"), building a request from one, reading its JSON body, and
 * classifying a hand-made reply. Pure: no network, no database, a fixed clock (T0).
 *
 * Every helper is static inline so each test file uses what it needs without unused-function
 * warnings. Not a test itself (the CMake glob takes tests/unit/test_*.c only).
 */
#ifndef TEST_ALERTS_CHANNEL_FIXTURE_H
#define TEST_ALERTS_CHANNEL_FIXTURE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>
#include <jansson.h>

#include "acklink.h"
#include "alerts.h"
#include "channel.h"
#include "channel_int.h"
#include "config.h"

#define T0 1767225600000ULL /* 2026-01-01T00:00:00Z */
#define DID "0b5c7e1a-2f4d-4c1e-9a7b-3d2e1f0a9b8c"
#define KEY_USERS "breaker_open{upstream=\\\"users\\\"}"

/* One element of "alerts" (the SPEC webhook body plus "flapping"). */
#define FX_ALERT(id, status, summary)                                                              \
    "{\"alert_id\":\"" id "\",\"delivery_id\":\"" DID "\","                                        \
    "\"dedup_key\":\"" KEY_USERS "\",\"tier\":\"P0\","                                             \
    "\"status\":\"" status "\",\"event\":\"breaker_open\",\"labels\":{\"upstream\":\"users\"},"    \
    "\"summary\":\"" summary "\",\"started_at\":\"2026-01-01T00:00:00Z\","                         \
    "\"escalation_level\":1,\"count\":3,\"source\":\"breakwater@host\",\"flapping\":false}"

/* Another alert (its own dedup key and labels), for groups. */
#define FX_ALERT2(id, status)                                                                      \
    "{\"alert_id\":\"" id "\",\"delivery_id\":\"" DID "\","                                        \
    "\"dedup_key\":\"host_down{host=\\\"10.0.0.1:80\\\",upstream=\\\"users\\\"}\",\"tier\":"       \
    "\"P0\","                                                                                      \
    "\"status\":\"" status "\",\"event\":\"host_down\","                                           \
    "\"labels\":{\"upstream\":\"users\",\"host\":\"10.0.0.1:80\"},"                                \
    "\"summary\":\"Host 10.0.0.1:80 of upstream 'users' is down\","                                \
    "\"started_at\":\"2026-01-01T00:00:05Z\",\"escalation_level\":0,\"count\":1,"                  \
    "\"source\":\"breakwater@host\",\"flapping\":false}"

#define FX_PAYLOAD(kind, tier, alerts)                                                             \
    "{\"version\":\"1\",\"delivery_id\":\"" DID "\",\"channel\":\"ch\",\"kind\":\"" kind "\","     \
    "\"tier\":\"" tier "\",\"source\":\"breakwater@host\",\"attempt\":1,\"alerts\":[" alerts "]}"

#define FX_SUMMARY "Circuit breaker for upstream 'users' opened: 5 consecutive failures"
#define FX_FIRING FX_PAYLOAD("firing", "P0", FX_ALERT("42", "firing", FX_SUMMARY))
#define FX_RESOLVED FX_PAYLOAD("resolved", "P0", FX_ALERT("42", "resolved", FX_SUMMARY))
#define FX_ACKED FX_PAYLOAD("firing", "P0", FX_ALERT("42", "acknowledged", FX_SUMMARY))
#define FX_GROUP                                                                                   \
    FX_PAYLOAD("firing", "P0", FX_ALERT("42", "firing", FX_SUMMARY) "," FX_ALERT2("43", "firing"))

/* A firing notification on tier ("P1", "P2", ...) of n alerts: alert i has the key "k<i>", the
 * labels `labels` (the members of a JSON object, the same for every alert; NULL: one label
 * n=<i>) and the summary "alert <i>:" followed by reps copies of unit (JSON text). Free it. */
static inline char *fx_group_payload_on(const char *tier, int n, const char *labels,
                                        const char *unit, size_t reps)
{
    char *payload = NULL, *alerts = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&alerts, &len);

    assert_non_null(mem);
    for (int i = 1; i <= n; i++) {
        fprintf(mem,
                "%s{\"alert_id\":\"%d\",\"dedup_key\":\"k%d\",\"status\":\"firing\",\"labels\":{",
                i > 1 ? "," : "", i, i);
        if (labels != NULL)
            fputs(labels, mem);
        else
            fprintf(mem, "\"n\":\"%d\"", i);
        fprintf(mem, "},\"summary\":\"alert %d:", i);
        for (size_t r = 0; r < reps; r++)
            fputs(unit, mem);
        fputs("\"}", mem);
    }
    fclose(mem);
    assert_true(asprintf(&payload, FX_PAYLOAD("firing", "%s", "%s"), tier, alerts) > 0);
    free(alerts);
    return payload;
}

/* The same on P2, each alert with one label n=<i>. */
static inline char *fx_group_payload(int n, const char *unit, size_t reps)
{
    return fx_group_payload_on("P2", n, NULL, unit, reps);
}

/* The ack-link secret the tests install (acklink.h) and the external URL they configure. */
#define FX_EXTERNAL_URL "https://gw.example.internal"

static inline void fx_install_ack_secret(void)
{
    uint8_t secret[AL_ACK_SECRET_LEN];

    for (size_t i = 0; i < sizeof(secret); i++)
        secret[i] = (uint8_t)(i * 7 + 1);
    al_ack_set_secret(secret);
}

/* True when link is EXTERNAL_URL/ack/TOKEN with a genuine token for alert_id. */
static inline bool fx_ack_link_ok(const char *link, int64_t alert_id)
{
    uint8_t secret[AL_ACK_SECRET_LEN];
    size_t base = strlen(FX_EXTERNAL_URL "/ack/");
    int64_t id = 0;

    for (size_t i = 0; i < sizeof(secret); i++)
        secret[i] = (uint8_t)(i * 7 + 1);
    if (link == NULL || strncmp(link, FX_EXTERNAL_URL "/ack/", base) != 0)
        return false;
    return al_ack_token_verify(secret, link + base, strlen(link + base), T0 / 1000, &id) == 0 &&
           id == alert_id;
}

typedef struct fx {
    al_delivery_t d;
    al_message_t m;
    gw_alerts_config_t alerts;
    al_channel_ctx_t ctx;
    al_request_t req;
} fx_t;

static inline int fx_kind(const char *payload)
{
    if (strstr(payload, "\"kind\":\"resolved\"") != NULL)
        return AL_NOTIFY_RESOLVED;
    if (strstr(payload, "\"kind\":\"escalated\"") != NULL)
        return AL_NOTIFY_ESCALATED;
    if (strstr(payload, "\"kind\":\"repeat\"") != NULL)
        return AL_NOTIFY_REPEAT;
    return AL_NOTIFY_FIRING;
}

/* Parses payload for channel cfg (external_url set when with_link). */
static inline void fx_init(fx_t *f, const gw_channel_config_t *cfg, const char *payload, int tier,
                           bool with_link)
{
    memset(f, 0, sizeof(*f));
    f->d.id = 7;
    f->d.kind = (al_notify_kind_t)fx_kind(payload);
    f->d.tier = tier;
    f->d.attempt = 1;
    snprintf(f->d.delivery_id, sizeof(f->d.delivery_id), "%s", DID);
    f->d.channel = (char *)"ch";
    f->d.payload_json = (char *)payload;
    f->alerts.external_url = with_link ? (char *)FX_EXTERNAL_URL : NULL;
    f->ctx = (al_channel_ctx_t){
        .cfg = cfg, .alerts = &f->alerts, .source = "breakwater@host", .now_ms = T0};
    assert_int_equal(al_message_parse(&f->m, &f->d), 0);
}

/* Builds part `part`; returns build()'s result. */
static inline int fx_build(fx_t *f, const al_channel_ops_t *ops, size_t part)
{
    al_request_dispose(&f->req);
    return ops->build(&f->ctx, &f->m, part, &f->req);
}

static inline size_t fx_parts(fx_t *f, const al_channel_ops_t *ops)
{
    return ops->parts != NULL ? ops->parts(&f->ctx, &f->m) : 1;
}

/* The request body as JSON (a new reference; fails the test when it is not JSON). */
static inline json_t *fx_json(const fx_t *f)
{
    json_error_t err;
    json_t *j;

    assert_non_null(f->req.body);
    assert_int_equal(strlen(f->req.body), f->req.body_len);
    j = json_loads(f->req.body, 0, &err);
    if (j == NULL)
        fail_msg("body is not JSON (%s): %s", err.text, f->req.body);
    return j;
}

static inline void fx_dispose(fx_t *f)
{
    al_request_dispose(&f->req);
    al_message_dispose(&f->m);
}

/* fx_init(), then part 0 built (it must build) and its body as JSON: the set-up of most tests.
 * Release both with fx_done(). */
static inline json_t *fx_build_json(fx_t *f, const al_channel_ops_t *ops,
                                    const gw_channel_config_t *cfg, const char *payload, int tier,
                                    bool with_link)
{
    fx_init(f, cfg, payload, tier, with_link);
    assert_int_equal(fx_build(f, ops, 0), 0);
    return fx_json(f);
}

static inline void fx_done(fx_t *f, json_t *j)
{
    json_decref(j);
    fx_dispose(f);
}

/* build() of a firing P0 notification for channel config cfg: 0, or its error. */
static inline int fx_build_result(const al_channel_ops_t *ops, const gw_channel_config_t *cfg)
{
    fx_t f;
    int r;

    fx_init(&f, cfg, FX_FIRING, GW_TIER_P0, false);
    r = fx_build(&f, ops, 0);
    fx_dispose(&f);
    return r;
}

/* Without a configured url the request goes to the provider's default, `want`. */
static inline void fx_default_url(const al_channel_ops_t *ops, const gw_channel_config_t *cfg,
                                  const char *want)
{
    gw_channel_config_t c = *cfg;
    fx_t f;

    c.url = NULL;
    fx_init(&f, &c, FX_FIRING, GW_TIER_P0, false);
    assert_int_equal(fx_build(&f, ops, 0), 0);
    assert_string_equal(f.req.url, want);
    fx_dispose(&f);
}

/* The value of header name in the request's own headers, or NULL. */
static inline const char *fx_header(const al_request_t *r, const char *name)
{
    size_t n = strlen(name);

    for (size_t i = 0; i < r->nheaders; i++)
        if (strncasecmp(r->headers[i], name, n) == 0 && r->headers[i][n] == ':')
            return r->headers[i] + n + 2;
    return NULL;
}

/* A string at a JSON path like "payload.summary" or "attachments.0.content.type". */
static inline json_t *fx_at(json_t *j, const char *path)
{
    char buf[256], *save = NULL;

    snprintf(buf, sizeof(buf), "%s", path);
    for (char *tok = strtok_r(buf, ".", &save); j != NULL && tok != NULL;
         tok = strtok_r(NULL, ".", &save))
        j = json_is_array(j) ? json_array_get(j, strtoul(tok, NULL, 10)) : json_object_get(j, tok);
    return j;
}

static inline const char *fx_str(json_t *j, const char *path)
{
    return json_string_value(fx_at(j, path));
}

/* One row of a reply table: what the provider answers and what it must mean. */
typedef struct fx_reply_case {
    const char *what;
    long status;
    const char *headers;
    const char *body;
    al_reply_class_t want;
    uint64_t want_retry_after_ms;
} fx_reply_case_t;

static inline void fx_reply_table(const al_channel_ops_t *ops, const gw_channel_config_t *cfg,
                                  const fx_reply_case_t *rows, size_t n)
{
    al_channel_ctx_t ctx = {.cfg = cfg, .source = "breakwater@host", .now_ms = T0};

    for (size_t i = 0; i < n; i++) {
        const fx_reply_case_t *c = &rows[i];
        al_reply_t r = {.transport = AL_XFER_REPLY,
                        .status = c->status,
                        .headers = c->headers != NULL ? c->headers : "",
                        .body = c->body != NULL ? c->body : "",
                        .body_len = c->body != NULL ? strlen(c->body) : 0};
        uint64_t ra = 12345;
        al_reply_class_t got = al_channel_classify(ops, &ctx, &r, &ra);
        if (got != c->want || ra != c->want_retry_after_ms)
            fail_msg("%s reply '%s': got %s (retry after %llu ms), want %s (%llu ms)", ops->type,
                     c->what, al_reply_class_name(got), (unsigned long long)ra,
                     al_reply_class_name(c->want), (unsigned long long)c->want_retry_after_ms);
    }
}

/* A body cut by the sender (more than it keeps) is never "sent". */
static inline void fx_truncated_is_not_sent(const al_channel_ops_t *ops,
                                            const gw_channel_config_t *cfg, long status,
                                            const char *body)
{
    al_channel_ctx_t ctx = {.cfg = cfg, .now_ms = T0};
    al_reply_t r = {.transport = AL_XFER_REPLY,
                    .status = status,
                    .headers = "",
                    .body = body,
                    .body_len = strlen(body),
                    .body_truncated = true};
    uint64_t ra = 0;

    assert_int_not_equal(al_channel_classify(ops, &ctx, &r, &ra), AL_REPLY_SENT);
}

#endif
