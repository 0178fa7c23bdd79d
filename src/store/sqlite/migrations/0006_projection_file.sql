-- The projection (enrollments, course totals and expiries, and how far it got)
-- moves to a database file of its own, `<this file>-projection`, written by a
-- thread of its own (see sqlite_projector.rs): its pages no longer go through
-- this file's WAL, and its transactions never hold up a delivery's commit.
-- It is derived data: the projector re-derives it from the log the first time
-- it opens the new file.
DROP TABLE enrollments;
DROP TABLE course_totals;
DROP TABLE course_expiries;
DROP TABLE projection_cursor;

-- Which event log this is: a projection file records the log it was derived
-- from, so one that belongs to another log (a restored backup, a copied file)
-- is re-derived instead of trusted.
CREATE TABLE log_identity (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    log_id  TEXT    NOT NULL
);
INSERT INTO log_identity (id, log_id) VALUES (1, lower(hex(randomblob(16))));
