"""Small fixtures for the engine's unit tests.

:class:`Market` drives one :class:`~engine.engine.Engine` with a clock that moves one second
per command (or to an explicit instant), keeps every event it produced, and rebuilds the
*public* book from the anonymous :class:`~engine.events.BookChange` stream, so that tests can
check what other traders see without looking inside the engine.

Units: prices in cents of €/MWh (4510 = 45.10 €/MWh), quantities in tenths of MWh
(125 = 12.5 MWh), instants in ms UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from engine.commands import (
    Activate,
    CancelAll,
    CancelOrder,
    CreateContract,
    Deactivate,
    EnterBasket,
    ModifyOrder,
    NewOrder,
    OpenContracts,
)
from engine.config import EngineConfig
from engine.contracts import HOUR_MS, ContractSpec
from engine.engine import Engine
from engine.events import Ack, BookChange, OrderReport, PublicTrade, Reject, Trade
from engine.guard import Guard
from engine.model import BasketType, Exec, Order, Side, Validity

BUY = Side.BUY
SELL = Side.SELL
NON = Exec.NON
IOC = Exec.IOC
FOK = Exec.FOK
GFS = Validity.GFS
GTD = Validity.GTD

SECOND = 1000


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


# Delivery 09:00-10:00 CET on Friday 2027-01-15 = 08:00-09:00 UTC.  Trading for D+1 opens at
# 22:00 local of D (A1§2) = 21:00 UTC on the 14th; gate closure one hour before delivery.
CID = "PH-20270115-10"
CID2 = "PH-20270115-11"
CID3 = "PH-20270115-12"
T0 = utc_ms(2027, 1, 14, 21)


def gate_closure(contract_id: str) -> int:
    """One hour before delivery starts (the 2018 text's gate closure)."""
    return ContractSpec.parse(contract_id).start - HOUR_MS


# user -> (agent, unit).  alice and alan are two users of the same agent.
TRADERS: dict[str, tuple[str, str]] = {
    "alice": ("ACME", "ACME01"),
    "alan": ("ACME", "ACME01"),
    "bob": ("BETA", "BETA01"),
    "carol": ("CORP", "CORP01"),
    "dave": ("DELTA", "DELTA01"),
}


def order(
    user: str,
    side: Side,
    price: int,
    qty: int,
    contract: str = CID,
    **kw: Any,
) -> NewOrder:
    agent, unit = TRADERS[user]
    return NewOrder(user=user, agent=agent, unit=unit, contract=contract, side=side,
                    price=price, qty=qty, **kw)


def basket(user: str, kind: BasketType, *orders: NewOrder, req_id: str | None = None
           ) -> EnterBasket:
    agent, _ = TRADERS[user]
    return EnterBasket(user=user, agent=agent, basket=kind, orders=tuple(orders),
                       req_id=req_id)


def modify(user: str, order_id: int, revision: int, price: int, qty: int | None, **kw: Any
           ) -> ModifyOrder:
    agent, _ = TRADERS[user]
    return ModifyOrder(user=user, agent=agent, order_id=order_id, revision=revision,
                       price=price, qty=qty, **kw)


def cancel(user: str, order_id: int) -> CancelOrder:
    return CancelOrder(user=user, agent=TRADERS[user][0], order_id=order_id)


def cancel_all(user: str, scope: str = "user", contract: str | None = None) -> CancelAll:
    return CancelAll(user=user, agent=TRADERS[user][0], scope=scope, contract=contract)


def deactivate(user: str, order_ids: tuple[int, ...] | None = None,
               contract: str | None = None) -> Deactivate:
    return Deactivate(user=user, agent=TRADERS[user][0], order_ids=order_ids,
                      contract=contract)


def activate(user: str, order_ids: tuple[int, ...] | None = None,
             contract: str | None = None) -> Activate:
    return Activate(user=user, agent=TRADERS[user][0], order_ids=order_ids,
                    contract=contract)


# ----------------------------------------------------------------------------- filters

E = TypeVar("E")


def of(events: Iterable[Any], kind: type[E]) -> list[E]:
    """The events of one type, in order."""
    return [e for e in events if isinstance(e, kind)]


def trades(events: Iterable[Any]) -> list[Trade]:
    return of(events, Trade)


def rejects(events: Iterable[Any]) -> list[Reject]:
    return of(events, Reject)


def reports(events: Iterable[Any], action: str | None = None, order_id: int | None = None
            ) -> list[OrderReport]:
    return [e for e in of(events, OrderReport)
            if (action is None or e.action == action)
            and (order_id is None or e.order_id == order_id)]


def book_changes(events: Iterable[Any], contract: str | None = None) -> list[BookChange]:
    return [e for e in of(events, BookChange) if contract is None or e.contract == contract]


def fills(events: Iterable[Any]) -> list[tuple[int, int]]:
    """(price, qty) of every trade, in order."""
    return [(t.price, t.qty) for t in trades(events)]


def acked_ids(events: Iterable[Any]) -> tuple[int, ...]:
    acks = of(events, Ack)
    assert len(acks) == 1, f"expected one Ack, got {events!r}"
    return acks[0].order_ids


class NullGuard:
    """A pre-trade guard (engine/guard.py) that admits everything and keeps nothing: the base
    of the tests' guards, which override what they check."""

    def admit(self, order: Order, ts: int, replaces: Order | None) -> tuple[str, str] | None:
        return None

    def filled(self, order: Order, qty: int, price: int) -> None:
        pass

    def released(self, order: Order, qty: int) -> None:
        pass

    def repriced(self, order: Order, old_price: int) -> None:
        pass

    def round_closed(self, round_no: int, ts: int) -> None:
        pass

    def gate(self, cmd: object, ts: int) -> tuple[str, str] | None:
        return None

    def digest(self) -> bytes:
        return b""


def reject_codes(events: Iterable[Any]) -> list[str]:
    return [r.code for r in rejects(events)]


# ----------------------------------------------------------------------------- the market


class Market:
    """An engine with open contracts, a clock, the event log and the public book."""

    def __init__(
        self,
        *contracts: str,
        config: EngineConfig | None = None,
        guard: Guard | None = None,
        start: int = T0,
        open_contracts: bool = True,
    ) -> None:
        self.engine = Engine(config, guard)
        self.now = start
        self.log: list[Any] = []
        self.last: list[Any] = []
        self.created: tuple[int, ...] = ()  # ids of the orders the last command created
        self._max_id = 0
        ids = contracts or (CID,)
        for cid in ids:
            self.send(CreateContract(cid, gate_closure(cid)), at=start)
        if open_contracts:
            self.send(OpenContracts(tuple(ids)), at=start)

    # -- driving

    def send(self, cmd: Any, at: int | None = None) -> list[Any]:
        """Apply ``cmd`` one second after the previous command, or at ``at``."""
        self.now = self.now + SECOND if at is None else at
        self.last = self.engine.apply(cmd, self.now)
        self.log.extend(self.last)
        ids = sorted({r.order_id for r in reports(self.last) if r.order_id > self._max_id})
        self.created = tuple(ids)
        if ids:
            self._max_id = ids[-1]
        return self.last

    def place(self, cmd: NewOrder, at: int | None = None) -> int:
        """Send an order that must be accepted; return its id."""
        ev = self.send(cmd, at)
        assert not rejects(ev), f"order refused: {rejects(ev)}"
        (oid,) = self.created
        return oid

    def buy(self, user: str, price: int, qty: int, contract: str = CID, **kw: Any) -> int:
        return self.place(order(user, BUY, price, qty, contract, **kw))

    def sell(self, user: str, price: int, qty: int, contract: str = CID, **kw: Any) -> int:
        return self.place(order(user, SELL, price, qty, contract, **kw))

    # -- looking

    def report(self, order_id: int) -> OrderReport:
        """The latest private report of an order (what its owner sees)."""
        rs = reports(self.log, order_id=order_id)
        assert rs, f"no report for order {order_id}"
        return rs[-1]

    def public_book(self, contract: str = CID) -> dict[int, tuple[str, int, int]]:
        """Rebuild the anonymous book from the public stream, as a subscriber would: entry ->
        (side, price, qty).  ``BookChange`` adds, updates and removes entries; a
        ``PublicTrade`` is the delta of the entry it hit, which now shows ``left``
        (docs/protocol.md)."""
        entries: dict[int, tuple[str, int, int]] = {}
        for e in self.log:
            if isinstance(e, BookChange) and e.contract == contract:
                if e.action == "REMOVE":
                    del entries[e.entry]
                else:
                    entries[e.entry] = (e.side, e.price, e.qty)
            elif isinstance(e, PublicTrade) and e.contract == contract:
                side, price, _ = entries[e.entry]
                assert price == e.price, (e, entries[e.entry])
                if e.left:
                    entries[e.entry] = (side, price, e.left)
                else:
                    del entries[e.entry]
        return entries

    def public_levels(self, side: Side, contract: str = CID) -> list[tuple[int, int]]:
        """(price, total visible qty) of one side of the public book, best first."""
        agg: dict[int, int] = {}
        for s, p, q in self.public_book(contract).values():
            if s == side:
                agg[p] = agg.get(p, 0) + q
        return sorted(agg.items(), key=lambda pq: -pq[0] if side is BUY else pq[0])

    def resting_ids(self, side: Side, contract: str = CID) -> list[int]:
        """Order ids of one side of the engine's book in priority order."""
        return [o.id for o in self.engine.contracts[contract].book.resting(side)]


def sweep(m: Market, user: str, side: Side, price: int, qty: int,
          contract: str = CID) -> list[Trade]:
    """Send an IoC that takes liquidity and return its trades."""
    return trades(m.send(order(user, side, price, qty, contract, exec=IOC)))


def counterparties(ts: Sequence[Trade], side: Side) -> list[int]:
    """The resting orders hit by a sequence of trades of an aggressor on ``side``."""
    return [t.sell_order if side is BUY else t.buy_order for t in ts]
