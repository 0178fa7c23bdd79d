-- The projection file (`<database>-projection`): everything here is derived
-- from the event log and is re-derived from it whenever this schema changes
-- (PRAGMA user_version), the file is missing, or it belongs to another log.

-- One row per (source, enrollment_id).
CREATE TABLE enrollments (
    source            TEXT    NOT NULL,
    enrollment_id     INTEGER NOT NULL,
    user_id           INTEGER,
    email             TEXT,
    first_name        TEXT,
    last_name         TEXT,
    course_id         INTEGER,
    course_name       TEXT,
    progress          REAL    NOT NULL,
    trial             INTEGER NOT NULL,
    completed         INTEGER NOT NULL,
    activated_at      TEXT,
    started_at        TEXT,
    completed_at      TEXT,
    expiry_date       TEXT,
    created_at        TEXT,
    updated_at        TEXT,
    days_to_complete  REAL,
    event_count       INTEGER NOT NULL,
    v_updated_at      TEXT,
    v_created_at      TEXT,
    v_event_id        TEXT    NOT NULL,
    PRIMARY KEY (source, enrollment_id)
) WITHOUT ROWID;
CREATE INDEX enrollments_by_course ON enrollments (course_id, source, enrollment_id);
CREATE INDEX enrollments_by_user ON enrollments (user_id);
CREATE INDEX enrollments_by_email ON enrollments (email);
CREATE INDEX enrollments_by_updated ON enrollments (updated_at);
CREATE INDEX enrollments_completion_days ON enrollments (source, course_id, days_to_complete)
    WHERE days_to_complete IS NOT NULL;
CREATE INDEX enrollments_expiring ON enrollments (expiry_date, source, course_id, trial)
    WHERE completed = 0 AND expiry_date IS NOT NULL AND course_id IS NOT NULL;

-- Per-course totals, kept in step with the enrollments in the same
-- transaction (see `adjust_course_tables`), so course statistics read a few
-- rows per course instead of scanning every enrollment.
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
    -- New on every write of the row (from course_totals_versions), which every
    -- change of the course's completion times makes: readers keep the median
    -- they walked by it (`store::shared::courses::Medians`).
    version         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, course_id)
) WITHOUT ROWID;

-- The last version given to a course_totals row: one number per projection
-- transaction that writes totals (and per rebuild), never reused.
CREATE TABLE course_totals_versions (last INTEGER NOT NULL);
INSERT INTO course_totals_versions (last) VALUES (0);

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

-- The log's events by topic, for `/api/events?topic=`: kept here rather than
-- as an index of the log, whose pages every delivery's commit would write
-- (3.7 of 17.8 pages per commit in BENCHMARKS.md). `resource` is the topic
-- up to its first '.', for `enrollment.*`.
CREATE TABLE event_topics (
    seq       INTEGER PRIMARY KEY,
    resource  TEXT    NOT NULL,
    topic     TEXT    NOT NULL
);
CREATE INDEX event_topics_by_topic ON event_topics (topic);
CREATE INDEX event_topics_by_resource ON event_topics (resource);

-- New enrollments and completions per UTC day ('YYYY-MM-DD'), for the
-- activity chart, kept in step with the enrollments like course_totals:
-- `enrolled` counts rows by the day of COALESCE(created_at, activated_at,
-- started_at), `completed` completed rows by the day of completed_at.
-- course_id 0 stands for enrollments without a course id.
CREATE TABLE activity_days (
    day         TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    course_id   INTEGER NOT NULL,
    enrolled    INTEGER NOT NULL,
    completed   INTEGER NOT NULL,
    PRIMARY KEY (day, source, course_id)
) WITHOUT ROWID;

-- Learning (issue #17), derived from `lesson.completed` and `quiz.attempted`
-- by the rules of `projection::learning`; the same tables as PostgreSQL's
-- migration 9 (see there).
CREATE TABLE lesson_completions (
    source        TEXT    NOT NULL,
    course_id     INTEGER NOT NULL,
    user_id       INTEGER NOT NULL,
    lesson_id     INTEGER NOT NULL,
    enrollment_id INTEGER,
    completed_at  TEXT,
    PRIMARY KEY (source, course_id, user_id, lesson_id)
) WITHOUT ROWID;
CREATE INDEX lesson_completions_by_user ON lesson_completions (user_id);

CREATE TABLE course_lessons (
    source           TEXT    NOT NULL,
    course_id        INTEGER NOT NULL,
    lesson_id        INTEGER NOT NULL,
    name             TEXT,
    chapter_id       INTEGER,
    chapter_name     TEXT,
    chapter_position INTEGER,
    position         INTEGER,
    lesson_type      TEXT,
    version          TEXT    NOT NULL,
    -- Students who completed it: the funnel's count, kept by the projection.
    completions      INTEGER NOT NULL,
    PRIMARY KEY (source, course_id, lesson_id)
) WITHOUT ROWID;

CREATE TABLE learners (
    source              TEXT    NOT NULL,
    course_id           INTEGER NOT NULL,
    user_id             INTEGER NOT NULL,
    lessons_completed   INTEGER NOT NULL,
    last_lesson_id      INTEGER,
    last_lesson_version TEXT,
    last_lesson_at      TEXT,
    learning_activity   TEXT,
    enrollment_id       INTEGER,
    completed           INTEGER NOT NULL,
    expiry_date         TEXT,
    enrollment_activity TEXT,
    last_activity       TEXT,
    PRIMARY KEY (source, course_id, user_id)
) WITHOUT ROWID;
CREATE INDEX learners_by_user ON learners (user_id);
CREATE INDEX learners_open ON learners (last_activity, source, course_id, user_id,
    expiry_date, last_lesson_id)
    WHERE enrollment_id IS NOT NULL AND NOT completed;
CREATE INDEX learners_open_by_course ON learners (course_id, last_activity, source, user_id,
    expiry_date, last_lesson_id)
    WHERE enrollment_id IS NOT NULL AND NOT completed;
-- Open learners that have an expiry date, by it: those already expired are
-- subtracted from `stall_buckets`' sums (expiry passes without an event).
CREATE INDEX learners_expiring ON learners (expiry_date, last_activity, source, course_id,
    last_lesson_id)
    WHERE enrollment_id IS NOT NULL AND NOT completed AND expiry_date IS NOT NULL;
-- The same by course first: a funnel subtracts its course's expired learners
-- without reading its stalled ones.
CREATE INDEX learners_expiring_by_course ON learners (course_id, expiry_date, last_activity,
    source, last_lesson_id)
    WHERE enrollment_id IS NOT NULL AND NOT completed AND expiry_date IS NOT NULL;

-- Open learners (enrolled, not completed) per course, furthest lesson (0:
-- none yet) and UTC day of last activity: a course's stalled count sums the
-- days before the cutoff's day instead of reading one index entry per
-- student. Kept by the projector from each changed learner's old and new
-- bucket; `rebuild` re-derives it from `learners`.
CREATE TABLE stall_buckets (
    source         TEXT    NOT NULL,
    course_id      INTEGER NOT NULL,
    last_lesson_id INTEGER NOT NULL,
    activity_day   TEXT    NOT NULL,
    learners       INTEGER NOT NULL,
    PRIMARY KEY (source, course_id, last_lesson_id, activity_day)
) WITHOUT ROWID;

-- Learners with an enrollment per course: the funnel's "enrolled", kept by
-- the projector (+1 when a learner gets its first enrollment) so that a
-- funnel does not count a course's learners; `rebuild` re-derives it.
CREATE TABLE course_learners (
    source    TEXT    NOT NULL,
    course_id INTEGER NOT NULL,
    enrolled  INTEGER NOT NULL,
    PRIMARY KEY (source, course_id)
) WITHOUT ROWID;

CREATE TABLE quiz_results (
    source          TEXT    NOT NULL,
    quiz_id         INTEGER NOT NULL,
    user_id         INTEGER NOT NULL,
    quiz_name       TEXT,
    course_id       INTEGER,
    enrollment_id   INTEGER,
    attempts        INTEGER NOT NULL,
    events          INTEGER NOT NULL,
    best_grade      REAL,
    latest_grade    REAL,
    correct_count   INTEGER,
    incorrect_count INTEGER,
    latest_at       TEXT,
    version         TEXT    NOT NULL,
    PRIMARY KEY (source, quiz_id, user_id)
) WITHOUT ROWID;
CREATE INDEX quiz_results_by_user ON quiz_results (user_id);
CREATE INDEX quiz_results_by_course ON quiz_results (course_id) WHERE course_id IS NOT NULL;

-- The log's events by the student they name, for a student's timeline.
CREATE TABLE event_users (
    source  TEXT    NOT NULL,
    user_id INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (source, user_id, seq)
) WITHOUT ROWID;

-- Every event of the log with seq <= projected_through_seq is reflected here;
-- log_id is the log's (log_identity.log_id) these rows were derived from.
CREATE TABLE projection_cursor (
    id                     INTEGER PRIMARY KEY CHECK (id = 1),
    projected_through_seq  INTEGER NOT NULL,
    log_id                 TEXT
);
INSERT INTO projection_cursor (id, projected_through_seq, log_id) VALUES (1, 0, NULL);
