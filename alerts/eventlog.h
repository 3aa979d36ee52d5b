/*
 * eventlog.h - the audit trail: events persisted in the `events` table (migration 0001).
 *
 * The control process drains the shared events channel into this table in batches (one
 * transaction per batch), and GET /api/v1/events?since=ID reads it back. Ids are AUTOINCREMENT,
 * so a client's `since` cursor never skips an event, even after retention deletes rows.
 *
 * SQL only through prepared statements, made once at open. Blocking file I/O: call it from the
 * control process only, never from a worker.
 */
#ifndef AL_EVENTLOG_H
#define AL_EVENTLOG_H

#include <stdint.h>

#include "db.h"

typedef struct al_eventlog al_eventlog_t;

/* Prepares the statements. Returns 0 or an AL_DB_E* code. */
int al_eventlog_open(al_db_t *db, al_eventlog_t **out);
void al_eventlog_close(al_eventlog_t *el); /* accepts NULL */

/* A batch: begin, append any number, then commit (or rollback on error). Each returns 0 or an
 * AL_DB_E* code (AL_DB_ENOSPC when the disk is full: the caller keeps the events and retries). */
int al_eventlog_begin(al_eventlog_t *el);
int al_eventlog_append(al_eventlog_t *el, uint64_t ts_ms, const char *kind, int32_t worker,
                       const char *fields_json); /* worker < 0: stored as NULL */
int al_eventlog_commit(al_eventlog_t *el);
void al_eventlog_rollback(al_eventlog_t *el);

/* Calls `row` for each event with id > since_id, oldest first, at most `limit` rows. `worker` is
 * -1 for NULL. A non-zero return from `row` stops the walk and is returned. */
typedef int (*al_eventlog_row_cb)(void *ctx, int64_t id, int64_t ts_ms, const char *kind,
                                  int32_t worker, const char *fields_json);
int al_eventlog_list(al_eventlog_t *el, int64_t since_id, uint32_t limit, al_eventlog_row_cb row,
                     void *ctx);

#endif
