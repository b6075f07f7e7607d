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


def cancels_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine whose behaviour changed: it ignores cancellations (the upgrade case)."""
    monkeypatch.setattr(Engine, "_on_cancel", lambda self, cmd, ts: None)


async def test_the_journal_records_the_state_at_start_and_stop_and_a_restart_checks_them(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(data, (C1,)) as srv:
        await trade_a_little(srv)
        at_stop = srv.core.state_hash()
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
        # the officers' audit trail shows the server's starts and stops
        trail = [(e["by"], e["fields"]["reason"], e["fields"]["state_hash"])
                 for e in reversed(again.audit.query()) if e["action"] == "checkpoint"]
        assert trail == [("server", cp.reason, cp.state_hash) for _, cp in cps] + [
            ("server", "start", at_stop)]
    finally:
        await again.stop()
    # the restart starts from the state the first run stopped with, and stops with it
    assert [(cp.reason, cp.state_hash) for _, cp in checkpoints(data)[2:]] == [
        ("start", at_stop), ("stop", at_stop)]


async def test_a_replay_that_gives_another_state_is_refused_and_nothing_is_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    async with running_server(data, (C1,)) as srv:
        await trade_a_little(srv)
        at_stop = srv.core.state_hash()
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
    async with running_server(data, (C1,)) as srv:
        await trade_a_little(srv)
        original = srv.core.state_hash()
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
        srv = Server(Config(data_dir=data, port=0, calendar=None, fsync=False))
        await srv.start()
        try:
            assert srv.sequencer.divergences == []
            assert srv.core.state_hash() == changed
        finally:
            await srv.stop()
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


async def _journal_with_trades(data: Path) -> None:
    async with running_server(data, (C1,)) as srv:
        await trade_a_little(srv)


def test_ronda_serve_refuses_to_start_on_a_diverging_replay_unless_told_to(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    asyncio.run(_journal_with_trades(data))
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
    asyncio.run(_journal_with_trades(data))
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
