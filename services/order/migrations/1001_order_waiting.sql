-- Why an order is waiting in the saga, as the step it waits on last reported (today only the
-- payment's authorization, through `payment.delayed`). Not a state: no status or history
-- changes with it, and it is cleared when the order leaves CONFIRMED. All NULL when nothing
-- was reported. Times in µs since the epoch, like every other time here.
ALTER TABLE orders ADD COLUMN waiting_step TEXT CHECK (waiting_step IN ('payment'));
ALTER TABLE orders ADD COLUMN waiting_reason TEXT CHECK (length(waiting_reason) <= 200);
-- The attempt the report is about: a report of an older attempt never replaces a newer one.
ALTER TABLE orders ADD COLUMN waiting_attempt BIGINT CHECK (waiting_attempt >= 1);
ALTER TABLE orders ADD COLUMN waiting_next_attempt_at BIGINT;
ALTER TABLE orders ADD COLUMN waiting_retry_until BIGINT;
-- The first report of this wait.
ALTER TABLE orders ADD COLUMN waiting_since BIGINT;
