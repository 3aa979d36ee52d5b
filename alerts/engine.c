/*
 * engine.c - the alert lifecycle: raise, deduplicate, clear, acknowledge, resolve; and the
 * engine's inputs (events, external alerts, the memory queue for store failures).
 *
 * Alert states and who makes each transition:
 *
 *                 raise (event, external alert, engine: delivery_failing)
 *                               |
 *                               v
 *        +------------------ FIRING <-- dedup update (same dedup_key raised again),
 *        |                     |        escalate / repeat / group flush (escalation.c)
 *        | ack (admin API,     |
 *        |      ack link)      | clear event (breaker_closed, host_up, ...), external resolve,
 *        v                     | quiet period or hold-down end (escalation.c), manual resolve
 *   ACKNOWLEDGED -- same ----->|
 *                              v
 *                          RESOLVED  (final; raising the same key again makes a new alert row)
 *
 * Invariants, per state:
 * - FIRING: may have next_escalation_at (its tier escalates and the next tier up is defined),
 *   next_repeat_at (its tier repeats), and an owed notification (notify_kind; notify_at while
 *   held for group_wait, recheck_at while muted by a silence, neither while muted by an
 *   inhibiting alert, which wakes it when it resolves).
 * - ACKNOWLEDGED: no escalation, no repeat, nothing owed, and no pending delivery of a firing kind
 *   whose alerts are all non-firing (cancelled in the ack's own transaction). It may still
 *   hold-down resolve or quiet-resolve, and it still deduplicates new raises (without paging).
 * - RESOLVED: no timer at all (due_at NULL); resolved notifications were queued to every channel
 *   that was (or may have been) notified, unless a silence or inhibition muted them.
 * - At most one FIRING or ACKNOWLEDGED alert per dedup_key (unique partial index).
 * - Flap hold-down: an alert raised while its key has resolved opts.flap_threshold times within
 *   opts.flap_window is flapping: when its condition clears it stays firing (clear_since,
 *   hold_until = clear_since + opts.flap_hold) and resolves only if the condition stays away
 *   until hold_until; its summary ends in "(flapping)" and its lineage says so.
 *
 * Every state change and the outbox rows it causes commit in one BEGIN IMMEDIATE transaction
 * (notify.c collects the notifications, writes them before the COMMIT).
 *
 * Store failures: an event or an external alert that meets busy/full/I/O errors goes to the
 * bounded memory queue (queue.c); while the queue is not empty new inputs queue behind it, and
 * al_engine_tick() (or the next input) retries on a backoff, applying them in arrival order with
 * the time they arrived. Acks, resolves and silences are not queued: the admin API reports the
 * error to the person, who can retry.
 *
 * Callers: the control process, one thread. See alerts.h for the API and docs/alerts.md.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alerts_int.h"

#define QUEUE_MAX_DEFAULT 1024
#define QUEUE_BYTES_DEFAULT (4u * 1024 * 1024)
#define FLAP_THRESHOLD_DEFAULT 3
#define FLAP_WINDOW_DEFAULT (10 * 60 * 1000ULL)
#define FLAP_HOLD_DEFAULT (5 * 60 * 1000ULL)
#define QUIET_RESOLVE_DEFAULT (30 * 60 * 1000ULL)
#define LEASE_DEFAULT (60 * 1000ULL)
#define FAILING_AFTER_DEFAULT 3
#define PRUNE_EVERY_DEFAULT (60 * 1000ULL)
#define QUEUE_FLUSH_BATCH 64
/* Deduplicated events recorded in the lineage: all of the first 100, then every 100th (the
 * alert's count has the exact number). */
#define HISTORY_EVENTS_FULL 100
#define HISTORY_EVENTS_EVERY 100

/* ---- names and errors ---- */

const char *al_strerror(int code)
{
    switch (code) {
#define AL_STRERROR_CASE(name, value, msg)                                                         \
    case AL_##name:                                                                                \
        return msg;
        AL_ERRORS(AL_STRERROR_CASE)
#undef AL_STRERROR_CASE
    case AL_QUEUED:
        return "held in memory until the store recovers";
    default:
        return al_db_strerror(code);
    }
}

const char *al_tier_name(int tier)
{
    static const char *const names[GW_TIER_COUNT] = {"P0", "P1", "P2"};
    return tier >= 0 && tier < GW_TIER_COUNT ? names[tier] : NULL;
}

const char *al_notify_kind_name(al_notify_kind_t k)
{
    static const char *const names[AL_NOTIFY_KIND_COUNT] = {"firing", "escalated", "repeat",
                                                            "resolved", "acknowledged"};
    return (unsigned)k < AL_NOTIFY_KIND_COUNT ? names[k] : NULL;
}

/* ---- lifecycle of the engine ---- */

static void apply_defaults(al_engine_options_t *o)
{
    if (o->queue_max == 0)
        o->queue_max = QUEUE_MAX_DEFAULT;
    if (o->queue_max_bytes == 0)
        o->queue_max_bytes = QUEUE_BYTES_DEFAULT;
    if (o->flap_threshold == 0)
        o->flap_threshold = FLAP_THRESHOLD_DEFAULT;
    if (o->flap_window_ms == 0)
        o->flap_window_ms = FLAP_WINDOW_DEFAULT;
    if (o->flap_hold_ms == 0)
        o->flap_hold_ms = FLAP_HOLD_DEFAULT;
    if (o->quiet_resolve_ms == 0)
        o->quiet_resolve_ms = QUIET_RESOLVE_DEFAULT;
    if (o->lease_ms == 0)
        o->lease_ms = LEASE_DEFAULT;
    if (o->failing_after == 0)
        o->failing_after = FAILING_AFTER_DEFAULT;
    if (o->prune_every_ms == 0)
        o->prune_every_ms = PRUNE_EVERY_DEFAULT;
}

int al_engine_new(al_db_t *db, const gw_alerts_config_t *cfg, const al_engine_options_t *opts,
                  al_engine_t **out)
{
    al_engine_t *e;
    int r;

    if (out == NULL || db == NULL || cfg == NULL)
        return AL_DB_EINVAL;
    *out = NULL;
    e = calloc(1, sizeof(*e));
    if (e == NULL)
        return AL_DB_ENOMEM;
    if (opts != NULL)
        e->opt = *opts;
    apply_defaults(&e->opt);
    e->db = db;
    e->conn = al_db_handle(db);
    e->cfg = cfg;
    e->source = strdup(e->opt.source != NULL ? e->opt.source : "breakwater");
    e->opt.source = e->source;
    r = e->source == NULL ? AL_DB_ENOMEM
                          : al_queue_init(&e->queue, e->opt.queue_max, e->opt.queue_max_bytes);
    if (r == 0)
        r = al_store_prepare(e);
    if (r != 0) {
        al_engine_free(e);
        return r;
    }
    *out = e;
    return 0;
}

void al_engine_free(al_engine_t *e)
{
    if (e == NULL)
        return;
    if (e->in_txn)
        al_txn_rollback(e);
    al_store_finalize(e);
    al_queue_dispose(&e->queue);
    al_silence_cache_dispose(&e->silences);
    free(e->notes);
    free(e->source);
    free(e);
}

void al_engine_set_config(al_engine_t *e, const gw_alerts_config_t *cfg)
{
    if (e != NULL && cfg != NULL)
        e->cfg = cfg;
}

size_t al_engine_queued(const al_engine_t *e)
{
    return e->queue.n;
}

void al_engine_stats(const al_engine_t *e, al_engine_stats_t *out)
{
    out->queued = e->queue.n;
    out->queue_dropped = e->queue.dropped;
    out->queue_applied = e->queue.applied;
    out->last_store_error = e->last_store_error;
}

int al_engine_probe(al_engine_t *e)
{
    int r;

    if (e == NULL)
        return AL_DB_EINVAL;
    r = al_txn_begin(e);
    return r == 0 ? al_txn_commit(e) : r;
}

/* ---- transitions ---- */

int al_resolve_locked(al_engine_t *e, al_alert_t *a, const char *by, const char *reason,
                      uint64_t now)
{
    int cancelled = 0, r;

    a->status = AL_RESOLVED;
    a->resolved_at = now;
    a->updated_at = now;
    if (al_strset(&a->resolved_by, by != NULL ? by : reason) != 0)
        return AL_DB_ENOMEM;
    a->next_escalation_at = a->next_repeat_at = AL_NEVER;
    a->clear_since = a->hold_until = a->auto_resolve_at = AL_NEVER;
    al_clear_owed(a);
    r = al_alert_save(e, a);
    if (r == 0)
        r = al_cancel_pending_locked(e, a->id, now, &cancelled);
    if (r == 0)
        r = al_history_add(e, a->id, now, "resolved",
                           json_pack("{s:s, s:s?, s:i, s:b}", "reason", reason, "by", by,
                                     "cancelled_deliveries", cancelled, "flapping", a->flapping));
    if (r == 0)
        r = al_notify_resolved_locked(e, a, now);
    if (r == 0) {
        /* Alerts this one was muting get their owed notification at the next tick. */
        sqlite3_stmt *st = al_stmt(e, AL_ST_ALERT_WAKE_INHIBITED);
        sqlite3_bind_int64(st, 1, a->id);
        al_bind_time(st, 2, now);
        r = al_stmt_run(st);
    }
    return r;
}

/* Sets the summary, marking a flapping alert so that every channel says so. */
static int set_summary(al_alert_t *a, const char *s)
{
    char buf[AL_SUMMARY_MAX + 32];

    if (s == NULL || s[0] == '\0')
        return a->summary == NULL ? al_strset(&a->summary, a->event) : 0;
    snprintf(buf, sizeof(buf), "%.*s%s", AL_SUMMARY_MAX, s, a->flapping ? " (flapping)" : "");
    return al_strset(&a->summary, buf);
}

typedef struct raise_args {
    const char *event, *source, *key, *summary;
    json_t *labels; /* borrowed */
    int tier;
    bool auto_resolve;
    json_t *detail; /* borrowed: lineage of the raise */
} raise_args_t;

/* The same dedup_key raised again while the alert is firing or acknowledged. */
static int dedup_update(al_engine_t *e, al_alert_t *a, const raise_args_t *ra, uint64_t now)
{
    bool returned = a->clear_since != AL_NEVER;
    int r;

    a->count++;
    a->last_seen_at = now;
    a->updated_at = now;
    if (ra->auto_resolve)
        a->auto_resolve_at = al_add_ms(now, e->opt.quiet_resolve_ms);
    if (returned) { /* a flapping alert's condition came back during its hold-down */
        a->clear_since = a->hold_until = AL_NEVER;
        a->flap_count++;
    }
    r = set_summary(a, ra->summary);
    if (r == 0)
        r = al_alert_save(e, a);
    if (r == 0 &&
        (returned || a->count <= HISTORY_EVENTS_FULL || a->count % HISTORY_EVENTS_EVERY == 0)) {
        json_t *d = json_deep_copy(ra->detail);
        if (d != NULL) {
            json_object_set_new(d, "count", json_integer((json_int_t)a->count));
            if (returned)
                json_object_set_new(d, "returned_during_hold_down", json_true());
        }
        r = al_history_add(e, a->id, now, "event", d);
    }
    return r;
}

/* Creates a new firing alert. */
static int raise_new(al_engine_t *e, al_alert_t *a, const raise_args_t *ra, uint64_t now)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_ALERT_RECENT_RESOLVES);
    uint64_t since = now > e->opt.flap_window_ms ? now - e->opt.flap_window_ms : 0;
    int64_t recent = 0;
    json_t *d;
    int r;

    al_bind_text(st, 1, ra->key);
    al_bind_time(st, 2, since);
    r = al_stmt_int(st, 0, &recent);
    if (r != 0)
        return r;
    memset(a, 0, sizeof(*a));
    a->notify_kind = AL_NOTIFY_NONE;
    a->status = AL_FIRING;
    a->tier = ra->tier;
    a->count = 1;
    a->flapping = recent >= (int64_t)e->opt.flap_threshold;
    a->started_at = a->updated_at = a->last_seen_at = now;
    a->acked_at = a->resolved_at = AL_NEVER;
    a->notify_at = a->recheck_at = a->clear_since = a->hold_until = AL_NEVER;
    a->auto_resolve_at = ra->auto_resolve ? al_add_ms(now, e->opt.quiet_resolve_ms) : AL_NEVER;
    al_schedule(e, a, now, now);
    a->labels = json_dumps(ra->labels, JSON_COMPACT | JSON_SORT_KEYS);
    if (al_strset(&a->dedup_key, ra->key) != 0 || al_strset(&a->event, ra->event) != 0 ||
        al_strset(&a->source, ra->source) != 0 || a->labels == NULL ||
        set_summary(a, ra->summary) != 0)
        return AL_DB_ENOMEM;
    r = al_alert_insert(e, a);
    if (r != 0)
        return r;
    d = json_deep_copy(ra->detail);
    if (d != NULL) {
        json_object_set_new(d, "tier", json_string(al_tier_name(a->tier)));
        json_object_set_new(d, "dedup_key", json_string(a->dedup_key));
    }
    r = al_history_add(e, a->id, now, "raised", d);
    if (r == 0 && a->flapping)
        r = al_history_add(e, a->id, now, "flapping",
                           json_pack("{s:I, s:I, s:I}", "resolves_in_window", (json_int_t)recent,
                                     "window_ms", (json_int_t)e->opt.flap_window_ms, "hold_ms",
                                     (json_int_t)e->opt.flap_hold_ms));
    if (r == 0)
        r = al_notify_locked(e, a, AL_NOTIFY_FIRING, now, true);
    if (r == 0)
        r = al_alert_save(e, a);
    return r;
}

static int raise_locked(al_engine_t *e, const raise_args_t *ra, uint64_t now, int64_t *id,
                        bool *created)
{
    al_alert_t a;
    int r = al_alert_get_active(e, ra->key, &a);

    if (r < 0)
        return r;
    *created = r == 0;
    r = *created ? raise_new(e, &a, ra, now) : dedup_update(e, &a, ra, now);
    if (id != NULL)
        *id = a.id;
    al_alert_dispose(&a);
    return r;
}

/* The condition behind the alert with this key ended. */
static int clear_locked(al_engine_t *e, const char *key, json_t *detail, uint64_t now)
{
    const char *kind = json_string_value(json_object_get(detail, "event"));
    al_alert_t a;
    int r = al_alert_get_active(e, key, &a);

    if (r <= 0)
        return r; /* nothing to clear */
    if (!a.flapping) {
        char reason[64];
        snprintf(reason, sizeof(reason), "%s", kind != NULL ? kind : "cleared");
        r = al_resolve_locked(e, &a, NULL, reason, now);
    } else if (a.clear_since == AL_NEVER) {
        a.clear_since = now;
        a.hold_until = al_add_ms(now, e->opt.flap_hold_ms);
        a.updated_at = now;
        r = al_alert_save(e, &a);
        if (r == 0) {
            json_t *d = json_deep_copy(detail);
            if (d != NULL)
                json_object_set_new(d, "hold_until_ms", json_integer((json_int_t)a.hold_until));
            r = al_history_add(e, a.id, now, "cleared", d);
        }
    }
    al_alert_dispose(&a);
    return r;
}

/* A related event: lineage only, and only when the alert exists. */
static int note_locked(al_engine_t *e, const char *key, json_t *detail, uint64_t now)
{
    al_alert_t a;
    int r = al_alert_get_active(e, key, &a);

    if (r <= 0)
        return r;
    json_incref(detail);
    r = al_history_add(e, a.id, now, "event", detail);
    al_alert_dispose(&a);
    return r;
}

static int apply_intent_locked(al_engine_t *e, const char *kind, int32_t worker, json_t *fields,
                               uint64_t now)
{
    al_intent_t in;
    json_t *detail = NULL;
    char *key = NULL;
    bool created;
    int r = al_rules_map(e->cfg, kind, worker, fields, &in);

    if (r != 0 || in.action == AL_ACT_IGNORE)
        return r;
    key = al_dedup_key(in.event, in.labels, NULL);
    detail = json_pack("{s:s, s:O}", "event", kind, "fields", fields);
    if (key == NULL || detail == NULL) {
        r = AL_DB_ENOMEM;
        goto out;
    }
    if (worker >= 0)
        json_object_set_new(detail, "worker", json_integer(worker));
    if (in.action == AL_ACT_RAISE) {
        raise_args_t ra = {
            .event = in.event,
            .source = strcmp(kind, "delivery_failing") == 0 ? "engine" : "event",
            .key = key,
            .summary = in.summary,
            .labels = in.labels,
            .tier = al_tier_defined(e->cfg, (int)e->cfg->rules[in.rule].tier),
            .auto_resolve = in.auto_resolve,
            .detail = detail,
        };
        r = ra.tier < 0 ? note_locked(e, key, detail, now)
                        : raise_locked(e, &ra, now, NULL, &created);
    } else if (in.action == AL_ACT_CLEAR) {
        r = clear_locked(e, key, detail, now);
    } else {
        r = note_locked(e, key, detail, now);
    }
out:
    json_decref(detail);
    free(key);
    al_intent_dispose(&in);
    return r;
}

int al_engine_internal_locked(al_engine_t *e, const char *kind, json_t *fields, uint64_t now)
{
    return apply_intent_locked(e, kind, -1, fields, now);
}

/* ---- events and external alerts ---- */

static int apply_event(al_engine_t *e, const char *kind, int32_t worker, const char *text,
                       uint64_t now)
{
    json_t *fields;
    int r;

    if (!al_rules_concern(kind))
        return 0; /* reload, reload_failed, ...: the audit trail has them; no transaction */
    fields = text != NULL ? json_loads(text, 0, NULL) : json_object();
    if (!json_is_object(fields)) {
        json_decref(fields);
        return AL_EBADINPUT;
    }
    r = al_txn_begin(e);
    if (r == 0) {
        r = apply_intent_locked(e, kind, worker, fields, now);
        if (r == 0)
            r = al_notes_flush_locked(e, now);
        if (r == 0)
            r = al_txn_commit(e);
        else
            al_txn_rollback(e);
    }
    json_decref(fields);
    return r;
}

static int apply_external(al_engine_t *e, al_ext_alert_t *v, size_t n, uint64_t now,
                          al_external_result_t *res)
{
    int r = al_txn_begin(e);

    if (r != 0)
        return r;
    r = al_external_apply_locked(e, v, n, now, res);
    if (r == 0)
        r = al_notes_flush_locked(e, now);
    if (r == 0)
        return al_txn_commit(e);
    al_txn_rollback(e);
    if (res != NULL)
        memset(res, 0, sizeof(*res));
    return r;
}

static int parse_and_apply_external(al_engine_t *e, const char *body, size_t len, uint64_t now,
                                    al_external_result_t *res, char *err, size_t errlen)
{
    al_ext_alert_t *v = calloc(AL_EXTERNAL_MAX, sizeof(*v));
    size_t n = 0;
    int r;

    if (v == NULL)
        return AL_DB_ENOMEM;
    r = al_external_parse(e->cfg, body, len, v, &n, err, errlen);
    if (r == 0)
        r = apply_external(e, v, n, now, res);
    for (size_t i = 0; i < n; i++)
        al_ext_dispose(&v[i]);
    free(v);
    return r;
}

/* Applies held inputs in order while the store works (at most QUEUE_FLUSH_BATCH per call).
 * Returns 0, or the store error that stopped it (the inputs stay queued). */
int al_queue_flush(al_engine_t *e, uint64_t now)
{
    al_qentry_t *x;

    for (int i = 0; i < QUEUE_FLUSH_BATCH && (x = al_queue_front(&e->queue)) != NULL; i++) {
        int r;
        if (now < e->queue.retry_at)
            return 0;
        if (x->type == AL_Q_EVENT)
            r = apply_event(e, x->kind, x->worker, x->text, x->now_ms);
        else
            r = parse_and_apply_external(e, x->text, x->len, x->now_ms, NULL, NULL, 0);
        if (r < 0 && r != AL_EBADINPUT) { /* the store, or memory: keep it and retry later */
            al_queue_backoff(&e->queue, now);
            return r;
        }
        al_queue_pop(&e->queue);
        if (r == 0)
            e->queue.applied++;
        else
            e->queue.dropped++; /* validated when queued: only a config reload gets here */
        al_queue_recovered(&e->queue);
    }
    return 0;
}

static int hold(al_engine_t *e, al_qtype_t type, const char *kind, int32_t worker, const char *text,
                size_t len, uint64_t now, bool first_failure)
{
    int r = al_queue_push(&e->queue, type, now, worker, kind, text, len);

    if (r != 0)
        return r;
    if (first_failure)
        al_queue_backoff(&e->queue, now);
    else
        (void)al_queue_flush(e, now); /* a failure leaves it queued: reported as AL_QUEUED */
    return e->queue.n > 0 ? AL_QUEUED : 0;
}

/* Whether an event could apply (fields an object, identifying fields present): checked before
 * one is queued, so the queue only holds inputs that fail for lack of a store. */
static int event_valid(const al_engine_t *e, const char *kind, int32_t worker, const char *text)
{
    json_t *fields = json_loads(text, 0, NULL);
    al_intent_t in;
    int r = AL_EBADINPUT;

    if (json_is_object(fields)) {
        r = al_rules_map(e->cfg, kind, worker, fields, &in);
        if (r == 0)
            al_intent_dispose(&in);
    }
    json_decref(fields);
    return r;
}

int al_engine_event(al_engine_t *e, const char *kind, int32_t worker, const char *fields_json,
                    uint64_t now_ms)
{
    const char *text = fields_json != NULL ? fields_json : "{}";
    int r;

    if (e == NULL || kind == NULL)
        return AL_DB_EINVAL;
    if (!al_rules_concern(kind))
        return 0; /* reload, reload_failed, ...: the audit trail has them */
    if (e->queue.n > 0) {
        r = event_valid(e, kind, worker, text);
        return r != 0 ? r : hold(e, AL_Q_EVENT, kind, worker, text, strlen(text), now_ms, false);
    }
    r = apply_event(e, kind, worker, text, now_ms);
    if (al_store_unavailable(r))
        return hold(e, AL_Q_EVENT, kind, worker, text, strlen(text), now_ms, true);
    return r;
}

int al_engine_external(al_engine_t *e, const char *body, size_t len, uint64_t now_ms,
                       al_external_result_t *res, char *err, size_t errlen)
{
    al_ext_alert_t *v;
    size_t n = 0;
    int r;

    if (res != NULL)
        memset(res, 0, sizeof(*res));
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (e == NULL || body == NULL)
        return AL_DB_EINVAL;
    v = calloc(AL_EXTERNAL_MAX, sizeof(*v));
    if (v == NULL)
        return AL_DB_ENOMEM;
    /* Validate first: a bad body is refused at once even while the store is down. */
    r = al_external_parse(e->cfg, body, len, v, &n, err, errlen);
    if (r == 0 && e->queue.n > 0)
        r = hold(e, AL_Q_EXTERNAL, NULL, -1, body, len, now_ms, false);
    else if (r == 0) {
        r = apply_external(e, v, n, now_ms, res);
        if (al_store_unavailable(r))
            r = hold(e, AL_Q_EXTERNAL, NULL, -1, body, len, now_ms, true);
    }
    for (size_t i = 0; i < n; i++)
        al_ext_dispose(&v[i]);
    free(v);
    return r;
}

int al_external_apply_locked(al_engine_t *e, al_ext_alert_t *v, size_t n, uint64_t now,
                             al_external_result_t *res)
{
    int r = 0;

    for (size_t i = 0; r == 0 && i < n; i++) {
        al_ext_alert_t *x = &v[i];
        json_t *detail = json_pack("{s:s, s:O, s:s?}", "source", "external", "labels", x->labels,
                                   "summary", x->summary);
        int64_t id = 0;
        bool created = false;

        if (detail == NULL)
            return AL_DB_ENOMEM;
        if (x->resolved) {
            al_alert_t a;
            r = al_alert_get_active(e, x->dedup_key, &a);
            if (r == 1) {
                id = a.id;
                r = al_resolve_locked(e, &a, "external", "external", now);
                al_alert_dispose(&a);
                if (res != NULL && r == 0)
                    res->resolved++;
            } else if (r == 0 && res != NULL) {
                res->ignored++;
            }
        } else {
            raise_args_t ra = {.event = x->event,
                               .source = "external",
                               .key = x->dedup_key,
                               .summary = x->summary,
                               .labels = x->labels,
                               .tier = x->tier,
                               .auto_resolve = false,
                               .detail = detail};
            r = raise_locked(e, &ra, now, &id, &created);
            if (r == 0 && res != NULL) {
                if (created)
                    res->raised++;
                else
                    res->updated++;
            }
        }
        json_decref(detail);
        if (res != NULL && res->nids < AL_EXTERNAL_MAX)
            res->ids[res->nids++] = id;
    }
    return r;
}

/* ---- acknowledge and resolve ---- */

int al_engine_ack(al_engine_t *e, int64_t id, const char *by, uint64_t now_ms)
{
    al_alert_t a;
    int cancelled = 0, r;

    if (e == NULL)
        return AL_DB_EINVAL;
    r = al_txn_begin(e);
    if (r != 0)
        return r;
    r = al_alert_get(e, id, &a);
    if (r <= 0) {
        al_txn_rollback(e);
        return r == 0 ? AL_ENOENT : r;
    }
    if (a.status != AL_FIRING) {
        r = a.status == AL_RESOLVED ? AL_ESTATE : 0;
        al_alert_dispose(&a);
        al_txn_rollback(e);
        return r;
    }
    a.status = AL_ACKED;
    a.acked_at = now_ms;
    a.updated_at = now_ms;
    a.next_escalation_at = a.next_repeat_at = AL_NEVER;
    al_clear_owed(&a);
    r = al_strset(&a.acked_by, by != NULL ? by : "api");
    if (r == 0)
        r = al_alert_save(e, &a);
    if (r == 0)
        r = al_cancel_pending_locked(e, a.id, now_ms, &cancelled);
    if (r == 0)
        r = al_history_add(
            e, a.id, now_ms, "acknowledged",
            json_pack("{s:s, s:i}", "by", a.acked_by, "cancelled_deliveries", cancelled));
    if (r == 0)
        r = al_notify_acked_locked(e, &a, now_ms);
    al_alert_dispose(&a);
    if (r == 0)
        return al_txn_commit(e);
    al_txn_rollback(e);
    return r;
}

int al_engine_resolve(al_engine_t *e, int64_t id, const char *by, uint64_t now_ms)
{
    al_alert_t a;
    int r;

    if (e == NULL)
        return AL_DB_EINVAL;
    r = al_txn_begin(e);
    if (r != 0)
        return r;
    r = al_alert_get(e, id, &a);
    if (r <= 0 || a.status == AL_RESOLVED) {
        if (r == 1)
            al_alert_dispose(&a);
        al_txn_rollback(e);
        return r == 0 ? AL_ENOENT : r < 0 ? r : 0;
    }
    r = al_resolve_locked(e, &a, by != NULL ? by : "api", "manual", now_ms);
    al_alert_dispose(&a);
    if (r == 0)
        r = al_notes_flush_locked(e, now_ms);
    if (r == 0)
        return al_txn_commit(e);
    al_txn_rollback(e);
    return r;
}
