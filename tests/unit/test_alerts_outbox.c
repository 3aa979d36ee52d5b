/* test_alerts_outbox.c - alerts/outbox.c: the durable outbox the sender drives.
 *
 * Claiming due deliveries with a lease, the send-time re-check, recording attempt results, the
 * retry schedule (exponential backoff with equal jitter, Retry-After, max_attempts, max_age),
 * ambiguous attempts (retried on P0/P1, final on P2), expired leases and restarts, stable
 * delivery ids, per alert+channel ordering, delivery_failing (tied to the tier's window), the
 * payload handed to the sender, and channel rate limits (tokens, the P0 reserve, waiting without
 * spinning, folding what waited into one delivery within AL_GROUP_MAX, same kind only, order
 * kept, acks before the folded send).
 *
 * Real SQLite files in mkdtemp() directories opened with al_db_open(); configs loaded with
 * gw_config_load_string(); injected clock and random source (a counter: its low values put the
 * jitter at the bottom of its range, delay = base/2; "high" mode counts down from UINT64_MAX and
 * puts it at the top, delay = base).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <sqlite3.h>

#include "alerts.h"
#include "config.h"
#include "db.h"

#include "test_alerts_engine_fixture.h"

#define T0 1767225600000ULL /* 2026-01-01T00:00:00Z */
#define SEC 1000ULL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define NEVER UINT64_MAX

#define UPSTREAMS                                                                                  \
    "upstreams:\n  u: { hosts: [\"127.0.0.1:9001\"] }\n"                                           \
    "routes:\n  - { name: r, match: { path_prefix: / }, upstream: u }\n"
#define HEAD                                                                                       \
    UPSTREAMS                                                                                      \
    "alerts:\n  channels:\n    chat: { type: console }\n    pager: { type: console }\n"            \
    "    phone: { type: console }\n"                                                               \
    "  tiers:\n    P0: { channels: [phone, pager], repeat: 5m }\n"                                 \
    "    P1: { channels: [chat, pager], escalate_after: 15m }\n"                                   \
    "    P2: { channels: [chat], escalate_after: 1h }\n"

#define BREAKER(u) "{\"upstream\":\"" u "\",\"reason\":\"trial_failed\"}"
#define UPS(u) "{\"upstream\":\"" u "\"}"
#define HOST(u, h) "{\"upstream\":\"" u "\",\"host\":\"" h "\"}"

typedef struct trng {
    uint64_t n;
    bool high;
} trng_t;

static uint64_t test_random(void *ctx)
{
    trng_t *t = ctx;
    uint64_t v = t->n++;
    return t->high ? UINT64_MAX - v : v;
}

typedef struct fx {
    char dir[64];
    al_db_t *db;
    gw_config_t *cfg;
    al_engine_t *e;
    trng_t rng;
    al_engine_options_t opt;
} fx_t;

static void fx_open(fx_t *f)
{
    char err[256];

    assert_int_equal(al_db_open(f->dir, &f->db, err, sizeof(err)), 0);
    assert_int_equal(al_engine_new(f->db, &f->cfg->alerts, &f->opt, &f->e), 0);
}

static void fx_close(fx_t *f)
{
    al_engine_free(f->e);
    al_db_close(f->db);
    f->e = NULL;
    f->db = NULL;
}

/* A config of head (UPSTREAMS + an alerts section) + extra. */
static fx_t *fx_new_cfg(const char *head, const char *extra, uint32_t failing_after)
{
    fx_t *f = calloc(1, sizeof(*f));
    char *yaml = NULL;

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/bw_test_outbox.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_true(asprintf(&yaml, "%s%s", head, extra) > 0);
    f->cfg = eng_config(yaml);
    f->opt.random = test_random;
    f->opt.random_ctx = &f->rng;
    f->opt.source = "breakwater@test";
    f->opt.failing_after = failing_after;
    fx_open(f);
    return f;
}

static fx_t *fx_new(const char *extra, uint32_t failing_after)
{
    return fx_new_cfg(HEAD, extra, failing_after);
}

static int teardown(void **state)
{
    fx_t *f = *state;

    fx_close(f);
    gw_config_free(f->cfg);
    eng_rmtree(f->dir);
    free(f);
    return 0;
}

static int setup(void **state)
{
    *state = fx_new("", 100);
    return 0;
}

static int setup_failing(void **state)
{
    *state =
        fx_new("  delivery: { max_attempts: 3, max_age: 24h, backoff: 1s, max_backoff: 5m }\n", 0);
    return 0;
}

static int setup_default_failing(void **state)
{
    *state = fx_new("", 0); /* failing_after: the engine's default */
    return 0;
}

static int setup_short_age(void **state)
{
    *state = fx_new("  delivery: { max_age: 10s, backoff: 1s, max_backoff: 5m }\n", 100);
    return 0;
}

/* One console channel "ding" limited to `rate`, on every tier. */
#define RL_HEAD(rate)                                                                              \
    UPSTREAMS "alerts:\n  channels:\n    ding: { type: console, rate_limit: " rate " }\n"          \
              "  tiers:\n    P0: { channels: [ding], repeat: 5m }\n"                               \
              "    P1: { channels: [ding], escalate_after: 15m }\n"                                \
              "    P2: { channels: [ding], escalate_after: 1h }\n"

static int setup_rl_2m(void **state)
{
    *state = fx_new_cfg(RL_HEAD("2/m"), "", 100);
    return 0;
}

static int setup_rl_4m(void **state)
{
    *state = fx_new_cfg(RL_HEAD("4/m"), "", 100);
    return 0;
}

static int setup_rl_1h(void **state)
{
    *state = fx_new_cfg(RL_HEAD("1/h"), "", 100);
    return 0;
}

/* "ding" (1/h) on P0, "chat" (no limit) on P1 and P2. */
static int setup_rl_mixed(void **state)
{
    *state = fx_new_cfg(UPSTREAMS "alerts:\n  channels:\n"
                                  "    ding: { type: console, rate_limit: 1/h }\n"
                                  "    chat: { type: console }\n"
                                  "  tiers:\n    P0: { channels: [ding], repeat: 5m }\n"
                                  "    P1: { channels: [chat], escalate_after: 15m }\n"
                                  "    P2: { channels: [chat], escalate_after: 1h }\n",
                        "", 100);
    return 0;
}

/* Tiers with the windows delivery_failing waits for: P0 repeat 5m, P1 escalate_after 15m, P2
 * neither (5 minutes). failing_after 1: every failed attempt past the window raises. */
static int setup_windows(void **state)
{
    *state = fx_new_cfg(UPSTREAMS "alerts:\n  channels:\n    chat: { type: console }\n"
                                  "  tiers:\n    P0: { channels: [chat], repeat: 5m }\n"
                                  "    P1: { channels: [chat], escalate_after: 15m }\n"
                                  "    P2: { channels: [chat] }\n",
                        "", 1);
    return 0;
}

static void assert_text(fx_t *f, const char *want, const char *sql)
{
    sqlite3_stmt *st = NULL;
    char *got = NULL;
    bool same;

    assert_int_equal(sqlite3_prepare_v2(al_db_handle(f->db), sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
        got = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st); /* before any assert: a failing test must still close the database */
    same = got != NULL && strcmp(got, want) == 0;
    if (!same)
        print_message("query: %s\n  got: %s\n want: %s\n", sql, got ? got : "(null)", want);
    free(got);
    assert_true(same);
}

static void ev(fx_t *f, const char *kind, const char *fields, uint64_t now)
{
    assert_int_equal(al_engine_event(f->e, kind, -1, fields, now), 0);
}

static size_t claim(fx_t *f, uint64_t now, al_delivery_t *d, size_t max)
{
    size_t n = 99;

    assert_int_equal(al_outbox_claim(f->e, now, d, max, &n), 0);
    return n;
}

static void record(fx_t *f, al_delivery_t *d, al_send_result_t res, int status, uint64_t ra,
                   uint64_t now)
{
    al_attempt_t a = {res, status, ra, res == AL_SEND_OK ? NULL : "boom"};

    assert_int_equal(al_outbox_record(f->e, d, &a, now), 0);
}

static void dispose(al_delivery_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        al_delivery_dispose(&d[i]);
}

/* Raises an external alert on `tier` named `name`; returns its id. */
static int64_t ext(fx_t *f, const char *tier, const char *name, uint64_t now)
{
    char body[256], err[128];
    al_external_result_t res;

    snprintf(body, sizeof(body),
             "{\"summary\":\"%s is down\",\"tier\":\"%s\",\"labels\":{\"name\":\"%s\"}}", name,
             tier, name);
    assert_int_equal(al_engine_external(f->e, body, strlen(body), now, &res, err, sizeof(err)), 0);
    assert_int_equal(res.raised, 1);
    return res.ids[0];
}

/* The alert ids of a claimed delivery's payload (ascending) and its "folded" count. */
static size_t payload_ids(const al_delivery_t *d, int64_t *ids, size_t max, int64_t *folded)
{
    json_t *p = json_loads(d->payload_json, 0, NULL), *alerts;
    size_t n = 0;

    assert_non_null(p);
    alerts = json_object_get(p, "alerts");
    for (size_t i = 0; i < json_array_size(alerts) && n < max; i++)
        ids[n++] = atoll(json_string_value(json_object_get(json_array_get(alerts, i), "alert_id")));
    *folded = json_integer_value(json_object_get(p, "folded"));
    assert_true(json_is_integer(json_object_get(p, "folded")));
    json_decref(p);
    return n;
}

static uint64_t next_due(fx_t *f)
{
    uint64_t next = 0;

    assert_int_equal(al_outbox_next_due(f->e, &next), 0);
    return next;
}

/* ---- the schedule ---- */

static void backoff_doubles_with_equal_jitter_up_to_the_cap(void **state)
{
    gw_delivery_config_t dc = {0, 24 * HOUR, 1000, 300000};
    const uint64_t low[] = {500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 150000};
    (void)state;
    for (uint32_t a = 1; a <= 10; a++) {
        assert_int_equal(al_outbox_backoff_ms(&dc, a, 0), low[a - 1]);
        assert_int_equal(al_outbox_backoff_ms(&dc, a, UINT64_MAX), 2 * low[a - 1]);
        /* the middle of the random range lands in the middle of [base/2, base] */
        uint64_t mid = al_outbox_backoff_ms(&dc, a, UINT64_MAX / 2);
        assert_true(mid >= low[a - 1] && mid <= 2 * low[a - 1]);
        assert_true(mid > low[a - 1] + low[a - 1] / 4 && mid < 2 * low[a - 1] - low[a - 1] / 4);
    }
    /* huge attempt numbers never overflow: capped at max_backoff */
    assert_int_equal(al_outbox_backoff_ms(&dc, 4000000000u, UINT64_MAX), 300000);
    assert_int_equal(al_outbox_backoff_ms(&dc, 0, 0), 500);
}

static void retries_follow_the_backoff_and_honour_retry_after(void **state)
{
    fx_t *f = *state;
    const uint64_t delays[] = {500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 150000};
    al_delivery_t d[2];
    uint64_t now = T0, next;
    char id0[37];

    ev(f, "host_down", HOST("users", "a:1"), T0); /* P2: one delivery, to chat */
    assert_int_equal(claim(f, now, d, 2), 1);
    memcpy(id0, d[0].delivery_id, sizeof(id0));
    for (int i = 0; i < 10; i++) {
        assert_int_equal(d[0].attempt, (uint32_t)i + 1);
        assert_string_equal(d[0].delivery_id, id0); /* stable across attempts */
        record(f, &d[0], AL_SEND_RETRY, 503, 0, now);
        dispose(d, 1);
        assert_int_equal(eng_q_int(f->db, "SELECT next_attempt_at FROM deliveries"),
                         now + delays[i]);
        assert_int_equal(al_outbox_next_due(f->e, &next), 0);
        assert_int_equal(next, now + delays[i]);
        assert_int_equal(claim(f, now + delays[i] - 1, d, 2), 0);
        now += delays[i];
        assert_int_equal(claim(f, now, d, 2), 1);
    }
    /* Retry-After is a floor: 10 min although the backoff says 150 s */
    record(f, &d[0], AL_SEND_RETRY, 429, 600 * SEC, now);
    dispose(d, 1);
    assert_int_equal(eng_q_int(f->db, "SELECT next_attempt_at FROM deliveries"), now + 600 * SEC);
    now += 600 * SEC;
    assert_int_equal(claim(f, now, d, 2), 1);
    record(f, &d[0], AL_SEND_RETRY, 429, 1 * SEC, now); /* shorter than the backoff: backoff */
    dispose(d, 1);
    assert_int_equal(eng_q_int(f->db, "SELECT next_attempt_at FROM deliveries"), now + 150 * SEC);
    assert_text(f, "pending|429|boom",
                "SELECT status || '|' || last_code || '|' || last_error FROM deliveries");
    /* the jitter's top end */
    f->rng.high = true;
    now += 150 * SEC;
    assert_int_equal(claim(f, now, d, 2), 1);
    record(f, &d[0], AL_SEND_RETRY, 500, 0, now);
    dispose(d, 1);
    assert_int_equal(eng_q_int(f->db, "SELECT next_attempt_at FROM deliveries"), now + 300 * SEC);
    /* and finally it goes through */
    now += 300 * SEC;
    assert_int_equal(claim(f, now, d, 2), 1);
    record(f, &d[0], AL_SEND_OK, 200, 0, now);
    dispose(d, 1);
    assert_text(f, "sent", "SELECT status FROM deliveries");
    assert_int_equal(eng_q_int(f->db, "SELECT attempts FROM deliveries"), 14);
    assert_int_equal(eng_q_int(f->db, "SELECT finished_at FROM deliveries"), now);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alert_history WHERE kind = 'delivery'"),
                     14);
}

static void max_attempts_fails_and_raises_delivery_failing(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4];
    uint64_t now = T0;

    ev(f, "host_down", HOST("users", "a:1"), T0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(claim(f, now, d, 1), 1);
        record(f, &d[0], AL_SEND_RETRY, 500, 0, now);
        dispose(d, 1);
        now += 10 * SEC;
    }
    assert_text(f, "failed|3", "SELECT status || '|' || attempts FROM deliveries WHERE id = 1");
    assert_text(f, "max_attempts",
                "SELECT json_extract(detail, '$.reason') FROM alert_history WHERE kind = "
                "'delivery' ORDER BY id DESC LIMIT 1");
    /* the channel is failing: an engine alert on the delivery_failing rule's tier (P1) */
    assert_text(f, "delivery_failing{channel=\"chat\"}|1|engine",
                "SELECT dedup_key || '|' || tier || '|' || source FROM alerts WHERE id = 2");
    assert_text(f, "Alert deliveries to channel 'chat' are failing: HTTP 500, boom (3 attempts)",
                "SELECT summary FROM alerts WHERE id = 2");
    /* a later success on chat resolves it */
    assert_int_equal(claim(f, now, d, 4), 2); /* its own notifications: chat, pager */
    record(f, &d[0], AL_SEND_OK, 200, 0, now);
    record(f, &d[1], AL_SEND_OK, 200, 0, now);
    dispose(d, 2);
    assert_text(f, "resolved delivery_failing_cleared",
                "SELECT status || ' ' || resolved_by FROM alerts WHERE id = 2");
}

static void max_age_ends_retries(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[1];
    uint64_t now = T0;

    ev(f, "host_down", HOST("users", "a:1"), T0);
    /* delays 500, 1000, 2000, 4000: the 5th would land past created_at + 10 s */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(claim(f, now, d, 1), 1);
        record(f, &d[0], AL_SEND_RETRY, 502, 0, now);
        dispose(d, 1);
        now = (uint64_t)eng_q_int(f->db, "SELECT next_attempt_at FROM deliveries");
    }
    assert_int_equal(now, T0 + 7500);
    assert_int_equal(claim(f, now, d, 1), 1);
    record(f, &d[0], AL_SEND_RETRY, 502, 0, now);
    dispose(d, 1);
    assert_text(f, "failed", "SELECT status FROM deliveries");
    assert_text(f, "max_age",
                "SELECT json_extract(detail, '$.reason') FROM alert_history WHERE kind = "
                "'delivery' ORDER BY id DESC LIMIT 1");
    /* a Retry-After beyond max_age fails at once too */
    ev(f, "host_down", HOST("users", "b:1"), now);
    assert_int_equal(claim(f, now, d, 1), 1);
    record(f, &d[0], AL_SEND_RETRY, 503, 11 * SEC, now);
    dispose(d, 1);
    assert_text(f, "failed", "SELECT status FROM deliveries WHERE id = 2");
}

static void permanent_failure_is_final(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[1];

    ev(f, "host_down", HOST("users", "a:1"), T0);
    assert_int_equal(claim(f, T0, d, 1), 1);
    record(f, &d[0], AL_SEND_PERMANENT, 400, 0, T0);
    dispose(d, 1);
    assert_text(f, "failed|1|400",
                "SELECT status || '|' || attempts || '|' || last_code FROM "
                "deliveries WHERE id = 1");
    assert_int_equal(
        eng_q_int(f->db, "SELECT count(*) FROM alerts WHERE event = 'delivery_failing'"), 1);
}

static void ambiguous_attempts_retry_p0_p1_and_end_p2(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[8];
    size_t n;

    ev(f, "no_healthy_hosts", UPS("users"), T0);       /* P0: phone, pager */
    ev(f, "breaker_open", BREAKER("users"), T0);       /* P1: chat, pager */
    ev(f, "host_down", HOST("orders", "z:1"), T0 + 1); /* P2: chat */
    n = claim(f, T0 + 2, d, 8);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++)
        record(f, &d[i], AL_SEND_AMBIGUOUS, 0, 0, T0 + 3);
    dispose(d, n);
    assert_text(f, "pending,pending,pending,pending,ambiguous",
                "SELECT group_concat(status, ',') FROM (SELECT status FROM deliveries ORDER BY "
                "id)");
    /* a P2 that may have been delivered still gets its resolved notification */
    ev(f, "host_up", HOST("orders", "z:1"), T0 + MIN);
    assert_int_equal(
        eng_q_int(f->db,
                  "SELECT count(*) FROM deliveries WHERE kind = 'resolved' AND channel = 'chat'"),
        1);
}

static void expired_lease_is_retried_and_late_results_are_refused(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4], again[4];
    al_attempt_t ok = {AL_SEND_OK, 200, 0, NULL};

    ev(f, "breaker_open", BREAKER("users"), T0); /* P1: chat, pager */
    assert_int_equal(claim(f, T0, d, 4), 2);
    assert_int_equal(d[0].lease_until_ms, T0 + 60 * SEC);
    assert_int_equal(claim(f, T0 + 60 * SEC - 1, again, 4), 0);
    /* the sender never reported: at lease end both are retried (any tier: it may never have
     * left) */
    assert_int_equal(claim(f, T0 + 60 * SEC, again, 4), 0);
    assert_text(f, "pending,pending",
                "SELECT group_concat(status, ',') FROM (SELECT status FROM deliveries ORDER BY "
                "id)");
    assert_int_equal(eng_q_int(f->db, "SELECT next_attempt_at FROM deliveries WHERE id = 1"),
                     T0 + 60 * SEC + 500);
    assert_text(f,
                "lease expired: the sender did not report a result (the process died?); sending "
                "again",
                "SELECT json_extract(detail, '$.error') FROM alert_history WHERE kind = "
                "'delivery' LIMIT 1");
    /* the old claim's late result is refused; the new claim's is taken */
    assert_int_equal(al_outbox_record(f->e, &d[0], &ok, T0 + 60 * SEC + 1), AL_ESTALE);
    assert_int_equal(al_outbox_check(f->e, &d[0], T0 + 60 * SEC + 1), 0);
    assert_int_equal(claim(f, T0 + 61 * SEC, again, 4), 2);
    assert_int_equal(again[0].attempt, 2);
    assert_int_equal(al_outbox_record(f->e, &d[1], &ok, T0 + 61 * SEC), AL_ESTALE);
    record(f, &again[0], AL_SEND_OK, 200, 0, T0 + 61 * SEC);
    record(f, &again[1], AL_SEND_OK, 200, 0, T0 + 61 * SEC);
    dispose(d, 2);
    dispose(again, 2);
    assert_text(f, "sent,sent",
                "SELECT group_concat(status, ',') FROM (SELECT status FROM deliveries ORDER BY "
                "id)");
}

static void restart_resends_every_in_flight_send_even_p2(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4];
    size_t n;

    ev(f, "breaker_open", BREAKER("users"), T0);       /* P1 */
    ev(f, "host_down", HOST("orders", "z:1"), T0 + 1); /* P2 */
    n = claim(f, T0 + 2, d, 4);
    assert_int_equal(n, 3);
    dispose(d, n);
    fx_close(f); /* crash while sending */
    fx_open(f);
    assert_int_equal(al_engine_start(f->e, T0 + 5 * SEC), 0);
    /* SPEC 4: what was accepted is delivered after a restart, P2 included (same key) */
    assert_text(f, "pending,pending,pending",
                "SELECT group_concat(status, ',') FROM (SELECT status FROM deliveries ORDER BY "
                "id)");
    assert_int_equal(claim(f, T0 + 5 * SEC + 500, d, 4), 3);
    assert_string_equal(d[0].channel, "chat");
    assert_int_equal(d[0].attempt, 2);
    dispose(d, 3);
}

static void delivery_ids_are_stable_unique_uuids(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4];
    size_t n;

    ev(f, "breaker_open", BREAKER("users"), T0);
    n = claim(f, T0, d, 4);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++) {
        const char *u = d[i].delivery_id;
        assert_int_equal(strlen(u), 36);
        for (int j = 0; j < 36; j++) {
            if (j == 8 || j == 13 || j == 18 || j == 23)
                assert_int_equal(u[j], '-');
            else
                assert_non_null(strchr("0123456789abcdef", u[j]));
        }
        assert_int_equal(u[14], '4');
        assert_non_null(strchr("89ab", u[19]));
    }
    assert_string_not_equal(d[0].delivery_id, d[1].delivery_id);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE delivery_id = '%q'",
                               d[0].delivery_id),
                     1);
    dispose(d, n);
}

static void resolved_waits_for_its_firing_in_flight_on_the_same_channel(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4], r[4];

    ev(f, "breaker_open", BREAKER("users"), T0);
    assert_int_equal(claim(f, T0, d, 4), 2); /* firing: chat, pager (sending) */
    ev(f, "breaker_closed", UPS("users"), T0 + 1);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE kind = 'resolved'"),
                     2);
    assert_int_equal(claim(f, T0 + 2, r, 4), 0);
    /* the firing message to chat lands: now chat's resolved may go, pager's still waits */
    assert_string_equal(d[0].channel, "chat");
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + 3);
    assert_int_equal(claim(f, T0 + 4, r, 4), 1);
    assert_string_equal(r[0].channel, "chat");
    assert_int_equal(r[0].kind, AL_NOTIFY_RESOLVED);
    assert_int_equal(al_outbox_check(f->e, &r[0], T0 + 4), 1); /* resolved: always wanted */
    /* pager's firing is re-checked before sending: the alert resolved meanwhile, so it is not
     * sent, and pager's resolved notification goes with it (pager never heard of the alert) */
    assert_int_equal(al_outbox_check(f->e, &d[1], T0 + 5), 0);
    assert_int_equal(claim(f, T0 + 6, r + 1, 3), 0);
    assert_text(f, "chat:resolved:sending,pager:firing:cancelled,pager:resolved:cancelled",
                "SELECT group_concat(x, ',') FROM (SELECT channel || ':' || kind || ':' || status "
                "AS x FROM deliveries WHERE status <> 'sent' ORDER BY channel, kind)");
    dispose(d, 2);
    dispose(r, 1);
}

static void payload_has_the_webhook_shape(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4];
    json_t *p, *a;

    ev(f, "breaker_open", BREAKER("users"), T0 + 250);
    assert_int_equal(claim(f, T0 + 250, d, 1), 1);
    assert_string_equal(d[0].channel, "chat");
    assert_int_equal(d[0].kind, AL_NOTIFY_FIRING);
    assert_int_equal(d[0].tier, 1);
    assert_int_equal(d[0].expires_at_ms, T0 + 250 + 24 * HOUR);
    p = json_loads(d[0].payload_json, 0, NULL);
    assert_non_null(p);
    assert_string_equal(json_string_value(json_object_get(p, "version")), "1");
    assert_string_equal(json_string_value(json_object_get(p, "delivery_id")), d[0].delivery_id);
    assert_string_equal(json_string_value(json_object_get(p, "kind")), "firing");
    assert_string_equal(json_string_value(json_object_get(p, "tier")), "P1");
    assert_int_equal(json_array_size(json_object_get(p, "alerts")), 1);
    a = json_array_get(json_object_get(p, "alerts"), 0);
    assert_string_equal(json_string_value(json_object_get(a, "alert_id")), "1");
    assert_string_equal(json_string_value(json_object_get(a, "delivery_id")), d[0].delivery_id);
    assert_string_equal(json_string_value(json_object_get(a, "dedup_key")),
                        "breaker_open{upstream=\"users\"}");
    assert_string_equal(json_string_value(json_object_get(a, "status")), "firing");
    assert_string_equal(json_string_value(json_object_get(a, "event")), "breaker_open");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(a, "labels"), "upstream")), "users");
    assert_string_equal(json_string_value(json_object_get(a, "summary")),
                        "Circuit breaker for upstream 'users' re-opened: a trial request failed");
    assert_string_equal(json_string_value(json_object_get(a, "started_at")),
                        "2026-01-01T00:00:00Z");
    assert_int_equal(json_integer_value(json_object_get(a, "escalation_level")), 0);
    assert_int_equal(json_integer_value(json_object_get(a, "count")), 1);
    assert_string_equal(json_string_value(json_object_get(a, "source")), "breakwater@test");
    json_decref(p);
    dispose(d, 1);
}

static void next_due_and_depth_follow_the_rows(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4];
    al_attempt_t bad = {(al_send_result_t)9, 0, 0, NULL};
    uint64_t next = 0, depth = 9;

    assert_int_equal(al_outbox_next_due(f->e, &next), 0);
    assert_int_equal(next, NEVER);
    assert_int_equal(al_outbox_depth(f->e, &depth), 0);
    assert_int_equal(depth, 0);
    ev(f, "breaker_open", BREAKER("users"), T0);
    assert_int_equal(al_outbox_next_due(f->e, &next), 0);
    assert_int_equal(next, T0);
    assert_int_equal(al_outbox_depth(f->e, &depth), 0);
    assert_int_equal(depth, 2);
    assert_int_equal(claim(f, T0, d, 4), 2);
    assert_int_equal(al_outbox_next_due(f->e, &next), 0);
    assert_int_equal(next, T0 + 60 * SEC); /* the leases' end */
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + 1);
    record(f, &d[1], AL_SEND_OK, 200, 0, T0 + 1);
    dispose(d, 2);
    assert_int_equal(al_outbox_next_due(f->e, &next), 0);
    assert_int_equal(next, NEVER);
    assert_int_equal(al_outbox_depth(f->e, &depth), 0);
    assert_int_equal(depth, 0);
    assert_int_equal(al_outbox_record(f->e, &d[0], &bad, T0), AL_DB_EINVAL);
}

/* ---- channel rate limits ---- */

/* 2/m: two go at once, the other three wait for the next token (no attempt, no spin) and then
 * go as ONE message; every alert is in exactly one sent delivery. */
static void rate_limit_folds_the_excess_into_one_delivery(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[8];
    int64_t ids[8], folded = -1, a[5];
    char carrier[37], want[128];

    for (int i = 0; i < 5; i++) {
        char name[8];
        snprintf(name, sizeof(name), "db%d", i + 1);
        a[i] = ext(f, "P0", name, T0);
    }
    assert_int_equal(claim(f, T0, d, 8), 2);
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(payload_ids(&d[i], ids, 8, &folded), 1);
        assert_int_equal(ids[0], a[i]);
        assert_int_equal(folded, 0);
        record(f, &d[i], AL_SEND_OK, 200, 0, T0 + 1);
    }
    dispose(d, 2);
    /* the other three wait for the token at T0 + 30 s: pending, nothing attempted */
    assert_text(f, "pending|0|3",
                "SELECT status || '|' || sum(attempts) || '|' || count(*) FROM deliveries "
                "WHERE id > 2 GROUP BY status");
    assert_int_equal(eng_q_int(f->db, "SELECT min(next_attempt_at) FROM deliveries WHERE id > 2"),
                     T0 + 30 * SEC);
    assert_int_equal(eng_q_int(f->db, "SELECT max(next_attempt_at) FROM deliveries WHERE id > 2"),
                     T0 + 30 * SEC);
    assert_int_equal(next_due(f), T0 + 30 * SEC);
    assert_int_equal(claim(f, T0 + 30 * SEC - 1, d, 8), 0);
    assert_int_equal(next_due(f), T0 + 30 * SEC); /* a look before the token changes nothing */
    assert_int_equal(eng_q_int(f->db,
                               "SELECT count(*) FROM alert_history WHERE kind = 'delivery' AND "
                               "json_extract(detail, '$.reason') = "
                               "'waiting for a token of the channel''s rate limit'"),
                     3); /* once per waiting notification */
    /* the token: one delivery carries the three */
    assert_int_equal(claim(f, T0 + 30 * SEC, d, 8), 1);
    assert_int_equal(payload_ids(&d[0], ids, 8, &folded), 3);
    assert_true(ids[0] == a[2] && ids[1] == a[3] && ids[2] == a[4]);
    assert_int_equal(folded, 2);
    assert_int_equal(d[0].attempt, 1);
    memcpy(carrier, d[0].delivery_id, sizeof(carrier));
    assert_text(f, "folded,folded",
                "SELECT group_concat(status, ',') FROM deliveries WHERE folded_into = 3");
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'pending'"),
                     0);
    snprintf(want, sizeof(want), "folded into delivery %s (channel rate limit)", carrier);
    for (int i = 3; i < 5; i++) {
        char sql[256];
        snprintf(sql, sizeof(sql),
                 "SELECT json_extract(detail, '$.reason') FROM alert_history WHERE alert_id = "
                 "%lld AND json_extract(detail, '$.status') = 'folded'",
                 (long long)a[i]);
        assert_text(f, want, sql);
    }
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + 30 * SEC + 5);
    dispose(d, 1);
    /* nothing lost, nothing twice; the carrier's attempt is in the folded alerts' lineage too */
    assert_int_equal(eng_q_int(f->db,
                               "SELECT count(*) FROM (SELECT m.alert_id FROM delivery_alerts m "
                               "JOIN deliveries d ON d.id = m.delivery WHERE d.status = 'sent' "
                               "GROUP BY m.alert_id HAVING count(*) = 1)"),
                     5);
    assert_int_equal(eng_q_int(f->db,
                               "SELECT count(*) FROM alert_history WHERE alert_id = %lld AND "
                               "kind = 'delivery' AND json_extract(detail, '$.status') = 'sent'",
                               (long long)a[4]),
                     1);
    assert_int_equal(next_due(f), NEVER);
}

/* 4/m keeps 1 token for P0: P2 takes tokens only while more than 1 is left. */
static void p0_has_reserved_capacity(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[8];

    for (int i = 0; i < 4; i++) {
        char name[8];
        snprintf(name, sizeof(name), "h%d", i + 1);
        ext(f, "P2", name, T0);
    }
    assert_int_equal(claim(f, T0, d, 8), 3); /* 4 -> 1 token: the reserve */
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(d[i].tier, GW_TIER_P2);
    /* the 4th P2 needs 2 tokens: 1 more, 15 s at 4/m */
    assert_int_equal(eng_q_int(f->db, "SELECT next_attempt_at FROM deliveries WHERE id = 4"),
                     T0 + 15 * SEC);
    /* a P0 raised meanwhile takes the reserve at once; the P2 keeps waiting */
    ext(f, "P0", "core", T0 + SEC);
    assert_int_equal(claim(f, T0 + SEC, d + 3, 5), 1);
    assert_int_equal(d[3].tier, GW_TIER_P0);
    assert_text(f, "pending", "SELECT status FROM deliveries WHERE id = 4");
    /* at T0 + 15 s it has 1 token (the P0 took one): not yet; 2 tokens at T0 + 30 s */
    assert_int_equal(claim(f, T0 + 15 * SEC, d + 4, 4), 0);
    assert_int_equal(next_due(f), T0 + 30 * SEC);
    assert_int_equal(claim(f, T0 + 30 * SEC, d + 4, 4), 1);
    assert_int_equal(d[4].tier, GW_TIER_P2);
    assert_int_equal(d[4].attempt, 1);
    for (size_t i = 0; i < 5; i++)
        record(f, &d[i], AL_SEND_OK, 200, 0, T0 + 30 * SEC);
    dispose(d, 5);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'sent'"), 5);
}

/* An ack while notifications wait cancels them (they are not folded); an ack after the folded
 * delivery was claimed cancels it at the send-time re-check, for every alert it carries. */
static void ack_before_the_folded_send_cancels(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[8];
    int64_t ids[8], folded = -1, a[6];

    for (int i = 0; i < 6; i++) {
        char name[8];
        snprintf(name, sizeof(name), "db%d", i + 1);
        a[i] = ext(f, "P0", name, T0);
    }
    assert_int_equal(claim(f, T0, d, 8), 2);
    record(f, &d[0], AL_SEND_OK, 200, 0, T0);
    record(f, &d[1], AL_SEND_OK, 200, 0, T0);
    dispose(d, 2);
    assert_int_equal(al_engine_ack(f->e, a[3], "ops", T0 + 10 * SEC), 0);
    assert_text(f, "cancelled", "SELECT status FROM deliveries WHERE id = 4");
    assert_int_equal(claim(f, T0 + 30 * SEC, d, 8), 1);
    assert_int_equal(payload_ids(&d[0], ids, 8, &folded), 3);
    assert_true(ids[0] == a[2] && ids[1] == a[4] && ids[2] == a[5]);
    assert_int_equal(folded, 2);
    /* everything it carries is acknowledged before the send: not sent */
    assert_int_equal(al_engine_ack(f->e, a[2], "ops", T0 + 31 * SEC), 0);
    assert_int_equal(al_engine_ack(f->e, a[4], "ops", T0 + 31 * SEC), 0);
    assert_int_equal(al_outbox_check(f->e, &d[0], T0 + 32 * SEC), 1); /* a[5] still firing */
    assert_int_equal(al_engine_ack(f->e, a[5], "ops", T0 + 32 * SEC), 0);
    assert_int_equal(al_outbox_check(f->e, &d[0], T0 + 33 * SEC), 0);
    dispose(d, 1);
    assert_text(f, "cancelled", "SELECT status FROM deliveries WHERE id = 3");
    assert_text(f, "folded,folded",
                "SELECT group_concat(status, ',') FROM deliveries WHERE folded_into = 3");
    for (int i = 4; i < 6; i++)
        assert_int_equal(eng_q_int(f->db,
                                   "SELECT count(*) FROM alert_history WHERE alert_id = %lld AND "
                                   "kind = 'cancelled'",
                                   (long long)a[i]),
                         1);
    uint64_t depth = 9;
    assert_int_equal(al_outbox_depth(f->e, &depth), 0);
    assert_int_equal(depth, 0);
    assert_int_equal(next_due(f), NEVER);
}

/* 1/h: a first P0 alert takes the hour's token at T0 and is sent; n more ("n0", "n1", ...)
 * raised at T0 + 1 s all wait for the next token. */
static void backlog_behind_a_spent_token(fx_t *f, int n)
{
    al_delivery_t d[4];

    ext(f, "P0", "first", T0);
    assert_int_equal(claim(f, T0, d, 4), 1);
    record(f, &d[0], AL_SEND_OK, 200, 0, T0);
    dispose(d, 1);
    for (int i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof(name), "n%d", i);
        ext(f, "P0", name, T0 + SEC);
    }
    assert_int_equal(claim(f, T0 + SEC, d, 4), 0);
}

/* 1/h: a token carries at most AL_GROUP_MAX alerts; the rest wait for the next one. */
static void folding_respects_the_group_bound(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4];
    int64_t ids[AL_GROUP_MAX], folded = -1;

    backlog_behind_a_spent_token(f, AL_GROUP_MAX + 10);
    assert_int_equal(next_due(f), T0 + HOUR);
    assert_int_equal(claim(f, T0 + HOUR, d, 4), 1);
    assert_int_equal(payload_ids(&d[0], ids, AL_GROUP_MAX, &folded), AL_GROUP_MAX);
    assert_int_equal(folded, AL_GROUP_MAX - 1);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'pending'"),
                     10);
    assert_int_equal(eng_q_int(f->db, "SELECT min(next_attempt_at) FROM deliveries WHERE status = "
                                      "'pending'"),
                     T0 + 2 * HOUR);
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + HOUR);
    dispose(d, 1);
    assert_int_equal(claim(f, T0 + 2 * HOUR, d, 4), 1);
    assert_int_equal(payload_ids(&d[0], ids, AL_GROUP_MAX, &folded), 10);
    assert_int_equal(folded, 9);
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + 2 * HOUR);
    dispose(d, 1);
    assert_int_equal(eng_q_int(f->db,
                               "SELECT count(*) FROM (SELECT m.alert_id FROM delivery_alerts m "
                               "JOIN deliveries d ON d.id = m.delivery WHERE d.status = 'sent' "
                               "GROUP BY m.alert_id HAVING count(*) = 1)"),
                     AL_GROUP_MAX + 11);
}

/* Only notifications of the same kind fold together; one whose alert still waits for its
 * earlier notification on the channel (ordering) is not folded; a P2 folded into a P1 goes out
 * on P1. */
static void only_the_same_kind_folds_and_order_is_kept(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[8];
    int64_t ids[8], folded = -1, a, b, c, p2;

    a = ext(f, "P1", "a", T0);
    b = ext(f, "P1", "b", T0);
    assert_int_equal(claim(f, T0, d, 8), 1); /* 2/m keeps 1 for P0: one P1 goes */
    record(f, &d[0], AL_SEND_OK, 200, 0, T0);
    dispose(d, 1);
    /* b waits (firing); a resolves: its resolved notification waits too; c and a P2 arrive */
    assert_int_equal(al_engine_resolve(f->e, a, "ops", T0 + SEC), 0);
    c = ext(f, "P1", "c", T0 + 2 * SEC);
    p2 = ext(f, "P2", "low", T0 + 3 * SEC);
    assert_int_equal(claim(f, T0 + 3 * SEC, d, 8), 0);
    /* 2 tokens again at T0 + 30 s: one message carries b, c and the P2, on P1 */
    assert_int_equal(next_due(f), T0 + 30 * SEC);
    assert_int_equal(claim(f, T0 + 30 * SEC, d, 8), 1);
    assert_int_equal(d[0].kind, AL_NOTIFY_FIRING); /* P1 first, oldest first: b's */
    assert_int_equal(d[0].tier, GW_TIER_P1);
    assert_int_equal(payload_ids(&d[0], ids, 8, &folded), 3);
    assert_true(ids[0] == b && ids[1] == c && ids[2] == p2);
    assert_int_equal(folded, 2);
    assert_int_equal(
        eng_q_int(f->db, "SELECT tier FROM deliveries WHERE id = %lld", (long long)d[0].id),
        GW_TIER_P1);
    /* the resolved notification is another kind: it waits for a token of its own */
    assert_text(f, "pending", "SELECT status FROM deliveries WHERE kind = 'resolved'");
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + 30 * SEC);
    dispose(d, 1);
    assert_int_equal(next_due(f), T0 + 60 * SEC);
    assert_int_equal(claim(f, T0 + 60 * SEC - 1, d, 8), 0);
    assert_int_equal(claim(f, T0 + 60 * SEC, d, 8), 1);
    assert_int_equal(d[0].kind, AL_NOTIFY_RESOLVED);
    assert_int_equal(payload_ids(&d[0], ids, 8, &folded), 1);
    assert_int_equal(ids[0], a);
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + 60 * SEC);
    dispose(d, 1);

    /* ordering: x's firing is being sent; x resolves and y resolves; the token comes while x's
     * firing is still in flight: y's resolved goes, x's waits (not folded) */
    int64_t x = ext(f, "P0", "x", T0 + 200 * SEC), y = ext(f, "P0", "y", T0 + 200 * SEC);
    al_delivery_t fx[2];
    assert_int_equal(claim(f, T0 + 200 * SEC, fx, 2), 2); /* x, y firing: sending */
    record(f, &fx[1], AL_SEND_OK, 200, 0, T0 + 201 * SEC);
    assert_int_equal(al_engine_resolve(f->e, x, "ops", T0 + 202 * SEC), 0);
    assert_int_equal(al_engine_resolve(f->e, y, "ops", T0 + 202 * SEC), 0);
    assert_int_equal(claim(f, T0 + 203 * SEC, d, 8), 0); /* x's blocked, y's waits */
    assert_int_equal(claim(f, T0 + 240 * SEC, d, 8), 1); /* lease of x's firing: T0 + 260 s */
    assert_int_equal(payload_ids(&d[0], ids, 8, &folded), 1);
    assert_int_equal(ids[0], y);
    assert_int_equal(folded, 0);
    assert_int_equal(eng_q_int(f->db,
                               "SELECT count(*) FROM deliveries d JOIN delivery_alerts m ON "
                               "m.delivery = d.id WHERE d.kind = 'resolved' AND d.status = "
                               "'pending' AND m.alert_id = %lld",
                               (long long)x),
                     1);
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + 240 * SEC);
    record(f, &fx[0], AL_SEND_OK, 200, 0, T0 + 241 * SEC);
    dispose(d, 1);
    dispose(fx, 2);
}

/* Each rate-limited channel has its own bucket; channels without rate_limit are not limited. */
static void unlimited_channels_are_not_held_back(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[AL_CLAIM_MAX];
    size_t n;

    for (int i = 0; i < 20; i++) {
        char name[16];
        snprintf(name, sizeof(name), "u%d", i);
        ext(f, "P1", name, T0); /* P1: chat and pager, neither limited */
    }
    n = claim(f, T0, d, AL_CLAIM_MAX);
    assert_int_equal(n, 40);
    dispose(d, n);
}

/* A backlog on a rate-limited channel, due at its token's time, does not hold back another
 * channel's notification due at the same moment (the claim scans again once the backlog is put
 * back). */
static void a_limited_backlog_does_not_hold_back_other_channels(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4];
    int64_t ids[AL_GROUP_MAX], folded = -1;

    backlog_behind_a_spent_token(f, 70);
    ext(f, "P1", "api", T0 + HOUR); /* chat: not limited; due with the backlog, after it */
    assert_int_equal(claim(f, T0 + HOUR, d, 4), 2);
    assert_string_equal(d[0].channel, "ding");
    assert_int_equal(payload_ids(&d[0], ids, AL_GROUP_MAX, &folded), AL_GROUP_MAX);
    assert_string_equal(d[1].channel, "chat");
    dispose(d, 2);
}

/* ---- delivery_failing follows the tier's window ---- */

/* Claims the one delivery due at now and records a failed attempt to be retried (HTTP status). */
static void fail_attempt(fx_t *f, int status, uint64_t now)
{
    al_delivery_t d[2];

    assert_int_equal(claim(f, now, d, 2), 1);
    record(f, &d[0], AL_SEND_RETRY, status, 0, now);
    dispose(d, 1);
}

static void delivery_failing_waits_for_the_tier_window(void **state)
{
    fx_t *f = *state;
    int64_t p1 = ext(f, "P1", "api", T0);

    /* P1 (escalate_after 15m): failed attempts inside the window raise nothing */
    for (uint64_t t = T0; t < T0 + 15 * MIN; t += 5 * MIN)
        fail_attempt(f, 503, t);
    assert_int_equal(
        eng_q_int(f->db, "SELECT count(*) FROM alerts WHERE event = 'delivery_failing'"), 0);
    /* the first failed attempt at 15 minutes does */
    fail_attempt(f, 503, T0 + 15 * MIN);
    assert_text(f, "delivery_failing{channel=\"chat\"}|firing|900000",
                "SELECT dedup_key || '|' || status || '|' || (SELECT json_extract(detail, "
                "'$.fields.undelivered_ms') FROM alert_history h WHERE h.alert_id = alerts.id "
                "AND kind = 'raised') FROM alerts WHERE event = 'delivery_failing'");
    (void)p1;
}

static void delivery_failing_windows_by_tier(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[2];

    /* P0 (repeat 5m): 5 minutes */
    ext(f, "P0", "core", T0);
    fail_attempt(f, 500, T0);
    fail_attempt(f, 500, T0 + 4 * MIN);
    assert_int_equal(
        eng_q_int(f->db, "SELECT count(*) FROM alerts WHERE event = 'delivery_failing'"), 0);
    fail_attempt(f, 500, T0 + 5 * MIN);
    assert_int_equal(
        eng_q_int(f->db, "SELECT count(*) FROM alerts WHERE event = 'delivery_failing'"), 1);
    /* its success resolves it; P2 (no escalate_after, no repeat): 5 minutes too */
    assert_int_equal(claim(f, T0 + 10 * MIN, d, 2), 2); /* core's retry + delivery_failing's */
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + 10 * MIN);
    record(f, &d[1], AL_SEND_OK, 200, 0, T0 + 10 * MIN);
    dispose(d, 2);
    assert_text(f, "resolved", "SELECT status FROM alerts WHERE event = 'delivery_failing'");
    assert_int_equal(claim(f, T0 + 10 * MIN, d, 2), 1); /* its resolved notification */
    assert_int_equal(d[0].kind, AL_NOTIFY_RESOLVED);
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + 10 * MIN);
    dispose(d, 1);
    ext(f, "P2", "low", T0 + 20 * MIN);
    fail_attempt(f, 500, T0 + 24 * MIN); /* first tried 4 minutes late */
    assert_int_equal(eng_q_int(f->db,
                               "SELECT count(*) FROM alerts WHERE event = 'delivery_failing' AND "
                               "status = 'firing'"),
                     0);
    fail_attempt(f, 500, T0 + 25 * MIN);
    assert_int_equal(eng_q_int(f->db,
                               "SELECT count(*) FROM alerts WHERE event = 'delivery_failing' AND "
                               "status = 'firing'"),
                     1);
}

/* With the default failing_after (3), one failed attempt after a long wait is not yet a failing
 * channel: the 3rd failed attempt past the window is; a final failure raises at once. */
static void delivery_failing_needs_failing_after_attempts_past_the_window(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[2];

    ev(f, "host_down", HOST("users", "a:1"), T0); /* P2, escalate_after 1h: chat */
    for (int i = 0; i < 3; i++)                   /* three failures within seconds: not failing */
        fail_attempt(f, 500, T0 + (uint64_t)i * 10 * SEC);
    assert_int_equal(claim(f, T0 + 30 * SEC, d, 2), 1);
    record(f, &d[0], AL_SEND_OK, 200, 0, T0 + 30 * SEC);
    dispose(d, 1);
    assert_int_equal(
        eng_q_int(f->db, "SELECT count(*) FROM alerts WHERE event = 'delivery_failing'"), 0);
    /* first tried two hours late (the sender was down): the window has passed, but only the
     * 3rd failed attempt raises */
    ev(f, "host_down", HOST("users", "b:1"), T0 + MIN);
    for (int i = 0; i < 3; i++) {
        uint64_t t = T0 + 2 * HOUR + (uint64_t)i * 10 * SEC;
        fail_attempt(f, 500, t);
        assert_int_equal(
            eng_q_int(f->db, "SELECT count(*) FROM alerts WHERE event = 'delivery_failing'"),
            i == 2);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(backoff_doubles_with_equal_jitter_up_to_the_cap),
        cmocka_unit_test_setup_teardown(retries_follow_the_backoff_and_honour_retry_after, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(max_attempts_fails_and_raises_delivery_failing,
                                        setup_failing, teardown),
        cmocka_unit_test_setup_teardown(max_age_ends_retries, setup_short_age, teardown),
        cmocka_unit_test_setup_teardown(permanent_failure_is_final, setup_failing, teardown),
        cmocka_unit_test_setup_teardown(ambiguous_attempts_retry_p0_p1_and_end_p2, setup, teardown),
        cmocka_unit_test_setup_teardown(expired_lease_is_retried_and_late_results_are_refused,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(restart_resends_every_in_flight_send_even_p2, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(delivery_ids_are_stable_unique_uuids, setup, teardown),
        cmocka_unit_test_setup_teardown(resolved_waits_for_its_firing_in_flight_on_the_same_channel,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(payload_has_the_webhook_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(next_due_and_depth_follow_the_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(rate_limit_folds_the_excess_into_one_delivery, setup_rl_2m,
                                        teardown),
        cmocka_unit_test_setup_teardown(p0_has_reserved_capacity, setup_rl_4m, teardown),
        cmocka_unit_test_setup_teardown(ack_before_the_folded_send_cancels, setup_rl_2m, teardown),
        cmocka_unit_test_setup_teardown(folding_respects_the_group_bound, setup_rl_1h, teardown),
        cmocka_unit_test_setup_teardown(only_the_same_kind_folds_and_order_is_kept, setup_rl_2m,
                                        teardown),
        cmocka_unit_test_setup_teardown(unlimited_channels_are_not_held_back, setup, teardown),
        cmocka_unit_test_setup_teardown(a_limited_backlog_does_not_hold_back_other_channels,
                                        setup_rl_mixed, teardown),
        cmocka_unit_test_setup_teardown(delivery_failing_waits_for_the_tier_window, setup_windows,
                                        teardown),
        cmocka_unit_test_setup_teardown(delivery_failing_windows_by_tier, setup_windows, teardown),
        cmocka_unit_test_setup_teardown(
            delivery_failing_needs_failing_after_attempts_past_the_window, setup_default_failing,
            teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
