"""Reopening after an auction: overlapping horizons and contracts resumed by hand
(R46.2.7), and VALID baskets reactivated whole or rejected whole (A1§5.2).

Reference data and helpers as in ``test_auctions.py``: ana (AG1) trades SELLU1, a selling
unit of 200.0 MWh; carlos (AG2) BUYU2.  Units: prices in cents of €/MWh, quantities in
tenths of MWh, instants in ms UTC.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_auctions import BUY, C1, C2, C3, SELL, Mkt, of, reports

from auctions.session import (
    CancelAuction,
    ClearAuction,
    CloseAuction,
    ReopenAfterAuction,
    SetReactivation,
)
from engine.commands import EnterBasket, NewOrder, ResumeContracts
from engine.events import Ack, ContractStateChanged, OrderReport, Trade
from engine.model import BasketType
from gateway.codec import decode, encode
from gateway.core import Core

A, B = "MI5-20270115", "MI6-20270115"  # A's horizon C1, C2; B's C2, C3


def state(m: Mkt, c: str) -> str:
    return m.core.engine.contracts[c].state.value


def moved(evs: list[Any]) -> set[tuple[str, str]]:
    return {(e.contract, e.state) for e in of(evs, ContractStateChanged)}


def overlapping() -> tuple[Mkt, dict[str, int]]:
    """ana asks for reactivation and rests one order in each contract; A (C1, C2) closes,
    then B (C2, C3) closes while A still holds C2."""
    m = Mkt()
    m.do(SetReactivation("ana", "AG1", True))
    ids = {c: m.order("ana", "SELLU1", c, SELL, 6000, 100) for c in (C1, C2, C3)}
    m.schedule(A, (C1, C2))
    m.schedule(B, (C2, C3))
    m.do(CloseAuction(A))
    assert {state(m, c) for c in (C1, C2)} == {"INT"}
    evs = m.do(CloseAuction(B))
    # B pauses C3 (trading) and takes over C2, with the order A hibernated there
    assert moved(evs) == {(C3, "INT")}
    b = m.core.auctions.sessions[B]
    assert b.paused == (C2, C3)
    assert set(b.hibernated) == {ids[C2], ids[C3]}
    return m, ids


def test_r46_2_7_overlapping_horizons_the_later_session_reopens_the_shared_contract() -> None:
    """R46.2.7: continuous trading is suspended for the horizon's contracts «durante el
    tiempo necesario para realizar la casación y obtener resultados».  A contract in two
    sessions' horizons reopens, with its orders reactivated, only when the last of them has
    published its results."""
    m, ids = overlapping()
    m.do(ClearAuction(A))
    evs = m.do(ReopenAfterAuction(A))
    assert moved(evs) == {(C1, "TRADE")}  # not C2: B has not cleared yet
    assert reports(evs) == [(ids[C1], "ACTIVATED")]
    assert (state(m, C2), m.status(ids[C2])) == ("INT", "HIBERNATED")
    m.do(ClearAuction(B))
    evs = m.do(ReopenAfterAuction(B))
    assert moved(evs) == {(C2, "TRADE"), (C3, "TRADE")}
    assert reports(evs) == [(ids[C2], "ACTIVATED"), (ids[C3], "ACTIVATED")]


def test_r46_2_7_overlapping_horizons_reopened_in_the_other_order() -> None:
    """The later session publishes first: it leaves the shared contract to the earlier one,
    and hands over the orders it hibernated there.  Here an operator had resumed C2 by hand
    while A held it and ana rested a new order in it, which B's close hibernated."""
    m = Mkt()
    m.do(SetReactivation("ana", "AG1", True))
    old = m.order("ana", "SELLU1", C2, SELL, 6000, 100)
    m.schedule(A, (C1, C2))
    m.schedule(B, (C2, C3))
    m.do(CloseAuction(A))
    m.do(ResumeContracts((C2,)))
    new = m.order("ana", "SELLU1", C2, SELL, 6100, 100)
    evs = m.do(CloseAuction(B))
    assert moved(evs) == {(C2, "INT"), (C3, "INT")}
    assert set(m.core.auctions.sessions[B].hibernated) == {old, new}
    m.do(ClearAuction(B))
    evs = m.do(ReopenAfterAuction(B))
    assert moved(evs) == {(C3, "TRADE")}  # A still holds C2
    assert reports(evs) == []
    assert (state(m, C2), m.status(old), m.status(new)) == ("INT", "HIBERNATED", "HIBERNATED")
    assert {old, new} <= set(m.core.auctions.sessions[A].hibernated)
    m.do(ClearAuction(A))
    evs = m.do(ReopenAfterAuction(A))
    assert moved(evs) == {(C1, "TRADE"), (C2, "TRADE")}
    assert reports(evs) == [(old, "ACTIVATED"), (new, "ACTIVATED")]


def test_r46_2_7_a_cancelled_session_leaves_a_shared_contract_to_the_other() -> None:
    m, ids = overlapping()
    evs = m.do(CancelAuction(B, "system failure", "marta"))
    assert moved(evs) == {(C3, "TRADE")}
    assert (state(m, C2), m.status(ids[C2])) == ("INT", "HIBERNATED")
    m.do(ClearAuction(A))
    evs = m.do(ReopenAfterAuction(A))
    assert moved(evs) == {(C1, "TRADE"), (C2, "TRADE")}
    assert reports(evs) == [(ids[C1], "ACTIVATED"), (ids[C2], "ACTIVATED")]


def closed_with_c1_resumed_by_hand() -> tuple[Mkt, int, int]:
    """ana asks for reactivation and rests one order in C1 and one in C2; session A (C1, C2)
    closes, and an operator resumes C1 by hand during the auction."""
    m = Mkt()
    m.do(SetReactivation("ana", "AG1", True))
    o1 = m.order("ana", "SELLU1", C1, SELL, 6000, 100)
    o2 = m.order("ana", "SELLU1", C2, SELL, 6000, 100)
    m.schedule(A, (C1, C2))
    m.do(CloseAuction(A))
    m.do(ResumeContracts((C1,)))
    return m, o1, o2


def test_r46_2_7_orders_of_a_contract_resumed_by_hand_are_reactivated() -> None:
    """R46.2.7: «Una vez publicados los resultados de la casación ... se reactivarán las
    ofertas previamente hibernadas en caso de que el agente lo hubiera solicitado».  An
    operator resumed C1 by hand during the auction; its orders stayed hibernated (resuming
    a contract does not reactivate).  At the reopening they come back, and C1 is not resumed
    a second time."""
    m, o1, o2 = closed_with_c1_resumed_by_hand()
    assert (state(m, C1), m.status(o1)) == ("TRADE", "HIBERNATED")
    m.do(ClearAuction(A))
    evs = m.do(ReopenAfterAuction(A))
    assert moved(evs) == {(C2, "TRADE")}
    assert reports(evs) == [(o1, "ACTIVATED"), (o2, "ACTIVATED")]


# ====================================================================== A1§5.2


def basket_then_auction(kind: BasketType, first_fails: bool) -> tuple[Mkt, list[int], Any]:
    """ana enters a basket selling 10.0 MWh on C1 and 150.0 MWh on C2 (in that order, or
    the other); the auction on C1 and C2 sells 100.0 MWh of SELLU1 on C2, so at the
    reopening the C2 order would put SELLU1 at 250.0 > 200.0 MW there."""
    m = Mkt()
    m.do(SetReactivation("ana", "AG1", True))
    members = [NewOrder("ana", "AG1", "SELLU1", C1, SELL, 8000, 100),
               NewOrder("ana", "AG1", "SELLU1", C2, SELL, 8000, 1500)]
    if first_fails:
        members.reverse()
    evs = m.do(EnterBasket("ana", "AG1", kind, tuple(members)))
    ids = list(of(evs, Ack)[0].order_ids)
    other = m.order("carlos", "BUYU2", C1, BUY, 1000, 50)  # arrives after the basket
    m.schedule(A, (C1, C2))
    m.bid("ana", "SELLU1", C2, "SELL", (4000, 1000))
    m.bid("carlos", "BUYU2", C2, "BUY", (5000, 1000))
    m.do(SetReactivation("carlos", "AG2", True))
    m.do(CloseAuction(A))
    m.do(ClearAuction(A))
    assert m.prog("SELLU1", C2) == {1000}
    evs = m.do(ReopenAfterAuction(A))
    assert (other, "ACTIVATED") in reports(evs)
    return m, ids, evs


@pytest.mark.parametrize("first_fails", [False, True])
def test_a1_5_2_a_valid_basket_is_reactivated_whole_or_rejected_whole(
        first_fails: bool) -> None:
    """A1§5.2: the orders of a VALID basket «deberán ser todas aceptadas como válidas. Si
    alguna ... es declarada no válida, ... serán todas rechazadas»; R46.2.7: a reactivated
    order is validated as a new one.  The C2 member fails its re-validation: the C1 member,
    which alone would pass, is rejected with it, and holds nothing afterwards."""
    m, ids, evs = basket_then_auction(BasketType.VALID, first_fails)
    c1_order, c2_order = (ids[1], ids[0]) if first_fails else (ids[0], ids[1])
    got = {e.order_id: (e.action, e.status, e.code) for e in of(evs, OrderReport)
           if e.order_id in ids}
    assert got == {c2_order: ("REJECTED", "INACTIVE", "ENERGY_MAX"),
                   c1_order: ("REJECTED", "INACTIVE", "BASKET_MEMBER_INVALID")}
    # in the basket's order
    assert [e.order_id for e in of(evs, OrderReport) if e.order_id in ids] == ids
    (why,) = [e.reason for e in of(evs, OrderReport) if e.order_id == c1_order]
    assert "A1§5.2" in why and str(c2_order) in why
    assert c1_order not in m.core.engine.orders
    assert m.core.engine.contracts[C1].book.resting(SELL) == []
    # the trial admission of the C1 member was given back: SELLU1 can sell its whole
    # 200.0 MWh on C1
    evs = m.do(NewOrder("ana", "AG1", "SELLU1", C1, SELL, 9000, 2000))
    assert [e.action for e in of(evs, OrderReport)] == ["ADDED"]


def test_a1_5_1_a_none_basket_is_reactivated_order_by_order() -> None:
    """A1§5.1: the orders of a NONE basket are «sin relación entre ellas»: the C1 order comes
    back though the C2 order is rejected.  (With A1§5.2's VALID basket in the same place,
    both are rejected.)"""
    _m, ids, evs = basket_then_auction(BasketType.NONE, False)
    got = {e.order_id: e.action for e in of(evs, OrderReport) if e.order_id in ids}
    assert got == {ids[0]: "ACTIVATED", ids[1]: "REJECTED"}
    _m, ids, evs = basket_then_auction(BasketType.VALID, False)
    got = {e.order_id: e.action for e in of(evs, OrderReport) if e.order_id in ids}
    assert got == {ids[0]: "REJECTED", ids[1]: "REJECTED"}


def test_a1_5_2_a_valid_basket_that_passes_comes_back_whole_and_replays() -> None:
    """Both members pass (the auction leaves room): both come back, in the basket's order,
    and trade; the same journal replayed gives the same events and state."""
    m = Mkt()
    m.do(SetReactivation("ana", "AG1", True))
    evs = m.do(EnterBasket("ana", "AG1", BasketType.VALID, (
        NewOrder("ana", "AG1", "SELLU1", C1, SELL, 8000, 100),
        NewOrder("ana", "AG1", "SELLU1", C2, SELL, 8000, 900),
        NewOrder("ana", "AG1", "SELLU1", C3, SELL, 8000, 100))))
    ids = list(of(evs, Ack)[0].order_ids)
    m.schedule(A, (C1, C2))
    m.bid("ana", "SELLU1", C2, "SELL", (4000, 1000))
    m.bid("carlos", "BUYU2", C2, "BUY", (5000, 1000))
    for cmd in (CloseAuction, ClearAuction):
        m.do(cmd(A))
    evs = m.do(ReopenAfterAuction(A))
    # C3's member was never paused: only the two hibernated ones are reactivated
    assert reports(evs) == [(ids[0], "ACTIVATED"), (ids[1], "ACTIVATED")]
    evs = m.do(NewOrder("carlos", "AG2", "BUYU2", C2, BUY, 8000, 900))
    assert [t.sell_order for t in of(evs, Trade)] == [ids[1]]
    fresh = Core()
    events: list[Any] = []
    for cmd, t in m.log:
        events += fresh.apply(decode(json.loads(json.dumps(encode(cmd)))), t)
    assert events == m.events
    assert fresh.state_hash() == m.core.state_hash()
    # the basket's condition is the engine's, on its orders (A1§5), and replays with them
    assert {(o.basket, o.basket_type) for o in fresh.engine.orders.values()
            if o.id in ids} == {(1, BasketType.VALID)}


def test_r48_b_a_contract_interrupted_since_for_another_reason_stays_the_operators() -> None:
    """R48.b: the operator may interrupt trading.  During the auction an operator resumed C1
    by hand and interrupted it again for an incident: the reopening resumes C2 (still paused
    by the auction) but not C1, and C1's order stays hibernated instead of being reactivated
    in a contract that does not trade (which would reject it).  When the operator resumes
    C1 and reactivates, it comes back."""
    from engine.commands import InterruptContracts, ReactivateOrders

    m, o1, o2 = closed_with_c1_resumed_by_hand()
    m.do(InterruptContracts((C1,), "incident on the platform"))
    m.do(ClearAuction(A))
    evs = m.do(ReopenAfterAuction(A))
    assert moved(evs) == {(C2, "TRADE")}
    assert reports(evs) == [(o2, "ACTIVATED")]
    c1 = m.core.engine.contracts[C1]
    assert (c1.state.value, c1.reason) == ("INT", "incident on the platform")
    assert m.status(o1) == "HIBERNATED"
    m.do(ResumeContracts((C1,)))
    evs = m.do(ReactivateOrders((C1,)))
    assert reports(evs) == [(o1, "ACTIVATED")]
