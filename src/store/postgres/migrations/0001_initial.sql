-- Text that is compared or sorted uses the "C" collation: byte order, as on
-- SQLite, so both backends list and paginate identically (and `topic` ranges
-- like `enrollment.` .. `enrollment/` work).

-- The event log: append-only, exactly once per (source, event_id).
-- `body` is the raw text exactly as received (jsonb would normalise it).
CREATE TABLE events (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source        text COLLATE "C" NOT NULL,
    event_id      text COLLATE "C" NOT NULL,
    topic         text COLLATE "C" NOT NULL,
    created_at    timestamptz,
    received_at   timestamptz NOT NULL,
    enrollment_id bigint,
    body          text        NOT NULL,
    UNIQUE (source, event_id)
);
CREATE INDEX events_by_enrollment ON events (source, enrollment_id) WHERE enrollment_id IS NOT NULL;
CREATE INDEX events_by_topic ON events (topic, seq);

-- The projection: one row per (source, enrollment_id), derivable from events.
CREATE TABLE enrollments (
    source            text COLLATE "C" NOT NULL,
    enrollment_id     bigint           NOT NULL,
    user_id           bigint,
    email             text COLLATE "C",
    first_name        text,
    last_name         text,
    course_id         bigint,
    course_name       text COLLATE "C",
    progress          double precision NOT NULL,
    trial             boolean          NOT NULL,
    completed         boolean          NOT NULL,
    activated_at      timestamptz,
    started_at        timestamptz,
    completed_at      timestamptz,
    expiry_date       timestamptz,
    created_at        timestamptz,
    updated_at        timestamptz,
    days_to_complete  double precision,
    event_count       bigint           NOT NULL,
    v_updated_at      timestamptz,
    v_created_at      timestamptz,
    v_event_id        text             NOT NULL,
    PRIMARY KEY (source, enrollment_id)
);
CREATE INDEX enrollments_by_course ON enrollments (course_id, source, enrollment_id);
CREATE INDEX enrollments_by_user ON enrollments (user_id);
CREATE INDEX enrollments_by_email ON enrollments (email);
CREATE INDEX enrollments_by_updated ON enrollments (updated_at);
CREATE INDEX enrollments_completion_days ON enrollments (source, course_id, days_to_complete)
    WHERE days_to_complete IS NOT NULL;

-- Rejected deliveries, kept with their reason and raw bytes.
CREATE TABLE quarantine (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text COLLATE "C" NOT NULL,
    received_at timestamptz NOT NULL,
    reason_code text        NOT NULL,
    reason      text        NOT NULL,
    headers     jsonb       NOT NULL,
    body        bytea       NOT NULL,
    body_size   bigint      NOT NULL,
    resolved_at timestamptz,
    resolution  text
);
-- `enrollhook copy` recognises records it already copied by these columns.
CREATE INDEX quarantine_identity ON quarantine (source, received_at, reason_code);
