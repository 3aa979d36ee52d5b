/* test_alerts_channels.c - alerts/channel.c, channel_webhook.c, channel_console.c.
 *
 * Pure: no network, no database. The webhook body is compared byte for byte with SPEC section 5
 * (including grouped notifications: one request per alert, distinct Idempotency-Keys); the reply
 * classification is a declarative table (status, headers, body, transport -> class, Retry-After),
 * as is the curl-outcome table that separates "never sent" from "sent, no answer". The console
 * channel writes into a temporary file instead of stderr. Payloads are written the way the engine
 * writes them (docs/alerts.md, "The outbox"); test_alerts_sender.c checks the engine's own.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "alerts.h"
#include "channel.h"
#include "config.h"

#define T0 1767225600000ULL /* 2026-01-01T00:00:00Z */
#define DID "0b5c7e1a-2f4d-4c1e-9a7b-3d2e1f0a9b8c"

#define ALERT(id, summary)                                                                         \
    "{\"alert_id\":\"" id "\",\"delivery_id\":\"" DID "\","                                        \
    "\"dedup_key\":\"breaker_open{upstream=\\\"users\\\"}\",\"tier\":\"P1\","                      \
    "\"status\":\"firing\",\"event\":\"breaker_open\",\"labels\":{\"upstream\":\"users\"},"        \
    "\"summary\":\"" summary "\",\"started_at\":\"2026-01-01T00:00:00Z\","                         \
    "\"escalation_level\":0,\"count\":1,\"source\":\"breakwater@host\",\"flapping\":false}"

#define PAYLOAD(alerts)                                                                            \
    "{\"version\":\"1\",\"delivery_id\":\"" DID "\",\"channel\":\"hook\",\"kind\":\"firing\","     \
    "\"tier\":\"P1\",\"source\":\"breakwater@host\",\"attempt\":1,\"alerts\":[" alerts "]}"

/* SPEC section 5, byte for byte (compact JSON). */
#define SPEC_BODY(id, summary)                                                                     \
    "{\"version\":\"1\",\"alert_id\":\"" id "\",\"delivery_id\":\"" DID "\","                      \
    "\"dedup_key\":\"breaker_open{upstream=\\\"users\\\"}\",\"tier\":\"P1\","                      \
    "\"status\":\"firing\",\"event\":\"breaker_open\",\"labels\":{\"upstream\":\"users\"},"        \
    "\"summary\":\"" summary "\",\"started_at\":\"2026-01-01T00:00:00Z\","                         \
    "\"escalation_level\":0,\"count\":1,\"source\":\"breakwater@host\"}"

static gw_kv_t hook_headers[] = {{"X-Team", "sre"}, {"Authorization", "Bearer t0ken"}};

static gw_channel_config_t hook_cfg = {
    .name = "hook",
    .type = GW_CHANNEL_WEBHOOK,
    .url = "https://hooks.example.com/services/T0/SECRET",
    .headers = hook_headers,
    .nheaders = 2,
};

static gw_channel_config_t log_cfg = {.name = "log", .type = GW_CHANNEL_CONSOLE};

static al_channel_ctx_t ctx_for(const gw_channel_config_t *cfg)
{
    return (al_channel_ctx_t){.cfg = cfg, .source = "breakwater@fallback", .now_ms = T0};
}

static al_delivery_t delivery(const char *payload, al_notify_kind_t kind, int tier)
{
    al_delivery_t d = {.id = 7, .kind = kind, .tier = tier, .attempt = 1};

    snprintf(d.delivery_id, sizeof(d.delivery_id), "%s", DID);
    d.channel = (char *)"hook";
    d.payload_json = (char *)payload;
    return d;
}

static const char *header_value(const al_request_t *r, const char *name)
{
    size_t n = strlen(name);

    for (size_t i = 0; i < r->nheaders; i++)
        if (strncasecmp(r->headers[i], name, n) == 0 && r->headers[i][n] == ':')
            return r->headers[i] + n + 2;
    return NULL;
}

/* ---- webhook ---- */

static void webhook_body_is_spec_section_5_exactly(void **state)
{
    al_delivery_t d = delivery(PAYLOAD(ALERT("42", "Circuit breaker for upstream 'users' opened")),
                               AL_NOTIFY_FIRING, GW_TIER_P1);
    al_channel_ctx_t ctx = ctx_for(&hook_cfg);
    al_request_t rq = {0};
    al_message_t m;

    assert_int_equal(al_message_parse(&m, &d), 0);
    assert_int_equal(al_channel_webhook.parts(&ctx, &m), 1);
    assert_int_equal(al_channel_webhook.build(&ctx, &m, 0, &rq), 0);
    assert_string_equal(rq.body, SPEC_BODY("42", "Circuit breaker for upstream 'users' opened"));
    assert_int_equal(rq.body_len, strlen(rq.body));
    assert_string_equal(rq.method, "POST");
    assert_string_equal(rq.content_type, "application/json");
    assert_string_equal(rq.url, hook_cfg.url);
    assert_string_equal(rq.idempotency_key, ""); /* one alert: the delivery id itself */
    assert_int_equal(rq.nheaders, 2);
    assert_string_equal(header_value(&rq, "X-Team"), "sre");
    assert_string_equal(header_value(&rq, "Authorization"), "Bearer t0ken");
    al_request_dispose(&rq);
    al_request_dispose(&rq); /* disposing twice is harmless */
    al_message_dispose(&m);
}

static void webhook_group_is_one_request_per_alert_with_distinct_keys(void **state)
{
    al_delivery_t d =
        delivery(PAYLOAD(ALERT("1", "first") "," ALERT("2", "second") "," ALERT("3", "third")),
                 AL_NOTIFY_FIRING, GW_TIER_P2);
    const char *summaries[] = {"first", "second", "third"};
    al_channel_ctx_t ctx = ctx_for(&hook_cfg);
    al_message_t m;

    assert_int_equal(al_message_parse(&m, &d), 0);
    assert_int_equal(al_channel_webhook.parts(&ctx, &m), 3);
    for (size_t i = 0; i < 3; i++) {
        al_request_t rq = {0};
        char key[80], id[4];
        json_t *b;

        assert_int_equal(al_channel_webhook.build(&ctx, &m, i, &rq), 0);
        b = json_loads(rq.body, 0, NULL);
        assert_non_null(b);
        snprintf(id, sizeof(id), "%zu", i + 1);
        assert_string_equal(json_string_value(json_object_get(b, "alert_id")), id);
        assert_string_equal(json_string_value(json_object_get(b, "delivery_id")), DID);
        assert_string_equal(json_string_value(json_object_get(b, "summary")), summaries[i]);
        assert_int_equal(json_object_size(b), 13);
        snprintf(key, sizeof(key), "%s:%zu", DID, i + 1);
        assert_string_equal(rq.idempotency_key, key);
        json_decref(b);
        al_request_dispose(&rq);
    }
    al_message_dispose(&m);
}

static void webhook_fills_source_and_labels_when_the_payload_lacks_them(void **state)
{
    al_delivery_t d =
        delivery(PAYLOAD("{\"alert_id\":\"5\",\"summary\":\"s\"}"), AL_NOTIFY_FIRING, GW_TIER_P1);
    al_channel_ctx_t ctx = ctx_for(&hook_cfg);
    al_request_t rq = {0};
    al_message_t m;

    assert_int_equal(al_message_parse(&m, &d), 0);
    assert_int_equal(al_channel_webhook.build(&ctx, &m, 0, &rq), 0);
    assert_string_equal(rq.body, "{\"version\":\"1\",\"alert_id\":\"5\",\"delivery_id\":\"" DID
                                 "\",\"dedup_key\":null,\"tier\":null,\"status\":null,"
                                 "\"event\":null,\"labels\":{},\"summary\":\"s\","
                                 "\"started_at\":null,\"escalation_level\":null,\"count\":null,"
                                 "\"source\":\"breakwater@fallback\"}");
    al_request_dispose(&rq);
    al_message_dispose(&m);
}

static void webhook_resolved_notification_keeps_the_alert_status(void **state)
{
    al_delivery_t d =
        delivery(PAYLOAD("{\"alert_id\":\"9\",\"status\":\"resolved\",\"tier\":\"P0\"}"),
                 AL_NOTIFY_RESOLVED, GW_TIER_P0);
    al_channel_ctx_t ctx = ctx_for(&hook_cfg);
    al_request_t rq = {0};
    al_message_t m;
    json_t *b;

    assert_int_equal(al_message_parse(&m, &d), 0);
    assert_int_equal(al_channel_webhook.build(&ctx, &m, 0, &rq), 0);
    b = json_loads(rq.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(b, "status")), "resolved");
    json_decref(b);
    al_request_dispose(&rq);
    al_message_dispose(&m);
}

static void webhook_refuses_what_it_cannot_build(void **state)
{
    al_delivery_t d = delivery(PAYLOAD("42"), AL_NOTIFY_FIRING, GW_TIER_P1);
    al_channel_ctx_t ctx = ctx_for(&hook_cfg);
    al_request_t rq = {0};
    al_message_t m;

    assert_int_equal(al_message_parse(&m, &d), 0);
    assert_int_equal(al_channel_webhook.build(&ctx, &m, 0, &rq), AL_EBADINPUT);
    assert_int_equal(al_channel_webhook.build(&ctx, &m, 1, &rq), AL_EBADINPUT);
    assert_null(rq.body);
    ctx.cfg = NULL;
    assert_int_equal(al_channel_webhook.build(&ctx, &m, 0, &rq), AL_EBADINPUT);
    al_message_dispose(&m);
}

static void message_parse_refuses_other_shapes(void **state)
{
    al_delivery_t d = delivery("not json", AL_NOTIFY_FIRING, GW_TIER_P1);
    al_message_t m;

    assert_int_equal(al_message_parse(&m, &d), AL_EBADINPUT);
    d.payload_json = (char *)"{\"alerts\":{}}";
    assert_int_equal(al_message_parse(&m, &d), AL_EBADINPUT);
    d.payload_json = (char *)"[]";
    assert_int_equal(al_message_parse(&m, &d), AL_EBADINPUT);
    d.payload_json = NULL;
    assert_int_equal(al_message_parse(&m, &d), AL_EBADINPUT);
    d.payload_json = (char *)PAYLOAD("");
    assert_int_equal(al_message_parse(&m, &d), 0);
    assert_int_equal(m.nalerts, 0);
    al_message_dispose(&m);
    al_message_dispose(&m);
}

/* ---- request helpers ---- */

static void request_header_refuses_injection_and_bounds_the_list(void **state)
{
    al_request_t rq = {0};

    assert_int_equal(al_request_header(&rq, "X-A", "v\r\nX-Evil: 1"), AL_EBADINPUT);
    assert_int_equal(al_request_header(&rq, "X-A\r\n", "v"), AL_EBADINPUT);
    assert_int_equal(al_request_header(&rq, "X A", "v"), AL_EBADINPUT);
    assert_int_equal(al_request_header(&rq, "", "v"), AL_EBADINPUT);
    for (int i = 0; i < AL_REQUEST_HEADERS_MAX; i++)
        assert_int_equal(al_request_header(&rq, "X-N", "v"), 0);
    assert_int_equal(al_request_header(&rq, "X-N", "v"), AL_ELIMIT);
    assert_string_equal(rq.headers[0], "X-N: v");
    al_request_dispose(&rq);
    assert_int_equal(rq.nheaders, 0);
}

/* ---- classification ---- */

typedef struct crow {
    const char *name;
    al_transport_t transport;
    long status;
    const char *headers;
    const char *body;
    al_reply_class_t want;
    uint64_t want_retry_after_ms;
} crow_t;

#define H(x) "HTTP/1.1 000 X\r\n" x "Content-Type: application/json\r\n\r\n"

static const crow_t classify_rows[] = {
    {"200 json", AL_XFER_REPLY, 200, H(""), "{\"ok\":true}", AL_REPLY_SENT, 0},
    {"200 not json", AL_XFER_REPLY, 200, H(""), "<html>thanks</html>", AL_REPLY_SENT, 0},
    {"200 empty", AL_XFER_REPLY, 200, "", "", AL_REPLY_SENT, 0},
    {"202", AL_XFER_REPLY, 202, H(""), "", AL_REPLY_SENT, 0},
    {"204", AL_XFER_REPLY, 204, H(""), "", AL_REPLY_SENT, 0},
    {"500", AL_XFER_REPLY, 500, H(""), "{\"error\":\"x\"}", AL_REPLY_RETRY, 0},
    {"502", AL_XFER_REPLY, 502, H(""), "", AL_REPLY_RETRY, 0},
    {"500 with Retry-After", AL_XFER_REPLY, 500, H("Retry-After: 3\r\n"), "", AL_REPLY_RETRY, 3000},
    {"503 Retry-After seconds", AL_XFER_REPLY, 503, H("Retry-After: 120\r\n"), "", AL_REPLY_RETRY,
     120000},
    {"503 Retry-After IMF date", AL_XFER_REPLY, 503,
     H("Retry-After: Thu, 01 Jan 2026 00:00:30 GMT\r\n"), "", AL_REPLY_RETRY, 30000},
    {"503 Retry-After RFC 850 date", AL_XFER_REPLY, 503,
     H("Retry-After: Thursday, 01-Jan-26 00:01:00 GMT\r\n"), "", AL_REPLY_RETRY, 60000},
    {"503 Retry-After asctime date", AL_XFER_REPLY, 503,
     H("Retry-After: Thu Jan  1 00:00:05 2026\r\n"), "", AL_REPLY_RETRY, 5000},
    {"503 Retry-After in the past", AL_XFER_REPLY, 503,
     H("Retry-After: Wed, 31 Dec 2025 23:00:00 GMT\r\n"), "", AL_REPLY_RETRY, 0},
    {"503 Retry-After huge", AL_XFER_REPLY, 503, H("Retry-After: 99999999999999999999\r\n"), "",
     AL_REPLY_RETRY, AL_RETRY_AFTER_MAX_MS},
    {"503 Retry-After garbage", AL_XFER_REPLY, 503, H("Retry-After: soon\r\n"), "", AL_REPLY_RETRY,
     0},
    {"503 Retry-After fraction", AL_XFER_REPLY, 503, H("Retry-After: 1.5\r\n"), "", AL_REPLY_RETRY,
     0},
    {"429 lower-case retry-after", AL_XFER_REPLY, 429, H("retry-after:  7 \r\n"), "",
     AL_REPLY_RETRY, 7000},
    {"429 without Retry-After", AL_XFER_REPLY, 429, H(""), "", AL_REPLY_RETRY, 0},
    {"408", AL_XFER_REPLY, 408, H(""), "", AL_REPLY_RETRY, 0},
    {"425", AL_XFER_REPLY, 425, H(""), "", AL_REPLY_RETRY, 0},
    {"400", AL_XFER_REPLY, 400, H(""), "{\"error\":\"bad\"}", AL_REPLY_PERMANENT, 0},
    {"400 ignores Retry-After", AL_XFER_REPLY, 400, H("Retry-After: 5\r\n"), "", AL_REPLY_PERMANENT,
     0},
    {"413", AL_XFER_REPLY, 413, H(""), "", AL_REPLY_PERMANENT, 0},
    {"422", AL_XFER_REPLY, 422, H(""), "", AL_REPLY_PERMANENT, 0},
    {"404", AL_XFER_REPLY, 404, H(""), "", AL_REPLY_BROKEN, 0},
    {"401", AL_XFER_REPLY, 401, H(""), "", AL_REPLY_BROKEN, 0},
    {"403", AL_XFER_REPLY, 403, H(""), "", AL_REPLY_BROKEN, 0},
    {"410", AL_XFER_REPLY, 410, H(""), "", AL_REPLY_BROKEN, 0},
    {"301 (redirects are not followed)", AL_XFER_REPLY, 301, H("Location: /x\r\n"), "",
     AL_REPLY_BROKEN, 0},
    {"connect refused or timed out before sending", AL_XFER_NOT_SENT, 0, "", "", AL_REPLY_RETRY, 0},
    {"timeout after sending", AL_XFER_TIMEOUT_SENT, 0, "", "", AL_REPLY_AMBIGUOUS, 0},
    {"closed after sending", AL_XFER_CLOSED_SENT, 0, "", "", AL_REPLY_AMBIGUOUS, 0},
    {"local error (bad URL)", AL_XFER_LOCAL, 0, "", "", AL_REPLY_BROKEN, 0},
};

static void classify_table(void **state)
{
    al_channel_ctx_t ctx = ctx_for(&hook_cfg);

    for (size_t i = 0; i < sizeof(classify_rows) / sizeof(classify_rows[0]); i++) {
        const crow_t *c = &classify_rows[i];
        al_reply_t r = {c->transport, c->status, c->headers, c->body, strlen(c->body), false};
        uint64_t ra = 12345;
        al_reply_class_t got = al_channel_classify(&al_channel_webhook, &ctx, &r, &ra);

        if (got != c->want || ra != c->want_retry_after_ms)
            fail_msg("row '%s': got %s / %llu ms, want %s / %llu ms", c->name,
                     al_reply_class_name(got), (unsigned long long)ra, al_reply_class_name(c->want),
                     (unsigned long long)c->want_retry_after_ms);
    }
}

static void reply_classes_map_to_engine_results(void **state)
{
    assert_int_equal(al_reply_class_result(AL_REPLY_SENT), AL_SEND_OK);
    assert_int_equal(al_reply_class_result(AL_REPLY_RETRY), AL_SEND_RETRY);
    assert_int_equal(al_reply_class_result(AL_REPLY_PERMANENT), AL_SEND_PERMANENT);
    assert_int_equal(al_reply_class_result(AL_REPLY_BROKEN), AL_SEND_PERMANENT);
    assert_int_equal(al_reply_class_result(AL_REPLY_AMBIGUOUS), AL_SEND_AMBIGUOUS);
    assert_string_equal(al_reply_class_name(AL_REPLY_BROKEN), "broken");
    assert_null(al_reply_class_name(AL_REPLY_CLASS_COUNT));
}

typedef struct trow {
    int code;
    bool sent;
    al_transport_t want;
} trow_t;

static void curl_outcomes_separate_not_sent_from_ambiguous(void **state)
{
    static const trow_t rows[] = {
        {CURLE_OK, true, AL_XFER_REPLY},
        {CURLE_OPERATION_TIMEDOUT, false, AL_XFER_NOT_SENT}, /* connect timeout */
        {CURLE_OPERATION_TIMEDOUT, true, AL_XFER_TIMEOUT_SENT},
        {CURLE_COULDNT_CONNECT, false, AL_XFER_NOT_SENT},
        {CURLE_COULDNT_RESOLVE_HOST, false, AL_XFER_NOT_SENT},
        {CURLE_SSL_CONNECT_ERROR, false, AL_XFER_NOT_SENT},
        {CURLE_PEER_FAILED_VERIFICATION, true, AL_XFER_NOT_SENT},
        {CURLE_GOT_NOTHING, true, AL_XFER_CLOSED_SENT},
        {CURLE_GOT_NOTHING, false, AL_XFER_NOT_SENT},
        {CURLE_RECV_ERROR, true, AL_XFER_CLOSED_SENT},
        {CURLE_SEND_ERROR, false, AL_XFER_NOT_SENT},
        {CURLE_PARTIAL_FILE, true, AL_XFER_CLOSED_SENT},
        {CURLE_HTTP2_STREAM, true, AL_XFER_CLOSED_SENT},
        {CURLE_URL_MALFORMAT, false, AL_XFER_LOCAL},
        {CURLE_UNSUPPORTED_PROTOCOL, false, AL_XFER_LOCAL},
        {CURLE_OUT_OF_MEMORY, true, AL_XFER_LOCAL},
    };

    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        if (al_curl_transport(rows[i].code, rows[i].sent) != rows[i].want)
            fail_msg("curl code %d (sent %d): got %d, want %d", rows[i].code, rows[i].sent,
                     al_curl_transport(rows[i].code, rows[i].sent), rows[i].want);
}

static void reply_header_lookup(void **state)
{
    al_reply_t r = {.headers = "HTTP/1.1 503 Busy\r\nX-A: 1\r\nRetry-After:\t42 \r\nx-a: 2\r\n"};
    char buf[8];

    assert_int_equal(al_reply_header(&r, "retry-after", buf, sizeof(buf)), 2);
    assert_string_equal(buf, "42");
    assert_int_equal(al_reply_header(&r, "X-A", buf, sizeof(buf)), 1);
    assert_string_equal(buf, "1");
    assert_int_equal(al_reply_header(&r, "Retry", buf, sizeof(buf)), -1);
    assert_int_equal(al_reply_header(&r, "HTTP/1.1 503 Busy", buf, sizeof(buf)), -1);
    assert_int_equal(al_reply_header(&r, "X-A", buf, 1), -1); /* does not fit */
    r.headers = "";
    assert_int_equal(al_reply_header(&r, "X-A", buf, sizeof(buf)), -1);
}

static void reply_json_only_when_complete(void **state)
{
    al_reply_t r = {.body = "{\"ok\":false,\"error\":\"invalid_token\"}"};
    json_t *j;

    r.body_len = strlen(r.body);
    j = al_reply_json(&r);
    assert_non_null(j);
    assert_false(json_is_true(json_object_get(j, "ok")));
    json_decref(j);
    r.body_truncated = true;
    assert_null(al_reply_json(&r));
    r.body_truncated = false;
    r.body = "<html>";
    r.body_len = 6;
    assert_null(al_reply_json(&r));
}

/* ---- console ---- */

static char *read_all(int fd)
{
    static char buf[16384];
    ssize_t n;

    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    n = read(fd, buf, sizeof(buf) - 1);
    assert_true(n >= 0);
    buf[n] = '\0';
    return buf;
}

static void console_writes_one_json_line_per_alert(void **state)
{
    char path[] = "/tmp/bw_test_console.XXXXXX";
    int fd = mkstemp(path);
    al_delivery_t d = delivery(PAYLOAD(ALERT("1", "first") "," ALERT("2", "second")),
                               AL_NOTIFY_ESCALATED, GW_TIER_P0);
    al_channel_ctx_t ctx = ctx_for(&log_cfg);
    char err[64] = "";
    al_message_t m;
    char *text, *nl;
    json_t *line;

    assert_true(fd >= 0);
    unlink(path);
    ctx.console_fd = fd;
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_CONSOLE), &al_channel_console);
    assert_int_equal(al_message_parse(&m, &d), 0);
    assert_int_equal(al_channel_console.deliver(&ctx, &m, err, sizeof(err)), AL_REPLY_SENT);
    text = read_all(fd);
    nl = strchr(text, '\n');
    assert_non_null(nl);
    *nl = '\0';
    line = json_loads(text, 0, NULL);
    assert_non_null(line);
    assert_string_equal(json_string_value(json_object_get(line, "ts")), "2026-01-01T00:00:00.000Z");
    assert_string_equal(json_string_value(json_object_get(line, "level")), "error"); /* P0 */
    assert_string_equal(json_string_value(json_object_get(line, "msg")), "alert escalated");
    assert_string_equal(json_string_value(json_object_get(line, "kind")), "escalated");
    assert_string_equal(json_string_value(json_object_get(line, "channel")), "hook");
    assert_string_equal(json_string_value(json_object_get(line, "alert_id")), "1");
    assert_string_equal(json_string_value(json_object_get(line, "delivery_id")), DID);
    assert_string_equal(json_string_value(json_object_get(line, "summary")), "first");
    json_decref(line);
    line = json_loads(nl + 1, JSON_DISABLE_EOF_CHECK, NULL);
    assert_non_null(line);
    assert_string_equal(json_string_value(json_object_get(line, "alert_id")), "2");
    json_decref(line);
    assert_int_equal(strlen(strchr(nl + 1, '\n')), 1); /* exactly two lines */
    al_message_dispose(&m);
    close(fd);
}

static void console_resolved_is_info_and_always_sent(void **state)
{
    al_delivery_t d = delivery(PAYLOAD(ALERT("1", "x")), AL_NOTIFY_RESOLVED, GW_TIER_P2);
    al_channel_ctx_t ctx = ctx_for(&log_cfg);
    char path[] = "/tmp/bw_test_console.XXXXXX";
    int fd = mkstemp(path);
    char err[64] = "";
    al_message_t m;
    json_t *line;

    assert_true(fd >= 0);
    unlink(path);
    ctx.console_fd = fd;
    assert_int_equal(al_message_parse(&m, &d), 0);
    assert_int_equal(al_channel_console.deliver(&ctx, &m, err, sizeof(err)), AL_REPLY_SENT);
    line = json_loads(read_all(fd), JSON_DISABLE_EOF_CHECK, NULL);
    assert_string_equal(json_string_value(json_object_get(line, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(line, "msg")), "alert resolved");
    json_decref(line);
    close(fd);
    ctx.console_fd = fd; /* closed: the write fails, the notification still counts as sent */
    assert_int_equal(al_channel_console.deliver(&ctx, &m, err, sizeof(err)), AL_REPLY_SENT);
    al_message_dispose(&m);
}

/* ---- registry ---- */

static void registry_by_type_and_name(void **state)
{
    gw_channel_config_t chans[2] = {hook_cfg, log_cfg};
    gw_alerts_config_t cfg = {.channels = chans, .nchannels = 2};

    assert_ptr_equal(al_channel_ops(GW_CHANNEL_WEBHOOK), &al_channel_webhook);
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_CONSOLE), &al_channel_console);
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_SLACK), &al_channel_slack);
    assert_null(al_channel_ops(GW_CHANNEL_TYPE_COUNT));
    assert_string_equal(al_channel_type_name(GW_CHANNEL_DINGTALK), "dingtalk");
    assert_string_equal(al_channel_type_name(GW_CHANNEL_TYPE_COUNT), "unknown");
    assert_ptr_equal(al_channel_find(&cfg, "log"), &chans[1]);
    assert_null(al_channel_find(&cfg, "nope"));
    assert_null(al_channel_find(NULL, "log"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(webhook_body_is_spec_section_5_exactly),
        cmocka_unit_test(webhook_group_is_one_request_per_alert_with_distinct_keys),
        cmocka_unit_test(webhook_fills_source_and_labels_when_the_payload_lacks_them),
        cmocka_unit_test(webhook_resolved_notification_keeps_the_alert_status),
        cmocka_unit_test(webhook_refuses_what_it_cannot_build),
        cmocka_unit_test(message_parse_refuses_other_shapes),
        cmocka_unit_test(request_header_refuses_injection_and_bounds_the_list),
        cmocka_unit_test(classify_table),
        cmocka_unit_test(reply_classes_map_to_engine_results),
        cmocka_unit_test(curl_outcomes_separate_not_sent_from_ambiguous),
        cmocka_unit_test(reply_header_lookup),
        cmocka_unit_test(reply_json_only_when_complete),
        cmocka_unit_test(console_writes_one_json_line_per_alert),
        cmocka_unit_test(console_resolved_is_info_and_always_sent),
        cmocka_unit_test(registry_by_type_and_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
