-- 0003_channel_rate_limit.sql: per-channel rate limits with folding (alerts/outbox.c; the model is
-- in docs/alerts.md, "Channel rate limits").
--
-- Applied by alerts/db.c inside one transaction together with PRAGMA user_version = 3, with
-- foreign key enforcement off (so the table can be rebuilt) and a foreign_key_check before the
-- commit. Forward-only: never edit this file once released; add 0004_... instead.
--
-- What changes in `deliveries` (rebuilt the SQLite way, because a CHECK cannot be altered):
--   status 'folded'  a notification that waited for a rate-limit token of its channel and was
--                    carried by another delivery to the same channel (its alerts were added to
--                    that delivery's delivery_alerts): final, never sent on its own
--   folded_into      the carrying delivery (row id), set exactly when status = 'folded' (NULL
--                    again only if retention removed the carrier first)
--   throttled_at     when the row was first refused a token (NULL: never, or claimed since);
--                    a row that had to wait marks its channel as congested: the next token
--                    carries it together with the other waiting notifications of its kind
--                    (only meaningful while pending; a row cancelled while waiting keeps it)
--   kind 'acknowledged'  an acknowledgement sent to incident channels (pagerduty, opsgenie) that
--                    were notified, so the provider stops its own escalation (engine.c, ack)
-- Every other column, value and row id stays as it was.

CREATE TABLE deliveries_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id      TEXT NOT NULL UNIQUE CHECK (length(delivery_id) = 36),
    channel          TEXT NOT NULL CHECK (channel <> ''),
    kind             TEXT NOT NULL CHECK (kind IN ('firing', 'escalated', 'repeat', 'resolved',
                                                   'acknowledged')),
    tier             INTEGER NOT NULL CHECK (tier BETWEEN 0 AND 2),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed',
                                                     'ambiguous', 'cancelled', 'folded')),
    created_at       INTEGER NOT NULL CHECK (created_at >= 0),
    expires_at       INTEGER NOT NULL CHECK (expires_at >= created_at),
    next_attempt_at  INTEGER,
    lease_until      INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_attempt_at  INTEGER,
    last_code        INTEGER,
    last_error       TEXT,
    finished_at      INTEGER,
    folded_into      INTEGER REFERENCES deliveries (id) ON DELETE SET NULL,
    throttled_at     INTEGER CHECK (throttled_at IS NULL OR throttled_at >= 0),
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK ((status = 'sending') = (lease_until IS NOT NULL)),
    CHECK ((status IN ('pending', 'sending')) = (finished_at IS NULL)),
    CHECK (folded_into IS NULL OR status = 'folded')
) STRICT;

INSERT INTO deliveries_new (id, delivery_id, channel, kind, tier, status, created_at, expires_at,
                            next_attempt_at, lease_until, attempts, last_attempt_at, last_code,
                            last_error, finished_at)
    SELECT id, delivery_id, channel, kind, tier, status, created_at, expires_at, next_attempt_at,
           lease_until, attempts, last_attempt_at, last_code, last_error, finished_at
    FROM deliveries;

-- Keep the AUTOINCREMENT counter: retention may have removed the newest rows, and ids must not
-- be reused (the copy above only raised the new counter to the highest remaining id).
UPDATE sqlite_sequence
    SET seq = max(seq, (SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'))
    WHERE name = 'deliveries_new' AND EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'deliveries');
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'deliveries_new', seq FROM sqlite_sequence WHERE name = 'deliveries'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'deliveries_new');

DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;

-- The indexes of 0002 (dropped with the old table), unchanged.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE status = 'sending';
CREATE INDEX deliveries_finished ON deliveries (finished_at) WHERE finished_at IS NOT NULL;
-- A rate-limited channel's waiting notifications, most urgent tier first, then oldest.
CREATE INDEX deliveries_channel_pending ON deliveries (channel, tier, id) WHERE status = 'pending';
-- How many notifications a delivery carries; also serves ON DELETE SET NULL.
CREATE INDEX deliveries_folded_into ON deliveries (folded_into) WHERE folded_into IS NOT NULL;
