"""The single writer (DESIGN rules 1, 3 and 7).

One asyncio task owns the core.  Every state change — traders' requests, officers' actions,
the timekeeper, the sync job, the calendar — is submitted here, gets a sequence number and
a timestamp, is appended to the journal and made durable (one fsync per batch: group
commit), and only then applied to the core; every event of the batch goes to the listeners
(fan-out), and each submitter gets the events its command caused: through a future
(:meth:`Sequencer.submit`), or, on the gateway's path for every request, through a callback
called right after the listeners (:meth:`Sequencer.submit_with`).

A batch is written on the event loop's own thread, and synced there (a small batch) or by a
helper process while the loop serves (a large one: below); what the sockets bring meanwhile
forms the next batch, so throughput grows with load while each command waits for at most one
sync in front of its own.  Before taking a batch the sequencer lets the loop go round
(:data:`LOOP_TURNS`), so the answers of the batch before go out and what arrived joins the
batch.  Appending on the loop's thread is faster than handing each batch to a thread of the
journal's own: every hand-off woke a thread that then waited for the GIL while the loop ran
Python, each way, as long as the flush itself (docs/performance.md, AMQP section, "the
journal on the loop's thread": over WebSocket the median and the p99 at 5,000 orders/s fell
by a third, the saturated rate rose by a fifth to a third).  The price: while the disk
flushes the whole server waits, queries and market data included.  So that is done only
for a small batch (fewer than :data:`PROCESS_SYNC_MIN` records: a light load, when the loop
has little else to do): a larger one is written on the loop's thread and flushed by a
helper process (gateway/disksync.py, which has a GIL of its own), the loop serving the
sockets meanwhile, and the batch is applied and answered when the helper says it is
durable (the saturated rate over WebSocket 7–15 % higher, docs/performance.md).  A disk
that stalls stalls every acknowledgement either way (the server could acknowledge nothing
meanwhile anyway).  Rolling to a new
segment, which may have to make the segment, still runs in the journal's thread, the loop
serving meanwhile.  The journal starts a new segment
at each local trading day, so that a day's records are files of their own; a batch that
spans local midnight is committed in two parts, the first journaled, applied and answered
before the new segment is started.

Time-driven commands (the calendar's closes and openings, the auctions' steps) are sequenced
at their instant: when a command is stamped at or after :attr:`Sequencer.deadline`, the next
instant at which the calendar has something due, the sequencer first asks :attr:`Sequencer.timed`
(the server's timekeeper) what is due at that stamp, from the state as the commands before it
left it, and journals and applies that first, with the same stamp.  So a trader's order
stamped at or after a contract's gate closure comes after the contract's close, in the next
round (R45.g), and one stamped at or after an auction's reception close comes after the pause
of its horizon (R46.2.7), however late the timekeeper wakes.  The timekeeper submits a
:data:`WAKE` when something is due and no command came to set it off.  (GTD orders are
the engine's own: it expires them at the start of every command stamped at or after their
instant, so their expiries are no deadline of the sequencer's; a WAKE sets a :class:`Tick` off
when no command comes.)

Recovery is :meth:`Sequencer.recover`: the journal is replayed into a fresh core, and the
state is exactly the state before the crash, minus at most the batch that was being written
(never acknowledged).  Durability guarantee: a command whose submitter got an answer is in
the journal, fsynced, and is replayed after any crash.  If the journal fails, each command
not yet answered is told so with :class:`SequencerStopped`: *in doubt* for the commands
whose records were handed to the journal (they may be on disk, and then take effect at the
next start), *not processed* for the others; the sequencer accepts nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from auctions.session import CancelAuctionBid, SubmitAuctionBid
from engine.commands import ORDER_COMMANDS
from engine.contracts import local_day_of, local_midnight_utc
from gateway.codec import Codec, default_codec
from gateway.core import (
    SERVER,
    SERVER_RECORDS,
    Checkpoint,
    CheckpointCheck,
    Core,
    ReplayDiverged,
)
from gateway.disksync import DiskSync
from gateway.journal import Journal, Record, RequestKey

if TYPE_CHECKING:
    from gateway.snapshot import State

log = logging.getLogger("ronda.sequencer")

Listener = Callable[[list[tuple[Any, str, list[Any]]]], None]
# called with (events, None) once a command is applied, or (None, error) if it never will be
Done = Callable[[list[Any] | None, BaseException | None], None]
# what waits for a command: the future of submit_nowait, or the callback of submit_with
Waiter = asyncio.Future[list[Any]] | Done


class _Wake:
    """The type of :data:`WAKE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "WAKE"


# submitted by the timekeeper when something is due: journals nothing, makes the sequencer
# ask :attr:`Sequencer.timed` what is due at its stamp; its waiter gets no events
WAKE = _Wake()


class TimeDriven(Protocol):
    """What the calendar makes due (the server's timekeeper, gateway/server.py)."""

    def due(self, ts: int) -> list[tuple[Any, Done]]:
        """The commands due at ``ts`` given the core's state now, each with the callback
        its outcome is told to (as :meth:`Sequencer.submit_with`'s ``done``)."""
        ...

    def calendar_deadline(self, ts: int) -> int | None:
        """The first instant after ``ts`` at which something will be due, GTD expiries
        left out: the engine expires GTD orders itself at the start of every command."""
        ...


def _call(done: Done, events: list[Any] | None, exc: BaseException | None) -> None:
    try:
        done(events, exc)
    except Exception:
        log.exception("a command's callback failed")


def _tell(told: list[tuple[Done, list[Any]]]) -> None:
    for done, events in told:
        _call(done, events, None)


def _fail(waiter: Waiter, exc: BaseException) -> None:
    if not isinstance(waiter, asyncio.Future):
        _call(waiter, None, exc)
    elif not waiter.done():
        waiter.set_exception(exc)


class Clock:
    """Milliseconds since the epoch, UTC, never going backwards.  ``speed`` > 1 makes a
    simulated clock that starts at ``start`` and runs that many times faster than real time
    (a whole trading day in minutes or seconds: the demo and the tests)."""

    def __init__(self, now: Callable[[], int] | None = None, speed: float = 1.0,
                 start: int | None = None) -> None:
        self.speed = speed
        if now is None:
            if speed == 1.0 and start is None:
                def now() -> int:
                    return time.time_ns() // 1_000_000
            else:
                t0 = time.monotonic_ns()
                s0 = start if start is not None else time.time_ns() // 1_000_000

                def now() -> int:
                    return s0 + int((time.monotonic_ns() - t0) * speed) // 1_000_000
        self._now = now
        self.last = 0

    def now(self) -> int:
        t = self._now()
        if t < self.last:
            t = self.last
        self.last = t
        return t


def _resolve(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():  # the awaiting task was cancelled meanwhile
        return
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)


class JournalThread:
    """A thread for the journal's slow, rare work (rolling to a new segment, which may have
    to make it): what it is handed runs there one after the other, in the order handed
    over, while the event loop goes on serving sockets.  (Appends run on the loop's own
    thread: see the module.)

    One hand-off each way: the call goes in through a :class:`queue.SimpleQueue` and its
    outcome comes back to the loop with ``call_soon_threadsafe``.  An executor's
    ``run_in_executor`` does the same with a work item, a ``concurrent.futures`` future and
    an asyncio future chained to it by callbacks: a round trip costs the loop's thread about
    twice the CPU that way (43–80 µs against 23–36 µs here, ``perf/bench_handoff.py``).

    A daemon thread, stopped by :meth:`shutdown` (``Sequencer.stop``).  A process that exits
    without stopping may cut an append in progress short, as a crash would: that batch was
    never acknowledged, and the journal cuts a torn tail when it is opened."""

    def __init__(self, name: str = "journal") -> None:
        self._name = name
        self._q: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any],
                  tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any
             ) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in the thread; the future resolves on ``loop`` with its result
        or its exception."""
        if self._closed:
            raise RuntimeError("the journal thread is shut down")
        if self._thread is None:  # started on first use: a sequencer never started owns none
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        fut: asyncio.Future[Any] = loop.create_future()
        self._q.put((loop, fut, fn, args))
        return fut

    def _run(self) -> None:
        get = self._q.get
        while True:
            item = get()
            if item is None:
                return
            loop, fut, fn, args = item
            try:
                result, exc = fn(*args), None
            except BaseException as e:  # handed to the awaiting task, whatever it is
                result, exc = None, e
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, fut, result, exc)
            del item, fut, result, exc

    def shutdown(self) -> None:
        """Finish what was handed over, then stop the thread."""
        self._closed = True
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()


class SequencerStopped(RuntimeError):
    """The sequencer is not running (shutting down, or its journal failed).

    ``in_doubt`` is True for a command that had been handed to the journal when it failed:
    its record may be on disk (whole, or cut off as a torn tail), so it may take effect when
    the journal is replayed at the next start; its submitter cannot be told either way now.
    False: the command was never handed to the journal and never takes effect."""

    def __init__(self, message: str, in_doubt: bool = False) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt


def replay_record(core: Core, check: CheckpointCheck, rec: Record, listeners: Iterable[Listener],
                  keyed: Callable[[Record, list[Any]], None] | None) -> None:
    """One journaled record replayed: its checkpoint checked, applied to ``core``, shown to
    the recovery's ``listeners`` and, if it carries an idempotency key, to ``keyed``.  The
    server's recovery and the snapshotter's replica (gateway/snapshot.py) both replay so:
    a snapshot is what a recovery builds."""
    cmd = rec.command
    if type(cmd) is Checkpoint:
        check.check(rec.seq, rec.ts, cmd, core.state_hash())
    elif not check.tail_from:
        check.tail_from = rec.seq
    events = core.apply(cmd, rec.ts)
    one = [(cmd, rec.origin, events)]
    for listener in listeners:
        listener(one)
    if keyed is not None and rec.key is not None:
        keyed(rec, events)


def recovery_listeners(sync: Any, hub: Any, audit: Any, watches: Any) -> list[Listener]:
    """What a recovery's replay shows each record to, in this order: the sync job (the
    trades of unsettled rounds), the fan-out (the day's trades), the audit trail and the
    connections with on_disconnect hibernate."""
    return [sync.observe, hub.observe_replay, audit.observe, watches.observe]


# commands that move no deadline of the calendar's (an order's GTD expiry is the engine's
# own, at the start of every command; a bid moves no session's times): no need to work the
# next one out again after them (about 0.1 ms with a day's contracts and sessions)
_NO_DEADLINE: frozenset[type] = (ORDER_COMMANDS | SERVER_RECORDS
                                 | {SubmitAuctionBid, CancelAuctionBid})


# how many times the event loop goes round before the sequencer takes a batch: once for the
# callbacks and tasks that the batch before woke (the sessions' and the AMQP adapter's
# flushes, which hand its answers to the sockets) and for the sockets' reads, once more for
# what those woke in turn (the AMQP outbox's pump and the library's writer task, when the
# socket was full) and another read of the sockets, so that the append, which holds the
# loop's thread, comes after the answers before it are on their way, with what arrived
# meanwhile (one turn, once the AMQP answers were written by a callback, was no better:
# docs/performance.md, AMQP section, "answers written by a callback")
LOOP_TURNS = 2


# the fewest records of an append whose sync the helper process makes (gateway/disksync.py),
# the loop serving meanwhile; a smaller one is synced on the loop's thread: the load is
# light, the loop has little else to do while the disk flushes, and the round trip to the
# helper would add to the wait
PROCESS_SYNC_MIN = 8


# a time step's rounds at most (a chain is two or three long: a session scheduled, then
# opened and closed); more is a defect, left to the timekeeper's retries
_MAX_STEPS = 6


class _Part:
    """Commands committed together: journaled in one append, then applied in order."""

    __slots__ = ("due_at", "items")

    def __init__(self) -> None:
        # (command, origin, waiter, key, stamp)
        self.items: list[tuple[Any, str, Waiter, RequestKey | None, int]] = []
        self.due_at: int | None = None  # ask the calendar what is due at this stamp first


class Sequencer:
    def __init__(self, core: Core, journal: Journal, clock: Clock | None = None,
                 max_batch: int = 1024, codec: Codec | None = None,
                 sync_process: bool = True) -> None:
        self.core = core
        self.journal = journal
        self.clock = clock or Clock()
        self.max_batch = max_batch
        self.codec = codec or default_codec()
        self.listeners: list[Listener] = []  # per batch, after it is applied (fan-out)
        # per command, right after it is applied: for listeners that must see the core as it
        # is at that command, live as in replay (the sync job's round-close snapshot)
        self.command_listeners: list[Listener] = []
        # submitted, not yet taken into a batch; the task sleeps on ``_wake`` when empty
        self._pending: deque[tuple[Any, str, Waiter, RequestKey | None]] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()  # nothing pending and no batch in progress
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._roller = JournalThread()  # rolls only: appends run on the loop's thread
        # the appends' syncs made by a process of their own, the loop serving meanwhile
        # (gateway/disksync.py); None: on the loop's thread
        self.disk: DiskSync | None = DiskSync() if sync_process and journal.fsync else None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failed: BaseException | None = None
        # called once with what stopped it, after every waiter was told (the server stops)
        self.on_failure: list[Callable[[BaseException], None]] = []
        self.applied = 0
        self._resolved = 0  # commands of the current batch applied and answered
        self._handed = 0  # commands of the current batch handed to the journal
        self.day: date | None = None  # local trading day of the last journaled record
        self._day_span = (0, 0)  # [start, end) of ``day`` in ms UTC
        self.divergences: list[ReplayDiverged] = []  # accepted by the operator at recovery
        # time-driven commands (module docstring): asked at the first stamp at or after
        # ``deadline``; None: nothing known to be due (until a WAKE)
        self.timed: TimeDriven | None = None
        self.deadline: int | None = None

    # ------------------------------------------------------------------ recovery

    def recover(self, listeners: list[Listener] | None = None,
                accept_divergence: bool = False,
                keyed: Callable[[Record, list[Any]], None] | None = None,
                start: State | None = None) -> int:
        """Replay the journal into the core; return the number of records replayed.
        ``start``: a snapshot's state, already installed in the core and the listeners
        (gateway/snapshot.py): only the records after it are replayed, its checkpoint
        findings go on.
        ``listeners`` see every replayed command's events (e.g. the sync job, which rebuilds
        the trades of unsynchronised rounds); ``keyed`` sees every replayed record that
        carries an idempotency key, with its events (the AMQP adapter's memory of the
        requests it executed, so that a repeat after a restart is not executed again).

        At each :class:`Checkpoint` record the core's state hash is compared with the one
        the server had when it wrote it (:class:`CheckpointCheck`).  A difference means the
        replay does not reproduce what the traders were told; so do records after the last
        checkpoint that another server (version) wrote, which cannot be checked.  At the end
        of the replay the first such finding is raised (:class:`ReplayDiverged`), unless
        ``accept_divergence`` (an operator's decision, after a deliberate change of the
        engine's behaviour): then each is logged and kept in :attr:`divergences`, and the
        server journals an ``accepted`` checkpoint of the state it starts from.  A later
        replay that reaches that checkpoint with the same state reproduces what was
        accepted: the divergences before it are settled."""
        n = 0
        last_seq = last_ts = 0
        check = CheckpointCheck()
        if start is not None:
            check, last_seq, last_ts = start.check, start.seq, start.last_ts
            if start.clock_last > self.clock.last:
                self.clock.last = start.clock_last
        for rec in self.journal.records(last_seq + 1):
            replay_record(self.core, check, rec, listeners or (), keyed)
            if rec.ts > self.clock.last:
                self.clock.last = rec.ts
            n += 1
            last_seq, last_ts = rec.seq, rec.ts
        if n or start is not None:
            self._set_day(last_ts)
        self.applied = n + (start.applied if start is not None else 0)
        found = check.unsettled(last_seq, last_ts)
        if found and not accept_divergence:
            raise found[0]
        for d in found:
            log.critical("%s; going on, as the operator accepted", d)
        self.divergences = found
        return n

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.disk is not None:
            self.disk.start(self._loop)
        self._task = self._loop.create_task(self._run(), name="sequencer")

    async def stop(self) -> None:
        """Finish what was submitted, then stop."""
        self._stopping = True
        try:
            if self._task is not None:
                await self._idle.wait()
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
                except BaseException as exc:  # what stopped it, already logged and recorded
                    if exc is not self.failed:
                        raise
        finally:
            if self.disk is not None:
                self.disk.close()
        self._roller.shutdown()

    def submit_nowait(self, cmd: Any, origin: str) -> asyncio.Future[list[Any]]:
        fut: asyncio.Future[list[Any]] = (
            self._loop or asyncio.get_running_loop()).create_future()
        self._enqueue(cmd, origin, fut)
        return fut

    def submit_with(self, cmd: Any, origin: str, done: Done,
                    key: RequestKey | None = None) -> None:
        """As :meth:`submit_nowait`, for a submitter that only needs to be told: ``done``
        is called with the command's events right after its batch's listeners (the
        fan-out) ran, or with the error if the journal failed.  No future and no callback
        scheduled on the loop per command: this is the gateway's path for every request.
        ``done`` must not raise (if it does, the error is logged and the batch goes on).
        ``key``: the request's idempotency key, journaled with the command (a
        :data:`~gateway.journal.RequestKey`, checked by the caller: a bad one would refuse
        the whole batch)."""
        self._enqueue(cmd, origin, done, key)

    def _enqueue(self, cmd: Any, origin: str, waiter: Waiter,
                 key: RequestKey | None = None) -> None:
        if self._stopping or self.failed is not None:
            raise SequencerStopped("the sequencer is not accepting commands")
        self._pending.append((cmd, origin, waiter, key))
        self._idle.clear()
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    async def submit(self, cmd: Any, origin: str) -> list[Any]:
        """Journal ``cmd`` durably, apply it, and return the events it caused."""
        return await self.submit_nowait(cmd, origin)

    async def checkpoint(self, reason: str, server: str = SERVER) -> Checkpoint:
        """Journal a :class:`Checkpoint` of the core's state once every command submitted
        before it is applied (the hash is the state the record follows), and return it."""
        if self._task is None or self._task.done():
            raise SequencerStopped("the sequencer is not running")
        while self._pending or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)  # the batch's callbacks, then look again
        cp = Checkpoint(self.core.state_hash(), reason, server)
        await self.submit(cp, "server")  # nothing can come in between: no await before
        return cp

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        q = self._pending
        while True:
            while not q:
                self._idle.set()
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
            self._idle.clear()
            # the loop goes round first (LOOP_TURNS): the answers of the batch before are
            # handed to the sockets, and what the sockets brought meanwhile joins this batch,
            # before its append holds the loop's thread
            for _ in range(LOOP_TURNS):
                await asyncio.sleep(0)
            n = len(q) if len(q) < self.max_batch else self.max_batch
            batch = [q.popleft() for _ in range(n)]
            self._resolved = 0  # the batch's commands applied and answered so far
            self._handed = 0  # ... and handed to the journal (applied or not)
            try:
                await self._commit(loop, batch)
            except BaseException as exc:  # the journal failed (or worse): nothing more
                self.failed = exc         # may be acknowledged
                log.critical("journal append failed; the sequencer stops: %r", exc)
                # what was applied was answered (a prefix of the batch); what was handed to
                # the journal may be in it; the rest never will be
                for k in range(self._resolved, len(batch)):
                    if k < self._handed:
                        stopped = SequencerStopped(
                            f"outcome unknown: the journal failed while recording this "
                            f"command ({exc}); it may take effect when the server restarts",
                            in_doubt=True)
                    else:
                        stopped = SequencerStopped(f"not processed: journal failed: {exc}")
                    _fail(batch[k][2], stopped)
                while q:
                    waiter = q.popleft()[2]
                    _fail(waiter, SequencerStopped(f"not processed: journal failed: {exc}"))
                self._idle.set()
                for cb in self.on_failure:
                    try:
                        cb(exc)
                    except Exception:
                        log.exception("a failure callback failed")
                if not isinstance(exc, Exception):  # cancelled, interrupted: say so
                    raise
                return

    @staticmethod
    def _fail_injected(injected: list[tuple[Any, Done]], exc: BaseException) -> None:
        for _, done in injected:
            _call(done, None, exc)

    def _set_day(self, ts: int) -> None:
        self.day = local_day_of(ts)
        self._day_span = self._span_of(ts)

    async def _commit(self, loop: asyncio.AbstractEventLoop,
                      batch: list[tuple[Any, str, Waiter, RequestKey | None]]) -> None:
        """Stamp the batch's commands, then commit them in parts: one per local trading day,
        and a new one at each command stamped at or after :attr:`deadline` (or at a
        :data:`WAKE`), before which what the calendar makes due at its stamp is journaled
        and applied (:meth:`_time_step`).  Each part is a commit of its own: journaled (in
        its day's segment), applied and answered before the next is formed, so a failure
        there (a full disk, say) refuses only what is not durable, and each command is
        compared with the deadline as the parts before it left it: several instants may
        pass while one batch is stamped (a fast simulated clock), and each is kept.  A
        command that may move a deadline (not in ``_NO_DEADLINE``: an operator's, the
        sync job's) ends its part, so that the commands after it are compared with the
        deadline it leaves (a contract created with its gate closure among the batch's
        stamps is closed before the command stamped at it, R45.g)."""
        now = self.clock.now
        stamped = [(*item, now()) for item in batch]
        part = _Part()
        lo, hi = self._day_span
        timed, deadline = self.timed, self.deadline
        for item in stamped:
            cmd, ts = item[0], item[4]
            due = timed is not None and (cmd is WAKE or (
                deadline is not None and ts >= deadline and type(cmd) is not Checkpoint))
            if (due or not lo <= ts < hi) and part.items:
                await self._commit_part(loop, part)  # local midnight, or the calendar first
                part = _Part()
            if not lo <= ts < hi:
                lo, hi = self._span_of(ts)
            if due:
                await self._time_step(loop, ts)
            timed, deadline = self.timed, self.deadline
            part.items.append(item)
            if timed is not None and cmd is not WAKE and type(cmd) not in _NO_DEADLINE:
                # it may bring a deadline (an operator creating a contract): the commands
                # after it are compared with the deadline it leaves, so it is applied first
                await self._commit_part(loop, part)
                part = _Part()
                timed, deadline = self.timed, self.deadline
        if part.items:
            await self._commit_part(loop, part)

    async def _time_step(self, loop: asyncio.AbstractEventLoop, ts: int) -> None:
        """Journal and apply what the calendar makes due at ``ts``, then ask again, since
        what it did may make more due at once (a session scheduled is opened, and closed if
        its reception is over, which pauses its horizon), until nothing more is: the
        command stamped ``ts`` comes after all of it."""
        for _ in range(_MAX_STEPS):
            part = _Part()
            part.due_at = ts
            if not await self._commit_part(loop, part):
                return
        log.error("the calendar still makes commands due at %d after %d steps; the "
                  "timekeeper is left to try them", ts, _MAX_STEPS)
        self._refresh_deadline(ts)

    def _refresh_deadline(self, ts: int) -> None:
        """:attr:`deadline`: the calendar's next instant after ``ts``."""
        if self.timed is not None:
            try:
                self.deadline = self.timed.calendar_deadline(ts)
            except Exception:
                log.exception("working out the next deadline failed")

    def _span_of(self, ts: int) -> tuple[int, int]:
        day = local_day_of(ts)
        return local_midnight_utc(day), local_midnight_utc(day + timedelta(days=1))

    async def _commit_part(self, loop: asyncio.AbstractEventLoop, part: _Part) -> bool:
        """Commit ``part``; return whether the calendar's commands were injected first."""
        items = part.items
        injected: list[tuple[Any, Done]] = []
        if part.due_at is not None and self.timed is not None:
            try:
                injected = self.timed.due(part.due_at)
            except Exception:  # a defect of the calendar's: the traders' commands go on
                log.exception("working out the time-driven commands failed")
        seq = self.journal.next_seq
        # (command, origin, waiter, key, ts, one of the batch's?)
        entries: list[tuple[Any, str, Waiter, RequestKey | None, int, bool]] = []
        records: list[Record] = []
        for cmd, done in injected:
            entries.append((cmd, "calendar", done, None, part.due_at or 0, False))
        for cmd, origin, waiter, key, ts in items:
            entries.append((cmd, origin, waiter, key, ts, True))
        for cmd, origin, _, key, ts, _ in entries:
            if cmd is not WAKE:
                records.append(Record(seq, ts, origin, cmd, key))
                seq += 1
        if records:
            first = records[0].ts
            if not self._day_span[0] <= first < self._day_span[1]:
                had = self.day
                if had is not None and local_day_of(first) != had:
                    try:
                        await self._roller.call(loop, self.journal.roll)
                    except BaseException as exc:
                        self._fail_injected(injected, exc)
                        raise
                self._set_day(first)
            # durable first (DESIGN rule 7): written on the loop's own thread, synced there
            # or, a large part, by the helper process while the loop serves (the module)
            self._handed = self._resolved + len(items)
            try:
                disk = self.disk is not None and len(records) >= PROCESS_SYNC_MIN
                if self.journal.append(records, defer_sync=disk):
                    assert self.disk is not None
                    await self.disk.sync(self.journal)
            except BaseException as exc:
                self._fail_injected(injected, exc)
                raise
        applied: list[tuple[Any, str, list[Any]]] = []
        told: list[tuple[Done, list[Any]]] = []
        deadlines = part.due_at is not None
        last_ts = part.due_at or 0
        try:
            for cmd, origin, waiter, _, ts, counted in entries:
                if cmd is WAKE:
                    events: list[Any] = []
                else:
                    events = self.core.apply(cmd, ts)
                    self.applied += 1
                    one = (cmd, origin, events)
                    applied.append(one)
                    for cl in self.command_listeners:
                        try:
                            cl([one])
                        except Exception:
                            log.exception("command listener failed")
                    if type(cmd) not in _NO_DEADLINE:  # may move a deadline
                        deadlines = True
                last_ts = ts
                if counted:
                    self._resolved += 1
                if isinstance(waiter, asyncio.Future):
                    if not waiter.done():  # the submitter may have gone away
                        waiter.set_result(events)  # its callbacks run after the listeners
                else:
                    told.append((waiter, events))
        except BaseException:
            _tell(told)  # what was applied is answered, as a future's callbacks would be
            raise
        if injected:
            # what they did may make more due at once (a session scheduled is opened, a
            # contract created is opened): ask again (_time_step)
            self.deadline = part.due_at
        elif deadlines:
            self._refresh_deadline(last_ts)
        for listener in self.listeners:
            try:
                listener(applied)
            except Exception:
                log.exception("event listener failed")
        _tell(told)  # after the fan-out, as a future's callbacks would be
        return bool(injected)
