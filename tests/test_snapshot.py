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
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "perf"))

import bench_engine as B  # noqa: E402
import bench_recovery as R  # noqa: E402

from engine.commands import CloseContracts  # noqa: E402
from gateway import snapshot  # noqa: E402
from gateway.core import SessionMark  # noqa: E402
from gateway.journal import HEADER_SIZE as HEADER  # noqa: E402
from gateway.journal import Journal, JournalError, Record  # noqa: E402
from gateway.sequencer import Clock, recovery_listeners  # noqa: E402
from gateway.server import Config, Server  # noqa: E402
from sync.job import SyncJob  # noqa: E402

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
    """A round close (the first contract's gate), connections opened and closed with the
    login option on_disconnect hibernate (session marks), AMQP requests, more trading."""
    append(data, [("operator", CloseContracts((B.CONTRACTS[0],)), None),
                  ("operator", SessionMark("u1", 1), None),
                  ("operator", SessionMark("u2", 1), None),
                  ("operator", SessionMark("u2", -1), None),
                  ("operator", SessionMark("u1", -1), None)])
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

    async def idle(self: Any) -> None:
        await asyncio.Event().wait()

    async def main() -> dict[str, Any]:
        cfg = Config(data_dir=data, port=R.free_port(), refdata=ref, calendar=None,
                     snapshot_every_s=0, fsync=False)
        server = Server(cfg, clock=Clock(start=B.T0 + 10**7))
        # the timekeeper kept from acting (a GTD expiry due on the server's clock would
        # change the state while the view is taken), and unless asked the sync job from
        # settling: what the recovery built
        with mock.patch.object(Server, "_timekeeper", idle):
            if settle_through:
                await server.start()
            else:
                with mock.patch.object(SyncJob, "run", idle):
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
        "executed": [(k, e[0], e[1], repr(e[2]), e[3]) for k, e in s.executed.entries.items()],
        "watches": dict(s.watches.open),
        "sync_trades": {r: list(t) for r, t in sync.trades.items() if t},
        # the objects, not their repr: a frozenset in them prints in an order that follows
        # its history (a replay builds it, a snapshot unpickles it), and equal all the same
        "sync_closes": dict(sync.closes),
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
    j = Journal(other / "journal", fsync=False).open()
    try:
        assert snapshot.load_latest(other / "snapshots", PROFILE,
                                    lambda seq: snapshot.digest_of(j, seq)) is None
    finally:
        j.close()
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

    def digest(seq: int) -> str | None:
        return snapshot.digest_of(j, seq)

    try:
        assert snapshot.load_latest(data / "snapshots", PROFILE, digest) is not None
        # another engine profile's (or another version's) code
        other = next(p for p in ("omie-2018", "harmonised") if p != PROFILE)
        with pytest.raises(snapshot.Unusable, match="other code"):
            snapshot.load(path, other, digest)
        # the settlement store has synchronised fewer rounds than it dropped
        meta, _ = snapshot.read(path)
        assert meta["synced_through"] == 0
        # one byte of the payload changed
        raw = bytearray(path.read_bytes())
        raw[-100] ^= 0xFF
        path.write_bytes(bytes(raw))
        with pytest.raises(snapshot.Unusable, match="damaged payload"):
            snapshot.load(path, PROFILE, digest)
        assert snapshot.load_latest(data / "snapshots", PROFILE, digest) is None
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


def test_segments_before_the_asked_seq_are_not_read(tmp_path: Path) -> None:
    """The snapshotter asks for the records after its last snapshot every few minutes; a
    journal keeps its earlier days' segments.  A segment whose successor starts at or before
    the asked seq is skipped on its header alone: a defect inside it does not stop reading
    from a later seq (reading it whole still finds the defect)."""
    jdir = tmp_path / "journal"
    with Journal(jdir, fsync=False) as j:
        for day in range(3):
            if day:
                assert j.roll()
            j.append([Record(j.next_seq + i, 1000 * (day * 10 + i), "t", CloseContracts(
                (f"C{day}-{i}",))) for i in range(4)])
    segs = sorted(jdir.glob("journal-*.rjl"))
    assert len(segs) == 3
    first = segs[0].read_bytes()
    segs[0].write_bytes(first[:HEADER] + b"\xff" * (len(first) - HEADER))  # the records
    got = [(r.seq, r.command) for r, _d in snapshot.read_records(jdir, 6)]
    assert got == [(s, CloseContracts((f"C{(s - 1) // 4}-{(s - 1) % 4}",)))
                   for s in range(6, 13)]
    assert [r.seq for r, _d in snapshot.read_records(jdir, 5)] == list(range(5, 13))
    with pytest.raises(JournalError):
        list(snapshot.read_records(jdir, 1))


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
    for bad in ("-1", "nan"):
        r = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--data-dir",
                            str(data), "--snapshot-every", bad], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r
        assert "--snapshot-every must be 0 or more seconds" in r.stderr


# ---------------------------------------------------------------------- review of the above


def _data(tmp_path: Path, ops: int) -> tuple[Path, Path]:
    doc = B.bench_refdata()
    ref = tmp_path / "refdata.json"
    ref.write_text(json.dumps(doc))
    data = tmp_path / "data"
    data.mkdir()
    R.build_journal(data, doc, ops, 7)
    return data, ref


def test_a_snapshot_of_records_the_journal_lost_is_no_base(tmp_path: Path) -> None:
    """snap-N was made from records a machine crash then took from the journal; the
    restarted server wrote other records past N.  The next snapshot must not build on
    snap-N (its record N is not the journal's): it starts from the journal, and the
    server's start from it equals a full replay."""
    data, ref = _data(tmp_path, 3000)
    made = snapshot.make(data, PROFILE)
    assert made is not None
    shutil.rmtree(data / "journal")
    R.build_journal(data, B.bench_refdata(), 2000, 7)  # what was synced: a prefix
    append(data, flow(3000, 9))  # the restarted server's records, past seq N
    again = snapshot.make(data, PROFILE)
    assert again is not None and again[1] == again[0]  # replayed from the start
    assert snapshot.snapshots(data / "snapshots")[-1].name == f"snap-{again[0]:012d}.bin"
    full = recover(copy(data, tmp_path / "full", False), ref)
    assert recover(data, ref) == full


def test_a_journal_whose_first_records_are_gone_is_not_snapshotted(tmp_path: Path) -> None:
    """The first segment archived away: a full replay refuses (JournalError), and so does
    the snapshotter, instead of replaying the second segment onto an empty core."""
    data, ref = _data(tmp_path, 3000)
    with Journal(data / "journal", fsync=False) as j:
        j.roll()
    phase2(data)
    (data / "journal" / "journal-000001.rjl").unlink()
    with pytest.raises(JournalError):
        recover(copy(data, tmp_path / "full", False), ref)
    with pytest.raises(JournalError, match="records before seq"):
        snapshot.make(data, PROFILE)
    assert snapshot.snapshots(data / "snapshots") == []


def test_a_short_junk_snapshot_is_passed_over(tmp_path: Path) -> None:
    data, ref = _data(tmp_path, 300)
    (data / "snapshots").mkdir()
    (data / "snapshots" / "snap-000000000005.bin").write_bytes(snapshot.MAGIC + b"\0\0")
    full = recover(copy(data, tmp_path / "full", False), ref)
    assert recover(data, ref) == full


def test_a_segment_ending_in_zeros_before_the_last(journal: tuple[Path, Path]) -> None:
    """Zeros after a segment's records (a cut at a roll that did not happen): the journal
    reads on from the next segment, and so does the snapshotter."""
    data, _ref = journal
    with Journal(data / "journal", fsync=False) as j:
        j.roll()
    append(data, flow(50, 3))
    with open(data / "journal" / "journal-000001.rjl", "ab") as f:
        f.write(bytes(4096))
    with Journal(data / "journal", fsync=False) as j:
        n = j.next_seq - 1
    made = snapshot.make(data, PROFILE)
    assert made is not None and made[0] == n


def test_a_failed_spawn_does_not_end_the_snapshots(tmp_path: Path) -> None:
    """The snapshotter cannot be started once (no process left, say): logged, and tried
    again at the next period."""
    data, ref = _data(tmp_path, 300)
    calls: list[Any] = []
    real = asyncio.create_subprocess_exec

    async def spawn(*a: Any, **k: Any) -> Any:
        calls.append(a)
        if len(calls) == 1:
            raise OSError(11, "Resource temporarily unavailable")
        return await real(*a, **k)

    async def main() -> tuple[bool, int]:
        cfg = Config(data_dir=data, port=R.free_port(), refdata=ref, calendar=None,
                     snapshot_every_s=0.1, fsync=False)
        s = Server(cfg, clock=Clock(start=B.T0 + 10**7))
        await s.start()
        try:
            with mock.patch.object(asyncio, "create_subprocess_exec", spawn):
                for _ in range(100):
                    await asyncio.sleep(0.1)
                    if len(calls) > 1:
                        break
            task = next(t for t in s._tasks if t.get_name() == "snapshots")
            return task.done(), len(calls)
        finally:
            await s.stop()

    done, n = asyncio.run(main())
    assert not done and n > 1, (done, n)


def test_checkpoint_findings_travel_in_a_snapshot() -> None:
    """A replay's findings at the checkpoints (divergences) are part of a snapshot: they
    must survive the pickle, message and all."""
    import pickle

    from gateway.core import Checkpoint, ReplayDiverged, ReplayUnchecked

    cp = Checkpoint("ab" * 32, "start", "ronda 0.0.1")
    for e in (ReplayDiverged(7, 1000, cp, "cd" * 32), ReplayUnchecked(8, 12, 2000, cp)):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e)
        assert (back.seq, back.ts, back.checkpoint, back.replayed) == (
            e.seq, e.ts, e.checkpoint, e.replayed)


def test_every_listener_field_equals_a_full_replay(journal: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    """Beyond what the traders can ask for: every attribute of the core, the sync job,
    the fan-out, the audit trail, the repeat memory and the sequencer, compared object by
    object (identities within each graph included), after a recovery from two successive
    snapshots and a tail, and after a full replay."""
    data, ref = journal
    snapshot.make(data, PROFILE)
    phase2(data)
    append(data, [("operator", SessionMark("u4", 1), None)])  # open in the snapshot
    snapshot.make(data, PROFILE)
    append(data, [("operator", SessionMark("u3", 1), None)])  # and in the tail
    append(data, flow(500, 11, keyed_from=100))

    def grab(d: Path) -> tuple[Any, Any]:
        async def main() -> tuple[Any, Any]:
            from sync.store import open_store

            cfg = Config(data_dir=d, port=R.free_port(), refdata=ref, calendar=None,
                         snapshot_every_s=0, fsync=False)
            s = Server(cfg, clock=Clock(start=B.T0 + 10**7))
            s.journal.open()
            s.store = open_store(None, d)
            await s.store.open()
            try:
                s.sync = SyncJob(s.core, s.store, None)
                await s.sync.open()
                st = s._snapshot()
                s.sequencer.recover(recovery_listeners(s.sync, s.hub, s.audit, s.watches),
                                    keyed=s.executed.recovered, start=st)
                s.hub.rebuild(s.core)
                skip = ("_wake", "_lock", "store", "core", "submit")
                return deep({
                    "core": s.core.__dict__,
                    "sync": {k: v for k, v in vars(s.sync).items() if k not in skip},
                    "hub": {k: v for k, v in vars(s.hub).items() if k != "core"},
                    "audit": {k: v for k, v in vars(s.audit).items() if k != "codec"},
                    "executed": vars(s.executed),
                    "watches": vars(s.watches),
                    "seq": (s.sequencer.applied, s.sequencer.day, s.sequencer._day_span,
                            s.sequencer.clock.last)}), st
            finally:
                s.journal.close()
                await s.store.close()

        return asyncio.run(main())

    full, st0 = grab(copy(data, tmp_path / "full", False))
    snap, st = grab(copy(data, tmp_path / "snap", True))
    assert st0 is None and st is not None and st.watches == {"u4": 1}
    assert full == snap, first_diff(full, snap)
    assert "u3" in repr(full) and "u4" in repr(full)


def deep(x: Any, seen: dict[int, int] | None = None) -> Any:
    """A comparable image of an object graph: values, containers, slots and attributes,
    and for an object met again, its first meeting's number (so identities compare)."""
    import enum
    from collections import deque

    if seen is None:
        seen = {}
    if isinstance(x, (int, float, str, bytes, bool, type(None), enum.Enum)):
        return x
    if id(x) in seen:
        return ("<ref>", seen[id(x)])
    seen[id(x)] = len(seen)
    if isinstance(x, dict):
        return ("dict", type(x).__name__,
                [(deep(k, seen), deep(v, seen)) for k, v in x.items()])
    if isinstance(x, (set, frozenset)):
        return ("set", sorted(repr(deep(v, {})) for v in x))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [deep(v, seen) for v in x])
    if isinstance(x, deque):
        return ("deque", x.maxlen, [deep(v, seen) for v in x])
    if callable(x) and hasattr(x, "__self__"):
        return ("method", x.__name__, deep(x.__self__, seen))
    if callable(x) and not hasattr(x, "__dict__") and not hasattr(x, "__slots__"):
        return ("callable", repr(x))
    out = {}
    for cls in type(x).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(x, slot):
                out[slot] = deep(getattr(x, slot), seen)
    if hasattr(x, "__dict__"):
        for k, v in vars(x).items():
            out[k] = deep(v, seen)
    return ("obj", type(x).__name__, sorted(out.items()))


def first_diff(a: Any, b: Any, path: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{path}: {str(a)[:200]} != {str(b)[:200]}"
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = first_diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {str(a)[:200]} != {str(b)[:200]}"


def test_a_new_snapshot_behind_an_old_one_is_kept_and_the_old_one_goes(
        tmp_path: Path) -> None:
    """A journal that lost its tail is shorter than the last snapshot: the snapshot made
    from it now has a lower seq.  It is kept (before, the pruning kept the two highest
    seqs and deleted it at once), and the ones beyond it, made from records the journal
    no longer holds, are removed."""
    data, _ref = _data(tmp_path, 3000)
    snapshot.make(data, PROFILE)
    phase2(data)
    high = snapshot.make(data, PROFILE)
    assert high is not None
    shutil.rmtree(data / "journal")
    R.build_journal(data, B.bench_refdata(), 2000, 7)
    append(data, flow(100, 9))
    made = snapshot.make(data, PROFILE)
    assert made is not None and made[0] < high[0]
    names = [p.name for p in snapshot.snapshots(data / "snapshots")]
    assert f"snap-{made[0]:012d}.bin" in names and f"snap-{high[0]:012d}.bin" not in names
