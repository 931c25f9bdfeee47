-- The fleet's audited actions (hosts, enrollment tokens, assignment rules, commands, approvals,
-- declines, uploads, profiles, refused agent requests; leases and rollouts for rolling
-- upgrades). Kept in step with ../postgres/0006_fleet_audit_actions.sql. SQLite cannot change
-- a CHECK in place: the table is copied, and the append-only triggers (0005) made again.
CREATE TABLE audit_log_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            BIGINT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL
        CHECK (action IN ('sync', 'snapshot', 'promote', 'hold', 'release', 'rollback', 'key',
                          'channel', 'gc', 'host', 'token', 'rule', 'command', 'approve',
                          'decline', 'upload', 'profile', 'refused', 'lease', 'rollout')),
    channel       TEXT,
    from_snapshot TEXT,
    to_snapshot   TEXT,
    comment       TEXT,
    summary       TEXT
);
INSERT INTO audit_log_new (id, at, actor, action, channel, from_snapshot, to_snapshot, comment,
                           summary)
    SELECT id, at, actor, action, channel, from_snapshot, to_snapshot, comment, summary
    FROM audit_log;
DROP TABLE audit_log;
ALTER TABLE audit_log_new RENAME TO audit_log;
CREATE INDEX audit_by_channel ON audit_log (channel, at);
CREATE INDEX audit_by_action ON audit_log (action, at);
CREATE INDEX audit_by_time ON audit_log (at);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
