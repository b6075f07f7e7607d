"""The scheduler's cost at a deadline: :func:`auctions.scheduler.due` and
:func:`~auctions.scheduler.next_deadline` on a core whose calendar has created its window.

The sequencer calls ``due`` at the first command stamped at or after each deadline (a gate
closure, an auction step), and the command waits for it (docs/auctions.md, "At their
instant, exactly"); the timekeeper calls it at each of its turns.  For each calendar profile
(``sidc-2024``: hourly and 15-minute contracts; ``omie-2018``: hourly, six sessions), the
scheduler is run until nothing more is due at the instant (every contract of the window
created and opened, every session scheduled), then each function is timed over
``--repeat`` calls.  The baseline, in the same run: looking every contract of the window up
in the engine by its id and nothing else, the least ``due`` must do.

    python perf/bench_scheduler.py [--repeat N]

Printed last: one JSON object, per profile the contracts, the µs per call of each function
and of the baseline, and ``due`` over the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auctions.calendar import PROFILES as CALENDARS  # noqa: E402
from auctions.scheduler import due, next_deadline  # noqa: E402
from engine.config import PROFILES  # noqa: E402
from gateway.core import Core  # noqa: E402
from gateway.refdata_file import read_and_validate  # noqa: E402
from risk.commands import LoadReferenceData  # noqa: E402

NOW = 1_800_000_000_000  # 2027-01-15 08:00 UTC


def per_call_us(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(5):  # the best of five rounds: the machine is shared
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, time.perf_counter() - t)
    return best / repeat * 1e6


def measure(name: str, repeat: int) -> dict[str, Any]:
    cal = CALENDARS[name]
    text, _ = read_and_validate(ROOT / "examples" / "refdata.toml")
    core = Core(PROFILES["harmonised"])
    core.apply(LoadReferenceData(text), NOW)
    for _ in range(10):  # until nothing more is due at NOW
        cmds = due(core, cal, NOW)
        if not cmds:
            break
        for c in cmds:
            core.apply(c, NOW)
    contracts = core.engine.contracts
    window = cal.window(NOW)

    def lookups() -> None:
        for ct in cal.window(NOW):
            contracts.get(ct.id)

    base = per_call_us(lookups, repeat)
    d = per_call_us(lambda: due(core, cal, NOW), repeat)
    n = per_call_us(lambda: next_deadline(core, cal, NOW), repeat)
    return {"contracts": len(contracts), "window": len(window), "due_us": round(d, 1),
            "next_deadline_us": round(n, 1), "baseline_lookups_us": round(base, 1),
            "due_over_baseline": round(d / base, 2)}


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=positive, default=200, help="calls per round (>= 1)")
    args = ap.parse_args()
    out: dict[str, Any] = {"benchmark": "scheduler", "repeat": args.repeat}
    for name in ("sidc-2024", "omie-2018"):
        out[name] = measure(name, args.repeat)
        r = out[name]
        print(f"{name}: {r['contracts']} contracts, window {r['window']}: due {r['due_us']} µs, "
              f"next_deadline {r['next_deadline_us']} µs, the look-ups alone "
              f"{r['baseline_lookups_us']} µs")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
