-- Per-course totals, kept in step with the enrollments projection inside the
-- same write transaction (see `adjust_course_totals` in sqlite.rs), so that
-- course statistics read a few rows per course instead of scanning every
-- enrollment. `rebuild` re-derives both tables from `enrollments`.
CREATE TABLE course_totals (
    source          TEXT    NOT NULL,
    course_id       INTEGER NOT NULL,
    -- The greatest course name seen (what MAX(course_name) gave).
    name            TEXT,
    enrollments     INTEGER NOT NULL,
    completed       INTEGER NOT NULL,
    -- trial = 1 AND completed = 0; which of them are expired is decided when read.
    open_trials     INTEGER NOT NULL,
    -- SUM(progress) in millionths of a percent: integers, so the total never
    -- drifts however many times it is adjusted.
    progress_micros INTEGER NOT NULL,
    -- Rows with days_to_complete: where the median sits in enrollments_completion_days.
    with_days       INTEGER NOT NULL,
    PRIMARY KEY (source, course_id)
) WITHOUT ROWID;

-- Not-completed enrollments with an expiry date, counted per calendar month of
-- expiry (UTC, 'YYYY-MM'): months before the current one are summed from here;
-- only the current month is counted row by row (enrollments_expiring).
CREATE TABLE course_expiries (
    source      TEXT    NOT NULL,
    course_id   INTEGER NOT NULL,
    month       TEXT    NOT NULL,
    enrollments INTEGER NOT NULL,
    trials      INTEGER NOT NULL,
    PRIMARY KEY (month, source, course_id)
) WITHOUT ROWID;

CREATE INDEX enrollments_expiring ON enrollments (expiry_date, source, course_id, trial)
    WHERE completed = 0 AND expiry_date IS NOT NULL AND course_id IS NOT NULL;

INSERT INTO course_totals (source, course_id, name, enrollments, completed, open_trials,
                           progress_micros, with_days)
SELECT source, course_id, MAX(course_name), COUNT(*), SUM(completed),
       SUM(trial = 1 AND completed = 0), SUM(CAST(ROUND(progress * 1000000) AS INTEGER)),
       COUNT(days_to_complete)
FROM enrollments WHERE course_id IS NOT NULL GROUP BY source, course_id;

INSERT INTO course_expiries (source, course_id, month, enrollments, trials)
SELECT source, course_id, substr(expiry_date, 1, 7), COUNT(*), SUM(trial)
FROM enrollments
WHERE completed = 0 AND expiry_date IS NOT NULL AND course_id IS NOT NULL
GROUP BY source, course_id, substr(expiry_date, 1, 7);
