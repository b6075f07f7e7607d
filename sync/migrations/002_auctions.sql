-- ronda settlement store, version 2: intraday auction results settled at the marginal price (R44)
CREATE TABLE auction_sessions (
    session TEXT PRIMARY KEY,
    completed_at BIGINT NOT NULL
);
CREATE TABLE auction_entries (
    session TEXT NOT NULL,
    contract TEXT NOT NULL,
    unit TEXT NOT NULL,
    agent TEXT NOT NULL,                 -- the owner
    side TEXT NOT NULL,
    day TEXT NOT NULL,
    kind TEXT NOT NULL,                  -- DCIC / OPIC
    energy BIGINT NOT NULL,
    price BIGINT NOT NULL,               -- the marginal price
    share_bp INTEGER NOT NULL,
    base BIGINT NOT NULL,
    iee BIGINT NOT NULL,
    vat BIGINT NOT NULL,
    total BIGINT NOT NULL,
    PRIMARY KEY (session, contract, unit, side, agent)
);
CREATE INDEX auction_entries_agent_day ON auction_entries (agent, day);
