/* test_alerts_channel_wecom.c - alerts/channel_wecom.c: the WeCom group robot.
 *
 * Markdown (<= 4096 bytes) without mentions, text (<= 2048 bytes) with mentioned_mobile_list
 * when the channel has mobiles; firing, resolved, acknowledged and grouped notifications; the
 * byte limits with multi-byte text; the reply table (errcode under HTTP 200).
 */
#include "test_alerts_channel_fixture.h"

#define URL "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=w3c0m-k3y"

static char *mobiles[] = {"13800000000"};
static gw_channel_config_t cfg = {.name = "wc", .type = GW_CHANNEL_WECOM, .url = URL};
static gw_channel_config_t mention_cfg = {
    .name = "wc", .type = GW_CHANNEL_WECOM, .url = URL, .to = mobiles, .nto = 1};

static void firing_is_markdown_with_the_alert_facts(void **state)
{
    fx_t f;
    json_t *j;
    const char *text;

    fx_install_ack_secret();
    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, true);
    assert_int_equal(fx_parts(&f, &al_channel_wecom), 1);
    assert_int_equal(fx_build(&f, &al_channel_wecom, 0), 0);
    assert_string_equal(f.req.url, URL);
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "msgtype"), "markdown");
    text = fx_str(j, "markdown.content");
    assert_non_null(strstr(text, "**[P0] FIRING: " FX_SUMMARY "**\n"));
    assert_non_null(strstr(text, "> <font color=\"warning\">" FX_SUMMARY "</font>\n"));
    assert_non_null(strstr(text, "> `breaker_open{upstream=\"users\"}` upstream=users\n"));
    assert_non_null(strstr(text, "> since 2026-01-01T00:00:00Z" AL_MIDDOT "count 3"));
    assert_non_null(strstr(text, "> [Acknowledge](" FX_EXTERNAL_URL "/ack/"));
    assert_non_null(strstr(text, "Breakwater" AL_MIDDOT "breakwater@host"));
    assert_null(fx_at(j, "text"));
    fx_done(&f, j);
}

static void resolved_is_info_coloured_and_acknowledged_has_no_link(void **state)
{
    static const char *const payloads[] = {FX_RESOLVED, FX_ACKED};
    static const char *const titles[] = {"**[P0] RESOLVED: ", "**[P0] ACKNOWLEDGED: "};

    fx_install_ack_secret();
    for (size_t i = 0; i < 2; i++) {
        fx_t f;
        json_t *j;
        j = fx_build_json(&f, &al_channel_wecom, &cfg, payloads[i], GW_TIER_P0, true);
        assert_non_null(strstr(fx_str(j, "markdown.content"), titles[i]));
        assert_non_null(strstr(fx_str(j, "markdown.content"), "<font color=\"info\">"));
        assert_null(strstr(fx_str(j, "markdown.content"), "Acknowledge"));
        fx_done(&f, j);
    }
}

static void mentions_switch_to_text_with_mentioned_mobile_list(void **state)
{
    fx_t f;
    json_t *j;

    fx_install_ack_secret();
    j = fx_build_json(&f, &al_channel_wecom, &mention_cfg, FX_GROUP, GW_TIER_P0, true);
    assert_string_equal(fx_str(j, "msgtype"), "text");
    assert_string_equal(fx_str(j, "text.mentioned_mobile_list.0"), "13800000000");
    assert_non_null(strstr(fx_str(j, "text.content"), "[P0] FIRING: 2 alerts\n- " FX_SUMMARY));
    assert_non_null(strstr(fx_str(j, "text.content"), "Acknowledge: " FX_EXTERNAL_URL "/ack/"));
    assert_non_null(strstr(fx_str(j, "text.content"), "- Host 10.0.0.1:80"));
    fx_done(&f, j);
}

/* Content is bounded in bytes (UTF-8), and never cut inside a character. */
static void content_stays_under_the_byte_limits(void **state)
{
    static const gw_channel_config_t *const cfgs[] = {&cfg, &mention_cfg};
    static const char *const fields[] = {"markdown.content", "text.content"};
    static const size_t limits[] = {4096, 2048};
    char *payload, *alerts = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&alerts, &len);

    for (int i = 0; i < 30; i++) {
        fprintf(mem, "%s{\"alert_id\":\"%d\",\"dedup_key\":\"k%d\",\"summary\":\"", i ? "," : "",
                i + 1, i);
        for (int k = 0; k < 100; k++)
            fputs("\xE5\x91\x8A", mem); /* a 3-byte character, 300 bytes per summary */
        fputs("\"}", mem);
    }
    fclose(mem);
    assert_true(asprintf(&payload, FX_PAYLOAD("firing", "P1", "%s"), alerts) > 0);
    for (size_t c = 0; c < 2; c++) {
        fx_t f;
        json_t *j;
        fx_init(&f, cfgs[c], payload, GW_TIER_P1, false);
        assert_int_equal(fx_build(&f, &al_channel_wecom, 0), 0);
        j = fx_json(&f); /* jansson checks the UTF-8 */
        assert_true(strlen(fx_str(j, fields[c])) <= limits[c]);
        assert_non_null(strstr(fx_str(j, fields[c]), "more"));
        fx_done(&f, j);
    }
    free(payload);
    free(alerts);
}

static void replies(void **state)
{
    static const fx_reply_case_t rows[] = {
        {"ok", 200, NULL, "{\"errcode\":0,\"errmsg\":\"ok\"}", AL_REPLY_SENT, 0},
        {"over 20/min", 200, NULL, "{\"errcode\":45009,\"errmsg\":\"api freq out of limit\"}",
         AL_REPLY_RETRY, 60000},
        {"bad URL", 200, NULL, "{\"errcode\":93000,\"errmsg\":\"invalid webhook url\"}",
         AL_REPLY_BROKEN, 0},
        {"busy", 200, NULL, "{\"errcode\":-1,\"errmsg\":\"system busy\"}", AL_REPLY_RETRY, 0},
        {"invalid msgtype", 200, NULL, "{\"errcode\":40008,\"errmsg\":\"invalid message type\"}",
         AL_REPLY_PERMANENT, 0},
        {"empty content", 200, NULL, "{\"errcode\":44004,\"errmsg\":\"empty content\"}",
         AL_REPLY_PERMANENT, 0},
        {"200 without errcode", 200, NULL, "{}", AL_REPLY_RETRY, 0},
        {"200 not JSON", 200, NULL, "ok", AL_REPLY_RETRY, 0},
        {"500", 500, NULL, "", AL_REPLY_RETRY, 0},
        {"429", 429, "Retry-After: 60\r\n", "", AL_REPLY_RETRY, 60000},
        {"403", 403, NULL, "", AL_REPLY_BROKEN, 0},
    };

    fx_reply_table(&al_channel_wecom, &cfg, rows, sizeof(rows) / sizeof(rows[0]));
    fx_truncated_is_not_sent(&al_channel_wecom, &cfg, 200, "{\"errcode\":0}");
}

static void registered_for_its_type(void **state)
{
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_WECOM), &al_channel_wecom);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(firing_is_markdown_with_the_alert_facts),
        cmocka_unit_test(resolved_is_info_coloured_and_acknowledged_has_no_link),
        cmocka_unit_test(mentions_switch_to_text_with_mentioned_mobile_list),
        cmocka_unit_test(content_stays_under_the_byte_limits),
        cmocka_unit_test(replies),
        cmocka_unit_test(registered_for_its_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
