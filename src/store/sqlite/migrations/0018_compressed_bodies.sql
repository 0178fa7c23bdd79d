-- Event bodies compressed with zstd and a dictionary (store/bodies.rs). A
-- compressed row keeps `body` empty and names its dictionary; rows stored
-- before this migration keep their text and are read as they are.
-- `id` is the id zstd writes in the dictionary's header (content-derived);
-- the current dictionary is the one made current last.
CREATE TABLE body_dictionaries (
    id              INTEGER PRIMARY KEY,
    dictionary      BLOB    NOT NULL,
    created_at      TEXT    NOT NULL,
    made_current_at TEXT
);
ALTER TABLE events ADD COLUMN body_dict INTEGER;
ALTER TABLE events ADD COLUMN body_zstd BLOB;
