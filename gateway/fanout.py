"""Market-data fan-out: the core's events become the protocol's streams.

* ``book`` — the anonymous local order list of a contract (R46.2.8), limited to ``depth``
  entries per side: a snapshot, then deltas (``ADD``/``UPDATE``/``REMOVE`` of entries within
  the limit, including entries that enter or leave the limit because others came or went).
  One sequence per contract, the same for every subscriber: a gap tells a client to ask for a
  snapshot.
* ``trades`` — public trades of a contract, one sequence per contract.
* ``states`` — contract states and round closures, one sequence.
* ``private`` — per agent: order reports, the agent's side of its trades, rejections, risk
  notices, throttling, account updates; one sequence per agent.

Public messages are built only from the public events' fields, which carry no agent, user or
unit (DESIGN rule 8).  This module does no I/O: it turns a batch of events into messages and
hands them to subscribers (:class:`Hub`); transports decide how to send them.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import defaultdict, deque
from collections.abc import Callable
from itertools import islice
from typing import Any

from auctions.session import AuctionAllocation, AuctionPrice, AuctionState
from engine.commands import ORDER_COMMANDS
from engine.events import (
    BookChange,
    ContractStateChanged,
    OrderReport,
    PublicTrade,
    Reject,
    RoundClosed,
    Trade,
)
from engine.states import OrderStatus
from gateway.core import Core
from gateway.wire import (
    event_to_wire,
    event_to_wire_copy,
    fmt_instant,
    price_text,
    qty_text,
)
from risk.events import RiskNotice, ThrottlingStatus

Message = dict[str, Any]
TRADES_KEPT = 10_000  # per agent, for query_trades
PUBLIC_TRADES_KEPT = 500  # per contract, for query_public_trades (charts, last trades)
_AUCTION_PUBLIC = (AuctionState, AuctionPrice)
_AUCTION_PRIVATE = AuctionAllocation
# the commands whose account changes are all the orders' they report and trade (the others
# may change any account: auction bids, round closes, guarantees, reloads...)
_ORDER_PATH = ORDER_COMMANDS
Deliver = Callable[[Message], None]

log = logging.getLogger(__name__)


class _Side:
    """One side of a mirrored book: price levels best first, each level its entries in time
    priority (entry ids only grow and a new entry goes to the back of its level, so a dict's
    insertion order is the priority), and the number of entries.  ``ranks`` (ascending: the
    best first) and ``order`` hold the same levels in the same order, so that a walk from
    the top reads the levels without looking each one up."""

    __slots__ = ("count", "levels", "order", "ranks")

    def __init__(self) -> None:
        self.ranks: list[int] = []
        self.order: list[dict[int, int]] = []  # the levels of ``ranks``, in its order
        self.levels: dict[int, dict[int, int]] = {}  # rank -> {entry: quantity}
        self.count = 0

    def level(self, rank: int) -> dict[int, int]:
        """The level at ``rank``, created if new."""
        lvl = self.levels.get(rank)
        if lvl is None:
            lvl = self.levels[rank] = {}
            i = bisect_left(self.ranks, rank)
            self.ranks.insert(i, rank)
            self.order.insert(i, lvl)
        return lvl

    def drop(self, rank: int) -> None:
        """Forget the (empty) level at ``rank``."""
        del self.levels[rank]
        i = bisect_left(self.ranks, rank)
        del self.ranks[i]
        del self.order[i]

    def in_view(self, lvl: dict[int, int], entry: int, limit: int) -> bool:
        """Whether the entry (of level ``lvl``) is among the side's first ``limit``
        entries: only the levels before it that the view reaches are counted, and its own
        level is searched only as far as the view goes (``islice``, in C)."""
        n = 0
        for other in self.order:
            if other is lvl:
                return entry in islice(lvl, limit - n)
            n += len(other)
            if n >= limit:
                return False
        return False

    def at(self, i: int) -> tuple[int, int, int]:
        """(rank, entry, quantity) of the entry at 0-based place ``i`` (< ``count``)."""
        for k, lvl in enumerate(self.order):
            size = len(lvl)
            if i < size:
                e, q = next(islice(lvl.items(), i, None))
                return self.ranks[k], e, q
            i -= size
        raise IndexError(i)


class BookMirror:
    """The public book of one contract as the public events describe it, and the deltas of
    its depth-limited view.

    Each side is its price levels, best first, and an entry is placed by walking only the
    levels the view reaches, not by a search in a sorted list of every entry: about 20 %
    less of the single writer's time per change than the sorted list it replaced (the top
    of a book is thin, so the walk is over several small levels; docs/performance.md).
    ``tests/test_fanout.py`` compares it with a plain sorted-list model."""

    def __init__(self, contract: str, depth: int) -> None:
        self.contract = contract
        self.depth = depth
        self.seq = 0
        self.entries: dict[int, tuple[str, int, int]] = {}  # entry -> (side, price, qty)
        self.sides = {"BUY": _Side(), "SELL": _Side()}

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        d = self.depth
        for side in ("BUY", "SELL"):
            s = self.sides[side]
            lst: list[dict[str, int]] = []
            for r, lvl in zip(s.ranks, s.order, strict=True):
                price = -r if side == "BUY" else r
                for e, q in lvl.items():
                    if len(lst) >= d:
                        break
                    lst.append({"entry": e, "price": price, "quantity": q})
                if len(lst) >= d:
                    break
            out["bids" if side == "BUY" else "asks"] = lst
        return out

    def apply(self, action: str, entry: int, side: str, price: int, qty: int
              ) -> list[tuple[str, int, str, int, int]]:
        """Apply one public change; return the deltas of the limited view as
        (action, entry, side, price, qty)."""
        s = self.sides[side]
        d = self.depth
        out: list[tuple[str, int, str, int, int]] = []
        buy = side == "BUY"
        if action == "ADD":
            lvl = s.level(-price if buy else price)
            lvl[entry] = qty
            s.count += 1
            self.entries[entry] = (side, price, qty)
            if s.in_view(lvl, entry, d):
                out.append(("ADD", entry, side, price, qty))
                if s.count > d:  # the one pushed out of the view
                    r2, e2, _ = s.at(d)
                    out.append(("REMOVE", e2, side, -r2 if buy else r2, 0))
            return out
        old = self.entries.get(entry)
        if old is None:
            return out
        oprice = old[1]
        rank = -oprice if buy else oprice
        lvl = s.levels[rank]
        seen = s.in_view(lvl, entry, d)
        if action == "UPDATE" and qty > 0:
            self.entries[entry] = (side, oprice, qty)
            lvl[entry] = qty
            if seen:
                out.append(("UPDATE", entry, side, oprice, qty))
            return out
        # REMOVE (or a trade that left nothing)
        del lvl[entry]
        if not lvl:
            s.drop(rank)
        s.count -= 1
        del self.entries[entry]
        if seen:
            out.append(("REMOVE", entry, side, oprice, 0))
            if s.count >= d:  # the next one enters the view
                r2, e2, q2 = s.at(d - 1)
                out.append(("ADD", e2, side, -r2 if buy else r2, q2))
        return out


class Hub:
    """Routes each batch of events to the subscribers of each stream."""

    def __init__(self, core: Core, depth: int = 20) -> None:
        self.core = core
        self.depth = depth
        # the mirrors of the books someone asked for (Hub.book), kept up from then on; a
        # contract nobody subscribed to or queried costs the fan-out nothing
        self.books: dict[str, BookMirror] = {}
        self.trade_seq: dict[str, int] = defaultdict(int)
        # per agent, what its last account message was made of (Hub._accounts)
        self._account_state: dict[str, tuple[int, ...]] = {}
        # resting orders charged to other agents than their own (represented owners), and
        # to whom: the owners of when they were admitted (Hub._charged)
        self._order_owners: dict[int, tuple[str, ...]] = {}
        self.state_seq = 0
        self.private_seq: dict[str, int] = defaultdict(int)
        self.book_subs: dict[str, set[Any]] = defaultdict(set)
        self.trade_subs: dict[str, set[Any]] = defaultdict(set)
        self.state_subs: set[Any] = set()
        self.private_subs: dict[str, set[Any]] = defaultdict(set)  # agent -> sessions
        self.officer_subs: set[Any] = set()  # sessions seeing every agent's private stream
        # each agent's latest trades (query_trades), kept across restarts by the replay
        self.public_trades: dict[str, deque[Message]] = {}
        self.trades_by_agent: dict[str, deque[Message]] = defaultdict(
            lambda: deque(maxlen=TRADES_KEPT))
        # during recovery: the last trades' events, made into messages by rebuild()
        self._replayed_own: dict[str, deque[tuple[Trade, str]]] = defaultdict(
            lambda: deque(maxlen=TRADES_KEPT))
        self._replayed_public: dict[str, deque[tuple[PublicTrade, int]]] = {}

    def book(self, contract: str) -> BookMirror:
        """The mirror of ``contract``'s public book.  The first time a contract's book is
        asked for (a subscription, a query), it is made from the engine's book and its
        stream starts at seq 0; from then on every change keeps it up.  Call it between
        batches, never from a listener: the engine is then where the events published so
        far leave it."""
        b = self.books.get(contract)
        if b is None:
            from engine.model import BUY, SELL

            b = self.books[contract] = BookMirror(contract, self.depth)
            c = self.core.engine.contracts.get(contract)
            if c is not None:
                for side in (BUY, SELL):
                    for o in c.book.resting(side):
                        b.apply("ADD", o.pub, side.value, o.price, o.visible)
        return b

    def follow(self, stream: str, contract: str, sub: Any, on: bool) -> None:
        """Add ``sub`` to the subscribers of a contract's public ``book`` or ``trades``
        stream (``on``), or take it off.  A book's mirror is made first (:meth:`book`): no
        book subscriber is ever without one."""
        if stream == "book":
            if on:
                self.book(contract)
            table = self.book_subs
        else:
            table = self.trade_subs
        if on:
            table[contract].add(sub)
        else:
            subs = table.get(contract)
            if subs is not None:
                subs.discard(sub)

    def observe_replay(self, batch: list[tuple[Any, str, list[Any]]]) -> None:
        """During recovery: the agents' trades of the journal (for query_trades) and each
        contract's public trades, numbered as they were (query_public_trades, and the
        trades streams go on from the same seq).  Only the events are kept here, as many
        as will be shown; :meth:`rebuild` makes their messages once, at the end."""
        own, public = self._replayed_own, self._replayed_public
        for _cmd, _origin, events in batch:
            for ev in events:
                t = type(ev)
                if t is Trade:
                    own[ev.buy_agent].append((ev, "buy"))
                    own[ev.sell_agent].append((ev, "sell"))
                elif t is PublicTrade:
                    c = ev.contract
                    seq = self.trade_seq[c] + 1
                    self.trade_seq[c] = seq
                    kept = public.get(c)
                    if kept is None:
                        kept = public[c] = deque(maxlen=PUBLIC_TRADES_KEPT)
                    kept.append((ev, seq))

    def rebuild(self, core: Core) -> None:
        """Make the messages of the trades the replay kept, and start the books' streams
        again (after recovery)."""
        for agent, trades in self._replayed_own.items():
            self.trades_by_agent[agent].extend(_own_trade(ev, side) for ev, side in trades)
        for contract, public in self._replayed_public.items():
            recent = self.public_trades.get(contract)
            if recent is None:
                recent = self.public_trades[contract] = deque(maxlen=PUBLIC_TRADES_KEPT)
            recent.extend(_public_trade_message(ev, seq) for ev, seq in public)
        self._replayed_own.clear()
        self._replayed_public.clear()

        # where every account stands: its next change is told (Hub._accounts); and the
        # resting orders charged to other agents than their own, and to whom
        self._account_state.clear()
        self._order_owners.clear()
        risk = core.risk
        if risk is not None:
            for agent, a in risk.accounts.items():
                self._account_state[agent] = a.state()
            for oid, o in core.engine.orders.items():
                if o.status is OrderStatus.ACTIVE:
                    now = risk.charged_agents(oid)
                    if now and now != (o.agent,):
                        self._order_owners[oid] = now

        # the books' mirrors are made when someone asks for them (Hub.book), their streams
        # starting again at 0
        self.books.clear()
        for cid, subs in self.book_subs.items():
            if subs and cid in core.engine.contracts:
                self.book(cid)

    def book_snapshot(self, contract: str) -> Message:
        b = self.book(contract)
        return {"type": "book", "stream": f"book:{contract}", "contract": contract,
                "snapshot": True, "seq": b.seq, **_prices(b.snapshot())}

    # ------------------------------------------------------------------ routing

    def _heard(self, agent: str) -> bool:
        """Whether a session listens to ``agent``'s private stream."""
        return bool(self.officer_subs) or bool(self.private_subs.get(agent))

    def _private_lazy(self, agent: str, make: Callable[[Any], Message], arg: Any) -> None:
        """The private message ``make(arg)``, built only if a session listens.  One nobody
        receives only takes its sequence number, so that the stream's numbering is the
        same whoever subscribes when."""
        if self._heard(agent):
            self._private(agent, make(arg))
        else:
            self.private_seq[agent] += 1

    def _account_message(self, agent: str) -> Message:
        acct = self.core.account(agent)
        assert acct is not None  # only for an agent whose account risk keeps
        return account_message(acct)

    # Every loop over subscribers goes over a copy: delivering to a slow consumer may drop
    # it, which unsubscribes it from the very set being looped over.

    def _private(self, agent: str, msg: Message) -> None:
        self.private_seq[agent] += 1
        msg["stream"] = f"private:{agent}"
        msg["seq"] = self.private_seq[agent]
        subs = self.private_subs.get(agent)
        if subs:
            for s in tuple(subs):
                s.deliver(msg)
        for s in tuple(self.officer_subs):
            if not subs or s not in subs:  # an officer following both "*" and this agent
                s.deliver(msg)  # gets each message once

    def publish(self, batch: list[tuple[Any, str, list[Any]]]) -> None:
        """The sequencer's listener: every event of every command of a batch."""
        touched: set[str] = set()
        units: set[str] = set()  # of the orders reported and traded: their owners' accounts
        charged: set[str] = set()  # owners the orders were charged to (Hub._charged)
        # (with risk on, resting orders charged to other agents than their own are kept)
        owners = self._order_owners if self.core.risk is not None else None
        for _cmd, _origin, events in batch:
            for ev in events:
                t = type(ev)
                if t is BookChange:
                    # sides are string enums whose names equal their values
                    self._book_delta(ev.contract, ev.ts, ev.action, ev.entry, ev.side,
                                     ev.price, ev.qty)
                elif t is PublicTrade:
                    self._public_trade(ev)
                elif t is OrderReport:
                    touched.add(ev.agent)
                    units.add(ev.unit)
                    if owners is not None:
                        self._charged(ev, charged)
                    self._private_lazy(ev.agent, event_to_wire_copy, ev)
                elif t is Trade:
                    units.add(ev.buy_unit)
                    units.add(ev.sell_unit)
                    if owners:  # (only looked up here: nothing to find in an empty map)
                        for oid in (ev.buy_order, ev.sell_order):
                            kept = owners.get(oid)
                            if kept is not None:
                                charged.update(kept)
                    for side in ("buy", "sell"):
                        agent = getattr(ev, f"{side}_agent")
                        touched.add(agent)
                        msg = _own_trade(ev, side)
                        self.trades_by_agent[agent].append(msg)
                        self._private_lazy(agent, dict, msg)
                elif t is Reject:
                    if ev.agent:
                        self._private_lazy(ev.agent, event_to_wire, ev)
                elif t is ContractStateChanged or t is RoundClosed:
                    self.state_seq += 1
                    msg = event_to_wire(ev)
                    msg["stream"] = "states"
                    msg["seq"] = self.state_seq
                    for s in tuple(self.state_subs):
                        s.deliver(msg)
                elif t is RiskNotice:
                    msg = event_to_wire(ev)
                    if ev.agent:
                        touched.add(ev.agent)
                        self._private(ev.agent, msg)
                    else:
                        for s in tuple(self.officer_subs):
                            s.deliver(msg)
                elif t in _AUCTION_PUBLIC:
                    self.state_seq += 1
                    msg = event_to_wire(ev)
                    msg["stream"] = "states"
                    msg["seq"] = self.state_seq
                    for s in tuple(self.state_subs):
                        s.deliver(msg)
                elif t is _AUCTION_PRIVATE:
                    touched.add(ev.agent)
                    self._private(ev.agent, event_to_wire(ev))
                elif t is ThrottlingStatus:
                    u = self.core.ref.users.get(ev.user)
                    if u is not None:
                        self._private(u.agent, event_to_wire(ev))
        self._accounts(batch, touched, units, charged)

    def _accounts(self, batch: list[tuple[Any, str, list[Any]]], touched: set[str],
                  units: set[str], charged: set[str]) -> None:
        """An ``account`` message after every change of an agent's account (R46.2.12):
        to the agents whose orders or trades were reported, or who got a risk notice (a
        guarantee change, a request and its decision, a suspension: as always), and to
        every other agent whose account changed: the owners of a unit another agent
        trades for (R49.1.4.1: the orders are charged to the owners' accounts), those
        of the reference data an order was admitted under included (``charged``), and,
        after any command off the order path (an auction bid held or released, a round
        close, a reload...), any agent at all.  A change is seen by comparing the
        account's amounts (:meth:`risk.guard.Account.state`) with those of its last
        message; the decision does not depend on who listens, so the stream's numbering
        does not either."""
        risk = self.core.risk
        if risk is None:
            return
        accounts = risk.accounts
        last = self._account_state
        if all(type(cmd) in _ORDER_PATH for cmd, _o, _e in batch):
            cands = touched | charged
            ref_units = self.core.ref.units
            for u in units:
                un = ref_units.get(u)
                if un is not None:
                    cands.update(agent for agent, _bp in un.owners)
        else:
            cands = set(accounts)
        for agent in sorted(cands):
            a = accounts.get(agent)
            if a is None:
                continue
            old = last.get(agent)
            now = a.state()
            if agent in touched or (old is not None and now != old):
                last[agent] = now
                self._private_lazy(agent, self._account_message, agent)
            elif old is None:  # an account new to the fan-out (the first reference data,
                last[agent] = now  # an agent a reload added): where it starts from

    def _charged(self, ev: OrderReport, charged: set[str]) -> None:
        """Whose accounts an order's report concerns beyond its own agent: the owners it
        was charged to (the reference data in force when it was admitted, which a reload
        may have changed since), kept while it rests; those it is charged to now."""
        oid = ev.order_id
        kept = self._order_owners.pop(oid, None)
        if kept is not None:
            charged.update(kept)
        if ev.status == "ACTIVE":
            risk = self.core.risk
            now = None if risk is None else risk.charged_agents(oid)
            if now and now != (ev.agent,):
                self._order_owners[oid] = now
                charged.update(now)

    def _book_delta(self, contract: str, ts: int, action: str, entry: int, side: str,
                    price: int, qty: int) -> None:
        b = self.books.get(contract)
        subs = self.book_subs.get(contract)
        if b is None:  # nobody asked for this book yet: Hub.book makes it when one does
            if subs:  # a subscriber added other than by Hub.follow: a defect
                log.error("book:%s has subscribers but no mirror; their deltas are not "
                          "sent", contract)
            return
        for act, e, sd, p, q in b.apply(action, entry, side, price, qty):
            b.seq += 1
            if subs:
                msg = {"type": "book", "stream": f"book:{contract}", "contract": contract,
                       "snapshot": False, "seq": b.seq, "ts": fmt_instant(ts),
                       "action": act, "entry": e, "side": sd, "price": _p(p),
                       "quantity": _q(q)}
                for s in tuple(subs):
                    s.deliver_book(contract, msg)

    def _public_trade(self, ev: PublicTrade) -> None:
        side = "SELL" if ev.aggressor == "BUY" else "BUY"  # the resting entry's side
        self._book_delta(ev.contract, ev.ts, "UPDATE" if ev.left else "REMOVE", ev.entry,
                         side, 0, ev.left)
        msg = self._keep_public_trade(ev)
        for s in tuple(self.trade_subs.get(ev.contract, ())):
            s.deliver(msg)

    def _keep_public_trade(self, ev: PublicTrade) -> Message:
        """The trade's message on its contract's trades stream, numbered and kept for
        query_public_trades."""
        seq = self.trade_seq[ev.contract] + 1
        self.trade_seq[ev.contract] = seq
        msg = _public_trade_message(ev, seq)
        recent = self.public_trades.get(ev.contract)
        if recent is None:
            recent = self.public_trades[ev.contract] = deque(maxlen=PUBLIC_TRADES_KEPT)
        recent.append(msg)
        return msg

    def unsubscribe_all(self, session: Any) -> None:
        for table in (self.book_subs, self.trade_subs, self.private_subs):
            for key in [k for k, subs in table.items() if session in subs]:
                subs = table[key]
                subs.discard(session)
                if not subs:
                    del table[key]
        self.state_subs.discard(session)
        self.officer_subs.discard(session)


_p = price_text  # prices and quantities as the wire writes them (cached texts)
_q = qty_text


def _prices(snap: dict[str, Any]) -> dict[str, Any]:
    return {k: [{"entry": x["entry"], "price": _p(x["price"]), "quantity": _q(x["quantity"])}
                for x in v] for k, v in snap.items()}


def _public_trade_message(ev: PublicTrade, seq: int) -> Message:
    """Kept (query_public_trades): built of plain values only, the aggressor's side as its
    text (the same on the wire), so the collector never tracks it
    (tests/test_kept_state_gc.py)."""
    return {"type": "public_trade", "ts": fmt_instant(ev.ts), "contract": ev.contract,
            "seq": seq, "trade_id": ev.trade_id, "price": _p(ev.price),
            "quantity": _q(ev.qty), "aggressor": str(ev.aggressor),
            "stream": f"trades:{ev.contract}"}


def _own_trade(ev: Trade, side: str) -> Message:
    """A party's view of its trade: its own order, unit and user; no counterparty.

    Kept (``trades_by_agent``): every value is a plain int or string, the aggressor's side
    too (``str`` of the enum, the same text on the wire), so that the collector never
    tracks the dict (a dict of untracked values is not tracked; one enum member in it
    would make every kept trade a container each collection walks)."""
    return {
        "type": "trade", "ts": fmt_instant(ev.ts), "trade_id": ev.trade_id,
        "contract": ev.contract, "round": ev.round, "side": side.upper(),
        "price": _p(ev.price), "quantity": _q(ev.qty),
        "aggressor": str(ev.aggressor),
        "order_id": getattr(ev, f"{side}_order"), "user": getattr(ev, f"{side}_user"),
        "agent": getattr(ev, f"{side}_agent"), "unit": getattr(ev, f"{side}_unit"),
    }


def account_message(acct: dict[str, Any]) -> Message:
    """The guarantee account (R46.2.12): reserved, used, free, and the breakdown."""
    used = acct["obligations"] + acct["debtor_orders"]
    money = ("reserved", "obligations", "debtor_orders", "auction_bids", "sync_reduction",
             "requested_reductions", "requested_increases", "operative_limit")
    msg: Message = {"type": "account", "agent": acct["agent"]}
    for k in money:
        msg[k] = _p(acct[k])
    msg["used"] = _p(used)
    msg["free"] = _p(acct["operative_limit"])
    msg["suspended"] = acct["suspended"]
    msg["pending_requests"] = [{"id": r["id"], "increase": r["increase"],
                                "amount": _p(r["amount"])} for r in acct["pending_requests"]]
    return msg
