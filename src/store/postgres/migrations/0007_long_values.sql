-- Any e-mail length stores (issue #15, item 5): a btree entry is limited to
-- about 2.7 kB, so a 10 kB e-mail failed its whole batch. A hash index holds
-- a 4-byte hash of any value and serves `email = $1`, the only use of it.
DROP INDEX enrollments_by_email;
CREATE INDEX enrollments_by_email ON enrollments USING hash (email);
