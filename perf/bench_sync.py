"""Round-sync benchmark: one round of N trades (default 100,000) over 200 units settled
(sync/settle.py) and committed into the settlement store (sync/store.py), SQLite and
PostgreSQL.

Reference data built here: 24 agents with different taxes (IEE 5.11269632 % and VAT 21 %,
VAT 21 % only, VAT 23 %), 200 units (100 selling, 100 buying), one in ten shared by two or
three owners (60/40 or 33.33/33.33/33.34: the split has remainders).  Trades: seeded random
seller/buyer units, prices from −50.00 to 200.00 €/MWh (about 10 % negative, some zero),
0.1 to 50.0 MWh, over four hourly contracts closed in the same round.

Measured per store: ``settle()`` (entries with taxes and shares, balances, reductions,
programs) — the same for both stores; ``commit`` (row building and the one transaction with
every entry, the balances and their history, the programs and the feedback); and both
together, as trades per second.  SQLite in a temporary file (WAL, synchronous=FULL, as the
server runs it).  PostgreSQL: ``--pg-url`` (a database to write into; the tables are
created by the store's migrations, so use an empty database), otherwise a throwaway
cluster started as tests/pg.py does (with fsync on); if none can be started the SQLite
figures are printed and the JSON says why.  ``--profile`` adds the top functions of a
cProfile run of settle + SQLite commit.

    python perf/bench_sync.py [--trades N] [--seed S] [--pg-url URL] [--no-pg] [--profile]
                              [--repeat N]

The event loop during a settle: ``loop_during_settle`` gives the longest stall and the p99
lag of a 1 ms ticker while one settle runs on the loop and while it runs in a worker thread
(as the round-sync job runs it).

``--repeat N`` settles and commits into SQLite N times and reports the median run (the
machine is shared: single runs move by ±30 %); PostgreSQL gets that run's result.

Printed last: one JSON object.  Target: >= 50,000 trades/s into SQLite (settle + commit).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import gateway.core  # noqa: F401  (registers the risk commands with the codec)
from engine.events import Trade
from gateway.codec import encode
from risk.commands import ReleaseObligations, SetSyncReduction
from risk.refdata import RefData, load
from sync.settle import SyncResult, settle
from sync.store import PostgresStore, SqliteStore, Store

T0 = 1_800_000_000_000
CONTRACTS = [f"PH-20270115-{h:02d}" for h in (10, 11, 12, 13)]
TARGET = 50_000
TAXES = [("5.11269632", "21"), ("0", "21"), ("0", "23")]


def reference_data(n_agents: int = 24, n_units: int = 200) -> RefData:
    agents = [f"AG{i:02d}" for i in range(n_agents)]
    doc_agents = []
    for i, a in enumerate(agents):
        iee, vat = TAXES[i % len(TAXES)]
        doc_agents.append({
            "code": a, "name": f"Agent {a}", "registered_from": "2018-01-01",
            "guarantees": "1000000.00", "deposited": "1500000.00",
            "tax": {"electricity_tax": iee, "vat": vat},
            # each agent represents the next two, so shared units can be offered by it
            "represents": [agents[(i + 1) % n_agents], agents[(i + 2) % n_agents]]})
    units = []
    for u in range(n_units):
        sells = u < n_units // 2
        resp = agents[u % n_agents]
        if u % 10 == 0:
            owners = [{"agent": resp, "share": "60"},
                      {"agent": agents[(u + 1) % n_agents], "share": "40"}]
        elif u % 10 == 5:
            owners = [{"agent": resp, "share": "33.33"},
                      {"agent": agents[(u + 1) % n_agents], "share": "33.33"},
                      {"agent": agents[(u + 2) % n_agents], "share": "33.34"}]
        else:
            owners = [{"agent": resp, "share": "100"}]
        units.append({"code": f"{'S' if sells else 'B'}U{u:03d}",
                      "kind": "sell" if sells else "buy", "area": "ES",
                      "max_energy": "999.0", "responsible": resp, "owners": owners,
                      "valid_from": "2018-01-01"})
    return load({"agents": doc_agents, "units": units})


def make_trades(ref: RefData, n: int, seed: int) -> list[Trade]:
    rng = random.Random(seed)
    sellers = [u for u in ref.units.values() if u.sells]
    buyers = [u for u in ref.units.values() if not u.sells]
    out = []
    for i in range(1, n + 1):
        s, b = rng.choice(sellers), rng.choice(buyers)
        if rng.random() < 0.05:  # now and then a selling unit buys back, a buying one sells
            s, b = b, s
        r = rng.random()
        price = 0 if r < 0.01 else rng.randint(-5_000, -1) if r < 0.11 else rng.randint(
            1, 20_000)
        out.append(Trade.of(T0 + i, i, CONTRACTS[i % 4], 1, price, rng.randint(1, 500),
                         "BUY", 2 * i, "u", b.responsible, b.code, 2 * i + 1, "u",
                         s.responsible, s.code))
    return out


def feedback_of(res: SyncResult) -> list[str]:
    """What the job would store and feed back (sync/job.py)."""
    cmds: list[Any] = [SetSyncReduction("sync", a, c)
                       for a, c in sorted(res.reductions.items()) if c]
    cmds.append(ReleaseObligations("sync", res.sync_id))
    return [json.dumps(encode(c)) for c in cmds]


Timing = tuple[float, float]  # (wall s, this process's CPU s, all threads)


def timed_settle(trades: list[Trade], ref: RefData) -> tuple[SyncResult, Timing]:
    t, c = time.perf_counter(), time.process_time()
    res = settle(1, 1, trades, ref, {}, (), {})
    return res, (time.perf_counter() - t, time.process_time() - c)


async def timed_commit(store: Store, res: SyncResult, fb: list[str]) -> Timing:
    await store.open()
    try:
        t, c = time.perf_counter(), time.process_time()
        ok = await store.commit(res, fb, T0)
        dt = (time.perf_counter() - t, time.process_time() - c)
        assert ok, "the store refused the sync (use an empty database)"
        n = (await store.query("SELECT COUNT(*) AS n FROM entries"))[0]["n"]
        assert n == len(res.entries), (n, len(res.entries))
        return dt
    finally:
        await store.close()


async def loop_stall(trades: list[Trade], ref: RefData, threaded: bool) -> dict[str, Any]:
    """What one settle does to the event loop that serves the traders: a task ticking every
    millisecond measures how late each tick comes while settle runs on the loop (as the
    round-sync job did) or in a worker thread (as it does: ``asyncio.to_thread``)."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = False

    async def ticker() -> None:
        while not done:
            t = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - t - 0.001)

    task = loop.create_task(ticker())
    await asyncio.sleep(0.05)
    lags.clear()
    t0 = time.perf_counter()
    if threaded:
        await asyncio.to_thread(settle, 1, 1, trades, ref, {}, (), {})
    else:
        settle(1, 1, trades, ref, {}, (), {})
    wall = time.perf_counter() - t0
    await asyncio.sleep(0.002)
    done = True
    await task
    lags.sort()
    return {"settle_s": round(wall, 3), "ticks": len(lags),
            "max_stall_ms": round(lags[-1] * 1e3, 1),
            "p99_lag_ms": round(lags[int(0.99 * (len(lags) - 1))] * 1e3, 1)}


def figures(n: int, settle_t: Timing, commit_t: Timing) -> dict[str, Any]:
    """Wall-clock figures (what the target is about) and this process's CPU time (steadier
    on a loaded machine; for PostgreSQL it leaves out the server's own work)."""
    (sw, sc), (cw, cc) = settle_t, commit_t
    return {"settle_s": round(sw, 3), "commit_s": round(cw, 3), "total_s": round(sw + cw, 3),
            "settle_trades_per_s": round(n / sw), "commit_trades_per_s": round(n / cw),
            "trades_per_s": round(n / (sw + cw)),
            "cpu_s": {"settle": round(sc, 3), "commit": round(cc, 3)},
            "trades_per_cpu_s": round(n / max(sc + cc, 1e-9))}


GROUPS = [  # (label, predicate on (file, function)) for "where the time goes"
    ("_Ctx.entries: one side's entries with taxes (settle.py)",
     lambda f, fn: f.endswith("settle.py") and fn == "entries"),
    ("split() for units of three or more owners", lambda f, fn: f.endswith("settle.py")
     and fn in ("split", "<listcomp>")),
    ("settle loop, balances and requests", lambda f, fn: f.endswith("settle.py")
     and fn in ("settle", "_settle")),
    ("ContractSpec.parse per contract (delivery day)", lambda f, fn: f.endswith("contracts.py")),
    ("SQLite execute/executemany (binding + B-trees)", lambda f, fn: "execute" in fn
     and "sqlite3" in fn),
    ("store._entry_params (flat parameter lists)", lambda f, fn: f.endswith("store.py")
     and fn in ("_entry_params", "<genexpr>")),
    ("store._rows (other tables' rows)", lambda f, fn: f.endswith("store.py")
     and fn in ("_rows", "<listcomp>")),
]


def profile(trades: list[Trade], ref: RefData, top: int = 15) -> tuple[list[str],
                                                                        dict[str, float]]:
    """cProfile of settle + a SQLite commit (in this thread, so the commit shows): the top
    functions by own time, and the own time summed by group."""
    pr = cProfile.Profile()
    with tempfile.TemporaryDirectory() as d:
        store = SqliteStore(Path(d) / "p.sqlite")
        store._open()
        try:
            pr.enable()
            res = settle(1, 1, trades, ref, {}, (), {})
            store._commit(res, feedback_of(res), T0, None)
            pr.disable()
        finally:
            assert store._db is not None
            store._db.close()
            store._x.shutdown()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(top)
    lines = [ln for ln in s.getvalue().splitlines() if ln.strip()][-top - 1:]
    stats: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    groups = {"total_profiled_s": round(total, 3)}
    for label, pred in GROUPS:
        groups[label] = round(sum(v[2] for (f, _, fn), v in stats.items() if pred(f, fn)), 3)
    return lines, groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trades", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--pg-url", help="an empty PostgreSQL database (default: a throwaway"
                                     " cluster)")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="settle and commit into SQLite this many times (a fresh file each"
                         " time) and report the median run by total time")
    args = ap.parse_args()

    ref = reference_data()
    trades = make_trades(ref, args.trades, args.seed)
    gc.collect()
    out: dict[str, Any] = {
        "trades": args.trades, "units": len(ref.units), "agents": len(ref.agents),
        "shared_units": sum(len(u.owners) > 1 for u in ref.units.values()),
        "target_sqlite_trades_per_s": TARGET}

    runs = []
    kept: list[Any] = []
    for _ in range(max(args.repeat, 1)):
        kept.clear()  # the same result every time: keep only the last one
        gc.collect()
        res, settle_t = timed_settle(trades, ref)
        fb = feedback_of(res)
        with tempfile.TemporaryDirectory() as d:
            commit_t = asyncio.run(timed_commit(SqliteStore(Path(d) / "settlement.sqlite"),
                                                res, fb))
        runs.append((settle_t[0] + commit_t[0], settle_t, commit_t))
        print(f"sqlite: {figures(args.trades, settle_t, commit_t)}", file=sys.stderr)
        kept[:] = [res, fb]
        del res, fb
    res, fb = kept
    _, settle_t, commit_t = sorted(runs)[len(runs) // 2]
    out["entries"] = len(res.entries)
    out["negative_balances"] = sum(1 for v in res.reductions.values() if v)
    out["sqlite"] = figures(args.trades, settle_t, commit_t)
    if len(runs) > 1:
        out["sqlite"]["median_of"] = len(runs)
        out["sqlite_runs_trades_per_s"] = [round(args.trades / r[0]) for r in runs]

    if args.no_pg:
        out["postgresql"] = {"skipped": "--no-pg"}
    else:
        cluster = None
        url = args.pg_url
        try:
            if url is None:
                from pg import PgUnavailable, start_cluster

                try:
                    cluster = start_cluster(fsync=True)
                    url = cluster.url
                except PgUnavailable as exc:
                    out["postgresql"] = {"skipped": f"no PostgreSQL: {exc}"}
            if url is not None:  # the same settlement result, committed into PostgreSQL
                commit2_t = asyncio.run(timed_commit(PostgresStore(url), res, fb))
                out["postgresql"] = figures(args.trades, settle_t, commit2_t)
                out["postgresql"]["cluster"] = "throwaway" if cluster else "--pg-url"
                print(f"postgresql: {out['postgresql']}", file=sys.stderr)
        except Exception as exc:  # report, do not lose the SQLite figures
            out["postgresql"] = {"skipped": f"{type(exc).__name__}: {exc}"}
        finally:
            if cluster is not None:
                cluster.stop()

    # what a sync does to the loop: settle on it (before) and in a worker thread (now)
    out["loop_during_settle"] = {
        "on_the_loop": asyncio.run(loop_stall(trades, ref, threaded=False)),
        "worker_thread": asyncio.run(loop_stall(trades, ref, threaded=True))}
    out["sqlite_meets_target"] = out["sqlite"]["trades_per_s"] >= TARGET
    out["load_average_1m"] = round(os.getloadavg()[0], 2)
    out["cpus"] = os.cpu_count()
    if args.profile or not out["sqlite_meets_target"]:
        lines, groups = profile(trades, ref)
        print("\n".join(lines), file=sys.stderr)
        out["profile_top"] = [" ".join(ln.split()) for ln in lines[1:8]]
        out["profile_own_time_s"] = groups
    print(json.dumps(out))


if __name__ == "__main__":
    main()
