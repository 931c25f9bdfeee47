-- The fleet's tables (fleet/): enrollment tokens, hosts and their labels, assignment rules,
-- inventories (stored once per digest), agent request nonces, commands, declines.
-- The same text as ../postgres/1001_fleet.sql: both backends run one dialect.
CREATE TABLE enrollment_tokens (
    id              TEXT PRIMARY KEY,
    secret_sha256   TEXT NOT NULL UNIQUE,
    labels          TEXT NOT NULL,
    uses_left       BIGINT,
    expires_at      BIGINT,
    manual_approval BIGINT NOT NULL,
    comment         TEXT,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    revoked         BIGINT NOT NULL
);

CREATE TABLE inventories (
    digest      TEXT PRIMARY KEY,
    packages    BIGINT NOT NULL,
    gzip_json   BLOB NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE hosts (
    id                  TEXT PRIMARY KEY,
    public_key          TEXT NOT NULL,
    machine_id_sha256   TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('active', 'pending', 'revoked')),
    flagged             TEXT,
    facts               TEXT NOT NULL,
    agent_version       TEXT NOT NULL,
    token_id            TEXT,
    enrolled_at         BIGINT NOT NULL,
    last_seen           BIGINT NOT NULL,
    rev                 BIGINT NOT NULL,
    rev_at              BIGINT NOT NULL,
    inventory_digest    TEXT REFERENCES inventories (digest),
    applied_sources_rev TEXT,
    lists               TEXT NOT NULL,
    reboot              TEXT NOT NULL
);
CREATE INDEX hosts_by_key ON hosts (public_key);
CREATE INDEX hosts_by_rev_at ON hosts (rev_at);

CREATE TABLE host_labels (
    host_id TEXT NOT NULL REFERENCES hosts (id),
    key     TEXT NOT NULL,
    origin  TEXT NOT NULL CHECK (origin IN ('agent', 'admin')),
    value   TEXT NOT NULL,
    PRIMARY KEY (host_id, key, origin)
);

CREATE TABLE assignment_rules (
    name                  TEXT PRIMARY KEY,
    selector              TEXT NOT NULL,
    channel               TEXT NOT NULL,
    mirror                TEXT,
    priority              BIGINT NOT NULL,
    disable_other_sources BIGINT NOT NULL,
    created_by            TEXT NOT NULL,
    created_at            BIGINT NOT NULL
);

CREATE TABLE agent_nonces (
    key_id     TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
CREATE INDEX agent_nonces_by_expiry ON agent_nonces (expires_at);

CREATE TABLE commands (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id     TEXT NOT NULL REFERENCES hosts (id),
    kind        TEXT NOT NULL,
    packages    TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'done', 'failed')),
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    sent_at     BIGINT,
    exit_code   BIGINT,
    output      TEXT,
    finished_at BIGINT
);
CREATE INDEX commands_by_host ON commands (host_id, status);

CREATE TABLE declines (
    channel      TEXT NOT NULL,
    name         TEXT NOT NULL,
    architecture TEXT NOT NULL,
    version      TEXT NOT NULL,
    actor        TEXT NOT NULL,
    comment      TEXT,
    at           BIGINT NOT NULL,
    PRIMARY KEY (channel, name, architecture, version)
);
