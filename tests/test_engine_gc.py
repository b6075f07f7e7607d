"""The core creates no reference cycles, so the single writer can run with the cyclic
garbage collector off (docs/performance.md); and every event has exactly its fields."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from engine.events import EVENT_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import bench_engine as bench


def test_engine_leaves_no_cyclic_garbage() -> None:
    flow = bench.make_flow(20_000, 5)
    cmds = bench.engine_commands(flow)
    gc.collect()
    gc.disable()
    try:
        e = bench.setup_engine()
        ts = bench.T0 + 1
        for c in cmds:
            e.apply(c, ts)
            ts += 1
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0, f"the engine left {found} objects in reference cycles"
    assert len(e.orders) > 0  # the flow left a live book behind


def test_engine_and_minimal_book_agree_on_trades() -> None:
    """The benchmark's baseline is a different implementation of the same matching rules:
    on the same flow both must produce exactly the same number of trades."""
    flow = bench.make_flow(20_000, 11)
    e = bench.setup_engine()
    res = bench.run_engine(bench.engine_commands(flow), e)
    base = bench.run_baseline(flow)
    assert res["trades"] == base["trades"] > 1000


def test_every_event_has_exactly_its_fields() -> None:
    """Events are built by tuple's own constructor for speed, which does not check arity."""
    flow = bench.make_flow(5_000, 3)
    e = bench.setup_engine()
    ts = bench.T0 + 1
    seen = set()
    for c in bench.engine_commands(flow):
        for ev in e.apply(c, ts):
            assert len(ev) == len(type(ev)._fields), type(ev).__name__
            seen.add(type(ev))
        ts += 1
    assert len(seen) >= 4 and set(seen) <= set(EVENT_NAMES)
