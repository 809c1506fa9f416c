-- Products. Never deleted: deactivated (active = 0), because carts and orders keep pointing at
-- them. `name_key` and `search_text` are lower-cased by the service (SQLite's LOWER only knows
-- ASCII), so sorting and search behave the same on both engines.
CREATE TABLE products (
    id           TEXT    NOT NULL PRIMARY KEY,
    sku          TEXT    NOT NULL UNIQUE
                 CHECK (length(sku) BETWEEN 2 AND 40 AND sku NOT GLOB '*[^A-Z0-9-]*'
                        AND substr(sku, 1, 1) <> '-'),
    name         TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    name_key     TEXT    NOT NULL,
    description  TEXT    NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    search_text  TEXT    NOT NULL,
    category     TEXT    NOT NULL
                 CHECK (length(category) BETWEEN 2 AND 48 AND category NOT GLOB '*[^a-z0-9-]*'),
    price_cents  BIGINT  NOT NULL CHECK (price_cents BETWEEN 1 AND 100000000),
    currency     TEXT    NOT NULL CHECK (length(currency) = 3 AND currency NOT GLOB '*[^A-Z]*'),
    seller_id    TEXT    NOT NULL,
    active       BIGINT  NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL CHECK (updated_at >= created_at)
);

-- One index per sort, ending in id: the keyset pagination's (key, id) comparisons and ORDER BY.
CREATE INDEX products_newest ON products (created_at, id);
CREATE INDEX products_price ON products (price_cents, id);
CREATE INDEX products_name ON products (name_key, id);
CREATE INDEX products_category ON products (category, active);
CREATE INDEX products_seller ON products (seller_id);
