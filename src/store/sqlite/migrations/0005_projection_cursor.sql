-- The projection (enrollments and the course tables) follows the event log in
-- transactions of its own, a few milliseconds behind (see sqlite_batch.rs).
-- Every event with seq <= projected_through_seq is reflected in it; the rest
-- is applied next, from memory or read back from the log.
CREATE TABLE projection_cursor (
    id                     INTEGER PRIMARY KEY CHECK (id = 1),
    projected_through_seq  INTEGER NOT NULL
);
-- Until now every event was projected in the transaction that stored it.
INSERT INTO projection_cursor (id, projected_through_seq)
SELECT 1, COALESCE(MAX(seq), 0) FROM events;
