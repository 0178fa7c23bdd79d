-- Learning (issue #17): lessons and quizzes, derived from `lesson.completed`
-- and `quiz.attempted` events like the enrollments from theirs (see
-- `projection::learning`). The migration runner derives them from the events
-- already received right after this (see `postgres::migrate`).

-- One row per lesson a student completed in a course.
CREATE TABLE lesson_completions (
    source        text COLLATE "C" NOT NULL,
    course_id     bigint      NOT NULL,
    user_id       bigint      NOT NULL,
    lesson_id     bigint      NOT NULL,
    enrollment_id bigint,
    completed_at  timestamptz,
    PRIMARY KEY (source, course_id, user_id, lesson_id)
);
CREATE INDEX lesson_completions_by_user ON lesson_completions (user_id);

-- Every lesson seen in a course, as the newest event described it.
CREATE TABLE course_lessons (
    source           text COLLATE "C" NOT NULL,
    course_id        bigint NOT NULL,
    lesson_id        bigint NOT NULL,
    name             text,
    chapter_id       bigint,
    chapter_name     text,
    chapter_position bigint,
    position         bigint,
    lesson_type      text,
    version          text COLLATE "C" NOT NULL,
    PRIMARY KEY (source, course_id, lesson_id)
);

-- (`*_by_user`: by user id alone, as `enrollments_by_user`: with (source,
-- user_id) SQLite's planner, lacking statistics, preferred the primary key's
-- `source` prefix, a scan of the whole school.)

-- A student in a course: lessons, activity, and a copy of the enrollment's
-- state, so that stalled students are one range of one index
-- (`learners_open*`, by last activity; with expiry and last lesson, so that
-- counting a course's stalled students per lesson reads the index alone).
CREATE TABLE learners (
    source              text COLLATE "C" NOT NULL,
    course_id           bigint  NOT NULL,
    user_id             bigint  NOT NULL,
    lessons_completed   bigint  NOT NULL,
    last_lesson_id      bigint,
    last_lesson_version text COLLATE "C",
    last_lesson_at      timestamptz,
    learning_activity   timestamptz,
    enrollment_id       bigint,
    completed           boolean NOT NULL,
    expiry_date         timestamptz,
    enrollment_activity timestamptz,
    last_activity       timestamptz,
    PRIMARY KEY (source, course_id, user_id)
);
CREATE INDEX learners_by_user ON learners (user_id);
CREATE INDEX learners_open ON learners (last_activity, source, course_id, user_id,
    expiry_date, last_lesson_id)
    WHERE enrollment_id IS NOT NULL AND NOT completed;
CREATE INDEX learners_open_by_course ON learners (course_id, last_activity, source, user_id,
    expiry_date, last_lesson_id)
    WHERE enrollment_id IS NOT NULL AND NOT completed;

-- One row per quiz a student attempted.
CREATE TABLE quiz_results (
    source          text COLLATE "C" NOT NULL,
    quiz_id         bigint NOT NULL,
    user_id         bigint NOT NULL,
    quiz_name       text,
    course_id       bigint,
    enrollment_id   bigint,
    attempts        bigint NOT NULL,
    events          bigint NOT NULL,
    best_grade      double precision,
    latest_grade    double precision,
    correct_count   bigint,
    incorrect_count bigint,
    latest_at       timestamptz,
    version         text COLLATE "C" NOT NULL,
    PRIMARY KEY (source, quiz_id, user_id)
);
CREATE INDEX quiz_results_by_user ON quiz_results (user_id);
CREATE INDEX quiz_results_by_course ON quiz_results (course_id) WHERE course_id IS NOT NULL;

-- The log's events by the student they name, for a student's timeline.
CREATE TABLE event_users (
    source  text COLLATE "C" NOT NULL,
    user_id bigint NOT NULL,
    seq     bigint NOT NULL,
    PRIMARY KEY (source, user_id, seq)
);

-- Retention keeps learning events whole too: the projection is derived from them.
DROP INDEX events_prunable;
CREATE INDEX events_prunable ON events (received_at)
    WHERE enrollment_id IS NULL AND pruned_at IS NULL
      AND topic NOT IN ('lesson.completed', 'quiz.attempted');
