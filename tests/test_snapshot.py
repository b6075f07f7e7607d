"""Snapshots (gateway/snapshot.py): a restart from a snapshot and the journal's tail must
build exactly what a replay of the whole journal builds — the core, and what the listeners
keep from the replay: the fan-out's trades of the day and public trade numbering, the audit
trail, the AMQP repeat memory, the sync job's unsettled trades and round closes.  A snapshot
that cannot be trusted is passed over, never half used.

The journals are written as the server writes them (``perf/bench_recovery.py``'s flow: the
engine benchmark's seeded orders, cancels, modifications, IoC/FoK and icebergs over four
contracts, with risk on), then extended with a round close, AMQP requests (records with an
idempotency key) and more trading.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "perf"))

import bench_engine as B  # noqa: E402
import bench_recovery as R  # noqa: E402

from engine.commands import CloseContracts  # noqa: E402
from gateway import snapshot  # noqa: E402
from gateway.journal import Journal, Record  # noqa: E402
from gateway.sequencer import Clock  # noqa: E402
from gateway.server import Config, Server  # noqa: E402

PROFILE = "harmonised"


def append(data: Path, cmds: list[tuple[str, Any, Any]]) -> None:
    """Records after the journal's last: (origin, command, idempotency key or None)."""
    with Journal(data / "journal", fsync=False) as j:
        seq = j.next_seq
        ts = B.T0 + seq * 100
        j.append(Record(seq + k, ts + k * 100, origin, cmd, key)
                 for k, (origin, cmd, key) in enumerate(cmds))


def flow(n: int, seed: int, keyed_from: int | None = None) -> list[tuple[str, Any, Any]]:
    """``n`` trading commands of the benchmark's flow; from ``keyed_from`` on, each with an
    AMQP request's key (message_id, digest)."""
    out = []
    for i, cmd in enumerate(B.engine_commands(B.make_flow(n, seed))):
        key = None
        if keyed_from is not None and i >= keyed_from:
            mid = f"m-{seed}-{i}"
            key = (mid, hashlib.blake2b(mid.encode(), digest_size=16).digest())
        out.append((cmd.user, cmd, key))
    return out


@pytest.fixture
def journal(tmp_path: Path) -> tuple[Path, Path]:
    """A data folder whose journal holds phase 1 (the reference data, the contracts,
    trading), and the reference data file."""
    data = tmp_path / "data"
    data.mkdir()
    doc = B.bench_refdata()
    ref = tmp_path / "refdata.json"
    ref.write_text(json.dumps(doc))
    R.build_journal(data, doc, 3000, 7)
    return data, ref


def phase2(data: Path) -> None:
    """A round close (the first contract's gate), AMQP requests, more trading."""
    append(data, [("operator", CloseContracts((B.CONTRACTS[0],)), None)])
    append(data, flow(1500, 8, keyed_from=500))


def copy(data: Path, to: Path, with_snapshots: bool) -> Path:
    shutil.copytree(data / "journal", to / "journal")
    if with_snapshots and (data / "snapshots").exists():
        shutil.copytree(data / "snapshots", to / "snapshots")
    return to


def recover(data: Path, ref: Path, settle_through: int = 0) -> dict[str, Any]:
    """Start a server on ``data`` (as ``ronda serve`` does), and take what its recovery
    built; then, if asked, wait until its sync job has settled the rounds up to
    ``settle_through`` into the settlement store; then stop it."""

    async def main() -> dict[str, Any]:
        cfg = Config(data_dir=data, port=R.free_port(), refdata=ref, calendar=None,
                     snapshot_every_s=0, fsync=False)
        server = Server(cfg, clock=Clock(start=B.T0 + 10**7))
        await server.start()
        try:
            built = view(server)
            for _ in range(200):
                if server.sync is not None and server.sync.last_synced >= settle_through:
                    break
                await asyncio.sleep(0.05)
            assert server.sync is not None and server.sync.last_synced >= settle_through
            return built
        finally:
            await server.stop()

    return asyncio.run(main())


def view(s: Server) -> dict[str, Any]:
    sync, hub = s.sync, s.hub
    assert sync is not None
    return {
        "state": s.core.state_hash(),
        "recovered": s.recovered,
        "day": s.sequencer.day,
        "trades_by_agent": {a: list(d) for a, d in hub.trades_by_agent.items() if d},
        "public_trades": {c: list(d) for c, d in hub.public_trades.items()},
        "trade_seq": dict(hub.trade_seq),
        "accounts": dict(hub._account_state),
        "audit": ([repr(e) for e in s.audit.entries], s.audit.seq, s.audit.last_ts),
        "executed": [(k, e.digest, repr(e.events), e.items)
                     for k, e in s.executed.entries.items()],
        "sync_trades": {r: list(t) for r, t in sync.trades.items() if t},
        "sync_closes": {r: repr(c) for r, c in sync.closes.items()},
        "sync_other": repr((sorted(sync.released_seen), sync.auctions, sync.session_refs,
                            sync.auction_rounds, sync.round_now, sorted(sync.order_refs))),
        # the reference data each kept trade is settled with (R53.6): the n-th distinct
        # document of the replay, whichever entry of trade_refs says it
        "trade_refs": refs_of_trades(sync),
        "side_refs": sorted(sync.side_refs),
    }


def refs_of_trades(sync: Any) -> list[tuple[int, int]]:
    order: dict[int, int] = {}
    out = []
    for rows in sync.trades.values():
        for row in rows:
            tid = row[1]
            ref = [r for t, r in sync.trade_refs if t <= tid][-1]
            out.append((tid, order.setdefault(id(ref), len(order))))
    return out


def test_a_restart_from_a_snapshot_builds_what_a_full_replay_builds(
        journal: tuple[Path, Path], tmp_path: Path) -> None:
    data, ref = journal
    made = snapshot.make(data, PROFILE)
    assert made is not None and made[1] == made[0]  # from the start: every record
    phase2(data)
    full = recover(copy(data, tmp_path / "full", False), ref)
    snap = recover(copy(data, tmp_path / "snap", True), ref)
    assert full["sync_closes"] and full["executed"] and full["trades_by_agent"]
    assert full["audit"][1] > 0 and full["trade_seq"]
    assert snap == full


def test_a_snapshot_older_than_the_last_settlement(
        journal: tuple[Path, Path], tmp_path: Path) -> None:
    """The snapshot holds round 1's trades and close (made before they were settled); the
    server settles round 1, stops, and starts again from that snapshot: it keeps only what
    a replay after that settlement keeps (sync/job.py drops the settled rounds)."""
    data, ref = journal
    phase2(data)
    snapshot.make(data, PROFILE)
    first = recover(data, ref, settle_through=1)
    assert first["sync_closes"] and min(first["sync_closes"]) == 1
    # the same data folder (journal, settlement store) without the snapshot
    full = tmp_path / "full"
    shutil.copytree(data, full, ignore=shutil.ignore_patterns("snapshots"))
    again = recover(data, ref)
    assert again == recover(full, ref)
    assert 1 not in again["sync_closes"] and 1 not in again["sync_trades"]


def test_snapshots_build_on_each_other(journal: tuple[Path, Path], tmp_path: Path) -> None:
    """The second snapshot starts from the first and replays only what came since."""
    data, ref = journal
    first = snapshot.make(data, PROFILE)
    assert first is not None
    phase2(data)
    second = snapshot.make(data, PROFILE)
    assert second is not None and second[1] == second[0] - first[0]
    assert snapshot.make(data, PROFILE) is None  # nothing new
    append(data, flow(800, 9, keyed_from=0))
    assert len(snapshot.snapshots(data / "snapshots")) == snapshot.KEEP
    full = recover(copy(data, tmp_path / "full", False), ref)
    snap = recover(copy(data, tmp_path / "snap", True), ref)
    assert snap == full


def test_a_snapshot_ahead_of_the_journal_is_not_used(
        journal: tuple[Path, Path], tmp_path: Path) -> None:
    """A snapshot made from a record the journal then lost (read before it was synced, and
    a machine crash took it), or replaced by another one with the same seq: passed over."""
    data, ref = journal
    snapshot.make(data, PROFILE)
    other = tmp_path / "other"
    other.mkdir()
    R.build_journal(other, B.bench_refdata(), 3000, 8)  # the same length, other records
    shutil.copytree(data / "snapshots", other / "snapshots")
    assert snapshot.load_latest(other / "snapshots", PROFILE,
                                Journal(other / "journal", fsync=False).open()) is None
    shorter = tmp_path / "shorter"
    shorter.mkdir()
    R.build_journal(shorter, B.bench_refdata(), 2000, 7)  # the same records, fewer
    shutil.copytree(data / "snapshots", shorter / "snapshots")
    full = recover(copy(shorter, tmp_path / "full", False), ref)
    assert recover(shorter, ref) == full


def test_a_damaged_or_foreign_snapshot_is_not_used(
        journal: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data, ref = journal
    snapshot.make(data, PROFILE)
    (path,) = snapshot.snapshots(data / "snapshots")
    j = Journal(data / "journal", fsync=False).open()
    try:
        assert snapshot.load_latest(data / "snapshots", PROFILE, j) is not None
        # another engine profile's (or another version's) code
        other = next(p for p in ("omie-2018", "harmonised") if p != PROFILE)
        with pytest.raises(snapshot.Unusable, match="other code"):
            snapshot.load(path, other, j)
        # the settlement store has synchronised fewer rounds than it dropped
        meta, _ = snapshot.read(path)
        assert meta["synced_through"] == 0
        # one byte of the payload changed
        raw = bytearray(path.read_bytes())
        raw[-100] ^= 0xFF
        path.write_bytes(bytes(raw))
        with pytest.raises(snapshot.Unusable, match="damaged payload"):
            snapshot.load(path, PROFILE, j)
        assert snapshot.load_latest(data / "snapshots", PROFILE, j) is None
        assert "not used: snap-" in caplog.text
    finally:
        j.close()
    full = recover(copy(data, tmp_path / "full", False), ref)
    assert recover(data, ref) == full


def test_the_rounds_a_snapshot_dropped_must_be_settled(
        journal: tuple[Path, Path]) -> None:
    """``--synced-through N`` leaves out the trades of rounds up to N (the settlement store
    has them); a store that has synchronised less cannot use that snapshot."""
    data, _ref = journal
    phase2(data)
    snapshot.make(data, PROFILE, synced_through=1)
    (path,) = snapshot.snapshots(data / "snapshots")
    state = snapshot.load(path, PROFILE, synced_through=1)
    assert state.synced_through == 1 and all(r > 1 for r in state.sync["closes"])
    with pytest.raises(snapshot.Unusable, match="settlement store has only 0"):
        snapshot.load(path, PROFILE, synced_through=0)


def test_reading_a_journal_being_written_changes_nothing(journal: tuple[Path, Path]) -> None:
    """The snapshotter reads without the journal's lock, while the server appends: a record
    not whole yet ends what it reads, and is left as it is (only the server's own opening
    judges a torn tail)."""
    data, _ref = journal
    (seg,) = sorted((data / "journal").glob("journal-*.rjl"))
    with Journal(data / "journal", fsync=False) as j:
        n = j.next_seq - 1
    whole = seg.read_bytes()
    seg.write_bytes(whole + b"\x00\x00\x01\x00\xde\xad")  # half a frame header and a bit
    got = [rec.seq for rec, _d in snapshot.read_records(data / "journal", 1)]
    assert got == list(range(1, n + 1))
    assert seg.read_bytes() == whole + b"\x00\x00\x01\x00\xde\xad"
    assert [r.seq for r, _ in snapshot.read_records(data / "journal", n - 2)] == [
        n - 2, n - 1, n]


def test_the_command_line(journal: tuple[Path, Path]) -> None:
    data, _ref = journal

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "journal", "snapshot",
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    r = run(str(data))
    assert r.returncode == 0 and "ronda journal snapshot: record" in r.stdout, r.stderr
    r = run(str(data))
    assert r.returncode == 0 and "no record since the last snapshot" in r.stdout
    r = run(str(data), "--synced-through", "-1")
    assert r.returncode == 2 and "--synced-through must be 0 or more" in r.stderr
    r = run(str(data / "nowhere"))
    assert r.returncode == 1 and "ronda journal snapshot:" in r.stderr
