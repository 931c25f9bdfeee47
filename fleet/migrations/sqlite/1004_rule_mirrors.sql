-- Assignment rules name replicas: hosts try them in order, then this server (fleet/src/
-- assignment.rs; the agent writes an apt mirror list). A JSON array of base URLs; NULL on rules
-- written before this column existed, whose single `mirror` (kept, and still written as the
-- first mirror for instances that predate this column) is then the list.
-- The same text as ../postgres/1004_rule_mirrors.sql: both backends run one dialect.
ALTER TABLE assignment_rules ADD COLUMN mirrors TEXT;
