/* test_alerts_channel_slack.c - alerts/channel_slack.c: Slack incoming webhooks.
 *
 * Message shape (text + header/section/context blocks) for a firing, a resolved, an
 * acknowledged and a grouped notification; mrkdwn escaping; a big group (five sections, then
 * "…and N more alerts" as al_render_blocks words it) and the block and size bounds; and the
 * reply table: only 200 "ok" is sent, 429 honours Retry-After or a JSON retry_after.
 */
#include "test_alerts_channel_fixture.h"

#define URL "https://hooks.slack.com/services/T000/B000/XXXXSECRET"

static gw_channel_config_t cfg = {.name = "chat", .type = GW_CHANNEL_SLACK, .url = URL};

static void firing_has_header_section_and_context_blocks(void **state)
{
    fx_t f;
    json_t *j;

    fx_install_ack_secret();
    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, true);
    assert_int_equal(fx_parts(&f, &al_channel_slack), 1);
    assert_int_equal(fx_build(&f, &al_channel_slack, 0), 0);
    assert_string_equal(f.req.url, URL);
    assert_string_equal(f.req.content_type, "application/json");
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "text"), "[P0] FIRING: " FX_SUMMARY);
    assert_int_equal(json_array_size(fx_at(j, "blocks")), 3);
    assert_string_equal(fx_str(j, "blocks.0.type"), "header");
    assert_string_equal(fx_str(j, "blocks.0.text.type"), "plain_text");
    assert_string_equal(fx_str(j, "blocks.0.text.text"), "[P0] FIRING: " FX_SUMMARY);
    assert_string_equal(fx_str(j, "blocks.1.type"), "section");
    assert_string_equal(fx_str(j, "blocks.1.text.type"), "mrkdwn");
    assert_non_null(strstr(fx_str(j, "blocks.1.text.text"),
                           "*" FX_SUMMARY "*\n`breaker_open{upstream=\"users\"}`  upstream=users\n"
                           "since 2026-01-01T00:00:00Z" AL_MIDDOT "count 3" AL_MIDDOT
                           "escalation 1\n<" FX_EXTERNAL_URL "/ack/"));
    assert_string_equal(fx_str(j, "blocks.2.type"), "context");
    assert_string_equal(fx_str(j, "blocks.2.elements.0.text"),
                        "Breakwater" AL_MIDDOT "breakwater@host");
    /* an unfurler fetching the ack link would acknowledge the alert */
    assert_true(json_is_false(fx_at(j, "unfurl_links")));
    assert_true(json_is_false(fx_at(j, "unfurl_media")));
    fx_done(&f, j);
}

static void ack_link_is_a_slack_link_with_a_genuine_token(void **state)
{
    fx_t f;
    json_t *j;
    char link[512];
    const char *p;

    fx_install_ack_secret();
    j = fx_build_json(&f, &al_channel_slack, &cfg, FX_FIRING, GW_TIER_P0, true);
    p = strchr(fx_str(j, "blocks.1.text.text"), '<');
    assert_non_null(p);
    snprintf(link, sizeof(link), "%s", p + 1);
    assert_non_null(strstr(link, "|Acknowledge>"));
    *strchr(link, '|') = '\0';
    assert_true(fx_ack_link_ok(link, 42));
    fx_done(&f, j);
}

static void resolved_and_acknowledged_have_no_ack_link(void **state)
{
    static const char *const payloads[] = {FX_RESOLVED, FX_ACKED};
    static const char *const titles[] = {"[P0] RESOLVED: " FX_SUMMARY,
                                         "[P0] ACKNOWLEDGED: " FX_SUMMARY};

    fx_install_ack_secret();
    for (size_t i = 0; i < 2; i++) {
        fx_t f;
        json_t *j;
        j = fx_build_json(&f, &al_channel_slack, &cfg, payloads[i], GW_TIER_P0, true);
        assert_string_equal(fx_str(j, "blocks.0.text.text"), titles[i]);
        assert_null(strstr(f.req.body, "Acknowledge>"));
        fx_done(&f, j);
    }
}

static void mrkdwn_control_characters_are_escaped(void **state)
{
    const char *payload = FX_PAYLOAD(
        "firing", "P1",
        "{\"alert_id\":\"1\",\"dedup_key\":\"k<1>\",\"status\":\"firing\",\"summary\":"
        "\"a < b && c > d <!channel> <https://evil|click>\",\"labels\":{\"x\":\"<y>\"}}");
    fx_t f;
    json_t *j;
    const char *text;

    j = fx_build_json(&f, &al_channel_slack, &cfg, payload, GW_TIER_P1, false);
    text = fx_str(j, "blocks.1.text.text");
    assert_non_null(strstr(text, "*a &lt; b &amp;&amp; c &gt; d &lt;!channel&gt; "
                                 "&lt;https://evil|click&gt;*"));
    assert_non_null(strstr(text, "`k&lt;1&gt;`  x=&lt;y&gt;"));
    assert_null(strchr(text, '<')); /* no link, no mention can be injected */
    assert_null(strchr(fx_str(j, "text"), '<'));
    /* the header is plain_text: shown as is */
    assert_string_equal(fx_str(j, "blocks.0.text.text"),
                        "[P1] FIRING: a < b && c > d <!channel> <https://evil|click>");
    fx_done(&f, j);
}

/* Slack's limits: at most 50 blocks, a header of at most 150 characters, sections of at most
 * 3000 (bytes here: the safe bound). */
static void assert_within_slack_limits(json_t *j)
{
    json_t *blocks = fx_at(j, "blocks"), *b;
    size_t i;

    assert_true(json_array_size(blocks) <= 50);
    assert_true(strlen(fx_str(j, "blocks.0.text.text")) <= 150);
    json_array_foreach(blocks, i, b)
    {
        if (al_json_str_is(b, "type", "section"))
            assert_true(strlen(fx_str(b, "text.text")) <= 3000);
    }
}

static void group_of_eight_shows_five_then_three_more_alerts(void **state)
{
    char *payload = fx_group_payload(8, "", 0), want[32];
    json_t *j, *blocks;
    fx_t f;

    j = fx_build_json(&f, &al_channel_slack, &cfg, payload, GW_TIER_P2, false);
    blocks = fx_at(j, "blocks");
    /* header, five sections, the "more" section, context */
    assert_int_equal(json_array_size(blocks), 8);
    assert_string_equal(fx_str(j, "text"), "[P2] FIRING: 8 alerts");
    assert_string_equal(fx_str(j, "blocks.0.text.text"), "[P2] FIRING: 8 alerts");
    for (int i = 1; i <= 5; i++) {
        json_t *b = json_array_get(blocks, (size_t)i);
        snprintf(want, sizeof(want), "*alert %d:*\n`k%d`", i, i);
        assert_string_equal(fx_str(b, "type"), "section");
        assert_non_null(strstr(fx_str(b, "text.text"), want));
    }
    assert_null(strstr(f.req.body, "alert 6:"));
    assert_string_equal(fx_str(j, "blocks.6.type"), "section");
    assert_string_equal(fx_str(j, "blocks.6.text.type"), "mrkdwn");
    assert_string_equal(fx_str(j, "blocks.6.text.text"), AL_ELLIPSIS "and 3 more alerts");
    assert_string_equal(fx_str(j, "blocks.7.type"), "context");
    assert_string_equal(fx_str(j, "blocks.7.elements.0.text"),
                        "Breakwater" AL_MIDDOT "breakwater@host");
    assert_true(json_is_false(fx_at(j, "unfurl_links")));
    assert_true(json_is_false(fx_at(j, "unfurl_media")));
    fx_done(&f, j);
    free(payload);
}

/* The same words as al_render_alerts: one left is "1 more alert"; five are all shown. */
static void the_more_line_says_alert_for_one_and_is_absent_when_all_fit(void **state)
{
    char *six = fx_group_payload(6, "", 0), *five = fx_group_payload(5, "", 0);
    json_t *j;
    fx_t f;

    j = fx_build_json(&f, &al_channel_slack, &cfg, six, GW_TIER_P2, false);
    assert_int_equal(json_array_size(fx_at(j, "blocks")), 8);
    assert_string_equal(fx_str(j, "blocks.6.text.text"), AL_ELLIPSIS "and 1 more alert");
    fx_done(&f, j);
    j = fx_build_json(&f, &al_channel_slack, &cfg, five, GW_TIER_P2, false);
    assert_int_equal(json_array_size(fx_at(j, "blocks")), 7);
    assert_non_null(strstr(fx_str(j, "blocks.5.text.text"), "*alert 5:*"));
    assert_null(strstr(f.req.body, "more alert"));
    assert_string_equal(fx_str(j, "blocks.6.type"), "context");
    fx_done(&f, j);
    free(six);
    free(five);
}

static void group_of_fifty_stays_within_slack_limits(void **state)
{
    static const struct {
        const char *unit;
        size_t reps;
        bool link;
    } rows[] = {
        {"", 0, false},
        {"x", 4000, true},           /* each section cut at its limit */
        {"&<>", 1500, true},         /* mrkdwn escapes grow the text five times */
        {"\\u00e9\\\"", 1500, true}, /* two-byte characters and JSON escapes */
    };

    fx_install_ack_secret();
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        char *payload = fx_group_payload(50, rows[r].unit, rows[r].reps);
        json_t *j;
        fx_t f;

        j = fx_build_json(&f, &al_channel_slack, &cfg, payload, GW_TIER_P2, rows[r].link);
        assert_within_slack_limits(j);
        assert_string_equal(fx_str(j, "blocks.0.text.text"), "[P2] FIRING: 50 alerts");
        assert_int_equal(json_array_size(fx_at(j, "blocks")), 8);
        assert_non_null(strstr(fx_str(j, "blocks.5.text.text"), "*alert 5:"));
        assert_string_equal(fx_str(j, "blocks.6.text.text"), AL_ELLIPSIS "and 45 more alerts");
        assert_string_equal(fx_str(j, "blocks.7.elements.0.text"),
                            "Breakwater" AL_MIDDOT "breakwater@host");
        fx_done(&f, j);
        free(payload);
    }
}

static void long_summary_is_cut_within_section_and_header_limits(void **state)
{
    char summary[5001], *payload;
    json_t *j;
    fx_t f;

    memset(summary, 'z', sizeof(summary) - 1);
    summary[sizeof(summary) - 1] = '\0';
    /* a multi-byte character right where the header is cut */
    memcpy(summary + 140, "\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC", 12);
    assert_true(asprintf(&payload,
                         FX_PAYLOAD("firing", "P1",
                                    "{\"alert_id\":\"1\",\"dedup_key\":\"k\",\"summary\":\"%s\"}"),
                         summary) > 0);
    fx_init(&f, &cfg, payload, GW_TIER_P1, false);
    assert_int_equal(fx_build(&f, &al_channel_slack, 0), 0);
    j = fx_json(&f); /* valid JSON: jansson refuses invalid UTF-8 */
    assert_true(strlen(fx_str(j, "blocks.0.text.text")) <= 150);
    assert_true(strlen(fx_str(j, "blocks.1.text.text")) <= 3000);
    fx_done(&f, j);
    free(payload);
}

static void build_refuses_what_it_cannot_send(void **state)
{
    gw_channel_config_t no_url = {.name = "chat", .type = GW_CHANNEL_SLACK};

    assert_int_equal(fx_build_result(&al_channel_slack, &no_url), AL_EBADINPUT);
}

static void replies(void **state)
{
    static const fx_reply_case_t rows[] = {
        {"ok", 200, NULL, "ok", AL_REPLY_SENT, 0},
        {"ok with newline", 200, NULL, "ok\n", AL_REPLY_SENT, 0},
        {"200 JSON ok:true is not Slack's", 200, NULL, "{\"ok\":true}", AL_REPLY_RETRY, 0},
        {"200 empty", 200, NULL, "", AL_REPLY_RETRY, 0},
        {"204", 204, NULL, "", AL_REPLY_RETRY, 0},
        {"invalid_payload", 400, NULL, "invalid_payload", AL_REPLY_PERMANENT, 0},
        {"no_text", 400, NULL, "no_text", AL_REPLY_PERMANENT, 0},
        {"action_prohibited", 403, NULL, "action_prohibited", AL_REPLY_BROKEN, 0},
        {"invalid_token", 403, NULL, "invalid_token", AL_REPLY_BROKEN, 0},
        {"no_service", 404, NULL, "no_service", AL_REPLY_BROKEN, 0},
        {"channel_not_found", 404, NULL, "channel_not_found", AL_REPLY_BROKEN, 0},
        {"channel_is_archived", 410, NULL, "channel_is_archived", AL_REPLY_BROKEN, 0},
        {"rate limited, header", 429, "Retry-After: 30\r\n", "rate_limited", AL_REPLY_RETRY, 30000},
        {"rate limited, body", 429, NULL,
         "{\"ok\":false,\"error\":\"ratelimited\","
         "\"retry_after\":7}",
         AL_REPLY_RETRY, 7000},
        {"rate limited, header wins", 429, "Retry-After: 2\r\n", "{\"retry_after\":7}",
         AL_REPLY_RETRY, 2000},
        {"rate limited, huge", 429, NULL, "{\"retry_after\":99999999}", AL_REPLY_RETRY,
         AL_RETRY_AFTER_MAX_MS},
        {"rate limited, bare", 429, NULL, "rate_limited", AL_REPLY_RETRY, 0},
        {"rollup_error", 500, NULL, "rollup_error", AL_REPLY_RETRY, 0},
        {"redirect", 302, "Location: https://x\r\n", "", AL_REPLY_BROKEN, 0},
    };

    fx_reply_table(&al_channel_slack, &cfg, rows, sizeof(rows) / sizeof(rows[0]));
    fx_truncated_is_not_sent(&al_channel_slack, &cfg, 200, "ok");
}

static void registered_for_its_type(void **state)
{
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_SLACK), &al_channel_slack);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(firing_has_header_section_and_context_blocks),
        cmocka_unit_test(ack_link_is_a_slack_link_with_a_genuine_token),
        cmocka_unit_test(resolved_and_acknowledged_have_no_ack_link),
        cmocka_unit_test(mrkdwn_control_characters_are_escaped),
        cmocka_unit_test(group_of_eight_shows_five_then_three_more_alerts),
        cmocka_unit_test(the_more_line_says_alert_for_one_and_is_absent_when_all_fit),
        cmocka_unit_test(group_of_fifty_stays_within_slack_limits),
        cmocka_unit_test(long_summary_is_cut_within_section_and_header_limits),
        cmocka_unit_test(build_refuses_what_it_cannot_send),
        cmocka_unit_test(replies),
        cmocka_unit_test(registered_for_its_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
