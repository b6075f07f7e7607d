"""The server's checkpoints (gateway/core.py ``Checkpoint``): the journal records the state
the server had when it started and when it stopped, and a restart whose replay does not
reproduce it refuses to serve (DESIGN rule 3: the same journal gives the same state).  The
case it is for: an engine whose behaviour changed (an upgrade) replaying a journal written
by the old one, which would otherwise rebuild, silently, another book than the one the
traders were told about."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from wsclient import contract_id, running_server, start_server

from engine.commands import CancelOrder, NewOrder
from engine.engine import Engine
from engine.model import Side
from gateway.core import ACCEPTED, SERVER, Checkpoint, ReplayDiverged
from gateway.journal import Journal, Record
from gateway.server import Config, Server

ROOT = Path(__file__).resolve().parents[1]
C1 = contract_id(10)


def checkpoints(data_dir: Path) -> list[tuple[int, Checkpoint]]:
    with Journal(data_dir / "journal", fsync=False) as j:
        return [(r.seq, r.command) for r in j.records() if type(r.command) is Checkpoint]


async def trade_a_little(srv: Any) -> None:
    """Three offers of ana; the second is cancelled."""
    ids = []
    for i in range(3):
        evs = await srv.sequencer.submit(
            NewOrder("ana", "AG1", "SELLU1", C1, Side.SELL, 5000 + i, 10, req_id=f"o{i}"),
            "ana")
        ids.extend(e.order_id for e in evs if type(e).__name__ == "OrderReport")
    await srv.sequencer.submit(CancelOrder("ana", "AG1", ids[1]), "ana")


async def traded_journal(data: Path) -> str:
    """A server's journal with a little trading, the server stopped cleanly; its state
    hash at stop."""
    async with running_server(data, (C1,)) as srv:
        await trade_a_little(srv)
        return str(srv.core.state_hash())


async def restarted_state(data: Path) -> str:
    """A server started on ``data`` (without --accept-replay-divergence) finds no
    divergence; its state hash; stopped."""
    srv = Server(Config(data_dir=data, port=0, calendar=None, fsync=False))
    await srv.start()
    try:
        assert srv.sequencer.divergences == []
        return str(srv.core.state_hash())
    finally:
        await srv.stop()


def cancels_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine whose behaviour changed: it ignores cancellations (the upgrade case)."""
    monkeypatch.setattr(Engine, "_on_cancel", lambda self, cmd, ts: None)


async def test_the_journal_records_the_state_at_start_and_stop_and_a_restart_checks_them(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    at_stop = await traded_journal(data)
    cps = checkpoints(data)
    # one at start (after the reference data, before anything traded), one at stop
    assert [cp.reason for _, cp in cps] == ["start", "stop"]
    assert cps[1][1].state_hash == at_stop
    assert cps[0][1].state_hash != at_stop
    assert all(cp.server == SERVER for _, cp in cps)
    with Journal(data / "journal", fsync=False) as j:
        assert [r.seq for r in j.records()][-1] == cps[1][0]  # the last record of the run

    again = Server(Config(data_dir=data, port=0, calendar=None, fsync=False))
    await again.start()  # the replay gives the state of both checkpoints
    try:
        assert again.sequencer.divergences == []
        assert again.core.state_hash() == at_stop
        # not in the officers' audit trail: no one's action, and no event to date it by
        trail = again.audit.query()
        assert trail and not [e for e in trail if e["action"] == "checkpoint"]
    finally:
        await again.stop()
    # the restart starts from the state the first run stopped with, and stops with it
    assert [(cp.reason, cp.state_hash) for _, cp in checkpoints(data)[2:]] == [
        ("start", at_stop), ("stop", at_stop)]


async def test_a_replay_that_gives_another_state_is_refused_and_nothing_is_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    at_stop = await traded_journal(data)
    with Journal(data / "journal", fsync=False) as j:
        before = list(j.records())
    cancels_ignored(monkeypatch)
    srv = Server(Config(data_dir=data, port=0, calendar=None, fsync=False))
    with pytest.raises(ReplayDiverged) as caught:
        await srv.start()
    err = caught.value
    # found at the stop checkpoint: the start one came before the cancellation
    assert (err.seq, err.checkpoint.reason) == (before[-1].seq, "stop")
    assert err.checkpoint.state_hash == at_stop and err.replayed != at_stop
    assert f"record {err.seq}" in str(err) and at_stop in str(err)
    assert srv.ws_server is None  # no socket was opened
    # the journal was closed (its lock released) and nothing was added to it
    with Journal(data / "journal", fsync=False) as j:
        assert list(j.records()) == before


async def test_an_accepted_divergence_is_journaled_and_settles_the_next_replays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    original = await traded_journal(data)
    with monkeypatch.context() as m:
        cancels_ignored(m)
        srv = Server(Config(data_dir=data, port=0, calendar=None, fsync=False,
                            accept_replay_divergence=True))
        await srv.start()
        try:
            assert [d.checkpoint.reason for d in srv.sequencer.divergences] == ["stop"]
            changed = srv.core.state_hash()
            assert changed != original  # the cancelled order is back
        finally:
            await srv.stop()
        cps = checkpoints(data)
        assert [cp.reason for _, cp in cps] == ["start", "stop", ACCEPTED, "stop"]
        assert cps[2][1].state_hash == changed
        # the same engine again, without the flag: the accepted state is reproduced, so
        # the divergence before it is settled
        assert await restarted_state(data) == changed
    # the original engine does not reproduce the accepted state: refused again, there
    srv = Server(Config(data_dir=data, port=0, calendar=None, fsync=False))
    with pytest.raises(ReplayDiverged) as caught:
        await srv.start()
    assert caught.value.checkpoint.reason == ACCEPTED
    assert caught.value.checkpoint.state_hash == changed


async def test_a_checkpoint_waits_for_the_commands_submitted_before_it(
        tmp_path: Path) -> None:
    # its hash must be the state after every record before it: the commands still in the
    # sequencer's queue are applied first
    srv = await start_server(tmp_path / "data", (C1,))
    try:
        seq = srv.sequencer
        futs = [seq.submit_nowait(NewOrder("ana", "AG1", "SELLU1", C1, Side.SELL,
                                           5000 + i, 10), "ana") for i in range(20)]
        cp = await seq.checkpoint("test")
        await asyncio.gather(*futs)
        assert cp.state_hash == srv.core.state_hash()
    finally:
        await srv.stop()
    with Journal(tmp_path / "data" / "journal", fsync=False) as j:
        recs = list(j.records())
    k = next(i for i, r in enumerate(recs) if r.command == cp)
    assert sum(type(r.command) is NewOrder for r in recs[:k]) == 20


def _tamper(data: Path) -> int:
    """Append a checkpoint whose state no replay gives (as a changed engine would see)."""
    with Journal(data / "journal", fsync=False) as j:
        last = list(j.records())[-1]
        j.append([Record(j.next_seq, last.ts, "server",
                         Checkpoint("0" * 64, "stop", "ronda 0.0.0"))])
        return j.next_seq - 1




def test_ronda_serve_refuses_to_start_on_a_diverging_replay_unless_told_to(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    asyncio.run(traded_journal(data))
    seq = _tamper(data)
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data),
           "--port", "0", "--no-calendar", "--no-fsync"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert done.returncode == 4, done.stderr.decode()
    err = done.stderr.decode()
    assert f"at record {seq}" in err and "0" * 64 in err
    assert "Nothing was served" in err and "--accept-replay-divergence" in err

    p = subprocess.Popen([*cmd, "--accept-replay-divergence"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().decode()
        assert line.startswith("ronda: serving"), (line, p.poll())
        p.send_signal(signal.SIGTERM)
        _, log = p.communicate(timeout=60)
        assert p.returncode == 0
        assert b"divergence accepted" in log
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert checkpoints(data)[-2][1].reason == ACCEPTED


def test_the_replay_tool_checks_the_checkpoints_of_an_exported_journal(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    asyncio.run(traded_journal(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                              env=env, capture_output=True, timeout=120)

    out = tmp_path / "journal.jsonl"
    assert cli("journal", "export", str(data / "journal"), "-o", str(out)).returncode == 0
    lines = out.read_bytes().splitlines()
    kinds = [orjson.loads(x)["command"][0] for x in lines]  # [name, fields...]
    assert kinds.count("checkpoint") == 2
    ok = cli("replay", str(out))
    assert ok.returncode == 0, ok.stderr.decode()
    assert orjson.loads(ok.stdout.splitlines()[-1])["hash"] == checkpoints(data)[-1][
        1].state_hash
    # a checkpoint the replay does not reproduce stops it, naming the line
    k = len(lines) - 1
    bad = orjson.loads(lines[k])
    assert bad["command"][0] == "checkpoint" and bad["command"][2] == "stop"
    bad["command"][1] = "f" * 64  # its state hash
    lines[k] = orjson.dumps(bad)
    out.write_bytes(b"\n".join(lines) + b"\n")
    refused = cli("replay", str(out))
    assert refused.returncode != 0
    assert f"line {k + 1}: command: the replay's state differs" in refused.stderr.decode()


def _export(data: Path) -> list[bytes]:
    """The journal as `ronda journal export` writes it."""
    from gateway.codec import encode
    from gateway.wire import fmt_instant

    with Journal(data / "journal", fsync=False) as j:
        return [orjson.dumps({"at": fmt_instant(r.ts), "origin": r.origin,
                              "command": encode(r.command)}) for r in j.records()]


async def test_the_replay_tool_settles_divergences_as_the_server_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.replay import ScenarioError, replay

    data = tmp_path / "data"
    await traded_journal(data)
    with monkeypatch.context() as m:
        cancels_ignored(m)
        srv = Server(Config(data_dir=data, port=0, calendar=None, fsync=False,
                            accept_replay_divergence=True))
        await srv.start()
        changed = srv.core.state_hash()
        await srv.stop()
        lines = _export(data)
        # the engine that was accepted replays the whole journal: the accepted checkpoint
        # settles the divergence at the first run's stop checkpoint
        out = list(replay(lines))
        assert orjson.loads(out[-1]) == {"type": "state_hash", "hash": changed}
    # the original engine does not reproduce the accepted state: refused, at that line
    k = next(i for i, x in enumerate(lines, 1) if b'"accepted"' in x)
    with pytest.raises(ScenarioError) as caught:
        list(replay(lines))
    assert caught.value.line == k and "accepted checkpoint" in str(caught.value)


def _journal_of_another_server(data: Path) -> Any:
    """A journal whose last checkpoint another server version wrote (at its start, the
    state of a fresh core), followed by records it journaled and then crashed (no
    checkpoint at stop)."""
    from engine.commands import Tick
    from engine.config import PROFILES
    from gateway.core import Core

    fresh = Core(PROFILES["harmonised"]).state_hash()
    with Journal(data / "journal", fsync=False) as j:
        j.append([Record(1, 1_800_000_000_000, "server",
                         Checkpoint(fresh, "start", "ronda 0.0.9")),
                  Record(2, 1_800_000_001_000, "calendar", Tick()),
                  Record(3, 1_800_000_002_000, "calendar", Tick())])


async def test_records_after_another_servers_last_checkpoint_are_refused_as_unchecked(
        tmp_path: Path) -> None:
    # the upgrade after a crash: nothing recorded the old server's state at its end, so
    # nothing can tell whether the new one reproduces it
    from gateway.core import ReplayUnchecked

    data = tmp_path / "data"
    data.mkdir()
    _journal_of_another_server(data)
    srv = Server(Config(data_dir=data, port=0, calendar=None, fsync=False))
    with pytest.raises(ReplayUnchecked) as caught:
        await srv.start()
    err = caught.value
    assert (err.seq, err.last, err.checkpoint.server) == (2, 3, "ronda 0.0.9")
    assert "records 2 to 3" in str(err) and "cannot be checked" in str(err)
    # accepted once, the server's own checkpoint follows them: later starts check from it
    srv = Server(Config(data_dir=data, port=0, calendar=None, fsync=False,
                        accept_replay_divergence=True))
    await srv.start()
    assert [type(d) for d in srv.sequencer.divergences] == [ReplayUnchecked]
    await srv.stop()
    async with running_server(data) as srv:
        assert srv.sequencer.divergences == []


async def test_records_after_its_own_last_checkpoint_replay_unchecked_by_the_same_server(
        tmp_path: Path) -> None:
    # a crash before the stop checkpoint, restarted by the same server: its replay is
    # deterministic, so the tail is not refused; cutting the journal's last record as a
    # crash in the middle of writing it would
    data = tmp_path / "data"
    at_crash = await traded_journal(data)
    seg = sorted((data / "journal").glob("*.rjl"))[-1]
    seg.write_bytes(seg.read_bytes()[:-5])  # the stop checkpoint torn: never durable
    assert [cp.reason for _, cp in checkpoints(data)] == ["start"]
    assert await restarted_state(data) == at_crash


async def test_a_journal_failing_at_start_serves_nothing_and_lets_the_journal_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import gateway.journal as journal_mod
    from gateway.sequencer import SequencerStopped

    data = tmp_path / "data"
    await traded_journal(data)
    with Journal(data / "journal", fsync=False) as j:
        before = list(j.records())

    def full_disk(fd: int, data: bytes, at: int | None = None) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(journal_mod, "_write_all", full_disk)
        srv = Server(Config(data_dir=data, port=0, calendar=None, fsync=False))
        with pytest.raises(SequencerStopped):
            await srv.start()  # its start checkpoint cannot be written
        assert srv.ws_server is None and srv.failure is not None
    with Journal(data / "journal", fsync=False) as j:  # closed, and as it was
        assert list(j.records()) == before


def test_ronda_serve_exits_with_status_3_when_the_journal_fails_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the disk is full: the start checkpoint cannot be written, so nothing is served
    # (ronda serve run in this process, to give it the full disk)
    import errno

    import gateway.journal as journal_mod
    from gateway.cli import main

    data = tmp_path / "data"
    asyncio.run(traded_journal(data))

    def full_disk(fd: int, data: bytes, at: int | None = None) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_mod, "_write_all", full_disk)
    rc = main(["serve", "--data-dir", str(data), "--port", "0", "--no-calendar",
               "--no-fsync"])
    out, err = capsys.readouterr()
    assert rc == 3, err
    assert "the journal failed at start" in err and "nothing was served" in err
    assert "serving" not in out
