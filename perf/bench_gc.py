"""Garbage-collector pauses of the server's state: what trading leaves on the heap.

The server (``gateway/server.py``) collects and freezes what start-up built, then runs with
automatic cyclic collection on.  Each collection holds the interpreter for the whole walk
over the tracked containers of its generations, so the server's tail latency includes the
longest collection, and its throughput the sum of them.  What grows with trading is what
the server keeps: resting orders, the trades of rounds not yet settled (the sync job), each
agent's latest trades and the recent public trades (the fan-out), the audit log, the
answers kept for repeats of AMQP requests (``gateway/executed.py``: every command here is
taken as sent with a ``message_id``, as docs/amqp.md recommends).

This feeds the engine benchmark's seeded flow (``perf/bench_engine.py``: new orders,
cancels, modifications, IoC/FoK, icebergs over 4 contracts; about 0.56 trades per operation)
through the gateway's core with risk on, and every command's events through the same
listeners as the live server (``Hub.publish``, ``AuditLog.observe``, ``SyncJob.observe``,
and ``Executed.put`` with each command's answer), in a child process with the server's
setting, timing every automatic collection (``gc.callbacks``). At the end: the tracked
objects (``gc.get_objects()``) and one full collection timed. The collector's share of the
feed's time is measured in the same run; ``--tree DIR`` runs another checkout's code (e.g.
``git worktree add /tmp/old HEAD~1``) with this script, for a before/after on the same
machine (the feed's own time moves by ±20 % between runs here; the collector's times and the
tracked objects are the figures to compare).

Last line: one JSON object.

    python perf/bench_gc.py [--ops 300000] [--seed 20261123] [--tree DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

CHILD = r"""
import gc, json, sys, time
from collections import Counter
tree, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path[:0] = [tree, tree + "/perf"]
import bench_engine as B
from engine.commands import CreateContract, OpenContracts
from gateway.audit import AuditLog
from gateway.codec import default_codec
from gateway.core import Core
from gateway.executed import Executed
from gateway.fanout import Hub
from gateway.session import command_answer
from risk.commands import LoadReferenceData
from sync.job import SyncJob

core = Core()
core.apply(LoadReferenceData(json.dumps(B.bench_refdata())), B.T0)
for c in B.CONTRACTS:
    core.apply(CreateContract(c, B.T0 + 10**9), B.T0)
core.apply(OpenContracts(tuple(B.CONTRACTS)), B.T0)
hub, audit, sync = Hub(core), AuditLog(default_codec()), SyncJob(core, None)
executed = Executed()
listeners = (hub.publish, audit.observe, sync.observe)
cmds = B.engine_commands(B.make_flow(n, seed))
digest = bytes(16)
gc.collect()
gc.freeze()  # as the server does after start-up
pauses = []
t0 = [0.0]
def cb(phase, info):
    if phase == "start":
        t0[0] = time.perf_counter()
    else:
        pauses.append((info["generation"], time.perf_counter() - t0[0]))
gc.callbacks.append(cb)
apply = core.apply
start = time.perf_counter()
for i, cmd in enumerate(cmds):
    events = apply(cmd, B.T0 + 1 + i)
    one = [(cmd, "bench", events)]
    for listen in listeners:
        listen(one)
    # the answer the AMQP adapter keeps for a repeat of a request with a message_id
    user = getattr(cmd, "user", "bench")
    executed.put(user, (f"m-{i}", digest), command_answer(
        type(cmd).__name__, getattr(cmd, "req_id", None), user, events))
feed = time.perf_counter() - start
gc.callbacks.remove(cb)
objs = gc.get_objects()
tracked = len(objs)
kinds = Counter(type(o).__name__ for o in objs).most_common(5)
del objs
gc.enable()
t = time.perf_counter()
found = gc.collect()
full = time.perf_counter() - t
gens = {}
for g, p in pauses:
    d = gens.setdefault(str(g), {"count": 0, "total_ms": 0.0, "max_ms": 0.0})
    d["count"] += 1
    d["total_ms"] += p * 1000
    d["max_ms"] = max(d["max_ms"], p * 1000)
for d in gens.values():
    d["total_ms"] = round(d["total_ms"], 1)
    d["max_ms"] = round(d["max_ms"], 2)
print(json.dumps({"feed_s": round(feed, 3), "tracked": tracked, "most_tracked": kinds,
                  "full_collection_ms": round(full * 1000, 1), "cyclic_garbage": found,
                  "collections": gens,
                  "collector_ms": round(sum(p for _, p in pauses) * 1000, 1),
                  "trades_kept": sum(len(v) for v in sync.trades.values())}))
"""


def child(tree: str, ops: int, seed: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, tree, str(ops), str(seed)],
                         check=True, capture_output=True, text=True).stdout
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--tree", default=str(HERE.parent),
                    help="the checkout whose engine, gateway and sync run (default: this one)")
    args = ap.parse_args()
    tree = str(Path(args.tree).resolve())
    res = child(tree, args.ops, args.seed)
    longest = max((g["max_ms"] for g in res["collections"].values()), default=0.0)
    print(json.dumps({
        "benchmark": "gc", "ops": args.ops, "seed": args.seed, "tree": tree, **res,
        "longest_pause_ms": longest,
        "collector_share_of_feed": round(res["collector_ms"] / 1000 / res["feed_s"], 3),
    }))


if __name__ == "__main__":
    main()
