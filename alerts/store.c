/*
 * store.c - the alert engine's SQLite layer: every statement, transactions, alert rows.
 *
 * Why: SQL runs only through statements prepared once in al_engine_new() (AL_STATEMENTS in
 * alerts_int.h lists all of them, so the whole data access of the engine is in one place) and kept
 * until al_engine_free(). Results are translated to AL_DB_E* codes here, at the SQLite boundary.
 *
 * Invariants: a statement handed out by al_stmt() is reset with no bindings; every user calls
 * al_stmt_done() (or al_stmt_run()/al_stmt_int(), which do) before the next use, and never steps
 * a statement while iterating the same one (rows are copied out first). Writes happen only between
 * al_txn_begin() (BEGIN IMMEDIATE: take the write lock up front, PLATFORM.md) and
 * al_txn_commit()/al_txn_rollback(). alerts.due_at always equals al_alert_due() of the row,
 * because al_alert_save() is the only writer of timers (except the two wake-up UPDATEs, which only
 * lower due_at to now).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "alerts_int.h"

static const char *const stmt_sql[AL_ST_COUNT] = {
#define AL_STMT_SQL(name, sql) [AL_ST_##name] = sql,
    AL_STATEMENTS(AL_STMT_SQL)
#undef AL_STMT_SQL
};

int al_store_prepare(al_engine_t *e)
{
    for (int i = 0; i < AL_ST_COUNT; i++) {
        int rc = sqlite3_prepare_v3(e->conn, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &e->st[i],
                                    NULL);
        if (rc != SQLITE_OK)
            return al_db_translate(rc);
    }
    return 0;
}

void al_store_finalize(al_engine_t *e)
{
    for (int i = 0; i < AL_ST_COUNT; i++) {
        sqlite3_finalize(e->st[i]);
        e->st[i] = NULL;
    }
}

sqlite3_stmt *al_stmt(al_engine_t *e, al_stmt_id_t id)
{
    assert(id < AL_ST_COUNT && e->st[id] != NULL);
    return e->st[id];
}

void al_stmt_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

int al_stmt_run(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    al_stmt_done(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : al_db_translate(rc);
}

int al_stmt_int(sqlite3_stmt *st, int64_t null_value, int64_t *out)
{
    int rc = sqlite3_step(st), ret = 0;

    if (rc == SQLITE_ROW)
        *out = sqlite3_column_type(st, 0) == SQLITE_NULL ? null_value : sqlite3_column_int64(st, 0);
    else if (rc == SQLITE_DONE)
        *out = null_value;
    else
        ret = al_db_translate(rc);
    al_stmt_done(st);
    return ret;
}

/* ECORRUPT too: SQLite 3.40 reports a read that failed with EIO as SQLITE_CORRUPT (extended code
 * 11, no system errno; chaos db_eio --modes read), so it cannot be told from real corruption here,
 * and holding inputs in memory (bounded, counted) is the better answer to both. */
bool al_store_unavailable(int code)
{
    return code == AL_DB_EBUSY || code == AL_DB_ENOSPC || code == AL_DB_EIO ||
           code == AL_DB_ECORRUPT;
}

static int note_store(al_engine_t *e, int r)
{
    if (al_store_unavailable(r))
        e->last_store_error = r;
    return r;
}

int al_txn_begin(al_engine_t *e)
{
    int r;

    assert(!e->in_txn);
    r = al_stmt_run(al_stmt(e, AL_ST_BEGIN));
    if (r == 0)
        e->in_txn = true;
    return note_store(e, r);
}

void al_txn_rollback(al_engine_t *e)
{
    /* SQLite may already have rolled back (e.g. after SQLITE_FULL): then ROLLBACK is skipped. */
    if (!sqlite3_get_autocommit(e->conn))
        al_stmt_run(al_stmt(e, AL_ST_ROLLBACK));
    e->in_txn = false;
    al_notes_clear(e);
}

int al_txn_commit(al_engine_t *e)
{
    int r = al_stmt_run(al_stmt(e, AL_ST_COMMIT));

    if (r != 0) {
        al_txn_rollback(e);
        return note_store(e, r);
    }
    e->in_txn = false;
    e->last_store_error = 0;
    return 0;
}

void al_bind_time(sqlite3_stmt *st, int i, uint64_t t)
{
    if (t == AL_NEVER)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_int64(st, i, (sqlite3_int64)t);
}

void al_bind_id(sqlite3_stmt *st, int i, int64_t id)
{
    if (id == 0)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_int64(st, i, id);
}

void al_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
}

uint64_t al_col_time(sqlite3_stmt *st, int i)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return AL_NEVER;
    sqlite3_int64 v = sqlite3_column_int64(st, i);
    return v < 0 ? 0 : (uint64_t)v;
}

char *al_col_strdup(sqlite3_stmt *st, int i, int *nomem)
{
    const unsigned char *s;
    char *copy;

    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return NULL;
    s = sqlite3_column_text(st, i);
    if (s == NULL) {
        *nomem = 1;
        return NULL;
    }
    copy = strdup((const char *)s);
    if (copy == NULL)
        *nomem = 1;
    return copy;
}

int al_strset(char **dst, const char *src)
{
    char *copy = NULL;

    if (src != NULL && (copy = strdup(src)) == NULL)
        return AL_DB_ENOMEM;
    free(*dst);
    *dst = copy;
    return 0;
}

void al_alert_dispose(al_alert_t *a)
{
    if (a == NULL)
        return;
    free(a->dedup_key);
    free(a->event);
    free(a->source);
    free(a->labels);
    free(a->summary);
    free(a->acked_by);
    free(a->resolved_by);
    memset(a, 0, sizeof(*a));
}

static const char *const status_names[AL_STATUS_COUNT] = {"firing", "acknowledged", "resolved"};

const char *al_status_name(al_status_t s)
{
    return (unsigned)s < AL_STATUS_COUNT ? status_names[s] : "?";
}

int al_status_parse(const char *s)
{
    for (int i = 0; s != NULL && i < AL_STATUS_COUNT; i++)
        if (strcmp(s, status_names[i]) == 0)
            return i;
    return -1;
}

int al_notify_kind_parse(const char *s)
{
    for (int i = 0; s != NULL && i < AL_NOTIFY_KIND_COUNT; i++)
        if (strcmp(s, al_notify_kind_name((al_notify_kind_t)i)) == 0)
            return i;
    return AL_NOTIFY_NONE;
}

int al_alert_read(sqlite3_stmt *st, al_alert_t *a)
{
    int nomem = 0, s;

    memset(a, 0, sizeof(*a));
    a->id = sqlite3_column_int64(st, 0);
    a->dedup_key = al_col_strdup(st, 1, &nomem);
    a->event = al_col_strdup(st, 2, &nomem);
    a->source = al_col_strdup(st, 3, &nomem);
    a->tier = sqlite3_column_int(st, 4);
    a->first_tier = sqlite3_column_int(st, 5);
    s = al_status_parse((const char *)sqlite3_column_text(st, 6));
    a->status = s < 0 ? AL_FIRING : (al_status_t)s;
    a->labels = al_col_strdup(st, 7, &nomem);
    a->summary = al_col_strdup(st, 8, &nomem);
    a->started_at = al_col_time(st, 9);
    a->updated_at = al_col_time(st, 10);
    a->last_seen_at = al_col_time(st, 11);
    a->count = sqlite3_column_int64(st, 12);
    a->escalation_level = sqlite3_column_int(st, 13);
    a->acked_at = al_col_time(st, 14);
    a->acked_by = al_col_strdup(st, 15, &nomem);
    a->resolved_at = al_col_time(st, 16);
    a->resolved_by = al_col_strdup(st, 17, &nomem);
    a->next_escalation_at = al_col_time(st, 18);
    a->next_repeat_at = al_col_time(st, 19);
    a->notify_kind = al_notify_kind_parse((const char *)sqlite3_column_text(st, 20));
    a->notify_at = al_col_time(st, 21);
    a->recheck_at = al_col_time(st, 22);
    a->silenced_by = sqlite3_column_int64(st, 23);
    a->inhibited_by = sqlite3_column_int64(st, 24);
    a->flapping = sqlite3_column_int(st, 25) != 0;
    a->flap_count = sqlite3_column_int64(st, 26);
    a->clear_since = al_col_time(st, 27);
    a->hold_until = al_col_time(st, 28);
    a->auto_resolve_at = al_col_time(st, 29);
    a->due_at = al_col_time(st, 30);
    if (nomem || a->dedup_key == NULL || a->event == NULL || a->labels == NULL) {
        al_alert_dispose(a);
        return AL_DB_ENOMEM;
    }
    return 0;
}

/* Steps st once: 1 and *a filled when there is a row, 0 when not, negative on error. *a is
 * always left initialized (zeroed when there is no row), so al_alert_dispose() is safe. */
static int load_one(sqlite3_stmt *st, al_alert_t *a)
{
    int rc = sqlite3_step(st), r;

    memset(a, 0, sizeof(*a));
    if (rc == SQLITE_ROW)
        r = al_alert_read(st, a) == 0 ? 1 : AL_DB_ENOMEM;
    else
        r = rc == SQLITE_DONE ? 0 : al_db_translate(rc);
    al_stmt_done(st);
    return r;
}

int al_alert_get(al_engine_t *e, int64_t id, al_alert_t *a)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_ALERT_BY_ID);

    sqlite3_bind_int64(st, 1, id);
    return load_one(st, a);
}

int al_alert_get_active(al_engine_t *e, const char *dedup_key, al_alert_t *a)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_ALERT_ACTIVE);

    sqlite3_bind_text(st, 1, dedup_key, -1, SQLITE_TRANSIENT);
    return load_one(st, a);
}

int al_alerts_count_active(al_engine_t *e, uint64_t firing[GW_TIER_COUNT],
                           uint64_t acked[GW_TIER_COUNT])
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_ALERT_ACTIVE_COUNTS);
    uint64_t f[GW_TIER_COUNT] = {0}, a[GW_TIER_COUNT] = {0};
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int status = al_status_parse((const char *)sqlite3_column_text(st, 0));
        int tier = sqlite3_column_int(st, 1);
        uint64_t n = (uint64_t)sqlite3_column_int64(st, 2);

        if (tier < 0 || tier >= GW_TIER_COUNT)
            continue;
        if (status == AL_FIRING)
            f[tier] += n;
        else if (status == AL_ACKED)
            a[tier] += n;
    }
    al_stmt_done(st);
    if (rc != SQLITE_DONE)
        return al_db_translate(rc);
    memcpy(firing, f, sizeof(f));
    memcpy(acked, a, sizeof(a));
    return 0;
}

static uint64_t min_time(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

uint64_t al_alert_due(const al_alert_t *a)
{
    uint64_t due;

    if (a->status == AL_RESOLVED)
        return AL_NEVER;
    due = min_time(a->hold_until, a->auto_resolve_at);
    if (a->status == AL_FIRING)
        due = min_time(due, min_time(a->next_escalation_at, a->next_repeat_at));
    if (a->notify_kind != AL_NOTIFY_NONE)
        due = min_time(due, min_time(a->notify_at, a->recheck_at));
    return due;
}

int al_alert_insert(al_engine_t *e, al_alert_t *a)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_ALERT_INSERT);
    int r;

    assert(e->in_txn);
    al_bind_text(st, 1, a->dedup_key);
    al_bind_text(st, 2, a->event);
    al_bind_text(st, 3, a->source);
    sqlite3_bind_int(st, 4, a->tier);
    al_bind_text(st, 5, a->labels);
    al_bind_text(st, 6, a->summary != NULL ? a->summary : "");
    al_bind_time(st, 7, a->started_at);
    sqlite3_bind_int(st, 8, a->flapping ? 1 : 0);
    r = al_stmt_run(st);
    if (r != 0)
        return r;
    a->id = sqlite3_last_insert_rowid(e->conn);
    a->first_tier = a->tier;
    return al_alert_save(e, a);
}

int al_alert_save(al_engine_t *e, al_alert_t *a)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_ALERT_UPDATE);

    assert(e->in_txn);
    a->due_at = al_alert_due(a);
    sqlite3_bind_int64(st, 1, a->id);
    sqlite3_bind_int(st, 2, a->tier);
    al_bind_text(st, 3, al_status_name(a->status));
    al_bind_text(st, 4, a->summary != NULL ? a->summary : "");
    al_bind_time(st, 5, a->updated_at);
    al_bind_time(st, 6, a->last_seen_at);
    sqlite3_bind_int64(st, 7, a->count);
    sqlite3_bind_int(st, 8, a->escalation_level);
    al_bind_time(st, 9, a->acked_at);
    al_bind_text(st, 10, a->acked_by);
    al_bind_time(st, 11, a->resolved_at);
    al_bind_text(st, 12, a->resolved_by);
    al_bind_time(st, 13, a->next_escalation_at);
    al_bind_time(st, 14, a->next_repeat_at);
    al_bind_text(st, 15,
                 a->notify_kind == AL_NOTIFY_NONE
                     ? NULL
                     : al_notify_kind_name((al_notify_kind_t)a->notify_kind));
    al_bind_time(st, 16, a->notify_at);
    al_bind_time(st, 17, a->recheck_at);
    al_bind_id(st, 18, a->silenced_by);
    al_bind_id(st, 19, a->inhibited_by);
    sqlite3_bind_int(st, 20, a->flapping ? 1 : 0);
    sqlite3_bind_int64(st, 21, a->flap_count);
    al_bind_time(st, 22, a->clear_since);
    al_bind_time(st, 23, a->hold_until);
    al_bind_time(st, 24, a->auto_resolve_at);
    al_bind_time(st, 25, a->due_at);
    return al_stmt_run(st);
}

/* ---- randomness ---- */

/* xorshift64*: the default source, seeded once from getrandom(). Not for secrets: it only spreads
 * retries and makes delivery ids unique. */
static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

uint64_t al_random(al_engine_t *e)
{
    if (e->opt.random != NULL)
        return e->opt.random(e->opt.random_ctx);
    if (e->rng == 0) {
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed) || seed == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            seed = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) | 1u;
        }
        e->rng = seed;
    }
    return xorshift(&e->rng);
}

void al_uuid(al_engine_t *e, char out[37])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    uint64_t hi = al_random(e), lo = al_random(e);
    int j = 0;

    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)(hi >> (56 - 8 * i));
        b[8 + i] = (unsigned char)(lo >> (56 - 8 * i));
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 1 */
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[j++] = '-';
        out[j++] = hex[b[i] >> 4];
        out[j++] = hex[b[i] & 15];
    }
    out[j] = '\0';
}
