-- The metrics probe counts open (active and held) reservations every few seconds; without this
-- index that is a scan of every reservation ever made.
CREATE INDEX reservations_by_status ON reservations (status);
