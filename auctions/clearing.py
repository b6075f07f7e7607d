"""Clearing of an intraday auction period by the simple method (R40.2), pure and exact.

Each bid step is (id, side, price in cents, quantity in tenths of MWh, submission order).
For one period:

a), b) the aggregated sell curve (prices ascending) and buy curve (prices descending);
c) their crossing: the geometric intersection of the two step curves.  Candidate prices
   are every bid price and the open intervals between consecutive bid prices, with supply S
   (sells at or below) and demand D (buys at or above).  A bid price is admissible if S = D
   there, or if the side in excess has enough quantity *at that very price* to absorb the
   excess (it is then cut, f); an interval is admissible if S = D in it (no bid to cut).  The
   crossing is the admissible candidates of largest volume min(S, D).
f) *horizontal step*: if the crossing is a single price, bids on the side in excess at exactly
   that price share the remaining volume **in proportion** to their quantities, then the
   rounding rule: truncate each allocation to 0.1 MWh, compute the shortfall D in tenths, and
   give +0.1 MWh to D of those bids — first the largest truncated remainder, then the largest
   allocation, then the earliest submitted;
g) *vertical step*: if the crossing is a range of prices (the curves meet on a vertical
   segment), the price is indeterminate within it.  R40.2 g) defers to the daily market's
   criterion, which is not in the rules' text here; ronda takes the **midpoint of the range**
   (rounded down to the cent), the criterion of the European day-ahead algorithm.  At that
   price no bid is cut (the volume is the same on both sides).
d), e) sells at or below the price and buys at or above it are matched.

If the curves do not cross (no buy at or above any sell), nothing is matched and there is no
price.  The order of precedence of R41.2 (:func:`precedence`) is computed for the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Step(NamedTuple):
    id: int  # bid id
    n: int  # step index within the bid
    side: str  # BUY / SELL
    price: int  # cents of €/MWh
    qty: int  # tenths of MWh
    order: int  # submission order (earlier = smaller)
    unit: str = ""


@dataclass(slots=True)
class PeriodResult:
    price: int | None  # marginal price, cents of €/MWh (None: no crossing)
    volume: int  # tenths of MWh matched
    allocations: dict[tuple[int, int], int] = field(default_factory=dict)  # (id, n) -> tenths
    case: str = "none"  # none / exact / horizontal / vertical
    price_range: tuple[int, int] | None = None


def _prorata(steps: list[Step], total: int) -> dict[tuple[int, int], int]:
    """R40.2 f): ``total`` tenths shared in proportion to the steps' quantities, truncated
    to 0.1 MWh, the shortfall D given +0.1 MWh each by largest remainder, then largest
    allocation, then earliest submission."""
    q = sum(s.qty for s in steps)
    alloc: dict[tuple[int, int], int] = {}
    rems = []
    for s in steps:
        num = total * s.qty
        a, r = divmod(num, q)
        alloc[(s.id, s.n)] = a
        rems.append((r, a, s))
    short = total - sum(alloc.values())
    rems.sort(key=lambda t: (-t[0], -t[1], t[2].order, t[2].id, t[2].n))
    for _r, _a, s in rems[:short]:
        alloc[(s.id, s.n)] += 1
    return alloc


def clear(steps: list[Step]) -> PeriodResult:
    sells = sorted((s for s in steps if s.side == "SELL"), key=lambda s: s.price)
    buys = sorted((s for s in steps if s.side == "BUY"), key=lambda s: -s.price)
    if not sells or not buys or buys[0].price < sells[0].price:
        return PeriodResult(None, 0)
    prices = sorted({s.price for s in steps})
    # S(p) at each price point: sells at or below; D(p): buys at or above
    s_at: dict[int, int] = {}
    acc = 0
    i = 0
    for p in prices:
        while i < len(sells) and sells[i].price <= p:
            acc += sells[i].qty
            i += 1
        s_at[p] = acc
    d_at: dict[int, int] = {}
    acc = 0
    i = 0
    for p in reversed(prices):
        while i < len(buys) and buys[i].price >= p:
            acc += buys[i].qty
            i += 1
        d_at[p] = acc
    s_qty: dict[int, int] = {}
    d_qty: dict[int, int] = {}
    for st in sells:
        s_qty[st.price] = s_qty.get(st.price, 0) + st.qty
    for st in buys:
        d_qty[st.price] = d_qty.get(st.price, 0) + st.qty
    # admissible clearing prices: a bid price where the side in excess has enough at that
    # very price to absorb the excess (f), or an open interval between bid prices where
    # supply equals demand (g); (lo, hi, volume)
    cands: list[tuple[int, int, int]] = []
    for k, p in enumerate(prices):
        sp, dp = s_at[p], d_at[p]
        if (sp == dp or (sp > dp and s_qty.get(p, 0) >= sp - dp)
                or (dp > sp and d_qty.get(p, 0) >= dp - sp)):
            cands.append((p, p, min(sp, dp)))
        if k + 1 < len(prices):
            nxt = prices[k + 1]
            if s_at[p] == d_at[nxt]:
                cands.append((p, nxt, s_at[p]))
    best = max((v for _, _, v in cands), default=0)
    if best == 0:
        return PeriodResult(None, 0)
    chosen = [c for c in cands if c[2] == best]
    lo = min(c[0] for c in chosen)
    hi = max(c[1] for c in chosen)
    tight = 0 if lo != hi else abs(s_at[lo] - d_at[lo])
    res = PeriodResult(None, best)
    if lo == hi:
        price = lo
        res.case = "exact" if tight == 0 else "horizontal"
    else:
        price = (lo + hi) // 2  # g): midpoint of the indeterminacy range, down to the cent
        res.case = "vertical"
        res.price_range = (lo, hi)
    res.price = price
    acc_s = [s for s in sells if s.price <= price]
    acc_b = [b for b in buys if b.price >= price]
    supply = sum(s.qty for s in acc_s)
    demand = sum(b.qty for b in acc_b)
    for s in acc_s:
        res.allocations[(s.id, s.n)] = s.qty
    for b in acc_b:
        res.allocations[(b.id, b.n)] = b.qty
    if supply > demand:  # f) excess of sells at the marginal price: cut in proportion
        at = [s for s in acc_s if s.price == price]
        fixed = supply - sum(s.qty for s in at)
        res.allocations.update(_prorata(at, demand - fixed))
    elif demand > supply:
        at = [b for b in acc_b if b.price == price]
        fixed = demand - sum(b.qty for b in at)
        res.allocations.update(_prorata(at, supply - fixed))
    res.allocations = {k: v for k, v in res.allocations.items() if v > 0}
    res.volume = min(supply, demand)
    return res


def precedence(steps: list[Step]) -> list[Step]:
    """R41.2: the order of economic precedence of the steps of one side: by price (sells
    ascending, buys descending); at equal price by *decreasing* insertion time (as the
    rule says: «orden decreciente de fecha, hora, minuto y segundo de inserción»), then by
    larger energy, then by code in decreasing alphabetical and numerical order."""
    if not steps:
        return []
    sell = steps[0].side == "SELL"
    return sorted(steps, key=lambda s: (s.price if sell else -s.price, -s.order, -s.qty,
                                        _neg_code(s.unit), -s.id, -s.n))


def _neg_code(code: str) -> tuple[int, ...]:
    # decreasing order; the terminator puts "ABC" before its prefix "AB"
    return (*(-ord(c) for c in code), 1)
