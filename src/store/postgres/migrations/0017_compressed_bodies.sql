-- Event bodies compressed with zstd and a dictionary (store/bodies.rs). A
-- compressed row keeps `body` empty and names its dictionary; rows stored
-- before this migration keep their text and are read as they are. Nothing
-- queries inside bodies (`body` was always text, never jsonb), so no query
-- needs them uncompressed.
-- `id` is the id zstd writes in the dictionary's header (content-derived);
-- the current dictionary is the one made current last.
CREATE TABLE body_dictionaries (
    id              bigint      PRIMARY KEY,
    dictionary      bytea       NOT NULL,
    created_at      timestamptz NOT NULL,
    made_current_at timestamptz
);
ALTER TABLE events ADD COLUMN body_dict bigint, ADD COLUMN body_zstd bytea;
