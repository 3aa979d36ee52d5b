/*
 * outbox.c - the durable outbox: claiming due deliveries, re-checking them, recording attempts.
 *
 * A delivery row is one notification to one channel (deliveries + delivery_alerts, written by
 * engine.c in the transaction of the state change). Its life (migrations/0002_alerts.sql):
 *
 *   pending --claim (lease)--> sending --OK--> sent
 *      ^                          |--RETRY, or AMBIGUOUS on P0/P1, or lease expired (any tier)
 *      |                          |      (next_attempt_at = now + backoff, >= Retry-After)
 *      +--------------------------+
 *                                 |--PERMANENT, or max_attempts, or next attempt past max_age-->
 * failed
 *                                 |--AMBIGUOUS on P2--> ambiguous
 *   pending/sending --its alerts acknowledged or resolved before the send--> cancelled
 *
 * Why leases: the sender is asynchronous (libcurl multi on the control loop). A claimed row stays
 * "sending" until the sender records its result; if the sender never does (crash, bug), the lease
 * ends and the attempt counts as ambiguous: the notification may or may not have arrived.
 * Ambiguous policy: P0/P1 pages are sent again (same delivery_id, so channels that honour
 * Idempotency-Key drop the duplicate; for the others a duplicate page beats a lost one); P2 is not
 * retried after an ambiguous attempt (a duplicate chat message is worse than the small chance of
 * a lost low-priority one), and the row ends as "ambiguous".
 *
 * Ordering: a later notification for an alert waits while an earlier one on the same channel is
 * still being sent, so "resolved" never overtakes its "firing" on a channel.
 *
 * Invariants: attempts counts claims; al_outbox_record() only accepts the result of the current
 * claim (status sending and attempts equal), so a late result of a reclaimed row cannot overwrite
 * a newer one. Every attempt result is appended to the lineage of every alert of the delivery in
 * the same transaction.
 */
#include <stdlib.h>
#include <string.h>

#include "alerts_int.h"

#define REAP_BATCH 64

typedef struct dlv {
    int64_t id;
    char delivery_id[37];
    char *channel;
    int kind;
    int tier;
    char status[16];
    uint64_t created_at, expires_at, lease_until;
    uint32_t attempts;
} dlv_t;

void al_delivery_dispose(al_delivery_t *d)
{
    if (d == NULL)
        return;
    free(d->channel);
    free(d->payload_json);
    d->channel = NULL;
    d->payload_json = NULL;
}

uint64_t al_outbox_backoff_ms(const gw_delivery_config_t *dc, uint32_t attempt, uint64_t rnd)
{
    uint64_t base = dc->backoff_ms > 0 ? dc->backoff_ms : 1000;
    uint64_t cap = dc->max_backoff_ms >= base ? dc->max_backoff_ms : base;
    uint64_t half;

    for (uint32_t i = 1; i < attempt && base < cap; i++)
        base = base > cap / 2 ? cap : base * 2;
    if (base > cap)
        base = cap;
    half = base / 2;
    /* uniform in [half, base]: scale rnd to 0..(base - half) without modulo bias */
    return half + (uint64_t)(((unsigned __int128)rnd * (base - half + 1)) >> 64);
}

static int dlv_read(sqlite3_stmt *st, dlv_t *d)
{
    const char *uuid = (const char *)sqlite3_column_text(st, 1);
    const char *status = (const char *)sqlite3_column_text(st, 5);
    int nomem = 0;

    memset(d, 0, sizeof(*d));
    d->id = sqlite3_column_int64(st, 0);
    snprintf(d->delivery_id, sizeof(d->delivery_id), "%s", uuid != NULL ? uuid : "");
    d->channel = al_col_strdup(st, 2, &nomem);
    d->kind = al_notify_kind_parse((const char *)sqlite3_column_text(st, 3));
    d->tier = sqlite3_column_int(st, 4);
    snprintf(d->status, sizeof(d->status), "%s", status != NULL ? status : "");
    d->created_at = al_col_time(st, 6);
    d->expires_at = al_col_time(st, 7);
    d->attempts = (uint32_t)sqlite3_column_int64(st, 8);
    d->lease_until = al_col_time(st, 9);
    return nomem || d->channel == NULL ? AL_DB_ENOMEM : 0;
}

static void dlv_dispose(dlv_t *d)
{
    free(d->channel);
    d->channel = NULL;
}

/* 1 found, 0 not, negative error. */
static int dlv_get(al_engine_t *e, int64_t id, dlv_t *d)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_GET);
    int rc, r;

    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        r = dlv_read(st, d) == 0 ? 1 : AL_DB_ENOMEM;
    else
        r = rc == SQLITE_DONE ? 0 : al_db_translate(rc);
    al_stmt_done(st);
    if (r < 0)
        dlv_dispose(d);
    return r;
}

/* The alerts a delivery speaks about (at most AL_GROUP_MAX). */
static int members(al_engine_t *e, int64_t id, int64_t *ids, size_t *n)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_MEMBERS);
    int rc;

    *n = 0;
    sqlite3_bind_int64(st, 1, id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < AL_GROUP_MAX)
        ids[(*n)++] = sqlite3_column_int64(st, 0);
    al_stmt_done(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : al_db_translate(rc);
}

static int firing_members(al_engine_t *e, int64_t id, int64_t *count)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_FIRING_MEMBERS);

    sqlite3_bind_int64(st, 1, id);
    return al_stmt_int(st, 0, count);
}

/* Appends detail (stolen) to the lineage of every alert of delivery d. */
static int history_members(al_engine_t *e, const dlv_t *d, const char *kind, json_t *detail,
                           uint64_t now)
{
    int64_t ids[AL_GROUP_MAX];
    size_t n = 0;
    int r = detail != NULL ? members(e, d->id, ids, &n) : AL_DB_ENOMEM;

    for (size_t i = 0; r == 0 && i < n; i++)
        r = al_history_add(e, ids[i], now, kind, json_deep_copy(detail));
    json_decref(detail);
    return r;
}

static int cancel_locked(al_engine_t *e, const dlv_t *d, const char *reason, uint64_t now)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_CANCEL);
    int r;

    sqlite3_bind_int64(st, 1, d->id);
    al_bind_time(st, 2, now);
    r = al_stmt_run(st);
    if (r == 0) {
        /* A resolved notification queued because this one was "maybe delivered" now speaks about
         * a firing message the channel never got: drop it too. */
        st = al_stmt(e, AL_ST_DLV_CANCEL_ORPHAN_RESOLVED);
        sqlite3_bind_int64(st, 1, d->id);
        al_bind_text(st, 2, d->channel);
        al_bind_time(st, 3, now);
        r = al_stmt_run(st);
    }
    if (r == 0)
        r = history_members(
            e, d, "cancelled",
            json_pack("{s:s, s:s, s:s?, s:s}", "delivery_id", d->delivery_id, "channel", d->channel,
                      "kind", al_notify_kind_name((al_notify_kind_t)d->kind), "reason", reason),
            now);
    return r;
}

static const char *result_name(al_send_result_t r)
{
    static const char *const names[] = {"ok", "retry", "permanent", "ambiguous"};
    return (unsigned)r < sizeof(names) / sizeof(names[0]) ? names[r] : "?";
}

/* What happens to delivery d after a failed attempt: pending again (*next) or final. */
static const char *after_failure(al_engine_t *e, const dlv_t *d, uint32_t attempt,
                                 const al_attempt_t *a, uint64_t now, uint64_t *next,
                                 const char **why)
{
    const gw_delivery_config_t *dc = &e->cfg->delivery;
    uint64_t delay;

    if (dc->max_attempts > 0 && attempt >= dc->max_attempts) {
        *why = "max_attempts";
        return "failed";
    }
    delay = al_outbox_backoff_ms(dc, attempt, al_random(e));
    if (a->retry_after_ms > delay)
        delay = a->retry_after_ms; /* the channel told us when: never earlier */
    if (now >= d->expires_at || d->expires_at - now <= delay) {
        *why = "max_age";
        return "failed";
    }
    *next = now + delay;
    return "pending";
}

/* Records the result of attempt `attempt` of d (transaction open). */
static int finish_locked(al_engine_t *e, const dlv_t *d, uint32_t attempt, const al_attempt_t *a,
                         uint64_t now)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_FINISH);
    const char *status, *why = NULL;
    uint64_t next = AL_NEVER;
    bool ambiguous_retry = a->result == AL_SEND_AMBIGUOUS && d->tier <= GW_TIER_P1;
    json_t *fields;
    int r;

    if (a->result == AL_SEND_OK) {
        status = "sent";
    } else if (a->result == AL_SEND_PERMANENT) {
        status = "failed";
        why = "permanent";
    } else if (a->result == AL_SEND_AMBIGUOUS && !ambiguous_retry) {
        status = "ambiguous";
    } else {
        status = after_failure(e, d, attempt, a, now, &next, &why);
    }
    al_bind_text(st, 2, status);
    sqlite3_bind_int64(st, 1, d->id);
    al_bind_time(st, 3, next);
    if (a->http_status > 0)
        sqlite3_bind_int(st, 4, a->http_status);
    al_bind_text(st, 5, a->error);
    al_bind_time(st, 6, strcmp(status, "pending") == 0 ? AL_NEVER : now);
    sqlite3_bind_int64(st, 7, attempt);
    r = al_stmt_run(st);
    if (r != 0)
        return r;
    if (sqlite3_changes(e->conn) == 0)
        return AL_ESTALE;
    r = history_members(
        e, d, "delivery",
        json_pack("{s:s, s:s, s:s?, s:i, s:s, s:i, s:I, s:s?, s:s, s:s?, s:o?}", "delivery_id",
                  d->delivery_id, "channel", d->channel, "kind",
                  al_notify_kind_name((al_notify_kind_t)d->kind), "attempt", (int)attempt, "result",
                  result_name(a->result), "http_status", a->http_status, "retry_after_ms",
                  (json_int_t)a->retry_after_ms, "error", a->error, "status", status, "reason", why,
                  "next_attempt_ms", next == AL_NEVER ? NULL : json_integer((json_int_t)next)),
        now);
    if (r != 0)
        return r;
    if (strcmp(status, "sent") == 0) {
        fields = json_pack("{s:s}", "channel", d->channel);
        r = fields != NULL ? al_engine_internal_locked(e, "delivery_failing_cleared", fields, now)
                           : AL_DB_ENOMEM;
        json_decref(fields);
    } else if (strcmp(status, "failed") == 0 ||
               (strcmp(status, "pending") == 0 && attempt == e->opt.failing_after)) {
        fields = json_pack("{s:s, s:i, s:i, s:s?, s:s}", "channel", d->channel, "attempts",
                           (int)attempt, "http_status", a->http_status, "error", a->error,
                           "delivery_id", d->delivery_id);
        r = fields != NULL ? al_engine_internal_locked(e, "delivery_failing", fields, now)
                           : AL_DB_ENOMEM;
        json_decref(fields);
    }
    return r;
}

/*
 * Expired leases (lease_until <= until) are retried, whatever the tier; *n how many. A lease runs
 * out when the sender never reported (the process died, or a bug): we do not know whether the
 * request even left (it was often still connecting), so the notification is sent again with the
 * same Idempotency-Key. SPEC 4: what was accepted is delivered after a restart; a possible
 * duplicate beats a lost notification. (A send the sender saw time out after the request went out
 * is a different case: AL_SEND_AMBIGUOUS, final on P2.)
 */
static int reap_locked(al_engine_t *e, uint64_t until, uint64_t now, size_t *n)
{
    static const al_attempt_t lost = {AL_SEND_RETRY, 0, 0,
                                      "lease expired: the sender did not report a result (the "
                                      "process died?); sending again"};
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_EXPIRED_LEASES);
    dlv_t v[REAP_BATCH];
    int rc = SQLITE_DONE, r = 0;

    *n = 0;
    al_bind_time(st, 1, until);
    sqlite3_bind_int(st, 2, REAP_BATCH);
    while (r == 0 && *n < REAP_BATCH && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        r = dlv_read(st, &v[*n]);
        (*n)++;
    }
    if (r == 0 && *n < REAP_BATCH && rc != SQLITE_DONE)
        r = al_db_translate(rc);
    al_stmt_done(st);
    for (size_t i = 0; r == 0 && i < *n; i++)
        r = finish_locked(e, &v[i], v[i].attempts, &lost, now);
    for (size_t i = 0; i < *n; i++)
        dlv_dispose(&v[i]);
    return r;
}

int al_outbox_reap_all(al_engine_t *e, uint64_t now)
{
    size_t n = REAP_BATCH;
    int r = al_txn_begin(e);

    while (r == 0 && n == REAP_BATCH)
        r = reap_locked(e, (uint64_t)INT64_MAX, now, &n);
    if (r == 0)
        r = al_notes_flush_locked(e, now);
    if (r == 0)
        return al_txn_commit(e);
    if (e->in_txn)
        al_txn_rollback(e);
    return r;
}

/* The message as the sender needs it: the delivery and its alerts as they are now. */
static int build_payload(al_engine_t *e, const dlv_t *d, uint32_t attempt, char **out)
{
    int64_t ids[AL_GROUP_MAX];
    json_t *root = NULL, *alerts = json_array();
    size_t n = 0;
    int r = alerts != NULL ? members(e, d->id, ids, &n) : AL_DB_ENOMEM;

    for (size_t i = 0; r == 0 && i < n; i++) {
        al_alert_t a;
        int g = al_alert_get(e, ids[i], &a);
        if (g < 0)
            r = g;
        if (g != 1)
            continue;
        if (d->kind == AL_NOTIFY_RESOLVED || a.status == AL_FIRING) {
            json_t *o = al_alert_to_json(e, &a, false);
            if (o == NULL || json_object_set_new(o, "delivery_id", json_string(d->delivery_id)) ||
                json_array_append_new(alerts, o) != 0)
                r = AL_DB_ENOMEM;
        }
        al_alert_dispose(&a);
    }
    if (r == 0)
        root =
            json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:s, s:i, s:O}", "version", "1", "delivery_id",
                      d->delivery_id, "channel", d->channel, "kind",
                      al_notify_kind_name((al_notify_kind_t)d->kind), "tier", al_tier_name(d->tier),
                      "source", e->source, "attempt", (int)attempt, "alerts", alerts);
    *out = root != NULL ? json_dumps(root, JSON_COMPACT) : NULL;
    if (r == 0 && *out == NULL)
        r = AL_DB_ENOMEM;
    json_decref(root);
    json_decref(alerts);
    return r;
}

static int blocked(al_engine_t *e, const dlv_t *d, bool *yes)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_BLOCKED);
    int64_t v = 0;
    int r;

    sqlite3_bind_int64(st, 1, d->id);
    al_bind_text(st, 2, d->channel);
    r = al_stmt_int(st, 0, &v);
    *yes = v != 0;
    return r;
}

/* Claims delivery d into *out (1), or cancels/skips it (0). */
static int claim_one(al_engine_t *e, dlv_t *d, uint64_t now, al_delivery_t *out)
{
    sqlite3_stmt *st;
    int64_t firing = 0;
    bool is_blocked = false;
    int r = 0;

    if (d->kind != AL_NOTIFY_RESOLVED) {
        r = firing_members(e, d->id, &firing);
        if (r == 0 && firing == 0)
            return cancel_locked(e, d, "alerts acknowledged or resolved before the send", now);
    }
    if (r == 0)
        r = blocked(e, d, &is_blocked);
    if (r != 0 || is_blocked)
        return r;
    st = al_stmt(e, AL_ST_DLV_CLAIM);
    sqlite3_bind_int64(st, 1, d->id);
    al_bind_time(st, 2, now + e->opt.lease_ms);
    al_bind_time(st, 3, now);
    r = al_stmt_run(st);
    if (r != 0)
        return r;
    memset(out, 0, sizeof(*out));
    out->id = d->id;
    memcpy(out->delivery_id, d->delivery_id, sizeof(out->delivery_id));
    out->kind = (al_notify_kind_t)d->kind;
    out->tier = d->tier;
    out->attempt = d->attempts + 1;
    out->created_at_ms = d->created_at;
    out->expires_at_ms = d->expires_at;
    out->lease_until_ms = now + e->opt.lease_ms;
    r = build_payload(e, d, out->attempt, &out->payload_json);
    if (r != 0) {
        al_delivery_dispose(out);
        return r;
    }
    out->channel = d->channel; /* moved */
    d->channel = NULL;
    return 1;
}

static int due_ids(al_engine_t *e, uint64_t now, size_t limit, int64_t *ids, size_t *n)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_DUE);
    int rc = SQLITE_DONE;

    *n = 0;
    al_bind_time(st, 1, now);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)limit);
    while (*n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW)
        ids[(*n)++] = sqlite3_column_int64(st, 0);
    al_stmt_done(st);
    return *n == limit || rc == SQLITE_DONE ? 0 : al_db_translate(rc);
}

static int claim_locked(al_engine_t *e, uint64_t now, al_delivery_t *out, size_t max, size_t *n)
{
    int64_t ids[2 * AL_CLAIM_MAX];
    size_t nids = 0, reaped;
    int r = reap_locked(e, now, now, &reaped);

    if (r == 0)
        r = due_ids(e, now, 2 * max, ids, &nids);
    for (size_t i = 0; r == 0 && i < nids && *n < max; i++) {
        dlv_t d;
        r = dlv_get(e, ids[i], &d);
        if (r != 1)
            continue;
        r = claim_one(e, &d, now, &out[*n]);
        if (r == 1) {
            (*n)++;
            r = 0;
        }
        dlv_dispose(&d);
    }
    if (r == 0)
        r = al_notes_flush_locked(e, now);
    return r;
}

int al_outbox_claim(al_engine_t *e, uint64_t now_ms, al_delivery_t *out, size_t max, size_t *n)
{
    int r;

    *n = 0;
    if (e == NULL || out == NULL)
        return AL_DB_EINVAL;
    if (max > AL_CLAIM_MAX)
        max = AL_CLAIM_MAX;
    r = al_txn_begin(e);
    if (r != 0)
        return r;
    r = claim_locked(e, now_ms, out, max, n);
    if (r == 0)
        r = al_txn_commit(e);
    else
        al_txn_rollback(e);
    if (r != 0) {
        for (size_t i = 0; i < *n; i++)
            al_delivery_dispose(&out[i]);
        *n = 0;
    }
    return r;
}

int al_outbox_check(al_engine_t *e, const al_delivery_t *d, uint64_t now_ms)
{
    int64_t firing = 0;
    dlv_t row;
    int r;

    if (e == NULL || d == NULL)
        return AL_DB_EINVAL;
    r = dlv_get(e, d->id, &row);
    if (r <= 0)
        return r;
    if (strcmp(row.status, "sending") != 0 || row.attempts != d->attempt) {
        r = 0; /* stale claim */
    } else if (row.kind == AL_NOTIFY_RESOLVED) {
        r = 1;
    } else if ((r = firing_members(e, row.id, &firing)) == 0 && firing > 0) {
        r = 1;
    } else if (r == 0 && (r = al_txn_begin(e)) == 0) {
        r = cancel_locked(e, &row, "alerts acknowledged or resolved before the send", now_ms);
        if (r == 0)
            r = al_txn_commit(e);
        else
            al_txn_rollback(e);
    }
    dlv_dispose(&row);
    return r;
}

int al_outbox_record(al_engine_t *e, const al_delivery_t *d, const al_attempt_t *a, uint64_t now_ms)
{
    dlv_t row;
    int r;

    if (e == NULL || d == NULL || a == NULL || (unsigned)a->result > AL_SEND_AMBIGUOUS)
        return AL_DB_EINVAL;
    r = al_txn_begin(e);
    if (r != 0)
        return r;
    r = dlv_get(e, d->id, &row);
    if (r == 1) {
        r = finish_locked(e, &row, d->attempt, a, now_ms);
        dlv_dispose(&row);
    } else if (r == 0) {
        r = AL_ENOENT;
    }
    if (r == 0)
        r = al_notes_flush_locked(e, now_ms);
    if (r == 0)
        return al_txn_commit(e);
    al_txn_rollback(e);
    return r;
}

int al_outbox_next_due(al_engine_t *e, uint64_t *next_ms)
{
    int64_t pending = -1, lease = -1;
    int r;

    *next_ms = AL_NEVER;
    r = al_stmt_int(al_stmt(e, AL_ST_DLV_NEXT_PENDING), -1, &pending);
    if (r == 0)
        r = al_stmt_int(al_stmt(e, AL_ST_DLV_NEXT_LEASE), -1, &lease);
    if (r != 0)
        return r;
    if (pending >= 0)
        *next_ms = (uint64_t)pending;
    if (lease >= 0 && (uint64_t)lease < *next_ms)
        *next_ms = (uint64_t)lease;
    return 0;
}

int al_outbox_depth(al_engine_t *e, uint64_t *depth)
{
    int64_t v = 0;
    int r = al_stmt_int(al_stmt(e, AL_ST_DLV_DEPTH), 0, &v);

    *depth = v > 0 ? (uint64_t)v : 0;
    return r;
}
