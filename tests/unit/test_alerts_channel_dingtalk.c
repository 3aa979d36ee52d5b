/* test_alerts_channel_dingtalk.c - alerts/channel_dingtalk.c: the DingTalk custom robot.
 *
 * Payload shape for a firing, a resolved, an acknowledged and a grouped notification; the URL
 * signature against a known answer computed independently with Python's hmac (DingTalk's own
 * documented algorithm: urlencode(base64(HMAC-SHA256(key=secret, msg=ts+"\n"+secret))));
 * mentions; the size bound; and the reply table (errcode under HTTP 200).
 */
#include "test_alerts_channel_fixture.h"

#define URL "https://oapi.dingtalk.com/robot/send?access_token=ding-t0ken"
/* python3 -c 'import hmac,hashlib,base64,urllib.parse as u; s="SEC00d1ngtalk-test-secret";
 *   print(u.quote_plus(base64.b64encode(hmac.new(s.encode(),
 *   ("1767225600000\n"+s).encode(),hashlib.sha256).digest())))' */
#define SECRET "SEC00d1ngtalk-test-secret"
#define SIGN "BWYE6xgfHPTzN7i9%2B7HkfDC3TMYRVJrcqqv3IVt%2F1jQ%3D"

static char *mobiles[] = {"13800000000", "13900000000"};
static gw_channel_config_t plain_cfg = {.name = "ding", .type = GW_CHANNEL_DINGTALK, .url = URL};
static gw_channel_config_t signed_cfg = {
    .name = "ding", .type = GW_CHANNEL_DINGTALK, .url = URL, .secret = SECRET};
static gw_channel_config_t mention_cfg = {
    .name = "ding", .type = GW_CHANNEL_DINGTALK, .url = URL, .to = mobiles, .nto = 2};

static void firing_is_a_markdown_message_with_the_alert_facts(void **state)
{
    fx_t f;
    json_t *j;
    const char *text;

    fx_init(&f, &plain_cfg, FX_FIRING, GW_TIER_P0, false);
    assert_int_equal(fx_parts(&f, &al_channel_dingtalk), 1);
    assert_int_equal(fx_build(&f, &al_channel_dingtalk, 0), 0);
    assert_string_equal(f.req.url, URL); /* no secret: no signature */
    assert_string_equal(f.req.method, "POST");
    assert_string_equal(f.req.content_type, "application/json");
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "msgtype"), "markdown");
    assert_string_equal(fx_str(j, "markdown.title"), "[P0] FIRING: " FX_SUMMARY);
    text = fx_str(j, "markdown.text");
    assert_non_null(strstr(text, "### [P0] FIRING: " FX_SUMMARY));
    assert_non_null(strstr(text, "**" FX_SUMMARY "**"));
    assert_non_null(strstr(text, "`breaker_open{upstream=\"users\"}` upstream=users"));
    assert_non_null(
        strstr(text, "since 2026-01-01T00:00:00Z" AL_MIDDOT "count 3" AL_MIDDOT "escalation 1"));
    assert_non_null(strstr(text, "Breakwater" AL_MIDDOT "breakwater@host")); /* keyword */
    assert_null(strstr(text, "Acknowledge"));                                /* no external_url */
    assert_int_equal(json_array_size(fx_at(j, "at.atMobiles")), 0);
    assert_true(json_is_false(fx_at(j, "at.isAtAll")));
    fx_done(&f, j);
}

static void firing_carries_a_verifiable_ack_link(void **state)
{
    fx_t f;
    json_t *j;
    const char *text, *link;
    char buf[512];

    fx_install_ack_secret();
    j = fx_build_json(&f, &al_channel_dingtalk, &plain_cfg, FX_FIRING, GW_TIER_P0, true);
    text = fx_str(j, "markdown.text");
    link = strstr(text, "[Acknowledge](");
    assert_non_null(link);
    snprintf(buf, sizeof(buf), "%s", link + strlen("[Acknowledge]("));
    *strchr(buf, ')') = '\0';
    assert_true(fx_ack_link_ok(buf, 42));
    fx_done(&f, j);
}

static void resolved_and_acknowledged_say_so_without_ack_link(void **state)
{
    static const char *const payloads[] = {FX_RESOLVED, FX_ACKED};
    static const char *const titles[] = {"[P0] RESOLVED: " FX_SUMMARY,
                                         "[P0] ACKNOWLEDGED: " FX_SUMMARY};

    fx_install_ack_secret();
    for (size_t i = 0; i < 2; i++) {
        fx_t f;
        json_t *j;
        j = fx_build_json(&f, &al_channel_dingtalk, &plain_cfg, payloads[i], GW_TIER_P0, true);
        assert_string_equal(fx_str(j, "markdown.title"), titles[i]);
        assert_null(strstr(fx_str(j, "markdown.text"), "Acknowledge"));
        fx_done(&f, j);
    }
}

static void group_is_one_message_with_every_alert(void **state)
{
    fx_t f;
    json_t *j;
    const char *text;

    fx_init(&f, &plain_cfg, FX_GROUP, GW_TIER_P0, false);
    assert_int_equal(fx_parts(&f, &al_channel_dingtalk), 1);
    assert_int_equal(fx_build(&f, &al_channel_dingtalk, 0), 0);
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "markdown.title"), "[P0] FIRING: 2 alerts");
    text = fx_str(j, "markdown.text");
    assert_non_null(strstr(text, FX_SUMMARY));
    assert_non_null(strstr(text, "Host 10.0.0.1:80 of upstream 'users' is down"));
    assert_non_null(strstr(text, "host=10.0.0.1:80, upstream=users")); /* labels sorted */
    fx_done(&f, j);
}

/* DingTalk's documented signature, computed independently (see SIGN above). */
static void secret_signs_the_url_like_dingtalk(void **state)
{
    fx_t f;

    fx_init(&f, &signed_cfg, FX_FIRING, GW_TIER_P0, false);
    assert_int_equal(fx_build(&f, &al_channel_dingtalk, 0), 0);
    assert_string_equal(f.req.url, URL "&timestamp=1767225600000&sign=" SIGN);
    assert_null(strstr(f.req.body, SECRET)); /* the secret itself never leaves */
    fx_dispose(&f);
}

static void signature_starts_the_query_when_the_url_has_none(void **state)
{
    gw_channel_config_t cfg = signed_cfg;
    fx_t f;

    cfg.url = "http://127.0.0.1:9/robot/send";
    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, false);
    assert_int_equal(fx_build(&f, &al_channel_dingtalk, 0), 0);
    assert_string_equal(f.req.url,
                        "http://127.0.0.1:9/robot/send?timestamp=1767225600000&sign=" SIGN);
    fx_dispose(&f);
}

static void mentions_go_to_at_mobiles_and_the_text(void **state)
{
    fx_t f;
    json_t *j;

    j = fx_build_json(&f, &al_channel_dingtalk, &mention_cfg, FX_FIRING, GW_TIER_P0, false);
    assert_string_equal(fx_str(j, "at.atMobiles.0"), "13800000000");
    assert_string_equal(fx_str(j, "at.atMobiles.1"), "13900000000");
    /* a markdown @mention only renders when the number is in the text too */
    assert_non_null(strstr(fx_str(j, "markdown.text"), "@13800000000 @13900000000"));
    fx_done(&f, j);
}

static void a_large_group_is_cut_to_the_limit_and_says_how_many_more(void **state)
{
    char long_summary[1201], *payload, *alerts = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&alerts, &len);
    json_t *j;
    fx_t f;

    memset(long_summary, 'x', sizeof(long_summary) - 1);
    long_summary[sizeof(long_summary) - 1] = '\0';
    for (int i = 0; i < 50; i++)
        fprintf(mem,
                "%s{\"alert_id\":\"%d\",\"dedup_key\":\"k%d\",\"status\":\"firing\","
                "\"summary\":\"%s\",\"labels\":{}}",
                i ? "," : "", i + 1, i, long_summary);
    fclose(mem);
    assert_true(asprintf(&payload, FX_PAYLOAD("firing", "P1", "%s"), alerts) > 0);
    j = fx_build_json(&f, &al_channel_dingtalk, &plain_cfg, payload, GW_TIER_P1, false);
    assert_true(strlen(fx_str(j, "markdown.text")) <= 15000);
    assert_non_null(strstr(fx_str(j, "markdown.text"), "more"));
    assert_non_null(strstr(fx_str(j, "markdown.text"), "Breakwater"));
    fx_done(&f, j);
    free(payload);
    free(alerts);
}

static void build_refuses_what_it_cannot_send(void **state)
{
    gw_channel_config_t no_url = {.name = "ding", .type = GW_CHANNEL_DINGTALK};
    fx_t f;

    fx_init(&f, &no_url, FX_FIRING, GW_TIER_P0, false);
    assert_int_equal(fx_build(&f, &al_channel_dingtalk, 0), AL_EBADINPUT);
    f.ctx.cfg = &plain_cfg;
    assert_int_equal(fx_build(&f, &al_channel_dingtalk, 1), AL_EBADINPUT);
    fx_dispose(&f);
}

static void replies(void **state)
{
    static const fx_reply_case_t rows[] = {
        {"ok", 200, NULL, "{\"errcode\":0,\"errmsg\":\"ok\"}", AL_REPLY_SENT, 0},
        {"bad sign", 200, NULL, "{\"errcode\":310000,\"errmsg\":\"sign not match\"}",
         AL_REPLY_BROKEN, 0},
        {"keyword missing", 200, NULL,
         "{\"errcode\":310000,\"errmsg\":\"keywords not in content\"}", AL_REPLY_BROKEN, 0},
        {"throttled", 200, NULL,
         "{\"errcode\":130101,\"errmsg\":\"send too fast, exceed 20 times per minute\"}",
         AL_REPLY_RETRY, 600000},
        {"token gone", 200, NULL, "{\"errcode\":300001,\"errmsg\":\"token is not exist\"}",
         AL_REPLY_BROKEN, 0},
        {"busy", 200, NULL, "{\"errcode\":-1,\"errmsg\":\"system busy\"}", AL_REPLY_RETRY, 0},
        {"other code", 200, NULL, "{\"errcode\":40035,\"errmsg\":\"invalid parameter\"}",
         AL_REPLY_PERMANENT, 0},
        {"200 without errcode", 200, NULL, "{\"errmsg\":\"ok\"}", AL_REPLY_RETRY, 0},
        {"200 not JSON", 200, NULL, "<html>proxy</html>", AL_REPLY_RETRY, 0},
        {"200 empty", 200, NULL, "", AL_REPLY_RETRY, 0},
        {"errcode as string", 200, NULL, "{\"errcode\":\"0\"}", AL_REPLY_RETRY, 0},
        {"429 Retry-After", 429, "Retry-After: 5\r\n", "", AL_REPLY_RETRY, 5000},
        {"503", 503, NULL, "", AL_REPLY_RETRY, 0},
        {"404", 404, NULL, "", AL_REPLY_BROKEN, 0},
        {"400 with sign error", 400, NULL, "{\"errcode\":310000}", AL_REPLY_BROKEN, 0},
        {"400 with errcode 0", 400, NULL, "{\"errcode\":0}", AL_REPLY_PERMANENT, 0},
    };

    fx_reply_table(&al_channel_dingtalk, &plain_cfg, rows, sizeof(rows) / sizeof(rows[0]));
    fx_truncated_is_not_sent(&al_channel_dingtalk, &plain_cfg, 200, "{\"errcode\":0}");
}

static void registered_for_its_type(void **state)
{
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_DINGTALK), &al_channel_dingtalk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(firing_is_a_markdown_message_with_the_alert_facts),
        cmocka_unit_test(firing_carries_a_verifiable_ack_link),
        cmocka_unit_test(resolved_and_acknowledged_say_so_without_ack_link),
        cmocka_unit_test(group_is_one_message_with_every_alert),
        cmocka_unit_test(secret_signs_the_url_like_dingtalk),
        cmocka_unit_test(signature_starts_the_query_when_the_url_has_none),
        cmocka_unit_test(mentions_go_to_at_mobiles_and_the_text),
        cmocka_unit_test(a_large_group_is_cut_to_the_limit_and_says_how_many_more),
        cmocka_unit_test(build_refuses_what_it_cannot_send),
        cmocka_unit_test(replies),
        cmocka_unit_test(registered_for_its_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
