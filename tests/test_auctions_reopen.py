"""Reopening after an auction: overlapping horizons and contracts resumed by hand
(R46.2.7).

Reference data and helpers as in ``test_auctions.py``: ana (AG1) trades SELLU1, a selling
unit of 200.0 MWh; carlos (AG2) BUYU2.  Units: prices in cents of €/MWh, quantities in
tenths of MWh, instants in ms UTC.
"""

from __future__ import annotations

from typing import Any

from test_auctions import C1, C2, C3, SELL, Mkt, of, reports

from auctions.session import (
    CancelAuction,
    ClearAuction,
    CloseAuction,
    ReopenAfterAuction,
    SetReactivation,
)
from engine.commands import ResumeContracts
from engine.events import ContractStateChanged

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


def test_r46_2_7_orders_of_a_contract_resumed_by_hand_are_reactivated() -> None:
    """R46.2.7: «Una vez publicados los resultados de la casación ... se reactivarán las
    ofertas previamente hibernadas en caso de que el agente lo hubiera solicitado».  An
    operator resumed C1 by hand during the auction; its orders stayed hibernated (resuming
    a contract does not reactivate).  At the reopening they come back, and C1 is not resumed
    a second time."""
    m = Mkt()
    m.do(SetReactivation("ana", "AG1", True))
    o1 = m.order("ana", "SELLU1", C1, SELL, 6000, 100)
    o2 = m.order("ana", "SELLU1", C2, SELL, 6000, 100)
    m.schedule(A, (C1, C2))
    m.do(CloseAuction(A))
    m.do(ResumeContracts((C1,)))
    assert (state(m, C1), m.status(o1)) == ("TRADE", "HIBERNATED")
    m.do(ClearAuction(A))
    evs = m.do(ReopenAfterAuction(A))
    assert moved(evs) == {(C2, "TRADE")}
    assert reports(evs) == [(o1, "ACTIVATED"), (o2, "ACTIVATED")]
