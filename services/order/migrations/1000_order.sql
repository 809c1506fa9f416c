-- The order service's tables. States are TEXT with CHECK constraints mirroring
-- `domain::OrderStatus`; money, quantities and times are BIGINT (times in µs since the epoch).

-- The products as the catalog last announced them (product.created/updated/deactivated): the
-- price and seller snapshot an order is priced from. `updated_at` is the announcing event's
-- time, so an older announcement arriving late never overwrites a newer one.
CREATE TABLE products (
    product_id   TEXT    NOT NULL PRIMARY KEY,
    sku          TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    price_cents  BIGINT  NOT NULL CHECK (price_cents >= 0),
    currency     TEXT    NOT NULL CHECK (length(currency) = 3),
    seller_id    TEXT    NOT NULL,
    active       BIGINT  NOT NULL CHECK (active IN (0, 1)),
    updated_at   BIGINT  NOT NULL
);

CREATE TABLE orders (
    id                TEXT    NOT NULL PRIMARY KEY,
    customer_id       TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'PAID', 'PROCESSING',
                                                         'FULFILLED', 'CANCELLED', 'REFUNDED')),
    cancel_reason     TEXT    CHECK (cancel_reason IN ('out_of_stock', 'payment_declined',
                                                       'reservation_expired', 'customer_cancelled',
                                                       'admin_cancelled')),
    total_cents       BIGINT  NOT NULL CHECK (total_cents >= 0),
    currency          TEXT    NOT NULL CHECK (length(currency) = 3),
    payment_method    TEXT    NOT NULL CHECK (length(payment_method) BETWEEN 4 AND 100),
    -- JSON object {name, line1, line2?, city, postal_code, country}, or NULL.
    shipping_address  TEXT,
    -- Whether the stock pre-check answered at creation, or inventory was unreachable and the
    -- saga alone decides.
    stock_check       TEXT    NOT NULL CHECK (stock_check IN ('passed', 'deferred')),
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL CHECK (updated_at >= created_at),
    version           BIGINT  NOT NULL CHECK (version >= 1),
    -- A reason exactly when cancelled.
    CHECK ((status = 'CANCELLED' AND cancel_reason IS NOT NULL)
        OR (status <> 'CANCELLED' AND cancel_reason IS NULL))
);
-- Newest first, per customer and overall (keyset pagination on (created_at, id)).
CREATE INDEX orders_customer_newest ON orders (customer_id, created_at, id);
CREATE INDEX orders_newest ON orders (created_at, id);

CREATE TABLE order_items (
    order_id     TEXT    NOT NULL REFERENCES orders (id),
    line_no      BIGINT  NOT NULL CHECK (line_no >= 1),
    product_id   TEXT    NOT NULL,
    seller_id    TEXT    NOT NULL,
    quantity     BIGINT  NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    price_cents  BIGINT  NOT NULL CHECK (price_cents >= 0),
    name         TEXT    NOT NULL,
    PRIMARY KEY (order_id, product_id),
    UNIQUE (order_id, line_no)
);
-- A seller's orders.
CREATE INDEX order_items_seller ON order_items (seller_id, order_id);

-- Every state an order went through, appended in the transaction that changed it; the first
-- entry is the creation. Folding it with `domain::transition` gives the order's status.
CREATE TABLE order_history (
    order_id     TEXT    NOT NULL REFERENCES orders (id),
    seq          BIGINT  NOT NULL CHECK (seq >= 1),
    event_type   TEXT    NOT NULL,
    from_status  TEXT    CHECK (from_status IN ('PENDING', 'CONFIRMED', 'PAID', 'PROCESSING',
                                                'FULFILLED', 'CANCELLED', 'REFUNDED')),
    to_status    TEXT    NOT NULL CHECK (to_status IN ('PENDING', 'CONFIRMED', 'PAID', 'PROCESSING',
                                                       'FULFILLED', 'CANCELLED', 'REFUNDED')),
    reason       TEXT,
    at           BIGINT  NOT NULL,
    PRIMARY KEY (order_id, seq)
);
