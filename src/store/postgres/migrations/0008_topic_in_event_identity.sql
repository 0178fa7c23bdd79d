-- Two events, one id (issue #16): Thinkific's own published samples give
-- `lesson.completed` and `quiz.attempted` one envelope id, so an event is
-- now unique per (source, envelope id, topic). A redelivery repeats its
-- topic, so nothing that was a duplicate stops being one.
--
-- `id_taken`: another event of this source was stored with the same envelope
-- id before this one. Forwarding gives such an event a `webhook-id` of its own
-- (see forward/worker.rs::message_id); every row stored until now was alone
-- with its id, so it keeps the `webhook-id` it was forwarded with.
--
-- Topics are stored in one spelling: `*.canceled` becomes `*.cancelled` (see
-- thinkific::envelope::Topic::canonical). The old key was (source, event id),
-- so the renamed topics cannot collide.
UPDATE events SET topic = left(topic, -8) || 'cancelled' WHERE topic LIKE '%.canceled';
ALTER TABLE events ADD COLUMN id_taken boolean NOT NULL DEFAULT false;
ALTER TABLE events DROP CONSTRAINT events_source_event_id_key;
ALTER TABLE events ADD CONSTRAINT events_source_event_id_topic_key UNIQUE (source, event_id, topic);

-- Scheduled reconciliation (`serve --reconcile-every`): each run's report, per
-- source; the newest `resume_from` is where the next run starts.
CREATE TABLE reconciliations (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source        text COLLATE "C" NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    resume_from   timestamptz,
    report        jsonb       NOT NULL,
    error         text
);
CREATE INDEX reconciliations_by_source ON reconciliations (source, id);
