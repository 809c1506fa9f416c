-- Stock per product, reservations of orders, and the ledger of every movement.
-- Invariant 1 (ARCHITECTURE.md) is written into the constraints where SQL can say it:
-- quantities are never negative and nothing is reserved beyond what is on hand.

-- One row per catalog product, created from its first product.* event. `product_seen_at` is the
-- time of the newest product event applied, so a late, older event cannot undo a newer one.
CREATE TABLE stock (
    product_id       TEXT    PRIMARY KEY,
    seller_id        TEXT    NOT NULL,
    sku              TEXT    NOT NULL,
    active           BIGINT  NOT NULL CHECK (active IN (0, 1)),
    on_hand          BIGINT  NOT NULL CHECK (on_hand >= 0 AND on_hand <= 1000000000),
    reserved         BIGINT  NOT NULL CHECK (reserved >= 0),
    product_seen_at  BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    CHECK (reserved <= on_hand)
);

-- One row per order. A row without lines is a tombstone: the order was released (cancelled)
-- before it was ever reserved, or its reservation was refused, so a late order.created for it
-- must not reserve anything. `expires_at` is set only while the reservation is active.
CREATE TABLE reservations (
    order_id        TEXT    PRIMARY KEY,
    status          TEXT    NOT NULL CHECK (status IN ('active', 'held', 'committed', 'released')),
    release_reason  TEXT    CHECK (release_reason IN ('cancelled', 'expired', 'rejected')),
    expires_at      BIGINT,
    correlation_id  TEXT,
    traceparent     TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    CHECK ((status = 'active') = (expires_at IS NOT NULL)),
    CHECK ((status = 'released') = (release_reason IS NOT NULL))
);
-- The sweeper's question: which active reservation expires next?
CREATE INDEX reservations_expiry ON reservations (expires_at) WHERE status = 'active';

CREATE TABLE reservation_lines (
    order_id    TEXT    NOT NULL REFERENCES reservations (order_id),
    product_id  TEXT    NOT NULL REFERENCES stock (product_id),
    quantity    BIGINT  NOT NULL CHECK (quantity >= 1),
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX reservation_lines_product ON reservation_lines (product_id);

-- Append-only. Each row is one movement of one product with its deltas and the levels after
-- it, so the ledger alone rebuilds every product's on_hand and reserved.
CREATE TABLE stock_ledger (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id      TEXT    NOT NULL REFERENCES stock (product_id),
    kind            TEXT    NOT NULL CHECK (kind IN ('initial', 'restock', 'adjust', 'reserve', 'release', 'commit')),
    on_hand_delta   BIGINT  NOT NULL,
    reserved_delta  BIGINT  NOT NULL,
    on_hand_after   BIGINT  NOT NULL CHECK (on_hand_after >= 0),
    reserved_after  BIGINT  NOT NULL CHECK (reserved_after >= 0),
    order_id        TEXT,
    actor           TEXT    NOT NULL,
    note            TEXT,
    created_at      BIGINT  NOT NULL
);
CREATE INDEX stock_ledger_product ON stock_ledger (product_id, id);
