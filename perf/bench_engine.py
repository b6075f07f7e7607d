"""Engine benchmark: a seeded mixed flow through the engine, against a minimal book.

The flow (default 1,000,000 operations over 4 contracts): about 55 % new limit orders,
25 % cancels, 10 % modifies, 5 % IoC/FoK and 5 % icebergs.  Cancels and modifies target
orders that are really resting: the generator simulates the flow with the minimal book
while it builds it, so the books stay at a stationary size as in a real market.

The same flow runs, in the same process, through a *baseline*: a minimal price-time book
(a SortedDict of levels with deques, lazy cancel, no events, no validation, icebergs as a
peak refilled at the back).  Both produce the same trades, which the output shows.

Both runs have the same garbage-collector setting: automatic cyclic collection off.  The
core creates no reference cycles (``tests/test_engine_gc.py`` proves it), so the single
writer never needs the cyclic collector (see docs/performance.md).

Printed last: one JSON object with ops_per_s, latency percentiles (µs, per operation,
measured around each call), trades, and the ratio engine/baseline throughput.

    python perf/bench_engine.py [--ops N] [--seed S] [--chunk N | --sequential]
    python perf/bench_engine.py --ops 20000 --only {none,baseline,engine,risk}

It runs three times over the same flow: the baseline, the engine with risk off, and the
engine with the risk guard on (every order checked in full: agent, unit, operative limit with
taxes, energy per quarter-hour, rate limits; nothing refused, so the flows are identical).

The three runs are interleaved: the flow is cut into chunks (``--chunk``, 10,000 operations)
and each chunk runs through the three, in an order that turns round from one chunk to the
next, each run timing only its own chunks.  So a change of the machine's load during the
benchmark weighs on the three alike, and the ratios do not depend on which run had the quiet
moment.  ``--sequential`` runs them one after the other instead (the whole flow through the
baseline, then through the engine, then through the engine with risk).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from array import array
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sortedcontainers import SortedDict

from engine.commands import (
    CancelOrder,
    CreateContract,
    ModifyOrder,
    NewOrder,
    OpenContracts,
)
from engine.engine import Engine
from engine.events import Trade
from engine.model import Exec, Side

T0 = 1_800_000_000_000
CONTRACTS = ["PH-20270115-10", "PH-20270115-11", "PH-20270115-12", "PH-20270115-13"]
MID = 5_000  # 50.00 €/MWh
AGENT = {Side.BUY: "A1", Side.SELL: "A2"}


class BaseOrder:
    __slots__ = ("dead", "id", "peak", "price", "qty", "side", "vis")

    def __init__(self, id: int, side: int, price: int, qty: int, peak: int) -> None:
        self.id = id
        self.side = side
        self.price = price
        self.qty = qty  # open quantity
        self.peak = peak
        self.vis = qty
        self.dead = False


class BaselineBook:
    """Minimal price-time book: SortedDict of price -> deque, lazy cancel, no events, no
    validation; icebergs as a visible peak refilled at the back of the level, so that it
    does the same matching work (and the same trades) as the engine on the same flow."""

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()

    def add(self, o: BaseOrder, fok: bool, rest: bool) -> int:
        buy = o.side == 0
        opp = self.asks if buy else self.bids
        trades = 0
        if fok:
            avail = 0
            for key in opp:
                p = key if buy else -key
                if (p > o.price) if buy else (p < o.price):
                    break
                for r in opp[key]:
                    if not r.dead:
                        avail += r.qty
                if avail >= o.qty:
                    break
            if avail < o.qty:
                return 0
        while o.qty and opp:
            key, dq = opp.peekitem(0)
            p = key if buy else -key
            if (p > o.price) if buy else (p < o.price):
                break
            while o.qty and dq:
                r = dq[0]
                if r.dead:
                    dq.popleft()
                    continue
                q = min(o.qty, r.vis)
                o.qty -= q
                r.qty -= q
                r.vis -= q
                trades += 1
                if r.vis == 0:
                    dq.popleft()
                    if r.qty:
                        r.vis = min(r.peak, r.qty)
                        dq.append(r)
                    else:
                        r.dead = True
            if not dq:
                del opp[key]
        if o.qty and rest:
            o.vis = min(o.peak, o.qty) if o.peak else o.qty
            own = self.bids if buy else self.asks
            key = -o.price if buy else o.price
            dq = own.get(key)
            if dq is None:
                dq = own[key] = deque()
            dq.append(o)
        return trades


class Baseline:
    """The baseline market: one minimal book per contract and an id -> order map."""

    def __init__(self) -> None:
        self.books = [BaselineBook() for _ in CONTRACTS]
        self.orders: dict[int, tuple[BaseOrder, int]] = {}
        self.next_id = 1

    def op(self, op: tuple[Any, ...]) -> int:
        kind = op[0]
        if kind == "new":
            _, c, side, price, qty, ex, peak = op
            o = BaseOrder(self.next_id, 0 if side is Side.BUY else 1, price, qty, peak)
            self.next_id += 1
            rest = ex is Exec.NON
            t = self.books[c].add(o, ex is Exec.FOK, rest)
            if rest and o.qty:
                self.orders[o.id] = (o, c)
            return t
        if kind == "cancel":
            ent = self.orders.pop(op[1], None)
            if ent is not None:
                ent[0].dead = True
            return 0
        _, oid, _rev, price, qty, _side = op
        ent = self.orders.pop(oid, None)
        if ent is None or ent[0].dead or not ent[0].qty:
            return 0
        old, c = ent
        old.dead = True
        o = BaseOrder(oid, old.side, price, qty, 0)
        t = self.books[c].add(o, False, True)
        if o.qty:
            self.orders[oid] = (o, c)
        return t

    def resting(self, oid: int) -> bool:
        ent = self.orders.get(oid)
        return ent is not None and not ent[0].dead and ent[0].qty > 0


def make_flow(n: int, seed: int) -> list[tuple[Any, ...]]:
    """Operations as plain tuples.  Every new order is valid, so the engine assigns ids
    1, 2, 3, ... in flow order; the generator runs the flow through the baseline as it
    goes, so cancels and modifies pick orders that are resting at that point."""
    rng = random.Random(seed)
    sim = Baseline()
    flow: list[tuple[Any, ...]] = []
    live: list[int] = []
    info: dict[int, list[Any]] = {}  # id -> [side, revision]

    def pick() -> int | None:
        while live:
            i = rng.randrange(len(live))
            oid = live[i]
            if sim.resting(oid):
                return oid
            live[i] = live[-1]
            live.pop()
        return None

    for _ in range(n):
        r = rng.random()
        op: tuple[Any, ...] | None = None
        if r < 0.25:
            oid = pick()
            if oid is not None:
                op = ("cancel", oid, info[oid][0])
        elif r < 0.35:
            oid = pick()
            if oid is not None:
                side, rev = info[oid]
                off = rng.randint(-5, 40)
                price = MID - off if side is Side.BUY else MID + off
                op = ("modify", oid, rev, price, rng.randint(1, 100), side)
                info[oid][1] = rev + 1
        if op is None:
            c = rng.randrange(len(CONTRACTS))
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            off = rng.randint(-18, 40)  # mostly passive; keeps the book size stationary
            price = MID - off if side is Side.BUY else MID + off
            qty = rng.randint(1, 100)
            oid = sim.next_id
            if 0.35 <= r < 0.40:
                ex = Exec.IOC if rng.random() < 0.5 else Exec.FOK
                price = MID + 12 if side is Side.BUY else MID - 12
                op = ("new", c, side, price, qty, ex, 0)
            elif 0.40 <= r < 0.45:
                op = ("new", c, side, price, rng.randint(50, 400), Exec.NON, rng.randint(5, 40))
            else:
                op = ("new", c, side, price, qty, Exec.NON, 0)
            if op[5] is Exec.NON:
                live.append(oid)
                info[oid] = [side, 1]
        sim.op(op)
        flow.append(op)
    return flow


def engine_commands(flow: list[tuple[Any, ...]]) -> list[Any]:
    cmds: list[Any] = []
    for op in flow:
        if op[0] == "new":
            _, c, side, price, qty, ex, peak = op
            ag = AGENT[side]
            cmds.append(NewOrder(ag, ag, "U" + ag, CONTRACTS[c], side, price, qty, ex,
                                 peak=peak))
        elif op[0] == "cancel":
            ag = AGENT[op[2]]
            cmds.append(CancelOrder(ag, ag, op[1]))
        else:
            _, oid, rev, price, qty, side = op
            ag = AGENT[side]
            cmds.append(ModifyOrder(ag, ag, oid, rev, price, qty))
    return cmds


def bench_refdata() -> dict[str, Any]:
    """Two trading agents with ample guarantees, energy and request limits, so that risk
    checks every order in full and refuses none (the flow stays the same)."""
    agents = [{"code": a, "name": a, "registered_from": "2020-01-01",
               "guarantees": "9000000000.00",
               "tax": {"electricity_tax": "5.11269632", "vat": "21"}} for a in ("A1", "A2")]
    users = [{"id": a, "agent": a, "roles": ["trader"]} for a in ("A1", "A2")]
    units = [{"code": "U" + a, "kind": kind, "area": "ES", "max_energy": "99999999.0",
              "responsible": a, "owners": [{"agent": a, "share": "100"}],
              "valid_from": "2020-01-01"} for a, kind in (("A1", "buy"), ("A2", "sell"))]
    return {"agents": agents, "users": users, "units": units,
            "rate_limits": {"rules": [{"window_ms": 1000, "max": 10_000_000}]}}


def setup_engine(risk: bool = False) -> Engine:
    e = Engine()
    if risk:
        from risk.guard import RiskGuard
        from risk.refdata import load

        RiskGuard.install(e, load(bench_refdata()))
    for c in CONTRACTS:
        e.apply(CreateContract(c, T0 + 10**9), T0)
    e.apply(OpenContracts(tuple(CONTRACTS)), T0)
    return e


class EngineRun:
    """The flow through one engine, chunk by chunk: ``run(i, j)`` applies commands i..j-1
    and adds their time."""

    def __init__(self, cmds: list[Any], e: Engine) -> None:
        self.cmds = cmds
        self.e = e
        self.lat = array("q", bytes(8 * len(cmds)))
        self.trades = 0
        self.events = 0
        self.elapsed_ns = 0

    def run(self, i0: int, i1: int) -> None:
        cmds, lat = self.cmds, self.lat
        trades = 0
        events = 0
        apply = self.e.apply
        clock = time.perf_counter_ns
        ts = T0 + 1 + i0
        start = clock()
        for i in range(i0, i1):
            t = clock()
            out = apply(cmds[i], ts)
            for ev in out:
                if type(ev) is Trade:
                    trades += 1
            lat[i] = clock() - t
            events += len(out)
            ts += 1
        self.elapsed_ns += clock() - start
        self.trades += trades
        self.events += events

    def result(self) -> dict[str, Any]:
        return {"elapsed_ns": self.elapsed_ns, "lat": self.lat, "trades": self.trades,
                "events": self.events, "resting_at_end": len(self.e.orders)}


class BaselineRun:
    """The flow through the minimal book, chunk by chunk."""

    def __init__(self, flow: list[tuple[Any, ...]]) -> None:
        self.flow = flow
        self.base = Baseline()
        self.lat = array("q", bytes(8 * len(flow)))
        self.trades = 0
        self.elapsed_ns = 0

    def run(self, i0: int, i1: int) -> None:
        flow, lat = self.flow, self.lat
        op_ = self.base.op
        trades = 0
        clock = time.perf_counter_ns
        start = clock()
        for i in range(i0, i1):
            t = clock()
            trades += op_(flow[i])
            lat[i] = clock() - t
        self.elapsed_ns += clock() - start
        self.trades += trades

    def result(self) -> dict[str, Any]:
        return {"elapsed_ns": self.elapsed_ns, "lat": self.lat, "trades": self.trades}


def run_engine(cmds: list[Any], e: Engine) -> dict[str, Any]:
    r = EngineRun(cmds, e)
    r.run(0, len(cmds))
    return r.result()


def run_baseline(flow: list[tuple[Any, ...]]) -> dict[str, Any]:
    r = BaselineRun(flow)
    r.run(0, len(flow))
    return r.result()


def run_interleaved(runs: list[BaselineRun | EngineRun], n: int, chunk: int) -> None:
    """Chunk k runs through the runs in a rotated order (ABC, BCA, CAB, ...), so that each
    run is as often first, second and last; the collector runs between chunks."""
    for k, i0 in enumerate(range(0, n, chunk)):
        i1 = min(n, i0 + chunk)
        for j in range(len(runs)):
            runs[(k + j) % len(runs)].run(i0, i1)
        gc.collect()


def percentiles(lat: array) -> dict[str, float]:
    s = sorted(lat)
    n = len(s)

    def p(q: float) -> float:
        return round(s[min(n - 1, int(q * n))] / 1000, 2)

    return {"p50_us": p(0.50), "p99_us": p(0.99), "p999_us": p(0.999), "max_us": p(1.0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--chunk", type=int, default=10_000,
                    help="operations per chunk of the interleaved runs")
    ap.add_argument("--sequential", action="store_true",
                    help="the three runs one after the other, not interleaved")
    ap.add_argument("--only", choices=("none", "baseline", "engine", "risk"),
                    help="build the flow and the three set-ups, then run only this one (or"
                         " none): for counting instructions, e.g. under callgrind")
    args = ap.parse_args()

    flow = make_flow(args.ops, args.seed)
    cmds = engine_commands(flow)
    gc.collect()
    gc.freeze()
    gc.disable()

    if args.only is not None:
        # the same work in every case but the one run, so that two counts subtract
        only: dict[str, Any] = {"none": {}}
        engines = {"engine": setup_engine(), "risk": setup_engine(risk=True)}
        if args.only == "baseline":
            only["baseline"] = run_baseline(flow)
        elif args.only in engines:
            only[args.only] = run_engine(cmds, engines[args.only])
        print(json.dumps({"benchmark": "engine", "ops": len(flow), "only": args.only,
                          "trades": only[args.only].get("trades")}))
        return

    if args.sequential:
        base = run_baseline(flow)
        gc.collect()
        res = run_engine(cmds, setup_engine())
        gc.collect()
        risk = run_engine(cmds, setup_engine(risk=True))
        gc.collect()
    else:
        runs: list[BaselineRun | EngineRun] = [
            BaselineRun(flow), EngineRun(cmds, setup_engine()),
            EngineRun(cmds, setup_engine(risk=True))]
        run_interleaved(runs, len(flow), args.chunk)
        base, res, risk = (r.result() for r in runs)

    n = len(flow)
    base_ops = n / (base["elapsed_ns"] / 1e9)
    eng_ops = n / (res["elapsed_ns"] / 1e9)
    risk_ops = n / (risk["elapsed_ns"] / 1e9)
    assert risk["trades"] == res["trades"], "risk refused orders: the flows differ"
    out: dict[str, Any] = {
        "benchmark": "engine",
        "ops": n,
        "seed": args.seed,
        "ops_per_s": round(eng_ops),
        **percentiles(res["lat"]),
        "trades": res["trades"],
        "events": res["events"],
        "resting_at_end": res["resting_at_end"],
        "baseline_ops_per_s": round(base_ops),
        "baseline_trades": base["trades"],
        "baseline_p99_us": percentiles(base["lat"])["p99_us"],
        "ratio_to_baseline": round(eng_ops / base_ops, 3),
        "risk_on_ops_per_s": round(risk_ops),
        "risk_on_p99_us": percentiles(risk["lat"])["p99_us"],
        "risk_on_to_off_ratio": round(risk_ops / eng_ops, 3),
        "python": sys.version.split()[0],
        "runs": "sequential" if args.sequential else f"interleaved in chunks of {args.chunk}",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
