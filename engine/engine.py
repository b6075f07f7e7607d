"""The matching engine: contracts, one order book per contract, every order condition.

Pure, synchronous and deterministic (DESIGN rules 2 and 3): :meth:`Engine.apply` takes a
command and the instant the sequencer stamped on it, and returns the events it caused.  It
reads no clock and does no I/O.  A trader's mistake is a :class:`~engine.events.Reject`
event, never an exception.

Book layout: per side a sorted array of level ranks with the best level last and a dict of
levels by rank (see :class:`BookSide`); a level is a dict of its order instantiations
keyed by their time priority ``seq``, which only grows, so the dict's insertion order is
the time priority.  A cancelled, modified or hibernated instantiation leaves its level at
once (O(1), no dead entries, nothing to compact later), and a level that empties is dropped
at once, so memory is exactly what rests.

Orders are indexed once, by agent then id (:attr:`Engine.by_agent`): every trader's request
names its agent; :attr:`Engine.orders` is a read-only view of the same orders by id alone.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, insort
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, ValuesView
from datetime import timedelta
from heapq import heappop, heappush
from typing import Any

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
from engine.config import EngineConfig, fmt_ms, fmt_price, fmt_qty
from engine.contracts import ContractSpec, local_day_of, local_midnight_utc
from engine.errors import Code, EngineMisuse, IllegalTransition, InvalidIdentifier
from engine.events import (
    Ack,
    BookChange,
    ContractStateChanged,
    OrderReport,
    PublicTrade,
    Reject,
    RoundClosed,
    Trade,
)
from engine.guard import Guard
from engine.model import (
    ACTIVE,
    BUY,
    HIBERNATED,
    INACTIVE,
    SELL,
    BasketType,
    Exec,
    Order,
    Side,
    Validity,
)
from engine.states import ContractState, check_contract_transition

VALID_BASKET = BasketType.VALID
NON = Exec.NON
IOC = Exec.IOC
FOK = Exec.FOK
GTD = Validity.GTD
GFS = Validity.GFS
TRADE = ContractState.TRADE
INT = ContractState.INT
UPC = ContractState.UPC

ADDED = "ADDED"
MODIFIED = "MODIFIED"
PARTIALLY_FILLED = "PARTIALLY_FILLED"
FILLED = "FILLED"
REFILLED = "REFILLED"
HIBERNATED_A = "HIBERNATED"
ACTIVATED = "ACTIVATED"
CANCELLED = "CANCELLED"
EXPIRED = "EXPIRED"
REJECTED = "REJECTED"

_ADD = "ADD"
_UPDATE = "UPDATE"
_REMOVE = "REMOVE"


_NO_ORDERS: dict[int, Order] = {}  # an agent without orders (never written)


class AllOrders(Mapping[int, Order]):
    """The live (ACTIVE and HIBERNATED) orders by id alone: a read-only view of
    :attr:`Engine.by_agent`, the engine's one index (agent -> id -> order).

    Every trader's request names its agent, so the engine finds an order in its agent's
    dict, and keeps no second, global dict to update at every entry and exit of an order
    (that second dict cost 5 % of the benchmark's flow: docs/performance.md).  A lookup
    by id alone visits the agents one by one: for operators, inspection and tests, never
    on a trader's path.  Iteration goes agent by agent, in no particular order."""

    __slots__ = ("_by_agent",)

    def __init__(self, by_agent: dict[str, dict[int, Order]]) -> None:
        self._by_agent = by_agent

    def __getitem__(self, oid: int) -> Order:
        for d in self._by_agent.values():
            o = d.get(oid)
            if o is not None:
                return o
        raise KeyError(oid)

    def __contains__(self, oid: object) -> bool:
        return any(oid in d for d in self._by_agent.values())

    def __iter__(self) -> Iterator[int]:
        for d in self._by_agent.values():
            yield from d

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_agent.values())

    def __repr__(self) -> str:
        """As a dict's, so that a failing ``assert engine.orders == {...}`` shows them."""
        return f"AllOrders({dict(self.items())!r})"

    def values(self) -> ValuesView[Order]:
        return _AllValues(self)

    def items(self) -> ItemsView[int, Order]:
        return _AllItems(self)


class _AllValues(ValuesView[Order]):
    _mapping: AllOrders

    def __iter__(self) -> Iterator[Order]:
        for d in self._mapping._by_agent.values():
            yield from d.values()

    def __contains__(self, value: object) -> bool:
        return any(v is value or v == value for v in self)


class _AllItems(ItemsView[int, Order]):
    _mapping: AllOrders

    def __iter__(self) -> Iterator[tuple[int, Order]]:
        for d in self._mapping._by_agent.values():
            yield from d.items()


class Level:
    """One price level of one side: its instantiations by ``seq``, in time priority."""

    __slots__ = ("orders", "price")

    def __init__(self, price: int) -> None:
        self.price = price
        self.orders: dict[int, Order] = {}


class BookSide:
    """The levels of one side.  ``ranks`` is sorted ascending with the best level last
    (rank = price for bids, −price for asks), so the best level is read and dropped in
    O(1); a level is found by rank in ``levels``.  Creating or dropping a level elsewhere
    is a binary search and a short memmove, several times cheaper than a balanced tree at
    the depths a contract's book has."""

    __slots__ = ("buy", "levels", "ranks")

    def __init__(self, buy: bool) -> None:
        self.buy = buy
        self.ranks: list[int] = []
        self.levels: dict[int, Level] = {}

    def __len__(self) -> int:
        return len(self.ranks)

    def __bool__(self) -> bool:
        return bool(self.ranks)

    def best(self) -> Level | None:
        r = self.ranks
        return self.levels[r[-1]] if r else None

    def in_order(self) -> Iterator[Level]:
        """Levels best first."""
        lv = self.levels
        for r in reversed(self.ranks):
            yield lv[r]

    def add_level(self, rank: int, price: int) -> Level:
        lvl = Level(price)
        self.levels[rank] = lvl
        ranks = self.ranks
        if not ranks or rank > ranks[-1]:
            ranks.append(rank)
        else:
            insort(ranks, rank)
        return lvl

    def drop_level(self, rank: int) -> None:
        del self.levels[rank]
        ranks = self.ranks
        if ranks[-1] == rank:
            ranks.pop()
        else:
            del ranks[bisect_left(ranks, rank)]


class Book:
    """The order book of one contract: bids and asks, and the public sequence numbers."""

    __slots__ = ("asks", "bids", "contract", "entry_seq", "pub_seq")

    def __init__(self, contract: str) -> None:
        self.contract = contract
        self.bids = BookSide(True)
        self.asks = BookSide(False)
        self.pub_seq = 0  # sequence of public events of this contract
        self.entry_seq = 0  # public entry ids

    def side(self, side: Side) -> BookSide:
        return self.bids if side is BUY else self.asks

    def levels(self, side: Side) -> Iterable[Level]:
        """Levels of one side, best first."""
        return self.side(side).in_order()

    def resting(self, side: Side) -> list[Order]:
        """Live instantiations of one side in priority order (best price, then time)."""
        return [o for lvl in self.levels(side) for o in lvl.orders.values()]

    def best(self, side: Side) -> int | None:
        lvl = self.side(side).best()
        return None if lvl is None else lvl.price


class Contract:
    """A contract's mutable state: R45.f state, gate closure and its book."""

    __slots__ = ("book", "close_at", "id", "reason", "spec", "state")

    def __init__(self, spec: ContractSpec, close_at: int) -> None:
        self.spec = spec
        self.id = spec.id
        self.close_at = close_at
        self.state = ContractState.UPC
        self.reason: str | None = None
        self.book = Book(self.id)


Handler = Callable[[Any, int], None]


class Engine:
    """Commands in, events out.  See the module docstring."""

    def __init__(self, config: EngineConfig | None = None, guard: Guard | None = None) -> None:
        self.cfg = config or EngineConfig()
        self.guard = guard
        self.now = 0
        self.round = 1
        self.contracts: dict[str, Contract] = {}
        # The one index of the live (ACTIVE and HIBERNATED) orders: agent -> id -> order.
        # An agent's dict stays, empty, once it has had an order.
        self.by_agent: dict[str, dict[int, Order]] = {}
        self.orders = AllOrders(self.by_agent)  # the same orders by id alone, read-only
        self.next_order = 1
        self.next_seq = 1
        self.next_trade = 1
        self.next_basket = 1
        # (expiry, arrival, order id, agent), lazy: an entry may outlive its order
        self._gtd: list[tuple[int, int, int, str]] = []
        self._coids: set[tuple[str, str]] = set()
        self._coid_day_end = 0
        self._out: list[Any] = []
        self._digests: list[Callable[[], bytes]] = []
        self._handlers: dict[type, Handler] = {
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
            Tick: self._on_tick,
        }

    # ------------------------------------------------------------------ entry point

    def register(self, command_type: type, handler: Handler) -> None:
        """Let a module of the core (``risk/``) handle its own command types here, so that
        one ``apply`` drives the whole core from one journal."""
        if command_type in self._handlers:
            raise EngineMisuse(f"{command_type.__name__} already has a handler")
        self._handlers[command_type] = handler

    def reject(self, ts: int, user: str, agent: str, req_id: str | None, code: str,
               reason: str) -> None:
        """Emit a rejection into the current command's output (for registered handlers)."""
        self._reject(ts, user, agent, req_id, code, reason)

    def add_digest(self, fn: Callable[[], bytes]) -> None:
        """A registered module's state joins the state hash."""
        self._digests.append(fn)

    def reactivate_orders(self, orders: Iterable[Order], ts: int, req_id: str | None = None
                          ) -> None:
        """R46.2.7 reactivation of hibernated orders, for registered modules (the auctions'
        reopening): in arrival order, the members of a VALID basket validated together and
        reactivated all or rejected all (A1§5.2); see :meth:`_reactivate_all`.  Every
        order must be a live HIBERNATED order of this engine (else :class:`EngineMisuse`,
        before anything changes).  An order of a contract whose gate closure has come
        stays hibernated, for the close to cancel (A1§4.1), as if the close had come first:
        it is not reactivated, and does not take down the members of its VALID basket in
        other contracts (:func:`_past_gate_closure`)."""
        sel: dict[int, Order] = {}
        contracts = self.contracts
        for o in orders:
            if o.status is not HIBERNATED or self._owned(o.id, o.agent) is not o:
                raise EngineMisuse(f"order {o.id} is not a hibernated order of this engine")
            if ts < contracts[o.contract].close_at:  # R45.f gate closure
                sel[o.id] = o
        self._reactivate_all(sorted(sel.values(), key=_arrival_key), ts, req_id)

    def emit(self, event: Any) -> None:
        """Append an event to the current command's output (for registered handlers)."""
        self._out.append(event)

    def apply(self, cmd: Any, ts: int) -> list[Any]:
        """Apply one command at instant ``ts`` (ms UTC, never decreasing); return its events.

        GTD orders whose instant has come expire first (A1§4.2), so that no command ever
        sees an order past its validity, whether or not a :class:`Tick` arrived.  A
        contract's gate closure is not applied here but checked wherever an order would
        enter, change or come back, against ``ts`` (:func:`_past_gate_closure` says why).
        """
        out: list[Any] = []
        self._out = out  # first: events_so_far() is this command's, whatever raises
        if ts < self.now:
            raise EngineMisuse(f"time went backwards: {ts} < {self.now}")
        self.now = ts
        gtd = self._gtd
        if gtd and gtd[0][0] <= ts:
            self._expire(ts)
        kind = type(cmd)
        handler = self._handlers.get(kind)
        if handler is None:
            raise EngineMisuse(f"no handler for command {kind.__name__}")
        g = self.guard
        if g is not None and kind in _TRADER_COMMANDS:
            rej = g.gate(cmd, ts)
            if rej is not None:
                self._reject(ts, cmd.user, cmd.agent, cmd.req_id, rej[0], rej[1],
                             getattr(cmd, "client_order_id", None),
                             getattr(cmd, "order_id", None))
                return out
        handler(cmd, ts)
        return out

    def events_so_far(self) -> list[Any]:
        """The events of the command :meth:`apply` is applying, or last applied: after
        :meth:`apply` raised, what the command had done before it raised (the state holds
        it too, so whoever reports the failure must report these events with it)."""
        return self._out

    def next_expiry(self) -> int | None:
        """The earliest GTD expiry pending (possibly of an order already gone: then a Tick
        at that instant does nothing)."""
        return self._gtd[0][0] if self._gtd else None

    def dispatch(self, cmd: Any, ts: int) -> None:
        """Run a command inside the current one (for registered handlers that trigger
        engine actions, e.g. a suspension cancelling an agent's orders); its events join
        the current command's output."""
        self._handlers[type(cmd)](cmd, ts)

    # ------------------------------------------------------------------ helpers

    def _reject(
        self,
        ts: int,
        user: str,
        agent: str,
        req_id: str | None,
        code: str,
        reason: str,
        coid: str | None = None,
        order_id: int | None = None,
    ) -> None:
        self._out.append(Reject((ts, user, agent, req_id, coid, order_id, code, reason)))

    def _report(
        self,
        o: Order,
        ts: int,
        action: str,
        req_id: str | None = None,
        code: str | None = None,
        reason: str | None = None,
    ) -> None:
        vis = o.visible
        self._out.append(
            OrderReport((
                ts, o.id, o.coid, req_id, o.contract, o.user, o.agent, o.unit, o.side,
                action, o.status, o.price, vis, o.remaining - vis, o.filled, o.exec,
                o.validity, o.expiry, o.peak, o.incr, o.revision, o.basket, o.basket_type,
                code, reason,
            ))
        )

    def _index(self, o: Order) -> None:
        d = self.by_agent.get(o.agent)
        if d is None:
            d = self.by_agent[o.agent] = {}
        d[o.id] = o

    def _unindex(self, o: Order) -> None:
        del self.by_agent[o.agent][o.id]

    def _push_gtd(self, o: Order) -> None:
        exp = o.expiry
        assert exp is not None  # validated: a GTD order has its expiry (A1§4.2)
        heappush(self._gtd, (exp, o.arrival, o.id, o.agent))

    def _coid_seen(self, user: str, coid: str, ts: int) -> bool:
        """Client order ids are unique per user and local trading day (protocol)."""
        if ts >= self._coid_day_end:
            self._coids.clear()
            self._coid_day_end = local_midnight_utc(local_day_of(ts) + timedelta(days=1))
        return (user, coid) in self._coids

    def _validate(
        self,
        c: Contract | None,
        contract_id: str,
        side: Side,
        price: int,
        qty: int,
        exec: Exec,
        validity: Validity,
        expiry: int | None,
        peak: int,
        incr: int,
        ts: int,
    ) -> tuple[str, str] | None:
        """The engine's acceptance checks (R46.2.2 contract state and gate closure, R46.2.1
        bounds, A1§3.4 iceberg, A1§4 validity).  Returns (code, reason) or None."""
        cfg = self.cfg
        if c is None:
            return Code.CONTRACT_UNKNOWN, f"contract {contract_id} does not exist"
        if c.state is not TRADE:
            return (
                Code.CONTRACT_NOT_TRADING,
                f"contract {contract_id} is {c.state.value}; orders are accepted only in TRADE"
                " (R46.2.2)",
            )
        if ts >= c.close_at:
            return _past_gate_closure(c)
        if price < cfg.price_min or price > cfg.price_max:
            return (
                Code.PRICE_OUT_OF_RANGE,
                f"price {fmt_price(price)} €/MWh outside [{fmt_price(cfg.price_min)},"
                f" {fmt_price(cfg.price_max)}] (R46.2.1)",
            )
        if qty < cfg.qty_min or qty > cfg.qty_max:
            return (
                Code.QTY_OUT_OF_RANGE,
                f"quantity {fmt_qty(qty)} MWh outside [{fmt_qty(cfg.qty_min)},"
                f" {fmt_qty(cfg.qty_max)}] (R46.2.1)",
            )
        if peak:
            if exec is not NON:
                return (
                    Code.ICEBERG_NOT_RESTING,
                    f"an iceberg must be able to rest in the book; {exec.value} never rests"
                    " (A1§3.4)",
                )
            if peak < cfg.qty_min:
                return (
                    Code.ICEBERG_PEAK_OUT_OF_RANGE,
                    f"iceberg peak {fmt_qty(peak)} MWh below the minimum quantity"
                    f" {fmt_qty(cfg.qty_min)} (A1§3.4)",
                )
            if peak > qty:
                return (
                    Code.ICEBERG_PEAK_ABOVE_TOTAL,
                    f"iceberg peak {fmt_qty(peak)} MWh above the total quantity"
                    f" {fmt_qty(qty)} (A1§3.4)",
                )
            if incr:
                if (side is BUY and incr > 0) or (side is SELL and incr < 0):
                    return (
                        Code.ICEBERG_INCREMENT_SIGN,
                        f"price increment {fmt_price(incr)}: a buy iceberg takes only a"
                        " negative increment, a sell iceberg only a positive one (A1§3.4.1)",
                    )
                last = price + incr * ((qty + peak - 1) // peak - 1)
                if last < cfg.price_min or last > cfg.price_max:
                    return (
                        Code.ICEBERG_PRICE_OUT_OF_RANGE,
                        f"the last instantiation's price {fmt_price(last)} €/MWh would be"
                        f" outside [{fmt_price(cfg.price_min)}, {fmt_price(cfg.price_max)}]"
                        " (R46.2.1, A1§3.4.1)",
                    )
        elif incr:
            return (
                Code.ICEBERG_INCREMENT_WITHOUT_PEAK,
                "a price increment needs an iceberg peak (A1§3.4.1)",
            )
        if validity is GTD:
            if expiry is None:
                return Code.GTD_EXPIRY_MISSING, "a GTD order needs its expiry instant (A1§4.2)"
            if expiry <= ts:
                return (
                    Code.GTD_EXPIRY_NOT_FUTURE,
                    f"GTD expiry {fmt_ms(expiry)} is not after the current instant"
                    f" {fmt_ms(ts)} (A1§4.2)",
                )
            if expiry >= c.close_at:
                return (
                    Code.GTD_EXPIRY_AFTER_CLOSE,
                    f"GTD expiry {fmt_ms(expiry)} is not before the contract's close"
                    f" {fmt_ms(c.close_at)} (A1§4.2)",
                )
        elif expiry is not None:
            return Code.EXPIRY_WITHOUT_GTD, "an expiry instant is only allowed with GTD"
        return None

    def _make(self, cmd: NewOrder, ts: int, basket: int, kind: BasketType) -> Order:
        """A basket member (A1§5): its basket's id and condition go on the order."""
        oid = self.next_order
        self.next_order = oid + 1
        seq = self.next_seq
        self.next_seq = seq + 1
        return Order.new(
            oid, cmd.client_order_id, cmd.contract, cmd.user, cmd.agent, cmd.unit, cmd.side,
            cmd.price, cmd.qty, cmd.peak, cmd.incr, cmd.exec, cmd.validity, cmd.expiry, 1,
            seq, basket, kind, ts,
        )

    # ------------------------------------------------------------------ book operations

    def _rest(self, o: Order, book: Book, ts: int) -> None:
        """Put ``o`` at the back of its price level with a new time priority."""
        seq = self.next_seq
        self.next_seq = seq + 1
        o.seq = seq
        price = o.price
        if o.side is BUY:
            bs = book.bids
            rank = price
        else:
            bs = book.asks
            rank = -price
        lvl = bs.levels.get(rank)
        if lvl is None:
            lvl = bs.add_level(rank, price)
        lvl.orders[seq] = o
        o.live = True
        o.level = lvl
        e = book.entry_seq + 1
        book.entry_seq = e
        o.pub = e
        s = book.pub_seq + 1
        book.pub_seq = s
        self._out.append(
            BookChange((ts, book.contract, s, _ADD, e, o.side, price, o.visible)))

    def _unlink(self, o: Order, book: Book, ts: int) -> None:
        """Take a live instantiation out of its level and publish its removal."""
        lvl: Level = o.level  # type: ignore[assignment]
        o.live = False
        o.level = None
        d = lvl.orders
        del d[o.seq]
        if not d:
            if o.side is BUY:
                book.bids.drop_level(lvl.price)
            else:
                book.asks.drop_level(-lvl.price)
        s = book.pub_seq + 1
        book.pub_seq = s
        self._out.append(
            BookChange((ts, book.contract, s, _REMOVE, o.pub, o.side, o.price, 0)))

    def _execute(self, o: Order, book: Book, ts: int, req_id: str | None, action: str
                 ) -> None:
        """Run a new instantiation against the book, then rest it, fill it or kill it
        according to its execution condition (A1§3).  The order report that ends this
        method is the answer to the request that caused it (it carries ``req_id``).
        ``book`` is the book of the order's contract, which every caller already holds."""
        ex = o.exec
        if ex is FOK and self._available(book, o.side, o.price, o.remaining) < o.remaining:
            # A1§3.3: not fillable in full at acceptable prices: nothing happens at all
            self._finish(o, ts, CANCELLED, req_id, Code.FOK_NOT_FILLABLE,
                         f"fill or kill: {fmt_qty(o.remaining)} MWh not available at"
                         f" {fmt_price(o.price)} €/MWh or better (A1§3.3)")
            return
        if o.side is BUY:
            opp = book.asks
            ranks = opp.ranks
            if ranks and -ranks[-1] <= o.price:
                self._match(o, book, opp, ts)
        else:
            opp = book.bids
            ranks = opp.ranks
            if ranks and ranks[-1] >= o.price:
                self._match(o, book, opp, ts)
        rem = o.remaining
        if rem == 0:
            o.status = INACTIVE
            o.visible = 0
            self._out.append(OrderReport((
                ts, o.id, o.coid, req_id, o.contract, o.user, o.agent, o.unit, o.side,
                FILLED, INACTIVE, o.price, 0, 0, o.filled, ex, o.validity, o.expiry, o.peak,
                o.incr, o.revision, o.basket, o.basket_type, None, None)))
            return
        if ex is NON:
            pk = o.peak
            # A1§3.4: an iceberg shows at most one peak, whatever it matched
            vis = pk if pk and rem > pk else rem
            o.visible = vis
            oid = o.id
            d = self.by_agent.get(o.agent)
            if d is None:
                d = self.by_agent[o.agent] = {}
            d[oid] = o
            if o.validity is GTD:
                self._push_gtd(o)
            self._rest(o, book, ts)
            self._out.append(OrderReport((
                ts, oid, o.coid, req_id, o.contract, o.user, o.agent, o.unit, o.side,
                action, ACTIVE, o.price, vis, rem - vis, o.filled, ex, o.validity, o.expiry,
                pk, o.incr, o.revision, o.basket, o.basket_type, None, None)))
        else:
            # A1§3.2: the unmatched rest of an IoC is removed
            self._finish(o, ts, CANCELLED, req_id, Code.IOC_REMAINDER,
                         f"immediate or cancel: unmatched {fmt_qty(rem)} MWh removed"
                         " (A1§3.2)")

    def _finish(
        self, o: Order, ts: int, action: str, req_id: str | None, code: str, reason: str
    ) -> None:
        """An instantiation that never rested leaves: release its open quantity."""
        g = self.guard
        if g is not None and o.remaining:
            g.released(o, o.remaining)
        o.status = INACTIVE
        o.remaining = 0
        o.visible = 0
        self._report(o, ts, action, req_id, code, reason)

    def _match(self, o: Order, book: Book, opp: BookSide, ts: int) -> None:
        """R47.1: price-time priority; every trade at the resting order's price.  The
        incoming order uses its whole open quantity, one trade per resting instantiation
        (A1§3.4 for an aggressive iceberg); a resting iceberg whose peak is consumed is
        refilled at the back of its level (new creation time, price + increment) and may
        trade again, one trade per instantiation (A1§3.4, A1§3.4.1).

        The hot loop of the engine: counters live in locals and are written back before
        anything else reads them (the iceberg refill path)."""
        append = self._out.append
        g = self.guard
        buy = o.side is BUY
        limit = o.price
        remaining = o.remaining
        contract = o.contract
        rnd = self.round
        aggressor = o.side
        oid, ouser, oagent, ounit = o.id, o.user, o.agent, o.unit
        ranks = opp.ranks
        levels = opp.levels
        by_agent = self.by_agent
        tid = self.next_trade
        pseq = book.pub_seq
        rank = 0
        try:
            while remaining and ranks:
                rank = ranks[-1]
                lvl = levels[rank]
                lp = lvl.price
                if (lp > limit) if buy else (lp < limit):
                    break
                dq = lvl.orders
                at_level = remaining
                while remaining and dq:
                    for r in dq.values():  # noqa: B007 - the first (cheaper than next(iter(...)))
                        break
                    vis = r.visible
                    q = remaining if remaining < vis else vis
                    remaining -= q
                    vis -= q
                    r.visible = vis
                    rrem = r.remaining - q
                    r.remaining = rrem
                    rfilled = r.filled + q
                    r.filled = rfilled
                    if buy:
                        append(Trade((ts, tid, contract, rnd, lp, q, aggressor, oid, ouser,
                                            oagent, ounit, r.id, r.user, r.agent, r.unit)))
                    else:
                        append(Trade((ts, tid, contract, rnd, lp, q, aggressor, r.id,
                                            r.user, r.agent, r.unit, oid, ouser, oagent, ounit)))
                    pseq += 1
                    append(PublicTrade((ts, contract, pseq, tid, lp, q, aggressor, r.pub,
                                              vis)))
                    tid += 1
                    # the guard accounts the resting order's fill once its book entry and
                    # report are done (a defect raising there leaves what was told true)
                    if vis:
                        append(OrderReport((
                            ts, r.id, r.coid, None, contract, r.user, r.agent, r.unit, r.side,
                            PARTIALLY_FILLED, ACTIVE, lp, vis, rrem - vis, rfilled, r.exec,
                            r.validity, r.expiry, r.peak, r.incr, r.revision, r.basket,
                            r.basket_type, None, None)))
                        if g is not None:
                            g.filled(r, q, lp)
                        continue
                    if rrem == 0:  # the visible part is gone, and the order with it
                        del dq[r.seq]
                        r.live = False
                        r.level = None
                        r.status = INACTIVE
                        rid = r.id
                        del by_agent[r.agent][rid]
                        append(OrderReport((
                            ts, rid, r.coid, None, contract, r.user, r.agent, r.unit, r.side,
                            FILLED, INACTIVE, lp, 0, 0, rfilled, r.exec, r.validity, r.expiry,
                            r.peak, r.incr, r.revision, r.basket, r.basket_type, None, None)))
                        if g is not None:
                            g.filled(r, q, lp)
                        continue
                    # an iceberg's peak is gone: its fill is accounted at the order's value
                    # before a price increment changes it (then it leaves its place)
                    if g is not None:
                        g.filled(r, q, lp)
                    del dq[r.seq]
                    # A1§3.4: iceberg refill with a new creation time (and price, A1§3.4.1);
                    # one REFILLED report tells the owner both the fill and the new peak
                    book.pub_seq = pseq
                    pk = r.peak
                    r.visible = pk if rrem > pk else rrem
                    if r.incr:
                        r.live = False
                        r.price += r.incr
                        self._rest(r, book, ts)  # in its new place before the guard
                        if g is not None:      # reprices it (nothing there reads the book)
                            g.repriced(r, lp)
                    else:
                        self._requeue(r, dq, book, ts)
                    rv = r.visible
                    append(OrderReport((
                        ts, r.id, r.coid, None, contract, r.user, r.agent, r.unit, r.side,
                        REFILLED, ACTIVE, r.price, rv, rrem - rv, rfilled, r.exec, r.validity,
                        r.expiry, pk, r.incr, r.revision, r.basket, r.basket_type, None, None)))
                    pseq = book.pub_seq
                if g is not None and remaining != at_level:
                    # the aggressor's fills at this level, all at its price: one call
                    g.filled(o, at_level - remaining, lp)
                if not dq:
                    opp.drop_level(rank)
        except BaseException:
            # a defect raised mid-trade, and the command's events so far are told with
            # the failure (gateway/core.py): keep them true and never reuse what they used
            self._match_failed(o, book, opp, ts, tid, pseq, remaining, rank)
            raise
        self.next_trade = tid
        book.pub_seq = pseq
        o.filled += o.remaining - remaining
        o.remaining = remaining

    def _requeue(self, r: Order, dq: dict[int, Order], book: Book, ts: int) -> None:
        """A1§3.4: an iceberg refilled at its price goes to the back of its level with a
        new creation time and a new public entry (its visible part set by the caller)."""
        seq = self.next_seq
        self.next_seq = seq + 1
        r.seq = seq
        dq[seq] = r
        e = book.entry_seq + 1
        book.entry_seq = e
        r.pub = e
        book.pub_seq += 1
        self._out.append(BookChange((ts, r.contract, book.pub_seq, _ADD, e, r.side, r.price,
                                     r.visible)))

    def _match_failed(self, o: Order, book: Book, opp: BookSide, ts: int, tid: int,
                      pseq: int, remaining: int, rank: int) -> None:
        """What :meth:`_match` leaves when something raises inside its loop (a defect: the
        risk guard's fill accounting, say) after trades were made and their events
        appended.  Those events are told (``Core.apply``), so the state must agree with
        them: the trade ids and public sequence numbers they used are not given again,
        the aggressor's fills are its own, and a resting order the last trade emptied
        does not stay in the queue with nothing visible (it would trade 0 with the next
        order): filled, it leaves the book; an iceberg is refilled at the back of its
        level at its own price (without the price increment: the failure came before
        it).  The guard's accounting of the failed step stays as it was left."""
        self.next_trade = tid
        if pseq > book.pub_seq:
            book.pub_seq = pseq
        o.filled += o.remaining - remaining
        o.remaining = remaining
        self._match_failed_resting(book, opp, ts, rank)
        if self.orders.get(o.id) is not o:
            # the incoming order was not in the book yet (a new order, a modification's
            # new order, a reactivation): it will not rest; its owner is told where it is
            done = o.remaining == 0
            o.status = INACTIVE
            o.live = False
            o.remaining = o.visible = 0
            self._out.append(OrderReport((
                ts, o.id, o.coid, None, o.contract, o.user, o.agent, o.unit, o.side,
                FILLED if done else CANCELLED, INACTIVE, o.price, 0, 0, o.filled, o.exec,
                o.validity, o.expiry, o.peak, o.incr, o.revision, o.basket, o.basket_type,
                None if done else "INTERNAL_ERROR",
                None if done else "the command failed inside the engine")))

    def _match_failed_resting(self, book: Book, opp: BookSide, ts: int, rank: int) -> None:
        """The resting side of :meth:`_match_failed`: the level being traded, dropped if
        it is empty; its first order, if the last trade emptied its visible part, filled
        or refilled."""
        lvl = opp.levels.get(rank)
        if lvl is None:
            return
        if not lvl.orders:
            opp.drop_level(rank)
            return
        dq = lvl.orders
        r = next(iter(dq.values()))  # the first: the one the loop was trading with
        if r.visible:
            return
        del dq[r.seq]
        contract = r.contract
        if r.remaining == 0:
            r.live = False
            r.level = None
            r.status = INACTIVE
            self.by_agent[r.agent].pop(r.id, None)
            self._out.append(OrderReport((
                ts, r.id, r.coid, None, contract, r.user, r.agent, r.unit, r.side, FILLED,
                INACTIVE, r.price, 0, 0, r.filled, r.exec, r.validity, r.expiry, r.peak,
                r.incr, r.revision, r.basket, r.basket_type, None, None)))
            if not dq:
                opp.drop_level(rank)
            return
        pk = r.peak
        r.visible = pk if r.remaining > pk else r.remaining
        self._requeue(r, dq, book, ts)
        rv = r.visible
        self._out.append(OrderReport((
            ts, r.id, r.coid, None, contract, r.user, r.agent, r.unit, r.side, REFILLED,
            ACTIVE, r.price, rv, r.remaining - rv, r.filled, r.exec, r.validity, r.expiry,
            pk, r.incr, r.revision, r.basket, r.basket_type, None, None)))

    def _available(self, book: Book, side: Side, limit: int, needed: int) -> int:
        """Quantity the opposite side offers at ``limit`` or better, counting every
        instantiation of resting icebergs at its own price; stops once ``needed`` is
        reached.  Matching consumes exactly this liquidity (best price first), so an order
        is fillable in full iff this reaches its quantity (A1§3.3).

        The same sum as over :meth:`_liquidity`, written as plain loops: a fill-or-kill
        order reads every acceptable instantiation, and a generator's step per order cost
        more than the rest of the check (a killed FOK took about 20 µs)."""
        total = 0
        buy = side is BUY
        opp = book.asks if buy else book.bids
        levels = opp.levels
        for rank in reversed(opp.ranks):
            lvl = levels[rank]
            lp = lvl.price
            if (lp > limit) if buy else (lp < limit):
                break
            for r in lvl.orders.values():
                incr = r.incr
                if not incr:
                    total += r.remaining  # visible and hidden, all at this price
                    continue
                # A1§3.4.1: each later peak one increment further, while acceptable
                total += r.visible
                hidden = r.remaining - r.visible
                p = lp
                pk = r.peak
                while hidden:
                    p += incr
                    if (p > limit) if buy else (p < limit):
                        break
                    q = pk if hidden > pk else hidden
                    total += q
                    hidden -= q
            if total >= needed:
                break
        return total

    def _liquidity(self, book: Book, side: Side, limit: int) -> Iterator[tuple[int, int]]:
        """(price, quantity) chunks acceptable to a ``side`` order at ``limit``, by level."""
        buy = side is BUY
        opp = book.asks if buy else book.bids
        for lvl in opp.in_order():
            lp = lvl.price
            if (lp > limit) if buy else (lp < limit):
                return
            for r in lvl.orders.values():
                yield lp, r.visible
                hidden = r.remaining - r.visible
                if hidden:
                    if not r.incr:
                        yield lp, hidden
                        continue
                    p = lp
                    pk = r.peak
                    while hidden:
                        p += r.incr
                        if (p > limit) if buy else (p < limit):
                            break
                        q = pk if hidden > pk else hidden
                        yield p, q
                        hidden -= q

    # ------------------------------------------------------------------ order entry

    def _on_new(self, cmd: NewOrder, ts: int) -> None:
        c = self.contracts.get(cmd.contract)
        price = cmd.price
        qty = cmd.qty
        cfg = self.cfg
        if (
            c is not None and c.state is TRADE and ts < c.close_at  # R45.f gate closure
            and not cmd.peak and not cmd.incr
            and cmd.expiry is None and cmd.validity is GFS and not cmd.hibernated
            and cmd.client_order_id is None
            and cfg.price_min <= price <= cfg.price_max and cfg.qty_min <= qty <= cfg.qty_max
        ):
            pass  # the common case: a plain valid order; every check is in _check_new
        else:
            rej = self._check_new(cmd, ts)
            if rej is not None:
                self._reject(ts, cmd.user, cmd.agent, cmd.req_id, rej[0], rej[1],
                             cmd.client_order_id)
                return
        oid = self.next_order
        self.next_order = oid + 1
        seq = self.next_seq
        self.next_seq = seq + 1
        # Order.new's fields, set here from the command: the same through a call, with the
        # command's values passed, costs 0.09 µs more per new order (docs/performance.md)
        o = Order()
        o.id = oid
        o.coid = cmd.client_order_id
        o.contract = cmd.contract
        o.user = cmd.user
        o.agent = cmd.agent
        o.unit = cmd.unit
        o.side = cmd.side
        o.price = price
        o.qty = qty
        o.remaining = qty
        o.visible = qty
        o.peak = cmd.peak
        o.incr = cmd.incr
        o.exec = cmd.exec
        o.validity = cmd.validity
        o.expiry = cmd.expiry
        o.status = ACTIVE
        o.revision = 1
        o.seq = 0
        o.arrival = seq
        o.basket = 0
        o.basket_type = None
        o.filled = 0
        o.live = False
        o.entered = ts
        o.pub = 0
        o.level = None
        o.ext = None
        g = self.guard
        if g is not None:
            rej = g.admit(o, ts, None)
            if rej is not None:
                self.next_order -= 1
                self._reject(ts, cmd.user, cmd.agent, cmd.req_id, rej[0], rej[1],
                             cmd.client_order_id)
                return
        if cmd.client_order_id is not None:
            self._coids.add((cmd.user, cmd.client_order_id))
        if cmd.hibernated:
            self._store_hibernated(o, ts, cmd.req_id)
        else:
            self._execute(o, c.book, ts, cmd.req_id, ADDED)  # type: ignore[union-attr]

    def _check_new(self, cmd: NewOrder, ts: int) -> tuple[str, str] | None:
        rej = self._validate(
            self.contracts.get(cmd.contract), cmd.contract, cmd.side, cmd.price, cmd.qty,
            cmd.exec, cmd.validity, cmd.expiry, cmd.peak, cmd.incr, ts,
        )
        if rej is not None:
            return rej
        if cmd.hibernated and cmd.exec is not NON:
            return (Code.HIBERNATED_ENTRY_NOT_RESTING,
                    f"an order entered hibernated must be able to rest; {cmd.exec.value} cannot")
        coid = cmd.client_order_id
        if coid is not None and self._coid_seen(cmd.user, coid, ts):
            return (Code.DUPLICATE_CLIENT_ORDER_ID,
                    f"client order id {coid!r} already used by {cmd.user} today")
        return None

    def _enter(self, o: Order, cmd: NewOrder, ts: int) -> None:
        if cmd.hibernated:
            self._store_hibernated(o, ts, cmd.req_id)
        else:
            self._execute(o, self.contracts[o.contract].book, ts, cmd.req_id, ADDED)

    def _store_hibernated(self, o: Order, ts: int, req_id: str | None) -> None:
        """An order entered in the inactive state: valid now, kept out of the book."""
        g = self.guard
        if g is not None:
            g.released(o, o.remaining)
        o.status = HIBERNATED
        o.visible = o.peak if o.peak and o.remaining > o.peak else o.remaining
        self._index(o)
        if o.validity is GTD:
            self._push_gtd(o)
        self._report(o, ts, ADDED, req_id)

    def _on_basket(self, cmd: EnterBasket, ts: int) -> None:
        """R46.2.10, A1§5: NONE (independent), VALID (all valid or all rejected), LINKED
        (all FoK, all filled or none, decided and executed atomically)."""
        members = cmd.orders
        u, a, rq = cmd.user, cmd.agent, cmd.req_id
        if not members:
            self._reject(ts, u, a, rq, Code.BASKET_EMPTY, "a basket needs at least one order")
            return
        if len(members) > self.cfg.max_basket:
            self._reject(ts, u, a, rq, Code.BASKET_TOO_LARGE,
                         f"{len(members)} orders in a basket; at most {self.cfg.max_basket}")
            return
        kind = cmd.basket
        bid = self.next_basket
        self.next_basket = bid + 1
        if kind is BasketType.NONE:
            ids: list[int] = []
            for m in members:
                n_before = self.next_order
                self._on_new_member(m, ts, bid, kind)
                if self.next_order > n_before:
                    ids.append(n_before)
            self._out.append(Ack((ts, u, rq, "basket_entry", tuple(ids))))
            return
        # VALID and LINKED: every member must pass, or the whole basket is rejected
        errors: list[tuple[int, str, str]] = []
        seen: set[str] = set()
        for i, m in enumerate(members):
            rej = self._check_new(m, ts)
            if rej is None and kind is BasketType.LINKED and m.exec is not FOK:
                rej = (Code.LINKED_MEMBER_NOT_FOK,
                       "every order of a linked basket carries FoK (A1§5.3)")
            if rej is None and m.client_order_id is not None:
                if m.client_order_id in seen:
                    rej = (Code.DUPLICATE_CLIENT_ORDER_ID,
                           f"client order id {m.client_order_id!r} repeated in the basket")
                seen.add(m.client_order_id)
            if rej is not None:
                errors.append((i, rej[0], rej[1]))
        admitted: list[Order] = []
        first_id = self.next_order
        if not errors:
            g = self.guard
            for i, m in enumerate(members):
                o = self._make(m, ts, bid, kind)
                if g is not None:
                    rej = g.admit(o, ts, None)
                    if rej is not None:
                        errors.append((i, rej[0], rej[1]))
                        break
                admitted.append(o)
            if errors:
                for o in admitted:
                    if g is not None:
                        g.released(o, o.remaining)
                admitted.clear()
                self.next_order = first_id
        if errors:
            bad = {i: (c, r) for i, c, r in errors}
            first_bad = errors[0][0]
            for i, m in enumerate(members):
                if i in bad:
                    code, reason = bad[i]
                else:
                    code = Code.BASKET_MEMBER_INVALID
                    reason = (f"basket {kind.value}: rejected with order {first_bad + 1},"
                              f" which failed with {errors[0][1]} (A1§5)")
                self._reject(ts, u, a, rq, code, reason, m.client_order_id)
            self._reject(ts, u, a, rq, Code.BASKET_MEMBER_INVALID,
                         f"basket {kind.value} rejected: order {first_bad + 1} failed with"
                         f" {errors[0][1]}: {errors[0][2]}")
            return
        for m in members:
            if m.client_order_id is not None:
                self._coids.add((m.user, m.client_order_id))
        if kind is BasketType.LINKED and not self._linked_fillable(admitted):
            for o in admitted:
                self._finish(o, ts, CANCELLED, rq, Code.LINKED_NOT_FILLABLE,
                             "linked basket: not every order can be filled in full, so none"
                             " is (A1§5.3)")
        else:
            for o, m in zip(admitted, members, strict=True):
                self._enter(o, m, ts)
        self._out.append(Ack((ts, u, rq, "basket_entry", tuple(o.id for o in admitted))))

    def _on_new_member(self, cmd: NewOrder, ts: int, basket: int, kind: BasketType
                       ) -> None:
        rej = self._check_new(cmd, ts)
        if rej is None:
            o = self._make(cmd, ts, basket, kind)
            g = self.guard
            if g is not None:
                rej = g.admit(o, ts, None)
                if rej is not None:
                    self.next_order -= 1
        if rej is not None:
            self._reject(ts, cmd.user, cmd.agent, cmd.req_id, rej[0], rej[1],
                         cmd.client_order_id)
            return
        if cmd.client_order_id is not None:
            self._coids.add((cmd.user, cmd.client_order_id))
        self._enter(o, cmd, ts)

    def _linked_fillable(self, orders: list[Order]) -> bool:
        """A1§5.3: would every order of the linked basket fill in full, executed one after
        the other?  Orders on the same contract and side compete for the same liquidity,
        which matching consumes best price first: simulate that per group."""
        groups: dict[tuple[str, Side], list[Order]] = {}
        for o in orders:
            groups.setdefault((o.contract, o.side), []).append(o)
        for (contract, side), group in groups.items():
            book = self.contracts[contract].book
            if len(group) == 1:
                o = group[0]
                if self._available(book, side, o.price, o.remaining) < o.remaining:
                    return False
                continue
            loosest = max(o.price for o in group) if side is BUY else min(
                o.price for o in group)
            depth: dict[int, int] = {}
            for p, q in self._liquidity(book, side, loosest):
                depth[p] = depth.get(p, 0) + q
            prices = sorted(depth, reverse=side is SELL)
            for o in group:
                need = o.remaining
                for p in prices:
                    if need == 0 or ((p > o.price) if side is BUY else (p < o.price)):
                        break
                    take = min(need, depth[p])
                    depth[p] -= take
                    need -= take
                if need:
                    return False
        return True

    # ------------------------------------------------------------------ modify and cancel

    def _owned(self, order_id: int, agent: str) -> Order | None:
        """An order is visible only to its agent: others get ORDER_UNKNOWN (R46.2.12)."""
        return self.by_agent.get(agent, _NO_ORDERS).get(order_id)

    def _on_modify(self, cmd: ModifyOrder, ts: int) -> None:
        """R46.2.6.1: a modification is a cancellation plus a new order: it passes every
        check again and loses time priority.  A refused modification leaves the order as
        it was."""
        u, a, rq = cmd.user, cmd.agent, cmd.req_id
        o = self._owned(cmd.order_id, a)
        if o is None:
            self._reject(ts, u, a, rq, Code.ORDER_UNKNOWN,
                         f"no live order {cmd.order_id} of agent {a}", order_id=cmd.order_id)
            return
        if o.status is not ACTIVE:
            self._reject(ts, u, a, rq, Code.ORDER_NOT_ACTIVE,
                         f"order {o.id} is {o.status.value}; only an order resting in the book"
                         " can be modified (R46.2.6.1)", o.coid, o.id)
            return
        if cmd.revision != o.revision:
            self._reject(ts, u, a, rq, Code.STALE_REVISION,
                         f"revision {cmd.revision} is stale; order {o.id} is at revision"
                         f" {o.revision}", o.coid, o.id)
            return
        val: Validity = o.validity
        exp = o.expiry
        if (cmd.validity is not None or cmd.expiry is not None) and (
                cmd.validity, cmd.expiry) != (val, exp):  # none: the order's own
            self._reject(ts, u, a, rq, Code.MODIFY_CHANGES_FIXED_FIELD,
                         f"order {o.id} is {_validity_text(o.validity, o.expiry)}; a"
                         " modification may change its quantity, price and execution"
                         " conditions, not its validity (R46.2.6): cancel it and enter a"
                         " new order", o.coid, o.id)
            return
        c = self.contracts[o.contract]
        cfg = self.cfg
        qty, peak = cmd.qty, cmd.peak
        if qty is None:  # the open quantity now; an iceberg's peak at most that (as at
            qty = o.remaining  # a reactivation): a fill meanwhile cannot make it refused
            if peak > qty:
                peak = qty
        if not (
            c.state is TRADE and ts < c.close_at  # R45.f gate closure, A1§3.1
            and cmd.exec is NON and not peak and not cmd.incr
            and exp is None and val is GFS
            and cfg.price_min <= cmd.price <= cfg.price_max
            and cfg.qty_min <= qty <= cfg.qty_max
        ):  # else a plain valid modification: every check is in _validate
            rej = self._validate(c, o.contract, o.side, cmd.price, qty, cmd.exec,
                                 val, exp, peak, cmd.incr, ts)
            if rej is not None:
                self._reject(ts, u, a, rq, rej[0], rej[1], o.coid, o.id)
                return
        n = Order.new(o.id, o.coid, o.contract, o.user, o.agent, o.unit, o.side, cmd.price,
                      qty, peak, cmd.incr, cmd.exec, val, exp,
                      o.revision + 1, o.arrival, o.basket, o.basket_type, ts)
        n.filled = o.filled
        g = self.guard
        if g is not None:
            rej = g.admit(n, ts, o)
            if rej is not None:
                self._reject(ts, u, a, rq, rej[0], rej[1], o.coid, o.id)
                return
        book = c.book
        self._unlink(o, book, ts)
        o.status = INACTIVE
        self._unindex(o)
        self._execute(n, book, ts, rq, MODIFIED)

    def _remove(
        self, o: Order, ts: int, action: str, req_id: str | None, code: str | None,
        reason: str | None,
    ) -> None:
        """Take a live or hibernated order away for good (cancel, expiry, close)."""
        if o.live:
            # the guard first: if it raised, the order would still be in the book, live,
            # with its hold, instead of out of the book and ACTIVE with a hold leaked
            g = self.guard
            if g is not None:
                g.released(o, o.remaining)
            self._unlink(o, self.contracts[o.contract].book, ts)
        o.status = INACTIVE
        o.remaining = 0
        o.visible = 0
        self._unindex(o)
        self._report(o, ts, action, req_id, code, reason)

    def _cancellable(self, o: Order, ts: int) -> tuple[str, str] | None:
        """A1§3.1, R46.2.6.2: cancellation while the contract is in TRADE; hibernated orders
        too, «en los momentos que el mercado permita la anulación» (R46.2.7).  Past the
        gate closure, until the calendar's close is applied, the owner may still cancel:
        it only takes an order out, as the close would at once (its guarantee and energy
        holds are freed for the contracts still trading; see :func:`_past_gate_closure`)."""
        st = self.contracts[o.contract].state
        if st is TRADE:
            return None
        return (Code.CONTRACT_NOT_TRADING,
                f"contract {o.contract} is {st.value}; orders can be cancelled only while it"
                " is in TRADE (A1§3.1, R46.2.6.2)")

    def _on_cancel(self, cmd: CancelOrder, ts: int) -> None:
        d = self.by_agent.get(cmd.agent, _NO_ORDERS)
        o = d.get(cmd.order_id)
        if o is None:
            self._reject(ts, cmd.user, cmd.agent, cmd.req_id, Code.ORDER_UNKNOWN,
                         f"no live order {cmd.order_id} of agent {cmd.agent}",
                         order_id=cmd.order_id)
            return
        c = self.contracts[o.contract]
        if c.state is not TRADE:  # A1§3.1 (past the gate closure, still: _cancellable)
            rej = self._cancellable(o, ts)
            assert rej is not None
            self._reject(ts, cmd.user, cmd.agent, cmd.req_id, rej[0], rej[1], o.coid, o.id)
            return
        if o.live:
            g = self.guard
            if g is not None:  # before the book changes (_remove)
                g.released(o, o.remaining)
            self._unlink(o, c.book, ts)
        o.status = INACTIVE
        o.remaining = 0
        o.visible = 0
        oid = o.id
        del d[oid]
        self._out.append(OrderReport((
            ts, oid, o.coid, cmd.req_id, o.contract, o.user, o.agent, o.unit, o.side,
            CANCELLED, INACTIVE, o.price, 0, 0, o.filled, o.exec, o.validity, o.expiry, o.peak,
            o.incr, o.revision, o.basket, o.basket_type, None, None)))

    def _select(
        self, agent: str, user: str | None, contract: str | None, status: Any | None
    ) -> list[Order]:
        """Orders of an agent (optionally of one user, one contract, one status), in
        arrival order (R46.2.7)."""
        d = self.by_agent.get(agent)
        if not d:
            return []
        sel = [
            o for o in d.values()
            if (user is None or o.user == user)
            and (contract is None or o.contract == contract)
            and (status is None or o.status is status)
        ]
        sel.sort(key=_arrival_key)
        return sel

    def _on_cancel_all(self, cmd: CancelAll, ts: int) -> None:
        """R46.2.6.2: every order of the user or of the agent, optionally of one contract;
        active and hibernated."""
        u, a, rq = cmd.user, cmd.agent, cmd.req_id
        if cmd.scope not in ("user", "agent"):
            self._reject(ts, u, a, rq, Code.NOTHING_TO_DO,
                         f"scope {cmd.scope!r} is neither 'user' nor 'agent'")
            return
        sel = self._select(a, u if cmd.scope == "user" else None, cmd.contract, None)
        done = []
        for o in sel:
            if self._cancellable(o, ts) is None:
                self._remove(o, ts, CANCELLED, rq, None, None)
                done.append(o.id)
        self._out.append(Ack((ts, u, rq, "cancel_all", tuple(done))))

    # ------------------------------------------------------------------ hibernation

    def _hibernate(self, o: Order, ts: int, req_id: str | None, reason: str | None) -> None:
        """R46.2.7: the order leaves the book, is inactive and cannot match; its value is
        released at once."""
        g = self.guard
        if g is not None:  # before the book changes (_remove)
            g.released(o, o.remaining)
        self._unlink(o, self.contracts[o.contract].book, ts)
        o.status = HIBERNATED
        o.visible = o.peak if o.peak and o.remaining > o.peak else o.remaining
        self._report(o, ts, HIBERNATED_A, req_id, None, reason)

    def _reactivate_all(self, sel: list[Order], ts: int, req_id: str | None) -> None:
        """R46.2.7 and A1§5: reactivate ``sel``, hibernated orders in arrival order (the
        one place every reactivation goes through: the owner's ``Activate``, the platform's
        ``ReactivateOrders``, the auctions' reopening).

        R46.2.7: «serán reactivadas por orden de llegada ... En caso de pertenecer a una
        misma Cesta de Ofertas, la reactivación se realizará respetando el orden en dicha
        cesta».  A basket's members arrive in the basket's order, one after the other with
        no other order between them, and a modification keeps the arrival, so arrival
        order is the basket's order too.

        A1§5.2 (VALID): «deberán ser todas aceptadas como válidas. Si alguna de las ofertas
        incluidas en la cesta es declarada no válida, no se tendrá en cuenta el resto puesto
        que serán todas rechazadas».  The members of one VALID basket in ``sel`` are taken
        together, at the place of the first of them: validated as a VALID basket is entered
        (:meth:`_reactivate_valid`), then all reactivated or all rejected.  A NONE basket's
        members (A1§5.1: «sin relación entre ellas») and orders of no basket come back or
        fail one by one.  A LINKED basket's members are all FoK (A1§5.3) and never rest, so
        they are never hibernated.

        Only the members in ``sel`` are taken: a basket that is only partly hibernated (a
        member already filled, cancelled, or still active in a contract that was not
        paused) or partly selected (the owner named a subset, R46.2.7 «activar
        individualmente sólo un subconjunto de ellas»; the platform reactivates the contracts
        it reopens) has the members being reactivated validated together, and the others
        are left as they are.  An active member is not rejected because a sleeping one fails:
        it was accepted with its basket and has been in the book since, and no rule lets the
        platform take an active order away but a cancellation (R46.2.6.2).  A member left
        hibernated is validated, with the members then reactivated with it, when it comes
        back."""
        valid: dict[int, list[Order]] | None = None
        for o in sel:
            if o.basket_type is VALID_BASKET:
                if valid is None:
                    valid = {}
                group = valid.get(o.basket)
                if group is None:
                    valid[o.basket] = [o]
                else:
                    group.append(o)
        for o in sel:
            if o.basket_type is not VALID_BASKET:
                self._reactivate(o, ts, req_id)
                continue
            assert valid is not None
            group = valid[o.basket]
            if group[0] is o:  # the basket at its first member's place, in its order
                self._reactivate_valid(group, ts, req_id)

    def _revalidate(self, o: Order, ts: int) -> tuple[str, str] | None:
        """R46.2.7: the engine's checks of a hibernated order as if it were entered again
        now (its open quantity, a peak no larger than it)."""
        return self._validate(self.contracts[o.contract], o.contract, o.side, o.price,
                              o.remaining, o.exec, o.validity, o.expiry,
                              o.peak if o.peak <= o.remaining else o.remaining, o.incr, ts)

    def _reject_hibernated(self, o: Order, ts: int, req_id: str | None, code: str,
                           reason: str) -> None:
        """R46.2.7: a hibernated order that fails its reactivation is rejected, with the
        reason (its value was released when it was hibernated)."""
        o.status = INACTIVE
        o.remaining = 0
        o.visible = 0
        self._unindex(o)
        self._report(o, ts, REJECTED, req_id, code, reason)

    def _reactivate(self, o: Order, ts: int, req_id: str | None) -> None:
        """R46.2.7: a reactivated order is validated exactly as a new order and behaves as
        one (new priority, may match at once); it comes back whole or is rejected."""
        n = o.clone(o.revision + 1, ts)
        n.status = ACTIVE
        rej = self._revalidate(o, ts)
        if rej is None and self.guard is not None:
            rej = self.guard.admit(n, ts, None)
        if rej is not None:
            self._reject_hibernated(o, ts, req_id, rej[0], rej[1])
            return
        self._unindex(o)
        self._execute(n, self.contracts[o.contract].book, ts, req_id, ACTIVATED)

    def _reactivate_valid(self, members: list[Order], ts: int, req_id: str | None) -> None:
        """A1§5.2 at the reactivation of R46.2.7: the hibernated ``members`` of one VALID
        basket, in the basket's order, are checked as entering a VALID basket checks its
        orders (:meth:`_on_basket`): the engine's checks on every member, then the guard's
        admission of each in turn, holding the members before it; then all are
        reactivated, in the basket's order, each behaving as a new order, or all are
        rejected: a member that failed with its own reason, the others with
        BASKET_MEMBER_INVALID naming the first that failed."""
        fresh: list[Order] = []
        errors: dict[int, tuple[str, str]] = {}
        first_bad = -1
        for i, o in enumerate(members):
            n = o.clone(o.revision + 1, ts)
            n.status = ACTIVE
            fresh.append(n)
            rej = self._revalidate(o, ts)
            if rej is not None:
                errors[i] = rej
                if first_bad < 0:
                    first_bad = i
        g = self.guard
        if first_bad < 0 and g is not None:
            for i, n in enumerate(fresh):
                rej = g.admit(n, ts, None)
                if rej is not None:
                    errors[i] = rej
                    first_bad = i
                    for held in fresh[:i]:  # give back the trial admissions
                        g.released(held, held.remaining)
                    break
        if first_bad < 0:
            contracts = self.contracts
            for o, n in zip(members, fresh, strict=True):
                self._unindex(o)
                self._execute(n, contracts[o.contract].book, ts, req_id, ACTIVATED)
            return
        bad = members[first_bad]
        bad_code = errors[first_bad][0]
        for i, o in enumerate(members):
            err = errors.get(i)
            if err is None:
                err = (Code.BASKET_MEMBER_INVALID,
                       f"basket VALID: rejected with order {bad.id}, which failed its"
                       f" reactivation with {bad_code} (A1§5.2, R46.2.7)")
            self._reject_hibernated(o, ts, req_id, err[0], err[1])

    def _on_deactivate(self, cmd: Deactivate, ts: int) -> None:
        u, a, rq = cmd.user, cmd.agent, cmd.req_id
        if cmd.order_ids is None:
            sel = self._select(a, None, cmd.contract, ACTIVE)
        else:
            sel = []
            for oid in cmd.order_ids:
                o = self._owned(oid, a)
                if o is None:
                    self._reject(ts, u, a, rq, Code.ORDER_UNKNOWN,
                                 f"no live order {oid} of agent {a}", order_id=oid)
                    return
                if o.status is not ACTIVE:
                    self._reject(ts, u, a, rq, Code.ORDER_NOT_ACTIVE,
                                 f"order {oid} is {o.status.value}, not ACTIVE", o.coid, oid)
                    return
                sel.append(o)
            sel = sorted(set(sel), key=_arrival_key)
        for o in sel:
            self._hibernate(o, ts, rq, "deactivated by its owner")
        self._out.append(Ack((ts, u, rq, "order_deactivate", tuple(o.id for o in sel))))

    def _on_activate(self, cmd: Activate, ts: int) -> None:
        """R46.2.7: the owner reactivates one order, a list, or all its hibernated orders:
        in arrival order, baskets kept in order, each whole or rejected; the members of a
        VALID basket among them all back or all rejected (A1§5.2, :meth:`_reactivate_all`).
        A list naming some members of a VALID basket takes those only (R46.2.7: «activar
        individualmente sólo un subconjunto de ellas»)."""
        u, a, rq = cmd.user, cmd.agent, cmd.req_id
        if cmd.order_ids is None:
            contracts = self.contracts
            sel = [o for o in self._select(a, None, cmd.contract, HIBERNATED)
                   if contracts[o.contract].state is TRADE
                   and ts < contracts[o.contract].close_at]  # R45.f gate closure
        else:
            sel = []
            for oid in cmd.order_ids:
                o = self._owned(oid, a)
                if o is None:
                    self._reject(ts, u, a, rq, Code.ORDER_UNKNOWN,
                                 f"no live order {oid} of agent {a}", order_id=oid)
                    return
                if o.status is not HIBERNATED:
                    self._reject(ts, u, a, rq, Code.ORDER_NOT_HIBERNATED,
                                 f"order {oid} is {o.status.value}, not HIBERNATED",
                                 o.coid, oid)
                    return
                c = self.contracts[o.contract]
                st = c.state
                if st is not TRADE:
                    self._reject(ts, u, a, rq, Code.CONTRACT_NOT_TRADING,
                                 f"contract {o.contract} is {st.value}; orders can be"
                                 " reactivated only in TRADE", o.coid, oid)
                    return
                if ts >= c.close_at:
                    code, reason = _past_gate_closure(c)
                    self._reject(ts, u, a, rq, code, reason, o.coid, oid)
                    return
                sel.append(o)
            sel = sorted(set(sel), key=_arrival_key)
        self._reactivate_all(sel, ts, rq)  # a VALID basket's members together (A1§5.2)
        self._out.append(Ack((ts, u, rq, "order_activate", tuple(o.id for o in sel))))

    # ------------------------------------------------------------------ time

    def _expire(self, ts: int) -> None:
        """A1§4.2: GTD orders are valid until their instant; active and hibernated alike.
        An entry leaves the heap before its order is removed: should the removal raise (a
        defect: the command fails, gateway/core.py, and the operator is alerted), the order
        is left as it was, in the book, and is not tried again, since this runs before
        every command: a removal that kept failing would make every later command of every
        trader fail with it, the operator's cancel included."""
        gtd = self._gtd
        by_agent = self.by_agent
        while gtd and gtd[0][0] <= ts:
            exp, _, oid, agent = heappop(gtd)
            o = by_agent[agent].get(oid)
            if o is not None and o.validity is GTD and o.expiry == exp:
                self._remove(o, ts, EXPIRED, None, Code.GTD_EXPIRED,
                             f"good till {fmt_ms(exp)}: validity ended (A1§4.2)")

    def _on_tick(self, cmd: Tick, ts: int) -> None:
        return None  # expiries already ran in apply()

    # ------------------------------------------------------------------ contracts

    def _op_reject(self, ts: int, code: str, reason: str) -> None:
        self._reject(ts, "operator", "", None, code, reason)

    def _contracts_for(self, ids: tuple[str, ...], target: ContractState, ts: int
                       ) -> list[Contract] | None:
        """Look up and check every contract first, so a bad list changes nothing."""
        if not ids:
            self._op_reject(ts, Code.NOTHING_TO_DO, "no contracts given")
            return None
        found = []
        for cid in ids:
            c = self.contracts.get(cid)
            if c is None:
                self._op_reject(ts, Code.CONTRACT_UNKNOWN, f"contract {cid} does not exist")
                return None
            try:
                check_contract_transition(c.state, target)
            except IllegalTransition as exc:
                self._op_reject(ts, Code.ILLEGAL_TRANSITION, f"{cid}: {exc} (R45.f)")
                return None
            found.append(c)
        if len(set(ids)) != len(ids):
            self._op_reject(ts, Code.NOTHING_TO_DO, "a contract is listed twice")
            return None
        return found

    def _set_state(self, c: Contract, target: ContractState, ts: int, reason: str | None
                   ) -> None:
        prev = c.state
        check_contract_transition(prev, target)
        c.state = target
        c.reason = reason
        self._out.append(ContractStateChanged((ts, c.id, target.value, prev.value, c.close_at,
                                              reason)))

    def _on_create(self, cmd: CreateContract, ts: int) -> None:
        try:
            spec = ContractSpec.parse(cmd.contract)
        except InvalidIdentifier as exc:
            self._op_reject(ts, Code.CONTRACT_UNKNOWN, str(exc))
            return
        if spec.id in self.contracts:
            self._op_reject(ts, Code.NOTHING_TO_DO, f"contract {spec.id} already exists")
            return
        c = Contract(spec, cmd.close_at)
        self.contracts[c.id] = c
        self._out.append(
            ContractStateChanged((ts, c.id, c.state.value, None, c.close_at, None)))

    def _on_open(self, cmd: OpenContracts, ts: int) -> None:
        for c in self._contracts_for(cmd.contracts, TRADE, ts) or ():
            self._set_state(c, TRADE, ts, None)

    def _on_close(self, cmd: CloseContracts, ts: int) -> None:
        """R45.g: closing the negotiation of contracts closes the round; A1§4.1: what is
        left is cancelled.

        R45.g: «El cierre de una ronda está asociado con el cierre de negociación de un
        contrato».  Only a contract that was in negotiation (TRADE, or INT: negotiation
        interrupted, R45.f; INT is reached only from TRADE) has its negotiation closed.  A
        contract withdrawn from UPC («cerrado y a la espera de ser abierto a negociación»)
        was never negotiated: it goes to FIN, but closes no round, so the trades of the
        contracts still trading stay in the current round and no round sync runs.  A close
        naming both kinds closes one round, listing the contracts that were negotiated."""
        found = self._contracts_for(cmd.contracts, ContractState.FIN, ts)
        if found is None:
            return
        ids = {c.id for c in found}
        negotiated = tuple(c.id for c in found if c.state is not UPC)
        left = sorted((o for o in self.orders.values() if o.contract in ids), key=_arrival_key)
        for o in left:
            self._remove(o, ts, CANCELLED, None, Code.CONTRACT_CLOSE,
                         f"contract {o.contract} closed (A1§4.1)")
        for c in found:
            self._set_state(c, ContractState.FIN, ts, "closed")
        if not negotiated:
            return
        closed = self.round
        # the next round starts before the guard is told: should the guard raise (a defect:
        # the command fails, gateway/core.py), the trades that follow are still the next
        # round's, as the RoundClosed told, not settled with the closed one
        self.round = closed + 1
        self._out.append(RoundClosed((ts, closed, negotiated)))
        if self.guard is not None:
            self.guard.round_closed(closed, ts)

    def _on_interrupt(self, cmd: InterruptContracts, ts: int) -> None:
        """R48.b, R46.2.7: trading stops and the contracts' active orders are hibernated."""
        found = self._contracts_for(cmd.contracts, INT, ts)
        if found is None:
            return
        ids = {c.id for c in found}
        for c in found:
            self._set_state(c, INT, ts, cmd.reason)
        act = sorted((o for o in self.orders.values() if o.contract in ids and o.live),
                     key=_arrival_key)
        for o in act:
            self._hibernate(o, ts, None, cmd.reason)

    def _on_resume(self, cmd: ResumeContracts, ts: int) -> None:
        for c in self._contracts_for(cmd.contracts, TRADE, ts) or ():
            self._set_state(c, TRADE, ts, None)

    def _on_hibernate(self, cmd: HibernateOrders, ts: int) -> None:
        if cmd.contract is None and cmd.agent is None and cmd.user is None:
            self._op_reject(ts, Code.NOTHING_TO_DO, "hibernate needs a contract, agent or user")
            return
        sel = sorted(
            (o for o in self.orders.values()
             if o.live
             and (cmd.contract is None or o.contract == cmd.contract)
             and (cmd.agent is None or o.agent == cmd.agent)
             and (cmd.user is None or o.user == cmd.user)),
            key=_arrival_key,
        )
        for o in sel:
            self._hibernate(o, ts, None, cmd.reason)

    def _on_reactivate(self, cmd: ReactivateOrders, ts: int) -> None:
        """R46.2.7: after an auction, the hibernated orders of the agents that asked for it
        come back in arrival order, each re-validated, whole or rejected; the members of a
        VALID basket in the named contracts all back or all rejected (A1§5.2,
        :meth:`_reactivate_all`).  The orders of a contract that is not in TRADE, or whose
        gate closure has come (:func:`_past_gate_closure`), stay hibernated: the close
        cancels them (A1§4.1)."""
        ids = {cid for cid in cmd.contracts
               if (c := self.contracts.get(cid)) is not None
               and c.state is TRADE and ts < c.close_at}  # R45.f gate closure
        agents = None if cmd.agents is None else set(cmd.agents)
        sel = sorted(
            (o for o in self.orders.values()
             if o.status is HIBERNATED and o.contract in ids
             and (agents is None or o.agent in agents)),
            key=_arrival_key,
        )
        self._reactivate_all(sel, ts, None)  # a VALID basket's members together (A1§5.2)

    def _on_cancel_agent(self, cmd: CancelAgentOrders, ts: int) -> None:
        """R46.2.6.2: deregistration, exclusion or suspension cancels all the agent's orders."""
        for o in self._select(cmd.agent, None, None, None):
            self._remove(o, ts, CANCELLED, None, Code.OPERATOR_CANCEL, cmd.reason)

    def cancel_orders(self, orders: Iterable[Order], ts: int, reason: str) -> None:
        """R46.2.6.2 for registered modules (the risk guard, when it suspends an owner of
        units other agents offer): the operator cancels these live or hibernated orders,
        in arrival order, as :meth:`_on_cancel_agent` does; one no longer in this engine
        is skipped."""
        sel = {o.id: o for o in orders if self._owned(o.id, o.agent) is o}
        for o in sorted(sel.values(), key=_arrival_key):
            self._remove(o, ts, CANCELLED, None, Code.OPERATOR_CANCEL, reason)

    # ------------------------------------------------------------------ inspection

    def state_hash(self) -> str:
        """SHA-256 over a canonical rendering of the whole state: contracts, round,
        counters, every order with every field, the priority order of every level, and the
        guard's state.  Equal hashes mean equal states (DESIGN rule 3)."""
        h = hashlib.sha256()
        h.update(repr((self.now, self.round, self.next_order, self.next_seq,
                       self.next_trade, self.next_basket, self._coid_day_end,
                       sorted(self._coids))).encode())
        for cid in sorted(self.contracts):
            c = self.contracts[cid]
            b = c.book
            h.update(repr((cid, c.state.value, c.close_at, c.reason, b.pub_seq,
                           b.entry_seq)).encode())
            for side in (BUY, SELL):
                for lvl in b.levels(side):
                    h.update(repr((side.value, lvl.price,
                                   [o.id for o in lvl.orders.values()])).encode())
        for o in sorted(self.orders.values(), key=_order_id):
            h.update(repr((o.id, o.coid, o.contract, o.user, o.agent, o.unit, o.side.value,
                           o.price, o.qty, o.remaining, o.visible, o.peak, o.incr,
                           o.exec.value, o.validity.value, o.expiry, o.status.value,
                           o.revision, o.seq, o.arrival, o.basket,
                           None if o.basket_type is None else o.basket_type.value, o.filled,
                           o.live, o.entered, o.pub)).encode())
        h.update(repr(sorted(g[:3] for g in self._gtd)).encode())
        if self.guard is not None:
            h.update(self.guard.digest())
        for fn in self._digests:
            h.update(fn())
        return h.hexdigest()


_TRADER_COMMANDS = frozenset(
    {NewOrder, EnterBasket, ModifyOrder, CancelOrder, CancelAll, Deactivate, Activate})


def _order_id(o: Order) -> int:
    return o.id


def _past_gate_closure(c: Contract) -> tuple[str, str]:
    """R45.f, A1§4.1: at and after its gate closure (``close_at``) a contract takes no order.

    R45.f: «FIN: Contrato cerrado y finalizado. No se admiten ofertas»; A1§4.1: orders are
    «válidas hasta el cierre de la negociación del contrato»; A1§3.1: an order «podrá ser
    modificada o cancelada mientras el contrato ... esté en un estado que permita el envío
    de ofertas (TRADE)».  The server's sequencer journals the calendar's
    :class:`CloseContracts` before any command stamped at or after ``close_at``
    (gateway/sequencer.py, time-driven commands), so the close normally comes first.  A
    contract may still be in TRADE when such a command is applied where it does not: a
    close that failed or was refused (held back for a pause), a core driven without the
    server's calendar (the replay tool, tests).  The engine compares the command's instant
    with ``close_at`` itself, so that nothing enters, changes or trades after the gate
    closure, whatever the lag, and the outcome is the one the close would have given had
    it come in time: a new order, a
    basket member, a modification and the owner's activation of named orders in such a
    contract are refused as in a closed contract (CONTRACT_NOT_TRADING, with this reason);
    a cancellation (one order, or cancel-all) still goes through, as it only takes an order
    out, as the close would at once, and frees its guarantee and energy holds for the
    contracts still trading; the reactivations that select orders (the owner's "activate all",
    the operator's ReactivateOrders, an auction's reopening) leave that contract's
    hibernated orders hibernated, for the close to cancel, and reactivate the others (the
    members of a VALID basket in other contracts too, as if the close had taken these
    first).

    The alternative, closing due contracts at the start of :meth:`Engine.apply` as GTD
    orders expire there, was not chosen: a close ends a round (R45.g), so the round close,
    the risk guard's new round and the round sync would be set off by whichever command came
    first (a trader's order), grouped differently from the calendar's one close of every
    due contract; the calendar's own close would then fail as an illegal FIN → FIN
    transition, and the auctions module, which pauses and resumes contracts by state, would
    find a contract closed under it.  So the contract's state and the rounds stay what the
    journaled commands made them: the contract stays in TRADE (or INT, or UPC) until its
    :class:`CloseContracts`, which closes the round and cancels its orders (A1§4.1) as
    before; a transition applied after ``close_at`` (OpenContracts, ResumeContracts by an
    auction's reopening) is still allowed, but lets no order in.  What may still happen
    meanwhile takes orders out of the market only: the owner's deactivation, the platform's
    hibernation, an agent's suspension, GTD expiries."""
    return (
        Code.CONTRACT_NOT_TRADING,
        f"contract {c.id} reached its gate closure at {c.close_at}; it takes no order,"
        " modification, cancellation or reactivation from then on (R45.f, A1§4.1)",
    )


def arrival_key(o: Order) -> tuple[int, int]:
    """R46.2.7: order of arrival on the platform (then id)."""
    return (o.arrival, o.id)


_arrival_key = arrival_key


def _validity_text(validity: Validity, expiry: int | None) -> str:
    return "GFS" if expiry is None else f"{validity.value} until {fmt_ms(expiry)}"
