-- How far the embedded bus handed out events to a consumer in batches: a batch handed out and
-- never acknowledged is handed out again one event at a time, each delivery counted (see
-- kit/src/events/bus.rs).
ALTER TABLE bus_cursors ADD COLUMN handed_out BIGINT NOT NULL DEFAULT 0;
