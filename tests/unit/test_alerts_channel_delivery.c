/* test_alerts_channel_delivery.c - every provider channel end to end: a real engine on a real
 * SQLite file, the real sender on a libuv loop, and tests/integration/fake_providers.py on
 * loopback answering as each provider would.
 *
 * The fake recomputes DingTalk's and Feishu's signatures its own way (Python hmac) from the
 * shared secrets, checks Opsgenie's GenieKey, Twilio's basic auth and PagerDuty's event schema,
 * takes mail over SMTP, and answers with the providers' real success and error shapes; so these
 * tests show that what the channels build is accepted, that their classifiers read the real
 * replies right (a 200 with errcode 310000 is a failure, not a delivery), and that the sender's
 * SMTP path (AL_REQ_SMTP) works. The fake's own checks are run first (--self-test).
 *
 * Each test ends by closing the sender and asserting uv_loop_close() == 0 (sender_stop).
 */
#include "acklink.h"
#include "test_alerts_live_fixture.h"

#define RKEY "R0UT1NGK3Y0123456789abcdef012345"
#define SID "AC0123456789abcdef0123456789abcdef"
#define CHANNELS "[chat, ding, fs, wc, teams, pager, genie, phone, mail, am]"
#define BREAKER "{\"upstream\":\"users\",\"reason\":\"trial_failed\"}"

/* ---- the fake providers ---- */

typedef struct fake {
    pid_t pid;
    int port, smtp_port;
} fake_t;

static void fake_start(fake_t *p)
{
    char path[512], out[128];
    const char *argv[] = {"python3",
                          path,
                          "--dingtalk-secret",
                          "SECd1ngtalk",
                          "--dingtalk-keyword",
                          "Breakwater",
                          "--feishu-secret",
                          "f31shu-secret",
                          "--wecom-key",
                          "w3c0m",
                          "--pagerduty-key",
                          RKEY,
                          "--opsgenie-key",
                          "g3n1e",
                          "--twilio-sid",
                          SID,
                          "--twilio-token",
                          "tw1l10",
                          NULL};

    live_script_path(path, sizeof(path), "fake_providers.py");
    p->pid = live_python_start(argv, out, sizeof(out), 2); /* "PORT n" and "SMTP m" */
    if (sscanf(out, "PORT %d\nSMTP %d", &p->port, &p->smtp_port) != 2)
        fail_msg("fake providers did not start: '%s'", out);
}

static void fake_stop(fake_t *p)
{
    live_child_stop(&p->pid);
}

/* A blocking request to the fake's control endpoints (the loop is not running). */
static json_t *fake_call(const fake_t *p, const char *path, const char *post)
{
    return live_control(p->port, path, post);
}

/* The recorded requests of provider p (a new array). */
static json_t *fake_requests(const fake_t *f, const char *provider)
{
    json_t *all = fake_call(f, "/_requests", NULL), *out = json_array(), *r;
    size_t i;

    json_array_foreach(json_object_get(all, "requests"), i, r)
    {
        if (strcmp(json_string_value(json_object_get(r, "provider")), provider) == 0)
            json_array_append(out, r);
    }
    json_decref(all);
    return out;
}

/* True when request r passed the fake's check `what`. */
static bool verified(json_t *r, const char *what)
{
    json_t *v;
    size_t i;

    json_array_foreach(json_object_get(r, "verified"), i, v)
    {
        if (strcmp(json_string_value(v), what) == 0)
            return true;
    }
    return false;
}

/* ---- engine + sender ---- */

typedef struct fx {
    char dir[64];
    fake_t fake;
    al_db_t *db;
    gw_config_t *cfg;
    al_engine_t *e;
    uint64_t rng;
    al_engine_options_t eopt;
    uv_loop_t loop;
    al_sender_t *s;
    al_sender_options_t sopt;
    json_t *logs;
    bool (*until)(struct fx *f);
} fx_t;

/* The config: every provider channel on every tier, pointing at the fake, with the secrets
 * given (the fake knows the right ones). */
static char *config_yaml(const fx_t *f, const char *ding_secret, const char *feishu_secret)
{
    char *yaml = NULL;
    int p = f->fake.port;

    assert_true(
        asprintf(&yaml,
                 "upstreams:\n  u: { hosts: [\"127.0.0.1:9001\"] }\n"
                 "routes:\n  - { name: r, match: { path_prefix: / }, upstream: u }\n"
                 "alerts:\n"
                 "  external_url: \"http://127.0.0.1:%d/gw\"\n"
                 "  channels:\n"
                 "    chat: { type: slack, url: \"http://127.0.0.1:%d/slack/T0/B0/XSECRET\" }\n"
                 "    ding: { type: dingtalk, url: \"http://127.0.0.1:%d/dingtalk/robot/send?"
                 "access_token=ding-token\", secret: \"%s\" }\n"
                 "    fs: { type: feishu, url: \"http://127.0.0.1:%d/feishu/open-apis/bot/v2/hook/"
                 "fstoken\", secret: \"%s\" }\n"
                 "    wc: { type: wecom, url: \"http://127.0.0.1:%d/wecom/cgi-bin/webhook/send?"
                 "key=w3c0m\" }\n"
                 "    teams: { type: teams, url: \"http://127.0.0.1:%d/teams/workflow\" }\n"
                 "    pager: { type: pagerduty, routing_key: \"" RKEY "\", "
                 "url: \"http://127.0.0.1:%d/pagerduty/v2/enqueue\" }\n"
                 "    genie: { type: opsgenie, api_key: \"g3n1e\", url: "
                 "\"http://127.0.0.1:%d/opsgenie\" "
                 "}\n"
                 "    phone: { type: twilio, account_sid: \"" SID "\", auth_token: \"tw1l10\", "
                 "from: \"+15550000000\", to: [\"+15550001111\"], url: "
                 "\"http://127.0.0.1:%d/twilio\" }\n"
                 "    mail: { type: email, smtp_url: \"smtp://127.0.0.1:%d\", "
                 "from: \"Breakwater <bw@example.com>\", to: [\"ops@example.com\"] }\n"
                 "    am: { type: alertmanager, url: \"http://127.0.0.1:%d/alertmanager/hook\" }\n"
                 "  tiers:\n    P0: { channels: " CHANNELS " }\n    P1: { channels: " CHANNELS
                 " }\n"
                 "    P2: { channels: " CHANNELS " }\n"
                 "  rules: { breaker_open: P1, delivery_failing: off }\n"
                 "  delivery: { backoff: 50ms, max_backoff: 200ms }\n",
                 p, p, p, ding_secret, p, feishu_secret, p, p, p, p, p, f->fake.smtp_port, p) > 0);
    return yaml;
}

static fx_t *fx_new(const char *ding_secret, const char *feishu_secret)
{
    fx_t *f = calloc(1, sizeof(*f));
    uint8_t secret[AL_ACK_SECRET_LEN];

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/bw_test_channels.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    fake_start(&f->fake);
    f->cfg = eng_config(config_yaml(f, ding_secret, feishu_secret));
    memset(secret, 0x5a, sizeof(secret));
    al_ack_set_secret(secret); /* ack links in the messages */
    f->eopt.random = live_counter_random;
    f->eopt.random_ctx = &f->rng;
    f->eopt.source = "breakwater@test";
    live_engine_open(f->dir, f->cfg, &f->eopt, &f->db, &f->e);
    f->logs = json_array();
    f->sopt.log = live_capture_log;
    f->sopt.log_ctx = f->logs;
    f->sopt.request_timeout_ms = 3000;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->s = al_sender_new_with(&f->loop, f->e, &f->cfg->alerts, "breakwater@test", &f->sopt);
    assert_non_null(f->s);
    return f;
}

static int teardown(void **state)
{
    fx_t *f = *state;

    live_sender_close(f->s, &f->loop);
    fake_stop(&f->fake);
    live_engine_close(&f->db, &f->e);
    gw_config_free(f->cfg);
    json_decref(f->logs);
    eng_rmtree(f->dir);
    free(f);
    return 0;
}

static bool check(void *ctx)
{
    fx_t *f = ctx;

    return f->until(f);
}

static bool run_until(fx_t *f, bool (*until)(fx_t *f), uint64_t timeout_ms)
{
    f->until = until;
    return live_run_until(&f->loop, check, f, timeout_ms);
}

/* status of channel's delivery of kind */
static void assert_status(fx_t *f, const char *channel, const char *kind, const char *want)
{
    char *got = eng_q_text(f->db,
                           "SELECT status || ' ' || coalesce(last_error, '') FROM deliveries "
                           "WHERE channel = %Q AND kind = %Q",
                           channel, kind);

    if (strncmp(got, want, strlen(want)) != 0)
        fail_msg("%s %s: got '%s', want '%s'", channel, kind, got, want);
    free(got);
}

static bool all_finished(fx_t *f)
{
    return eng_q_int(f->db,
                     "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')") ==
               0 &&
           eng_q_int(f->db, "SELECT count(*) FROM deliveries") > 0;
}

static bool resolved_finished(fx_t *f)
{
    return all_finished(f) &&
           eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE kind = 'resolved'") == 10;
}

static bool throttles_seen(fx_t *f)
{
    return eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE channel = 'mail' AND status = "
                            "'sent'") == 1 &&
           eng_q_int(f->db,
                     "SELECT count(*) FROM deliveries WHERE channel = 'ding' AND attempts >= 1 "
                     "AND status = 'pending'") == 1 &&
           eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'sent'") >= 8;
}

static void raise_event(fx_t *f, const char *kind)
{
    assert_int_equal(al_engine_event(f->e, kind, -1, BREAKER, live_wall_ms()), 0);
    al_sender_kick(f->s);
}

static void assert_no_secret_logged(fx_t *f)
{
    char *all = json_dumps(f->logs, JSON_COMPACT);
    static const char *const secrets[] = {"SECd1ngtalk", "f31shu", "w3c0m",  RKEY,
                                          "g3n1e",       "tw1l10", "XSECRET"};

    assert_non_null(all);
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
        if (strstr(all, secrets[i]) != NULL)
            fail_msg("secret '%s' in the logs: %s", secrets[i], all);
    free(all);
}

/* ---- tests ---- */

static void fake_providers_pass_their_own_self_test(void **state)
{
    char path[512], cmd[600];

    live_script_path(path, sizeof(path), "fake_providers.py");
    snprintf(cmd, sizeof(cmd), LIVE_PYTHON " %s --self-test", path);
    assert_int_equal(system(cmd), 0);
}

static int setup_good(void **state)
{
    *state = fx_new("SECd1ngtalk", "f31shu-secret");
    return 0;
}

static void every_channel_delivers_to_its_provider_and_follows_the_resolution(void **state)
{
    static const struct {
        const char *provider, *check;
    } checks[] = {
        {"dingtalk", "dingtalk_sign"},    {"feishu", "feishu_sign"},
        {"pagerduty", "pagerduty_event"}, {"opsgenie", "opsgenie_key"},
        {"twilio", "twilio_basic_auth"},  {"smtp", "smtp_crlf"},
    };
    static const char *const plain[] = {"slack", "wecom", "teams", "alertmanager"};
    static const char *const names[] = {"chat",  "ding",  "fs",    "wc",   "teams",
                                        "pager", "genie", "phone", "mail", "am"};
    fx_t *f = *state;
    json_t *st, *reqs, *call;
    char ack_prefix[96];

    raise_event(f, "breaker_open");
    assert_true(run_until(f, all_finished, 15000));
    for (size_t i = 0; i < 10; i++)
        assert_status(f, names[i], "firing", "sent");
    for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++) {
        reqs = fake_requests(&f->fake, checks[i].provider);
        assert_int_equal(json_array_size(reqs), 1);
        if (!verified(json_array_get(reqs, 0), checks[i].check))
            fail_msg("%s: not verified as %s", checks[i].provider, checks[i].check);
        json_decref(reqs);
    }
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
        reqs = fake_requests(&f->fake, plain[i]);
        assert_int_equal(json_array_size(reqs), 1);
        json_decref(reqs);
    }
    st = fake_call(&f->fake, "/_state", NULL);
    assert_string_equal(json_string_value(json_object_get(json_object_get(st, "pagerduty"),
                                                          "breaker_open{upstream=\"users\"}")),
                        "triggered");
    assert_string_equal(json_string_value(json_object_get(json_object_get(st, "opsgenie"),
                                                          "breaker_open{upstream=\"users\"}")),
                        "open");
    call = json_array_get(json_object_get(st, "calls"), 0);
    snprintf(ack_prefix, sizeof(ack_prefix), "http://127.0.0.1:%d/gw/ack/", f->fake.port);
    assert_non_null(json_string_value(json_object_get(call, "gather_action")));
    assert_memory_equal(json_string_value(json_object_get(call, "gather_action")), ack_prefix,
                        strlen(ack_prefix));
    json_decref(st);

    raise_event(f, "breaker_closed");
    assert_true(run_until(f, resolved_finished, 15000));
    for (size_t i = 0; i < 10; i++)
        assert_status(f, names[i], "resolved", "sent");
    st = fake_call(&f->fake, "/_state", NULL);
    assert_string_equal(json_string_value(json_object_get(json_object_get(st, "pagerduty"),
                                                          "breaker_open{upstream=\"users\"}")),
                        "resolved");
    assert_string_equal(json_string_value(json_object_get(json_object_get(st, "opsgenie"),
                                                          "breaker_open{upstream=\"users\"}")),
                        "closed");
    assert_int_equal(json_array_size(json_object_get(st, "calls")), 1); /* no call to resolve */
    assert_int_equal(json_array_size(json_object_get(st, "mail")), 2);
    json_decref(st);
    assert_no_secret_logged(f);
}

static int setup_wrong_secrets(void **state)
{
    fx_t *f = fx_new("not-the-secret", "not-the-secret-either");
    json_decref(fake_call(&f->fake, "/_mode", "{\"provider\":\"smtp\",\"mode\":\"reject\"}"));
    *state = f;
    return 0;
}

/* A bad signature is answered HTTP 200 with an error code: the channel is broken, not "sent". */
static void bad_signatures_and_smtp_refusals_fail_their_channel(void **state)
{
    fx_t *f = *state;
    char *err;

    raise_event(f, "breaker_open");
    assert_true(run_until(f, all_finished, 15000));
    assert_status(f, "ding", "firing", "failed HTTP 200: {\"errcode\": 310000");
    assert_status(f, "fs", "firing", "failed HTTP 200: {\"code\": 19021");
    assert_status(f, "mail", "firing", "failed SMTP 550");
    assert_status(f, "chat", "firing", "sent");
    assert_status(f, "pager", "firing", "sent");
    err = eng_q_text(f->db, "SELECT group_concat(last_error) FROM deliveries");
    assert_null(strstr(err, "not-the-secret")); /* secrets never in error texts */
    free(err);
    assert_no_secret_logged(f);
}

static int setup_throttled(void **state)
{
    fx_t *f = fx_new("SECd1ngtalk", "f31shu-secret");
    json_decref(fake_call(&f->fake, "/_mode",
                          "{\"provider\":\"dingtalk\",\"mode\":\"throttle\",\"count\":1}"));
    json_decref(
        fake_call(&f->fake, "/_mode", "{\"provider\":\"smtp\",\"mode\":\"throttle\",\"count\":1}"));
    *state = f;
    return 0;
}

/* DingTalk's 130101 throttles the robot for 10 minutes: the retry waits that long. SMTP 451 is
 * transient: retried after the backoff, then sent. */
static void provider_throttles_are_retried_after_their_wait(void **state)
{
    fx_t *f = *state;
    uint64_t now;
    int64_t next;

    raise_event(f, "breaker_open");
    assert_true(run_until(f, throttles_seen, 15000));
    now = live_wall_ms();
    next = eng_q_int(f->db, "SELECT next_attempt_at FROM deliveries WHERE channel = 'ding'");
    assert_true(next >= (int64_t)now + 9 * 60 * 1000);
    assert_int_equal(eng_q_int(f->db, "SELECT attempts FROM deliveries WHERE channel = 'mail'"), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fake_providers_pass_their_own_self_test),
        cmocka_unit_test_setup_teardown(
            every_channel_delivers_to_its_provider_and_follows_the_resolution, setup_good,
            teardown),
        cmocka_unit_test_setup_teardown(bad_signatures_and_smtp_refusals_fail_their_channel,
                                        setup_wrong_secrets, teardown),
        cmocka_unit_test_setup_teardown(provider_throttles_are_retried_after_their_wait,
                                        setup_throttled, teardown),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
