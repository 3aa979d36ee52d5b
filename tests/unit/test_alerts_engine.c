/* test_alerts_engine.c - alerts/engine.c: events -> alerts, dedup, escalation, repeats, ack,
 * resolve, group_wait, inhibition, flap hold-down, silences, external alerts, quiet resolve,
 * retention, restart, the memory queue for store failures, and the lineage.
 *
 * Every test runs on a real SQLite file in its own mkdtemp() directory opened with al_db_open()
 * (the real migrations), with the alerts section of a config loaded by gw_config_load_string(),
 * an injected clock (every call takes now_ms) and an injected random source. Store failures are
 * injected by a VFS shim registered as the default VFS: while g_fail_writes is set, every file
 * write fails with that SQLite code (SQLITE_FULL: a full disk; SQLITE_IOERR_WRITE: a bad disk).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

#define HEAD                                                                                       \
    "upstreams:\n  u: { hosts: [\"127.0.0.1:9001\"] }\n"                                           \
    "routes:\n  - { name: r, match: { path_prefix: / }, upstream: u }\n"

#define CHANNELS                                                                                   \
    "alerts:\n  channels:\n    chat: { type: console }\n    pager: { type: console }\n"            \
    "    phone: { type: console }\n"

/* SPEC's tiers: P0 pages and repeats, P1 escalates after 15m, P2 after 1h. */
#define TIERS                                                                                      \
    "  tiers:\n    P0: { channels: [phone, pager], repeat: 5m }\n"                                 \
    "    P1: { channels: [chat, pager], escalate_after: 15m }\n"                                   \
    "    P2: { channels: [chat], escalate_after: 1h }\n"

#define TIERS_GROUPED                                                                              \
    "  tiers:\n    P0: { channels: [phone, pager], repeat: 5m }\n"                                 \
    "    P1: { channels: [chat, pager], escalate_after: 15m }\n"                                   \
    "    P2: { channels: [chat], escalate_after: 1h, group_wait: 30s }\n"

#define BREAKER(u)                                                                                 \
    "{\"upstream\":\"" u "\",\"from\":\"closed\",\"to\":\"open\",\"reason\":"                      \
    "\"consecutive_failures\",\"window\":{\"calls\":5,\"failures\":5,\"consecutive_failures\":5}}"
#define UPS(u) "{\"upstream\":\"" u "\"}"
#define HOST(u, h) "{\"upstream\":\"" u "\",\"host\":\"" h "\"}"

/* ---- a VFS that fails writes on demand ---- */

static int g_fail_writes; /* 0, or the SQLite code every xWrite returns */
static sqlite3_vfs *g_real_vfs;
static sqlite3_vfs g_shim_vfs;

typedef struct shim_file {
    sqlite3_file base;
    sqlite3_file *real;
} shim_file_t;

#define REAL(f) (((shim_file_t *)(f))->real)

static int shim_close(sqlite3_file *f)
{
    int rc = REAL(f)->pMethods->xClose(REAL(f));
    sqlite3_free(REAL(f));
    return rc;
}
static int shim_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
    return REAL(f)->pMethods->xRead(REAL(f), b, n, o);
}
static int shim_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
    if (g_fail_writes != 0)
        return g_fail_writes;
    return REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int shim_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int shim_sync(sqlite3_file *f, int flags)
{
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int shim_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int shim_lock(sqlite3_file *f, int l)
{
    return REAL(f)->pMethods->xLock(REAL(f), l);
}
static int shim_unlock(sqlite3_file *f, int l)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), l);
}
static int shim_reserved(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int shim_fcntl(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int shim_sector(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}
static int shim_devchar(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int shim_shmmap(sqlite3_file *f, int pg, int sz, int extend, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, extend, pp);
}
static int shim_shmlock(sqlite3_file *f, int off, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void shim_shmbarrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int shim_shmunmap(sqlite3_file *f, int del)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

static const sqlite3_io_methods shim_io = {
    2,
    shim_close,
    shim_read,
    shim_write,
    shim_truncate,
    shim_sync,
    shim_size,
    shim_lock,
    shim_unlock,
    shim_reserved,
    shim_fcntl,
    shim_sector,
    shim_devchar,
    shim_shmmap,
    shim_shmlock,
    shim_shmbarrier,
    shim_shmunmap,
    NULL,
    NULL,
};

static int shim_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
    shim_file_t *s = (shim_file_t *)f;
    int rc;

    (void)vfs;
    s->base.pMethods = NULL;
    s->real = sqlite3_malloc(g_real_vfs->szOsFile);
    if (s->real == NULL)
        return SQLITE_NOMEM;
    memset(s->real, 0, (size_t)g_real_vfs->szOsFile);
    rc = g_real_vfs->xOpen(g_real_vfs, name, s->real, flags, out);
    if (s->real->pMethods == NULL) {
        sqlite3_free(s->real);
        return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
    }
    s->base.pMethods = &shim_io;
    return rc;
}

static void install_shim(void)
{
    if (g_real_vfs != NULL)
        return;
    g_real_vfs = sqlite3_vfs_find(NULL);
    g_shim_vfs = *g_real_vfs;
    g_shim_vfs.zName = "bw_shim";
    g_shim_vfs.szOsFile = (int)sizeof(shim_file_t);
    g_shim_vfs.xOpen = shim_open;
    g_shim_vfs.pNext = NULL;
    assert_int_equal(sqlite3_vfs_register(&g_shim_vfs, 1), SQLITE_OK);
}

/* ---- fixture ---- */

/* Random source: a counter, so delivery ids stay unique; near zero it puts the jitter at its low
 * end (delay = base/2). */
typedef struct trng {
    uint64_t n;
} trng_t;

static uint64_t test_random(void *ctx)
{
    return ((trng_t *)ctx)->n++;
}

typedef struct fx {
    char dir[64];
    al_db_t *db;
    gw_config_t *cfg, *cfg2;
    al_engine_t *e;
    trng_t rng;
    al_engine_options_t opt;
} fx_t;

static gw_config_t *load_cfg(const char *alerts)
{
    char *yaml = NULL;

    assert_true(asprintf(&yaml, "%s%s", HEAD, alerts) > 0);
    return eng_config(yaml);
}

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

static fx_t *fx_new(const char *alerts)
{
    fx_t *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    install_shim();
    g_fail_writes = 0;
    snprintf(f->dir, sizeof(f->dir), "/tmp/bw_test_engine.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->cfg = load_cfg(alerts);
    f->opt.random = test_random;
    f->opt.random_ctx = &f->rng;
    f->opt.source = "breakwater@test";
    f->opt.prune_every_ms = 1000 * 24 * HOUR; /* keep pruning out of the deadlines */
    fx_open(f);
    return f;
}

static int teardown(void **state)
{
    fx_t *f = *state;

    if (f == NULL)
        return 0;
    g_fail_writes = 0;
    fx_close(f);
    gw_config_free(f->cfg);
    gw_config_free(f->cfg2);
    eng_rmtree(f->dir);
    free(f);
    return 0;
}

static int setup(void **state)
{
    *state = fx_new(CHANNELS TIERS);
    return 0;
}

static int setup_grouped(void **state)
{
    *state = fx_new(CHANNELS TIERS_GROUPED);
    return 0;
}

static int setup_flap(void **state)
{
    fx_t *f = fx_new(CHANNELS TIERS);

    fx_close(f);
    f->opt.flap_threshold = 3;
    f->opt.flap_window_ms = 10 * MIN;
    f->opt.flap_hold_ms = 5 * MIN;
    fx_open(f);
    *state = f;
    return 0;
}

/* ---- helpers ---- */

/* The first column as a new string, or NULL for NULL or no row (eng_q_text() would give ""; the
 * assertions below tell "no deliveries" from an empty value). */
static char *q_text(fx_t *f, const char *fmt, ...)
{
    sqlite3_stmt *st = NULL;
    char *sql, *v = NULL;
    va_list ap;

    va_start(ap, fmt);
    sql = sqlite3_vmprintf(fmt, ap);
    va_end(ap);
    assert_int_equal(sqlite3_prepare_v2(al_db_handle(f->db), sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
        v = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_free(sql);
    return v;
}

static void assert_text(fx_t *f, const char *want, const char *sql)
{
    char *got = q_text(f, "%s", sql);

    if (got == NULL || strcmp(got, want) != 0)
        print_message("query: %s\n  got: %s\n want: %s\n", sql, got ? got : "(null)", want);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static void ev(fx_t *f, const char *kind, const char *fields, uint64_t now)
{
    assert_int_equal(al_engine_event(f->e, kind, -1, fields, now), 0);
}

static uint64_t tick(fx_t *f, uint64_t now)
{
    uint64_t next = 0;

    assert_int_equal(al_engine_tick(f->e, now, &next), 0);
    return next;
}

/* Nothing scheduled but the (far away, see fx_new) retention pass. */
static void assert_idle(uint64_t next)
{
    assert_true(next > T0 + 900 * 24 * HOUR);
}

static int64_t alert_id(fx_t *f, const char *key)
{
    return eng_q_int(f->db, "SELECT max(id) FROM alerts WHERE dedup_key = %Q", key);
}

/* Deliveries written for alert id, of kind, as "channel,channel" sorted. */
static char *channels_of(fx_t *f, int64_t id, const char *kind)
{
    return q_text(f,
                  "SELECT group_concat(channel, ',') FROM (SELECT d.channel FROM deliveries d "
                  "JOIN delivery_alerts m ON m.delivery = d.id WHERE m.alert_id = %lld "
                  "AND d.kind = %Q ORDER BY d.channel, d.id)",
                  (long long)id, kind);
}

static void assert_channels(fx_t *f, int64_t id, const char *kind, const char *want)
{
    char *got = channels_of(f, id, kind);

    if (want == NULL) {
        assert_null(got);
        return;
    }
    if (got == NULL || strcmp(got, want) != 0)
        print_message("alert %lld %s deliveries: %s, want %s\n", (long long)id, kind,
                      got ? got : "(none)", want);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

/* Claims everything due and records the given result for each; returns how many. */
static size_t deliver_all(fx_t *f, uint64_t now, al_send_result_t result)
{
    al_delivery_t d[AL_CLAIM_MAX];
    al_attempt_t a = {result, result == AL_SEND_OK ? 200 : 500, 0, NULL};
    size_t n = 0, total = 0;

    do {
        assert_int_equal(al_outbox_claim(f->e, now, d, AL_CLAIM_MAX, &n), 0);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(al_outbox_check(f->e, &d[i], now), 1);
            assert_int_equal(al_outbox_record(f->e, &d[i], &a, now), 0);
            al_delivery_dispose(&d[i]);
        }
        total += n;
    } while (n == AL_CLAIM_MAX);
    return total;
}

static int64_t history_count(fx_t *f, int64_t id, const char *kind)
{
    return eng_q_int(f->db,
                     "SELECT count(*) FROM alert_history WHERE alert_id = %lld AND kind = %Q",
                     (long long)id, kind);
}

/* ---- dedup and the event mapping ---- */

static void same_breaker_open_updates_one_alert(void **state)
{
    fx_t *f = *state;
    int64_t id;

    ev(f, "breaker_open", BREAKER("users"), T0);
    ev(f, "breaker_open", BREAKER("users"), T0 + 1000);
    ev(f, "breaker_open", BREAKER("orders"), T0 + 2000);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alerts"), 2);
    id = alert_id(f, "breaker_open{upstream=\"users\"}");
    assert_true(id > 0);
    assert_int_equal(eng_q_int(f->db, "SELECT count FROM alerts WHERE id = %lld", (long long)id),
                     2);
    assert_int_equal(
        eng_q_int(f->db, "SELECT last_seen_at FROM alerts WHERE id = %lld", (long long)id),
        T0 + 1000);
    assert_int_equal(
        eng_q_int(f->db, "SELECT started_at FROM alerts WHERE id = %lld", (long long)id), T0);
    assert_text(f, "P1 firing",
                "SELECT CASE tier WHEN 1 THEN 'P1' END || ' ' || status FROM alerts WHERE "
                "dedup_key = 'breaker_open{upstream=\"users\"}'");
    assert_text(f, "Circuit breaker for upstream 'users' opened: 5 consecutive failures",
                "SELECT summary FROM alerts WHERE dedup_key = 'breaker_open{upstream=\"users\"}'");
    /* Notified once, on the P1 channels; the repeat raise was an update, not a page. */
    assert_channels(f, id, "firing", "chat,pager");
    assert_int_equal(history_count(f, id, "raised"), 1);
    assert_int_equal(history_count(f, id, "event"), 1);
}

static void clearing_events_resolve_and_notify_the_notified_channels(void **state)
{
    fx_t *f = *state;
    int64_t id;

    ev(f, "breaker_open", BREAKER("users"), T0);
    id = alert_id(f, "breaker_open{upstream=\"users\"}");
    assert_int_equal(deliver_all(f, T0, AL_SEND_OK), 2);
    /* half-open leaves it firing: lineage only */
    ev(f, "breaker_half_open", "{\"upstream\":\"users\",\"from\":\"open\",\"to\":\"half_open\"}",
       T0 + 5 * SEC);
    assert_text(f, "firing", "SELECT status FROM alerts");
    assert_int_equal(history_count(f, id, "event"), 1);
    ev(f, "breaker_closed", UPS("users"), T0 + 10 * SEC);
    assert_text(f, "resolved", "SELECT status FROM alerts");
    assert_int_equal(eng_q_int(f->db, "SELECT resolved_at FROM alerts"), T0 + 10 * SEC);
    assert_text(f, "breaker_closed", "SELECT resolved_by FROM alerts");
    assert_channels(f, id, "resolved", "chat,pager");
    /* a clear without an alert, and a second clear, change nothing */
    ev(f, "breaker_closed", UPS("users"), T0 + 11 * SEC);
    ev(f, "host_up", HOST("users", "10.0.0.1:80"), T0 + 11 * SEC);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries"), 4);
    /* the same condition again is a new alert */
    ev(f, "breaker_open", BREAKER("users"), T0 + MIN);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alerts"), 2);
    assert_true(alert_id(f, "breaker_open{upstream=\"users\"}") > id);
}

static void events_map_to_the_documented_alerts(void **state)
{
    fx_t *f = *state;

    ev(f, "host_down", HOST("users", "10.0.0.1:80"), T0);
    ev(f, "no_healthy_hosts", "{\"upstream\":\"users\",\"hosts\":2,\"hosts_down\":2}", T0);
    assert_int_equal(al_engine_event(f->e, "worker_crash", 3,
                                     "{\"worker\":3,\"signal\":11,\"signal_name\":\"SEGV\","
                                     "\"route\":\"users-api\",\"request_id\":\"r1\"}",
                                     T0),
                     0);
    ev(f, "worker_stall", "{\"worker\":1,\"blocked_ms\":2500,\"stall_after_ms\":2000}", T0);
    ev(f, "crash_loop", "{\"crashes\":6,\"window_ms\":60000,\"respawn_delay_ms\":1000}", T0);
    ev(f, "handler_fault", "{\"route\":2,\"request_id\":\"r2\",\"error\":\"out of memory\"}", T0);
    ev(f, "rate_limited", "{\"route\":\"users-api\",\"ratio\":0.35}", T0);
    ev(f, "reload", "{\"generation\":2}", T0);               /* audit only */
    ev(f, "host_ejected", HOST("users", "10.0.0.9:80"), T0); /* no alert to note on */
    assert_text(f,
                "crash_loop|P0;handler_fault{route=\"2\"}|P2;"
                "host_down{host=\"10.0.0.1:80\",upstream=\"users\"}|P2;"
                "no_healthy_hosts{upstream=\"users\"}|P0;rate_limited{route=\"users-api\"}|P2;"
                "worker_crash{worker=\"3\"}|P0;worker_stall{worker=\"1\"}|P1",
                "SELECT group_concat(k, ';') FROM (SELECT dedup_key || '|P' || tier AS k FROM "
                "alerts ORDER BY dedup_key)");
    assert_text(f,
                "Worker 3 crashed with SIGSEGV (signal 11) on route 'users-api', request r1; "
                "replaced",
                "SELECT summary FROM alerts WHERE event = 'worker_crash'");
    assert_text(f, "Upstream 'users' has no usable host: 2 of 2 down, 0 ejected",
                "SELECT summary FROM alerts WHERE event = 'no_healthy_hosts'");
    assert_text(f, "Route 'users-api' is rejecting 35% of its requests (rate limit)",
                "SELECT summary FROM alerts WHERE event = 'rate_limited'");
    /* "ratio back under" resolves; rate_limited_cleared would too */
    ev(f, "rate_limited", "{\"route\":\"users-api\",\"ratio\":0.05}", T0 + MIN);
    assert_text(f, "resolved", "SELECT status FROM alerts WHERE event = 'rate_limited'");
    /* a raising event without its identifying field is refused */
    assert_int_equal(al_engine_event(f->e, "host_down", -1, UPS("users"), T0), AL_EBADINPUT);
    assert_int_equal(al_engine_event(f->e, "host_down", -1, "[1]", T0), AL_EBADINPUT);
}

/* An ack reaches the incident channels that were told (PagerDuty, Opsgenie page on their own
 * until told); chat channels are not sent an "acknowledged" message. */
static void ack_is_sent_to_incident_channels_that_were_notified(void **state)
{
    fx_t *f =
        fx_new("alerts:\n  channels:\n    chat: { type: console }\n"
               "    pager: { type: pagerduty, routing_key: k, url: \"http://127.0.0.1:9/\" }\n"
               "  tiers:\n    P0: { channels: [chat, pager], repeat: 5m }\n"
               "    P1: { channels: [chat, pager] }\n    P2: { channels: [chat] }\n");
    int64_t id;

    *state = f;
    ev(f, "breaker_open", BREAKER("users"), T0);
    ev(f, "breaker_open", BREAKER("quiet"), T0);
    id = alert_id(f, "breaker_open{upstream=\"users\"}");
    assert_int_equal(deliver_all(f, T0 + SEC, AL_SEND_OK), 4); /* chat + pager, two alerts */
    assert_int_equal(al_engine_ack(f->e, id, "api", T0 + 2 * SEC), 0);
    assert_channels(f, id, "acknowledged", "pager");
    assert_int_equal(deliver_all(f, T0 + 3 * SEC, AL_SEND_OK), 1);
    /* resolved before it went out: the ack is cancelled, the resolved notification goes */
    ev(f, "breaker_open", BREAKER("late"), T0 + 4 * SEC);
    int64_t late = alert_id(f, "breaker_open{upstream=\"late\"}");
    assert_int_equal(deliver_all(f, T0 + 5 * SEC, AL_SEND_OK), 2);
    assert_int_equal(al_engine_ack(f->e, late, "api", T0 + 6 * SEC), 0);
    ev(f, "breaker_closed", UPS("late"), T0 + 6 * SEC);
    assert_int_equal(deliver_all(f, T0 + 7 * SEC, AL_SEND_OK), 2); /* resolved: chat, pager */
    assert_int_equal(eng_q_int(f->db,
                               "SELECT count(*) FROM deliveries WHERE kind = 'acknowledged' AND "
                               "status = 'cancelled'"),
                     1);
    /* an alert whose firing notification never left is not acked anywhere */
    ev(f, "breaker_open", BREAKER("fresh"), T0 + 8 * SEC);
    int64_t fresh = alert_id(f, "breaker_open{upstream=\"fresh\"}");
    assert_int_equal(al_engine_ack(f->e, fresh, "api", T0 + 8 * SEC), 0);
    assert_int_equal(deliver_all(f, T0 + 9 * SEC, AL_SEND_OK), 0);
}

/* The control process records an alert store episode after the fact (its notices went out
 * without the store): raised and resolved at once, nothing left for the outbox to send. */
static void store_episode_is_recorded_resolved_without_notifications(void **state)
{
    fx_t *f = *state;
    int64_t id;

    ev(f, "alert_store_degraded",
       "{\"since_ms\":1,\"for_ms\":4200,\"error\":\"disk full\",\"held\":3,\"dropped\":0}", T0);
    ev(f, "alert_store_recovered", "{}", T0);
    id = alert_id(f, "alert_store_degraded");
    assert_true(id > 0);
    assert_text(f, "resolved|P1", "SELECT status || '|P' || tier FROM alerts");
    assert_text(f,
                "Alert store (SQLite) unavailable for 4 s: disk full; 3 inputs held in memory, "
                "0 dropped",
                "SELECT summary FROM alerts");
    assert_int_equal(deliver_all(f, T0 + SEC, AL_SEND_OK), 0);
}

static void rule_off_events_only_touch_existing_alerts(void **state)
{
    fx_t *f = *state;
    int64_t id;

    ev(f, "host_down", HOST("users", "a:1"), T0);
    id = alert_id(f, "host_down{host=\"a:1\",upstream=\"users\"}");
    f->cfg2 = load_cfg(CHANNELS TIERS "  rules: { host_down: off }\n");
    al_engine_set_config(f->e, &f->cfg2->alerts);
    ev(f, "host_down", HOST("users", "a:1"), T0 + SEC); /* exists: lineage only */
    ev(f, "host_down", HOST("users", "b:1"), T0 + SEC); /* does not: ignored */
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alerts"), 1);
    assert_int_equal(eng_q_int(f->db, "SELECT count FROM alerts"), 1);
    assert_int_equal(history_count(f, id, "event"), 1);
    ev(f, "host_up", HOST("users", "a:1"), T0 + 2 * SEC); /* clearing still resolves */
    assert_text(f, "resolved", "SELECT status FROM alerts");
}

/* ---- escalation and repeat ---- */

static void escalation_goes_p2_p1_p0_on_schedule(void **state)
{
    fx_t *f = *state;
    int64_t id;

    ev(f, "host_down", HOST("users", "a:1"), T0);
    id = alert_id(f, "host_down{host=\"a:1\",upstream=\"users\"}");
    assert_channels(f, id, "firing", "chat");
    assert_int_equal(tick(f, T0), T0 + HOUR);
    assert_int_equal(tick(f, T0 + HOUR - 1), T0 + HOUR);
    assert_int_equal(eng_q_int(f->db, "SELECT tier FROM alerts"), 2);
    /* unacknowledged for escalate_after (1h): P1, notified on P1's channels */
    assert_int_equal(tick(f, T0 + HOUR), T0 + HOUR + 15 * MIN);
    assert_int_equal(eng_q_int(f->db, "SELECT tier FROM alerts"), 1);
    assert_int_equal(eng_q_int(f->db, "SELECT escalation_level FROM alerts"), 1);
    assert_channels(f, id, "escalated", "chat,pager");
    /* 15m more: P0, which repeats every 5m */
    assert_int_equal(tick(f, T0 + HOUR + 15 * MIN), T0 + HOUR + 20 * MIN);
    assert_int_equal(eng_q_int(f->db, "SELECT tier FROM alerts"), 0);
    assert_int_equal(eng_q_int(f->db, "SELECT escalation_level FROM alerts"), 2);
    assert_channels(f, id, "escalated", "chat,pager,pager,phone");
    assert_int_equal(eng_q_int(f->db, "SELECT first_tier FROM alerts"), 2);
    assert_int_equal(history_count(f, id, "escalated"), 2);
    assert_int_equal(tick(f, T0 + HOUR + 20 * MIN), T0 + HOUR + 25 * MIN);
    assert_channels(f, id, "repeat", "pager,phone");
}

static void p0_repeats_every_repeat_until_acknowledged(void **state)
{
    fx_t *f = *state;
    int64_t id;

    ev(f, "no_healthy_hosts", UPS("users"), T0);
    id = alert_id(f, "no_healthy_hosts{upstream=\"users\"}");
    assert_channels(f, id, "firing", "pager,phone");
    assert_int_equal(tick(f, T0 + 5 * MIN), T0 + 10 * MIN);
    assert_int_equal(tick(f, T0 + 10 * MIN), T0 + 15 * MIN);
    assert_channels(f, id, "repeat", "pager,pager,phone,phone");
    /* a late tick catches up once and stays on the schedule */
    assert_int_equal(tick(f, T0 + 17 * MIN), T0 + 20 * MIN);
    assert_channels(f, id, "repeat", "pager,pager,pager,phone,phone,phone");
    assert_int_equal(al_engine_ack(f->e, id, "alice", T0 + 18 * MIN), 0);
    assert_idle(tick(f, T0 + 20 * MIN));
    assert_idle(tick(f, T0 + 5 * HOUR));
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE kind = 'repeat'"), 6);
}

static void ack_stops_escalation_repeats_and_pending_sends(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4];
    size_t n = 0;
    int64_t id;

    ev(f, "breaker_open", BREAKER("users"), T0);
    id = alert_id(f, "breaker_open{upstream=\"users\"}");
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'pending'"),
                     2);
    assert_int_equal(al_engine_ack(f->e, id, "alice", T0 + MIN), 0);
    /* both pending notifications were cancelled in the ack's transaction */
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'cancelled'"),
                     2);
    assert_text(f, "acknowledged alice", "SELECT status || ' ' || acked_by FROM alerts");
    assert_int_equal(
        eng_q_int(f->db, "SELECT next_escalation_at IS NULL AND due_at IS NULL FROM alerts"), 1);
    assert_int_equal(al_outbox_claim(f->e, T0 + MIN, d, 4, &n), 0);
    assert_int_equal(n, 0);
    assert_idle(tick(f, T0 + 2 * HOUR));
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries"), 2);
    assert_int_equal(history_count(f, id, "acknowledged"), 1);
    /* acking again is a no-op; the alert still dedups new events without paging */
    assert_int_equal(al_engine_ack(f->e, id, "bob", T0 + 3 * HOUR), 0);
    assert_int_equal(history_count(f, id, "acknowledged"), 1);
    ev(f, "breaker_open", BREAKER("users"), T0 + 3 * HOUR);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alerts"), 1);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries"), 2);
    assert_int_equal(al_engine_ack(f->e, 999, NULL, T0), AL_ENOENT);
}

static void ack_and_resolve_race_either_way(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4];
    al_attempt_t ok = {AL_SEND_OK, 200, 0, NULL};
    size_t n = 0;
    int64_t a, b;

    /* A: claimed for sending, then acknowledged: the send-time re-check says no */
    ev(f, "breaker_open", BREAKER("users"), T0);
    a = alert_id(f, "breaker_open{upstream=\"users\"}");
    assert_int_equal(al_outbox_claim(f->e, T0, d, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(al_engine_ack(f->e, a, "alice", T0 + 1), 0);
    assert_int_equal(al_outbox_check(f->e, &d[0], T0 + 2), 0);
    assert_int_equal(al_outbox_record(f->e, &d[0], &ok, T0 + 3), AL_ESTALE);
    assert_int_equal(al_outbox_check(f->e, &d[1], T0 + 2), 0);
    for (size_t i = 0; i < n; i++)
        al_delivery_dispose(&d[i]);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'cancelled'"),
                     2);
    /* ...and the condition clears afterwards: resolved; nobody was notified, nothing to send */
    ev(f, "breaker_closed", UPS("users"), T0 + MIN);
    assert_text(f, "resolved", "SELECT status FROM alerts");
    assert_channels(f, a, "resolved", NULL);

    /* B: notified, resolved, then an ack arrives late: refused, nothing changes */
    ev(f, "breaker_open", BREAKER("orders"), T0);
    b = alert_id(f, "breaker_open{upstream=\"orders\"}");
    assert_int_equal(deliver_all(f, T0, AL_SEND_OK), 2);
    assert_int_equal(al_engine_resolve(f->e, b, "bob", T0 + MIN), 0);
    assert_int_equal(al_engine_ack(f->e, b, "alice", T0 + MIN + 1), AL_ESTATE);
    assert_text(f, "resolved bob",
                "SELECT status || ' ' || resolved_by FROM alerts WHERE id = "
                "(SELECT max(id) FROM alerts)");
    assert_int_equal(history_count(f, b, "acknowledged"), 0);
    assert_channels(f, b, "resolved", "chat,pager");
    /* resolving twice is idempotent */
    assert_int_equal(al_engine_resolve(f->e, b, "carol", T0 + 2 * MIN), 0);
    assert_channels(f, b, "resolved", "chat,pager");
}

/* ---- group_wait ---- */

static void group_wait_batches_alerts_raised_together(void **state)
{
    fx_t *f = *state;
    int64_t one, three;

    ev(f, "host_down", HOST("users", "a:1"), T0);
    ev(f, "host_down", HOST("users", "b:1"), T0 + 10 * SEC);
    ev(f, "host_down", HOST("users", "c:1"), T0 + 29 * SEC);
    ev(f, "host_down", HOST("users", "d:1"), T0 + 29 * SEC);
    one = alert_id(f, "host_down{host=\"a:1\",upstream=\"users\"}");
    three = alert_id(f, "host_down{host=\"c:1\",upstream=\"users\"}");
    /* acknowledged inside the window: left out of the batch */
    assert_int_equal(al_engine_ack(f->e, alert_id(f, "host_down{host=\"d:1\",upstream=\"users\"}"),
                                   "al", T0 + 20 * SEC),
                     0);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries"), 0);
    assert_int_equal(tick(f, T0 + 29 * SEC), T0 + 30 * SEC);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries"), 0);
    tick(f, T0 + 30 * SEC);
    /* one message on P2's channel speaking about the three firing alerts */
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries"), 1);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM delivery_alerts"), 3);
    assert_channels(f, one, "firing", "chat");
    assert_channels(f, three, "firing", "chat");
    assert_int_equal(history_count(f, one, "grouped"), 1);
    assert_int_equal(eng_q_int(f->db,
                               "SELECT count(*) FROM alert_history WHERE kind = 'notified' AND "
                               "json_extract(detail, '$.group_size') = 3"),
                     3);
    /* a later alert opens a new window */
    ev(f, "host_down", HOST("users", "e:1"), T0 + 31 * SEC);
    assert_int_equal(tick(f, T0 + 31 * SEC), T0 + 61 * SEC);
    tick(f, T0 + 61 * SEC);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries"), 2);
    /* escalate_after counts from the batch's notification: the batch escalates together */
    assert_int_equal(
        eng_q_int(f->db, "SELECT next_escalation_at FROM alerts WHERE id = %lld", (long long)one),
        T0 + 30 * SEC + HOUR);
    tick(f, T0 + 30 * SEC + HOUR);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE kind = 'escalated'"),
                     2);
    assert_int_equal(eng_q_int(f->db,
                               "SELECT max(n) FROM (SELECT count(*) AS n FROM delivery_alerts m "
                               "JOIN deliveries d ON d.id = m.delivery WHERE d.kind = 'escalated' "
                               "GROUP BY d.id)"),
                     3);
}

static void group_member_ack_keeps_the_message_for_the_others(void **state)
{
    fx_t *f = *state;
    int64_t a;

    ev(f, "host_down", HOST("users", "a:1"), T0);
    ev(f, "host_down", HOST("users", "b:1"), T0);
    tick(f, T0 + 30 * SEC);
    a = alert_id(f, "host_down{host=\"a:1\",upstream=\"users\"}");
    assert_int_equal(al_engine_ack(f->e, a, "al", T0 + 31 * SEC), 0);
    assert_text(f, "pending", "SELECT status FROM deliveries");
    assert_int_equal(al_engine_ack(f->e, alert_id(f, "host_down{host=\"b:1\",upstream=\"users\"}"),
                                   "al", T0 + 32 * SEC),
                     0);
    assert_text(f, "cancelled", "SELECT status FROM deliveries");
}

/* ---- inhibition ---- */

static void no_healthy_hosts_mutes_its_host_down_alerts(void **state)
{
    fx_t *f = *state;
    int64_t nh, users, orders;

    ev(f, "no_healthy_hosts", UPS("users"), T0);
    nh = alert_id(f, "no_healthy_hosts{upstream=\"users\"}");
    ev(f, "host_down", HOST("users", "a:1"), T0 + SEC);
    ev(f, "host_down", HOST("orders", "z:1"), T0 + SEC);
    users = alert_id(f, "host_down{host=\"a:1\",upstream=\"users\"}");
    orders = alert_id(f, "host_down{host=\"z:1\",upstream=\"orders\"}");
    /* recorded, muted; the other upstream's host is paged as usual */
    assert_text(f, "firing", "SELECT status FROM alerts WHERE id = 2");
    assert_channels(f, users, "firing", NULL);
    assert_channels(f, orders, "firing", "chat");
    assert_int_equal(
        eng_q_int(f->db, "SELECT inhibited_by FROM alerts WHERE id = %lld", (long long)users), nh);
    assert_int_equal(history_count(f, users, "suppressed"), 1);
    /* its escalation is muted too */
    tick(f, T0 + HOUR + SEC);
    assert_int_equal(eng_q_int(f->db, "SELECT tier FROM alerts WHERE id = %lld", (long long)users),
                     1);
    assert_channels(f, users, "escalated", NULL);
    assert_channels(f, orders, "escalated", "chat,pager");
    /* the upstream recovers but this host stays down: now it is paged, at its current tier */
    ev(f, "no_healthy_hosts_cleared", UPS("users"), T0 + HOUR + MIN);
    tick(f, T0 + HOUR + MIN);
    assert_channels(f, users, "escalated", "chat,pager");
    assert_int_equal(eng_q_int(f->db, "SELECT inhibited_by IS NULL FROM alerts WHERE id = %lld",
                               (long long)users),
                     1);
}

/* ---- flap hold-down ---- */

static void flapping_alert_stays_firing_until_stable(void **state)
{
    fx_t *f = *state;
    uint64_t t = T0;
    int64_t id;

    for (int i = 0; i < 3; i++) {
        ev(f, "breaker_open", BREAKER("users"), t);
        ev(f, "breaker_closed", UPS("users"), t + 30 * SEC);
        t += MIN;
    }
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alerts WHERE status = 'resolved'"), 3);
    /* the 4th firing within 10 minutes: flapping */
    ev(f, "breaker_open", BREAKER("users"), t);
    id = alert_id(f, "breaker_open{upstream=\"users\"}");
    assert_int_equal(eng_q_int(f->db, "SELECT flapping FROM alerts WHERE id = %lld", (long long)id),
                     1);
    assert_text(f, "Circuit breaker for upstream 'users' opened: 5 consecutive failures (flapping)",
                "SELECT summary FROM alerts WHERE id = 4");
    assert_int_equal(history_count(f, id, "flapping"), 1);
    /* it clears: held, not resolved */
    ev(f, "breaker_closed", UPS("users"), t + 30 * SEC);
    assert_text(f, "firing", "SELECT status FROM alerts WHERE id = 4");
    assert_int_equal(eng_q_int(f->db, "SELECT hold_until FROM alerts WHERE id = 4"),
                     t + 30 * SEC + 5 * MIN);
    /* it comes back within the hold-down: same alert, hold cancelled */
    ev(f, "breaker_open", BREAKER("users"), t + MIN);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alerts"), 4);
    assert_int_equal(eng_q_int(f->db, "SELECT flap_count FROM alerts WHERE id = 4"), 1);
    assert_int_equal(eng_q_int(f->db, "SELECT hold_until IS NULL FROM alerts WHERE id = 4"), 1);
    ev(f, "breaker_closed", UPS("users"), t + 2 * MIN);
    /* stable for the hold-down: resolved, exactly then */
    tick(f, t + 7 * MIN - 1);
    assert_text(f, "firing", "SELECT status FROM alerts WHERE id = 4");
    tick(f, t + 7 * MIN);
    assert_text(f, "resolved flap_hold_down",
                "SELECT status || ' ' || resolved_by FROM alerts WHERE id = 4");
    assert_int_equal(eng_q_int(f->db, "SELECT resolved_at FROM alerts WHERE id = 4"), t + 7 * MIN);
    /* one page for the whole flapping episode */
    assert_int_equal(eng_q_int(f->db,
                               "SELECT count(*) FROM deliveries d JOIN delivery_alerts m ON "
                               "m.delivery = d.id WHERE m.alert_id = 4 AND d.kind = 'firing'"),
                     2);
}

/* ---- silences ---- */

static void silenced_alert_is_recorded_and_notified_when_the_silence_ends(void **state)
{
    fx_t *f = *state;
    const char *m[] = {"upstream=\"users\""};
    al_silence_spec_t spec = {m, 1, 0, T0 + HOUR, "alice", "deploy"};
    char err[256];
    int64_t sid = 0, users, orders;

    assert_int_equal(al_silence_create(f->e, &spec, T0, &sid, err, sizeof(err)), 0);
    ev(f, "host_down", HOST("users", "a:1"), T0 + SEC);
    ev(f, "host_down", HOST("orders", "z:1"), T0 + SEC);
    users = alert_id(f, "host_down{host=\"a:1\",upstream=\"users\"}");
    orders = alert_id(f, "host_down{host=\"z:1\",upstream=\"orders\"}");
    assert_channels(f, users, "firing", NULL);
    assert_channels(f, orders, "firing", "chat");
    assert_int_equal(
        eng_q_int(f->db, "SELECT silenced_by FROM alerts WHERE id = %lld", (long long)users), sid);
    assert_int_equal(
        eng_q_int(f->db, "SELECT recheck_at FROM alerts WHERE id = %lld", (long long)users),
        T0 + HOUR);
    /* the silence ends before the escalation: the owed firing notification goes out then */
    tick(f, T0 + HOUR);
    assert_channels(f, users, "firing", "chat");
}

static void expiring_a_silence_wakes_what_it_held(void **state)
{
    fx_t *f = *state;
    const char *m[] = {"alertname=~\"host_.*\"", "host!=\"b:1\""};
    al_silence_spec_t spec = {m, 2, 0, T0 + 2 * HOUR, NULL, NULL};
    int64_t sid = 0, a, b;

    assert_int_equal(al_silence_create(f->e, &spec, T0, &sid, NULL, 0), 0);
    ev(f, "host_down", HOST("users", "a:1"), T0);
    ev(f, "host_down", HOST("users", "b:1"), T0);
    a = alert_id(f, "host_down{host=\"a:1\",upstream=\"users\"}");
    b = alert_id(f, "host_down{host=\"b:1\",upstream=\"users\"}");
    assert_channels(f, a, "firing", NULL);
    assert_channels(f, b, "firing", "chat");
    assert_int_equal(al_silence_expire(f->e, sid, T0 + 10 * MIN), 0);
    assert_int_equal(tick(f, T0 + 10 * MIN), T0 + HOUR);
    assert_channels(f, a, "firing", "chat");
    assert_int_equal(al_silence_expire(f->e, 12345, T0), AL_ENOENT);
}

/* ---- external alerts ---- */

static void external_generic_alerts_raise_dedup_and_resolve(void **state)
{
    fx_t *f = *state;
    const char *body = "{\"summary\":\"disk 95% full\",\"labels\":{\"host\":\"db1\","
                       "\"severity\":\"critical\"}}";
    const char *resolved = "{\"status\":\"resolved\",\"labels\":{\"host\":\"db1\","
                           "\"severity\":\"critical\"}}";
    al_external_result_t res;
    char err[256];

    assert_int_equal(al_engine_external(f->e, body, strlen(body), T0, &res, err, sizeof(err)), 0);
    assert_int_equal(res.raised, 1);
    assert_text(f, "external{host=\"db1\",severity=\"critical\"}|0|external",
                "SELECT dedup_key || '|' || tier || '|' || source FROM alerts");
    assert_int_equal(al_engine_external(f->e, body, strlen(body), T0 + 1, &res, err, sizeof(err)),
                     0);
    assert_int_equal(res.updated, 1);
    assert_int_equal(res.ids[0], 1);
    assert_int_equal(
        al_engine_external(f->e, resolved, strlen(resolved), T0 + 2, &res, err, sizeof(err)), 0);
    assert_int_equal(res.resolved, 1);
    assert_text(f, "resolved", "SELECT status FROM alerts");
    /* explicit tier and dedup_key */
    body = "{\"summary\":\"s\",\"tier\":\"P1\",\"dedup_key\":\"job-42\"}";
    assert_int_equal(al_engine_external(f->e, body, strlen(body), T0, &res, err, sizeof(err)), 0);
    assert_text(f, "1", "SELECT tier FROM alerts WHERE dedup_key = 'job-42'");
    /* refused as a whole, with a reason */
    body = "{\"summary\":\"s\",\"tier\":\"P7\"}";
    assert_int_equal(al_engine_external(f->e, body, strlen(body), T0, &res, err, sizeof(err)),
                     AL_EBADINPUT);
    assert_non_null(strstr(err, "tier"));
    body = "{\"labels\":{\"a\":\"b\"}}";
    assert_int_equal(al_engine_external(f->e, body, strlen(body), T0, &res, err, sizeof(err)),
                     AL_EBADINPUT);
    assert_non_null(strstr(err, "summary"));
    body = "{\"summary\":\"s\",\"labels\":{\"bad-name\":\"x\"}}";
    assert_int_equal(al_engine_external(f->e, body, strlen(body), T0, &res, err, sizeof(err)),
                     AL_EBADINPUT);
    assert_int_equal(al_engine_external(f->e, "nope", 4, T0, &res, err, sizeof(err)), AL_EBADINPUT);
}

static void external_alertmanager_v4_body(void **state)
{
    fx_t *f = *state;
    const char *am =
        "{\"version\":\"4\",\"groupKey\":\"{}:{}\",\"status\":\"firing\",\"receiver\":\"bw\","
        "\"alerts\":[{\"status\":\"firing\",\"labels\":{\"alertname\":\"HighLatency\","
        "\"service\":\"api\",\"severity\":\"warning\"},\"annotations\":{\"summary\":\"p99 over "
        "2s\"},\"startsAt\":\"2026-01-01T00:00:00Z\",\"fingerprint\":\"abc\"},"
        "{\"status\":\"resolved\",\"labels\":{\"alertname\":\"Other\"}}]}";
    const char *am2 = "{\"version\":\"4\",\"alerts\":[{\"status\":\"resolved\",\"labels\":"
                      "{\"alertname\":\"HighLatency\",\"service\":\"api\",\"severity\":"
                      "\"warning\"}}]}";
    al_external_result_t res;
    char err[256];

    assert_int_equal(al_engine_external(f->e, am, strlen(am), T0, &res, err, sizeof(err)), 0);
    assert_int_equal(res.raised, 1);
    assert_int_equal(res.ignored, 1);
    assert_text(f, "HighLatency{service=\"api\",severity=\"warning\"}|1|p99 over 2s",
                "SELECT dedup_key || '|' || tier || '|' || summary FROM alerts");
    assert_int_equal(al_engine_external(f->e, am2, strlen(am2), T0 + MIN, &res, err, sizeof(err)),
                     0);
    assert_int_equal(res.resolved, 1);
    assert_text(f, "resolved external", "SELECT status || ' ' || resolved_by FROM alerts");
    am = "{\"version\":\"3\",\"alerts\":[]}";
    assert_int_equal(al_engine_external(f->e, am, strlen(am), T0, &res, err, sizeof(err)),
                     AL_EBADINPUT);
}

/* ---- quiet resolve, retention ---- */

static void crash_alerts_resolve_after_a_quiet_period(void **state)
{
    fx_t *f = *state;

    assert_int_equal(al_engine_event(f->e, "worker_crash", 0, "{\"worker\":0,\"signal\":11}", T0),
                     0);
    assert_int_equal(eng_q_int(f->db, "SELECT auto_resolve_at FROM alerts"), T0 + 30 * MIN);
    assert_int_equal(
        al_engine_event(f->e, "worker_crash", 0, "{\"worker\":0,\"signal\":6}", T0 + 10 * MIN), 0);
    assert_int_equal(eng_q_int(f->db, "SELECT auto_resolve_at FROM alerts"), T0 + 40 * MIN);
    tick(f, T0 + 40 * MIN - 1);
    assert_text(f, "firing", "SELECT status FROM alerts");
    tick(f, T0 + 40 * MIN);
    assert_text(f, "resolved quiet", "SELECT status || ' ' || resolved_by FROM alerts");
}

static void retention_prunes_old_resolved_alerts_only(void **state)
{
    fx_t *f = *state;

    ev(f, "breaker_open", BREAKER("users"), T0);
    assert_int_equal(deliver_all(f, T0, AL_SEND_OK), 2);
    ev(f, "breaker_closed", UPS("users"), T0 + MIN);
    assert_int_equal(deliver_all(f, T0 + MIN, AL_SEND_OK), 2);
    ev(f, "breaker_open", BREAKER("orders"), T0);
    fx_close(f);
    f->opt.prune_every_ms = MIN;
    fx_open(f);
    tick(f, T0 + 30 * 24 * HOUR); /* retention is 30d: not yet */
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alerts"), 2);
    assert_int_equal(al_engine_ack(f->e, 2, "x", T0 + 30 * 24 * HOUR), 0);
    tick(f, T0 + 30 * 24 * HOUR + 2 * MIN);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alerts"), 1);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alert_history WHERE alert_id = 1"), 0);
    /* the pruned alert's deliveries went with it; the live alert's stay */
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE kind = 'resolved'"),
                     0);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries d WHERE NOT EXISTS "
                                      "(SELECT 1 FROM delivery_alerts m WHERE m.delivery = d.id)"),
                     0);
    assert_true(eng_q_int(f->db, "SELECT count(*) FROM deliveries") >= 2);
}

/* ---- restart ---- */

static void timers_survive_a_restart(void **state)
{
    fx_t *f = *state;
    int64_t id;

    ev(f, "host_down", HOST("users", "a:1"), T0);
    id = alert_id(f, "host_down{host=\"a:1\",upstream=\"users\"}");
    fx_close(f);
    fx_open(f);
    assert_int_equal(al_engine_start(f->e, T0 + 2 * HOUR), 0);
    /* down for two hours: escalated once on the first tick, then back on schedule */
    assert_int_equal(tick(f, T0 + 2 * HOUR), T0 + 2 * HOUR + 15 * MIN);
    assert_int_equal(eng_q_int(f->db, "SELECT tier FROM alerts"), 1);
    assert_channels(f, id, "escalated", "chat,pager");
}

/* ---- store failures ---- */

static void store_failure_holds_inputs_in_memory_and_flushes_in_order(void **state)
{
    fx_t *f = *state;
    const char *body = "{\"summary\":\"external\",\"labels\":{\"k\":\"v\"}}";
    al_engine_stats_t st;
    char err[256];

    fx_close(f);
    f->opt.queue_max = 3;
    fx_open(f);
    g_fail_writes = SQLITE_FULL;
    assert_int_equal(al_engine_event(f->e, "breaker_open", -1, BREAKER("users"), T0), AL_QUEUED);
    al_engine_stats(f->e, &st);
    assert_int_equal(st.last_store_error, AL_DB_ENOSPC);
    g_fail_writes = SQLITE_IOERR_WRITE;
    assert_int_equal(al_engine_event(f->e, "host_down", -1, HOST("users", "a:1"), T0 + 1),
                     AL_QUEUED);
    assert_int_equal(al_engine_external(f->e, body, strlen(body), T0 + 2, NULL, NULL, 0),
                     AL_QUEUED);
    /* what could never apply is refused now, not queued; what concerns no alert is ignored */
    assert_int_equal(al_engine_event(f->e, "host_down", -1, UPS("users"), T0 + 2), AL_EBADINPUT);
    assert_int_equal(al_engine_external(f->e, "{}", 2, T0 + 2, NULL, NULL, 0), AL_EBADINPUT);
    assert_int_equal(al_engine_event(f->e, "reload", -1, "{}", T0 + 2), 0);
    /* full: the newest is dropped and counted; what was accepted keeps its order */
    assert_int_equal(al_engine_event(f->e, "breaker_open", -1, BREAKER("orders"), T0 + 3),
                     AL_ELIMIT);
    al_engine_stats(f->e, &st);
    assert_int_equal(st.queued, 3);
    assert_int_equal(st.queue_dropped, 1);
    /* still failing: retried on a backoff, nothing lost */
    assert_int_equal(al_engine_tick(f->e, T0 + 10 * SEC, NULL), AL_DB_EIO);
    assert_int_equal(al_engine_queued(f->e), 3);
    g_fail_writes = 0;
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM alerts"), 0);
    tick(f, T0 + 20 * SEC);
    assert_int_equal(al_engine_queued(f->e), 0);
    al_engine_stats(f->e, &st);
    assert_int_equal(st.queue_applied, 3);
    assert_text(f,
                "breaker_open{upstream=\"users\"},host_down{host=\"a:1\",upstream=\"users\"},"
                "external{k=\"v\"}",
                "SELECT group_concat(dedup_key, ',') FROM (SELECT dedup_key FROM alerts ORDER "
                "BY id)");
    /* applied with the time they arrived */
    assert_int_equal(eng_q_int(f->db, "SELECT started_at FROM alerts WHERE id = 2"), T0 + 1);
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries"), 4);
    assert_int_equal(al_db_integrity_check(f->db, 1, err, sizeof(err)), 0);
}

/* An error that left nothing held (an ack's commit failed) is cleared by a probe once the store
 * takes a transaction again, so the control process can tell it works without waiting for
 * other writes. */
static void probe_clears_the_store_error_once_the_store_works(void **state)
{
    fx_t *f = *state;
    al_engine_stats_t st;

    ev(f, "breaker_open", BREAKER("users"), T0);
    g_fail_writes = SQLITE_IOERR_WRITE;
    assert_int_equal(
        al_engine_ack(f->e, alert_id(f, "breaker_open{upstream=\"users\"}"), "api", T0 + SEC),
        AL_DB_EIO);
    al_engine_stats(f->e, &st);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.last_store_error, AL_DB_EIO);
    g_fail_writes = 0;
    assert_int_equal(al_engine_probe(f->e), 0);
    al_engine_stats(f->e, &st);
    assert_int_equal(st.last_store_error, 0);
}

static void store_failure_on_ack_is_reported_not_queued(void **state)
{
    fx_t *f = *state;

    ev(f, "breaker_open", BREAKER("users"), T0);
    g_fail_writes = SQLITE_FULL;
    assert_int_equal(al_engine_ack(f->e, 1, "a", T0 + 1), AL_DB_ENOSPC);
    g_fail_writes = 0;
    assert_text(f, "firing", "SELECT status FROM alerts");
    assert_int_equal(eng_q_int(f->db, "SELECT count(*) FROM deliveries WHERE status = 'pending'"),
                     2);
    assert_int_equal(al_engine_ack(f->e, 1, "a", T0 + 2), 0);
}

static void store_failure_in_tick_or_record_changes_nothing_and_is_retried(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[2];
    al_attempt_t ok = {AL_SEND_OK, 200, 0, NULL};
    uint64_t next = 0;
    size_t n = 0;

    ev(f, "host_down", HOST("users", "a:1"), T0);
    assert_int_equal(al_outbox_claim(f->e, T0, d, 2, &n), 0);
    assert_int_equal(n, 1);
    g_fail_writes = SQLITE_IOERR_WRITE;
    assert_int_equal(al_engine_tick(f->e, T0 + HOUR, &next), AL_DB_EIO);
    assert_int_equal(next, T0 + HOUR + SEC); /* retried soon, not in a busy loop */
    assert_int_equal(al_outbox_record(f->e, &d[0], &ok, T0 + HOUR), AL_DB_EIO);
    g_fail_writes = 0;
    assert_int_equal(eng_q_int(f->db, "SELECT tier FROM alerts"), 2);
    assert_text(f, "sending", "SELECT status FROM deliveries");
    assert_int_equal(
        eng_q_int(f->db, "SELECT count(*) FROM alert_history WHERE kind = 'escalated'"), 0);
    /* the store is back: the same work goes through */
    tick(f, T0 + HOUR + SEC);
    assert_int_equal(eng_q_int(f->db, "SELECT tier FROM alerts"), 1);
    assert_int_equal(al_outbox_record(f->e, &d[0], &ok, T0 + HOUR + SEC), 0);
    assert_text(f, "sent", "SELECT status FROM deliveries WHERE id = 1");
    al_delivery_dispose(&d[0]);
}

/* ---- lineage ---- */

static void lineage_tells_the_whole_story(void **state)
{
    fx_t *f = *state;
    al_delivery_t d[4];
    al_attempt_t fail = {AL_SEND_RETRY, 503, 0, "HTTP 503"}, ok = {AL_SEND_OK, 200, 0, NULL};
    size_t n = 0;
    char *out = NULL;
    json_t *root, *h;
    const char *want[] = {"raised",   "notified", "delivery",     "delivery", "escalated",
                          "notified", "event",    "acknowledged", "resolved", "notified"};

    ev(f, "host_down", HOST("users", "a:1"), T0);
    assert_int_equal(al_outbox_claim(f->e, T0, d, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(al_outbox_record(f->e, &d[0], &fail, T0 + 1), 0);
    al_delivery_dispose(&d[0]);
    assert_int_equal(al_outbox_claim(f->e, T0 + 10 * SEC, d, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(d[0].attempt, 2);
    assert_int_equal(al_outbox_record(f->e, &d[0], &ok, T0 + 10 * SEC), 0);
    al_delivery_dispose(&d[0]);
    tick(f, T0 + HOUR);
    ev(f, "host_ejected", HOST("users", "a:1"), T0 + HOUR + 1);
    assert_int_equal(al_engine_ack(f->e, 1, "alice", T0 + HOUR + 2), 0);
    ev(f, "host_up", HOST("users", "a:1"), T0 + HOUR + 3);

    assert_int_equal(al_alert_json(f->e, 1, &out), 0);
    root = json_loads(out, 0, NULL);
    assert_non_null(root);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(root, "alert"), "status")), "resolved");
    h = json_object_get(root, "history");
    assert_int_equal(json_array_size(h), sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < json_array_size(h); i++)
        assert_string_equal(json_string_value(json_object_get(json_array_get(h, i), "kind")),
                            want[i]);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(h, 0), "detail"), "event")),
                        "host_down");
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_array_get(h, 2), "detail"), "http_status")),
                     503);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(h, 3), "detail"), "result")),
                        "ok");
    /* firing (chat), escalated (chat, pager), resolved (chat: the only channel that got it) */
    assert_int_equal(json_array_size(json_object_get(root, "deliveries")), 4);
    json_decref(root);
    free(out);
    assert_int_equal(al_alert_json(f->e, 77, &out), AL_ENOENT);
    assert_int_equal(al_alerts_json(f->e, "firing", 0, &out), 0);
    assert_string_equal(out, "{\"alerts\":[]}");
    free(out);
    assert_int_equal(al_alerts_json(f->e, "bogus", 0, &out), AL_EBADINPUT);
    assert_int_equal(al_alerts_json(f->e, NULL, 10, &out), 0);
    assert_non_null(strstr(out, "\"acked_by\":\"alice\""));
    free(out);
}

static void history_is_append_only(void **state)
{
    fx_t *f = *state;
    sqlite3 *c = al_db_handle(f->db);

    ev(f, "host_down", HOST("users", "a:1"), T0);
    assert_int_equal(sqlite3_exec(c, "UPDATE alert_history SET kind = 'event'", NULL, NULL, NULL) &
                         0xff,
                     SQLITE_CONSTRAINT);
}

/* ---- schema ---- */

/* The text of migrations/NAME, found from this source file's path. */
static char *read_migration(const char *name)
{
    char path[1024], *text;
    const char *slash = strrchr(__FILE__, '/');
    FILE *fp;
    long len;

    assert_non_null(slash);
    snprintf(path, sizeof(path), "%.*s/../../migrations/%s", (int)(slash - __FILE__), __FILE__,
             name);
    fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    len = ftell(fp);
    assert_true(len > 0);
    rewind(fp);
    text = calloc(1, (size_t)len + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)len, fp), (size_t)len);
    fclose(fp);
    return text;
}

static void version_1_database_upgrades_to_the_alert_schema(void **state)
{
    fx_t *f = *state;
    char *v1 = read_migration("0001_events.sql"), dir[80], err[256];
    struct al_db_migration m[] = {{"0001_events.sql", v1}};
    struct al_db_options o = {m, 1, 0};
    al_db_t *db = NULL;

    snprintf(dir, sizeof(dir), "%s/old", f->dir);
    assert_int_equal(al_db_open_with(dir, &o, &db, err, sizeof(err)), 0);
    assert_int_equal(al_db_schema_version(db), 1);
    assert_int_equal(sqlite3_exec(al_db_handle(db),
                                  "INSERT INTO events (ts_ms, kind, fields) VALUES (1, 'x', '{}')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    al_db_close(db);
    free(v1);
    assert_int_equal(al_db_open(dir, &db, err, sizeof(err)), 0);
    assert_true(al_db_schema_version(db) >= 2);
    assert_int_equal(eng_q_int(db, "SELECT count(*) FROM events"), 1);
    assert_int_equal(eng_q_int(db, "SELECT count(*) FROM sqlite_schema WHERE name IN ('alerts', "
                                   "'alert_history', 'deliveries', 'delivery_alerts', 'silences', "
                                   "'alerts_due', 'deliveries_due', 'alerts_active_key')"),
                     8);
    assert_int_equal(al_db_integrity_check(db, 1, err, sizeof(err)), 0);
    al_db_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(same_breaker_open_updates_one_alert, setup, teardown),
        cmocka_unit_test_setup_teardown(clearing_events_resolve_and_notify_the_notified_channels,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(events_map_to_the_documented_alerts, setup, teardown),
        cmocka_unit_test_setup_teardown(store_episode_is_recorded_resolved_without_notifications,
                                        setup, teardown),
        cmocka_unit_test_teardown(ack_is_sent_to_incident_channels_that_were_notified, teardown),
        cmocka_unit_test_setup_teardown(rule_off_events_only_touch_existing_alerts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(escalation_goes_p2_p1_p0_on_schedule, setup, teardown),
        cmocka_unit_test_setup_teardown(p0_repeats_every_repeat_until_acknowledged, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(ack_stops_escalation_repeats_and_pending_sends, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(ack_and_resolve_race_either_way, setup, teardown),
        cmocka_unit_test_setup_teardown(group_wait_batches_alerts_raised_together, setup_grouped,
                                        teardown),
        cmocka_unit_test_setup_teardown(group_member_ack_keeps_the_message_for_the_others,
                                        setup_grouped, teardown),
        cmocka_unit_test_setup_teardown(no_healthy_hosts_mutes_its_host_down_alerts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(flapping_alert_stays_firing_until_stable, setup_flap,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            silenced_alert_is_recorded_and_notified_when_the_silence_ends, setup, teardown),
        cmocka_unit_test_setup_teardown(expiring_a_silence_wakes_what_it_held, setup, teardown),
        cmocka_unit_test_setup_teardown(external_generic_alerts_raise_dedup_and_resolve, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(external_alertmanager_v4_body, setup, teardown),
        cmocka_unit_test_setup_teardown(crash_alerts_resolve_after_a_quiet_period, setup, teardown),
        cmocka_unit_test_setup_teardown(retention_prunes_old_resolved_alerts_only, setup, teardown),
        cmocka_unit_test_setup_teardown(timers_survive_a_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(store_failure_holds_inputs_in_memory_and_flushes_in_order,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(store_failure_on_ack_is_reported_not_queued, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(probe_clears_the_store_error_once_the_store_works, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            store_failure_in_tick_or_record_changes_nothing_and_is_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(lineage_tells_the_whole_story, setup, teardown),
        cmocka_unit_test_setup_teardown(history_is_append_only, setup, teardown),
        cmocka_unit_test_setup_teardown(version_1_database_upgrades_to_the_alert_schema, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
