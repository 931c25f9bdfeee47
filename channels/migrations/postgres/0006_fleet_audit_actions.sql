-- The fleet's audited actions; see ../sqlite/0006_fleet_audit_actions.sql.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_action_check
    CHECK (action IN ('sync', 'snapshot', 'promote', 'hold', 'release', 'rollback', 'key',
                          'channel', 'gc', 'host', 'token', 'rule', 'command', 'approve',
                          'decline', 'upload', 'profile', 'refused', 'lease', 'rollout'));
