-- The funnel without reading a course's students (issue #21, 10 M events).
--
-- Students who completed each lesson, kept by the projection in the batch
-- that stores a lesson's first completion by a student (the row is locked by
-- the batch, like the rest of the learning rows): the funnel read it as a
-- count of the course's lesson_completions, which grows with the course's
-- students (at 10 M events, 66,000 rows a course; BENCHMARKS.md, "Query
-- benchmark at 10 M events").
ALTER TABLE course_lessons ADD COLUMN completions bigint NOT NULL DEFAULT 0;
UPDATE course_lessons AS l SET completions = c.n
FROM (SELECT source, course_id, lesson_id, COUNT(*) AS n FROM lesson_completions
      GROUP BY source, course_id, lesson_id) AS c
WHERE c.source = l.source AND c.course_id = l.course_id AND c.lesson_id = l.lesson_id;
ALTER TABLE course_lessons ALTER COLUMN completions DROP DEFAULT;

-- A course's enrolled learners, counted by the funnel from this small index
-- alone (enrollment_id in it: without, each entry cost a row lookup, 41 ms a
-- course of 50,000 students against 4).
CREATE INDEX learners_enrolled ON learners (source, course_id, enrollment_id)
    WHERE enrollment_id IS NOT NULL;

-- A course's open learners by expiry: a funnel subtracts its course's expired
-- learners without reading its stalled ones.
CREATE INDEX learners_expiring_by_course ON learners (course_id, expiry_date, last_activity,
    source, last_lesson_id)
    WHERE enrollment_id IS NOT NULL AND NOT completed AND expiry_date IS NOT NULL;
