-- ronda settlement store, version 3: the entries keyed by (agent, day, trade_id, side).
--
-- Version 1 keyed them by (trade_id, side, agent) with a second B-tree on (agent, day) for
-- the reports: every entry went into both.  Keyed by (agent, day, trade_id, side), the table
-- is itself the reports' order (an agent's entries of a delivery day, by trade and side) and
-- one B-tree per entry is enough; the store inserts a sync's entries grouped by (agent, day),
-- so each group is appended at its end.  The key identifies the same entries: an entry is
-- one owner's part of one side of one trade, and the day is the trade's (its contract's), so
-- two entries with the same trade, side and agent also have the same day.
--
-- The same columns, types and values; the rows are copied as they are.  The table is built
-- under a new name and renamed, so its key gets its own name on PostgreSQL too.
CREATE TABLE entries_v3 (
    sync_id BIGINT NOT NULL,
    trade_id BIGINT NOT NULL,
    side TEXT NOT NULL,                  -- BUY / SELL
    agent TEXT NOT NULL,                 -- the owner
    unit TEXT NOT NULL,
    contract TEXT NOT NULL,
    day TEXT NOT NULL,                   -- delivery day YYYY-MM-DD
    round BIGINT NOT NULL,
    kind TEXT NOT NULL,                  -- DCIC (collection right) / OPIC (payment obligation)
    energy BIGINT NOT NULL,
    price BIGINT NOT NULL,
    share_bp INTEGER NOT NULL,
    base BIGINT NOT NULL,
    iee BIGINT NOT NULL,
    vat BIGINT NOT NULL,
    total BIGINT NOT NULL,
    CONSTRAINT entries_key PRIMARY KEY (agent, day, trade_id, side)
) WITHOUT ROWID;
INSERT INTO entries_v3 (sync_id, trade_id, side, agent, unit, contract, day, round, kind,
                        energy, price, share_bp, base, iee, vat, total)
    SELECT sync_id, trade_id, side, agent, unit, contract, day, round, kind, energy, price,
           share_bp, base, iee, vat, total
    FROM entries;
DROP TABLE entries;
ALTER TABLE entries_v3 RENAME TO entries;
