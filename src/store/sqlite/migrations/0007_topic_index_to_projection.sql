-- The log's index by topic moves to the projection file (`event_topics`,
-- derived from the log when the projector opens it): a delivery's commit no
-- longer writes its pages.
DROP INDEX IF EXISTS events_by_topic;
