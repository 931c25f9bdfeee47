-- Rolling upgrades (fleet/src/rollout/): rollout groups (configured ones are copied in at
-- start-up, origin 'config'), each holder's lease with its fence and state, and the hosts
-- waiting for a slot in the order they first asked.
-- The same text as ../sqlite/1003_rollouts.sql: both backends run one dialect.
CREATE TABLE rollout_groups (
    name                    TEXT PRIMARY KEY,
    selector                TEXT NOT NULL,
    -- '2' or '25%'
    max_concurrent          TEXT NOT NULL,
    failure_budget          BIGINT NOT NULL,
    -- JSON: [{"days", "start", "end", "time_zone"}]
    windows                 TEXT NOT NULL,
    reboot_grace_secs       BIGINT NOT NULL,
    heartbeat_deadline_secs BIGINT NOT NULL,
    expire_stuck            BIGINT NOT NULL,
    paused                  BIGINT NOT NULL,
    -- 'config' or 'api'
    origin                  TEXT NOT NULL,
    created_by              TEXT NOT NULL,
    created_at              BIGINT NOT NULL,
    -- the last fence handed out; fences only grow
    last_fence              BIGINT NOT NULL,
    -- failures and releases since then make up the current wave
    wave_started_at         BIGINT NOT NULL
);

-- One row per (host, run). Slots in use: rows in acquired, updating, rebooting, verifying,
-- failed or stuck. Released rows stay as the wave's history.
CREATE TABLE rollout_leases (
    host_id     TEXT NOT NULL REFERENCES hosts (id),
    run_id      TEXT NOT NULL,
    group_name  TEXT NOT NULL,
    fence       BIGINT NOT NULL,
    state       TEXT NOT NULL,
    step        TEXT NOT NULL,
    detail      TEXT,
    snapshot    TEXT,
    -- JSON: the hooks of the last report that had any (outputs cut short)
    hooks       TEXT NOT NULL,
    acquired_at BIGINT NOT NULL,
    since       BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    failed_at   BIGINT,
    released_at BIGINT,
    -- 'agent', 'expired', 'superseded', or the admin who released the slot
    released_by TEXT,
    PRIMARY KEY (host_id, run_id),
    UNIQUE (group_name, fence)
);
CREATE INDEX rollout_leases_by_group ON rollout_leases (group_name, state);

CREATE TABLE rollout_waiters (
    group_name     TEXT NOT NULL,
    host_id        TEXT NOT NULL REFERENCES hosts (id),
    run_id         TEXT NOT NULL,
    first_asked_at BIGINT NOT NULL,
    last_asked_at  BIGINT NOT NULL,
    PRIMARY KEY (group_name, host_id)
);
