-- Course statistics and the activity chart without scanning every enrollment
-- (issue #17: `/api/courses` aggregated 250,000 enrollments per request, p99
-- 210 ms). The same tables as SQLite's projection (see there and
-- `store/shared/courses.rs`), kept by each batch in its transaction, one
-- upsert per course, (course, month) and (day, course) it touches. An
-- existing database's rows are derived after this migration, in its
-- transaction (`postgres/migrate.rs`, with `rebuild`'s query).

-- What the statistics sum up, per (source, course). `name` is the greatest
-- course name seen; `progress_micros` SUM(progress) in millionths of a
-- percent (integers: the total never drifts); `with_days` the rows with a
-- days_to_complete (where the median sits in enrollments_completion_days).
CREATE TABLE course_totals (
    source          text COLLATE "C" NOT NULL,
    course_id       bigint NOT NULL,
    name            text COLLATE "C",
    enrollments     bigint NOT NULL,
    completed       bigint NOT NULL,
    -- trial and not completed; which of them are expired is decided when read.
    open_trials     bigint NOT NULL,
    progress_micros bigint NOT NULL,
    with_days       bigint NOT NULL,
    PRIMARY KEY (source, course_id)
);

-- Not-completed enrollments with an expiry date per UTC month of expiry
-- ('YYYY-MM'): past months are summed from here, the current one is counted
-- from enrollments_expiring.
CREATE TABLE course_expiries (
    source      text COLLATE "C" NOT NULL,
    course_id   bigint NOT NULL,
    month       text COLLATE "C" NOT NULL,
    enrollments bigint NOT NULL,
    trials      bigint NOT NULL,
    PRIMARY KEY (source, course_id, month)
);
CREATE INDEX enrollments_expiring ON enrollments (expiry_date, source, course_id, trial)
    WHERE NOT completed AND expiry_date IS NOT NULL AND course_id IS NOT NULL;

-- New enrollments (by the UTC day of COALESCE(created_at, activated_at,
-- started_at)) and completions (by completed_at's) per day ('YYYY-MM-DD'),
-- source and course (0: none). It replaces migration 5's indexes, which a
-- year's chart read one entry per enrollment of.
CREATE TABLE activity_days (
    day       text COLLATE "C" NOT NULL,
    source    text COLLATE "C" NOT NULL,
    course_id bigint NOT NULL,
    enrolled  bigint NOT NULL,
    completed bigint NOT NULL,
    PRIMARY KEY (day, source, course_id)
);
DROP INDEX enrollments_enrolled_on;
DROP INDEX enrollments_completed_on;
