-- 0001_events.sql: the audit trail / event channel, and instance metadata.
--
-- Applied by alerts/db.c inside one transaction together with PRAGMA user_version = 1. Forward-only:
-- never edit this file once released; add 0002_... instead (see docs/storage.md).

-- Key/value facts about this state_dir. Values are text; numbers are written in decimal.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- instance_id: 128 random bits in hex, stable for the life of the state_dir (e.g. the `source`
-- of outgoing notifications can tell two gateways on one host apart).
-- created_at_ms: when this database was created, unix milliseconds.
INSERT INTO meta (key, value) VALUES
    ('instance_id', lower(hex(randomblob(16)))),
    ('created_at_ms', CAST(CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS TEXT));

-- Breaker transitions, worker crashes, reloads, ... (GET /api/v1/events?since=ID).
-- AUTOINCREMENT: ids are never reused, even after retention deletes every row, so a client's
-- `since` cursor never skips new events.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms   INTEGER NOT NULL CHECK (ts_ms >= 0),               -- unix milliseconds
    kind    TEXT NOT NULL CHECK (kind <> ''),                  -- e.g. 'breaker_open'
    worker  INTEGER CHECK (worker IS NULL OR worker >= 0),     -- NULL: the control process
    -- A JSON object, built by the writer (jansson). Only its shape is checked here: SQLite 3.40
    -- does not mark the JSON functions innocuous, so with trusted_schema=OFF they cannot appear
    -- in the schema (CHECK, index, view, trigger). Queries may still use them.
    fields  TEXT NOT NULL CHECK (fields GLOB '{*}')
) STRICT;

-- Time-range queries and retention (DELETE ... WHERE ts_ms < ?).
CREATE INDEX events_ts_ms ON events (ts_ms);
