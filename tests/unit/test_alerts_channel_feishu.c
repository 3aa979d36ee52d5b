/* test_alerts_channel_feishu.c - alerts/channel_feishu.c: the Feishu/Lark custom bot.
 *
 * Card shape for a firing, a resolved, an acknowledged and a grouped notification; the body
 * signature against a known answer computed independently with Python's hmac (Feishu's
 * documented algorithm, key and message the other way round from DingTalk:
 * base64(HMAC-SHA256(key=ts+"\n"+secret, msg="")), ts in seconds); the reply table (code under
 * HTTP 200, the old StatusCode shape, the gateway's 429); a big group (five alerts, then
 * "…and N more alerts" as al_render_blocks words it) within Feishu's 20 KB.
 */
#include "test_alerts_channel_fixture.h"

#define URL "https://open.feishu.cn/open-apis/bot/v2/hook/f31shu-t0ken"
/* python3 -c 'import hmac,hashlib,base64; s="feishu-test-secret"; print(base64.b64encode(
 *   hmac.new(("1767225600\n"+s).encode(), b"", hashlib.sha256).digest()).decode())' */
#define SECRET "feishu-test-secret"
#define SIGN "+O/t8xQIQMWSvTBZyknDY29EsHsGDkn69jEmEuuS2Fs="

static gw_channel_config_t plain_cfg = {.name = "fs", .type = GW_CHANNEL_FEISHU, .url = URL};
static gw_channel_config_t signed_cfg = {
    .name = "fs", .type = GW_CHANNEL_FEISHU, .url = URL, .secret = SECRET};

static void firing_is_an_interactive_card(void **state)
{
    fx_t f;
    json_t *j, *el;

    fx_init(&f, &plain_cfg, FX_FIRING, GW_TIER_P0, false);
    assert_int_equal(fx_parts(&f, &al_channel_feishu), 1);
    assert_int_equal(fx_build(&f, &al_channel_feishu, 0), 0);
    assert_string_equal(f.req.url, URL);
    j = fx_json(&f);
    assert_null(fx_at(j, "timestamp")); /* no secret: unsigned */
    assert_null(fx_at(j, "sign"));
    assert_string_equal(fx_str(j, "msg_type"), "interactive");
    assert_string_equal(fx_str(j, "card.header.template"), "red");
    assert_string_equal(fx_str(j, "card.header.title.tag"), "plain_text");
    assert_string_equal(fx_str(j, "card.header.title.content"), "[P0] FIRING: " FX_SUMMARY);
    el = fx_at(j, "card.elements");
    assert_string_equal(fx_str(el, "0.tag"), "div");
    assert_string_equal(fx_str(el, "0.text.tag"), "plain_text"); /* summaries cannot inject */
    assert_string_equal(fx_str(el, "0.text.content"), FX_SUMMARY
                        "\nbreaker_open{upstream=\"users\"}  upstream=users\n"
                        "since 2026-01-01T00:00:00Z" AL_MIDDOT "count 3" AL_MIDDOT "escalation 1");
    assert_string_equal(fx_str(el, "1.tag"), "note");
    assert_string_equal(fx_str(el, "1.elements.0.content"),
                        "Breakwater" AL_MIDDOT "breakwater@host");
    fx_done(&f, j);
}

static void firing_with_external_url_has_an_ack_button(void **state)
{
    fx_t f;
    json_t *j, *button;

    fx_install_ack_secret();
    j = fx_build_json(&f, &al_channel_feishu, &plain_cfg, FX_FIRING, GW_TIER_P0, true);
    assert_string_equal(fx_str(j, "card.elements.1.tag"), "action");
    button = fx_at(j, "card.elements.1.actions.0");
    assert_string_equal(fx_str(button, "tag"), "button");
    assert_string_equal(fx_str(button, "text.content"), "Acknowledge");
    assert_true(fx_ack_link_ok(fx_str(button, "url"), 42));
    fx_done(&f, j);
}

static void resolved_is_green_and_acknowledged_blue_without_buttons(void **state)
{
    static const char *const payloads[] = {FX_RESOLVED, FX_ACKED};
    static const char *const colours[] = {"green", "blue"};
    static const char *const titles[] = {"[P0] RESOLVED: " FX_SUMMARY,
                                         "[P0] ACKNOWLEDGED: " FX_SUMMARY};

    fx_install_ack_secret();
    for (size_t i = 0; i < 2; i++) {
        fx_t f;
        json_t *j;
        j = fx_build_json(&f, &al_channel_feishu, &plain_cfg, payloads[i], GW_TIER_P0, true);
        assert_string_equal(fx_str(j, "card.header.template"), colours[i]);
        assert_string_equal(fx_str(j, "card.header.title.content"), titles[i]);
        assert_null(strstr(f.req.body, "\"action\""));
        fx_done(&f, j);
    }
}

static void group_has_one_block_per_alert(void **state)
{
    fx_t f;
    json_t *j;

    j = fx_build_json(&f, &al_channel_feishu, &plain_cfg, FX_GROUP, GW_TIER_P1, false);
    assert_string_equal(fx_str(j, "card.header.template"), "orange"); /* P1 */
    assert_string_equal(fx_str(j, "card.header.title.content"), "[P1] FIRING: 2 alerts");
    assert_string_equal(fx_str(j, "card.elements.1.tag"), "hr");
    assert_non_null(strstr(fx_str(j, "card.elements.2.text.content"), "10.0.0.1:80"));
    fx_done(&f, j);
}

/* Feishu's documented signature, computed independently (see SIGN above). */
static void secret_signs_the_body_like_feishu(void **state)
{
    fx_t f;
    json_t *j;

    fx_init(&f, &signed_cfg, FX_FIRING, GW_TIER_P0, false);
    assert_int_equal(fx_build(&f, &al_channel_feishu, 0), 0);
    assert_string_equal(f.req.url, URL); /* the URL is not touched */
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "timestamp"), "1767225600"); /* seconds, as a string */
    assert_string_equal(fx_str(j, "sign"), SIGN);
    assert_null(strstr(f.req.body, SECRET));
    fx_done(&f, j);
}

/* How many alert divs the card spells out (the "more" div and the note aside). */
static size_t alert_divs(json_t *j)
{
    json_t *els = fx_at(j, "card.elements"), *el;
    size_t i, n = 0;

    json_array_foreach(els, i, el)
    {
        if (al_json_str_is(el, "tag", "div") &&
            strncmp(fx_str(el, "text.content"), "alert ", 6) == 0)
            n++;
    }
    return n;
}

static void group_of_eight_shows_five_then_three_more_alerts(void **state)
{
    char *payload = fx_group_payload(8, "", 0), want[32];
    json_t *j, *el;
    fx_t f;

    fx_install_ack_secret();
    j = fx_build_json(&f, &al_channel_feishu, &signed_cfg, payload, GW_TIER_P2, true);
    el = fx_at(j, "card.elements");
    assert_string_equal(fx_str(j, "card.header.title.content"), "[P2] FIRING: 8 alerts");
    /* five times (hr,) div, button; then hr, the "more" div, the note */
    assert_int_equal(json_array_size(el), 5 * 2 + 4 + 3);
    for (size_t i = 0; i < 5; i++) {
        json_t *div = json_array_get(el, i * 3);
        snprintf(want, sizeof(want), "alert %zu:\nk%zu", i + 1, i + 1);
        assert_string_equal(fx_str(div, "tag"), "div");
        assert_non_null(strstr(fx_str(div, "text.content"), want));
        assert_string_equal(fx_str(json_array_get(el, i * 3 + 1), "tag"), "action");
        assert_string_equal(fx_str(json_array_get(el, i * 3 + 2), "tag"), "hr");
    }
    assert_int_equal(alert_divs(j), 5);
    assert_null(strstr(f.req.body, "alert 6:"));
    assert_string_equal(fx_str(el, "15.tag"), "div");
    assert_string_equal(fx_str(el, "15.text.tag"), "plain_text");
    assert_string_equal(fx_str(el, "15.text.content"), AL_ELLIPSIS "and 3 more alerts");
    assert_string_equal(fx_str(el, "16.tag"), "note");
    assert_string_equal(fx_str(el, "16.elements.0.content"),
                        "Breakwater" AL_MIDDOT "breakwater@host");
    fx_done(&f, j);
    free(payload);
}

/* The same words as al_render_alerts: one left is "1 more alert"; five are all shown. */
static void the_more_line_says_alert_for_one_and_is_absent_when_all_fit(void **state)
{
    char *six = fx_group_payload(6, "", 0), *five = fx_group_payload(5, "", 0);
    json_t *j;
    fx_t f;

    j = fx_build_json(&f, &al_channel_feishu, &plain_cfg, six, GW_TIER_P2, false);
    assert_int_equal(alert_divs(j), 5);
    assert_string_equal(fx_str(j, "card.elements.10.text.content"), AL_ELLIPSIS "and 1 more alert");
    fx_done(&f, j);
    j = fx_build_json(&f, &al_channel_feishu, &plain_cfg, five, GW_TIER_P2, false);
    assert_int_equal(alert_divs(j), 5);
    assert_int_equal(json_array_size(fx_at(j, "card.elements")), 5 + 4 + 1);
    assert_null(strstr(f.req.body, "more alert"));
    fx_done(&f, j);
    free(six);
    free(five);
}

static void a_group_of_fifty_stays_under_20_kb(void **state)
{
    static const struct {
        const char *unit;
        size_t reps;
        size_t shown; /* 0: fewer than five (the budget ends the list) */
    } rows[] = {
        {"", 0, 5},
        {"y", 2000, 5},
        {"\\\"", 3000, 0},    /* JSON escapes double each alert: the budget ends the list early */
        {"\\u0001", 3000, 0}, /* six bytes a character in JSON */
    };
    char want[64];

    fx_install_ack_secret();
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        char *payload = fx_group_payload(50, rows[r].unit, rows[r].reps);
        json_t *j, *el;
        size_t shown, n;
        fx_t f;

        fx_init(&f, &signed_cfg, payload, GW_TIER_P2, true);
        assert_int_equal(fx_build(&f, &al_channel_feishu, 0), 0);
        if (f.req.body_len >= 20 * 1024)
            fail_msg("row %zu: %zu bytes", r, f.req.body_len);
        j = fx_json(&f);
        assert_string_equal(fx_str(j, "card.header.template"), "yellow");
        shown = alert_divs(j);
        assert_true(shown >= 1 && shown <= 5);
        if (rows[r].shown > 0)
            assert_int_equal(shown, rows[r].shown);
        else
            assert_true(shown < 5);
        el = fx_at(j, "card.elements");
        n = json_array_size(el);
        snprintf(want, sizeof(want), AL_ELLIPSIS "and %zu more alerts", 50 - shown);
        assert_string_equal(fx_str(json_array_get(el, n - 2), "text.content"), want);
        assert_string_equal(fx_str(json_array_get(el, n - 1), "tag"), "note");
        fx_done(&f, j);
        free(payload);
    }
}

static void replies(void **state)
{
    static const fx_reply_case_t rows[] = {
        {"ok", 200, NULL, "{\"code\":0,\"data\":{},\"msg\":\"success\"}", AL_REPLY_SENT, 0},
        {"ok, old shape", 200, NULL,
         "{\"Extra\":null,\"StatusCode\":0,\"StatusMessage\":\"success\"}", AL_REPLY_SENT, 0},
        {"bad sign", 200, NULL,
         "{\"code\":19021,\"data\":{},\"msg\":\"sign match fail or timestamp is not within one "
         "hour from current time\"}",
         AL_REPLY_BROKEN, 0},
        {"ip not allowed", 200, NULL, "{\"code\":19022,\"msg\":\"Ip Not Allowed\"}",
         AL_REPLY_BROKEN, 0},
        {"keyword", 200, NULL, "{\"code\":19024,\"msg\":\"Key Words Not Found\"}", AL_REPLY_BROKEN,
         0},
        {"frequency limited", 200, NULL, "{\"code\":11232,\"msg\":\"frequency limited\"}",
         AL_REPLY_RETRY, 1000},
        {"bad request under 400", 400, NULL, "{\"code\":9499,\"msg\":\"Bad Request\"}",
         AL_REPLY_PERMANENT, 0},
        {"frequency limited under 400", 400, NULL, "{\"code\":11232,\"msg\":\"frequency\"}",
         AL_REPLY_RETRY, 1000},
        {"other code", 200, NULL, "{\"code\":19001,\"msg\":\"param invalid\"}", AL_REPLY_PERMANENT,
         0},
        {"200 without code", 200, NULL, "{\"msg\":\"success\"}", AL_REPLY_RETRY, 0},
        {"200 not JSON", 200, NULL, "ok", AL_REPLY_RETRY, 0},
        {"gateway 429", 429, "x-ogw-ratelimit-reset: 52\r\n",
         "{\"code\":99991400,\"msg\":\"request trigger frequency limit\"}", AL_REPLY_RETRY, 52000},
        {"429 Retry-After wins", 429, "Retry-After: 3\r\nx-ogw-ratelimit-reset: 52\r\n", "",
         AL_REPLY_RETRY, 3000},
        {"502", 502, NULL, "", AL_REPLY_RETRY, 0},
        {"404", 404, NULL, "{\"code\":0}", AL_REPLY_BROKEN, 0},
    };

    fx_reply_table(&al_channel_feishu, &plain_cfg, rows, sizeof(rows) / sizeof(rows[0]));
    fx_truncated_is_not_sent(&al_channel_feishu, &plain_cfg, 200, "{\"code\":0}");
}

static void registered_for_its_type(void **state)
{
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_FEISHU), &al_channel_feishu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(firing_is_an_interactive_card),
        cmocka_unit_test(firing_with_external_url_has_an_ack_button),
        cmocka_unit_test(resolved_is_green_and_acknowledged_blue_without_buttons),
        cmocka_unit_test(group_has_one_block_per_alert),
        cmocka_unit_test(secret_signs_the_body_like_feishu),
        cmocka_unit_test(group_of_eight_shows_five_then_three_more_alerts),
        cmocka_unit_test(the_more_line_says_alert_for_one_and_is_absent_when_all_fit),
        cmocka_unit_test(a_group_of_fifty_stays_under_20_kb),
        cmocka_unit_test(replies),
        cmocka_unit_test(registered_for_its_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
