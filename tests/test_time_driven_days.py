"""Whole trading days through the real server, on a clock the test moves, against the pure
scheduler (:func:`auctions.scheduler.simulate`, which jumps from deadline to deadline with
no clock).

The server is real (journal, sequencer, timekeeper, sync job); its timekeeper is kept from
waking after its first turn (``_due_now``), so that only the traffic sets the calendar's
commands off: the traders' orders, and WAKEs the test submits as the timekeeper would.  The
clock moves in random steps (hypothesis); several commands may form one batch, stamped at
increasing instants (:class:`Stamps`).  Reference data: examples/refdata.toml (ana sells
for AG1 with SELLU1, carlos buys for AG2 with BUYU2).  Prices in cents of €/MWh,
quantities in tenths of MWh, instants in ms UTC.

Checked, for both shipped calendar profiles on an ordinary day and on daylight-saving days
(23 and 25 hours):

* the calendar's commands the server journaled (origin ``calendar``, in order) are exactly
  what ``simulate`` applies over the same span, when every interval between two of its
  instants holds at least one stamp; each is journaled with the first stamp at or after its
  instant (at their instant: docs/auctions.md).  When the clock jumps over several
  instants at once they legitimately differ: the server asks the scheduler at the stamps it
  sees, so what several instants bring comes together (two gate closures in one
  CloseContracts, one round), and a session whose publication was jumped over is never
  scheduled.  The relation checked then is the scheduler's own definition: at each stamp
  the server sequenced, in order, what ``due`` lists, asked again until nothing more is due
  (:func:`at_stamps`); and every contract ``simulate`` closes by the last stamp is closed
  exactly once;
* R45.g: every trade's round is 1 + the number of rounds closed before it, live and in a
  replay of the journal, and is the round of its instant; nothing stamped at or after a
  gate closure, or an auction's reception close (R46.2.7), is journaled before the close,
  except the calendar's records of that same step (same stamp, right before it);
* R45.f, A1§4.1, R46.2.7, R56: no order is accepted in a contract whose gate closure has
  passed, or in a horizon contract paused by an auction;
* a restart on the same data folder, in the middle of the day and at its end, replays the
  journal to the same state hash, and the calendar redoes nothing (no contract created or
  closed twice).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_time_driven import ScriptedStamps as Stamps

from auctions.calendar import OMIE_2018, SIDC_2024, Calendar
from auctions.scheduler import due, simulate
from auctions.session import CloseAuction, ScheduleAuction
from engine.commands import CloseContracts, CreateContract, NewOrder, OpenContracts
from engine.config import PROFILES
from engine.contracts import local_midnight_utc
from engine.events import OrderReport, Reject, RoundClosed, Trade
from engine.model import Side
from engine.states import ContractState
from gateway import snapshot
from gateway.core import Checkpoint, Core
from gateway.journal import Record
from gateway.refdata_file import read_and_validate
from gateway.sequencer import WAKE, Clock
from gateway.server import Config, Server
from risk.commands import LoadReferenceData

REFDATA = Path(__file__).resolve().parents[1] / "examples" / "refdata.toml"
MINUTE = 60_000
TRADE, INT, FIN = ContractState.TRADE, ContractState.INT, ContractState.FIN
ACCEPTED = {"ADDED", "PARTIALLY_FILLED", "FILLED"}

# an ordinary Friday, and the last Sundays of March (23 h) and October (25 h) 2027
ORDINARY, SPRING, AUTUMN = date(2027, 1, 15), date(2027, 3, 28), date(2027, 10, 31)
DAYS = [(SIDC_2024, ORDINARY), (SIDC_2024, SPRING), (SIDC_2024, AUTUMN),
        (OMIE_2018, ORDINARY), (OMIE_2018, SPRING), (OMIE_2018, AUTUMN)]
IDS = [f"{c.name}-{d}" for c, d in DAYS]


class Held:
    """The sync job's commands (released obligations after a round closes) held back while
    a batch is stamped: they are stamped by the same clock, and would take a stamp of the
    batch's; they go through between batches (:meth:`let_through`)."""

    def __init__(self, srv: Server) -> None:
        self.srv, self.open = srv, asyncio.Event()
        self.waiting = self.passing = 0
        self.submit = srv.sequencer.submit
        srv.sync.submit = self.held

    async def held(self, cmd: Any, origin: str) -> list[Any]:
        self.waiting += 1
        try:
            await self.open.wait()
        finally:
            self.waiting -= 1
        self.passing += 1
        try:
            return await self.submit(cmd, origin)
        finally:
            self.passing -= 1

    async def let_through(self) -> None:
        self.open.set()
        sq = self.srv.sequencer
        for _ in range(2000):
            await asyncio.sleep(0)
            if not (self.waiting or self.passing or sq._pending) and sq._idle.is_set():
                break
        else:
            raise AssertionError("the sync job's commands are not through")
        self.open.clear()


async def started(data: Path, t: int, cal: Calendar | None) -> tuple[Server, Stamps]:
    stamps = Stamps(t)
    srv = Server(Config(data_dir=data, port=0, refdata=REFDATA, calendar=cal, fsync=False,
                        snapshot_every_s=0), clock=Clock(now=stamps))
    srv._due_now = lambda now, mono: False  # type: ignore[method-assign]
    await srv.start()
    for _ in range(200):  # the timekeeper's first turn (a WAKE at the start instant)
        if srv.sequencer.timed is not None and srv.sequencer._idle.is_set():
            break
        await asyncio.sleep(0.01)
    assert srv.sequencer.timed is not None and srv.sequencer._idle.is_set()
    srv.held = Held(srv)  # type: ignore[attr-defined]
    return srv, stamps


def fresh_core() -> Core:
    core = Core(PROFILES["harmonised"])
    core.apply(LoadReferenceData(read_and_validate(REFDATA)[0]), 0)
    return core


def reference(cal: Calendar, start: int, end: int) -> list[tuple[int, Any, list[Any]]]:
    """What ``simulate`` applies from ``start`` to ``end``: (instant, command, events)."""
    log: list[tuple[int, Any, list[Any]]] = []
    core = fresh_core()
    simulate(core, cal, start, end, on_step=lambda t, c, e: log.append((t, c, list(e))))
    assert core.failures == 0
    return log


def at_stamps(cal: Calendar, stamps: list[int]) -> list[tuple[int, Any]]:
    """The calendar's commands at the stamps a server saw, by the scheduler's definition:
    at each, in order, what :func:`auctions.scheduler.due` lists, asked again until nothing
    more is due."""
    core, out = fresh_core(), []
    for t in stamps:
        for _ in range(20):
            cmds = due(core, cal, t)
            if not cmds:
                break
            for c in cmds:
                core.apply(c, t)
                out.append((t, c))
        else:
            raise AssertionError(f"the scheduler never settles at {t}")
    return out


class Reference:
    """The reference core stepped to an instant: which contracts trade, are paused, closed."""

    def __init__(self, log: list[tuple[int, Any]]) -> None:
        self.log, self.k, self.core = log, 0, fresh_core()
        self.rounds_closed = 0

    def at(self, t: int) -> Reference:
        while self.k < len(self.log) and self.log[self.k][0] <= t:
            ts, cmd = self.log[self.k]
            self.rounds_closed += sum(
                1 for e in self.core.apply(cmd, ts) if type(e) is RoundClosed)
            self.k += 1
        return self

    def contracts(self, state: ContractState, t: int) -> list[str]:
        """Sorted by gate closure (the last ones closed last)."""
        return [c.id for c in sorted(self.core.engine.contracts.values(),
                                     key=lambda c: (c.close_at, c.id))
                if c.state is state and (state is not TRADE or c.close_at > t)]


# ------------------------------------------------------------------ checks on a journal


def calendar_records(records: list[Record]) -> list[Record]:
    return [r for r in records if r.origin == "calendar"]


# left out of the close ordering: a checkpoint records the server's state and sets nothing
# off (a stop's, a start's); a start journals the reference data file, when it changed,
# before its timekeeper's first turn, so before what was due at the start instant (a
# server started at a session's reception close loads them before the close)
START_RECORDS = (Checkpoint, LoadReferenceData)


def closes_first(records: list[Record]) -> None:
    """R45.g, R46.2.7: nothing stamped at or after a gate closure, or a session's reception
    close, is journaled before the close, except the calendar's records of that same step
    (its stamp, in the run of calendar records right before it)."""
    closes_at: dict[str, int] = {}
    gates: dict[str, int] = {}
    for i, r in enumerate(records):
        cmd = r.command
        if type(cmd) in START_RECORDS:
            continue
        if type(cmd) is ScheduleAuction:
            closes_at[cmd.session] = cmd.closes_at
        elif type(cmd) is CreateContract:
            gates[cmd.contract] = cmd.close_at
        if type(cmd) is CloseContracts:
            assert r.origin == "calendar", r
            limit = min(gates[c] for c in cmd.contracts)
        elif type(cmd) is CloseAuction:
            assert r.origin == "calendar", r
            limit = closes_at[cmd.session]
        else:
            continue
        assert r.ts >= limit, r  # not before its instant either
        j = i - 1
        while j >= 0 and records[j].origin == "calendar" and records[j].ts == r.ts:
            j -= 1
        early = [x for x in records[:j + 1] if x.ts >= limit
                 and type(x.command) not in START_RECORDS]
        assert not early, (r, early[:3])


def replay_checks(records: list[Record]) -> tuple[str, list[Trade]]:
    """Replay ``records`` into a fresh core: every trade's round is 1 + the rounds closed
    before it (R45.g), every order accepted was in a contract trading, before its gate
    closure (R45.f, A1§4.1, R46.2.7); the state hash and the trades are returned."""
    core = Core(PROFILES["harmonised"])
    eng = core.engine
    closed = 0
    trades: list[Trade] = []
    for r in records:
        cmd = r.command
        before = None
        if type(cmd) is NewOrder and cmd.contract in eng.contracts:
            c = eng.contracts[cmd.contract]
            before = (c.state, c.close_at)
        events = core.apply(cmd, r.ts)
        for e in events:
            if type(e) is Trade:
                assert e.round == 1 + closed, (r, e)
                trades.append(e)
        if type(cmd) is NewOrder and any(type(e) is OrderReport and e.action in ACCEPTED
                                         for e in events):
            assert before is not None and before[0] is TRADE and r.ts < before[1], (r, before)
        closed += sum(1 for e in events if type(e) is RoundClosed)
    return core.state_hash(), trades


def once_each(records: list[Record]) -> None:
    """Nothing the calendar did is done twice: each contract created once, closed once."""
    created = Counter(r.command.contract for r in records if type(r.command) is CreateContract)
    closed = Counter(c for r in records if type(r.command) is CloseContracts
                     for c in r.command.contracts)
    assert [c for c, n in created.items() if n > 1] == []
    assert [c for c, n in closed.items() if n > 1] == []


# ------------------------------------------------------------------ the traffic


@dataclass
class Day:
    """One run: the server, its clock, the reference, what the traders were told."""

    srv: Server
    clock: Stamps
    ref: Reference
    data: Path
    cal: Calendar
    trades: list[Trade]
    seen: list[int]
    records: list[Record]  # the stamps the sequencer saw, in order (the first WAKE's included)

    async def restart(self, at: int | None = None, snap: bool = False) -> None:
        """Stop the server and start another on the same data folder, at ``at`` (default:
        the same instant), from a snapshot of the journal if ``snap``: the replay reaches
        the state the server stopped with; at the same instant the calendar journals
        nothing (it has nothing left to do there)."""
        await self.srv.held.let_through()  # type: ignore[attr-defined]
        n = len(list(self.srv.journal.records()))
        await self.srv.stop()
        stopped = self.srv.core.state_hash()  # (the sync job may have released obligations)
        if snap:
            assert snapshot.make(self.data, "harmonised", self.srv.sync.last_synced)
        moved = at is not None and at != self.clock.t
        self.srv, self.clock = await started(self.data, self.clock.t if at is None else at,
                                             self.cal)
        self.seen.append(self.clock.t)  # the new timekeeper's first WAKE
        after = list(self.srv.journal.records())[n:]
        k = next(i for i, r in enumerate(after) if type(r.command) is Checkpoint)
        stop, start = (r.command for r in after[k:k + 2])
        assert (type(stop), stop.reason, type(start), start.reason) == (
            Checkpoint, "stop", Checkpoint, "start"), after[k:k + 2]
        assert start.state_hash == stop.state_hash == stopped
        if len(after) == k + 2:
            assert self.srv.core.state_hash() == stopped
        if snap:
            assert self.srv.snapshot_seq > 0
        if not moved:  # nothing redone
            assert [r for r in after if r.origin not in ("server", "sync")] == []

    async def batch(self, actions: list[tuple[int, str, int]]) -> None:
        """One batch: (stamp, kind, choice) each; kinds: ``trade`` (ana sells in a contract
        trading, carlos buys: two commands at the stamp), ``wake`` (as the timekeeper),
        ``late`` (an order in a contract closed or paused)."""
        cmds: list[tuple[int, str, Any, Callable[[list[Any]], None]]] = []
        for t, kind, choice in actions:
            ref = self.ref.at(t)
            if kind == "trade" and (open_ := ref.contracts(TRADE, t)):
                c = open_[choice % len(open_)]
                rnd = ref.rounds_closed + 1
                cmds.append((t, "ana", NewOrder("ana", "AG1", "SELLU1", c, Side.SELL, 5000, 1),
                             self.accepted))
                cmds.append((t, "carlos", NewOrder("carlos", "AG2", "BUYU2", c, Side.BUY, 5000,
                                                   1), self.traded(t, rnd)))
            elif kind == "late" and (shut := ref.contracts(INT, t) + ref.contracts(FIN, t)[-4:]):
                c = shut[choice % len(shut)]
                cmds.append((t, "ana", NewOrder("ana", "AG1", "SELLU1", c, Side.SELL, 5000, 1),
                             self.refused))
            else:
                cmds.append((t, "calendar", WAKE, lambda evs: None))
        await self.srv.held.let_through()  # type: ignore[attr-defined]
        self.clock.stamps = [t for t, *_ in cmds]
        sq = self.srv.sequencer
        futs = [sq.submit_nowait(cmd, origin) for _, origin, cmd, _ in cmds]
        for (t, _, cmd, check), fut in zip(cmds, futs, strict=True):
            evs = await fut
            self.seen.append(t)
            try:
                check(evs)
            except AssertionError as e:
                raise AssertionError(f"{cmd} at {t}: {e}") from None
        assert self.clock.stamps == []

    @staticmethod
    def accepted(evs: list[Any]) -> None:
        assert [e for e in evs if type(e) is Reject] == []
        assert [e.action for e in evs if type(e) is OrderReport] == ["ADDED"]

    def traded(self, t: int, rnd: int) -> Callable[[list[Any]], None]:
        def check(evs: list[Any]) -> None:
            assert [e for e in evs if type(e) is Reject] == []
            (trade,) = [e for e in evs if type(e) is Trade]
            # R45.g: the round of its instant (one more than the rounds closed by then)
            assert (trade.ts, trade.round) == (t, rnd)
            self.trades.append(trade)
        return check

    @staticmethod
    def refused(evs: list[Any]) -> None:
        assert [e.code for e in evs if type(e) is Reject] == ["CONTRACT_NOT_TRADING"]
        assert [e for e in evs if type(e) is Trade] == []
        assert [e for e in evs if type(e) is OrderReport and e.action in ACCEPTED] == []


KINDS = ["trade", "trade", "trade", "wake", "late"]


def plan(rnd: random.Random, stamps: list[int]) -> list[list[tuple[int, str, int]]]:
    """The stamps cut into batches of one to four, a kind and a choice drawn for each."""
    out: list[list[tuple[int, str, int]]] = []
    k = 0
    while k < len(stamps):
        n = rnd.choice([1, 1, 1, 2, 3, 4])
        out.append([(t, rnd.choice(KINDS), rnd.randrange(1000)) for t in stamps[k:k + n]])
        k += n
    return out


async def run_day(data: Path, cal: Calendar, start: int, end: int,
                  batches: list[list[tuple[int, str, int]]], restart_at: int,
                  log: list[tuple[int, Any]], restart_later: bool = False,
                  snap: bool = False) -> Day:
    """The day's batches, with a restart before batch ``restart_at`` (at the instant of the
    batch's first stamp if ``restart_later``, else at the last one's; from a snapshot if
    ``snap``), checked as the module says; then a restart at the end."""
    srv, clock = await started(data, start, cal)
    day = Day(srv, clock, Reference(log), data, cal, [], [start], [])
    try:
        for k, b in enumerate(batches):
            if k == restart_at:
                await day.restart(b[0][0] if restart_later else None, snap)
            await day.batch(b)
        records = list(day.srv.journal.records())
        closes_first(records)
        once_each(records)
        state, trades = replay_checks(records)
        assert state == day.srv.core.state_hash()
        assert trades == day.trades
        assert day.trades, "no trade at all: the test tests nothing"
        await day.restart()
        day.records = list(day.srv.journal.records())
    finally:
        await day.srv.stop()
    return day


def span(d: date) -> tuple[int, int]:
    """From local midnight of D to 00:30 of D+1 (across the journal's day change)."""
    return local_midnight_utc(d), local_midnight_utc(d + timedelta(days=1)) + 30 * MINUTE


# ------------------------------------------------------------------ every instant visited


def visiting(rnd: random.Random, instants: list[int], end: int, most: int) -> list[int]:
    """Stamps after the start: each interval between two instants (the last one up to
    ``end``) holds one to ``most``, the first at the instant itself half of the time."""
    stamps: list[int] = []
    for k, t in enumerate(instants):
        nxt = instants[k + 1] if k + 1 < len(instants) else end + 1
        more = [rnd.randrange(t, nxt) for _ in range(rnd.randrange(most))]
        if k:  # the start is the first WAKE's
            more.append(t if rnd.random() < 0.5 else rnd.randrange(t, nxt))
        stamps += sorted(more)
    return stamps


def as_simulated(day: Day, log: list[tuple[int, Any, list[Any]]]) -> None:
    """The calendar's records are ``simulate``'s commands in order, each journaled with the
    first stamp the server saw at or after its instant."""
    got = [(r.ts, r.command) for r in calendar_records(day.records)]
    seen = sorted(set(day.seen))
    want = [(min(s for s in seen if s >= t), cmd) for t, cmd, _ in log]
    assert [c for _, c in got] == [c for _, c in want]
    assert got == want


@pytest.mark.parametrize(("cal", "d"), DAYS, ids=IDS)
@settings(max_examples=2, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rnd=st.randoms(use_true_random=False), restart=st.floats(0, 1), snap=st.booleans())
def test_a_day_with_every_instant_reached_journals_what_simulate_applies(
        tmp_path_factory: pytest.TempPathFactory, cal: Calendar, d: date,
        rnd: random.Random, restart: float, snap: bool) -> None:
    start, end = span(d)
    log = reference(cal, start, end)
    instants = sorted({t for t, _, _ in log})
    assert instants[0] == start
    batches = plan(rnd, visiting(rnd, instants, end, 3))
    day = asyncio.run(run_day(tmp_path_factory.mktemp("day"), cal, start, end, batches,
                              int(restart * len(batches)), [(t, c) for t, c, _ in log],
                              snap=snap))
    as_simulated(day, log)


# ------------------------------------------------------------------ instants jumped over


@pytest.mark.parametrize(("cal", "d"), DAYS, ids=IDS)
@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rnd=st.randoms(use_true_random=False), n=st.integers(3, 40), restart=st.floats(0, 1),
       late=st.booleans(), offset=st.integers(0, 24 * 60), snap=st.booleans())
def test_a_day_in_jumps_journals_what_is_due_at_each_stamp(
        tmp_path_factory: pytest.TempPathFactory, cal: Calendar, d: date,
        rnd: random.Random, n: int, restart: float, late: bool, offset: int,
        snap: bool) -> None:
    """The server starts at any minute of the day, the clock jumps over several of the
    calendar's instants at once, the server restarts once (``late``: some time after its
    stop): the records are what the scheduler makes due at the stamps the server saw
    (:func:`at_stamps`), and every contract ``simulate`` closes by the last stamp is
    closed, once."""
    start, end = span(d)
    start = min(start + offset * MINUTE, end)
    stamps = sorted(rnd.randrange(start, end + 1) for _ in range(n))
    ref = at_stamps(cal, [start, *stamps])
    batches = plan(rnd, stamps)
    day = asyncio.run(run_day(tmp_path_factory.mktemp("jump"), cal, start, end, batches,
                              int(restart * len(batches)), ref, late, snap))
    assert [(r.ts, r.command) for r in calendar_records(day.records)] == ref
    last = max(day.seen)
    sim = {c for t, cmd, _ in reference(cal, start, last) if type(cmd) is CloseContracts
           for c in cmd.contracts}
    closed = {c for r in day.records if type(r.command) is CloseContracts
              for c in r.command.contracts}
    assert closed == sim


# ------------------------------------------------------------------ a deadline moved in a batch


async def test_r45_g_a_gate_closure_brought_by_a_command_of_the_same_batch_ends_the_round(
        tmp_path: Path) -> None:
    """R45.g: a round is the trading between two consecutive contract closures; a command
    stamped at or after a gate closure comes after the close (docs/auctions.md: every
    command of a batch is compared with the deadline as the commands before it left it).
    An operator creates and opens a contract whose gate closure is a few seconds off, and a
    trader's order of the same batch is stamped at that gate closure (a busy server, a fast
    simulated clock): the contract is closed first, and the trade counts in the next
    round."""
    gate = local_midnight_utc(ORDINARY) + 18 * 3_600_000  # PH-20270115-20's gate closure
    c, other = "PH-20270115-20", "PH-20270116-10"
    srv, clock = await started(tmp_path / "data", gate - 60_000, None)
    try:
        sq = srv.sequencer
        for cmd in (CreateContract(other, local_midnight_utc(date(2027, 1, 16)) + 8 * 3_600_000),
                    OpenContracts((other,))):
            await sq.submit(cmd, "operator")
        await sq.submit(NewOrder("ana", "AG1", "SELLU1", other, Side.SELL, 5000, 1), "ana")
        before = srv.core.engine.round
        await srv.held.let_through()  # type: ignore[attr-defined]
        clock.stamps = [gate - 5_000, gate - 5_000, gate]
        futs = [sq.submit_nowait(CreateContract(c, gate), "operator"),
                sq.submit_nowait(OpenContracts((c,)), "operator"),
                sq.submit_nowait(NewOrder("carlos", "AG2", "BUYU2", other, Side.BUY, 5000, 1),
                                 "carlos")]
        evs = [await f for f in futs]
        (trade,) = [e for e in evs[2] if type(e) is Trade]
        assert trade.round == before + 1
        assert srv.core.engine.contracts[c].state is FIN
        closes_first(list(srv.journal.records()))
    finally:
        await srv.stop()
