-- Channels, their history and holds. Kept in step with ../sqlite/0002_channels.sql.

-- The upstream source a package was recorded from: where a channel fetches its .deb on
-- first demand. A file offered by several sources keeps the first.
ALTER TABLE packages ADD COLUMN origin TEXT NOT NULL DEFAULT '';

-- A channel points at one snapshot and one publication (the content-addressed blob listing
-- its signed Release files). `generation` rises by one with every move, so a move computed
-- from a stale view fails instead of overwriting a concurrent one.
CREATE TABLE channels (
    name               TEXT PRIMARY KEY,
    snapshot_id        TEXT REFERENCES snapshots (id),
    publication_sha256 TEXT,
    generation         BIGINT NOT NULL DEFAULT 0,
    updated_at         BIGINT NOT NULL
);

-- Every position a channel has held, newest generation last: rollback targets, by-hash
-- grace periods and `aptgate channel history`.
CREATE TABLE channel_history (
    channel            TEXT NOT NULL REFERENCES channels (name),
    generation         BIGINT NOT NULL,
    snapshot_id        TEXT NOT NULL REFERENCES snapshots (id),
    publication_sha256 TEXT NOT NULL,
    at                 BIGINT NOT NULL,
    action             TEXT NOT NULL CHECK (action IN ('promote', 'rollback', 'follow', 'resign')),
    actor              TEXT NOT NULL,
    comment            TEXT,
    PRIMARY KEY (channel, generation)
);

-- A held package keeps the channel's current version across promotions until released.
CREATE TABLE holds (
    channel TEXT NOT NULL REFERENCES channels (name),
    package TEXT NOT NULL,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    comment TEXT,
    PRIMARY KEY (channel, package)
);
