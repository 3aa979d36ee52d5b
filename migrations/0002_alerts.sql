-- 0002_alerts.sql: the alert engine's durable state (alerts/engine.c, alerts/outbox.c,
-- alerts/silence.c, alerts/lineage.c; docs/alerts.md describes the model).
--
-- Applied by alerts/db.c inside one transaction together with PRAGMA user_version = 2.
-- Forward-only: never edit this file once released; add 0003_... instead (docs/storage.md).
--
-- Conventions: times are unix milliseconds (INTEGER); tiers are 0 = P0 (most urgent), 1 = P1,
-- 2 = P2; JSON columns are built by the engine with jansson and only their shape is checked here
-- (with trusted_schema=OFF the JSON functions cannot appear in the schema).

-- Silences: label matchers that suppress delivery while starts_at <= now < ends_at.
-- `matchers` is a JSON array of canonical matcher strings, e.g. ["upstream=\"users\""].
-- Expiring a silence early (DELETE /api/v1/silences/{id}) sets ends_at = now and keeps the row
-- for the audit trail until retention removes it.
CREATE TABLE silences (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    matchers    TEXT NOT NULL CHECK (matchers LIKE '[%]'),
    starts_at   INTEGER NOT NULL CHECK (starts_at >= 0),
    ends_at     INTEGER NOT NULL CHECK (ends_at >= starts_at),
    created_at  INTEGER NOT NULL CHECK (created_at >= 0),
    created_by  TEXT NOT NULL,
    comment     TEXT NOT NULL,
    expired_at  INTEGER CHECK (expired_at IS NULL OR expired_at >= 0)
) STRICT;

-- Active-silence loads (WHERE ends_at > now) and retention.
CREATE INDEX silences_ends_at ON silences (ends_at);

-- Alerts. One row per alert instance: a condition that fires again after its alert resolved gets
-- a new row (and a new id); while a row is firing or acknowledged, events with the same
-- dedup_key update it (count, last_seen_at) instead of adding rows (alerts_active_key).
--
-- Timers (all NULL when not scheduled; the engine keeps due_at = the smallest of them):
--   next_escalation_at  firing only: move one tier up (P2 -> P1 -> P0) at this time
--   next_repeat_at      firing only: notify the current tier again at this time
--   notify_at           firing only, with notify_kind: a notification held for group_wait
--   recheck_at          with notify_kind: a suppressed notification to re-check (silence end)
--   hold_until          flap hold-down: resolve at this time unless the condition returns
--   auto_resolve_at     events without a clearing event: resolve when quiet until then
-- notify_kind set means "a notification of this kind is owed" (held for group_wait, or
-- suppressed by a silence or an inhibiting alert and to be sent once that ends).
CREATE TABLE alerts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key           TEXT NOT NULL CHECK (length(dedup_key) BETWEEN 1 AND 8192),
    event               TEXT NOT NULL CHECK (event <> ''),
    source              TEXT NOT NULL CHECK (source IN ('event', 'external', 'engine')),
    tier                INTEGER NOT NULL CHECK (tier BETWEEN 0 AND 2),
    first_tier          INTEGER NOT NULL CHECK (first_tier BETWEEN 0 AND 2),
    status              TEXT NOT NULL CHECK (status IN ('firing', 'acknowledged', 'resolved')),
    labels              TEXT NOT NULL CHECK (labels GLOB '{*}'),
    summary             TEXT NOT NULL,
    started_at          INTEGER NOT NULL CHECK (started_at >= 0),
    updated_at          INTEGER NOT NULL CHECK (updated_at >= 0),
    last_seen_at        INTEGER NOT NULL CHECK (last_seen_at >= 0),
    count               INTEGER NOT NULL CHECK (count >= 1),
    escalation_level    INTEGER NOT NULL DEFAULT 0 CHECK (escalation_level BETWEEN 0 AND 2),
    acked_at            INTEGER,
    acked_by            TEXT,
    resolved_at         INTEGER,
    resolved_by         TEXT,
    next_escalation_at  INTEGER,
    next_repeat_at      INTEGER,
    notify_kind         TEXT CHECK (notify_kind IN ('firing', 'escalated', 'repeat')),
    notify_at           INTEGER,
    recheck_at          INTEGER,
    silenced_by         INTEGER REFERENCES silences (id) ON DELETE SET NULL,
    inhibited_by        INTEGER REFERENCES alerts (id) ON DELETE SET NULL,
    flapping            INTEGER NOT NULL DEFAULT 0 CHECK (flapping IN (0, 1)),
    flap_count          INTEGER NOT NULL DEFAULT 0 CHECK (flap_count >= 0),
    clear_since         INTEGER,
    hold_until          INTEGER,
    auto_resolve_at     INTEGER,
    due_at              INTEGER,
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL)),
    CHECK (status <> 'acknowledged' OR acked_at IS NOT NULL),
    CHECK (status = 'firing' OR (next_escalation_at IS NULL AND next_repeat_at IS NULL
                                 AND notify_kind IS NULL AND notify_at IS NULL)),
    CHECK (status <> 'resolved' OR (due_at IS NULL AND hold_until IS NULL
                                    AND auto_resolve_at IS NULL AND recheck_at IS NULL)),
    CHECK (notify_kind IS NOT NULL OR (notify_at IS NULL AND recheck_at IS NULL)),
    CHECK ((clear_since IS NULL) = (hold_until IS NULL))
) STRICT;

-- Dedup: at most one firing/acknowledged alert per key.
CREATE UNIQUE INDEX alerts_active_key ON alerts (dedup_key) WHERE status <> 'resolved';
-- Flap detection: how often did this key resolve recently?
CREATE INDEX alerts_key_resolved ON alerts (dedup_key, resolved_at) WHERE status = 'resolved';
-- The engine's due-scan (al_engine_tick) and its next deadline.
CREATE INDEX alerts_due ON alerts (due_at) WHERE due_at IS NOT NULL;
-- group_wait: the open batch of a tier (the earliest notify_at still in the future).
CREATE INDEX alerts_group ON alerts (tier, notify_at) WHERE notify_at IS NOT NULL;
-- Retention of resolved alerts.
CREATE INDEX alerts_resolved_at ON alerts (resolved_at) WHERE status = 'resolved';
-- GET /api/v1/alerts?status=...
CREATE INDEX alerts_status ON alerts (status, id);
-- Waking suppressed alerts when a silence is expired or an inhibiting alert resolves; also serve
-- the ON DELETE SET NULL actions.
CREATE INDEX alerts_silenced_by ON alerts (silenced_by) WHERE silenced_by IS NOT NULL;
CREATE INDEX alerts_inhibited_by ON alerts (inhibited_by) WHERE inhibited_by IS NOT NULL;

-- Lineage: an append-only history per alert (GET /api/v1/alerts/{id}). kind names the step;
-- detail is a JSON object with its particulars (event fields, tiers, channels, delivery ids,
-- attempt results, who acknowledged...). Rows go only with their alert (retention).
CREATE TABLE alert_history (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id  INTEGER NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    ts_ms     INTEGER NOT NULL CHECK (ts_ms >= 0),
    kind      TEXT NOT NULL CHECK (kind IN ('raised', 'event', 'flapping', 'escalated', 'grouped',
                                            'notified', 'suppressed', 'delivery', 'cancelled',
                                            'acknowledged', 'cleared', 'resolved')),
    detail    TEXT NOT NULL CHECK (detail GLOB '{*}')
) STRICT;

CREATE INDEX alert_history_alert ON alert_history (alert_id, id);

CREATE TRIGGER alert_history_append_only BEFORE UPDATE ON alert_history
BEGIN
    SELECT RAISE(ABORT, 'alert_history is append-only');
END;

-- The outbox: one row per notification to one channel, written in the same transaction as the
-- state change that caused it. delivery_id (a UUID) is stable across retries and is sent as the
-- Idempotency-Key. Lifecycle (alerts/outbox.c):
--   pending --claim--> sending --ok--> sent
--      ^                  |----retry / ambiguous (P0, P1) / lease expired (P0, P1)--> pending
--      |                  |----permanent, max_attempts, max_age--> failed
--      |                  |----ambiguous (P2), lease expired (P2)--> ambiguous
--   pending|sending --alert acknowledged/resolved before the send--> cancelled
-- next_attempt_at is set exactly while pending, lease_until exactly while sending, finished_at
-- exactly in the final states.
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id      TEXT NOT NULL UNIQUE CHECK (length(delivery_id) = 36),
    channel          TEXT NOT NULL CHECK (channel <> ''),
    kind             TEXT NOT NULL CHECK (kind IN ('firing', 'escalated', 'repeat', 'resolved')),
    tier             INTEGER NOT NULL CHECK (tier BETWEEN 0 AND 2),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed',
                                                     'ambiguous', 'cancelled')),
    created_at       INTEGER NOT NULL CHECK (created_at >= 0),
    expires_at       INTEGER NOT NULL CHECK (expires_at >= created_at),
    next_attempt_at  INTEGER,
    lease_until      INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_attempt_at  INTEGER,
    last_code        INTEGER,
    last_error       TEXT,
    finished_at      INTEGER,
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK ((status = 'sending') = (lease_until IS NOT NULL)),
    CHECK ((status IN ('pending', 'sending')) = (finished_at IS NULL))
) STRICT;

-- The delivery loop's scans: due pending rows, expired leases; retention of finished rows.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE status = 'sending';
CREATE INDEX deliveries_finished ON deliveries (finished_at) WHERE finished_at IS NOT NULL;

-- The alerts one delivery speaks about: one for a single notification, several for a group_wait
-- batch (at most AL_GROUP_MAX).
CREATE TABLE delivery_alerts (
    delivery  INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    alert_id  INTEGER NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    PRIMARY KEY (delivery, alert_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX delivery_alerts_alert ON delivery_alerts (alert_id, delivery);
