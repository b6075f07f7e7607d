"""The machine's own stalls during a benchmark phase, measured by a process that does nothing.

A process of its own sleeps a millisecond at a time and records by how much each sleep
overran: when the host stops the virtual machine, or the kernel keeps a runnable task off
the CPUs, this idle process is late too, whatever the server under test does.  It is the
control of a latency benchmark on a shared machine (the idea of Gil Tene's jHiccup): a
server's tail that coincides with the idle process's own says the machine stalled, not the
server.  (It costs a thousand wake-ups a second, the same for both sides of a benchmark.)

The sleep is a ``select`` on standard input with a 1 ms timeout, so the meter stops when
standard input is closed or written to, and then prints its figures as one JSON line:

    python perf/hiccup.py        # until stdin closes

Used by ``perf/bench_ws.py`` (:class:`HiccupMeter`) around each open-loop phase.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import select
import subprocess
import sys
import time
from typing import Any

PERIOD_S = 0.001
PR_SET_TIMERSLACK = 29  # linux/prctl.h


def summary(overruns: list[int]) -> dict[str, int]:
    """Percentiles of the overruns (µs), and how many were above 1 and 5 ms."""
    if not overruns:
        return {"n": 0, "p50_us": 0, "p99_us": 0, "p999_us": 0, "max_us": 0,
                "over_1ms": 0, "over_5ms": 0}
    v = sorted(overruns)

    def q(f: float) -> int:
        return v[min(len(v) - 1, int(f * len(v)))]

    return {"n": len(v), "p50_us": q(0.5), "p99_us": q(0.99), "p999_us": q(0.999),
            "max_us": v[-1], "over_1ms": sum(x > 1000 for x in v),
            "over_5ms": sum(x > 5000 for x in v)}


def fine_timer_slack() -> None:
    """Let this thread's timed waits end within a microsecond of their timeout: Linux lets
    them overrun by up to 50 µs by default (the timer slack), to batch wake-ups."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the default stays
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1_000, 0, 0, 0)


def measure() -> list[int]:
    """Sleep :data:`PERIOD_S` at a time until stdin is closed or readable; each overrun (µs)."""
    fine_timer_slack()  # or the default slack would count as a stall on every sleep
    clock = time.perf_counter
    out: list[int] = []
    stdin = sys.stdin
    while True:
        t = clock()
        ready, _, _ = select.select([stdin], [], [], PERIOD_S)
        if ready:
            return out
        out.append(max(0, int((clock() - t - PERIOD_S) * 1e6)))


class HiccupMeter:
    """The meter as a child process: :meth:`stop` ends it and returns its :func:`summary`."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)

    def stop(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=10)  # closes its stdin
        if self.proc.returncode != 0:
            raise RuntimeError(f"the hiccup meter failed ({self.proc.returncode})")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result


if __name__ == "__main__":
    print(json.dumps(summary(measure())), flush=True)
