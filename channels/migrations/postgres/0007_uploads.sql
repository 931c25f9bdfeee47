-- Packages uploaded to local sources (kind = "local"): what each local source's sync lists.
-- Kept in step with ../sqlite/0007_uploads.sql.
-- One file per (source, name, version, architecture): uploading that version again must
-- bring the same bytes (then nothing changes); the .deb itself is in the store by sha256.
CREATE TABLE uploads (
    source       TEXT NOT NULL,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    architecture TEXT NOT NULL,
    suite        TEXT NOT NULL,
    component    TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    pool_path    TEXT NOT NULL,
    -- The package's control paragraph, as its Packages entry begins (the sync appends
    -- Filename, Size and SHA256).
    control      TEXT NOT NULL,
    uploaded_by  TEXT NOT NULL,
    uploaded_at  BIGINT NOT NULL,
    PRIMARY KEY (source, name, version, architecture)
);
CREATE INDEX uploads_by_suite ON uploads (source, suite);
-- Two versions differing only in their epoch would share a file name in the pool.
CREATE UNIQUE INDEX uploads_by_pool_path ON uploads (source, pool_path);
