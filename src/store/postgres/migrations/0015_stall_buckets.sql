-- Open learners (enrolled, not completed) per course, furthest lesson (0:
-- none yet) and UTC day of last activity: a course's stalled count sums the
-- days before the cutoff's day instead of reading one index entry per
-- student (`/api/courses` took 0.6 s at 1M events). Kept by each batch from
-- its changed learners' old and new buckets, applied last in key order;
-- `rebuild` re-derives it from `learners`.
CREATE TABLE stall_buckets (
    source         text COLLATE "C" NOT NULL,
    course_id      bigint NOT NULL,
    last_lesson_id bigint NOT NULL,
    activity_day   text COLLATE "C" NOT NULL,
    learners       bigint NOT NULL,
    PRIMARY KEY (source, course_id, last_lesson_id, activity_day)
);
INSERT INTO stall_buckets (source, course_id, last_lesson_id, activity_day, learners)
SELECT source, course_id, COALESCE(last_lesson_id, 0),
       to_char(last_activity AT TIME ZONE 'UTC', 'YYYY-MM-DD'), COUNT(*)
FROM learners
WHERE enrollment_id IS NOT NULL AND NOT completed AND last_activity IS NOT NULL
GROUP BY 1, 2, 3, 4;

-- Open learners that have an expiry date, by it: those already expired are
-- subtracted from the buckets' sums (expiry passes without an event).
CREATE INDEX learners_expiring ON learners (expiry_date, last_activity, source, course_id,
    last_lesson_id)
    WHERE enrollment_id IS NOT NULL AND NOT completed AND expiry_date IS NOT NULL;
