"""One test per rule of the matching engine, with worked numbers.

Units: prices in cents of €/MWh (5000 = 50.00 €/MWh), quantities in tenths of MWh
(200 = 20.0 MWh).  Traders (tests/helpers.py): alice and alan are users of agent ACME; bob
(BETA), carol (CORP) and dave (DELTA) are other agents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from helpers import (
    BUY,
    CID,
    CID2,
    CID3,
    FOK,
    GTD,
    IOC,
    SECOND,
    SELL,
    T0,
    TRADERS,
    Market,
    NullGuard,
    acked_ids,
    activate,
    basket,
    book_changes,
    cancel,
    cancel_all,
    counterparties,
    deactivate,
    fills,
    gate_closure,
    modify,
    of,
    order,
    reject_codes,
    rejects,
    reports,
    trades,
    utc_ms,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.commands import (
    CancelAgentOrders,
    CloseContracts,
    CreateContract,
    HibernateOrders,
    InterruptContracts,
    OpenContracts,
    ReactivateOrders,
    ResumeContracts,
    Tick,
)
from engine.config import PROFILES
from engine.engine import Engine
from engine.errors import Code, EngineMisuse
from engine.events import BookChange, ContractStateChanged, PublicTrade, RoundClosed
from engine.model import BasketType, Order, Validity


class RefusingGuard(NullGuard):
    """A pre-trade guard (engine/guard.py) that refuses the order ids it is told to."""

    def __init__(self) -> None:
        self.refuse: set[int] = set()
        self.admitted: list[tuple[int, int]] = []

    def admit(self, order: Order, ts: int, replaces: Order | None) -> tuple[str, str] | None:
        if order.id in self.refuse:
            return Code.OPERATIVE_LIMIT, f"order {order.id}: operative limit exceeded"
        self.admitted.append((order.id, order.remaining))
        return None


def live_snapshot(m: Market) -> dict[int, tuple[Any, ...]]:
    """Every order the engine still holds, with what matters for the book."""
    return {
        oid: (o.status.value, o.price, o.remaining, o.visible, o.revision, o.live, o.seq)
        for oid, o in m.engine.orders.items()
    }


# =============================================================================== R47.1


def test_R47_1_price_time_priority_and_resting_price() -> None:
    """R47.1 (digest §3): «Matching: continuous, price-time priority; an incoming order that
    crosses trades at the resting orders' prices».  Best price first; at equal price, the
    earlier order first; every trade at the resting order's price."""
    m = Market()
    s1 = m.sell("bob", 5020, 100)  # 10.0 MWh at 50.20
    s2 = m.sell("carol", 5010, 100)  # 10.0 MWh at 50.10, earlier
    s3 = m.sell("dave", 5010, 100)  # 10.0 MWh at 50.10, later
    b = m.buy("alice", 5030, 250)  # 25.0 MWh up to 50.30
    ts = trades(m.last)
    assert fills(ts) == [(5010, 100), (5010, 100), (5020, 50)]
    assert counterparties(ts, BUY) == [s2, s3, s1]
    assert all(t.buy_order == b and t.aggressor == "BUY" for t in ts)
    assert m.report(b).action == "FILLED" and m.report(b).filled == 250
    assert m.public_levels(SELL) == [(5020, 50)]
    assert m.public_levels(BUY) == []


def test_R47_1_crossing_order_trades_at_resting_price() -> None:
    """R47.1: a crossing sell trades at the resting buy's price (51.00), not its own limit
    (49.00); the trade is communicated to both agents («el resultado de la misma será
    comunicado al propio agente, quedando actualizada la lista de ofertas locales»)."""
    m = Market()
    b = m.buy("bob", 5100, 100)
    s = m.sell("alice", 4900, 60)
    (t,) = trades(m.last)
    assert (t.price, t.qty, t.aggressor) == (5100, 60, "SELL")
    assert (t.buy_order, t.buy_agent, t.buy_unit) == (b, "BETA", "BETA01")
    assert (t.sell_order, t.sell_agent, t.sell_unit) == (s, "ACME", "ACME01")
    (pt,) = of(m.last, PublicTrade)
    assert (pt.trade_id, pt.price, pt.qty) == (t.trade_id, 5100, 60)
    assert m.report(b).action == "PARTIALLY_FILLED" and m.report(b).visible == 40
    assert m.report(s).action == "FILLED"
    assert m.public_levels(BUY) == [(5100, 40)]


def test_R47_1_orders_that_do_not_cross_both_rest() -> None:
    """R47.1: only crossing orders match; a buy at 50.00 and a sell at 50.01 both rest."""
    m = Market()
    m.buy("alice", 5000, 10)
    m.sell("bob", 5001, 10)
    assert trades(m.log) == []
    assert m.public_levels(BUY) == [(5000, 10)]
    assert m.public_levels(SELL) == [(5001, 10)]


# =============================================================================== A1§3.1-3.3


def test_A1_3_1_NON_rests_unmatched_remainder_at_its_own_price() -> None:
    """A1§3.1: «Admitirán la posibilidad de casación inmediata o parcial. La cantidad no
    casada permanecerá en el Libro de Ofertas al precio incluido en la oferta»."""
    m = Market()
    m.sell("bob", 5000, 40)
    b = m.buy("alice", 5010, 100)
    assert fills(m.last) == [(5000, 40)]
    r = m.report(b)
    assert (r.action, r.status, r.price, r.visible, r.hidden, r.filled) == (
        "ADDED", "ACTIVE", 5010, 60, 0, 40)
    assert m.public_levels(BUY) == [(5010, 60)]
    assert m.resting_ids(BUY) == [b]


def test_A1_3_2_IoC_remainder_cancelled_with_IOC_REMAINDER() -> None:
    """A1§3.2: «Casarán contra las ofertas más competitivas ... El precio de la transacción
    será el de la(s) oferta(s) con las que case (preexistentes). Admitirán la posibilidad de
    casación parcial. La cantidad no casada será eliminada y no permanecerá en el Libro»."""
    m = Market()
    m.sell("bob", 5000, 40)
    m.sell("carol", 5005, 30)
    ev = m.send(order("alice", BUY, 5010, 100, exec=IOC))
    assert fills(ev) == [(5000, 40), (5005, 30)]
    (oid,) = m.created
    r = m.report(oid)
    assert (r.action, r.status, r.code, r.filled, r.visible, r.hidden) == (
        "CANCELLED", "INACTIVE", Code.IOC_REMAINDER, 70, 0, 0)
    assert "3.0" in (r.reason or "")  # 3.0 MWh removed
    assert not any(b.side == "BUY" for b in book_changes(ev))
    assert m.public_book() == {}
    assert oid not in m.engine.orders


def test_A1_3_2_IoC_that_matches_nothing_is_removed_whole() -> None:
    """A1§3.2: «Se ejecutarán en el momento de introducción, nunca permanecerán»."""
    m = Market()
    m.sell("bob", 5100, 40)
    ev = m.send(order("alice", BUY, 5000, 30, exec=IOC))
    (oid,) = m.created
    assert trades(ev) == []
    assert (m.report(oid).action, m.report(oid).code, m.report(oid).filled) == (
        "CANCELLED", Code.IOC_REMAINDER, 0)
    assert book_changes(ev) == []


def test_A1_3_2_IoC_can_be_neither_modified_nor_cancelled() -> None:
    """A1§3.2: «nunca permanecerán, por lo que, además, no hay posibilidad de ser modificadas
    o canceladas por el agente»."""
    m = Market()
    m.sell("bob", 5000, 40)
    m.send(order("alice", BUY, 5010, 100, exec=IOC))
    (oid,) = m.created
    assert reject_codes(m.send(cancel("alice", oid))) == [Code.ORDER_UNKNOWN]
    assert reject_codes(m.send(modify("alice", oid, 1, 5010, 60))) == [Code.ORDER_UNKNOWN]


def test_A1_3_3_FoK_fills_all_or_nothing() -> None:
    """A1§3.3: «Casarán con las ofertas más competitivas ... en caso de que los precios sean
    aceptables. No admitirán la posibilidad de casación parcial, si la oferta no es casada en
    su totalidad, la oferta será eliminada de forma completa»."""
    m = Market()
    m.sell("bob", 5000, 40)
    m.sell("carol", 5005, 30)
    before = m.public_book()
    # 8.0 MWh wanted, 7.0 available: nothing happens at all
    ev = m.send(order("alice", BUY, 5010, 80, exec=FOK))
    (k,) = m.created
    assert trades(ev) == [] and of(ev, PublicTrade) == [] and book_changes(ev) == []
    r = m.report(k)
    assert (r.action, r.code, r.filled) == ("CANCELLED", Code.FOK_NOT_FILLABLE, 0)
    assert m.public_book() == before
    # 7.0 MWh wanted but only 4.0 at an acceptable price (50.00): killed
    ev = m.send(order("alice", BUY, 5000, 70, exec=FOK))
    assert trades(ev) == [] and m.report(m.created[0]).code == Code.FOK_NOT_FILLABLE
    # 7.0 MWh at up to 50.10: filled in full at the resting prices
    ev = m.send(order("alice", BUY, 5010, 70, exec=FOK))
    assert fills(ev) == [(5000, 40), (5005, 30)]
    assert m.report(m.created[0]).action == "FILLED"
    assert m.public_book() == {}


def test_A1_3_3_FoK_fillable_only_by_counting_a_resting_icebergs_hidden_quantity() -> None:
    """A1§3.3 with A1§3.4: the book shows 2.0 MWh of a 10.0 MWh sell iceberg; a FoK for
    9.0 MWh can be filled in full (one trade per instantiation), one for 10.1 MWh cannot."""
    m = Market()
    ice = m.sell("bob", 5000, 100, peak=20)
    assert m.public_levels(SELL) == [(5000, 20)]
    ev = m.send(order("alice", BUY, 5000, 101, exec=FOK))
    assert trades(ev) == [] and m.report(m.created[0]).code == Code.FOK_NOT_FILLABLE
    ev = m.send(order("alice", BUY, 5000, 90, exec=FOK))
    assert fills(ev) == [(5000, 20)] * 4 + [(5000, 10)]
    assert set(counterparties(trades(ev), BUY)) == {ice}
    assert m.report(m.created[0]).action == "FILLED"
    r = m.report(ice)
    assert (r.visible, r.hidden, r.filled) == (10, 0, 90)
    assert m.public_levels(SELL) == [(5000, 10)]


def test_A1_3_3_FoK_counts_price_incremented_instantiations_at_their_own_prices() -> None:
    """A1§3.3 «en caso de que los precios sean aceptables» with A1§3.4.1: the instantiations
    of a sell iceberg with increment +0.10 are 2.0@50.00, 2.0@50.10, 2.0@50.20, so a FoK buy
    of 5.0 MWh up to 50.10 is not fillable and one of 4.0 MWh is."""
    m = Market()
    m.sell("bob", 5000, 60, peak=20, incr=10)
    ev = m.send(order("alice", BUY, 5010, 50, exec=FOK))
    assert trades(ev) == [] and m.report(m.created[0]).code == Code.FOK_NOT_FILLABLE
    ev = m.send(order("alice", BUY, 5010, 40, exec=FOK))
    assert fills(ev) == [(5000, 20), (5010, 20)]
    assert m.public_levels(SELL) == [(5020, 20)]


# =============================================================================== A1§3.4


def test_A1_3_4_only_peak_visible_to_others_owner_sees_total() -> None:
    """A1§3.4: «En el Libro de Ofertas únicamente se mostrarán al resto de agentes de mercado
    una parte reducida de la cantidad total ... El agente que introdujo la oferta podrá ver,
    adicionalmente, la cantidad total de dicha oferta»."""
    m = Market()
    ice = m.sell("bob", 5000, 100, peak=20)
    (add,) = book_changes(m.last)
    assert (add.action, add.side, add.price, add.qty) == ("ADD", "SELL", 5000, 20)
    r = m.report(ice)
    assert (r.action, r.visible, r.hidden, r.peak) == ("ADDED", 20, 80, 20)
    # 3.0 MWh bought: the owner sees 1.0 visible + 6.0 hidden, the others only 1.0
    m.buy("alice", 5000, 30)
    assert fills(m.last) == [(5000, 20), (5000, 10)]
    r = m.report(ice)
    assert (r.visible, r.hidden, r.filled) == (10, 60, 30)
    assert m.public_levels(SELL) == [(5000, 10)]
    assert max(b.qty for b in book_changes(m.log)) == 20


def test_A1_3_4_refill_gets_new_creation_time() -> None:
    """A1§3.4: «Cuando la parte reducida visible de la oferta sea casada en su totalidad, se
    generará de forma automática una nueva oferta en el Libro de Ofertas» - a new order,
    so it goes behind carol's order at the same price that arrived after the iceberg."""
    m = Market()
    ice = m.sell("bob", 5000, 60, peak=20)
    later = m.sell("carol", 5000, 20)
    assert m.resting_ids(SELL) == [ice, later]
    m.buy("alice", 5000, 20)
    assert counterparties(trades(m.last), BUY) == [ice]
    assert m.report(ice).action == "REFILLED"
    assert m.resting_ids(SELL) == [later, ice]
    m.buy("alice", 5000, 20)
    assert counterparties(trades(m.last), BUY) == [later]
    m.buy("alice", 5000, 20)
    assert counterparties(trades(m.last), BUY) == [ice]
    # each refill is a new public entry: it cannot be linked to the first peak
    adds = [b.entry for b in book_changes(m.log) if b.action == "ADD"]
    assert len(adds) == len(set(adds)) == 4  # peak, carol, refill, refill


def test_A1_3_4_aggressive_iceberg_uses_total_one_trade_per_order_rests_one_peak() -> None:
    """A1§3.4: «Cuando se introduzca una oferta Iceberg con un precio competitivo, la
    cantidad a considerar será la cantidad total ..., registrando una transacción por cada
    oferta contraria con la que case. ... la cantidad visible que aparecerá en el Libro de
    Ofertas, será como máximo la parte reducida ..., aunque la cantidad casada no haya sido
    múltiplo de dicha parte reducida»."""
    m = Market()
    a = m.sell("bob", 4990, 13)
    b = m.sell("carol", 5000, 14)
    c = m.sell("dave", 5000, 5)
    ice = m.buy("alice", 5000, 100, peak=20)  # 10.0 MWh, peak 2.0
    ts = trades(m.last)
    assert fills(ts) == [(4990, 13), (5000, 14), (5000, 5)]  # 3.2 MWh: not a multiple of 2.0
    assert counterparties(ts, BUY) == [a, b, c]
    r = m.report(ice)
    assert (r.action, r.visible, r.hidden, r.filled) == ("ADDED", 20, 48, 32)
    assert m.public_levels(BUY) == [(5000, 20)]
    # an aggressive iceberg left with less than a peak shows what is left
    m2 = Market()
    m2.sell("bob", 5000, 45)
    ice2 = m2.buy("alice", 5000, 50, peak=20)
    assert fills(m2.last) == [(5000, 45)]
    assert (m2.report(ice2).visible, m2.report(ice2).hidden) == (5, 0)
    assert m2.public_levels(BUY) == [(5000, 5)]


def test_A1_3_4_resting_iceberg_trades_once_per_instantiation() -> None:
    """A1§3.4: «llegara una oferta contraria ... con una cantidad superior a la cantidad
    visible de la oferta Iceberg, se llevarán a cabo transacciones diferentes por cada
    instanciación ..., cada una con su tiempo de creación. La cantidad visible ... será la
    cantidad que haya quedado sin casar tras la última instanciación»."""
    m = Market()
    ice = m.sell("bob", 5000, 100, peak=20)
    m.buy("alice", 5010, 55)
    ts = trades(m.last)
    assert fills(ts) == [(5000, 20), (5000, 20), (5000, 15)]
    assert counterparties(ts, BUY) == [ice] * 3
    assert len(of(m.last, PublicTrade)) == 3
    r = m.report(ice)
    assert (r.visible, r.hidden, r.filled) == (5, 40, 55)
    assert m.public_levels(SELL) == [(5000, 5)]
    # each consumed instantiation: one REFILLED report with the fill so far and the new peak
    refills = reports(m.last, order_id=ice)
    assert [x.action for x in refills] == ["REFILLED", "REFILLED", "PARTIALLY_FILLED"]
    assert [(x.visible, x.hidden, x.filled) for x in refills] == [
        (20, 60, 20), (20, 40, 40), (5, 40, 55)]


def test_A1_3_4_larger_order_meets_refills_in_time_priority() -> None:
    """A1§3.4: each instantiation has «su tiempo de creación»: an 8.0 MWh buy against a
    6.0 MWh sell iceberg (peak 2.0) and carol's 2.0 MWh entered after it trades iceberg,
    carol, iceberg, iceberg."""
    m = Market()
    ice = m.sell("bob", 5000, 60, peak=20)
    c = m.sell("carol", 5000, 20)
    m.buy("alice", 5000, 80)
    assert counterparties(trades(m.last), BUY) == [ice, c, ice, ice]
    assert fills(m.last) == [(5000, 20)] * 4
    assert m.report(ice).action == m.report(c).action == "FILLED"


def test_A1_3_4_peak_above_total_rejected() -> None:
    """A1§3.4: «se comprobará que la parte reducida que se quiere mostrar de la oferta sea
    menor o igual que la cantidad total del producto ofertada»."""
    m = Market()
    ev = m.send(order("bob", SELL, 5000, 20, peak=21))
    (rj,) = rejects(ev)
    assert rj.code == Code.ICEBERG_PEAK_ABOVE_TOTAL
    assert "2.1" in rj.reason and "2.0" in rj.reason
    assert m.engine.orders == {} and book_changes(ev) == []
    m.sell("bob", 5000, 20, peak=20)  # equal is allowed
    assert m.public_levels(SELL) == [(5000, 20)]


def test_A1_3_4_unmatched_part_of_an_iceberg_can_be_cancelled() -> None:
    """A1§3.4: «Admitirán la posibilidad de ser canceladas en los momentos en que se permite
    la cancelación de ofertas por la parte no casada»."""
    m = Market()
    ice = m.sell("bob", 5000, 100, peak=20)
    m.buy("alice", 5000, 30)
    ev = m.send(cancel("bob", ice))
    r = m.report(ice)
    assert (r.action, r.status, r.filled, r.visible, r.hidden) == (
        "CANCELLED", "INACTIVE", 30, 0, 0)
    assert [b.action for b in book_changes(ev)] == ["REMOVE"]
    assert m.public_book() == {}


# =============================================================================== A1§3.4.1


@pytest.mark.parametrize(
    ("side", "incr", "ok"),
    [(BUY, -5, True), (BUY, 5, False), (SELL, 5, True), (SELL, -5, False)],
    ids=["buy-negative", "buy-positive", "sell-positive", "sell-negative"],
)
def test_A1_3_4_1_increment_sign_rule(side: Any, incr: int, ok: bool) -> None:
    """A1§3.4.1: «Las órdenes Iceberg de adquisición solo pueden introducirse con un
    incremental de precio negativo, mientras que las órdenes de venta sólo pueden
    introducirse con un incremental de precio positivo»."""
    m = Market()
    ev = m.send(order("bob", side, 5000, 60, peak=20, incr=incr))
    if ok:
        assert rejects(ev) == [] and len(m.created) == 1
    else:
        (rj,) = rejects(ev)
        assert rj.code == Code.ICEBERG_INCREMENT_SIGN
        assert m.engine.orders == {}


def test_A1_3_4_1_each_sell_refill_at_previous_price_plus_increment() -> None:
    """A1§3.4.1: «cada nueva instanciación tendrá un nuevo precio, que será calculado como el
    precio de la instanciación anterior más el incremental de precio» - a sell iceberg of
    6.0 MWh, peak 2.0, at 50.00 with +0.25 trades at 50.00, 50.25, 50.50; dave's 2.0 at
    50.10 sits between the instantiations by price."""
    m = Market()
    ice = m.sell("bob", 5000, 60, peak=20, incr=25)
    m.buy("alice", 6000, 20)
    assert fills(m.last) == [(5000, 20)]
    assert m.report(ice).price == 5025
    assert m.public_levels(SELL) == [(5025, 20)]
    d = m.sell("dave", 5010, 20)
    m.buy("alice", 6000, 40)
    assert fills(m.last) == [(5010, 20), (5025, 20)]
    assert counterparties(trades(m.last), BUY) == [d, ice]
    assert m.report(ice).price == 5050
    assert m.public_levels(SELL) == [(5050, 20)]
    m.buy("alice", 6000, 20)
    assert fills(m.last) == [(5050, 20)]
    assert m.report(ice).action == "FILLED"


def test_A1_3_4_1_each_buy_refill_at_previous_price_plus_negative_increment() -> None:
    """A1§3.4.1 for a buy iceberg with −0.25: one 6.0 MWh sell meets three instantiations,
    one trade each, at 50.00, 49.75, 49.50."""
    m = Market()
    ice = m.buy("carol", 5000, 60, peak=20, incr=-25)
    ev = m.send(order("bob", SELL, 4000, 60, exec=IOC))
    assert fills(ev) == [(5000, 20), (4975, 20), (4950, 20)]
    assert counterparties(trades(ev), SELL) == [ice] * 3
    assert m.report(ice).action == "FILLED"
    assert m.public_book() == {}


# =============================================================================== A1§4, R45.g


def test_A1_4_1_GFS_cancelled_at_close_with_CONTRACT_CLOSE_and_round_increments() -> None:
    """A1§4.1: «válidas hasta el cierre de la negociación del contrato al que se
    presentaron»; R45.g: «La apertura de una ronda se produce en el instante en el que se
    cierra la ronda inmediatamente anterior. El cierre de una ronda está asociado con el
    cierre de negociación de un contrato» - every trade carries its round."""
    m = Market(CID, CID2)
    m.sell("bob", 5000, 20)
    m.buy("alice", 5000, 10)
    m.sell("bob", 6000, 10, contract=CID2)
    m.buy("alice", 6000, 5, contract=CID2)
    assert [t.round for t in trades(m.log)] == [1, 1]
    rest = m.buy("carol", 4000, 30)
    hib = m.buy("dave", 4100, 30)
    m.send(deactivate("dave", (hib,)))
    keep = m.buy("carol", 5500, 30, contract=CID2)
    left = {o.id for o in m.engine.orders.values() if o.contract == CID}
    other = m.engine.orders.keys() - left
    assert keep in other and len(other) == 2
    ev = m.send(CloseContracts((CID,)))
    cancelled = reports(ev, "CANCELLED")
    assert {r.order_id for r in cancelled} == left and rest in left and hib in left
    assert all(r.code == Code.CONTRACT_CLOSE for r in cancelled)
    assert [(c.contract, c.state) for c in of(ev, ContractStateChanged)] == [(CID, "FIN")]
    (rc,) = of(ev, RoundClosed)
    assert (rc.round, rc.contracts) == (1, (CID,))
    assert m.engine.orders.keys() == other
    assert m.public_book(CID) == {}
    # the next round opened at once: a trade on the other contract belongs to round 2
    m.send(order("bob", SELL, 5500, 10, contract=CID2), at=m.now)
    (t,) = trades(m.last)
    assert t.round == 2
    ev = m.send(CloseContracts((CID2,)))
    assert of(ev, RoundClosed)[0].round == 2
    assert reject_codes(m.send(order("alice", BUY, 5000, 10))) == [Code.CONTRACT_NOT_TRADING]


def test_A1_4_2_GTD_expiry_must_be_future_and_before_close() -> None:
    """A1§4.2: «la oferta presentada sea únicamente válida hasta un cierto momento
    establecido por el agente ..., dicho momento será siempre anterior al cierre de la
    negociación del contrato»."""
    m = Market()
    close = gate_closure(CID)
    now = m.now + SECOND

    def code(expiry: int | None, validity: Any = GTD) -> list[str]:
        return reject_codes(m.send(order("bob", SELL, 5000, 10, validity=validity,
                                         expiry=expiry), at=now))

    assert code(now) == [Code.GTD_EXPIRY_NOT_FUTURE]
    assert code(now - 1) == [Code.GTD_EXPIRY_NOT_FUTURE]
    assert code(close) == [Code.GTD_EXPIRY_AFTER_CLOSE]
    assert code(close + 1) == [Code.GTD_EXPIRY_AFTER_CLOSE]
    assert code(None) == [Code.GTD_EXPIRY_MISSING]
    assert code(now + 60 * SECOND, Validity.GFS) == [Code.EXPIRY_WITHOUT_GTD]
    assert m.engine.orders == {}
    assert code(now + 1) == []
    assert code(close - 1) == []
    assert len(m.engine.orders) == 2


def test_A1_4_2_GTD_expires_via_Tick() -> None:
    """A1§4.2: valid «únicamente ... hasta un cierto momento»: a Tick before the instant
    changes nothing; a Tick at the instant removes the order (GTD_EXPIRED)."""
    m = Market()
    exp = m.now + 60 * SECOND
    g = m.sell("bob", 5000, 10, validity=GTD, expiry=exp)
    assert m.send(Tick(), at=exp - 1) == []
    assert m.report(g).action == "ADDED"
    ev = m.send(Tick(), at=exp)
    r = m.report(g)
    assert (r.action, r.status, r.code) == ("EXPIRED", "INACTIVE", Code.GTD_EXPIRED)
    assert [b.action for b in book_changes(ev)] == ["REMOVE"]
    assert m.public_book() == {}
    m.buy("alice", 5000, 10)
    assert trades(m.last) == []


def test_A1_4_2_GTD_expires_before_any_later_command() -> None:
    """A1§4.2: no command sees an order past its validity, whether or not a Tick arrived: a
    crossing buy 5 s after the expiry finds nothing (the EXPIRED report comes first)."""
    m = Market()
    exp = m.now + 60 * SECOND
    g = m.sell("bob", 5000, 10, validity=GTD, expiry=exp)
    h = m.sell("carol", 5000, 10, validity=GTD, expiry=exp)
    m.send(deactivate("carol", (h,)))  # hibernated orders expire too
    ev = m.send(order("alice", BUY, 5000, 10), at=exp + 5 * SECOND)
    assert trades(ev) == []
    expired = reports(ev, "EXPIRED")
    assert {r.order_id for r in expired} == {g, h}
    assert ev.index(expired[-1]) < ev.index(reports(ev, "ADDED")[0])
    assert m.public_levels(BUY) == [(5000, 10)] and m.public_levels(SELL) == []


# =============================================================================== baskets


def test_A1_5_1_basket_NONE_orders_are_independent() -> None:
    """A1§5.1: «Las ofertas de la cesta se enviarán a la vez, ... pero sin relación entre
    ellas. Unas podrán ser aceptadas y casadas y otras no, permaneciendo en el Libro de
    Ofertas si las condiciones de dicha oferta lo permiten»."""
    m = Market(CID, CID2)
    m.buy("bob", 5000, 10)
    ev = m.send(basket(
        "alice", BasketType.NONE,
        order("alice", SELL, 5000, 30, client_order_id="n1"),  # trades 1.0, rests 2.0
        order("alice", SELL, 10**7, 10, client_order_id="n2"),  # price out of range
        order("alice", BUY, 4000, 10, contract=CID2, exec=IOC, client_order_id="n3"),
    ))
    (rj,) = rejects(ev)
    assert (rj.client_order_id, rj.code) == ("n2", Code.PRICE_OUT_OF_RANGE)
    ids = m.created
    assert len(ids) == 2
    assert fills(ev) == [(5000, 10)]
    r1, r3 = m.report(ids[0]), m.report(ids[1])
    assert (r1.client_order_id, r1.action, r1.visible) == ("n1", "ADDED", 20)
    assert (r3.client_order_id, r3.code) == ("n3", Code.IOC_REMAINDER)
    assert r1.basket == r3.basket != 0
    assert m.public_levels(SELL) == [(5000, 20)]


def test_R46_2_10_every_report_of_a_basket_member_carries_the_baskets_condition() -> None:
    """R46.2.10: a basket is sent with its condition; each member's report says which, so
    a screen that lost its state (or a trader after a reconnection) knows how its members
    will be reactivated (A1§5.1, A1§5.2).  Outside a basket: none."""
    m = Market(CID, CID2)
    m.buy("bob", 5000, 10)
    ev = m.send(basket(
        "alice", BasketType.VALID,
        order("alice", SELL, 5000, 30),  # trades 1.0 with bob: FILLED part, then ADDED
        order("alice", BUY, 4000, 10, contract=CID2),
    ))
    own = [r for r in reports(ev) if r.agent == m.engine.orders[m.created[0]].agent]
    assert {r.action for r in own} >= {"ADDED"}
    assert {r.basket_type for r in own} == {"VALID"}
    bob = [r for r in reports(ev) if r.user == "bob"]
    assert bob and {r.basket_type for r in bob} == {None}  # bob's order is in no basket
    ev = m.send(basket("alice", BasketType.NONE, order("alice", BUY, 3900, 10, contract=CID2)))
    assert [r.basket_type for r in reports(ev)] == ["NONE"]
    assert m.report(m.sell("alice", 5200, 10)).basket_type is None


def test_A1_5_2_basket_VALID_all_rejected_when_one_is_invalid() -> None:
    """A1§5.2: «deberán ser todas aceptadas como válidas. Si alguna de las ofertas incluidas
    en la cesta es declarada no válida, no se tendrá en cuenta el resto puesto que serán
    todas rechazadas» - every member gets a Reject: the failing one its own code, the others
    BASKET_MEMBER_INVALID; nothing enters the book."""
    m = Market(CID, CID2)
    m.buy("bob", 5000, 10)
    ev = m.send(basket(
        "alice", BasketType.VALID,
        order("alice", SELL, 5000, 10, client_order_id="v1"),  # would trade
        order("alice", SELL, 5000, 0, client_order_id="v2"),  # quantity 0.0
        order("alice", BUY, 4000, 10, contract=CID2, client_order_id="v3"),
    ))
    by_coid = {r.client_order_id: r for r in rejects(ev) if r.client_order_id}
    assert {k: r.code for k, r in by_coid.items()} == {
        "v1": Code.BASKET_MEMBER_INVALID,
        "v2": Code.QTY_OUT_OF_RANGE,
        "v3": Code.BASKET_MEMBER_INVALID,
    }
    assert Code.QTY_OUT_OF_RANGE in by_coid["v1"].reason
    assert trades(ev) == [] and book_changes(ev) == [] and reports(ev) == []
    assert {o.agent for o in m.engine.orders.values()} == {"BETA"}
    # the refused coids were not consumed
    m.sell("alice", 5100, 10, client_order_id="v1")
    # all valid: all enter
    ev = m.send(basket(
        "alice", BasketType.VALID,
        order("alice", SELL, 5000, 10, client_order_id="v4"),
        order("alice", BUY, 4000, 10, contract=CID2, client_order_id="v5"),
    ))
    assert rejects(ev) == [] and len(m.created) == 2
    assert fills(ev) == [(5000, 10)]


def test_A1_5_3_LINKED_across_two_contracts_all_filled_or_none() -> None:
    """A1§5.3: «la aceptación de una casación de una oferta para un contrato estará enlazada
    a la casación de las otras ofertas de la cesta en otros contratos, siendo casadas todas
    o ninguna de las ofertas enviadas»."""
    m = Market(CID, CID2)
    m.sell("bob", 5000, 50)
    m.sell("carol", 5100, 30, contract=CID2)
    before = (m.public_book(CID), m.public_book(CID2))
    ev = m.send(basket(
        "alice", BasketType.LINKED,
        order("alice", BUY, 5000, 50, exec=FOK),  # fillable alone
        order("alice", BUY, 5100, 40, contract=CID2, exec=FOK),  # 4.0 > 3.0: not fillable
    ))
    ids = m.created
    assert len(ids) == 2
    assert trades(ev) == [] and book_changes(ev) == []
    assert [(m.report(i).action, m.report(i).code) for i in ids] == [
        ("CANCELLED", Code.LINKED_NOT_FILLABLE)] * 2
    assert (m.public_book(CID), m.public_book(CID2)) == before
    ev = m.send(basket(
        "alice", BasketType.LINKED,
        order("alice", BUY, 5000, 50, exec=FOK),
        order("alice", BUY, 5100, 30, contract=CID2, exec=FOK),
    ))
    assert sorted(fills(ev)) == [(5000, 50), (5100, 30)]
    assert [m.report(i).action for i in m.created] == ["FILLED", "FILLED"]


def test_A1_5_3_LINKED_member_without_FOK_rejected() -> None:
    """A1§5.3: «una cesta enlazada siempre incluirá la restricción a la ejecución FoK para
    cada una de las ofertas incluidas en la cesta» - a NON member makes the whole basket
    invalid, even though every member could be filled."""
    m = Market(CID, CID2)
    m.sell("bob", 5000, 50)
    m.sell("carol", 5100, 30, contract=CID2)
    ev = m.send(basket(
        "alice", BasketType.LINKED,
        order("alice", BUY, 5000, 50, exec=FOK, client_order_id="l1"),
        order("alice", BUY, 5100, 30, contract=CID2, client_order_id="l2"),
    ))
    by_coid = {r.client_order_id: r.code for r in rejects(ev) if r.client_order_id}
    assert by_coid == {"l1": Code.BASKET_MEMBER_INVALID, "l2": Code.LINKED_MEMBER_NOT_FOK}
    assert trades(ev) == [] and reports(ev) == []


def test_A1_5_3_LINKED_members_on_same_contract_and_side_compete_for_liquidity() -> None:
    """A1§5.3 «casadas todas o ninguna»: two linked FoK buys of 3.0 MWh on the same contract,
    each fillable alone against 5.0 MWh offered, cannot both be filled, so neither is."""
    m = Market()
    m.sell("bob", 5000, 50)
    ev = m.send(basket("alice", BasketType.LINKED,
                       order("alice", BUY, 5000, 30, exec=FOK),
                       order("alice", BUY, 5000, 30, exec=FOK)))
    assert trades(ev) == []
    assert {m.report(i).code for i in m.created} == {Code.LINKED_NOT_FILLABLE}
    assert m.public_levels(SELL) == [(5000, 50)]
    ev = m.send(basket("alice", BasketType.LINKED,
                       order("alice", BUY, 5000, 30, exec=FOK),
                       order("alice", BUY, 5000, 20, exec=FOK)))
    assert fills(ev) == [(5000, 30), (5000, 20)]
    assert m.public_book() == {}


def test_A1_5_3_LINKED_competing_members_with_different_limits_never_half_fill() -> None:
    """A1§5.3 «casadas todas o ninguna»: asks 3.0@50.00 and 3.0@50.10; linked buys
    3.0 up to 50.10 then 3.0 up to 50.00.  Whatever the engine decides, it is all or none:
    never one member filled and the other killed."""
    m = Market()
    m.sell("bob", 5000, 30)
    m.sell("carol", 5010, 30)
    ev = m.send(basket("alice", BasketType.LINKED,
                       order("alice", BUY, 5010, 30, exec=FOK),
                       order("alice", BUY, 5000, 30, exec=FOK)))
    actions = [m.report(i).action for i in m.created]
    assert actions in (["FILLED", "FILLED"], ["CANCELLED", "CANCELLED"])
    assert sum(t.qty for t in trades(ev)) in (0, 60)


# =============================================================================== R46.2.6.1


def test_R46_2_6_1_modify_is_cancel_plus_new_and_loses_priority() -> None:
    """R46.2.6.1: «la modificación de una oferta ... supondrá la cancelación de la oferta
    original y la incorporación de una nueva oferta con los nuevos parámetros» - even a
    reduction of quantity at the same price goes behind carol; the revision increments."""
    m = Market()
    s1 = m.sell("bob", 5000, 20)
    s2 = m.sell("carol", 5000, 20)
    assert m.report(s1).revision == 1
    ev = m.send(modify("bob", s1, 1, 5000, 10))
    r = m.report(s1)
    assert (r.action, r.revision, r.visible, r.order_id) == ("MODIFIED", 2, 10, s1)
    old_entry = book_changes(m.log)[0].entry
    assert [(b.action, b.entry == old_entry) for b in book_changes(ev)] == [
        ("REMOVE", True), ("ADD", False)]
    assert m.resting_ids(SELL) == [s2, s1]
    m.buy("alice", 5000, 20)
    assert counterparties(trades(m.last), BUY) == [s2]
    m.buy("alice", 5000, 10)
    assert counterparties(trades(m.last), BUY) == [s1]


def test_R46_2_6_a_modification_keeps_the_validity() -> None:
    """R46.2.6: «Modificación: Pudiendo variar la cantidad, precio o condiciones de
    ejecución» — not the validity (A1§4).  A GTD sell modified without a validity keeps
    it, expiry included, and expires then (before, it became GFS and outlived the expiry
    its owner chose); one that names another validity or expiry is refused, the order
    left as it was; naming its own is a plain modification."""
    m = Market()
    exp = T0 + 60 * SECOND
    a = m.sell("bob", 5000, 10, validity=GTD, expiry=exp)
    m.send(modify("bob", a, 1, 5100, None))
    r = m.report(a)
    assert (r.action, r.validity, r.expiry, r.price) == ("MODIFIED", "GTD", exp, 5100)
    for val, e in ((Validity.GFS, None), (GTD, exp + SECOND)):
        ev = m.send(modify("bob", a, 2, 5200, None, validity=val, expiry=e))
        (rej,) = rejects(ev)
        assert rej.code == "MODIFY_CHANGES_FIXED_FIELD" and "R46.2.6" in rej.reason
        assert "GTD until" in rej.reason
    assert m.engine.orders[a].price == 5100 and m.engine.orders[a].revision == 2
    m.send(modify("bob", a, 2, 5200, None, validity=GTD, expiry=exp))
    assert (m.report(a).action, m.report(a).price) == ("MODIFIED", 5200)
    ev = m.send(order("alice", BUY, 5200, 10), at=exp + 5 * SECOND)
    assert not trades(ev)  # expired at its own expiry, not traded after it


def test_R46_2_6_1_modified_order_may_match_at_once_at_resting_price() -> None:
    """R46.2.6.1 with R47.1: the modification is a new order: moved to 51.00 it crosses
    carol's 50.50 and trades at 50.50."""
    m = Market()
    b = m.buy("bob", 4900, 30)
    m.sell("carol", 5050, 10)
    ev = m.send(modify("bob", b, 1, 5100, 30))
    assert fills(ev) == [(5050, 10)]
    r = m.report(b)
    assert (r.action, r.price, r.visible, r.filled, r.revision) == ("MODIFIED", 5100, 20, 10, 2)


def test_R46_2_6_1_stale_revision_rejected() -> None:
    """R46.2.6.1: a modification refers to the order as its owner last saw it; one based
    on an older revision is refused (STALE_REVISION) and changes nothing."""
    m = Market()
    s = m.sell("bob", 5000, 20)
    m.send(modify("bob", s, 1, 5010, 20))
    snap = live_snapshot(m)
    ev = m.send(modify("bob", s, 1, 5020, 20))
    (rj,) = rejects(ev)
    assert (rj.code, rj.order_id) == (Code.STALE_REVISION, s)
    assert live_snapshot(m) == snap
    assert m.report(s).revision == 2 and m.report(s).price == 5010


def test_R46_2_6_1_a_modification_without_quantity_keeps_the_open_quantity_it_finds() -> None:
    """R46.2.6.1: bob offers 10, loads the order to move its price, and 6 are bought
    meanwhile (a fill does not change the revision). Sent with the 10 he saw, the
    modification puts 10 back in the book (16 in all); sent without a quantity, the new
    order takes the 4 still open when it is applied, at the new price, with the fills."""
    m = Market()
    s = m.sell("bob", 5000, 100)
    m.buy("alice", 5000, 60)
    assert m.report(s).revision == 1  # the fill left the revision as it was
    ev = m.send(modify("bob", s, 1, 5010, None))
    r = m.report(s)
    assert (r.action, r.price, r.visible, r.filled, r.revision) == ("MODIFIED", 5010, 40, 60, 2)
    assert not rejects(ev)
    s2 = m.sell("bob", 5000, 100)
    m.buy("alice", 5000, 60)
    m.send(modify("bob", s2, 1, 5010, 100))  # the quantity he saw: 100 open again
    assert m.report(s2).visible == 100 and m.report(s2).filled == 60


def test_R46_2_6_1_a_modification_without_quantity_caps_an_icebergs_peak() -> None:
    """R46.2.6.1 with A1§3.4: bob's iceberg of 3.0 MWh shows 1.0; 2.5 are bought while he
    moves its price, sending its peak again and no quantity: the new order takes the 0.5
    still open, its peak capped at that (as a reactivation caps it), not refused
    ICEBERG_PEAK_ABOVE_TOTAL for a peak above a total bob never sent."""
    m = Market()
    ice = m.sell("bob", 5000, 30, peak=10)
    m.buy("alice", 5000, 25)
    ev = m.send(modify("bob", ice, 1, 5100, None, peak=10))
    assert not rejects(ev)
    o = m.engine.orders[ice]
    assert (o.price, o.remaining, o.peak, o.visible, o.filled) == (5100, 5, 5, 5, 25)


def test_R46_2_6_1_refused_modification_leaves_the_original_intact() -> None:
    """R46.2.6.1: «La oferta se considerará modificada cuando, una vez realizadas las
    validaciones...» - a modification that fails validation (price beyond 9999.00, or the
    pre-trade guard) leaves the order as it was: price, quantity, revision, priority."""
    g = RefusingGuard()
    m = Market(guard=g)
    s1 = m.sell("bob", 5000, 20)
    s2 = m.sell("carol", 5000, 20)
    snap = live_snapshot(m)
    book = m.public_book()
    ev = m.send(modify("bob", s1, 1, 1_000_000, 20))
    assert reject_codes(ev) == [Code.PRICE_OUT_OF_RANGE] and book_changes(ev) == []
    g.refuse.add(s1)
    ev = m.send(modify("bob", s1, 1, 5000, 10))
    assert reject_codes(ev) == [Code.OPERATIVE_LIMIT] and book_changes(ev) == []
    assert live_snapshot(m) == snap and m.public_book() == book
    m.buy("alice", 5000, 20)
    assert counterparties(trades(m.last), BUY) == [s1]
    assert m.resting_ids(SELL) == [s2]


def test_R46_2_6_1_modify_of_a_hibernated_order_refused() -> None:
    """R46.2.6.1: «Toda oferta ... que ... permanezca en el Libro de Ofertas podrá ser
    modificada» - a hibernated order is not in the book (R46.2.7): ORDER_NOT_ACTIVE."""
    m = Market()
    s = m.sell("bob", 5000, 20)
    m.send(deactivate("bob", (s,)))
    ev = m.send(modify("bob", s, 1, 5010, 20))
    assert reject_codes(ev) == [Code.ORDER_NOT_ACTIVE]
    r = m.report(s)
    assert (r.action, r.status, r.price) == ("HIBERNATED", "HIBERNATED", 5000)


def test_R46_2_6_1_fully_matched_order_cannot_be_modified_or_cancelled() -> None:
    """R46.2.6.1/R46.2.6.2: «que no haya sido previamente casada totalmente»."""
    m = Market()
    s = m.sell("bob", 5000, 20)
    m.buy("alice", 5000, 20)
    assert reject_codes(m.send(modify("bob", s, 1, 5010, 20))) == [Code.ORDER_UNKNOWN]
    assert reject_codes(m.send(cancel("bob", s))) == [Code.ORDER_UNKNOWN]


# =============================================================================== R46.2.6.2


def test_R46_2_6_2_cancel_one_order() -> None:
    """R46.2.6.2: «Anulación: Cancelación inmediata de una oferta»."""
    m = Market()
    s1 = m.sell("bob", 5000, 20)
    s2 = m.sell("bob", 5010, 20)
    ev = m.send(cancel("bob", s1))
    assert [r.order_id for r in reports(ev)] == [s1]
    assert (m.report(s1).action, m.report(s1).status) == ("CANCELLED", "INACTIVE")
    assert [b.action for b in book_changes(ev)] == ["REMOVE"]
    assert m.engine.orders.keys() == {s2}
    assert m.public_levels(SELL) == [(5010, 20)]


def test_R46_2_6_2_cancel_all_of_the_user_vs_all_of_the_agent() -> None:
    """R46.2.6: «Anulación: Cancelación inmediata de una oferta o de todas las ofertas del
    usuario o del agente» - optionally of one contract."""
    m = Market(CID, CID2)
    a1 = m.buy("alice", 4000, 10)
    a2 = m.buy("alice", 4010, 10)
    a3 = m.buy("alice", 4020, 10, contract=CID2)
    n1 = m.buy("alan", 4030, 10)
    b1 = m.buy("bob", 4040, 10)
    m.send(deactivate("alice", (a2,)))  # hibernated orders are cancelled too
    ev = m.send(cancel_all("alice", "user", CID))
    assert {r.order_id for r in reports(ev, "CANCELLED")} == {a1, a2}
    assert m.engine.orders.keys() == {a3, n1, b1}
    ev = m.send(cancel_all("alice", "user"))
    assert [r.order_id for r in reports(ev, "CANCELLED")] == [a3]
    assert m.engine.orders.keys() == {n1, b1}
    m.buy("alice", 4050, 10, contract=CID2)
    ev = m.send(cancel_all("alice", "agent"))
    assert n1 in {r.order_id for r in reports(ev, "CANCELLED")}
    assert len(reports(ev, "CANCELLED")) == 2
    assert {o.agent for o in m.engine.orders.values()} == {"BETA"}
    assert m.engine.orders.keys() == {b1}


def test_R46_2_6_2_operator_cancels_every_order_of_an_agent() -> None:
    """R46.2.6.2: «en caso de baja, exclusión o suspensión temporal de un agente de mercado,
    las ofertas existentes ... correspondientes a dicho agente de mercado, serán canceladas
    por el operador del mercado»."""
    m = Market(CID, CID2)
    a1 = m.buy("alice", 4000, 10)
    a2 = m.buy("alan", 4010, 10, contract=CID2)
    a3 = m.buy("alice", 4020, 10, contract=CID2)
    m.send(deactivate("alice", (a3,)))
    b1 = m.buy("bob", 4040, 10)
    ev = m.send(CancelAgentOrders("ACME", reason="suspended"))
    cancelled = reports(ev, "CANCELLED")
    assert {r.order_id for r in cancelled} == {a1, a2, a3}
    assert {r.code for r in cancelled} == {Code.OPERATOR_CANCEL}
    assert m.engine.orders.keys() == {b1}
    assert m.public_levels(BUY, CID2) == []


def test_A1_3_1_cancel_only_while_the_contract_is_in_TRADE() -> None:
    """A1§3.1: «Una oferta ... podrá ser modificada o cancelada mientras el contrato al que se
    presentó esté en un estado que permita el envío de ofertas (TRADE)»; R46.2.7: hibernated
    orders «pueden ser anuladas sin pasar por la activación (en los momentos que el mercado
    permita la anulación)».  While the contract is INT the cancel is refused; once it is back
    in TRADE the still-hibernated order can be cancelled."""
    m = Market()
    s = m.sell("bob", 5000, 20)
    m.send(InterruptContracts((CID,)))
    ev = m.send(cancel("bob", s))
    assert reject_codes(ev) in ([Code.CONTRACT_NOT_TRADING], [Code.CONTRACT_CLOSED])
    assert m.report(s).status == "HIBERNATED"
    m.send(ResumeContracts((CID,)))
    ev = m.send(cancel("bob", s))
    assert rejects(ev) == [] and m.report(s).action == "CANCELLED"


# =============================================================================== R46.2.7


def test_R46_2_7_interrupted_contract_orders_are_hibernated_and_cannot_match() -> None:
    """R46.2.7: «se suspenderá la negociación del mercado continuo para los contratos
    incluidos en el horizonte de subasta. Las ofertas ... serán hibernadas»; «Las ofertas
    hibernadas ... dejando de estar expuestas al mercado y no pudiendo por tanto ser casadas».
    Resuming the contract does not reactivate them."""
    m = Market(CID, CID2)
    s1 = m.sell("bob", 5000, 20)
    s2 = m.sell("carol", 5010, 20, validity=GTD, expiry=gate_closure(CID) - 1)
    other = m.sell("bob", 5000, 20, contract=CID2)
    ev = m.send(InterruptContracts((CID,), reason="auction MI2"))
    hib = reports(ev, "HIBERNATED")
    assert [r.order_id for r in hib] == [s1, s2]
    assert {(r.status, r.reason) for r in hib} == {("HIBERNATED", "auction MI2")}
    assert sorted(b.action for b in book_changes(ev)) == ["REMOVE", "REMOVE"]
    assert m.public_book(CID) == {}
    assert m.engine.orders[other].status.value == "ACTIVE"
    m.send(ResumeContracts((CID,)))
    m.buy("alice", 5100, 40)
    assert trades(m.last) == []
    assert m.public_levels(BUY) == [(5100, 40)]
    assert m.report(s1).status == m.report(s2).status == "HIBERNATED"


def test_R46_2_7_platform_hibernates_the_orders_of_an_agent() -> None:
    """R46.2.7: «las ofertas potencialmente afectadas por dicho problema sean desactivadas
    (hibernadas) por la plataforma» - only BETA's orders; they cannot match."""
    m = Market(CID, CID2)
    b1 = m.sell("bob", 5000, 20)
    b2 = m.sell("bob", 5000, 20, contract=CID2)
    c1 = m.sell("carol", 5010, 20)
    ev = m.send(HibernateOrders(agent="BETA"))
    assert {r.order_id for r in reports(ev, "HIBERNATED")} == {b1, b2}
    m.buy("alice", 5100, 30)
    assert counterparties(trades(m.last), BUY) == [c1]
    assert m.report(b1).status == "HIBERNATED"


def test_R46_2_7_hibernated_order_can_be_cancelled_without_reactivation() -> None:
    """R46.2.7: «Las ofertas hibernadas también pueden ser anuladas sin pasar por la
    activación»."""
    m = Market()
    s = m.sell("bob", 5000, 20)
    m.send(HibernateOrders(agent="BETA"))
    ev = m.send(cancel("bob", s))
    assert [r.order_id for r in reports(ev)] == [s]
    r = m.report(s)
    assert (r.action, r.status) == ("CANCELLED", "INACTIVE")
    assert book_changes(ev) == []  # it was not in the book any more
    assert reject_codes(m.send(activate("bob", (s,)))) == [Code.ORDER_UNKNOWN]


def test_R46_2_7_reactivate_one_a_list_or_all() -> None:
    """R46.2.7: «El agente tendrá la posibilidad de volver a activar todas las ofertas
    hibernadas en una sola acción o activar individualmente sólo un subconjunto de ellas»."""
    m = Market()
    ids = [m.sell("bob", 5000 + 10 * i, 10) for i in range(5)]
    m.send(deactivate("bob"))
    assert {m.report(i).status for i in ids} == {"HIBERNATED"}
    ev = m.send(activate("bob", (ids[3],)))
    assert [r.order_id for r in reports(ev, "ACTIVATED")] == [ids[3]]
    ev = m.send(activate("bob", (ids[4], ids[0])))
    assert [r.order_id for r in reports(ev, "ACTIVATED")] == [ids[0], ids[4]]
    assert {m.report(i).status for i in ids} == {"ACTIVE", "HIBERNATED"}
    ev = m.send(activate("bob"))
    assert [r.order_id for r in reports(ev, "ACTIVATED")] == [ids[1], ids[2]]
    assert {m.report(i).status for i in ids} == {"ACTIVE"}
    assert m.public_levels(SELL) == [(5000 + 10 * i, 10) for i in range(5)]
    assert reject_codes(m.send(activate("bob", (ids[0],)))) == [Code.ORDER_NOT_HIBERNATED]


def test_R46_2_7_reactivate_all_in_arrival_order_with_a_baskets_orders_in_order() -> None:
    """R46.2.7: «Las ofertas hibernadas serán reactivadas por orden de llegada ...,
    comenzando por las primeras ofertas recibidas. En caso de pertenecer a una misma Cesta de
    Ofertas, la reactivación se realizará respetando el orden en dicha cesta».  bob's iceberg
    X was refilled (so it stood last in the book) but arrived first: it comes back first,
    then the basket's b1, b2, then Y; their new priorities follow that order."""
    m = Market()
    x = m.sell("bob", 5000, 40, peak=10)
    ev = m.send(basket("bob", BasketType.NONE,
                       order("bob", SELL, 5000, 10), order("bob", SELL, 5000, 10)))
    b1, b2 = m.created
    y = m.sell("bob", 5000, 10)
    m.buy("carol", 5000, 10)  # X's peak taken: X refilled behind b1, b2, Y
    assert m.resting_ids(SELL) == [b1, b2, y, x]
    m.send(HibernateOrders(agent="BETA"))
    ev = m.send(activate("bob"))
    assert [r.order_id for r in reports(ev, "ACTIVATED")] == [x, b1, b2, y]
    assert m.resting_ids(SELL) == [x, b1, b2, y]
    m.buy("carol", 5000, 40)
    assert counterparties(trades(m.last), BUY) == [x, b1, b2, y]


def test_R46_2_7_platform_reactivation_after_auction_for_the_agents_that_asked() -> None:
    """R46.2.7: «Una vez publicados los resultados de la casación y previo a la reapertura
    ..., se reactivarán las ofertas previamente hibernadas en caso de que el agente lo hubiera
    solicitado» - in arrival order across the contracts of the horizon, a basket spanning two
    contracts kept in its order."""
    m = Market(CID, CID2)
    c = m.buy("carol", 4000, 10, contract=CID2)
    ev = m.send(basket("bob", BasketType.NONE,
                       order("bob", SELL, 6000, 10, contract=CID2),
                       order("bob", SELL, 6000, 10)))
    b1, b2 = m.created
    y = m.sell("bob", 6100, 10, contract=CID2)
    m.send(InterruptContracts((CID, CID2)))
    m.send(ResumeContracts((CID, CID2)))
    ev = m.send(ReactivateOrders((CID, CID2), agents=("BETA",)))
    assert [r.order_id for r in reports(ev, "ACTIVATED")] == [b1, b2, y]
    assert m.report(c).status == "HIBERNATED"


def test_R46_2_7_reactivated_order_gets_new_priority_and_may_match_at_once() -> None:
    """R46.2.7: «Una oferta hibernada que pasa al estado de activa se comportará como una
    nueva oferta» - behind carol's order that arrived while it slept; and a reactivated buy
    at 51.00 trades at once with dave's 50.50 (the resting price)."""
    m = Market()
    s1 = m.sell("bob", 5000, 10)
    m.send(deactivate("bob", (s1,)))
    s2 = m.sell("carol", 5000, 10)
    ev = m.send(activate("bob", (s1,)))
    r = m.report(s1)
    assert (r.action, r.status, r.revision) == ("ACTIVATED", "ACTIVE", 2)
    assert m.resting_ids(SELL) == [s2, s1]
    m2 = Market()
    b = m2.buy("alice", 5100, 30)
    m2.send(deactivate("alice", (b,)))
    m2.sell("dave", 5050, 10)
    assert trades(m2.last) == []
    ev = m2.send(activate("alice", (b,)))
    (t,) = trades(ev)
    assert (t.price, t.qty, t.aggressor, t.buy_order) == (5050, 10, "BUY", b)
    assert m2.report(b).visible == 20
    assert m2.public_levels(BUY) == [(5100, 20)]


def test_R46_2_7_reactivation_revalidates_each_order_whole_or_rejected() -> None:
    """R46.2.7: reactivated «validando de nuevo ... del mismo modo que si hubiesen sido
    insertadas de nuevo ..., siendo rechazadas las ofertas en caso de no superar la
    validación»; «Las ofertas no serán reactivadas parcialmente ...; o se reactivan en su
    totalidad o serán rechazadas».  The guard refuses the middle order: it is rejected with
    the reason, the others come back whole."""
    g = RefusingGuard()
    m = Market(guard=g)
    ids = [m.sell("bob", 5000, 30) for _ in range(3)]
    m.send(deactivate("bob"))
    g.refuse.add(ids[1])
    g.admitted.clear()
    ev = m.send(activate("bob"))
    assert [r.order_id for r in reports(ev, "ACTIVATED")] == [ids[0], ids[2]]
    (rj,) = reports(ev, "REJECTED")
    assert (rj.order_id, rj.code, rj.status) == (ids[1], Code.OPERATIVE_LIMIT, "INACTIVE")
    assert "operative limit" in (rj.reason or "")
    assert g.admitted == [(ids[0], 30), (ids[2], 30)]
    assert m.public_levels(SELL) == [(5000, 60)]
    assert ids[1] not in m.engine.orders


# =============================================================================== R46.2.1


@pytest.mark.parametrize(
    ("price", "qty", "code", "words"),
    [
        (-999_900, 10, None, []),
        (999_900, 10, None, []),
        (-999_901, 10, Code.PRICE_OUT_OF_RANGE, ["-9999.01", "-9999.00", "9999.00"]),
        (999_901, 10, Code.PRICE_OUT_OF_RANGE, ["9999.01", "9999.00"]),
        (5000, 1, None, []),
        (5000, 9_990, None, []),
        (5000, 0, Code.QTY_OUT_OF_RANGE, ["0.0", "0.1", "999.0"]),
        (5000, -10, Code.QTY_OUT_OF_RANGE, ["-1.0", "0.1"]),
        (5000, 9_991, Code.QTY_OUT_OF_RANGE, ["999.1", "999.0"]),
    ],
)
def test_R46_2_1_price_and_quantity_bounds_default_profile(
    price: int, qty: int, code: str | None, words: list[str]
) -> None:
    """R46.2.1: «El operador del mercado verificará en el momento de la inserción de la
    oferta que los precios no son superiores a los máximos ni inferiores a los mínimos ...
    También se verificará ... que la energía ofertada no supera la cantidad máxima. La oferta
    se rechazará en caso contrario» - default (harmonised) profile −9999.00…9999.00 €/MWh,
    0.1…999.0 MWh; the message names the value and the limits."""
    m = Market()
    ev = m.send(order("bob", SELL, price, qty))
    if code is None:
        assert rejects(ev) == [] and len(m.created) == 1
        return
    (rj,) = rejects(ev)
    assert rj.code == code
    for w in words:
        assert w in rj.reason, (w, rj.reason)
    assert m.engine.orders == {}


@pytest.mark.parametrize(
    ("price", "code", "words"),
    [
        (0, None, []),
        (18_030, None, []),
        (-1, Code.PRICE_OUT_OF_RANGE, ["-0.01", "0.00", "180.30"]),
        (18_031, Code.PRICE_OUT_OF_RANGE, ["180.31", "180.30"]),
        (-999_900, Code.PRICE_OUT_OF_RANGE, ["-9999.00", "0.00"]),
    ],
)
def test_R46_2_1_and_A1_7_price_bounds_omie_2018_profile(
    price: int, code: str | None, words: list[str]
) -> None:
    """A1§7: «Precio máximo de oferta: 180,3 €/MWh. Precio mínimo de oferta: 0 €/MWh»
    (profile ``omie-2018``)."""
    cfg = PROFILES["omie-2018"]
    assert (cfg.price_min, cfg.price_max) == (0, 18_030)
    m = Market(config=cfg)
    for side in (BUY, SELL):
        ev = m.send(order("bob", side, price, 10))
        if code is None:
            assert rejects(ev) == []
        else:
            (rj,) = rejects(ev)
            assert rj.code == code
            for w in words:
                assert w in rj.reason, (w, rj.reason)


def test_R46_2_1_bounds_also_checked_on_modification() -> None:
    """R46.2.6.1: a modification passes «las validaciones establecidas en la regla Validación
    de ofertas» again, bounds included (omie-2018: at most 180.30)."""
    m = Market(config=PROFILES["omie-2018"])
    s = m.sell("bob", 18_000, 10)
    ev = m.send(modify("bob", s, 1, 18_031, 10))
    (rj,) = rejects(ev)
    assert rj.code == Code.PRICE_OUT_OF_RANGE and "180.31" in rj.reason
    assert m.report(s).price == 18_000


# =============================================================================== R45.f


def _market_in(state: str) -> Market:
    if state == "UPC":
        return Market(open_contracts=False)
    m = Market()
    if state == "INT":
        m.send(InterruptContracts((CID,)))
    elif state == "FIN":
        m.send(CloseContracts((CID,)))
    return m


@pytest.mark.parametrize("state", ["UPC", "INT", "FIN"])
def test_R45_f_orders_refused_unless_contract_is_TRADE(state: str) -> None:
    """R45.f: «UPC: ... No se admiten ofertas», «INT: ... En este estado no se admiten
    ofertas», «FIN: ... No se admiten ofertas»; R46.2.2: «El contrato está en un estado que
    permite la recepción de ofertas (TRADE)»."""
    m = _market_in(state)
    assert m.engine.contracts[CID].state.value == state
    ev = m.send(order("alice", BUY, 5000, 10))
    (rj,) = rejects(ev)
    assert rj.code == Code.CONTRACT_NOT_TRADING and state in rj.reason
    ev = m.send(basket("alice", BasketType.NONE, order("alice", BUY, 5000, 10)))
    assert reject_codes(ev) == [Code.CONTRACT_NOT_TRADING]
    assert m.engine.orders == {}


def test_R45_f_orders_accepted_again_when_contract_returns_to_TRADE() -> None:
    """R45.f: «TRADE: Contrato abierto y en negociación. Se admiten ofertas»."""
    m = _market_in("INT")
    m.send(ResumeContracts((CID,)))
    m.buy("alice", 5000, 10)
    assert m.public_levels(BUY) == [(5000, 10)]


def test_R45_f_engine_refuses_illegal_contract_transitions() -> None:
    """R45.f: a FIN contract is «cerrado y finalizado»: it cannot be reopened; an open
    contract cannot be opened again.  The operator's command is refused and the state stays."""
    m = Market(CID, CID2)
    ev = m.send(OpenContracts((CID,)))
    assert [r.code for r in rejects(ev)] == ["ILLEGAL_TRANSITION"]
    m.send(CloseContracts((CID,)))
    for cmd in (OpenContracts((CID,)), ResumeContracts((CID,)), InterruptContracts((CID,)),
                CloseContracts((CID, CID2))):
        ev = m.send(cmd)
        assert len(rejects(ev)) == 1 and not of(ev, ContractStateChanged), cmd
    assert m.engine.contracts[CID].state.value == "FIN"
    assert m.engine.contracts[CID2].state.value == "TRADE"
    assert m.engine.round == 2


# =============================================================================== R45.f gate closure
# The calendar's CloseContracts is sequenced a little after the gate closure (close_at):
# until it comes, the contract is still TRADE, but takes nothing from the traders.


def _past_closure(reason: str) -> bool:
    return "gate closure" in reason and "R45.f" in reason


def _at_gate_closure(offset: int) -> tuple[Market, dict[str, int]]:
    """CID (close at 07:00 UTC) and CID2 (08:00) trading: bob's sell 50.00 and carol's buy
    49.00 rest on CID, alice's sell is hibernated there; the clock at CID's gate closure +
    ``offset`` ms, its CloseContracts not applied yet."""
    m = Market(CID, CID2)
    ids = {
        "sell": m.sell("bob", 5000, 20),
        "buy": m.buy("carol", 4900, 20),
        "hib": m.sell("alice", 5100, 10, hibernated=True),
    }
    m.now = gate_closure(CID) + offset - SECOND  # the next command at close + offset
    return m, ids


GATE_CLOSED_ENTRIES: dict[str, Any] = {
    "plain GFS (fast path)": lambda: order("alice", BUY, 5000, 10),
    "IoC": lambda: order("alice", BUY, 5000, 10, exec=IOC),
    "FoK": lambda: order("alice", BUY, 5000, 10, exec=FOK),
    "iceberg": lambda: order("alice", BUY, 5000, 10, peak=5),
    "client order id": lambda: order("alice", BUY, 5000, 10, client_order_id="late"),
    "GTD": lambda: order("alice", BUY, 5000, 10, validity=GTD,
                         expiry=gate_closure(CID) + 60 * SECOND),
    "entered hibernated": lambda: order("alice", BUY, 5000, 10, hibernated=True),
    "basket NONE": lambda: basket("alice", BasketType.NONE, order("alice", BUY, 5000, 10)),
    "basket VALID": lambda: basket("alice", BasketType.VALID, order("alice", BUY, 5000, 10),
                                   order("alice", BUY, 5000, 10, contract=CID2)),
    "basket LINKED": lambda: basket("alice", BasketType.LINKED,
                                    order("alice", BUY, 5000, 10, exec=FOK)),
}


@pytest.mark.parametrize("offset", [0, 1, 60 * SECOND])
@pytest.mark.parametrize("kind", list(GATE_CLOSED_ENTRIES))
def test_R45_f_A1_4_1_no_order_enters_or_trades_at_or_after_gate_closure(
        kind: str, offset: int) -> None:
    """R45.f: «FIN: Contrato cerrado y finalizado. No se admiten ofertas»; A1§4.1: orders
    are «válidas hasta el cierre de la negociación del contrato».  At CID's gate closure
    (and after), before the calendar's CloseContracts is applied, an order that would cross
    bob's sell at 50.00 is refused like one sent to a closed contract (CONTRACT_NOT_TRADING,
    the reason naming the gate closure), whatever its conditions or basket: no trade,
    nothing rests, the book is as it was."""
    m, _ = _at_gate_closure(offset)
    before = live_snapshot(m)
    book = m.public_book(CID)
    ev = m.send(GATE_CLOSED_ENTRIES[kind]())
    assert m.now == gate_closure(CID) + offset
    assert not trades(ev) and not reports(ev)
    rj = rejects(ev)
    assert rj and rj[0].code == Code.CONTRACT_NOT_TRADING and _past_closure(rj[0].reason)
    assert live_snapshot(m) == before and m.public_book(CID) == book
    assert m.engine.contracts[CID].state.value == "TRADE"  # the close has not come yet


def test_R45_f_an_order_one_ms_before_gate_closure_still_trades() -> None:
    """R45.f, A1§4.1: the contract takes orders until its gate closure, exclusive: 1 ms
    before it the same order trades with bob's sell at 50.00."""
    m, ids = _at_gate_closure(-1)
    ev = m.send(order("alice", BUY, 5000, 10))
    assert fills(ev) == [(5000, 10)] and trades(ev)[0].sell_order == ids["sell"]


def test_A1_3_1_no_modification_after_gate_closure_but_cancellation_still() -> None:
    """A1§3.1: an order «podrá ser modificada o cancelada mientras el contrato al que se
    presentó esté en un estado que permita el envío de ofertas (TRADE)»; past its gate
    closure CID takes no order (R45.f, A1§4.1): carol's buy cannot be modified to cross
    bob's sell (neither a plain modification, the fast path, nor an IoC).  It can still be
    cancelled, as cancel-all can, until the calendar's close comes: that only takes the
    order out, as the close would at once, and frees its holds for the contracts still
    trading (refused, they kept the trader's limit and the unit's energy used). The close
    then cancels what is left with CONTRACT_CLOSE (A1§4.1) and closes round 1 (R45.g)."""
    m, ids = _at_gate_closure(0)
    before = live_snapshot(m)
    close = gate_closure(CID)
    for cmd in (modify("carol", ids["buy"], 1, 5000, 20),
                modify("carol", ids["buy"], 1, 5000, 20, exec=IOC)):
        ev = m.send(cmd, at=close)
        (rj,) = rejects(ev)
        assert rj.code == Code.CONTRACT_NOT_TRADING and _past_closure(rj.reason), cmd
        assert rj.order_id == cmd.order_id and not trades(ev) and not reports(ev)
    assert live_snapshot(m) == before
    ev = m.send(cancel("carol", ids["buy"]), at=close)
    assert [(r.order_id, r.action) for r in reports(ev)] == [(ids["buy"], "CANCELLED")]
    ev = m.send(cancel("alice", ids["hib"]), at=close + 1)
    assert [(r.order_id, r.action) for r in reports(ev)] == [(ids["hib"], "CANCELLED")]
    left = {i for k, i in ids.items() if k not in ("buy", "hib")}
    ev = m.send(CloseContracts((CID,)))
    assert {r.order_id: r.code for r in reports(ev, "CANCELLED")} == {
        i: Code.CONTRACT_CLOSE for i in left}
    assert [rc.round for rc in of(ev, RoundClosed)] == [1]


@dataclass(frozen=True)
class _Reopen:
    """A test command standing for an auction's reopening (auctions/session.py), which
    reactivates the orders it hibernated through :meth:`Engine.reactivate_orders`."""

    orders: tuple[int, ...]


def test_R46_2_7_no_reactivation_after_gate_closure() -> None:
    """R46.2.7: a reactivated order is validated as a new one, and past CID's gate closure
    no order is admitted (R45.f, A1§4.1).  The owner naming alice's hibernated sell is
    refused (CONTRACT_NOT_TRADING); "activate all", the operator's ReactivateOrders and an
    auction's reopening (Engine.reactivate_orders) leave it hibernated, for the close to
    cancel, as if the close had come in time.  The reopening still brings back the member
    of the same VALID basket in CID2 (closing an hour later): had the close come first, the
    CID member would be gone and the CID2 member reactivated alone (A1§5.2)."""
    m = Market(CID, CID2)
    s = m.sell("bob", 5100, 20)
    m.sell("dave", 5200, 20, contract=CID2)
    m.send(basket("alice", BasketType.VALID, order("alice", BUY, 5100, 10, hibernated=True),
                  order("alice", BUY, 5200, 10, contract=CID2, hibernated=True)))
    hib, mate = m.created
    m.now = gate_closure(CID) - SECOND
    for cmd in (activate("alice", (hib,)), activate("alice", (hib, mate))):
        ev = m.send(cmd, at=m.now + SECOND)
        (rj,) = rejects(ev)
        assert rj.code == Code.CONTRACT_NOT_TRADING and _past_closure(rj.reason)
        assert rj.order_id == hib and not reports(ev)
    ev = m.send(activate("alice", contract=CID), at=m.now)
    assert acked_ids(ev) == () and not reports(ev)
    ev = m.send(ReactivateOrders((CID,)), at=m.now)
    assert not reports(ev) and not trades(ev)
    e = m.engine
    assert e.orders[hib].status.value == "HIBERNATED"
    # an auction's reopening: a registered module's command calling reactivate_orders
    e.register(_Reopen, lambda cmd, ts: e.reactivate_orders(
        [e.orders[i] for i in cmd.orders], ts))
    ev = m.send(_Reopen((hib, mate)), at=m.now)
    assert hib not in {r.order_id for r in reports(ev)} and not rejects(ev)
    assert m.report(mate).status == "INACTIVE" and m.report(mate).filled == 10
    assert [(t.contract, t.price, t.qty, t.buy_order) for t in trades(ev)] == [
        (CID2, 5200, 10, mate)]
    assert e.orders[hib].status.value == "HIBERNATED"
    assert e.orders[s].remaining == 20  # bob's sell on CID never traded
    ev = m.send(CloseContracts((CID,)))
    assert [(r.order_id, r.code) for r in reports(ev, "CANCELLED")] == [
        (s, Code.CONTRACT_CLOSE), (hib, Code.CONTRACT_CLOSE)]


def test_R45_f_contract_opened_or_resumed_after_gate_closure_takes_no_order() -> None:
    """R45.f, A1§4.1: a transition applied after the gate closure (an operator's late
    OpenContracts, an auction's reopening resuming the contract it paused) is allowed, the
    contract's state is what the journaled commands made it, but no order enters it: the
    calendar's close is all that is left for it."""
    m = Market(CID, CID2, open_contracts=False)
    m.send(OpenContracts((CID2,)))
    m.send(InterruptContracts((CID2,)))
    m.send(OpenContracts((CID,)), at=gate_closure(CID))
    m.send(ResumeContracts((CID2,)), at=gate_closure(CID2) + 1)
    for cid in (CID, CID2):
        assert m.engine.contracts[cid].state.value == "TRADE"
        (rj,) = rejects(m.send(order("alice", BUY, 5000, 10, contract=cid), at=m.now))
        assert rj.code == Code.CONTRACT_NOT_TRADING and _past_closure(rj.reason)
    assert m.engine.orders == {}


# =============================================================================== R45.g


class RoundRecordingGuard(NullGuard):
    """Records the rounds the engine tells the guard are closed (the risk guard starts a
    new round there: A1§6, R49.1.4.3)."""

    def __init__(self) -> None:
        self.rounds: list[tuple[int, int]] = []

    def round_closed(self, round_no: int, ts: int) -> None:
        self.rounds.append((round_no, ts))


def test_R45_g_withdrawing_a_contract_that_never_opened_closes_no_round() -> None:
    """R45.g: «El cierre de una ronda está asociado con el cierre de negociación de un
    contrato»; R45.f: UPC is «Contrato cerrado y a la espera de ser abierto a negociación».
    Withdrawing CID3, never opened, takes it to FIN but closes no negotiation: no
    RoundClosed, no new round for the guard (so no round sync), and CID's trades before and
    after it are of the same round 1.  A close of CID (in negotiation) together with the
    never-opened CID4 closes one round, naming CID; an interrupted contract (INT: its
    negotiation interrupted) closes a round too."""
    cid4 = "PH-20270115-13"
    g = RoundRecordingGuard()
    m = Market(CID, CID2, CID3, cid4, guard=g, open_contracts=False)
    m.send(OpenContracts((CID, CID2)))
    m.sell("bob", 5000, 20)
    t1 = trades(m.send(order("alice", BUY, 5000, 10)))
    ev = m.send(CloseContracts((CID3,)))
    assert [(c.contract, c.previous, c.state) for c in of(ev, ContractStateChanged)] == [
        (CID3, "UPC", "FIN")]
    assert not of(ev, RoundClosed) and g.rounds == [] and m.engine.round == 1
    t2 = trades(m.send(order("alice", BUY, 5000, 10)))
    assert [t.round for t in t1 + t2] == [1, 1]
    ev = m.send(CloseContracts((CID, cid4)))
    (rc,) = of(ev, RoundClosed)
    assert (rc.round, rc.contracts) == (1, (CID,)) and g.rounds == [(1, m.now)]
    m.send(InterruptContracts((CID2,)))
    ev = m.send(CloseContracts((CID2,)))
    (rc,) = of(ev, RoundClosed)
    assert (rc.round, rc.contracts) == (2, (CID2,)) and m.engine.round == 3
    assert [r for r, _ in g.rounds] == [1, 2]


# =============================================================================== R46.2.12


def test_R46_2_12_an_order_of_another_agent_is_invisible() -> None:
    """R46.2.12: the book is anonymous, «identificando exclusivamente las operaciones
    realizadas por el propio agente» - alice (ACME) gets the same ORDER_UNKNOWN for bob's
    order as for an order that does not exist, and bob's order is untouched."""
    m = Market()
    s = m.sell("bob", 5000, 20)
    ghost = 9_999
    snap = live_snapshot(m)
    for make in (lambda i: cancel("alice", i),
                 lambda i: modify("alice", i, 1, 5100, 20),
                 lambda i: deactivate("alice", (i,)),
                 lambda i: activate("alice", (i,))):
        real = rejects(m.send(make(s)))
        fake = rejects(m.send(make(ghost)))
        assert [r.code for r in real] == [r.code for r in fake] == [Code.ORDER_UNKNOWN]
        assert real[0].reason.replace(str(s), "#") == fake[0].reason.replace(str(ghost), "#")
        assert "BETA" not in real[0].reason and "bob" not in real[0].reason
    assert live_snapshot(m) == snap


PUBLIC_FIELDS = {
    BookChange: ("ts", "contract", "seq", "action", "entry", "side", "price", "qty"),
    PublicTrade: ("ts", "contract", "seq", "trade_id", "price", "qty", "aggressor", "entry",
                  "left"),
}


def _busy(m: Market) -> None:
    """A bit of everything on two contracts."""
    ice = m.sell("bob", 5000, 100, peak=20, incr=5)
    m.sell("carol", 5002, 30)
    m.buy("alice", 4900, 50, peak=10)
    m.buy("dave", 5100, 55)  # three instantiations of bob's iceberg, refills at +0.05
    m.sell("carol", 5000, 15, contract=CID2)
    a = m.buy("alan", 4990, 10, contract=CID2)
    m.send(modify("alan", a, 1, 5001, 20))
    m.send(order("dave", SELL, 4900, 25, exec=IOC))
    m.send(basket("alice", BasketType.LINKED,
                  order("alice", BUY, 5100, 10, exec=FOK),
                  order("alice", BUY, 5000, 5, contract=CID2, exec=FOK)))
    m.send(InterruptContracts((CID2,)))
    m.send(ResumeContracts((CID2,)))
    m.send(activate("alan"))
    m.send(activate("carol"))
    m.send(HibernateOrders(agent="BETA"))
    m.send(activate("bob", (ice,)))
    m.send(cancel_all("alice", "agent"))
    m.buy("carol", 5200, 100)
    m.send(CloseContracts((CID2,)))


def test_R46_2_12_public_events_carry_no_user_agent_or_unit() -> None:
    """R46.2.12: «la información ... relativa a las ofertas contenidas en la lista de ofertas
    locales, se mostrará de forma anónima»; DESIGN rule 8 - BookChange and PublicTrade have
    no party field and no value that names one, and an iceberg's instantiations get
    unrelated public entry ids."""
    m = Market(CID, CID2)
    _busy(m)
    names = {n for user, (agent, unit) in TRADERS.items() for n in (user, agent, unit)}
    public = [e for e in m.log if type(e) in PUBLIC_FIELDS]
    assert len(of(public, PublicTrade)) >= 5 and len(of(public, BookChange)) >= 10
    for e in public:
        assert e._fields == PUBLIC_FIELDS[type(e)]
        assert not names & {v for v in e if isinstance(v, str)}, e
    for cid in (CID, CID2):
        entries = [b.entry for b in of(public, BookChange)
                   if b.action == "ADD" and b.contract == cid]
        assert len(entries) == len(set(entries)), cid


def test_R46_2_8_public_sequence_numbers_are_consecutive_per_contract() -> None:
    """R46.2.8: the local order list «será recalculada» on every order, modification,
    cancellation and trade; each contract's public stream (BookChange and PublicTrade) is
    numbered 1, 2, 3, ... without gap or repeat, so a subscriber detects a lost message."""
    m = Market(CID, CID2)
    _busy(m)
    for cid in (CID, CID2):
        seqs = [e.seq for e in m.log
                if isinstance(e, BookChange | PublicTrade) and e.contract == cid]
        assert seqs == list(range(1, len(seqs) + 1)), cid
        assert len(seqs) > 5


def test_R46_2_8_public_book_rebuilt_from_events_equals_the_engines_book() -> None:
    """R46.2.8: the anonymous stream is enough to keep the local order list: after each
    command, applying the BookChange events gives exactly the live entries with their
    visible quantities (an iceberg shows only its peak)."""
    m = Market(CID, CID2)
    orig_send = m.send

    def checked(cmd: Any, at: int | None = None) -> list[Any]:
        ev = orig_send(cmd, at)
        for cid in (CID, CID2):
            book = m.engine.contracts[cid].book
            truth = {o.pub: (o.side.value, o.price, o.visible)
                     for side in (BUY, SELL) for o in book.resting(side)}
            assert m.public_book(cid) == truth, (cmd, cid)
        return ev

    m.send = checked  # type: ignore[method-assign]
    _busy(m)


# =============================================================================== misc


@pytest.mark.parametrize(
    ("contract", "first", "same_day", "next_day"),
    [
        # winter (CET): local midnight of 15 Jan 2027 is 23:00 UTC on the 14th;
        # 00:30 UTC on the 15th is a new UTC day but the same local day
        ("PH-20270116-10",
         utc_ms(2027, 1, 14, 23, 30), utc_ms(2027, 1, 15, 0, 30), utc_ms(2027, 1, 15, 23)),
        # summer (CEST): local midnight of 15 Jul 2027 is 22:00 UTC on the 14th
        ("PH-20270716-10",
         utc_ms(2027, 7, 14, 21, 30), utc_ms(2027, 7, 14, 21, 59), utc_ms(2027, 7, 14, 22)),
    ],
    ids=["winter", "summer"],
)
def test_duplicate_client_order_id_rejected_same_local_day_accepted_next(
    contract: str, first: int, same_day: int, next_day: int
) -> None:
    """Protocol (docs/protocol.md): client order ids are «unique per user and local trading
    day: a repeat is refused with DUPLICATE_CLIENT_ORDER_ID» - the day is the Iberian local
    day (A1§2 local time), not the UTC day."""
    m = Market(contract, start=first - SECOND)
    assert next_day < gate_closure(contract)
    x = order("alice", BUY, 4000, 10, contract, client_order_id="X-1")
    m.send(x, at=first)
    assert rejects(m.last) == []
    ev = m.send(x, at=same_day)
    (rj,) = rejects(ev)
    assert (rj.code, rj.client_order_id) == (Code.DUPLICATE_CLIENT_ORDER_ID, "X-1")
    # another user may use the same id
    assert rejects(m.send(order("bob", BUY, 4000, 10, contract, client_order_id="X-1"),
                          at=same_day)) == []
    ev = m.send(x, at=next_day)
    assert rejects(ev) == [] and len(m.created) == 1


def test_time_going_backwards_raises_EngineMisuse() -> None:
    """DESIGN rule 2/3 and Engine.apply: instants never decrease; a command stamped earlier
    than the previous one is misuse of the API, and changes nothing."""
    m = Market()
    m.sell("bob", 5000, 10)
    h = m.engine.state_hash()
    with pytest.raises(EngineMisuse, match="backwards"):
        m.engine.apply(order("alice", BUY, 5000, 10), m.now - 1)
    assert m.engine.state_hash() == h
    ev = m.engine.apply(order("alice", BUY, 5000, 10), m.now)  # same instant is fine
    assert fills(ev) == [(5000, 10)]


def test_a_traders_mistake_never_raises() -> None:
    """DESIGN rule 5: «Rejections are events, not exceptions» - each of these mistakes
    yields a Reject event and leaves the orders as they were."""
    m = Market(CID, CID2)
    s = m.sell("bob", 5000, 100, peak=20)
    m.send(InterruptContracts((CID2,)))
    snap = live_snapshot(m)
    mistakes: list[Any] = [
        order("alice", BUY, 5000, 10, contract="PH-20270115-99"),
        order("alice", BUY, 5000, 10, contract="garbage"),
        order("alice", BUY, 5000, 10, contract=CID2),
        order("alice", BUY, 10**12, 10),
        order("alice", BUY, 5000, 10**9),
        order("alice", BUY, 5000, -5),
        order("alice", BUY, 5000, 10, peak=-1),
        order("alice", BUY, 5000, 10, peak=5, exec=IOC),
        order("alice", BUY, 5000, 10, incr=-5),
        order("alice", BUY, 5000, 100, peak=10, incr=-10**7),
        order("alice", BUY, 5000, 10, validity=GTD),
        order("alice", BUY, 5000, 10, validity=GTD, expiry=0),
        order("alice", BUY, 5000, 10, expiry=T0 + 10**9),
        order("alice", BUY, 5000, 10, exec=FOK, hibernated=True),
        basket("alice", BasketType.VALID),
        basket("alice", BasketType.LINKED, *[order("alice", BUY, 4000, 1, exec=FOK)] * 101),
        modify("alice", s, 1, 5000, 10),
        modify("bob", s, 7, 5000, 10),
        modify("bob", s, 1, 5000, 10, peak=20),
        modify("bob", 10**6, 1, 5000, 10),
        cancel("alice", s),
        cancel("bob", -1),
        cancel_all("alice", "everyone"),
        deactivate("alice", (s,)),
        activate("bob", (s,)),
        activate("alice", (12345,)),
    ]
    for cmd in mistakes:
        ev = m.send(cmd)
        assert rejects(ev), cmd
        assert not trades(ev), cmd
        assert live_snapshot(m) == snap, cmd


def test_operator_command_mistakes_are_rejections_too() -> None:
    """DESIGN rule 5: an operator naming an unknown contract, or a contract twice, gets a
    Reject and nothing changes."""
    m = Market(CID, CID2)
    for cmd in (OpenContracts(("PH-20270115-13",)), OpenContracts(()),
                CloseContracts((CID2, "nope")), InterruptContracts((CID, CID)),
                CreateContract("PH-20270230-01", T0), CreateContract(CID, T0),
                HibernateOrders()):
        ev = m.send(cmd)
        assert len(rejects(ev)) == 1, cmd
        assert not of(ev, ContractStateChanged), cmd
    assert {c.state.value for c in m.engine.contracts.values()} == {"TRADE"}
    assert m.engine.round == 1


# =============================================================================== fuzz

USERS = sorted(TRADERS)
PRICES = st.integers(4950, 5050)


@st.composite
def trader_commands(draw: st.DrawFn) -> Any:
    user = draw(st.sampled_from(USERS))
    kind = draw(st.sampled_from(["new", "new", "new", "ice", "ioc", "fok", "modify", "cancel",
                                 "deact", "act", "cancel_all", "linked"]))
    side = draw(st.sampled_from([BUY, SELL]))
    contract = draw(st.sampled_from([CID, CID2]))
    price = draw(PRICES)
    qty = draw(st.integers(-1, 60))
    oid = draw(st.integers(1, 60))
    if kind == "new":
        return order(user, side, price, qty, contract)
    if kind == "ice":
        peak = draw(st.integers(0, 25))
        incr = draw(st.integers(-10, 10))
        return order(user, side, price, qty, contract, peak=peak, incr=incr)
    if kind == "ioc":
        return order(user, side, price, qty, contract, exec=IOC)
    if kind == "fok":
        return order(user, side, price, qty, contract, exec=FOK)
    if kind == "modify":
        return modify(user, oid, draw(st.integers(0, 3)), price, qty)
    if kind == "cancel":
        return cancel(user, oid)
    if kind == "deact":
        return deactivate(user, (oid,))
    if kind == "act":
        return activate(user, draw(st.sampled_from([None, (oid,)])))
    if kind == "cancel_all":
        return cancel_all(user, draw(st.sampled_from(["user", "agent"])))
    return basket(user, BasketType.LINKED,
                  order(user, side, price, qty, CID, exec=FOK),
                  order(user, side, price, qty, CID2, exec=FOK))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(trader_commands(), min_size=1, max_size=40))
def test_R47_1_random_trader_commands_never_raise_nor_leave_the_book_crossed(
    cmds: list[Any],
) -> None:
    """R47.1 continuous matching and DESIGN rule 5: whatever traders send, the engine never
    raises, the best bid stays below the best ask, a trade always happens at a price both
    orders accept, and no one trades more than the book showed plus hidden quantities."""
    m = Market(CID, CID2)
    for cmd in cmds:
        ev = m.send(cmd)
        assert ev, cmd
        for cid in (CID, CID2):
            book = m.engine.contracts[cid].book
            bb, ba = book.best(BUY), book.best(SELL)
            assert bb is None or ba is None or bb < ba, (cid, bb, ba)
        for t in trades(ev):
            assert t.qty > 0
            assert 4950 - 10 * 60 <= t.price <= 5050 + 10 * 60


def test_engine_is_deterministic_replay_gives_the_same_events_and_state() -> None:
    """DESIGN rule 3: «Replaying a journal produces exactly the same events»."""
    runs = []
    for _ in range(2):
        m = Market(CID, CID2)
        _busy(m)
        runs.append((m.log, m.engine.state_hash()))
    assert runs[0] == runs[1]
    assert runs[0][1] != Engine().state_hash()
