"""CPU time of the processes of a benchmark run, from /proc: on a shared machine the CPU
cost per request is steadier than wall-clock figures (perf/bench_ws.py, perf/bench_amqp.py)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time used by each process of the run between two points."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def snapshot(self) -> dict[str, float]:
        return {k: cpu_s(p) for k, p in self.pids.items()}

    def since(self, t0: dict[str, float]) -> dict[str, float]:
        return {k: cpu_s(p) - t0[k] for k, p in self.pids.items()}
