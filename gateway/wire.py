"""Events to wire dictionaries: the one place where ticks become decimal strings again.

JSON carries prices and quantities as decimal strings and instants as ISO-8601 UTC
strings with milliseconds; with ``ticks=True`` the integers are kept.  Field names follow
the protocol (``quantity``, ``price_increment``) rather than the engine's short names.

This runs for every event sent to a client, so one converter function is generated per
event type (a dictionary display over the tuple's positions, no loop, no attribute lookup,
``None`` tested inline).  Prices and quantities repeat (a book has a few hundred price
levels), so their texts are kept in bounded caches: a dict lookup instead of formatting.
String enums need no conversion: they are ``str`` and encode as their value.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from engine.config import fmt_price, fmt_qty, fmt_second
from engine.events import EVENT_NAMES

_RENAME = {"qty": "quantity", "incr": "price_increment"}
_PRICES = frozenset({"price", "incr", "amount"})  # amount: cents of €, rendered like prices
_QTYS = frozenset({"qty", "visible", "hidden", "filled", "peak"})
_INSTANTS = frozenset({"ts", "expiry", "close_at", "opens_at", "closes_at", "publish_at"})

_sec_cache: list[Any] = [None, ""]
_ms_cache: list[Any] = [None, ""]


def fmt_instant(ms: int) -> str:
    """ms UTC -> ``2027-01-15T09:00:00.000Z`` (the last instant's text and the second's
    are cached: the events of a batch mostly share their millisecond)."""
    if _ms_cache[0] == ms:
        text: str = _ms_cache[1]
        return text
    sec, milli = divmod(ms, 1000)
    if _sec_cache[0] != sec:
        _sec_cache[0] = sec
        _sec_cache[1] = fmt_second(sec)
    text = f"{_sec_cache[1]}.{milli:03d}Z"
    _ms_cache[0] = ms
    _ms_cache[1] = text
    return text


_CACHE_MAX = 65_536  # texts per cache; cleared when full


def _cached(f: Callable[[int], str]) -> tuple[Callable[[int], str | None],
                                               Callable[[int], str]]:
    """``(lookup, make)``: ``lookup(v) or make(v)`` is ``f(v)``, formatted once per value
    while the cache holds it (``f`` never returns an empty text)."""
    cache: dict[int, str] = {}

    def make(v: int) -> str:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        text = cache[v] = f(v)
        return text

    return cache.get, make


_PL, _PM = _cached(fmt_price)
_QL, _QM = _cached(fmt_qty)


def price_text(ticks: int) -> str:
    """:func:`~engine.config.fmt_price`, through the cache."""
    return _PL(ticks) or _PM(ticks)


def qty_text(ticks: int) -> str:
    """:func:`~engine.config.fmt_qty`, through the cache."""
    return _QL(ticks) or _QM(ticks)

_ENV: dict[str, Any] = {"PL": _PL, "PM": _PM, "QL": _QL, "QM": _QM, "T": fmt_instant}


def _compile(cls: type, name: str, ticks: bool) -> Callable[[Any], dict[str, Any]]:
    # the event is unpacked into locals once: indexing a tuple subclass is not one of the
    # interpreter's fast paths, and a field tested for None is read twice (a report's
    # conversion 1.9 -> 1.5 µs)
    fields = cls._fields  # type: ignore[attr-defined]
    names = [f"v{i}" for i in range(len(fields))]
    items = [f"'type': {name!r}"]
    for v, f in zip(names, fields, strict=True):
        key = _RENAME.get(f, f)
        if ticks:
            expr = v
        elif f in _PRICES:
            expr = f"(None if {v} is None else PL({v}) or PM({v}))"
        elif f in _QTYS:
            expr = f"(None if {v} is None else QL({v}) or QM({v}))"
        elif f in _INSTANTS:
            expr = f"(None if {v} is None else T({v}))"
        else:
            expr = v
        items.append(f"{key!r}: {expr}")
    src = (f"def conv(e):\n    {', '.join(names)}, = e\n"
           f"    return {{{', '.join(items)}}}\n")
    ns: dict[str, Any] = dict(_ENV)
    exec(compile(src, f"<wire {name}>", "exec"), ns)
    fn: Callable[[Any], dict[str, Any]] = ns["conv"]
    return fn


_CONV: dict[tuple[type, bool], Callable[[Any], dict[str, Any]]] = {}


def event_to_wire(ev: Any, ticks: bool = False) -> dict[str, Any]:
    """One event as the protocol's dictionary: ``{"type": ..., fields...}``."""
    key = (type(ev), ticks)
    conv = _CONV.get(key)
    if conv is None:  # event types register themselves (engine, risk, ...)
        conv = _CONV[key] = _compile(type(ev), EVENT_NAMES[type(ev)], ticks)
    return conv(ev)


_MEMO: dict[int, tuple[Any, dict[str, Any]]] = {}
_MEMO_MAX = 8192


def event_to_wire_copy(ev: Any) -> dict[str, Any]:
    """:func:`event_to_wire` (JSON form) of an event that is sent more than once — an order
    report goes to the requester's answer and to the agent's private stream — converted
    once and copied (a copy is a fraction of a conversion).  Keyed by the event object
    itself (kept alive while memoised, so its id cannot be reused meanwhile)."""
    hit = _MEMO.get(id(ev))
    if hit is not None and hit[0] is ev:
        return dict(hit[1])
    msg = event_to_wire(ev)
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[id(ev)] = (ev, msg)
    return dict(msg)


def event_to_wire_last(ev: Any) -> dict[str, Any]:
    """:func:`event_to_wire` (JSON form) for the last use of an event: an order report in
    the answer to its request, which comes after the fan-out has sent it on the private
    stream (if anyone listens).  The memoised conversion itself, taken out of the memo, if
    :func:`event_to_wire_copy` made one; else a fresh conversion, not memoised: no copy in
    either case."""
    hit = _MEMO.pop(id(ev), None)
    if hit is not None and hit[0] is ev:
        return hit[1]
    return event_to_wire(ev)


# --- msgpack: the same messages with integer ticks and milliseconds (DESIGN rule 4) -------

_TICK_PRICES = frozenset({
    "price", "price_increment", "amount", "reserved", "obligations", "debtor_orders",
    "auction_bids", "sync_reduction", "requested_reductions", "requested_increases",
    "operative_limit", "used", "free"})
_TICK_QTYS = frozenset({"quantity", "visible", "hidden", "filled", "peak", "left"})
_TICK_INSTANTS = frozenset({"ts", "expiry", "close_at", "opens_at", "closes_at",
                            "publish_at", "server_time", "delivery_start", "delivery_end"})


def _dec(v: str, decimals: int) -> int:
    neg = v.startswith("-")
    whole, _, frac = v.lstrip("-").partition(".")
    scale: int = 10**decimals
    n = int(whole) * scale + int((frac + "0" * decimals)[:decimals] or "0")
    return -n if neg else n


def _ms(v: str) -> int:
    dt = datetime.fromisoformat(v)
    return int(dt.replace(microsecond=0).timestamp()) * 1000 + dt.microsecond // 1000


def to_ticks(msg: Any) -> Any:
    """A message as msgpack carries it: every price and amount in cents, every quantity in
    tenths of MWh, every instant in ms UTC (recursively; other fields unchanged)."""
    if isinstance(msg, dict):
        out = {}
        for k, v in msg.items():
            if isinstance(v, str):
                if k in _TICK_PRICES:
                    v = _dec(v, 2)
                elif k in _TICK_QTYS:
                    v = _dec(v, 1)
                elif k in _TICK_INSTANTS:
                    v = _ms(v)
            elif isinstance(v, (dict, list)):
                v = to_ticks(v)
            out[k] = v
        return out
    if isinstance(msg, list):
        return [to_ticks(x) for x in msg]
    return msg
