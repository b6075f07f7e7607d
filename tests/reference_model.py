"""A naive reference model of the continuous market's order books, for property tests.

Written from the rules (``spec/continuous-market.md`` and Annex 1 of the market rules), not
from ``engine/engine.py``: it shares only the command types, the enums and the rejection
codes with the engine.  It is meant to be *obviously* correct, not fast:

* the book of one side of one contract is recomputed on every use by filtering every live
  order and sorting it by (price priority, time priority);
* matching takes the first order of that sorted list, trades once, and starts again;
* fill or kill (A1§3.3) and linked baskets (A1§5.3) are decided by running the matching on a
  deep copy of the whole model and looking at what is left: fillable means "matching would
  fill it", nothing more clever than that.

Interpretations where the rules leave a choice (and that the engine shares):

* an order's ``visible`` while hibernated is what it would show when reactivated: one peak
  (or the rest, if smaller) for an iceberg, everything otherwise;
* a reactivation is a new instantiation: revision + 1, new time priority, matches at once
  (R46.2.7); a modification is a cancellation plus a new order: revision + 1, new time
  priority, new conditions, may match at once (R46.2.6.1), and only an order that is ACTIVE
  (resting in the book) can be modified;
* an order's *arrival on the platform*, which orders a reactivation of all (R46.2.7), is the
  arrival of the order id (its first entry); a modification does not change it, so the
  orders of one basket keep their order within the basket;
* an order (active or hibernated) can be cancelled by its owner only while its contract
  is in TRADE: A1§3.1 allows modification and cancellation "while the contract is in a
  state that allows sending orders (TRADE)", and R46.2.7 lets hibernated orders be
  cancelled "at the moments the market allows cancellation"; the operator's cancellations
  (contract close, an agent's suspension) apply in any state;
* an iceberg whose price increment would take a later instantiation outside the price
  bounds is refused when it is entered (R46.2.1 applied to every instantiation);
* an aggressive iceberg rests (what is left of it) at the price it was entered with;
* a modification into a fill-or-kill that cannot fill leaves nothing: the original was
  cancelled by the modification, the new order is killed;
* a client order id is used only by an order that is accepted (unique per user and local
  day), so a basket member repeating the id of an *invalid* member is no duplicate;
* a close of contracts closes the current round only if one of them was in negotiation
  (TRADE, or INT: interrupted): R45.g ties a round's close to «el cierre de negociación de
  un contrato», and a contract withdrawn from UPC («a la espera de ser abierto a
  negociación», R45.f) had none, so its withdrawal leaves the round open (an earlier
  version of this model closed the round at any close, the withdrawal of a contract that
  never opened included; that split a round of the contracts still trading, and set off a
  round sync, for a contract that had no trade and no negotiation);
* from its gate closure (``close_at``, A1§4.1 «válidas hasta el cierre de la negociación»)
  a contract takes nothing from the traders even while the calendar's close has not come
  yet: its new orders, modifications, cancellations (A1§3.1) and the owner's activation of
  named orders are refused with CONTRACT_NOT_TRADING, as in FIN, and the reactivations
  that select orders (activate all, the operator's reactivation) leave its hibernated
  orders hibernated, for the close to cancel;
* the contract transitions are the table of R45.f whatever the command's name: "open" and
  "resume" both move UPC or INT to TRADE.

Rejections are reported as *sets of acceptable codes*: when several checks fail, the rules do
not say which one to report first, so any applicable code is right.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from engine.commands import (
    Activate,
    CancelAgentOrders,
    CancelAll,
    CancelOrder,
    CloseContracts,
    CreateContract,
    Deactivate,
    EnterBasket,
    HibernateOrders,
    InterruptContracts,
    ModifyOrder,
    NewOrder,
    OpenContracts,
    ReactivateOrders,
    ResumeContracts,
    Tick,
)
from engine.errors import Code
from engine.model import BasketType, Exec, Side, Validity

BUY, SELL = Side.BUY, Side.SELL
NON, IOC, FOK = Exec.NON, Exec.IOC, Exec.FOK
GTD = Validity.GTD

# order statuses
ACTIVE = "ACTIVE"
HIBERNATED = "HIBERNATED"
INACTIVE = "INACTIVE"

# contract states and their transitions (R45.f)
UPC, TRADE, INT, FIN = "UPC", "TRADE", "INT", "FIN"
TRANSITIONS: dict[str, set[str]] = {
    UPC: {TRADE, FIN},
    TRADE: {INT, FIN},
    INT: {TRADE, FIN},
    FIN: set(),
}

# final actions of an order
FILLED = "FILLED"
CANCELLED = "CANCELLED"
EXPIRED = "EXPIRED"
REJECTED = "REJECTED"

MADRID = ZoneInfo("Europe/Madrid")


def local_day(ts: int) -> str:
    """The Iberian local day of an instant (client order ids are unique per user and day)."""
    return datetime.fromtimestamp(ts / 1000, MADRID).date().isoformat()


@dataclass
class RefOrder:
    id: int
    contract: str
    user: str
    agent: str
    unit: str
    side: Side
    price: int  # price of the current instantiation
    remaining: int  # open quantity, visible + hidden
    peak: int  # 0 unless iceberg
    incr: int  # iceberg price increment, A1§3.4.1
    exec: Exec
    validity: Validity
    expiry: int | None
    coid: str | None
    basket: int
    arrival: int  # first arrival of the order id on the platform
    revision: int = 1
    filled: int = 0  # executed over the whole life of the order id
    visible: int = 0
    status: str = INACTIVE
    created: int = 0  # creation time of the current instantiation: time priority

    def one_peak(self) -> int:
        """What the order shows when it (re)enters the book: one peak at most (A1§3.4)."""
        if self.peak and self.remaining > self.peak:
            return self.peak
        return self.remaining


@dataclass(frozen=True)
class RefTrade:
    contract: str
    round: int
    price: int
    qty: int
    buy_order: int
    sell_order: int
    aggressor: str


@dataclass
class Outcome:
    """What one command did, as far as the comparison needs it."""

    trades: list[RefTrade] = field(default_factory=list)
    rejects: list[frozenset[str]] = field(default_factory=list)  # acceptable codes, in order
    finished: dict[int, tuple[str, str | None]] = field(default_factory=dict)


@dataclass
class RefContract:
    state: str
    close_at: int


class ReferenceModel:
    def __init__(
        self,
        price_min: int,
        price_max: int,
        qty_min: int,
        qty_max: int,
        max_basket: int,
    ) -> None:
        self.price_min = price_min
        self.price_max = price_max
        self.qty_min = qty_min
        self.qty_max = qty_max
        self.max_basket = max_basket
        self.now = 0
        self.round = 1
        self.contracts: dict[str, RefContract] = {}
        self.orders: dict[int, RefOrder] = {}  # ACTIVE and HIBERNATED orders
        self.next_id = 1
        self.next_basket = 1
        self.clock = 0  # creation times and arrivals
        self.coids: set[tuple[str, str, str]] = set()  # (local day, user, client order id)

    # ------------------------------------------------------------------ queries

    def book(self, contract: str, side: Side) -> list[RefOrder]:
        """The active orders of one side, best first: price, then creation time (R47.1)."""
        rows = [
            o for o in self.orders.values()
            if o.status == ACTIVE and o.contract == contract and o.side is side
        ]
        if side is BUY:
            rows.sort(key=lambda o: (-o.price, o.created))
        else:
            rows.sort(key=lambda o: (o.price, o.created))
        return rows

    def book_ids(self, contract: str, side: Side) -> list[int]:
        return [o.id for o in self.book(contract, side)]

    def _trading(self, contract: str) -> bool:
        """Open for the traders: in TRADE and before its gate closure (R45.f, A1§4.1)."""
        c = self.contracts[contract]
        return c.state == TRADE and self.now < c.close_at

    def _by_arrival(self, orders: list[RefOrder]) -> list[RefOrder]:
        return sorted(orders, key=lambda o: (o.arrival, o.id))

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    # ------------------------------------------------------------------ entry point

    def apply(self, cmd: object, ts: int) -> Outcome:
        assert ts >= self.now, "time went backwards"
        self.now = ts
        out = Outcome()
        # A1§4.2: a GTD order is valid until its instant; active or hibernated alike
        for o in self._by_arrival(list(self.orders.values())):
            if o.validity is GTD and o.expiry is not None and o.expiry <= ts:
                self._drop(o, out, EXPIRED, Code.GTD_EXPIRED)
        handler = {
            NewOrder: self._on_new,
            EnterBasket: self._on_basket,
            ModifyOrder: self._on_modify,
            CancelOrder: self._on_cancel,
            CancelAll: self._on_cancel_all,
            Deactivate: self._on_deactivate,
            Activate: self._on_activate,
            CreateContract: self._on_create,
            OpenContracts: self._on_open,
            CloseContracts: self._on_close,
            InterruptContracts: self._on_interrupt,
            ResumeContracts: self._on_resume,
            HibernateOrders: self._on_hibernate,
            ReactivateOrders: self._on_reactivate,
            CancelAgentOrders: self._on_cancel_agent,
            Tick: lambda cmd, out: None,
        }[type(cmd)]
        handler(cmd, out)
        return out

    # ------------------------------------------------------------------ validation

    def _order_problems(
        self,
        contract: str,
        side: Side,
        price: int,
        qty: int,
        exec: Exec,
        validity: Validity,
        expiry: int | None,
        peak: int,
        incr: int,
    ) -> list[str]:
        """Every acceptance check that fails (R46.2.1, R46.2.2, A1§3.4, A1§4)."""
        c = self.contracts.get(contract)
        if c is None:
            return [Code.CONTRACT_UNKNOWN]
        bad: list[str] = []
        if not self._trading(contract):
            bad.append(Code.CONTRACT_NOT_TRADING)
        if not self.price_min <= price <= self.price_max:
            bad.append(Code.PRICE_OUT_OF_RANGE)
        if not self.qty_min <= qty <= self.qty_max:
            bad.append(Code.QTY_OUT_OF_RANGE)
        if peak:
            if exec is not NON:
                bad.append(Code.ICEBERG_NOT_RESTING)
            if peak < self.qty_min:
                bad.append(Code.ICEBERG_PEAK_OUT_OF_RANGE)
            if peak > qty:
                bad.append(Code.ICEBERG_PEAK_ABOVE_TOTAL)
            if (side is BUY and incr > 0) or (side is SELL and incr < 0):
                bad.append(Code.ICEBERG_INCREMENT_SIGN)
            if peak > 0 and qty > 0:
                instantiations = -(-qty // peak)
                last = price + (instantiations - 1) * incr
                if not self.price_min <= last <= self.price_max:
                    bad.append(Code.ICEBERG_PRICE_OUT_OF_RANGE)
        elif incr:
            bad.append(Code.ICEBERG_INCREMENT_WITHOUT_PEAK)
        if validity is GTD:
            if expiry is None:
                bad.append(Code.GTD_EXPIRY_MISSING)
            else:
                if expiry <= self.now:
                    bad.append(Code.GTD_EXPIRY_NOT_FUTURE)
                if expiry >= c.close_at:
                    bad.append(Code.GTD_EXPIRY_AFTER_CLOSE)
        elif expiry is not None:
            bad.append(Code.EXPIRY_WITHOUT_GTD)
        return bad

    def _new_problems(self, cmd: NewOrder) -> list[str]:
        bad = self._order_problems(
            cmd.contract, cmd.side, cmd.price, cmd.qty, cmd.exec, cmd.validity, cmd.expiry,
            cmd.peak, cmd.incr,
        )
        if cmd.hibernated and cmd.exec is not NON:
            bad.append(Code.HIBERNATED_ENTRY_NOT_RESTING)
        if cmd.client_order_id is not None and (
            (local_day(self.now), cmd.user, cmd.client_order_id) in self.coids
        ):
            bad.append(Code.DUPLICATE_CLIENT_ORDER_ID)
        return bad

    # ------------------------------------------------------------------ matching

    def _match(self, inc: RefOrder, out: Outcome) -> None:
        """R47.1: trade the incoming order against the best opposite order, one trade at a
        time, at the resting order's price, until it is filled or nothing crosses.  An
        aggressive iceberg uses its whole quantity (A1§3.4).  A resting iceberg whose visible
        part is consumed comes back with a new creation time, at price + increment
        (A1§3.4, A1§3.4.1), and may trade again with the same incoming order."""
        opposite = SELL if inc.side is BUY else BUY
        while inc.remaining > 0:
            book = self.book(inc.contract, opposite)
            if not book:
                return
            r = book[0]
            if (inc.side is BUY and r.price > inc.price) or (
                inc.side is SELL and r.price < inc.price
            ):
                return
            q = min(inc.remaining, r.visible)
            buy, sell = (inc, r) if inc.side is BUY else (r, inc)
            out.trades.append(
                RefTrade(inc.contract, self.round, r.price, q, buy.id, sell.id, inc.side.value)
            )
            inc.remaining -= q
            inc.filled += q
            r.remaining -= q
            r.visible -= q
            r.filled += q
            if r.remaining == 0:
                r.status = INACTIVE
                del self.orders[r.id]
                out.finished[r.id] = (FILLED, None)
            elif r.visible == 0:
                r.visible = r.one_peak()
                r.price += r.incr
                r.created = self._tick()

    def _would_fill(self, orders: list[RefOrder]) -> bool:
        """Would every one of ``orders``, matched one after the other, fill in full?
        Found out by doing it on a copy of the whole model."""
        trial = copy.deepcopy(self)
        for o in orders:
            probe = copy.deepcopy(o)
            trial._match(probe, Outcome())
            if probe.remaining:
                return False
        return True

    def _execute(self, o: RefOrder, out: Outcome) -> None:
        """A new instantiation (new order, modification, reactivation) meets the book and
        then rests (NON), loses its rest (IoC, A1§3.2), or, for FoK, fills entirely or
        nothing at all happens (A1§3.3)."""
        if o.exec is FOK and not self._would_fill([o]):
            self._finish(o, out, CANCELLED, Code.FOK_NOT_FILLABLE)
            return
        self._match(o, out)
        if o.remaining == 0:
            self._finish(o, out, FILLED, None)
        elif o.exec is NON:
            o.status = ACTIVE
            o.visible = o.one_peak()
            o.created = self._tick()
            self.orders[o.id] = o
        else:
            self._finish(o, out, CANCELLED, Code.IOC_REMAINDER)

    def _finish(self, o: RefOrder, out: Outcome, action: str, code: str | None) -> None:
        o.status = INACTIVE
        o.remaining = 0
        o.visible = 0
        self.orders.pop(o.id, None)
        out.finished[o.id] = (action, code)

    def _drop(self, o: RefOrder, out: Outcome, action: str, code: str | None) -> None:
        """Cancel, expiry or contract close: the order is gone for good."""
        self._finish(o, out, action, code)

    def _hibernate(self, o: RefOrder) -> None:
        o.status = HIBERNATED
        o.visible = o.one_peak()

    def _reactivate(self, o: RefOrder, out: Outcome) -> None:
        """R46.2.7: validated again as a new order; whole or rejected; then it behaves as a
        new order (new time priority, may match at once)."""
        bad = self._order_problems(
            o.contract, o.side, o.price, o.remaining, o.exec, o.validity, o.expiry,
            min(o.peak, o.remaining), o.incr,
        )
        if bad:
            self._finish(o, out, REJECTED, bad[0])
            return
        del self.orders[o.id]
        o.revision += 1
        self._execute(o, out)

    # ------------------------------------------------------------------ order entry

    def _create(self, cmd: NewOrder, basket: int) -> RefOrder:
        oid = self.next_id
        self.next_id += 1
        if cmd.client_order_id is not None:
            self.coids.add((local_day(self.now), cmd.user, cmd.client_order_id))
        return RefOrder(
            id=oid, contract=cmd.contract, user=cmd.user, agent=cmd.agent, unit=cmd.unit,
            side=cmd.side, price=cmd.price, remaining=cmd.qty, peak=cmd.peak, incr=cmd.incr,
            exec=cmd.exec, validity=cmd.validity, expiry=cmd.expiry,
            coid=cmd.client_order_id, basket=basket, arrival=self._tick(),
        )

    def _enter(self, o: RefOrder, hibernated: bool, out: Outcome) -> None:
        if hibernated:
            self._hibernate(o)
            self.orders[o.id] = o
        else:
            self._execute(o, out)

    def _on_new(self, cmd: NewOrder, out: Outcome, basket: int = 0) -> None:
        bad = self._new_problems(cmd)
        if bad:
            out.rejects.append(frozenset(bad))
            return
        self._enter(self._create(cmd, basket), cmd.hibernated, out)

    def _on_basket(self, cmd: EnterBasket, out: Outcome) -> None:
        """R46.2.10, A1§5."""
        members = cmd.orders
        if not members:
            out.rejects.append(frozenset({Code.BASKET_EMPTY}))
            return
        if len(members) > self.max_basket:
            out.rejects.append(frozenset({Code.BASKET_TOO_LARGE}))
            return
        basket = self.next_basket
        self.next_basket += 1
        if cmd.basket is BasketType.NONE:
            # A1§5.1: sent together, otherwise independent
            for m in members:
                self._on_new(m, out, basket)
            return
        # A1§5.2, A1§5.3: all valid, or all rejected
        problems: list[list[str]] = []
        coids_seen: set[str] = set()
        for m in members:
            bad = self._new_problems(m)
            if cmd.basket is BasketType.LINKED and m.exec is not FOK:
                bad.append(Code.LINKED_MEMBER_NOT_FOK)
            # a client order id is used only by an order that is accepted: a member that
            # repeats the id of an earlier *valid* member is a duplicate
            if m.client_order_id is not None and not bad:
                if m.client_order_id in coids_seen:
                    bad.append(Code.DUPLICATE_CLIENT_ORDER_ID)
                coids_seen.add(m.client_order_id)
            problems.append(bad)
        if any(problems):
            for bad in problems:
                out.rejects.append(frozenset(bad) if bad else frozenset(
                    {Code.BASKET_MEMBER_INVALID}))
            out.rejects.append(frozenset({Code.BASKET_MEMBER_INVALID}))
            return
        orders = [self._create(m, basket) for m in members]
        if cmd.basket is BasketType.LINKED and not self._would_fill(orders):
            # A1§5.3: all of them are matched, or none
            for o in orders:
                self._finish(o, out, CANCELLED, Code.LINKED_NOT_FILLABLE)
            return
        for o, m in zip(orders, members, strict=True):
            self._enter(o, m.hibernated, out)

    # ------------------------------------------------------------------ modify, cancel

    def _owned(self, order_id: int, agent: str) -> RefOrder | None:
        o = self.orders.get(order_id)
        if o is None or o.agent != agent:
            return None
        return o

    def _on_modify(self, cmd: ModifyOrder, out: Outcome) -> None:
        """R46.2.6.1: the original is cancelled and a new order with the new parameters and
        conditions is entered (new time priority); checked again like a new order."""
        o = self._owned(cmd.order_id, cmd.agent)
        if o is None:
            out.rejects.append(frozenset({Code.ORDER_UNKNOWN}))
            return
        bad: list[str] = []
        if o.status != ACTIVE:
            bad.append(Code.ORDER_NOT_ACTIVE)
        if cmd.revision != o.revision:
            bad.append(Code.STALE_REVISION)
        qty, peak = cmd.qty, cmd.peak
        if qty is None:  # keep the open quantity, an iceberg's peak at most that
            qty = o.remaining
            peak = min(peak, qty)
        # R46.2.6: the validity is the order's; another one is refused
        if (cmd.validity, cmd.expiry) not in ((None, None), (o.validity, o.expiry)):
            bad.append(Code.MODIFY_CHANGES_FIXED_FIELD)
        bad += self._order_problems(
            o.contract, o.side, cmd.price, qty, cmd.exec, o.validity, o.expiry,
            peak, cmd.incr,
        )
        if bad:
            out.rejects.append(frozenset(bad))
            return
        del self.orders[o.id]
        n = RefOrder(
            id=o.id, contract=o.contract, user=o.user, agent=o.agent, unit=o.unit,
            side=o.side, price=cmd.price, remaining=qty, peak=peak, incr=cmd.incr,
            exec=cmd.exec, validity=o.validity, expiry=o.expiry, coid=o.coid,
            basket=o.basket, arrival=o.arrival, revision=o.revision + 1, filled=o.filled,
        )
        self._execute(n, out)

    def _on_cancel(self, cmd: CancelOrder, out: Outcome) -> None:
        o = self._owned(cmd.order_id, cmd.agent)
        if o is None:
            out.rejects.append(frozenset({Code.ORDER_UNKNOWN}))
            return
        if self.contracts[o.contract].state != TRADE:  # past the gate closure: still
            out.rejects.append(frozenset({Code.CONTRACT_NOT_TRADING}))  # (as the close)
            return
        self._drop(o, out, CANCELLED, None)

    def _on_cancel_all(self, cmd: CancelAll, out: Outcome) -> None:
        if cmd.scope not in ("user", "agent"):
            out.rejects.append(frozenset({Code.NOTHING_TO_DO}))
            return
        for o in self._by_arrival(list(self.orders.values())):
            if (
                o.agent == cmd.agent
                and (cmd.scope == "agent" or o.user == cmd.user)
                and (cmd.contract is None or o.contract == cmd.contract)
                and self.contracts[o.contract].state == TRADE
            ):
                self._drop(o, out, CANCELLED, None)

    # ------------------------------------------------------------------ hibernation

    def _on_deactivate(self, cmd: Deactivate, out: Outcome) -> None:
        if cmd.order_ids is None:
            chosen = [
                o for o in self.orders.values()
                if o.agent == cmd.agent and o.status == ACTIVE
                and (cmd.contract is None or o.contract == cmd.contract)
            ]
        else:
            chosen = []
            for oid in cmd.order_ids:
                o = self._owned(oid, cmd.agent)
                if o is None:
                    out.rejects.append(frozenset({Code.ORDER_UNKNOWN}))
                    return
                if o.status != ACTIVE:
                    out.rejects.append(frozenset({Code.ORDER_NOT_ACTIVE}))
                    return
                chosen.append(o)
        for o in chosen:
            self._hibernate(o)

    def _on_activate(self, cmd: Activate, out: Outcome) -> None:
        """R46.2.7: in order of arrival, each whole or rejected."""
        if cmd.order_ids is None:
            chosen = [
                o for o in self.orders.values()
                if o.agent == cmd.agent and o.status == HIBERNATED
                and self._trading(o.contract)
                and (cmd.contract is None or o.contract == cmd.contract)
            ]
        else:
            chosen = []
            for oid in cmd.order_ids:
                o = self._owned(oid, cmd.agent)
                if o is None:
                    out.rejects.append(frozenset({Code.ORDER_UNKNOWN}))
                    return
                if o.status != HIBERNATED:
                    out.rejects.append(frozenset({Code.ORDER_NOT_HIBERNATED}))
                    return
                if not self._trading(o.contract):
                    out.rejects.append(frozenset({Code.CONTRACT_NOT_TRADING}))
                    return
                if all(c.id != o.id for c in chosen):
                    chosen.append(o)
        for o in self._by_arrival(chosen):
            self._reactivate(o, out)

    def _on_hibernate(self, cmd: HibernateOrders, out: Outcome) -> None:
        if cmd.contract is None and cmd.agent is None and cmd.user is None:
            out.rejects.append(frozenset({Code.NOTHING_TO_DO}))
            return
        for o in list(self.orders.values()):
            if (
                o.status == ACTIVE
                and (cmd.contract is None or o.contract == cmd.contract)
                and (cmd.agent is None or o.agent == cmd.agent)
                and (cmd.user is None or o.user == cmd.user)
            ):
                self._hibernate(o)

    def _on_reactivate(self, cmd: ReactivateOrders, out: Outcome) -> None:
        chosen = [
            o for o in self.orders.values()
            if o.status == HIBERNATED and o.contract in cmd.contracts
            and self._trading(o.contract)
            and (cmd.agents is None or o.agent in cmd.agents)
        ]
        for o in self._by_arrival(chosen):
            self._reactivate(o, out)

    def _on_cancel_agent(self, cmd: CancelAgentOrders, out: Outcome) -> None:
        for o in self._by_arrival(list(self.orders.values())):
            if o.agent == cmd.agent:
                self._drop(o, out, CANCELLED, Code.OPERATOR_CANCEL)

    # ------------------------------------------------------------------ contracts

    def _on_create(self, cmd: CreateContract, out: Outcome) -> None:
        if cmd.contract in self.contracts:
            out.rejects.append(frozenset({Code.NOTHING_TO_DO}))
            return
        self.contracts[cmd.contract] = RefContract(UPC, cmd.close_at)

    def _transition(self, ids: tuple[str, ...], target: str, out: Outcome) -> list[str]:
        """Every listed contract moves to ``target``, or none does (R45.f)."""
        if not ids:
            out.rejects.append(frozenset({Code.NOTHING_TO_DO}))
            return []
        for cid in ids:
            c = self.contracts.get(cid)
            if c is None:
                out.rejects.append(frozenset({Code.CONTRACT_UNKNOWN}))
                return []
            if target not in TRANSITIONS[c.state]:
                out.rejects.append(frozenset({Code.ILLEGAL_TRANSITION}))
                return []
        if len(set(ids)) != len(ids):
            out.rejects.append(frozenset({Code.NOTHING_TO_DO}))
            return []
        for cid in ids:
            self.contracts[cid].state = target
        return list(ids)

    def _on_open(self, cmd: OpenContracts, out: Outcome) -> None:
        self._transition(cmd.contracts, TRADE, out)

    def _on_resume(self, cmd: ResumeContracts, out: Outcome) -> None:
        # orders stay hibernated until reactivated
        self._transition(cmd.contracts, TRADE, out)

    def _on_interrupt(self, cmd: InterruptContracts, out: Outcome) -> None:
        """R48.b, R46.2.7: the contracts' active orders are hibernated."""
        done = self._transition(cmd.contracts, INT, out)
        for o in list(self.orders.values()):
            if o.contract in done and o.status == ACTIVE:
                self._hibernate(o)

    def _on_close(self, cmd: CloseContracts, out: Outcome) -> None:
        """R45.g: closing a contract's negotiation closes the round (a contract withdrawn
        from UPC was never negotiated: no round closes for it alone); A1§4.1: every order
        left is cancelled."""
        negotiated = [cid for cid in cmd.contracts
                      if cid in self.contracts and self.contracts[cid].state != UPC]
        done = self._transition(cmd.contracts, FIN, out)
        if not done:
            return
        for o in self._by_arrival(list(self.orders.values())):
            if o.contract in done:
                self._drop(o, out, CANCELLED, Code.CONTRACT_CLOSE)
        if negotiated:
            self.round += 1
