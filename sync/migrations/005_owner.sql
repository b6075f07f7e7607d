-- ronda settlement store, version 5: the engine whose rounds the store settles (one row).
-- Two engines must not share a store: their round numbers and trade ids collide, and the
-- rounds one has synced would be skipped by the other.  The server claims the store at
-- start with the id of its data folder (DATA_DIR/engine-id) and refuses another's store.
CREATE TABLE owner (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    engine TEXT NOT NULL,
    claimed_at BIGINT NOT NULL
);
