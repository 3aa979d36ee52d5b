/* test_alerts_sender.c - alerts/sender.c: the delivery loop against a real HTTP receiver.
 *
 * Each test runs a real engine on a real SQLite file (mkdtemp), a libuv loop of its own with the
 * sender on it, and tests/integration/receiver.py started with /usr/bin/python3 on a free
 * loopback port (it records every request to a JSONL file before answering, and its answers are
 * switched with CLI flags or POST /_mode). The loop runs until a condition on the database or the
 * receiver's record holds (checked every 10 ms from a timer on the same loop), bounded by a
 * deadline. Every test ends by closing the sender and asserting uv_loop_close() == 0.
 *
 * The clock is the real one (curl and the receiver are real); backoff is configured in
 * milliseconds and the random source is a counter (jitter at the bottom of its range), so the
 * tests stay short and deterministic enough.
 */
#include <errno.h>
#include <fcntl.h>
#include <strings.h>

#include "test_alerts_live_fixture.h"

#define TIERS_HOOK                                                                                 \
    "    P0: { channels: [hook] }\n    P1: { channels: [hook] }\n    P2: { channels: [hook] }\n"

#define BREAKER(u) "{\"upstream\":\"" u "\",\"reason\":\"trial_failed\"}"
#define HOST(u, h) "{\"upstream\":\"" u "\",\"host\":\"" h "\"}"

/* ---- the receiver ---- */

typedef struct rcv {
    pid_t pid;
    int port;
    char log[128];
} rcv_t;

/* Starts receiver.py with extra CLI arguments (NULL-terminated list). */
static void rcv_start(rcv_t *r, const char *dir, const char *const *args)
{
    char path[512], line[64];
    const char *argv[32];
    int n = 0;

    live_script_path(path, sizeof(path), "receiver.py");
    snprintf(r->log, sizeof(r->log), "%s/receiver.jsonl", dir);
    argv[n++] = "python3";
    argv[n++] = path;
    argv[n++] = "--log";
    argv[n++] = r->log;
    for (size_t i = 0; args != NULL && args[i] != NULL && n < 30; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    r->pid = live_python_start(argv, line, sizeof(line), 1);
    if (sscanf(line, "PORT %d", &r->port) != 1)
        fail_msg("receiver did not start: '%s'", line);
}

static void rcv_stop(rcv_t *r)
{
    live_child_stop(&r->pid);
}

/* POST /_mode with a JSON body (blocking: the loop is not running). */
static void rcv_mode(rcv_t *r, const char *json)
{
    json_decref(live_control(r->port, "/_mode", json));
}

/* The recorded requests, oldest first (a new array). */
static json_t *rcv_requests(const rcv_t *r)
{
    json_t *list = json_array();
    FILE *f = fopen(r->log, "r");
    char *line = NULL;
    size_t cap = 0;

    while (f != NULL && getline(&line, &cap, f) > 0) {
        json_t *o = json_loads(line, 0, NULL);
        if (o != NULL)
            json_array_append_new(list, o);
    }
    free(line);
    if (f != NULL)
        fclose(f);
    return list;
}

static size_t rcv_count(const rcv_t *r)
{
    json_t *l = rcv_requests(r);
    size_t n = json_array_size(l);

    json_decref(l);
    return n;
}

/* Header `name` of recorded request `req` (case-insensitive), or NULL. */
static const char *req_header(json_t *req, const char *name)
{
    json_t *pair;
    size_t i;

    json_array_foreach(json_object_get(req, "headers"), i, pair)
    {
        if (strcasecmp(json_string_value(json_array_get(pair, 0)), name) == 0)
            return json_string_value(json_array_get(pair, 1));
    }
    return NULL;
}

/* ---- the fixture ---- */

typedef struct fx {
    char dir[64];
    al_db_t *db;
    gw_config_t *cfg;
    al_engine_t *e;
    uint64_t rng;
    al_engine_options_t eopt;
    uv_loop_t loop;
    al_sender_t *s;
    al_sender_options_t sopt;
    rcv_t rcv;
    json_t *logs; /* every line the sender logged: {"level", "msg", fields...} */
    int console_fd;
    bool idle, tick;
    bool (*until)(struct fx *f);
} fx_t;

static void engine_open(fx_t *f)
{
    live_engine_open(f->dir, f->cfg, &f->eopt, &f->db, &f->e);
}

static void engine_close(fx_t *f)
{
    live_engine_close(&f->db, &f->e);
}

static void sender_start(fx_t *f)
{
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->s = al_sender_new_with(&f->loop, f->e, &f->cfg->alerts, "breakwater@test", &f->sopt);
    assert_non_null(f->s);
}

static void sender_stop(fx_t *f)
{
    live_sender_close(f->s, &f->loop);
    f->s = NULL;
}

/* A fixture with the receiver started with rcv_args, the given tiers and delivery settings. */
static fx_t *fx_new(const char *const *rcv_args, const char *tiers, const char *delivery)
{
    fx_t *f = calloc(1, sizeof(*f));
    char *yaml = NULL, cpath[96];

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/bw_test_sender.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    rcv_start(&f->rcv, f->dir, rcv_args);
    assert_true(
        asprintf(&yaml,
                 "upstreams:\n  u: { hosts: [\"127.0.0.1:9001\"] }\n"
                 "routes:\n  - { name: r, match: { path_prefix: / }, upstream: u }\n"
                 "alerts:\n  channels:\n"
                 "    hook: { type: webhook, url: \"http://127.0.0.1:%d/hook?token=SECRET\","
                 " headers: { X-Team: sre } }\n"
                 "    log: { type: console }\n"
                 "    chat: { type: slack, url: \"http://127.0.0.1:%d/slack\" }\n"
                 "  tiers:\n%s"
                 "  rules: { delivery_failing: off }\n"
                 "  delivery: %s\n",
                 f->rcv.port, f->rcv.port, tiers,
                 delivery != NULL ? delivery : "{ backoff: 50ms, max_backoff: 200ms }") > 0);
    f->cfg = eng_config(yaml);
    f->eopt.random = live_counter_random;
    f->eopt.random_ctx = &f->rng;
    f->eopt.source = "breakwater@test";
    engine_open(f);
    f->logs = json_array();
    snprintf(cpath, sizeof(cpath), "%s/console.log", f->dir);
    f->console_fd = open(cpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(f->console_fd >= 0);
    f->sopt.log = live_capture_log;
    f->sopt.log_ctx = f->logs;
    f->sopt.console_fd = f->console_fd;
    f->sopt.request_timeout_ms = 500;
    sender_start(f);
    return f;
}

static int teardown(void **state)
{
    fx_t *f = *state;

    if (f->s != NULL)
        sender_stop(f);
    rcv_stop(&f->rcv);
    engine_close(f);
    gw_config_free(f->cfg);
    close(f->console_fd);
    json_decref(f->logs);
    eng_rmtree(f->dir);
    free(f);
    return 0;
}

/* ---- running the loop ---- */

static bool check(void *ctx)
{
    fx_t *f = ctx;

    if (f->tick) {
        uint64_t next;
        assert_int_equal(al_engine_tick(f->e, live_wall_ms(), &next), 0);
        al_sender_kick(f->s);
    }
    return f->until(f);
}

/* Runs the loop until until(f) holds (true) or timeout_ms passed (false). */
static bool run_until(fx_t *f, bool (*until)(fx_t *f), uint64_t timeout_ms)
{
    f->until = until;
    return live_run_until(&f->loop, check, f, timeout_ms);
}

/* ---- database reads ---- */

static void assert_q_text(fx_t *f, const char *want, const char *sql)
{
    char *got = eng_q_text(f->db, "%s", sql);
    bool same = strcmp(got, want) == 0;

    if (!same)
        print_message("query: %s\n  got: %s\n want: %s\n", sql, got, want);
    free(got);
    assert_true(same);
}

/* The "result" of every delivery attempt in the lineage, comma-separated, oldest first. */
static char *attempt_results(fx_t *f)
{
    return eng_q_text(f->db,
                      "SELECT group_concat(json_extract(detail, '$.result'), ',') FROM "
                      "(SELECT detail FROM alert_history WHERE kind = 'delivery' ORDER BY id)");
}

static bool all_finished(fx_t *f)
{
    return eng_q_int(f->db,
                     "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')") ==
               0 &&
           eng_q_int(f->db, "SELECT count(*) FROM deliveries") > 0;
}

static bool one_sent(fx_t *f)
{
    return eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'sent'") >= 1;
}

static bool one_request(fx_t *f)
{
    return rcv_count(&f->rcv) >= 1;
}

static bool two_attempts(fx_t *f)
{
    return eng_q_int(f->db, "SELECT count(*) FROM alert_history WHERE kind = 'delivery'") >= 2;
}

static bool idle_called(fx_t *f)
{
    return f->idle;
}

typedef struct stat_row {
    const char *channel, *result;
    uint64_t n;
    bool found;
} stat_row_t;

static void find_stat(void *ctx, const char *channel, const char *result, uint64_t n)
{
    stat_row_t *r = ctx;

    if (strcmp(channel, r->channel) == 0 && strcmp(result, r->result) == 0) {
        r->n = n;
        r->found = true;
    }
}

static uint64_t counter(fx_t *f, const char *channel, const char *result)
{
    stat_row_t r = {channel, result, 0, false};

    al_sender_stats(f->s, find_stat, &r);
    assert_true(r.found);
    return r.n;
}

/* No log line mentions the webhook's token (only the channel name and the host). */
static void assert_no_secret_logged(fx_t *f)
{
    char *all = json_dumps(f->logs, JSON_COMPACT);

    assert_non_null(all);
    assert_null(strstr(all, "SECRET"));
    assert_null(strstr(all, "/hook"));
    free(all);
}

static void raise_event(fx_t *f, const char *kind, const char *fields)
{
    assert_int_equal(al_engine_event(f->e, kind, -1, fields, live_wall_ms()), 0);
    al_sender_kick(f->s);
}

/* ---- tests ---- */

static int setup_ok(void **state)
{
    *state = fx_new(NULL, TIERS_HOOK, NULL);
    return 0;
}

static void raised_alert_is_delivered_with_the_spec_body_and_idempotency_key(void **state)
{
    static const char *const keys[] = {
        "version", "alert_id", "delivery_id", "dedup_key",        "tier",  "status", "event",
        "labels",  "summary",  "started_at",  "escalation_level", "count", "source"};
    fx_t *f = *state;
    uint64_t t0 = live_wall_ms();
    json_t *reqs, *req, *body;
    char *did, *want_ua = NULL;
    const char *raw, *prev;
    double latency_ms;

    raise_event(f, "breaker_open", BREAKER("users"));
    assert_true(run_until(f, one_sent, 5000));
    reqs = rcv_requests(&f->rcv);
    assert_int_equal(json_array_size(reqs), 1);
    req = json_array_get(reqs, 0);
    did = eng_q_text(f->db, "SELECT delivery_id FROM deliveries");
    assert_string_equal(json_string_value(json_object_get(req, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(req, "path")), "/hook?token=SECRET");
    assert_string_equal(req_header(req, "Idempotency-Key"), did);
    assert_string_equal(req_header(req, "Content-Type"), "application/json");
    assert_string_equal(req_header(req, "X-Team"), "sre");
    assert_true(asprintf(&want_ua, "breakwater/%s", BW_VERSION) > 0);
    assert_string_equal(req_header(req, "User-Agent"), want_ua);
    assert_null(req_header(req, "Expect"));
    /* the body: SPEC section 5's keys, exactly and in order */
    body = json_object_get(req, "json");
    assert_int_equal(json_object_size(body), 13);
    raw = json_string_value(json_object_get(req, "body"));
    prev = raw;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        char quoted[40];
        const char *at;
        snprintf(quoted, sizeof(quoted), "\"%s\":", keys[i]);
        at = strstr(raw, quoted);
        assert_non_null(at);
        assert_true(at >= prev);
        prev = at;
    }
    assert_string_equal(json_string_value(json_object_get(body, "version")), "1");
    assert_string_equal(json_string_value(json_object_get(body, "delivery_id")), did);
    assert_string_equal(json_string_value(json_object_get(body, "dedup_key")),
                        "breaker_open{upstream=\"users\"}");
    assert_string_equal(json_string_value(json_object_get(body, "tier")), "P1");
    assert_string_equal(json_string_value(json_object_get(body, "status")), "firing");
    assert_string_equal(json_string_value(json_object_get(body, "event")), "breaker_open");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(body, "labels"), "upstream")), "users");
    assert_string_equal(json_string_value(json_object_get(body, "source")), "breakwater@test");
    assert_int_equal(json_integer_value(json_object_get(body, "count")), 1);
    assert_int_equal(json_integer_value(json_object_get(body, "escalation_level")), 0);
    assert_int_equal(strlen(json_string_value(json_object_get(body, "started_at"))), 20);
    latency_ms = json_real_value(json_object_get(req, "ts")) * 1000.0 - (double)t0;
    print_message("event -> receiver: %.1f ms\n", latency_ms);
    assert_true(latency_ms < 1000.0);
    assert_q_text(f, "sent", "SELECT status FROM deliveries");
    assert_int_equal(eng_q_int(f->db, "SELECT attempts FROM deliveries"), 1);
    assert_int_equal(eng_q_int(f->db, "SELECT last_code FROM deliveries"), 200);
    assert_int_equal(counter(f, "hook", "sent"), 1);
    assert_int_equal(counter(f, "hook", "retry"), 0);
    assert_int_equal(counter(f, "log", "sent"), 0); /* configured channels show, zeros included */
    assert_no_secret_logged(f);
    free(want_ua);
    free(did);
    json_decref(reqs);
}

static int setup_500_then_ok(void **state)
{
    static const char *const args[] = {"--sequence", "500", NULL};
    *state = fx_new(args, TIERS_HOOK, NULL);
    return 0;
}

static void a_500_is_retried_with_the_same_delivery_id(void **state)
{
    fx_t *f = *state;
    json_t *reqs;
    char *did, *results;
    const char *k0, *k1;
    json_t *warn;
    size_t i;
    bool logged = false;

    raise_event(f, "breaker_open", BREAKER("users"));
    assert_true(run_until(f, one_sent, 5000));
    reqs = rcv_requests(&f->rcv);
    assert_int_equal(json_array_size(reqs), 2);
    did = eng_q_text(f->db, "SELECT delivery_id FROM deliveries");
    k0 = req_header(json_array_get(reqs, 0), "Idempotency-Key");
    k1 = req_header(json_array_get(reqs, 1), "Idempotency-Key");
    assert_string_equal(k0, did);
    assert_string_equal(k1, did);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(reqs, 1), "json"), "delivery_id")),
                        did);
    assert_int_equal(eng_q_int(f->db, "SELECT attempts FROM deliveries"), 2);
    results = attempt_results(f);
    assert_string_equal(results, "retry,ok");
    assert_q_text(f, "500",
                  "SELECT json_extract(detail, '$.http_status') FROM alert_history "
                  "WHERE kind = 'delivery' ORDER BY id LIMIT 1");
    assert_int_equal(counter(f, "hook", "retry"), 1);
    assert_int_equal(counter(f, "hook", "sent"), 1);
    json_array_foreach(f->logs, i, warn)
    {
        if (json_integer_value(json_object_get(warn, "level")) == AL_LOG_WARN) {
            assert_string_equal(json_string_value(json_object_get(warn, "channel")), "hook");
            assert_string_equal(json_string_value(json_object_get(warn, "host")), "127.0.0.1");
            assert_int_equal(json_integer_value(json_object_get(warn, "http_status")), 500);
            logged = true;
        }
    }
    assert_true(logged);
    assert_no_secret_logged(f);
    free(results);
    free(did);
    json_decref(reqs);
}

static int setup_retry_after(void **state)
{
    *state = fx_new(NULL, TIERS_HOOK, NULL);
    return 0;
}

static void retry_after_from_the_receiver_is_honoured(void **state)
{
    fx_t *f = *state;
    json_t *reqs;
    double gap;

    rcv_mode(&f->rcv, "{\"mode\":\"ok\",\"sequence\":[{\"mode\":\"status\",\"status\":503,"
                      "\"retry_after\":\"1\"}]}");
    raise_event(f, "breaker_open", BREAKER("users"));
    assert_true(run_until(f, one_sent, 5000));
    reqs = rcv_requests(&f->rcv);
    assert_int_equal(json_array_size(reqs), 2);
    gap = json_real_value(json_object_get(json_array_get(reqs, 1), "ts")) -
          json_real_value(json_object_get(json_array_get(reqs, 0), "ts"));
    print_message("gap after Retry-After: 1 -> %.3f s (backoff alone: 25-50 ms)\n", gap);
    assert_true(gap >= 0.95);
    assert_q_text(f, "1000",
                  "SELECT json_extract(detail, '$.retry_after_ms') FROM alert_history "
                  "WHERE kind = 'delivery' ORDER BY id LIMIT 1");
    json_decref(reqs);
}

static int setup_hang(void **state)
{
    static const char *const args[] = {"--mode", "hang", NULL};
    *state = fx_new(args, TIERS_HOOK, NULL);
    return 0;
}

static void a_hang_on_p2_is_recorded_as_ambiguous_and_not_resent(void **state)
{
    fx_t *f = *state;
    char *err;

    raise_event(f, "host_down", HOST("users", "10.0.0.1:80")); /* P2 */
    assert_true(run_until(f, all_finished, 5000));
    assert_q_text(f, "ambiguous", "SELECT status FROM deliveries");
    err = eng_q_text(f->db, "SELECT last_error FROM deliveries");
    assert_non_null(strstr(err, "after the request was sent"));
    assert_int_equal(rcv_count(&f->rcv), 1);
    assert_int_equal(counter(f, "hook", "ambiguous"), 1);
    free(err);
}

static void a_hang_on_p1_is_ambiguous_then_resent_with_the_same_key(void **state)
{
    fx_t *f = *state;
    json_t *reqs;
    char *results;

    raise_event(f, "breaker_open", BREAKER("users")); /* P1 */
    assert_true(run_until(f, two_attempts, 5000));    /* hang, hang: both ambiguous */
    rcv_mode(&f->rcv, "{\"mode\":\"ok\"}");
    assert_true(run_until(f, one_sent, 5000));
    results = attempt_results(f);
    assert_non_null(strstr(results, "ambiguous,ambiguous"));
    assert_int_equal(strcmp(results + strlen(results) - 3, ",ok"), 0);
    reqs = rcv_requests(&f->rcv);
    assert_true(json_array_size(reqs) >= 3);
    for (size_t i = 1; i < json_array_size(reqs); i++)
        assert_string_equal(req_header(json_array_get(reqs, i), "Idempotency-Key"),
                            req_header(json_array_get(reqs, 0), "Idempotency-Key"));
    free(results);
    json_decref(reqs);
}

static int setup_refused(void **state)
{
    fx_t *f;

    *state = f = fx_new(NULL, TIERS_HOOK, NULL);
    rcv_stop(&f->rcv); /* the channel's port: nobody listens there any more */
    return 0;
}

static void connect_refused_is_a_plain_retry_even_on_p2(void **state)
{
    fx_t *f = *state;
    char *results, *err;

    raise_event(f, "host_down", HOST("users", "10.0.0.1:80")); /* P2 */
    assert_true(run_until(f, two_attempts, 5000));
    results = attempt_results(f);
    assert_int_equal(strncmp(results, "retry,retry", 11), 0);
    err = eng_q_text(f->db, "SELECT last_error FROM deliveries");
    assert_int_equal(strncmp(err, "not sent: ", 10), 0);
    assert_true(counter(f, "hook", "retry") >= 2);
    assert_no_secret_logged(f);
    free(results);
    free(err);
}

static void close_in_flight_then_restart_resumes_the_delivery(void **state)
{
    fx_t *f = *state;
    json_t *reqs;
    char *results;

    f->sopt.request_timeout_ms = 30000; /* the send is still in flight when we stop */
    sender_stop(f);
    sender_start(f);
    raise_event(f, "breaker_open", BREAKER("users")); /* P1 */
    assert_true(run_until(f, one_request, 5000));
    assert_q_text(f, "sending", "SELECT status FROM deliveries");
    sender_stop(f); /* abandoned: nothing recorded */
    assert_q_text(f, "sending", "SELECT status FROM deliveries");
    /* a restart (as after kill -9): reopen, start, a new sender */
    engine_close(f);
    engine_open(f); /* al_engine_start: the lost send's lease is over: retried (same key) */
    assert_q_text(f, "pending", "SELECT status FROM deliveries");
    rcv_mode(&f->rcv, "{\"mode\":\"ok\"}");
    sender_start(f);
    assert_true(run_until(f, one_sent, 5000));
    results = attempt_results(f);
    assert_string_equal(results, "retry,ok");
    reqs = rcv_requests(&f->rcv);
    assert_int_equal(json_array_size(reqs), 2);
    assert_string_equal(req_header(json_array_get(reqs, 0), "Idempotency-Key"),
                        req_header(json_array_get(reqs, 1), "Idempotency-Key"));
    free(results);
    json_decref(reqs);
}

static int setup_console_and_slack(void **state)
{
    static const char *const ok_like_slack[] = {"--body", "ok", NULL};

    *state = fx_new(ok_like_slack,
                    "    P0: { channels: [log] }\n    P1: { channels: [log, chat] }\n"
                    "    P2: { channels: [log] }\n",
                    NULL);
    return 0;
}

/* The console channel writes its line; the slack channel (channel_slack.c) posts Slack's shape
 * and counts the receiver's plain "ok" as sent. */
static void console_is_sent_and_slack_gets_its_message(void **state)
{
    fx_t *f = *state;
    char buf[4096];
    ssize_t n;
    json_t *line, *reqs;

    raise_event(f, "breaker_open", BREAKER("users"));
    assert_true(run_until(f, all_finished, 5000));
    assert_q_text(f, "sent", "SELECT status FROM deliveries WHERE channel = 'log'");
    assert_q_text(f, "sent", "SELECT status FROM deliveries WHERE channel = 'chat'");
    assert_int_equal(counter(f, "log", "sent"), 1);
    assert_int_equal(counter(f, "chat", "sent"), 1);
    reqs = rcv_requests(&f->rcv);
    assert_int_equal(json_array_size(reqs), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(reqs, 0), "path")),
                        "/slack");
    assert_true(
        json_is_array(json_object_get(json_object_get(json_array_get(reqs, 0), "json"), "blocks")));
    json_decref(reqs);
    n = pread(f->console_fd, buf, sizeof(buf) - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    line = json_loads(buf, JSON_DISABLE_EOF_CHECK, NULL);
    assert_non_null(line);
    assert_string_equal(json_string_value(json_object_get(line, "msg")), "alert firing");
    assert_string_equal(json_string_value(json_object_get(line, "event")), "breaker_open");
    assert_string_equal(json_string_value(json_object_get(line, "channel")), "log");
    json_decref(line);
}

static int setup_grouped(void **state)
{
    *state = fx_new(NULL,
                    "    P0: { channels: [hook] }\n    P1: { channels: [hook] }\n"
                    "    P2: { channels: [hook], group_wait: 100ms }\n",
                    NULL);
    return 0;
}

static bool three_requests(fx_t *f)
{
    return rcv_count(&f->rcv) >= 3 && one_sent(f);
}

static void a_grouped_notification_is_one_request_per_alert(void **state)
{
    fx_t *f = *state;
    json_t *reqs;
    char *did, key[80];

    raise_event(f, "host_down", HOST("users", "10.0.0.1:80"));
    raise_event(f, "host_down", HOST("users", "10.0.0.2:80"));
    raise_event(f, "host_down", HOST("users", "10.0.0.3:80"));
    f->tick = true; /* the group is flushed by al_engine_tick() */
    assert_true(run_until(f, three_requests, 5000));
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries"), 1);
    did = eng_q_text(f->db, "SELECT delivery_id FROM deliveries");
    reqs = rcv_requests(&f->rcv);
    assert_int_equal(json_array_size(reqs), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *body = json_object_get(json_array_get(reqs, i), "json");
        snprintf(key, sizeof(key), "%s:%s", did,
                 json_string_value(json_object_get(body, "alert_id")));
        assert_string_equal(json_string_value(json_object_get(body, "delivery_id")), did);
        assert_string_equal(req_header(json_array_get(reqs, i), "Idempotency-Key"), key);
        assert_int_equal(json_object_size(body), 13);
    }
    free(did);
    json_decref(reqs);
}

static int setup_close(void **state)
{
    static const char *const args[] = {"--mode", "close", NULL};
    *state = fx_new(args, TIERS_HOOK, NULL);
    return 0;
}

static void closed_without_reply_after_sending_is_ambiguous(void **state)
{
    fx_t *f = *state;
    char *err;

    raise_event(f, "host_down", HOST("users", "10.0.0.1:80")); /* P2 */
    assert_true(run_until(f, all_finished, 5000));
    assert_q_text(f, "ambiguous", "SELECT status FROM deliveries");
    err = eng_q_text(f->db, "SELECT last_error FROM deliveries");
    assert_non_null(strstr(err, "connection ended after the request was sent"));
    assert_int_equal(rcv_count(&f->rcv), 1);
    free(err);
}

static int setup_404(void **state)
{
    static const char *const args[] = {"--mode", "status", "--status", "404", NULL};
    *state = fx_new(args, TIERS_HOOK, NULL);
    return 0;
}

static void a_404_fails_at_once_as_a_broken_channel(void **state)
{
    fx_t *f = *state;
    char *err;

    raise_event(f, "breaker_open", BREAKER("users")); /* P1: retried if it were retryable */
    assert_true(run_until(f, all_finished, 5000));
    assert_q_text(f, "failed", "SELECT status FROM deliveries");
    assert_int_equal(eng_q_int(f->db, "SELECT attempts FROM deliveries"), 1);
    err = eng_q_text(f->db, "SELECT last_error FROM deliveries");
    assert_string_equal(err, "HTTP 404: {\"error\":\"injected\"}");
    assert_int_equal(counter(f, "hook", "broken"), 1);
    assert_int_equal(rcv_count(&f->rcv), 1);
    assert_no_secret_logged(f);
    free(err);
}

static void reload_applies_the_new_channel_config(void **state)
{
    fx_t *f = *state;
    gw_config_t *next = NULL;
    char *yaml = NULL;
    gw_diag_t d;
    json_t *reqs;

    assert_true(asprintf(&yaml,
                         "upstreams:\n  u: { hosts: [\"127.0.0.1:9001\"] }\n"
                         "routes:\n  - { name: r, match: { path_prefix: / }, upstream: u }\n"
                         "alerts:\n  channels:\n"
                         "    hook: { type: webhook, url: \"http://127.0.0.1:%d/v2\","
                         " headers: { X-Team: db } }\n"
                         "  tiers:\n" TIERS_HOOK "  rules: { delivery_failing: off }\n",
                         f->rcv.port) > 0);
    gw_diag_init(&d);
    assert_int_equal(gw_config_load_string("t2.yaml", yaml, strlen(yaml), &next, &d), 0);
    gw_diag_dispose(&d);
    free(yaml);
    al_engine_set_config(f->e, &next->alerts);
    al_sender_set_config(f->s, &next->alerts);
    gw_config_free(f->cfg); /* the old config may go once both have the new one */
    f->cfg = next;
    raise_event(f, "breaker_open", BREAKER("users"));
    assert_true(run_until(f, one_sent, 5000));
    reqs = rcv_requests(&f->rcv);
    assert_string_equal(json_string_value(json_object_get(json_array_get(reqs, 0), "path")), "/v2");
    assert_string_equal(req_header(json_array_get(reqs, 0), "X-Team"), "db");
    assert_int_equal(counter(f, "log", "sent"), 0); /* counters of removed channels stay */
    json_decref(reqs);
}

static int setup_many_hanging(void **state)
{
    static const char *const args[] = {"--mode", "hang", NULL};
    fx_t *f;

    *state = f = fx_new(args, TIERS_HOOK, NULL);
    f->sopt.request_timeout_ms = 3000;
    sender_stop(f);
    sender_start(f);
    return 0;
}

static bool max_requests(fx_t *f)
{
    assert_true(al_sender_inflight(f->s) <= AL_SENDER_MAX_INFLIGHT);
    return rcv_count(&f->rcv) >= AL_SENDER_MAX_INFLIGHT;
}

static bool never(fx_t *f)
{
    assert_true(al_sender_inflight(f->s) <= AL_SENDER_MAX_INFLIGHT);
    return false;
}

static void at_most_32_deliveries_are_in_flight(void **state)
{
    fx_t *f = *state;
    char fields[96];

    for (int i = 0; i < 40; i++) {
        snprintf(fields, sizeof(fields), "{\"upstream\":\"users\",\"host\":\"10.0.0.%d:80\"}",
                 i + 1);
        raise_event(f, "host_down", fields);
    }
    assert_true(run_until(f, max_requests, 5000));
    run_until(f, never, 300);
    if (rcv_count(&f->rcv) != AL_SENDER_MAX_INFLIGHT) {
        char *st = eng_q_text(f->db, "SELECT group_concat(status || ' ' || attempts || ' ' || "
                                     "ifnull(last_error, '-'), '; ') FROM deliveries");
        print_message("deliveries: %s\n", st);
        free(st);
    }
    assert_int_equal(rcv_count(&f->rcv), AL_SENDER_MAX_INFLIGHT);
    assert_int_equal(al_sender_inflight(f->s), AL_SENDER_MAX_INFLIGHT);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'sending'"),
                     AL_SENDER_MAX_INFLIGHT);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'pending'"),
                     8);
    /* teardown closes the sender with 32 sends in flight */
}

static void on_idle(void *ctx)
{
    ((fx_t *)ctx)->idle = true;
}

static void drain_reports_idle_once_everything_due_was_sent(void **state)
{
    fx_t *f = *state;

    raise_event(f, "breaker_open", BREAKER("users"));
    raise_event(f, "no_healthy_hosts", "{\"upstream\":\"users\",\"hosts\":2,\"hosts_down\":2}");
    al_sender_drain(f->s, on_idle, f);
    assert_true(run_until(f, idle_called, 5000));
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'sent'"), 2);
    assert_int_equal(al_sender_inflight(f->s), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            raised_alert_is_delivered_with_the_spec_body_and_idempotency_key, setup_ok, teardown),
        cmocka_unit_test_setup_teardown(a_500_is_retried_with_the_same_delivery_id,
                                        setup_500_then_ok, teardown),
        cmocka_unit_test_setup_teardown(retry_after_from_the_receiver_is_honoured,
                                        setup_retry_after, teardown),
        cmocka_unit_test_setup_teardown(a_hang_on_p2_is_recorded_as_ambiguous_and_not_resent,
                                        setup_hang, teardown),
        cmocka_unit_test_setup_teardown(a_hang_on_p1_is_ambiguous_then_resent_with_the_same_key,
                                        setup_hang, teardown),
        cmocka_unit_test_setup_teardown(connect_refused_is_a_plain_retry_even_on_p2, setup_refused,
                                        teardown),
        cmocka_unit_test_setup_teardown(close_in_flight_then_restart_resumes_the_delivery,
                                        setup_hang, teardown),
        cmocka_unit_test_setup_teardown(console_is_sent_and_slack_gets_its_message,
                                        setup_console_and_slack, teardown),
        cmocka_unit_test_setup_teardown(a_grouped_notification_is_one_request_per_alert,
                                        setup_grouped, teardown),
        cmocka_unit_test_setup_teardown(drain_reports_idle_once_everything_due_was_sent, setup_ok,
                                        teardown),
        cmocka_unit_test_setup_teardown(closed_without_reply_after_sending_is_ambiguous,
                                        setup_close, teardown),
        cmocka_unit_test_setup_teardown(a_404_fails_at_once_as_a_broken_channel, setup_404,
                                        teardown),
        cmocka_unit_test_setup_teardown(reload_applies_the_new_channel_config, setup_ok, teardown),
        cmocka_unit_test_setup_teardown(at_most_32_deliveries_are_in_flight, setup_many_hanging,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
