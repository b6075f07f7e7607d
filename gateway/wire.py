"""Events to wire dictionaries: the one place where ticks become decimal strings again.

JSON carries prices and quantities as decimal strings and instants as ISO-8601 UTC
strings with milliseconds; msgpack (``ticks=True``) carries the integers unchanged.
Field names follow the protocol (``quantity``, ``price_increment``) rather than the
engine's short names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.config import fmt_price, fmt_qty
from engine.events import EVENT_NAMES

_RENAME = {"qty": "quantity", "incr": "price_increment"}
_PRICES = frozenset({"price", "incr"})
_QTYS = frozenset({"qty", "visible", "hidden", "filled", "peak"})
_INSTANTS = frozenset({"ts", "expiry", "close_at"})
_MONEY = frozenset({"amount"})  # cents of €, rendered like prices


def fmt_instant(ms: int) -> str:
    """ms UTC -> ``2027-01-15T09:00:00.000Z``."""
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def _plan(cls: type) -> list[tuple[str, str, int]]:
    plan = []
    for f in cls._fields:  # type: ignore[attr-defined]
        kind = (1 if f in _PRICES else 2 if f in _QTYS else 3 if f in _INSTANTS
                else 1 if f in _MONEY else 0)
        plan.append((f, _RENAME.get(f, f), kind))
    return plan


_PLANS: dict[type, tuple[str, list[tuple[str, str, int]]]] = {}


def event_to_wire(ev: Any, ticks: bool = False) -> dict[str, Any]:
    """One event as the protocol's dictionary: ``{"type": ..., fields...}``."""
    cls = type(ev)
    entry = _PLANS.get(cls)
    if entry is None:  # event types register themselves (engine, risk, ...)
        entry = _PLANS[cls] = (EVENT_NAMES[cls], _plan(cls))
    name, plan = entry
    d: dict[str, Any] = {"type": name}
    for (_field, key, kind), v in zip(plan, ev, strict=True):
        if v is None or ticks or kind == 0:
            d[key] = v.value if hasattr(v, "value") else v
        elif kind == 1:
            d[key] = fmt_price(v)
        elif kind == 2:
            d[key] = fmt_qty(v)
        else:
            d[key] = fmt_instant(v)
    return d
