"""The settlement store: SQLite by default, PostgreSQL (asyncpg) when given a URL.

One schema for both, versioned migrations in ``sync/migrations/NNN_name.sql`` applied in
order and recorded in ``schema_version`` (the one SQLite-only clause, the ``WITHOUT ROWID``
storage hint, is dropped for PostgreSQL).  A synchronisation is committed in ONE transaction
(:meth:`Store.commit`): its row in ``syncs``, its entries, the balances and their history,
the request decisions, the programs and the feedback commands — so a crash before the
commit leaves nothing and a crash after it leaves everything; a sync already stored is
never stored twice (its id is the primary key, checked inside the transaction).

SQLite runs in one worker thread (its calls block); PostgreSQL through an asyncpg pool.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, Protocol

from sync.settle import Balance, Entry, SyncResult

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

Fault = Callable[[str], None]


def migrations() -> list[tuple[int, str]]:
    out = []
    for p in sorted(MIGRATIONS.glob("*.sql")):
        out.append((int(p.name.split("_", 1)[0]), p.read_text()))
    return out


def _statements(sql: str) -> list[str]:
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    text = "\n".join(ln.split("--", 1)[0] for ln in lines)
    return [s.strip() for s in text.split(";") if s.strip()]


def _rows(res: SyncResult, at: int) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of every table but ``entries`` (see :func:`_entry_rows`)."""
    sid = res.sync_id
    return {
        "history": [(sid, n, a, d, r, b, at) for n, (a, d, r, b) in enumerate(res.history)],
        "decisions": [(d.request_id, sid, d.agent, int(d.accept), d.reason)
                      for d in res.decisions],
        "programs": [(u, p, e, sid) for (u, p), e in sorted(res.programs.items())],
        "balances": [(a, b.deposited, b.reserved, b.balance, res.reductions.get(a, 0))
                     for a, b in sorted(res.balances.items())],
        "auctions": [(sid, session) for session in res.auctions],
    }


def _entry_rows(res: SyncResult) -> list[tuple[Any, ...]]:
    """The ``entries`` rows in the column order of :data:`ENTRY_COLUMNS` (PostgreSQL)."""
    sid = res.sync_id
    return [(sid, e.trade_id, e.side, e.agent, e.unit, e.contract, e.day, e.round, e.kind,
             e.energy, e.price, e.share_bp, e.base, e.iee, e.vat, e.total)
            for e in res.entries]


INSERT_SYNC = "INSERT INTO syncs (sync_id, from_round, trades, completed_at) VALUES (?, ?, ?, ?)"
ENTRY_COLUMNS = ["sync_id", "trade_id", "side", "agent", "unit", "contract", "day", "round",
                 "kind", "energy", "price", "share_bp", "base", "iee", "vat", "total"]


# SQLite: entries per INSERT statement.  Instructions to store 52,000 entries (callgrind,
# version 1 schema):
# 1.36 G one per statement, 1.23 G with 8, 1.14 G with 20, 1.11 G with 50, 1.12 G with 200.
ENTRIES_PER_INSERT = 50


def insert_entries_sql(rows: int) -> str:
    """SQLite: one INSERT of ``rows`` entries.  ``?1`` is the sync id; each row binds the 14
    fields of one :class:`Entry` in order (row k: ``?(2+14k)`` … ``?(15+14k)``) and computes
    ``total`` = base + iee + vat itself (integers, exact: amounts are far below 2⁶³).  Many
    rows per statement cut SQLite's per-statement work (reset, bind, halt), and no row tuple
    is built per entry (see :func:`_entry_params`)."""
    values = []
    for k in range(rows):
        b = 1 + 14 * k
        values.append("(?1, " + ", ".join(f"?{b + i}" for i in range(1, 15))
                      + f", ?{b + 12} + ?{b + 13} + ?{b + 14})")
    return f"INSERT INTO entries ({', '.join(ENTRY_COLUMNS)}) VALUES " + ", ".join(values)


def _by_agent_day(entries: Sequence[Entry]) -> list[Entry]:
    """The entries grouped by (agent, day), each group in the order given.  A sync's entries
    come in trade order (then side), so this is the order of the ``entries`` table's key
    (agent, day, trade_id, side; migration 003): each group goes in at the end of its range
    of the B-tree instead of the groups interleaving there."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        key = (e.agent, e.day)
        group = groups.get(key)
        if group is None:
            group = groups[key] = []
        group.append(e)
    return [e for key in sorted(groups) for e in groups[key]]


def _entry_params(sync_id: int, entries: Sequence[Any]) -> list[Any]:
    """The parameters of :func:`insert_entries_sql` for these entries: one flat list."""
    return [sync_id, *chain.from_iterable(entries)]


MARK_AUCTION = "UPDATE auction_sessions SET synced_in = ? WHERE session = ?"
INSERT_HISTORY = ("INSERT INTO balance_history (sync_id, n, agent, delta, reason,"
                  " balance_after, at) VALUES (?, ?, ?, ?, ?, ?, ?)")
INSERT_DECISION = ("INSERT INTO decisions (request_id, sync_id, agent, accept, reason)"
                   " VALUES (?, ?, ?, ?, ?)")
UPSERT_PROGRAM = ("INSERT INTO programs (unit, period, energy, sync_id) VALUES (?, ?, ?, ?)"
                  " ON CONFLICT (unit, period) DO UPDATE SET"
                  " energy = programs.energy + excluded.energy, sync_id = excluded.sync_id")
UPSERT_BALANCE = ("INSERT INTO balances (agent, deposited, reserved, balance, reduction)"
                  " VALUES (?, ?, ?, ?, ?) ON CONFLICT (agent) DO UPDATE SET"
                  " deposited = excluded.deposited, reserved = excluded.reserved,"
                  " balance = excluded.balance, reduction = excluded.reduction")
INSERT_FEEDBACK = "INSERT INTO feedback (sync_id, n, command) VALUES (?, ?, ?)"


INSERT_AUCTION = "INSERT INTO auction_sessions (session, completed_at) VALUES (?, ?)"
INSERT_AUCTION_ENTRY = (
    "INSERT INTO auction_entries (session, contract, unit, agent, side, day, kind, energy,"
    " price, share_bp, base, iee, vat, total)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _auction_rows(session: str, entries: list[Any]) -> list[tuple[Any, ...]]:
    return [(session, e.contract, e.unit, e.agent, e.side, e.day, e.kind, e.energy, e.price,
             e.share_bp, e.base, e.iee, e.vat, e.total) for e in entries]


CLAIM = ("INSERT INTO owner (one, engine, claimed_at) VALUES (1, ?, ?)"
         " ON CONFLICT (one) DO NOTHING")
OWNER = "SELECT engine, claimed_at FROM owner"


class StoreOwned(RuntimeError):
    """The store settles another engine's rounds (migration 005): two engines must not
    share one."""

    def __init__(self, where: str, owner: str, claimed_at: int, engine: str) -> None:
        from datetime import UTC, datetime

        since = datetime.fromtimestamp(claimed_at / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        super().__init__(
            f"the settlement store {where} settles the rounds of another engine ({owner}, "
            f"since {since}); this data folder's engine is {engine}. Two engines must not "
            "share a store: their round numbers and trade ids collide, and the rounds one "
            "synced would be skipped by the other. Use this data folder's own store, or a "
            "new one")
        self.owner = owner
        self.engine = engine


def _without_password(url: str) -> str:
    """A store's URL fit for a message: no user or password."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u._replace(netloc=u.netloc.rpartition("@")[2]).geturl()


def _owned(where: str, rows: list[dict[str, Any]], engine: str) -> None:
    owner = rows[0]
    if owner["engine"] != engine:
        raise StoreOwned(where, owner["engine"], int(owner["claimed_at"]), engine)


class Store(Protocol):
    async def open(self) -> None: ...
    async def claim(self, engine: str, at: int) -> None: ...
    async def close(self) -> None: ...
    async def last_sync(self) -> int: ...
    async def balances(self) -> dict[str, Balance]: ...
    async def commit(self, res: SyncResult, feedback: list[str], at: int,
                     fault: Fault | None = None) -> bool: ...
    async def feedback(self, sync_id: int) -> list[str]: ...
    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
    async def commit_auction(self, session: str, entries: list[Any], at: int) -> bool: ...


class SqliteStore:
    """SQLite in WAL mode, one connection in one worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._x = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._x, fn, *args)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        # checkpoints run after a commit has returned (see commit), not inside it
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        have = {r[0] for r in db.execute("SELECT version FROM schema_version")}
        for version, sql in migrations():
            if version in have:
                continue
            db.execute("BEGIN")
            for stmt in _statements(sql):
                db.execute(stmt)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            db.execute("COMMIT")
        self._db = db

    async def open(self) -> None:
        await self._run(self._open)

    async def claim(self, engine: str, at: int) -> None:
        """The store settles ``engine``'s rounds: claimed if nobody has, else refused
        (:class:`StoreOwned`) if another engine did."""
        await self.query(CLAIM, (engine, at))
        _owned(self.path, await self.query(OWNER), engine)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._x.shutdown(wait=True)

    def _q(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        assert self._db is not None
        cur = self._db.execute(sql, tuple(params))
        cols = [c[0] for c in cur.description or ()]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._run(self._q, sql, params)
        return rows

    async def last_sync(self) -> int:
        rows = await self.query("SELECT MAX(sync_id) AS m FROM syncs")
        return int(rows[0]["m"] or 0)

    async def balances(self) -> dict[str, Balance]:
        rows = await self.query("SELECT agent, deposited, reserved, balance FROM balances")
        return {r["agent"]: Balance(r["deposited"], r["reserved"], r["balance"]) for r in rows}

    async def feedback(self, sync_id: int) -> list[str]:
        rows = await self.query("SELECT command FROM feedback WHERE sync_id = ? ORDER BY n",
                                (sync_id,))
        return [r["command"] for r in rows]

    def _commit(self, res: SyncResult, feedback: list[str], at: int, fault: Fault | None
                ) -> bool:
        db = self._db
        assert db is not None
        rows = _rows(res, at)
        entries = _by_agent_day(res.entries)
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM syncs WHERE sync_id = ?",
                          (res.sync_id,)).fetchone():
                db.execute("ROLLBACK")
                return False
            db.execute(INSERT_SYNC, (res.sync_id, res.from_round, res.trades, at))
            # the entries, ENTRIES_PER_INSERT per statement, then the rest in one
            sid, k = res.sync_id, ENTRIES_PER_INSERT
            whole = len(entries) - len(entries) % k
            if whole:
                db.executemany(insert_entries_sql(k), (_entry_params(sid, entries[i:i + k])
                                                       for i in range(0, whole, k)))
            if whole < len(entries):
                db.execute(insert_entries_sql(len(entries) - whole),
                           _entry_params(sid, entries[whole:]))
            if fault:
                fault("during_commit")
            db.executemany(INSERT_HISTORY, rows["history"])
            db.executemany(INSERT_DECISION, rows["decisions"])
            db.executemany(UPSERT_PROGRAM, rows["programs"])
            db.executemany(UPSERT_BALANCE, rows["balances"])
            if rows["auctions"]:
                db.executemany(MARK_AUCTION, rows["auctions"])
            db.executemany(INSERT_FEEDBACK, [(res.sync_id, n, c)
                                             for n, c in enumerate(feedback)])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    async def commit(self, res: SyncResult, feedback: list[str], at: int,
                     fault: Fault | None = None) -> bool:
        done: bool = await self._run(self._commit, res, feedback, at, fault)
        # the WAL is folded back into the database in the store's thread afterwards: the
        # next store call waits for it, the commit does not
        self._x.submit(self._checkpoint)
        return done

    def _checkpoint(self) -> None:
        if self._db is not None:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _commit_auction(self, session: str, entries: list[Any], at: int) -> bool:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM auction_sessions WHERE session = ?",
                          (session,)).fetchone():
                db.execute("ROLLBACK")
                return False
            db.execute(INSERT_AUCTION, (session, at))
            db.executemany(INSERT_AUCTION_ENTRY, _auction_rows(session, entries))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    async def commit_auction(self, session: str, entries: list[Any], at: int) -> bool:
        """R44: one auction session's entries, in one transaction, once."""
        done: bool = await self._run(self._commit_auction, session, entries, at)
        return done


def _pg(sql: str) -> str:
    """SQLite's placeholders to PostgreSQL's ``$n``: ``?n`` is ``$n``, and a bare ``?`` is
    one more than the largest number given so far (SQLite's rule)."""
    out, n, i = [], 0, 0
    while i < len(sql):
        ch = sql[i]
        i += 1
        if ch != "?":
            out.append(ch)
            continue
        j = i
        while j < len(sql) and "0" <= sql[j] <= "9":
            j += 1
        if j > i:
            k = int(sql[i:j])
            n = max(n, k)
            i = j
        else:
            n += 1
            k = n
        out.append(f"${k}")
    return "".join(out)


class PostgresStore:
    """PostgreSQL through an asyncpg pool; the same schema and statements."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4)
        async with self._pool.acquire() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock(727011)")
            await con.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            have = {r["version"] for r in await con.fetch("SELECT version FROM schema_version")}
            for version, sql in migrations():
                if version in have:
                    continue
                for stmt in _statements(sql):
                    # the one SQLite-only clause of the shared schema (a storage hint)
                    await con.execute(stmt.replace(") WITHOUT ROWID", ")"))
                await con.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    async def claim(self, engine: str, at: int) -> None:
        """As :meth:`SqliteStore.claim` (the row's key makes two claims race safely)."""
        await self.query(CLAIM, (engine, at))
        _owned(_without_password(self.url), await self.query(OWNER), engine)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self._pool.acquire() as con:
            return [dict(r) for r in await con.fetch(_pg(sql), *params)]

    async def last_sync(self) -> int:
        rows = await self.query("SELECT MAX(sync_id) AS m FROM syncs")
        return int(rows[0]["m"] or 0)

    async def balances(self) -> dict[str, Balance]:
        rows = await self.query("SELECT agent, deposited, reserved, balance FROM balances")
        return {r["agent"]: Balance(r["deposited"], r["reserved"], r["balance"]) for r in rows}

    async def feedback(self, sync_id: int) -> list[str]:
        rows = await self.query("SELECT command FROM feedback WHERE sync_id = ? ORDER BY n",
                                (sync_id,))
        return [r["command"] for r in rows]

    async def commit(self, res: SyncResult, feedback: list[str], at: int,
                     fault: Fault | None = None) -> bool:
        rows = _rows(res, at)
        entries = _entry_rows(res)
        async with self._pool.acquire() as con, con.transaction():
            # claim the sync id first: a concurrent commit of the same id waits on it, then
            # finds it taken
            status = await con.execute(
                _pg(INSERT_SYNC) + " ON CONFLICT (sync_id) DO NOTHING",
                res.sync_id, res.from_round, res.trades, at)
            if status.endswith(" 0"):
                return False
            await con.copy_records_to_table("entries", records=entries,
                                            columns=ENTRY_COLUMNS)
            if fault:
                fault("during_commit")
            await con.executemany(_pg(INSERT_HISTORY), rows["history"])
            await con.executemany(_pg(INSERT_DECISION), rows["decisions"])
            await con.executemany(_pg(UPSERT_PROGRAM), rows["programs"])
            await con.executemany(_pg(UPSERT_BALANCE), rows["balances"])
            if rows["auctions"]:
                await con.executemany(_pg(MARK_AUCTION), rows["auctions"])
            await con.executemany(_pg(INSERT_FEEDBACK),
                                  [(res.sync_id, n, c) for n, c in enumerate(feedback)])
        return True

    async def commit_auction(self, session: str, entries: list[Any], at: int) -> bool:
        async with self._pool.acquire() as con, con.transaction():
            status = await con.execute(_pg(INSERT_AUCTION) + " ON CONFLICT (session) DO NOTHING",
                                       session, at)
            if status.endswith(" 0"):
                return False
            await con.executemany(_pg(INSERT_AUCTION_ENTRY), _auction_rows(session, entries))
        return True


def open_store(url: str | None, data_dir: Path) -> Store:
    """``postgresql://…`` → PostgreSQL; otherwise SQLite at the path (default: the data
    folder's ``settlement.sqlite``)."""
    if url and url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    path = Path(url.removeprefix("sqlite:///")) if url else data_dir / "settlement.sqlite"
    return SqliteStore(path)
