"""The engine's calls to its pre-trade guard keep an exact ledger (hypothesis).

The risk module (risk/guard.py) holds each order's value on its agent's operative limit
through the engine's guard calls: ``admit`` (entry, modification, reactivation), ``filled``
(each trade, at the trade price), ``released`` (cancellation, expiry, hibernation, the rest
of an IoC/FoK, a close), ``repriced`` (an iceberg refill with a price increment).  A ledger
guard that checks every call, over the streams of commands of the engine's property test
(tests/test_engine_property.py): after every command each ACTIVE order is held for exactly
its open quantity at its price, nothing else is held, and the guard's fills are the trades.
A call missed or doubled would leave the limit wrong (R49.1.4.3).
"""

from __future__ import annotations

from typing import Any

import test_engine_property as P
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from engine.engine import Engine
from engine.events import Trade


class Ledger:
    """A guard that accepts everything and checks what the engine tells it."""

    def __init__(self) -> None:
        self.held: dict[int, tuple[int, int]] = {}  # order id -> (quantity, price)
        self.fills: list[tuple[int, int, int]] = []

    def admit(self, o: Any, ts: int, replaces: Any) -> None:
        if replaces is not None:
            assert replaces.id == o.id and replaces.id in self.held, ("replaces", replaces.id)
            del self.held[replaces.id]
        assert o.id not in self.held, ("admitted twice", o.id)
        self.held[o.id] = (o.remaining, o.price)

    def _take(self, oid: int, q: int, what: str) -> None:
        assert oid in self.held, (f"{what} of an order not held", oid)
        hq, hp = self.held[oid]
        assert q <= hq, (f"{what} beyond what is held", oid, q, hq)
        if hq - q:
            self.held[oid] = (hq - q, hp)
        else:
            del self.held[oid]

    def filled(self, o: Any, q: int, price: int) -> None:
        self._take(o.id, q, "fill")
        self.fills.append((o.id, q, price))

    def released(self, o: Any, q: int) -> None:
        if q:
            self._take(o.id, q, "release")

    def repriced(self, o: Any, old: int) -> None:
        hq, hp = self.held[o.id]
        assert hp == old, ("repriced from another price", o.id, hp, old)
        self.held[o.id] = (hq, o.price)

    def round_closed(self, r: int, ts: int) -> None:
        pass

    def gate(self, cmd: Any, ts: int) -> None:
        return None

    def digest(self) -> bytes:
        return b""


class H(P.Harness):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.engine = Engine(P.CFG, self.ledger)

    def step(self, cmd: Any, dt: int = 0) -> None:
        self.ledger.fills.clear()
        super().step(cmd, dt)
        held = self.ledger.held
        active = {oid for oid, o in self.engine.orders.items() if o.status.value == "ACTIVE"}
        for oid in active:
            o = self.engine.orders[oid]
            assert held.get(oid) == (o.remaining, o.price), ("ledger", oid, held.get(oid), o)
        assert not set(held) - active, ("held for orders not active", set(held) - active)
        # each trade told to the guard for both sides, at the trade price
        trades: dict[tuple[int, int], int] = {}
        for t in self.outputs[-1]:
            if isinstance(t, Trade):
                for oid in (t.buy_order, t.sell_order):
                    trades[(oid, t.price)] = trades.get((oid, t.price), 0) + t.qty
        told: dict[tuple[int, int], int] = {}
        for oid, q, price in self.ledger.fills:
            told[(oid, price)] = told.get((oid, price), 0) + q
        assert trades == told, ("the guard's fills are not the trades", trades, told)

    def check_replay(self) -> None:  # a ledger is not replayed here
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_every_active_order_is_held_exactly_and_nothing_else(data: st.DataObject) -> None:
    h = H()
    h.setup()
    for _ in range(data.draw(P.WARM_UP)):
        cmd = data.draw(P.resting_orders(h))
        note(repr(cmd))
        h.step(cmd)
    for _ in range(data.draw(P.STEPS)):
        cmd, dt = data.draw(P.commands(h))
        note(f"{cmd!r} dt={dt}")
        h.step(cmd, dt)
