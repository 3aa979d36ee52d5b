/*
 * alerts.h - the alert engine: events and external alerts in, durable alerts and outbox rows out.
 *
 * What it does: turns events from the events channel (breaker_open, host_down, worker_crash, ...)
 * and external alerts (POST /api/v1/alerts) into alerts stored in SQLite, deduplicated by
 * dedup_key; escalates unacknowledged alerts one tier up (P2 -> P1 -> P0) and repeats them; batches
 * alerts raised together on a tier with group_wait; mutes what silences and inhibitions cover;
 * holds flapping alerts firing until they are stable; and writes every notification as an outbox
 * row in the same transaction as the state change that caused it. A sender (the delivery loop,
 * another module) claims due outbox rows, re-checks them, sends them and records each attempt here.
 * docs/alerts.md describes the model; migrations/0002_alerts.sql the tables.
 *
 * Why this shape: alerting systems lose pages across restarts and keep paging after an ack. Here
 * all state is a row (alerts, timers, owed notifications, deliveries), every transition and the
 * notification rows it causes commit in one BEGIN IMMEDIATE transaction, and every timer is a
 * column that al_engine_tick() rescans, so a restart resumes exactly where the engine stopped.
 *
 * Time: every function that needs the time takes `now_ms` (unix milliseconds). The engine never
 * reads a clock, so tests drive it exactly. Randomness (jitter, delivery ids) comes from an
 * injectable source (al_engine_options_t.random).
 *
 * Callers: the gateway's control process only (it owns the database), from one thread, never on a
 * request path: every call may do blocking file I/O. The engine keeps a pointer to the alerts
 * config; the config must outlive the engine or be replaced with al_engine_set_config().
 *
 * Ownership: al_engine_new()/al_engine_free(); strings returned through `char **out` are
 * malloc()ed and freed by the caller with free(); al_delivery_t is filled by al_outbox_claim() and
 * released with al_delivery_dispose().
 *
 * Errors: 0 (or a documented non-negative value) on success, a negative code on failure: the
 * AL_DB_E* codes of db.h for store problems (AL_DB_EBUSY, AL_DB_ENOSPC, AL_DB_EIO, ...) and the
 * AL_E* codes below. al_strerror() names either kind.
 */
#ifndef AL_ALERTS_H
#define AL_ALERTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "db.h"

/* XX(name, value, message). Values are below AL_DB_E*'s range (-4001..-4099). */
#define AL_ERRORS(XX)                                                                              \
    XX(ENOENT, -ENOENT, "no such alert, delivery or silence")                                      \
    XX(ESTATE, -4101, "the alert is resolved")                                                     \
    XX(EBADINPUT, -4102, "the request body is not a valid alert, silence or matcher")              \
    XX(ELIMIT, -4103, "a configured bound was reached")                                            \
    XX(ESTALE, -4104, "the delivery is no longer held by this claim")

enum al_error {
#define AL_ERROR_ENUM(name, value, msg) AL_##name = (value),
    AL_ERRORS(AL_ERROR_ENUM)
#undef AL_ERROR_ENUM
};

/* A positive result of al_engine_event() and al_engine_external(): the store was unavailable
 * (busy, full, I/O error) and the input is held in the bounded memory queue; it is applied, in
 * order, once the store recovers (al_engine_tick() retries). */
#define AL_QUEUED 1

/* The message for an AL_E* or AL_DB_E* code. Never NULL. */
const char *al_strerror(int code);

/* ---- bounds ---- */

#define AL_LABELS_MAX 32         /* labels per alert */
#define AL_LABEL_NAME_MAX 128    /* bytes, [A-Za-z_][A-Za-z0-9_]* */
#define AL_LABEL_VALUE_MAX 1024  /* bytes */
#define AL_SUMMARY_MAX 1024      /* bytes; longer summaries are cut */
#define AL_GROUP_MAX 50          /* alerts in one grouped message */
#define AL_TICK_BATCH 256        /* alerts stepped per al_engine_tick() call */
#define AL_EXTERNAL_MAX 100      /* alerts in one POST /api/v1/alerts body */
#define AL_BODY_MAX (256 * 1024) /* bytes of one external alert or silence body */
#define AL_SILENCES_MAX 1000     /* silences not yet ended */
#define AL_MATCHERS_MAX 16       /* matchers per silence */
#define AL_REGEX_MAX 256         /* bytes of one =~ / !~ pattern */
#define AL_HISTORY_READ_MAX 5000 /* history rows returned by al_alert_json() */
#define AL_CLAIM_MAX 64          /* deliveries per al_outbox_claim() call */

/* ---- tiers ---- */

/* "P0", "P1", "P2" (NULL when out of range). */
const char *al_tier_name(int tier);

/* ---- the engine ---- */

typedef struct al_engine al_engine_t;

/* A random source: returns 64 uniformly random bits. Used for retry jitter and delivery ids. */
typedef uint64_t (*al_random_fn)(void *ctx);

typedef struct al_engine_options {
    al_random_fn random; /* NULL: getrandom()-seeded xorshift */
    void *random_ctx;
    const char *source;        /* "source" of notifications, e.g. "breakwater@host"; copied */
    uint32_t queue_max;        /* memory queue entries (store errors); 0: 1024 */
    size_t queue_max_bytes;    /* memory queue payload bytes; 0: 4 MiB */
    uint32_t flap_threshold;   /* resolves of one key within flap_window that make it flap; 0: 3 */
    uint64_t flap_window_ms;   /* 0: 10 min */
    uint64_t flap_hold_ms;     /* a flapping alert resolves after this long clear; 0: 5 min */
    uint64_t quiet_resolve_ms; /* quiet period that resolves crash-like alerts; 0: 30 min */
    uint64_t lease_ms;         /* how long a claimed delivery belongs to the sender; 0: 60 s */
    uint32_t failing_after;  /* failed attempts before delivery_failing (al_outbox_record); 0: 3 */
    uint64_t prune_every_ms; /* retention pruning period inside al_engine_tick(); 0: 1 min */
} al_engine_options_t;

/* Creates an engine on an open database (schema >= 2) with the alerts config. opts may be NULL
 * (all defaults). Prepares every statement once. Returns 0, AL_DB_EINVAL, AL_DB_ENOMEM or a
 * translated SQLite error. db and cfg must outlive the engine. */
int al_engine_new(al_db_t *db, const gw_alerts_config_t *cfg, const al_engine_options_t *opts,
                  al_engine_t **out);

/* Finalizes the statements and frees the engine (held memory-queue entries are lost: call
 * al_engine_tick() until al_engine_queued() is 0 before a clean shutdown). Accepts NULL. */
void al_engine_free(al_engine_t *e);

/* Replaces the config (SIGHUP reload). Existing alerts keep their tier; new timers, channels and
 * rules follow the new config. Channels are stored by name, so a removed channel makes its pending
 * deliveries fail as permanent at send time (the sender reports that). */
void al_engine_set_config(al_engine_t *e, const gw_alerts_config_t *cfg);

/* Call once after opening, before the delivery loop starts: deliveries left "sending" by a
 * previous process are in an unknown state; each is recorded as an ambiguous attempt (retried for
 * P0/P1, closed as "ambiguous" for P2). Returns 0 or a store error. */
int al_engine_start(al_engine_t *e, uint64_t now_ms);

/* Applies one event from the events channel: kind (e.g. "breaker_open"), worker (-1: none),
 * fields_json (a JSON object text; NULL means {}). The mapping is in docs/alerts.md: raising
 * events create or update an alert, clearing events resolve it, related events are appended to
 * the lineage of an existing alert, other events are ignored.
 * Returns 0 (applied or ignored), AL_QUEUED (store unavailable: held in memory), AL_ELIMIT (store
 * unavailable and the memory queue is full: the event is dropped and counted), or a negative error
 * for an event that can never apply (AL_EBADINPUT: fields not a JSON object, or without the
 * fields that identify its alert, e.g. host_down without "host"). */
int al_engine_event(al_engine_t *e, const char *kind, int32_t worker, const char *fields_json,
                    uint64_t now_ms);

/* The result of al_engine_external(). */
typedef struct al_external_result {
    size_t raised;                /* new alerts */
    size_t updated;               /* deduplicated into a firing/acknowledged alert */
    size_t resolved;              /* resolved by the body */
    size_t ignored;               /* resolved entries without an active alert */
    int64_t ids[AL_EXTERNAL_MAX]; /* the alert id of each entry (0 when ignored) */
    size_t nids;
} al_external_result_t;

/* Applies a POST /api/v1/alerts body: the generic shape
 *   {"summary": "...", "tier": "P1", "labels": {...}, "dedup_key": "...", "status": "resolved"}
 * (tier, dedup_key and status optional) or an Alertmanager webhook v4 body
 *   {"version": "4", "alerts": [{"status", "labels", "annotations", ...}, ...]}.
 * All entries commit in one transaction. res may be NULL. On AL_EBADINPUT err says why.
 * Returns 0, AL_QUEUED (store unavailable: held in memory, res empty), AL_ELIMIT (queue full),
 * AL_EBADINPUT, or a store error. */
int al_engine_external(al_engine_t *e, const char *body, size_t len, uint64_t now_ms,
                       al_external_result_t *res, char *err, size_t errlen);

/* Acknowledges a firing alert: stops its escalation and repeats, drops a notification it owes and
 * cancels its pending deliveries, all in one transaction. `by` names who (may be NULL).
 * Returns 0 (also when it was already acknowledged), AL_ENOENT, AL_ESTATE (resolved), or a store
 * error. */
int al_engine_ack(al_engine_t *e, int64_t id, const char *by, uint64_t now_ms);

/* Resolves a firing or acknowledged alert by hand: cancels pending notifications and queues a
 * resolved notification to every channel that was notified. Returns 0 (also when already
 * resolved), AL_ENOENT or a store error. */
int al_engine_resolve(al_engine_t *e, int64_t id, const char *by, uint64_t now_ms);

/* Runs everything that is due at now_ms: escalations, repeats, group_wait batches, owed
 * notifications whose silence/inhibition ended, flap hold-downs, quiet auto-resolves, retention
 * pruning, and the memory queue's retry. Bounded work per call (AL_TICK_BATCH alerts); no write
 * transaction when nothing is due. Sets *next_ms (may be NULL) to when it should run again:
 * UINT64_MAX when nothing is scheduled, now_ms when a batch was full, now_ms + 1 s after a store
 * error. The delivery loop has its own deadline: al_outbox_next_due(). Returns 0 or a store error
 * (nothing was changed; the work is retried at the next call). */
int al_engine_tick(al_engine_t *e, uint64_t now_ms, uint64_t *next_ms);

/* Counters for /metrics and the admin API. */
typedef struct al_engine_stats {
    size_t queued;          /* inputs held in memory (store unavailable) */
    uint64_t queue_dropped; /* inputs dropped because the memory queue was full */
    uint64_t queue_applied; /* inputs applied late from the memory queue */
    int last_store_error;   /* the last store error seen (0: none since the last success) */
} al_engine_stats_t;

void al_engine_stats(const al_engine_t *e, al_engine_stats_t *out);

/* True for the store errors that mean "the store is unavailable, hold inputs in memory": busy,
 * full, I/O, and corrupt (SQLite 3.40 reports a failed read as SQLITE_CORRUPT). */
bool al_store_unavailable(int code);

/* An empty write transaction: clears last_store_error when the store takes one again (for a
 * caller that must tell "recovered" while nothing is held and nothing else writes). 0 or the
 * store error. */
int al_engine_probe(al_engine_t *e);

/* Inputs currently held in the memory queue. */
size_t al_engine_queued(const al_engine_t *e);

/* ---- reads for the admin API (GET /api/v1/alerts, GET /api/v1/alerts/{id}) ---- */

/* {"alerts": [alert, ...]} newest first; status NULL: any, else "firing", "acknowledged",
 * "resolved" (anything else: AL_EBADINPUT). limit 0: 100, at most 1000. */
int al_alerts_json(al_engine_t *e, const char *status, uint32_t limit, char **out);

/* {"alert": {...}, "deliveries": [...], "history": [...], "history_truncated": bool}: the alert
 * with every delivery that speaks about it and its lineage, oldest first. AL_ENOENT if unknown. */
int al_alert_json(al_engine_t *e, int64_t id, char **out);

/* ---- alert counts for /metrics (breakwater_alerts_firing{tier}) ---- */

/* The alerts not resolved, by their current tier (index: gw_tier_t): firing[t] the ones firing
 * and not acknowledged, acked[t] the acknowledged ones. One read through the status index (only
 * unresolved rows are visited), outside any transaction. Returns 0 with both arrays filled, or a
 * store error with both left as they were (the caller keeps showing its last known values). */
int al_alerts_count_active(al_engine_t *e, uint64_t firing[GW_TIER_COUNT],
                           uint64_t acked[GW_TIER_COUNT]);

/* ---- silences (GET|POST /api/v1/silences, DELETE /api/v1/silences/{id}) ---- */

typedef struct al_matchers al_matchers_t;

/* One label of an alert, for matching. */
typedef struct al_label {
    const char *name, *value;
} al_label_t;

/* Parses matcher texts: NAME="value" (equal), NAME!="value", NAME=~"regex", NAME!~"regex".
 * Values are double-quoted with \" \\ \n escapes; the quotes may be left out when the value has
 * no spaces, quotes, commas or braces. Regexes are POSIX extended, anchored at both ends, at most
 * AL_REGEX_MAX bytes. At most AL_MATCHERS_MAX matchers; at least one; and at least one that does
 * not match the empty string (a silence must not match everything by accident).
 * Returns 0 and *out, or AL_EBADINPUT with the reason in err, or AL_DB_ENOMEM. */
int al_matchers_parse(const char *const *texts, size_t n, al_matchers_t **out, char *err,
                      size_t errlen);

/* True when every matcher holds for the labels (a missing label reads as ""). */
bool al_matchers_match(const al_matchers_t *m, const al_label_t *labels, size_t n);

/* The canonical text of matcher i (NAME="value" with escapes), or NULL past the end. */
const char *al_matchers_text(const al_matchers_t *m, size_t i);
size_t al_matchers_count(const al_matchers_t *m);

void al_matchers_free(al_matchers_t *m); /* accepts NULL */

/* A silence to create. matchers as al_matchers_parse() takes them. */
typedef struct al_silence_spec {
    const char *const *matchers;
    size_t nmatchers;
    uint64_t starts_at_ms; /* 0: now */
    uint64_t ends_at_ms;   /* must be > now and > starts_at */
    const char *created_by;
    const char *comment;
} al_silence_spec_t;

/* Creates a silence. It applies to notifications made from now on (an alert already notified is
 * not re-notified; its later escalations, repeats and resolve are muted while it lasts).
 * Returns 0 with *id, AL_EBADINPUT (err says why), AL_ELIMIT (AL_SILENCES_MAX reached) or a store
 * error. */
int al_silence_create(al_engine_t *e, const al_silence_spec_t *spec, uint64_t now_ms, int64_t *id,
                      char *err, size_t errlen);

/* The same from a POST /api/v1/silences body:
 *   {"matchers": ["upstream=\"users\"", ...] or [{"name","value","isRegex","isEqual"}, ...],
 *    "starts_at" | "startsAt": RFC 3339 or unix ms (optional), "ends_at" | "endsAt": RFC 3339 or
 *    unix ms, or "duration": "2h" (one of the two), "created_by" | "createdBy", "comment"} */
int al_silence_create_json(al_engine_t *e, const char *body, size_t len, uint64_t now_ms,
                           int64_t *id, char *err, size_t errlen);

/* Expires a silence now (DELETE). Alerts whose notification it was holding are re-checked at the
 * next al_engine_tick(). Returns 0 (also when already ended), AL_ENOENT or a store error. */
int al_silence_expire(al_engine_t *e, int64_t id, uint64_t now_ms);

/* {"silences": [{id, matchers, starts_at, ends_at, created_by, comment, state}, ...]} newest
 * first, at most 1000; state is "pending", "active" or "expired". Expired ones only when
 * include_expired. */
int al_silences_json(al_engine_t *e, uint64_t now_ms, bool include_expired, char **out);

/* ---- the outbox, for the sender (delivery loop) ---- */

typedef enum al_notify_kind {
    AL_NOTIFY_FIRING = 0,   /* first notification (or owed one sent after a silence/inhibition) */
    AL_NOTIFY_ESCALATED,    /* moved one tier up, sent to the new tier's channels */
    AL_NOTIFY_REPEAT,       /* repeat of an unacknowledged alert */
    AL_NOTIFY_RESOLVED,     /* to every channel that was notified */
    AL_NOTIFY_ACKNOWLEDGED, /* to incident channels (pagerduty, opsgenie) that were notified */
    AL_NOTIFY_KIND_COUNT
} al_notify_kind_t;

const char *al_notify_kind_name(al_notify_kind_t k); /* "firing", ...; NULL out of range */

/* One claimed delivery. The sender owns it until al_outbox_record() (or until the lease ends). */
typedef struct al_delivery {
    int64_t id;           /* row id; pass the whole struct back */
    char delivery_id[37]; /* UUID; send it as Idempotency-Key */
    char *channel;        /* channel name (look it up in the current config) */
    al_notify_kind_t kind;
    int tier;                /* tier of the notification (channels were chosen from it) */
    uint32_t attempt;        /* 1 for the first attempt */
    uint64_t created_at_ms;  /* when the notification was written */
    uint64_t expires_at_ms;  /* created_at + delivery.max_age */
    uint64_t lease_until_ms; /* record before this, or the row is reclaimed */
    /* {"version":"1","delivery_id","channel","kind","tier","source","attempt","folded",
     *  "alerts":[{alert_id, dedup_key, tier, status, event, labels, summary, started_at,
     *  escalation_level, count, flapping, source, ...}, ...]}: the alerts as they were at claim
     *  time (firing members only, except for resolved notifications); "folded": how many
     *  notifications that waited for a rate-limit token this one carries (0: none). */
    char *payload_json;
} al_delivery_t;

void al_delivery_dispose(al_delivery_t *d); /* frees the strings; accepts NULL */

/* Claims up to max (<= AL_CLAIM_MAX) deliveries due at now_ms, oldest first, marking them
 * "sending" with a lease of opts.lease_ms. First records expired leases as ambiguous attempts and
 * cancels due deliveries whose alerts are no longer firing. A later notification for an alert and
 * channel waits while an earlier one is still being sent (per alert and channel order). On a
 * channel with `rate_limit`, each claimed delivery takes a token (P1/P2 leave the P0 reserve);
 * a due delivery without a token stays pending until a token is due (no attempt counted), and
 * the next token carries all that waited, of its kind, as one delivery (the others end
 * "folded"; docs/alerts.md, "Channel rate limits").
 * Returns 0 and *n (0..max), or a store error (*n = 0). */
int al_outbox_claim(al_engine_t *e, uint64_t now_ms, al_delivery_t *out, size_t max, size_t *n);

/* Re-checks a claimed delivery just before sending (for example after waiting for a channel
 * rate-limit token): 1 = send it; 0 = do not send: its alerts were acknowledged or resolved
 * meanwhile (the row is now "cancelled") or the claim is stale. Negative: store error (do not
 * send; the lease will expire and the attempt counts as ambiguous). */
int al_outbox_check(al_engine_t *e, const al_delivery_t *d, uint64_t now_ms);

typedef enum al_send_result {
    AL_SEND_OK = 0,    /* 2xx and the channel's own success field */
    AL_SEND_RETRY,     /* not delivered, may succeed later (connect refused, 5xx, 429, 408) */
    AL_SEND_PERMANENT, /* will never succeed (4xx, unknown channel, channel error code) */
    AL_SEND_AMBIGUOUS, /* may or may not have been delivered (timeout or reset after sending) */
} al_send_result_t;

typedef struct al_attempt {
    al_send_result_t result;
    int http_status;         /* 0: none (no response) */
    uint64_t retry_after_ms; /* a Retry-After the channel sent (0: none) */
    const char *error;       /* short description for the lineage (may be NULL) */
} al_attempt_t;

/* Records the result of attempt d->attempt, in one transaction with the lineage of every alert it
 * speaks about: OK -> sent (resolves delivery_failing for the channel); RETRY -> pending again
 * after al_outbox_backoff_ms() (at least retry_after_ms) unless max_attempts or max_age is reached
 * (-> failed); AMBIGUOUS -> as RETRY for P0/P1, "ambiguous" (final) for P2; PERMANENT -> failed.
 * delivery_failing is raised for the channel by every final failure, and by a failed attempt
 * once the delivery has been undelivered for its tier's window (escalate_after, else repeat,
 * else 5 min) and at least opts.failing_after attempts failed. Returns 0, AL_ESTALE (the claim
 * is no longer valid: nothing recorded), AL_ENOENT or a store error (the lease will expire and
 * the attempt counts as ambiguous). */
int al_outbox_record(al_engine_t *e, const al_delivery_t *d, const al_attempt_t *a,
                     uint64_t now_ms);

/* When the delivery loop should next call al_outbox_claim(): the earliest pending
 * next_attempt_at or sending lease end (UINT64_MAX when none). Returns 0 or a store error. */
int al_outbox_next_due(al_engine_t *e, uint64_t *next_ms);

/* Deliveries pending or being sent (breakwater_alert_queue_depth). */
int al_outbox_depth(al_engine_t *e, uint64_t *depth);

/* The retry delay after failed attempt `attempt` (1-based): base = min(max_backoff,
 * backoff * 2^(attempt-1)); the delay is uniform in [base/2, base] drawn from rnd ("equal
 * jitter"). Pure; exposed for tests and docs. */
uint64_t al_outbox_backoff_ms(const gw_delivery_config_t *dc, uint32_t attempt, uint64_t rnd);

#endif
