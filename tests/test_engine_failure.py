"""A defect that raises inside the matching loop, after trades were made (gateway/core.py
tells the events the command produced before it raised, then ``command_failed``): what
was told stays true.  The trade ids and public sequence numbers it used are never given
again, the aggressor's fills are its own, and the resting order the last trade emptied
leaves the queue (filled) or is refilled (an iceberg) instead of trading 0 with the next
order.  (Found by review: the first fill was told as trade 1, and the next order's fills
were told as trade 1 again, for 0, and trade 2.)  A second review found the paths below
(the guard's accounting of a fill or a reprice raising): the resting order partly filled
gets its report, an emptied level is dropped, an iceberg repriced stays in the book, and an
incoming order that will not rest is reported gone."""

from __future__ import annotations

from typing import Any

import pytest

from engine.commands import (
    CancelOrder,
    CloseContracts,
    CreateContract,
    Deactivate,
    ModifyOrder,
    NewOrder,
    OpenContracts,
    Tick,
)
from engine.events import BookChange, OrderReport, PublicTrade, RoundClosed, Trade
from engine.model import ACTIVE, Side, Validity
from gateway.core import CommandFailed, Core

CID = "PH-20270115-10"
T0 = 1_800_000_000_000


class TargetedGuard:
    """Fails once where told: a resting order's fill, the aggressor's, a reprice."""

    def __init__(self) -> None:
        # "resting", "aggressor", "repriced", "released", "round_closed"
        self.fail: str | None = None
        self.aggressor: int | None = None

    def gate(self, cmd: Any, ts: int) -> None:
        return None

    def admit(self, o: Any, ts: int, old: Any) -> None:
        return None

    def released(self, *a: Any) -> None:
        if self.fail == "released":
            self.fail = None
            raise KeyError("defect")

    def digest(self) -> bytes:
        return b""

    def round_closed(self, round_no: int, ts: int) -> None:
        if self.fail == "round_closed":
            self.fail = None
            raise KeyError("defect")

    def repriced(self, o: Any, old: int) -> None:
        if self.fail == "repriced":
            self.fail = None
            raise KeyError("defect")

    def filled(self, o: Any, qty: int, price: int) -> None:
        which = "aggressor" if o.id == self.aggressor else "resting"
        if self.fail == which:
            self.fail = None
            raise KeyError("defect")


def run(peak: int) -> tuple[list[Any], list[Any], Core]:
    core = Core(risk=False)
    guard = TargetedGuard()
    core.engine.guard = guard  # type: ignore[assignment]
    core.apply(CreateContract(CID, T0 + 86_400_000), T0)
    core.apply(OpenContracts((CID,)), T0)
    before: list[Any] = []
    qty = 20 if peak else 10
    for _ in range(2):
        before += core.apply(NewOrder("u1", "A1", "U1", CID, Side.SELL, 5000, qty,
                                      peak=peak), T0 + 1)
    guard.fail = "resting"  # the resting order's fill accounting raises
    failed = core.apply(NewOrder("u2", "A2", "U2", CID, Side.BUY, 5000, 10,
                                 req_id="boom"), T0 + 2)
    assert type(failed[-1]) is CommandFailed
    after = core.apply(NewOrder("u3", "A3", "U3", CID, Side.BUY, 5000, 10,
                                req_id="next"), T0 + 3)
    return failed, after, core


@pytest.mark.parametrize("peak", [0, 5], ids=["plain", "iceberg"])
def test_what_a_failure_in_the_matching_loop_told_stays_true(peak: int) -> None:
    failed, after, core = run(peak)
    told = failed + after
    trades = [e for e in told if type(e) is Trade]
    ids = [t.trade_id for t in trades]
    assert len(set(ids)) == len(ids), f"two fills under one trade id: {ids}"
    assert all(t.qty > 0 for t in trades), [t.qty for t in trades]
    seqs = [e.seq for e in told if type(e) is PublicTrade]
    assert len(set(seqs)) == len(seqs), f"a public sequence number reused: {seqs}"
    first = [e for e in failed if type(e) is Trade]
    assert [t.qty for t in first] == [10 if not peak else 5]
    resting = first[0].sell_order
    reports = [e for e in failed if type(e) is OrderReport and e.order_id == resting]
    if peak:  # the iceberg is refilled: 5 more visible, 10 hidden
        assert reports and (reports[-1].action, reports[-1].visible) == ("REFILLED", 5)
    else:  # the resting order is filled and gone
        assert reports and reports[-1].action == "FILLED"
        assert resting not in core.engine.orders
    # the aggressor's fills are its own: the failed buyer's order keeps what it bought
    boom = next(e for e in failed if type(e) is Trade).buy_order
    o = core.engine.orders.get(boom)
    filled = 10 if not peak else 5
    assert o is None or o.filled == filled


def test_the_same_failure_replays_to_the_same_events_and_state() -> None:
    a_failed, a_after, a = run(5)
    b_failed, b_after, b = run(5)
    assert (a_failed, a_after) == (b_failed, b_after)
    for core in (a, b):
        core.engine.guard = None  # the stub keeps no state to hash
    assert a.state_hash() == b.state_hash()


def setup() -> tuple[Core, TargetedGuard]:
    core = Core(risk=False)
    g = TargetedGuard()
    core.engine.guard = g  # type: ignore[assignment]
    core.apply(CreateContract(CID, T0 + 86_400_000), T0)
    core.apply(OpenContracts((CID,)), T0)
    return core, g


def no_empty_level(core: Core) -> None:
    b = core.engine.contracts[CID].book
    for side in (Side.BUY, Side.SELL):
        assert all(lvl.orders for lvl in b.levels(side)), f"empty {side} level left"


def test_repriced_raising_leaves_no_ghost_order() -> None:
    # the guard raising on an iceberg's reprice (the price increment)
    core, g = setup()
    ev = core.apply(NewOrder("u1", "A1", "U1", CID, Side.SELL, 5000, 20, peak=5, incr=100),
                    T0 + 1)
    ice = next(e for e in ev if type(e) is OrderReport).order_id
    g.fail = "repriced"
    failed = core.apply(NewOrder("u2", "A2", "U2", CID, Side.BUY, 5000, 5), T0 + 2)
    assert type(failed[-1]) is CommandFailed
    o = core.engine.orders[ice]
    assert o.remaining == 15
    # told: Trade, PublicTrade(visible 0); the rest (15) must be in the book or reported
    assert o.live and o.level is not None and o.seq in o.level.orders, \
        "ghost: ACTIVE, out of the book"
    no_empty_level(core)
    after = core.apply(Deactivate("u1", "A1", (ice,), None, "d"), T0 + 3)
    assert not any(type(e) is CommandFailed for e in after), after


def test_aggressor_fill_raising_drops_the_emptied_level() -> None:
    core, g = setup()
    core.apply(NewOrder("u1", "A1", "U1", CID, Side.SELL, 5000, 10), T0 + 1)
    g.aggressor = core.engine.next_order
    g.fail = "aggressor"
    failed = core.apply(NewOrder("u2", "A2", "U2", CID, Side.BUY, 5000, 10), T0 + 2)
    assert type(failed[-1]) is CommandFailed
    assert core.engine.contracts[CID].book.best(Side.SELL) is None, "phantom best ask"
    no_empty_level(core)


def test_modified_order_is_not_lost_without_a_report() -> None:
    core, g = setup()
    core.apply(NewOrder("u1", "A1", "U1", CID, Side.SELL, 5000, 5), T0 + 1)
    ev = core.apply(NewOrder("u2", "A2", "U2", CID, Side.BUY, 4000, 10), T0 + 1)
    x = next(e for e in ev if type(e) is OrderReport).order_id
    g.aggressor = x
    g.fail = "aggressor"
    failed = core.apply(ModifyOrder("u2", "A2", x, 1, 5000, 10, req_id="m"), T0 + 2)
    assert type(failed[-1]) is CommandFailed
    assert [t.qty for t in failed if type(t) is Trade] == [5]
    told = [e for e in failed if type(e) is OrderReport and e.order_id == x]
    # order x (5 MWh still open) is neither in the engine nor reported gone
    assert x in core.engine.orders or told, "order vanished: no report, not in the engine"
    assert (told[-1].action, told[-1].code) == ("CANCELLED", "INTERNAL_ERROR"), told


def test_partially_filled_resting_order_gets_its_report() -> None:
    core, g = setup()
    ev = core.apply(NewOrder("u1", "A1", "U1", CID, Side.SELL, 5000, 20), T0 + 1)
    s = next(e for e in ev if type(e) is OrderReport).order_id
    g.fail = "resting"
    failed = core.apply(NewOrder("u2", "A2", "U2", CID, Side.BUY, 5000, 10), T0 + 2)
    assert [t.qty for t in failed if type(t) is Trade] == [10]
    assert any(type(e) is OrderReport and e.order_id == s for e in failed), \
        "the seller's fill is told (Trade) but its order report is not"


# A command taking a resting order out of the book (cancel, hibernation, GTD expiry, the
# contract's close) whose guard raises on the release: the order was unlinked first, so it
# was left out of the book but ACTIVE, still holding, its removal told to the book's
# subscribers and never reported to its owner (found by review).  The guard now goes first:
# nothing changed, nothing told, and the same command works once the defect is gone (an
# expiry is not tried again: the owner's cancel then takes the order out).
REMOVALS = {
    "cancel": lambda oid: CancelOrder("u1", "A1", oid, req_id="c"),
    "hibernate": lambda oid: Deactivate("u1", "A1", (oid,), None, "d"),
    "expiry": lambda oid: Tick(),
    "close": lambda oid: CloseContracts((CID,)),
}


@pytest.mark.parametrize("how", sorted(REMOVALS))
def test_a_removal_whose_release_raises_changes_nothing(how: str) -> None:
    core, g = setup()
    ev = core.apply(NewOrder("u1", "A1", "U1", CID, Side.SELL, 5000, 10,
                             validity=Validity.GTD, expiry=T0 + 60_000), T0 + 1)
    oid = next(e for e in ev if type(e) is OrderReport).order_id
    at = T0 + 61_000 if how == "expiry" else T0 + 2
    g.fail = "released"
    failed = core.apply(REMOVALS[how](oid), at)
    assert type(failed[-1]) is CommandFailed
    assert [e for e in failed if type(e) in (BookChange, OrderReport)] == [], failed
    o = core.engine.orders[oid]
    assert o.status is ACTIVE and o.remaining == 10
    assert o.live and o.level is not None and o.seq in o.level.orders, \
        "ghost: ACTIVE, out of the book"
    assert core.engine.contracts[CID].book.best(Side.SELL) is not None
    if how == "expiry":
        # not tried again before every command (that would make every later command fail
        # with it): the order stays as it was, and its owner can take it out
        others = core.apply(NewOrder("u2", "A2", "U2", CID, Side.BUY, 4000, 10), at + 1)
        assert not any(type(e) is CommandFailed for e in others), others
        assert o.live
        again = core.apply(CancelOrder("u1", "A1", oid, req_id="c"), at + 2)
    else:
        again = core.apply(REMOVALS[how](oid), at + 1)
    assert not any(type(e) is CommandFailed for e in again), again
    assert any(type(e) is OrderReport and e.order_id == oid for e in again), again
    assert not o.live and o.status is not ACTIVE


def test_a_round_close_whose_guard_raises_still_starts_the_next_round() -> None:
    """R45.g: the close told RoundClosed for round 1; should the guard raise on it (a
    defect), the trades that follow are round 2's, not settled with round 1 (the sync
    releases round 1's obligations once it is settled)."""
    core, g = setup()
    other = "PH-20270115-11"
    core.apply(CreateContract(other, T0 + 86_400_000), T0)
    core.apply(OpenContracts((other,)), T0)
    g.fail = "round_closed"
    failed = core.apply(CloseContracts((other,)), T0 + 1)
    assert type(failed[-1]) is CommandFailed
    assert [e.round for e in failed if type(e) is RoundClosed] == [1]
    core.apply(NewOrder("u1", "A1", "U1", CID, Side.SELL, 5000, 10), T0 + 2)
    ev = core.apply(NewOrder("u2", "A2", "U2", CID, Side.BUY, 5000, 10), T0 + 3)
    assert [t.round for t in ev if type(t) is Trade] == [2]
