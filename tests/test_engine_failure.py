"""A defect that raises inside the matching loop, after trades were made (gateway/core.py
tells the events the command produced before it raised, then ``command_failed``): what
was told stays true.  The trade ids and public sequence numbers it used are never given
again, the aggressor's fills are its own, and the resting order the last trade emptied
leaves the queue (filled) or is refilled (an iceberg) instead of trading 0 with the next
order.  (Found by review: the first fill was told as trade 1, and the next order's fills
were told as trade 1 again, for 0, and trade 2.)"""

from __future__ import annotations

from typing import Any

import pytest

from engine.commands import CreateContract, NewOrder, OpenContracts
from engine.events import OrderReport, PublicTrade, Trade
from engine.model import Side
from gateway.core import CommandFailed, Core

CID = "PH-20270115-10"
T0 = 1_800_000_000_000


class Guard:
    """A risk guard that admits everything; its fill accounting fails once (a defect)."""

    def __init__(self) -> None:
        self.fail = False

    def gate(self, cmd: Any, ts: int) -> None:
        return None

    def admit(self, o: Any, ts: int, old: Any) -> None:
        return None

    def released(self, *a: Any) -> None:
        pass

    def repriced(self, *a: Any) -> None:
        pass

    def filled(self, o: Any, qty: int, price: int) -> None:
        if self.fail:
            self.fail = False
            raise KeyError("defect")


def run(peak: int) -> tuple[list[Any], list[Any], Core]:
    core = Core(risk=False)
    guard = Guard()
    core.engine.guard = guard  # type: ignore[assignment]
    core.apply(CreateContract(CID, T0 + 86_400_000), T0)
    core.apply(OpenContracts((CID,)), T0)
    before: list[Any] = []
    qty = 20 if peak else 10
    for _ in range(2):
        before += core.apply(NewOrder("u1", "A1", "U1", CID, Side.SELL, 5000, qty,
                                      peak=peak), T0 + 1)
    guard.fail = True
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
