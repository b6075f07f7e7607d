"""The engine's one index of live orders is per agent (``Engine.by_agent``); ``Engine.orders``
is a read-only view of the same orders by id alone (engine.engine.AllOrders)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engine.commands import CancelAll, CancelOrder, HibernateOrders, NewOrder
from engine.model import HIBERNATED, Exec, Side, Validity

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import bench_engine as bench


def _live_in_books(e: bench.Engine) -> dict[int, object]:
    """The reference: every order standing in a price level, found through the books."""
    return {o.id: o for c in e.contracts.values() for side in (Side.BUY, Side.SELL)
            for o in c.book.resting(side)}


def test_the_view_holds_exactly_the_orders_of_the_books_and_each_under_its_agent() -> None:
    e = bench.setup_engine()
    ts = bench.T0 + 1
    for i, c in enumerate(bench.engine_commands(bench.make_flow(30_000, 17))):
        e.apply(c, ts)
        ts += 1
        if i % 5_000 == 4_999:
            want = _live_in_books(e)
            assert dict(e.orders.items()) == want and len(e.orders) == len(want) > 100
            assert sorted(e.orders) == sorted(want)
            assert sorted(o.id for o in e.orders.values()) == sorted(want)
            for oid, o in want.items():
                assert e.orders[oid] is o and e.orders.get(oid) is o and oid in e.orders
                assert e.by_agent[o.agent][oid] is o  # type: ignore[attr-defined]
    gone = e.next_order + 1
    assert gone not in e.orders and e.orders.get(gone) is None
    with pytest.raises(KeyError):
        e.orders[gone]
    for agent in ("A1", "A2"):
        e.apply(CancelAll(agent, agent, "agent"), ts)
    assert e.orders == {} and len(e.orders) == 0 and list(e.orders.values()) == []


def test_another_agents_order_id_is_unknown_to_a_trader_r46_2_12() -> None:
    e = bench.setup_engine()
    c = bench.CONTRACTS[0]
    [*_, rep] = e.apply(NewOrder("A1", "A1", "UA1", c, Side.BUY, 4900, 10), bench.T0 + 1)
    out = e.apply(CancelOrder("A2", "A2", rep.order_id), bench.T0 + 2)
    assert [type(ev).__name__ for ev in out] == ["Reject"] and out[0].code == "ORDER_UNKNOWN"
    assert e.orders[rep.order_id].remaining == 10


def test_gtd_expiry_and_hibernated_orders_go_through_the_agents_index_a1_4_2() -> None:
    e = bench.setup_engine()
    c = bench.CONTRACTS[0]
    t = bench.T0 + 1
    gtd = e.apply(NewOrder("A1", "A1", "UA1", c, Side.BUY, 4900, 10,
                           validity=Validity.GTD, expiry=t + 50), t)[-1]
    keep = e.apply(NewOrder("A2", "A2", "UA2", c, Side.SELL, 5100, 10, exec=Exec.NON), t)[-1]
    e.apply(HibernateOrders(agent="A2", reason="test"), t + 1)
    assert e.orders[keep.order_id].status is HIBERNATED
    out = e.apply(CancelOrder("A1", "A1", 999_999), t + 60)  # expiry runs first
    assert [(type(ev).__name__, getattr(ev, "action", None)) for ev in out] == [
        ("BookChange", "REMOVE"), ("OrderReport", "EXPIRED"), ("Reject", None)]
    assert gtd.order_id not in e.orders and e.by_agent["A1"] == {}
    assert set(e.orders) == {keep.order_id}


def test_the_view_shows_its_orders_as_a_dict_would() -> None:
    """A failing comparison of ``engine.orders`` prints what it holds, not an address."""
    e = bench.setup_engine()
    assert repr(e.orders) == "AllOrders({})"
    c = bench.CONTRACTS[0]
    rep = e.apply(NewOrder("A1", "A1", "UA1", c, Side.BUY, 4900, 10), bench.T0 + 1)[-1]
    o = e.orders[rep.order_id]
    assert repr(e.orders) == f"AllOrders({{{rep.order_id}: {o!r}}})"
