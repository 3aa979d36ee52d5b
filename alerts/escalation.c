/*
 * escalation.c - the due-scan: every timer of every alert, run by al_engine_tick().
 *
 * Timers are columns of the alert row (migrations/0002_alerts.sql), and due_at is the earliest of
 * them (store.c keeps it so), so one indexed scan finds everything that is due, after a restart as
 * well as in steady state. A due alert is stepped:
 *
 *   hold_until <= now       flap hold-down over: resolve ("flap_hold_down")
 *   auto_resolve_at <= now  quiet period over (events without a clearing event): resolve ("quiet")
 *   firing only:
 *     owed notification due (group window over, silence ended, inhibitor resolved): send it
 *     next_escalation_at <= now: one tier up (P2 -> P1 -> P0), notify the new tier's channels,
 *       timers restart from the escalation's due time on the new tier
 *     next_repeat_at <= now: notify again (unless this step already notified)
 *
 * Schedules advance from the due time, not from when the tick ran, so a late tick does not drift;
 * after downtime a timer fires once and then resumes at now + interval (never a burst).
 * escalate_after counts from when the alert was first notified: its raise, or its group_wait
 * batch.
 *
 * Bounded work: at most AL_TICK_BATCH alerts per call (then *next = now), retention pruning in
 * batches of AL_PRUNE_BATCH rows at most once per opts.prune_every_ms, and the memory queue's
 * retry (engine.c).
 */
#include <stdlib.h>
#include <string.h>

#include "alerts_int.h"

/* After a failed tick (store busy, full, I/O error) the next one is due this much later. */
#define TICK_RETRY_MS 1000

/* Starts the escalation and repeat timers of the alert's current tier from `base`. */
void al_schedule(const al_engine_t *e, al_alert_t *a, uint64_t base, uint64_t now)
{
    const gw_tier_config_t *tc = al_tier_cfg(e, a->tier);

    a->next_escalation_at = AL_NEVER;
    a->next_repeat_at = AL_NEVER;
    if (tc == NULL)
        return;
    if (tc->escalate_after_ms > 0 && a->tier > 0 && al_tier_cfg(e, a->tier - 1) != NULL)
        a->next_escalation_at = al_next_after(base, tc->escalate_after_ms, now);
    if (tc->repeat_ms > 0)
        a->next_repeat_at = al_next_after(base, tc->repeat_ms, now);
}

/* Moves a firing alert one tier up at its due time. */
static int escalate(al_engine_t *e, al_alert_t *a, uint64_t now)
{
    uint64_t due = a->next_escalation_at;
    int from = a->tier;

    if (from == 0 || al_tier_cfg(e, from - 1) == NULL) {
        a->next_escalation_at = AL_NEVER; /* nothing above (config changed) */
        return 0;
    }
    a->tier = from - 1;
    a->escalation_level++;
    a->updated_at = now;
    al_schedule(e, a, due, now);
    return al_history_add(e, a->id, now, "escalated",
                          json_pack("{s:s, s:s, s:i, s:I}", "from", al_tier_name(from), "to",
                                    al_tier_name(a->tier), "escalation_level", a->escalation_level,
                                    "due_ms", (json_int_t)due));
}

static int step_firing(al_engine_t *e, al_alert_t *a, uint64_t now)
{
    int want = AL_NOTIFY_NONE, r = 0;

    if (a->notify_kind != AL_NOTIFY_NONE && (a->notify_at <= now || a->recheck_at <= now)) {
        want = a->notify_kind; /* owed: group window over, silence ended, inhibitor resolved */
        if (a->notify_at <= now)
            al_schedule(e, a, a->notify_at, now); /* the batch is notified now: timers start */
        al_clear_owed(a);
    }
    if (a->next_escalation_at <= now) {
        int tier = a->tier;
        r = escalate(e, a, now);
        if (r == 0 && a->tier != tier)
            want = AL_NOTIFY_ESCALATED;
    }
    if (r == 0 && a->next_repeat_at <= now) {
        const gw_tier_config_t *tc = al_tier_cfg(e, a->tier);
        a->next_repeat_at = tc != NULL && tc->repeat_ms > 0
                                ? al_next_after(a->next_repeat_at, tc->repeat_ms, now)
                                : AL_NEVER;
        if (al_kind_rank(want) < al_kind_rank(AL_NOTIFY_REPEAT))
            want = AL_NOTIFY_REPEAT;
    }
    if (r == 0 && want != AL_NOTIFY_NONE)
        r = al_notify_locked(e, a, (al_notify_kind_t)want, now, false);
    return r;
}

static int step_alert(al_engine_t *e, al_alert_t *a, uint64_t now)
{
    int r = 0;

    if (a->status != AL_RESOLVED && a->hold_until <= now)
        return al_resolve_locked(e, a, NULL, "flap_hold_down", now);
    if (a->status != AL_RESOLVED && a->auto_resolve_at <= now)
        return al_resolve_locked(e, a, NULL, "quiet", now);
    if (a->status == AL_FIRING)
        r = step_firing(e, a, now);
    else if (a->status == AL_ACKED)
        al_clear_owed(a); /* woken while acknowledged: nothing is owed any more */
    return r == 0 ? al_alert_save(e, a) : r;
}

static int prune_locked(al_engine_t *e, uint64_t now, bool *more)
{
    static const al_stmt_id_t order[] = {AL_ST_ALERT_PRUNE, AL_ST_DLV_PRUNE, AL_ST_SIL_PRUNE};
    uint64_t cutoff;
    int r = 0;

    *more = false;
    if (e->cfg->retention_ms == 0 || now <= e->cfg->retention_ms)
        return 0;
    cutoff = now - e->cfg->retention_ms;
    for (size_t i = 0; r == 0 && i < sizeof(order) / sizeof(order[0]); i++) {
        sqlite3_stmt *st = al_stmt(e, order[i]);
        al_bind_time(st, 1, cutoff);
        sqlite3_bind_int(st, 2, AL_PRUNE_BATCH);
        r = al_stmt_run(st);
        if (r == 0 && sqlite3_changes(e->conn) >= AL_PRUNE_BATCH)
            *more = true;
        if (r == 0 && order[i] == AL_ST_SIL_PRUNE && sqlite3_changes(e->conn) > 0)
            e->silences.valid = false;
    }
    return r;
}

/* Reads up to AL_TICK_BATCH due alerts (copied out, so the scan is finished before any write). */
static int load_due(al_engine_t *e, uint64_t now, al_alert_t *v, size_t *n)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_ALERT_DUE);
    int rc, r = 0;

    *n = 0;
    al_bind_time(st, 1, now);
    sqlite3_bind_int(st, 2, AL_TICK_BATCH);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        r = al_alert_read(st, &v[*n]);
        if (r != 0)
            break;
        (*n)++;
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = al_db_translate(rc);
    al_stmt_done(st);
    return r;
}

static int tick_locked(al_engine_t *e, uint64_t now, bool *more)
{
    al_alert_t *v = calloc(AL_TICK_BATCH, sizeof(*v));
    bool more_prune = false;
    size_t n = 0;
    int r;

    if (v == NULL)
        return AL_DB_ENOMEM;
    r = load_due(e, now, v, &n);
    for (size_t i = 0; r == 0 && i < n; i++)
        r = step_alert(e, &v[i], now);
    if (r == 0)
        r = al_notes_flush_locked(e, now);
    if (r == 0 && now >= e->next_prune_at) {
        r = prune_locked(e, now, &more_prune);
        e->next_prune_at = more_prune ? now : al_add_ms(now, e->opt.prune_every_ms);
    }
    *more = n == AL_TICK_BATCH;
    for (size_t i = 0; i < AL_TICK_BATCH; i++)
        al_alert_dispose(&v[i]);
    free(v);
    return r;
}

int al_engine_tick(al_engine_t *e, uint64_t now_ms, uint64_t *next_ms)
{
    uint64_t next = AL_NEVER;
    int64_t due = -1;
    bool more = false;
    int r, rq;

    if (next_ms != NULL)
        *next_ms = AL_NEVER;
    if (e == NULL)
        return AL_DB_EINVAL;
    rq = al_queue_flush(e, now_ms);
    /* Nothing due and no pruning: no write transaction at all (the common case between timers). */
    r = al_stmt_int(al_stmt(e, AL_ST_ALERT_NEXT_DUE), -1, &due);
    if (r == 0 && (due < 0 || (uint64_t)due > now_ms) && now_ms < e->next_prune_at)
        goto deadline;
    r = r != 0 ? r : al_txn_begin(e);
    if (r == 0) {
        uint64_t prune_before = e->next_prune_at;
        r = tick_locked(e, now_ms, &more);
        if (r == 0)
            r = al_txn_commit(e);
        else
            al_txn_rollback(e);
        if (r != 0)
            e->next_prune_at = prune_before;
    }
    if (r == 0)
        r = al_stmt_int(al_stmt(e, AL_ST_ALERT_NEXT_DUE), -1, &due);
deadline:
    if (r != 0) {
        next = now_ms + TICK_RETRY_MS; /* the store failed: try again soon, not in a loop */
    } else {
        if (due >= 0)
            next = (uint64_t)due;
        if (more)
            next = now_ms; /* a full batch: more is due now */
        if (e->cfg->retention_ms > 0 && e->next_prune_at < next)
            next = e->next_prune_at;
    }
    if (e->queue.n > 0 && e->queue.retry_at < next)
        next = e->queue.retry_at;
    if (next_ms != NULL)
        *next_ms = next;
    return r != 0 ? r : rq;
}

int al_engine_start(al_engine_t *e, uint64_t now_ms)
{
    if (e == NULL)
        return AL_DB_EINVAL;
    /* Every lease taken by a previous process is void: let al_outbox_claim() reap them all now. */
    return al_outbox_reap_all(e, now_ms);
}
