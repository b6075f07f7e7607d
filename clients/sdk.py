"""ronda's Python SDK for traders: one asyncio API over WebSocket and AMQP.

    client = await Client.connect_ws("ws://127.0.0.1:8080/ws", "ana", "ana-demo-token")
    ans = await client.place("PH-20270115-10", "SELLU1", "SELL", "45.10", "2.0")
    print(ans.order_id, ans.report.status if ans.report else None)
    await client.close()

What it does for you (docs/sdk.md is the guide):

* **Exact decimals.**  Prices and quantities go out as the protocol's decimal strings and come
  back as :class:`~decimal.Decimal`; floats are refused, and a value with more decimals than
  the tick raises :class:`ValueError` (nothing is ever rounded).
* **Typed answers.**  Trading requests return an :class:`Answer`; a refusal raises
  :class:`Rejected` (or :class:`RequestError` for a malformed request), unless the call is
  made with ``raise_on_reject=False``, which returns the :class:`Answer` with ``ok=False``,
  ``code`` and ``reason``.  Queries return pydantic models (:class:`Order`, :class:`Trade`,
  :class:`Account`, :class:`BookSnapshot`...).
* **Streams.**  :meth:`Client.subscribe` keeps a :class:`LocalBook` per book subscription
  from the snapshot and the deltas, checks every stream's ``seq``, and on a gap asks for a
  fresh snapshot by itself.  Events reach callbacks (:meth:`Client.on`) and async iterators
  (:meth:`Client.events`).
* **Reconnection.**  A lost connection is re-established with exponential back-off; the
  client logs in again, subscribes again, and re-sends every request that had no answer and
  whose repeat is harmless (:data:`RESENDABLE`); any other (a guarantee request, an auction
  bid) is not sent twice: its call raises :class:`OutcomeUnknown`.
  Every order carries a ``client_order_id`` (assigned by the SDK if the caller gave none), so
  a re-sent order is never executed twice: if the first one went through, the server refuses
  the repeat with ``DUPLICATE_CLIENT_ORDER_ID`` and the SDK answers the call with the order
  found by that id (``Answer.recovered``).  A ``reject`` with code ``OUTCOME_UNKNOWN`` (the
  server's journal failed while recording the request, docs/protocol.md) is not an answer:
  the request waits, as one without an answer, and is re-sent to the restarted server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import random
import re
import secrets
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import orjson
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from aio_pika.abc import (
        AbstractChannel,
        AbstractConnection,
        AbstractExchange,
        AbstractIncomingMessage,
        AbstractQueue,
    )
    from websockets.asyncio.client import ClientConnection

__all__ = [
    "Account",
    "Answer",
    "BookDelta",
    "BookEntry",
    "BookSnapshot",
    "BookUpdate",
    "Client",
    "ConnectionEvent",
    "ConnectionLost",
    "ContractInfo",
    "ContractStateEvent",
    "Heartbeat",
    "LocalBook",
    "LoginFailed",
    "Me",
    "Order",
    "OrderReport",
    "OrderSpec",
    "PublicTrade",
    "RawEvent",
    "RejectDetail",
    "RejectEvent",
    "Rejected",
    "RequestError",
    "RequestTimeout",
    "RiskNotice",
    "RondaError",
    "RoundClosed",
    "Settlement",
    "StreamGap",
    "Subscription",
    "Throttling",
    "ThrottlingEvent",
    "Trade",
    "wire_decimal",
    "wire_instant",
]

log = logging.getLogger("ronda.sdk")

DecimalLike = Decimal | str | int
Side = Literal["BUY", "SELL"]
ExecCondition = Literal["NON", "IOC", "FOK"]
Validity = Literal["GFS", "GTD"]
BasketKind = Literal["NONE", "VALID", "LINKED"]
InitialState = Literal["ACTIVE", "HIBERNATED"]
StreamKind = Literal["book", "trades", "states", "private"]

PRICE_DECIMALS = 2  # €/MWh, 0.01 tick
QTY_DECIMALS = 1  # MWh, 0.1 tick
DUPLICATE = "DUPLICATE_CLIENT_ORDER_ID"
OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"  # not an answer: the request may or may not be done
WS_SUBPROTOCOL = "ronda.json"
# the AMQP layout (docs/amqp.md; gateway/amqp.py is the server's side)
AMQP_REQUEST_EXCHANGE = "ronda.requests"
AMQP_REQUEST_KEY = "request"
AMQP_BCAST_PREFIX = "ronda.bcast."
_BOOK_BUFFER = 50_000  # deltas kept while a book waits for its snapshot
_MAX_COIDS = 200_000  # client_order_id -> order_id entries remembered
# a decimal string as the protocol writes it: no sign but "-", ASCII digits, no exponent,
# no underscores, no spaces (docs/protocol.md, Conventions)
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


class _Default:
    """The marker of "use the client's default" (for ``timeout``)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


# ============================================================================ conversions


def wire_decimal(value: DecimalLike, decimals: int, what: str = "value") -> str:
    """``value`` as the protocol's decimal string with at most ``decimals`` decimals.

    Accepts :class:`~decimal.Decimal`, ``int`` and ``str`` written as the protocol writes
    decimals (``-?digits(.digits)?``: no spaces, underscores, ``+`` or exponent); refuses
    ``float`` and ``bool`` (:class:`TypeError`), any other text and any value that would
    need rounding (:class:`ValueError`), naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, Decimal | str | int):
        raise TypeError(f"{what}: {type(value).__name__} is not accepted; pass a Decimal or a"
                        f" string such as {'45.10' if decimals == 2 else '12.5'!r}"
                        " (floats would not be exact)")
    if isinstance(value, str):
        # Decimal() would also take "1_0", " 45.10 ", "+1", "1e1" and other digits than
        # ASCII ones: the protocol does not, and the SDK does not guess what was meant
        if not _DECIMAL_TEXT.fullmatch(value):
            raise ValueError(f"{what}: {value[:40]!r} is not a decimal number written as"
                             f" digits with an optional '-' and decimal point (e.g."
                             f" {'45.10' if decimals == 2 else '12.5'!r})")
        d = Decimal(value)
    elif isinstance(value, Decimal):
        d = value
    else:
        d = Decimal(value)
    if not d.is_finite():
        raise ValueError(f"{what}: {value!r} is not a finite number")
    try:
        q = d.quantize(Decimal(1).scaleb(-decimals))
    except InvalidOperation:
        raise ValueError(f"{what}: {value!r} is out of range") from None
    if q != d:
        raise ValueError(f"{what}: {value} has more than {decimals} decimal"
                         f"{'s' if decimals > 1 else ''}; ronda never rounds")
    if q == 0:
        q = abs(q)  # no "-0.00"
    return format(q, "f")


def wire_price(value: DecimalLike, what: str = "price") -> str:
    return wire_decimal(value, PRICE_DECIMALS, what)


def wire_qty(value: DecimalLike, what: str = "quantity") -> str:
    return wire_decimal(value, QTY_DECIMALS, what)


def wire_instant(value: datetime) -> str:
    """A timezone-aware datetime as ``2027-01-15T09:00:00.000Z``; sub-millisecond precision
    is refused rather than rounded."""
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{value!r} has no timezone; use e.g. datetime(..., tzinfo=UTC)")
    if value.microsecond % 1000:
        raise ValueError(f"{value.isoformat()} is more precise than a millisecond;"
                         " ronda never rounds")
    u = value.astimezone(UTC)
    return u.strftime("%Y-%m-%dT%H:%M:%S.") + f"{u.microsecond // 1000:03d}Z"


def _decode(raw: str | bytes) -> Any:
    msg = orjson.loads(raw)
    if isinstance(msg, dict) and msg.get("type") == "settlement":
        # the settlement report has JSON numbers: read them as exact decimals
        msg = json.loads(raw, parse_float=Decimal)
    return msg


# msgpack carries the same objects as JSON with every price and amount in integer cents,
# every quantity in integer tenths of MWh and every instant in integer ms UTC
# (docs/protocol.md, Conventions; the server's gateway/wire.py ``to_ticks`` decides by
# field name).  The SDK reads such a message back into its JSON form, so that nothing
# downstream (models, local books, the orders cache) ever sees a tick as a value.
_TICK_PRICES = frozenset({
    "price", "price_increment", "amount", "reserved", "obligations", "debtor_orders",
    "auction_bids", "sync_reduction", "requested_reductions", "requested_increases",
    "operative_limit", "used", "free"})
_TICK_QTYS = frozenset({"quantity", "visible", "hidden", "filled", "peak", "left"})
_TICK_INSTANTS = frozenset({"ts", "expiry", "close_at", "opens_at", "closes_at",
                            "publish_at", "server_time", "delivery_start", "delivery_end"})
# fields whose values are integers in JSON as well (so never ticks): the throttling
# status's rules (``used`` there is a count of requests, not an amount)
_NO_TICKS = frozenset({"rules"})


def _ticks_text(ticks: int, decimals: int) -> str:
    """Integer ticks as the protocol's decimal string, exactly (``4510, 2 -> '45.10'``)."""
    sign = "-" if ticks < 0 else ""
    whole, frac = divmod(abs(ticks), 10**decimals)
    return f"{sign}{whole}.{frac:0{decimals}d}"


def _ms_text(ms: int) -> str:
    """Integer ms UTC as the protocol's instant string (``2027-01-15T09:00:00.000Z``)."""
    sec, milli = divmod(ms, 1000)
    return datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{milli:03d}Z"


def _from_ticks(msg: Any, floats: bool = False) -> Any:
    """A msgpack message in its JSON form: integer ticks and ms under the fields that carry
    them become decimal and instant strings (recursively; anything else is unchanged;
    with ``floats``, a float becomes the exact :class:`~decimal.Decimal` of its shortest
    text, as the settlement report's JSON numbers are read)."""
    if isinstance(msg, dict):
        out: dict[Any, Any] = {}
        for k, v in msg.items():
            if type(v) is int:
                if k in _TICK_PRICES:
                    v = _ticks_text(v, PRICE_DECIMALS)
                elif k in _TICK_QTYS:
                    v = _ticks_text(v, QTY_DECIMALS)
                elif k in _TICK_INSTANTS:
                    v = _ms_text(v)
            elif isinstance(v, dict | list) and k not in _NO_TICKS:
                v = _from_ticks(v, floats)
            elif floats and type(v) is float:
                v = Decimal(repr(v))
            out[k] = v
        return out
    if isinstance(msg, list):
        return [_from_ticks(x, floats) for x in msg]
    if floats and type(msg) is float:
        return Decimal(repr(msg))
    return msg


def _decode_msgpack(raw: bytes) -> Any:
    """A msgpack body (AMQP ``application/msgpack``) in its JSON form (:func:`_from_ticks`)."""
    import msgpack

    msg = msgpack.unpackb(raw, raw=False)
    settlement = isinstance(msg, dict) and msg.get("type") == "settlement"
    return _from_ticks(msg, floats=settlement)


# ============================================================================ models


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class _StreamModel(_Model):
    stream: str | None = None
    seq: int | None = None


class OrderReport(_StreamModel):
    """Every change of one of your orders (``order_report``)."""

    ts: datetime
    order_id: int
    client_order_id: str | None = None
    req_id: str | None = None
    contract: str
    user: str
    agent: str
    unit: str
    side: str
    action: str  # ADDED MODIFIED PARTIALLY_FILLED FILLED REFILLED HIBERNATED ACTIVATED ...
    status: str  # ACTIVE HIBERNATED INACTIVE
    price: Decimal
    visible: Decimal
    hidden: Decimal
    filled: Decimal
    exec: str
    validity: str
    expiry: datetime | None = None
    peak: Decimal
    price_increment: Decimal
    revision: int
    basket: int  # the basket's id, 0 outside one
    basket_type: str | None = None  # its condition: NONE VALID LINKED
    code: str | None = None
    reason: str | None = None

    @property
    def remaining(self) -> Decimal:
        """What is still open (visible + hidden)."""
        return self.visible + self.hidden

    @property
    def live(self) -> bool:
        return self.status != "INACTIVE"


class Order(_Model):
    """A live order (``query_orders``, or :attr:`Client.orders` kept from the private
    stream)."""

    order_id: int
    client_order_id: str | None = None
    contract: str
    user: str
    agent: str
    unit: str
    side: str
    status: str
    price: Decimal
    visible: Decimal
    hidden: Decimal
    filled: Decimal
    exec: str
    validity: str
    expiry: datetime | None = None
    peak: Decimal
    price_increment: Decimal
    revision: int
    basket: int  # the basket's id, 0 outside one
    basket_type: str | None = None  # its condition: NONE VALID LINKED
    active: bool

    @property
    def remaining(self) -> Decimal:
        return self.visible + self.hidden

    @classmethod
    def from_report(cls, r: OrderReport) -> Order:
        return cls(order_id=r.order_id, client_order_id=r.client_order_id,
                   contract=r.contract, user=r.user, agent=r.agent, unit=r.unit, side=r.side,
                   status=r.status, price=r.price, visible=r.visible, hidden=r.hidden,
                   filled=r.filled, exec=r.exec, validity=r.validity, expiry=r.expiry,
                   peak=r.peak, price_increment=r.price_increment, revision=r.revision,
                   basket=r.basket, basket_type=r.basket_type, active=r.status == "ACTIVE")


class Trade(_StreamModel):
    """Your side of a trade (``trade`` on the private stream, ``query_trades``)."""

    ts: datetime
    trade_id: int
    contract: str
    round: int
    side: str
    price: Decimal
    quantity: Decimal
    aggressor: str
    order_id: int
    user: str
    agent: str
    unit: str


class PublicTrade(_StreamModel):
    """A trade as everyone sees it (``trades:<contract>`` stream): no parties."""

    ts: datetime
    contract: str
    trade_id: int
    price: Decimal
    quantity: Decimal
    aggressor: str


class BookEntry(_Model):
    """One entry of the anonymous order list: a public id, never the order id."""

    entry: int
    price: Decimal
    quantity: Decimal


class BookSnapshot(_Model):
    """The first ``depth`` entries per side (``query_book``, and the first message of a book
    subscription)."""

    contract: str
    seq: int
    bids: tuple[BookEntry, ...] = ()
    asks: tuple[BookEntry, ...] = ()
    conflated: bool = False


class BookDelta(_Model):
    """One change of the depth-limited order list (``ADD``/``UPDATE``/``REMOVE``)."""

    contract: str
    seq: int
    ts: datetime | None = None
    action: str
    entry: int
    side: str
    price: Decimal
    quantity: Decimal


class ContractInfo(_Model):
    contract: str
    state: str
    close_at: datetime
    delivery_start: datetime
    delivery_end: datetime
    reason: str | None = None


class PendingGuaranteeRequest(_Model):
    id: int
    increase: bool
    amount: Decimal


class Account(_StreamModel):
    """The guarantee account (``query_account``; ``account`` events after every change)."""

    agent: str
    reserved: Decimal
    obligations: Decimal
    debtor_orders: Decimal
    auction_bids: Decimal = Decimal(0)  # included in debtor_orders (R39.4.3.4)
    sync_reduction: Decimal
    requested_reductions: Decimal
    requested_increases: Decimal
    operative_limit: Decimal
    used: Decimal
    free: Decimal
    suspended: bool
    pending_requests: tuple[PendingGuaranteeRequest, ...] = ()


class ThrottlingRule(_Model):
    window_ms: int
    max: int
    used: int
    resets_at: int  # ms UTC


class Throttling(_Model):
    user: str
    state: str = "OK"
    rules: tuple[ThrottlingRule, ...] = ()
    hibernate_on_breach: bool = False


class ThrottlingEvent(_StreamModel):
    """The rate-limit state of a user changed (OK, WARNING, BREACHED)."""

    ts: datetime
    user: str
    state: str
    counts: tuple[int, ...]
    limits: tuple[int, ...]
    windows_ms: tuple[int, ...]


class RiskNotice(_StreamModel):
    ts: datetime
    kind: str
    agent: str | None = None
    by: str
    request_id: int | None = None
    amount: Decimal | None = None
    detail: str


class ContractStateEvent(_StreamModel):
    ts: datetime
    contract: str
    state: str
    previous: str | None = None
    close_at: datetime
    reason: str | None = None


class RoundClosed(_StreamModel):
    ts: datetime
    round: int
    contracts: tuple[str, ...]


class RejectEvent(_StreamModel):
    """A refusal on the private stream (also answered to the request itself)."""

    ts: datetime
    user: str
    agent: str
    req_id: str | None = None
    client_order_id: str | None = None
    order_id: int | None = None
    code: str
    reason: str


class Me(_Model):
    user: str
    agent: str
    roles: tuple[str, ...]


class Settlement(_Model):
    """``query_settlement``: entries, totals, balance history and programs of a delivery
    day (docs/settlement.md); amounts in € as exact decimals."""

    agent: str
    day: str
    currency: str = "EUR"
    entries: tuple[dict[str, Any], ...] = ()
    totals: dict[str, Any] = {}
    balance_history: tuple[dict[str, Any], ...] = ()
    programs: tuple[dict[str, Any], ...] = ()

    @property
    def net(self) -> Decimal:
        return Decimal(str(self.totals.get("net", "0")))


class RejectDetail(_Model):
    """Why one order of a basket was refused."""

    client_order_id: str | None = None
    code: str
    reason: str


class Subscription(_Model):
    stream: str
    seq: int | None = None


class Answer(_Model):
    """The one answer to a trading request.

    ``ok`` is True for an ``ack``.  For a refusal (``type`` ``reject``, or ``error`` for a
    malformed request) ``code`` and ``reason`` say why, ``details`` name the refused members
    of a basket.  ``resent`` is True when the request had to be sent again after a
    reconnection; ``recovered`` when the repeat was refused as a duplicate and the answer
    was rebuilt from the orders found by their ``client_order_id`` (``recovered_orders``
    are those still live; ``unresolved`` the ids whose order could not be found any more).
    """

    type: Literal["ack", "reject", "error"]
    ok: bool
    kind: str | None = None
    req_id: str | None = None
    order_ids: tuple[int, ...] = ()
    reports: tuple[OrderReport, ...] = ()
    rejects: tuple[RejectDetail, ...] = ()  # members refused in an accepted NONE basket
    code: str | None = None
    reason: str | None = None
    field: str | None = None  # the offending field of a malformed request
    details: tuple[RejectDetail, ...] = ()
    resent: bool = False
    recovered: bool = False
    recovered_orders: tuple[Order, ...] = ()
    unresolved: tuple[str, ...] = ()

    @property
    def order_id(self) -> int | None:
        """The (first) order the request created or touched."""
        return self.order_ids[0] if self.order_ids else None

    @property
    def report(self) -> OrderReport | None:
        """The last report of the first order: its state after the request."""
        first = self.order_id
        mine = [r for r in self.reports if r.order_id == first]
        return mine[-1] if mine else (self.reports[-1] if self.reports else None)

    @property
    def status(self) -> str | None:
        r = self.report
        if r is not None:
            return r.status
        if self.recovered_orders:
            return self.recovered_orders[0].status
        return None

    def exception(self) -> Rejected:
        if self.type == "error":
            return RequestError(self.code or "INVALID_FIELD", self.reason or "", self.field,
                                self)
        return Rejected(self.code or "REJECTED", self.reason or "", self.details, self)


# ---------------------------------------------------------------------------- client events


@dataclass(frozen=True)
class BookUpdate:
    """A local book changed: ``delta`` is the change applied, or None for a (re)snapshot.
    ``book`` is the live :class:`LocalBook` (read it now, or copy it with
    :meth:`LocalBook.snapshot`)."""

    contract: str
    seq: int
    book: LocalBook
    delta: BookDelta | None = None

    @property
    def is_snapshot(self) -> bool:
        return self.delta is None


@dataclass(frozen=True)
class StreamGap:
    """A stream skipped sequence numbers (messages were lost); books re-snapshot by
    themselves, the private stream refreshes :attr:`Client.orders`."""

    stream: str
    expected: int
    received: int


@dataclass(frozen=True)
class ConnectionEvent:
    """``connected``, ``disconnected``, ``reconnected``, ``resync`` (AMQP: the gateway
    reconnected to the broker) or ``closed``."""

    state: str
    reason: str = ""


@dataclass(frozen=True)
class Heartbeat:
    server_time: datetime


@dataclass(frozen=True)
class RawEvent:
    """A message of a type this SDK does not model."""

    type: str
    data: dict[str, Any]


_EVENT_MODELS: dict[str, type[_Model]] = {
    "order_report": OrderReport,
    "trade": Trade,
    "public_trade": PublicTrade,
    "reject": RejectEvent,
    "account": Account,
    "risk_notice": RiskNotice,
    "throttling": ThrottlingEvent,
    "contract_state": ContractStateEvent,
    "round_closed": RoundClosed,
}


def _parse_event(msg: dict[str, Any]) -> Any:
    typ = str(msg.get("type"))
    model = _EVENT_MODELS.get(typ)
    if model is None:
        return RawEvent(typ, msg)
    try:
        return model.model_validate(msg)
    except ValueError:
        log.warning("cannot read a %s message: %s", typ, msg)
        return RawEvent(typ, msg)


# ============================================================================ errors


class RondaError(Exception):
    """Base of the SDK's errors."""


class Rejected(RondaError):
    """The platform refused the request: stable ``code``, readable ``reason``; ``details``
    name the refused members of a basket."""

    def __init__(self, code: str, reason: str, details: Sequence[RejectDetail] = (),
                 answer: Answer | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.details = tuple(details)
        self.answer = answer


class RequestError(Rejected):
    """The request was malformed (an ``error`` answer): ``field`` is its dotted path."""

    def __init__(self, code: str, reason: str, field: str | None = None,
                 answer: Answer | None = None) -> None:
        super().__init__(code, f"{field}: {reason}" if field else reason, (), answer)
        self.reason = reason
        self.field = field


class LoginFailed(Rejected):
    pass


class ConnectionLost(RondaError):
    """The client is closed, or the connection is lost and the client does not reconnect."""


class OutcomeUnknown(ConnectionLost):
    """A request was sent and the connection dropped (or the server's journal failed)
    before its answer, and whether it was executed cannot be told: a guarantee request or
    an auction bid (never sent again), or a modification or reactivation whose repeat was
    refused in a way its own first execution could explain (the order gone, or moved on:
    it may have traded).  Look before sending it again (``query_orders`` and
    ``query_trades`` for an order, ``query_account`` for a guarantee request, the
    auction's bids for a bid)."""


class RequestTimeout(RondaError, TimeoutError):
    """No answer in time.  The request may still have been executed: look the order up by
    its ``client_order_id``."""


# ============================================================================ order specs


@dataclass(frozen=True)
class OrderSpec:
    """One order: for :meth:`Client.place` and the members of :meth:`Client.basket`."""

    contract: str
    unit: str
    side: Side
    price: DecimalLike
    quantity: DecimalLike
    exec: ExecCondition = "NON"
    validity: Validity = "GFS"
    expiry: datetime | None = None
    peak: DecimalLike | None = None  # iceberg: the visible peak
    price_increment: DecimalLike | None = None  # iceberg: price change per refill
    state: InitialState = "ACTIVE"
    client_order_id: str | None = None

    def to_wire(self, client_order_id: str) -> dict[str, Any]:
        if self.side not in ("BUY", "SELL"):
            raise ValueError(f"side must be BUY or SELL, got {self.side!r}")
        out: dict[str, Any] = {
            "contract": self.contract, "unit": self.unit, "side": self.side,
            "price": wire_price(self.price), "quantity": wire_qty(self.quantity),
        }
        if self.exec != "NON":
            out["exec"] = self.exec
        if self.validity != "GFS":
            out["validity"] = self.validity
        if self.expiry is not None:
            out["expiry"] = wire_instant(self.expiry)
        if self.peak is not None:
            ice: dict[str, Any] = {"peak": wire_qty(self.peak, "peak")}
            if self.price_increment is not None:
                ice["price_increment"] = wire_price(self.price_increment, "price_increment")
            out["iceberg"] = ice
        elif self.price_increment is not None:
            raise ValueError("price_increment needs an iceberg peak")
        if self.state != "ACTIVE":
            out["state"] = self.state
        out["client_order_id"] = client_order_id
        return out


# ============================================================================ local book


class LocalBook:
    """The anonymous order list of one contract, kept from a snapshot and the deltas of the
    ``book:<contract>`` stream.

    It holds what the server sends: the first ``depth`` entries per side (entries enter and
    leave the view as others come and go).  ``synced`` is False from a detected gap (or a
    reconnection) until the next snapshot; meanwhile deltas are buffered and replayed on top
    of the snapshot.  ``gaps`` counts the gaps detected, ``snapshots`` the snapshots applied.
    """

    def __init__(self, contract: str) -> None:
        self.contract = contract
        self.seq = 0
        self.synced = False
        self.gaps = 0
        self.snapshots = 0
        self.conflations = 0
        self._entries: dict[int, tuple[str, Decimal, Decimal]] = {}
        self._buffer: deque[BookDelta] = deque(maxlen=_BOOK_BUFFER)
        self._synced_event = asyncio.Event()

    # ------------------------------------------------------------------ views

    def _side(self, side: str) -> list[BookEntry]:
        rows = [(p, e, q) for e, (s, p, q) in self._entries.items() if s == side]
        rows.sort(key=(lambda r: (-r[0], r[1])) if side == "BUY" else (lambda r: (r[0], r[1])))
        return [BookEntry(entry=e, price=p, quantity=q) for p, e, q in rows]

    def bids(self) -> list[BookEntry]:
        """Buy entries, best (highest price, then oldest) first."""
        return self._side("BUY")

    def asks(self) -> list[BookEntry]:
        """Sell entries, best (lowest price, then oldest) first."""
        return self._side("SELL")

    def best_bid(self) -> BookEntry | None:
        b = self.bids()
        return b[0] if b else None

    def best_ask(self) -> BookEntry | None:
        a = self.asks()
        return a[0] if a else None

    def mid(self) -> Decimal | None:
        b, a = self.best_bid(), self.best_ask()
        if b is None or a is None:
            return None
        return (b.price + a.price) / 2

    def snapshot(self) -> BookSnapshot:
        """A frozen copy of the book as it is now."""
        return BookSnapshot(contract=self.contract, seq=self.seq, bids=tuple(self.bids()),
                            asks=tuple(self.asks()))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (f"LocalBook({self.contract}, seq={self.seq}, synced={self.synced},"
                f" bids={len(self.bids())}, asks={len(self.asks())})")

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Wait until the book holds a snapshot (and the deltas after it)."""
        await asyncio.wait_for(self._synced_event.wait(), timeout)

    # ------------------------------------------------------------------ updates

    def _set_synced(self, on: bool) -> None:
        self.synced = on
        if on:
            self._synced_event.set()
        else:
            self._synced_event.clear()

    def _reset(self) -> None:
        """Wait for a new snapshot (a new connection: sequences start again)."""
        self._set_synced(False)
        self._buffer.clear()

    def _apply_snapshot(self, snap: BookSnapshot) -> str:
        """'ignored' (older than what we have), 'synced', or 'gap' (a buffered delta after
        the snapshot is missing)."""
        if self.synced and snap.seq < self.seq:
            return "ignored"
        self._entries = {e.entry: ("BUY", e.price, e.quantity) for e in snap.bids}
        self._entries.update({e.entry: ("SELL", e.price, e.quantity) for e in snap.asks})
        self.seq = snap.seq
        self.snapshots += 1
        if snap.conflated:
            self.conflations += 1
        self._set_synced(True)
        pending = sorted(self._buffer, key=lambda d: d.seq)
        self._buffer.clear()
        for i, d in enumerate(pending):
            if self._apply_delta(d) == "gap":
                self._buffer.extend(pending[i + 1:])
                return "gap"
        return "synced"

    def _apply_delta(self, d: BookDelta) -> str:
        """'applied', 'stale' (already in the snapshot), 'buffered' (waiting for a
        snapshot) or 'gap'."""
        if not self.synced:
            self._buffer.append(d)
            return "buffered"
        if d.seq <= self.seq:
            return "stale"
        if d.seq != self.seq + 1:
            self.gaps += 1
            self._set_synced(False)
            self._buffer.clear()
            self._buffer.append(d)
            return "gap"
        if d.action == "REMOVE":
            self._entries.pop(d.entry, None)
        else:  # ADD, UPDATE
            self._entries[d.entry] = (d.side, d.price, d.quantity)
        self.seq = d.seq
        return "applied"


# ============================================================================ event streams

E = TypeVar("E")
_END = object()


class EventStream(Generic[E]):
    """Events of the given types, as an async iterator (``async for ev in stream``).

    Bounded: when a slow consumer lets ``maxsize`` events pile up, the oldest are dropped
    and counted in :attr:`dropped`.  Ends when closed or when the client closes."""

    def __init__(self, client: Client, types: tuple[type[Any], ...], maxsize: int) -> None:
        self._client = client
        self.types = types
        self._queue: deque[Any] = deque()
        self._maxsize = maxsize
        self._wake = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def _offer(self, ev: Any) -> None:
        if self.closed:
            return
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(ev)
        self._wake.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._client._streams.discard(self)
            self._wake.set()

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        item: E = self._queue.popleft()
        return item

    async def get(self, timeout: float | None = None) -> E:
        """The next event (:class:`TimeoutError` after ``timeout`` seconds)."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except StopAsyncIteration:
            raise ConnectionLost("the event stream is closed") from None

    def pending(self) -> int:
        return len(self._queue)

    async def __aenter__(self) -> EventStream[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# ============================================================================ transports

OnMessage = Callable[[Any], None]
OnClose = Callable[[str], None]


class _Connection(ABC):
    @abstractmethod
    async def send(self, msg: dict[str, Any]) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


class _Connector(ABC):
    kind: str
    user: str
    resets_streams: bool  # a new connection starts every stream afresh

    @abstractmethod
    async def connect(self, on_message: OnMessage, on_close: OnClose) -> _Connection: ...

    @abstractmethod
    def login_message(self) -> dict[str, Any]: ...


class _WsConnection(_Connection):
    def __init__(self, ws: ClientConnection, on_message: OnMessage, on_close: OnClose) -> None:
        self.ws = ws
        self._on_message = on_message
        self._on_close = on_close
        self._reader = asyncio.get_running_loop().create_task(self._read(),
                                                              name="ronda-sdk-ws-reader")

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        reason = "connection closed"
        try:
            async for raw in self.ws:
                try:
                    msg = _decode(raw)
                except (ValueError, TypeError) as exc:
                    log.warning("undecodable message from the server: %s", exc)
                    continue
                self._on_message(msg)
        except ConnectionClosed as exc:
            reason = str(exc)
        except asyncio.CancelledError:
            reason = "closed"
            raise
        except Exception as exc:  # a bug in a handler must not go unnoticed
            log.exception("WebSocket reader failed")
            reason = f"reader failed: {exc!r}"
        finally:
            code = self.ws.close_code
            if code is not None:
                reason = f"closed ({code}: {self.ws.close_reason or 'no reason'})"
            self._on_close(reason)

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(msg).decode())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2)
        if not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


class _WsConnector(_Connector):
    kind = "ws"
    resets_streams = True

    def __init__(self, url: str, user: str, token: str | None, on_disconnect: str,
                 ssl: Any = None, open_timeout: float = 10.0) -> None:
        self.url = url
        self.user = user
        self.token = token
        self.on_disconnect = on_disconnect
        self.ssl = ssl
        self.open_timeout = open_timeout

    async def connect(self, on_message: OnMessage, on_close: OnClose) -> _Connection:
        from websockets.asyncio.client import connect
        from websockets.typing import Subprotocol

        kw: dict[str, Any] = {}
        if self.ssl is not None:
            kw["ssl"] = self.ssl
        ws = await connect(self.url, subprotocols=[Subprotocol(WS_SUBPROTOCOL)],
                           open_timeout=self.open_timeout, ping_interval=20, ping_timeout=20,
                           max_size=64 * 1024 * 1024, compression=None, **kw)
        return _WsConnection(ws, on_message, on_close)

    def login_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "login", "user": self.user}
        if self.token is not None:
            msg["token"] = self.token
        if self.on_disconnect != "none":
            msg["on_disconnect"] = self.on_disconnect
        return msg


class _AmqpConnection(_Connection):
    def __init__(self, conn: AbstractConnection, channel: AbstractChannel,
                 exchange: AbstractExchange, reply: AbstractQueue, user: str,
                 on_message: OnMessage, on_close: OnClose) -> None:
        self.conn = conn
        self.channel = channel
        self.exchange = exchange
        self.reply = reply
        self.user = user
        self._on_message = on_message
        self._on_close = on_close
        self._closed = False
        conn.close_callbacks.add(self._closing)
        channel.close_callbacks.add(self._closing)

    def _closing(self, _sender: Any = None, exc: BaseException | None = None) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(f"AMQP connection lost ({exc!r})" if exc else "AMQP connection closed")

    @staticmethod
    def _body(m: AbstractIncomingMessage) -> Any:
        """An answer or a broadcast message as a JSON-form dict.  The SDK asks in JSON, but
        a msgpack message can still come: on the user's broadcast queue, the answer to
        another process's msgpack request sent without ``reply_to`` (docs/amqp.md); its
        integer ticks and ms are read back as decimals and instants, never as values."""
        ctype = (m.content_type or "").split(";")[0].strip().lower()
        if ctype == "application/msgpack":
            try:
                return _decode_msgpack(m.body)
            except ImportError as exc:  # msgpack is optional for the SDK
                raise ValueError(f"a msgpack message, and msgpack is not installed ({exc})"
                                 ) from exc
            except Exception as exc:  # msgpack's own errors (ExtraData, FormatError...)
                raise ValueError(f"undecodable msgpack: {exc!r}") from exc
        return _decode(m.body)

    async def on_reply(self, m: AbstractIncomingMessage) -> None:
        try:
            msg = self._body(m)
        except (ValueError, TypeError) as exc:
            log.warning("undecodable AMQP reply: %s", exc)
            return
        if isinstance(msg, dict) and not msg.get("req_id") and m.correlation_id:
            msg["req_id"] = m.correlation_id  # answers made before the session read it
        self._on_message(msg)

    async def on_broadcast(self, m: AbstractIncomingMessage) -> None:
        """Each message is acknowledged once handled, in order.  One delivered again after a
        drop (``redelivered``): a stream message is known by its ``seq`` and dropped if it
        was handled; anything else (a session's ``DISCONNECTED``, a heartbeat, a ``resync``)
        has no ``seq`` to tell a repeat by and belongs to the connection that was lost, so
        it is not handled again (a repeated ``DISCONNECTED`` would end the new session)."""
        try:
            try:
                msg = self._body(m)
            except (ValueError, TypeError) as exc:
                log.warning("undecodable AMQP broadcast message: %s", exc)
                return
            if isinstance(msg, list):  # a private stream's batch, in sequence (docs/amqp.md)
                for item in msg:
                    self._on_message(item)
                return
            if m.redelivered and not (isinstance(msg, dict) and "seq" in msg
                                      and "stream" in msg):
                return
            self._on_message(msg)
        finally:  # handled (or never will be): the broker may forget it
            with contextlib.suppress(Exception):
                await m.ack()

    async def send(self, msg: dict[str, Any]) -> None:
        import aio_pika

        rid = str(msg["req_id"])
        m = aio_pika.Message(orjson.dumps(msg), content_type="application/json",
                             message_id=rid, correlation_id=rid, reply_to=self.reply.name,
                             user_id=self.user, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await self.exchange.publish(m, AMQP_REQUEST_KEY, timeout=10)

    async def close(self) -> None:
        self._closed = True  # an intended close is not a loss
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.conn.close(), 3)


BCAST_PREFETCH = 1000  # broadcast messages delivered and not yet acknowledged, at most


class _AmqpConnector(_Connector):
    kind = "amqp"
    resets_streams = False  # the broadcast queue outlives the connection

    def __init__(self, url: str, user: str, purge: bool) -> None:
        self.url = url
        self.user = user
        self.purge = purge
        self._first = True

    async def connect(self, on_message: OnMessage, on_close: OnClose) -> _Connection:
        import aio_pika

        conn = await aio_pika.connect(
            self.url, timeout=10,
            client_properties={"connection_name": f"ronda-sdk {self.user}"})
        try:
            ch = await conn.channel()  # publisher confirms: a publish returns once routed
            reply = await ch.declare_queue(exclusive=True, auto_delete=True)
            exchange = await ch.get_exchange(AMQP_REQUEST_EXCHANGE, ensure=False)
            try:  # passive: the gateway declares every user's queue
                bcast = await ch.get_queue(AMQP_BCAST_PREFIX + self.user, ensure=True)
            except Exception as exc:
                raise ConnectionLost(
                    f"no broadcast queue {AMQP_BCAST_PREFIX + self.user!r} on the broker: is"
                    f" the ronda gateway connected to it? ({exc})") from exc
            if self._first and self.purge:
                # a new client starts from queries: what a previous run left is stale
                await bcast.purge()
            c = _AmqpConnection(conn, ch, exchange, reply, self.user, on_message, on_close)
            await reply.consume(c.on_reply, no_ack=True)
            # the broadcast queue with acknowledgements: a message delivered but not yet
            # handled when the connection drops is delivered again on the next one (the
            # stream's seq drops what was handled already); at most BCAST_PREFETCH unacked
            await ch.set_qos(prefetch_count=BCAST_PREFETCH)
            await bcast.consume(c.on_broadcast)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        self._first = False
        return c

    def login_message(self) -> dict[str, Any]:
        return {"type": "login"}  # the broker authenticated the user


# ============================================================================ the client


@dataclass(eq=False)
class _Pending:
    req_id: str
    msg: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]
    internal: bool = False
    sent_gen: int | None = None  # the connection it was last sent on
    resent: bool = False
    on_answer: Callable[[dict[str, Any]], None] | None = None  # run in the stream's order
    # order reports of the private stream that carry this request's req_id: what it did
    # (seen before a reconnection, they tell that the first sending was executed)
    reports: list[OrderReport] = field(default_factory=list)


# What the SDK sends again after a reconnection (or an OUTCOME_UNKNOWN) when the first
# sending had no answer: the requests whose repeat is harmless. Orders carry a
# client_order_id (a repeat is refused DUPLICATE_CLIENT_ORDER_ID), a modification its
# revision; a cancellation, (de)activation or cancel_all finds its work done; queries,
# subscriptions and settings only read or set. Anything else (a guarantee request, an
# auction bid, an operator's command, a type this SDK does not know) has no key that makes
# a repeat harmless: the call raises OutcomeUnknown instead of doing it twice.
RESENDABLE = frozenset({
    "login", "logout", "heartbeat", "subscribe", "unsubscribe",
    "order_entry", "basket_entry", "order_modify", "order_cancel", "order_deactivate",
    "order_activate", "cancel_all", "set_breach_action", "query_me", "query_contracts",
    "query_book", "query_orders", "query_trades", "query_public_trades", "query_account",
    "query_throttling", "query_audit", "query_settlement", "query_agents",
    "set_reactivation", "auction_bid_cancel", "set_guarantees", "decide_guarantee_request",
    "suspend_agent", "reinstate_agent", "set_rate_limits",
})


# Refusals of a re-sent request that its own first sending may have caused: the order was
# cancelled, hibernated, reactivated or modified by it (and may have traded since, or at
# once).  A re-sent modification or reactivation so refused is looked into, or raises
# OutcomeUnknown: it is never reported as refused when it may have been executed.
_OWN_DOING: dict[str, frozenset[str]] = {
    "order_modify": frozenset({"ORDER_UNKNOWN", "ORDER_NOT_ACTIVE", "STALE_REVISION"}),
    "order_activate": frozenset({"ORDER_UNKNOWN", "ORDER_NOT_HIBERNATED"}),
    "order_cancel": frozenset({"ORDER_UNKNOWN"}),
    "order_deactivate": frozenset({"ORDER_UNKNOWN", "ORDER_NOT_ACTIVE"}),
}


# a login answered so is tried again (with back-off), not taken as refused credentials:
# the server is stopping or the user's ending session is still closing (UNAVAILABLE), or
# the user is throttled for a while (THROTTLED)
_LOGIN_LATER = frozenset({"UNAVAILABLE", "THROTTLED"})


def _is_answer(msg: dict[str, Any]) -> bool:
    """An answer carries the request's req_id and is not a stream message (private order
    reports and rejections carry the req_id too, but also a ``stream``)."""
    if "stream" not in msg:
        return True
    typ = msg.get("type")
    return typ == "ack" or (typ == "book" and msg.get("snapshot") is True)


def _answer_from_wire(raw: dict[str, Any], resent: bool = False) -> Answer:
    typ = raw.get("type")
    rid = raw.get("req_id") if isinstance(raw.get("req_id"), str) else None
    if typ == "ack":
        return Answer(type="ack", ok=True, kind=raw.get("kind"), req_id=rid,
                      order_ids=tuple(raw.get("order_ids") or ()),
                      reports=tuple(OrderReport.model_validate(r)
                                    for r in raw.get("reports") or ()),
                      rejects=tuple(RejectDetail.model_validate(r)
                                    for r in raw.get("rejects") or ()),
                      resent=resent)
    if typ in ("reject", "error"):
        oid = raw.get("order_id")
        return Answer(type=typ, ok=False, kind=raw.get("kind"), req_id=rid,
                      order_ids=(oid,) if isinstance(oid, int) else (),
                      code=str(raw.get("code") or "REJECTED"), reason=str(raw.get("reason", "")),
                      field=raw.get("field"),
                      details=tuple(RejectDetail.model_validate(d)
                                    for d in raw.get("details") or ()),
                      resent=resent)
    return Answer(type="error", ok=False, req_id=rid, code="UNEXPECTED_ANSWER",
                  reason=f"unexpected answer {str(raw)[:300]}", resent=resent)


class Client:
    """A trader's connection to ronda (WebSocket or AMQP), with reconnection, local books,
    a live-orders cache and event delivery.  Create it with :meth:`connect_ws` or
    :meth:`connect_amqp`; close it with :meth:`close` (or ``async with``)."""

    def __init__(self, connector: _Connector, *, request_timeout: float | None = 30.0,
                 reconnect: bool = True, backoff_min: float = 0.1, backoff_max: float = 5.0,
                 idle_timeout: float = 15.0, private: bool = True) -> None:
        self.user = connector.user
        self.agent = ""
        self.roles: tuple[str, ...] = ()
        self.transport = connector.kind
        self.request_timeout = request_timeout
        self.reconnect = reconnect
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.idle_timeout = idle_timeout
        self.books: dict[str, LocalBook] = {}
        #: live orders of the agent (kept from the private stream when subscribed)
        self.orders: dict[int, Order] = {}
        self.server_time: datetime | None = None
        self.stats: Counter[str] = Counter()
        #: test hook: return False to drop a book delta as if it were lost in transit
        self.delta_filter: Callable[[BookDelta], bool] | None = None
        self._connector = connector
        self._private = private
        self._conn: _Connection | None = None
        self._gen = 0
        self._pending: dict[str, _Pending] = {}
        self._subs: dict[str, dict[str, Any]] = {}  # stream name -> subscribe message
        self._seqs: dict[str, int] = {}
        self._coids: dict[str, int] = {}  # client_order_id -> order_id, from reports
        self._listeners: list[tuple[tuple[type[Any], ...], Callable[[Any], object]]] = []
        self._streams: set[EventStream[Any]] = set()
        self._waiters: set[asyncio.Future[Any]] = set()
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._closing = False
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resyncing: set[str] = set()
        self._refreshing = False
        self._last_rx = 0.0
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(5)
        self._coid_prefix = f"sdk-{secrets.token_hex(5)}-"

    # ------------------------------------------------------------------ connecting

    @classmethod
    async def connect_ws(cls, url: str, user: str, token: str | None = None, *,
                         on_disconnect: Literal["none", "hibernate"] = "none",
                         ssl: Any = None, request_timeout: float | None = 30.0,
                         reconnect: bool = True, backoff_min: float = 0.1,
                         backoff_max: float = 5.0, idle_timeout: float = 15.0,
                         private: bool = True) -> Client:
        """Connect to ``ws://host:port/ws`` (or ``wss://``) and log in.

        ``on_disconnect="hibernate"`` asks the server to hibernate the user's orders when
        the connection drops (they stay hibernated after a reconnection: reactivate them with
        :meth:`activate`).  ``private`` subscribes the agent's private stream and keeps
        :attr:`orders`.  Raises :class:`LoginFailed` for bad credentials, ``OSError`` if
        the server cannot be reached."""
        client = cls(_WsConnector(url, user, token, on_disconnect, ssl),
                     request_timeout=request_timeout, reconnect=reconnect,
                     backoff_min=backoff_min, backoff_max=backoff_max,
                     idle_timeout=idle_timeout, private=private)
        await client._start()
        return client

    @classmethod
    async def connect_amqp(cls, amqp_url: str, user: str | None = None, *,
                           purge: bool = True, request_timeout: float | None = 30.0,
                           reconnect: bool = True, backoff_min: float = 0.1,
                           backoff_max: float = 5.0, idle_timeout: float = 15.0,
                           private: bool = True) -> Client:
        """Connect to RabbitMQ as ``user`` (default: the URL's user name; the broker
        authenticates it and vouches for it in every request's ``user_id``).

        The user's broadcast queue ``ronda.bcast.<user>`` is consumed; with ``purge`` (the
        default) what an earlier run left in it is discarded first (state comes from
        queries).  It also receives the answers to the user's requests sent without
        ``reply_to`` (by any process); msgpack ones are read back from their integer ticks
        into decimals and instants, like every msgpack body (:func:`_from_ticks`)."""
        if user is None:
            user = unquote(urlsplit(amqp_url).username or "")
            if not user:
                raise ValueError("no user: give it, or put it in the URL")
        client = cls(_AmqpConnector(amqp_url, user, purge),
                     request_timeout=request_timeout, reconnect=reconnect,
                     backoff_min=backoff_min, backoff_max=backoff_max,
                     idle_timeout=idle_timeout, private=private)
        await client._start()
        return client

    async def _start(self) -> None:
        await self._open()
        self._spawn(self._supervise(), "ronda-sdk-supervisor")
        self._spawn(self._watchdog(), "ronda-sdk-watchdog")
        self._emit(ConnectionEvent("connected"))

    async def _open(self, again: bool = False) -> None:
        """Connect and establish the session (login, subscriptions, re-sends); ``again``
        after a loss."""
        self._gen += 1
        gen = self._gen
        self._lost.clear()
        conn = await self._connector.connect(
            lambda m: self._dispatch(m, gen), lambda r: self._connection_lost(gen, r))
        try:
            await self._establish(conn, gen, again)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise

    async def _establish(self, conn: _Connection, gen: int, again: bool) -> None:
        self._conn = conn
        self._ready.clear()
        self._last_rx = asyncio.get_running_loop().time()
        if self._connector.resets_streams:
            self._seqs.clear()
            for b in self.books.values():
                b._reset()
        ans = await self._internal(self._connector.login_message(), timeout=self._timeout())
        if ans.get("type") != "ack":
            a = _answer_from_wire(ans)
            if a.code in _LOGIN_LATER:  # not a refusal of the user: try again later
                raise ConnectionLost(f"login not served now: {a.code}: {a.reason}")
            raise LoginFailed(a.code or "LOGIN_FAILED", a.reason or "login refused", (), a)
        first = not self.agent
        self.agent = str(ans.get("agent", ""))
        self.roles = tuple(ans.get("roles") or ())
        if first and self._private and self.agent:
            self._subs.setdefault(f"private:{self.agent}", {"type": "subscribe",
                                                           "stream": "private"})
        for name, sub in list(self._subs.items()):
            res = await self._internal(sub, timeout=self._timeout())
            if res.get("type") != "ack":
                log.warning("re-subscribing %s refused: %s", name, res)
        if f"private:{self.agent}" in self._subs:
            await self._refresh_orders(force=True)
        if again:
            # counted before what was waiting is sent: its answers can come back while the
            # last of it is still being sent (a publisher confirm), and who reads them may
            # read the counter
            self.stats["reconnects"] += 1
        # send what is waiting: requests not answered before the disconnect, then new ones
        while True:
            unsent = [p for p in self._pending.values()
                      if not p.internal and p.sent_gen != gen and not p.future.done()]
            if not unsent:
                break
            for p in unsent:
                if p.sent_gen is not None and p.msg.get("type") not in RESENDABLE:
                    # it may have been executed: say so instead of doing it twice
                    self.stats["outcome_unknown_raised"] += 1
                    self._pending.pop(p.req_id, None)
                    p.future.set_exception(OutcomeUnknown(
                        f"{p.msg.get('type')} {p.req_id} was sent but not answered before "
                        f"the connection dropped: it may have been executed; not sent "
                        f"again (look before sending it again)"))
                    continue
                if p.sent_gen is not None:
                    p.resent = True
                    self.stats["resent"] += 1
                    log.info("re-sending unanswered request %s (%s)", p.req_id,
                             p.msg.get("type"))
                p.sent_gen = gen
                await conn.send(p.msg)
        self._ready.set()

    def _timeout(self) -> float:
        return self.request_timeout if self.request_timeout is not None else 30.0

    def _connection_lost(self, gen: int, reason: str) -> None:
        if gen != self._gen:
            return
        for p in list(self._pending.values()):
            if p.internal and not p.future.done():
                p.future.set_exception(ConnectionLost(reason))
        if self._closing:  # e.g. the server closing after our logout
            return
        self._ready.clear()
        self._lost_reason = reason
        if self._connector.resets_streams:  # a new connection will bring new snapshots
            for b in self.books.values():
                b._reset()
        self._lost.set()

    async def _supervise(self) -> None:
        while True:
            await self._lost.wait()
            if self._closing:
                return
            reason = self._lost_reason
            self._lost.clear()
            log.warning("%s: connection lost (%s)", self.user, reason)
            self.stats["disconnects"] += 1
            self._emit(ConnectionEvent("disconnected", reason))
            if not self.reconnect:
                await self._shutdown(ConnectionLost(f"connection lost: {reason}"))
                return
            await self._reconnect_loop()
            if self._closed:
                return

    async def _reconnect_loop(self) -> None:
        delay = self.backoff_min
        while not self._closing:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff_max)
            if self._closing:
                return
            self.stats["reconnect_attempts"] += 1
            try:
                await self._open(again=True)
            except LoginFailed as exc:
                log.error("%s: login refused on reconnection: %s", self.user, exc)
                await self._shutdown(exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("%s: reconnection failed (%s); again in %.2f s", self.user, exc, delay)
                continue
            log.warning("%s: reconnected", self.user)
            self._emit(ConnectionEvent("reconnected"))
            return

    async def _watchdog(self) -> None:
        """Liveness: the server sends heartbeats every few seconds.  After ``idle_timeout``
        of silence the client probes with a heartbeat request; if that gets no answer either,
        a WebSocket is dropped and re-established (over AMQP the broker holds the requests,
        so the client only warns)."""
        loop = asyncio.get_running_loop()
        period = max(0.05, min(1.0, self.idle_timeout / 4))
        while not self._closing:
            await asyncio.sleep(period)
            if not self._ready.is_set() or loop.time() - self._last_rx < self.idle_timeout:
                continue
            gen, conn = self._gen, self._conn
            self.stats["probes"] += 1
            try:
                await self._internal({"type": "heartbeat"}, timeout=self.idle_timeout)
                continue
            except asyncio.CancelledError:
                raise
            except (TimeoutError, RondaError):
                pass
            if gen != self._gen or self._closing or conn is None:
                continue
            if self.transport == "ws":
                self.stats["idle_disconnects"] += 1
                log.warning("%s: no message for %.1f s; reconnecting", self.user,
                            loop.time() - self._last_rx)
                await conn.close()
            else:
                log.warning("%s: the server has been silent for %.1f s", self.user,
                            loop.time() - self._last_rx)

    def _spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        if asyncio.iscoroutine(coro):
            # a task of the coroutine itself: cancelled before its first step (the client
            # closing), the coroutine is closed with it, not left never awaited
            t = asyncio.get_running_loop().create_task(coro, name=name)
        else:  # any other awaitable (a callback's future, say)
            async def run() -> Any:
                return await coro

            t = asyncio.get_running_loop().create_task(run(), name=name)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("SDK task %s failed", t.get_name(), exc_info=t.exception())

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Log out (WebSocket) or unsubscribe the public streams (AMQP, whose session the
        server keeps for the user), close the connection, fail what is still pending with
        :class:`ConnectionLost` and end the event streams."""
        if self._closing:
            return
        ready = self._ready.is_set() and self._conn is not None
        self._closing = True  # from now on a lost connection is not re-established
        if ready:
            with contextlib.suppress(Exception):
                if self.transport == "ws":
                    await self._internal({"type": "logout"}, timeout=2)
                else:
                    for name, sub in list(self._subs.items()):
                        if not name.startswith("private:"):
                            await self._internal({**sub, "type": "unsubscribe"}, timeout=2)
        await self._shutdown(ConnectionLost("the client is closed"))

    async def drop_connection(self) -> None:
        """Close the transport as a network failure would (no logout): the client then
        reconnects by itself.  For tests and drills."""
        conn = self._conn
        if conn is not None:
            await conn.close()
            self._connection_lost(self._gen, "dropped by drop_connection()")

    async def _session_ended(self, gen: int, reason: str) -> None:
        """AMQP: the server ended the user's session (a slow consumer, say): it unbound
        the public streams and stopped the private one, and the user's next request opens
        a new session.  For the streams that is a lost connection: the books wait for new
        snapshots, and the client reconnects as after any loss (log in, subscribe again,
        reload the orders, re-send what has no answer)."""
        conn = self._conn
        if gen != self._gen or conn is None or self._closing:
            return
        self.stats["sessions_ended"] += 1
        for b in self.books.values():
            b._reset()
        why = f"the server ended the session: {reason}" if reason else \
            "the server ended the session"
        await conn.close()
        self._connection_lost(gen, why)

    async def _shutdown(self, exc: RondaError) -> None:
        if self._closed:
            return
        self._closing = True
        self._ready.clear()
        self._lost.set()  # wakes the supervisor, which sees _closing
        current = asyncio.current_task()
        for t in list(self._tasks):
            if t is not current:
                t.cancel()
        if self._conn is not None:
            await self._conn.close()
        for p in list(self._pending.values()):
            if not p.future.done():
                p.future.set_exception(exc)
        self._closed = True
        self._emit(ConnectionEvent("closed", str(exc)))
        for s in list(self._streams):
            s.close()
        for w in list(self._waiters):
            if not w.done():
                w.set_exception(ConnectionLost("the client is closed"))

    @property
    def connected(self) -> bool:
        """Logged in and ready (False while reconnecting)."""
        return self._ready.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests

    def _next_req_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def new_client_order_id(self) -> str:
        """A fresh client order id (unique per user and day: random prefix + counter)."""
        return f"{self._coid_prefix}{next(self._ids)}"

    async def _internal(self, msg: dict[str, Any], timeout: float | None,
                        on_answer: Callable[[dict[str, Any]], None] | None = None
                        ) -> dict[str, Any]:
        """A request of the SDK itself on the current connection (never re-sent).
        ``on_answer`` runs as the answer arrives, before any later stream message."""
        conn = self._conn
        if conn is None:
            raise ConnectionLost("not connected")
        rid = self._next_req_id()
        full = {**msg, "req_id": rid}
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(rid, full, fut, internal=True, sent_gen=self._gen,
                                      on_answer=on_answer)
        try:
            try:
                await conn.send(full)
            except Exception as exc:  # the connection is going away
                raise ConnectionLost(f"cannot send: {exc}") from exc
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(rid, None)

    async def _request(self, msg: dict[str, Any], timeout: Any = DEFAULT
                       ) -> tuple[dict[str, Any], _Pending]:
        if self._closing:
            raise ConnectionLost("the client is closed")
        rid = self._next_req_id()
        full = {**msg, "req_id": rid}
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        p = _Pending(rid, full, fut)
        self._pending[rid] = p
        t = self.request_timeout if timeout is DEFAULT else timeout
        try:
            if self._ready.is_set() and self._conn is not None:
                p.sent_gen = self._gen
                try:
                    await self._conn.send(full)
                except Exception as exc:  # re-sent after the reconnection
                    log.info("sending %s failed (%s); it waits for the reconnection", rid, exc)
            self.stats["requests"] += 1
            try:
                raw = await asyncio.wait_for(fut, t)
            except TimeoutError:
                raise RequestTimeout(f"no answer to {msg.get('type')} {rid} in {t} s") from None
            return raw, p
        finally:
            self._pending.pop(rid, None)

    async def request(self, msg: dict[str, Any], *, timeout: Any = DEFAULT) -> dict[str, Any]:
        """Send any protocol message (docs/protocol.md) and return its raw answer (a dict),
        with the SDK's reconnection and re-sending.  For requests this SDK has no method
        for (``guarantee_request``, ``set_breach_action``, officers' commands...)."""
        raw, _ = await self._request(dict(msg), timeout)
        return raw

    async def _trading(self, msg: dict[str, Any], raise_on_reject: bool, timeout: Any
                       ) -> Answer:
        raw, p = await self._request(msg, timeout)
        ans = _answer_from_wire(raw, resent=p.resent)
        if p.resent:
            ans = await self._after_resend(msg, ans, p, timeout)
        if not ans.ok:
            self.stats["rejected"] += 1
            if raise_on_reject:
                raise ans.exception()
        return ans

    async def _after_resend(self, msg: dict[str, Any], ans: Answer, p: _Pending,
                            timeout: Any) -> Answer:
        """A re-sent request's answer, read with the knowledge that the first sending may
        have been executed."""
        typ = msg["type"]
        if typ == "order_entry":
            if not ans.ok and ans.code == DUPLICATE:
                return await self._recovered(ans, [str(msg["client_order_id"])], (), timeout)
        elif typ == "basket_entry":
            coids = [str(o["client_order_id"]) for o in msg["orders"]]
            if not ans.ok:
                dup = {d.client_order_id for d in ans.details if d.code == DUPLICATE}
                if dup and dup == set(coids):
                    return await self._recovered(ans, coids, (), timeout)
            else:
                dups = [r.client_order_id for r in ans.rejects
                        if r.code == DUPLICATE and r.client_order_id]
                if dups:
                    rest = tuple(r for r in ans.rejects if r.code != DUPLICATE)
                    rec = await self._recovered(ans, [c for c in coids if c in dups], rest,
                                                timeout)
                    return rec.model_copy(update={
                        "order_ids": ans.order_ids + rec.order_ids, "reports": ans.reports})
        elif not ans.ok and ans.code in _OWN_DOING.get(typ, ()):
            # the refusal may be the first sending's own doing (it cancelled, hibernated,
            # modified or reactivated the order, which then traded...)
            if p.reports:  # its reports were seen before the reconnection: it was done
                self.stats["recovered"] += 1
                return Answer(type="ack", ok=True, kind=typ, req_id=ans.req_id,
                              order_ids=tuple(dict.fromkeys(r.order_id for r in p.reports)),
                              reports=tuple(p.reports), resent=True, recovered=True)
            if typ == "order_modify":
                return await self._modify_outcome(msg, ans, timeout)
            if typ == "order_activate":
                raise self._in_doubt(msg, ans, "it may have reactivated the orders (which "
                                     "may have traded at once) before the refusal")
            # order_cancel ORDER_UNKNOWN: the order is gone, cancelled by the first sending
            # or filled before it; order_deactivate ORDER_NOT_ACTIVE/ORDER_UNKNOWN: the
            # orders are hibernated or gone.  Neither trades: the refusal says where the
            # orders stand, with ``resent`` True (docs/sdk.md)
        return ans

    def _in_doubt(self, msg: dict[str, Any], ans: Answer, why: str) -> OutcomeUnknown:
        self.stats["outcome_unknown_raised"] += 1
        return OutcomeUnknown(
            f"{msg['type']} {ans.req_id} was sent, the connection dropped before its answer,"
            f" and its repeat was refused {ans.code} ({ans.reason}): {why}; look"
            f" (query_orders, query_trades) before sending it again")

    async def _modify_outcome(self, msg: dict[str, Any], ans: Answer, timeout: Any
                              ) -> Answer:
        """A re-sent modification refused ORDER_UNKNOWN, ORDER_NOT_ACTIVE or
        STALE_REVISION: the first sending was executed, or not, as the order shows.  Only a
        modification (or a reactivation) moves the revision on, so the order at the
        revision the request named was not modified: the refusal is the answer.  At the
        next revision, with the price and conditions the request asked for, it was
        modified as asked: the call returns it (``recovered``).  Otherwise (the order is
        gone, maybe traded by that very modification, or has moved on) nothing says
        which: :class:`OutcomeUnknown`."""
        oid, rev = int(msg["order_id"]), int(msg["revision"])
        orders = await self.query_orders(timeout=timeout)
        o = next((x for x in orders if x.order_id == oid), None)
        if o is not None and o.revision == rev:
            return ans  # not modified: the refusal stands (e.g. hibernated meanwhile)
        if (o is not None and o.revision == rev + 1 and o.price == Decimal(msg["price"])
                and o.exec == msg.get("exec", "NON")
                and o.validity == msg.get("validity", o.validity)):  # (none: kept)
            self.stats["recovered"] += 1
            return Answer(type="ack", ok=True, kind="order_modify", req_id=ans.req_id,
                          order_ids=(oid,), resent=True, recovered=True,
                          recovered_orders=(o,))
        where = ("no longer live" if o is None else
                 f"at revision {o.revision}, price {o.price}, {o.status}")
        raise self._in_doubt(msg, ans, f"order {oid} (sent at revision {rev}) is {where}, "
                             "which the modification itself may have caused")

    async def _recovered(self, ans: Answer, coids: list[str], rejects: tuple[RejectDetail, ...],
                         timeout: Any) -> Answer:
        """The first sending went through: answer with the orders found by their ids."""
        self.stats["recovered"] += 1
        live = {o.client_order_id: o for o in await self.query_orders(timeout=timeout)
                if o.client_order_id}
        ids: list[int] = []
        found: list[Order] = []
        unresolved: list[str] = []
        for c in coids:
            o = live.get(c)
            if o is not None:
                ids.append(o.order_id)
                found.append(o)
            elif c in self._coids:  # seen on the private stream; no longer live
                ids.append(self._coids[c])
            else:
                unresolved.append(c)
        log.info("re-sent %s had gone through: orders %s", ans.kind or "request", ids)
        return Answer(type="ack", ok=True, kind=ans.kind, req_id=ans.req_id,
                      order_ids=tuple(ids), rejects=rejects, resent=True, recovered=True,
                      recovered_orders=tuple(found), unresolved=tuple(unresolved))

    # ------------------------------------------------------------------ trading

    async def place(self, contract: str, unit: str, side: Side, price: DecimalLike,
                    quantity: DecimalLike, *, exec: ExecCondition = "NON",
                    validity: Validity = "GFS", expiry: datetime | None = None,
                    peak: DecimalLike | None = None,
                    price_increment: DecimalLike | None = None,
                    state: InitialState = "ACTIVE", client_order_id: str | None = None,
                    raise_on_reject: bool = True, timeout: Any = DEFAULT) -> Answer:
        """Enter one order (``order_entry``).

        ``exec``: NON (rests), IOC, FOK; ``validity``: GFS (good for session) or GTD with
        ``expiry`` (an aware datetime); an iceberg has a ``peak`` (and optionally a
        ``price_increment`` per refill); ``state="HIBERNATED"`` enters it inactive.  The
        answer's ``report`` tells at once whether it rests, filled, or was killed."""
        spec = OrderSpec(contract, unit, side, price, quantity, exec, validity, expiry, peak,
                         price_increment, state, client_order_id)
        coid = client_order_id or self.new_client_order_id()
        msg = {"type": "order_entry", **spec.to_wire(coid)}
        return await self._trading(msg, raise_on_reject, timeout)

    async def basket(self, orders: Sequence[OrderSpec], basket: BasketKind = "NONE", *,
                     raise_on_reject: bool = True, timeout: Any = DEFAULT) -> Answer:
        """Enter a basket (``basket_entry``): NONE (independent orders; ``Answer.rejects``
        lists refused members), VALID (all valid or all refused), LINKED (every member FoK:
        all filled or none)."""
        if basket not in ("NONE", "VALID", "LINKED"):
            raise ValueError(f"basket must be NONE, VALID or LINKED, got {basket!r}")
        wire = [o.to_wire(o.client_order_id or self.new_client_order_id()) for o in orders]
        msg = {"type": "basket_entry", "basket": basket, "orders": wire}
        return await self._trading(msg, raise_on_reject, timeout)

    def _known(self, order: int | Order | OrderReport) -> tuple[int, Order | None]:
        if isinstance(order, Order):
            return order.order_id, order
        if isinstance(order, OrderReport):
            return order.order_id, Order.from_report(order)
        if type(order) is not int:  # not a bool, a float, a string...
            raise TypeError(f"order: expected an order id (int) or an Order, got"
                            f" {type(order).__name__} {str(order)[:40]!r}")
        return order, self.orders.get(order)

    async def modify(self, order: int | Order | OrderReport, revision: int | None = None, *,
                     price: DecimalLike | None = None, quantity: DecimalLike | None = None,
                     exec: ExecCondition | None = None, validity: Validity | None = None,
                     expiry: datetime | None = None, peak: DecimalLike | None = None,
                     price_increment: DecimalLike | None = None,
                     raise_on_reject: bool = True, timeout: Any = DEFAULT) -> Answer:
        """Modify a resting order (``order_modify``): it keeps its id, gets a new revision and
        a new time priority.  ``revision`` is the current one (refused with
        ``STALE_REVISION`` otherwise).  Given an :class:`Order` (or an id found in
        :attr:`orders`), what is not given is kept from it: price, execution condition,
        iceberg peak and increment - each on its own, so a new ``peak`` keeps the
        increment and a new ``price_increment`` keeps the peak.  The validity and expiry
        are always the order's (R46.2.6: a modification does not change them): leave them
        out; a ``validity`` or ``expiry`` given is sent as given, and the server refuses
        one that is not the order's (``MODIFY_CHANGES_FIXED_FIELD``).  Without
        ``quantity`` (with or without an Order) no quantity is sent: the server keeps the
        open quantity the order has when it applies the modification, so a fill that came
        after the Order was read is not undone.  A ``price_increment`` with no peak (given
        or kept) raises :class:`ValueError`, as in :meth:`place`: it is never dropped
        silently."""
        oid, known = self._known(order)
        if revision is not None and type(revision) is not int:
            raise TypeError(f"revision: expected an int, got {type(revision).__name__}"
                            f" {str(revision)[:40]!r}")
        if revision is None:
            if known is None:
                raise ValueError(f"revision of order {oid} unknown: pass it")
            revision = known.revision
        if price is None:
            if known is None:
                raise ValueError(f"order {oid} unknown: pass its price")
            price = known.price
        # no quantity: none is sent, and the server keeps the open quantity the order has
        # when the modification is applied (docs/protocol.md).  A quantity read from the
        # cache could be from before a fill, which does not change the revision: sending
        # it would put the filled part back.
        if known is not None:
            exec = exec or known.exec  # type: ignore[assignment]
            if known.peak:  # an iceberg: peak and increment are kept each on its own
                if peak is None:
                    peak = known.peak
                if price_increment is None and known.price_increment:
                    price_increment = known.price_increment
        if price_increment is not None and peak is None:
            raise ValueError("price_increment needs an iceberg peak (pass peak, or modify"
                             " an iceberg)")
        msg: dict[str, Any] = {"type": "order_modify", "order_id": oid, "revision": revision,
                               "price": wire_price(price)}
        if quantity is not None:
            msg["quantity"] = wire_qty(quantity)
        if exec and exec != "NON":
            msg["exec"] = exec
        if validity is not None:  # (the server keeps the order's when none is sent)
            msg["validity"] = validity
        if expiry is not None:
            msg["expiry"] = wire_instant(expiry)
        if peak is not None:
            ice: dict[str, Any] = {"peak": wire_qty(peak, "peak")}
            if price_increment is not None:
                ice["price_increment"] = wire_price(price_increment, "price_increment")
            msg["iceberg"] = ice
        return await self._trading(msg, raise_on_reject, timeout)

    async def cancel(self, order: int | Order | OrderReport, *, raise_on_reject: bool = True,
                     timeout: Any = DEFAULT) -> Answer:
        """Cancel an active or hibernated order (``order_cancel``)."""
        oid, _ = self._known(order)
        return await self._trading({"type": "order_cancel", "order_id": oid},
                                   raise_on_reject, timeout)

    @staticmethod
    def _ids_msg(typ: str, order_ids: Iterable[int] | None, contract: str | None
                 ) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": typ}
        if order_ids is not None:
            if isinstance(order_ids, str | bytes | int | Order | OrderReport):
                raise TypeError(f"order_ids: expected a list of order ids (int), got"
                                f" {type(order_ids).__name__} {str(order_ids)[:40]!r}")
            ids = list(order_ids)
            for n, i in enumerate(ids):
                # an id is sent as given, never converted: 18407.5, True or "36" would
                # name another order than the caller meant, or none
                if type(i) is not int:
                    raise TypeError(f"order_ids[{n}]: expected an order id (int), got"
                                    f" {type(i).__name__} {str(i)[:40]!r}")
            msg["order_ids"] = ids
        if contract is not None:
            msg["contract"] = contract
        return msg

    async def deactivate(self, order_ids: Iterable[int] | None = None, *,
                         contract: str | None = None, raise_on_reject: bool = True,
                         timeout: Any = DEFAULT) -> Answer:
        """Hibernate orders (``order_deactivate``): the given ids, or every active order of
        the agent (in ``contract``, if given)."""
        return await self._trading(self._ids_msg("order_deactivate", order_ids, contract),
                                   raise_on_reject, timeout)

    async def activate(self, order_ids: Iterable[int] | None = None, *,
                       contract: str | None = None, raise_on_reject: bool = True,
                       timeout: Any = DEFAULT) -> Answer:
        """Reactivate hibernated orders (``order_activate``): the given ids, or all of the
        agent's (in ``contract``).  Each report says ACTIVATED or REJECTED."""
        return await self._trading(self._ids_msg("order_activate", order_ids, contract),
                                   raise_on_reject, timeout)

    async def cancel_all(self, *, scope: Literal["user", "agent"] = "user",
                         contract: str | None = None, raise_on_reject: bool = True,
                         timeout: Any = DEFAULT) -> Answer:
        """Cancel every order of the user (or of the whole agent), in ``contract`` if
        given."""
        msg: dict[str, Any] = {"type": "cancel_all", "scope": scope}
        if contract is not None:
            msg["contract"] = contract
        return await self._trading(msg, raise_on_reject, timeout)

    # ------------------------------------------------------------------ queries

    async def _query(self, msg: dict[str, Any], expect: str, timeout: Any) -> dict[str, Any]:
        raw, _ = await self._request(msg, timeout)
        if raw.get("type") != expect:
            raise _answer_from_wire(raw).exception()
        return raw

    @staticmethod
    def _with(msg: dict[str, Any], **kw: Any) -> dict[str, Any]:
        msg.update({k: v for k, v in kw.items() if v is not None})
        return msg

    async def query_contracts(self, *, timeout: Any = DEFAULT) -> list[ContractInfo]:
        raw = await self._query({"type": "query_contracts"}, "contracts", timeout)
        return [ContractInfo.model_validate(c) for c in raw["contracts"]]

    async def query_orders(self, agent: str | None = None, *, timeout: Any = DEFAULT
                           ) -> list[Order]:
        """Live orders (active and hibernated) of the agent (officers: of ``agent``)."""
        raw = await self._query(self._with({"type": "query_orders"}, agent=agent), "orders",
                                timeout)
        return [Order.model_validate(o) for o in raw["orders"]]

    async def query_trades(self, agent: str | None = None, *, timeout: Any = DEFAULT
                           ) -> list[Trade]:
        raw = await self._query(self._with({"type": "query_trades"}, agent=agent), "trades",
                                timeout)
        return [Trade.model_validate(t) for t in raw["trades"]]

    async def query_account(self, agent: str | None = None, *, timeout: Any = DEFAULT
                            ) -> Account:
        raw = await self._query(self._with({"type": "query_account"}, agent=agent), "account",
                                timeout)
        return Account.model_validate(raw)

    async def query_book(self, contract: str, *, timeout: Any = DEFAULT) -> BookSnapshot:
        """The public book's snapshot (also refreshes the local book, if subscribed)."""
        raw = await self._query({"type": "query_book", "contract": contract}, "book", timeout)
        return BookSnapshot.model_validate(raw)

    async def query_throttling(self, user: str | None = None, *, timeout: Any = DEFAULT
                               ) -> Throttling:
        raw = await self._query(self._with({"type": "query_throttling"}, user=user),
                                "throttling", timeout)
        return Throttling.model_validate(raw)

    async def query_settlement(self, day: date | str, agent: str | None = None, *,
                               timeout: Any = DEFAULT) -> Settlement:
        d = day.isoformat() if isinstance(day, date) else day
        raw = await self._query(self._with({"type": "query_settlement", "day": d},
                                           agent=agent), "settlement", timeout)
        return Settlement.model_validate(raw)

    async def query_me(self, *, timeout: Any = DEFAULT) -> Me:
        raw = await self._query({"type": "query_me"}, "me", timeout)
        return Me.model_validate(raw)

    async def heartbeat(self, *, timeout: Any = DEFAULT) -> datetime:
        """Ask the server for its time (a round trip)."""
        raw = await self._query({"type": "heartbeat"}, "heartbeat", timeout)
        t = datetime.fromisoformat(str(raw["server_time"]))
        self.server_time = t
        return t

    # ------------------------------------------------------------------ subscriptions

    def _stream_name(self, stream: str, contract: str | None, agent: str | None) -> str:
        if stream in ("book", "trades"):
            if not contract:
                raise ValueError(f"the {stream} stream needs a contract")
            return f"{stream}:{contract}"
        if stream == "states":
            return "states"
        if stream == "private":
            return f"private:{agent or self.agent}"
        raise ValueError(f"stream must be book, trades, states or private, got {stream!r}")

    async def subscribe(self, stream: StreamKind, contract: str | None = None, *,
                        agent: str | None = None, timeout: Any = DEFAULT) -> Subscription:
        """Subscribe a stream: ``book`` (keeps :attr:`books` [contract], a
        :class:`LocalBook`), ``trades`` (:class:`PublicTrade` events) of a contract,
        ``states`` (:class:`ContractStateEvent`, :class:`RoundClosed`), ``private``
        (order reports, trades, rejections, account; ``agent`` for officers, ``*`` for
        all).  Subscriptions are renewed after every reconnection."""
        name = self._stream_name(stream, contract, agent)
        msg = self._with({"type": "subscribe", "stream": stream}, contract=contract,
                         agent=agent)
        created = False
        if stream == "book" and contract not in self.books:
            assert contract is not None
            self.books[contract] = LocalBook(contract)
            created = True
        self._subs[name] = msg
        try:
            raw, _ = await self._request(msg, timeout)
            if raw.get("type") != "ack":
                raise _answer_from_wire(raw).exception()
        except BaseException:
            self._subs.pop(name, None)
            if created and contract is not None:
                self.books.pop(contract, None)
            raise
        seq = raw.get("seq")
        return Subscription(stream=str(raw.get("stream") or name),
                            seq=seq if isinstance(seq, int) else None)

    async def unsubscribe(self, stream: StreamKind, contract: str | None = None, *,
                          agent: str | None = None, timeout: Any = DEFAULT) -> None:
        name = self._stream_name(stream, contract, agent)
        msg = self._with({"type": "unsubscribe", "stream": stream}, contract=contract,
                         agent=agent)
        self._subs.pop(name, None)
        if stream == "book" and contract is not None:
            self.books.pop(contract, None)
        raw, _ = await self._request(msg, timeout)
        self._seqs.pop(name, None)
        if raw.get("type") != "ack":
            raise _answer_from_wire(raw).exception()

    async def subscribe_book(self, contract: str, *, timeout: float | None = 10.0
                             ) -> LocalBook:
        """Subscribe a contract's book and wait for its snapshot."""
        await self.subscribe("book", contract)
        book = self.books[contract]
        await book.wait_synced(timeout)
        return book

    def local_book(self, contract: str) -> LocalBook:
        """The local book of a subscribed contract (KeyError if not subscribed)."""
        return self.books[contract]

    @property
    def subscriptions(self) -> list[str]:
        return list(self._subs)

    # ------------------------------------------------------------------ events

    def on(self, types: type[E] | tuple[type[E], ...], callback: Callable[[E], object]
           ) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of the given type(s) (a coroutine
        function's result is run as a task).  Returns a function that removes it.

        Types: :class:`BookUpdate`, :class:`PublicTrade`, :class:`OrderReport`,
        :class:`Trade`, :class:`RejectEvent`, :class:`Account`, :class:`RiskNotice`,
        :class:`ThrottlingEvent`, :class:`ContractStateEvent`, :class:`RoundClosed`,
        :class:`Heartbeat`, :class:`StreamGap`, :class:`ConnectionEvent`,
        :class:`RawEvent`, or ``object`` for everything."""
        tup: tuple[type[Any], ...] = types if isinstance(types, tuple) else (types,)
        entry: tuple[tuple[type[Any], ...], Callable[[Any], object]] = (tup, callback)
        self._listeners.append(entry)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(entry)

        return remove

    def events(self, *types: type[E], maxsize: int = 10_000) -> EventStream[E]:
        """An async iterator of the events of the given types (all events if none)::

            async with client.events(OrderReport, Trade) as stream:
                async for ev in stream: ...
        """
        s: EventStream[E] = EventStream(self, types or (object,), maxsize)
        if self._closed:
            s.close()
        else:
            self._streams.add(s)
        return s

    def wait_for(self, types: type[E] | tuple[type[E], ...],
                 predicate: Callable[[E], bool] | None = None, *,
                 timeout: float | None = 10.0) -> asyncio.Future[E]:
        """A future of the next event of the given type(s) satisfying ``predicate``.

        The listener is in place when this returns, so the event cannot be missed::

            filled = client.wait_for(OrderReport, lambda r: r.action == "FILLED")
            await client.place(...)
            report = await filled

        It fails with :class:`TimeoutError` after ``timeout`` seconds, with
        :class:`ConnectionLost` if the client closes."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[E] = loop.create_future()

        def check(ev: E) -> None:
            if fut.done():
                return
            try:
                if predicate is None or predicate(ev):
                    fut.set_result(ev)
            except Exception as exc:  # the predicate's own error goes to the waiter
                fut.set_exception(exc)

        def expire() -> None:
            if not fut.done():
                fut.set_exception(TimeoutError(f"no {types} event in {timeout} s"))

        remove = self.on(types, check)
        handle = loop.call_later(timeout, expire) if timeout is not None else None
        self._waiters.add(fut)

        def done(_: asyncio.Future[E]) -> None:
            remove()
            self._waiters.discard(fut)
            if handle is not None:
                handle.cancel()

        fut.add_done_callback(done)
        if self._closed:
            fut.set_exception(ConnectionLost("the client is closed"))
        return fut

    def _emit(self, ev: Any) -> None:
        for types, cb in list(self._listeners):
            if isinstance(ev, types):
                try:
                    res = cb(ev)
                    if inspect.isawaitable(res):
                        self._spawn(res)
                except Exception:
                    log.exception("event callback %r failed", cb)
        for s in list(self._streams):
            if isinstance(ev, s.types):
                s._offer(ev)

    # ------------------------------------------------------------------ incoming

    def _dispatch(self, msg: Any, gen: int) -> None:
        if gen != self._gen or not isinstance(msg, dict):
            return
        self._last_rx = asyncio.get_running_loop().time()
        self.stats["received"] += 1
        rid = msg.get("req_id")
        p = self._pending.get(rid) if isinstance(rid, str) else None
        try:
            if p is not None and _is_answer(msg):
                if (msg.get("code") == OUTCOME_UNKNOWN and msg.get("type") == "reject"
                        and p.msg.get("type") in RESENDABLE):
                    # the server failed while recording it and stops: the request waits
                    # for the reconnection and is re-sent, as one that had no answer
                    self.stats["outcome_unknown"] += 1
                    p.resent = True  # what answers it now answers a repeat (a DUPLICATE...)
                    log.warning("request %s: outcome unknown (%s); re-sent after the "
                                "reconnection", rid, msg.get("reason"))
                    return
                self._on_answer(msg)
                if p.on_answer is not None:
                    p.on_answer(msg)
                if not p.future.done():
                    p.future.set_result(msg)
                return
            self._on_stream(msg)
        except Exception:
            log.exception("cannot handle %s", str(msg)[:300])

    def _on_answer(self, msg: dict[str, Any]) -> None:
        """Side effects of answers that belong to the streams' order."""
        typ = msg.get("type")
        stream = msg.get("stream")
        if typ == "ack" and isinstance(stream, str):
            if msg.get("kind") == "subscribe":
                seq = msg.get("seq")
                if (isinstance(seq, int) and not stream.startswith("book:")
                        and stream not in self._seqs):
                    self._seqs[stream] = seq
            elif msg.get("kind") == "unsubscribe":
                self._seqs.pop(stream, None)
        elif typ == "book" and msg.get("snapshot") is True:
            self._on_book_snapshot(msg)

    def _on_stream(self, msg: dict[str, Any]) -> None:
        typ = msg.get("type")
        if typ == "heartbeat":
            with contextlib.suppress(KeyError, ValueError, TypeError):
                self.server_time = datetime.fromisoformat(str(msg["server_time"]))
                self._emit(Heartbeat(self.server_time))
            return
        if typ == "book":
            if msg.get("snapshot") is True:
                self._on_book_snapshot(msg)
            else:
                self._on_book_delta(msg)
            return
        if typ == "resync":
            self._on_resync(msg)
            return
        if typ == "error":
            log.log(logging.INFO if self._closing else logging.WARNING, "%s: server error: %s",
                    self.user, msg)
            self._emit(RawEvent("error", msg))
            if (msg.get("code") == "DISCONNECTED" and self.transport == "amqp"
                    and not self._closing):
                self._spawn(self._session_ended(self._gen, str(msg.get("reason") or "")),
                            "ronda-sdk-session-ended")
            return
        stream, seq = msg.get("stream"), msg.get("seq")
        if isinstance(stream, str) and isinstance(seq, int) and not self._check_seq(stream,
                                                                                     seq):
            return
        ev = _parse_event(msg)
        if isinstance(ev, OrderReport):
            self._track(ev)
            p = self._pending.get(ev.req_id) if ev.req_id else None
            if p is not None and not p.internal:
                p.reports.append(ev)
        self._emit(ev)

    def _check_seq(self, stream: str, seq: int) -> bool:
        """True to process the message; False for a stale repeat.  A gap is reported."""
        last = self._seqs.get(stream)
        self._seqs[stream] = seq if last is None else max(last, seq)
        if last is None:
            return True
        if seq <= last:
            self.stats["stale"] += 1
            return False
        if seq > last + 1:
            self.stats["gaps"] += 1
            log.warning("%s: gap in %s (expected %d, got %d)", self.user, stream, last + 1, seq)
            self._emit(StreamGap(stream, last + 1, seq))
            if stream.startswith("private:"):
                self._spawn(self._refresh_orders())
        return True

    def _remember(self, coid: str, order_id: int) -> None:
        self._coids[coid] = order_id
        if len(self._coids) > _MAX_COIDS:  # the oldest half goes
            for k in list(itertools.islice(self._coids, _MAX_COIDS // 2)):
                del self._coids[k]

    def _track(self, r: OrderReport) -> None:
        if r.client_order_id:
            self._remember(r.client_order_id, r.order_id)
        if r.status == "INACTIVE":
            self.orders.pop(r.order_id, None)
        else:
            self.orders[r.order_id] = Order.from_report(r)

    def _apply_orders(self, raw: dict[str, Any]) -> None:
        if raw.get("type") != "orders":
            return
        orders = [Order.model_validate(o) for o in raw["orders"]]
        self.orders = {o.order_id: o for o in orders}
        for o in orders:
            if o.client_order_id:
                self._remember(o.client_order_id, o.order_id)
        self.stats["orders_refreshed"] += 1

    async def _refresh_orders(self, force: bool = False) -> None:
        """Reload :attr:`orders` (after a (re)connection or a gap in the private stream).
        The answer replaces the cache where it stands in the stream, so the reports that
        follow it apply on top."""
        if self._refreshing and not force:
            return
        self._refreshing = True
        try:
            await self._internal({"type": "query_orders"}, timeout=self._timeout(),
                                 on_answer=self._apply_orders)
        except (RondaError, TimeoutError) as exc:
            if force:
                raise
            log.info("%s: orders not refreshed: %s", self.user, exc)
        finally:
            self._refreshing = False

    def _on_book_snapshot(self, msg: dict[str, Any]) -> None:
        book = self.books.get(str(msg.get("contract")))
        if book is None:
            return
        snap = BookSnapshot.model_validate(msg)
        status = book._apply_snapshot(snap)
        if status == "ignored":
            return
        self.stats["book_snapshots"] += 1
        self._emit(BookUpdate(book.contract, book.seq, book))
        if status == "gap":
            self._book_gap(book)

    def _on_book_delta(self, msg: dict[str, Any]) -> None:
        book = self.books.get(str(msg.get("contract")))
        if book is None:
            return
        d = BookDelta.model_validate(msg)
        if self.delta_filter is not None and not self.delta_filter(d):
            self.stats["deltas_filtered"] += 1
            return
        expected = book.seq + 1
        status = book._apply_delta(d)
        if status == "applied":
            self._emit(BookUpdate(book.contract, book.seq, book, d))
        elif status == "gap":
            self._emit(StreamGap(f"book:{book.contract}", expected, d.seq))
            self._book_gap(book)

    def _book_gap(self, book: LocalBook) -> None:
        self.stats["gaps"] += 1
        log.warning("%s: gap in book:%s; asking for a snapshot", self.user, book.contract)
        if book.contract not in self._resyncing:
            self._spawn(self._resync_book(book.contract), f"ronda-sdk-resync-{book.contract}")

    async def _resync_book(self, contract: str) -> None:
        """Ask for snapshots until the book is whole again (the answer is applied as it
        arrives, in the stream's order)."""
        self._resyncing.add(contract)
        try:
            for _ in range(5):
                book = self.books.get(contract)
                if book is None or book.synced or not self._ready.is_set():
                    return  # a reconnection re-subscribes, which brings a snapshot
                self.stats["resyncs"] += 1
                try:
                    await self._internal({"type": "query_book", "contract": contract},
                                         timeout=self._timeout())
                except (RondaError, TimeoutError) as exc:
                    log.info("snapshot of %s not obtained: %s", contract, exc)
                    return
        finally:
            self._resyncing.discard(contract)

    def _on_resync(self, msg: dict[str, Any]) -> None:
        """AMQP: the gateway (re)connected to the broker and messages may have been lost;
        it says where every stream stands and sends fresh book snapshots."""
        private = False
        for s in msg.get("streams") or ():
            name, seq = s.get("stream"), s.get("seq")
            if not isinstance(name, str):
                continue
            if name.startswith("book:"):
                book = self.books.get(name[5:])
                if book is not None:
                    book._reset()  # its snapshot follows
            elif isinstance(seq, int):
                self._seqs[name] = seq
            private = private or name.startswith("private:")
        if private:
            self._spawn(self._refresh_orders())
        self._emit(ConnectionEvent("resync", str(msg.get("reason", ""))))
