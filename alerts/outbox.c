/*
 * outbox.c - the durable outbox: claiming due deliveries, re-checking them, recording attempts.
 *
 * A delivery row is one notification to one channel (deliveries + delivery_alerts, written by
 * engine.c in the transaction of the state change). Its life (migrations/0002_alerts.sql,
 * 0003_channel_rate_limit.sql):
 *
 *   pending --claim (lease)--> sending --OK--> sent
 *      ^                          |--RETRY, or AMBIGUOUS on P0/P1, or lease expired (any tier)
 *      |                          |      (next_attempt_at = now + backoff, >= Retry-After)
 *      +--------------------------+
 *                                 |--PERMANENT, or max_attempts, or next attempt past max_age-->
 * failed
 *                                 |--AMBIGUOUS on P2--> ambiguous
 *   pending/sending --its alerts acknowledged or resolved before the send--> cancelled
 *   pending --no token of its channel's rate_limit--> pending (next_attempt_at = the token's time,
 *            no attempt counted)
 *   pending --carried by another delivery of its channel and kind that got a token--> folded
 *
 * Channel rate limits: see "channel rate limits" below (per-channel token buckets in memory, the
 * P0 reserve, folding the notifications that had to wait into one message).
 *
 * delivery_failing: a failed attempt raises it once the delivery has been undelivered for its
 * tier's window (escalate_after, else repeat, else 5 min) and opts.failing_after attempts failed;
 * a final failure (permanent/broken, max_attempts, max_age) raises it at once; a success on the
 * channel resolves it.
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
#include "channel.h"

#define REAP_BATCH 64

typedef struct dlv {
    int64_t id;
    char delivery_id[37];
    char *channel;
    int kind;
    int tier;
    char status[16];
    uint64_t created_at, expires_at, lease_until;
    uint64_t throttled_at; /* AL_NEVER: never refused a rate-limit token (since its last claim) */
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
    d->throttled_at = al_col_time(st, 10);
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

/* Members of delivery d still worth telling about: firing ones, or for an acknowledgement the
 * acknowledged ones (resolved meanwhile: the resolved notification says more). Not used for
 * resolved notifications, which always go. */
static int live_members(al_engine_t *e, int64_t id, int kind, int64_t *count)
{
    sqlite3_stmt *st = al_stmt(e, kind == AL_NOTIFY_ACKNOWLEDGED ? AL_ST_DLV_ACKED_MEMBERS
                                                                 : AL_ST_DLV_FIRING_MEMBERS);

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

#define FAILING_WINDOW_DEFAULT_MS (5 * 60 * 1000)

/* How long a delivery of this tier may stay undelivered before its failed attempts raise
 * delivery_failing: the tier's escalate_after (by then the alert would have moved on to the next
 * tier), else its repeat (by then the next page is due), else 5 minutes. */
static uint64_t failing_window(const al_engine_t *e, int tier)
{
    const gw_tier_config_t *tc = al_tier_cfg(e, tier);

    if (tc != NULL && tc->escalate_after_ms > 0)
        return tc->escalate_after_ms;
    if (tc != NULL && tc->repeat_ms > 0)
        return tc->repeat_ms;
    return FAILING_WINDOW_DEFAULT_MS;
}

/* A failed attempt that leaves d pending raises delivery_failing once d has been undelivered for
 * its tier's window and at least opt.failing_after attempts failed (one failure after a long wait
 * for a token or an earlier send is not yet a failing channel). Final failures raise at once. */
static bool failing_long(const al_engine_t *e, const dlv_t *d, uint32_t attempt, uint64_t now)
{
    return attempt >= e->opt.failing_after && now >= d->created_at &&
           now - d->created_at >= failing_window(e, d->tier);
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
               (strcmp(status, "pending") == 0 && failing_long(e, d, attempt, now))) {
        fields = json_pack("{s:s, s:i, s:i, s:s?, s:s, s:I, s:s}", "channel", d->channel,
                           "attempts", (int)attempt, "http_status", a->http_status, "error",
                           a->error, "delivery_id", d->delivery_id, "undelivered_ms",
                           (json_int_t)(now > d->created_at ? now - d->created_at : 0), "status",
                           status);
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
    int64_t ids[AL_GROUP_MAX], folded = 0;
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
        if (d->kind == AL_NOTIFY_RESOLVED || a.status == AL_FIRING ||
            (d->kind == AL_NOTIFY_ACKNOWLEDGED && a.status == AL_ACKED)) {
            json_t *o = al_alert_to_json(e, &a, false);
            if (o == NULL || json_object_set_new(o, "delivery_id", json_string(d->delivery_id)) ||
                json_array_append_new(alerts, o) != 0)
                r = AL_DB_ENOMEM;
        }
        al_alert_dispose(&a);
    }
    if (r == 0) {
        sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_FOLDED_COUNT);
        sqlite3_bind_int64(st, 1, d->id);
        r = al_stmt_int(st, 0, &folded);
    }
    if (r == 0)
        root = json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:s, s:i, s:I, s:O}", "version", "1",
                         "delivery_id", d->delivery_id, "channel", d->channel, "kind",
                         al_notify_kind_name((al_notify_kind_t)d->kind), "tier",
                         al_tier_name(d->tier), "source", e->source, "attempt", (int)attempt,
                         "folded", (json_int_t)folded, "alerts", alerts);
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

/* The checks before a due row may go: cancelled when a firing kind speaks only about alerts that
 * are no longer firing, skipped while an earlier notification of one of its alerts is being sent
 * on the channel. *go is true when neither applies. */
static int may_send(al_engine_t *e, const dlv_t *d, uint64_t now, bool *go)
{
    int64_t firing = 0;
    bool is_blocked = false;
    int r = 0;

    *go = false;
    if (d->kind != AL_NOTIFY_RESOLVED) {
        r = live_members(e, d->id, d->kind, &firing);
        if (r == 0 && firing == 0)
            return cancel_locked(e, d, "alerts acknowledged or resolved before the send", now);
    }
    if (r == 0)
        r = blocked(e, d, &is_blocked);
    *go = r == 0 && !is_blocked;
    return r;
}

/* Marks d "sending" and fills *out (its channel moves there). Returns 1 or an error. */
static int claim_row(al_engine_t *e, dlv_t *d, uint64_t now, al_delivery_t *out)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_CLAIM);
    int r;

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

/* Claims delivery d into *out (1), or cancels/skips it (0). */
static int claim_one(al_engine_t *e, dlv_t *d, uint64_t now, al_delivery_t *out)
{
    bool go = false;
    int r = may_send(e, d, now, &go);

    return r != 0 || !go ? r : claim_row(e, d, now, out);
}

/* ---- channel rate limits ----
 *
 * A channel with `rate_limit: N/period` has a token bucket here (al_bucket_t): capacity N,
 * refilling continuously at N per period, full at start (memory only: after a restart it starts
 * full again). A claim takes one token per delivery (per notification, not per request: a
 * webhook delivery of n alerts is still n requests). The last `reserve` tokens are kept for P0:
 * P1/P2 may take a token only while more than reserve remain (reserve = ceil(N/4), so at least
 * 1 when N >= 2, and 0 when N == 1); P0 may take any.
 *
 * A due row that gets no token is neither sent nor dropped: it stays pending, its
 * next_attempt_at moves to the time a token will be there for its tier (no attempt counted, so
 * al_outbox_next_due() does not spin) and throttled_at records that it had to wait. When a row
 * of the channel then gets a token, it carries the waiting ones: every other due row of the same
 * channel and kind that is throttled (or every one, when the carrier itself was throttled) is
 * folded into it, in priority order (tier, then age) and as long as the union of their alerts
 * stays within AL_GROUP_MAX: its alerts join the carrier's delivery_alerts, the row ends as
 * 'folded' (folded_into = the carrier), the lineage of its alerts says so, and the carrier takes
 * the most urgent tier among them. Rows whose alerts still wait for an earlier notification on
 * the channel (ordering) are never folded. Until a notification had to wait, every row gets its
 * own message; after, the excess goes out as one message per token ("N more alerts").
 */

static uint64_t rl_reserve(uint64_t tokens)
{
    return tokens <= 1 ? 0 : (tokens + 3) / 4;
}

/* Tokens a row of this tier needs in the bucket before it may take one. */
static uint64_t rl_need(const al_bucket_t *b, int tier)
{
    return tier == GW_TIER_P0 ? 1 : rl_reserve(b->rate.tokens) + 1;
}

static uint64_t rl_capacity(const gw_rate_t *rate)
{
    return rate->tokens * rate->period_ms; /* <= 2^32 * 3.6e6: no overflow */
}

static void rl_refill(al_bucket_t *b, uint64_t now)
{
    uint64_t cap = rl_capacity(&b->rate), elapsed;

    if (now <= b->at) {
        b->at = now; /* the clock went back: no refill, no debt */
        return;
    }
    elapsed = now - b->at;
    b->at = now;
    if (elapsed >= b->rate.period_ms || cap - b->level <= elapsed * b->rate.tokens)
        b->level = cap; /* (the product is only computed for elapsed < period: no overflow) */
    else
        b->level += elapsed * b->rate.tokens;
}

static bool rl_has(const al_bucket_t *b, uint64_t need)
{
    return b->level >= need * b->rate.period_ms;
}

/* When the bucket will hold `need` tokens again (now if it does). */
static uint64_t rl_when(const al_bucket_t *b, uint64_t need, uint64_t now)
{
    uint64_t want = need * b->rate.period_ms;

    if (b->level >= want)
        return now;
    return al_add_ms(now, (want - b->level + b->rate.tokens - 1) / b->rate.tokens);
}

/* Whether channel c (NULL: not configured) has a rate limit. */
static bool rl_limited(const gw_channel_config_t *c)
{
    return c != NULL && c->rate_limit.tokens > 0 && c->rate_limit.period_ms > 0 &&
           strlen(c->name) <= AL_RL_NAME_MAX;
}

/* The bucket of rate-limited channel c, refilled to now. */
static al_bucket_t *rl_bucket(al_engine_t *e, const gw_channel_config_t *c, uint64_t now)
{
    const char *name = c->name;
    al_bucket_t *b = NULL, *victim = NULL;

    for (size_t i = 0; b == NULL && i < AL_RL_BUCKETS; i++)
        if (strcmp(e->buckets[i].channel, name) == 0)
            b = &e->buckets[i];
    if (b != NULL && b->rate.tokens == c->rate_limit.tokens &&
        b->rate.period_ms == c->rate_limit.period_ms) {
        rl_refill(b, now);
        return b;
    }
    if (b == NULL) {
        /* A free entry; else the one closest to full (a full bucket is the same as a new one,
         * so evicting it loses nothing). */
        double best = -1;
        for (size_t i = 0; i < AL_RL_BUCKETS; i++) {
            al_bucket_t *x = &e->buckets[i];
            double fill;
            if (x->channel[0] == '\0') {
                victim = x;
                break;
            }
            rl_refill(x, now);
            fill = (double)x->level / (double)rl_capacity(&x->rate);
            if (fill > best) {
                best = fill;
                victim = x;
            }
        }
        b = victim;
        snprintf(b->channel, sizeof(b->channel), "%s", name);
    }
    /* New, or the rate changed (reload): start full. */
    b->rate = c->rate_limit;
    b->level = rl_capacity(&b->rate);
    b->at = now;
    return b;
}

/* Row d got no token: it waits, due again when its tier can have one. */
static int rl_wait(al_engine_t *e, const dlv_t *d, const al_bucket_t *b, uint64_t now)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_THROTTLE);
    uint64_t until = rl_when(b, rl_need(b, d->tier), now);
    int r;

    if (until <= now)
        until = now + 1; /* cannot happen (it had no token); never leave it due */
    sqlite3_bind_int64(st, 1, d->id);
    al_bind_time(st, 2, until);
    al_bind_time(st, 3, now);
    r = al_stmt_run(st);
    if (r == 0 && d->throttled_at == AL_NEVER) /* once per wait, not at every re-check */
        r = history_members(
            e, d, "delivery",
            json_pack("{s:s, s:s, s:s?, s:s, s:s, s:I}", "delivery_id", d->delivery_id, "channel",
                      d->channel, "kind", al_notify_kind_name((al_notify_kind_t)d->kind), "status",
                      "pending", "reason", "waiting for a token of the channel's rate limit",
                      "next_attempt_ms", (json_int_t)until),
            now);
    return r;
}

/* Folds row y into carrier c (alerts cm[0..*ncm), updated). */
static int rl_fold(al_engine_t *e, dlv_t *c, int64_t *cm, size_t *ncm, const dlv_t *y,
                   const int64_t *ym, size_t nym, uint64_t now)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_FOLD_MEMBERS);
    char reason[96];
    int r;

    sqlite3_bind_int64(st, 1, c->id);
    sqlite3_bind_int64(st, 2, y->id);
    r = al_stmt_run(st);
    if (r == 0) {
        st = al_stmt(e, AL_ST_DLV_FOLD);
        sqlite3_bind_int64(st, 1, y->id);
        sqlite3_bind_int64(st, 2, c->id);
        al_bind_time(st, 3, now);
        r = al_stmt_run(st);
    }
    if (r == 0 && sqlite3_changes(e->conn) == 0)
        r = AL_ESTALE; /* cannot happen: rows are read in this transaction */
    if (r != 0)
        return r;
    snprintf(reason, sizeof(reason), "folded into delivery %s (channel rate limit)",
             c->delivery_id);
    r = history_members(e, y, "delivery",
                        json_pack("{s:s, s:s, s:s?, s:s, s:s, s:s}", "delivery_id", y->delivery_id,
                                  "channel", y->channel, "kind",
                                  al_notify_kind_name((al_notify_kind_t)y->kind), "status",
                                  "folded", "folded_into", c->delivery_id, "reason", reason),
                        now);
    for (size_t i = 0; i < nym; i++) {
        bool have = false;
        for (size_t k = 0; !have && k < *ncm; k++)
            have = cm[k] == ym[i];
        if (!have && *ncm < AL_GROUP_MAX)
            cm[(*ncm)++] = ym[i];
    }
    if (y->tier < c->tier)
        c->tier = y->tier;
    return r;
}

/* Alerts of y that c (cm) does not speak about yet. */
static size_t rl_new_members(const int64_t *cm, size_t ncm, const int64_t *ym, size_t nym)
{
    size_t n = 0;

    for (size_t i = 0; i < nym; i++) {
        bool have = false;
        for (size_t k = 0; !have && k < ncm; k++)
            have = cm[k] == ym[i];
        n += !have;
    }
    return n;
}

/* Row v[i] got a token: fold into it what waits behind it (see above). done[] marks the rows
 * this pass has dealt with. */
static int rl_carry(al_engine_t *e, dlv_t *v, size_t nv, size_t i, bool *done, uint64_t now)
{
    dlv_t *c = &v[i];
    int64_t cm[AL_GROUP_MAX], ym[AL_GROUP_MAX];
    size_t ncm = 0, nym = 0;
    bool congested = c->throttled_at != AL_NEVER;
    int tier = c->tier, r = members(e, c->id, cm, &ncm);

    for (size_t j = i + 1; r == 0 && j < nv; j++) {
        bool go = false;
        if (done[j] || v[j].kind != c->kind || (!congested && v[j].throttled_at == AL_NEVER))
            continue;
        r = members(e, v[j].id, ym, &nym);
        if (r != 0 || ncm + rl_new_members(cm, ncm, ym, nym) > AL_GROUP_MAX)
            continue; /* does not fit: it waits for a token of its own */
        done[j] = true;
        r = may_send(e, &v[j], now, &go);
        if (r == 0 && go)
            r = rl_fold(e, c, cm, &ncm, &v[j], ym, nym, now);
    }
    if (r == 0 && c->tier != tier) {
        sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_SET_TIER);
        sqlite3_bind_int64(st, 1, c->id);
        sqlite3_bind_int(st, 2, c->tier);
        r = al_stmt_run(st);
    }
    return r;
}

#define RL_PASS_MAX 128 /* due rows of one rate-limited channel looked at per claim */

/* Claims what channel `name` (rate-limited, bucket b) may send now, most urgent first. */
static int claim_channel(al_engine_t *e, const char *name, al_bucket_t *b, uint64_t now,
                         al_delivery_t *out, size_t max, size_t *n)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_CHANNEL_DUE);
    dlv_t *v = calloc(RL_PASS_MAX, sizeof(*v));
    bool done[RL_PASS_MAX] = {false};
    size_t nv = 0;
    int rc = SQLITE_DONE, r = v != NULL ? 0 : AL_DB_ENOMEM;

    al_bind_text(st, 1, name);
    al_bind_time(st, 2, now);
    sqlite3_bind_int(st, 3, RL_PASS_MAX);
    while (r == 0 && nv < RL_PASS_MAX && (rc = sqlite3_step(st)) == SQLITE_ROW)
        r = dlv_read(st, &v[nv++]);
    if (r == 0 && nv < RL_PASS_MAX && rc != SQLITE_DONE)
        r = al_db_translate(rc);
    al_stmt_done(st);
    for (size_t i = 0; r == 0 && i < nv && *n < max; i++) {
        bool go = false;
        if (done[i])
            continue;
        done[i] = true;
        r = may_send(e, &v[i], now, &go);
        if (r != 0 || !go)
            continue;
        if (!rl_has(b, rl_need(b, v[i].tier))) {
            r = rl_wait(e, &v[i], b, now);
            continue;
        }
        b->level -= b->rate.period_ms;
        r = rl_carry(e, v, nv, i, done, now);
        if (r == 0)
            r = claim_row(e, &v[i], now, &out[*n]);
        if (r == 1) {
            (*n)++;
            r = 0;
        }
    }
    for (size_t i = 0; i < nv; i++)
        dlv_dispose(&v[i]);
    free(v);
    return r;
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

#define CLAIM_SCANS 4 /* due scans per claim: rows a rate-limited channel put back make room */

static int claim_locked(al_engine_t *e, uint64_t now, al_delivery_t *out, size_t max, size_t *n)
{
    int64_t ids[2 * AL_CLAIM_MAX];
    /* rate-limited channels dealt with in this claim (their rows are claimed together) */
    const gw_channel_config_t *seen[2 * AL_CLAIM_MAX];
    size_t nids = 2 * max, nseen = 0, reaped;
    bool moved = true; /* rows left the due set: a new scan sees others */
    int r = reap_locked(e, now, now, &reaped);

    for (int scan = 0; r == 0 && scan < CLAIM_SCANS && *n < max && nids == 2 * max && moved;
         scan++) {
        moved = false;
        r = due_ids(e, now, 2 * max, ids, &nids);
        for (size_t i = 0; r == 0 && i < nids && *n < max; i++) {
            const gw_channel_config_t *c;
            bool again = false;
            dlv_t d;
            r = dlv_get(e, ids[i], &d);
            if (r != 1)
                continue;
            r = 0;
            c = al_channel_find(e->cfg, d.channel);
            for (size_t k = 0; rl_limited(c) && k < nseen; k++)
                again = again || seen[k] == c;
            if (strcmp(d.status, "pending") != 0 || again ||
                (rl_limited(c) && nseen == sizeof(seen) / sizeof(seen[0]))) {
                /* claimed, folded or put back by its channel's pass (or next claim's) */
            } else if (rl_limited(c)) {
                seen[nseen++] = c;
                moved = true;
                r = claim_channel(e, d.channel, rl_bucket(e, c, now), now, out, max, n);
            } else {
                r = claim_one(e, &d, now, &out[*n]);
                if (r == 1) {
                    (*n)++;
                    moved = true;
                    r = 0;
                }
            }
            dlv_dispose(&d);
        }
    }
    if (r == 0)
        r = al_notes_flush_locked(e, now);
    return r;
}

int al_outbox_claim(al_engine_t *e, uint64_t now_ms, al_delivery_t *out, size_t max, size_t *n)
{
    al_bucket_t *saved;
    int r;

    *n = 0;
    if (e == NULL || out == NULL)
        return AL_DB_EINVAL;
    if (max > AL_CLAIM_MAX)
        max = AL_CLAIM_MAX;
    /* Tokens taken by a claim that rolls back are given back. */
    saved = malloc(sizeof(e->buckets));
    if (saved == NULL)
        return AL_DB_ENOMEM;
    memcpy(saved, e->buckets, sizeof(e->buckets));
    r = al_txn_begin(e);
    if (r == 0) {
        r = claim_locked(e, now_ms, out, max, n);
        if (r == 0)
            r = al_txn_commit(e);
        else
            al_txn_rollback(e);
    }
    if (r != 0) {
        memcpy(e->buckets, saved, sizeof(e->buckets));
        for (size_t i = 0; i < *n; i++)
            al_delivery_dispose(&out[i]);
        *n = 0;
    }
    free(saved);
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
    } else if ((r = live_members(e, row.id, row.kind, &firing)) == 0 && firing > 0) {
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
