-- A claim takes each subscription's most due deliveries, up to its room
-- (issue: a destination that hangs, or one subscription's backlog, must not
-- hold up the others' deliveries): one probe of this index per enabled
-- subscription, instead of one walk of all due rows by time.
DROP INDEX outbox_due;
CREATE INDEX outbox_due_by_subscription ON outbox (subscription_id, next_attempt_at, id)
    WHERE state = 'pending';
