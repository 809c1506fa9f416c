-- Payments: one per order, with the amounts the processor confirmed. `version` is bumped by
-- every change, and every change is made on the version it read, so two writers can never
-- both act on the same picture of a payment (SQLite serializes writers anyway; PostgreSQL
-- needs this).
CREATE TABLE payments (
    id              TEXT    PRIMARY KEY,
    order_id        TEXT    NOT NULL UNIQUE,
    customer_id     TEXT,
    status          TEXT    NOT NULL CHECK (status IN ('PENDING', 'AUTHORIZED', 'CAPTURED',
                        'PARTIALLY_REFUNDED', 'REFUNDED', 'VOIDED', 'FAILED')),
    amount_cents    BIGINT  NOT NULL CHECK (amount_cents > 0),
    captured_cents  BIGINT  NOT NULL DEFAULT 0 CHECK (captured_cents >= 0 AND captured_cents <= amount_cents),
    refunded_cents  BIGINT  NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0 AND refunded_cents <= captured_cents),
    currency        TEXT    NOT NULL CHECK (length(currency) = 3),
    payment_method  TEXT    NOT NULL,
    provider_ref    TEXT,
    failure_reason  TEXT,
    -- Refunds queued so far; numbers each refund's idempotency key.
    refund_seq      BIGINT  NOT NULL DEFAULT 0 CHECK (refund_seq >= 0),
    version         BIGINT  NOT NULL DEFAULT 0,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL
);
CREATE UNIQUE INDEX payments_provider_ref ON payments (provider_ref);
CREATE INDEX payments_customer ON payments (customer_id, id);

-- Calls to the processor still to make. A row is written in the same transaction as the state
-- change that asks for the call, and deleted in the same transaction that records its outcome;
-- the call itself happens in between, outside any transaction, always with the row's key.
CREATE TABLE processor_jobs (
    seq              BIGSERIAL PRIMARY KEY,
    payment_id       TEXT    NOT NULL REFERENCES payments (id),
    kind             TEXT    NOT NULL CHECK (kind IN ('authorize', 'capture', 'void', 'refund')),
    amount_cents     BIGINT  CHECK (amount_cents IS NULL OR amount_cents > 0),
    idempotency_key  TEXT    NOT NULL UNIQUE,
    not_before       BIGINT  NOT NULL,
    -- Authorizations only: when to stop retrying (the reservation's expiry).
    give_up_at       BIGINT,
    attempts         BIGINT  NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- 1 once an attempt failed in a way that may have reached the processor (a timeout): the
    -- call may have taken effect, so it must be asked again (same key) before it is forgotten.
    ambiguous        BIGINT  NOT NULL DEFAULT 0 CHECK (ambiguous IN (0, 1)),
    -- Taken by a worker until then; another may take it over after (the first one died).
    locked_until     BIGINT,
    last_error       TEXT,
    correlation_id   TEXT,
    traceparent      TEXT,
    causation_id     TEXT,
    created_at       BIGINT  NOT NULL
);
CREATE INDEX processor_jobs_due ON processor_jobs (not_before);
CREATE INDEX processor_jobs_payment ON processor_jobs (payment_id, seq);

-- Every call made to the processor, with what came back: the audit trail of the money.
CREATE TABLE payment_transactions (
    id               TEXT    PRIMARY KEY,
    payment_id       TEXT    NOT NULL REFERENCES payments (id),
    kind             TEXT    NOT NULL CHECK (kind IN ('authorize', 'capture', 'void', 'refund')),
    idempotency_key  TEXT    NOT NULL,
    amount_cents     BIGINT  CHECK (amount_cents IS NULL OR amount_cents >= 0),
    attempt          BIGINT  NOT NULL CHECK (attempt >= 0),
    outcome          TEXT    NOT NULL CHECK (outcome IN ('succeeded', 'pending', 'declined',
                         'refused', 'retryable_error', 'gave_up', 'skipped')),
    http_status      BIGINT,
    provider_ref     TEXT,
    summary          TEXT    NOT NULL,
    duration_ms      BIGINT  CHECK (duration_ms IS NULL OR duration_ms >= 0),
    created_at       BIGINT  NOT NULL
);
CREATE INDEX payment_transactions_payment ON payment_transactions (payment_id, created_at);

-- Processor webhook events already handled: a redelivery finds its id here.
CREATE TABLE webhook_events (
    event_id     TEXT    PRIMARY KEY,
    event_type   TEXT    NOT NULL,
    provider_ref TEXT,
    payment_id   TEXT,
    outcome      TEXT    NOT NULL,
    created      BIGINT  NOT NULL,
    received_at  BIGINT  NOT NULL
);

-- Orders known to be cancelled (or whose reservation expired). Kept even when no payment
-- exists yet, so a late inventory.reserved never authorizes a cancelled order.
CREATE TABLE cancelled_orders (
    order_id      TEXT    PRIMARY KEY,
    reason        TEXT    NOT NULL,
    cancelled_at  BIGINT  NOT NULL
);
