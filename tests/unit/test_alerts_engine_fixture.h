/* test_alerts_engine_fixture.h - shared by the tests that run a real engine on a SQLite file in
 * a temporary directory (test_alerts_engine.c, test_alerts_outbox.c, and through
 * test_alerts_live_fixture.h the sender and delivery tests): a config from YAML text, one-value
 * SQL reads, and removing the temporary directory. Nothing of the sender, libuv or curl.
 *
 * Every helper is static inline so each test file uses what it needs without unused-function
 * warnings. Not a test itself (the CMake glob takes tests/unit/test_*.c only).
 */
#ifndef TEST_ALERTS_ENGINE_FIXTURE_H
#define TEST_ALERTS_ENGINE_FIXTURE_H

#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "alerts.h"
#include "config.h"
#include "db.h"

/* Parses a config (printing its diagnostics); it must be valid. Takes yaml (malloc'd). */
static inline gw_config_t *eng_config(char *yaml)
{
    gw_config_t *cfg = NULL;
    gw_diag_t d;
    int r;

    gw_diag_init(&d);
    r = gw_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, &d);
    for (size_t i = 0; i < d.n; i++)
        print_message("config: %s\n", d.items[i]);
    gw_diag_dispose(&d);
    free(yaml);
    assert_int_equal(r, 0);
    return cfg;
}

/* The first column of the first row of a query (sqlite3_mprintf format, so %Q and %lld work) as
 * an integer; -1 for NULL or no row. */
static inline int64_t eng_q_int(al_db_t *db, const char *fmt, ...)
{
    sqlite3_stmt *st = NULL;
    char *sql;
    va_list ap;
    int64_t v = -1;

    va_start(ap, fmt);
    sql = sqlite3_vmprintf(fmt, ap);
    va_end(ap);
    assert_int_equal(sqlite3_prepare_v2(al_db_handle(db), sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_free(sql);
    return v;
}

/* The same as a new string ("" for NULL or no row). */
static inline char *eng_q_text(al_db_t *db, const char *fmt, ...)
{
    sqlite3_stmt *st = NULL;
    char *sql, *v;
    va_list ap;

    va_start(ap, fmt);
    sql = sqlite3_vmprintf(fmt, ap);
    va_end(ap);
    assert_int_equal(sqlite3_prepare_v2(al_db_handle(db), sql, -1, &st, NULL), SQLITE_OK);
    v = strdup(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL
                   ? (const char *)sqlite3_column_text(st, 0)
                   : "");
    sqlite3_finalize(st);
    sqlite3_free(sql);
    return v;
}

static inline int eng_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes a temporary directory and everything in it. */
static inline void eng_rmtree(const char *dir)
{
    nftw(dir, eng_rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

#endif
