-- ronda settlement store, version 1.  Portable between SQLite and PostgreSQL.
-- Amounts are integer milli-euros; energies integer tenths of MWh; prices cents of €/MWh.
CREATE TABLE syncs (
    sync_id BIGINT PRIMARY KEY,          -- the last round synchronised
    from_round BIGINT NOT NULL,
    trades BIGINT NOT NULL,
    completed_at BIGINT NOT NULL         -- the synchronisation instant, ms UTC
);
CREATE TABLE entries (
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
    PRIMARY KEY (trade_id, side, agent)
) WITHOUT ROWID;
CREATE INDEX entries_agent_day ON entries (agent, day);
CREATE TABLE balances (
    agent TEXT PRIMARY KEY,
    deposited BIGINT NOT NULL,
    reserved BIGINT NOT NULL,
    balance BIGINT NOT NULL,
    reduction BIGINT NOT NULL            -- cents, communicated for the next round
);
CREATE TABLE balance_history (
    sync_id BIGINT NOT NULL,
    n INTEGER NOT NULL,
    agent TEXT NOT NULL,
    delta BIGINT NOT NULL,
    reason TEXT NOT NULL,
    balance_after BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (sync_id, n)
);
CREATE TABLE decisions (
    request_id BIGINT PRIMARY KEY,
    sync_id BIGINT NOT NULL,
    agent TEXT NOT NULL,
    accept INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE programs (
    unit TEXT NOT NULL,
    period TEXT NOT NULL,                -- contract id of the period
    energy BIGINT NOT NULL,              -- continuous-market energy synchronised so far
    sync_id BIGINT NOT NULL,
    PRIMARY KEY (unit, period)
);
CREATE TABLE feedback (
    sync_id BIGINT NOT NULL,
    n INTEGER NOT NULL,
    command TEXT NOT NULL,               -- JSON of the command fed back to the platform
    PRIMARY KEY (sync_id, n)
);
