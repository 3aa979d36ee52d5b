/* test_alerts_channel_opsgenie.c - alerts/channel_opsgenie.c: the Opsgenie Alert API v2.
 *
 * create (POST /v2/alerts, alias = the dedup key) for firing, close by alias for resolved,
 * acknowledge by alias for an acknowledged alert, with "Authorization: GenieKey K"; priority by
 * tier; field limits; one request per alert of a group; the reply table (202 queued).
 */
#include "test_alerts_channel_fixture.h"

#define BASE "https://api.eu.opsgenie.com"
#define GKEY "0p5g3n1e-k3y"
#define ALIAS_IN_PATH "breaker_open%7Bupstream%3D%22users%22%7D"

static gw_channel_config_t cfg = {
    .name = "genie", .type = GW_CHANNEL_OPSGENIE, .url = BASE "/", .api_key = GKEY};

static void firing_creates_an_alert_aliased_by_the_dedup_key(void **state)
{
    fx_t f;
    json_t *j;

    fx_install_ack_secret();
    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, true);
    assert_int_equal(fx_parts(&f, &al_channel_opsgenie), 1);
    assert_int_equal(fx_build(&f, &al_channel_opsgenie, 0), 0);
    assert_string_equal(f.req.url, BASE "/v2/alerts");
    assert_string_equal(fx_header(&f.req, "Authorization"), "GenieKey " GKEY);
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "alias"), "breaker_open{upstream=\"users\"}");
    assert_string_equal(fx_str(j, "message"), FX_SUMMARY);
    assert_string_equal(fx_str(j, "priority"), "P1"); /* tier P0 */
    assert_string_equal(fx_str(j, "source"), "breakwater@host");
    assert_string_equal(fx_str(j, "entity"), "breaker_open");
    assert_string_equal(fx_str(j, "tags.0"), "breakwater");
    assert_string_equal(fx_str(j, "tags.1"), "breaker_open");
    assert_string_equal(fx_str(j, "tags.2"), "P0");
    assert_string_equal(fx_str(j, "details.upstream"), "users");
    assert_string_equal(fx_str(j, "details.breakwater_alert_id"), "42");
    assert_string_equal(fx_str(j, "details.count"), "3"); /* details are strings */
    assert_non_null(
        strstr(fx_str(j, "description"), "Acknowledge in Breakwater: " FX_EXTERNAL_URL "/ack/"));
    assert_null(strstr(f.req.body, GKEY)); /* the key is in the header only */
    fx_done(&f, j);
}

static void resolved_closes_by_alias(void **state)
{
    fx_t f;
    json_t *j;

    fx_init(&f, &cfg, FX_RESOLVED, GW_TIER_P0, false);
    assert_int_equal(fx_build(&f, &al_channel_opsgenie, 0), 0);
    assert_string_equal(f.req.url, BASE "/v2/alerts/" ALIAS_IN_PATH "/close?identifierType=alias");
    assert_string_equal(fx_header(&f.req, "Authorization"), "GenieKey " GKEY);
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "source"), "breakwater@host");
    assert_string_equal(fx_str(j, "user"), "Breakwater");
    assert_string_equal(fx_str(j, "note"), "Resolved in Breakwater");
    fx_done(&f, j);
}

static void acknowledged_acknowledges_by_alias(void **state)
{
    fx_t f;
    json_t *j;

    fx_init(&f, &cfg, FX_ACKED, GW_TIER_P0, false);
    assert_int_equal(fx_build(&f, &al_channel_opsgenie, 0), 0);
    assert_string_equal(f.req.url,
                        BASE "/v2/alerts/" ALIAS_IN_PATH "/acknowledge?identifierType=alias");
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "note"), "Acknowledged in Breakwater");
    fx_done(&f, j);
}

static void group_is_one_request_per_alert(void **state)
{
    fx_t f;
    json_t *j;

    fx_init(&f, &cfg, FX_GROUP, GW_TIER_P2, false);
    assert_int_equal(fx_parts(&f, &al_channel_opsgenie), 2);
    assert_int_equal(fx_build(&f, &al_channel_opsgenie, 1), 0);
    assert_string_equal(f.req.idempotency_key, DID ":43");
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "alias"), "host_down{host=\"10.0.0.1:80\",upstream=\"users\"}");
    assert_string_equal(fx_str(j, "details.host"), "10.0.0.1:80");
    fx_done(&f, j);
}

static void priority_follows_the_tier_and_message_is_cut(void **state)
{
    static const char *const tiers[] = {"P0", "P1", "P2"};
    static const char *const want[] = {"P1", "P2", "P3"};
    char summary[301];

    memset(summary, 'm', 300);
    summary[300] = '\0';
    for (size_t i = 0; i < 3; i++) {
        char *payload;
        fx_t f;
        json_t *j;
        assert_true(asprintf(&payload,
                             FX_PAYLOAD("firing", "P1",
                                        "{\"alert_id\":\"1\",\"dedup_key\":\"k\",\"tier\":\"%s\","
                                        "\"summary\":\"%s\"}"),
                             tiers[i], summary) > 0);
        j = fx_build_json(&f, &al_channel_opsgenie, &cfg, payload, GW_TIER_P1, false);
        assert_string_equal(fx_str(j, "priority"), want[i]);
        assert_int_equal(strlen(fx_str(j, "message")), 130);
        assert_non_null(strstr(fx_str(j, "description"), summary)); /* whole in description */
        fx_done(&f, j);
        free(payload);
    }
}

static void default_base_and_bad_keys(void **state)
{
    gw_channel_config_t c = cfg;

    fx_default_url(&al_channel_opsgenie, &cfg, "https://api.opsgenie.com/v2/alerts");
    c.api_key = "k\r\nX-Injected: 1"; /* a header can never be split */
    assert_int_equal(fx_build_result(&al_channel_opsgenie, &c), AL_EBADINPUT);
    c.api_key = NULL;
    assert_int_equal(fx_build_result(&al_channel_opsgenie, &c), AL_EBADINPUT);
}

static void replies(void **state)
{
    static const fx_reply_case_t rows[] = {
        {"queued", 202, NULL,
         "{\"result\":\"Request will be processed\",\"took\":0.302,\"requestId\":\"43a2\"}",
         AL_REPLY_SENT, 0},
        {"200 is not what Opsgenie answers", 200, NULL, "{}", AL_REPLY_RETRY, 0},
        {"invalid", 422, NULL, "{\"message\":\"Request body is not processable.\",\"took\":0.1}",
         AL_REPLY_PERMANENT, 0},
        {"bad request", 400, NULL, "{\"message\":\"Invalid\"}", AL_REPLY_PERMANENT, 0},
        {"key wrong", 401, NULL, "{\"message\":\"Could not authenticate\"}", AL_REPLY_BROKEN, 0},
        {"no rights", 403, NULL, "", AL_REPLY_BROKEN, 0},
        {"rate limited", 429, NULL, "", AL_REPLY_RETRY, 0},
        {"server", 500, NULL, "", AL_REPLY_RETRY, 0},
    };

    fx_reply_table(&al_channel_opsgenie, &cfg, rows, sizeof(rows) / sizeof(rows[0]));
}

static void registered_for_its_type(void **state)
{
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_OPSGENIE), &al_channel_opsgenie);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(firing_creates_an_alert_aliased_by_the_dedup_key),
        cmocka_unit_test(resolved_closes_by_alias),
        cmocka_unit_test(acknowledged_acknowledges_by_alias),
        cmocka_unit_test(group_is_one_request_per_alert),
        cmocka_unit_test(priority_follows_the_tier_and_message_is_cut),
        cmocka_unit_test(default_base_and_bad_keys),
        cmocka_unit_test(replies),
        cmocka_unit_test(registered_for_its_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
