"""Pre-trade risk: acceptance checks, energy checks and the operative limit, exact at every
instant (R46.2.2, R46.2.4, R46.2.5, R48.c, R49.1.4.3).

:class:`RiskGuard` plugs into the engine as its :class:`~engine.guard.Guard` (every order
that becomes live passes :meth:`RiskGuard.admit`; every fill and release is reported back
within the same command) and registers handlers for the risk commands, so that one journal
drives the whole core.  Like the engine it is pure: no clock, no I/O.

Money is held in integer cents of €.  The value of an order is |price| × open quantity
(cents of €/MWh × tenths of MWh / 10); an iceberg is valued on its total open quantity at
the price of its current instantiation.  Only *debtor* orders count: buys at positive
prices and sells at negative prices (R49.1.4.3 c); their value is charged with the taxes of
each owner (IEE and VAT: ``value × (1 + iee) × (1 + vat)``, rounded up to the cent) and in
proportion to each owner's share of the unit (R46.2.2).  The charge of an order is its
|price| × open quantity × the owner's exact multiplier, and a fill or a release gives back
|price| × quantity × the same multiplier, which is exactly the difference of the charge
before and after: charges never drift and an order that leaves releases exactly what it
held.

Energy is held per unit and quarter-hour as average power in tenths of MW: an hourly
order of q tenths of MWh weighs q in each of its four quarters, a 15-minute order 4q in
its quarter.  So hourly and 15-minute contracts of the same unit check against the same
program (hourly programs, unavailabilities and limitations apply to all four quarters; a
quarter-hour value to its quarter), and a 15-minute order is checked against the hourly
program of its hour as the rules describe (R46.2.4, R46.2.5).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from math import ceil
from typing import Any

from engine.commands import (
    CancelAgentOrders,
    HibernateOrders,
)
from engine.contracts import ContractSpec, local_day_of, local_midnight_utc
from engine.engine import Engine
from engine.errors import Code, InvalidIdentifier
from engine.model import BUY, Order
from risk.commands import (
    AdjustProgram,
    DecideGuaranteeRequest,
    LoadReferenceData,
    ReinstateAgent,
    ReleaseObligations,
    RequestGuaranteeChange,
    SetBreachAction,
    SetGuarantees,
    SetLimitation,
    SetProgram,
    SetRateLimits,
    SetSyncReduction,
    SetUnavailability,
    SuspendAgent,
)
from risk.events import RiskNotice, ThrottlingStatus
from risk.refdata import RateLimit, RefData, RefDataError, Unit, load

QUARTER_MS = 15 * 60_000
HOUR_MS = 60 * 60_000
A1_6_NOTICE_MS = 5 * 60_000  # A1§6: five minutes before the round starts


def fmt_units(units: int) -> str:
    """An exact amount, shown in € (charges up to the cent)."""
    return fmt_money(to_cents_up(units))


def fmt_money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    a = abs(cents)
    return f"{sign}{a // 100}.{a % 100:02d} €"


SCALE = 10**25  # internal units per cent of €: every charge is an exact integer (see below)


def to_cents_up(units: int) -> int:
    return -(-units // SCALE)


def to_cents_down(units: int) -> int:
    return units // SCALE


class _LimitTerm:
    """A term of the operative limit kept in the slot ``_<name>``: setting it moves the
    account's running limit ``lim`` by the change, added (``sign`` +1) or taken (−1).
    Officers' and the sync's commands set these, not the order path."""

    __slots__ = ("sign", "slot")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, v: int) -> None:
        obj.lim += self.sign * (v - getattr(obj, self.slot))
        setattr(obj, self.slot, v)


class Account:
    """An agent's guarantee account on the platform (R49.1.4.3), held *exactly*.

    Amounts are integers of 1/``SCALE`` of a cent.  A charge is |price| × quantity × the
    owner's tax factor × its share, and tax rates have at most 8 decimals, so with
    ``SCALE = 10**25`` every charge is an exact integer: nothing is rounded, so what a fill,
    a cancel or a release gives back is exactly what was charged, and the limit never drifts.
    Cents appear only for display (charges rounded up, the limit rounded down).

    The operative limit itself, ``lim`` = a − b − c − d − e + f, is what the order path
    reads and changes: an order's charge is taken from it and given back to it, a fill moves
    its value to the obligations.  c), the value of the resting debtor orders, is then
    what the other terms leave (:attr:`debtor`); every term is an exact integer, so each
    is exactly what it would be if it were kept on its own."""

    __slots__ = ("_gmic", "_increases", "_reduction", "_reductions", "agent", "bids",
                 "by_round", "folded", "lim", "obligations")

    def __init__(self, agent: str, gmic_cents: int) -> None:
        self.agent = agent
        self._gmic = gmic_cents * SCALE  # a) reserved guarantees
        self.obligations = 0  # b) payment obligations of unsynchronised trades, with taxes
        # the same by round: the closed rounds' here, the current round's is what is left
        # (:meth:`rounds`), so a fill adds to the total alone
        self.by_round: dict[int, int] = {}
        self.folded = 0  # sum of by_round
        self._reduction = 0  # d) reduction communicated after the last synchronisation
        self._reductions = 0  # e) reductions requested by the agent, accepted
        self._increases = 0  # f) increases requested by the agent, accepted
        # the value of the agent's debtor auction bids taken into the auction and not yet
        # cleared (R39.4.3.4: «se anotará una reducción del balance de garantías»), with
        # taxes: held like c) until the bid is cancelled, refused at the close or cleared
        self.bids = 0
        self.lim = self._gmic  # the operative limit, a) to f), less the bids held

    @property
    def debtor(self) -> int:
        """c) value of resting debtor orders, with taxes."""
        return (self._gmic - self.obligations - self._reduction - self._reductions
                + self._increases - self.bids - self.lim)

    gmic = _LimitTerm(+1)  # a)
    reduction = _LimitTerm(-1)  # d)
    reductions = _LimitTerm(-1)  # e)
    increases = _LimitTerm(+1)  # f)

    def limit(self) -> int:
        """The operative limit, R49.1.4.3 a) to f)."""
        return self.lim

    def fold(self, rnd: int) -> None:
        """The obligations not yet in ``by_round`` are round ``rnd``'s (the current one)."""
        cur = self.obligations - self.folded
        if cur:
            self.by_round[rnd] = self.by_round.get(rnd, 0) + cur
            self.folded = self.obligations

    def rounds(self, rnd: int) -> dict[int, int]:
        """Obligations by round, ``rnd`` being the current round."""
        cur = self.obligations - self.folded
        if not cur:
            return self.by_round
        out = dict(self.by_round)
        out[rnd] = out.get(rnd, 0) + cur
        return out

    def limit_cents(self) -> int:
        return to_cents_down(self.limit())

    def state(self) -> tuple[int, ...]:
        """Every amount the account's figures are made of: equal tuples, equal figures (the
        fan-out sends an ``account`` message when it changes; ``folded``, which moves at a
        round close, changes no figure of it)."""
        return (self.lim, self.obligations, self.bids, self._gmic, self._reduction,
                self._reductions, self._increases)

    def breakdown(self) -> dict[str, int]:
        """In cents: charges rounded up, the limit rounded down."""
        return {
            "reserved": to_cents_down(self.gmic), "obligations": to_cents_up(self.obligations),
            # c) and the auction bids held (R39.4.3.4), shown apart as well
            "debtor_orders": to_cents_up(self.debtor + self.bids),
            "auction_bids": to_cents_up(self.bids),
            "sync_reduction": to_cents_up(self.reduction),
            "requested_reductions": to_cents_up(self.reductions),
            "requested_increases": to_cents_down(self.increases),
            "operative_limit": self.limit_cents(),
        }


class _Placed:
    """Resting energy of a period, from what is placed (``ps``/``pb``: traded and resting)
    and what is traded (``sold``/``bought``)."""

    __slots__ = ()
    ps: int
    pb: int
    sold: int
    bought: int

    @property
    def rs(self) -> int:
        """Resting sells."""
        return self.ps - self.sold

    @property
    def rb(self) -> int:
        """Resting buys."""
        return self.pb - self.bought


class Slot(_Placed):
    """What is particular to one quarter-hour of one unit-hour (tenths of MW): the
    quarter's own program (a 15-minute program, or an auction result), its 15-minute
    contracts' trades and resting orders, its unavailability and limitations, and so its
    bounds: ``cap`` = min(unit max, max − unavailable, limitation max), ``floor`` =
    max(unit min, limitation min) (R46.2.4, R46.2.5)."""

    __slots__ = ("adj", "bought", "cap", "floor", "hseen", "lmax", "lmin", "max", "min", "pb",
                 "prog_set", "ps", "sold", "unavail")

    def __init__(self, unit_max: int, unit_min: int) -> None:
        self.max = unit_max
        self.min = unit_min
        self.cap = unit_max
        self.floor = unit_min
        self.prog_set: int | None = None  # a 15-minute program replacing the hour's
        self.adj = 0  # 15-minute auction results (R50)
        # the hour's auction results that prog_set already holds (for the notice of the
        # quarter's next program: only later ones are new to it)
        self.hseen = 0
        self.sold = 0  # this quarter's 15-minute trades, counted at once
        self.bought = 0
        self.ps = 0  # sells placed: traded and resting, of 15-minute contracts
        self.pb = 0  # buys placed
        self.unavail = 0  # R46.2.3.1
        self.lmin: int | None = None  # R46.2.3.2
        self.lmax: int | None = None

    def rebound(self) -> None:
        cap = self.max - self.unavail
        if self.lmax is not None and self.lmax < cap:
            cap = self.lmax
        self.cap = cap
        floor = self.min
        if self.lmin is not None and self.lmin > floor:
            floor = self.lmin
        self.floor = floor


class Hour(_Placed):
    """One unit's energy in one hour (tenths of MW): the hourly program and auction results,
    the hourly contracts' trades and resting orders — which weigh the same in each of the
    hour's four quarters — and, only once something is particular to a quarter, the four
    :class:`Slot` of the quarters.  Energy in quarter q = the hour's part + q's part.  A unit
    trading only hourly contracts thus checks and updates one object, not four.

    Resting orders are held as *placed* totals, ``ps`` = sold + resting sells and ``pb`` =
    bought + resting buys: a fill moves quantity from resting to traded and leaves them as
    they are, so it changes one number.  The checks read them as they stand (a selling
    unit selling: program + ps − bought, and so on); ``rs`` and ``rb`` are derived."""

    __slots__ = ("_adj", "_prog", "base", "bought", "max", "min", "pb", "ps", "quarters",
                 "sold")

    def __init__(self, unit_max: int, unit_min: int) -> None:
        self.max = unit_max
        self.min = unit_min
        self._prog = 0  # base program (R50: PHF), without continuous trades
        self._adj = 0  # hourly auction results (R50)
        self.base = 0  # prog + adj, for the checks
        self.sold = 0  # continuous trades of hourly contracts, counted at once
        self.bought = 0
        self.ps = 0  # sells placed: traded and resting, of hourly contracts
        self.pb = 0  # buys placed
        self.quarters: tuple[Slot, Slot, Slot, Slot] | None = None

    @property
    def prog(self) -> int:
        return self._prog

    @prog.setter
    def prog(self, v: int) -> None:
        self._prog = v
        self.base = v + self._adj

    @property
    def adj(self) -> int:
        return self._adj

    @adj.setter
    def adj(self, v: int) -> None:
        self._adj = v
        self.base = self._prog + v

    def quarter(self, i: int) -> Slot:
        if self.quarters is None:
            self.quarters = (Slot(self.max, self.min), Slot(self.max, self.min),
                             Slot(self.max, self.min), Slot(self.max, self.min))
        return self.quarters[i]

    def points(self, qi: int | None) -> list[tuple[int, int, int, int, int, int, int]]:
        """(program, sold, bought, resting sells, resting buys, cap, floor) of each quarter
        an order checks: the four quarters of the hour for an hourly order (or the hour
        itself while no quarter is particular), the order's quarter for a 15-minute one."""
        hp = self.base
        if self.quarters is None:
            return [(hp, self.sold, self.bought, self.rs, self.rb, self.max, self.min)]
        out = []
        for i, q in enumerate(self.quarters):
            if qi is not None and i != qi:
                continue
            prog = (q.prog_set if q.prog_set is not None else self.prog) + self.adj + q.adj
            out.append((prog, self.sold + q.sold, self.bought + q.bought, self.rs + q.rs,
                        self.rb + q.rb, q.cap, q.floor))
        return out


@dataclass(slots=True)
class GuaranteeRequest:
    id: int
    agent: str
    increase: bool
    amount: int
    state: str  # PENDING ACCEPTED REFUSED
    # an increase pending at a round close: the sync of that round decides it, and only
    # the sync (R49.1.4.4; an officer's decision meanwhile would contradict the one the
    # settlement side records)
    with_sync: bool = False


class Throttle:
    """Fixed windows per rule (aligned to multiples of the window): O(1) per request.

    The fast path: while ``ts < until`` (every rule still in its window), the state is OK
    and ``left`` is not used up, a request only takes one from ``left``: it can neither
    reach a warning level nor a maximum, so the full pass would change nothing but the
    counts.  ``armed - left`` requests are thus not yet in ``counts``; :meth:`flush` adds
    them before anything reads the counts."""

    __slots__ = ("armed", "counts", "left", "limit", "maxs", "starts", "state", "until",
                 "warns", "wins")

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.wins = [w for w, _ in limit.rules]
        self.maxs = [m for _, m in limit.rules]
        self.warns = [m * limit.warning_ratio for _, m in limit.rules]
        self.starts = [-1] * len(limit.rules)
        self.counts = [0] * len(limit.rules)
        self.state = "OK"
        self.until = -1  # no fast path before the first full pass
        self.armed = 0
        self.left = 0

    def flush(self) -> None:
        pend = self.armed - self.left
        if pend:
            self.armed = self.left
            counts = self.counts
            for i in range(len(counts)):
                counts[i] += pend

    def counted(self) -> list[int]:
        """The counts, with the requests of the fast path (changes nothing)."""
        pend = self.armed - self.left
        return [c + pend for c in self.counts]

    def arm(self) -> None:
        """After a full pass that accepted the request: how long, and for how many more
        requests, the fast path is exact.  A count c may go up to c + 1 on the fast path
        only while c + 1 < warns[i] (so also < maxs[i]), i.e. c + 1 <= ceil(warns[i]) - 1."""
        if self.state != "OK":
            self.armed = self.left = 0
            return
        self.until = min(s + w for s, w in zip(self.starts, self.wins, strict=True))
        self.armed = self.left = max(0, min(ceil(w) - 1 - c for w, c in zip(
            self.warns, self.counts, strict=True)))


_TRADER_ONLY = Code.USER_NOT_TRADER
_FAR_FUTURE = 2**62


class _Named:
    """What an energy message needs to name: a unit and a contract."""

    __slots__ = ("contract", "unit")

    def __init__(self, unit: str, contract: str) -> None:
        self.unit = unit
        self.contract = contract


class _Pass:
    """The static R46.2.2 checks passed: the unit, and the window [start, end) in ms UTC
    in which both the agent's registration and the unit are current; with what the order
    path needs at hand (the owners and their multipliers, the single owner's account, the
    unit's direction, where its energy counts).  Also the ``Order.ext`` of the orders it
    admitted (:meth:`RiskGuard.admit`)."""

    __slots__ = ("acct", "agent", "end", "fast_end", "hour", "k", "mul", "owner_codes",
                 "owners", "qi", "ref", "sells", "single", "start", "tgt", "unit")

    def __init__(self, agent: str, unit: Unit, start: int, end: int,
                 owners: tuple[tuple[Account, int, int], ...], hour: Hour, qi: int | None,
                 k: int, ref: RefData) -> None:
        self.agent = agent  # the agent it was checked for
        # the reference data it was built from: its owners, shares and taxes (R53.6: the
        # settlement settles the trades of the orders it admitted with the same ones)
        self.ref = ref
        self.unit = unit
        self.sells = unit.sells
        self.start = start
        self.end = end
        self.owners = owners
        self.owner_codes = frozenset(a.agent for a, _, _ in owners)
        self.single = len(owners) == 1
        self.acct = owners[0][0]  # the owner, when single
        self.mul = owners[0][1]
        self.hour = hour
        self.qi = qi  # the quarter of a 15-minute contract, else None
        self.tgt: Hour | Slot = hour if qi is None else hour.quarter(qi)
        self.k = k
        # RiskGuard.admit's fast path until then: a single owner and an hourly contract
        self.fast_end = end if self.single and qi is None else -1


def _window(first: date, last: date | None) -> tuple[int, int]:
    """[start, end) in ms UTC of the local days first..last (inclusive)."""
    start = local_midnight_utc(first)
    end = _FAR_FUTURE if last is None else local_midnight_utc(last + timedelta(days=1))
    return start, end


class RiskGuard:
    """See the module docstring.  ``install`` wires it into an engine."""

    def __init__(self, engine: Engine, ref: RefData) -> None:
        self.engine = engine
        self.ref = ref
        self.accounts: dict[str, Account] = {
            a.code: Account(a.code, a.guarantees) for a in ref.agents.values()}
        self.suspended: set[str] = {a.code for a in ref.agents.values() if a.suspended}
        self.hours: dict[tuple[str, int], Hour] = {}  # (unit, hour start ms)
        self._periods: dict[str, tuple[tuple[int, ...], int]] = {}
        self.requests: dict[int, GuaranteeRequest] = {}
        self.next_request = 1
        self.throttles: dict[str, Throttle] = {}
        self.breach_hibernate: dict[str, bool] = {}
        self.pending: list[tuple[int, int, Any]] = []  # (received, seq, command) A1§6
        self._pending_seq = 0
        self._owners_cache: dict[str, tuple[tuple[Account, int, int], ...]] = {}
        # R46.2.2 static checks passed, by contract, unit and user (see _pass)
        self._static: dict[str, dict[str, dict[str, _Pass]]] = {}
        self.loaded_json: str | None = None  # the last LoadReferenceData document
        # units a reload removed, as they were: an auction that closed while one was
        # listed still moves its program when it clears (R50, _on_adjust_program)
        self.retired: dict[str, Unit] = {}
        # R39.4.3.4: what each debtor auction bid holds, by bid id: the owners' accounts
        # with their multipliers (as when it was taken) and its value |price| × qty summed
        # over its debtor steps (see hold_bid)
        self.bid_holds: dict[int, tuple[tuple[tuple[Account, int], ...], int]] = {}
        # R49.1.4.4: the reductions the platform decided at the last round close (the
        # synchronisation instant), as (request id, agent, amount in cents, accepted,
        # reason): the settlement side records them as they are (see round_closed)
        self.close_decisions: tuple[tuple[int, str, int, bool, str], ...] = ()

    # ------------------------------------------------------------------ installation

    @classmethod
    def install(cls, engine: Engine, ref: RefData) -> RiskGuard:
        g = cls(engine, ref)
        engine.guard = g
        handlers: dict[type, Callable[[Any, int], None]] = {
            LoadReferenceData: g._on_load,
            SetGuarantees: g._on_set_guarantees,
            RequestGuaranteeChange: g._on_request,
            DecideGuaranteeRequest: g._on_decide,
            SetSyncReduction: g._on_sync_reduction,
            ReleaseObligations: g._on_release,
            SuspendAgent: g._on_suspend,
            ReinstateAgent: g._on_reinstate,
            SetRateLimits: g._on_rate_limits,
            SetBreachAction: g._on_breach_action,
            SetProgram: g._on_program,
            AdjustProgram: g._on_adjust_program,
            SetUnavailability: g._on_unavailability,
            SetLimitation: g._on_limitation,
        }
        for t, h in handlers.items():
            engine.register(t, h)
        return g

    # ------------------------------------------------------------------ helpers

    def _notice(self, ts: int, kind: str, agent: str | None, by: str, detail: str,
                amount: int | None = None, request_id: int | None = None) -> None:
        self.engine.emit(RiskNotice((ts, kind, agent, by, request_id, amount, detail)))

    def _deny(self, ts: int, by: str, req_id: str | None, code: str, reason: str) -> None:
        self.engine.reject(ts, by, self._agent_of(by), req_id, code, reason)

    def _agent_of(self, user: str) -> str:
        u = self.ref.users.get(user)
        return u.agent if u is not None else ""

    def _has_role(self, user: str, *roles: str) -> bool:
        u = self.ref.users.get(user)
        return u is not None and not u.roles.isdisjoint(roles)

    def _period(self, contract: str) -> tuple[tuple[int, ...], int]:
        """Quarter starts of a contract and the weight k of its orders (1 hourly, 4 QH)."""
        p = self._periods.get(contract)
        if p is None:
            spec = ContractSpec.parse(contract)
            quarters = tuple(range(spec.start, spec.end, QUARTER_MS))
            p = (quarters, 4 if spec.product.minutes == 15 else 1)
            self._periods[contract] = p
        return p

    def _hour(self, unit: Unit, start: int) -> Hour:
        key = (unit.code, start - start % HOUR_MS)
        h = self.hours.get(key)
        if h is None:
            h = self.hours[key] = Hour(unit.max_energy, unit.min_energy)
        return h

    def _locate(self, unit: Unit, contract: str) -> tuple[Hour, int | None, int]:
        """The hour of a contract, its quarter index (15-minute contracts) and its weight."""
        quarters, k = self._period(contract)
        start = quarters[0]
        qi = None if k == 1 else (start % HOUR_MS) // QUARTER_MS
        return self._hour(unit, start), qi, k

    def _owners(self, unit: Unit) -> tuple[tuple[Account, int, int], ...]:
        """(account, multiplier, 0) per owner: the exact charge of |price| cents × qty
        tenths is ``|price| × qty × multiplier`` internal units, the multiplier being
        SCALE × tax factor × share / 10 (cents × tenths / 10 = cents of €)."""
        v = self._owners_cache.get(unit.code)
        if v is None:
            out = []
            for agent, bp in unit.owners:
                a = self.ref.agents[agent]
                per, rem = divmod(SCALE, a.tax_den * 10_000 * 10)
                assert rem == 0, "tax rates with more than 8 decimals"
                out.append((self.accounts[agent], a.tax_num * bp * per, 0))
            v = tuple(out)
            self._owners_cache[unit.code] = v
        return v

    # ------------------------------------------------------------------ Guard protocol

    def gate(self, cmd: Any, ts: int) -> tuple[str, str] | None:
        """R48.c: per-user request limits in fixed windows (aligned to multiples of the
        window), counting accepted requests; one pass, O(rules), or O(1) on the fast path
        (see :class:`Throttle`)."""
        try:
            th = self.throttles[cmd.user]
        except KeyError:
            return self._gate(cmd.user, None, ts)
        if ts < th.until and th.left:
            th.left -= 1
            return None
        return self._gate(cmd.user, th, ts)

    def _gate(self, user: str, th: Throttle | None, ts: int) -> tuple[str, str] | None:
        if th is None:
            lim = self.ref.user_rate_limits.get(user, self.ref.rate_limit)
            th = self.throttles[user] = Throttle(lim)
        th.flush()
        starts, counts, maxs, warns = th.starts, th.counts, th.maxs, th.warns
        warn = False
        for i, win in enumerate(th.wins):
            start = ts - ts % win
            if starts[i] != start:
                starts[i] = start
                counts[i] = 0
            c = counts[i]
            if c >= maxs[i]:
                for j in range(i):  # this request does not count
                    counts[j] -= 1
                th.armed = th.left = 0
                return self._breach(th, user, i, ts)
            c += 1
            counts[i] = c
            if c >= warns[i]:
                warn = True
        if warn:
            if th.state != "WARNING":
                self._throttle_state(th, user, "WARNING", ts)
        elif th.state != "OK":
            self._throttle_state(th, user, "OK", ts)
        th.arm()
        return None

    def _breach(self, th: Throttle, user: str, i: int, ts: int) -> tuple[str, str]:
        if th.state != "BREACHED":
            self._throttle_state(th, user, "BREACHED", ts)
        if self.breach_hibernate.get(user, th.limit.hibernate_on_breach):
            self.engine.dispatch(
                HibernateOrders(user=user, reason="rate limit breached (R48.c)"), ts)
        win, mx = th.wins[i], th.maxs[i]
        return (Code.RATE_LIMIT,
                f"rate limit: {mx} requests per {win} ms reached; the window ends in"
                f" {ts - ts % win + win - ts} ms (R48.c)")

    def _throttle_state(self, th: Throttle, user: str, state: str, ts: int) -> None:
        th.state = state
        self.engine.emit(ThrottlingStatus((
            ts, user, state, tuple(th.counts), tuple(r[1] for r in th.limit.rules),
            tuple(r[0] for r in th.limit.rules))))

    def throttling(self, user: str, ts: int) -> dict[str, Any]:
        """The throttling status a user can query (ThrottlingStatusReq)."""
        th = self.throttles.get(user)
        lim = th.limit if th else self.ref.user_rate_limits.get(user, self.ref.rate_limit)
        rules = []
        for i, (win, mx) in enumerate(lim.rules):
            start = ts - ts % win
            used = th.counted()[i] if th and th.starts[i] == start else 0
            rules.append({"window_ms": win, "max": mx, "used": used,
                          "resets_at": start + win})
        return {"user": user, "state": th.state if th else "OK", "rules": rules,
                "hibernate_on_breach": self.breach_hibernate.get(
                    user, lim.hibernate_on_breach)}

    def admit(self, o: Order, ts: int, replaces: Order | None) -> tuple[str, str] | None:
        """R46.2.2 in order (the contract state and the bounds are checked by the engine
        first), then the energy checks of R46.2.4 and R46.2.5; reserve on success.

        What the guard keeps per order instantiation: ``ext`` its :class:`_Pass` (owners,
        multipliers, where its energy counts) and ``ext_v`` its |price| if it is a debtor
        order (R49.1.4.3 c), else 0.  Its charge on each owner is ``ext_v × open quantity ×
        multiplier`` (:meth:`_owners`), so what a fill or a release gives back, ``ext_v ×
        qty × multiplier``, is exactly the difference of the charge before and after.

        This is the common case, inline: a new order of a single-owner unit in an hourly
        contract whose hour has no particular quarter, with the static checks cached and
        nobody suspended; it does what :meth:`_admit` does in that case.  Anything else goes
        to :meth:`_admit`."""
        try:
            p = self._static[o.contract][o.unit][o.user]
        except KeyError:
            return self._admit(o, ts, replaces)
        h = p.hour
        # a cached pass was current when cached (p.start <= ts) and time never goes back
        if (p.agent != o.agent or ts >= p.fast_end or self.suspended
                or h.quarters is not None):
            return self._admit(o, ts, replaces)
        if replaces is not None:
            return self._readmit(o, ts, replaces, p, h)
        rem = o.remaining  # k = 1: an hourly contract
        price = o.price
        if o.side is BUY:
            if price > 0:  # a debtor buy: within the operative limit (R49.1.4.3)
                acct = p.acct
                c = price * rem * p.mul
                if c > acct.lim:
                    return self._limit_refusal(c, acct.lim, acct, True)
                acct.lim -= c
                o.ext_v = price
            else:
                o.ext_v = 0
            # (the energy of the unit-hour: R46.2.5; the charge is taken back if refused)
            if p.sells:
                total = h.base + h.sold - h.pb - rem
                if total < h.min:
                    return self._unreserve(o, p, price, rem, total, Code.ENERGY_MIN, h.min,
                                           "R46.2.5")
            else:
                total = h.base + h.pb - h.sold + rem
                if total > h.max:
                    return self._unreserve(o, p, price, rem, total, Code.ENERGY_MAX, h.max,
                                           "R46.2.5")
            h.pb += rem
        else:
            if price < 0:  # a debtor sell
                acct = p.acct
                c = -price * rem * p.mul
                if c > acct.lim:
                    return self._limit_refusal(c, acct.lim, acct, True)
                acct.lim -= c
                o.ext_v = -price
            else:
                o.ext_v = 0
            # R46.2.4
            if p.sells:
                total = h.base + h.ps - h.bought + rem
                if total > h.max:
                    return self._unreserve(o, p, -price, rem, total, Code.ENERGY_MAX, h.max,
                                           "R46.2.4")
            else:
                total = h.base + h.bought - h.ps - rem
                if total < h.min:
                    return self._unreserve(o, p, -price, rem, total, Code.ENERGY_MIN, h.min,
                                           "R46.2.4")
            h.ps += rem
        o.ext = p  # (ext_v is set above; it means nothing while ext is None)
        return None

    def _readmit(self, o: Order, ts: int, replaces: Order, p: _Pass, h: Hour
                 ) -> tuple[str, str] | None:
        """:meth:`admit`'s common case for a modification (R46.2.6.1): what the replaced
        instantiation holds counts as available to the new one, and is released if the new
        one is accepted.  As :meth:`_admit` does in that case."""
        if replaces.ext is not p:
            return self._admit(o, ts, replaces)
        pq = replaces.remaining  # what the guard counts of the replaced instantiation
        pv = replaces.ext_v
        rem = o.remaining  # k = 1: an hourly contract
        price = o.price
        acct = p.acct
        mul = p.mul
        if o.side is BUY:
            ap = price if price > 0 else 0  # a debtor buy: positive price
            if ap:  # R49.1.4.3
                c = ap * rem * mul
                avail = acct.lim + pv * pq * mul
                if c > avail:
                    return self._limit_refusal(c, avail, acct, True)
            if p.sells:  # R46.2.5
                total = h.base + h.sold - h.pb + pq - rem
                if total < h.min:
                    return self._energy_reject(Code.ENERGY_MIN, o, total, h.min, "R46.2.5")
            else:
                total = h.base + h.pb - h.sold - pq + rem
                if total > h.max:
                    return self._energy_reject(Code.ENERGY_MAX, o, total, h.max, "R46.2.5")
            h.pb += rem - pq
        else:
            ap = -price if price < 0 else 0  # a debtor sell: negative price
            if ap:
                c = ap * rem * mul
                avail = acct.lim + pv * pq * mul
                if c > avail:
                    return self._limit_refusal(c, avail, acct, True)
            if p.sells:  # R46.2.4
                total = h.base + h.ps - h.bought - pq + rem
                if total > h.max:
                    return self._energy_reject(Code.ENERGY_MAX, o, total, h.max, "R46.2.4")
            else:
                total = h.base + h.bought - h.ps + pq - rem
                if total < h.min:
                    return self._energy_reject(Code.ENERGY_MIN, o, total, h.min, "R46.2.4")
            h.ps += rem - pq
        acct.lim += (pv * pq - ap * rem) * mul
        o.ext = p
        o.ext_v = ap
        return None

    def _unreserve(self, o: Order, p: _Pass, ap: int, rem: int, total: int, code: str,
                   bound: int, rule: str) -> tuple[str, str]:
        """The fast path's energy refusal: give back the charge it took (a debtor order)."""
        if ap > 0:
            p.acct.lim += ap * rem * p.mul
        return self._energy_reject(code, o, total, bound, rule)

    def _admit(self, o: Order, ts: int, replaces: Order | None) -> tuple[str, str] | None:
        """:meth:`admit` in every case."""
        static = self._pass(o.user, o.agent, o.unit, o.contract, ts)
        if (static is None or not static.start <= ts < static.end
                or (self.suspended and (o.agent in self.suspended
                                        or not self.suspended.isdisjoint(static.owner_codes)))):
            rej = self._refusal(o.user, o.agent, o.unit, o.contract, ts)
            assert rej is not None, "the fast path and R46.2.2's order disagree"
            return rej
        # -- the operative limit of every owner for its share (R46.2.2, R49.1.4.3)
        price = o.price
        rem = o.remaining
        pq = pv = 0  # what the guard counts of the instantiation this one replaces
        if replaces is not None and replaces.ext is not None:
            pq, pv = replaces.remaining, replaces.ext_v
        if o.side is BUY:
            sell = False
            ap = price if price > 0 else 0  # a debtor buy: positive price
        else:
            sell = True
            ap = -price if price < 0 else 0  # a debtor sell: negative price
        if ap:
            held = self._held(replaces) if pv else None
            for acct, mul, _ in static.owners:
                c = ap * rem * mul
                avail = acct.lim
                if held:
                    avail += held.get(acct.agent, 0)
                if c > avail:
                    return self._limit_refusal(c, avail, acct, static.single)
        # -- energy (R46.2.4, R46.2.5), every quarter of the contract
        k = static.k
        e = k * rem
        pe = k * pq  # the replaced order's own energy
        rej = self._energy_check(static.hour, static.qi, static.sells, sell, e, pe, o)
        if rej is not None:
            return rej
        # -- accepted: reserve
        if replaces is not None:
            self.released(replaces, pq)
        if ap:
            for acct, mul, _ in static.owners:
                acct.lim -= ap * rem * mul
        tgt = static.tgt
        if sell:
            tgt.ps += e
        else:
            tgt.pb += e
        o.ext = static
        o.ext_v = ap
        return None

    @staticmethod
    def _held(replaced: Order | None) -> dict[str, int]:
        """What the instantiation a modification replaces holds on each of its owners, by
        agent: it is released if the modification is accepted, so it counts as available
        (R46.2.6.1) — to the agent it is held on.  By agent, not by position in the owner
        list: the owners it was charged to (its own :class:`_Pass`) are those of the
        reference data when it was admitted, and a reload may have changed the unit's
        owners, their order or their number since."""
        assert replaced is not None
        p: _Pass = replaced.ext  # type: ignore[assignment]
        v = replaced.ext_v * replaced.remaining
        out: dict[str, int] = {}
        for acct, mul, _ in p.owners:
            out[acct.agent] = out.get(acct.agent, 0) + v * mul
        return out

    def _limit_refusal(self, c: int, avail: int, acct: Account, single: bool
                       ) -> tuple[str, str]:
        return (Code.OPERATIVE_LIMIT,
                f"order value {fmt_units(c)} (with taxes"
                f"{'' if single else ', for its share'}) exceeds the"
                f" operative limit {fmt_money(to_cents_down(avail))} of agent"
                f" {acct.agent} (R49.1.4.3)")

    def _energy_check(self, h: Hour, qi: int | None, unit_sells: bool, sell: bool, e: int,
                      pe: int, o: Any) -> tuple[str, str] | None:
        """R46.2.4/R46.2.5 for an order adding ``e`` (and replacing ``pe`` of its own) in
        every quarter it covers."""
        if h.quarters is None and qi is None:  # the common case: one point, inline
            if unit_sells:
                if sell:
                    total = h.base + h.ps - h.bought - pe + e
                    if total > h.max:
                        return self._energy_reject(Code.ENERGY_MAX, o, total, h.max,
                                                   "R46.2.4")
                else:
                    total = h.base + h.sold - h.pb + pe - e
                    if total < h.min:
                        return self._energy_reject(Code.ENERGY_MIN, o, total, h.min,
                                                   "R46.2.5")
            else:
                if sell:
                    total = h.base + h.bought - h.ps + pe - e
                    if total < h.min:
                        return self._energy_reject(Code.ENERGY_MIN, o, total, h.min,
                                                   "R46.2.4")
                else:
                    total = h.base + h.pb - h.sold - pe + e
                    if total > h.max:
                        return self._energy_reject(Code.ENERGY_MAX, o, total, h.max,
                                                   "R46.2.5")
            return None
        for prog, sold, bought, rs, rb, cap, floor in h.points(qi):
            if unit_sells:
                net = prog + sold - bought
                if sell:
                    total = net + rs - pe + e
                    if total > cap:
                        return self._energy_reject(Code.ENERGY_MAX, o, total, cap, "R46.2.4")
                else:
                    total = net - (rb - pe) - e
                    if total < floor:
                        return self._energy_reject(Code.ENERGY_MIN, o, total, floor,
                                                   "R46.2.5")
            else:
                net = prog + bought - sold
                if sell:
                    total = net - (rs - pe) - e
                    if total < floor:
                        return self._energy_reject(Code.ENERGY_MIN, o, total, floor,
                                                   "R46.2.4")
                else:
                    total = net + rb - pe + e
                    if total > cap:
                        return self._energy_reject(Code.ENERGY_MAX, o, total, cap, "R46.2.5")
        return None

    def auction_quarters(self, contract: str) -> tuple[tuple[int, ...], int]:
        """The quarter-hour starts (ms UTC) a contract covers and the weight of its energy
        in each (1 hourly, 4 for 15 minutes): what an auction bid of q tenths of MWh adds,
        ``weight × q`` tenths of MW, in each of those quarters."""
        return self._period(contract)

    def auction_check(self, user: str, agent: str, unit: str, contract: str, side: str,
                      steps: tuple[tuple[int, int], ...], ts: int,
                      already_bid: Mapping[int, int]) -> tuple[str, str] | None:
        """Validation of an auction bid (R39): the R46.2.2 checks of the agent and the unit;
        the guarantees (the value of its debtor steps, with taxes and shares, within what is
        left of each owner's operative limit: the bids already taken hold their value,
        R39.4.3.4, see :meth:`hold_bid`; the caller holds this one's once it is accepted);
        and the energy: the whole bid, with the
        unit's other bids of the session, against the unit's program and limits in every
        quarter (as R46.2.4/R46.2.5, without continuous resting orders, which are paused).

        ``already_bid`` is what the unit's other bids of the session offer on the same side,
        per quarter-hour start, in tenths of MW: hourly and 15-minute bids summed, an hourly
        bid weighing its quantity in each of its four quarters and a 15-minute one four
        times its quantity in its quarter (the same measure as the program; see
        :meth:`auction_quarters`)."""
        rej = self._refusal(user, agent, unit, contract, ts)
        if rej is not None:
            return rej
        static = self._pass(user, agent, unit, contract, ts)
        assert static is not None
        sell = side == "SELL"
        v = self.bid_value(side, steps)
        for acct, mul, _ in static.owners:
            value = v * mul
            avail = acct.limit()
            if value > avail:
                return (Code.OPERATIVE_LIMIT,
                        f"bid value {fmt_units(value)} (with taxes) exceeds the operative"
                        f" limit {fmt_money(to_cents_down(avail))} of agent {acct.agent}"
                        " (R49.1.4.3)")
        un = static.unit
        e = static.k * sum(q for _, q in steps)
        quarters = self._period(contract)[0]
        points = static.hour.points(static.qi)
        if len(points) != len(quarters):  # the hour has no particular quarter: its one
            points = points * len(quarters)  # point stands for each of its four
        for (prog, sold, bought, _rs, _rb, cap, floor), q in zip(points, quarters,
                                                                   strict=True):
            bid = already_bid.get(q, 0)
            # (continuous resting orders _rs, _rb are paused during the auction)
            net = prog + sold - bought if un.sells else prog + bought - sold
            if sell == un.sells:
                # R39.4.2.2 (a sell of a selling unit), R39.4.3.2 (a buy of a buying unit):
                # bid + program must not exceed the maximum; nothing else is checked (a
                # unit below its minimum may bid to come up to it)
                total = net + e + bid
                if total > cap:
                    return self._energy_reject(
                        Code.ENERGY_MAX, _Named(unit, contract), total, cap,
                        "R39.4.2.2" if sell else "R39.4.3.2")
            else:
                # R39.4.2.2 (a sell of a buying unit), R39.4.3.2 (a buy of a selling unit):
                # program − bid must stay at or above the minimum
                total = net - e - bid
                if total < floor:
                    return self._energy_reject(
                        Code.ENERGY_MIN, _Named(unit, contract), total, floor,
                        "R39.4.2.2" if sell else "R39.4.3.2")
        return None

    @staticmethod
    def bid_value(side: str, steps: tuple[tuple[int, int], ...]) -> int:
        """|price| × quantity summed over a bid's debtor steps (buys at positive prices,
        sells at negative prices, R49.1.4.3): what it can cost at most, since every step is
        matched at a marginal price no worse than its own."""
        sell = side == "SELL"
        return sum(abs(price) * qty for price, qty in steps
                   if ((price < 0) if sell else (price > 0)))

    def hold_bid(self, bid_id: int, unit: str, side: str,
                 steps: tuple[tuple[int, int], ...]) -> None:
        """R39.4.3.4: «Por cada oferta de compra incorporada al proceso de casación se anotará
        una reducción del balance de garantías excedentarias de los agentes correspondientes
        por el valor aplicable de dicha oferta»: an accepted bid's debtor value, with each
        owner's taxes and share, is taken from the owners' operative limits, so the next
        bids and continuous trading see only what is left (the bids are checked against
        the operative limit, see :meth:`auction_check`).  Held until :meth:`release_bid`
        (the bid is cancelled or refused at the close) or :meth:`clear_bid`."""
        v = self.bid_value(side, steps)
        if not v or bid_id in self.bid_holds:
            return
        held = tuple((acct, mul) for acct, mul, _ in self._owners(self.ref.units[unit]))
        for acct, mul in held:
            c = v * mul
            acct.lim -= c
            acct.bids += c
        self.bid_holds[bid_id] = (held, v)

    def release_bid(self, bid_id: int) -> None:
        """What a bid holds goes back to its owners' operative limits, exactly."""
        h = self.bid_holds.pop(bid_id, None)
        if h is None:
            return
        held, v = h
        for acct, mul in held:
            c = v * mul
            acct.lim += c
            acct.bids -= c

    def clear_bid(self, bid_id: int, unit: str, side: str, price: int | None, qty: int
                  ) -> None:
        """At the clearing, R39.4.3.4: «Una vez se realice la liquidación, en lugar de dicha
        anotación figurarán los resultados de la facturación».  The bid's hold is released
        and its allocation ``qty`` at the marginal ``price``, if it is a payment obligation
        (a buy at a positive price, a sell at a negative one: R44.4), is charged to its
        owners as an obligation of the current round, with taxes and shares, like a
        continuous trade's (R49.1.4.3 b): the sync that enters the session's billing in
        the settlement balance (R55.7.2, the synchronisation of this round) releases it
        with the round's obligations.  The rest of the hold is simply released."""
        h = self.bid_holds.get(bid_id)
        self.release_bid(bid_id)
        if price is None or not qty:
            return
        if not ((price > 0) if side == "BUY" else (price < 0)):
            return  # a collection right: nothing on the platform
        if h is not None:
            owners = h[0]
        else:  # (an obligation always comes from a debtor step, which was held)
            un = self.ref.units.get(unit)
            if un is None:
                return
            owners = tuple((acct, mul) for acct, mul, _ in self._owners(un))
        for acct, mul in owners:
            c = abs(price) * qty * mul
            acct.obligations += c
            acct.lim -= c

    def _pass(self, user: str, agent: str, unit: str, contract: str, ts: int
              ) -> _Pass | None:
        """The :class:`_Pass` of (user, agent, unit, contract), or None when a static check
        fails.  Cached by contract, unit and user only: a user trades for one agent, so a
        pass cached for another agent is not one for this agent; and cached only once
        current (``start <= ts``), so that the fast path of :meth:`admit` has only its end
        to check (the core's time never goes back)."""
        try:
            p: _Pass | None = self._static[contract][unit][user]
        except KeyError:
            p = None
        if p is None:
            p = self._static_checks(user, agent, unit, contract)
            if p is None:
                return None
            if p.start <= ts:
                self._static.setdefault(contract, {}).setdefault(unit, {})[user] = p
        return p if p.agent == agent else None

    def _static_checks(self, user: str, agent: str, unit: str, contract: str
                       ) -> _Pass | None:
        """The R46.2.2 checks that depend only on reference data, for the fast path: a
        :class:`_Pass` (cached), or None when any fails (then :meth:`_refusal` says which,
        in the rule's order)."""
        ref = self.ref
        ag = ref.agents.get(agent)
        u = ref.users.get(user)
        un = ref.units.get(unit)
        if (ag is None or u is None or "trader" not in u.roles or u.agent != agent
                or contract[:2] not in ag.products or un is None or un.responsible != agent):
            return None
        a0, a1 = _window(ag.registered_from, ag.registered_to)
        u0, u1 = _window(un.valid_from, un.valid_to)
        hour, qi, k = self._locate(un, contract)
        return _Pass(agent, un, max(a0, u0), min(a1, u1), self._owners(un), hour, qi, k,
                     ref)

    def _refusal(self, user: str, agent: str, unit: str, contract: str, ts: int
                 ) -> tuple[str, str] | None:
        """R46.2.2 in the rule's order: the agent is authorised for the contract at this
        moment (its user a trader of it, not suspended, the product), registered on this
        date; the unit is valid, current, and the agent responsible for its offers."""
        ref = self.ref
        ag = ref.agents.get(agent)
        if ag is None:
            return Code.AGENT_UNKNOWN, f"agent {agent} is not registered (R46.2.2)"
        u = ref.users.get(user)
        if u is None:
            return Code.USER_UNKNOWN, f"user {user} is not registered"
        if "trader" not in u.roles or u.agent != agent:
            return (_TRADER_ONLY, f"user {user} is not a trader of agent {agent} (R46.2.2)")
        if agent in self.suspended:
            return Code.AGENT_SUSPENDED, f"agent {agent} is suspended (R46.2.6.2)"
        product = contract[:2]
        if product not in ag.products:
            return (Code.AGENT_NOT_AUTHORISED,
                    f"agent {agent} is not authorised to trade {product} contracts (R46.2.2)")
        a0, a1 = _window(ag.registered_from, ag.registered_to)
        if not a0 <= ts < a1:
            return (Code.AGENT_NOT_CURRENT,
                    f"agent {agent} is registered from {ag.registered_from}"
                    f"{f' to {ag.registered_to}' if ag.registered_to else ''}, not on"
                    f" {local_day_of(ts)} (R46.2.2)")
        un = ref.units.get(unit)
        if un is None:
            return Code.UNIT_UNKNOWN, f"unit {unit} does not exist (R46.2.2)"
        u0, u1 = _window(un.valid_from, un.valid_to)
        if not u0 <= ts < u1:
            return (Code.UNIT_NOT_CURRENT,
                    f"unit {unit} is valid from {un.valid_from}"
                    f"{f' to {un.valid_to}' if un.valid_to else ''}, not on"
                    f" {local_day_of(ts)} (R46.2.2)")
        if un.responsible != agent:
            return (Code.UNIT_NOT_RESPONSIBLE,
                    f"agent {agent} is not responsible for the offers of unit {unit}"
                    " (R46.2.2)")
        for owner, _ in un.owners:
            if owner in self.suspended:
                return (Code.AGENT_SUSPENDED,
                        f"agent {owner}, an owner of unit {unit}, is suspended (R46.2.6.2)")
        return None

    def _energy_reject(self, code: str, o: Order | _Named, total: int, bound: int, rule: str
                       ) -> tuple[str, str]:
        word = "maximum" if code == Code.ENERGY_MAX else "minimum"
        return (code,
                f"unit {o.unit}: with this order its energy in a quarter-hour of {o.contract}"
                f" would be {total / 10:.1f} MW, beyond its {word} {bound / 10:.1f} MW"
                f" (program, traded and resting orders counted; {rule})")

    def filled(self, o: Order, qty: int, price: int) -> None:
        p: _Pass | None = o.ext  # type: ignore[assignment]
        if p is None:
            return
        v = o.ext_v
        # the energy moves from placed-resting to traded: the placed total stays; the
        # order's value for the filled quantity (c) is released
        if o.side is BUY:
            p.tgt.bought += p.k * qty
            if price <= 0:  # no obligation
                if v:
                    self._give_back(p, v * qty)
                return
        else:
            p.tgt.sold += p.k * qty
            if price >= 0:
                if v:
                    self._give_back(p, v * qty)
                return
            price = -price
        # R49.1.4.3 b): a payment obligation (buy at a positive price, sell at a negative)
        # at |price|: the limit moves by the value released less the obligation (nothing
        # for a resting order, which trades at its own price)
        d = v - price
        if p.single:
            acct = p.acct
            mul = p.mul
            acct.obligations += price * qty * mul
            if d:
                acct.lim += d * qty * mul
        else:
            for acct, mul, _ in p.owners:
                acct.obligations += price * qty * mul
                if d:
                    acct.lim += d * qty * mul

    @staticmethod
    def _give_back(p: _Pass, value: int) -> None:
        """``value`` (|price| × quantity) of a debtor order's charge goes back to the
        limit of every owner."""
        for acct, mul, _ in p.owners:
            acct.lim += value * mul

    def released(self, o: Order, qty: int) -> None:
        p: _Pass | None = o.ext  # type: ignore[assignment]
        if p is None:
            return
        ap = o.ext_v
        if ap:
            if p.single:
                p.acct.lim += ap * qty * p.mul
            else:
                for acct, mul, _ in p.owners:
                    acct.lim += ap * qty * mul
        if o.side is BUY:
            p.tgt.pb -= p.k * qty
        else:
            p.tgt.ps -= p.k * qty

    def repriced(self, o: Order, old_price: int) -> None:
        p: _Pass | None = o.ext  # type: ignore[assignment]
        if p is None:
            return
        price = o.price
        ap = (price if price > 0 else 0) if o.side is BUY else (-price if price < 0 else 0)
        d = ap - o.ext_v
        if d:
            o.ext_v = ap
            rem = o.remaining
            for acct, mul, _ in p.owners:
                acct.lim -= d * rem * mul

    def round_closed(self, round_no: int, ts: int) -> None:
        """A new round starts at ``ts``: unavailabilities and limitations received at least
        five minutes earlier take effect (A1§6).  The obligations charged since the last
        close are round ``round_no``'s.  The pending reductions are decided
        (:meth:`_decide_reductions`, R49.1.4.4)."""
        for acct in self.accounts.values():
            acct.fold(round_no)
        self._decide_reductions(ts)
        if not self.pending:
            return
        due = [p for p in self.pending if p[0] <= ts - A1_6_NOTICE_MS]
        if not due:
            return
        self.pending = [p for p in self.pending if p[0] > ts - A1_6_NOTICE_MS]
        for received, _, cmd in sorted(due, key=lambda p: (p[0], p[1])):
            if cmd.unit not in self.ref.units:
                # a reload took the unit away since: nothing to apply it to (were it back
                # by the next close, it would have been applied then)
                self._notice(ts, "LIMITATION_DROPPED", None, cmd.by,
                             f"{type(cmd).__name__} for {cmd.unit} {cmd.period} received at"
                             f" {received} not applied: {cmd.unit} is no longer in the"
                             " reference data (A1§6)")
                continue
            self._apply_so(cmd)
            self._notice(ts, "LIMITATION_EFFECTIVE", None, cmd.by,
                         f"{type(cmd).__name__} for {cmd.unit} {cmd.period} received at"
                         f" {received} is effective from round {round_no + 1} (A1§6)")

    def _decide_reductions(self, ts: int) -> None:
        """R49.1.4.4: «cualquier solicitud de reducción de garantías ... será validada por la
        Plataforma de Negociación del Operador del Mercado en el siguiente instante de
        sincronización y, en caso de no tener comprometido dicho importe con obligaciones
        de pago, será aceptada procediendo a considerar dicha reducción en la Plataforma
        ... y a liberar las garantías retenidas en [SIOM] por dicho valor»; otherwise it
        is refused «no considerándose para otras sincronizaciones».

        The platform decides, and only the platform: the synchronisation instant is the
        round close (the sync's inputs are captured there, docs/settlement.md), so every
        pending reduction is judged here, in request order, against the operative limit
        as it stands at the close — the obligations of the rounds not yet synchronised
        (b), the resting debtor orders and auction bids (c), the last reduction d) — each
        accepted one taking its amount from what the next may use.  An accepted reduction
        counts at once (e), so the limit never goes below zero through it and no trade
        can commit the amount between the decision and its effect; the settlement side
        reads these decisions from the close (``close_decisions``) and frees the amount
        in its balance, so the two sides never disagree and a refused reduction never
        funds an increase.  Increases are the settlement side's to decide (surplus,
        R49.1.4.4), after the sync."""
        out: list[tuple[int, str, int, bool, str]] = []
        for r in self.requests.values():
            if r.state != "PENDING":
                continue
            if r.increase:  # the settlement side's, from this close's inputs
                r.with_sync = True
                continue
            acct = self.accounts.get(r.agent)
            if acct is None:
                continue
            if r.amount * SCALE <= acct.limit():
                r.state = "ACCEPTED"
                acct.reductions += r.amount * SCALE
                reason = ("reduction accepted at the synchronisation instant: not committed"
                          " to payment obligations (R49.1.4.4)")
                self._notice(ts, "REQUEST_ACCEPTED", r.agent, "sync", reason, r.amount, r.id)
            else:
                r.state = "REFUSED"
                reason = (f"reduction of {fmt_money(r.amount)} refused at the synchronisation"
                          f" instant: only {fmt_money(max(acct.limit_cents(), 0))} is not"
                          " committed to obligations or debtor orders; not retried"
                          " (R49.1.4.4)")
                self._notice(ts, "REQUEST_REFUSED", r.agent, "sync", reason, r.amount, r.id)
            out.append((r.id, r.agent, r.amount, r.state == "ACCEPTED", reason))
        self.close_decisions = tuple(out)

    def charged_refs(self) -> dict[int, RefData]:
        """The live orders charged under reference data other than those now in force (they
        rest from before a reload), by order id, with the reference data of their
        admission: their trades' obligations are charged to those owners with those taxes
        (R49.1.4.3 b), and the settlement must settle them the same way (R53.6)."""
        ref = self.ref
        out: dict[int, RefData] = {}
        for o in self.engine.orders.values():
            p: _Pass | None = o.ext  # type: ignore[assignment]
            if p is not None and p.ref is not ref:
                out[o.id] = p.ref
        return out

    def digest(self) -> bytes:
        h = hashlib.sha256()
        for code in sorted(self.accounts):
            a = self.accounts[code]
            h.update(repr((code, a.gmic, a.obligations,
                           sorted(a.rounds(self.engine.round).items()), a.debtor,
                           a.reduction, a.reductions, a.increases)).encode())
            if a.bids:  # (only then: the hash of a journal with no bid held is as before)
                h.update(repr(("bids", a.bids)).encode())
        if self.bid_holds:
            h.update(repr(sorted((b, v, tuple((a.agent, m) for a, m in held))
                                 for b, (held, v) in self.bid_holds.items())).encode())
        for key in sorted(self.hours):
            hr = self.hours[key]
            h.update(repr((key, hr.prog, hr.adj, hr.sold, hr.bought, hr.rs, hr.rb)).encode())
            for q in hr.quarters or ():
                h.update(repr((q.prog_set, q.adj, q.sold, q.bought, q.rs, q.rb, q.unavail,
                               q.lmin, q.lmax)).encode())
        h.update(repr((sorted(self.suspended), self.next_request,
                       [(r.id, r.agent, r.increase, r.amount, r.state, r.with_sync)
                        for r in self.requests.values()],
                       sorted(self.breach_hibernate.items()),
                       sorted((u, t.starts, t.counted(), t.state)
                              for u, t in self.throttles.items()),
                       [(p[0], p[1], repr(p[2])) for p in self.pending])).encode())
        return h.digest()

    # ------------------------------------------------------------------ queries

    def charged_agents(self, order_id: int) -> tuple[str, ...] | None:
        """The agents a live order is charged to: the owners of its unit under the
        reference data it was admitted with (R49.1.4.3 b), or None if it is not live or
        not charged."""
        o = self.engine.orders.get(order_id)
        p: _Pass | None = None if o is None else o.ext  # type: ignore[assignment]
        return None if p is None else tuple(acct.agent for acct, _m, _ in p.owners)

    def account(self, agent: str) -> dict[str, Any]:
        """An agent's guarantee account with the breakdown of its operative limit."""
        a = self.accounts[agent]
        d: dict[str, Any] = {"agent": agent, **a.breakdown()}
        d["obligations_by_round"] = {r: to_cents_up(v) for r, v in
                                     sorted(a.rounds(self.engine.round).items())}
        d["pending_requests"] = [
            {"id": r.id, "increase": r.increase, "amount": r.amount}
            for r in self.requests.values() if r.agent == agent and r.state == "PENDING"]
        d["suspended"] = agent in self.suspended
        return d

    def base_program(self, unit: str, contract: str) -> tuple[int, ...]:
        """The unit's base program (R50: PHF and auction results, without continuous trades)
        in each quarter-hour of ``contract``, in tenths of MW."""
        un = self.ref.units.get(unit) or self.retired[unit]
        h, qi, _k = self._locate(un, contract)
        return tuple(p[0] for p in h.points(qi)) * (4 if h.quarters is None and qi is None
                                                    else 1)

    def recompute(self, agent: str) -> dict[str, int]:
        """The debtor value and obligations of an agent recomputed from scratch from the
        engine's live orders and this guard's per-round obligations (for tests and audits:
        must equal the running totals)."""
        debtor = 0
        for o in self.engine.orders.values():
            if o.ext is None or o.status.value != "ACTIVE" or not o.ext_v:
                continue
            # charged to the owners of its pass (the reference data it was admitted under)
            p: _Pass = o.ext  # type: ignore[assignment]
            for acct, mul, _ in p.owners:
                if acct.agent == agent:
                    debtor += abs(o.price) * o.remaining * mul
        for held, v in self.bid_holds.values():  # auction bids held (R39.4.3.4)
            for acct, mul in held:
                if acct.agent == agent:
                    debtor += v * mul
        return {"debtor_orders": to_cents_up(debtor),
                "obligations": to_cents_up(sum(
                    self.accounts[agent].rounds(self.engine.round).values()))}

    # ------------------------------------------------------------------ command handlers

    def _on_load(self, cmd: LoadReferenceData, ts: int) -> None:
        if cmd.by not in ("operator", "system") and not self._has_role(cmd.by,
                                                                       "market_operator"):
            self._deny(ts, cmd.by, None, Code.NOT_PERMITTED,
                       "only the market operator loads reference data")
            return
        try:
            ref = load(json.loads(cmd.document_json))
        except (RefDataError, ValueError) as exc:
            self._deny(ts, cmd.by, None, Code.REFERENCE_DATA_INVALID, str(exc))
            return
        prev = self.ref
        self.ref = ref
        self.loaded_json = cmd.document_json
        for code, un in prev.units.items():
            if code not in ref.units:
                self.retired[code] = un
        for code in ref.units:
            self.retired.pop(code, None)
        newly: list[str] = []
        for a in ref.agents.values():
            acct = self.accounts.get(a.code)
            if acct is None:
                self.accounts[a.code] = Account(a.code, a.guarantees)
            # R46.2.6.2: a suspension the document brings — the agent is new, or was not
            # suspended in the document this one replaces.  A document that still says
            # «suspended», as the one before it did, brings none: an officer who has
            # reinstated the agent since (a later, journaled decision) is not overruled by
            # an unchanged line of master data, and its orders are not cancelled again
            before = prev.agents.get(a.code)
            if (a.suspended and (before is None or not before.suspended)
                    and a.code not in self.suspended):
                self.suspended.add(a.code)
                newly.append(a.code)
        self._owners_cache.clear()
        self._static.clear()
        self.throttles.clear()
        self._refresh_bounds()
        self._notice(ts, "REFERENCE_DATA_LOADED", None, cmd.by,
                     f"{len(ref.agents)} agents, {len(ref.users)} users, {len(ref.units)} units")
        # R46.2.6.2: a suspension is a suspension however it arrives: the orders of an
        # agent the document suspends are cancelled as an officer's suspension cancels them
        for code in sorted(newly):
            reason = "suspended by the reference data"
            self._notice(ts, "AGENT_SUSPENDED", code, cmd.by, reason)
            self._cancel_liable(code, reason, ts)

    def _refresh_bounds(self) -> None:
        """R46.2.4, R46.2.5: an order is checked against «la energía máxima de la unidad en
        la base de datos del operador de mercado» (and its minimum) as they are now.  Each
        unit-hour and quarter keeps a copy of them (made when the period is first touched),
        so a reload sets every copy of a unit it still lists to the new values, at once,
        and recomputes the quarters' bounds (unavailabilities and limitations stay as
        they were).  Orders already resting are not re-checked (the rules check an order
        when it is entered, modified or reactivated)."""
        units = self.ref.units
        for (code, _start), h in self.hours.items():
            un = units.get(code)
            if un is None:
                continue
            mx, mn = un.max_energy, un.min_energy
            h.max = mx
            h.min = mn
            for q in h.quarters or ():
                if q.max != mx or q.min != mn:
                    q.max = mx
                    q.min = mn
                    q.rebound()

    def _officer(self, ts: int, by: str, req_id: str | None, agent: str | None) -> bool:
        if not self._has_role(by, "risk_officer", "market_operator"):
            self._deny(ts, by, req_id, Code.NOT_PERMITTED,
                       f"user {by} is not a risk officer")
            return False
        if agent is not None and agent not in self.accounts:
            self._deny(ts, by, req_id, Code.AGENT_UNKNOWN, f"agent {agent} is not registered")
            return False
        return True

    def _on_set_guarantees(self, cmd: SetGuarantees, ts: int) -> None:
        if not self._officer(ts, cmd.by, cmd.req_id, cmd.agent):
            return
        if cmd.amount < 0:
            self._deny(ts, cmd.by, cmd.req_id, Code.INVALID_AMOUNT, "guarantees cannot be negative")
            return
        self.accounts[cmd.agent].gmic = cmd.amount * SCALE
        self._notice(ts, "GUARANTEES_SET", cmd.agent, cmd.by,
                     f"reserved guarantees set to {fmt_money(cmd.amount)} (R49.1.4.1)",
                     cmd.amount)

    def _on_request(self, cmd: RequestGuaranteeChange, ts: int) -> None:
        u = self.ref.users.get(cmd.by)
        if u is None or (u.agent != cmd.agent and not self._has_role(cmd.by, "risk_officer")):
            self._deny(ts, cmd.by, cmd.req_id, Code.NOT_PERMITTED,
                       f"user {cmd.by} cannot ask for agent {cmd.agent}")
            return
        if cmd.agent not in self.accounts:
            self._deny(ts, cmd.by, cmd.req_id, Code.AGENT_UNKNOWN,
                       f"agent {cmd.agent} is not registered")
            return
        if cmd.amount <= 0:
            self._deny(ts, cmd.by, cmd.req_id, Code.INVALID_AMOUNT, "the amount must be positive")
            return
        rid = self.next_request
        self.next_request += 1
        self.requests[rid] = GuaranteeRequest(rid, cmd.agent, cmd.increase, cmd.amount,
                                              "PENDING")
        self._notice(ts, "REQUEST_PENDING", cmd.agent, cmd.by,
                     f"{'increase' if cmd.increase else 'reduction'} of"
                     f" {fmt_money(cmd.amount)} requested (R49.1.4.4)", cmd.amount, rid)

    def _on_decide(self, cmd: DecideGuaranteeRequest, ts: int) -> None:
        if not self._has_role(cmd.by, "risk_officer", "market_operator") and cmd.by != "sync":
            self._deny(ts, cmd.by, cmd.req_id, Code.NOT_PERMITTED,
                       f"user {cmd.by} is not a risk officer")
            return
        r = self.requests.get(cmd.request_id)
        if r is None or r.state != "PENDING":
            self._deny(ts, cmd.by, cmd.req_id, Code.REQUEST_UNKNOWN,
                       f"no pending guarantee request {cmd.request_id}")
            return
        if r.with_sync and cmd.by != "sync":
            self._deny(ts, cmd.by, cmd.req_id, Code.REQUEST_WITH_SYNC,
                       f"guarantee request {r.id} was pending at a round close: the"
                       " synchronisation of that round decides it (R49.1.4.4)")
            return
        acct = self.accounts[r.agent]
        if cmd.accept and not r.increase and r.amount * SCALE > acct.limit():
            # R49.1.4.4: a reduction «será validada por la Plataforma de Negociación ... en
            # el siguiente instante de sincronización» and accepted only if the amount is
            # not committed to payment obligations; otherwise «se informará al agente de que
            # su solicitud ha sido rechazada, no considerándose para otras
            # sincronizaciones»: the whole request is refused, never a part of it.  This
            # holds for the sync's acceptance too: the settlement side decided with the
            # operative limit at the round close, and the agent may have traded or placed
            # debtor orders since (R49.1.4.3 b, c), so the platform checks the limit as it
            # stands now, when the decision is applied; the limit never goes below zero
            # through a reduction.  (The settlement side, which released the amount, takes
            # it back at the next synchronisation: its reserved amount follows the
            # platform's, docs/settlement.md step 0.)
            r.state = "REFUSED"
            when = (" at the synchronisation instant" if cmd.by == "sync" else "")
            why = (f"only {fmt_money(max(acct.limit_cents(), 0))} is not committed to"
                   " obligations or debtor orders; not retried (R49.1.4.4)")
            self._notice(ts, "REQUEST_REFUSED", r.agent, cmd.by,
                         f"reduction of {fmt_money(r.amount)} refused{when}: {why}",
                         r.amount, r.id)
            if cmd.by != "sync":  # the officer asked to accept it: told it was refused
                self._deny(ts, cmd.by, cmd.req_id, Code.REDUCTION_COMMITTED,
                           f"guarantee request {r.id} cannot be accepted and is refused:"
                           f" the reduction of {fmt_money(r.amount)} is committed, {why}")
            return
        r.state = "ACCEPTED" if cmd.accept else "REFUSED"
        if cmd.accept:
            if r.increase:
                acct.increases += r.amount * SCALE
            else:
                acct.reductions += r.amount * SCALE
        self._notice(ts, "REQUEST_ACCEPTED" if cmd.accept else "REQUEST_REFUSED", r.agent,
                     cmd.by, cmd.reason or ("accepted" if cmd.accept else "refused"),
                     r.amount, r.id)

    def _on_sync_reduction(self, cmd: SetSyncReduction, ts: int) -> None:
        if cmd.by != "sync" and not self._has_role(cmd.by, "market_operator"):
            self._deny(ts, cmd.by, None, Code.NOT_PERMITTED, "only the settlement side")
            return
        if cmd.agent not in self.accounts or cmd.amount < 0:
            self._deny(ts, cmd.by, None, Code.AGENT_UNKNOWN,
                       f"agent {cmd.agent} unknown or negative amount")
            return
        self.accounts[cmd.agent].reduction = cmd.amount * SCALE
        self._notice(ts, "SYNC_REDUCTION", cmd.agent, cmd.by,
                     f"reduction of {fmt_money(cmd.amount)} for the next round (R49.1.4.2)",
                     cmd.amount)

    def _on_release(self, cmd: ReleaseObligations, ts: int) -> None:
        if cmd.by != "sync" and not self._has_role(cmd.by, "market_operator"):
            self._deny(ts, cmd.by, None, Code.NOT_PERMITTED, "only the settlement side")
            return
        for acct in self.accounts.values():
            acct.fold(self.engine.round)
            done = [r for r in acct.by_round if r <= cmd.through_round]
            if not done:
                continue
            amount = sum(acct.by_round.pop(r) for r in done)
            acct.folded -= amount
            acct.obligations -= amount
            acct.lim += amount
            self._notice(ts, "OBLIGATIONS_RELEASED", acct.agent, cmd.by,
                         f"obligations of rounds up to {cmd.through_round} synchronised"
                         " (R49.1.4.2)", to_cents_up(amount))

    def _on_suspend(self, cmd: SuspendAgent, ts: int) -> None:
        if not self._officer(ts, cmd.by, cmd.req_id, cmd.agent):
            return
        self.suspended.add(cmd.agent)
        self._notice(ts, "AGENT_SUSPENDED", cmd.agent, cmd.by, cmd.reason)
        self._cancel_liable(cmd.agent, cmd.reason, ts)

    def _cancel_liable(self, agent: str, reason: str, ts: int) -> None:
        """R46.2.6.2: «en caso de baja, exclusión o suspensión temporal de un agente de
        mercado, las ofertas existentes en el Libro de Ofertas correspondientes a dicho
        agente de mercado, serán canceladas por el operador del mercado».  The orders that
        correspond to the agent are those it placed and those it is liable for: the orders
        a representative placed on a unit the agent owns, wholly or in part, whose value is
        held on the agent's guarantee account and whose trades would be its obligations
        (R49.1.4.1, R46.2.2: every owner must cover its share).  New orders on such a unit
        are refused while the owner is suspended (:meth:`_refusal`), so its resting ones
        are cancelled too, active or hibernated; those of the representative on other
        units stay."""
        self.engine.dispatch(CancelAgentOrders(agent, f"agent suspended: {reason}"), ts)
        owned = {u.code for u in self.ref.units.values()
                 if any(a == agent for a, _ in u.owners)}
        sel = []
        for o in self.engine.orders.values():
            p: _Pass | None = o.ext  # type: ignore[assignment]
            if o.unit in owned or (p is not None and agent in p.owner_codes):
                sel.append(o)
        if sel:
            self.engine.cancel_orders(
                sel, ts, f"agent {agent}, an owner of the unit, suspended: {reason}")

    def _on_reinstate(self, cmd: ReinstateAgent, ts: int) -> None:
        if not self._officer(ts, cmd.by, cmd.req_id, cmd.agent):
            return
        self.suspended.discard(cmd.agent)
        self._notice(ts, "AGENT_REINSTATED", cmd.agent, cmd.by, "reinstated")

    def _on_rate_limits(self, cmd: SetRateLimits, ts: int) -> None:
        if not self._officer(ts, cmd.by, cmd.req_id, None):
            return
        if not cmd.rules or any(w < 1 or m < 1 for w, m in cmd.rules) or not (
                0 < cmd.warning_ratio <= 1):
            self._deny(ts, cmd.by, cmd.req_id, Code.INVALID_RATE_LIMITS,
                       "rules need positive windows and maxima, and 0 < warning_ratio <= 1")
            return
        lim = RateLimit(tuple(cmd.rules), cmd.warning_ratio, cmd.hibernate_on_breach)
        if cmd.user is None:
            self.ref.rate_limit = lim
            self.throttles.clear()
        else:
            if cmd.user not in self.ref.users:
                self._deny(ts, cmd.by, cmd.req_id, Code.USER_UNKNOWN,
                           f"user {cmd.user} is not registered")
                return
            self.ref.user_rate_limits[cmd.user] = lim
            self.throttles.pop(cmd.user, None)
        self._notice(ts, "RATE_LIMITS_SET", None, cmd.by,
                     f"{cmd.user or 'default'}: " + ", ".join(
                         f"{m} per {w} ms" for w, m in cmd.rules))

    def _on_breach_action(self, cmd: SetBreachAction, ts: int) -> None:
        if cmd.by not in self.ref.users:
            self._deny(ts, cmd.by, cmd.req_id, Code.USER_UNKNOWN, f"user {cmd.by} unknown")
            return
        self.breach_hibernate[cmd.by] = cmd.hibernate_on_breach

    def _so_check(self, ts: int, cmd: Any) -> bool:
        if cmd.by not in ("sync", "auction", "system") and not self._has_role(
                cmd.by, "system_operator", "market_operator"):
            self._deny(ts, cmd.by, None, Code.NOT_PERMITTED,
                       f"user {cmd.by} is not a system operator")
            return False
        if cmd.unit not in self.ref.units:
            self._deny(ts, cmd.by, None, Code.UNIT_UNKNOWN, f"unit {cmd.unit} does not exist")
            return False
        try:
            self._period(cmd.period)
        except InvalidIdentifier as exc:
            self._deny(ts, cmd.by, None, Code.PERIOD_INVALID, str(exc))
            return False
        return True

    def _on_program(self, cmd: SetProgram, ts: int) -> None:
        """R50: programs apply at once.  The PHF the system operators send is made «del
        resultado de sesiones de subastas intradiarias ... realizadas hasta el momento», so
        it *includes* the auction results applied to the same period before it
        (:meth:`_on_adjust_program`): those are absorbed, not added on top.  Granularity
        decides what a program replaces:

        - an hourly program is the hour's: it absorbs the hourly auction results; a quarter
          with a program of its own keeps its figure (its program already counted them),
          and 15-minute auction results stay until that quarter's own program comes;
        - a 15-minute program is the quarter's whole figure: it absorbs the quarter's
          15-minute results and the hour's results in that quarter.

        An auction result applied after the program adds to it, as before."""
        if not self._so_check(ts, cmd):
            return
        unit = self.ref.units[cmd.unit]
        h, qi, k = self._locate(unit, cmd.period)
        if qi is None:
            absorbed = h.adj
            if absorbed:
                for q in h.quarters or ():
                    if q.prog_set is not None:
                        q.prog_set += absorbed  # its point stays prog_set + the hour's
                        q.hseen -= absorbed
                h.adj = 0
            h.prog = cmd.energy
        else:
            q = h.quarter(qi)
            absorbed = (h.adj if q.prog_set is None else h.adj - q.hseen) + q.adj
            # the quarter's point is prog_set + the hour's results + its own: the energy
            q.prog_set = cmd.energy * k - h.adj
            q.hseen = h.adj
            q.adj = 0
        text = f"program of {cmd.unit} in {cmd.period}: {cmd.energy / 10:.1f} MWh"
        if absorbed:
            text += (f", including the auction results applied before it"
                     f" ({absorbed / (10 * k):+.1f} MWh, R50)")
        self._notice(ts, "PROGRAM_SET", None, cmd.by, text)

    def _on_adjust_program(self, cmd: AdjustProgram, ts: int) -> None:
        """R50: an auction's result added to the base program (PHF) at once.  The result of
        a unit a reload removed after the auction took its bids still counts: the session
        cleared with them, so the unit's program moves as it would have (should a later
        reload list the unit again, its checks start from that program)."""
        unit = self.retired.get(cmd.unit) if cmd.by == "auction" else None
        if unit is None:
            if not self._so_check(ts, cmd):
                return
            unit = self.ref.units[cmd.unit]
        else:
            try:
                self._period(cmd.period)
            except InvalidIdentifier as exc:
                self._deny(ts, cmd.by, None, Code.PERIOD_INVALID, str(exc))
                return
        h, qi, k = self._locate(unit, cmd.period)
        if qi is None:
            h.adj += cmd.delta
        else:
            h.quarter(qi).adj += cmd.delta * k
        self._notice(ts, "PROGRAM_SET", None, cmd.by,
                     f"program of {cmd.unit} in {cmd.period} changed by"
                     f" {cmd.delta / 10:.1f} MWh (auction result, R50)")

    def _on_unavailability(self, cmd: SetUnavailability, ts: int) -> None:
        if self._so_check(ts, cmd):
            self._pend(cmd, ts)

    def _on_limitation(self, cmd: SetLimitation, ts: int) -> None:
        if self._so_check(ts, cmd):
            self._pend(cmd, ts)

    def _pend(self, cmd: Any, ts: int) -> None:
        """A1§6: effective for a round only if received five minutes before it starts."""
        self._pending_seq += 1
        self.pending.append((ts, self._pending_seq, cmd))
        self._notice(ts, "UNAVAILABILITY_SET" if isinstance(cmd, SetUnavailability)
                     else "LIMITATION_SET", None, cmd.by,
                     f"{cmd.unit} {cmd.period}: effective from the first round starting"
                     " five minutes from now or later (A1§6)")

    def _apply_so(self, cmd: Any) -> None:
        unit = self.ref.units[cmd.unit]
        h, qi, k = self._locate(unit, cmd.period)
        for i in range(4) if qi is None else (qi,):
            s = h.quarter(i)
            if isinstance(cmd, SetUnavailability):
                s.unavail = cmd.unavailable * k
            else:
                s.lmin = None if cmd.min_energy is None else cmd.min_energy * k
                s.lmax = None if cmd.max_energy is None else cmd.max_energy * k
            s.rebound()
