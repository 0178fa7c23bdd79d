-- Alerts (enrollhook.*): one row per incident. An open incident (closed_at
-- NULL) is unique per kind and subject, so two instances that notice the same
-- trouble open it once; closed rows are the recent history `GET /api/alerts` shows.
CREATE TABLE alert_incidents (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    source TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    opened_at TIMESTAMPTZ NOT NULL,
    alert_id TEXT NOT NULL,
    summary TEXT NOT NULL,
    detail JSONB NOT NULL,
    closed_at TIMESTAMPTZ,
    recovered_id TEXT
);
CREATE UNIQUE INDEX alert_incidents_open ON alert_incidents (kind, subject) WHERE closed_at IS NULL;
CREATE INDEX alert_incidents_by_source ON alert_incidents (source, id);
