/* db.h - the alerts store: opening state_dir/breakwater.db and bringing its schema up to date.
 *
 * One process (the gateway's control process) owns the database: al_db_open() takes SQLite's
 * EXCLUSIVE locking mode before the first access, so a second opener (another breakwater on the
 * same state_dir, or a second al_db_open in this process) fails with AL_DB_EBUSY instead of
 * sharing the file. Exclusive mode also keeps the WAL index in heap memory: no `-shm` file is
 * created or mmapped, so a full or failing disk yields error codes, never SIGBUS.
 *
 * At open, the migrations embedded in the binary (migrations/NNNN_name.sql) are applied in order,
 * each in its own BEGIN IMMEDIATE transaction together with `PRAGMA user_version = N`. A database
 * whose user_version is newer than the newest embedded migration is refused and left untouched.
 * docs/storage.md describes the rules and the schema.
 *
 * Ownership: al_db_open() hands out a handle that the caller frees with al_db_close(). The handle
 * is not thread-safe: one thread uses it (and the sqlite3 * behind it) at a time. Every call here
 * does blocking file I/O: never call it from an event loop that serves requests.
 *
 * Errors: functions return 0 (or a non-negative value where stated) on success and a negative
 * AL_DB_E* code on failure. Codes for system conditions equal -errno (as in libuv); the others are
 * below -4000. Functions that take `err, errlen` also write a one-line message for the log there
 * (always NUL-terminated when errlen > 0; err may be NULL).
 */
#ifndef AL_DB_H
#define AL_DB_H

#include <errno.h>
#include <stddef.h>

typedef struct sqlite3 sqlite3;

/* XX(name, value, message) */
#define AL_DB_ERRORS(XX)                                                                           \
    XX(EINVAL, -EINVAL, "invalid argument")                                                        \
    XX(ENOMEM, -ENOMEM, "out of memory")                                                           \
    XX(EACCES, -EACCES, "permission denied or read-only database")                                 \
    XX(EBUSY, -EBUSY, "database is in use by another process")                                     \
    XX(ENOSPC, -ENOSPC, "disk full or database size limit reached")                                \
    XX(EIO, -EIO, "I/O error")                                                                     \
    XX(ENOTDIR, -ENOTDIR, "state_dir is not a directory")                                          \
    XX(ESTATEDIR, -4001, "cannot create or use state_dir")                                         \
    XX(ECORRUPT, -4002, "database is corrupt or not a database")                                   \
    XX(ETOONEW, -4003, "database schema is newer than this binary")                                \
    XX(EMIGRATION, -4004, "a migration failed and was rolled back")                                \
    XX(EBADMIGRATIONS, -4005, "the migration list is invalid")                                     \
    XX(ESQLITE, -4006, "unexpected SQLite error")

enum al_db_error {
    AL_DB_OK = 0,
#define AL_DB_ERROR_ENUM(name, value, msg) AL_DB_##name = (value),
    AL_DB_ERRORS(AL_DB_ERROR_ENUM)
#undef AL_DB_ERROR_ENUM
};

/* Default busy timeout (ms) for the connection. At open it bounds how long we wait for a previous
 * owner that is still shutting down before reporting AL_DB_EBUSY. */
#define AL_DB_BUSY_TIMEOUT_MS 5000

/* The database file inside state_dir. */
#define AL_DB_FILENAME "breakwater.db"

typedef struct al_db al_db_t;

/* One migration: name "NNNN_description.sql" (4 digits, then [a-z0-9_]+), sql its text. */
struct al_db_migration {
    const char *name;
    const char *sql;
};

/* Options for al_db_open_with(). Zero-initialise, then set what you need. */
struct al_db_options {
    /* The migration list, sorted by name. NULL: the list embedded in the binary. Tests inject
     * their own here. */
    const struct al_db_migration *migrations;
    size_t migrations_count;
    /* 0: AL_DB_BUSY_TIMEOUT_MS. Otherwise the busy timeout in ms (> 0). */
    int busy_timeout_ms;
};

/* Opens (creating if needed) state_dir/breakwater.db and migrates it to the newest embedded
 * schema. state_dir is created with mode 0750 if missing (its parent must exist).
 * On success *out is the handle and 0 is returned. On failure *out is NULL, nothing stays open,
 * and the result is one of: AL_DB_EINVAL (NULL/empty argument), AL_DB_ENOTDIR, AL_DB_ESTATEDIR,
 * AL_DB_EACCES, AL_DB_EBUSY (another process holds the database), AL_DB_ENOSPC, AL_DB_EIO,
 * AL_DB_ECORRUPT, AL_DB_ETOONEW (database left untouched), AL_DB_EMIGRATION (the failing
 * migration was rolled back; earlier ones stay committed), AL_DB_EBADMIGRATIONS, AL_DB_ENOMEM,
 * AL_DB_ESQLITE. A migration that fails for lack of space or an I/O error returns AL_DB_ENOSPC or
 * AL_DB_EIO; the message names the migration either way. */
int al_db_open(const char *state_dir, al_db_t **out, char *err, size_t errlen);

/* al_db_open() with options (opts may be NULL: same as al_db_open()). */
int al_db_open_with(const char *state_dir, const struct al_db_options *opts, al_db_t **out,
                    char *err, size_t errlen);

/* Closes the database (checkpointing the WAL) and frees the handle. Accepts NULL. Statements that
 * other modules prepared on al_db_handle() must be finalized first. */
void al_db_close(al_db_t *db);

/* The connection, for the other alerts/ modules (prepared statements only). Still owned by db. */
sqlite3 *al_db_handle(al_db_t *db);

/* The current schema version (PRAGMA user_version, >= 0), or a negative AL_DB_E* code. */
int al_db_schema_version(al_db_t *db);

/* The number of the newest migration embedded in this binary (0 if none). */
int al_db_latest_version(void);

/* Runs PRAGMA quick_check (full == 0: O(N), skips index consistency) or integrity_check.
 * Returns 0 when SQLite reports "ok"; AL_DB_ECORRUPT with the first problems in err otherwise;
 * another negative code when the check itself could not run. */
int al_db_integrity_check(al_db_t *db, int full, char *err, size_t errlen);

/* Maps an SQLite result code (primary or extended) to an AL_DB_E* code; 0 for SQLITE_OK,
 * SQLITE_ROW and SQLITE_DONE. For the other alerts/ modules' own statements. */
int al_db_translate(int sqlite_rc);

/* The message for an AL_DB_E* code ("unknown error" for other values). Never NULL. */
const char *al_db_strerror(int code);

/* The name of an AL_DB_E* code, e.g. "AL_DB_EBUSY" ("AL_DB_UNKNOWN" for other values). */
const char *al_db_err_name(int code);

#endif
