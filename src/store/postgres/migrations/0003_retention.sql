-- Retention (`--retain-events`): a pruned event keeps its row, so that a
-- redelivery of it is still recognised as a duplicate, but not its body.
ALTER TABLE events ADD COLUMN pruned_at timestamptz;

-- How far (by seq) the log has been pruned: each run starts there.
CREATE TABLE retention (
    id                  int    PRIMARY KEY CHECK (id = 1),
    pruned_through_seq  bigint NOT NULL
);
INSERT INTO retention (id, pruned_through_seq) VALUES (1, 0);
