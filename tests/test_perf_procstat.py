"""The benchmarks' CPU meter (perf/procstat.py) counts a server's helper processes with it:
the journal's sync runs in one (gateway/disksync.py), and a CPU per request that left it out
would flatter the server."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from perf.procstat import CpuMeter, cpu_s, tree_cpu_s

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n" \
       "time.sleep(30)"


def test_a_process_tree_counts_its_live_children_cpu() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        deadline = time.monotonic() + 20
        while cpu_s(child.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        own, burnt = cpu_s(os.getpid()), cpu_s(child.pid)
        assert burnt >= 0.3
        total = tree_cpu_s(os.getpid())
        assert total >= own + burnt - 0.02  # clock ticks: 10 ms each
        meter = CpuMeter({"me": os.getpid(), "my thread": (os.getpid(), os.getpid()),
                          "me alone": (os.getpid(), None)})
        t0 = meter.snapshot()
        assert t0["me"] >= t0["my thread"] + burnt - 0.02  # a thread alone: no children
        # the process alone: its threads, not its children (the benchmark's own CPU, whose
        # children are the servers it measures)
        assert t0["me"] >= t0["me alone"] + burnt - 0.02
        assert t0["me alone"] >= t0["my thread"]
    finally:
        child.kill()
        child.wait()
