"""Events out of the core.

Events are immutable records: tuples with named fields, built from one tuple of all their
fields in order, ``Trade((ts, trade_id, ...))``, by the C constructor of ``tuple`` itself.
That is the cheapest object a tuple with a type of its own can be in CPython: a named
tuple's generated ``__new__`` is a Python function, and going around it with
``tuple.__new__(cls, values)`` still costs a call through a wrapper; several events are
emitted per fill in the matching loop (measured in docs/performance.md).  They read like
named tuples (``ev.price``, ``_fields``, ``_asdict``, ``_replace``, pattern matching);
:meth:`Event.of` builds one from fields by name or position, checking that every field is
given once.

Private events (:class:`OrderReport`, :class:`Trade`, :class:`Reject`) carry the user and
agent and go only to their owners.  Public events (:class:`BookChange`,
:class:`PublicTrade`, :class:`ContractStateChanged`, :class:`RoundClosed`) are built from
fields that carry no agent, user or unit (DESIGN rule 8); ``BookChange.entry`` is a
per-instantiation public id, never the order id, so even an iceberg's refills cannot be
linked to each other from the public stream.
"""

from __future__ import annotations

import inspect
from operator import itemgetter
from typing import Any, ClassVar, TypeVar


def _field(index: int, doc: str) -> Any:
    """The descriptor of field ``index``: CPython's own for named tuples (in C), or a
    property on an interpreter without it."""
    try:
        from _collections import _tuplegetter  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - other interpreters
        return property(itemgetter(index), doc=doc)
    return _tuplegetter(index, doc)


E = TypeVar("E", bound="Event")


class Event(tuple[Any, ...]):
    """Base of the core's events: a subclass lists its fields as annotations, in order.

    No ``__new__`` here or in a subclass: construction stays ``tuple``'s own, from one
    iterable.  The engine's construction sites are fixed literals, and
    ``tests/test_engine_gc.py`` checks that every event emitted has exactly its fields."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "__new__" in cls.__dict__ or "__init__" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: an event is built by tuple's constructor")
        if cls.__dict__.get("__slots__") != ():
            raise TypeError(f"{cls.__name__}: an event declares __slots__ = () (no __dict__)")
        names = tuple(inspect.get_annotations(cls))
        cls._fields = names
        setattr(cls, "__match_args__", names)  # noqa: B010 - for pattern matching
        for i, name in enumerate(names):
            setattr(cls, name, _field(i, f"field {i}: {name}"))

    @classmethod
    def of(cls: type[E], *args: Any, **kw: Any) -> E:
        """An event from its fields by position and/or name, every field exactly once."""
        names = cls._fields
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} has {len(names)} fields, {len(args)} given")
        vals = dict(zip(names, args, strict=False))  # fewer values than fields: by name
        for k, v in kw.items():
            if k not in names:
                raise TypeError(f"{cls.__name__} has no field {k!r}")
            if k in vals:
                raise TypeError(f"{cls.__name__}: field {k!r} given twice")
            vals[k] = v
        missing = [n for n in names if n not in vals]
        if missing:
            raise TypeError(f"{cls.__name__}: missing {', '.join(missing)}")
        return cls(vals[n] for n in names)

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def _replace(self: E, **kw: Any) -> E:
        return self.of(**{**self._asdict(), **kw})

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, self, strict=True))
        return f"{type(self).__name__}({inner})"

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle
        return (tuple(self),)


class OrderReport(Event):
    """Every change of an order (R46.2.12): action, state and what remains."""

    __slots__ = ()

    ts: int
    order_id: int
    client_order_id: str | None
    req_id: str | None
    contract: str
    user: str
    agent: str
    unit: str
    side: str
    action: str  # ADDED MODIFIED PARTIALLY_FILLED FILLED REFILLED HIBERNATED ACTIVATED
    #              CANCELLED EXPIRED REJECTED
    status: str  # ACTIVE HIBERNATED INACTIVE
    price: int
    visible: int
    hidden: int
    filled: int
    exec: str
    validity: str
    expiry: int | None
    peak: int
    incr: int
    revision: int
    basket: int
    basket_type: str | None  # the basket's condition (NONE VALID LINKED), None outside one
    code: str | None
    reason: str | None


class Trade(Event):
    """A private trade (R47.1): both parties, for the owners and for settlement."""

    __slots__ = ()

    ts: int
    trade_id: int
    contract: str
    round: int
    price: int
    qty: int
    aggressor: str  # side of the incoming order
    buy_order: int
    buy_user: str
    buy_agent: str
    buy_unit: str
    sell_order: int
    sell_user: str
    sell_agent: str
    sell_unit: str


class PublicTrade(Event):
    """A trade as everyone sees it: no parties (R46.2.12).

    It is also the book delta of the resting entry it hit: ``entry`` now shows ``left``
    (0: the entry is gone).  The book stream and the trades of a contract share one
    sequence, so a client keeping the local order list applies both in order; no separate
    :class:`BookChange` is sent for a fill."""

    __slots__ = ()

    ts: int
    contract: str
    seq: int
    trade_id: int
    price: int
    qty: int
    aggressor: str
    entry: int
    left: int


class BookChange(Event):
    """An anonymous change of the local order list (R46.2.8): ADD, UPDATE or REMOVE."""

    __slots__ = ()

    ts: int
    contract: str
    seq: int
    action: str
    entry: int
    side: str
    price: int
    qty: int


class ContractStateChanged(Event):
    """R45.f: a contract went from ``previous`` to ``state`` (None: it was just created)."""

    __slots__ = ()

    ts: int
    contract: str
    state: str
    previous: str | None
    close_at: int
    reason: str | None


class RoundClosed(Event):
    """R45.g: closing contracts closes the current round; the next one opens at once."""

    __slots__ = ()

    ts: int
    round: int
    contracts: tuple[str, ...]


class Reject(Event):
    """A refused request: stable code and readable reason (DESIGN rule 5)."""

    __slots__ = ()

    ts: int
    user: str
    agent: str
    req_id: str | None
    client_order_id: str | None
    order_id: int | None
    code: str
    reason: str


class Ack(Event):
    """A request accepted; ``order_ids`` are the orders it created or touched."""

    __slots__ = ()

    ts: int
    user: str
    req_id: str | None
    kind: str
    order_ids: tuple[int, ...]


AnyEvent = (
    OrderReport | Trade | PublicTrade | BookChange | ContractStateChanged | RoundClosed
    | Reject | Ack
)
EVENT_TYPES: dict[str, type[tuple[object, ...]]] = {
    "order_report": OrderReport,
    "trade": Trade,
    "public_trade": PublicTrade,
    "book": BookChange,
    "contract_state": ContractStateChanged,
    "round_closed": RoundClosed,
    "reject": Reject,
    "ack": Ack,
}
EVENT_NAMES: dict[type[tuple[object, ...]], str] = {v: k for k, v in EVENT_TYPES.items()}
