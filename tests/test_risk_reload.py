"""Reference data reloaded while trading (``LoadReferenceData`` mid-session, docs/refdata.md):
what the guard already knows about units, owners and agents must follow the new document.

Fixtures and units as in ``risk_helpers`` (std_doc): SELLU a selling unit of SELLER, BUYU a
buying unit of BUYER, SHARED a buying unit of REP (60 %) and OWN2 (40 %), REP responsible;
maxima 500.0 MWh.  Prices in cents of €/MWh, quantities in tenths of MWh, money in cents.
"""

from __future__ import annotations

import json
from typing import Any

from risk_helpers import (
    BUY,
    CID,
    QH_OF_CID,
    SELL,
    Core,
    notices,
    reject_codes,
    reports,
    set_agent,
    set_unit,
    std_doc,
    trades,
    unit,
)

from engine.commands import ModifyOrder
from risk.commands import LoadReferenceData, ReinstateAgent, SetProgram


def reload(core: Core, doc: dict[str, Any]) -> list[Any]:
    return core.send(LoadReferenceData(json.dumps(doc), by="marta"))


# ============================================================== R46.2.4, R46.2.5: unit bounds


def test_r46_2_4_a_lowered_unit_maximum_applies_to_periods_already_touched() -> None:
    """R46.2.4: a sell of a selling unit must stay within «la energía máxima de la unidad en
    la base de datos del operador de mercado» — the maximum in force, not the one the unit
    had when its hour was first traded.  SELLU sells 10.0 MWh in CID and 1.0 MWh in CID's
    first quarter-hour (4.0 MW there: the hour has particular quarters); its maximum is
    then lowered from 500.0 to 100.0: in that quarter 10.0 + 4.0 + 87.0 = 101.0 MW is
    refused, 100.0 MW fits."""
    doc = std_doc()
    core = Core(doc, CID, QH_OF_CID[0])
    assert not reject_codes(core.new("sam", "SELLU", SELL, 5000, 100))
    assert not reject_codes(core.new("sam", "SELLU", SELL, 5000, 10, contract=QH_OF_CID[0]))
    reload(core, set_unit(doc, "SELLU", max_energy="100.0"))
    assert reject_codes(core.new("sam", "SELLU", SELL, 5000, 870)) == ["ENERGY_MAX"]
    assert not reject_codes(core.new("sam", "SELLU", SELL, 5000, 860))


def test_r46_2_4_a_lowered_maximum_of_an_hour_with_no_particular_quarter() -> None:
    """The same for an hour traded only hourly (the guard's fast path): 10.0 MWh sold, the
    maximum lowered to 100.0 MWh: 91.0 MWh more is refused, 90.0 MWh fits; raised back
    to 500.0 MWh, 400.0 MWh more fits."""
    doc = std_doc()
    core = Core(doc)
    assert not reject_codes(core.new("sam", "SELLU", SELL, 5000, 100))
    reload(core, set_unit(doc, "SELLU", max_energy="100.0"))
    assert reject_codes(core.new("sam", "SELLU", SELL, 5000, 910)) == ["ENERGY_MAX"]
    assert not reject_codes(core.new("sam", "SELLU", SELL, 5000, 900))
    reload(core, doc)
    assert not reject_codes(core.new("sam", "SELLU", SELL, 5000, 4000))


def test_r46_2_4_a_raised_unit_minimum_applies_to_periods_already_touched() -> None:
    """R46.2.4 for a sell of a buying unit: program − resting sells − order ≥ the unit's
    minimum energy.  BUYU's program in CID is 20.0 MWh and it sells 5.0 MWh back; its
    minimum is then raised from 0 to 15.0 MWh: another 0.1 MWh is refused."""
    doc = std_doc()
    core = Core(doc)
    core.send(SetProgram(by="sofia", unit="BUYU", period=CID, energy=200))
    assert not reject_codes(core.new("bea", "BUYU", SELL, 5000, 50))
    reload(core, set_unit(doc, "BUYU", min_energy="15.0"))
    assert reject_codes(core.new("bea", "BUYU", SELL, 5000, 1)) == ["ENERGY_MIN"]
    assert not reject_codes(core.new("bea", "BUYU", BUY, 5000, 1))


# ============================================================== R46.2.6.2: suspension


def test_r46_2_6_2_a_suspension_by_reference_data_cancels_the_orders_it_is_liable_for(
        ) -> None:
    """R46.2.6.2: a suspended agent's orders are cancelled by the operator — also when the
    suspension arrives in a reference-data reload (``status = "suspended"``), not only by
    an officer's ``suspend_agent``.  The reload suspends BUYER and OWN2: BUYER's order and
    REP's order on SHARED (40 % OWN2's) are cancelled, with a notice per agent; SELLER's
    order stays.  A sell then trades with nothing; a second identical reload cancels
    nothing more."""
    doc = std_doc()
    core = Core(doc)
    assert not reject_codes(core.new("bea", "BUYU", BUY, 5000, 100))
    mine = core.order_id()
    assert not reject_codes(core.new("rui", "SHARED", BUY, 5000, 100))
    shared = core.order_id()
    assert not reject_codes(core.new("sam", "SELLU", SELL, 9000, 10))
    other = core.order_id()
    new = set_agent(set_agent(doc, "BUYER", status="suspended"), "OWN2", status="suspended")
    ev = reload(core, new)
    assert sorted(n.agent for n in notices(ev, "AGENT_SUSPENDED")) == ["BUYER", "OWN2"]
    cancelled = reports(ev, "CANCELLED")
    assert sorted(r.order_id for r in cancelled) == sorted([mine, shared])
    assert {r.code for r in cancelled} == {"OPERATOR_CANCEL"}
    assert other in core.engine.orders
    assert core.debtor("BUYER") == core.debtor("OWN2") == core.debtor("REP") == 0
    assert not trades(core.new("sam", "SELLU", SELL, 5000, 100))
    assert not reports(reload(core, new), "CANCELLED")


def test_r46_2_6_2_a_reload_that_still_says_suspended_does_not_undo_a_reinstatement(
        ) -> None:
    """R46.2.6.2: a suspension cancels the agent's orders; the officer's ``reinstate_agent``
    lifts it.  A later reload of a document that still marks BUYER suspended, as the one
    loaded before it did, brings no new suspension: BUYER stays reinstated and its new
    order stays.  (Before, every such reload suspended BUYER again and cancelled its
    orders: an unchanged line of master data overruled the officer's later decision.)
    A document that changes BUYER from active to suspended still suspends it."""
    doc = std_doc()
    core = Core(doc)
    suspended = set_agent(doc, "BUYER", status="suspended")
    reload(core, suspended)
    assert "BUYER" in core.guard.suspended
    core.send(ReinstateAgent(by="rita", agent="BUYER"))
    assert not reject_codes(core.new("bea", "BUYU", BUY, 5000, 100))
    mine = core.order_id()
    ev = reload(core, suspended)
    assert not notices(ev, "AGENT_SUSPENDED") and not reports(ev, "CANCELLED")
    assert "BUYER" not in core.guard.suspended and mine in core.engine.orders
    reload(core, doc)  # the master data say active
    ev = reload(core, suspended)  # and now suspended: a suspension
    assert [n.agent for n in notices(ev, "AGENT_SUSPENDED")] == ["BUYER"]
    assert [r.order_id for r in reports(ev, "CANCELLED")] == [mine]


# ============================================================== R46.2.6.1: modification


def modify(core: Core, user: str, agent: str, oid: int, price: int, qty: int) -> list[Any]:
    o = core.engine.orders[oid]
    return core.send(ModifyOrder(user=user, agent=agent, order_id=oid, revision=o.revision,
                                 price=price, qty=qty))


def test_r46_2_6_1_a_modification_after_the_owners_grew_is_checked_by_agent() -> None:
    """R46.2.6.1, R46.2.2: a modification passes the operative-limit check of every
    owner, counting what the order it replaces holds as available to the agent it is held
    on.  REPU was REP's alone when REP bought 10.0 MWh at 50.00 (500.00 € held on REP);
    a reload makes it REP 60 % / OWN2 40 %.  Halving the order is accepted and charged by
    the new shares (150.00 € on REP, 100.00 € on OWN2).  (Before, the replaced order's
    hold was looked up by the new owner's position in its old, one-owner list: an
    IndexError, which the core swallowed — no answer to the trader.)"""
    doc = std_doc()
    doc["units"].append(unit("REPU", "buy", "REP"))
    core = Core(doc)
    assert not reject_codes(core.new("rui", "REPU", BUY, 5000, 100))
    oid = core.order_id()
    reload(core, set_unit(doc, "REPU", owners=[{"agent": "REP", "share": "60"},
                                                {"agent": "OWN2", "share": "40"}]))
    ev = modify(core, "rui", "REP", oid, 5000, 50)
    assert [r.action for r in reports(ev)] == ["MODIFIED"] and not reject_codes(ev)
    assert (core.debtor("REP"), core.debtor("OWN2")) == (15000, 10000)


def test_r46_2_6_1_a_modification_after_the_owners_were_reordered_credits_each_its_own(
        ) -> None:
    """R46.2.2: each owner must cover its share.  SHARED (REP 60 %, OWN2 40 %) buys 10.0
    MWh at 50.00: 300.00 € held on REP, 200.00 € on OWN2, whose 200.00 € of guarantees
    are then used up.  A reload lists the same owners in the other order.  Raising the
    order to 15.0 MWh needs 300.00 € of OWN2, which has only the 200.00 € its own share of
    the order holds: refused, naming OWN2.  (Before, OWN2 was credited with REP's 300.00
    €, the owner at its position in the old list, and the limit went negative.)"""
    doc = std_doc(own2_guarantees="200.00")
    core = Core(doc)
    assert not reject_codes(core.new("rui", "SHARED", BUY, 5000, 100))
    oid = core.order_id()
    assert core.limit("OWN2") == 0
    reload(core, set_unit(doc, "SHARED", owners=[{"agent": "OWN2", "share": "40"},
                                                  {"agent": "REP", "share": "60"}]))
    ev = modify(core, "rui", "REP", oid, 5000, 150)
    assert reject_codes(ev) == ["OPERATIVE_LIMIT"] and "OWN2" in ev[-1].reason
    assert core.limit("OWN2") == 0 and core.debtor("OWN2") == 20000
    ev = modify(core, "rui", "REP", oid, 5000, 100)  # the same value fits exactly
    assert not reject_codes(ev)
