"""The settlement store on SQLite and on PostgreSQL (a throwaway cluster: tests/pg.py): the
same journal synchronised into both gives the same tables and the same reports; migrations
are recorded in ``schema_version`` and applied once; a sync id is stored once; a failure
inside the commit's transaction leaves nothing.

The journal is the command history of the scenario of tests/test_sync_job.py (four rounds,
taxes, a shared unit, requests, reductions), run once live into SQLite; it is then replayed
into a fresh SQLite store and into PostgreSQL, synchronising at every round close as the live
job did (the feedback commands are in the journal, so the replaying jobs feed nothing back).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_sync_job import (
    AGENTS,
    DAY,
    ROOT,
    Crash,
    Market,
    dump,
    open_sqlite,
    run_steps,
    tables,
    trades,
)

from engine.commands import CloseContracts, NewOrder
from engine.model import Side
from gateway.core import Core
from sync.job import SyncJob
from sync.report import report, to_csv
from sync.settle import SyncResult
from sync.store import PostgresStore, SqliteStore, Store, migrations, open_store

pytest_plugins = ["pg"]

T_AT = 1_800_000_000_000
ALL_AGENTS = (*AGENTS, "OMIE", "REE")
DAYS = (DAY, "2027-01-16")
EXPECTED_TABLES = sorted(["schema_version", "syncs", "entries", "balances",
                          "balance_history", "decisions", "programs", "feedback",
                          "auction_sessions", "auction_entries", "owner"])


async def replay_into(store: Store, history: list[tuple[Any, str, int]]) -> Core:
    """The journal into a fresh core; a sync at every round close, as live."""
    core = Core()
    job = SyncJob(core, store, None)
    await job.open()
    for cmd, origin, ts in history:
        events = core.apply(cmd, ts)
        job.observe([(cmd, origin, events)])
        if type(cmd) is CloseContracts:
            assert await job.sync_pending() is not None
    return core


async def _live(path: Path) -> tuple[list[tuple[Any, str, int]], dict[str, Any]]:
    store = await open_sqlite(path)
    try:
        m = Market(store)
        await m.job.open()
        await run_steps(m)
        return m.history, await dump(store)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[list[tuple[Any, str, int]], dict[str, Any]]:
    """The scenario run live into SQLite: its history and the store's contents."""
    return asyncio.run(_live(tmp_path_factory.mktemp("live") / "settlement.sqlite"))


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def all_reports(store: Store) -> dict[tuple[str, str], dict[str, Any]]:
    return {(a, d): await report(store, a, d) for a in ALL_AGENTS for d in DAYS}


async def test_same_journal_same_tables_and_reports(
        tmp_path: Path, pg_store: PostgresStore,
        journal: tuple[list[tuple[Any, str, int]], dict[str, Any]]) -> None:
    history, live = journal
    lite = await open_sqlite(tmp_path / "settlement.sqlite")
    try:
        core_lite = await replay_into(lite, history)
        core_pg = await replay_into(pg_store, history)
        assert await tables(lite) == EXPECTED_TABLES
        assert await tables(pg_store) == EXPECTED_TABLES
        lite_rows, pg_rows = await dump(lite), await dump(pg_store)
        # the replay stores exactly what the live run stored
        assert lite_rows == live
        # ... and PostgreSQL exactly the same rows, value for value (types included)
        for t in EXPECTED_TABLES:
            assert pg_rows[t] == lite_rows[t], t
        assert len(pg_rows["syncs"]) == 4 and len(pg_rows["entries"]) == 14
        assert {type(v) for row in pg_rows["entries"] for _, v in row} == {int, str}
        reps_lite, reps_pg = await all_reports(lite), await all_reports(pg_store)
        assert reps_pg == reps_lite
        assert [to_csv(r) for r in reps_pg.values()] == [to_csv(r) for r in reps_lite.values()]
        # the reports are not empty where the agents traded
        assert len(reps_pg["AG2", DAY]["entries"]) == 5
        assert reps_pg["AG3", DAY]["totals"]["net"] == reps_lite["AG3", DAY]["totals"]["net"]
        assert reps_pg["AG1", "2027-01-16"]["entries"] == []
        assert await lite.balances() == await pg_store.balances()
        for sid in (1, 2, 3, 4):
            assert await pg_store.feedback(sid) == await lite.feedback(sid)
        assert await pg_store.last_sync() == await lite.last_sync() == 4
        # replaying cores agree on the platform's side too
        assert core_pg.state_hash() == core_lite.state_hash()
    finally:
        await lite.close()


async def test_cli_report_from_postgresql_equals_sqlite(
        tmp_path: Path, pg_url: str,
        journal: tuple[list[tuple[Any, str, int]], dict[str, Any]]) -> None:
    history, _ = journal
    data = tmp_path / "data"
    data.mkdir()
    lite = await open_sqlite(data / "settlement.sqlite")
    pg = PostgresStore(pg_url)
    await pg.open()
    try:
        await replay_into(lite, history)
        await replay_into(pg, history)
    finally:
        await lite.close()
        await pg.close()

    def cli(*where: str, fmt: str = "json") -> str:
        r = subprocess.run([sys.executable, "-m", "gateway.cli", "settlement", "report",
                            "--agent", "AG3", "--day", DAY, "--format", fmt, *where],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    from_pg = json.loads(cli("--store", pg_url))
    assert from_pg == json.loads(cli("--data-dir", str(data)))
    assert len(from_pg["entries"]) == 4  # SELLU3's 60 % of four trades
    assert cli("--store", pg_url, fmt="csv") == cli("--data-dir", str(data), fmt="csv")


# ------------------------------------------------------------------ store mechanics


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "settlement.sqlite")
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_migrations_recorded_and_applied_once(store_url: str, tmp_path: Path) -> None:
    want = [v for v, _ in migrations()]
    assert want == sorted(want) and want[:2] == [1, 2]
    store = open_store(store_url, tmp_path)
    assert isinstance(store, PostgresStore if store_url.startswith("postgresql") else
                      SqliteStore)
    await store.open()
    try:
        rows = await store.query("SELECT version FROM schema_version ORDER BY version")
        assert [r["version"] for r in rows] == want
        await store.query("INSERT INTO balances (agent, deposited, reserved, balance,"
                          " reduction) VALUES ('AGX', 1, 2, 3, 4)")
    finally:
        await store.close()
    for _ in range(2):  # re-opening applies nothing again and keeps the data
        store = open_store(store_url, tmp_path)
        await store.open()
        try:
            rows = await store.query("SELECT version FROM schema_version ORDER BY version")
            assert [r["version"] for r in rows] == want
            assert (await store.balances())["AGX"].balance == 3
        finally:
            await store.close()


async def _one_sync(store: Store, fault: Any = None) -> Any:
    """Round 1 of the scenario and its sync into ``store``; the result."""
    m = Market(store)
    m.job.fault = fault
    await m.job.open()
    await run_steps(m, 0, 2)
    m.at(2)
    await m.submit(CloseContracts(("PH-20270115-10",)), "calendar")
    return await m.job.sync_pending()


async def test_store_refuses_a_sync_id_twice(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url, tmp_path)
    await store.open()
    try:
        res = await _one_sync(store)
        before = await dump(store)
        assert len(before["entries"]) == 5
        assert await store.commit(res, ["again"], 1) is False
        assert await dump(store) == before
    finally:
        await store.close()


async def test_failure_inside_the_commit_leaves_nothing(store_url: str, tmp_path: Path
                                                        ) -> None:
    def fault(point: str) -> None:
        if point == "during_commit":
            raise Crash(point)

    store = open_store(store_url, tmp_path)
    await store.open()
    try:
        with pytest.raises(Crash):
            await _one_sync(store, fault)
        rows = await dump(store)
        assert all(rows[t] == [] for t in rows if t != "schema_version")
        assert await store.last_sync() == 0
        res = await _one_sync(store)  # the store is usable after the rollback
        assert res is not None and await store.last_sync() == 1
    finally:
        await store.close()


async def test_server_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    from wsclient import contract_id, start_server

    c = contract_id(10)
    srv = await start_server(tmp_path / "srv", (c,), settlement_url=pg_url)
    try:
        assert isinstance(srv.store, PostgresStore)
        sub = srv.sequencer.submit
        await sub(NewOrder("ana", "AG1", "SELLU1", c, Side.SELL, 4510, 100), "ana")
        ev = await sub(NewOrder("carlos", "AG2", "BUYU2", c, Side.BUY, 4600, 60), "carlos")
        assert len(trades(ev)) == 1
        await sub(CloseContracts((c,)), "calendar")
        for _ in range(500):
            if srv.core.risk.account("AG2")["obligations"] == 0:
                break
            await asyncio.sleep(0.02)
        assert srv.core.risk.account("AG2")["obligations"] == 0
        assert await srv.store.last_sync() == 1
        rows = await srv.store.query("SELECT agent, kind, total FROM entries ORDER BY agent")
        assert [(r["agent"], r["kind"], r["total"]) for r in rows] == [
            ("AG1", "DCIC", 327_426), ("AG2", "OPIC", 344_166)]
    finally:
        await srv.stop()
    assert not (tmp_path / "srv" / "settlement.sqlite").exists()


async def test_concurrent_commits_of_one_sync_id_refuse_the_second(pg_url: str) -> None:
    """Two jobs (two processes on one PostgreSQL store) commit the same sync id at once: one
    stores it, the other must be refused (False), as a sequential second commit is.
    PostgresStore.commit checks with ``SELECT … FOR UPDATE``, which locks nothing when the
    row does not exist yet: both pass the check and the second INSERT fails with a
    UniqueViolationError (that, in the job, ends the sync task)."""
    from sync.settle import SyncResult

    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    await a.open()
    await b.open()
    try:
        res = SyncResult(1, 1, 0)
        out = await asyncio.gather(a.commit(res, ["{}"], 1), b.commit(res, ["{}"], 1),
                                   return_exceptions=True)
        assert sorted(out, key=repr) == [False, True], out
        assert await a.last_sync() == 1
    finally:
        await a.close()
        await b.close()


async def test_report_programs_are_those_of_the_day(store_url: str, tmp_path: Path) -> None:
    """``report(agent, day)`` is the agent's settlement for one delivery day (R49.1.3): its
    programs must be the periods of that day, not every period its units ever traded."""
    from test_settlement import trade

    from gateway.refdata_file import read_and_validate
    from sync.settle import settle

    ref = read_and_validate(ROOT / "examples" / "refdata.toml")[1]
    res = settle(2, 1, [trade(1, 4510, 60, contract="PH-20270115-10", rnd=1),
                        trade(2, 4000, 30, contract="PH-20270116-10", rnd=2)], ref, {}, (), {})
    store = open_store(store_url, tmp_path)
    await store.open()
    try:
        assert await store.commit(res, [], T_AT)
        rep = await report(store, "AG1", DAY)
        assert [e["trade_id"] for e in rep["entries"]] == [1]  # entries: that day only
        assert [(p["unit"], p["period"], p["energy"]) for p in rep["programs"]] == [
            ("SELLU1", "PH-20270115-10", 60)]
    finally:
        await store.close()


def test_pg_placeholders() -> None:
    from sync.store import _pg

    assert _pg("INSERT INTO t (a, b) VALUES (?, ?)") == "INSERT INTO t (a, b) VALUES ($1, $2)"
    # numbered ones keep their number (not "$1" followed by "2"); a bare one after them is
    # one more than the largest so far, as in SQLite
    assert _pg("?1, ?12 + ?13 + ?14, ?") == "$1, $12 + $13 + $14, $15"
    assert _pg("? ?3 ? ?2") == "$1 $3 $4 $2"


async def test_numbered_placeholders_on_both_stores(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url, tmp_path)
    await store.open()
    try:
        await store.query("INSERT INTO balances (agent, deposited, reserved, balance,"
                          " reduction) VALUES (?1, ?2, ?2, ?3, 0)", ("AGX", 5, 7))
        rows = await store.query("SELECT agent, deposited, reserved, balance FROM balances"
                                 " WHERE balance = ?2 AND agent = ?1", ("AGX", 7))
        assert rows == [{"agent": "AGX", "deposited": 5, "reserved": 5, "balance": 7}]
    finally:
        await store.close()


def _many_entries(sync_id: int) -> SyncResult:
    """A settlement of 59 trades (148 entries): both kinds on both sides, a shared unit, four
    agents, two delivery days."""
    from test_settlement import REF, trade

    from sync.settle import settle

    units = ["SELLU1", "SELLU3", "BUYU2", "PTBUY4"]
    trades = [trade(i, (-1) ** i * (i * 7919 % 99_991), 1 + i * 31 % 9_990,
                    sell_unit=units[i % 4], buy_unit=units[(i + 2) % 4],
                    contract=("PH-20270115-10", "PH-20270116-23")[i % 2], rnd=1 + i % 3)
              for i in range(1, 60)]
    return settle(sync_id, 1, trades, REF, {}, (), {})


@pytest.mark.parametrize("n", [0, 1, 49, 50, 51, 100, 137])
async def test_entries_stored_value_for_value(store_url: str, tmp_path: Path, n: int) -> None:
    """Every entry's row holds its fields, the sync id and base + iee + vat, as integers and
    strings, whatever the number of entries (SQLite inserts them ENTRIES_PER_INSERT per
    statement and the rest in one; PostgreSQL copies them)."""
    from sync.store import ENTRIES_PER_INSERT, ENTRY_COLUMNS

    assert ENTRIES_PER_INSERT == 50  # the cases above straddle it
    res = _many_entries(7)
    assert len(res.entries) >= 137
    del res.entries[n:]
    store = open_store(store_url, tmp_path)
    await store.open()
    try:
        assert await store.commit(res, [], T_AT)
        rows = await store.query(f"SELECT {', '.join(ENTRY_COLUMNS)} FROM entries"
                                 " ORDER BY trade_id, side, agent")
    finally:
        await store.close()
    want = sorted(({"sync_id": 7, **e._asdict(), "total": e.base + e.iee + e.vat}
                   for e in res.entries), key=lambda r: (r["trade_id"], r["side"], r["agent"]))
    assert rows == want
    for r, w in zip(rows, want, strict=True):
        assert [type(v) for v in r.values()] == [type(v) for v in w.values()]


async def _entries_key(store: Store) -> tuple[list[str], list[str]]:
    """The entries table's primary key columns, in order, and its other indexes."""
    if isinstance(store, SqliteStore):
        pk = await store.query("SELECT name FROM pragma_table_info('entries') WHERE pk > 0"
                               " ORDER BY pk")
        ix = await store.query("SELECT name FROM sqlite_master WHERE type = 'index'"
                               " AND tbl_name = 'entries' AND name NOT LIKE 'sqlite_%'")
    else:
        pk = await store.query(
            "SELECT k.column_name AS name FROM information_schema.table_constraints c"
            " JOIN information_schema.key_column_usage k ON k.constraint_name ="
            " c.constraint_name AND k.table_schema = c.table_schema"
            " WHERE c.table_name = 'entries' AND c.constraint_type = 'PRIMARY KEY'"
            " AND c.table_schema = current_schema() ORDER BY k.ordinal_position")
        ix = await store.query("SELECT c.relname AS name FROM pg_index i JOIN pg_class c"
                               " ON c.oid = i.indexrelid WHERE i.indrelid = 'entries'::regclass"
                               " AND NOT i.indisprimary")
    return [r["name"] for r in pk], sorted(r["name"] for r in ix)


async def test_migration_3_rekeys_the_entries_of_an_existing_store(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store created at version 2 (entries keyed by trade, side and agent, plus an
    (agent, day) index), with syncs in it: opening it with version 3 keeps every row as it
    was, keys the entries by (agent, day, trade_id, side) without the second index, and
    the store goes on: the reports are the same, a sync is stored once, an entry once."""
    import sync.store

    # sync 1: the scenario's first round, computed by today's job (which needs today's
    # schema) on a scratch store, stored in the version-2 store
    scratch = await open_sqlite(tmp_path / "scratch.sqlite")
    try:
        first = await _one_sync(scratch)
    finally:
        await scratch.close()
    all_migrations = migrations()
    monkeypatch.setattr(sync.store, "migrations",
                        lambda: [m for m in all_migrations if m[0] <= 2])
    store = open_store(store_url, tmp_path)
    await store.open()
    try:
        assert await store.commit(first, ["{}"], T_AT)
        assert await store.commit(_many_entries(2), ["{}"], T_AT)  # sync 2: 148 entries
        assert await _entries_key(store) == (["trade_id", "side", "agent"],
                                             ["entries_agent_day"])
        before = await dump(store)
        reports = await all_reports(store)
    finally:
        await store.close()
    monkeypatch.setattr(sync.store, "migrations", lambda: all_migrations)
    store = open_store(store_url, tmp_path)
    await store.open()
    try:
        rows = await store.query("SELECT version FROM schema_version ORDER BY version")
        assert [r["version"] for r in rows] == [v for v, _ in all_migrations]
        assert [v for v, _ in all_migrations][:3] == [1, 2, 3]
        assert await _entries_key(store) == (["agent", "day", "trade_id", "side"], [])
        after = await dump(store)
        assert len(after["entries"]) == len(before["entries"]) == 5 + 148
        assert {t: r for t, r in after.items() if t != "schema_version" and t in before} == {
            t: r for t, r in before.items() if t != "schema_version"}
        assert {t for t in after if t not in before} == {"owner"}  # later versions' table
        assert await all_reports(store) == reports
        assert await tables(store) == EXPECTED_TABLES
        # the store goes on as before: a sync once, an entry once
        assert await store.commit(_many_entries(2), [], T_AT) is False
        again = _many_entries(3)
        del again.entries[1:]  # an entry sync 2 stored, in another sync
        with pytest.raises(Exception, match=r"(?i)unique|primary key"):
            await store.commit(again, [], T_AT)
        assert await store.last_sync() == 2
        more = _many_entries(4)
        more.entries[:] = [e._replace(trade_id=e.trade_id + 1000) for e in more.entries]
        assert await store.commit(more, [], T_AT)
        n = await store.query("SELECT COUNT(*) AS n FROM entries")
        assert n[0]["n"] == len(after["entries"]) + len(more.entries)
    finally:
        await store.close()


async def test_report_reads_an_agents_day_straight_from_the_key(tmp_path: Path) -> None:
    """SQLite: an agent's entries of a day, in the report's order, are one range of the
    entries' key (no other index, no sort)."""
    store = await open_sqlite(tmp_path / "settlement.sqlite")
    try:
        plan = await store.query(
            "EXPLAIN QUERY PLAN SELECT sync_id, trade_id, side, unit, total FROM entries"
            " WHERE agent = ? AND day = ? ORDER BY trade_id, side", ("AG1", DAY))
    finally:
        await store.close()
    assert [r["detail"] for r in plan] == ["SEARCH entries USING PRIMARY KEY (agent=? AND day=?)"]


# ------------------------------------------------------------------ one engine per store


async def test_a_store_settles_one_engines_rounds_and_refuses_another(
        store_url: str, tmp_path: Path) -> None:
    # two engines sharing a store would collide: round numbers and trade ids repeat, and
    # the rounds one synced would be skipped by the other (its last_sync is the store's)
    from sync.store import StoreOwned

    store = open_store(store_url, tmp_path)
    await store.open()
    try:
        await store.claim("engine-a", T_AT)
        await store.claim("engine-a", T_AT + 1)  # its own store, again: fine
        with pytest.raises(StoreOwned) as caught:
            await store.claim("engine-b", T_AT + 2)
        msg = str(caught.value)
        assert "engine-a" in msg and "engine-b" in msg and "must not share" in msg
        if store_url.startswith("postgresql"):  # where, without the credentials
            assert store_url.rpartition("@")[2] in msg and "@" not in msg
        rows = await store.query("SELECT one, engine, claimed_at FROM owner")
        assert rows == [{"one": 1, "engine": "engine-a", "claimed_at": T_AT}]
    finally:
        await store.close()


async def test_a_server_refuses_the_store_of_another_data_folder(tmp_path: Path) -> None:
    from wsclient import contract_id, running_server

    from gateway.server import ENGINE_ID, Config, Server
    from sync.store import StoreOwned

    shared = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    async with running_server(tmp_path / "a", (contract_id(10),), settlement_url=shared):
        pass
    ident = (tmp_path / "a" / ENGINE_ID).read_text().strip()
    srv = Server(Config(data_dir=tmp_path / "b", port=0, calendar=None, fsync=False,
                        settlement_url=shared))
    with pytest.raises(StoreOwned) as caught:
        await srv.start()
    assert caught.value.owner == ident
    assert caught.value.engine == (tmp_path / "b" / ENGINE_ID).read_text().strip() != ident
    assert srv.ws_server is None
    # nothing was served from b, and a keeps its store across restarts
    async with running_server(tmp_path / "a", settlement_url=shared):
        assert (tmp_path / "a" / ENGINE_ID).read_text().strip() == ident
    async with running_server(tmp_path / "b"):  # b with its own store is fine
        pass


def test_ronda_serve_says_why_it_refuses_a_store_or_a_broken_engine_id(
        tmp_path: Path) -> None:
    from gateway.server import ENGINE_ID

    shared = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    args = ["--port", "0", "--no-calendar", "--no-fsync", "--settlement-url", shared]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def serve(data: Path) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--data-dir",
                               str(data), *args], env=env, capture_output=True, timeout=60)

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ENGINE_ID).write_text("not-a-uuid\n")
    done = serve(tmp_path / "a")
    assert done.returncode == 2
    assert b"engine-id: not an engine id (a UUID): 'not-a-uuid'" in done.stderr
    (tmp_path / "a" / ENGINE_ID).unlink()
    asyncio.run(_claim(shared, tmp_path))
    done = serve(tmp_path / "a")
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "settles the rounds of another engine (someone-else" in err
    assert "Nothing was served" in err and b"serving" not in done.stdout


async def _claim(url: str, tmp_path: Path) -> None:
    store = open_store(url, tmp_path)
    await store.open()
    try:
        await store.claim("someone-else", T_AT)
    finally:
        await store.close()
