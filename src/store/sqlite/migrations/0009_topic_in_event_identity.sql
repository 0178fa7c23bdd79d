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
--
-- SQLite cannot drop a table constraint: the table is rebuilt, seq values and
-- the AUTOINCREMENT high-water mark kept (outbox rows refer to seq).

-- The projection file indexes topics: a new log identity makes the projector
-- re-derive it (only when a topic is renamed).
UPDATE log_identity SET log_id = lower(hex(randomblob(16)))
WHERE EXISTS (SELECT 1 FROM events WHERE topic LIKE '%.canceled');

CREATE TABLE events_new (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    created_at    TEXT,
    received_at   TEXT    NOT NULL,
    enrollment_id INTEGER,
    body          TEXT    NOT NULL,
    pruned_at     TEXT,
    id_taken      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (source, event_id, topic)
);
INSERT INTO events_new (seq, source, event_id, topic, created_at, received_at, enrollment_id,
                        body, pruned_at)
SELECT seq, source, event_id,
       CASE WHEN topic LIKE '%.canceled' THEN substr(topic, 1, length(topic) - 8) || 'cancelled'
            ELSE topic END,
       created_at, received_at, enrollment_id, body, pruned_at
FROM events ORDER BY seq;
INSERT INTO sqlite_sequence (name, seq)
SELECT 'events_new', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events_new');
UPDATE sqlite_sequence
SET seq = max(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))
WHERE name = 'events_new';
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_by_enrollment ON events (source, enrollment_id) WHERE enrollment_id IS NOT NULL;
CREATE INDEX events_prunable ON events (received_at)
    WHERE enrollment_id IS NULL AND pruned_at IS NULL;

-- Scheduled reconciliation (`serve --reconcile-every`): each run's report, per
-- source; the newest `resume_from` is where the next run starts.
CREATE TABLE reconciliations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT    NOT NULL,
    started_at    TEXT    NOT NULL,
    finished_at   TEXT    NOT NULL,
    resume_from   TEXT,
    report        TEXT    NOT NULL,  -- JSON: thinkific::reconcile::Reconciliation and counts
    error         TEXT
);
CREATE INDEX reconciliations_by_source ON reconciliations (source, id);
