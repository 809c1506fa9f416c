-- What the payment service has heard of each order, from the order's own events: its terms
-- (order.created, or inventory.reserved when that arrives first) and whether it was fulfilled
-- or refunded (cancellations are in cancelled_orders). A payment over HTTP is only opened for
-- an order known here, on its terms; a capture, void or refund over HTTP only repeats what the
-- order's life already decided (see domain::direct_request).
CREATE TABLE order_facts (
    order_id      TEXT    PRIMARY KEY,
    customer_id   TEXT,
    amount_cents  BIGINT  CHECK (amount_cents IS NULL OR amount_cents > 0),
    currency      TEXT    CHECK (currency IS NULL OR length(currency) = 3),
    fulfilled_at  BIGINT,
    refunded_at   BIGINT,
    recorded_at   BIGINT  NOT NULL
);
