-- The W3C traceparent of the delivery that stored the event (issue #21, part 4):
-- set only when tracing is on and the delivery was sampled, so that every forward
-- attempt's span joins the delivery's trace.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
