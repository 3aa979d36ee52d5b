/* test_alerts_channel_email.c - alerts/channel_email.c: plain-text mail over SMTP.
 *
 * The AL_REQ_SMTP request (URL, bare envelope addresses, the RFC 5322 message as the body) for a
 * firing, a resolved, an acknowledged and a grouped notification: header lines, CRLF, line
 * lengths, RFC 2047 subjects (decoded here independently), header injection refused, the ack
 * link; the reply table over SMTP reply codes.
 */
#include <openssl/evp.h>

#include "test_alerts_channel_fixture.h"

static char *rcpts[] = {"Ops Team <ops@example.com>", " sre@example.com "};
static gw_channel_config_t cfg = {.name = "mail",
                                  .type = GW_CHANNEL_EMAIL,
                                  .smtp_url = "smtps://user:pa55@smtp.example.com:465",
                                  .from = "Breakwater <alerts@example.com>",
                                  .to = rcpts,
                                  .nto = 2};

/* The header block (up to the blank line) and the text after it. */
static void split(const char *msg, char *head, size_t hcap, const char **text)
{
    const char *end = strstr(msg, "\r\n\r\n");

    assert_non_null(end);
    assert_true((size_t)(end - msg) + 3 < hcap);
    memcpy(head, msg, (size_t)(end - msg) + 2);
    head[end - msg + 2] = '\0';
    *text = end + 4;
}

/* Every line ends in CRLF and is at most 998 bytes. */
static void assert_lines_ok(const char *msg)
{
    for (const char *p = msg; *p;) {
        const char *eol = strstr(p, "\r\n");
        assert_non_null(eol);
        assert_true(eol - p <= 998);
        assert_null(memchr(p, '\n', (size_t)(eol - p))); /* no bare LF */
        assert_null(memchr(p, '\r', (size_t)(eol - p))); /* no bare CR */
        p = eol + 2;
    }
}

static void firing_is_an_smtp_request_with_a_plain_text_message(void **state)
{
    char head[4096];
    const char *text;
    fx_t f;

    fx_install_ack_secret();
    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, true);
    assert_int_equal(fx_parts(&f, &al_channel_email), 1);
    assert_int_equal(fx_build(&f, &al_channel_email, 0), 0);
    assert_int_equal(f.req.kind, AL_REQ_SMTP);
    assert_string_equal(f.req.url, "smtps://user:pa55@smtp.example.com:465");
    assert_string_equal(f.req.mail_from, "alerts@example.com");
    assert_int_equal(f.req.nrcpt, 2);
    assert_string_equal(f.req.rcpt[0], "ops@example.com");
    assert_string_equal(f.req.rcpt[1], "sre@example.com");
    assert_int_equal(strlen(f.req.body), f.req.body_len);
    assert_lines_ok(f.req.body);
    split(f.req.body, head, sizeof(head), &text);
    assert_non_null(strstr(head, "From: Breakwater <alerts@example.com>\r\n"));
    assert_non_null(strstr(head, "To: Ops Team <ops@example.com>,  sre@example.com \r\n"));
    assert_non_null(strstr(head, "Subject: [Breakwater] [P0] FIRING: " FX_SUMMARY "\r\n"));
    assert_non_null(strstr(head, "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"));
    assert_non_null(strstr(head, "Message-ID: <" DID "@host>\r\n"));
    assert_non_null(strstr(head, "MIME-Version: 1.0\r\n"));
    assert_non_null(strstr(head, "Content-Type: text/plain; charset=UTF-8\r\n"));
    assert_non_null(strstr(head, "Auto-Submitted: auto-generated\r\n"));
    assert_non_null(strstr(text, "[P0] FIRING: " FX_SUMMARY "\r\n\r\n* " FX_SUMMARY
                                 "\r\n  Key: breaker_open{upstream=\"users\"}\r\n"
                                 "  Labels: upstream=users\r\n"
                                 "  since 2026-01-01T00:00:00Z, count 3, escalation 1\r\n"
                                 "  Acknowledge: " FX_EXTERNAL_URL "/ack/"));
    assert_non_null(strstr(text, "-- \r\nBreakwater" AL_MIDDOT "breakwater@host\r\n"));
    assert_null(strstr(f.req.body, "pa55")); /* credentials stay in the URL */
    fx_dispose(&f);
}

static void ack_link_in_the_text_is_genuine(void **state)
{
    char link[512];
    const char *p;
    fx_t f;

    fx_install_ack_secret();
    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, true);
    assert_int_equal(fx_build(&f, &al_channel_email, 0), 0);
    p = strstr(f.req.body, "Acknowledge: ");
    assert_non_null(p);
    snprintf(link, sizeof(link), "%s", p + strlen("Acknowledge: "));
    *strstr(link, "\r\n") = '\0';
    assert_true(fx_ack_link_ok(link, 42));
    fx_dispose(&f);
}

static void resolved_acknowledged_and_group_subjects(void **state)
{
    static const char *const payloads[] = {FX_RESOLVED, FX_ACKED, FX_GROUP};
    static const char *const subjects[] = {
        "Subject: [Breakwater] [P0] RESOLVED: " FX_SUMMARY "\r\n",
        "Subject: [Breakwater] [P0] ACKNOWLEDGED: " FX_SUMMARY "\r\n",
        "Subject: [Breakwater] [P0] FIRING: 2 alerts\r\n"};

    fx_install_ack_secret();
    for (size_t i = 0; i < 3; i++) {
        fx_t f;
        fx_init(&f, &cfg, payloads[i], GW_TIER_P0, true);
        assert_int_equal(fx_build(&f, &al_channel_email, 0), 0);
        assert_non_null(strstr(f.req.body, subjects[i]));
        if (i < 2)
            assert_null(strstr(f.req.body, "Acknowledge:"));
        else
            assert_non_null(strstr(f.req.body, "* Host 10.0.0.1:80 of upstream 'users' is down"));
        assert_lines_ok(f.req.body);
        fx_dispose(&f);
    }
}

/* A non-ASCII subject is RFC 2047 encoded-words; decoding them (independently, with OpenSSL's
 * base64 decoder) gives the subject back, and no word splits a character. */
static void non_ascii_subject_is_encoded_words(void **state)
{
    const char *payload = FX_PAYLOAD(
        "firing", "P1",
        "{\"alert_id\":\"1\",\"dedup_key\":\"k\",\"summary\":\"上游 'users' 的熔断器已打开：连续 5 "
        "次失败，请尽快处理 ✓\"}");
    char head[4096], decoded[1024] = "";
    const char *text, *p;
    fx_t f;

    fx_init(&f, &cfg, payload, GW_TIER_P1, false);
    assert_int_equal(fx_build(&f, &al_channel_email, 0), 0);
    assert_lines_ok(f.req.body);
    split(f.req.body, head, sizeof(head), &text);
    p = strstr(head, "Subject: =?UTF-8?B?");
    assert_non_null(p);
    for (p = strstr(p, "=?UTF-8?B?"); p != NULL && p < strstr(head, "Date:");
         p = strstr(p + 1, "=?UTF-8?B?")) {
        const char *start = p + 10, *end = strstr(start, "?=");
        unsigned char raw[128];
        int n, pad = 0;
        assert_true(end - p + 2 <= 75); /* an encoded-word is at most 75 characters */
        n = EVP_DecodeBlock(raw, (const unsigned char *)start, (int)(end - start));
        assert_true(n > 0);
        for (const char *q = end - 1; q > start && *q == '='; q--)
            pad++;
        raw[n - pad] = '\0';
        /* each word is whole UTF-8 on its own */
        assert_int_equal(strlen((char *)raw), (size_t)(n - pad));
        assert_true((raw[0] & 0xC0) != 0x80);
        strcat(decoded, (char *)raw);
    }
    assert_string_equal(decoded, "[Breakwater] [P1] FIRING: 上游 'users' 的熔断器已打开：连续 5 "
                                 "次失败，请尽快处理 ✓");
    fx_dispose(&f);
}

static void control_characters_in_a_summary_cannot_add_headers(void **state)
{
    const char *payload = FX_PAYLOAD("firing", "P1",
                                     "{\"alert_id\":\"1\",\"dedup_key\":\"k\",\"summary\":"
                                     "\"x\\r\\nBcc: victim@example.com\\r\\n\\r\\nbody\"}");
    char head[4096];
    const char *text;
    fx_t f;

    fx_init(&f, &cfg, payload, GW_TIER_P1, false);
    assert_int_equal(fx_build(&f, &al_channel_email, 0), 0);
    split(f.req.body, head, sizeof(head), &text);
    assert_null(strstr(head, "Bcc:"));
    assert_non_null(strstr(head, "Subject: =?UTF-8?B?")); /* encoded, not raw */
    assert_lines_ok(f.req.body);
    fx_dispose(&f);
}

static void long_lines_are_cut_under_998_bytes(void **state)
{
    char summary[3001], *payload;
    fx_t f;

    memset(summary, 'L', 3000);
    summary[3000] = '\0';
    assert_true(asprintf(&payload,
                         FX_PAYLOAD("firing", "P1",
                                    "{\"alert_id\":\"1\",\"dedup_key\":\"k\",\"summary\":\"%s\"}"),
                         summary) > 0);
    fx_init(&f, &cfg, payload, GW_TIER_P1, false);
    assert_int_equal(fx_build(&f, &al_channel_email, 0), 0);
    assert_lines_ok(f.req.body);
    fx_dispose(&f);
    free(payload);
}

static void bad_addresses_are_refused(void **state)
{
    static char *bad_to[] = {"ops@example.com\r\nBcc: x@example.com"};
    static char *empty_to[] = {"Ops <>"};
    gw_channel_config_t c = cfg;
    fx_t f;

    fx_init(&f, &c, FX_FIRING, GW_TIER_P0, false);
    c.from = "a@example.com\nBcc: x@example.com";
    assert_int_equal(fx_build(&f, &al_channel_email, 0), AL_EBADINPUT);
    c.from = cfg.from;
    c.to = bad_to;
    c.nto = 1;
    assert_int_equal(fx_build(&f, &al_channel_email, 0), AL_EBADINPUT);
    c.to = empty_to;
    assert_int_equal(fx_build(&f, &al_channel_email, 0), AL_EBADINPUT);
    c.nto = 0;
    assert_int_equal(fx_build(&f, &al_channel_email, 0), AL_EBADINPUT);
    fx_dispose(&f);
}

/* The sender passes the server's last reply code as the status (channel.h, AL_REQ_SMTP). */
static void replies(void **state)
{
    static const fx_reply_case_t rows[] = {
        {"250 accepted", 250, NULL, NULL, AL_REPLY_SENT, 0},
        {"421 closing", 421, NULL, NULL, AL_REPLY_RETRY, 0},
        {"450 mailbox busy", 450, NULL, NULL, AL_REPLY_RETRY, 0},
        {"451 local error", 451, NULL, NULL, AL_REPLY_RETRY, 0},
        {"452 storage", 452, NULL, NULL, AL_REPLY_RETRY, 0},
        {"500 syntax", 500, NULL, NULL, AL_REPLY_BROKEN, 0},
        {"502 not implemented", 502, NULL, NULL, AL_REPLY_BROKEN, 0},
        {"503 bad sequence", 503, NULL, NULL, AL_REPLY_BROKEN, 0},
        {"530 auth required", 530, NULL, NULL, AL_REPLY_BROKEN, 0},
        {"535 auth failed", 535, NULL, NULL, AL_REPLY_BROKEN, 0},
        {"538 encryption required", 538, NULL, NULL, AL_REPLY_BROKEN, 0},
        {"550 no such mailbox", 550, NULL, NULL, AL_REPLY_PERMANENT, 0},
        {"552 storage exceeded", 552, NULL, NULL, AL_REPLY_PERMANENT, 0},
        {"553 name not allowed", 553, NULL, NULL, AL_REPLY_PERMANENT, 0},
        {"554 transaction failed", 554, NULL, NULL, AL_REPLY_PERMANENT, 0},
        {"354 is not final", 354, NULL, NULL, AL_REPLY_RETRY, 0},
    };

    fx_reply_table(&al_channel_email, &cfg, rows, sizeof(rows) / sizeof(rows[0]));
}

static void registered_for_its_type(void **state)
{
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_EMAIL), &al_channel_email);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(firing_is_an_smtp_request_with_a_plain_text_message),
        cmocka_unit_test(ack_link_in_the_text_is_genuine),
        cmocka_unit_test(resolved_acknowledged_and_group_subjects),
        cmocka_unit_test(non_ascii_subject_is_encoded_words),
        cmocka_unit_test(control_characters_in_a_summary_cannot_add_headers),
        cmocka_unit_test(long_lines_are_cut_under_998_bytes),
        cmocka_unit_test(bad_addresses_are_refused),
        cmocka_unit_test(replies),
        cmocka_unit_test(registered_for_its_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
