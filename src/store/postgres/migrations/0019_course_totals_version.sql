-- A version per course_totals row, new on every write of the row (issue #17):
-- the median days to complete, a walk to the middle of a course's
-- enrollments_completion_days, is kept in each instance's memory by (source,
-- course, version) and walked again only when the version changes. Every
-- transaction that changes a course's completion times writes its row (the
-- deltas treat a changed days_to_complete as a change, see
-- `store/shared/courses.rs`), and a rebuild rewrites every row. Numbers come
-- from one sequence, so they are never reused, by a rebuild or by another
-- instance. Set by a trigger rather than by each statement, so that any
-- writer (an instance of an older version during an upgrade, a repair by
-- hand) makes a new version too.
CREATE SEQUENCE course_totals_version;
ALTER TABLE course_totals ADD COLUMN version bigint NOT NULL
    DEFAULT nextval('course_totals_version');
ALTER TABLE course_totals ALTER COLUMN version DROP DEFAULT;
ALTER SEQUENCE course_totals_version OWNED BY course_totals.version;

CREATE FUNCTION course_totals_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval('course_totals_version');
    RETURN NEW;
END
$$;
CREATE TRIGGER course_totals_version BEFORE INSERT OR UPDATE ON course_totals
    FOR EACH ROW EXECUTE FUNCTION course_totals_version();
