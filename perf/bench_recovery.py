"""Recovery: how long ``ronda serve`` takes to start again on a long journal (after a crash).

A restarting server serves nothing until it has replayed its whole journal (issue 4's
recovery; docs/protocol.md), so the replay's speed is the outage a crash costs. This
builds a journal of ``--ops`` operations of the engine benchmark's seeded flow
(``perf/bench_engine.py``: new orders, cancels, modifications, IoC/FoK, icebergs over 4
contracts, risk on with the benchmark's reference data), as the server journals them (the
reference data, the contracts, then the traders' commands with their users as origin), and
ends it without a stop checkpoint, as a crash would. Then, in this process:

* **journal read**: the records decoded (``Journal.records``), nothing applied;
* **core alone** (the baseline): the decoded commands applied to a fresh core
  (``Core.apply``), nothing else: what the replay cannot do without;
* **server start**: ``Server.start`` on that data folder, as ``ronda serve`` does it, timed
  until it serves: the replay through the sync job's, the fan-out's and the audit trail's
  listeners, the state hashes, the start checkpoint (journalled and fsynced), the settlement
  store (SQLite) opened and claimed, the WebSocket listener.

``ratio`` is the core alone's time over the server start's: the share of the outage that is
the engine's own work. Last line: one JSON object.

* **from a snapshot** (``--snapshot-tail``): the same journal snapshotted (``ronda journal
  snapshot``'s work, timed), then more operations appended; the start from the snapshot
  and the tail against the start on the same journal without it.

    python perf/bench_recovery.py [--ops 300000] [--seed 20261123] [--snapshot-tail 30000]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "perf")]

import bench_engine as B  # noqa: E402

from engine.commands import CreateContract, OpenContracts  # noqa: E402
from gateway.core import Core  # noqa: E402
from gateway.journal import Journal, Record  # noqa: E402
from gateway.refdata_file import canonical_json  # noqa: E402
from gateway.sequencer import Clock  # noqa: E402
from gateway.server import Config, Server  # noqa: E402
from risk.commands import LoadReferenceData  # noqa: E402

BATCH = 64  # records per journal append, about a busy server's batch


def build_journal(data: Path, refdata_doc: dict[str, Any], ops: int, seed: int) -> int:
    """The journal a server would have written for this flow, cut off by a crash (no stop
    checkpoint); returns its number of records."""
    cmds: list[tuple[str, Any]] = [("operator", LoadReferenceData(canonical_json(refdata_doc)))]
    cmds += [("operator", CreateContract(c, B.T0 + 10**9)) for c in B.CONTRACTS]
    cmds.append(("operator", OpenContracts(tuple(B.CONTRACTS))))
    cmds += [(cmd.user, cmd) for cmd in B.engine_commands(B.make_flow(ops, seed))]
    with Journal(data / "journal", fsync=False) as j:
        for i in range(0, len(cmds), BATCH):
            j.append(Record(i + k + 1, B.T0 + (i + k) // 10, origin, cmd)
                     for k, (origin, cmd) in enumerate(cmds[i:i + BATCH]))
    return len(cmds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def server_start(config: Config) -> tuple[float, Server]:
    server = Server(config, clock=Clock(start=B.T0 + 10**7))
    t = time.perf_counter()
    await server.start()
    return time.perf_counter() - t, server


def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data"
        data.mkdir()
        refdata_doc = B.bench_refdata()
        refdata = tmp / "refdata.json"
        refdata.write_text(json.dumps(refdata_doc))
        n = build_journal(data, refdata_doc, args.ops, args.seed)
        journal_bytes = sum(p.stat().st_size for p in (data / "journal").iterdir())

        with Journal(data / "journal", fsync=False) as j:
            t = time.perf_counter()
            records = list(j.records())
            read_s = time.perf_counter() - t
        core = Core()
        apply = core.apply
        t = time.perf_counter()
        for rec in records:
            apply(rec.command, rec.ts)
        core_s = time.perf_counter() - t
        state = core.state_hash()
        resting = sum(1 for d in core.engine.by_agent.values() for _ in d)
        del records, core, apply

        config = Config(data_dir=data, port=free_port(), refdata=refdata, calendar=None)

        async def main() -> tuple[float, int, str]:
            start_s, server = await server_start(config)
            try:
                return start_s, server.recovered, server.core.state_hash()
            finally:
                await server.stop()

        start_s, recovered, server_state = uvloop.run(main())
        snap = with_snapshot(tmp, refdata, refdata_doc, args) if args.snapshot_tail else {}
    if recovered != n or server_state != state:
        raise SystemExit(f"the server recovered {recovered} records of {n}, state "
                         f"{server_state} (the core alone: {state})")
    return {
        "benchmark": "recovery", "ops": args.ops, "seed": args.seed, "records": n,
        "journal_mb": round(journal_bytes / 1e6, 1), "resting_orders": resting,
        "journal_read_s": round(read_s, 3), "core_alone_s": round(core_s, 3),
        "server_start_s": round(start_s, 3),
        "server_records_per_s": round(n / start_s),
        "core_alone_records_per_s": round(n / core_s),
        "ratio": round(core_s / start_s, 3),
        **snap,
    }


def with_snapshot(tmp: Path, refdata: Path, doc: dict[str, Any], args: argparse.Namespace
                  ) -> dict[str, Any]:
    """The same journal, a snapshot of it (``ronda journal snapshot``'s work, timed), then
    ``--snapshot-tail`` more operations: the server's start from the snapshot and the
    tail, against its start on the same journal without the snapshot (the baseline)."""
    import shutil

    import uvloop

    from gateway import snapshot

    data = tmp / "snap"
    data.mkdir()
    build_journal(data, doc, args.ops, args.seed)
    t = time.perf_counter()
    made = snapshot.make(data, "harmonised")
    make_s = time.perf_counter() - t
    assert made is not None
    size = sum(p.stat().st_size for p in snapshot.snapshots(data / "snapshots"))
    cmds = [(cmd.user, cmd) for cmd in B.engine_commands(
        B.make_flow(args.snapshot_tail, args.seed + 1))]
    with Journal(data / "journal", fsync=False) as j:
        first = j.next_seq
        for i in range(0, len(cmds), BATCH):
            j.append(Record(first + i + k, B.T0 + (first + i + k) // 10, origin, cmd)
                     for k, (origin, cmd) in enumerate(cmds[i:i + BATCH]))
    full = tmp / "snap-full"
    shutil.copytree(data, full, ignore=shutil.ignore_patterns("snapshots"))

    async def start(folder: Path) -> tuple[float, str, int]:
        cfg = Config(data_dir=folder, port=free_port(), refdata=refdata, calendar=None,
                     snapshot_every_s=0)
        s, server = await server_start(cfg)
        try:
            return s, server.core.state_hash(), server.recovered
        finally:
            await server.stop()

    from_snap_s, h1, n1 = uvloop.run(start(data))
    full_s, h2, n2 = uvloop.run(start(full))
    if (h1, n1) != (h2, n2):
        raise SystemExit(f"from the snapshot: {n1} records, state {h1}; the whole journal: "
                         f"{n2} records, state {h2}")
    return {
        "snapshot_records": made[0], "snapshot_tail": args.snapshot_tail,
        "snapshot_make_s": round(make_s, 3), "snapshot_mb": round(size / 1e6, 1),
        "start_from_snapshot_s": round(from_snap_s, 3),
        "start_whole_journal_s": round(full_s, 3),
        "snapshot_ratio": round(from_snap_s / full_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--ops", type=int, default=300_000, help="trading operations journalled")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--snapshot-tail", type=int, default=30_000, metavar="OPS",
                    help="also: a snapshot of the journal, then OPS more operations, and the "
                         "start from the snapshot against the start on the whole journal "
                         "(0: skip)")
    args = ap.parse_args()
    if args.ops < 1:
        ap.error("--ops must be positive")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
