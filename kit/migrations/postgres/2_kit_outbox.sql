-- The outbox: events written in the same transaction as the state change they announce, and
-- published afterwards in `seq` order. See kit/src/events.rs.
CREATE TABLE outbox (
    seq           BIGSERIAL PRIMARY KEY,
    event_id      TEXT    NOT NULL UNIQUE,
    event_type    TEXT    NOT NULL,
    aggregate_id  TEXT    NOT NULL,
    envelope      TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    published_at  BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
