"""The journal's hand-off: a call run in another thread and awaited on the event loop.

    python perf/bench_handoff.py [--calls 20000] [--reps 3]

The sequencer hands the journal's rolls to the journal's own thread and awaits the outcome
(``gateway/sequencer.py`` ``JournalThread``; until 2026-12-06 every batch's append went that
way too: appends now run on the loop's thread, docs/performance.md, AMQP, "the journal on
the loop's thread"), and the AMQP benchmark's pacer sleeps in such a thread.  Here a call
that does nothing goes through that thread and, as the baseline in the same process,
through ``loop.run_in_executor`` with a one-thread executor (what the sequencer used
before), alternately, on uvloop.  Per round
trip: the CPU time of the loop's own thread, of the whole process, and the wall time.

Last line: one JSON object with the best of the repetitions for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.sequencer import JournalThread


def _noop(x: int) -> int:
    return x


async def _run(calls: int, reps: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ex = ThreadPoolExecutor(max_workers=1)
    jt = JournalThread()
    ways = {"executor": lambda: loop.run_in_executor(ex, _noop, 1),
            "journal_thread": lambda: jt.call(loop, _noop, 1)}
    best: dict[str, dict[str, float]] = {}
    try:
        for _ in range(reps):
            for name, call in ways.items():
                t0, p0, w0 = time.thread_time(), time.process_time(), time.perf_counter()
                for _ in range(calls):
                    await call()
                fig = {"loop_thread_cpu_us": (time.thread_time() - t0) / calls * 1e6,
                       "process_cpu_us": (time.process_time() - p0) / calls * 1e6,
                       "wall_us": (time.perf_counter() - w0) / calls * 1e6}
                old = best.get(name)
                best[name] = fig if old is None else {k: min(v, old[k]) for k, v in fig.items()}
    finally:
        jt.shutdown()
        ex.shutdown()
    out: dict[str, Any] = {"benchmark": "handoff", "calls": calls, "reps": reps}
    for name, fig in best.items():
        out.update({f"{name}_{k}": round(v, 1) for k, v in fig.items()})
    out["loop_thread_cpu_ratio"] = round(best["journal_thread"]["loop_thread_cpu_us"]
                                         / best["executor"]["loop_thread_cpu_us"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(uvloop.run(_run(args.calls, args.reps))))


if __name__ == "__main__":
    main()
