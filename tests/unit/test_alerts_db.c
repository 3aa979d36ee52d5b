/* test_alerts_db.c - alerts/db.c: opening state_dir/breakwater.db and the migration runner.
 *
 * Every test works in its own mkdtemp() directory under /tmp and removes it. Migration failures
 * are injected with al_db_open_with() and a test migration list; disk-full is forced
 * deterministically with PRAGMA max_page_count on a real file and, as root, on a real 1 MiB tmpfs
 * mounted in a private mount namespace of a forked child (so that the mount disappears with the
 * child whatever happens, and a SIGBUS would show up as the child's exit status instead of killing
 * the test runner). Tests that need a second process or another uid fork too; children report
 * through their exit status and stderr, never through cmocka.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "../../cmake/embedded.h"
#include "db.h"

/* The migrations embedded in the binary (cmake/embed.cmake), as db.c reads them. */
extern const bw_embedded_file_t al_migrations[];
extern const size_t al_migrations_count;

#define ERRLEN 512
/* Exit status of a child that could not set up its environment: the test is skipped. */
#define CHILD_SKIP 77

/* ---- helpers ---- */

/* Fixture: a fresh mkdtemp() directory per test, removed by the teardown even when the test
 * fails. Tests reach it with tmpdir(state). */
static int setup_tmpdir(void **state)
{
    char tmpl[] = "/tmp/bw_test_db.XXXXXX";
    char *d = mkdtemp(tmpl);

    if (d == NULL || (d = strdup(d)) == NULL)
        return -1;
    *state = d;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown_tmpdir(void **state)
{
    char *dir = *state;

    if (dir != NULL) {
        chmod(dir, 0700);
        /* FTW_MOUNT: never descend into a file system mounted below (the tmpfs test). */
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
        free(dir);
    }
    *state = NULL;
    return 0;
}

static char *tmpdir(void **state)
{
    return *state;
}

/* "dir/name", malloc()ed. */
static char *path_join(const char *dir, const char *name)
{
    char *p = NULL;

    assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
    return p;
}

static int file_exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

static int shm_exists(const char *state_dir)
{
    char *p = path_join(state_dir, AL_DB_FILENAME "-shm");
    int r = file_exists(p);

    free(p);
    return r;
}

/* 1 when any file named breakwater.db* is mapped into this process. */
static int db_file_mapped(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[1024];
    int found = 0;

    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strstr(line, AL_DB_FILENAME) != NULL)
            found = 1;
    fclose(f);
    return found;
}

/* Reads a whole file; *len gets its size. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static sqlite3_int64 q_int(sqlite3 *c, const char *sql)
{
    sqlite3_stmt *st = NULL;
    sqlite3_int64 v;

    assert_int_equal(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void q_text(sqlite3 *c, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *t;

    assert_int_equal(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    t = sqlite3_column_text(st, 0);
    snprintf(buf, len, "%s", t != NULL ? (const char *)t : "");
    sqlite3_finalize(st);
}

/* Every row of table, ordered by order_by, as row_expr, comma-separated: it must be want. */
static void assert_rows(sqlite3 *c, const char *table, const char *order_by, const char *row_expr,
                        const char *want)
{
    char sql[512], text[512];

    snprintf(sql, sizeof(sql), "SELECT group_concat(%s, ',') FROM (SELECT * FROM %s ORDER BY %s)",
             row_expr, table, order_by);
    q_text(c, sql, text, sizeof(text));
    assert_string_equal(text, want);
}

/* Runs statements without results, through a prepared statement each. Returns the SQLite code. */
static int run(sqlite3 *c, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(c, sql, -1, &st, NULL);

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE || rc == SQLITE_ROW)
            rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Inserts one event whose fields object is about `pad` bytes. Returns the SQLite code. */
static int insert_event(sqlite3 *c, sqlite3_int64 ts, const char *kind, size_t pad)
{
    sqlite3_stmt *st = NULL;
    char *fields = malloc(pad + 16);
    int rc;

    assert_non_null(fields);
    strcpy(fields, "{\"pad\":\"");
    memset(fields + 8, 'x', pad);
    strcpy(fields + 8 + pad, "\"}");
    rc = sqlite3_prepare_v2(c, "INSERT INTO events (ts_ms, kind, worker, fields) VALUES (?,?,?,?)",
                            -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, ts);
        sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
        sqlite3_bind_null(st, 3);
        sqlite3_bind_text(st, 4, fields, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    free(fields);
    return rc;
}

static int table_exists(sqlite3 *c, const char *name)
{
    sqlite3_stmt *st = NULL;
    int r;

    assert_int_equal(
        sqlite3_prepare_v2(c, "SELECT count(*) FROM sqlite_schema WHERE name = ?", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    r = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return r;
}

static al_db_t *open_ok(const char *dir)
{
    char err[ERRLEN];
    al_db_t *db = NULL;
    int rc = al_db_open(dir, &db, err, sizeof(err));

    if (rc != 0)
        fail_msg("al_db_open(%s) = %s: %s", dir, al_db_err_name(rc), err);
    assert_non_null(db);
    return db;
}

static al_db_t *open_list_ok(const char *dir, const struct al_db_migration *m, size_t n)
{
    struct al_db_options opts = {.migrations = m, .migrations_count = n};
    char err[ERRLEN];
    al_db_t *db = NULL;
    int rc = al_db_open_with(dir, &opts, &db, err, sizeof(err));

    if (rc != 0)
        fail_msg("al_db_open_with(%s) = %s: %s", dir, al_db_err_name(rc), err);
    return db;
}

/* The version a state_dir is at, read by opening it with a one-migration list (never migrates:
 * every test list starts with the same 0001). */
static const struct al_db_migration t0001 = {"0001_t.sql", "CREATE TABLE t1 (x INTEGER);"};

static void wait_child_ok(pid_t pid)
{
    int status;

    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status))
        fail_msg("child killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == CHILD_SKIP)
        skip();
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* Checks for forked children: report and return 1 from the enclosing int function. */
#define CHILD_CHECK(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: child check failed: %s\n", __FILE__, __LINE__, #cond);         \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

/* ---- error table and arguments ---- */

static void error_codes_have_distinct_names_and_messages(void **state)
{
    static const int codes[] = {
#define CODE(name, value, msg) AL_DB_##name,
        AL_DB_ERRORS(CODE)
#undef CODE
    };
    size_t i, j, n = sizeof(codes) / sizeof(codes[0]);

    (void)state;
    for (i = 0; i < n; i++) {
        assert_true(codes[i] < 0);
        assert_string_not_equal(al_db_strerror(codes[i]), "unknown error");
        assert_string_not_equal(al_db_err_name(codes[i]), "AL_DB_UNKNOWN");
        for (j = i + 1; j < n; j++)
            assert_int_not_equal(codes[i], codes[j]);
    }
    assert_string_equal(al_db_err_name(AL_DB_EBUSY), "AL_DB_EBUSY");
    assert_int_equal(AL_DB_ENOSPC, -ENOSPC);
    assert_string_equal(al_db_strerror(12345), "unknown error");
    assert_string_equal(al_db_err_name(-99999), "AL_DB_UNKNOWN");
    assert_int_equal(al_db_translate(SQLITE_OK), 0);
    assert_int_equal(al_db_translate(SQLITE_DONE), 0);
    assert_int_equal(al_db_translate(SQLITE_FULL), AL_DB_ENOSPC);
    assert_int_equal(al_db_translate(SQLITE_BUSY_SNAPSHOT), AL_DB_EBUSY);
    assert_int_equal(al_db_translate(SQLITE_LOCKED), AL_DB_EBUSY);
    assert_int_equal(al_db_translate(SQLITE_CORRUPT), AL_DB_ECORRUPT);
    assert_int_equal(al_db_translate(SQLITE_NOTADB), AL_DB_ECORRUPT);
    assert_int_equal(al_db_translate(SQLITE_IOERR_WRITE), AL_DB_EIO);
    assert_int_equal(al_db_translate(SQLITE_IOERR_FSYNC), AL_DB_EIO);
    assert_int_equal(al_db_translate(SQLITE_IOERR_NOMEM), AL_DB_ENOMEM);
    assert_int_equal(al_db_translate(SQLITE_READONLY), AL_DB_EACCES);
    assert_int_equal(al_db_translate(SQLITE_CANTOPEN), AL_DB_EACCES);
    assert_int_equal(al_db_translate(SQLITE_CONSTRAINT_CHECK), AL_DB_ESQLITE);
}

static void null_arguments_are_rejected(void **state)
{
    struct al_db_options bad = {.busy_timeout_ms = -1};
    char err[ERRLEN];
    al_db_t *db = (al_db_t *)&db;

    (void)state;
    al_db_close(NULL);
    assert_int_equal(al_db_open(NULL, &db, err, sizeof(err)), AL_DB_EINVAL);
    assert_null(db);
    assert_int_equal(al_db_open("", &db, err, sizeof(err)), AL_DB_EINVAL);
    assert_int_equal(al_db_open("/tmp", NULL, err, sizeof(err)), AL_DB_EINVAL);
    assert_int_equal(al_db_open_with("/tmp", &bad, &db, NULL, 0), AL_DB_EINVAL);
    assert_int_equal(al_db_schema_version(NULL), AL_DB_EINVAL);
    assert_int_equal(al_db_integrity_check(NULL, 0, NULL, 0), AL_DB_EINVAL);
}

/* ---- opening ---- */

static void fresh_dir_is_created_in_wal_exclusive_mode_at_latest_version(void **state)
{
    char *tmp = tmpdir(state), *dir = path_join(tmp, "state"), *dbpath, text[128], err[ERRLEN];
    struct stat st;
    al_db_t *db;
    sqlite3 *c;

    assert_true(al_db_latest_version() >= 1);
    db = open_ok(dir);
    c = al_db_handle(db);
    assert_non_null(c);

    assert_int_equal(stat(dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0750);
    dbpath = path_join(dir, AL_DB_FILENAME);
    assert_true(file_exists(dbpath));

    q_text(c, "PRAGMA journal_mode", text, sizeof(text));
    assert_string_equal(text, "wal");
    q_text(c, "PRAGMA locking_mode", text, sizeof(text));
    assert_string_equal(text, "exclusive");
    assert_int_equal(q_int(c, "PRAGMA synchronous"), 2); /* FULL */
    assert_int_equal(q_int(c, "PRAGMA foreign_keys"), 1);
    assert_int_equal(q_int(c, "PRAGMA trusted_schema"), 0);
    assert_int_equal(q_int(c, "PRAGMA cell_size_check"), 1);
    assert_int_equal(q_int(c, "PRAGMA mmap_size"), 0);
    assert_int_equal(q_int(c, "PRAGMA application_id"), 0x42574b31);
    assert_int_equal(q_int(c, "PRAGMA user_version"), al_db_latest_version());
    assert_int_equal(al_db_schema_version(db), al_db_latest_version());

    assert_true(table_exists(c, "events"));
    assert_true(table_exists(c, "meta"));
    assert_true(table_exists(c, "events_ts_ms"));
    assert_true(table_exists(c, "alerts")); /* 0002 */
    assert_true(table_exists(c, "deliveries"));
    q_text(c, "SELECT value FROM meta WHERE key = 'instance_id'", text, sizeof(text));
    assert_int_equal(strlen(text), 32);
    assert_true(q_int(c, "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'created_at_ms'") >
                1700000000000LL);

    assert_int_equal(al_db_integrity_check(db, 0, err, sizeof(err)), 0);
    assert_int_equal(al_db_integrity_check(db, 1, err, sizeof(err)), 0);
    al_db_close(db);
    free(dbpath);
    free(dir);
}

static void reopen_is_idempotent_and_keeps_data(void **state)
{
    char *dir = tmpdir(state), id1[64], id2[64];
    al_db_t *db;
    int i;

    db = open_ok(dir);
    q_text(al_db_handle(db), "SELECT value FROM meta WHERE key = 'instance_id'", id1, sizeof(id1));
    assert_int_equal(insert_event(al_db_handle(db), 1000, "breaker_open", 10), SQLITE_OK);
    al_db_close(db);
    for (i = 0; i < 3; i++) {
        db = open_ok(dir);
        assert_int_equal(al_db_schema_version(db), al_db_latest_version());
        q_text(al_db_handle(db), "SELECT value FROM meta WHERE key = 'instance_id'", id2,
               sizeof(id2));
        assert_string_equal(id1, id2);
        assert_int_equal(q_int(al_db_handle(db), "SELECT count(*) FROM events"), 1);
        assert_int_equal(q_int(al_db_handle(db), "SELECT count(*) FROM meta"), 2);
        al_db_close(db);
    }
}

static void events_schema_enforces_shape_and_never_reuses_ids(void **state)
{
    char *dir = tmpdir(state);
    al_db_t *db = open_ok(dir);
    sqlite3 *c = al_db_handle(db);

    assert_int_equal(insert_event(c, 1, "a", 1), SQLITE_OK);
    assert_int_equal(insert_event(c, 2, "b", 1), SQLITE_OK);
    assert_int_equal(insert_event(c, 3, "", 1), SQLITE_CONSTRAINT_CHECK);
    assert_int_equal(insert_event(c, -1, "c", 1), SQLITE_CONSTRAINT_CHECK);
    assert_int_equal(run(c, "INSERT INTO events (ts_ms, kind, fields) VALUES (1, 'a', '[1]')"),
                     SQLITE_CONSTRAINT_CHECK);
    assert_int_equal(run(c, "INSERT INTO events (ts_ms, kind, fields) VALUES ('x', 'a', '{}')"),
                     SQLITE_CONSTRAINT_DATATYPE); /* STRICT */
    assert_int_equal(run(c, "INSERT INTO events (ts_ms, kind, worker, fields) "
                            "VALUES (1, 'a', -2, '{}')"),
                     SQLITE_CONSTRAINT_CHECK);
    /* Queries may use the JSON functions even with trusted_schema=OFF. */
    assert_int_equal(q_int(c, "SELECT length(json_extract(fields, '$.pad')) FROM events LIMIT 1"),
                     1);
    /* Retention deleting everything must not rewind the `since` cursor. */
    assert_int_equal(run(c, "DELETE FROM events"), SQLITE_OK);
    assert_int_equal(insert_event(c, 4, "d", 1), SQLITE_OK);
    assert_int_equal(q_int(c, "SELECT max(id) FROM events"), 3);
    al_db_close(db);
}

static void newer_database_is_refused_and_left_untouched(void **state)
{
    char *dir = tmpdir(state), *dbpath = path_join(dir, AL_DB_FILENAME), *wal, err[ERRLEN],
         want[ERRLEN];
    char *before, *after;
    size_t nbefore, nafter;
    al_db_t *db = open_ok(dir);
    sqlite3 *raw = NULL;

    al_db_close(db);
    assert_int_equal(sqlite3_open_v2(dbpath, &raw, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(run(raw, "PRAGMA user_version = 7"), SQLITE_OK);
    assert_int_equal(sqlite3_close(raw), SQLITE_OK);
    before = slurp(dbpath, &nbefore);
    wal = path_join(dir, AL_DB_FILENAME "-wal");
    assert_false(file_exists(wal));

    db = (al_db_t *)dir;
    assert_int_equal(al_db_open(dir, &db, err, sizeof(err)), AL_DB_ETOONEW);
    assert_null(db);
    snprintf(want, sizeof(want),
             "database schema version 7 is newer than this binary (max %d): upgrade breakwater "
             "or use another state_dir",
             al_db_latest_version());
    assert_string_equal(err, want);

    after = slurp(dbpath, &nafter);
    assert_int_equal(nbefore, nafter);
    assert_memory_equal(before, after, nbefore);
    assert_false(file_exists(wal));
    assert_false(shm_exists(dir));
    free(before);
    free(after);
    free(wal);
    free(dbpath);
}

static void second_open_in_same_process_is_refused_as_in_use(void **state)
{
    struct al_db_options fast = {.busy_timeout_ms = 50};
    char *dir = tmpdir(state), err[ERRLEN], want[ERRLEN];
    al_db_t *db, *db2 = NULL;
    int round;

    snprintf(want, sizeof(want), "database is in use by another process (state_dir %s)", dir);
    /* Round 0 holds a freshly migrated database, round 1 one that needed no migration. */
    for (round = 0; round < 2; round++) {
        db = open_ok(dir);
        assert_int_equal(al_db_open_with(dir, &fast, &db2, err, sizeof(err)), AL_DB_EBUSY);
        assert_null(db2);
        assert_string_equal(err, want);
        /* The failed opener must not have disturbed the owner. */
        assert_int_equal(insert_event(al_db_handle(db), 1, "x", 1), SQLITE_OK);
        assert_int_equal(al_db_integrity_check(db, 0, err, sizeof(err)), 0);
        al_db_close(db);
    }
    db = open_ok(dir);
    assert_int_equal(q_int(al_db_handle(db), "SELECT count(*) FROM events"), 2);
    al_db_close(db);
}

static void second_open_from_another_process_is_refused_as_in_use(void **state)
{
    struct al_db_options fast = {.busy_timeout_ms = 100};
    char *dir = tmpdir(state), err[ERRLEN], want[ERRLEN], c;
    int ready[2], release[2];
    al_db_t *db = NULL;
    pid_t pid;

    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(release), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        al_db_t *owner = NULL;
        int rc = al_db_open(dir, &owner, err, sizeof(err));

        close(ready[0]);
        close(release[1]);
        if (rc != 0) {
            fprintf(stderr, "child: %s\n", err);
            _exit(1);
        }
        if (write(ready[1], "r", 1) != 1)
            _exit(2);
        while (read(release[0], &c, 1) > 0)
            ;
        al_db_close(owner);
        _exit(0);
    }
    close(ready[1]);
    close(release[0]);
    assert_int_equal(read(ready[0], &c, 1), 1);
    snprintf(want, sizeof(want), "database is in use by another process (state_dir %s)", dir);
    assert_int_equal(al_db_open_with(dir, &fast, &db, err, sizeof(err)), AL_DB_EBUSY);
    assert_string_equal(err, want);
    close(release[1]);
    close(ready[0]);
    wait_child_ok(pid);
    db = open_ok(dir);
    al_db_close(db);
}

static void state_dir_that_is_a_file_is_refused(void **state)
{
    char *tmp = tmpdir(state), *file = path_join(tmp, "not_a_dir"), err[ERRLEN], want[ERRLEN];
    al_db_t *db = NULL;
    int fd;

    fd = open(file, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(al_db_open(file, &db, err, sizeof(err)), AL_DB_ENOTDIR);
    assert_null(db);
    snprintf(want, sizeof(want), "state_dir %s exists and is not a directory", file);
    assert_string_equal(err, want);
    free(file);
}

static void missing_parent_of_state_dir_is_reported(void **state)
{
    char *tmp = tmpdir(state), *dir = path_join(tmp, "no/such/state"), err[ERRLEN];
    al_db_t *db = NULL;

    assert_int_equal(al_db_open(dir, &db, err, sizeof(err)), AL_DB_ESTATEDIR);
    assert_non_null(strstr(err, "cannot create state_dir"));
    assert_non_null(strstr(err, "No such file or directory"));
    free(dir);
}

static void garbage_file_is_reported_as_corrupt(void **state)
{
    char *dir = tmpdir(state), *dbpath = path_join(dir, AL_DB_FILENAME), err[ERRLEN];
    char junk[8192];
    al_db_t *db = NULL;
    int fd;

    memset(junk, 'j', sizeof(junk));
    fd = open(dbpath, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    close(fd);
    assert_int_equal(al_db_open(dir, &db, err, sizeof(err)), AL_DB_ECORRUPT);
    assert_null(db);
    assert_non_null(strstr(err, "is corrupt or not a database"));
    assert_non_null(strstr(err, dbpath));
    free(dbpath);
}

static void foreign_sqlite_database_is_refused(void **state)
{
    char *dir = tmpdir(state), *dbpath = path_join(dir, AL_DB_FILENAME), err[ERRLEN];
    al_db_t *db = NULL;
    sqlite3 *raw = NULL;

    assert_int_equal(sqlite3_open(dbpath, &raw), SQLITE_OK);
    assert_int_equal(run(raw, "PRAGMA application_id = 1234"), SQLITE_OK);
    assert_int_equal(sqlite3_close(raw), SQLITE_OK);
    assert_int_equal(al_db_open(dir, &db, err, sizeof(err)), AL_DB_ECORRUPT);
    assert_non_null(strstr(err, "belongs to another application"));
    free(dbpath);
}

static void integrity_check_reports_a_damaged_page(void **state)
{
    char *dir = tmpdir(state), *dbpath = path_join(dir, AL_DB_FILENAME), err[ERRLEN];
    char junk[512];
    sqlite3_int64 pages;
    al_db_t *db = open_ok(dir);
    int fd, i, rc;

    for (i = 0; i < 200; i++)
        assert_int_equal(insert_event(al_db_handle(db), i, "x", 300), SQLITE_OK);
    pages = q_int(al_db_handle(db), "PRAGMA page_count");
    al_db_close(db); /* checkpoints: everything is in the main file now */

    /* Overwrite the middle of the events table's pages: b-tree headers and cells. */
    memset(junk, 0xa5, sizeof(junk));
    fd = open(dbpath, O_WRONLY);
    assert_true(fd >= 0);
    for (i = 3; i < pages; i += 2)
        assert_int_equal(pwrite(fd, junk, sizeof(junk), (off_t)i * 4096 + 100), sizeof(junk));
    close(fd);

    db = NULL;
    rc = al_db_open(dir, &db, err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_int_equal(al_db_integrity_check(db, 0, err, sizeof(err)), AL_DB_ECORRUPT);
    assert_true(strlen(err) > 0);
    assert_int_equal(al_db_integrity_check(db, 1, err, sizeof(err)), AL_DB_ECORRUPT);
    al_db_close(db);
    free(dbpath);
}

/* ---- migrations ---- */

static void upgrade_applies_each_newer_migration_in_order(void **state)
{
    static const struct al_db_migration m[] = {
        {"0001_t.sql", "CREATE TABLE p (id INTEGER PRIMARY KEY);"
                       "CREATE TABLE c (p INTEGER NOT NULL REFERENCES p (id));"
                       "INSERT INTO p VALUES (1); INSERT INTO c VALUES (1);"},
        /* A table rebuild under a foreign key: needs foreign_keys off while it runs. */
        {"0002_rebuild_p.sql", "CREATE TABLE p_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL "
                               "DEFAULT 'none');"
                               "INSERT INTO p_new (id) SELECT id FROM p;"
                               "DROP TABLE p;"
                               "ALTER TABLE p_new RENAME TO p;"},
        {"0003_count.sql", "CREATE TABLE n AS SELECT count(*) AS k FROM p JOIN c ON c.p = p.id;"},
    };
    char *dir = tmpdir(state), err[ERRLEN], name[16];
    al_db_t *db = open_list_ok(dir, m, 1);

    assert_int_equal(al_db_schema_version(db), 1);
    al_db_close(db);
    db = open_list_ok(dir, m, 3);
    assert_int_equal(al_db_schema_version(db), 3);
    q_text(al_db_handle(db), "SELECT name FROM p WHERE id = 1", name, sizeof(name));
    assert_string_equal(name, "none");
    assert_int_equal(q_int(al_db_handle(db), "SELECT k FROM n"), 1);
    assert_int_equal(q_int(al_db_handle(db), "PRAGMA foreign_keys"), 1);
    /* Foreign keys are enforced again after the run. */
    assert_int_equal(run(al_db_handle(db), "DELETE FROM p"), SQLITE_CONSTRAINT_FOREIGNKEY);
    assert_int_equal(al_db_integrity_check(db, 1, err, sizeof(err)), 0);
    al_db_close(db);
}

/* A database at schema version 2 (the real 0001 and 0002, as embedded) holding alerts, their
 * lineage, deliveries (pending, sent, cancelled) and delivery_alerts rows, upgraded by
 * al_db_open() to the newest version: 0003 rebuilds `deliveries`, and every row, id and link
 * must come through, with the new columns NULL and the new CHECKs in force. */
#define UUID(n) "00000000-0000-4000-8000-00000000000" #n

static void upgrade_from_version_2_keeps_rows_ids_and_links(void **state)
{
    static const char *const rows[] = {
        "INSERT INTO alerts (id, dedup_key, event, source, tier, first_tier, status, labels, "
        "summary, started_at, updated_at, last_seen_at, count, escalation_level, next_repeat_at, "
        "due_at) VALUES (3, 'breaker_open{upstream=\"users\"}', 'breaker_open', 'event', 0, 1, "
        "'firing', '{\"upstream\":\"users\"}', 'users open', 1000, 1100, 1100, 4, 1, 5000, 5000)",
        "INSERT INTO alerts (id, dedup_key, event, source, tier, first_tier, status, labels, "
        "summary, started_at, updated_at, last_seen_at, count, acked_at, acked_by) VALUES (5, "
        "'host_down', 'host_down', 'event', 1, 1, 'acknowledged', '{}', 'host down', 1200, 2000, "
        "1900, 1, 2000, 'ops')",
        "INSERT INTO alerts (id, dedup_key, event, source, tier, first_tier, status, labels, "
        "summary, started_at, updated_at, last_seen_at, count, resolved_at, resolved_by) VALUES "
        "(8, 'ext', 'external', 'external', 2, 2, 'resolved', '{}', 'ext', 1300, 3000, 1300, 1, "
        "3000, 'api')",
        "INSERT INTO alert_history (alert_id, ts_ms, kind, detail) VALUES (3, 1000, 'raised', "
        "'{\"tier\":\"P1\"}'), (3, 1100, 'escalated', '{}'), (8, 3000, 'resolved', '{}')",
        "INSERT INTO deliveries (id, delivery_id, channel, kind, tier, status, created_at, "
        "expires_at, next_attempt_at, attempts, last_attempt_at, last_code, last_error) VALUES "
        "(4, '" UUID(4) "', 'slack', 'firing', 0, 'pending', 1000, 90000, 1500, 1, 1400, 429, "
                        "'HTTP 429')",
        "INSERT INTO deliveries (id, delivery_id, channel, kind, tier, status, created_at, "
        "expires_at, attempts, last_attempt_at, last_code, finished_at) VALUES "
        "(6, '" UUID(6) "', 'pagerduty', 'escalated', 1, 'sent', 1100, 90000, 2, 2500, 202, 2500)",
        "INSERT INTO deliveries (id, delivery_id, channel, kind, tier, status, created_at, "
        "expires_at, finished_at) VALUES "
        "(9, '" UUID(9) "', 'slack', 'resolved', 2, 'cancelled', 3000, 90000, 3000)",
        "INSERT INTO delivery_alerts (delivery, alert_id) VALUES (4, 3), (6, 3), (6, 5), (9, 8)",
    };
    struct al_db_migration v2[2];
    char *dir = tmpdir(state), err[ERRLEN], text[512];
    sqlite3_stmt *st = NULL;
    al_db_t *db;
    sqlite3 *c;
    int rc;

    assert_true(al_migrations_count >= 3);
    for (size_t i = 0; i < 2; i++)
        v2[i] = (struct al_db_migration){al_migrations[i].name, al_migrations[i].data};
    assert_string_equal(v2[0].name, "0001_events.sql");
    assert_string_equal(v2[1].name, "0002_alerts.sql");
    db = open_list_ok(dir, v2, 2);
    c = al_db_handle(db);
    assert_int_equal(al_db_schema_version(db), 2);
    assert_int_equal(
        q_int(c, "SELECT count(*) FROM pragma_table_info('deliveries') WHERE name = 'folded_into'"),
        0);
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        rc = run(c, rows[i]);
        if (rc != SQLITE_OK)
            fail_msg("row %zu: %s (%d)", i, sqlite3_errmsg(c), rc);
    }
    /* Version 2 has no 'acknowledged' kind. */
    rc = run(c, "INSERT INTO deliveries (delivery_id, channel, kind, tier, status, created_at, "
                "expires_at, next_attempt_at) VALUES ('" UUID(1) "', 'pd', 'acknowledged', 0, "
                                                                 "'pending', 1, 2, 1)");
    assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
    al_db_close(db);

    db = open_ok(dir);
    c = al_db_handle(db);
    assert_int_equal(al_db_latest_version(), (int)al_migrations_count);
    assert_int_equal(al_db_schema_version(db), al_db_latest_version());
    assert_int_equal(q_int(c, "PRAGMA user_version"), al_db_latest_version());

    /* Every row, with its id and its values. */
    assert_rows(c, "alerts", "id", "id || ':' || status || ':' || tier",
                "3:firing:0,5:acknowledged:1,8:resolved:2");
    assert_int_equal(q_int(c, "SELECT count FROM alerts WHERE id = 3"), 4);
    assert_int_equal(q_int(c, "SELECT due_at FROM alerts WHERE id = 3"), 5000);
    assert_rows(c, "alert_history", "id", "alert_id || ':' || kind",
                "3:raised,3:escalated,8:resolved");
    assert_rows(c, "deliveries", "id",
                "id || ':' || delivery_id || ':' || channel || ':' || kind || ':' || tier || ':' "
                "|| status",
                "4:" UUID(4) ":slack:firing:0:pending,"
                             "6:" UUID(6) ":pagerduty:escalated:1:sent,"
                                          "9:" UUID(9) ":slack:resolved:2:cancelled");
    q_text(c,
           "SELECT next_attempt_at || '/' || attempts || '/' || last_attempt_at || '/' || "
           "last_code || '/' || last_error || '/' || expires_at || '/' || "
           "(finished_at IS NULL) FROM deliveries WHERE id = 4",
           text, sizeof(text));
    assert_string_equal(text, "1500/1/1400/429/HTTP 429/90000/1");
    assert_int_equal(q_int(c, "SELECT finished_at FROM deliveries WHERE id = 6"), 2500);
    assert_int_equal(q_int(c, "SELECT last_code FROM deliveries WHERE id = 6"), 202);
    assert_int_equal(q_int(c, "SELECT finished_at FROM deliveries WHERE id = 9"), 3000);
    assert_rows(c, "delivery_alerts", "delivery, alert_id", "delivery || '-' || alert_id",
                "4-3,6-3,6-5,9-8");

    /* Sound: integrity and foreign keys (nothing dangles after the rebuild). */
    q_text(c, "PRAGMA integrity_check", text, sizeof(text));
    assert_string_equal(text, "ok");
    assert_int_equal(al_db_integrity_check(db, 1, err, sizeof(err)), 0);
    assert_int_equal(sqlite3_prepare_v2(c, "PRAGMA foreign_key_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    assert_int_equal(q_int(c, "PRAGMA foreign_keys"), 1);

    /* The new columns exist and are NULL on the old rows; the new indexes exist. */
    assert_int_equal(q_int(c, "SELECT count(*) FROM pragma_table_info('deliveries') "
                              "WHERE name IN ('folded_into', 'throttled_at')"),
                     2);
    assert_int_equal(q_int(c, "SELECT count(*) FROM deliveries "
                              "WHERE folded_into IS NULL AND throttled_at IS NULL"),
                     3);
    assert_true(table_exists(c, "deliveries_due"));
    assert_true(table_exists(c, "deliveries_channel_pending"));
    assert_true(table_exists(c, "deliveries_folded_into"));
    assert_false(table_exists(c, "deliveries_new"));

    /* 0003's CHECKs: an 'acknowledged' delivery, and a 'folded' one carried by delivery 4. */
    assert_int_equal(run(c, "INSERT INTO deliveries (delivery_id, channel, kind, tier, status, "
                            "created_at, expires_at, next_attempt_at) VALUES ('" UUID(
                                1) "', "
                                   "'pagerduty', 'acknowledged', 0, 'pending', 4000, 90000, 4000)"),
                     SQLITE_OK);
    assert_true(q_int(c, "SELECT id FROM deliveries WHERE delivery_id = '" UUID(1) "'") > 9);
    assert_int_equal(run(c, "INSERT INTO delivery_alerts (delivery, alert_id) SELECT id, 5 FROM "
                            "deliveries WHERE delivery_id = '" UUID(1) "'"),
                     SQLITE_OK);
    assert_int_equal(run(c,
                         "INSERT INTO deliveries (delivery_id, channel, kind, tier, status, "
                         "created_at, expires_at, finished_at, folded_into, throttled_at) VALUES "
                         "('" UUID(2) "', 'slack', 'firing', 0, 'folded', 4000, 90000, 4100, 4, "
                                      "4000)"),
                     SQLITE_OK);
    assert_int_equal(run(c, "UPDATE deliveries SET folded_into = 6 WHERE id = 9") & 0xff,
                     SQLITE_CONSTRAINT); /* only a folded row has a carrier */
    /* The old links point at the new table: they are enforced and cascade. */
    assert_int_equal(run(c, "INSERT INTO delivery_alerts (delivery, alert_id) VALUES (99, 3)"),
                     SQLITE_CONSTRAINT_FOREIGNKEY);
    assert_int_equal(run(c, "DELETE FROM deliveries WHERE id = 9"), SQLITE_OK);
    assert_int_equal(q_int(c, "SELECT count(*) FROM delivery_alerts WHERE delivery = 9"), 0);
    assert_int_equal(run(c, "DELETE FROM deliveries WHERE id = 4"), SQLITE_OK);
    assert_int_equal(q_int(c, "SELECT count(*) FROM deliveries WHERE delivery_id = '" UUID(
                                  2) "' "
                                     "AND folded_into IS NULL"),
                     1); /* ON DELETE SET NULL */
    q_text(c, "PRAGMA integrity_check", text, sizeof(text));
    assert_string_equal(text, "ok");
    al_db_close(db);
}

static void failing_migration_rolls_back_and_keeps_version(void **state)
{
    static const struct al_db_migration bad[] = {
        {"0001_t.sql", "CREATE TABLE t1 (x INTEGER);"},
        {"0002_bad.sql", "CREATE TABLE t2 (x INTEGER);\nINSERT INTO no_such_table VALUES (1);"},
    };
    struct al_db_options opts = {.migrations = bad, .migrations_count = 2};
    char *dir = tmpdir(state), err[ERRLEN];
    al_db_t *db = open_list_ok(dir, bad, 1);

    assert_int_equal(al_db_schema_version(db), 1);
    al_db_close(db);

    db = (al_db_t *)dir;
    assert_int_equal(al_db_open_with(dir, &opts, &db, err, sizeof(err)), AL_DB_EMIGRATION);
    assert_null(db);
    assert_string_equal(err, "migration 0002_bad.sql failed: no such table: no_such_table "
                             "(sqlite 1); rolled back, schema stays at version 1");

    db = open_list_ok(dir, &t0001, 1);
    assert_int_equal(al_db_schema_version(db), 1);
    assert_true(table_exists(al_db_handle(db), "t1"));
    assert_false(table_exists(al_db_handle(db), "t2"));
    assert_int_equal(al_db_integrity_check(db, 1, err, sizeof(err)), 0);
    al_db_close(db);
}

static void earlier_migrations_stay_committed_when_a_later_one_fails(void **state)
{
    static const struct al_db_migration bad[] = {
        {"0001_t.sql", "CREATE TABLE t1 (x INTEGER);"},
        {"0002_ok.sql", "CREATE TABLE t2 (x INTEGER);"},
        {"0003_bad.sql", "CREATE TABLE t3 (x INTEGER); SELECT no_such_function();"},
    };
    struct al_db_options opts = {.migrations = bad, .migrations_count = 3};
    char *dir = tmpdir(state), err[ERRLEN];
    al_db_t *db = NULL;

    assert_int_equal(al_db_open_with(dir, &opts, &db, err, sizeof(err)), AL_DB_EMIGRATION);
    assert_non_null(strstr(err, "migration 0003_bad.sql failed"));
    assert_non_null(strstr(err, "schema stays at version 2"));
    db = open_list_ok(dir, bad, 2);
    assert_int_equal(al_db_schema_version(db), 2);
    assert_true(table_exists(al_db_handle(db), "t2"));
    assert_false(table_exists(al_db_handle(db), "t3"));
    al_db_close(db);
}

static void migration_leaving_a_foreign_key_violation_is_rolled_back(void **state)
{
    static const struct al_db_migration m[] = {
        {"0001_t.sql", "CREATE TABLE p (id INTEGER PRIMARY KEY);"
                       "CREATE TABLE c (p INTEGER REFERENCES p (id));"},
        {"0002_orphan.sql", "INSERT INTO c VALUES (42);"},
    };
    struct al_db_options opts = {.migrations = m, .migrations_count = 2};
    char *dir = tmpdir(state), err[ERRLEN];
    al_db_t *db = NULL;

    assert_int_equal(al_db_open_with(dir, &opts, &db, err, sizeof(err)), AL_DB_EMIGRATION);
    assert_non_null(strstr(err, "0002_orphan.sql"));
    assert_non_null(strstr(err, "foreign key violation in table c"));
    db = open_list_ok(dir, m, 1);
    assert_int_equal(al_db_schema_version(db), 1);
    assert_int_equal(q_int(al_db_handle(db), "SELECT count(*) FROM c"), 0);
    al_db_close(db);
}

static void migration_may_not_control_transactions_or_the_version(void **state)
{
    static const char *const scripts[] = {
        "CREATE TABLE t2 (x INTEGER); COMMIT; CREATE TABLE t3 (x INTEGER);",
        "ROLLBACK;",
        "BEGIN; CREATE TABLE t2 (x INTEGER); COMMIT;",
        "CREATE TABLE t2 (x INTEGER); PRAGMA user_version = 9;",
        "PRAGMA journal_mode = DELETE;",
        "PRAGMA foreign_keys = ON;",
        "ATTACH ':memory:' AS aux;",
    };
    static const char *const why[] = {
        "transaction control",           "transaction control",
        "transaction control",           "owned by the migration runner",
        "owned by the migration runner", "owned by the migration runner",
        "ATTACH/DETACH is not allowed",
    };
    char *dir = tmpdir(state), err[ERRLEN], mode[16];
    al_db_t *db = open_list_ok(dir, &t0001, 1);
    size_t i;

    al_db_close(db);
    for (i = 0; i < sizeof(scripts) / sizeof(scripts[0]); i++) {
        struct al_db_migration m[2] = {t0001, {"0002_sneaky.sql", scripts[i]}};
        struct al_db_options opts = {.migrations = m, .migrations_count = 2};

        db = NULL;
        assert_int_equal(al_db_open_with(dir, &opts, &db, err, sizeof(err)), AL_DB_EMIGRATION);
        if (strstr(err, why[i]) == NULL || strstr(err, "0002_sneaky.sql") == NULL)
            fail_msg("script %zu: unexpected message: %s", i, err);
    }
    db = open_list_ok(dir, &t0001, 1);
    assert_int_equal(al_db_schema_version(db), 1);
    assert_false(table_exists(al_db_handle(db), "t2"));
    assert_false(table_exists(al_db_handle(db), "t3"));
    q_text(al_db_handle(db), "PRAGMA journal_mode", mode, sizeof(mode));
    assert_string_equal(mode, "wal");
    al_db_close(db);
}

static void invalid_migration_lists_are_refused_before_touching_disk(void **state)
{
    static const struct al_db_migration gap[] = {{"0001_a.sql", "SELECT 1;"},
                                                 {"0003_c.sql", "SELECT 1;"}};
    static const struct al_db_migration dup[] = {{"0001_a.sql", "SELECT 1;"},
                                                 {"0001_b.sql", "SELECT 1;"}};
    static const struct al_db_migration late[] = {{"0002_a.sql", "SELECT 1;"}};
    static const struct al_db_migration zero[] = {{"0000_a.sql", "SELECT 1;"}};
    static const struct al_db_migration unsorted[] = {{"0002_b.sql", "SELECT 1;"},
                                                      {"0001_a.sql", "SELECT 1;"}};
    static const struct al_db_migration badname[] = {{"001_a.sql", "SELECT 1;"}};
    static const struct al_db_migration upper[] = {{"0001_Events.sql", "SELECT 1;"}};
    static const struct al_db_migration nodesc[] = {{"0001_.sql", "SELECT 1;"}};
    static const struct al_db_migration noext[] = {{"0001_a.sq", "SELECT 1;"}};
    static const struct al_db_migration empty[] = {{"0001_a.sql", ""}};
    static const struct al_db_migration nullsql[] = {{"0001_a.sql", NULL}};
    static const struct al_db_migration nullname[] = {{NULL, "SELECT 1;"}};
    static const struct {
        const struct al_db_migration *m;
        size_t n;
        const char *msg;
    } cases[] = {
        {gap, 2, "0003_c.sql found where 0002 was expected"},
        {dup, 2, "0001_b.sql duplicates number 0001 of 0001_a.sql"},
        {late, 1, "0002_a.sql found where 0001 was expected"},
        {zero, 1, "0000_a.sql found where 0001 was expected"},
        {unsorted, 2, "0002_b.sql found where 0001 was expected"},
        {badname, 1, "bad name \"001_a.sql\""},
        {upper, 1, "bad name \"0001_Events.sql\""},
        {nodesc, 1, "bad name \"0001_.sql\""},
        {noext, 1, "bad name \"0001_a.sq\""},
        {empty, 1, "0001_a.sql is empty"},
        {nullsql, 1, "0001_a.sql is empty"},
        {nullname, 1, "bad name \"(null)\""},
    };
    char *tmp = tmpdir(state), *dir = path_join(tmp, "state"), err[ERRLEN];
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct al_db_options opts = {.migrations = cases[i].m, .migrations_count = cases[i].n};
        al_db_t *db = NULL;

        assert_int_equal(al_db_open_with(dir, &opts, &db, err, sizeof(err)), AL_DB_EBADMIGRATIONS);
        assert_null(db);
        if (strstr(err, cases[i].msg) == NULL)
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].msg);
        assert_false(file_exists(dir));
    }
    free(dir);
}

/* ---- disk full ---- */

/* A migration that outgrows PRAGMA max_page_count gets SQLITE_FULL: ENOSPC, named, rolled back. */
static void migration_hitting_the_size_limit_fails_with_enospc_and_rolls_back(void **state)
{
    static const struct al_db_migration m[] = {
        {"0001_t.sql", "CREATE TABLE t1 (x INTEGER);"},
        {"0002_big.sql",
         "PRAGMA max_page_count = 1;\n" /* clamps to the current size */
         "CREATE TABLE big (b BLOB);\n"
         "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100)\n"
         "INSERT INTO big SELECT randomblob(4000) FROM c;"},
    };
    struct al_db_options opts = {.migrations = m, .migrations_count = 2};
    char *dir = tmpdir(state), err[ERRLEN];
    al_db_t *db = NULL;

    assert_int_equal(al_db_open_with(dir, &opts, &db, err, sizeof(err)), AL_DB_ENOSPC);
    assert_null(db);
    assert_non_null(strstr(err, "migration 0002_big.sql failed: database or disk is full"));
    assert_non_null(strstr(err, "schema stays at version 1 (disk full)"));
    db = open_list_ok(dir, m, 1);
    assert_int_equal(al_db_schema_version(db), 1);
    assert_false(table_exists(al_db_handle(db), "big"));
    assert_int_equal(al_db_integrity_check(db, 1, err, sizeof(err)), 0);
    al_db_close(db);
}

static void insert_hitting_the_size_limit_fails_cleanly_and_database_stays_intact(void **state)
{
    char *dir = tmpdir(state), err[ERRLEN];
    al_db_t *db = open_ok(dir);
    sqlite3 *c = al_db_handle(db);
    int i, rc = SQLITE_OK;

    for (i = 0; i < 5; i++)
        assert_int_equal(insert_event(c, i, "before", 100), SQLITE_OK);
    assert_int_equal(run(c, "PRAGMA max_page_count = 1"), SQLITE_OK);

    /* An explicit transaction: the failure leaves it to the caller to roll back. */
    assert_int_equal(run(c, "BEGIN IMMEDIATE"), SQLITE_OK);
    for (i = 0; i < 1000 && rc == SQLITE_OK; i++)
        rc = insert_event(c, i, "burst", 4000);
    assert_int_equal(rc, SQLITE_FULL);
    assert_int_equal(al_db_translate(rc), AL_DB_ENOSPC);
    if (!sqlite3_get_autocommit(c))
        assert_int_equal(run(c, "ROLLBACK"), SQLITE_OK);
    assert_int_equal(q_int(c, "SELECT count(*) FROM events"), 5);

    /* A single autocommit statement rolls back by itself. */
    assert_int_equal(insert_event(c, 9, "single", 40000), SQLITE_FULL);
    assert_true(sqlite3_get_autocommit(c));
    assert_int_equal(q_int(c, "SELECT count(*) FROM events"), 5);
    assert_int_equal(al_db_integrity_check(db, 1, err, sizeof(err)), 0);

    /* Space comes back: writing works again on the same handle. */
    assert_int_equal(run(c, "PRAGMA max_page_count = 1073741823"), SQLITE_OK);
    assert_int_equal(insert_event(c, 10, "after", 40000), SQLITE_OK);
    al_db_close(db);
    db = open_ok(dir);
    assert_int_equal(q_int(al_db_handle(db), "SELECT count(*) FROM events"), 6);
    assert_int_equal(al_db_integrity_check(db, 1, err, sizeof(err)), 0);
    al_db_close(db);
}

static void no_shm_file_is_created_or_mapped(void **state)
{
    char *dir = tmpdir(state), *shm = path_join(dir, AL_DB_FILENAME "-shm"), err[ERRLEN];
    al_db_t *db = open_ok(dir);
    int i, fd;

    for (i = 0; i < 50; i++)
        assert_int_equal(insert_event(al_db_handle(db), i, "x", 1000), SQLITE_OK);
    assert_false(file_exists(shm));
    assert_false(db_file_mapped());
    al_db_close(db);
    assert_false(file_exists(shm));

    /* A stale -shm left by some non-exclusive opener is neither used nor mapped. */
    fd = open(shm, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 32768), 0);
    close(fd);
    db = open_ok(dir);
    assert_int_equal(insert_event(al_db_handle(db), 99, "y", 1000), SQLITE_OK);
    assert_false(db_file_mapped());
    assert_int_equal(al_db_integrity_check(db, 0, err, sizeof(err)), 0);
    al_db_close(db);
    free(shm);
}

/* Fills the file system holding dir until ENOSPC. Returns 0 when it is full. */
static int fill_disk(const char *path)
{
    static char block[65536];
    size_t sizes[] = {sizeof(block), 4096, 512, 1};
    size_t i;
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);

    if (fd < 0)
        return -1;
    for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        while (write(fd, block, sizes[i]) == (ssize_t)sizes[i])
            ;
    i = errno == ENOSPC ? 0 : 1;
    close(fd);
    return (int)i;
}

static int open_child(const char *dir, const struct al_db_migration *m, size_t n, al_db_t **db,
                      char *err)
{
    struct al_db_options opts = {.migrations = m, .migrations_count = n};

    *db = NULL;
    return al_db_open_with(dir, m != NULL ? &opts : NULL, db, err, ERRLEN);
}

/* The scenario on a 1 MiB tmpfs at mnt (runs in the forked child). */
static int full_tmpfs_scenario(const char *mnt)
{
    static const struct al_db_migration m[] = {
        {"0001_t.sql", "CREATE TABLE t1 (x INTEGER);"},
        {"0002_big.sql", "CREATE TABLE big (b BLOB);\n"
                         "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
                         "WHERE i < 50)\nINSERT INTO big SELECT randomblob(4000) FROM c;"},
    };
    char state[512], side[512], fresh[512], fill[512], err[ERRLEN];
    al_db_t *db;
    int i, rc = SQLITE_OK, ret;

    snprintf(state, sizeof(state), "%s/state", mnt);
    snprintf(side, sizeof(side), "%s/side", mnt);
    snprintf(fresh, sizeof(fresh), "%s/fresh", mnt);
    snprintf(fill, sizeof(fill), "%s/fill", mnt);

    /* Room to create both databases. */
    CHILD_CHECK(open_child(state, NULL, 0, &db, err) == 0);
    for (i = 0; i < 20; i++)
        CHILD_CHECK(insert_event(al_db_handle(db), i, "before", 100) == SQLITE_OK);
    al_db_close(db);
    CHILD_CHECK(open_child(side, m, 1, &db, err) == 0);
    al_db_close(db);

    CHILD_CHECK(fill_disk(fill) == 0);

    /* The SIGBUS scenario: reopening a WAL database on a full disk. Reads still work. */
    ret = open_child(state, NULL, 0, &db, err);
    if (ret != 0)
        fprintf(stderr, "child: reopen on full disk: %s: %s\n", al_db_err_name(ret), err);
    CHILD_CHECK(ret == 0);
    CHILD_CHECK(!shm_exists(state) && !db_file_mapped());
    CHILD_CHECK(al_db_schema_version(db) == al_db_latest_version());
    for (i = 0; i < 200 && rc == SQLITE_OK; i++)
        rc = insert_event(al_db_handle(db), 100 + i, "full", 3000);
    CHILD_CHECK(al_db_translate(rc) == AL_DB_ENOSPC);
    CHILD_CHECK(sqlite3_get_autocommit(al_db_handle(db)));
    /* In an explicit transaction the pages stay in the page cache until COMMIT writes them to
     * the WAL: that is where the error shows up. */
    CHILD_CHECK(run(al_db_handle(db), "BEGIN IMMEDIATE") == SQLITE_OK);
    for (i = 0; i < 100; i++)
        CHILD_CHECK(insert_event(al_db_handle(db), 1, "full", 3000) == SQLITE_OK);
    rc = run(al_db_handle(db), "COMMIT");
    CHILD_CHECK(al_db_translate(rc) == AL_DB_ENOSPC);
    if (!sqlite3_get_autocommit(al_db_handle(db)))
        CHILD_CHECK(run(al_db_handle(db), "ROLLBACK") == SQLITE_OK);
    CHILD_CHECK(q_int(al_db_handle(db), "SELECT count(*) FROM events") == 20);
    CHILD_CHECK(al_db_integrity_check(db, 1, err, ERRLEN) == 0);
    al_db_close(db);

    /* A migration on a full disk: ENOSPC, named, rolled back. */
    ret = open_child(side, m, 2, &db, err);
    if (ret != AL_DB_ENOSPC)
        fprintf(stderr, "child: migration on full disk: %s: %s\n", al_db_err_name(ret), err);
    CHILD_CHECK(ret == AL_DB_ENOSPC && strstr(err, "0002_big.sql") != NULL);

    /* A new database on a full disk: a clean error. */
    ret = open_child(fresh, NULL, 0, &db, err);
    if (ret != AL_DB_ENOSPC)
        fprintf(stderr, "child: fresh on full disk: %s: %s\n", al_db_err_name(ret), err);
    CHILD_CHECK(ret == AL_DB_ENOSPC && db == NULL);

    /* Space is back: everything works and nothing was lost. */
    CHILD_CHECK(unlink(fill) == 0);
    CHILD_CHECK(open_child(side, m, 1, &db, err) == 0);
    CHILD_CHECK(al_db_schema_version(db) == 1 && !table_exists(al_db_handle(db), "big"));
    CHILD_CHECK(al_db_integrity_check(db, 1, err, ERRLEN) == 0);
    al_db_close(db);
    CHILD_CHECK(open_child(state, NULL, 0, &db, err) == 0);
    CHILD_CHECK(insert_event(al_db_handle(db), 500, "after", 100) == SQLITE_OK);
    CHILD_CHECK(q_int(al_db_handle(db), "SELECT count(*) FROM events") == 21);
    CHILD_CHECK(al_db_integrity_check(db, 1, err, ERRLEN) == 0);
    al_db_close(db);
    CHILD_CHECK(!shm_exists(state) && !shm_exists(side));
    return 0;
}

static void full_tmpfs_gives_errors_not_signals(void **state)
{
    char *tmp, *mnt;
    pid_t pid;

    if (geteuid() != 0) {
        print_message("skipped: mounting a 1 MiB tmpfs needs root\n");
        skip();
    }
    tmp = tmpdir(state);
    mnt = path_join(tmp, "mnt");
    assert_int_equal(mkdir(mnt, 0700), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int ret;

        /* A private mount namespace: the mount dies with this child whatever happens. */
        if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
            mount("tmpfs", mnt, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700") != 0) {
            fprintf(stderr, "skipped: cannot mount a tmpfs here: %s\n", strerror(errno));
            _exit(CHILD_SKIP);
        }
        ret = full_tmpfs_scenario(mnt);
        if (umount2(mnt, 0) != 0)
            umount2(mnt, MNT_DETACH);
        _exit(ret);
    }
    wait_child_ok(pid);
    rmdir(mnt);
    free(mnt);
}

/* ---- permissions ---- */

static int expect_eacces(const char *dir)
{
    char err[ERRLEN];
    al_db_t *db = NULL;
    int rc = al_db_open(dir, &db, err, sizeof(err));

    if (rc != AL_DB_EACCES) {
        fprintf(stderr, "child: %s: %s: %s\n", dir, al_db_err_name(rc), err);
        return 1;
    }
    return 0;
}

static void unwritable_state_dir_reports_permission_denied(void **state)
{
    char *tmp = tmpdir(state), *priv, *locked, *rodb;
    al_db_t *db;
    pid_t pid;

    if (geteuid() != 0) {
        print_message("skipped: needs root (to own files that another uid cannot write)\n");
        skip();
    }
    priv = path_join(tmp, "private");
    locked = path_join(tmp, "ro");
    rodb = path_join(tmp, "rodb");
    assert_int_equal(chmod(tmp, 0755), 0);
    assert_int_equal(mkdir(priv, 0700), 0);
    assert_int_equal(mkdir(locked, 0755), 0);
    db = open_ok(rodb);
    al_db_close(db);
    assert_int_equal(chmod(rodb, 0755), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char *sub = path_join(priv, "state");

        if (setgid(65534) != 0 || setuid(65534) != 0)
            _exit(CHILD_SKIP);
        _exit(expect_eacces(sub) | expect_eacces(locked) | expect_eacces(rodb));
    }
    wait_child_ok(pid);
    free(priv);
    free(locked);
    free(rodb);
}

/* A test that gets a fresh temporary directory as *state. */
#define IN_TMPDIR(f) cmocka_unit_test_setup_teardown(f, setup_tmpdir, teardown_tmpdir)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(error_codes_have_distinct_names_and_messages),
        cmocka_unit_test(null_arguments_are_rejected),
        IN_TMPDIR(fresh_dir_is_created_in_wal_exclusive_mode_at_latest_version),
        IN_TMPDIR(reopen_is_idempotent_and_keeps_data),
        IN_TMPDIR(events_schema_enforces_shape_and_never_reuses_ids),
        IN_TMPDIR(newer_database_is_refused_and_left_untouched),
        IN_TMPDIR(second_open_in_same_process_is_refused_as_in_use),
        IN_TMPDIR(second_open_from_another_process_is_refused_as_in_use),
        IN_TMPDIR(state_dir_that_is_a_file_is_refused),
        IN_TMPDIR(missing_parent_of_state_dir_is_reported),
        IN_TMPDIR(garbage_file_is_reported_as_corrupt),
        IN_TMPDIR(foreign_sqlite_database_is_refused),
        IN_TMPDIR(integrity_check_reports_a_damaged_page),
        IN_TMPDIR(upgrade_applies_each_newer_migration_in_order),
        IN_TMPDIR(upgrade_from_version_2_keeps_rows_ids_and_links),
        IN_TMPDIR(failing_migration_rolls_back_and_keeps_version),
        IN_TMPDIR(earlier_migrations_stay_committed_when_a_later_one_fails),
        IN_TMPDIR(migration_leaving_a_foreign_key_violation_is_rolled_back),
        IN_TMPDIR(migration_may_not_control_transactions_or_the_version),
        IN_TMPDIR(invalid_migration_lists_are_refused_before_touching_disk),
        IN_TMPDIR(migration_hitting_the_size_limit_fails_with_enospc_and_rolls_back),
        IN_TMPDIR(insert_hitting_the_size_limit_fails_cleanly_and_database_stays_intact),
        IN_TMPDIR(no_shm_file_is_created_or_mapped),
        IN_TMPDIR(full_tmpfs_gives_errors_not_signals),
        IN_TMPDIR(unwritable_state_dir_reports_permission_denied),
    };

    umask(022);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
