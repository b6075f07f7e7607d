"""Baskets at reactivation: A1§5.2 (VALID) and A1§5.1 (NONE) when hibernated orders come back
(R46.2.7), through the engine's one reactivation path (``Engine._reactivate_all``): the
owner's ``Activate``, the platform's ``ReactivateOrders`` and ``Engine.reactivate_orders``
(the auctions' reopening, tested in test_auctions_reopen.py).

The rules followed (BOE-A-2018-6295; the Spanish text, seeds/003):

* A1§5.2 Valid: «Las ofertas de la cesta se enviarán a la vez, al mismo o diferentes
  contratos, pero deberán ser todas aceptadas como válidas. Si alguna de las ofertas
  incluidas en la cesta es declarada no válida, no se tendrá en cuenta el resto puesto que
  serán todas rechazadas.»
* A1§5.1 None: «... sin relación entre ellas. Unas podrán ser aceptadas y casadas y otras
  no ...»
* R46.2.7: a reactivated order is validated again «del mismo modo que si hubiesen sido
  insertadas de nuevo»; «El agente tendrá la posibilidad de volver a activar todas las
  ofertas hibernadas en una sola acción o activar individualmente sólo un subconjunto de
  ellas»; all at once «por orden de llegada ... En caso de pertenecer a una misma Cesta de
  Ofertas, la reactivación se realizará respetando el orden en dicha cesta»; an order that
  fails «será rechazada. El motivo del rechazo reflejará la razón del mismo»; «o se
  reactivan en su totalidad o serán rechazadas».

Traders as in tests/helpers.py (bob is agent BETA, carol CORP).  Prices in cents of €/MWh,
quantities in tenths of MWh.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from helpers import (
    BUY,
    CID,
    CID2,
    SELL,
    TRADERS,
    Market,
    NullGuard,
    activate,
    basket,
    cancel,
    deactivate,
    modify,
    of,
    order,
    reject_codes,
    reports,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.commands import (
    EnterBasket,
    InterruptContracts,
    NewOrder,
    ReactivateOrders,
    ResumeContracts,
)
from engine.config import EngineConfig
from engine.errors import Code, EngineMisuse
from engine.events import Ack
from engine.model import BasketType, Order

VALID, NONE = BasketType.VALID, BasketType.NONE
CAP = Code.OPERATIVE_LIMIT  # what CapGuard answers when its cap is reached
REFUSED = Code.ENERGY_MAX  # what it answers for an order id it is told to refuse


class CapGuard(NullGuard):
    """A pre-trade guard (engine/guard.py) that holds each admitted order's open quantity
    until it fills or is released, refuses an order that would take the total it holds over
    ``cap`` (OPERATIVE_LIMIT) and the order ids in ``refuse`` (ENERGY_MAX)."""

    def __init__(self, cap: int = 10**9) -> None:
        self.cap = cap
        self.refuse: set[int] = set()
        self.held: dict[int, int] = {}

    def total(self) -> int:
        return sum(self.held.values())

    def _take(self, order_id: int, qty: int) -> None:
        left = self.held[order_id] - qty
        assert left >= 0, (order_id, qty)
        if left:
            self.held[order_id] = left
        else:
            del self.held[order_id]

    def admit(self, order: Order, ts: int, replaces: Order | None) -> tuple[str, str] | None:
        if order.id in self.refuse:
            return REFUSED, f"order {order.id}: refused"
        before = self.held.get(replaces.id, 0) if replaces is not None else 0
        if self.total() - before + order.remaining > self.cap:
            return CAP, f"order {order.id}: over the cap of {self.cap}"
        assert replaces is not None or order.id not in self.held, order.id
        self.held[order.id] = order.remaining
        return None

    def filled(self, order: Order, qty: int, price: int) -> None:
        self._take(order.id, qty)

    def released(self, order: Order, qty: int) -> None:
        if qty:
            self._take(order.id, qty)

    def digest(self) -> bytes:
        return repr((self.cap, sorted(self.refuse), sorted(self.held.items()))).encode()


def outcomes(events: list[Any]) -> list[tuple[int, str, str | None]]:
    """(order, action, code) of every order report, in order."""
    return [(r.order_id, r.action, r.code) for r in reports(events)]


def status(m: Market, oid: int) -> str:
    o = m.engine.orders.get(oid)
    return "GONE" if o is None else o.status.value


def reactivate_by_owner(m: Market) -> list[Any]:
    """R46.2.7: bob reactivates all his hibernated orders in one action."""
    return m.send(activate("bob"))


def reactivate_by_platform(m: Market) -> list[Any]:
    """R46.2.7: the platform reactivates bob's orders after an auction paused both
    contracts (interrupted: the orders were hibernated; resumed: back in TRADE)."""
    return m.send(ReactivateOrders((CID, CID2), agents=("BETA",)))


def hibernate_by_owner(m: Market) -> None:
    m.send(deactivate("bob"))


def hibernate_by_platform(m: Market) -> None:
    m.send(InterruptContracts((CID, CID2)))
    m.send(ResumeContracts((CID, CID2)))


PATHS = pytest.mark.parametrize(
    ("hibernate", "reactivate"),
    [(hibernate_by_owner, reactivate_by_owner),
     (hibernate_by_platform, reactivate_by_platform)],
    ids=["Activate", "ReactivateOrders"])

Step = Callable[[Market], Any]


def three_member_basket(m: Market, kind: BasketType) -> tuple[int, int, int, int, int]:
    """x, then a basket of bob's (b1 on CID, b2 on CID2, b3 on CID), then y: all sells
    that meet nothing."""
    x = m.sell("bob", 5100, 10)
    m.send(basket("bob", kind, order("bob", SELL, 5000, 30),
                  order("bob", SELL, 5000, 30, contract=CID2),
                  order("bob", SELL, 5010, 30)))
    b1, b2, b3 = m.created
    y = m.sell("bob", 5200, 10)
    return x, b1, b2, b3, y


# ================================================================== A1§5.2 and A1§5.1


@PATHS
def test_A1_5_2_VALID_basket_whose_second_member_fails_reactivation_comes_back_not_at_all(
        hibernate: Step, reactivate: Step) -> None:
    """A1§5.2 «si alguna ... es declarada no válida, ... serán todas rechazadas»: the guard
    refuses b2 at its reactivation; b1 and b3, which alone would pass, are rejected with it
    (BASKET_MEMBER_INVALID, naming b2), b2 with its own reason (R46.2.7 «El motivo del
    rechazo reflejará la razón del mismo»); the orders around the basket come back."""
    g = CapGuard()
    m = Market(CID, CID2, guard=g)
    x, b1, b2, b3, y = three_member_basket(m, VALID)
    hibernate(m)
    assert g.total() == 0
    g.refuse.add(b2)
    ev = reactivate(m)
    assert outcomes(ev) == [
        (x, "ACTIVATED", None),
        (b1, "REJECTED", Code.BASKET_MEMBER_INVALID),
        (b2, "REJECTED", REFUSED),
        (b3, "REJECTED", Code.BASKET_MEMBER_INVALID),
        (y, "ACTIVATED", None),
    ]
    for b in (b1, b3):
        why = m.report(b).reason or ""
        assert "A1§5.2" in why and f"order {b2}" in why and REFUSED in why
    assert m.report(b2).reason == f"order {b2}: refused"
    assert {b: status(m, b) for b in (b1, b2, b3)} == dict.fromkeys((b1, b2, b3), "GONE")
    assert m.resting_ids(SELL) == [x, y] and m.resting_ids(SELL, CID2) == []
    assert g.held == {x: 10, y: 10}  # nothing of the basket stays held
    if reactivate is reactivate_by_owner:
        assert of(ev, Ack)[0].order_ids == (x, b1, b2, b3, y)


@PATHS
def test_A1_5_1_NONE_basket_whose_second_member_fails_reactivation_the_others_come_back(
        hibernate: Step, reactivate: Step) -> None:
    """A1§5.1: the orders of a NONE basket are «sin relación entre ellas»: b2 is rejected
    with its reason, b1 and b3 come back (R46.2.7: each whole or rejected)."""
    g = CapGuard()
    m = Market(CID, CID2, guard=g)
    x, b1, b2, b3, y = three_member_basket(m, NONE)
    hibernate(m)
    g.refuse.add(b2)
    ev = reactivate(m)
    assert outcomes(ev) == [
        (x, "ACTIVATED", None),
        (b1, "ACTIVATED", None),
        (b2, "REJECTED", REFUSED),
        (b3, "ACTIVATED", None),
        (y, "ACTIVATED", None),
    ]
    assert m.resting_ids(SELL) == [b1, b3, x, y]
    assert g.held == {x: 10, b1: 30, b3: 30, y: 10}


def test_A1_5_2_an_engine_check_failing_at_reactivation_rejects_the_whole_VALID_basket(
        ) -> None:
    """R46.2.7: reactivation checks the order «del mismo modo que si hubiesen sido
    insertadas de nuevo»: b2, partly filled, has 0.5 MWh open, below the minimum quantity of
    1.0 MWh (R46.2.1), so it fails; A1§5.2: b1 is rejected with it.  No guard here: the
    engine's own checks.  Its NONE twin brings b1 back."""
    cfg = EngineConfig(qty_min=10)
    for kind, b1_outcome in ((VALID, ("REJECTED", Code.BASKET_MEMBER_INVALID)),
                             (NONE, ("ACTIVATED", None))):
        m = Market(CID, CID2, config=cfg)
        m.send(basket("bob", kind, order("bob", SELL, 5000, 30),
                      order("bob", SELL, 5000, 15, contract=CID2)))
        b1, b2 = m.created
        m.buy("carol", 5000, 10, contract=CID2)  # b2 keeps 0.5 MWh
        m.send(deactivate("bob"))
        ev = m.send(activate("bob"))
        assert outcomes(ev) == [(b1, *b1_outcome), (b2, "REJECTED", Code.QTY_OUT_OF_RANGE)]


def test_A1_5_2_members_are_validated_holding_the_earlier_members_as_basket_entry_does(
        ) -> None:
    """A1§5.2 at reactivation checks the members as entering the VALID basket does: the
    guard admits each holding the members before it (engine ``_on_basket``).  Entered with
    room for both (60), hibernated, the cap lowered to 50: b1 (30) fits, b2 (30) does not
    with b1 held, so both are rejected and b1's trial admission is given back.  The NONE
    twin keeps b1.  The same basket entered now is refused the same way."""
    for kind in (VALID, NONE):
        g = CapGuard()
        m = Market(CID, CID2, guard=g)
        m.send(basket("bob", kind, order("bob", SELL, 5000, 30),
                      order("bob", SELL, 5000, 30, contract=CID2)))
        b1, b2 = m.created
        m.send(deactivate("bob"))
        g.cap = 50
        ev = m.send(activate("bob"))
        if kind is VALID:
            assert outcomes(ev) == [(b1, "REJECTED", Code.BASKET_MEMBER_INVALID),
                                    (b2, "REJECTED", CAP)]
            assert g.held == {}
            m.send(basket("bob", VALID, order("bob", SELL, 5000, 30),
                          order("bob", SELL, 5000, 30, contract=CID2)))
            assert reject_codes(m.last) == [Code.BASKET_MEMBER_INVALID, CAP,
                                            Code.BASKET_MEMBER_INVALID]
        else:
            assert outcomes(ev) == [(b1, "ACTIVATED", None), (b2, "REJECTED", CAP)]
            assert g.held == {b1: 30}


def test_A1_5_2_a_VALID_basket_that_passes_comes_back_whole_at_its_place_in_its_order(
        ) -> None:
    """R46.2.7: «por orden de llegada ...»; «respetando el orden en dicha cesta».  x arrived
    before the basket, y after; b1 was modified (it rests behind y in the book, but keeps
    its arrival and its basket): all come back x, b1, b2, y, with new priorities in that
    order."""
    g = CapGuard()
    m = Market(guard=g)
    x = m.sell("bob", 5000, 10)
    m.send(basket("bob", VALID, order("bob", SELL, 5000, 10), order("bob", SELL, 5000, 10)))
    b1, b2 = m.created
    y = m.sell("bob", 5000, 10)
    m.send(modify("bob", b1, 1, 5000, 20))
    assert m.resting_ids(SELL) == [x, b2, y, b1]
    m.send(deactivate("bob"))
    ev = m.send(activate("bob"))
    assert outcomes(ev) == [(x, "ACTIVATED", None), (b1, "ACTIVATED", None),
                            (b2, "ACTIVATED", None), (y, "ACTIVATED", None)]
    assert m.resting_ids(SELL) == [x, b1, b2, y]
    assert [m.engine.orders[o].basket_type for o in (x, b1, b2, y)] == [None, VALID, VALID,
                                                                        None]


def test_A1_5_2_a_partly_hibernated_VALID_basket_reactivates_what_sleeps_together() -> None:
    """A basket only partly hibernated.  (1) b1 was filled and has gone: b2 and b3, still
    asleep, are validated together; b3 fails, so b2 is rejected with it.  (2) Only CID2 was
    interrupted: b2 slept, b1 stayed in the book; b2 fails alone, with its own reason, and
    b1, active since its basket was accepted, is not taken away (no rule lets the platform
    take an active order but a cancellation, R46.2.6.2)."""
    g = CapGuard()
    m = Market(CID, CID2, guard=g)
    m.send(basket("bob", VALID, order("bob", SELL, 5000, 30),
                  order("bob", SELL, 5000, 30, contract=CID2),
                  order("bob", SELL, 5010, 30)))
    b1, b2, b3 = m.created
    m.buy("carol", 5000, 30)  # b1 filled
    m.send(deactivate("bob"))
    g.refuse.add(b3)
    ev = m.send(activate("bob"))
    assert outcomes(ev) == [(b2, "REJECTED", Code.BASKET_MEMBER_INVALID),
                            (b3, "REJECTED", REFUSED)]
    m = Market(CID, CID2, guard=g)
    m.send(basket("bob", VALID, order("bob", SELL, 5000, 30),
                  order("bob", SELL, 5000, 30, contract=CID2)))
    b1, b2 = m.created
    g.refuse = {b2}
    m.send(InterruptContracts((CID2,)))
    m.send(ResumeContracts((CID2,)))
    ev = m.send(ReactivateOrders((CID2,), agents=("BETA",)))
    assert outcomes(ev) == [(b2, "REJECTED", REFUSED)]
    assert status(m, b1) == "ACTIVE" and m.resting_ids(SELL) == [b1]


def test_R46_2_7_the_owner_reactivating_a_subset_of_a_VALID_basket() -> None:
    """R46.2.7 «activar individualmente sólo un subconjunto de ellas»: bob names b3 and b1
    of his sleeping VALID basket.  Exactly those are taken, validated together (A1§5.2):
    b3 fails, b1 is rejected with it; b2, not named, stays hibernated, and comes back alone
    when named."""
    g = CapGuard()
    m = Market(CID, CID2, guard=g)
    _x, b1, b2, b3, _y = three_member_basket(m, VALID)
    m.send(deactivate("bob"))
    g.refuse.add(b3)
    ev = m.send(activate("bob", (b3, b1)))
    assert outcomes(ev) == [(b1, "REJECTED", Code.BASKET_MEMBER_INVALID),
                            (b3, "REJECTED", REFUSED)]
    assert of(ev, Ack)[0].order_ids == (b1, b3)
    assert status(m, b2) == "HIBERNATED"
    ev = m.send(activate("bob", (b2,)))
    assert outcomes(ev) == [(b2, "ACTIVATED", None)]


def test_R46_2_7_the_platform_reactivating_some_contracts_takes_the_members_there() -> None:
    """ReactivateOrders names contracts: the members of a VALID basket in those contracts
    are validated together; b2 in CID2, not named (still paused by another auction, say),
    stays hibernated and is validated when its contract's turn comes."""
    g = CapGuard()
    m = Market(CID, CID2, guard=g)
    x, b1, b2, b3, y = three_member_basket(m, VALID)
    hibernate_by_platform(m)
    g.refuse.add(b3)
    ev = m.send(ReactivateOrders((CID,), agents=("BETA",)))
    assert outcomes(ev) == [(x, "ACTIVATED", None),
                            (b1, "REJECTED", Code.BASKET_MEMBER_INVALID),
                            (b3, "REJECTED", REFUSED), (y, "ACTIVATED", None)]
    assert status(m, b2) == "HIBERNATED"
    ev = m.send(ReactivateOrders((CID2,), agents=("BETA",)))
    assert outcomes(ev) == [(b2, "ACTIVATED", None)]


def test_reactivate_orders_refuses_an_order_that_is_not_hibernated_and_changes_nothing(
        ) -> None:
    """``Engine.reactivate_orders`` is for the core's own modules (the auctions): an order
    that is not a live hibernated order of this engine is a misuse of the API."""
    m = Market()
    a = m.sell("bob", 5000, 10)
    h = m.sell("bob", 5010, 10)
    m.send(deactivate("bob", (h,)))
    before = m.engine.state_hash()
    with pytest.raises(EngineMisuse):
        m.engine.reactivate_orders([m.engine.orders[h], m.engine.orders[a]], m.now)
    assert m.engine.state_hash() == before
    m.engine._out = []
    m.engine.reactivate_orders([m.engine.orders[h]], m.now)
    assert outcomes(m.engine._out) == [(h, "ACTIVATED", None)]


# ================================================================== state and replay


def test_DESIGN_3_state_hash_holds_the_basket_condition_while_a_member_lives() -> None:
    """The basket's condition is state (it decides a reactivation): two engines that differ
    only in it have different hashes while a member lives, and equal hashes once no member
    is left (nothing of the basket lingers)."""
    hashes = []
    for kind in (NONE, VALID):
        m = Market(CID, CID2)
        m.send(basket("bob", kind, order("bob", SELL, 5000, 30, hibernated=True),
                      order("bob", SELL, 5000, 30, contract=CID2, hibernated=True)))
        b1, b2 = m.created
        live = m.engine.state_hash()
        m.send(cancel("bob", b1))
        m.send(cancel("bob", b2))
        hashes.append((live, m.engine.state_hash()))
    (none_live, none_gone), (valid_live, valid_gone) = hashes
    assert none_live != valid_live
    assert none_gone == valid_gone


def test_DESIGN_3_reactivating_VALID_baskets_under_the_operative_limit_replays_byte_for_byte(
        ) -> None:
    """With the real risk guard (R49.1.4.3, operative limit): bea's VALID basket of two buys
    of 300.00 € fits her 2,000.00 € (with its NONE twin); asleep, the officer lowers her
    guarantees to 500.00 €; at reactivation the second no longer fits with the first held,
    so both are rejected and nothing of them stays reserved (A1§5.2); the NONE twin keeps
    the first.  The journal (every
    command through the journal's codec) replayed into a fresh core gives the same events,
    byte for byte, and the same state hash (DESIGN rule 3)."""
    from risk_helpers import Core, std_doc

    import gateway.core  # noqa: F401 - gives the risk commands their journal names
    from gateway.codec import decode, encode
    from gateway.wire import event_to_wire
    from risk.commands import SetGuarantees

    def members() -> tuple[NewOrder, ...]:
        return tuple(NewOrder(user="bea", agent="BUYER", unit="BUYU", contract=c, side=BUY,
                              price=5000, qty=60) for c in (CID, CID2))

    doc = std_doc(buyer_guarantees="2000.00")
    core = Core(doc, CID, CID2)
    journal: list[tuple[Any, int]] = []
    recorded: list[Any] = []

    def send(cmd: Any) -> list[Any]:
        ev = core.send(cmd)
        journal.append((cmd, core.now))
        recorded.extend(ev)
        return ev

    ids = {}
    for kind in (VALID, NONE):
        ev = send(EnterBasket(user="bea", agent="BUYER", basket=kind, orders=members()))
        ids[kind] = of(ev, Ack)[0].order_ids
    send(InterruptContracts((CID, CID2)))
    send(ResumeContracts((CID, CID2)))
    send(SetGuarantees(by="rita", agent="BUYER", amount=50000))
    ev = send(ReactivateOrders((CID, CID2), agents=("BUYER",)))
    v1, v2 = ids[VALID]
    n1, n2 = ids[NONE]
    assert outcomes(ev) == [(v1, "REJECTED", Code.BASKET_MEMBER_INVALID),
                            (v2, "REJECTED", "OPERATIVE_LIMIT"),
                            (n1, "ACTIVATED", None), (n2, "REJECTED", "OPERATIVE_LIMIT")]
    assert core.debtor("BUYER") == 30000 and core.limit("BUYER") == 20000

    fresh = Core(doc, CID, CID2)
    replayed: list[Any] = []
    for cmd, ts in journal:
        replayed += fresh.send(decode(json.loads(json.dumps(encode(cmd)))), at=ts)
    assert [orjson.dumps(event_to_wire(e)) for e in replayed] == [
        orjson.dumps(event_to_wire(e)) for e in recorded]
    assert fresh.engine.state_hash() == core.engine.state_hash()


# ================================================================== property


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_A1_5_reactivation_agrees_with_a_reference_model(data: st.DataObject) -> None:
    """Random single orders and NONE/VALID baskets of bob's, entered asleep on two contracts
    (sells that meet nothing); a cap on the quantity the guard holds and some order ids it
    refuses; then the owner reactivates all, or a subset, or the platform some contracts.
    A plain model of R46.2.7 with A1§5: in arrival order; a VALID basket's selected members
    at the first one's place, each checked with the ones before it held, all back or all
    rejected (the first failing with its reason, the others BASKET_MEMBER_INVALID); every
    other order alone.  The engine's reports, the guard's holdings and what stays asleep
    must be the model's."""
    g = CapGuard()
    m = Market(CID, CID2, guard=g)
    # (id, basket id or 0, kind, contract, qty) in arrival order
    entered: list[tuple[int, int, BasketType | None, str, int]] = []
    for _ in range(data.draw(st.integers(1, 6), label="entries")):
        n = data.draw(st.integers(0, 3), label="size")  # 0: a single order
        kind = data.draw(st.sampled_from([NONE, VALID]), label="kind") if n else None
        specs = [(data.draw(st.sampled_from([CID, CID2]), label="contract"),
                  data.draw(st.integers(1, 4), label="qty") * 10) for _ in range(max(n, 1))]
        news = [order("bob", SELL, 5000, q, contract=c, hibernated=True) for c, q in specs]
        ev = m.send(news[0] if kind is None else basket("bob", kind, *news))
        created = m.created
        assert len(created) == len(specs), ev
        bid = m.engine.orders[created[0]].basket
        entered += [(oid, bid, kind, c, q) for oid, (c, q) in zip(created, specs, strict=True)]
    g.cap = data.draw(st.integers(0, 12), label="cap") * 10
    g.refuse = set(data.draw(st.lists(st.sampled_from([e[0] for e in entered]), max_size=3),
                             label="refuse"))
    how = data.draw(st.sampled_from(["all", "subset", "contracts"]), label="how")
    if how == "all":
        chosen = [e for e in entered]
        cmd: Any = activate("bob")
    elif how == "subset":
        picked = data.draw(st.lists(st.sampled_from([e[0] for e in entered]), min_size=1,
                                    max_size=len(entered)), label="subset")
        chosen = [e for e in entered if e[0] in picked]
        cmd = activate("bob", tuple(picked))
    else:
        cids = data.draw(st.sampled_from([(CID,), (CID2,), (CID, CID2)]), label="contracts")
        chosen = [e for e in entered if e[3] in cids]
        cmd = ReactivateOrders(cids, agents=(TRADERS["bob"][0],))

    # the model
    want: list[tuple[int, str, str | None]] = []
    held: dict[int, int] = {}

    def check(oid: int, qty: int, extra: int) -> str | None:
        if oid in g.refuse:
            return REFUSED
        if sum(held.values()) + extra + qty > g.cap:
            return CAP
        return None

    done: set[int] = set()
    for oid, bid, kind, _c, qty in chosen:
        if oid in done:
            continue
        if kind is not VALID:
            code = check(oid, qty, 0)
            want.append((oid, "REJECTED", code) if code else (oid, "ACTIVATED", None))
            if code is None:
                held[oid] = qty
            done.add(oid)
            continue
        group = [e for e in chosen if e[1] == bid]
        trial, failed = 0, None
        for e in group:
            code = check(e[0], e[4], trial)
            if code is not None:
                failed = (e[0], code)
                break
            trial += e[4]
        for e in group:
            done.add(e[0])
            if failed is None:
                want.append((e[0], "ACTIVATED", None))
                held[e[0]] = e[4]
            elif e[0] == failed[0]:
                want.append((e[0], "REJECTED", failed[1]))
            else:
                want.append((e[0], "REJECTED", Code.BASKET_MEMBER_INVALID))

    ev = m.send(cmd)
    assert outcomes(ev) == want
    assert g.held == held
    asleep = {e[0] for e in entered} - done
    assert {oid for oid, o in m.engine.orders.items() if o.status.value == "HIBERNATED"} \
        == asleep
    assert {oid for oid, o in m.engine.orders.items() if o.status.value == "ACTIVE"} \
        == set(held)
    for oid, bid, kind, _c, _q in entered:
        o = m.engine.orders.get(oid)
        if o is not None:
            assert (o.basket, o.basket_type) == (bid, kind)
