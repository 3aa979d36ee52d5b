/* test_alerts_channel_alertmanager.c - alerts/channel_alertmanager.c: Alertmanager webhook v4.
 *
 * The body for a firing, a resolved, an acknowledged and a grouped notification: version "4",
 * group status, alerts[] with labels (alertname/tier/severity added, the alert's own kept),
 * annotations, startsAt, endsAt (Go's zero time while firing), fingerprint (known answer
 * computed with Python's hashlib), common labels; a round trip through Breakwater's own
 * external-alert parser keeps the tier; any 2xx is success.
 */
#include "test_alerts_channel_fixture.h"

#include "alerts_int.h"

#define URL "http://127.0.0.1:9093/hook"
/* python3 -c 'import hashlib; print(hashlib.sha256(
 *   b"breaker_open{upstream=\"users\"}").hexdigest()[:16])' */
#define FINGERPRINT "7f6f93d656c21f5b"

static gw_channel_config_t cfg = {.name = "am", .type = GW_CHANNEL_ALERTMANAGER, .url = URL};

static void firing_is_a_version_4_body(void **state)
{
    fx_t f;
    json_t *j, *a;

    fx_install_ack_secret();
    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, true);
    assert_int_equal(fx_parts(&f, &al_channel_alertmanager), 1);
    assert_int_equal(fx_build(&f, &al_channel_alertmanager, 0), 0);
    assert_string_equal(f.req.url, URL);
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "version"), "4");
    assert_string_equal(fx_str(j, "status"), "firing");
    assert_string_equal(fx_str(j, "receiver"), "am");
    assert_string_equal(fx_str(j, "groupKey"), "breakwater:P0:breaker_open{upstream=\"users\"}");
    assert_int_equal(json_integer_value(fx_at(j, "truncatedAlerts")), 0);
    assert_string_equal(fx_str(j, "externalURL"), FX_EXTERNAL_URL);
    assert_string_equal(fx_str(j, "groupLabels.alertname"), "breaker_open");
    assert_string_equal(fx_str(j, "commonLabels.upstream"), "users");
    assert_string_equal(fx_str(j, "commonAnnotations.summary"), FX_SUMMARY);
    assert_int_equal(json_array_size(fx_at(j, "alerts")), 1);
    a = fx_at(j, "alerts.0");
    assert_string_equal(fx_str(a, "status"), "firing");
    assert_string_equal(fx_str(a, "labels.alertname"), "breaker_open");
    assert_string_equal(fx_str(a, "labels.upstream"), "users");
    assert_string_equal(fx_str(a, "labels.tier"), "P0");
    assert_string_equal(fx_str(a, "labels.severity"), "critical");
    assert_string_equal(fx_str(a, "annotations.summary"), FX_SUMMARY);
    assert_string_equal(fx_str(a, "annotations.dedup_key"), "breaker_open{upstream=\"users\"}");
    assert_string_equal(fx_str(a, "annotations.breakwater_alert_id"), "42");
    assert_true(fx_ack_link_ok(fx_str(a, "annotations.ack_url"), 42));
    assert_string_equal(fx_str(a, "startsAt"), "2026-01-01T00:00:00Z");
    assert_string_equal(fx_str(a, "endsAt"), "0001-01-01T00:00:00Z");
    assert_string_equal(fx_str(a, "fingerprint"), FINGERPRINT);
    fx_done(&f, j);
}

static void resolved_has_an_end_time_and_keeps_the_fingerprint(void **state)
{
    fx_t f;
    json_t *j;

    fx_install_ack_secret();
    j = fx_build_json(&f, &al_channel_alertmanager, &cfg, FX_RESOLVED, GW_TIER_P0, true);
    assert_string_equal(fx_str(j, "status"), "resolved");
    assert_string_equal(fx_str(j, "alerts.0.status"), "resolved");
    assert_string_equal(fx_str(j, "alerts.0.endsAt"), "2026-01-01T00:00:00Z"); /* now (T0) */
    assert_string_equal(fx_str(j, "alerts.0.fingerprint"), FINGERPRINT);
    assert_null(fx_at(j, "alerts.0.annotations.ack_url"));
    fx_done(&f, j);
}

static void acknowledged_is_still_firing_for_alertmanager(void **state)
{
    fx_t f;
    json_t *j;

    j = fx_build_json(&f, &al_channel_alertmanager, &cfg, FX_ACKED, GW_TIER_P0, false);
    assert_string_equal(fx_str(j, "status"), "firing"); /* Alertmanager has no ack state */
    assert_string_equal(fx_str(j, "alerts.0.endsAt"), "0001-01-01T00:00:00Z");
    fx_done(&f, j);
}

static void group_has_common_labels_and_every_alert(void **state)
{
    fx_t f;
    json_t *j;

    j = fx_build_json(&f, &al_channel_alertmanager, &cfg, FX_GROUP, GW_TIER_P1, false);
    assert_int_equal(json_array_size(fx_at(j, "alerts")), 2);
    assert_string_equal(fx_str(j, "groupKey"), "breakwater:P1:group:" DID);
    assert_string_equal(fx_str(j, "commonLabels.upstream"), "users");
    assert_null(fx_at(j, "commonLabels.alertname")); /* differs between the two */
    assert_null(fx_at(j, "commonLabels.host"));
    assert_int_equal(json_object_size(fx_at(j, "groupLabels")), 0);
    assert_int_equal(json_object_size(fx_at(j, "commonAnnotations")), 0);
    assert_string_equal(fx_str(j, "alerts.1.labels.host"), "10.0.0.1:80");
    assert_string_equal(fx_str(j, "alerts.1.labels.alertname"), "host_down");
    fx_done(&f, j);
}

static void an_alerts_own_labels_win_and_severity_follows_the_tier(void **state)
{
    static const char *const tiers[] = {"P0", "P1", "P2"};
    static const char *const want[] = {"critical", "warning", "info"};

    for (size_t i = 0; i < 3; i++) {
        char *payload;
        fx_t f;
        json_t *j;
        assert_true(asprintf(&payload,
                             FX_PAYLOAD("firing", "P1",
                                        "{\"alert_id\":\"1\",\"dedup_key\":\"k\",\"tier\":\"%s\","
                                        "\"event\":\"external\",\"summary\":\"s\",\"labels\":{"
                                        "\"alertname\":\"DiskFull\",\"team\":\"db\"}}"),
                             tiers[i]) > 0);
        j = fx_build_json(&f, &al_channel_alertmanager, &cfg, payload, GW_TIER_P1, false);
        assert_string_equal(fx_str(j, "alerts.0.labels.alertname"), "DiskFull");
        assert_string_equal(fx_str(j, "alerts.0.labels.team"), "db");
        assert_string_equal(fx_str(j, "alerts.0.labels.severity"), want[i]);
        assert_string_equal(fx_str(j, "alerts.0.labels.tier"), tiers[i]);
        fx_done(&f, j);
        free(payload);
    }
}

/* Breakwater -> Breakwater: the body is accepted by POST /api/v1/alerts's own parser, which
 * gives back the event (alertname), the tier, the summary and the resolution. */
static void round_trip_through_breakwaters_external_parser(void **state)
{
    static const char *const payloads[] = {FX_FIRING, FX_RESOLVED, FX_GROUP};
    gw_alerts_config_t acfg = {0};
    al_ext_alert_t out[4];
    char err[256];

    for (int t = 0; t < GW_TIER_COUNT; t++)
        acfg.tiers[t].defined = true;
    for (size_t i = 0; i < 3; i++) {
        size_t n = 0;
        fx_t f;
        fx_init(&f, &cfg, payloads[i], GW_TIER_P1, false);
        assert_int_equal(fx_build(&f, &al_channel_alertmanager, 0), 0);
        if (al_external_parse(&acfg, f.req.body, f.req.body_len, out, &n, err, sizeof(err)) != 0)
            fail_msg("refused: %s", err);
        assert_int_equal(n, f.m.nalerts);
        assert_string_equal(out[0].event, "breaker_open");
        assert_int_equal(out[0].tier, GW_TIER_P0); /* the alert's tier, from the tier label */
        assert_string_equal(out[0].summary, FX_SUMMARY);
        assert_int_equal(out[0].resolved, i == 1);
        for (size_t k = 0; k < n; k++)
            al_ext_dispose(&out[k]);
        fx_dispose(&f);
    }
}

static void replies(void **state)
{
    static const fx_reply_case_t rows[] = {
        {"200", 200, NULL, "", AL_REPLY_SENT, 0},
        {"204", 204, NULL, "", AL_REPLY_SENT, 0},
        {"202 any body", 202, NULL, "{\"status\":\"whatever\"}", AL_REPLY_SENT, 0},
        {"400", 400, NULL, "bad", AL_REPLY_PERMANENT, 0},
        {"401", 401, NULL, "", AL_REPLY_BROKEN, 0},
        {"429", 429, "Retry-After: 4\r\n", "", AL_REPLY_RETRY, 4000},
        {"503", 503, NULL, "", AL_REPLY_RETRY, 0},
    };

    fx_reply_table(&al_channel_alertmanager, &cfg, rows, sizeof(rows) / sizeof(rows[0]));
}

static void registered_for_its_type(void **state)
{
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_ALERTMANAGER), &al_channel_alertmanager);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(firing_is_a_version_4_body),
        cmocka_unit_test(resolved_has_an_end_time_and_keeps_the_fingerprint),
        cmocka_unit_test(acknowledged_is_still_firing_for_alertmanager),
        cmocka_unit_test(group_has_common_labels_and_every_alert),
        cmocka_unit_test(an_alerts_own_labels_win_and_severity_follows_the_tier),
        cmocka_unit_test(round_trip_through_breakwaters_external_parser),
        cmocka_unit_test(replies),
        cmocka_unit_test(registered_for_its_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
