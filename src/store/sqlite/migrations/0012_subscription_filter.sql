-- A subscription may carry a filter over the event's fields (JSON, see
-- forward/filter.rs); NULL: every event its topics, sources and courses take.
ALTER TABLE subscriptions ADD COLUMN filter TEXT;
