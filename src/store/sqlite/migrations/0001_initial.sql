-- The event log: append-only, exactly once per (source, event_id).
CREATE TABLE events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    created_at    TEXT,
    received_at   TEXT    NOT NULL,
    enrollment_id INTEGER,
    body          TEXT    NOT NULL,
    UNIQUE (source, event_id)
);
CREATE INDEX events_by_enrollment ON events (source, enrollment_id) WHERE enrollment_id IS NOT NULL;
CREATE INDEX events_by_topic ON events (topic, seq);

-- The projection: one row per (source, enrollment_id), derivable from events.
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

-- Rejected deliveries, kept with their reason and raw bytes.
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT    NOT NULL,
    received_at TEXT    NOT NULL,
    reason_code TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    headers     TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    body_size   INTEGER NOT NULL,
    resolved_at TEXT,
    resolution  TEXT
);
