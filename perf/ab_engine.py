"""Two versions of the engine on the same flow, interleaved: which one is faster, and where.

    python perf/ab_engine.py OLD_TREE NEW_TREE [--ops 300000] [--seed 20261123]

``OLD_TREE`` and ``NEW_TREE`` are checkouts of this repository (e.g. ``git worktree add
/tmp/old HEAD~1`` and ``.``); each is imported from its own ``engine/`` and ``perf/``.  The
benchmark flow of ``perf/bench_engine.py`` (risk off) goes through both, chunk by chunk in
alternating order, twice over; each operation's latency is the lower of its two runs, which
removes most of the machine's noise and keeps what is the code's own (an operation slow in
both runs is slow because of what it does).  For changes aimed at the tail.

Last line: one JSON object with, per tree, p50/p99/p99.9 (µs) and the total time of each
run, and the per-operation ratio new/old of p99.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any


def load(tree: str) -> ModuleType:
    """``perf/bench_engine.py`` of ``tree``, with that tree's engine."""
    for name in [k for k in sys.modules if k.split(".")[0] in ("engine", "risk",
                                                               "bench_engine")]:
        del sys.modules[name]
    root = str(Path(tree).resolve())
    sys.path[:0] = [root, root + "/perf"]
    try:
        import bench_engine

        return bench_engine
    finally:
        del sys.path[0:2]


def percentiles(lat: list[int]) -> dict[str, float]:
    s = sorted(lat)
    n = len(s)
    return {f"p{q}_us": round(s[min(n - 1, int(f * n))] / 1000, 2)
            for q, f in (("50", 0.5), ("99", 0.99), ("999", 0.999))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--ops", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--chunk", type=int, default=10_000)
    args = ap.parse_args()

    mods = [load(args.old), load(args.new)]
    flows = [m.engine_commands(m.make_flow(args.ops, args.seed)) for m in mods]
    n = args.ops
    gc.collect()
    gc.freeze()
    gc.disable()
    clock = time.perf_counter_ns
    runs: list[tuple[list[list[int]], list[int]]] = []
    for rep in range(2):
        engines = [m.setup_engine(False) for m in mods]
        lats = [[0] * n for _ in mods]
        elapsed = [0, 0]
        for k, i0 in enumerate(range(0, n, args.chunk)):
            i1 = min(n, i0 + args.chunk)
            for side in ((0, 1) if (k + rep) % 2 == 0 else (1, 0)):
                apply = engines[side].apply
                cmds, lat = flows[side], lats[side]
                ts = mods[side].T0 + 1 + i0
                start = clock()
                for i in range(i0, i1):
                    t = clock()
                    apply(cmds[i], ts + i - i0)
                    lat[i] = clock() - t
                elapsed[side] += clock() - start
            gc.collect()
        runs.append((lats, elapsed))
    out: dict[str, Any] = {"ops": n, "seed": args.seed}
    for side, name in ((0, "old"), (1, "new")):
        best = [min(a, b) for a, b in zip(runs[0][0][side], runs[1][0][side], strict=True)]
        out[name] = {"tree": args.old if side == 0 else args.new, **percentiles(best),
                     "elapsed_s": [round(r[1][side] / 1e9, 3) for r in runs]}
    out["p99_new_to_old"] = round(out["new"]["p99_us"] / out["old"]["p99_us"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
