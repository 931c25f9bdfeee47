-- Channels created through the API / CLI keep their rules here (JSON, the same fields as a
-- [[channels]] entry in the configuration); NULL for channels defined in the configuration.
ALTER TABLE channels ADD COLUMN rules TEXT;
