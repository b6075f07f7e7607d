"""Time-driven commands are sequenced at their instant (gateway/sequencer.py, the
server's timekeeper): a command stamped at or after an instant at which the calendar has
something due is journaled and applied after what is due, whenever the timekeeper wakes.

R45.g: a round is the trading between two consecutive contract closures, so a trade made at
or after a contract's gate closure belongs to the next round.  R46.2.7, R56: at the close of
an auction session's order reception, continuous trading stops for the contracts in its
horizon.  Before, the calendar's command reached the sequencer some milliseconds (up to a
second) after its instant, and a trader's command stamped in between was applied first: its
trade was counted in the round that was closing, or made in a contract that should have been
paused.

The server here is real (journal, sequencer, timekeeper), on a clock the test sets; the
timekeeper is kept from waking the sequencer after its first turn (``_due_now``), so that
only the traders' commands can set off the calendar's, as when they come faster than it
wakes.  Reference data: examples/refdata.toml (ana sells for AG1 with SELLU1, carlos buys for
AG2 with BUYU2).  Prices in cents of €/MWh, quantities in tenths of MWh, instants in ms UTC.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auctions.calendar import SIDC_2024
from auctions.session import CloseAuction
from engine.commands import CloseContracts, CreateContract, NewOrder, OpenContracts, Tick
from engine.config import PROFILES
from engine.contracts import HOUR_MS, ContractSpec, local_midnight_utc
from engine.events import Reject, Trade
from engine.model import Side, Validity
from engine.states import ContractState
from gateway.core import CheckpointCheck, Core
from gateway.journal import Record
from gateway.sequencer import WAKE, Clock, replay_record
from gateway.server import Config, Server

REFDATA = Path(__file__).resolve().parents[1] / "examples" / "refdata.toml"
C1, C2 = "PH-20270115-20", "PH-20270115-21"  # 19:00-20:00 and 20:00-21:00 local
BUY, SELL = Side.BUY, Side.SELL


def gate(cid: str) -> int:
    return ContractSpec.parse(cid).start - HOUR_MS


class FrozenClock:
    """The instant the test says (ms UTC); it only moves when told."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


async def started(tmp_path: Path, t: int, calendar: Any, *, wake: bool
                  ) -> tuple[Server, FrozenClock]:
    clock = FrozenClock(t)
    srv = Server(Config(data_dir=tmp_path / "data", port=0, refdata=REFDATA, calendar=calendar,
                        fsync=False, snapshot_every_s=0), clock=Clock(now=clock))
    if not wake:  # the timekeeper's first turn only (it tells the sequencer its deadline)
        srv._due_now = lambda now, mono: False  # type: ignore[method-assign]
    await srv.start()
    for _ in range(100):  # the timekeeper's first turn
        if srv.sequencer.timed is not None and srv.sequencer._idle.is_set():
            break
        await asyncio.sleep(0.01)
    return srv, clock


@pytest.fixture
async def stopping() -> AsyncIterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for s in servers:
        await s.stop()


def journal(srv: Server) -> list[Record]:
    return list(srv.journal.records())


def replayed_hash(srv: Server, records: list[Record]) -> str:
    """The state hash a replay of ``records`` into a fresh core reaches."""
    core = Core(PROFILES[srv.config.profile])
    check = CheckpointCheck()
    for rec in records:
        replay_record(core, check, rec, (), None)
    return core.state_hash()


def closes_first(records: list[Record]) -> None:
    """Every close is the calendar's, and nothing stamped at or after a gate closure was
    journaled before the close it brings."""
    for i, r in enumerate(records):
        if type(r.command) is CloseContracts:
            assert r.origin == "calendar"
            first = min(gate(c) for c in r.command.contracts)
            assert not [x for x in records[:i] if x.ts >= first]


async def market(srv: Server, *contracts: str) -> None:
    """Create the contracts (their gate closure one hour before delivery) and open them."""
    for c in contracts:
        await srv.sequencer.submit(CreateContract(c, gate(c)), "operator")
    await srv.sequencer.submit(OpenContracts(contracts), "operator")


def the(records: list[Record], kind: type) -> Record:
    (rec,) = [r for r in records if type(r.command) is kind]
    return rec


async def test_r45_g_a_trade_stamped_at_a_gate_closure_belongs_to_the_next_round(
        tmp_path: Path, stopping: list[Server]) -> None:
    srv, clock = await started(tmp_path, gate(C1) - 60_000, None, wake=False)
    stopping.append(srv)
    sq, eng = srv.sequencer, srv.core.engine
    await market(srv, C1, C2)
    assert sq.deadline == gate(C1)  # known to the sequencer once the contracts exist
    sell = await sq.submit(NewOrder("ana", "AG1", "SELLU1", C2, SELL, 5000, 100), "trader")
    assert not [e for e in sell if type(e) is Reject]
    round_before = eng.round

    clock.t = gate(C1)  # C1's gate closure; the timekeeper has not woken
    evs = await sq.submit(NewOrder("carlos", "AG2", "BUYU2", C2, BUY, 5000, 100), "trader")

    (trade,) = [e for e in evs if type(e) is Trade]
    records = journal(srv)
    close, buy = the(records, CloseContracts), records[-1]
    assert close.command == CloseContracts((C1,)) and close.origin == "calendar"
    # journaled right before the order, at the same instant, and applied before it
    assert (close.seq, close.ts) == (buy.seq - 1, buy.ts)
    assert buy.ts == gate(C1) and type(buy.command) is NewOrder
    assert eng.contracts[C1].state is ContractState.FIN
    assert trade.round == round_before + 1 == eng.round  # R45.g: the next round
    # nothing is left due for the timekeeper; the sequencer asked again after the close
    # (what it did might have made more due) before the order, and waits for C2's gate
    # closure
    assert srv.due(clock.t) == []
    assert sq.deadline == gate(C2)
    await sq.submit(NewOrder("carlos", "AG2", "BUYU2", C2, BUY, 4000, 10), "trader")
    assert sq.deadline == gate(C2)
    records = journal(srv)
    assert [type(r.command) for r in records[-2:]] == [NewOrder, NewOrder]
    # a replay of the journal gives the same state (the close is an ordinary record)
    assert replayed_hash(srv, records) == srv.core.state_hash()


async def test_a_command_stamped_before_the_gate_closure_stays_in_the_round(
        tmp_path: Path, stopping: list[Server]) -> None:
    """The other side of the instant: one millisecond before C1's gate closure the trade is
    in the current round and nothing is closed."""
    srv, clock = await started(tmp_path, gate(C1) - 60_000, None, wake=False)
    stopping.append(srv)
    sq, eng = srv.sequencer, srv.core.engine
    await market(srv, C1)
    await sq.submit(NewOrder("ana", "AG1", "SELLU1", C1, SELL, 5000, 100), "trader")
    round_before = eng.round
    clock.t = gate(C1) - 1
    evs = await sq.submit(NewOrder("carlos", "AG2", "BUYU2", C1, BUY, 5000, 100), "trader")
    (trade,) = [e for e in evs if type(e) is Trade]
    assert trade.round == round_before == eng.round
    assert eng.contracts[C1].state is ContractState.TRADE
    assert not [r for r in journal(srv) if type(r.command) is CloseContracts]


async def test_with_no_command_coming_the_timekeeper_closes_at_the_gate(
        tmp_path: Path, stopping: list[Server]) -> None:
    """No trader sends anything: the timekeeper's WAKE sets the close off."""
    srv, clock = await started(tmp_path, gate(C1) - 60_000, None, wake=True)
    stopping.append(srv)
    eng = srv.core.engine
    await market(srv, C1)
    clock.t = gate(C1) + 5
    for _ in range(300):
        srv.kick()
        if eng.contracts[C1].state is ContractState.FIN:
            break
        await asyncio.sleep(0.01)
    assert eng.contracts[C1].state is ContractState.FIN
    close = the(journal(srv), CloseContracts)
    assert close.origin == "calendar" and close.ts == gate(C1) + 5
    assert not [r for r in journal(srv) if r.command is WAKE]  # a WAKE journals nothing


async def test_r46_2_7_an_order_stamped_at_the_auction_close_finds_its_contract_paused(
        tmp_path: Path, stopping: list[Server]) -> None:
    """SIDC 2024's IDA3 on 2027-01-15: reception 09:00-10:00 local, horizon 12:00-24:00.
    An order stamped at 10:00:00.000 in a contract of the horizon comes after the session's
    close, which paused the contract (R46.2.7, R56): refused, and the resting order it would
    have matched is hibernated, not traded."""
    day_start = local_midnight_utc(ContractSpec.parse(C1).day)
    closes_at = day_start + 10 * HOUR_MS
    srv, clock = await started(tmp_path, closes_at - 60_000, SIDC_2024, wake=False)
    stopping.append(srv)
    sq, eng = srv.sequencer, srv.core.engine
    # the timekeeper's first turn created and opened the contracts and scheduled the
    # session; the session opens (its opens_at has passed) before the first command
    sell = await sq.submit(NewOrder("ana", "AG1", "SELLU1", C1, SELL, 5000, 100), "trader")
    assert not [e for e in sell if type(e) is Reject]
    (session,) = [s for s in srv.core.auctions.sessions.values()
                  if s.id.startswith("IDA3") and s.closes_at == closes_at]
    assert session.state == "OPEN" and C1 in session.contracts
    assert eng.contracts[C1].state is ContractState.TRADE

    clock.t = closes_at
    evs = await sq.submit(NewOrder("carlos", "AG2", "BUYU2", C1, BUY, 5000, 100), "trader")

    assert not [e for e in evs if type(e) is Trade]
    (rej,) = [e for e in evs if type(e) is Reject]
    assert rej.code == "CONTRACT_NOT_TRADING"
    assert eng.contracts[C1].state is ContractState.INT
    records = journal(srv)
    close, buy = the(records, CloseAuction), records[-1]
    assert close.origin == "calendar" and close.seq < buy.seq and close.ts == buy.ts


# ---------------------------------------------------------------- property: rounds by instant

GATED = ("PH-20270115-18", "PH-20270115-19", "PH-20270115-20", "PH-20270115-21")
OPEN = "PH-20270116-10"  # trades all along: its gate closure is the next day
EDGES = sorted({g + d for g in map(gate, GATED) for d in (-1, 0, 1)})


def expected_rounds(instants: list[int]) -> list[int]:
    """The reference: a round ends at each gate closure (R45.g); every gate closure reached
    between two commands ends one round, however many contracts close together."""
    closed: set[str] = set()
    rnd, out = 1, []
    for t in instants:
        now = {c for c in GATED if c not in closed and gate(c) <= t}
        if now:
            rnd += 1
            closed |= now
        out.append(rnd)
    return out


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(EDGES),
                          st.integers(EDGES[0] - 60_000, EDGES[-1] + 60_000)),
                min_size=1, max_size=10).map(sorted))
def test_r45_g_every_trade_counts_in_the_round_of_its_instant(
        tmp_path_factory: pytest.TempPathFactory, instants: list[int]) -> None:
    """Trades at random instants around four gate closures, on a contract that stays open,
    the timekeeper asleep: each trade's round is the one its instant falls in, a contract is
    closed exactly when its gate closure has been reached, and each close is journaled
    before every command stamped at or after it."""

    async def run() -> None:
        srv, clock = await started(tmp_path_factory.mktemp("p"), EDGES[0] - 120_000, None,
                                   wake=False)
        try:
            sq, eng = srv.sequencer, srv.core.engine
            await market(srv, *GATED, OPEN)
            rounds = []
            for t in instants:
                clock.t = t
                await sq.submit(NewOrder("ana", "AG1", "SELLU1", OPEN, SELL, 5000, 1),
                                "trader")
                evs = await sq.submit(NewOrder("carlos", "AG2", "BUYU2", OPEN, BUY, 5000, 1),
                                      "trader")
                (trade,) = [e for e in evs if type(e) is Trade]
                assert trade.ts == t
                rounds.append(trade.round)
            assert rounds == expected_rounds(instants)
            for c in GATED:
                closed = eng.contracts[c].state is ContractState.FIN
                assert closed == (gate(c) <= instants[-1]), c
            closes_first(journal(srv))
        finally:
            await srv.stop()

    asyncio.run(run())


# ---------------------------------------------------------------- several instants in one batch


class ScriptedStamps(FrozenClock):
    """As :class:`FrozenClock`, but the sequencer's next stamps are the ones the test lists
    (a batch's commands are stamped one after the other while the clock runs: on a fast
    simulated clock, ``--speed``, they may lie seconds apart)."""

    def __init__(self, t: int) -> None:
        super().__init__(t)
        self.stamps: list[int] = []

    def __call__(self) -> int:
        task = asyncio.current_task()
        if self.stamps and task is not None and task.get_name() == "sequencer":
            self.t = self.stamps.pop(0)
        return self.t


async def test_r45_g_two_gate_closures_within_one_batch_end_two_rounds(
        tmp_path: Path, stopping: list[Server]) -> None:
    """R45.g: a round is the trading between two consecutive contract closures.  Two
    commands of one batch stamped at C1's and then at C2's gate closure: the second one's
    trade comes after C2's close too, so it counts two rounds after the one before."""
    t0 = gate(C1) - 60_000
    stamps = ScriptedStamps(t0)
    srv = Server(Config(data_dir=tmp_path / "data", port=0, refdata=REFDATA, calendar=None,
                        fsync=False, snapshot_every_s=0), clock=Clock(now=stamps))
    srv._due_now = lambda now, mono: False  # type: ignore[method-assign]
    await srv.start()
    stopping.append(srv)
    sq, eng = srv.sequencer, srv.core.engine
    for _ in range(100):
        if sq.timed is not None and sq._idle.is_set():
            break
        await asyncio.sleep(0.01)
    await market(srv, C1, C2, OPEN)
    await sq.submit(NewOrder("ana", "AG1", "SELLU1", OPEN, SELL, 5000, 2), "trader")
    round_before = eng.round

    stamps.stamps = [gate(C1), gate(C2)]  # one batch: the clock passes both gate closures
    first = sq.submit_nowait(NewOrder("carlos", "AG2", "BUYU2", OPEN, BUY, 5000, 1), "trader")
    second = sq.submit_nowait(NewOrder("carlos", "AG2", "BUYU2", OPEN, BUY, 5000, 1), "trader")
    (t1,) = [e for e in await first if type(e) is Trade]
    (t2,) = [e for e in await second if type(e) is Trade]

    assert (t1.ts, t2.ts) == (gate(C1), gate(C2))
    assert t1.round == round_before + 1
    assert t2.round == round_before + 2 == eng.round  # C2's close ended t1's round
    records = journal(srv)
    closes_first(records)
    assert replayed_hash(srv, records) == srv.core.state_hash()


async def test_r46_2_7_a_command_after_a_wake_finds_what_the_steps_it_set_off_brought(
        tmp_path: Path, stopping: list[Server]) -> None:
    """R46.2.7, R56: at the close of an auction's reception, continuous trading stops for
    its horizon.  The calendar's steps of one instant may come one after another (a session
    is scheduled, then, its reception over, opened and closed at once, pausing its
    horizon): a command sequenced after a WAKE at 10:01, in the same batch, finds all of
    them done — IDA3's reception closed at 10:00, so C1 (in its horizon) is paused and
    nothing trades there."""
    day_start = local_midnight_utc(ContractSpec.parse(C1).day)
    closes_at = day_start + 10 * HOUR_MS
    srv, clock = await started(tmp_path, closes_at - HOUR_MS * 30, None, wake=False)
    stopping.append(srv)
    sq, eng = srv.sequencer, srv.core.engine
    # the calendar the server is started with, as after a restart: nothing of it exists yet
    srv.config.calendar = SIDC_2024
    clock.t = closes_at + 60_000
    wake = sq.submit_nowait(WAKE, "calendar")
    sell = sq.submit_nowait(NewOrder("ana", "AG1", "SELLU1", C1, SELL, 5000, 100), "trader")
    buy = sq.submit_nowait(NewOrder("carlos", "AG2", "BUYU2", C1, BUY, 5000, 100), "trader")
    assert await wake == []
    evs = await sell + await buy

    assert not [e for e in evs if type(e) is Trade]
    assert eng.contracts[C1].state is ContractState.INT
    records = journal(srv)
    close = the(records, CloseAuction)
    assert close.command.session.startswith("IDA3")
    assert all(close.seq < r.seq for r in records if type(r.command) is NewOrder)
    # a restart replays the journal to the same state (its stop checkpoint is checked)
    state = srv.core.state_hash()
    stopping.remove(srv)
    await srv.stop()
    again = Server(Config(data_dir=tmp_path / "data", port=0, refdata=REFDATA,
                          calendar=SIDC_2024, fsync=False, snapshot_every_s=0),
                   clock=Clock(now=clock))
    again._due_now = lambda now, mono: False  # type: ignore[method-assign]
    await again.start()
    stopping.append(again)
    assert again.core.state_hash() == state


async def test_a_gtd_expiry_is_the_engines_own_and_no_time_step_of_the_sequencers(
        tmp_path: Path, stopping: list[Server]) -> None:
    """A1§4.2: a GTD order is valid until its instant.  The engine expires it at the start
    of every command stamped at or after that instant, so the sequencer need not stop at
    each GTD expiry to ask the calendar (a Tick journaled and a commit of its own each
    time, on the traders' path): with the calendar's next instant far off, the traders'
    commands past the expiries are not preceded by any time step, and the orders expire
    all the same."""
    srv, clock = await started(tmp_path, gate(C1) - 3_600_000, None, wake=False)
    stopping.append(srv)
    sq, eng = srv.sequencer, srv.core.engine
    await market(srv, OPEN)
    t0 = clock.t
    expiries = [t0 + 10_000 * k for k in range(1, 6)]
    for k, exp in enumerate(expiries):
        evs = await sq.submit(NewOrder("ana", "AG1", "SELLU1", OPEN, SELL, 6000 + k, 1,
                                       validity=Validity.GTD, expiry=exp), "trader")
        assert not [e for e in evs if type(e) is Reject]
    asked: list[int] = []
    due = srv.due
    srv.due = lambda ts: asked.append(ts) or due(ts)  # type: ignore[method-assign]
    # a command the calendar's deadlines are worked out again after, then the traders'
    await sq.submit(CreateContract(C2, gate(C2)), "operator")
    for exp in expiries:
        clock.t = exp
        await sq.submit(NewOrder("carlos", "AG2", "BUYU2", OPEN, BUY, 1000, 1), "trader")
    assert asked == []
    assert not [r for r in journal(srv) if type(r.command) is Tick]
    assert not [o for o in eng.by_agent.get("AG1", {}).values() if o.contract == OPEN]
    assert sq.deadline == gate(C2)


async def test_a_journal_failure_at_a_time_step_leaves_the_command_behind_it_unprocessed(
        tmp_path: Path, stopping: list[Server]) -> None:
    """Durability (DESIGN rule 7): the calendar's close is journaled in a commit before the
    trader's order stamped at the gate closure.  If that write fails, the order was never
    handed to the journal: it is told *not processed* (not in doubt), and the close's own
    callback is told too; nothing is applied."""
    from gateway.sequencer import SequencerStopped

    srv, clock = await started(tmp_path, gate(C1) - 60_000, None, wake=False)
    stopping.append(srv)
    sq, eng = srv.sequencer, srv.core.engine
    await market(srv, C1)
    told: list[Any] = []
    due = srv.due

    def watched(ts: int) -> list[Any]:
        return [(cmd, lambda ev, exc, d=done: (told.append(exc), d(ev, exc)))
                for cmd, done in due(ts)]

    srv.due = watched  # type: ignore[method-assign]
    append = srv.journal.append

    def failing(records: Any, **kw: Any) -> bool:
        records = list(records)
        if any(type(r.command) is CloseContracts for r in records):
            raise OSError(28, "No space left on device")
        return append(records, **kw)

    srv.journal.append = failing  # type: ignore[method-assign]
    clock.t = gate(C1)
    with pytest.raises(SequencerStopped) as info:
        await sq.submit(NewOrder("carlos", "AG2", "BUYU2", C1, BUY, 5000, 100), "trader")
    assert info.value.in_doubt is False
    assert len(told) == 1 and isinstance(told[0], OSError)
    assert eng.contracts[C1].state is ContractState.TRADE


async def test_an_instant_passed_during_the_timekeepers_turn_is_not_skipped(
        tmp_path: Path, stopping: list[Server]) -> None:
    """The timekeeper works out when to wake next from the instant it checked, not from the
    clock after its turn: a gate closure passed while it checked (the turn takes some time,
    seconds of a fast simulated clock's) is due at once, not after a whole pause of a second
    (found running ``ronda demo --speed 600``: a close ten simulated minutes late)."""
    srv, clock = await started(tmp_path, gate(C1) - 60_000, None, wake=True)
    stopping.append(srv)
    eng = srv.core.engine
    await market(srv, C1)
    clock.t = gate(C1) - 5
    real = srv._due_now
    passed = []

    def due_now(now: int, mono: float) -> bool:
        found = real(now, mono)
        if not passed:  # the clock moves past the gate closure during this check
            passed.append(now)
            clock.t = gate(C1) + 5
        return found

    srv._due_now = due_now  # type: ignore[method-assign]
    srv.kick()
    loop = asyncio.get_running_loop()
    start = loop.time()
    while eng.contracts[C1].state is not ContractState.FIN and loop.time() - start < 2.0:
        await asyncio.sleep(0.005)
    assert passed == [gate(C1) - 5]
    assert eng.contracts[C1].state is ContractState.FIN
    assert loop.time() - start < 0.5  # not the timekeeper's pause of a second
