"""``ronda serve``: the trading platform in one process (the embedded default).

Composition: the core (engine + risk) under the sequencer with its journal in the data
folder; recovery by replaying the journal; the timekeeper (contracts opened and closed by
the calendar, GTD expiries); the fan-out hub; the WebSocket server (and, when configured,
the AMQP adapter).  Every state change goes through the sequencer (DESIGN rule 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import os
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auctions.calendar import Calendar
from engine.config import PROFILES
from engine.events import Reject
from gateway import snapshot
from gateway.audit import AuditLog
from gateway.core import ACCEPTED, CommandFailed, Core, SessionMark, Watches
from gateway.executed import Executed
from gateway.fanout import Hub
from gateway.journal import Journal
from gateway.refdata_file import read_and_validate
from gateway.sequencer import (
    WAKE,
    Clock,
    Done,
    Sequencer,
    SequencerStopped,
    recovery_listeners,
)
from gateway.session import Session
from gateway.snapshot import State
from risk.commands import LoadReferenceData

log = logging.getLogger("ronda.server")

DEFAULT_REFDATA = Path(__file__).resolve().parents[1] / "examples" / "refdata.toml"
# a time-driven command that failed or was refused is not submitted again before this long,
# doubling at each new failure up to the maximum (the timekeeper)
RETRY_MIN_S = 1.0
RETRY_MAX_S = 300.0


@dataclass
class Config:
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8080
    refdata: Path = DEFAULT_REFDATA
    profile: str = "harmonised"
    depth: int = 20  # entries per side of the local order list (R46.2.8)
    fsync: bool = True
    # the journal's syncs made by a helper process, the loop serving meanwhile
    # (gateway/disksync.py); False: on the event loop's thread
    sync_process: bool = True
    heartbeat_s: float = 5.0
    max_message_bytes: int = 64 * 1024  # larger messages get an error, the session lives
    max_frame_bytes: int = 1024 * 1024  # larger frames close the connection (1009)
    max_queue: int = 2000  # outbound messages per connection
    # a connection with more than max_queue messages waiting for longer than this is let
    # go (gateway/session.py; and at once at HARD_QUEUE_FACTOR times max_queue)
    max_behind_s: float = 5.0
    max_inflight: int = 1000  # requests of a connection in the sequencer, unanswered
    max_errors_per_10s: int = 50
    calendar: Calendar | None = field(default_factory=Calendar)
    amqp_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    web_root: Path | None = None
    settlement_url: str | None = None  # None: SQLite in the data folder
    # start even if replaying the journal does not give the state the server had at a
    # checkpoint (an operator's decision after a deliberate change of the engine)
    accept_replay_divergence: bool = False
    # seconds between two runs of ``ronda journal snapshot`` (gateway/snapshot.py), in a
    # child process at low priority; 0: never (a restart then replays the whole journal)
    snapshot_every_s: float = 300.0


ENGINE_ID = "engine-id"


class EngineIdError(ValueError):
    """The data folder's ``engine-id`` file is not an engine id."""


def engine_id(data_dir: Path) -> str:
    """The id of the engine whose journal is in ``data_dir`` (its file ``engine-id``, a
    UUID made at the first start): the settlement store records whose rounds it settles.
    Made durable (the file and its folder synced) before any store can record it."""
    path = data_dir / ENGINE_ID
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise EngineIdError(f"{path}: not an engine id (a UUID): {text[:60]!r}") from None
    made = str(uuid.uuid4())
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(made + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return made


class Server:
    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.core = Core(PROFILES[config.profile])
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # zero-filled segments when syncing: each sync then flushes the data alone
        self.journal = Journal(config.data_dir / "journal", fsync=config.fsync,
                               preallocate=config.fsync)
        self.sequencer = Sequencer(self.core, self.journal, clock,
                                   sync_process=config.sync_process)
        self.hub = Hub(self.core, config.depth)
        self.sequencer.listeners.append(self.hub.publish)
        self.audit = AuditLog(self.sequencer.codec)
        self.sequencer.listeners.append(self.audit.observe)
        # the connections open with on_disconnect: hibernate (SessionMark records)
        self.watches = Watches()
        self.sequencer.listeners.append(self.watches.observe)
        self.sessions_of: dict[str, set[Session]] = defaultdict(set)
        # set when the sequencer stops on a failed journal: nothing more can be made
        # durable, so the server must stop serving (``ronda serve`` exits with status 3)
        self.halted = asyncio.Event()
        self.failure: BaseException | None = None
        self.sequencer.on_failure.append(self._journal_failed)
        self._tasks: list[asyncio.Task[Any]] = []
        self._kick = asyncio.Event()
        # the timekeeper's commands that failed or were refused: (not before, last pause)
        self._retry: dict[Any, tuple[float, float]] = {}
        self.recovered = 0
        # the commands executed under an AMQP request's message_id (gateway/executed.py):
        # rebuilt from the journal at recovery, so that a repeat is answered, not executed
        self.executed = Executed()
        self.ws_server: Any = None
        self.amqp: Any = None

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        self.journal.open()
        if self.journal.recovered_tail_bytes:
            log.warning("journal: cut a torn tail of %d bytes", self.journal.recovered_tail_bytes)
        from sync.job import SyncJob
        from sync.store import open_store

        self.store = open_store(self.config.settlement_url, self.config.data_dir)
        await self.store.open()
        try:  # the store settles this data folder's rounds, and no other engine's
            await self.store.claim(engine_id(self.config.data_dir), int(time.time() * 1000))
        except BaseException:
            self.journal.close()
            await self.store.close()
            raise
        self.sync = SyncJob(self.core, self.store, self.sequencer.submit)
        await self.sync.open()
        try:
            start = self._snapshot()
            replayed = self.sequencer.recover(
                recovery_listeners(self.sync, self.hub, self.audit, self.watches),
                accept_divergence=self.config.accept_replay_divergence,
                keyed=self.executed.recovered, start=start)
        except BaseException:  # ReplayDiverged: nothing is served from that state
            self.journal.close()
            await self.store.close()
            raise
        self.sequencer.command_listeners.append(self.sync.observe)
        self.hub.rebuild(self.core)
        self.recovered = self.sequencer.applied  # (the snapshot's records, then the tail's)
        log.info("recovered %d records; state %s%s", self.recovered, self.core.state_hash(),
                 f" (from the snapshot at record {start.seq}, then {replayed} records"
                 " replayed)" if start is not None else "")
        self.snapshot_seq = start.seq if start is not None else 0
        # the core creates no reference cycles: freeze what start-up built, so that no
        # collection walks it again; what trading keeps for long (unsettled trades, the
        # agents' latest trades) is held in untracked tuples and dicts, so the collections
        # stay short as the day goes on (perf/bench_gc.py, docs/performance.md)
        gc.collect()
        gc.freeze()
        self.sequencer.start()
        try:
            await self._start_journaling()
            await self._hibernate_after_crash()
        except BaseException:  # the journal failed (SequencerStopped: exit status 3), or
            await self.sequencer.stop()  # the reference data are refused: nothing served
            self.journal.close()
            await self.store.close()
            raise
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._timekeeper(), name="timekeeper"))
        self._tasks.append(loop.create_task(self._heartbeats(), name="heartbeats"))
        self._tasks.append(loop.create_task(self.sync.run(), name="sync"))
        if self.config.snapshot_every_s > 0:
            self._tasks.append(loop.create_task(self._snapshots(), name="snapshots"))
        from gateway.ws import serve_ws

        self.ws_server = await serve_ws(self)
        if self.config.amqp_url:
            from gateway.amqp import AmqpAdapter

            self.amqp = AmqpAdapter(self, self.config.amqp_url)
            self._tasks.append(loop.create_task(self.amqp.run(), name="amqp"))

    def _snapshot(self) -> State | None:
        """The newest usable snapshot, installed in the core and the listeners (None: the
        whole journal is replayed)."""
        journal = self.journal
        state = snapshot.load_latest(self._snap_dir, self.config.profile,
                                     lambda seq: snapshot.digest_of(journal, seq),
                                     self.sync.last_synced)
        if state is not None:
            snapshot.install(state, self.core, self.sync, self.hub, self.audit, self.executed,
                             self.sync.last_synced, self.watches)
        return state

    @property
    def _snap_dir(self) -> Path:
        return self.config.data_dir / "snapshots"

    async def _snapshots(self) -> None:
        """Every ``snapshot_every_s``: ``ronda journal snapshot`` in a child process, at the
        lowest priority (it replays the records since the last snapshot: the live server's
        state is never read).  A failure is logged and tried again at the next period."""
        while True:
            await asyncio.sleep(self.config.snapshot_every_s)
            try:
                await self.snapshot_now()
            except Exception:  # cannot start it (no process left, say): the next period
                log.exception("snapshot: could not run the snapshotter")

    async def snapshot_now(self) -> bool:
        """One run of the snapshotter; whether it succeeded."""
        proc = await asyncio.create_subprocess_exec(
            "nice", "-n", "19", sys.executable, "-m", "gateway.cli", "journal", "snapshot",
            str(self.config.data_dir), "--profile", self.config.profile,
            "--synced-through", str(self.sync.last_synced if self.sync else 0),
            cwd=Path(__file__).resolve().parents[1], stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await proc.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # its file is written whole or not at all
            await proc.wait()
            raise
        if proc.returncode != 0:
            log.error("snapshot failed (status %s): %s", proc.returncode,
                      err.decode(errors="replace").strip()[-2000:])
            return False
        return True

    async def _hibernate_after_crash(self) -> None:
        """The connections the journal says were open with ``on_disconnect: hibernate`` when
        the server stopped without closing them (a crash): their users' orders are
        hibernated now, before anything is served, as the login option promises for any
        lost connection; then the marks are closed.  (A clean stop closes every
        connection first: nothing is left open.)"""
        from engine.commands import HibernateOrders

        for user, n in sorted(self.watches.open.items()):
            events = await self.sequencer.submit(HibernateOrders(
                user=user, reason="disconnected: the server stopped without closing the "
                                  "connection (login option: hibernate)"), "operator")
            log.warning("hibernated %d orders of %s, whose connection with on_disconnect "
                        "hibernate the server's stop did not close", sum(
                            1 for e in events if type(e).__name__ == "OrderReport"), user)
            await self.sequencer.submit(SessionMark(user, -n), "operator")

    async def _start_journaling(self) -> None:
        """What a start journals: the reference data if they changed, then the state the
        server starts from."""
        text, _ = read_and_validate(self.config.refdata)
        risk = self.core.risk
        loaded = None if risk is None or risk.loaded_json is None else json.loads(
            risk.loaded_json)
        if loaded != json.loads(text):  # first start, or the file changed: journal it
            await self.sequencer.submit(LoadReferenceData(text), "operator")
        # the state this server starts from, for the next replay to check (gateway.core)
        # (or, when the operator accepted that the replay diverged, the accepted state)
        accepted = bool(self.sequencer.divergences)
        cp = await self.sequencer.checkpoint(ACCEPTED if accepted else "start")
        log.log(logging.CRITICAL if accepted else logging.INFO, "checkpoint at start%s: "
                "state %s (%s)", " (divergence accepted)" if accepted else "", cp.state_hash,
                cp.server)

    def _journal_failed(self, exc: BaseException) -> None:
        log.critical("the journal failed (%r): the server stops; a restart replays the "
                     "journal, and every request answered OUTCOME_UNKNOWN is then found "
                     "done or not", exc)
        self.failure = exc
        self.halted.set()

    @property
    def port(self) -> int:
        sock = next(iter(self.ws_server.sockets))
        p: int = sock.getsockname()[1]
        return p

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.amqp is not None:
            await self.amqp.close()
        if self.ws_server is not None:
            self.ws_server.close()
            await self.ws_server.wait_closed()
        if self.failure is None:  # the state it stops with, for the next replay to check
            try:
                cp = await self.sequencer.checkpoint("stop")
                log.info("checkpoint at stop: state %s", cp.state_hash)
            except SequencerStopped:  # the journal failed meanwhile: nothing to record
                pass
        await self.sequencer.stop()
        self.journal.close()
        await self.store.close()

    # ------------------------------------------------------------------ time

    def kick(self) -> None:
        """Something changed deadlines (a new contract, a GTD order): recompute them."""
        self._kick.set()

    async def _timekeeper(self) -> None:
        """Time-driven commands, all through the sequencer: the calendar's contracts are
        created and opened (A1§2) and closed at gate closure, closing the round (R45.g);
        GTD orders expire (A1§4.2); the auctions' steps.  The sequencer works out what is
        due itself, at the first command stamped at or after the next deadline (:meth:`due`,
        gateway/sequencer.py), so that nothing stamped after an instant is sequenced before
        what that instant brings; this task wakes it with a :data:`WAKE` when something is
        due and no command came, and once at start, which tells the sequencer its first
        deadline."""
        seq = self.sequencer
        seq.timed = self
        first = True
        while True:
            checked = seq.clock.now()
            try:
                if first or self._due_now(checked, asyncio.get_running_loop().time()):
                    await seq.submit(WAKE, "calendar")
                first = False
            except SequencerStopped:
                return
            # the next deadline after the instant checked, not after the clock now: one
            # passed during the turn (seconds of a fast simulated clock) is due at once
            nxt = self.next_deadline(checked)
            now = seq.clock.now()
            speed = seq.clock.speed
            delay = 1.0 if nxt is None else min(1.0, max(0.0, (nxt - now) / 1000 / speed))
            self._kick.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
            # comes as the kick does, and the server's stop then waits for this task for ever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._kick.wait()

    def _due_now(self, now: int, mono: float) -> bool:
        return any(self._may_try(cmd, mono) for cmd in self.due_commands(now))

    def _may_try(self, cmd: Any, mono: float) -> bool:
        held = self._retry.get(cmd)
        return held is None or mono >= held[0]

    def due(self, ts: int) -> list[tuple[Any, Done]]:
        """What the calendar makes due at ``ts``, from the core's state now (the
        sequencer asks, in its own task, right before it journals the command stamped
        ``ts``): :func:`auctions.scheduler.due`, less what failed or was refused a short
        while ago.  The commands due are worked out from the state, so one that failed (a
        defect: ``command_failed``, gateway/core.py) or was refused stays due: without a
        pause it would be journaled and fail again at every check, for as long as the
        defect lasts.  It is tried again after :data:`RETRY_MIN_S`, then twice as long
        after each new failure, up to :data:`RETRY_MAX_S`; a success forgets it."""
        mono = asyncio.get_running_loop().time()
        return [(cmd, functools.partial(self._time_driven_done, cmd, mono))
                for cmd in self.due_commands(ts) if self._may_try(cmd, mono)]

    def _time_driven_done(self, cmd: Any, mono: float, events: list[Any] | None,
                          exc: BaseException | None) -> None:
        if events is None:  # the journal failed: the server stops
            return
        held = self._retry.get(cmd)
        # the command's own refusal (an operator's or the calendar's: no agent, no order),
        # not an order's (a reactivation refused by the risk checks is the command's work)
        bad = [e for e in events if type(e) is CommandFailed
               or (type(e) is Reject and not e.agent and e.order_id is None)]
        if not bad:
            if held is not None:
                del self._retry[cmd]
                log.warning("the time-driven command %r went through", cmd)
            return
        delay = RETRY_MIN_S if held is None else min(RETRY_MAX_S, held[1] * 2)
        self._retry[cmd] = (mono + delay, delay)
        last = bad[-1]
        why = (f"was refused ({last.code}: {last.reason})" if isinstance(last, Reject)
               else "failed")
        log.critical("the time-driven command %r %s; tried again in %.0f s", cmd, why, delay)

    def due_commands(self, now: int) -> list[Any]:
        from auctions.scheduler import due

        return due(self.core, self.config.calendar, now)

    def next_deadline(self, now: int) -> int | None:
        from auctions.scheduler import next_deadline

        return next_deadline(self.core, self.config.calendar, now)

    def calendar_deadline(self, ts: int) -> int | None:
        """The sequencer's next deadline (gateway/sequencer.py): :meth:`next_deadline`
        without the GTD expiries, which the engine applies itself at the start of every
        command (a :class:`Tick` is the timekeeper's, for when no command comes)."""
        from auctions.scheduler import next_deadline

        return next_deadline(self.core, self.config.calendar, ts, expiries=False)

    async def _heartbeats(self) -> None:
        """Liveness on every connection (SYSTEM_ALIVE)."""
        from gateway.wire import fmt_instant

        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            msg = {"type": "heartbeat", "server_time": fmt_instant(self.sequencer.clock.now())}
            for sessions in list(self.sessions_of.values()):
                for s in list(sessions):
                    s.send(dict(msg))
