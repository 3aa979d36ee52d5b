/* test_alerts_channel_render.c - alerts/channel_render.c and channel_sign.c: what the provider
 * channels share.
 *
 * The bounded buffer (cuts at a UTF-8 boundary, never past its max), titles and labels text,
 * grouped and folded messages (five alerts, then "…and N more alerts", within the limit),
 * the generic "code in the body" classifier, ack links through acklink.h, and the signing
 * primitives against published vectors (RFC 4231 for HMAC-SHA256, RFC 4648 for base64) and
 * hashlib.
 */
#include "test_alerts_channel_fixture.h"

static void utf8_prefix_never_ends_inside_a_character(void **state)
{
    const char *s = "ab\xE2\x82\xAC"
                    "c"; /* a b EURO c: 6 bytes */

    assert_int_equal(al_utf8_prefix(s, 6, 10), 6);
    assert_int_equal(al_utf8_prefix(s, 6, 6), 6);
    assert_int_equal(al_utf8_prefix(s, 6, 5), 5);
    assert_int_equal(al_utf8_prefix(s, 6, 4), 2); /* inside the euro sign: drop it whole */
    assert_int_equal(al_utf8_prefix(s, 6, 3), 2);
    assert_int_equal(al_utf8_prefix(s, 6, 2), 2);
    assert_int_equal(al_utf8_prefix(s, 6, 0), 0);
}

static void buffer_is_bounded_and_marks_what_it_cut(void **state)
{
    al_buf_t b;
    char big[2000];
    char *p;

    al_buf_init(&b, 8);
    assert_true(al_buf_puts(&b, "abc"));
    assert_int_equal(al_buf_room(&b), 5);
    assert_true(al_buf_puts(&b, "de\xE2\x82\xAC")); /* 5 bytes: fit exactly */
    assert_false(b.full);
    assert_false(al_buf_puts(&b, "x")); /* nothing left */
    assert_true(b.full);
    assert_string_equal(b.p, "abcde\xE2\x82\xAC");
    al_buf_dispose(&b);

    al_buf_init(&b, 8);
    assert_true(al_buf_puts(&b, "abcd"));
    assert_false(al_buf_puts(&b, "e\xE2\x82\xAC"
                                 "f")); /* e + euro = 4 fit, f does not */
    assert_string_equal(b.p, "abcde\xE2\x82\xAC");
    assert_true(b.full);
    assert_false(al_buf_puts(&b, "g"));
    assert_int_equal(b.len, 8);
    p = al_buf_steal(&b);
    assert_string_equal(p, "abcde\xE2\x82\xAC");
    assert_null(b.p);
    free(p);

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    al_buf_init(&b, 100000);
    assert_true(al_buf_printf(&b, "<%s>", big)); /* longer than the on-stack format buffer */
    assert_int_equal(b.len, sizeof(big) + 1);
    al_buf_dispose(&b);

    al_buf_init(&b, 10);
    p = al_buf_steal(&b); /* nothing added: "" */
    assert_string_equal(p, "");
    free(p);
}

static void title_is_cut_utf8_safe(void **state)
{
    const char *payload =
        FX_PAYLOAD("escalated", "P1",
                   "{\"alert_id\":\"1\",\"dedup_key\":\"k\",\"summary\":\"\xE2\x82\xAC\xE2\x82\xAC"
                   "\xE2\x82\xAC\xE2\x82\xAC\"}");
    char title[20];
    fx_t f;

    fx_init(&f, &(gw_channel_config_t){.name = "x"}, payload, GW_TIER_P1, false);
    al_message_title(&f.m, title, sizeof(title));
    /* "[P1] ESCALATED: " is 16 bytes; 3 more fit, but a euro sign is 3: one goes in */
    assert_string_equal(title, "[P1] ESCALATED: \xE2\x82\xAC");
    al_message_title(&f.m, title, 17);
    assert_string_equal(title, "[P1] ESCALATED: ");
    fx_dispose(&f);
}

static void words_follow_kind_and_status(void **state)
{
    static const struct {
        const char *payload;
        const char *word;
    } rows[] = {
        {FX_FIRING, "FIRING"},
        {FX_RESOLVED, "RESOLVED"},
        {FX_ACKED, "ACKNOWLEDGED"},
        {FX_PAYLOAD("escalated", "P0", FX_ALERT("1", "firing", "s")), "ESCALATED"},
        {FX_PAYLOAD("repeat", "P0", FX_ALERT("1", "firing", "s")), "REPEAT"},
    };

    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        fx_t f;
        fx_init(&f, &(gw_channel_config_t){.name = "x"}, rows[i].payload, GW_TIER_P0, false);
        assert_string_equal(al_message_word(&f.m), rows[i].word);
        fx_dispose(&f);
    }
}

static void labels_text_is_sorted(void **state)
{
    json_t *labels = json_pack("{s:s, s:s, s:s}", "zone", "b", "app", "x", "host", "h1");
    al_buf_t b;

    al_buf_init(&b, 100);
    assert_true(al_labels_text(&b, labels));
    assert_string_equal(b.p, "app=x, host=h1, zone=b");
    al_buf_dispose(&b);
    json_decref(labels);
}

static void code_classifier_table(void **state)
{
    static const al_code_rule_t rules[] = {
        {7, AL_REPLY_BROKEN, 0},
        {8, AL_REPLY_RETRY, 5000},
    };
    static const struct {
        long status;
        bool has;
        int64_t code;
        al_reply_class_t want;
        uint64_t ra;
    } rows[] = {
        {200, true, 0, AL_REPLY_SENT, 0},      {200, true, 7, AL_REPLY_BROKEN, 0},
        {200, true, 8, AL_REPLY_RETRY, 5000},  {200, true, 9, AL_REPLY_PERMANENT, 0},
        {200, false, 0, AL_REPLY_RETRY, 0},    {400, true, 8, AL_REPLY_RETRY, 5000},
        {400, true, 9, AL_REPLY_PERMANENT, 0}, {403, true, 9, AL_REPLY_BROKEN, 0},
        {400, true, 0, AL_REPLY_PERMANENT, 0}, {503, true, 7, AL_REPLY_RETRY, 0},
        {429, true, 7, AL_REPLY_RETRY, 0},     {400, false, 0, AL_REPLY_PERMANENT, 0},
    };
    al_channel_ctx_t ctx = {.now_ms = T0};

    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        al_reply_t r = {.transport = AL_XFER_REPLY, .status = rows[i].status, .headers = ""};
        uint64_t ra = 0;
        al_reply_class_t got = al_classify_code(&ctx, &r, rows[i].has, rows[i].code, rules, 2, &ra);
        if (got != rows[i].want || ra != rows[i].ra)
            fail_msg("row %zu: got %s %llu", i, al_reply_class_name(got), (unsigned long long)ra);
    }
}

static void ack_links_only_with_external_url_secret_and_a_numeric_id(void **state)
{
    gw_alerts_config_t with = {.external_url = FX_EXTERNAL_URL "/"}, without = {0};
    al_channel_ctx_t ctx = {.alerts = &with, .now_ms = T0};
    char buf[256];

    fx_install_ack_secret();
    assert_true(al_channel_ack_link(&ctx, "42", buf, sizeof(buf)) > 0);
    assert_true(fx_ack_link_ok(buf, 42)); /* trailing slash of external_url dropped */
    assert_int_equal(al_channel_ack_link(&ctx, "0", buf, sizeof(buf)), 0);
    assert_int_equal(al_channel_ack_link(&ctx, "42x", buf, sizeof(buf)), 0);
    assert_int_equal(al_channel_ack_link(&ctx, "-1", buf, sizeof(buf)), 0);
    assert_int_equal(al_channel_ack_link(&ctx, "", buf, sizeof(buf)), 0);
    assert_int_equal(al_channel_ack_link(&ctx, "99999999999999999999", buf, sizeof(buf)), 0);
    assert_int_equal(al_channel_ack_link(&ctx, "42", buf, 20), 0); /* does not fit */
    ctx.alerts = &without;
    assert_int_equal(al_channel_ack_link(&ctx, "42", buf, sizeof(buf)), 0);
    ctx.alerts = NULL; /* classify after a reload removed the channel */
    assert_int_equal(al_channel_ack_link(&ctx, "42", buf, sizeof(buf)), 0);
}

/* RFC 4231 test case 2. */
static void hmac_sha256_matches_rfc_4231(void **state)
{
    static const unsigned char want[32] = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e,
                                           0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
                                           0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83,
                                           0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};
    unsigned char mac[32];

    assert_int_equal(al_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, mac), 0);
    assert_memory_equal(mac, want, 32);
}

/* RFC 4648 section 10. */
static void base64_matches_rfc_4648(void **state)
{
    static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const out[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char buf[16];

    for (size_t i = 0; i < 7; i++) {
        assert_int_equal(al_base64((const unsigned char *)in[i], strlen(in[i]), buf),
                         strlen(out[i]));
        assert_string_equal(buf, out[i]);
    }
}

static void url_escape_keeps_only_unreserved(void **state)
{
    al_buf_t b;

    al_buf_init(&b, 256);
    assert_true(al_url_escape(&b, "aZ09-._~ +/=&?%\xE2\x82\xAC"));
    assert_string_equal(b.p, "aZ09-._~%20%2B%2F%3D%26%3F%25%E2%82%AC");
    al_buf_dispose(&b);
}

/* python3 -c 'import hashlib; print(hashlib.sha256(b"x"*300).hexdigest())' */
static void stable_key_hashes_only_what_is_too_long(void **state)
{
    char key[301], out[256];

    al_stable_key("short", 255, out);
    assert_string_equal(out, "short");
    memset(key, 'x', 300);
    key[300] = '\0';
    al_stable_key(key, 255, out);
    assert_string_equal(out,
                        "sha256:0d4e2ca9e9cbced7a7a5380eb29e1a3783b9b6d0db72de36a1051038e1c1fbc7");
    key[255] = '\0';
    al_stable_key(key, 255, out); /* exactly at the limit: kept */
    assert_string_equal(out, key);
}

static void retry_secs_is_capped(void **state)
{
    assert_int_equal(al_retry_secs(-5), 0);
    assert_int_equal(al_retry_secs(0), 0);
    assert_int_equal(al_retry_secs(3), 3000);
    assert_int_equal(al_retry_secs(INT64_MAX), AL_RETRY_AFTER_MAX_MS);
}

/* n alerts (ids 1..n, summary "alert i" + pad bytes of 'x'), as the engine writes a group. */
static char *group_payload(int n, size_t pad)
{
    char *alerts = NULL, *payload = NULL, *fill = calloc(1, pad + 1);
    size_t len = 0;
    FILE *mem = open_memstream(&alerts, &len);

    assert_non_null(fill);
    memset(fill, 'x', pad);
    for (int i = 0; i < n; i++)
        fprintf(mem,
                "%s{\"alert_id\":\"%d\",\"dedup_key\":\"k%d\",\"status\":\"firing\","
                "\"summary\":\"alert %d%s\",\"labels\":{}}",
                i ? "," : "", i + 1, i, i + 1, fill);
    fclose(mem);
    assert_true(asprintf(&payload, FX_PAYLOAD("firing", "P2", "%s"), alerts) > 0);
    free(alerts);
    free(fill);
    return payload;
}

static void line_alert(const al_channel_ctx_t *ctx, const al_message_t *m, const al_alert_view_t *v,
                       al_buf_t *b)
{
    (void)ctx;
    (void)m;
    al_buf_printf(b, "- %s\n", v->summary);
}

static void sentence_alert(const al_channel_ctx_t *ctx, const al_message_t *m,
                           const al_alert_view_t *v, al_buf_t *b)
{
    (void)ctx;
    (void)m;
    al_buf_printf(b, " %s.", v->summary);
}

static void a_big_group_shows_five_and_says_how_many_more_alerts(void **state)
{
    char *payload = group_payload(8, 0);
    al_buf_t b;
    fx_t f;

    fx_init(&f, &(gw_channel_config_t){.name = "x"}, payload, GW_TIER_P2, false);
    al_buf_init(&b, 4096);
    assert_int_equal(al_render_alerts(&f.ctx, &f.m, &b, line_alert, 50), 8); /* all accounted */
    assert_string_equal(b.p, "- alert 1\n- alert 2\n- alert 3\n- alert 4\n- alert 5\n" AL_ELLIPSIS
                             "and 3 more alerts\n");
    al_buf_dispose(&b);
    /* the caller's own cap, and the layout of sentences (the voice channel) */
    al_buf_init(&b, 4096);
    assert_int_equal(al_render_alerts(&f.ctx, &f.m, &b, sentence_alert, 2), 8);
    assert_string_equal(b.p, " alert 1. alert 2. " AL_ELLIPSIS "and 6 more alerts.");
    al_buf_dispose(&b);
    fx_dispose(&f);
    free(payload);

    /* no "more" line when everything is shown; one left is "1 more alert" */
    payload = group_payload(5, 0);
    fx_init(&f, &(gw_channel_config_t){.name = "x"}, payload, GW_TIER_P2, false);
    al_buf_init(&b, 4096);
    assert_int_equal(al_render_alerts(&f.ctx, &f.m, &b, line_alert, 50), 5);
    assert_null(strstr(b.p, "more"));
    al_buf_dispose(&b);
    al_buf_init(&b, 4096);
    assert_int_equal(al_render_alerts(&f.ctx, &f.m, &b, line_alert, 4), 5);
    assert_non_null(strstr(b.p, "- alert 4\n" AL_ELLIPSIS "and 1 more alert\n"));
    al_buf_dispose(&b);
    fx_dispose(&f);
    free(payload);
}

static void the_more_line_fits_under_the_limit_whatever_the_alerts(void **state)
{
    char *payload = group_payload(50, 900); /* each alert ~ 900 B: two fill 2048 B */
    al_buf_t b;
    fx_t f;

    fx_init(&f, &(gw_channel_config_t){.name = "x"}, payload, GW_TIER_P2, false);
    for (size_t max = 200; max <= 4096; max += 487) {
        al_buf_init(&b, max);
        assert_int_equal(al_render_alerts(&f.ctx, &f.m, &b, line_alert, 50), 50);
        assert_true(b.len <= max);
        assert_non_null(strstr(b.p, "more alerts")); /* after a cut alert: on the same line */
        assert_non_null(strstr(b.p, "- alert 1"));
        al_buf_dispose(&b);
    }
    fx_dispose(&f);
    free(payload);
}

/* A folded notification of 30 alerts through the providers that render with al_render_alerts:
 * five spelled out, "…and 25 more alerts", within the provider's size limit. */
static void providers_fold_many_alerts_into_one_bounded_message(void **state)
{
    static const char *const mobiles[] = {"+8613800000000"};
    const gw_channel_config_t wecom_md = {.name = "w", .url = "https://qyapi.example/send"};
    const gw_channel_config_t wecom_text = {
        .name = "w", .url = "https://qyapi.example/send", .to = (char **)mobiles, .nto = 1};
    const gw_channel_config_t ding = {.name = "d", .url = "https://oapi.example/send"};
    const struct {
        const al_channel_ops_t *ops;
        const gw_channel_config_t *cfg;
        const char *field;
        size_t limit;
    } rows[] = {
        {&al_channel_wecom, &wecom_md, "markdown.content", 4096},
        {&al_channel_wecom, &wecom_text, "text.content", 2048},
        {&al_channel_dingtalk, &ding, "markdown.text", 20000},
    };
    char *payload = group_payload(30, 300);

    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        fx_t f;
        json_t *j;
        const char *text;
        fx_init(&f, rows[i].cfg, payload, GW_TIER_P2, false);
        assert_int_equal(fx_build(&f, rows[i].ops, 0), 0);
        j = fx_json(&f);
        text = fx_str(j, rows[i].field);
        assert_true(strlen(text) <= rows[i].limit);
        if (rows[i].limit > 2048) /* five of 300 B fit: exactly five shown */
            assert_non_null(strstr(text, "alert 5"));
        assert_null(strstr(text, "alert 6x"));
        assert_non_null(strstr(text, "more alerts"));
        assert_non_null(strstr(text, "Breakwater"));
        json_decref(j);
        fx_dispose(&f);
    }
    free(payload);
}

static void every_type_has_a_channel(void **state)
{
    for (int t = 0; t < GW_CHANNEL_TYPE_COUNT; t++) {
        const al_channel_ops_t *ops = al_channel_ops((gw_channel_type_t)t);
        assert_non_null(ops);
        assert_string_equal(ops->type, al_channel_type_name((gw_channel_type_t)t));
        assert_true((ops->build != NULL) != (ops->deliver != NULL));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(utf8_prefix_never_ends_inside_a_character),
        cmocka_unit_test(buffer_is_bounded_and_marks_what_it_cut),
        cmocka_unit_test(title_is_cut_utf8_safe),
        cmocka_unit_test(words_follow_kind_and_status),
        cmocka_unit_test(labels_text_is_sorted),
        cmocka_unit_test(code_classifier_table),
        cmocka_unit_test(ack_links_only_with_external_url_secret_and_a_numeric_id),
        cmocka_unit_test(hmac_sha256_matches_rfc_4231),
        cmocka_unit_test(base64_matches_rfc_4648),
        cmocka_unit_test(url_escape_keeps_only_unreserved),
        cmocka_unit_test(stable_key_hashes_only_what_is_too_long),
        cmocka_unit_test(retry_secs_is_capped),
        cmocka_unit_test(every_type_has_a_channel),
        cmocka_unit_test(a_big_group_shows_five_and_says_how_many_more_alerts),
        cmocka_unit_test(the_more_line_fits_under_the_limit_whatever_the_alerts),
        cmocka_unit_test(providers_fold_many_alerts_into_one_bounded_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
