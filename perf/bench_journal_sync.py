"""The journal's append: a growing file against a preallocated one.

    python perf/bench_journal_sync.py [--appends 3000] [--batch 10] [--dir DIR]

Two journals in one directory (on the disk the server's data folder would be on), one
appending to a file that grows (``preallocate=False``: every ``fdatasync`` also commits the
filesystem's metadata, the new size), the other writing over a zero-filled segment
(``preallocate=True``, what ``ronda serve`` does when it syncs).  They take turns, one
batch each, so that the disk's moods weigh on both alike; each batch is ``--batch``
records of the gateway's usual kind (a limit order, about 100 bytes framed), appended and synced
by :meth:`gateway.journal.Journal.append`.  A third column, ``raw``, times ``os.pwrite`` +
``os.fdatasync`` of as many bytes into a zero-filled file, without the journal's encoding,
framing and checks: the floor of the disk.

Last line: one JSON object with the percentiles (µs) of each, and the ratios of the
preallocated journal's median and 99th percentile to the growing one's (below 1: faster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.commands import NewOrder
from engine.model import Side
from gateway.journal import Journal, Record


def _batch(seq: int, n: int) -> list[Record]:
    t0 = 1_800_000_000_000
    return [Record(s, t0 + s, "trader1",
                   NewOrder("trader1", "AG1", "UNIT1", "PH-20270115-10", Side.BUY,
                            4000 + s % 500, 10, req_id=f"r{s}"))
            for s in range(seq, seq + n)]


def _pct(values: list[float], q: float) -> int:
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q / 100 * len(v)))])


def run(appends: int, batch: int, directory: Path) -> dict[str, Any]:
    segment = 64 * 1024 * 1024
    times: dict[str, list[float]] = {"growing": [], "preallocated": [], "raw": []}
    clock = time.perf_counter
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        grow = Journal(Path(tmp) / "growing", segment_bytes=segment).open()
        pre = Journal(Path(tmp) / "preallocated", segment_bytes=segment,
                      preallocate=True).open()
        raw_path = Path(tmp) / "raw"
        fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, bytes(segment), 0)
            os.fsync(fd)
            grow.append(_batch(1, batch))  # (warm-up) and the size of a batch's bytes
            pre.append(_batch(1, batch))
            payload = b"x" * (grow.segments[0].stat().st_size - 16)
            at = 0
            for k in range(appends):
                order = ("growing", "preallocated", "raw") if k % 2 == 0 else (
                    "raw", "preallocated", "growing")
                for name in order:
                    if name == "raw":
                        t = clock()
                        os.pwrite(fd, payload, at)
                        os.fdatasync(fd)
                        times[name].append((clock() - t) * 1e6)
                        at += len(payload)
                        continue
                    j = grow if name == "growing" else pre
                    records = _batch(j.next_seq, batch)
                    t = clock()
                    j.append(records)
                    times[name].append((clock() - t) * 1e6)
            record_bytes = len(payload) / batch
        finally:
            os.close(fd)
            grow.close()
            pre.close()
    out: dict[str, Any] = {"benchmark": "journal_sync", "appends": appends, "batch": batch,
                           "record_bytes": round(record_bytes), "directory": str(directory)}
    for name, v in times.items():
        out[name] = {"p50_us": _pct(v, 50), "p90_us": _pct(v, 90), "p99_us": _pct(v, 99),
                     "p999_us": _pct(v, 99.9), "max_us": round(max(v))}
    out["p50_ratio"] = round(out["preallocated"]["p50_us"] / out["growing"]["p50_us"], 3)
    out["p99_ratio"] = round(out["preallocated"]["p99_us"] / out["growing"]["p99_us"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--appends", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                    help="where the journals go (the disk to measure)")
    args = ap.parse_args()
    print(json.dumps(run(args.appends, args.batch, args.dir)))


if __name__ == "__main__":
    main()
