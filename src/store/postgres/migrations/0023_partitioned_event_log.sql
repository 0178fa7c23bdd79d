-- The event log partitioned by month (issue #21), so that retention drops a
-- whole month of prunable events instead of rewriting its rows.
--
-- A partitioned table's unique keys must contain its partition key, so the
-- exactly-once key moves to a table of its own: `event_ids` holds every
-- event identity ever stored, pruned or dropped, and a redelivery of an
-- event whose month was dropped is still a duplicate (and `copy` carries
-- such identities to another database, with their arrival time).
--
-- `events` is split first by what retention may do to a row, then by month
-- of arrival (UTC):
--   events_kept       enrollment and learning events, never pruned (the
--                     projection and `rebuild` derive from them);
--   events_prunable   everything else, whose months retention drops whole.
-- Each has a partition per month, `events_kept_y2026m12` and so on, made by
-- `enrollhook_event_month` below (by the batch writer before a batch that
-- needs one, and here for the months already in the log).

CREATE TABLE event_ids (
    source   text COLLATE "C" NOT NULL,
    event_id text COLLATE "C" NOT NULL,
    topic    text COLLATE "C" NOT NULL,
    seq      bigint NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (source, event_id, topic)
);

ALTER TABLE events RENAME TO events_unpartitioned;
-- Its index of prunable events has the name a partition takes below.
DROP INDEX IF EXISTS events_prunable;
-- Its sequence (an identity) goes with it; seq goes on from where it was.
CREATE SEQUENCE events_seq_next;
SELECT setval('events_seq_next', COALESCE((SELECT max(seq) FROM events_unpartitioned), 0) + 1, false);

CREATE TABLE events (
    seq           bigint      NOT NULL DEFAULT nextval('events_seq_next'),
    source        text COLLATE "C" NOT NULL,
    event_id      text COLLATE "C" NOT NULL,
    topic         text COLLATE "C" NOT NULL,
    created_at    timestamptz,
    received_at   timestamptz NOT NULL,
    enrollment_id bigint,
    body          text        NOT NULL,
    pruned_at     timestamptz,
    txid          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    id_taken      boolean     NOT NULL DEFAULT false,
    body_dict     bigint,
    body_zstd     bytea
) PARTITION BY LIST ((enrollment_id IS NOT NULL OR topic IN ('lesson.completed', 'quiz.attempted')));
CREATE TABLE events_kept PARTITION OF events FOR VALUES IN (true) PARTITION BY RANGE (received_at);
CREATE TABLE events_prunable PARTITION OF events FOR VALUES IN (false) PARTITION BY RANGE (received_at);

-- Makes both partitions of the month holding `at` (UTC) unless they exist.
-- The advisory lock (per transaction) keeps instances that make the same
-- month at once from colliding, and retention from dropping one meanwhile.
CREATE FUNCTION enrollhook_event_month(at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', at AT TIME ZONE 'UTC')::date;
    next  date := (date_trunc('month', at AT TIME ZONE 'UTC') + interval '1 month')::date;
    suffix text := to_char(first, '"y"YYYY"m"MM');
    side text;
BEGIN
    PERFORM pg_advisory_xact_lock(7311151370444499059);  -- "evmonths" in ASCII
    FOREACH side IN ARRAY ARRAY['kept', 'prunable'] LOOP
        IF to_regclass('events_' || side || '_' || suffix) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                'events_' || side || '_' || suffix, 'events_' || side,
                first::text || ' 00:00:00+00', next::text || ' 00:00:00+00');
        END IF;
    END LOOP;
END $$;

-- The months already in the log, then the log itself.
SELECT enrollhook_event_month(m)
FROM (SELECT DISTINCT date_trunc('month', received_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS m
      FROM events_unpartitioned) AS months;
SELECT enrollhook_event_month(now());
INSERT INTO events (seq, source, event_id, topic, created_at, received_at, enrollment_id, body,
                    pruned_at, txid, id_taken, body_dict, body_zstd)
SELECT seq, source, event_id, topic, created_at, received_at, enrollment_id, body,
       pruned_at, txid, id_taken, body_dict, body_zstd
FROM events_unpartitioned;
INSERT INTO event_ids (source, event_id, topic, seq, received_at)
SELECT source, event_id, topic, seq, received_at FROM events_unpartitioned;
DROP TABLE events_unpartitioned;
ALTER SEQUENCE events_seq_next RENAME TO events_seq_seq;
ALTER SEQUENCE events_seq_seq OWNED BY events.seq;

-- The same indexes as before, on every partition (present and future);
-- `seq` is no longer unique by constraint (event_ids' keys make it so).
CREATE INDEX events_by_seq ON events (seq);
CREATE INDEX events_by_enrollment ON events (source, enrollment_id) WHERE enrollment_id IS NOT NULL;
CREATE INDEX events_by_topic ON events (topic, seq);
CREATE INDEX events_by_commit ON events (txid, seq);
CREATE INDEX events_prunable_by_arrival ON events_prunable (received_at) WHERE pruned_at IS NULL;
