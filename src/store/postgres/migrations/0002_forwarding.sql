-- Forwarding: subscriptions, the outbox (filled in the same transaction as the
-- event), and every delivery attempt.
CREATE TABLE subscriptions (
    id                     text COLLATE "C" PRIMARY KEY,
    url                    text        NOT NULL,
    topics                 jsonb       NOT NULL,
    course_ids             jsonb,
    sources                jsonb,
    secret                 text        NOT NULL,
    previous_secret        text,
    previous_secret_until  timestamptz,
    enabled                boolean     NOT NULL,
    disabled_reason        text,
    ordered                boolean     NOT NULL,
    headers                jsonb       NOT NULL,
    description            text,
    failing_since          timestamptz,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL
);

CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id  text COLLATE "C" NOT NULL,
    event_seq        bigint      NOT NULL,
    order_key        text COLLATE "C",
    state            text        NOT NULL,  -- pending | delivered | dead
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    lease_until      timestamptz,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    UNIQUE (subscription_id, event_seq)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_ordered ON outbox (subscription_id, order_key, id) WHERE state = 'pending';
CREATE INDEX outbox_by_event ON outbox (event_seq);
CREATE INDEX outbox_by_subscription_state ON outbox (subscription_id, state, id);

CREATE TABLE delivery_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id        bigint           NOT NULL,
    subscription_id  text COLLATE "C" NOT NULL,
    event_seq        bigint           NOT NULL,
    attempt          integer          NOT NULL,
    attempted_at     timestamptz      NOT NULL,
    status           integer,
    latency_ms       double precision NOT NULL,
    error            text,
    response         text
);
CREATE INDEX attempts_by_subscription ON delivery_attempts (subscription_id, id);
CREATE INDEX attempts_by_event ON delivery_attempts (event_seq, id);
