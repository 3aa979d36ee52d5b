/* test_alerts_channel_twilio.c - alerts/channel_twilio.c: Twilio voice calls.
 *
 * One Calls.json request per number, form-encoded To/From/Twiml with HTTP basic auth (the
 * header checked against a base64 computed independently); TwiML with <Say> and, for a single
 * alert with an ack link, <Gather> whose action is the signed link; no call for resolved or
 * acknowledged notifications; the reply table (201 queued; Twilio's error codes).
 */
#include "test_alerts_channel_fixture.h"

#define SID "AC0123456789abcdef0123456789abcdef"
#define TOKEN "tw1l10-t0ken"
/* python3 -c 'import base64; print(base64.b64encode(
 *   b"AC0123456789abcdef0123456789abcdef:tw1l10-t0ken").decode())' */
#define BASIC "Basic QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjp0dzFsMTAtdDBrZW4="

static char *numbers[] = {"+15550001111", "+15550002222"};
static gw_channel_config_t cfg = {.name = "phone",
                                  .type = GW_CHANNEL_TWILIO,
                                  .account_sid = SID,
                                  .auth_token = TOKEN,
                                  .from = "+15550000000",
                                  .to = numbers,
                                  .nto = 2};

/* The value of form field name in body, percent-decoded (a static buffer). */
static const char *form_field(const char *body, const char *name)
{
    static char out[16384];
    size_t n = strlen(name), o = 0;
    const char *p = body;

    while (p != NULL && *p) {
        if (strncmp(p, name, n) == 0 && p[n] == '=') {
            for (p += n + 1; *p && *p != '&' && o + 1 < sizeof(out); p++) {
                if (*p == '%' && p[1] && p[2]) {
                    char hex[3] = {p[1], p[2], 0};
                    out[o++] = (char)strtol(hex, NULL, 16);
                    p += 2;
                } else {
                    out[o++] = *p == '+' ? ' ' : *p;
                }
            }
            out[o] = '\0';
            return out;
        }
        p = strchr(p, '&');
        if (p != NULL)
            p++;
    }
    return NULL;
}

static void firing_calls_each_number_with_twiml_and_basic_auth(void **state)
{
    fx_t f;
    const char *twiml;

    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, false);
    assert_int_equal(fx_parts(&f, &al_channel_twilio), 2);
    for (size_t i = 0; i < 2; i++) {
        char key[64];
        assert_int_equal(fx_build(&f, &al_channel_twilio, i), 0);
        assert_string_equal(f.req.url,
                            "https://api.twilio.com/2010-04-01/Accounts/" SID "/Calls.json");
        assert_string_equal(f.req.content_type, "application/x-www-form-urlencoded");
        assert_string_equal(fx_header(&f.req, "Authorization"), BASIC);
        assert_string_equal(form_field(f.req.body, "To"), numbers[i]);
        assert_string_equal(form_field(f.req.body, "From"), "+15550000000");
        snprintf(key, sizeof(key), DID ":call%zu", i);
        assert_string_equal(f.req.idempotency_key, key); /* each call its own key */
        assert_null(strstr(f.req.body, TOKEN));
    }
    twiml = form_field(f.req.body, "Twiml");
    assert_non_null(twiml);
    assert_non_null(strstr(twiml, "<Response><Say>Breakwater alert, priority P 0, firing. "
                                  "Circuit breaker for upstream &apos;users&apos; opened: 5 "
                                  "consecutive failures.</Say>"));
    assert_null(strstr(twiml, "<Gather")); /* no external_url: nothing to press */
    assert_non_null(strstr(twiml, "</Response>"));
    fx_dispose(&f);
}

static void ack_link_is_the_gather_action(void **state)
{
    fx_t f;
    const char *twiml, *action;
    char link[512];

    fx_install_ack_secret();
    fx_init(&f, &cfg, FX_FIRING, GW_TIER_P0, true);
    assert_int_equal(fx_build(&f, &al_channel_twilio, 0), 0);
    twiml = form_field(f.req.body, "Twiml");
    assert_non_null(strstr(twiml, "<Gather numDigits=\"1\""));
    assert_non_null(strstr(twiml, "method=\"GET\""));
    assert_non_null(strstr(twiml, "Press 1 to acknowledge.</Say>"));
    action = strstr(twiml, "action=\"");
    assert_non_null(action);
    snprintf(link, sizeof(link), "%s", action + strlen("action=\""));
    *strchr(link, '"') = '\0';
    assert_true(fx_ack_link_ok(link, 42));
    assert_true(strlen(twiml) < 4000);
    fx_dispose(&f);
}

static void resolved_and_acknowledged_place_no_call(void **state)
{
    fx_t f;

    fx_init(&f, &cfg, FX_RESOLVED, GW_TIER_P0, true);
    assert_int_equal(fx_parts(&f, &al_channel_twilio), 0);
    fx_dispose(&f);
    fx_init(&f, &cfg, FX_ACKED, GW_TIER_P0, true);
    assert_int_equal(fx_parts(&f, &al_channel_twilio), 0);
    fx_dispose(&f);
}

static void group_is_read_as_a_count_and_offers_no_single_ack(void **state)
{
    fx_t f;
    const char *twiml;

    fx_install_ack_secret();
    fx_init(&f, &cfg, FX_GROUP, GW_TIER_P0, true);
    assert_int_equal(fx_build(&f, &al_channel_twilio, 1), 0);
    twiml = form_field(f.req.body, "Twiml");
    assert_non_null(strstr(twiml, "firing. 2 alerts. Circuit breaker"));
    assert_non_null(strstr(twiml, "Host 10.0.0.1:80 of upstream &apos;users&apos; is down."));
    assert_null(strstr(twiml, "<Gather"));
    fx_dispose(&f);
}

static void twiml_escapes_and_stays_under_4000_characters(void **state)
{
    char summary[3001], *payload;
    fx_t f;
    const char *twiml;

    for (size_t i = 0; i < 3000; i++)
        summary[i] = "<&>'"[i % 4];
    summary[3000] = '\0';
    assert_true(asprintf(&payload,
                         FX_PAYLOAD("escalated", "P0",
                                    "{\"alert_id\":\"1\",\"dedup_key\":\"k\",\"summary\":\"%s\"}"),
                         summary) > 0);
    fx_init(&f, &cfg, payload, GW_TIER_P0, false);
    assert_int_equal(fx_build(&f, &al_channel_twilio, 0), 0);
    twiml = form_field(f.req.body, "Twiml");
    assert_true(strlen(twiml) < 4000);
    assert_non_null(strstr(twiml, "escalated."));
    assert_null(strstr(twiml, "<&")); /* every < & > ' of the summary is an entity */
    assert_non_null(strstr(twiml, "</Response>"));
    fx_dispose(&f);
    free(payload);
}

static void url_replaces_the_api_base(void **state)
{
    gw_channel_config_t c = cfg;
    fx_t f;

    c.url = "http://127.0.0.1:8999/";
    fx_init(&f, &c, FX_FIRING, GW_TIER_P0, false);
    assert_int_equal(fx_build(&f, &al_channel_twilio, 0), 0);
    assert_string_equal(f.req.url, "http://127.0.0.1:8999/2010-04-01/Accounts/" SID "/Calls.json");
    assert_int_equal(fx_build(&f, &al_channel_twilio, 2), AL_EBADINPUT); /* only 2 numbers */
    c.auth_token = NULL;
    assert_int_equal(fx_build(&f, &al_channel_twilio, 0), AL_EBADINPUT);
    fx_dispose(&f);
}

static void replies(void **state)
{
    static const fx_reply_case_t rows[] = {
        {"queued", 201, NULL, "{\"sid\":\"CA123\",\"status\":\"queued\"}", AL_REPLY_SENT, 0},
        {"initiated", 201, NULL, "{\"sid\":\"CA123\",\"status\":\"initiated\"}", AL_REPLY_SENT, 0},
        {"201 failed", 201, NULL, "{\"sid\":\"CA123\",\"status\":\"failed\"}", AL_REPLY_RETRY, 0},
        {"200 queued", 200, NULL, "{\"status\":\"queued\"}", AL_REPLY_RETRY, 0},
        {"201 not JSON", 201, NULL, "<TwilioResponse/>", AL_REPLY_RETRY, 0},
        {"auth", 401, NULL,
         "{\"code\":20003,\"message\":\"Authenticate\",\"more_info\":\"https://www.twilio.com/"
         "docs/errors/20003\",\"status\":401}",
         AL_REPLY_BROKEN, 0},
        {"not found", 404, NULL, "{\"code\":20404,\"message\":\"not found\",\"status\":404}",
         AL_REPLY_BROKEN, 0},
        {"too many", 429, NULL, "{\"code\":20429,\"message\":\"Too Many Requests\"}",
         AL_REPLY_RETRY, 0},
        {"invalid To", 400, NULL,
         "{\"code\":21211,\"message\":\"The 'To' number +1555 is not a valid phone number.\","
         "\"status\":400}",
         AL_REPLY_PERMANENT, 0},
        {"invalid From", 400, NULL, "{\"code\":21212,\"message\":\"Invalid From\"}",
         AL_REPLY_BROKEN, 0},
        {"From not verified", 400, NULL, "{\"code\":21210,\"message\":\"not verified\"}",
         AL_REPLY_BROKEN, 0},
        {"geo permission", 400, NULL, "{\"code\":21215,\"message\":\"geo\"}", AL_REPLY_BROKEN, 0},
        {"other 400", 400, NULL, "{\"code\":21205,\"message\":\"Url is not a valid url\"}",
         AL_REPLY_PERMANENT, 0},
        {"server", 503, NULL, "{\"code\":20500}", AL_REPLY_RETRY, 0},
    };

    fx_reply_table(&al_channel_twilio, &cfg, rows, sizeof(rows) / sizeof(rows[0]));
    fx_truncated_is_not_sent(&al_channel_twilio, &cfg, 201, "{\"status\":\"queued\"}");
}

static void registered_for_its_type(void **state)
{
    assert_ptr_equal(al_channel_ops(GW_CHANNEL_TWILIO), &al_channel_twilio);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(firing_calls_each_number_with_twiml_and_basic_auth),
        cmocka_unit_test(ack_link_is_the_gather_action),
        cmocka_unit_test(resolved_and_acknowledged_place_no_call),
        cmocka_unit_test(group_is_read_as_a_count_and_offers_no_single_ack),
        cmocka_unit_test(twiml_escapes_and_stays_under_4000_characters),
        cmocka_unit_test(url_replaces_the_api_base),
        cmocka_unit_test(replies),
        cmocka_unit_test(registered_for_its_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
