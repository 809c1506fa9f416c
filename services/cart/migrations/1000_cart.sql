-- The cart service's key-value store with expiry (store.rs, `SqlKv`): carts and checkout
-- records, each one JSON document under one key. `version` is what compare-and-set compares;
-- `expires_at` (µs since the epoch) hides a row from every read once passed, and the purge task
-- deletes it later.
CREATE TABLE kv (
    name        TEXT    NOT NULL PRIMARY KEY,
    body        TEXT    NOT NULL,
    version     BIGINT  NOT NULL CHECK (version >= 1),
    expires_at  BIGINT  NOT NULL
);
CREATE INDEX kv_expires ON kv (expires_at);
