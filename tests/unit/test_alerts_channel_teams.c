/* test_alerts_channel_teams.c - alerts/channel_teams.c: Microsoft Teams incoming webhooks.
 *
 * The Adaptive Card in "attachments" for a firing, a resolved, an acknowledged and a grouped
 * notification; a big group (five Containers, then "…and N more alerts" as al_render_blocks
 * words it) and the size bound; the reply table (2xx accepted, except the legacy connector's
 * "HTTP 200 but throttled" text).
 */
#include "test_alerts_channel_fixture.h"

#define URL "https://prod-00.westus.logic.azure.com/workflows/abc/triggers/manual?sig=S3CRET"

static gw_channel_config_t cfg = {.name = "teams", .type = GW_CHANNEL_TEAMS, .url = URL};

static void firing_is_an_adaptive_card_attachment(void **state)
{
    fx_t f;
    json_t *j, *card, *facts;

    fx_install_ack_secret();
    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, true);
    assert_int_equal(fx_parts(&f, &al_channel_teams), 1);
    assert_int_equal(fx_build(&f, &al_channel_teams, 0), 0);
    assert_string_equal(f.req.url, URL);
    j = fx_json(&f);
    assert_string_equal(fx_str(j, "type"), "message");
    assert_int_equal(json_array_size(fx_at(j, "attachments")), 1);
    assert_string_equal(fx_str(j, "attachments.0.contentType"),
                        "application/vnd.microsoft.card.adaptive");
    assert_true(json_is_null(fx_at(j, "attachments.0.contentUrl")));
    card = fx_at(j, "attachments.0.content");
    assert_string_equal(fx_str(card, "type"), "AdaptiveCard");
    assert_string_equal(fx_str(card, "version"), "1.4");
    assert_string_equal(fx_str(card, "$schema"),
                        "http://adaptivecards.io/schemas/adaptive-card.json");
    assert_string_equal(fx_str(card, "body.0.text"), "[P0] FIRING: " FX_SUMMARY);
    assert_string_equal(fx_str(card, "body.0.color"), "Attention");
    assert_string_equal(fx_str(card, "body.1.type"), "Container");
    assert_string_equal(fx_str(card, "body.1.items.0.text"), FX_SUMMARY);
    facts = fx_at(card, "body.1.items.1.facts");
    assert_string_equal(fx_str(facts, "0.title"), "Key");
    assert_string_equal(fx_str(facts, "0.value"), "breaker_open{upstream=\"users\"}");
    assert_string_equal(fx_str(facts, "1.title"), "upstream");
    assert_string_equal(fx_str(facts, "1.value"), "users");
    assert_string_equal(fx_str(facts, "2.value"), "2026-01-01T00:00:00Z");
    assert_string_equal(fx_str(facts, "3.title"), "Count");
    assert_string_equal(fx_str(card, "body.1.items.2.actions.0.type"), "Action.OpenUrl");
    assert_true(fx_ack_link_ok(fx_str(card, "body.1.items.2.actions.0.url"), 42));
    assert_string_equal(fx_str(card, "body.2.text"), "Breakwater" AL_MIDDOT "breakwater@host");
    fx_done(&f, j);
}

static void resolved_is_good_and_acknowledged_accent_without_actions(void **state)
{
    static const char *const payloads[] = {FX_RESOLVED, FX_ACKED};
    static const char *const colours[] = {"Good", "Accent"};

    fx_install_ack_secret();
    for (size_t i = 0; i < 2; i++) {
        fx_t f;
        json_t *j;
        j = fx_build_json(&f, &al_channel_teams, &cfg, payloads[i], GW_TIER_P0, true);
        assert_string_equal(fx_str(j, "attachments.0.content.body.0.color"), colours[i]);
        assert_null(strstr(f.req.body, "Action.OpenUrl"));
        fx_done(&f, j);
    }
}

static void group_has_a_container_per_alert(void **state)
{
    fx_t f;
    json_t *j;

    j = fx_build_json(&f, &al_channel_teams, &cfg, FX_GROUP, GW_TIER_P2, false);
    assert_string_equal(fx_str(j, "attachments.0.content.body.0.text"), "[P2] FIRING: 2 alerts");
    assert_string_equal(fx_str(j, "attachments.0.content.body.0.color"), "Warning");
    assert_string_equal(fx_str(j, "attachments.0.content.body.2.items.0.text"),
                        "Host 10.0.0.1:80 of upstream 'users' is down");
    fx_done(&f, j);
}

/* A firing P1 notification of n alerts (fx_group_payload_on), summaries "alert <i>:" followed by
 * reps copies of unit (JSON text), each with nlabels labels of label_len bytes. */
static char *group_payload(int n, const char *unit, size_t reps, int nlabels, size_t label_len)
{
    char *payload, *labels = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&labels, &len);

    assert_non_null(mem);
    for (int l = 0; l < nlabels; l++) {
        fprintf(mem, "%s\"l%d\":\"", l > 0 ? "," : "", l);
        for (size_t k = 0; k < label_len; k++)
            fputc('v', mem);
        fputc('"', mem);
    }
    fclose(mem);
    payload = fx_group_payload_on("P1", n, labels, unit, reps);
    free(labels);
    return payload;
}

/* The card's body (borrowed from j). */
static json_t *body_of(json_t *j)
{
    return fx_at(j, "attachments.0.content.body");
}

static size_t containers(json_t *body)
{
    json_t *el;
    size_t i, n = 0;

    json_array_foreach(body, i, el) n += al_json_str_is(el, "type", "Container");
    return n;
}

static void group_of_eight_shows_five_then_three_more_alerts(void **state)
{
    char *payload = group_payload(8, "", 0, 1, 3), want[32];
    json_t *j, *body;
    fx_t f;

    fx_install_ack_secret();
    j = fx_build_json(&f, &al_channel_teams, &cfg, payload, GW_TIER_P1, true);
    body = body_of(j);
    /* title, five Containers, the "more" TextBlock, the footer */
    assert_int_equal(json_array_size(body), 8);
    assert_string_equal(fx_str(body, "0.text"), "[P1] FIRING: 8 alerts");
    for (int i = 1; i <= 5; i++) {
        json_t *c = json_array_get(body, (size_t)i);
        snprintf(want, sizeof(want), "alert %d:", i);
        assert_string_equal(fx_str(c, "type"), "Container");
        assert_string_equal(fx_str(c, "items.0.text"), want);
        assert_true(fx_ack_link_ok(fx_str(c, "items.2.actions.0.url"), i));
    }
    assert_null(strstr(f.req.body, "alert 6:"));
    assert_string_equal(fx_str(body, "6.type"), "TextBlock");
    assert_string_equal(fx_str(body, "6.text"), AL_ELLIPSIS "and 3 more alerts");
    assert_true(json_is_true(fx_at(body, "6.separator")));
    assert_string_equal(fx_str(body, "7.text"), "Breakwater" AL_MIDDOT "breakwater@host");
    fx_done(&f, j);
    free(payload);
}

/* The same words as al_render_alerts: one left is "1 more alert"; five are all shown. */
static void the_more_line_says_alert_for_one_and_is_absent_when_all_fit(void **state)
{
    char *six = group_payload(6, "", 0, 1, 3), *five = group_payload(5, "", 0, 1, 3);
    json_t *j;
    fx_t f;

    j = fx_build_json(&f, &al_channel_teams, &cfg, six, GW_TIER_P1, false);
    assert_int_equal(containers(body_of(j)), 5);
    assert_string_equal(fx_str(body_of(j), "6.text"), AL_ELLIPSIS "and 1 more alert");
    fx_done(&f, j);
    j = fx_build_json(&f, &al_channel_teams, &cfg, five, GW_TIER_P1, false);
    assert_int_equal(json_array_size(body_of(j)), 7);
    assert_int_equal(containers(body_of(j)), 5);
    assert_null(strstr(f.req.body, "more alert"));
    fx_done(&f, j);
    free(six);
    free(five);
}

static void group_of_fifty_stays_under_the_message_limit(void **state)
{
    static const struct {
        const char *unit;
        size_t reps;
        int nlabels;
        size_t label_len;
        size_t shown; /* 0: fewer than five (the budget ends the list) */
    } rows[] = {
        {"", 0, 1, 3, 5},          {"q", 1500, 1, 3, 5},        {"q", 1500, 8, 500, 5},
        {"\\\"", 1500, 4, 900, 5}, {"\\\"", 1500, 32, 1000, 0}, /* the largest alerts: the budget
                                                                   ends the list early */
    };
    char want[64];

    fx_install_ack_secret();
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        char *payload =
            group_payload(50, rows[r].unit, rows[r].reps, rows[r].nlabels, rows[r].label_len);
        json_t *j, *body;
        size_t shown, n;
        fx_t f;

        fx_init(&f, &cfg, payload, GW_TIER_P1, true);
        assert_int_equal(fx_build(&f, &al_channel_teams, 0), 0);
        if (f.req.body_len >= 28 * 1024)
            fail_msg("row %zu: %zu bytes", r, f.req.body_len);
        j = fx_json(&f);
        body = body_of(j);
        shown = containers(body);
        assert_true(shown >= 1 && shown <= 5);
        if (rows[r].shown > 0)
            assert_int_equal(shown, rows[r].shown);
        else
            assert_true(shown < 5);
        n = json_array_size(body);
        assert_int_equal(n, shown + 3);
        snprintf(want, sizeof(want), AL_ELLIPSIS "and %zu more alerts", 50 - shown);
        assert_string_equal(fx_str(json_array_get(body, n - 2), "text"), want);
        assert_string_equal(fx_str(json_array_get(body, n - 1), "text"),
                            "Breakwater" AL_MIDDOT "breakwater@host");
        fx_done(&f, j);
        free(payload);
    }
}

static void replies(void **state)
{
    static const fx_reply_case_t rows[] = {
        {"workflows accepted", 202, NULL, "", AL_REPLY_SENT, 0},
        {"legacy connector", 200, NULL, "1", AL_REPLY_SENT, 0},
        {"legacy throttled under 200", 200, NULL,
         "Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP "
         "error 429 with ContextId tcid=0,server=msgapi",
         AL_REPLY_RETRY, 0},
        {"bad card", 400, NULL, "{\"error\":{\"code\":\"InvalidRequestContent\"}}",
         AL_REPLY_PERMANENT, 0},
        {"flow deleted", 404, NULL, "", AL_REPLY_BROKEN, 0},
        {"sig wrong", 401, NULL, "", AL_REPLY_BROKEN, 0},
        {"throttled", 429, "Retry-After: 10\r\n", "", AL_REPLY_RETRY, 10000},
        {"server", 502, NULL, "", AL_REPLY_RETRY, 0},
    };

    fx_reply_table(&al_channel_teams, &cfg, rows, sizeof(rows) / sizeof(rows[0]));
}

static void registered_for_its_type(void **state)
{
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_TEAMS), &al_channel_teams);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(firing_is_an_adaptive_card_attachment),
        cmocka_unit_test(resolved_is_good_and_acknowledged_accent_without_actions),
        cmocka_unit_test(group_has_a_container_per_alert),
        cmocka_unit_test(group_of_eight_shows_five_then_three_more_alerts),
        cmocka_unit_test(the_more_line_says_alert_for_one_and_is_absent_when_all_fit),
        cmocka_unit_test(group_of_fifty_stays_under_the_message_limit),
        cmocka_unit_test(replies),
        cmocka_unit_test(registered_for_its_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
