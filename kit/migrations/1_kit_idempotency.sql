-- Idempotency records: one per (principal, key), written in the same transaction as the
-- effect it guards. See kit/src/idempotency.rs.
CREATE TABLE idempotency_keys (
    principal     TEXT    NOT NULL,
    idem_key      TEXT    NOT NULL,
    fingerprint   TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('in_flight', 'completed')),
    locked_until  BIGINT  NOT NULL,
    status        BIGINT,
    body          TEXT,
    created_at    BIGINT  NOT NULL,
    PRIMARY KEY (principal, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
