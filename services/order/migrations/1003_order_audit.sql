-- The Idempotency-Key an order was placed with (NULL for orders placed before this column): the
-- key's record in `idempotency_keys` is what makes a retried request place no second order;
-- this column lets `mercato audit` prove it held, one order per customer and key. Not UNIQUE on
-- purpose: the audit is the check of the idempotency layer, and must be able to see it fail.
ALTER TABLE orders ADD COLUMN idempotency_key TEXT;
CREATE INDEX orders_customer_key ON orders (customer_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

