-- What retention may still prune, by arrival: each body goes by its own
-- event's age (an import can put old events after recent ones in seq order).
-- Partial, so enrollment events (never pruned) and pruned ones cost nothing.
CREATE INDEX events_prunable ON events (received_at)
    WHERE enrollment_id IS NULL AND pruned_at IS NULL;
