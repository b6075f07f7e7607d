"""The single writer's group commit (gateway/sequencer.py): pipelined batches keep the
journal order, a command is answered only once its batch is durable (DESIGN rule 7), and a
failed journal write stops everything after it; and the journal starts a segment at each
local trading day."""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
from datetime import date
from pathlib import Path
from typing import Any

import pytest

import gateway.journal as journal_mod
from engine.commands import Tick
from gateway.core import Core
from gateway.journal import Journal
from gateway.sequencer import Clock, Sequencer, SequencerStopped


async def test_answers_only_after_the_batch_is_durable_and_in_journal_order(
        tmp_path: Path) -> None:
    """DESIGN rule 7: when a submitter's future resolves, its record is in the journal
    (fsynced); the journal holds the commands in submission order and the core applied them
    in that order, with timestamps that never go back, even with many small batches in
    flight behind each other."""
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j, max_batch=3)
    seqr.start()
    first = j.next_seq
    seen: list[tuple[int, int]] = []  # (command index, journal.next_seq when answered)
    futs = []
    try:
        for i in range(300):
            fut = seqr.submit_nowait(Tick(), f"o{i}")
            fut.add_done_callback(lambda _f, i=i: seen.append((i, j.next_seq)))
            futs.append(fut)
            if i % 7 == 0:
                await asyncio.sleep(0)  # let batches form at different sizes
        await asyncio.gather(*futs)
    finally:
        await seqr.stop()
    assert [i for i, _ in seen] == list(range(300))  # answered in order
    assert all(nxt > first + i for i, nxt in seen)  # ... each one already journaled
    assert seqr.applied == 300
    recs = list(j.records())
    assert [r.origin for r in recs] == [f"o{i}" for i in range(300)]
    assert [r.seq for r in recs] == list(range(first, first + 300))
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(recs))
    j.close()


async def test_a_failed_journal_write_stops_the_sequencer_and_answers_nothing_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up on the second write.  The first command was durable and is
    answered; the second, whose record was being written, and the commands still queued
    all fail with SequencerStopped and none is applied: the second *in doubt* (a write
    that fails may have put part of it on disk), the others *not processed*; new
    submissions are refused; the journal holds only the first record."""
    real_write = journal_mod._write_all
    writes: list[int] = []

    def write_all(fd: int, data: bytes, at: int | None = None) -> None:
        writes.append(len(data))
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(fd, data, at)

    j = Journal(tmp_path / "journal").open()
    monkeypatch.setattr(journal_mod, "_write_all", write_all)  # the appends from here on
    seqr = Sequencer(Core(), j, max_batch=1)  # one command per batch: 2 and 3 pipelined
    seqr.start()
    futs = [seqr.submit_nowait(Tick(), f"o{i}") for i in range(5)]
    results: list[Any] = await asyncio.gather(*futs, return_exceptions=True)
    assert isinstance(results[0], list)  # answered: its events
    assert all(isinstance(r, SequencerStopped) for r in results[1:]), results
    assert [r.in_doubt for r in results[1:]] == [True, False, False, False]
    assert "outcome unknown" in str(results[1]) and "not processed" in str(results[2])
    assert seqr.failed is not None and "No space left" in str(seqr.failed)
    assert seqr.applied == 1
    assert len(writes) == 2  # the batch behind the failed one was refused, not written
    with pytest.raises(SequencerStopped):
        seqr.submit_nowait(Tick(), "late")
    await seqr.stop()
    j.close()
    monkeypatch.setattr(journal_mod, "_write_all", real_write)
    with Journal(tmp_path / "journal") as again:
        assert [r.origin for r in again.records()] == ["o0"]


async def test_the_journal_starts_a_segment_at_each_local_trading_day(tmp_path: Path) -> None:
    """One journal segment per local trading day (Europe/Madrid): a batch that spans local
    midnight is split there; after a restart on the same day the sequencer goes on in that
    day's segment, and the next day opens a new one.  Every record is still there, in
    order."""
    from engine.contracts import local_midnight_utc

    midnight = local_midnight_utc(date(2027, 3, 28))  # a DST day: 00:00 CET is 23:00 UTC
    hour = 3_600_000
    instants = iter([midnight - 3000, midnight - 2000, midnight - 1, midnight,
                     midnight + 1000, midnight + 23 * hour - 1, midnight + 23 * hour])
    clock = Clock(now=lambda: next(instants))
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j, clock=clock, max_batch=4)
    seqr.start()
    try:
        await seqr.submit(Tick(), "a")  # day 27, alone
        # one batch of four: two before midnight, two after
        await asyncio.gather(*(seqr.submit_nowait(Tick(), o) for o in "bcde"))
    finally:
        await seqr.stop()
    with_seq = {r.seq: r.origin for r in j.records()}
    ranges = j.segment_ranges()
    j.close()
    assert [[with_seq[q] for q in range(first, first + n)] for _, first, n in ranges] == [
        ["a", "b", "c"], ["d", "e"]]

    # a restart later that day goes on in its segment; the next day opens a new one
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j, clock=clock)
    assert seqr.recover() == 5 and seqr.day == date(2027, 3, 28)
    seqr.start()
    try:
        await seqr.submit(Tick(), "f")  # the last ms of the 28th (a 23-hour day)
        await seqr.submit(Tick(), "g")  # local midnight of the 29th
    finally:
        await seqr.stop()
    assert [n for _, _, n in j.segment_ranges()] == [3, 3, 1]
    j.close()



async def _before_a_midnight_that_cannot_roll(tmp_path: Path) -> tuple[Journal, Sequencer]:
    """A running sequencer that journaled "a"; the next four commands are stamped two
    before and two after local midnight, and starting the new day's segment fails."""
    from engine.contracts import local_midnight_utc

    midnight = local_midnight_utc(date(2027, 5, 3))
    instants = iter([midnight - 5000, midnight - 2000, midnight - 1000, midnight + 10,
                     midnight + 20])
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j, clock=Clock(now=lambda: next(instants)), max_batch=8)
    seqr.start()
    await seqr.submit(Tick(), "a")

    def full_disk() -> None:
        raise journal_mod.JournalError("cannot start a segment: no space left on device")

    j._roll = full_disk  # type: ignore[method-assign]
    return j, seqr


async def test_a_failed_roll_at_midnight_refuses_only_what_is_not_durable(
        tmp_path: Path) -> None:
    """A batch that spans local midnight is two commits: the part before midnight is
    journaled, applied and answered before the new day's segment is started.  If starting
    it fails (a full disk, say), only the commands after midnight are refused; those before
    were answered with their events, and they are what the journal holds."""
    j, seqr = await _before_a_midnight_that_cannot_roll(tmp_path)
    futs = [seqr.submit_nowait(Tick(), o) for o in "bcde"]  # one batch: b, c | d, e
    results: list[Any] = await asyncio.gather(*futs, return_exceptions=True)
    await seqr.stop()
    assert [isinstance(r, list) for r in results] == [True, True, False, False]
    assert all(isinstance(r, SequencerStopped) for r in results[2:])
    assert not any(r.in_doubt for r in results[2:])  # never handed to the journal
    assert seqr.applied == 3
    j.close()
    with Journal(tmp_path / "journal") as again:
        assert [r.origin for r in again.records()] == ["a", "b", "c"]


async def test_the_journal_thread_runs_calls_in_order_and_hands_back_results_and_errors(
) -> None:
    """The journal's thread (gateway/sequencer.py JournalThread) runs what it is handed in
    hand-over order, off the event loop's thread; each future resolves on the loop with the
    call's result or its exception; shutdown finishes what was handed over first."""
    import threading

    from gateway.sequencer import JournalThread

    loop = asyncio.get_running_loop()
    jt = JournalThread()
    ran: list[tuple[int, str]] = []

    def work(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        if i == 7:
            raise OSError(errno.ENOSPC, "disk full")
        return i * i

    futs = [jt.call(loop, work, i) for i in range(20)]
    results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
    assert [i for i, _ in ran] == list(range(20))
    assert {name for _, name in ran} == {"journal"}  # not the loop's thread
    assert results[:7] == [i * i for i in range(7)]
    assert isinstance(results[7], OSError) and results[7].errno == errno.ENOSPC
    assert results[8:] == [i * i for i in range(8, 20)]

    # a cancelled waiter does not stop the call, nor break the next one
    slow = jt.call(loop, lambda: (ran.append((-1, "slow")), 1)[1])
    slow.cancel()
    assert await asyncio.wait_for(jt.call(loop, work, 3), 10) == 9
    assert (-1, "slow") in ran

    pending = [jt.call(loop, work, 100 + i) for i in range(5)]
    jt.shutdown()  # joins: the five calls ran before the thread stopped
    assert [i for i, _ in ran[-5:]] == [100, 101, 102, 103, 104]
    # their outcomes were handed to the loop before the join returned
    assert [await asyncio.wait_for(f, 10) for f in pending] == [(100 + i) ** 2
                                                                 for i in range(5)]
    with pytest.raises(RuntimeError, match="shut down"):
        jt.call(loop, work, 1)


class _Told:
    """A submit_with callback that records each call (a command must be told once)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def for_(self, name: str) -> Any:
        def done(events: list[Any] | None, exc: BaseException | None) -> None:
            self.calls.append((name, events if events is not None else exc))
        return done


async def _until(pred: Any) -> None:
    for _ in range(500):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_a_callback_submitter_is_told_once_after_the_fan_out_and_in_order(
        tmp_path: Path) -> None:
    """submit_with (the gateway's path): each command's callback is called once, in
    journal order, with its events, after the listeners saw its batch (so a private stream
    gets an order report before the answer that carries it), and only once durable."""
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j, max_batch=4)
    listened: list[str] = []
    seqr.listeners.append(lambda applied: listened.extend(o for _, o, _ in applied))
    told: list[tuple[int, bool, int]] = []  # (i, its batch was listened to, journaled)
    seqr.start()
    first = j.next_seq
    try:
        for i in range(50):
            seqr.submit_with(
                Tick(), f"o{i}",
                lambda ev, exc, i=i: told.append((i, f"o{i}" in listened, j.next_seq)))
            if i % 5 == 0:
                await asyncio.sleep(0)
        await _until(lambda: len(told) == 50)
    finally:
        await seqr.stop()
    assert [i for i, _, _ in told] == list(range(50))
    assert all(seen for _, seen, _ in told)
    assert all(nxt > first + i for i, _, nxt in told)
    j.close()


async def test_a_failed_roll_tells_each_callback_submitter_once(tmp_path: Path) -> None:
    """The midnight case above through submit_with: the part before midnight is told its
    events, the part after it the error, and nobody is told twice."""
    j, seqr = await _before_a_midnight_that_cannot_roll(tmp_path)
    t = _Told()
    for o in "bcde":
        seqr.submit_with(Tick(), o, t.for_(o))
    await _until(lambda: seqr.failed is not None)
    await seqr.stop()
    assert [n for n, _ in t.calls] == ["b", "c", "d", "e"]
    assert [isinstance(r, list) for _, r in t.calls] == [True, True, False, False]
    assert all(isinstance(r, SequencerStopped) for _, r in t.calls[2:])
    j.close()


class _Stop(BaseException):
    """Not an ``Exception``: what a cancellation or an interrupt would be."""


@pytest.mark.parametrize("exc", [RuntimeError("a defect"), _Stop("stopped")],
                         ids=["Exception", "BaseException"])
async def test_whatever_stops_the_core_mid_batch_each_submitter_is_told_once(
        tmp_path: Path, exc: BaseException) -> None:
    """If applying a command raises (a defect, or anything else), the commands before it
    in its batch were applied: they get their events; it and those after it get
    SequencerStopped; each is told once, the sequencer records what stopped it and refuses
    new commands."""
    j = Journal(tmp_path / "journal").open()
    core = Core()
    real_apply = core.apply
    calls = itertools.count()

    def apply(cmd: Any, ts: int) -> list[Any]:
        if next(calls) == 2:
            raise exc
        return real_apply(cmd, ts)

    core.apply = apply  # type: ignore[method-assign]
    seqr = Sequencer(core, j, max_batch=8)
    t = _Told()
    for o in "abcde":  # one batch: submitted before the task runs
        seqr.submit_with(Tick(), o, t.for_(o))
    seqr.start()
    await _until(lambda: seqr.failed is not None)
    assert seqr.failed is exc
    with pytest.raises(SequencerStopped):
        seqr.submit_with(Tick(), "late", t.for_("late"))
    await seqr.stop()
    assert [n for n, _ in t.calls] == ["a", "b", "c", "d", "e"]
    assert [isinstance(r, list) for _, r in t.calls] == [True, True, False, False, False]
    assert str(exc) in str(t.calls[2][1])
    # journaled before the core stopped: they take effect when the journal is replayed
    assert all(r.in_doubt for _, r in t.calls[2:])
    j.close()


async def test_a_callback_that_raises_does_not_stop_the_sequencer(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j)
    seqr.start()

    def broken(events: list[Any] | None, exc: BaseException | None) -> None:
        raise ValueError("a session's defect")

    try:
        seqr.submit_with(Tick(), "a", broken)
        t = _Told()
        seqr.submit_with(Tick(), "b", t.for_("b"))
        await _until(lambda: t.calls)
        assert seqr.failed is None
        assert isinstance(t.calls[0][1], list)
        assert await seqr.submit(Tick(), "c") == []
    finally:
        await seqr.stop()
    j.close()


async def test_appends_hold_the_loops_thread_after_the_answers_before_them_are_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch is appended and fsynced on the event loop's own thread (gateway/sequencer.py:
    a hand-off to another thread cost each batch two wake-ups, each waiting for the GIL),
    and rolling to a new day's segment in the journal's thread.  Because the append holds
    the loop's thread, the sequencer lets the loop go round (``LOOP_TURNS``) before it takes
    a batch: the answers of the batch before reach the socket first, even through two
    hops, as the AMQP adapter's (its outbox pump, then the library's writer task).  Here the
    next command is submitted while the first one is being answered, so it is waiting as
    the first batch ends; with one turn fewer the second append comes before the write."""
    import threading

    from engine.contracts import local_midnight_utc

    midnight = local_midnight_utc(date(2027, 6, 2))
    instants = iter([midnight - 2000, midnight - 1000, midnight + 1000])
    j = Journal(tmp_path / "journal").open()
    seqr = Sequencer(Core(), j, clock=Clock(now=lambda: next(instants)), max_batch=1)
    loop_thread = threading.get_ident()
    log: list[tuple[str, Any]] = []
    threads: dict[str, set[bool]] = {"append": set(), "roll": set()}
    real_append, real_roll = j.append, j.roll

    def append(records: Any, **kw: Any) -> Any:
        threads["append"].add(threading.get_ident() == loop_thread)
        log.append(("append", [r.origin for r in records]))
        return real_append(records, **kw)

    def roll() -> Any:
        threads["roll"].add(threading.get_ident() == loop_thread)
        return real_roll()

    monkeypatch.setattr(j, "append", append)
    monkeypatch.setattr(j, "roll", roll)
    outbox: list[str] = []
    wake = asyncio.Event()
    frames: asyncio.Queue[list[str]] = asyncio.Queue()

    async def pump() -> None:  # the adapter's outbox pump: hands its frames on
        while True:
            await wake.wait()
            wake.clear()
            out, outbox[:] = list(outbox), []
            await frames.put(out)

    async def writer() -> None:  # the library's writer task: writes them to the socket
        while True:
            log.append(("written", await frames.get()))

    tasks = [asyncio.create_task(pump()), asyncio.create_task(writer())]
    told = asyncio.Event()

    def answered(origin: str) -> Any:
        def done(events: Any, exc: BaseException | None) -> None:
            assert exc is None
            outbox.append(origin)
            wake.set()
            if origin == "a":  # the next command comes while this one is answered
                seqr.submit_with(Tick(), "b", answered("b"))
            if origin == "c":
                told.set()
        return done

    seqr.start()
    try:
        seqr.submit_with(Tick(), "a", answered("a"))
        await asyncio.sleep(0.05)
        seqr.submit_with(Tick(), "c", answered("c"))  # the next local day: a roll first
        await asyncio.wait_for(told.wait(), 10)
        await asyncio.sleep(0.01)
    finally:
        await seqr.stop()
        for t in tasks:
            t.cancel()
    assert log == [("append", ["a"]), ("written", ["a"]), ("append", ["b"]),
                   ("written", ["b"]), ("append", ["c"]), ("written", ["c"])]
    assert threads == {"append": {True}, "roll": {False}}
    assert [n for _, _, n in j.segment_ranges()] == [2, 1]
    j.close()
