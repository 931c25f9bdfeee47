-- Retention and garbage collection. Kept in step with ../sqlite/0004_retention.sql.

-- A snapshot garbage collection deleted keeps its row (channel history and the audit log name
-- it); its blobs are gone. `used_at`: the last time a channel moved to it or a snapshot was
-- derived from it. Retention counts from the later of that and `created_at`.
ALTER TABLE snapshots ADD COLUMN deleted_at BIGINT;
ALTER TABLE snapshots ADD COLUMN used_at BIGINT NOT NULL DEFAULT 0;
UPDATE snapshots SET used_at = created_at;

-- Set when a package left its origin's index: the time of the last sync that still listed it
-- (a fallback origin's {last_seen}). NULL while upstream lists it.
ALTER TABLE packages ADD COLUMN last_seen BIGINT;

-- Each source's last sync: when it ran (every package it listed was seen then) and the sync
-- snapshot it created or found unchanged.
CREATE TABLE source_syncs (
    source      TEXT PRIMARY KEY,
    synced_at   BIGINT NOT NULL,
    snapshot_id TEXT REFERENCES snapshots (id)
);

-- Packages that left upstream's index while a channel or a retained snapshot references them,
-- and that a sync could not store yet: every sync tries again; `channel verify` and
-- /metrics report them.
CREATE TABLE rescues (
    sha256       TEXT PRIMARY KEY,
    source       TEXT NOT NULL,
    pool_path    TEXT NOT NULL,
    size         BIGINT NOT NULL,
    first_failed BIGINT NOT NULL,
    last_failed  BIGINT NOT NULL,
    attempts     BIGINT NOT NULL,
    error        TEXT NOT NULL
);

-- A past snapshot's publication, re-signed before its Valid-Until (served under
-- /channels/<channel>/snapshots/<id>/): it replaces the one channel_history recorded.
CREATE TABLE snapshot_publications (
    channel            TEXT NOT NULL REFERENCES channels (name),
    snapshot_id        TEXT NOT NULL REFERENCES snapshots (id),
    publication_sha256 TEXT NOT NULL,
    signed_at          BIGINT NOT NULL,
    PRIMARY KEY (channel, snapshot_id)
);

-- Two more audited actions: channel creation and garbage collection.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_action_check
    CHECK (action IN ('sync', 'snapshot', 'promote', 'hold', 'release', 'rollback', 'key',
                      'channel', 'gc'));
