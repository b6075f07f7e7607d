"""The journal's syncs made by a helper process (gateway/disksync.py), the event loop serving
meanwhile: a command is still answered only once its record is durable (DESIGN rule 7); the
helper follows the journal's segments; an error it reports fails the journal; if it goes away
the syncs are made on the loop's thread and nothing is lost; it does not outlive the server.
And the journal's owed sync (``Journal.append(..., defer_sync=True)``)."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.commands import Tick
from gateway.core import Core
from gateway.disksync import DiskSync
from gateway.journal import Journal, JournalError, Record
from gateway.sequencer import PROCESS_SYNC_MIN, Sequencer, SequencerStopped

ROOT = Path(__file__).resolve().parents[1]


def records(j: Journal, n: int) -> list[Record]:
    return [Record(j.next_seq + i, 1_000 + i, "t", Tick()) for i in range(n)]


def helper_fds(pid: int) -> list[str]:
    """What the helper's descriptors point to."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return out


def gone(pid: int, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True  # dead, waiting for its parent to reap it
        except OSError:
            return True
        time.sleep(0.02)
    return False


# ------------------------------------------------------------------ the journal's owed sync

def test_a_deferred_append_owes_its_sync_and_nothing_is_taken_until_it_is_made(
        tmp_path: Path) -> None:
    """At most one piece is ever written and not synced (the torn-tail rule of
    gateway/journal.py): while an append's sync is owed, another append and a roll are
    refused; once it is made the journal goes on.  A journal without fsync, or a batch of
    several pieces, syncs as without ``defer_sync``: nothing is owed."""
    with Journal(tmp_path / "j") as j:
        assert j.append(records(j, 3), defer_sync=True) is True
        with pytest.raises(JournalError, match="waiting for its sync"):
            j.append(records(j, 1))
        with pytest.raises(JournalError, match="waiting for its sync"):
            j.roll()
        j.sync_owed()
        assert j.append(records(j, 1)) is False  # synced on return, as always
        assert j.append(records(j, 2), defer_sync=True) is True
        j.owed_synced(0)
        with pytest.raises(JournalError, match="no sync is owed"):
            j.owed_synced(0)
        # a batch of more than one piece (MAX_WRITE, 256 KiB): synced piece by piece
        big = [Record(j.next_seq + i, 2_000, "t" * 60_000, Tick()) for i in range(6)]
        assert j.append(big, defer_sync=True) is False
        assert j.append(records(j, 1)) is False
        n = j.next_seq - 1
    with Journal(tmp_path / "j") as j:
        assert [r.seq for r in j.records()] == list(range(1, n + 1))
    with Journal(tmp_path / "nofsync", fsync=False) as j:
        assert j.append(records(j, 3), defer_sync=True) is False


def test_an_error_of_the_owed_sync_fails_the_journal(tmp_path: Path) -> None:
    """A sync that failed elsewhere (the helper's errno) fails the journal as a failed sync
    here does: nothing more is appended until it is reopened."""
    with Journal(tmp_path / "j") as j:
        j.append(records(j, 2), defer_sync=True)
        with pytest.raises(JournalError, match="sync failed"):
            j.owed_synced(errno.EIO)
        with pytest.raises(JournalError, match="an earlier write failed"):
            j.append(records(j, 1))


def test_closing_a_journal_with_its_sync_owed_makes_it(tmp_path: Path) -> None:
    """A sequencer stopped while its sync was owed (its task cancelled): the journal's
    close makes the sync, and the records are there when it is opened again."""
    j = Journal(tmp_path / "j").open()
    j.append(records(j, 4), defer_sync=True)
    j.close()
    with Journal(tmp_path / "j") as j:
        assert len(list(j.records())) == 4


# ------------------------------------------------------------------ the helper process

async def submit_batch(seqr: Sequencer, n: int, tag: str) -> list[asyncio.Future[list]]:
    """``n`` commands submitted at once: one batch (the sequencer takes what is queued)."""
    return [seqr.submit_nowait(Tick(), f"{tag}{i}") for i in range(n)]


async def test_a_batch_is_answered_only_after_the_helpers_sync_and_the_loop_serves_meanwhile(
        tmp_path: Path) -> None:
    """DESIGN rule 7 with the sync in the helper: the helper stopped (SIGSTOP) in the middle
    of a batch, none of the batch's commands is answered, however long it waits, while the
    event loop goes on (a task ticking); the helper let go on, all are answered, each one
    in the journal."""
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j)
    seqr.start()
    disk = seqr.disk
    assert disk is not None and disk.pid is not None
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        os.kill(disk.pid, signal.SIGSTOP)
        futs = await submit_batch(seqr, PROCESS_SYNC_MIN + 4, "a")
        done, _ = await asyncio.wait(futs, timeout=0.5)
        assert not done, "answered before the helper synced"
        assert ticks >= 10, "the loop did not serve while the disk was flushing"
        assert j.next_seq == PROCESS_SYNC_MIN + 5  # written, waiting for the sync
        os.kill(disk.pid, signal.SIGCONT)
        await asyncio.wait_for(asyncio.gather(*futs), 5)
        assert disk.syncs == 1 and not disk.broken
    finally:
        os.kill(disk.pid, signal.SIGCONT)
        t.cancel()
        await seqr.stop()
    j.close()
    with Journal(tmp_path / "journal") as j2:
        assert [r.origin for r in j2.records()] == [f"a{i}" for i in range(PROCESS_SYNC_MIN + 4)]


async def test_small_batches_are_synced_on_the_loops_thread(tmp_path: Path) -> None:
    """A batch of fewer than PROCESS_SYNC_MIN records (a light load) is synced on the loop's
    thread: the helper is not asked; ``sync_process=False`` starts no helper at all."""
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j)
    seqr.start()
    try:
        for i in range(5):
            await seqr.submit(Tick(), f"s{i}")
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN, "b"))
        assert seqr.disk is not None and seqr.disk.syncs == 1
    finally:
        await seqr.stop()
    j.close()
    j = Journal(tmp_path / "journal2").open()
    seqr = Sequencer(Core(), j, sync_process=False)
    assert seqr.disk is None
    seqr.start()
    try:
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN * 2, "c"))
    finally:
        await seqr.stop()
    assert len(list(j.records())) == PROCESS_SYNC_MIN * 2
    j.close()


async def test_the_helper_follows_the_journal_to_each_new_segment(tmp_path: Path) -> None:
    """When the journal rolls to a new segment, the helper is handed the new segment's
    descriptor with the next request, and syncs that file from then on."""
    j = Journal(tmp_path / "journal", segment_bytes=1024).open()
    seqr = Sequencer(Core(), j)
    seqr.start()
    disk = seqr.disk
    assert disk is not None and disk.pid is not None
    held: list[str] = []
    try:
        for k in range(4):
            await asyncio.gather(*await submit_batch(seqr, 40, f"r{k}-"))
            current = str(j.segments[-1])
            assert current in helper_fds(disk.pid)
            held.append(current)
        assert disk.syncs == 4 and not disk.broken
    finally:
        await seqr.stop()
    assert len(set(held)) >= 3  # it rolled, and the helper followed
    j.close()


async def test_an_error_the_helper_reports_fails_the_journal_and_the_batch_is_in_doubt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper's fdatasync fails (here on a pipe, which cannot be synced: EINVAL, a real
    error of the real system call): the batch's commands are told their outcome is unknown
    (their records were written), the sequencer stops, the journal refuses more."""
    r, w = os.pipe()
    monkeypatch.setattr(Journal, "sync_owed_fd", property(lambda self: (r, 99)))
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j)
    seqr.start()
    try:
        futs = await submit_batch(seqr, PROCESS_SYNC_MIN, "e")
        outcomes = await asyncio.gather(*futs, return_exceptions=True)
        assert all(isinstance(o, SequencerStopped) and o.in_doubt for o in outcomes)
        assert "Invalid argument" in str(outcomes[0])
        assert isinstance(seqr.failed, JournalError)
        with pytest.raises(SequencerStopped):
            seqr.submit_nowait(Tick(), "late")
    finally:
        await seqr.stop()
        os.close(r)
        os.close(w)
    with pytest.raises(JournalError, match="an earlier write failed"):
        j.append(records(j, 1))
    j.close()


@pytest.mark.parametrize("when", ["idle", "in flight"])
async def test_the_helper_gone_the_syncs_are_made_on_the_loop_and_nothing_is_lost(
        tmp_path: Path, when: str) -> None:
    """The helper killed, while idle or while it holds a batch's sync: every command is
    answered, each one in the journal (the bytes written, our own fdatasync makes them
    durable), and the syncs go on on the loop's thread."""
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j)
    seqr.start()
    disk = seqr.disk
    assert disk is not None and disk.pid is not None
    pid = disk.pid
    try:
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN, "x"))
        if when == "idle":
            os.kill(pid, signal.SIGKILL)
            assert gone(pid)
            futs = await submit_batch(seqr, PROCESS_SYNC_MIN, "y")
        else:
            os.kill(pid, signal.SIGSTOP)
            futs = await submit_batch(seqr, PROCESS_SYNC_MIN, "y")
            done, _ = await asyncio.wait(futs, timeout=0.2)
            assert not done
            os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*futs), 5)
        assert disk.broken and disk.syncs == 1
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN, "z"))
    finally:
        await seqr.stop()
    j.close()
    with Journal(tmp_path / "journal") as j2:
        assert [r.origin[0] for r in j2.records()] == ["x"] * 8 + ["y"] * 8 + ["z"] * 8


def test_the_helper_does_not_outlive_a_killed_server(tmp_path: Path) -> None:
    """A server killed with SIGKILL leaves no helper behind: the helper reads the end of its
    socket and exits."""
    script = textwrap.dedent("""
        import asyncio, sys
        from gateway.disksync import DiskSync
        async def main():
            d = DiskSync()
            d.start(asyncio.get_running_loop())
            print(d.pid, flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        helper = int(proc.stdout.readline())
        assert not gone(helper, within=0.2)
        proc.kill()
        proc.wait()
        assert gone(helper), "the helper outlived the server"
    finally:
        proc.kill()
        proc.wait()


async def test_close_stops_the_helper(tmp_path: Path) -> None:
    disk = DiskSync()
    disk.start(asyncio.get_running_loop())
    pid = disk.pid
    assert pid is not None and not gone(pid, within=0.1)
    disk.close()
    assert gone(pid, within=0.1)
    assert disk.pid is None


@pytest.mark.parametrize("fault", ["no interpreter", "the script fails"])
async def test_a_helper_that_cannot_run_leaves_the_syncs_to_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        fault: str) -> None:
    """The helper cannot be started (no interpreter there) or exits at once (its script
    missing): the server says so in its log and serves, syncing on the loop's thread;
    every command is answered and in the journal."""
    import gateway.disksync as disksync_mod

    if fault == "no interpreter":
        monkeypatch.setattr(disksync_mod.sys, "executable", str(tmp_path / "no-python"))
    else:
        monkeypatch.setattr(disksync_mod, "HELPER", tmp_path / "missing.py")
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j)
    seqr.start()
    try:
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN * 2, "f"))
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN, "g"))
        assert seqr.disk is not None and seqr.disk.broken and seqr.disk.syncs == 0
    finally:
        await seqr.stop()
    assert len(list(j.records())) == PROCESS_SYNC_MIN * 3
    assert any("syncing on the event loop's thread" in r.getMessage() for r in caplog.records)
    j.close()
