"""Events out of the core.

Events are immutable named tuples: as immutable as frozen dataclasses, and three times
cheaper to create (measured: 0.25 µs against 0.86 µs for eight fields), which matters
because several are emitted per fill in the matching loop.

Private events (:class:`OrderReport`, :class:`Trade`, :class:`Reject`) carry the user and
agent and go only to their owners.  Public events (:class:`BookChange`,
:class:`PublicTrade`, :class:`ContractStateChanged`, :class:`RoundClosed`) are built from
fields that carry no agent, user or unit (DESIGN rule 8); ``BookChange.entry`` is a
per-instantiation public id, never the order id, so even an iceberg's refills cannot be
linked to each other from the public stream.
"""

from __future__ import annotations

from typing import NamedTuple


class OrderReport(NamedTuple):
    """Every change of an order (R46.2.12): action, state and what remains."""

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
    code: str | None
    reason: str | None


class Trade(NamedTuple):
    """A private trade (R47.1): both parties, for the owners and for settlement."""

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


class PublicTrade(NamedTuple):
    """A trade as everyone sees it: no parties (R46.2.12).

    It is also the book delta of the resting entry it hit: ``entry`` now shows ``left``
    (0: the entry is gone).  The book stream and the trades of a contract share one
    sequence, so a client keeping the local order list applies both in order; no separate
    :class:`BookChange` is sent for a fill."""

    ts: int
    contract: str
    seq: int
    trade_id: int
    price: int
    qty: int
    aggressor: str
    entry: int
    left: int


class BookChange(NamedTuple):
    """An anonymous change of the local order list (R46.2.8): ADD, UPDATE or REMOVE."""

    ts: int
    contract: str
    seq: int
    action: str
    entry: int
    side: str
    price: int
    qty: int


class ContractStateChanged(NamedTuple):
    ts: int
    contract: str
    state: str
    previous: str | None
    close_at: int
    reason: str | None


class RoundClosed(NamedTuple):
    """R45.g: closing contracts closes the current round; the next one opens at once."""

    ts: int
    round: int
    contracts: tuple[str, ...]


class Reject(NamedTuple):
    """A refused request: stable code and readable reason (DESIGN rule 5)."""

    ts: int
    user: str
    agent: str
    req_id: str | None
    client_order_id: str | None
    order_id: int | None
    code: str
    reason: str


class Ack(NamedTuple):
    """A request accepted; ``order_ids`` are the orders it created or touched."""

    ts: int
    user: str
    req_id: str | None
    kind: str
    order_ids: tuple[int, ...]


Event = (
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
