"""CPU time of the processes of a benchmark run, from /proc: on a shared machine the CPU
cost per request is steadier than wall-clock figures (perf/bench_ws.py, perf/bench_amqp.py)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process so far (all its threads), or of its thread
    ``tid`` only (the main thread's id is the process id: the event loop's thread)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """As :func:`cpu_s` for a process and every live process below it (the server's helper
    that syncs the journal, gateway/disksync.py): what the server costs in all."""
    total = cpu_s(pid)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return total
    for tid in tids:
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            total += tree_cpu_s(int(child))
    return total


def runq_wait_s(pid: int) -> float:
    """Seconds the threads of a process now alive have spent runnable but waiting for a
    core (the second field of each thread's ``schedstat``): on a machine whose cores the
    run's processes share, the time a request waited for a process that had work to do."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


# what CpuMeter measures: a pid (with its children), (pid, tid) or (pid, None) (CpuMeter)
ProcRef = int | tuple[int, int | None]


class CpuMeter:
    """CPU time used by each process of the run between two points, with the processes it
    started (:func:`tree_cpu_s`); a value of ``pids`` may be a ``(pid, tid)`` pair for one
    thread of a process, or ``(pid, None)`` for a process without the processes it started
    (the benchmark's own: the servers it measures are its children)."""

    def __init__(self, pids: dict[str, ProcRef]) -> None:
        self.pids = pids

    def _cpu(self, p: ProcRef) -> float:
        return cpu_s(*p) if isinstance(p, tuple) else tree_cpu_s(p)

    def snapshot(self) -> dict[str, float]:
        return {k: self._cpu(p) for k, p in self.pids.items()}

    def since(self, t0: dict[str, float]) -> dict[str, float]:
        return {k: self._cpu(p) - t0[k] for k, p in self.pids.items()}

    def _pid(self, p: ProcRef) -> int:
        return p[0] if isinstance(p, tuple) else p

    def waits(self) -> dict[str, float]:
        """Run-queue waits of each process so far (all its threads: :func:`runq_wait_s`)."""
        return {k: runq_wait_s(self._pid(p)) for k, p in self.pids.items()}

    def waits_since(self, w0: dict[str, float]) -> dict[str, float]:
        return {k: runq_wait_s(self._pid(p)) - w0[k] for k, p in self.pids.items()}
