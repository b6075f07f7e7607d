-- ronda settlement store, version 4: an auction session's entries enter the agents'
-- guarantee balances (R55.7.2 b, c) in the synchronisation that follows its clearing, in
-- that synchronisation's transaction and history; synced_in is its sync id (NULL: not yet).
ALTER TABLE auction_sessions ADD COLUMN synced_in BIGINT;
