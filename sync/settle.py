"""The settlement of one synchronisation, computed purely (R49.1.1, R49.1.2, R49.1.4.2,
R49.1.4.4, R50).

Amounts are integer milli-euros: energy (tenths of MWh) × price (cents of €/MWh) is exact
at that resolution, so no base amount is ever rounded.  Taxes are rounded half up to the
milli-euro; a shared unit's base amount is split by the owners' shares with the largest
remainder method, so the parts add up to the whole exactly.

Per trade and side (R49.1.1, R49.1.2): a sell at a positive price and a buy at a negative
price are a collection right (DCIC); a buy at a positive price and a sell at a negative price
are a payment obligation (OPIC); the amount is energy × |price|.  Each owner's entry carries
its own taxes (its profile's electricity tax IEE and VAT: ``iee = base × IEE``,
``vat = (base + iee) × VAT``), shown separately.

The settlement side's guarantee balance of an agent (R55.7.2): deposited guarantees − the
amount reserved for continuous trading + every synchronised right − every synchronised
obligation, taxes included.  After adding a synchronisation's entries:

1. the reductions the platform decided at the synchronisation instant are recorded as it
   decided them (R49.1.4.4: the platform validates a reduction; an accepted one frees its
   amount here), and pending increases are settled in order (R49.1.4.4): an increase is
   accepted if the balance has that surplus (it moves to the reserved amount).  A refused
   reduction frees nothing, so it never funds an increase;
2. if the balance is negative, the reserved amount must be reduced by that much for the next
   round (R49.1.4.2 step 2): the reduction communicated to the platform.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from operator import itemgetter
from typing import NamedTuple, TypeAlias

from engine.contracts import ContractSpec
from engine.events import Trade
from risk.refdata import RefData


def rate(percent: str) -> Fraction:
    return Fraction(percent) / 100


def round_half_up(x: Fraction) -> int:
    """To the nearest integer, halves away from zero."""
    n, d = x.numerator, x.denominator
    q, r = divmod(abs(n), d)
    if 2 * r >= d:
        q += 1
    return q if n >= 0 else -q


def split(total: int, shares: list[int]) -> list[int]:
    """``total`` split by basis points, summing exactly to ``total`` (largest remainder;
    ties to the earlier owner)."""
    raw = [divmod(total * bp, 10_000) for bp in shares]
    parts = [q for q, _ in raw]
    left = total - sum(parts)
    if left:
        # stable: among equal remainders the earlier owner comes first
        order = sorted(range(len(shares)), key=[-r for _, r in raw].__getitem__)
        for i in order[:left]:
            parts[i] += 1
    return parts


class Entry(NamedTuple):
    """One settlement entry: one owner's part of one side of one trade."""

    trade_id: int
    side: str  # BUY / SELL
    agent: str  # the owner charged or credited
    unit: str
    contract: str
    day: str  # delivery day, YYYY-MM-DD
    round: int
    kind: str  # DCIC (collection right) / OPIC (payment obligation)
    energy: int  # tenths of MWh (the whole trade)
    price: int  # cents of €/MWh (signed, as traded)
    share_bp: int
    base: int  # milli-euros
    iee: int
    vat: int

    @property
    def total(self) -> int:
        return self.base + self.iee + self.vat

    @property
    def signed(self) -> int:
        """What it does to the guarantee balance: + right, − obligation."""
        return self.total if self.kind == "DCIC" else -self.total


@dataclass(slots=True)
class Balance:
    """The settlement side's view of an agent (milli-euros)."""

    deposited: int
    reserved: int
    balance: int  # deposited − reserved + synchronised rights − obligations


@dataclass(frozen=True, slots=True)
class PendingRequest:
    id: int
    agent: str
    increase: bool
    amount: int  # cents of €


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: int
    agent: str
    accept: bool
    reason: str
    # decided by the platform (a reduction, R49.1.4.4): recorded here, not fed back
    platform: bool = False
    amount: int = 0  # cents (the platform's reductions: what an acceptance frees)


@dataclass(slots=True)
class SyncResult:
    sync_id: int  # = the last round synchronised
    from_round: int  # first round included
    trades: int
    entries: list[Entry] = field(default_factory=list)
    balances: dict[str, Balance] = field(default_factory=dict)  # after
    history: list[tuple[str, int, str, int]] = field(default_factory=list)
    # (agent, delta milli-euros, reason, balance after)
    reductions: dict[str, int] = field(default_factory=dict)  # agent -> cents
    decisions: list[Decision] = field(default_factory=list)
    programs: dict[tuple[str, str], int] = field(default_factory=dict)  # (unit, period) -> Δ
    auctions: list[str] = field(default_factory=list)  # sessions entered in the balance


def _rate_int(percent: str) -> tuple[int, int]:
    """'5.11269632' -> (511269632, 10**10): the rate as an exact integer fraction."""
    whole, _, dec = percent.partition(".")
    return int(whole + dec), 100 * 10 ** len(dec)


def _half_up(x: int, n: int, d: int) -> int:
    """round(x × n / d), halves up, for x ≥ 0 (integers only)."""
    return (2 * x * n + d) // (2 * d)


# One owner of a unit with its taxes ready for the hot loop: (agent, basis points,
# 2·n_iee, d_iee, 2·d_iee, 2·n_vat, d_vat, 2·d_vat), so that ``_half_up(x, n, d)`` is
# ``(x * 2n + d) // 2d`` with no multiplication of the constants per entry.
_Owner = tuple[str, int, int, int, int, int, int, int]
# A unit as seen from one side's agent: (sells, owners, their basis points, whether its
# split is the two-owner shortcut of :meth:`_Ctx.unit`).
_Plan = tuple[bool, tuple[_Owner, ...], list[int], bool]


class _Ctx:
    """Per-settlement caches: each agent's taxes as integers, each contract's delivery day,
    each unit's owners with their taxes (the hot loop does integer arithmetic only)."""

    def __init__(self, ref: RefData, delta: dict[str, int] | None = None) -> None:
        self.ref = ref
        self.taxes: dict[str, tuple[int, int, int, int]] = {}
        for code, a in ref.agents.items():
            self.taxes[code] = (*_rate_int(a.tax_iee), *_rate_int(a.tax_vat))
        self.days: dict[str, str] = {}
        self.units: dict[tuple[str, str], _Plan] = {}
        # each agent's balance change (shared by the contexts of one settlement)
        self.delta: dict[str, int] = {} if delta is None else delta

    def day(self, contract: str) -> str:
        d = self.days.get(contract)
        if d is None:
            d = self.days[contract] = ContractSpec.parse(contract).day.isoformat()
        return d

    def unit(self, code: str, fallback_agent: str, side: str) -> _Plan:
        key = (code, fallback_agent)
        v = self.units.get(key)
        if v is None:
            u = self.ref.units.get(code)
            owners = ((fallback_agent, 10_000),) if u is None else u.owners
            sells = (side == "SELL") if u is None else u.sells
            taxed = []
            for a, bp in owners:
                n1, d1, n2, d2 = self.taxes.get(a, (0, 1, 0, 1))
                taxed.append((a, bp, 2 * n1, d1, 2 * d1, 2 * n2, d2, 2 * d2))
            bps = [bp for _, bp in owners]
            # split() with two owners whose shares make the whole: the remainders add up to
            # 0 or 10,000, so one milli-euro is left exactly when owner 0's remainder is not
            # 0, and it goes to owner 0 exactly when that remainder is at least half (ties
            # to the earlier owner): owner 0's part is its share rounded half up, owner 1
            # gets the rest
            two = len(bps) == 2 and sum(bps) == 10_000 and min(bps) >= 0
            v = self.units[key] = (sells, tuple(taxed), bps, two)
        return v

    def entries(self, out: list[Entry], trade_id: int, side: str, code: str, fallback: str,
                contract: str, rnd: int, price: int, qty: int) -> bool:
        """Append one side's entries and add their effect on the owners' balances to
        ``self.delta``; return whether the unit is a selling one (for its program)."""
        plan = self.units.get((code, fallback))
        if plan is None:
            plan = self.unit(code, fallback, side)
        sells, owners, bps, two = plan
        obligation = (price > 0) if side == "BUY" else (price < 0)
        kind = "OPIC" if obligation else "DCIC"
        total_base = qty * (-price if price < 0 else price)
        day = self.days.get(contract) or self.day(contract)
        delta = self.delta
        if len(owners) == 1:
            agent, bp, n1, d1, e1, n2, d2, e2 = owners[0]
            iee = (total_base * n1 + d1) // e1 if n1 else 0
            vat = ((total_base + iee) * n2 + d2) // e2 if n2 else 0
            out.append(tuple.__new__(Entry, (trade_id, side, agent, code, contract, day, rnd,
                                             kind, qty, price, bp, total_base, iee, vat)))
            tot = total_base + iee + vat
            delta[agent] = delta.get(agent, 0) + (-tot if obligation else tot)
            return sells
        if two:
            p0 = (total_base * bps[0] + 5_000) // 10_000
            parts: Iterable[int] = (p0, total_base - p0)
        else:
            parts = split(total_base, bps)
        for (agent, bp, n1, d1, e1, n2, d2, e2), base in zip(owners, parts, strict=True):
            iee = (base * n1 + d1) // e1 if n1 else 0
            vat = ((base + iee) * n2 + d2) // e2 if n2 else 0
            out.append(tuple.__new__(Entry, (trade_id, side, agent, code, contract, day, rnd,
                                             kind, qty, price, bp, base, iee, vat)))
            tot = base + iee + vat
            delta[agent] = delta.get(agent, 0) + (-tot if obligation else tot)
        return sells


def auction_entries(allocations: Iterable[tuple[str, str, str, str, int, int]],
                    ref: RefData) -> list[Entry]:
    """R44: an auction's allocations settled at the marginal price, as R49.1.1–2 do for
    trades: (contract, unit, agent, side, price, tenths) → entries per owner (trade id 0)."""
    ctx = _Ctx(ref)
    # one entry per unit, period and side: several bids of a unit add up
    total: dict[tuple[str, str, str, str, int], int] = {}
    for contract, unit, agent, side, price, qty in allocations:
        key = (contract, unit, agent, side, price)
        total[key] = total.get(key, 0) + qty
    out: list[Entry] = []
    for (contract, unit, agent, side, price), qty in total.items():
        ctx.entries(out, 0, side, unit, agent, contract, 0, price, qty)
    return out


def entries_of(trade: Trade, ref: RefData) -> list[Entry]:
    """R49.1.1, R49.1.2: the entries of one trade, per side and owner."""
    ctx = _Ctx(ref)
    out: list[Entry] = []
    for side, unit, agent in (("BUY", trade.buy_unit, trade.buy_agent),
                              ("SELL", trade.sell_unit, trade.sell_agent)):
        ctx.entries(out, trade.trade_id, side, unit, agent, trade.contract, trade.round,
                    trade.price, trade.qty)
    return out


# A trade as settlement reads it: the fields of :class:`~engine.events.Trade`, in its order.
# A ``Trade`` is one; so is :func:`trade_row`'s plain tuple, which the sync job keeps.
TradeRow: TypeAlias = tuple[int, int, str, int, int, int, str, int, str, str, str, int, str,
                            str, str]
_TRADE_ID = itemgetter(1)


def trade_row(t: Trade) -> TradeRow:
    """``t`` as a plain tuple of ints and strings (the aggressor's side as its text).

    The sync job keeps every trade of the rounds not yet settled: a busy hour's worth.
    A ``Trade`` is a tuple subclass, which the cyclic garbage collector never untracks, so
    kept as they are they made most of the server's tracked objects and every full
    collection walked them all (84 % of the objects after 300,000 operations of the engine
    benchmark's flow, a full collection 134–193 ms: perf/bench_gc.py).  A plain tuple
    holding only ints and strings is untracked by the first collection that sees it."""
    return (t[0], t[1], t[2], t[3], t[4], t[5], str(t[6]), t[7], t[8], t[9], t[10], t[11],
            t[12], t[13], t[14])


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a block that only builds acyclic objects.

    Settling a round builds one entry per trade side and owner: tuples of integers and
    strings, which reference counting frees and no collection can.  But entries are tuple
    subclasses, which the collector never untracks, so while hundreds of thousands of them
    pile up every full collection rescans them all, for nothing (about a third of the
    settlement's time at 100,000 trades).  Collection resumes afterwards, if it was on."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def settle(sync_id: int, from_round: int, trades: Iterable[TradeRow], ref: RefData,
           balances: Mapping[str, Balance], requests: Iterable[PendingRequest],
           uncommitted: Mapping[str, int],
           platform_reserved: Mapping[str, int] | None = None,
           auctions: Iterable[tuple[str, str, int]] = (),
           trade_refs: Sequence[tuple[int, RefData]] = (),
           side_refs: Mapping[tuple[int, str], RefData] | None = None,
           platform_decisions: Sequence[Decision] = ()) -> SyncResult:
    """One synchronisation: ``trades`` of rounds ``from_round..sync_id`` (``Trade`` events
    or :func:`trade_row` rows); ``ref`` the reference data at the last round's close;
    ``trade_refs`` the reference data each trade was made under (R53.6, R49.1.4.2 step 1:
    a trade is settled to the owners and with the taxes the platform charged it with), as
    (first trade id, reference data) in increasing trade id: a trade takes the last entry
    whose id is not above its own (``ref`` if none is); ``side_refs`` the exceptions, by
    (trade id, ``BUY``/``SELL``): a side whose resting order was admitted (and is charged,
    R49.1.4.3 b) under older reference data than those in force at the trade — it rested
    across a reload — is settled with those (R53.6); ``balances`` as they stand;
    ``requests`` the pending increases (R49.1.4.4: the settlement side decides them; a
    reduction is the platform's to decide, and passing one is an error);
    ``platform_decisions`` the reductions the platform decided at the synchronisation
    instant, recorded as decided; ``uncommitted`` is no longer used (the platform decides
    the reductions against its operative limit); ``platform_reserved`` what the platform holds
    as each agent's reserved guarantees (cents), which the balance's reserved amount is set
    to first (an officer's GMIC or decision moves the surplus, R49.1.4.1, R49.1.4.4);
    ``auctions`` the auction sessions cleared since the last synchronisation, as (session,
    agent, rights − obligations in milli-euros), which enter the balance (R55.7.2 b, c)."""
    with _collector_paused():
        return _settle(sync_id, from_round, trades, ref, balances, requests,
                       platform_reserved, auctions, trade_refs, side_refs or {},
                       platform_decisions)


def _settle(sync_id: int, from_round: int, trades: Iterable[TradeRow], ref: RefData,
            balances: Mapping[str, Balance], requests: Iterable[PendingRequest],
            platform_reserved: Mapping[str, int] | None,
            auctions: Iterable[tuple[str, str, int]],
            trade_refs: Sequence[tuple[int, RefData]],
            side_refs: Mapping[tuple[int, str], RefData],
            platform_decisions: Sequence[Decision]) -> SyncResult:
    pending = sorted(requests, key=lambda r: r.id)
    if any(not r.increase for r in pending):
        raise ValueError("a reduction is decided by the platform at the synchronisation"
                         " instant (R49.1.4.4): pass it in platform_decisions")
    tl = sorted(trades, key=_TRADE_ID)
    res = SyncResult(sync_id, from_round, len(tl))
    bal = {k: Balance(v.deposited, v.reserved, v.balance) for k, v in balances.items()}
    for code, a in ref.agents.items():
        if code not in bal:
            bal[code] = Balance(a.deposited * 10, a.guarantees * 10,
                                (a.deposited - a.guarantees) * 10)
    # R49.1.4.4: the platform's decisions on reductions, recorded as it made them; an
    # accepted one «libera las garantías retenidas» here: its amount returns to the surplus
    for pd in sorted(platform_decisions, key=lambda x: x.request_id):
        res.decisions.append(pd)
        if pd.accept:
            b = bal.setdefault(pd.agent, Balance(0, 0, 0))
            m = pd.amount * 10
            b.reserved -= m
            b.balance += m
            res.history.append((pd.agent, m, f"reduction {pd.request_id} accepted on the"
                                " platform", b.balance))
    # R49.1.4.1, R49.1.4.4: guarantees the platform reserved outside the sync's own
    # decisions (an officer's GMIC or decision) leave (or return to) the SIOM surplus
    for agent, cents in sorted((platform_reserved or {}).items()):
        b = bal.setdefault(agent, Balance(0, 0, 0))
        d = cents * 10 - b.reserved
        if d:
            b.reserved += d
            b.balance -= d
            res.history.append((agent, -d, "reserved amount set on the platform", b.balance))
    # R55.7.2 b), c): the rights and obligations of the auction sessions cleared since
    # the last synchronisation (their entries are stored at the clearing, R44)
    sessions: set[str] = set()
    for session, agent, amount in auctions:
        sessions.add(session)
        b = bal.setdefault(agent, Balance(0, 0, 0))
        b.balance += amount
        res.history.append((agent, amount, f"auction {session}", b.balance))
    res.auctions = sorted(sessions)
    ctx = _Ctx(ref)
    delta = ctx.delta
    out = res.entries
    programs = res.programs
    entries = ctx.entries
    # R53.6: each trade with the reference data it was made under (a change of owners or
    # taxes «no tendrá efecto» on trades already made); the trades are in trade id order
    contexts: dict[int, _Ctx] = {id(ref): ctx}
    changes = sorted(trade_refs, key=itemgetter(0))
    nxt = 0  # the next change not yet in force
    upto = changes[0][0] if changes else None  # its first trade id
    # (R53.6) the trades with a side whose resting order was charged under older data
    stale = {tid for tid, _side in side_refs}

    def ctx_of(r1: RefData) -> _Ctx:
        c1 = contexts.get(id(r1))
        if c1 is None:
            c1 = contexts[id(r1)] = _Ctx(r1, delta)
        return c1

    for (_ts, trade_id, contract, rnd, price, qty, _aggressor, _bo, _bu, buy_agent, buy_unit,
         _so, _su, sell_agent, sell_unit) in tl:
        if upto is not None and trade_id >= upto:
            while nxt < len(changes) and changes[nxt][0] <= trade_id:
                nxt += 1
            entries = ctx_of(changes[nxt - 1][1]).entries
            upto = changes[nxt][0] if nxt < len(changes) else None
        buy_entries = sell_entries = entries
        if stale and trade_id in stale:
            rb = side_refs.get((trade_id, "BUY"))
            if rb is not None:
                buy_entries = ctx_of(rb).entries
            rs = side_refs.get((trade_id, "SELL"))
            if rs is not None:
                sell_entries = ctx_of(rs).entries
        # R50: a selling unit's program grows with its sells, a buying unit's with its buys
        unit_code = buy_unit
        sells = buy_entries(out, trade_id, "BUY", unit_code, buy_agent, contract, rnd, price,
                            qty)
        key = (unit_code, contract)
        programs[key] = programs.get(key, 0) + (-qty if sells else qty)
        unit_code = sell_unit
        sells = sell_entries(out, trade_id, "SELL", unit_code, sell_agent, contract, rnd,
                             price, qty)
        key = (unit_code, contract)
        programs[key] = programs.get(key, 0) + (qty if sells else -qty)
    for agent in sorted(delta):
        b = bal.setdefault(agent, Balance(0, 0, 0))
        b.balance += delta[agent]
        res.history.append((agent, delta[agent],
                            f"sync {sync_id}: rounds {from_round}-{sync_id}", b.balance))
    # R49.1.4.4: increases, in order, from the surplus as it stands (after the entries, the
    # auctions and the reductions the platform accepted — only those)
    for r in pending:
        b = bal.setdefault(r.agent, Balance(0, 0, 0))
        m = r.amount * 10
        if b.balance >= m:
            b.balance -= m
            b.reserved += m
            res.decisions.append(Decision(r.id, r.agent, True,
                                          "increase accepted: surplus available"))
            res.history.append((r.agent, -m, f"increase {r.id} accepted", b.balance))
        else:
            res.decisions.append(Decision(
                r.id, r.agent, False,
                f"increase refused: surplus {b.balance / 1000:.2f} € below"
                f" {m / 1000:.2f} € (R49.1.4.4)"))
    for agent in sorted(bal):
        b = bal[agent]
        # R49.1.4.2 step 2: reduce the reserved amount so that the balance is not negative
        res.reductions[agent] = -(b.balance // 10) if b.balance < 0 else 0
    res.balances = bal
    return res
