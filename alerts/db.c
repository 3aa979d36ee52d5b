/* db.c - opens state_dir/breakwater.db and runs the embedded, forward-only migrations.
 *
 * Why it is built this way:
 * - One process owns the file. `PRAGMA locking_mode=EXCLUSIVE` is set before the first access of
 *   the file, so SQLite keeps the WAL index in heap memory and never creates or mmaps a `-shm`
 *   file. A shared-memory WAL index is a mapped file: PLATFORM.md records a SIGBUS when a WAL
 *   database was reopened on a full disk, and on a full 1 MiB tmpfs a non-exclusive reopen could
 *   not even read (SQLITE_IOERR_SHMSIZE). In exclusive mode reads keep working there and writes
 *   fail with SQLITE_FULL (tests/unit/test_alerts_db.c checks this). `mmap_size=0` keeps the
 *   database file itself unmapped too: I/O errors must arrive as return codes, never as signals.
 *   A stale `-shm` left by some other, non-exclusive opener is ignored (never mapped).
 *   The exclusive file lock also makes a second opener (same process or another) fail with
 *   SQLITE_BUSY, reported as "database is in use by another process".
 * - The schema version is `PRAGMA user_version`. Migration N is applied in its own
 *   BEGIN IMMEDIATE transaction together with `PRAGMA user_version = N` (both live in the database
 *   header and are transactional), so a crash or an error leaves either all of N or none of it.
 *   Foreign key enforcement is off while migrations run (so a migration may rebuild a table, as the
 *   SQLite ALTER TABLE procedure requires) and `PRAGMA foreign_key_check` must come back empty
 *   before each commit.
 * - An authorizer is installed while a migration script runs: it refuses transaction control,
 *   ATTACH/DETACH and the PRAGMAs the runner owns (user_version, journal_mode, ...), so a script
 *   cannot commit half of itself or lie about its version.
 * - The file is only read before the version check: a database newer than the binary is refused
 *   and left exactly as it was (not even switched to WAL).
 *
 * Invariants: after a successful al_db_open() the connection is in WAL + exclusive mode with
 * synchronous=FULL, foreign_keys=ON, trusted_schema=OFF, defensive mode and no double-quoted
 * string literals, and user_version equals the number of the newest migration. After a failed
 * al_db_open() nothing is open and *out is NULL.
 *
 * Callers: the gateway's control process, once at start-up, off any request-serving loop; the
 * other alerts/ modules through al_db_handle().
 */
#include "db.h"

#include <assert.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <sqlite3.h>

#include "embedded.h"

extern const bw_embedded_file_t al_migrations[];
extern const size_t al_migrations_count;

/* 'BWK1': marks the file as a Breakwater database (PRAGMA application_id, header offset 68). */
#define APPLICATION_ID 0x42574b31
/* Upper bound (64 MiB) for the WAL file left behind after a checkpoint. */
#define JOURNAL_SIZE_LIMIT 67108864
/* Problems reported by al_db_integrity_check(). */
#define INTEGRITY_MAX_ROWS 10
#define STR_(x) #x
#define STR(x) STR_(x)
/* NNNN */
#define MAX_MIGRATIONS 9999

struct al_db {
    sqlite3 *conn;
};

/* State of one al_db_open_with() call, so that error paths can name the file. */
struct open_ctx {
    const char *state_dir;
    char *path;
    sqlite3 *conn;
    const struct al_db_migration *migs;
    size_t nmigs;
    char *err;
    size_t errlen;
};

/* What the authorizer refused while a migration ran (NULL: nothing). */
struct auth_ctx {
    const char *denied;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *al_db_strerror(int code)
{
    switch (code) {
    case AL_DB_OK:
        return "success";
#define AL_DB_STRERROR_CASE(name, value, msg)                                                      \
    case AL_DB_##name:                                                                             \
        return msg;
        AL_DB_ERRORS(AL_DB_STRERROR_CASE)
#undef AL_DB_STRERROR_CASE
    default:
        return "unknown error";
    }
}

const char *al_db_err_name(int code)
{
    switch (code) {
    case AL_DB_OK:
        return "AL_DB_OK";
#define AL_DB_NAME_CASE(name, value, msg)                                                          \
    case AL_DB_##name:                                                                             \
        return "AL_DB_" #name;
        AL_DB_ERRORS(AL_DB_NAME_CASE)
#undef AL_DB_NAME_CASE
    default:
        return "AL_DB_UNKNOWN";
    }
}

int al_db_translate(int sqlite_rc)
{
    switch (sqlite_rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return 0;
    case SQLITE_FULL:
        return AL_DB_ENOSPC;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return AL_DB_EBUSY;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return AL_DB_ECORRUPT;
    case SQLITE_IOERR:
        return sqlite_rc == SQLITE_IOERR_NOMEM ? AL_DB_ENOMEM : AL_DB_EIO;
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
        return AL_DB_EACCES;
    case SQLITE_NOMEM:
        return AL_DB_ENOMEM;
    default:
        return AL_DB_ESQLITE;
    }
}

/* Writes a message for a failed SQLite call and returns the translated code. `what` says what
 * was being done. Busy and disk-full get the wording an operator acts on. */
static int sqlite_fail(struct open_ctx *o, int rc, const char *what)
{
    const char *msg = o->conn != NULL ? sqlite3_errmsg(o->conn) : sqlite3_errstr(rc);
    int code = al_db_translate(rc);

    switch (code) {
    case AL_DB_EBUSY:
        set_err(o->err, o->errlen, "database is in use by another process (state_dir %s)",
                o->state_dir);
        break;
    case AL_DB_ENOSPC:
        set_err(o->err, o->errlen, "%s: disk full (state_dir %s): %s (sqlite %d)", what,
                o->state_dir, msg, rc);
        break;
    case AL_DB_EACCES:
        set_err(o->err, o->errlen,
                "%s: %s (sqlite %d): check that %s and state_dir are writable by this user", what,
                msg, rc, o->path);
        break;
    case AL_DB_ECORRUPT:
        set_err(o->err, o->errlen, "%s: %s is corrupt or not a database: %s (sqlite %d)", what,
                o->path, msg, rc);
        break;
    default:
        set_err(o->err, o->errlen, "%s: %s: %s (sqlite %d)", what, o->path, msg, rc);
        break;
    }
    return code;
}

/* ---- migration list ---- */

/* "NNNN_description.sql", description [a-z0-9_]+. Returns NNNN, or -1. */
static int migration_number(const char *name)
{
    size_t len = strlen(name), i;
    int n = 0;

    if (len < 4 + 1 + 1 + 4 || name[4] != '_' || strcmp(name + len - 4, ".sql") != 0)
        return -1;
    for (i = 0; i < 4; i++) {
        if (!isdigit((unsigned char)name[i]))
            return -1;
        n = n * 10 + (name[i] - '0');
    }
    for (i = 5; i < len - 4; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return -1;
    }
    return n;
}

/* Checks that the list is 0001..count in order, well named and non-empty. */
static int validate_migrations(const struct al_db_migration *migs, size_t n, char *err,
                               size_t errlen)
{
    size_t i;

    if (n > MAX_MIGRATIONS) {
        set_err(err, errlen, "migration list: %zu migrations, at most %d", n, MAX_MIGRATIONS);
        return AL_DB_EBADMIGRATIONS;
    }
    for (i = 0; i < n; i++) {
        const char *name = migs[i].name;
        int num = name != NULL ? migration_number(name) : -1;

        if (num < 0) {
            set_err(err, errlen,
                    "migration list: bad name \"%s\" (want NNNN_description.sql, "
                    "description in [a-z0-9_])",
                    name != NULL ? name : "(null)");
            return AL_DB_EBADMIGRATIONS;
        }
        if (i > 0 && (size_t)num == i) {
            set_err(err, errlen, "migration list: %s duplicates number %04d of %s", name, num,
                    migs[i - 1].name);
            return AL_DB_EBADMIGRATIONS;
        }
        if ((size_t)num != i + 1) {
            set_err(err, errlen,
                    "migration list: %s found where %04zu was expected (numbering must start at "
                    "0001 and have no gaps)",
                    name, i + 1);
            return AL_DB_EBADMIGRATIONS;
        }
        if (migs[i].sql == NULL || migs[i].sql[0] == '\0') {
            set_err(err, errlen, "migration list: %s is empty", name);
            return AL_DB_EBADMIGRATIONS;
        }
    }
    return 0;
}

/* Builds the list from the files embedded by cmake/embed.cmake. *out is NULL when there are none;
 * the caller frees it. */
static int embedded_migrations(struct al_db_migration **out, char *err, size_t errlen)
{
    struct al_db_migration *migs;
    size_t i;

    *out = NULL;
    if (al_migrations_count == 0)
        return 0;
    migs = calloc(al_migrations_count, sizeof(*migs));
    if (migs == NULL) {
        set_err(err, errlen, "out of memory");
        return AL_DB_ENOMEM;
    }
    for (i = 0; i < al_migrations_count; i++) {
        /* sqlite3_exec() stops at a NUL: a NUL inside a file would silently cut it short. */
        if (strlen(al_migrations[i].data) != al_migrations[i].len) {
            set_err(err, errlen, "migration list: %s contains a NUL byte", al_migrations[i].name);
            free(migs);
            return AL_DB_EBADMIGRATIONS;
        }
        migs[i].name = al_migrations[i].name;
        migs[i].sql = al_migrations[i].data;
    }
    *out = migs;
    return 0;
}

int al_db_latest_version(void)
{
    return (int)al_migrations_count;
}

/* ---- connection set-up ---- */

/* Creates state_dir (mode 0750) unless it exists; it must be a directory. */
static int ensure_state_dir(struct open_ctx *o)
{
    struct stat st;
    int e, code;

    if (mkdir(o->state_dir, 0750) == 0)
        return 0;
    e = errno;
    if (e == EEXIST) {
        if (stat(o->state_dir, &st) != 0) {
            e = errno;
        } else if (!S_ISDIR(st.st_mode)) {
            set_err(o->err, o->errlen, "state_dir %s exists and is not a directory", o->state_dir);
            return AL_DB_ENOTDIR;
        } else {
            return 0;
        }
    }
    switch (e) {
    case EACCES:
    case EPERM:
    case EROFS:
        code = AL_DB_EACCES;
        break;
    case ENOSPC:
    case EDQUOT:
        code = AL_DB_ENOSPC;
        break;
    case ENOTDIR:
        code = AL_DB_ENOTDIR;
        break;
    case EIO:
        code = AL_DB_EIO;
        break;
    default:
        code = AL_DB_ESTATEDIR;
        break;
    }
    set_err(o->err, o->errlen, "cannot create state_dir %s: %s", o->state_dir, strerror(e));
    return code;
}

/* Runs a PRAGMA that returns one row and checks its first column against `want` (ignoring case).
 * want == NULL: any result (or none) is fine. */
static int pragma_expect(struct open_ctx *o, const char *sql, const char *want)
{
    sqlite3_stmt *st = NULL;
    const char *got;
    int rc, ret = 0;

    rc = sqlite3_prepare_v2(o->conn, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        ret = sqlite_fail(o, rc, sql);
        goto out;
    }
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        ret = sqlite_fail(o, rc, sql);
        goto out;
    }
    if (want == NULL)
        goto out;
    got = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
    if (got == NULL || strcasecmp(got, want) != 0) {
        set_err(o->err, o->errlen, "%s: %s answered \"%s\", expected \"%s\"", o->path, sql,
                got != NULL ? got : "(nothing)", want);
        ret = AL_DB_ESQLITE;
    }
out:
    sqlite3_finalize(st);
    return ret;
}

/* Reads an integer PRAGMA (the first access of the file when called first). */
static int pragma_int(struct open_ctx *o, const char *sql, int *value)
{
    sqlite3_stmt *st = NULL;
    int rc, ret = 0;

    rc = sqlite3_prepare_v2(o->conn, sql, -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        ret = sqlite_fail(o, rc == SQLITE_DONE ? SQLITE_ERROR : rc, sql);
        goto out;
    }
    *value = sqlite3_column_int(st, 0);
out:
    sqlite3_finalize(st);
    return ret;
}

/* Runs fixed SQL without results (BEGIN, COMMIT, PRAGMA x = constant). */
static int exec_fixed(struct open_ctx *o, const char *sql)
{
    int rc = sqlite3_exec(o->conn, sql, NULL, NULL, NULL);

    return rc == SQLITE_OK ? 0 : sqlite_fail(o, rc, sql);
}

/* Opens the connection and sets everything that does not touch the file. */
static int open_connection(struct open_ctx *o, int busy_timeout_ms)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    int rc, ret;

#ifdef SQLITE_OPEN_EXRESCODE
    flags |= SQLITE_OPEN_EXRESCODE;
#endif
    rc = sqlite3_open_v2(o->path, &o->conn, flags, NULL);
    if (rc != SQLITE_OK)
        return sqlite_fail(o, rc, "opening the database");
    /* SQLite quietly falls back to read-only when the file is not writable. */
    if (sqlite3_db_readonly(o->conn, "main") == 1) {
        set_err(o->err, o->errlen,
                "%s is read-only: check that it and state_dir are writable by this user", o->path);
        return AL_DB_EACCES;
    }
    sqlite3_extended_result_codes(o->conn, 1);
    /* No SQL may deliberately corrupt the file; "x" is an identifier, never a string. */
    sqlite3_db_config(o->conn, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    sqlite3_db_config(o->conn, SQLITE_DBCONFIG_DQS_DML, 0, (int *)NULL);
    sqlite3_db_config(o->conn, SQLITE_DBCONFIG_DQS_DDL, 0, (int *)NULL);
    sqlite3_busy_timeout(o->conn, busy_timeout_ms);

    /* Must precede the first access of the file: see the top of this file. */
    ret = pragma_expect(o, "PRAGMA locking_mode=EXCLUSIVE", "exclusive");
    if (ret == 0)
        ret = pragma_expect(o, "PRAGMA mmap_size=0", NULL);
    if (ret == 0)
        ret = exec_fixed(o, "PRAGMA trusted_schema=OFF");
    if (ret == 0)
        ret = exec_fixed(o, "PRAGMA cell_size_check=ON");
    return ret;
}

/* Reads the version and refuses a database this binary cannot run on. Only reads the file. */
static int check_version(struct open_ctx *o, int *version)
{
    int app_id = 0, ret;

    ret = pragma_int(o, "PRAGMA user_version", version);
    if (ret == 0)
        ret = pragma_int(o, "PRAGMA application_id", &app_id);
    if (ret != 0)
        return ret;
    if (app_id != 0 && app_id != APPLICATION_ID) {
        set_err(o->err, o->errlen,
                "%s belongs to another application (application_id 0x%08x): use another "
                "state_dir",
                o->path, (unsigned)app_id);
        return AL_DB_ECORRUPT;
    }
    if (*version < 0) {
        set_err(o->err, o->errlen, "%s has user_version %d, not a breakwater schema version",
                o->path, *version);
        return AL_DB_ECORRUPT;
    }
    if ((size_t)*version > o->nmigs) {
        set_err(o->err, o->errlen,
                "database schema version %d is newer than this binary (max %zu): upgrade "
                "breakwater or use another state_dir",
                *version, o->nmigs);
        return AL_DB_ETOONEW;
    }
    return 0;
}

/* WAL and durability settings; the first writes to the file. */
static int set_journal(struct open_ctx *o)
{
    int ret = pragma_expect(o, "PRAGMA journal_mode=WAL", "wal");

    if (ret == 0)
        ret = exec_fixed(o, "PRAGMA synchronous=FULL");
    if (ret == 0)
        ret = pragma_expect(o, "PRAGMA journal_size_limit=" STR(JOURNAL_SIZE_LIMIT), NULL);
    return ret;
}

/* ---- migrations ---- */

/* PRAGMAs that the runner owns or that would change the connection under it. */
static const char *const denied_pragmas[] = {
    "user_version",   "application_id", "schema_version", "journal_mode",
    "locking_mode",   "synchronous",    "foreign_keys",   "writable_schema",
    "trusted_schema", "query_only",     "mmap_size",
};

static int migration_authorizer(void *arg, int action, const char *a1, const char *a2,
                                const char *db, const char *trigger)
{
    struct auth_ctx *ac = arg;
    size_t i;

    (void)a2;
    (void)db;
    (void)trigger;
    switch (action) {
    case SQLITE_TRANSACTION:
        ac->denied = "transaction control (BEGIN/COMMIT/ROLLBACK) is not allowed: the runner "
                     "wraps each migration in a transaction";
        return SQLITE_DENY;
    case SQLITE_ATTACH:
    case SQLITE_DETACH:
        ac->denied = "ATTACH/DETACH is not allowed in a migration";
        return SQLITE_DENY;
    case SQLITE_PRAGMA:
        for (i = 0; i < sizeof(denied_pragmas) / sizeof(denied_pragmas[0]); i++) {
            if (a1 != NULL && strcasecmp(a1, denied_pragmas[i]) == 0) {
                ac->denied = "this PRAGMA is owned by the migration runner";
                return SQLITE_DENY;
            }
        }
        return SQLITE_OK;
    default:
        return SQLITE_OK;
    }
}

/* Runs the script of migration m under the authorizer. On failure copies the reason to
 * why (sqlite's message or the authorizer's) and returns the SQLite code. */
static int run_script(struct open_ctx *o, const struct al_db_migration *m, char *why, size_t whylen)
{
    struct auth_ctx ac = {NULL};
    char *msg = NULL;
    int rc;

    sqlite3_set_authorizer(o->conn, migration_authorizer, &ac);
    rc = sqlite3_exec(o->conn, m->sql, NULL, NULL, &msg);
    sqlite3_set_authorizer(o->conn, NULL, NULL);
    if (rc != SQLITE_OK)
        set_err(why, whylen, "%s", ac.denied != NULL ? ac.denied : msg != NULL ? msg : "?");
    sqlite3_free(msg);
    return rc;
}

/* SQLITE_OK when no foreign key is violated; otherwise a description in why. */
static int foreign_key_check(struct open_ctx *o, char *why, size_t whylen)
{
    sqlite3_stmt *st = NULL;
    int rc;

    rc = sqlite3_prepare_v2(o->conn, "PRAGMA foreign_key_check", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        set_err(why, whylen, "leaves a foreign key violation in table %s (rowid %lld)",
                (const char *)sqlite3_column_text(st, 0), sqlite3_column_int64(st, 1));
        rc = SQLITE_CONSTRAINT_FOREIGNKEY;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    } else {
        set_err(why, whylen, "%s", sqlite3_errmsg(o->conn));
    }
    sqlite3_finalize(st);
    return rc;
}

/* Applies migration number `version` (1-based) atomically with its user_version. */
static int apply_migration(struct open_ctx *o, int version)
{
    const struct al_db_migration *m = &o->migs[version - 1];
    char why[512] = "", sql[96];
    int rc, code;

    rc = sqlite3_exec(o->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        set_err(why, sizeof(why), "%s", sqlite3_errmsg(o->conn));
        goto fail;
    }
    rc = run_script(o, m, why, sizeof(why));
    if (rc == SQLITE_OK && sqlite3_get_autocommit(o->conn)) {
        /* Not reachable through the authorizer; kept so that a future escape cannot commit a
         * migration without its version. */
        set_err(why, sizeof(why), "the script ended the runner's transaction");
        rc = SQLITE_MISUSE;
    }
    if (rc == SQLITE_OK)
        rc = foreign_key_check(o, why, sizeof(why));
    if (rc == SQLITE_OK) {
        snprintf(sql, sizeof(sql), "PRAGMA user_version=%d; PRAGMA application_id=%d", version,
                 APPLICATION_ID);
        rc = sqlite3_exec(o->conn, sql, NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_exec(o->conn, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            set_err(why, sizeof(why), "%s", sqlite3_errmsg(o->conn));
    }
    if (rc == SQLITE_OK)
        return 0;
fail:
    /* SQLite may already have rolled back (e.g. after SQLITE_FULL); ROLLBACK is then a no-op. */
    if (!sqlite3_get_autocommit(o->conn))
        sqlite3_exec(o->conn, "ROLLBACK", NULL, NULL, NULL);
    code = al_db_translate(rc);
    if (code == AL_DB_EBUSY) {
        set_err(o->err, o->errlen, "database is in use by another process (state_dir %s)",
                o->state_dir);
        return code;
    }
    set_err(o->err, o->errlen,
            "migration %s failed: %s (sqlite %d); rolled back, schema stays at version %d%s",
            m->name, why, rc, version - 1, code == AL_DB_ENOSPC ? " (disk full)" : "");
    /* Disk, memory and corruption problems keep their own code; a bad script is EMIGRATION. */
    switch (code) {
    case AL_DB_ENOSPC:
    case AL_DB_EIO:
    case AL_DB_ENOMEM:
    case AL_DB_ECORRUPT:
    case AL_DB_EACCES:
        return code;
    default:
        return AL_DB_EMIGRATION;
    }
}

static int migrate(struct open_ctx *o, int from)
{
    int v, ret = 0;

    if ((size_t)from == o->nmigs)
        return exec_fixed(o, "PRAGMA foreign_keys=ON");
    /* A no-op inside a transaction, hence here: off for the whole run, checked per migration. */
    ret = exec_fixed(o, "PRAGMA foreign_keys=OFF");
    for (v = from + 1; ret == 0 && (size_t)v <= o->nmigs; v++)
        ret = apply_migration(o, v);
    if (ret == 0)
        ret = exec_fixed(o, "PRAGMA foreign_keys=ON");
    return ret;
}

/* ---- public ---- */

int al_db_open(const char *state_dir, al_db_t **out, char *err, size_t errlen)
{
    return al_db_open_with(state_dir, NULL, out, err, errlen);
}

int al_db_open_with(const char *state_dir, const struct al_db_options *opts, al_db_t **out,
                    char *err, size_t errlen)
{
    struct open_ctx o = {.state_dir = state_dir, .err = err, .errlen = errlen};
    struct al_db_migration *embedded = NULL;
    al_db_t *db = NULL;
    int busy_ms = AL_DB_BUSY_TIMEOUT_MS, version = 0, ret;

    set_err(err, errlen, "%s", "");
    if (out != NULL)
        *out = NULL;
    if (out == NULL || state_dir == NULL || state_dir[0] == '\0' ||
        (opts != NULL && opts->busy_timeout_ms < 0)) {
        set_err(err, errlen, "al_db_open: invalid argument");
        return AL_DB_EINVAL;
    }
    if (opts != NULL && opts->busy_timeout_ms > 0)
        busy_ms = opts->busy_timeout_ms;
    if (opts != NULL && opts->migrations != NULL) {
        o.migs = opts->migrations;
        o.nmigs = opts->migrations_count;
    } else {
        ret = embedded_migrations(&embedded, err, errlen);
        if (ret != 0)
            goto out;
        o.migs = embedded;
        o.nmigs = al_migrations_count;
    }
    ret = validate_migrations(o.migs, o.nmigs, err, errlen);
    if (ret != 0)
        goto out;
    ret = ensure_state_dir(&o);
    if (ret != 0)
        goto out;
    o.path = sqlite3_mprintf("%s/%s", state_dir, AL_DB_FILENAME);
    db = calloc(1, sizeof(*db));
    if (o.path == NULL || db == NULL) {
        set_err(err, errlen, "out of memory");
        ret = AL_DB_ENOMEM;
        goto out;
    }
    ret = open_connection(&o, busy_ms);
    if (ret == 0)
        ret = check_version(&o, &version);
    if (ret == 0)
        ret = set_journal(&o);
    if (ret == 0)
        ret = migrate(&o, version);
    if (ret != 0)
        goto out;
    db->conn = o.conn;
    o.conn = NULL;
    *out = db;
    db = NULL;
out:
    if (o.conn != NULL)
        sqlite3_close_v2(o.conn);
    free(db);
    sqlite3_free(o.path);
    free(embedded);
    return ret;
}

void al_db_close(al_db_t *db)
{
    int rc;

    if (db == NULL)
        return;
    rc = sqlite3_close(db->conn);
    /* SQLITE_BUSY here means a caller leaked a statement: a programmer error. Release what we
     * can anyway; the connection becomes a zombie until the statement is finalized. */
    assert(rc == SQLITE_OK);
    if (rc != SQLITE_OK)
        sqlite3_close_v2(db->conn);
    free(db);
}

sqlite3 *al_db_handle(al_db_t *db)
{
    assert(db != NULL);
    return db->conn;
}

int al_db_schema_version(al_db_t *db)
{
    sqlite3_stmt *st = NULL;
    int rc, ret;

    if (db == NULL)
        return AL_DB_EINVAL;
    rc = sqlite3_prepare_v2(db->conn, "PRAGMA user_version", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        ret = sqlite3_column_int(st, 0);
    else
        ret = rc == SQLITE_DONE ? AL_DB_ESQLITE : al_db_translate(rc);
    sqlite3_finalize(st);
    return ret;
}

int al_db_integrity_check(al_db_t *db, int full, char *err, size_t errlen)
{
    const char *sql = full ? "PRAGMA integrity_check(" STR(INTEGRITY_MAX_ROWS) ")"
                           : "PRAGMA quick_check(" STR(INTEGRITY_MAX_ROWS) ")";
    sqlite3_stmt *st = NULL;
    size_t used = 0;
    int rc, rows = 0, ret = 0;

    set_err(err, errlen, "%s", "");
    if (db == NULL)
        return AL_DB_EINVAL;
    rc = sqlite3_prepare_v2(db->conn, sql, -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *line = (const char *)sqlite3_column_text(st, 0);

        rc = SQLITE_OK;
        if (line == NULL)
            line = "?";
        if (rows++ == 0 && strcmp(line, "ok") == 0)
            continue;
        ret = AL_DB_ECORRUPT;
        if (err != NULL && used + 1 < errlen) {
            int n = snprintf(err + used, errlen - used, "%s%s", used > 0 ? "; " : "", line);
            used += n > 0 ? (size_t)n : 0;
            if (used >= errlen)
                used = errlen - 1;
        }
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        set_err(err, errlen, "%s: %s (sqlite %d)", sql, sqlite3_errmsg(db->conn), rc);
        ret = al_db_translate(rc);
    } else if (rows == 0) {
        set_err(err, errlen, "%s returned nothing", sql);
        ret = AL_DB_ESQLITE;
    }
    sqlite3_finalize(st);
    return ret;
}
