-- The activity chart (`GET /api/activity`): new enrollments by the day they
-- began on, completions by the day of completed_at, each read as a range of
-- one index (source and course filters are checked inside it).
CREATE INDEX enrollments_enrolled_on
    ON enrollments ((COALESCE(created_at, activated_at, started_at)), source, course_id);
CREATE INDEX enrollments_completed_on
    ON enrollments (completed_at, source, course_id) WHERE completed;
