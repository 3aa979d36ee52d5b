/* test_alerts_channel_pagerduty.c - alerts/channel_pagerduty.c: PagerDuty Events API v2.
 *
 * Event shape per action: trigger for firing (payload summary/source/severity/timestamp/class/
 * custom_details), resolve for a resolved notification, acknowledge for an acknowledged alert,
 * all with dedup_key = the alert's dedup key (hashed stably when over 255 bytes); one event per
 * alert of a group with distinct Idempotency-Keys; the reply table (202 + status "success").
 */
#include "test_alerts_channel_fixture.h"

#define URL "https://events.pagerduty.com/v2/enqueue"
#define RKEY "R0UT1NGK3Y0123456789abcdef012345"

static gw_channel_config_t cfg = {
    .name = "pager", .type = GW_CHANNEL_PAGERDUTY, .url = URL, .routing_key = RKEY};

static void firing_is_a_trigger_event_keyed_by_the_dedup_key(void **state)
{
    fx_t f;
    json_t *j;

    fx_install_ack_secret();
    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, true);
    assert_int_equal(fx_parts(&f, &al_channel_pagerduty), 1);
    assert_int_equal(fx_build(&f, &al_channel_pagerduty, 0), 0);
    assert_string_equal(f.req.url, URL);
    assert_string_equal(f.req.idempotency_key, ""); /* one alert: the delivery id */
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "routing_key"), RKEY);
    assert_string_equal(fx_str(j, "event_action"), "trigger");
    assert_string_equal(fx_str(j, "dedup_key"), "breaker_open{upstream=\"users\"}");
    assert_string_equal(fx_str(j, "payload.summary"), FX_SUMMARY);
    assert_string_equal(fx_str(j, "payload.source"), "breakwater@host");
    assert_string_equal(fx_str(j, "payload.severity"), "critical");
    assert_string_equal(fx_str(j, "payload.timestamp"), "2026-01-01T00:00:00Z");
    assert_string_equal(fx_str(j, "payload.class"), "breaker_open");
    assert_string_equal(fx_str(j, "payload.custom_details.upstream"), "users");
    assert_string_equal(fx_str(j, "payload.custom_details.alert_id"), "42");
    assert_int_equal(json_integer_value(fx_at(j, "payload.custom_details.count")), 3);
    assert_string_equal(fx_str(j, "client"), "Breakwater");
    assert_true(fx_ack_link_ok(fx_str(j, "links.0.href"), 42));
    fx_done(&f, j);
}

static void resolved_is_a_resolve_event_with_the_same_dedup_key(void **state)
{
    fx_t f;
    json_t *j;

    j = fx_build_json(&f, &al_channel_pagerduty, &cfg, FX_RESOLVED, GW_TIER_P0, true);
    assert_string_equal(fx_str(j, "event_action"), "resolve");
    assert_string_equal(fx_str(j, "dedup_key"), "breaker_open{upstream=\"users\"}");
    assert_string_equal(fx_str(j, "routing_key"), RKEY);
    assert_null(fx_at(j, "payload")); /* resolve takes only the key */
    assert_int_equal(json_object_size(j), 3);
    fx_done(&f, j);
}

static void acknowledged_is_an_acknowledge_event_with_the_same_dedup_key(void **state)
{
    fx_t f;
    json_t *j;

    j = fx_build_json(&f, &al_channel_pagerduty, &cfg, FX_ACKED, GW_TIER_P0, true);
    assert_string_equal(fx_str(j, "event_action"), "acknowledge");
    assert_string_equal(fx_str(j, "dedup_key"), "breaker_open{upstream=\"users\"}");
    assert_int_equal(json_object_size(j), 3);
    fx_done(&f, j);
}

static void group_is_one_event_per_alert_with_distinct_keys(void **state)
{
    fx_t f;
    json_t *j;

    fx_init(&f, &cfg, FX_GROUP, GW_TIER_P1, false);
    assert_int_equal(fx_parts(&f, &al_channel_pagerduty), 2);
    assert_int_equal(fx_build(&f, &al_channel_pagerduty, 0), 0);
    assert_string_equal(f.req.idempotency_key, DID ":42");
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "dedup_key"), "breaker_open{upstream=\"users\"}");
    assert_null(fx_at(j, "links")); /* no external_url: no link */
    json_decref(j);
    assert_int_equal(fx_build(&f, &al_channel_pagerduty, 1), 0);
    assert_string_equal(f.req.idempotency_key, DID ":43");
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "dedup_key"),
                        "host_down{host=\"10.0.0.1:80\",upstream=\"users\"}");
    json_decref(j);
    assert_int_equal(fx_build(&f, &al_channel_pagerduty, 2), AL_EBADINPUT);
    fx_dispose(&f);
}

static void severity_follows_the_alert_tier(void **state)
{
    static const char *const tiers[] = {"P0", "P1", "P2"};
    static const char *const want[] = {"critical", "error", "warning"};

    for (size_t i = 0; i < 3; i++) {
        char *payload;
        fx_t f;
        json_t *j;
        assert_true(asprintf(&payload,
                             FX_PAYLOAD("firing", "P1",
                                        "{\"alert_id\":\"1\",\"dedup_key\":\"k\",\"tier\":\"%s\","
                                        "\"summary\":\"s\"}"),
                             tiers[i]) > 0);
        j = fx_build_json(&f, &al_channel_pagerduty, &cfg, payload, GW_TIER_P1, false);
        assert_string_equal(fx_str(j, "payload.severity"), want[i]);
        fx_done(&f, j);
        free(payload);
    }
}

/* PagerDuty takes at most 255 characters: a longer key is replaced by its SHA-256, the same for
 * trigger and resolve. python3 -c 'import hashlib; print(hashlib.sha256(b"x"*300).hexdigest())' */
static void long_dedup_key_is_hashed_the_same_way_for_every_action(void **state)
{
    static const char *const kinds[] = {"firing", "resolved"};
    char key[301];

    memset(key, 'x', 300);
    key[300] = '\0';
    for (size_t i = 0; i < 2; i++) {
        char *payload;
        fx_t f;
        json_t *j;
        assert_true(asprintf(&payload,
                             "{\"version\":\"1\",\"delivery_id\":\"" DID "\",\"kind\":\"%s\","
                             "\"alerts\":[{\"alert_id\":\"1\",\"dedup_key\":\"%s\","
                             "\"status\":\"%s\",\"summary\":\"s\"}]}",
                             kinds[i], key, i == 0 ? "firing" : "resolved") > 0);
        j = fx_build_json(&f, &al_channel_pagerduty, &cfg, payload, GW_TIER_P1, false);
        assert_string_equal(
            fx_str(j, "dedup_key"),
            "sha256:0d4e2ca9e9cbced7a7a5380eb29e1a3783b9b6d0db72de36a1051038e1c1fbc7");
        fx_done(&f, j);
        free(payload);
    }
}

static void long_summary_is_cut_to_1024_bytes(void **state)
{
    char summary[2001], *payload;
    fx_t f;
    json_t *j;

    memset(summary, 's', 2000);
    summary[2000] = '\0';
    assert_true(asprintf(&payload,
                         FX_PAYLOAD("firing", "P1",
                                    "{\"alert_id\":\"1\",\"dedup_key\":\"k\",\"summary\":\"%s\"}"),
                         summary) > 0);
    j = fx_build_json(&f, &al_channel_pagerduty, &cfg, payload, GW_TIER_P1, false);
    assert_int_equal(strlen(fx_str(j, "payload.summary")), 1024);
    fx_done(&f, j);
    free(payload);
}

static void default_url_when_none_is_configured(void **state)
{
    gw_channel_config_t c = cfg;

    fx_default_url(&al_channel_pagerduty, &cfg, "https://events.pagerduty.com/v2/enqueue");
    c.routing_key = NULL;
    assert_int_equal(fx_build_result(&al_channel_pagerduty, &c), AL_EBADINPUT);
}

static void replies(void **state)
{
    static const fx_reply_case_t rows[] = {
        {"accepted", 202, NULL,
         "{\"status\":\"success\",\"message\":\"Event processed\",\"dedup_key\":\"k\"}",
         AL_REPLY_SENT, 0},
        {"202 without status", 202, NULL, "{}", AL_REPLY_RETRY, 0},
        {"202 not JSON", 202, NULL, "accepted", AL_REPLY_RETRY, 0},
        {"200 success", 200, NULL, "{\"status\":\"success\"}", AL_REPLY_RETRY, 0},
        {"invalid event", 400, NULL,
         "{\"status\":\"invalid event\",\"message\":\"Event object is invalid\","
         "\"errors\":[\"'payload.summary' is missing or blank\"]}",
         AL_REPLY_PERMANENT, 0},
        {"throttled", 429, NULL, "", AL_REPLY_RETRY, 0},
        {"throttled with hint", 429, "Retry-After: 9\r\n", "", AL_REPLY_RETRY, 9000},
        {"server", 500, NULL, "", AL_REPLY_RETRY, 0},
        {"unavailable", 503, NULL, "", AL_REPLY_RETRY, 0},
        {"forbidden", 403, NULL, "", AL_REPLY_BROKEN, 0},
        {"wrong path", 404, NULL, "", AL_REPLY_BROKEN, 0},
    };

    fx_reply_table(&al_channel_pagerduty, &cfg, rows, sizeof(rows) / sizeof(rows[0]));
    fx_truncated_is_not_sent(&al_channel_pagerduty, &cfg, 202, "{\"status\":\"success\"}");
}

static void registered_for_its_type(void **state)
{
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_PAGERDUTY), &al_channel_pagerduty);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(firing_is_a_trigger_event_keyed_by_the_dedup_key),
        cmocka_unit_test(resolved_is_a_resolve_event_with_the_same_dedup_key),
        cmocka_unit_test(acknowledged_is_an_acknowledge_event_with_the_same_dedup_key),
        cmocka_unit_test(group_is_one_event_per_alert_with_distinct_keys),
        cmocka_unit_test(severity_follows_the_alert_tier),
        cmocka_unit_test(long_dedup_key_is_hashed_the_same_way_for_every_action),
        cmocka_unit_test(long_summary_is_cut_to_1024_bytes),
        cmocka_unit_test(default_url_when_none_is_configured),
        cmocka_unit_test(replies),
        cmocka_unit_test(registered_for_its_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
