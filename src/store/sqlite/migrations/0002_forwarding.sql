-- Forwarding: subscriptions, the outbox (filled in the same transaction as the
-- event), and every delivery attempt.
CREATE TABLE subscriptions (
    id                      TEXT    PRIMARY KEY,
    url                     TEXT    NOT NULL,
    topics                  TEXT    NOT NULL,  -- JSON array of patterns
    course_ids              TEXT,              -- JSON array, NULL = any course
    sources                 TEXT,              -- JSON array, NULL = any source
    secret                  TEXT    NOT NULL,
    previous_secret         TEXT,
    previous_secret_until   TEXT,
    enabled                 INTEGER NOT NULL,
    disabled_reason         TEXT,
    ordered                 INTEGER NOT NULL,
    headers                 TEXT    NOT NULL,  -- JSON object
    description             TEXT,
    failing_since           TEXT,
    created_at              TEXT    NOT NULL,
    updated_at              TEXT    NOT NULL
);

CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id  TEXT    NOT NULL,
    event_seq        INTEGER NOT NULL,
    order_key        TEXT,                 -- events of one enrollment, for ordered mode
    state            TEXT    NOT NULL,     -- pending | delivered | dead
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT    NOT NULL,
    lease_until      TEXT,
    last_status      INTEGER,
    last_error       TEXT,
    created_at       TEXT    NOT NULL,
    finished_at      TEXT,
    UNIQUE (subscription_id, event_seq)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_ordered ON outbox (subscription_id, order_key, id) WHERE state = 'pending';
CREATE INDEX outbox_by_event ON outbox (event_seq);
CREATE INDEX outbox_by_subscription_state ON outbox (subscription_id, state, id);

CREATE TABLE delivery_attempts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id        INTEGER NOT NULL,
    subscription_id  TEXT    NOT NULL,
    event_seq        INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    attempted_at     TEXT    NOT NULL,
    status           INTEGER,
    latency_ms       REAL    NOT NULL,
    error            TEXT,
    response         TEXT
);
CREATE INDEX attempts_by_subscription ON delivery_attempts (subscription_id, id);
CREATE INDEX attempts_by_event ON delivery_attempts (event_seq, id);
