/*
 * alerts_int.h - internals shared by the files of the alert engine (engine.c, store.c, rules.c,
 * external.c, queue.c, outbox.c, silence.c, lineage.c). Not for use outside alerts/.
 *
 * Layout: store.c owns the connection-level helpers (every SQL statement, prepared once in
 * al_engine_new() and kept; transactions; reading and writing an alert row). engine.c owns the
 * alert lifecycle (raise, dedup, clear, ack, resolve) and its inputs (events, external alerts, the
 * memory queue); escalation.c the due-scan (escalate, repeat, hold-down, quiet resolve, retention);
 * notify.c the notification decisions (group_wait, silences, inhibition, outbox rows); outbox.c
 * the delivery rows; silence.c matchers and silences; lineage.c history rows and the JSON views;
 * rules.c the event -> alert mapping; external.c POST bodies; queue.c the memory queue.
 *
 * Conventions: a function named *_locked runs inside a transaction the caller opened with
 * al_txn_begin() and does not commit; times are unix ms with AL_NEVER (UINT64_MAX) for "not
 * set" (stored as NULL); alert ids are > 0 and 0 means "none" (stored as NULL).
 */
#ifndef AL_ALERTS_INT_H
#define AL_ALERTS_INT_H

#include <jansson.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "alerts.h"

#define AL_NEVER UINT64_MAX
#define AL_NOTIFY_NONE (-1)
#define AL_PRUNE_BATCH 500

/* ---- statements ---- */

/* The alert columns, in the order al_alert_read() expects. */
#define AL_ALERT_COLS                                                                              \
    "id, dedup_key, event, source, tier, first_tier, status, labels, summary, started_at, "        \
    "updated_at, last_seen_at, count, escalation_level, acked_at, acked_by, resolved_at, "         \
    "resolved_by, next_escalation_at, next_repeat_at, notify_kind, notify_at, recheck_at, "        \
    "silenced_by, inhibited_by, flapping, flap_count, clear_since, hold_until, auto_resolve_at, "  \
    "due_at"

#define AL_DELIVERY_COLS                                                                           \
    "id, delivery_id, channel, kind, tier, status, created_at, expires_at, attempts, "             \
    "lease_until, "                                                                                \
    "throttled_at"

/* Delivery d's alerts that another delivery to the same channel, written earlier, is still
 * sending: a later notification for an alert waits for the earlier one (per alert+channel order).
 */
#define AL_BLOCKED_SQL                                                                             \
    "SELECT EXISTS (SELECT 1 FROM delivery_alerts m1 JOIN delivery_alerts m2 "                     \
    "ON m2.alert_id = m1.alert_id AND m2.delivery < m1.delivery JOIN deliveries d2 "               \
    "ON d2.id = m2.delivery WHERE m1.delivery = ?1 AND d2.channel = ?2 AND d2.status = 'sending')"

/* XX(NAME, sql) */
#define AL_STATEMENTS(XX)                                                                          \
    XX(BEGIN, "BEGIN IMMEDIATE")                                                                   \
    XX(COMMIT, "COMMIT")                                                                           \
    XX(ROLLBACK, "ROLLBACK")                                                                       \
    XX(ALERT_BY_ID, "SELECT " AL_ALERT_COLS " FROM alerts WHERE id = ?1")                          \
    XX(ALERT_ACTIVE,                                                                               \
       "SELECT " AL_ALERT_COLS " FROM alerts WHERE dedup_key = ?1 AND status <> 'resolved'")       \
    XX(ALERT_INSERT,                                                                               \
       "INSERT INTO alerts (dedup_key, event, source, tier, first_tier, status, labels, summary, " \
       "started_at, updated_at, last_seen_at, count, flapping) "                                   \
       "VALUES (?1, ?2, ?3, ?4, ?4, 'firing', ?5, ?6, ?7, ?7, ?7, 1, ?8)")                         \
    XX(ALERT_UPDATE,                                                                               \
       "UPDATE alerts SET tier = ?2, status = ?3, summary = ?4, updated_at = ?5, "                 \
       "last_seen_at = ?6, count = ?7, escalation_level = ?8, acked_at = ?9, acked_by = ?10, "     \
       "resolved_at = ?11, resolved_by = ?12, next_escalation_at = ?13, next_repeat_at = ?14, "    \
       "notify_kind = ?15, notify_at = ?16, recheck_at = ?17, silenced_by = ?18, "                 \
       "inhibited_by = ?19, flapping = ?20, flap_count = ?21, clear_since = ?22, "                 \
       "hold_until = ?23, auto_resolve_at = ?24, due_at = ?25 WHERE id = ?1")                      \
    XX(ALERT_DUE,                                                                                  \
       "SELECT " AL_ALERT_COLS " FROM alerts WHERE due_at <= ?1 ORDER BY due_at, id LIMIT ?2")     \
    XX(ALERT_NEXT_DUE, "SELECT min(due_at) FROM alerts WHERE due_at IS NOT NULL")                  \
    XX(ALERT_RECENT_RESOLVES,                                                                      \
       "SELECT count(*) FROM alerts WHERE dedup_key = ?1 AND status = 'resolved' "                 \
       "AND resolved_at >= ?2")                                                                    \
    XX(ALERT_GROUP_OPEN, "SELECT min(notify_at) FROM alerts WHERE tier = ?1 AND notify_at > ?2")   \
    XX(ALERT_WAKE_SILENCED, "UPDATE alerts SET recheck_at = ?2, due_at = ?2 "                      \
                            "WHERE silenced_by = ?1 AND notify_kind IS NOT NULL")                  \
    XX(ALERT_WAKE_INHIBITED, "UPDATE alerts SET recheck_at = ?2, due_at = ?2 "                     \
                             "WHERE inhibited_by = ?1 AND notify_kind IS NOT NULL")                \
    XX(ALERT_LIST_ALL, "SELECT " AL_ALERT_COLS " FROM alerts ORDER BY id DESC LIMIT ?1")           \
    XX(ALERT_ACTIVE_COUNTS, "SELECT status, tier, count(*) FROM alerts "                           \
                            "WHERE status IN ('firing', 'acknowledged') GROUP BY status, tier")    \
    XX(ALERT_LIST_STATUS,                                                                          \
       "SELECT " AL_ALERT_COLS " FROM alerts WHERE status = ?1 ORDER BY id DESC LIMIT ?2")         \
    XX(ALERT_PRUNE,                                                                                \
       "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE status = 'resolved' "          \
       "AND resolved_at < ?1 LIMIT ?2)")                                                           \
    XX(HIST_INSERT,                                                                                \
       "INSERT INTO alert_history (alert_id, ts_ms, kind, detail) VALUES (?1, ?2, ?3, ?4)")        \
    XX(HIST_LIST, "SELECT id, ts_ms, kind, detail FROM alert_history WHERE alert_id = ?1 "         \
                  "ORDER BY id LIMIT ?2")                                                          \
    XX(DLV_INSERT,                                                                                 \
       "INSERT INTO deliveries (delivery_id, channel, kind, tier, status, created_at, "            \
       "expires_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?5)")              \
    XX(DLV_MEMBER_INSERT, "INSERT INTO delivery_alerts (delivery, alert_id) VALUES (?1, ?2)")      \
    XX(DLV_NOTIFIED_CHANNELS,                                                                      \
       "SELECT DISTINCT d.channel FROM delivery_alerts m JOIN deliveries d ON d.id = m.delivery "  \
       "WHERE m.alert_id = ?1 AND d.kind <> 'resolved' "                                           \
       "AND (d.status IN ('sent', 'sending', 'ambiguous') OR d.last_error IS NOT NULL "            \
       "OR d.last_code IS NOT NULL) "                                                              \
       "ORDER BY d.channel")                                                                       \
    XX(DLV_CANCEL_FOR_ALERT,                                                                       \
       "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL, finished_at = ?2 "     \
       "WHERE status = 'pending' AND kind <> 'resolved' "                                          \
       "AND id IN (SELECT delivery FROM delivery_alerts WHERE alert_id = ?1) "                     \
       "AND NOT EXISTS (SELECT 1 FROM delivery_alerts m JOIN alerts a ON a.id = m.alert_id "       \
       "WHERE m.delivery = deliveries.id AND a.status = 'firing')")                                \
    XX(DLV_EXPIRED_LEASES, "SELECT " AL_DELIVERY_COLS " FROM deliveries WHERE status = 'sending' " \
                           "AND lease_until <= ?1 ORDER BY lease_until, id LIMIT ?2")              \
    XX(DLV_DUE, "SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ?1 "    \
                "ORDER BY next_attempt_at, id LIMIT ?2")                                           \
    XX(DLV_BLOCKED, AL_BLOCKED_SQL)                                                                \
    XX(DLV_GET, "SELECT " AL_DELIVERY_COLS " FROM deliveries WHERE id = ?1")                       \
    XX(DLV_CLAIM, "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, "            \
                  "next_attempt_at = NULL, lease_until = ?2, last_attempt_at = ?3, "               \
                  "throttled_at = NULL WHERE id = ?1 AND status = 'pending'")                      \
    XX(DLV_CHANNEL_DUE,                                                                            \
       "SELECT " AL_DELIVERY_COLS " FROM deliveries WHERE status = 'pending' AND channel = ?1 "    \
       "AND next_attempt_at <= ?2 ORDER BY tier, id LIMIT ?3")                                     \
    XX(DLV_THROTTLE,                                                                               \
       "UPDATE deliveries SET next_attempt_at = ?2, "                                              \
       "throttled_at = coalesce(throttled_at, ?3) WHERE id = ?1 AND status = 'pending'")           \
    XX(DLV_FOLD,                                                                                   \
       "UPDATE deliveries SET status = 'folded', folded_into = ?2, next_attempt_at = NULL, "       \
       "throttled_at = NULL, finished_at = ?3 WHERE id = ?1 AND status = 'pending'")               \
    XX(DLV_FOLD_MEMBERS, "INSERT OR IGNORE INTO delivery_alerts (delivery, alert_id) "             \
                         "SELECT ?1, alert_id FROM delivery_alerts WHERE delivery = ?2")           \
    XX(DLV_SET_TIER, "UPDATE deliveries SET tier = ?2 WHERE id = ?1")                              \
    XX(DLV_FOLDED_COUNT, "SELECT count(*) FROM deliveries WHERE folded_into = ?1")                 \
    XX(DLV_FINISH, "UPDATE deliveries SET status = ?2, next_attempt_at = ?3, lease_until = NULL, " \
                   "last_code = ?4, last_error = ?5, finished_at = ?6 "                            \
                   "WHERE id = ?1 AND status = 'sending' AND attempts = ?7")                       \
    XX(DLV_CANCEL,                                                                                 \
       "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL, lease_until = NULL, "  \
       "finished_at = ?2 WHERE id = ?1 AND status IN ('pending', 'sending')")                      \
    XX(DLV_CANCEL_ORPHAN_RESOLVED,                                                                 \
       "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL, finished_at = ?3 "     \
       "WHERE status = 'pending' AND kind = 'resolved' AND channel = ?2 AND id IN "                \
       "(SELECT r.delivery FROM delivery_alerts r WHERE r.alert_id IN "                            \
       "(SELECT alert_id FROM delivery_alerts WHERE delivery = ?1)) AND NOT EXISTS "               \
       "(SELECT 1 FROM delivery_alerts r2 JOIN delivery_alerts m ON m.alert_id = r2.alert_id "     \
       "JOIN deliveries d2 ON d2.id = m.delivery WHERE r2.delivery = deliveries.id "               \
       "AND d2.channel = ?2 AND d2.kind <> 'resolved' "                                            \
       "AND (d2.status IN ('sent', 'sending', 'ambiguous') OR d2.last_error IS NOT NULL "          \
       "OR d2.last_code IS NOT NULL))")                                                            \
    XX(DLV_MEMBERS,                                                                                \
       "SELECT m.alert_id FROM delivery_alerts m WHERE m.delivery = ?1 ORDER BY m.alert_id")       \
    XX(DLV_FIRING_MEMBERS,                                                                         \
       "SELECT count(*) FROM delivery_alerts m JOIN alerts a ON a.id = m.alert_id "                \
       "WHERE m.delivery = ?1 AND a.status = 'firing'")                                            \
    XX(DLV_ACKED_MEMBERS,                                                                          \
       "SELECT count(*) FROM delivery_alerts m JOIN alerts a ON a.id = m.alert_id "                \
       "WHERE m.delivery = ?1 AND a.status = 'acknowledged'")                                      \
    XX(DLV_NEXT_PENDING, "SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending'")   \
    XX(DLV_NEXT_LEASE, "SELECT min(lease_until) FROM deliveries WHERE status = 'sending'")         \
    XX(DLV_DEPTH, "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending') + "           \
                  "(SELECT count(*) FROM deliveries WHERE status = 'sending')")                    \
    XX(DLV_FOR_ALERT,                                                                              \
       "SELECT d.delivery_id, d.channel, d.kind, d.tier, d.status, d.attempts, d.created_at, "     \
       "d.next_attempt_at, d.last_attempt_at, d.last_code, d.last_error, d.finished_at "           \
       "FROM delivery_alerts m JOIN deliveries d ON d.id = m.delivery "                            \
       "WHERE m.alert_id = ?1 ORDER BY d.id LIMIT ?2")                                             \
    XX(DLV_PRUNE, "DELETE FROM deliveries WHERE id IN (SELECT d.id FROM deliveries d "             \
                  "WHERE d.finished_at < ?1 AND NOT EXISTS "                                       \
                  "(SELECT 1 FROM delivery_alerts m WHERE m.delivery = d.id) LIMIT ?2)")           \
    XX(SIL_INSERT,                                                                                 \
       "INSERT INTO silences (matchers, starts_at, ends_at, created_at, created_by, comment) "     \
       "VALUES (?1, ?2, ?3, ?4, ?5, ?6)")                                                          \
    XX(SIL_GET, "SELECT id, ends_at FROM silences WHERE id = ?1")                                  \
    XX(SIL_EXPIRE,                                                                                 \
       "UPDATE silences SET ends_at = ?2, starts_at = min(starts_at, ?2), expired_at = ?2 "        \
       "WHERE id = ?1 AND ends_at > ?2")                                                           \
    XX(SIL_ACTIVE, "SELECT id, matchers, starts_at, ends_at FROM silences WHERE ends_at > ?1 "     \
                   "ORDER BY id LIMIT ?2")                                                         \
    XX(SIL_COUNT_ACTIVE, "SELECT count(*) FROM silences WHERE ends_at > ?1")                       \
    XX(SIL_LIST,                                                                                   \
       "SELECT id, matchers, starts_at, ends_at, created_at, created_by, comment, expired_at "     \
       "FROM silences WHERE ?2 OR ends_at > ?1 ORDER BY id DESC LIMIT ?3")                         \
    XX(SIL_PRUNE,                                                                                  \
       "DELETE FROM silences WHERE id IN (SELECT id FROM silences WHERE ends_at < ?1 LIMIT ?2)")

typedef enum al_stmt_id {
#define AL_STMT_ENUM(name, sql) AL_ST_##name,
    AL_STATEMENTS(AL_STMT_ENUM)
#undef AL_STMT_ENUM
        AL_ST_COUNT
} al_stmt_id_t;

/* ---- an alert row ---- */

typedef enum al_status { AL_FIRING = 0, AL_ACKED, AL_RESOLVED, AL_STATUS_COUNT } al_status_t;

const char *al_status_name(al_status_t s); /* "firing", "acknowledged", "resolved" */
int al_status_parse(const char *s);        /* -1 when unknown */
int al_notify_kind_parse(const char *s);   /* AL_NOTIFY_NONE when NULL/unknown */

typedef struct al_alert {
    int64_t id;
    char *dedup_key, *event, *source, *labels, *summary, *acked_by, *resolved_by;
    int tier, first_tier, escalation_level;
    al_status_t status;
    int64_t count, flap_count;
    bool flapping;
    uint64_t started_at, updated_at, last_seen_at, acked_at, resolved_at;
    uint64_t next_escalation_at, next_repeat_at, notify_at, recheck_at;
    uint64_t clear_since, hold_until, auto_resolve_at, due_at;
    int notify_kind;                   /* al_notify_kind_t, or AL_NOTIFY_NONE */
    int64_t silenced_by, inhibited_by; /* 0: none */
} al_alert_t;

void al_alert_dispose(al_alert_t *a);
/* Replaces *dst with a copy of src (NULL allowed). 0 or AL_DB_ENOMEM. */
int al_strset(char **dst, const char *src);

/* ---- the memory queue (queue.c): inputs held while the store is unavailable ---- */

typedef enum al_qtype { AL_Q_EVENT = 0, AL_Q_EXTERNAL } al_qtype_t;

typedef struct al_qentry {
    al_qtype_t type;
    uint64_t now_ms;
    int32_t worker;
    char *kind; /* events only */
    char *text; /* fields JSON, or the external body */
    size_t len;
} al_qentry_t;

typedef struct al_queue {
    al_qentry_t *ring;
    size_t cap, head, n, bytes, max_bytes;
    uint64_t dropped, applied;
    uint64_t retry_at, backoff_ms;
} al_queue_t;

int al_queue_init(al_queue_t *q, size_t cap, size_t max_bytes);
void al_queue_dispose(al_queue_t *q);
/* Appends a copy. 0; AL_ELIMIT when full (counted in dropped); AL_DB_ENOMEM. */
int al_queue_push(al_queue_t *q, al_qtype_t type, uint64_t now_ms, int32_t worker, const char *kind,
                  const char *text, size_t len);
al_qentry_t *al_queue_front(al_queue_t *q); /* NULL when empty */
void al_queue_pop(al_queue_t *q);
/* After a failed flush: next retry after a doubling delay (250 ms .. 30 s). */
void al_queue_backoff(al_queue_t *q, uint64_t now_ms);
void al_queue_recovered(al_queue_t *q);

/* ---- the silence cache (silence.c) ---- */

typedef struct al_silence_entry {
    int64_t id;
    uint64_t starts_at, ends_at;
    al_matchers_t *matchers;
} al_silence_entry_t;

typedef struct al_silence_cache {
    al_silence_entry_t *v;
    size_t n;
    bool valid;
} al_silence_cache_t;

void al_silence_cache_dispose(al_silence_cache_t *c);

/* The active silence (starts_at <= now < ends_at) that matches labels and ends last: *id and
 * *ends_at, or *id = 0. Reloads the cache when it was invalidated. 0 or a store error. */
int al_silence_find(al_engine_t *e, const al_label_t *labels, size_t n, uint64_t now_ms,
                    int64_t *id, uint64_t *ends_at);

/* ---- the engine ---- */

/* A notification decided inside the current transaction, written as outbox rows at its end
 * (grouped by tier and kind, so alerts stepped together share one message per channel). */
typedef struct al_note {
    int64_t alert_id;
    int tier;
    al_notify_kind_t kind;
} al_note_t;

/* ---- channel rate limits (outbox.c) ---- */

#define AL_RL_BUCKETS 64   /* rate-limited channels tracked at once (more: least useful evicted) */
#define AL_RL_NAME_MAX 127 /* bytes of a channel name a bucket can hold (config allows 64) */

/* The token bucket of one rate-limited channel (config `rate_limit: N/period`), in memory only:
 * after a restart every bucket starts full. Exact integer maths: `level` counts token units,
 * one token = rate.period_ms units, capacity = rate.tokens tokens, refilling rate.tokens units
 * per millisecond (so a full bucket refills from empty in one period). A zeroed entry is free. */
typedef struct al_bucket {
    char channel[AL_RL_NAME_MAX + 1]; /* "" when free */
    gw_rate_t rate;                   /* the rate the level was computed with (reload: reset) */
    uint64_t level;                   /* token units, <= rate.tokens * rate.period_ms */
    uint64_t at;                      /* unix ms of the last refill */
} al_bucket_t;

struct al_engine {
    al_db_t *db;
    sqlite3 *conn;
    const gw_alerts_config_t *cfg;
    al_engine_options_t opt;
    char *source;
    sqlite3_stmt *st[AL_ST_COUNT];
    uint64_t rng;
    bool in_txn;
    al_note_t *notes;
    size_t nnotes, capnotes;
    al_silence_cache_t silences;
    al_queue_t queue;
    uint64_t next_prune_at;
    int last_store_error;
    al_bucket_t buckets[AL_RL_BUCKETS]; /* per-channel rate limits (outbox.c) */
};

/* store.c */
int al_store_prepare(al_engine_t *e);
void al_store_finalize(al_engine_t *e);
sqlite3_stmt *al_stmt(al_engine_t *e, al_stmt_id_t id); /* reset, bindings cleared */
void al_stmt_done(sqlite3_stmt *st);                    /* reset + clear bindings */
/* Steps a statement that returns no rows, then al_stmt_done(). 0 or a translated error. */
int al_stmt_run(sqlite3_stmt *st);
/* Steps a statement that returns one integer row (NULL -> *out = null_value). */
int al_stmt_int(sqlite3_stmt *st, int64_t null_value, int64_t *out);
int al_txn_begin(al_engine_t *e);
int al_txn_commit(al_engine_t *e); /* rolls back on failure */
void al_txn_rollback(al_engine_t *e);
void al_bind_time(sqlite3_stmt *st, int i, uint64_t t);    /* AL_NEVER -> NULL */
void al_bind_id(sqlite3_stmt *st, int i, int64_t id);      /* 0 -> NULL */
void al_bind_text(sqlite3_stmt *st, int i, const char *s); /* NULL -> NULL; transient */
uint64_t al_col_time(sqlite3_stmt *st, int i);             /* NULL -> AL_NEVER */
char *al_col_strdup(sqlite3_stmt *st, int i, int *nomem);  /* NULL -> NULL */
/* Reads the current row of a statement selecting AL_ALERT_COLS. 0 or AL_DB_ENOMEM. */
int al_alert_read(sqlite3_stmt *st, al_alert_t *a);
/* Loads by id / by active dedup key: 1 found, 0 not found, negative error. */
int al_alert_get(al_engine_t *e, int64_t id, al_alert_t *a);
int al_alert_get_active(al_engine_t *e, const char *dedup_key, al_alert_t *a);
/* Inserts a new firing alert (sets a->id) and then writes every column (al_alert_save). */
int al_alert_insert(al_engine_t *e, al_alert_t *a);
/* Writes every mutable column, recomputing due_at first. */
int al_alert_save(al_engine_t *e, al_alert_t *a);
uint64_t al_alert_due(const al_alert_t *a);
/* 64 random bits from the configured source. */
uint64_t al_random(al_engine_t *e);
/* A random (version 4) UUID as text, 36 chars + NUL. */
void al_uuid(al_engine_t *e, char out[37]);

/* t + d, saturating below AL_NEVER. */
static inline uint64_t al_add_ms(uint64_t t, uint64_t d)
{
    return t >= AL_NEVER - d ? AL_NEVER - 1 : t + d;
}

/* base + interval, or now + interval when that is already past (after downtime: one catch-up,
 * then back on a regular schedule, never a burst). */
static inline uint64_t al_next_after(uint64_t base, uint64_t interval, uint64_t now)
{
    uint64_t t = al_add_ms(base, interval);
    return t > now ? t : al_add_ms(now, interval);
}

/* The config of a tier, or NULL when the config does not define it (e.g. after a reload). */
static inline const gw_tier_config_t *al_tier_cfg(const al_engine_t *e, int tier)
{
    if (tier < 0 || tier >= GW_TIER_COUNT || !e->cfg->tiers[tier].defined)
        return NULL;
    return &e->cfg->tiers[tier];
}

/* engine.c */
/* Raises (or updates) / clears the alert of an internal event (delivery_failing). */
int al_engine_internal_locked(al_engine_t *e, const char *kind, json_t *fields, uint64_t now_ms);
/* Resolves a (firing or acknowledged) alert: timers off, pending notifications cancelled,
 * resolved notifications queued, alerts it was inhibiting woken. `by` may be NULL. */
int al_resolve_locked(al_engine_t *e, al_alert_t *a, const char *by, const char *reason,
                      uint64_t now_ms);
/* Applies held inputs (own transactions); 0 or the store error that stopped it. */
int al_queue_flush(al_engine_t *e, uint64_t now_ms);

/* notify.c */
int al_notify_locked(al_engine_t *e, al_alert_t *a, al_notify_kind_t kind, uint64_t now_ms,
                     bool may_group);
int al_notify_resolved_locked(al_engine_t *e, al_alert_t *a, uint64_t now_ms);
/* After an ack: an "acknowledged" row to every incident channel (pagerduty, opsgenie: providers
 * that page on their own until told) that was (or may have been) notified about a. */
int al_notify_acked_locked(al_engine_t *e, al_alert_t *a, uint64_t now_ms);
/* Cancels pending deliveries of a firing kind whose alerts are all no longer firing. */
int al_cancel_pending_locked(al_engine_t *e, int64_t id, uint64_t now_ms, int *cancelled);
int al_notes_flush_locked(al_engine_t *e, uint64_t now_ms);
void al_notes_clear(al_engine_t *e);
void al_clear_owed(al_alert_t *a);
int al_kind_rank(int kind); /* repeat < firing < escalated; 0 for none */

/* escalation.c */
void al_schedule(const al_engine_t *e, al_alert_t *a, uint64_t base, uint64_t now_ms);

/* outbox.c, used by al_engine_start(): every "sending" row becomes an ambiguous attempt. */
int al_outbox_reap_all(al_engine_t *e, uint64_t now_ms);

/* lineage.c */
/* Appends a history row; steals detail (NULL: {}). 0 or an error. */
int al_history_add(al_engine_t *e, int64_t alert_id, uint64_t ts_ms, const char *kind,
                   json_t *detail);
/* The alert as JSON (webhook shape + engine fields); with_ms adds millisecond precision and the
 * timers (admin API). NULL on out of memory. */
json_t *al_alert_to_json(const al_engine_t *e, const al_alert_t *a, bool admin);
/* RFC 3339 UTC text of a unix ms time; ms == false drops the fraction. */
void al_fmt_time(uint64_t t, bool ms, char out[32]);
/* Labels of an alert for matching: its labels plus alertname (= event) and tier. Fills up to
 * max entries pointing into *holder (a parsed json_t the caller decrefs). Returns the count. */
size_t al_alert_labels(const al_alert_t *a, json_t **holder, al_label_t *out, size_t max);

/* ---- rules.c: event -> what happens to which alert ---- */

typedef enum al_action {
    AL_ACT_IGNORE = 0, /* no alert concerns this event */
    AL_ACT_RAISE,      /* create or update the alert */
    AL_ACT_CLEAR,      /* the condition cleared: resolve (or start a flap hold-down) */
    AL_ACT_NOTE,       /* lineage entry on the alert if it exists */
} al_action_t;

typedef struct al_intent {
    al_action_t action;
    gw_event_kind_t rule; /* the rule that sets the tier */
    const char *event;    /* the alert's event name, e.g. "breaker_open" (static) */
    json_t *labels;       /* owned */
    char summary[AL_SUMMARY_MAX];
    bool auto_resolve; /* no clearing event exists: resolve after a quiet period */
} al_intent_t;

/* Maps an event to an intent. fields is a JSON object (borrowed). Returns 0 (intent->action may
 * be AL_ACT_IGNORE) or AL_EBADINPUT (a raising/clearing event without its identifying fields). */
int al_rules_map(const gw_alerts_config_t *cfg, const char *kind, int32_t worker, json_t *fields,
                 al_intent_t *out);
void al_intent_dispose(al_intent_t *in);
/* Whether any alert can be concerned by events of this kind (cheap; no config needed). */
bool al_rules_concern(const char *kind);
/* event{k="v",...} with keys sorted, values escaped (\\ \" \n); bare event without labels.
 * Labels named in skip (may be NULL) are left out. malloc()ed, NULL on out of memory. */
char *al_dedup_key(const char *event, json_t *labels, const char *skip);
/* Checks label names/values against the bounds. 0 or AL_EBADINPUT with err. */
int al_labels_check(json_t *labels, char *err, size_t errlen);
/* The nearest defined tier to t: t itself, else more urgent, else less urgent. */
int al_tier_defined(const gw_alerts_config_t *cfg, int t);

/* ---- external.c ---- */

typedef struct al_ext_alert {
    char *event;
    char *dedup_key;
    json_t *labels;
    char *summary;
    int tier;
    bool resolved;
} al_ext_alert_t;

/* Parses a POST /api/v1/alerts body into at most AL_EXTERNAL_MAX entries (*n). 0 or
 * AL_EBADINPUT (err) or AL_DB_ENOMEM. Entries are disposed with al_ext_dispose(). */
int al_external_parse(const gw_alerts_config_t *cfg, const char *body, size_t len,
                      al_ext_alert_t *out, size_t *n, char *err, size_t errlen);
void al_ext_dispose(al_ext_alert_t *x);

/* engine.c: applies parsed external alerts (transaction open). */
int al_external_apply_locked(al_engine_t *e, al_ext_alert_t *v, size_t n, uint64_t now_ms,
                             al_external_result_t *res);

#endif
