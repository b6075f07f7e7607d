"""The pre-trade extension point of the engine.

Every order that is about to become live (a new order, a basket member, a modification,
a reactivation) goes through :meth:`Guard.admit`, the same acceptance path in every case
(R46.2.2, R46.2.6.1, R46.2.7).  The engine then tells the guard, synchronously and within
the same command, about every quantity that executes (:meth:`Guard.filled`) and every
quantity that stops being live without executing (:meth:`Guard.released`: cancel, expiry,
hibernation, the unfilled rest of an IoC or FoK, contract close).  That is what lets
``risk/`` keep the operative limit exact at every instant (R49.1.4.3).

The quantities passed to :meth:`Guard.filled` and :meth:`Guard.released` are what
executes or stops being live: an order's ``remaining`` may be updated before or after those
calls.  Between them it is current: the order that a modification replaces (``replaces``
in :meth:`Guard.admit`) and an iceberg passed to :meth:`Guard.repriced` are live, and
their ``remaining`` is exactly their open quantity that was admitted and not yet reported
as filled or released.  ``Order.ext`` (an object) and ``Order.ext_v`` (an integer, unset
until the guard sets it) are free for the guard's per-order state; a new instantiation
(modification, reactivation) starts with ``ext`` None and goes through :meth:`Guard.admit`.
"""

from __future__ import annotations

from typing import Protocol

from engine.model import Order


class Guard(Protocol):
    def admit(
        self, order: Order, ts: int, replaces: Order | None
    ) -> tuple[str, str] | None:
        """Check ``order``; on success count its open quantity as live (and stop counting
        ``replaces``, the instantiation a modification replaces) and return None; on
        failure change nothing and return ``(code, reason)``."""
        ...

    def filled(self, order: Order, qty: int, price: int) -> None:
        """``qty`` of ``order`` executed at ``price``: one execution of a resting order, or
        the sum of an aggressive order's executions at one price level (one call per
        level, after that level's executions)."""
        ...

    def released(self, order: Order, qty: int) -> None:
        """``qty`` of ``order`` is no longer live and did not execute."""
        ...

    def repriced(self, order: Order, old_price: int) -> None:
        """An iceberg's new instantiation has a new price (A1§3.4.1)."""
        ...

    def round_closed(self, round_no: int, ts: int) -> None:
        """Round ``round_no`` closed at ``ts``; the next round starts now (R45.g)."""
        ...

    def gate(self, cmd: object, ts: int) -> tuple[str, str] | None:
        """Called before every trader command (rate limits, R48.c): a (code, reason) refuses
        the command before it does anything."""
        ...

    def digest(self) -> bytes:
        """Canonical bytes of the guard's state, folded into the engine's state hash."""
        ...
