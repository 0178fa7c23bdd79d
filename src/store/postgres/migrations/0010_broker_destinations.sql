-- Broker destinations (NATS JetStream, RabbitMQ, Redis Streams): where in the
-- broker a subscription's messages go. NULL for HTTP subscriptions.
ALTER TABLE subscriptions
    ADD COLUMN subject     text,    -- NATS subject template
    ADD COLUMN exchange    text,    -- AMQP exchange
    ADD COLUMN routing_key text,    -- AMQP routing key template
    ADD COLUMN stream      text,    -- Redis stream key template
    ADD COLUMN maxlen      bigint;  -- Redis XADD MAXLEN ~
