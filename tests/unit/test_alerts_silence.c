/* test_alerts_silence.c - alerts/silence.c: matcher parsing and matching, silences in the store,
 * their time range, expiry, the JSON API, and what a silence does to notifications.
 *
 * The matcher tests are pure (no store). The rest run an engine on a real SQLite file in a
 * mkdtemp() directory opened with al_db_open(), with a config from gw_config_load_string() and an
 * injected clock.
 */
#include <ftw.h>
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

#define T0 1767225600000ULL /* 2026-01-01T00:00:00Z */
#define SEC 1000ULL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)

#define YAML                                                                                       \
    "upstreams:\n  u: { hosts: [\"127.0.0.1:9001\"] }\n"                                           \
    "routes:\n  - { name: r, match: { path_prefix: / }, upstream: u }\n"                           \
    "alerts:\n  channels:\n    chat: { type: console }\n    pager: { type: console }\n"            \
    "  tiers:\n    P0: { channels: [pager], repeat: 5m }\n"                                        \
    "    P1: { channels: [chat, pager], escalate_after: 15m }\n"                                   \
    "    P2: { channels: [chat], escalate_after: 1h }\n"

#define HOST(u, h) "{\"upstream\":\"" u "\",\"host\":\"" h "\"}"

/* ---- matchers (pure) ---- */

static al_matchers_t *parse_ok(const char *const *texts, size_t n)
{
    al_matchers_t *m = NULL;
    char err[256] = "";
    int r = al_matchers_parse(texts, n, &m, err, sizeof(err));

    if (r != 0)
        print_message("parse failed: %s\n", err);
    assert_int_equal(r, 0);
    assert_non_null(m);
    return m;
}

/* Does the single matcher `text` hold for labels? It is paired with zz="1" (and the label
 * zz="1" is added), so that matchers which also match "" can be tested alone. */
static bool match1(const char *text, const al_label_t *labels, size_t n)
{
    const char *t[] = {text, "zz=\"1\""};
    al_label_t with[8];
    al_matchers_t *m = parse_ok(t, 2);
    bool yes;

    assert_true(n < 8);
    memcpy(with, labels, n * sizeof(*labels));
    with[n] = (al_label_t){"zz", "1"};
    yes = al_matchers_match(m, with, n + 1);
    al_matchers_free(m);
    return yes;
}

static void matchers_parse_the_four_operators_into_canonical_text(void **state)
{
    const char *texts[] = {"upstream=\"users\"", " host != \"a:1\" ",     "alertname=~\"host_.*\"",
                           "tier!~P[01]",        "x=\"a\\\"b\\\\c\\nd\"", "bare=users-api",
                           "empty=\"\""};
    const char *canon[] = {"upstream=\"users\"", "host!=\"a:1\"",         "alertname=~\"host_.*\"",
                           "tier!~\"P[01]\"",    "x=\"a\\\"b\\\\c\\nd\"", "bare=\"users-api\"",
                           "empty=\"\""};
    al_matchers_t *m;

    (void)state;
    m = parse_ok(texts, 7);
    assert_int_equal(al_matchers_count(m), 7);
    for (size_t i = 0; i < 7; i++)
        assert_string_equal(al_matchers_text(m, i), canon[i]);
    assert_null(al_matchers_text(m, 7));
    al_matchers_free(m);
    al_matchers_free(NULL);
}

static void matching_follows_alertmanager_semantics(void **state)
{
    const al_label_t l[] = {{"upstream", "users"},
                            {"host", "a:1"},
                            {"alertname", "host_down"},
                            {"tier", "P2"},
                            {"note", "say \"hi\"\n"}};
    size_t n = sizeof(l) / sizeof(l[0]);

    (void)state;
    assert_true(match1("upstream=\"users\"", l, n));
    assert_false(match1("upstream=\"Users\"", l, n)); /* case matters */
    assert_true(match1("upstream!=\"orders\"", l, n));
    assert_false(match1("upstream!=\"users\"", l, n));
    assert_true(match1("alertname=~\"host_.*\"", l, n));
    assert_true(match1("tier=~\"P[12]\"", l, n));
    assert_false(match1("tier!~\"P[12]\"", l, n));
    assert_true(match1("note=\"say \\\"hi\\\"\\n\"", l, n));
    /* regexes are anchored at both ends */
    assert_false(match1("host=~\"a\"", l, n));
    assert_false(match1("host=~\":1\"", l, n));
    assert_true(match1("host=~\"a.*\"", l, n));
    assert_true(match1("host=~\"a:1|b:1\"", l, n));
    /* a missing label reads as "" */
    assert_true(match1("region=\"\"", l, n));
    assert_false(match1("region!=\"\"", l, n));
    assert_true(match1("region!=\"eu\"", l, n));
    assert_false(match1("region=~\".+\"", l, n));
    /* every matcher must hold */
    {
        const char *t[] = {"upstream=\"users\"", "host=\"b:1\""};
        al_matchers_t *m = parse_ok(t, 2);
        assert_false(al_matchers_match(m, l, n));
        al_matchers_free(m);
    }
}

static void bad_matchers_are_refused_with_a_reason(void **state)
{
    static const struct {
        const char *text, *why;
    } cases[] = {
        {"", "label name"},
        {"=x", "label name"},
        {"1a=\"x\"", "label name"},
        {"a", "expected =, !=, =~ or !~"},
        {"a<\"x\"", "expected =, !=, =~ or !~"},
        {"a=\"unterminated", "unterminated"},
        {"a=\"bad \\q escape\"", "unterminated or bad"},
        {"a=\"x\" trailing", "after the value"},
        {"a=two words", "after the value"},
        {"a=~\"(\"", "bad regex"},
        {"a=~\"[z-a]\"", "bad regex"},
    };
    char big[AL_REGEX_MAX + 16], err[256];
    const char *texts[AL_MATCHERS_MAX + 1];
    al_matchers_t *m = NULL;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        texts[0] = cases[i].text;
        err[0] = '\0';
        assert_int_equal(al_matchers_parse(texts, 1, &m, err, sizeof(err)), AL_EBADINPUT);
        assert_null(m);
        if (strstr(err, cases[i].why) == NULL)
            print_message("'%s': %s (want '%s')\n", cases[i].text, err, cases[i].why);
        assert_non_null(strstr(err, cases[i].why));
    }
    /* the regex size bound */
    memset(big, 'a', sizeof(big));
    memcpy(big, "a=~\"", 4);
    big[4 + AL_REGEX_MAX + 1] = '"';
    big[4 + AL_REGEX_MAX + 2] = '\0';
    texts[0] = big;
    assert_int_equal(al_matchers_parse(texts, 1, &m, err, sizeof(err)), AL_EBADINPUT);
    assert_non_null(strstr(err, "regex longer"));
    big[4 + AL_REGEX_MAX] = '"';
    big[4 + AL_REGEX_MAX + 1] = '\0';
    m = parse_ok(texts, 1); /* exactly at the bound */
    al_matchers_free(m);
    /* counts */
    for (size_t i = 0; i <= AL_MATCHERS_MAX; i++)
        texts[i] = "a=\"x\"";
    assert_int_equal(al_matchers_parse(texts, 0, &m, err, sizeof(err)), AL_EBADINPUT);
    assert_int_equal(al_matchers_parse(texts, AL_MATCHERS_MAX + 1, &m, err, sizeof(err)),
                     AL_EBADINPUT);
    m = parse_ok(texts, AL_MATCHERS_MAX);
    al_matchers_free(m);
    /* a silence must select something */
    texts[0] = "a=\"\"";
    texts[1] = "b=~\".*\"";
    texts[2] = "c!=\"x\"";
    assert_int_equal(al_matchers_parse(texts, 3, &m, err, sizeof(err)), AL_EBADINPUT);
    assert_non_null(strstr(err, "empty string"));
}

/* ---- silences in the store ---- */

typedef struct fx {
    char dir[64];
    al_db_t *db;
    gw_config_t *cfg;
    al_engine_t *e;
    uint64_t rnd;
} fx_t;

static uint64_t counter(void *ctx)
{
    return (*(uint64_t *)ctx)++;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    al_engine_options_t opt = {0};
    char err[256];
    gw_diag_t d;

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/bw_test_silence.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    gw_diag_init(&d);
    assert_int_equal(gw_config_load_string("t.yaml", YAML, strlen(YAML), &f->cfg, &d), 0);
    gw_diag_dispose(&d);
    assert_int_equal(al_db_open(f->dir, &f->db, err, sizeof(err)), 0);
    opt.random = counter;
    opt.random_ctx = &f->rnd;
    opt.prune_every_ms = 1000 * 24 * HOUR;
    assert_int_equal(al_engine_new(f->db, &f->cfg->alerts, &opt, &f->e), 0);
    *state = f;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fx_t *f = *state;

    al_engine_free(f->e);
    al_db_close(f->db);
    gw_config_free(f->cfg);
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static int64_t q_int(fx_t *f, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;

    assert_int_equal(sqlite3_prepare_v2(al_db_handle(f->db), sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static int64_t create_json(fx_t *f, const char *body, uint64_t now)
{
    int64_t id = 0;
    char err[256] = "";
    int r = al_silence_create_json(f->e, body, strlen(body), now, &id, err, sizeof(err));

    if (r != 0)
        print_message("create failed: %s\n", err);
    assert_int_equal(r, 0);
    assert_true(id > 0);
    return id;
}

static void refused_json(fx_t *f, const char *body, const char *why)
{
    int64_t id = 7;
    char err[256] = "";

    assert_int_equal(al_silence_create_json(f->e, body, strlen(body), T0, &id, err, sizeof(err)),
                     AL_EBADINPUT);
    assert_int_equal(id, 0);
    if (strstr(err, why) == NULL)
        print_message("%s -> %s (want '%s')\n", body, err, why);
    assert_non_null(strstr(err, why));
}

static json_t *list(fx_t *f, uint64_t now, bool expired)
{
    char *out = NULL;
    json_t *root;

    assert_int_equal(al_silences_json(f->e, now, expired, &out), 0);
    root = json_loads(out, 0, NULL);
    free(out);
    assert_non_null(root);
    return root;
}

static const char *field(json_t *root, size_t i, const char *name)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(root, "silences"), i), name));
}

static void silences_are_created_listed_and_expired_through_json(void **state)
{
    fx_t *f = *state;
    json_t *root;
    int64_t a, b;

    a = create_json(f,
                    "{\"matchers\":[\"upstream=\\\"users\\\"\"],\"duration\":\"2h\","
                    "\"created_by\":\"alice\",\"comment\":\"deploy\"}",
                    T0);
    b = create_json(f,
                    "{\"matchers\":[{\"name\":\"host\",\"value\":\"a.*\",\"isRegex\":true},"
                    "{\"name\":\"tier\",\"value\":\"P0\",\"isEqual\":false}],"
                    "\"startsAt\":\"2026-01-01T01:00:00Z\","
                    "\"endsAt\":\"2026-01-01T03:30:00.500+01:00\",\"createdBy\":\"bob\"}",
                    T0);
    root = list(f, T0, false);
    assert_int_equal(json_array_size(json_object_get(root, "silences")), 2);
    /* newest first */
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(json_object_get(root, "silences"), 0), "id")),
                     b);
    assert_string_equal(field(root, 0, "state"), "pending");
    assert_string_equal(field(root, 0, "starts_at"), "2026-01-01T01:00:00.000Z");
    assert_string_equal(field(root, 0, "ends_at"), "2026-01-01T02:30:00.500Z");
    assert_string_equal(field(root, 0, "created_by"), "bob");
    assert_string_equal(
        json_string_value(json_array_get(
            json_object_get(json_array_get(json_object_get(root, "silences"), 0), "matchers"), 1)),
        "tier!=\"P0\"");
    assert_string_equal(field(root, 1, "state"), "active");
    assert_string_equal(field(root, 1, "ends_at"), "2026-01-01T02:00:00.000Z");
    assert_string_equal(field(root, 1, "comment"), "deploy");
    json_decref(root);

    assert_int_equal(al_silence_expire(f->e, a, T0 + MIN), 0);
    assert_int_equal(al_silence_expire(f->e, a, T0 + 2 * MIN), 0); /* already ended: no-op */
    root = list(f, T0 + 2 * MIN, false);
    assert_int_equal(json_array_size(json_object_get(root, "silences")), 1);
    json_decref(root);
    root = list(f, T0 + 2 * MIN, true);
    assert_int_equal(json_array_size(json_object_get(root, "silences")), 2);
    assert_string_equal(field(root, 1, "state"), "expired");
    assert_string_equal(field(root, 1, "ends_at"), "2026-01-01T00:01:00.000Z");
    assert_true(json_is_true(
        json_object_get(json_array_get(json_object_get(root, "silences"), 1), "expired_early")));
    json_decref(root);
    /* a pending silence expired before it started ends up empty, never active */
    assert_int_equal(al_silence_expire(f->e, b, T0 + 3 * MIN), 0);
    assert_int_equal(q_int(f, "SELECT ends_at - starts_at FROM silences WHERE id = 2"), 0);
    assert_int_equal(al_silence_expire(f->e, 99, T0), AL_ENOENT);
}

static void bad_silence_bodies_are_refused(void **state)
{
    fx_t *f = *state;

    refused_json(f, "{\"duration\":\"1h\"}", "matchers");
    refused_json(f, "{\"matchers\":[],\"duration\":\"1h\"}", "matchers");
    refused_json(f, "{\"matchers\":[\"a=\\\"b\\\"\"]}", "exactly one of ends_at and duration");
    refused_json(f, "{\"matchers\":[\"a=\\\"b\\\"\"],\"duration\":\"1h\",\"endsAt\":1}",
                 "exactly one");
    refused_json(f, "{\"matchers\":[\"a=\\\"b\\\"\"],\"duration\":\"soon\"}", "duration");
    refused_json(f, "{\"matchers\":[\"a=\\\"b\\\"\"],\"endsAt\":\"tomorrow\"}", "RFC 3339");
    refused_json(f, "{\"matchers\":[\"a=\\\"b\\\"\"],\"endsAt\":\"2025-12-31T00:00:00Z\"}",
                 "later than now");
    refused_json(f,
                 "{\"matchers\":[\"a=\\\"b\\\"\"],\"startsAt\":\"2026-01-02T00:00:00Z\","
                 "\"endsAt\":\"2026-01-01T12:00:00Z\"}",
                 "later than now and than starts_at");
    refused_json(f, "{\"matchers\":[\"a=~\\\"(\\\"\"],\"duration\":\"1h\"}", "bad regex");
    refused_json(f, "{\"matchers\":[42],\"duration\":\"1h\"}", "matcher 0");
    refused_json(f, "{\"matchers\":[\"a=\\\"\\\"\"],\"duration\":\"1h\"}", "empty string");
    refused_json(f, "[1]", "matchers");
    assert_int_equal(q_int(f, "SELECT count(*) FROM silences"), 0);
}

static void a_silence_mutes_only_inside_its_time_range(void **state)
{
    fx_t *f = *state;
    const char *m[] = {"host=~\"a.*\""};
    al_silence_spec_t spec = {m, 1, T0 + HOUR, T0 + 2 * HOUR, "ops", "maintenance"};
    uint64_t next = 0;
    int64_t id = 0;

    assert_int_equal(al_silence_create(f->e, &spec, T0, &id, NULL, 0), 0);
    /* not started yet: paged */
    assert_int_equal(al_engine_event(f->e, "host_down", -1, HOST("users", "a1:1"), T0), 0);
    assert_int_equal(q_int(f, "SELECT count(*) FROM deliveries"), 1);
    /* active: recorded, not delivered */
    assert_int_equal(al_engine_event(f->e, "host_down", -1, HOST("users", "a2:1"), T0 + HOUR), 0);
    assert_int_equal(q_int(f, "SELECT count(*) FROM deliveries"), 1);
    assert_int_equal(q_int(f, "SELECT count(*) FROM alerts"), 2);
    assert_int_equal(q_int(f, "SELECT silenced_by FROM alerts WHERE id = 2"), id);
    assert_int_equal(q_int(f, "SELECT count(*) FROM alert_history WHERE alert_id = 2 AND kind = "
                              "'suppressed' AND json_extract(detail, '$.silence') = 1"),
                     1);
    /* the first alert's escalation falls inside the silence: muted too */
    assert_int_equal(al_engine_tick(f->e, T0 + HOUR, &next), 0);
    assert_int_equal(q_int(f, "SELECT tier FROM alerts WHERE id = 1"), 1);
    assert_int_equal(q_int(f, "SELECT count(*) FROM deliveries WHERE kind = 'escalated'"), 0);
    assert_int_equal(next, T0 + HOUR + 15 * MIN); /* alert 1 escalates again at P1's 15m */
    /* ended: both are notified at their current tier (both escalated meanwhile: alert 1 to P0,
     * whose channel is pager; alert 2 to P1: chat and pager) */
    assert_int_equal(al_engine_tick(f->e, T0 + 2 * HOUR, &next), 0);
    assert_int_equal(q_int(f, "SELECT count(*) FROM deliveries WHERE kind = 'firing'"), 1);
    assert_int_equal(q_int(f, "SELECT count(*) FROM deliveries WHERE kind = 'escalated'"), 3);
    assert_int_equal(q_int(f, "SELECT tier FROM alerts WHERE id = 1"), 0);
    assert_int_equal(q_int(f, "SELECT count(*) FROM alerts WHERE silenced_by IS NOT NULL"), 0);
}

static void resolved_notifications_are_muted_by_a_silence(void **state)
{
    fx_t *f = *state;
    const char *m[] = {"upstream=\"users\""};
    al_silence_spec_t spec = {m, 1, 0, T0 + HOUR, NULL, NULL};
    al_delivery_t d[2];
    al_attempt_t ok = {AL_SEND_OK, 200, 0, NULL};
    size_t n = 0;
    int64_t id = 0;

    assert_int_equal(al_engine_event(f->e, "host_down", -1, HOST("users", "a:1"), T0), 0);
    assert_int_equal(al_outbox_claim(f->e, T0, d, 2, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(al_outbox_record(f->e, &d[0], &ok, T0), 0);
    al_delivery_dispose(&d[0]);
    assert_int_equal(al_silence_create(f->e, &spec, T0 + 1, &id, NULL, 0), 0);
    assert_int_equal(al_engine_event(f->e, "host_up", -1, HOST("users", "a:1"), T0 + 2), 0);
    assert_int_equal(q_int(f, "SELECT count(*) FROM alerts WHERE status = 'resolved'"), 1);
    assert_int_equal(q_int(f, "SELECT count(*) FROM deliveries WHERE kind = 'resolved'"), 0);
    assert_int_equal(q_int(f, "SELECT count(*) FROM alert_history WHERE kind = 'suppressed' AND "
                              "json_extract(detail, '$.kind') = 'resolved'"),
                     1);
}

static void at_most_al_silences_max_may_be_live(void **state)
{
    fx_t *f = *state;
    const char *m[] = {"upstream=\"users\""};
    al_silence_spec_t spec = {m, 1, 0, T0 + HOUR, NULL, NULL};
    char err[128];
    int64_t id = 0;
    sqlite3 *c = al_db_handle(f->db);

    /* fill the table directly (one transaction), then ask the engine for one more */
    assert_int_equal(sqlite3_exec(c,
                                  "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                                  "WHERE i < 1000) INSERT INTO silences (matchers, starts_at, "
                                  "ends_at, created_at, created_by, comment) SELECT "
                                  "'[\"upstream=\\\"x\\\"\"]', 1767225600000, 1767229200000, "
                                  "1767225600000, '', '' FROM n",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(al_silence_create(f->e, &spec, T0, &id, err, sizeof(err)), AL_ELIMIT);
    assert_int_equal(id, 0);
    /* once they have ended, there is room again */
    assert_int_equal(al_silence_create(f->e, &spec, T0 + HOUR, &id, err, sizeof(err)),
                     AL_EBADINPUT); /* ends_at must be in the future */
    spec.ends_at_ms = T0 + 2 * HOUR;
    assert_int_equal(al_silence_create(f->e, &spec, T0 + HOUR, &id, err, sizeof(err)), 0);
    assert_int_equal(id, 1001);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matchers_parse_the_four_operators_into_canonical_text),
        cmocka_unit_test(matching_follows_alertmanager_semantics),
        cmocka_unit_test(bad_matchers_are_refused_with_a_reason),
        cmocka_unit_test_setup_teardown(silences_are_created_listed_and_expired_through_json, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(bad_silence_bodies_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(a_silence_mutes_only_inside_its_time_range, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(resolved_notifications_are_muted_by_a_silence, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(at_most_al_silences_max_may_be_live, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
