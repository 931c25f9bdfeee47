-- The audit log is append-only: nothing in the application can change or delete an entry.
-- (A migration that rebuilds audit_log — SQLite's way to change a CHECK — drops these triggers
-- with the old table and must create them again.)
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
