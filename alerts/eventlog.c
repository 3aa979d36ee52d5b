/*
 * eventlog.c - the `events` table behind the audit trail. See eventlog.h.
 */
#include "eventlog.h"

#include <sqlite3.h>
#include <stdlib.h>

struct al_eventlog {
    sqlite3 *db;
    sqlite3_stmt *begin, *commit, *rollback, *insert, *list;
};

void al_eventlog_close(al_eventlog_t *el)
{
    if (el == NULL)
        return;
    sqlite3_finalize(el->begin);
    sqlite3_finalize(el->commit);
    sqlite3_finalize(el->rollback);
    sqlite3_finalize(el->insert);
    sqlite3_finalize(el->list);
    free(el);
}

int al_eventlog_open(al_db_t *db, al_eventlog_t **out)
{
    al_eventlog_t *el = calloc(1, sizeof(*el));
    if (el == NULL)
        return AL_DB_ENOMEM;
    el->db = al_db_handle(db);
    int rc = sqlite3_prepare_v2(el->db, "BEGIN IMMEDIATE", -1, &el->begin, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(el->db, "COMMIT", -1, &el->commit, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(el->db, "ROLLBACK", -1, &el->rollback, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(
            el->db, "INSERT INTO events (ts_ms, kind, worker, fields) VALUES (?1, ?2, ?3, ?4)", -1,
            &el->insert, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(el->db,
                                "SELECT id, ts_ms, kind, worker, fields FROM events "
                                "WHERE id > ?1 ORDER BY id LIMIT ?2",
                                -1, &el->list, NULL);
    if (rc != SQLITE_OK) {
        al_eventlog_close(el);
        return al_db_translate(rc);
    }
    *out = el;
    return 0;
}

static int run(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : al_db_translate(rc);
}

int al_eventlog_begin(al_eventlog_t *el)
{
    return run(el->begin);
}

int al_eventlog_commit(al_eventlog_t *el)
{
    int r = run(el->commit);
    if (r != 0)
        al_eventlog_rollback(el);
    return r;
}

void al_eventlog_rollback(al_eventlog_t *el)
{
    if (!sqlite3_get_autocommit(el->db))
        run(el->rollback);
}

int al_eventlog_append(al_eventlog_t *el, uint64_t ts_ms, const char *kind, int32_t worker,
                       const char *fields_json)
{
    sqlite3_stmt *st = el->insert;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)ts_ms);
    sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
    if (worker < 0)
        sqlite3_bind_null(st, 3);
    else
        sqlite3_bind_int(st, 3, worker);
    sqlite3_bind_text(st, 4, fields_json, -1, SQLITE_STATIC);
    int r = run(st);
    sqlite3_clear_bindings(st);
    return r;
}

int al_eventlog_list(al_eventlog_t *el, int64_t since_id, uint32_t limit, al_eventlog_row_cb row,
                     void *ctx)
{
    sqlite3_stmt *st = el->list;
    sqlite3_bind_int64(st, 1, since_id);
    sqlite3_bind_int64(st, 2, limit);
    int rc, r = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int32_t worker = sqlite3_column_type(st, 3) == SQLITE_NULL ? -1 : sqlite3_column_int(st, 3);
        r = row(ctx, sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
                (const char *)sqlite3_column_text(st, 2), worker,
                (const char *)sqlite3_column_text(st, 4));
        if (r != 0)
            break;
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = al_db_translate(rc);
    sqlite3_reset(st);
    return r;
}
