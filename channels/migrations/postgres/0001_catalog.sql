-- The catalog: packages known by content, snapshots, and the audit log.
-- Kept in step with ../sqlite/0001_catalog.sql: same tables, columns and meaning.

-- One row per .deb, keyed by its sha256. Snapshot membership is NOT stored per package:
-- a snapshot points at a content-addressed manifest blob listing its index files.
CREATE TABLE packages (
    sha256       TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    architecture TEXT NOT NULL,
    source       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    pool_path    TEXT NOT NULL,
    control      TEXT NOT NULL,
    first_seen   BIGINT NOT NULL
);
CREATE INDEX packages_by_name ON packages (name, architecture);

-- When each (name, version, architecture) was first seen, whatever its bytes: feeds rules
-- such as "promote versions first seen at least 7 days ago".
CREATE TABLE package_versions_seen (
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    architecture TEXT NOT NULL,
    first_seen   BIGINT NOT NULL,
    PRIMARY KEY (name, version, architecture)
);

-- One row per snapshot, however many packages it holds: membership is the manifest blob
-- (content-addressed, in the store) listing the index blobs per suite/component/arch.
CREATE TABLE snapshots (
    id              TEXT PRIMARY KEY,
    name            TEXT UNIQUE,
    created_at      BIGINT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('sync', 'filter', 'merge', 'pull')),
    description     TEXT NOT NULL DEFAULT '',
    manifest_sha256 TEXT NOT NULL,
    -- JSON array of the source names the snapshot was taken from.
    sources         TEXT NOT NULL
);
CREATE INDEX snapshots_by_time ON snapshots (created_at);

CREATE TABLE audit_log (
    id            BIGSERIAL PRIMARY KEY,
    at            BIGINT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL
        CHECK (action IN ('sync', 'snapshot', 'promote', 'hold', 'release', 'rollback', 'key')),
    channel       TEXT,
    from_snapshot TEXT,
    to_snapshot   TEXT,
    comment       TEXT,
    summary       TEXT
);
CREATE INDEX audit_by_channel ON audit_log (channel, at);
CREATE INDEX audit_by_action ON audit_log (action, at);
CREATE INDEX audit_by_time ON audit_log (at);
