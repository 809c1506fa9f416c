-- The inbox: each event a consumer has handled, recorded in the same transaction as the
-- handler's effect, so a redelivered event changes nothing. See kit/src/events/consumer.rs.
CREATE TABLE inbox (
    consumer      TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    processed_at  BIGINT  NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- Events whose handler kept failing: parked here for an admin to look at and replay, never
-- dropped.
CREATE TABLE dead_letters (
    id           TEXT    PRIMARY KEY,
    consumer     TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    envelope     TEXT    NOT NULL,
    error        TEXT    NOT NULL,
    attempts     BIGINT  NOT NULL,
    parked_at    BIGINT  NOT NULL,
    replayed_at  BIGINT
);
CREATE INDEX dead_letters_open ON dead_letters (parked_at) WHERE replayed_at IS NULL;

-- The embedded bus's log and its consumers' positions (used only in the bus's own database).
CREATE TABLE bus_messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    event_type  TEXT    NOT NULL,
    envelope    TEXT    NOT NULL,
    stored_at   BIGINT  NOT NULL
);
CREATE INDEX bus_messages_type ON bus_messages (event_type, seq);
CREATE TABLE bus_cursors (
    consumer  TEXT    PRIMARY KEY,
    last_seq  BIGINT  NOT NULL
);
