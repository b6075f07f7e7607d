"""The journal's syncs made by a helper process (gateway/disksync.py), the event loop serving
meanwhile: a command is still answered only once its record is durable (DESIGN rule 7); the
helper follows the journal's segments; an error it reports fails the journal; if it goes away
the syncs are made on the loop's thread and nothing is lost; it does not outlive the server.
And the journal's owed sync (``Journal.append(..., defer_sync=True)``)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import gateway.journal as journal_mod
from engine.commands import Tick
from gateway.core import Core
from gateway.disksync import DiskSync, helper_command
from gateway.journal import Journal, JournalError, Record
from gateway.sequencer import PROCESS_SYNC_MIN, Sequencer, SequencerStopped

ROOT = Path(__file__).resolve().parents[1]


def records(j: Journal, n: int) -> list[Record]:
    return [Record(j.next_seq + i, 1_000 + i, "t", Tick()) for i in range(n)]


def started(tmp_path: Path, **journal: Any) -> tuple[Journal, Sequencer, DiskSync, int]:
    """A journal in ``tmp_path`` and a sequencer on it, started (on the running loop), with
    its helper running, and the helper's pid."""
    j = Journal(tmp_path / "journal", **journal).open()
    seqr = Sequencer(Core(), j)
    seqr.start()
    disk = seqr.disk
    assert disk is not None and disk.pid is not None
    return j, seqr, disk, disk.pid


def helper_fds(pid: int) -> list[str]:
    """What the helper's descriptors point to."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return out


def own_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors the server's own thread syncs from now on (``_datasync``)."""
    synced: list[int] = []
    real = journal_mod._datasync

    def datasync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(journal_mod, "_datasync", datasync)
    return synced


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


def test_closing_a_journal_with_its_sync_owed_makes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sequencer stopped while its sync was owed (its task cancelled): the journal's
    close makes the sync (on the segment's descriptor, before it is closed), and the
    records are there when it is opened again."""
    j = Journal(tmp_path / "j").open()
    j.append(records(j, 4), defer_sync=True)
    fd = j.sync_owed_fd
    synced = own_syncs(monkeypatch)
    j.close()
    assert synced == [fd]
    with Journal(tmp_path / "j") as j:
        assert len(list(j.records())) == 4


# ------------------------------------------------------------------ the helper process

async def submit_batch(seqr: Sequencer, n: int, tag: str
                       ) -> list[asyncio.Future[list[Any]]]:
    """``n`` commands submitted at once: one batch (the sequencer takes what is queued)."""
    return [seqr.submit_nowait(Tick(), f"{tag}{i}") for i in range(n)]


async def test_a_batch_is_answered_only_after_the_helpers_sync_and_the_loop_serves_meanwhile(
        tmp_path: Path) -> None:
    """DESIGN rule 7 with the sync in the helper: the helper stopped (SIGSTOP) in the middle
    of a batch, none of the batch's commands is answered, however long it waits, while the
    event loop goes on (a task ticking); the helper let go on, all are answered, each one
    in the journal."""
    j, seqr, disk, pid = started(tmp_path)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        os.kill(pid, signal.SIGSTOP)
        futs = await submit_batch(seqr, PROCESS_SYNC_MIN + 4, "a")
        done, _ = await asyncio.wait(futs, timeout=0.5)
        assert not done, "answered before the helper synced"
        assert ticks >= 2, "the loop did not serve while the disk was flushing"
        assert j.next_seq == PROCESS_SYNC_MIN + 5  # written, waiting for the sync
        os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(asyncio.gather(*futs), 5)
        assert disk.syncs == 1 and not disk.broken
    finally:
        os.kill(pid, signal.SIGCONT)
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
    j, seqr, disk, pid = started(tmp_path, segment_bytes=1024)
    held: list[str] = []
    try:
        for k in range(4):
            await asyncio.gather(*await submit_batch(seqr, 40, f"r{k}-"))
            current = str(j.segments[-1])
            assert current in helper_fds(pid)
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
    monkeypatch.setattr(Journal, "sync_owed_fd", property(lambda self: r))
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
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """The helper killed, while idle or while it holds a batch's sync: every command is
    answered, each one in the journal (the bytes written, our own fdatasync makes them
    durable), and the syncs go on on the loop's thread."""
    j, seqr, disk, pid = started(tmp_path)
    try:
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN, "x"))
        synced = own_syncs(monkeypatch)
        if when == "idle":
            os.kill(pid, signal.SIGKILL)
            assert gone(pid)
            futs = await submit_batch(seqr, PROCESS_SYNC_MIN, "y")
        else:
            os.kill(pid, signal.SIGSTOP)
            futs = await submit_batch(seqr, PROCESS_SYNC_MIN, "y")
            done, _ = await asyncio.wait(futs, timeout=0.2)
            assert not done
            assert disk._waiting, "the sync was not handed to the helper"
            os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*futs), 5)
        assert disk.broken and disk.syncs == 1
        assert synced == [j.sync_owed_fd], "answered without a sync of our own"
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
    """Closing its socket is what stops the helper: it exits by itself (status 0), is
    reaped, and is not killed."""
    disk = DiskSync()
    disk.start(asyncio.get_running_loop())
    proc = disk._proc
    assert proc is not None and not gone(proc.pid, within=0.1)
    disk.close()
    assert proc.returncode == 0
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
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
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


async def test_the_helper_follows_a_segment_whose_descriptor_number_was_used_before(
        tmp_path: Path) -> None:
    """A new segment's descriptor often has the number of the one before (the journal opens
    the new one, then closes the old): the helper is still handed the new file."""
    j, seqr, disk, pid = started(tmp_path, segment_bytes=1024)
    numbers = set()
    try:
        await asyncio.gather(*await submit_batch(seqr, 40, "a"))  # synced by the helper
        numbers.add(j.sync_owed_fd)
        start = len(j.segments)
        while len(j.segments) < start + 2:  # small batches, synced on the loop, roll twice
            await seqr.submit(Tick(), "s" * 200)
            numbers.add(j.sync_owed_fd)
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN, "b"))
        assert str(j.segments[-1]) in helper_fds(pid)
        assert disk.syncs == 2 and not disk.broken
    finally:
        await seqr.stop()
    assert len(numbers) < 3  # a number was used again (else this test shows nothing)
    j.close()


async def test_the_helper_syncs_through_an_open_file_of_its_own(tmp_path: Path) -> None:
    """Linux tells a failed write-back once to each open file of the inode: the helper opens
    the segment again rather than keep the server's open file, so that an error it saw and
    could not report (killed before it answered) still reaches the server's own sync.  An
    open file's offset is its own: moving the server's does not move the helper's."""
    j, seqr, _, pid = started(tmp_path)
    try:
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN, "a"))
        fd = j.sync_owed_fd
        os.lseek(fd, 12_345, os.SEEK_SET)  # appends write at their offset (pwrite)
        segment = str(j.segments[-1])
        held = [n for n in os.listdir(f"/proc/{pid}/fd")
                if os.readlink(f"/proc/{pid}/fd/{n}") == segment]
        assert len(held) == 1
        with open(f"/proc/{pid}/fdinfo/{held[0]}") as f:
            pos = int(next(ln for ln in f if ln.startswith("pos:")).split()[1])
        assert pos == 0, "the helper shares the server's open file"
    finally:
        await seqr.stop()
    j.close()


async def test_a_helper_that_stops_answering_is_given_up_and_the_batch_synced_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A helper alive and not answering (stopped, frozen) would hold every acknowledgement
    while the server looks alive: past its answer's deadline it is killed and the batch is
    synced on the loop's thread, then answered; the syncs stay there."""
    j, seqr, disk, pid = started(tmp_path)
    disk.answer_timeout = 0.3
    synced = own_syncs(monkeypatch)
    try:
        os.kill(pid, signal.SIGSTOP)
        futs = await submit_batch(seqr, PROCESS_SYNC_MIN, "t")
        await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert disk.broken and disk.syncs == 0
        assert synced == [j.sync_owed_fd]
        assert gone(pid), "the helper given up on was left running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        await seqr.stop()
    assert any("did not answer within 0.3 s" in r.getMessage() for r in caplog.records)
    assert len(list(j.records())) == PROCESS_SYNC_MIN
    j.close()


async def test_the_helper_outlasts_a_sigterm_sent_to_every_process_of_the_service(
        tmp_path: Path) -> None:
    """A service manager stopping the service signals all of its processes: the helper
    ignores SIGTERM (and SIGINT) and keeps syncing until the server, stopping, closes it."""
    j, seqr, disk, pid = started(tmp_path)
    try:
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN, "a"))
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN, "b"))
        assert disk.syncs == 2 and not disk.broken
    finally:
        await seqr.stop()
    j.close()


def run_helper() -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(helper_command(theirs.fileno()), pass_fds=(theirs.fileno(),))
    theirs.close()
    ours.settimeout(10)
    return proc, ours


@pytest.mark.parametrize("request_", [b"S", b"F", b"X", b"FF", "two descriptors"])
def test_the_helper_refuses_what_it_cannot_make_sense_of(
        tmp_path: Path, request_: bytes | str) -> None:
    """A sync asked before any segment, a ``b"F"`` whose descriptor did not come, anything
    else: the helper exits without answering (the server then syncs itself), rather than
    answer 0 for a file it did not sync."""
    proc, sock = run_helper()
    path = tmp_path / "seg"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_WRONLY)
    try:
        if request_ == "two descriptors":
            socket.send_fds(sock, [b"F"], [fd, fd])
        else:
            assert isinstance(request_, bytes)
            sock.send(request_)
        assert sock.recv(16) == b""  # closed, no answer
        assert proc.wait(10) == 2
    finally:
        os.close(fd)
        sock.close()
        proc.kill()
        proc.wait()


def test_the_helper_answers_each_request_in_order_and_exits_when_closed(
        tmp_path: Path) -> None:
    """The protocol itself: ``b"F"`` with a descriptor, then ``b"S"``, each answered 0 (the
    sync's errno); a file that cannot be synced (a pipe: EINVAL) answered with its errno;
    the socket closed, the helper exits with status 0."""
    proc, sock = run_helper()
    path = tmp_path / "seg"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_WRONLY)
    r, w = os.pipe()
    try:
        socket.send_fds(sock, [b"F"], [fd])
        assert struct.unpack("=i", sock.recv(16)) == (0,)
        sock.send(b"S")
        assert struct.unpack("=i", sock.recv(16)) == (0,)
        socket.send_fds(sock, [b"F"], [r])
        assert struct.unpack("=i", sock.recv(16)) == (errno.EINVAL,)
        sock.close()
        assert proc.wait(10) == 0
    finally:
        for d in (fd, r, w):
            os.close(d)
        sock.close()
        proc.kill()
        proc.wait()


async def test_a_request_the_dead_helper_cannot_receive_is_synced_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper died and the loop has not yet read the end of its socket: sending the
    request fails, and the sync is made on the loop's thread before ``sync`` returns."""
    disk = DiskSync()
    disk.start(asyncio.get_running_loop())
    pid = disk.pid
    assert pid is not None
    try:
        with Journal(tmp_path / "journal") as j:
            assert j.append(records(j, PROCESS_SYNC_MIN), defer_sync=True)
            os.kill(pid, signal.SIGKILL)
            assert gone(pid)  # (a blocking wait: the loop does not run meanwhile)
            synced = own_syncs(monkeypatch)
            await disk.sync(j)
            assert synced == [j.sync_owed_fd]
            assert disk.broken and disk.syncs == 0
            j.append(records(j, 1))  # nothing owed any more
    finally:
        disk.close()


def test_on_uvloop_the_helper_syncs_and_its_death_in_flight_loses_nothing(
        tmp_path: Path) -> None:
    """The server's own event loop (uvloop; the other tests run on asyncio's): a batch synced
    by the helper, then the helper killed while it holds the next one: all answered, all in
    the journal."""
    import uvloop

    async def main() -> tuple[int, bool, int]:
        j, seqr, disk, pid = started(tmp_path)
        try:
            await asyncio.gather(*await submit_batch(seqr, PROCESS_SYNC_MIN, "a"))
            os.kill(pid, signal.SIGSTOP)
            futs = await submit_batch(seqr, PROCESS_SYNC_MIN, "b")
            done, _ = await asyncio.wait(futs, timeout=0.2)
            assert not done and disk._waiting
            os.kill(pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*futs), 5)
            syncs, broken = disk.syncs, disk.broken
        finally:
            await seqr.stop()
        n = len(list(j.records()))
        j.close()
        return syncs, broken, n

    assert uvloop.run(main()) == (1, True, 2 * PROCESS_SYNC_MIN)


def test_serve_refuses_an_unknown_journal_sync_naming_the_option_and_its_choices(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``ronda serve --journal-sync`` takes ``process`` or ``loop``; anything else is refused
    before anything starts, the option and the choices named; the default is the helper."""
    from gateway.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["serve", "--journal-sync", "thread"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--journal-sync" in err and "'process'" in err and "'loop'" in err
    assert parser.parse_args(["serve"]).journal_sync == "process"
    assert parser.parse_args(["serve", "--journal-sync", "loop"]).journal_sync == "loop"
