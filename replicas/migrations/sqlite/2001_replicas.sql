-- The replica feed's tables (replicas/): the numbered feed, replica tokens, replica reports.
-- The same text for both backends: they run one dialect.

-- One row per position of the feed: `seq` rises whenever any channel's publication (or its
-- by-hash grace set, or the signing keys) changes; never reused, never lowered.
CREATE TABLE replica_feed (
    seq            BIGINT PRIMARY KEY,
    published_at   BIGINT NOT NULL,
    content_sha256 TEXT NOT NULL
);

-- Replica tokens: only the sha256 of the secret is kept.
CREATE TABLE replica_tokens (
    name          TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked       BIGINT NOT NULL
);

-- The latest report of each replica (its own, or forwarded by a replica in between).
CREATE TABLE replica_reports (
    name        TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL,
    report      TEXT NOT NULL
);
