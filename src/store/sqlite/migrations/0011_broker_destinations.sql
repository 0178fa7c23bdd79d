-- Broker destinations (NATS JetStream, RabbitMQ, Redis Streams): where in the
-- broker a subscription's messages go. NULL for HTTP subscriptions.
ALTER TABLE subscriptions ADD COLUMN subject TEXT;      -- NATS subject template
ALTER TABLE subscriptions ADD COLUMN exchange TEXT;     -- AMQP exchange
ALTER TABLE subscriptions ADD COLUMN routing_key TEXT;  -- AMQP routing key template
ALTER TABLE subscriptions ADD COLUMN stream TEXT;       -- Redis stream key template
ALTER TABLE subscriptions ADD COLUMN maxlen INTEGER;    -- Redis XADD MAXLEN ~
