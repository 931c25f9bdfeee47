-- Package profiles (fleet/src/profiles.rs): a selector and the packages the hosts it matches
-- must have installed (optionally at a version pattern) or absent; and each host's last
-- compliance report (only its error text is used: compliance is computed from inventories).
-- The same text as ../postgres/1002_profiles.sql: both backends run one dialect.
CREATE TABLE profiles (
    name       TEXT PRIMARY KEY,
    selector   TEXT NOT NULL,
    packages   TEXT NOT NULL,
    priority   BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE profile_reports (
    host_id     TEXT PRIMARY KEY REFERENCES hosts (id),
    rev         TEXT NOT NULL,
    error       TEXT,
    reported_at BIGINT NOT NULL
);
