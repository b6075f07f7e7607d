"""Intraday auction sessions in the core (R38–R44, R46.2.7, R56, A1§1–2).

Pure and deterministic like the engine and risk, and driven the same way: by journaled
commands (from the calendar's scheduler, the auction operator, and agents' bids), with events
out.  A session goes through one table of states:

    SCHEDULED ──open──▶ OPEN ──close──▶ CLOSED ──clear──▶ CLEARED ──reopen──▶ DONE
        │                 │                │
        └────────────── cancel ────────────┴──────────────────────────────▶ CANCELLED

1. **Reception** (OPEN): simple bids per unit and period (price-quantity steps), validated
   against price limits, the unit (responsibility, validity), its energy and program, and the
   agent's guarantees (:meth:`risk.guard.RiskGuard.auction_check`); an accepted bid holds
   its debtor value on its owners' operative limits until it is cancelled, refused at the
   close or cleared (R39.4.3.4, :meth:`risk.guard.RiskGuard.hold_bid`).
2. **Close** (CLOSED): continuous trading stops for the contracts of the session's horizon that
   are trading: they go to INT and their orders are hibernated (R46.2.7, R56); a contract that
   an earlier session still holds paused is taken over with the orders it hibernated.  Then
   every live bid is verified again, in submission order, against the energy traded
   continuously up to the close and the guarantees at the close; a bid that fails is rejected
   (R39.4.1.5, R39.4.2.2, R39.4.3.2, R39.4.3.4).
3. **Clear** (CLEARED): every period by the simple method of R40.2 (:mod:`auctions.clearing`);
   results per unit to each agent (``auction_allocation``), public prices and volumes
   (``auction_price``); the bids' holds give way to the obligations of what was allocated
   at a debtor price (R39.4.3.4); programs move (PHF, R50: ``AdjustProgram``); the settlement side
   settles the results at the marginal price (R44) from the ``auction_cleared`` event.
4. **Reopen** (DONE): the paused contracts reopen (those that no other session still holds)
   and the hibernated orders of the agents that asked for it are reactivated in arrival
   order, baskets kept in order, each re-validated against the updated programs and current
   limits, failures rejected with the reason (R46.2.7); the members of a VALID basket all
   come back or are all rejected (A1§5.2).  A cancelled session reopens the same way, with
   no results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, NamedTuple

from auctions.clearing import PeriodResult, Step, clear
from engine.commands import InterruptContracts, ResumeContracts
from engine.config import fmt_price, fmt_qty
from engine.engine import Engine, arrival_key
from engine.errors import Code, IllegalTransition
from engine.events import EVENT_NAMES, EVENT_TYPES, Ack, Reject
from engine.model import HIBERNATED
from engine.states import ContractState
from risk.commands import AdjustProgram
from risk.guard import RiskGuard

# --- states -------------------------------------------------------------------------------

SCHEDULED, OPEN, CLOSED, CLEARED, DONE, CANCELLED = (
    "SCHEDULED", "OPEN", "CLOSED", "CLEARED", "DONE", "CANCELLED")
TRANSITIONS: dict[str, frozenset[str]] = {
    SCHEDULED: frozenset({OPEN, CANCELLED}),
    OPEN: frozenset({CLOSED, CANCELLED}),
    CLOSED: frozenset({CLEARED, CANCELLED}),
    CLEARED: frozenset({DONE}),
    DONE: frozenset(),
    CANCELLED: frozenset(),
}


def check_transition(current: str, target: str) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition("auction session", current, target)


# --- commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleAuction:
    """A session of the calendar: its horizon and its times (ms UTC)."""

    session: str
    contracts: tuple[str, ...]
    opens_at: int
    closes_at: int
    publish_at: int
    by: str = "calendar"


@dataclass(frozen=True, slots=True)
class OpenAuction:
    session: str
    by: str = "calendar"


@dataclass(frozen=True, slots=True)
class CloseAuction:
    """Reception closes; the horizon's trading contracts pause (R46.2.7)."""

    session: str
    by: str = "calendar"


@dataclass(frozen=True, slots=True)
class ClearAuction:
    session: str
    by: str = "calendar"


@dataclass(frozen=True, slots=True)
class ReopenAfterAuction:
    session: str
    by: str = "calendar"


@dataclass(frozen=True, slots=True)
class CancelAuction:
    """The auction operator cancels a session: contracts reopen, orders reactivated as
    requested, no results."""

    session: str
    reason: str
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class DelayAuction:
    """The auction operator moves a session's remaining times later by ``delay_ms``."""

    session: str
    delay_ms: int
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class SubmitAuctionBid:
    """A simple bid of a unit for one period: price-quantity steps (R39)."""

    user: str
    agent: str
    session: str
    unit: str
    contract: str
    side: str  # BUY / SELL
    steps: tuple[tuple[int, int], ...]  # (price cents, quantity tenths)
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class CancelAuctionBid:
    user: str
    agent: str
    session: str
    bid_id: int
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class SetReactivation:
    """An agent's choice: reactivate my hibernated orders after each auction (R46.2.7)."""

    user: str
    agent: str
    reactivate: bool
    req_id: str | None = None


# the reason of a contract's interruption by an auction's close (R46.2.7), the session's id
# after it: the contracts a reopening resumes are those still interrupted by an auction
PAUSE_REASON = "intraday auction "

AUCTION_COMMANDS = (ScheduleAuction, OpenAuction, CloseAuction, ClearAuction,
                    ReopenAfterAuction, CancelAuction, DelayAuction, SubmitAuctionBid,
                    CancelAuctionBid, SetReactivation)

# --- events -------------------------------------------------------------------------------


class AuctionState(NamedTuple):
    ts: int
    session: str
    state: str
    previous: str | None
    contracts: tuple[str, ...]
    opens_at: int
    closes_at: int
    publish_at: int
    reason: str | None


class AuctionPrice(NamedTuple):
    """Public result of one period: marginal price (None: no crossing) and volume."""

    ts: int
    session: str
    contract: str
    price: int | None
    qty: int
    case: str


class AuctionAllocation(NamedTuple):
    """Private result of one bid: what it was allocated at the marginal price."""

    ts: int
    session: str
    contract: str
    bid_id: int
    user: str
    agent: str
    unit: str
    side: str
    price: int
    qty: int


class AuctionCleared(NamedTuple):
    """For the settlement side (R44): the allocations of a session, per unit and period."""

    ts: int
    session: str
    allocations: tuple[tuple[str, str, str, str, int, int], ...]
    # (contract, unit, agent, side, marginal price, tenths)


for _c, _n in ((AuctionState, "auction_state"), (AuctionPrice, "auction_price"),
               (AuctionAllocation, "auction_allocation"), (AuctionCleared, "auction_cleared")):
    EVENT_TYPES[_n] = _c
    EVENT_NAMES[_c] = _n


# --- the module ---------------------------------------------------------------------------


@dataclass(slots=True)
class Bid:
    id: int
    user: str
    agent: str
    unit: str
    contract: str
    side: str
    steps: tuple[tuple[int, int], ...]
    order: int
    live: bool = True


@dataclass(slots=True)
class Session:
    id: str
    contracts: tuple[str, ...]
    opens_at: int
    closes_at: int
    publish_at: int
    state: str = SCHEDULED
    bids: dict[int, Bid] = field(default_factory=dict)
    # the contracts this session holds paused: those its close paused, and those an earlier
    # session still held paused then (R46.2.7 with overlapping horizons)
    paused: tuple[str, ...] = ()
    # the orders it reactivates: those its pause hibernated, and those of the contracts it
    # took over or was handed over (see Auctions._on_close and Auctions._reopen)
    hibernated: tuple[int, ...] = ()
    results: dict[str, PeriodResult] = field(default_factory=dict)
    reason: str | None = None
    # what the live bids offer, per (unit, side, quarter-hour start), in tenths of MW: hourly
    # and 15-minute bids of a unit summed per quarter (only with a risk guard)
    energy: dict[tuple[str, str, int], int] = field(default_factory=dict)


class Auctions:
    def __init__(self, engine: Engine, risk: RiskGuard | None) -> None:
        self.engine = engine
        self.risk = risk
        self.sessions: dict[str, Session] = {}
        self.reactivate: dict[str, bool] = {}
        self.next_bid = 1

    @classmethod
    def install(cls, engine: Engine, risk: RiskGuard | None) -> Auctions:
        a = cls(engine, risk)
        handlers: dict[type, Callable[[Any, int], None]] = {
            ScheduleAuction: a._on_schedule, OpenAuction: a._on_open,
            CloseAuction: a._on_close, ClearAuction: a._on_clear,
            ReopenAfterAuction: a._on_reopen, CancelAuction: a._on_cancel,
            DelayAuction: a._on_delay, SubmitAuctionBid: a._on_bid,
            CancelAuctionBid: a._on_cancel_bid, SetReactivation: a._on_reactivation,
        }
        for t, h in handlers.items():
            engine.register(t, h)
        engine.add_digest(a.state_digest)
        return a

    # ------------------------------------------------------------------ helpers

    def _reject(self, ts: int, user: str, agent: str, req_id: str | None, code: str,
                reason: str) -> None:
        self.engine.reject(ts, user, agent, req_id, code, reason)

    def _set(self, s: Session, target: str, ts: int, reason: str | None = None) -> None:
        prev = s.state
        check_transition(prev, target)
        s.state = target
        s.reason = reason
        self.engine.emit(AuctionState(ts, s.id, target, prev, s.contracts, s.opens_at,
                                      s.closes_at, s.publish_at, reason))

    def _session(self, sid: str, ts: int, by: str, target: str) -> Session | None:
        s = self.sessions.get(sid)
        if s is None:
            self._reject(ts, by, "", None, Code.AUCTION_UNKNOWN, f"no auction session {sid}")
            return None
        if target not in TRANSITIONS[s.state]:
            self._reject(ts, by, "", None, Code.ILLEGAL_TRANSITION,
                         f"auction session {sid} is {s.state}; cannot go to {target}")
            return None
        return s

    def state_digest(self) -> bytes:
        h = hashlib.sha256()
        for sid in sorted(self.sessions):
            s = self.sessions[sid]
            h.update(repr((sid, s.contracts, s.opens_at, s.closes_at, s.publish_at, s.state,
                           s.paused, s.hibernated, s.reason, sorted(s.energy.items()),
                           [(b.id, b.unit, b.contract, b.side, b.steps, b.live)
                            for b in s.bids.values()],
                           sorted((c, r.price, r.volume, sorted(r.allocations.items()))
                                  for c, r in s.results.items()))).encode())
        h.update(repr((sorted(self.reactivate.items()), self.next_bid)).encode())
        return h.digest()

    # ------------------------------------------------------------------ life cycle

    def _on_schedule(self, cmd: ScheduleAuction, ts: int) -> None:
        if cmd.session in self.sessions:
            return  # the calendar may schedule again after a restart: idempotent
        if not (cmd.opens_at <= cmd.closes_at <= cmd.publish_at) or not cmd.contracts:
            self._reject(ts, cmd.by, "", None, Code.AUCTION_INVALID,
                         "a session needs contracts and opens <= closes <= publishes")
            return
        s = Session(cmd.session, cmd.contracts, cmd.opens_at, cmd.closes_at, cmd.publish_at)
        self.sessions[s.id] = s
        self.engine.emit(AuctionState(ts, s.id, SCHEDULED, None, s.contracts, s.opens_at,
                                      s.closes_at, s.publish_at, None))

    def _on_open(self, cmd: OpenAuction, ts: int) -> None:
        s = self._session(cmd.session, ts, cmd.by, OPEN)
        if s is not None:
            self._set(s, OPEN, ts)

    def _holding(self, s: Session) -> list[Session]:
        """The other sessions that hold contracts paused: closed, not yet reopened."""
        return [t for t in self.sessions.values()
                if t is not s and t.state in (CLOSED, CLEARED) and t.paused]

    def _on_close(self, cmd: CloseAuction, ts: int) -> None:
        """R46.2.7, R56: the horizon's trading contracts pause; their orders hibernate.
        R39.4.1.5: then the bids are verified again (:meth:`_verify_at_close`)."""
        s = self._session(cmd.session, ts, cmd.by, CLOSED)
        if s is None:
            return
        self._set(s, CLOSED, ts)
        eng = self.engine
        trading = tuple(c for c in s.contracts
                        if c in eng.contracts and eng.contracts[c].state is ContractState.TRADE)
        # R46.2.7 «se suspenderá la negociación del mercado continuo para los contratos
        # incluidos en el horizonte de subasta ... durante el tiempo necesario para realizar
        # la casación»: a contract of this horizon that an earlier session still holds
        # paused (its results not yet published) stays paused until this session's are too.
        # This session takes it over, with the orders the earlier one hibernated there; the
        # earlier session's reopening leaves it to this one (see _reopen).
        holders = self._holding(s)
        held = {c for t in holders for c in t.paused}
        held.intersection_update(s.contracts)
        ids = set(trading)
        s.paused = tuple(c for c in s.contracts if c in ids or c in held)
        # R46.2.7: reactivation after the auction concerns the orders it hibernated
        mine = {o.id for o in eng.orders.values() if o.live and o.contract in ids}
        if held:
            hib = {oid for t in holders for oid in t.hibernated}
            mine.update(o.id for o in eng.orders.values()
                        if o.id in hib and o.status is HIBERNATED and o.contract in held)
        s.hibernated = tuple(sorted(mine))
        if trading:
            eng.dispatch(InterruptContracts(trading, PAUSE_REASON + s.id), ts)
        self._verify_at_close(s, ts)

    def _verify_at_close(self, s: Session, ts: int) -> None:
        """R39.4.1.5: «El operador del mercado repetirá dicha verificación al cierre de la
        sesión intradiaria para todas las ofertas ... aceptadas de forma provisional durante
        la sesión, teniendo en cuenta además las posibles energías casadas en cada periodo
        hasta ese momento en el mercado intradiario continuo, siendo definitivamente
        rechazadas o consideradas como válidas para el proceso de casación» (and R39.4.2.2,
        R39.4.3.2 for the energy; R39.4.3.4 for the guarantees, «validada de nuevo ... en el
        momento de cierre de recepción de ofertas»).

        Every live bid, in submission order, passes the bid checks again as they stand at
        the close: the unit's program and the energy traded continuously up to now, its
        limits, the unit's earlier surviving bids of the session, the owners' operative
        limits (after this close's pause released what the hibernated orders held).  A bid
        that fails is rejected whole — the rule rejects, it does not reduce — privately to
        its owner, with its id as ``order_id`` (as the bid's ack carried it), and takes no
        part in the clearing."""
        s.energy = {}
        risk = self.risk
        if risk is None:
            return
        live = sorted((b for b in s.bids.values() if b.live), key=lambda b: b.order)
        # R39.4.3.4: each bid is checked with what the earlier surviving bids hold, so the
        # holds are taken again in submission order (a bid's own hold is not in its way)
        for b in live:
            risk.release_bid(b.id)
        for b in live:
            rej = risk.auction_check(b.user, b.agent, b.unit, b.contract, b.side, b.steps, ts,
                                     self._bid_energy(s, b.unit, b.contract, b.side))
            if rej is None:
                self._add_energy(s, b, 1)
                risk.hold_bid(b.id, b.unit, b.side, b.steps)
                continue
            b.live = False
            self.engine.emit(Reject.of(
                ts, b.user, b.agent, None, None, b.id, rej[0],
                f"auction bid {b.id} of session {s.id} for {b.unit} in {b.contract} rejected"
                f" at the close of reception (R39.4.1.5): {rej[1]}"))

    def _on_clear(self, cmd: ClearAuction, ts: int) -> None:
        """R40.2 per period; results out; programs (R50); settlement input (R44)."""
        s = self._session(cmd.session, ts, cmd.by, CLEARED)
        if s is None:
            return
        by_contract: dict[str, list[Step]] = {}
        for b in s.bids.values():
            if not b.live:
                continue
            for n, (price, qty) in enumerate(b.steps):
                by_contract.setdefault(b.contract, []).append(
                    Step(b.id, n, b.side, price, qty, b.order, b.unit))
        # every period's clearing first (the algorithm changes nothing): should it raise (a
        # defect: the command fails, gateway/core.py), the session is still CLOSED, no
        # result has been told, no hold given up, and nothing is told without settling
        results = {contract: clear(by_contract.get(contract, [])) for contract in s.contracts}
        self._set(s, CLEARED, ts)
        cleared: list[tuple[str, str, str, str, int, int]] = []
        net: dict[tuple[str, str], int] = {}
        allocated: dict[int, int] = {}
        for contract in s.contracts:
            res = results[contract]
            s.results[contract] = res
            self.engine.emit(AuctionPrice(ts, s.id, contract, res.price, res.volume,
                                          res.case))
            if res.price is None:
                continue
            per_bid: dict[int, int] = {}
            for (bid_id, _n), q in res.allocations.items():
                per_bid[bid_id] = per_bid.get(bid_id, 0) + q
            allocated.update(per_bid)
            for bid_id in sorted(per_bid):
                b = s.bids[bid_id]
                q = per_bid[bid_id]
                self.engine.emit(AuctionAllocation(ts, s.id, contract, bid_id, b.user,
                                                   b.agent, b.unit, b.side, res.price, q))
                cleared.append((contract, b.unit, b.agent, b.side, res.price, q))
                # a unit a reload removed since the close keeps its kind (R50: its program
                # still moves by the result, RiskGuard.retired)
                unit = ((self.risk.ref.units.get(b.unit) or self.risk.retired.get(b.unit))
                        if self.risk else None)
                sells = unit.sells if unit is not None else b.side == "SELL"
                sign = 1 if (b.side == "SELL") == sells else -1
                key = (b.unit, contract)
                net[key] = net.get(key, 0) + sign * q
        if self.risk is not None:
            # R39.4.3.4: the holds of the bids give way to the results: what was allocated
            # at a debtor price becomes an obligation, the rest is released
            for b in sorted(s.bids.values(), key=lambda b: b.id):
                if b.live:
                    self.risk.clear_bid(b.id, b.unit, b.side, s.results[b.contract].price,
                                        allocated.get(b.id, 0))
        for (unit_code, contract), delta in sorted(net.items()):
            if delta and self.risk is not None:
                self.engine.dispatch(AdjustProgram("auction", unit_code, contract, delta), ts)
        self.engine.emit(AuctionCleared(ts, s.id, tuple(cleared)))

    def _auction_pause(self, contract: str) -> bool:
        """Whether the contract is interrupted by an auction's close (a session that paused
        it), not for another reason (R48.b)."""
        reason = self.engine.contracts[contract].reason or ""
        if not reason.startswith(PAUSE_REASON):
            return False
        t = self.sessions.get(reason[len(PAUSE_REASON):])
        return t is not None and contract in t.paused

    def _reopen(self, s: Session, ts: int) -> None:
        """R46.2.7: reopen the paused contracts with the requested reactivations, in one
        command so no order can slip in between.

        A contract that another session still holds paused (closed, results not yet
        published: overlapping horizons) stays paused, and the orders this session
        hibernated there are handed over to that session, which reopens it and reactivates
        them.  A contract an operator already resumed by hand is not resumed again, but its
        orders hibernated by the auction are reactivated all the same: R46.2.7 reactivates
        «las ofertas previamente hibernadas» once the results are published, whatever the
        contract's reopening.  A contract interrupted since for another reason (R48.b: an
        operator resumed it by hand and interrupted it again) is the operator's: it stays
        interrupted and its orders stay hibernated, to come back when the operator resumes
        and reactivates it."""
        eng = self.engine
        holders = self._holding(s)
        states = eng.contracts
        mine: list[str] = []  # the contracts this session releases
        handed: dict[str, list[Session]] = {}
        for c in s.paused:
            others = [t for t in holders if c in t.paused]
            if others:
                handed[c] = others
            elif c in states and (states[c].state is ContractState.TRADE or (
                    states[c].state is ContractState.INT and self._auction_pause(c))):
                mine.append(c)
        if handed:
            hib = set(s.hibernated)
            extra: dict[str, set[int]] = {}
            for o in eng.orders.values():
                if o.id in hib and o.status is HIBERNATED and o.contract in handed:
                    for t in handed[o.contract]:
                        extra.setdefault(t.id, set()).add(o.id)
            for sid, more in extra.items():
                t = self.sessions[sid]
                t.hibernated = tuple(sorted(more.union(t.hibernated)))
        resume = tuple(c for c in mine if states[c].state is ContractState.INT)
        if resume:
            eng.dispatch(ResumeContracts(resume), ts)
        if not mine:
            return
        agents = {a for a, yes in self.reactivate.items() if yes}
        ids = set(mine)
        hibernated = set(s.hibernated)
        sel = sorted((o for a in agents for o in eng.by_agent.get(a, {}).values()
                      if o.id in hibernated and o.status is HIBERNATED and o.contract in ids),
                     key=arrival_key)
        # R46.2.7 in arrival order; A1§5.2: the members of a VALID basket reactivated here
        # (those hibernated in the contracts this session reopens) come back together or
        # are rejected together: the engine's one reactivation path
        eng.reactivate_orders(sel, ts)

    def _on_reopen(self, cmd: ReopenAfterAuction, ts: int) -> None:
        s = self._session(cmd.session, ts, cmd.by, DONE)
        if s is None:
            return
        self._reopen(s, ts)
        self._set(s, DONE, ts)

    def _on_cancel(self, cmd: CancelAuction, ts: int) -> None:
        s = self._session(cmd.session, ts, cmd.by, CANCELLED)
        if s is None:
            return
        was_closed = s.state == CLOSED
        self._set(s, CANCELLED, ts, cmd.reason)
        if self.risk is not None:  # no results: the bids' holds go back (R39.4.3.4)
            for bid_id in sorted(s.bids):
                self.risk.release_bid(bid_id)
        if was_closed:
            self._reopen(s, ts)

    def _on_delay(self, cmd: DelayAuction, ts: int) -> None:
        s = self.sessions.get(cmd.session)
        if s is None or s.state not in (SCHEDULED, OPEN, CLOSED) or cmd.delay_ms <= 0:
            self._reject(ts, cmd.by, "", None, Code.AUCTION_INVALID,
                         f"session {cmd.session} cannot be delayed"
                         f" ({'unknown' if s is None else s.state})")
            return
        d = cmd.delay_ms
        if s.state == SCHEDULED:
            s.opens_at += d
        if s.state in (SCHEDULED, OPEN):
            s.closes_at += d
        s.publish_at += d
        self.engine.emit(AuctionState(ts, s.id, s.state, s.state, s.contracts, s.opens_at,
                                      s.closes_at, s.publish_at, f"delayed by {d // 1000} s"))

    # ------------------------------------------------------------------ bids

    def _on_bid(self, cmd: SubmitAuctionBid, ts: int) -> None:
        u, a, rq = cmd.user, cmd.agent, cmd.req_id
        s = self.sessions.get(cmd.session)
        if s is None or s.state != OPEN:
            self._reject(ts, u, a, rq, Code.AUCTION_NOT_OPEN,
                         f"session {cmd.session} is "
                         f"{'unknown' if s is None else s.state}; bids only while OPEN")
            return
        if ts >= s.closes_at:
            # R39.4.1.1: the reception instant must be «anterior al momento de finalización
            # del periodo de aceptación de ofertas», whenever the CloseAuction comes
            self._reject(ts, u, a, rq, Code.AUCTION_NOT_OPEN,
                         f"session {s.id}: the reception of bids closed at {s.closes_at};"
                         f" this bid arrived at {ts} (ms UTC; R39.4.1.1)")
            return
        if cmd.contract not in s.contracts:
            self._reject(ts, u, a, rq, Code.AUCTION_PERIOD_NOT_IN_HORIZON,
                         f"{cmd.contract} is not in the horizon of session {s.id}")
            return
        if cmd.side not in ("BUY", "SELL") or not 1 <= len(cmd.steps) <= 5:
            self._reject(ts, u, a, rq, Code.AUCTION_BID_INVALID,
                         "a simple bid has a side and 1 to 5 price-quantity steps (R39.1.1)")
            return
        prices = [p for p, _ in cmd.steps]
        ordered = all((a > b) if cmd.side == "BUY" else (a < b) for a, b in pairwise(prices))
        if not ordered:
            self._reject(ts, u, a, rq, Code.AUCTION_BID_INVALID,
                         "each step has a different price, increasing for a sell bid and"
                         " decreasing for a buy bid (R39.1.1, R39.4)")
            return
        cfg = self.engine.cfg
        for price, qty in cmd.steps:
            if not cfg.price_min <= price <= cfg.price_max:
                self._reject(ts, u, a, rq, Code.PRICE_OUT_OF_RANGE,
                             f"step price {fmt_price(price)} €/MWh outside"
                             f" [{fmt_price(cfg.price_min)}, {fmt_price(cfg.price_max)}]")
                return
            if not cfg.qty_min <= qty <= cfg.qty_max:
                self._reject(ts, u, a, rq, Code.QTY_OUT_OF_RANGE,
                             f"step quantity {fmt_qty(qty)} MWh outside"
                             f" [{fmt_qty(cfg.qty_min)}, {fmt_qty(cfg.qty_max)}]")
                return
        if self.risk is not None:
            rej = self.risk.auction_check(u, a, cmd.unit, cmd.contract, cmd.side, cmd.steps,
                                          ts, self._bid_energy(s, cmd.unit, cmd.contract,
                                                               cmd.side))
            if rej is not None:
                self._reject(ts, u, a, rq, rej[0], rej[1])
                return
        bid = Bid(self.next_bid, u, a, cmd.unit, cmd.contract, cmd.side, cmd.steps,
                  self.next_bid)
        self.next_bid += 1
        s.bids[bid.id] = bid
        self._add_energy(s, bid, 1)
        if self.risk is not None:  # R39.4.3.4: its value is held until it leaves
            self.risk.hold_bid(bid.id, bid.unit, bid.side, bid.steps)
        self.engine.emit(Ack.of(ts, u, rq, "auction_bid", (bid.id,)))

    def _bid_energy(self, s: Session, unit: str, contract: str, side: str) -> dict[int, int]:
        """What the unit's live bids of this session offer on this side in each quarter-hour
        of the contract (tenths of MW): hourly and 15-minute bids summed per quarter, so an
        hourly bid counts against a 15-minute bid for a quarter of its hour and the other
        way round (running totals: constant time however many bids the session has)."""
        assert self.risk is not None
        quarters = self.risk.auction_quarters(contract)[0]
        e = s.energy
        return {q: e.get((unit, side, q), 0) for q in quarters}

    def _add_energy(self, s: Session, b: Bid, sign: int) -> None:
        """Count a bid's energy in (``sign`` 1) or out (−1) of the running totals: its
        quantity times the contract's weight (1 hourly, 4 for 15 minutes), in each of the
        quarter-hours it covers (the measure of :meth:`risk.guard.RiskGuard.auction_check`)."""
        if self.risk is None:
            return
        quarters, k = self.risk.auction_quarters(b.contract)
        d = sign * k * sum(q for _, q in b.steps)
        e = s.energy
        for q in quarters:
            key = (b.unit, b.side, q)
            v = e.get(key, 0) + d
            if v:
                e[key] = v
            else:
                del e[key]

    def _on_cancel_bid(self, cmd: CancelAuctionBid, ts: int) -> None:
        s = self.sessions.get(cmd.session)
        b = s.bids.get(cmd.bid_id) if s is not None else None
        if s is None or b is None or b.agent != cmd.agent or not b.live:
            self._reject(ts, cmd.user, cmd.agent, cmd.req_id, Code.AUCTION_BID_UNKNOWN,
                         f"no live bid {cmd.bid_id} of agent {cmd.agent} in {cmd.session}")
            return
        if s.state != OPEN:
            self._reject(ts, cmd.user, cmd.agent, cmd.req_id, Code.AUCTION_NOT_OPEN,
                         f"session {s.id} is {s.state}; bids can be cancelled only while OPEN")
            return
        if ts >= s.closes_at:
            # R39.4.1.1, R39.5: the bids «devendrán firmes en el momento de finalización del
            # periodo de aceptación de ofertas»
            self._reject(ts, cmd.user, cmd.agent, cmd.req_id, Code.AUCTION_NOT_OPEN,
                         f"session {s.id}: the reception of bids closed at {s.closes_at};"
                         f" bids are firm (ms UTC {ts}; R39.4.1.1, R39.5)")
            return
        b.live = False
        self._add_energy(s, b, -1)
        if self.risk is not None:
            self.risk.release_bid(b.id)
        self.engine.emit(Ack.of(ts, cmd.user, cmd.req_id, "auction_bid_cancel", (b.id,)))

    def _on_reactivation(self, cmd: SetReactivation, ts: int) -> None:
        self.reactivate[cmd.agent] = cmd.reactivate
        self.engine.emit(Ack.of(ts, cmd.user, cmd.req_id, "set_reactivation", ()))
