"""Auction clearing benchmark: one intraday-auction session with many bids, cleared whole.

A seeded session (default 20,000 simple bids over the 24 hourly periods of a day, 1 to 5
price-quantity steps each, sell steps with increasing prices and buy steps with decreasing
ones as R39.4.2.1/R39.4.3.1 ask, prices from -50.00 to 300.00 €/MWh, steps of 0.1 to 50.0
MWh) is built through the core (:class:`gateway.core.Core`: engine, risk guard and auction
module) with generated reference data: ``--agents`` agents, each responsible for a selling
and a buying unit with ample energy and guarantees, so that every bid is accepted.

Timed:

* ``submit_s`` — the SubmitAuctionBid commands (each validated by the risk guard);
* ``clear_core_s`` — the ClearAuction command through the core: every period cleared by the
  simple method (R40.2), the public prices, the private allocations, the programs of every
  allocated unit moved (R50) and the settlement input (R44);
* ``clear_only_s`` — :func:`auctions.clearing.clear` alone on the same steps, all periods
  (best of ``--repeat``).

Printed last: one JSON object with the timings (wall clock ``*_s`` and process CPU
``*_cpu_s``, the latter less sensitive to a busy machine) and sizes.  Target: clearing
<= 1 s.

    python perf/bench_auction.py [--bids N] [--periods P] [--agents A] [--seed S]
                                 [--repeat R] [--profile]

``--profile`` prints where the time of ClearAuction goes (cProfile, top functions).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auctions.clearing import Step, clear
from auctions.session import (
    AuctionAllocation,
    AuctionPrice,
    ClearAuction,
    CloseAuction,
    OpenAuction,
    ScheduleAuction,
    SubmitAuctionBid,
)
from engine.commands import CreateContract, OpenContracts
from engine.contracts import HOUR_MS, ContractSpec
from engine.events import Ack
from gateway.core import Core
from risk.commands import LoadReferenceData

T0 = 1_800_000_000_000  # 2027-01-15 08:00 UTC
DAY = "20270116"
SESSION = "BENCH-1"


def refdata(agents: int) -> str:
    doc: dict[str, Any] = {
        "rate_limits": {"rules": [{"window_ms": 1000, "max": 10_000_000}],
                        "warning_ratio": 0.8, "hibernate_on_breach": False},
        "agents": [], "users": [], "units": [],
    }
    for i in range(agents):
        a = f"A{i:04d}"
        doc["agents"].append({"code": a, "name": f"Agent {i}", "registered_from": "2018-01-01",
                              "guarantees": "1000000000.00", "deposited": "1000000000.00",
                              "tax": {"electricity_tax": "0", "vat": "21"}})
        doc["users"].append({"id": f"u{i}", "agent": a, "roles": ["trader"]})
        for kind, prefix in (("sell", "S"), ("buy", "B")):
            doc["units"].append({"code": f"{prefix}{i:04d}", "kind": kind, "area": "ES",
                                 "max_energy": "99999.0", "responsible": a,
                                 "owners": [{"agent": a, "share": "100"}],
                                 "valid_from": "2018-01-01"})
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def make_bids(n: int, contracts: list[str], agents: int, seed: int
              ) -> list[SubmitAuctionBid]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        i = rnd.randrange(agents)
        sell = rnd.random() < 0.5
        k = rnd.randint(1, 5)
        prices = sorted(rnd.sample(range(-5_000, 30_001), k), reverse=not sell)
        steps = tuple((p, rnd.randint(1, 500)) for p in prices)
        out.append(SubmitAuctionBid(f"u{i}", f"A{i:04d}", SESSION,
                                    f"{'S' if sell else 'B'}{i:04d}", rnd.choice(contracts),
                                    "SELL" if sell else "BUY", steps))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bids", type=int, default=20_000)
    ap.add_argument("--periods", type=int, default=24)
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    contracts = [f"PH-{DAY}-{k:02d}" for k in range(1, args.periods + 1)]
    bids = make_bids(args.bids, contracts, args.agents, args.seed)
    core = Core()
    t = T0

    def do(cmd: Any) -> list[Any]:
        nonlocal t
        t += 1
        return core.apply(cmd, t)

    do(LoadReferenceData(refdata(args.agents)))
    for c in contracts:
        do(CreateContract(c, ContractSpec.parse(c).start - HOUR_MS))
    do(OpenContracts(tuple(contracts)))
    do(ScheduleAuction(SESSION, tuple(contracts), t + 1, t + 2, t + 3))
    do(OpenAuction(SESSION))

    gc.collect()
    gc.disable()
    t0, c0 = time.perf_counter(), time.process_time()
    accepted = 0
    for b in bids:
        evs = do(b)
        accepted += len(evs) == 1 and type(evs[0]) is Ack
    submit_s = time.perf_counter() - t0
    submit_cpu = time.process_time() - c0
    if accepted != len(bids):
        raise SystemExit(f"only {accepted} of {len(bids)} bids accepted")
    do(CloseAuction(SESSION))

    # clear() alone, on the steps the session will clear (built as the session builds them)
    session = core.auctions.sessions[SESSION]
    by_contract: dict[str, list[Step]] = {}
    for b in session.bids.values():
        for n, (price, qty) in enumerate(b.steps):
            by_contract.setdefault(b.contract, []).append(
                Step(b.id, n, b.side, price, qty, b.order, b.unit))
    n_steps = sum(len(v) for v in by_contract.values())
    only, only_cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        results = [clear(by_contract.get(c, [])) for c in contracts]
        only.append(time.perf_counter() - t0)
        only_cpu.append(time.process_time() - c0)
    clear_only_s = min(only)

    # ClearAuction through the core (once: it changes the state)
    prof = cProfile.Profile() if args.profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if prof is not None:
        prof.enable()
    evs = do(ClearAuction(SESSION))
    if prof is not None:
        prof.disable()
    clear_core_s = time.perf_counter() - t0
    clear_core_cpu = time.process_time() - c0
    gc.enable()
    if core.failures:
        raise SystemExit("the core failed while clearing")
    prices = [e for e in evs if type(e) is AuctionPrice]
    allocs = [e for e in evs if type(e) is AuctionAllocation]
    assert [(p.price, p.qty) for p in prices] == [(r.price, r.volume) for r in results]
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    volume = sum(p.qty for p in prices)
    print(f"{len(bids)} bids ({n_steps} steps) over {len(contracts)} periods;"
          f" {sum(p.price is not None for p in prices)} periods cleared,"
          f" {volume / 10:.1f} MWh, {len(allocs)} allocations, {len(evs)} events")
    print(f"submit {submit_s:.3f} s ({submit_s / len(bids) * 1e6:.1f} µs/bid);"
          f" ClearAuction {clear_core_s:.3f} s; clear() alone {clear_only_s:.3f} s")
    print(json.dumps({
        "bids": len(bids), "steps": n_steps, "periods": len(contracts), "seed": args.seed,
        "submit_s": round(submit_s, 4), "submit_us_per_bid": round(submit_s / len(bids) * 1e6, 1),
        "submit_cpu_s": round(submit_cpu, 4),
        "clear_core_s": round(clear_core_s, 4), "clear_core_cpu_s": round(clear_core_cpu, 4),
        "clear_only_s": round(clear_only_s, 4), "clear_only_cpu_s": round(min(only_cpu), 4),
        "allocations": len(allocs), "events": len(evs), "target_s": 1.0,
        "within_target": clear_core_s <= 1.0,
    }))


if __name__ == "__main__":
    main()
