-- The events feed, safe with several writers. With several writers (and instances) a
-- transaction can commit after another that drew larger seq values, so
-- reading "seq > last seen" could skip it for good. Each row records the
-- transaction that inserted it; the feed pages by (txid, seq) and shows only
-- rows of transactions older than every transaction still running in this
-- database, so nothing can later appear before a position already read.
ALTER TABLE events ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX events_by_commit ON events (txid, seq);
