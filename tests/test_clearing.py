"""Clearing of one intraday-auction period by the simple method (R40.2) and the order of
precedence of the results (R41.2): :mod:`auctions.clearing`.

Every example is worked out by hand in the comments.  Units as in the module: prices in
cents of €/MWh (4500 = 45.00 €/MWh), quantities in tenths of MWh (70 = 7.0 MWh).  S(p) is
the aggregated supply at p (sells priced at or below p), D(p) the aggregated demand (buys at
or above p).  The module's documented rule for the crossing: a bid price p is admissible if
S = D there, or if the side in excess has at least the excess *at exactly p* (it is cut,
R40.2 f); a price strictly between bid prices is admissible if S = D there; the crossing is
the admissible prices of largest volume min(S, D); one price -> that price (``exact`` or
``horizontal``), a range [lo, hi] -> the vertical-step criterion (R40.2 g): the midpoint
(lo + hi) // 2, i.e. rounded down to the cent.

The last part checks :func:`clear` against a brute-force reference written from that rule
(it scans every cent) on random small bid sets, and invariants on larger ones.
"""

from __future__ import annotations

import random
from fractions import Fraction
from math import floor

from hypothesis import event, given, settings
from hypothesis import strategies as st

from auctions.clearing import PeriodResult, Step, clear, precedence

BUY, SELL = "BUY", "SELL"


def step(bid: int, side: str, price: int, qty: int, order: int | None = None, n: int = 0,
         unit: str = "") -> Step:
    """A one-step bid (``n`` = 0) unless told; submission order = the bid id unless told."""
    return Step(bid, n, side, price, qty, bid if order is None else order, unit)


def alloc(res: PeriodResult) -> dict[int, int]:
    """Allocations per bid id (tenths)."""
    out: dict[int, int] = {}
    for (bid, _n), q in res.allocations.items():
        out[bid] = out.get(bid, 0) + q
    return out


# ======================================================================= plain crosses


def test_plain_cross_on_a_buy_step() -> None:
    # sells: 1) 5.0 MWh @ 30.00, 2) 10.0 @ 40.00, 3) 10.0 @ 60.00
    # buys:  4) 10.0 @ 80.00, 5) 10.0 @ 50.00, 6) 10.0 @ 20.00
    # S: [30,40) 50, [40,60) 150, >=60 250.   D: <=20 300, (20,50] 200, (50,80] 100.
    # p=40.00: S=150 < D=200, no buy at exactly 40.00 -> not admissible
    # p=50.00: S=150 < D=200, excess 50 <= buys at 50.00 (100) -> admissible, volume 150
    # (50,60): S=150 != D=100; p=60.00: excess supply 150 > sells at 60.00 (100) -> no
    # => 50.00 €/MWh, 15.0 MWh; bid 5 cut from 10.0 to 5.0 MWh (alone at the price).
    steps = [step(1, SELL, 3000, 50), step(2, SELL, 4000, 100), step(3, SELL, 6000, 100),
             step(4, BUY, 8000, 100), step(5, BUY, 5000, 100), step(6, BUY, 2000, 100)]
    res = clear(steps)
    assert (res.price, res.volume, res.case) == (5000, 150, "horizontal")
    assert alloc(res) == {1: 50, 2: 100, 4: 100, 5: 50}
    assert res.price_range is None


def test_exact_cross_where_the_steps_meet() -> None:
    # sells 5.0 @ 30.00 and 5.0 @ 40.00; buys 5.0 @ 50.00 and 5.0 @ 40.00
    # p=40.00: S=100=D -> admissible, volume 100.  (30,40): S=50, D=100 -> no.
    # (40,50): S=100, D=50 -> no.  p=30.00: S=50 < D=100, no buy at 30.00 -> no.
    # => a single price with S = D: 'exact', everybody matched in full.
    steps = [step(1, SELL, 3000, 50), step(2, SELL, 4000, 50),
             step(3, BUY, 5000, 50), step(4, BUY, 4000, 50)]
    res = clear(steps)
    assert (res.price, res.volume, res.case) == (4000, 100, "exact")
    assert alloc(res) == {1: 50, 2: 50, 3: 50, 4: 50}


def test_no_cross_no_price() -> None:
    # the best buy (40.00) is below the cheapest sell (50.00): nothing matched, no price
    res = clear([step(1, SELL, 5000, 100), step(2, SELL, 6000, 10),
                 step(3, BUY, 4000, 100), step(4, BUY, 1000, 10)])
    assert (res.price, res.volume, res.allocations, res.case) == (None, 0, {}, "none")


def test_one_sided_or_empty_no_price() -> None:
    for steps in ([], [step(1, SELL, 100, 10)], [step(1, BUY, 100, 10),
                                                   step(2, BUY, 200, 10)]):
        res = clear(steps)
        assert res.price is None and res.volume == 0 and res.allocations == {}


# ======================================================= pro rata at the marginal price
#
# R40.2 f): the excess is deducted in proportion from the bids at the marginal price, then
# 1. each allocation truncated to 0.1 MWh, 2. the shortfall D (in tenths) computed,
# 3. +0.1 MWh to D bids: largest truncated remainder, then largest allocation, then the
# earliest submitted.  Each case is built on both sides:
#   sell side (excess supply): the contested sells at 50.00, one buy of T at 90.00;
#     S(50.00) = Q > D = T, excess Q - T <= Q sells at 50.00 -> 50.00 is the only
#     admissible price (above it the excess has no sells at the price, below it S = 0)
#   buy side (excess demand): the contested buys at 50.00, one sell of T at 10.00;
#     symmetric.


def contested(side: str, qtys: list[tuple[int, int, int]], total: int) -> list[Step]:
    """(bid id, quantity, submission order) at 50.00 on ``side``, and the other side's
    single bid 99 of ``total`` that takes them."""
    if side == SELL:
        other = step(99, BUY, 9000, total, order=0)
    else:
        other = step(99, SELL, 1000, total, order=0)
    return [step(b, side, 5000, q, order=o) for b, q, o in qtys] + [other]


def check_cut(side: str, qtys: list[tuple[int, int, int]], total: int,
              expected: dict[int, int]) -> None:
    res = clear(contested(side, qtys, total))
    assert res.price == 5000 and res.case == "horizontal"
    assert res.volume == total
    got = alloc(res)
    assert got.pop(99) == total  # the other side in full
    assert got == {b: q for b, q in expected.items() if q}


def test_truncation_and_shortfall_sell_side() -> None:
    # 7.0, 5.0, 3.0 MWh at 50.00 (Q = 150 tenths) share T = 10.0 MWh:
    #   bid 1: 100*70/150 = 46.67 -> 46 (remainder 100/150)
    #   bid 2: 100*50/150 = 33.33 -> 33 (remainder  50/150)
    #   bid 3: 100*30/150 = 20    -> 20 (remainder   0)
    # truncated sum 99 -> D = 1 -> bid 1 (largest remainder) gets +0.1: 47, 33, 20
    check_cut(SELL, [(1, 70, 1), (2, 50, 2), (3, 30, 3)], 100, {1: 47, 2: 33, 3: 20})


def test_truncation_and_shortfall_buy_side() -> None:
    # the same numbers with buys at 50.00 and a sell of 10.0 MWh at 10.00
    check_cut(BUY, [(1, 70, 1), (2, 50, 2), (3, 30, 3)], 100, {1: 47, 2: 33, 3: 20})


def test_shortfall_of_two_with_bids_below_the_price() -> None:
    # sells: 4) 5.0 @ 40.00 (below the price: in full), 1..3) 1.0 each @ 50.00
    # buy 5) 7.0 @ 90.00.  S(50.00) = 80 > D = 70, excess 10 <= 30 at 50.00 -> price 50.00
    # (40.00: S=50 < D=70 and no buy at 40.00).  The 50.00 sells share 70 - 50 = 20:
    # each 20*10/30 = 6.67 -> 6, truncated sum 18 -> D = 2; all remainders (20/30) and
    # allocations (6) equal -> the two earliest submitted: orders 1 (bid 3) and 2 (bid 1).
    steps = [step(4, SELL, 4000, 50, order=0), step(1, SELL, 5000, 10, order=2),
             step(2, SELL, 5000, 10, order=3), step(3, SELL, 5000, 10, order=1),
             step(5, BUY, 9000, 70, order=4)]
    res = clear(steps)
    assert (res.price, res.volume, res.case) == (5000, 70, "horizontal")
    assert alloc(res) == {4: 50, 1: 7, 2: 6, 3: 7, 5: 70}


def test_tiebreak_largest_remainder_first_sell_side() -> None:
    # 7.0 MWh (bid 1, submitted first) and 3.0 MWh (bid 2, later) share T = 0.9 MWh:
    #   bid 1: 9*70/100 = 6.3 -> 6 (remainder 0.3)
    #   bid 2: 9*30/100 = 2.7 -> 2 (remainder 0.7)
    # D = 9 - 8 = 1 -> bid 2 by its remainder, although bid 1 has the larger allocation
    # and was submitted earlier: 6 and 3
    check_cut(SELL, [(1, 70, 1), (2, 30, 2)], 9, {1: 6, 2: 3})


def test_tiebreak_largest_remainder_first_buy_side() -> None:
    check_cut(BUY, [(1, 70, 1), (2, 30, 2)], 9, {1: 6, 2: 3})


def test_tiebreak_then_largest_allocation_sell_side() -> None:
    # 1.0 (bid 1, first), 4.0 (bid 2), 5.0 MWh (bid 3, last) share T = 1.5 MWh:
    #   bid 1: 15*10/100 = 1.5 -> 1 (0.5);  bid 2: 15*40/100 = 6 -> 6 (0);
    #   bid 3: 15*50/100 = 7.5 -> 7 (0.5)
    # D = 15 - 14 = 1; bids 1 and 3 tie on the remainder -> the larger allocation (7 > 1)
    # wins although bid 1 was submitted first: 1, 6, 8
    check_cut(SELL, [(1, 10, 1), (2, 40, 2), (3, 50, 3)], 15, {1: 1, 2: 6, 3: 8})


def test_tiebreak_then_largest_allocation_buy_side() -> None:
    check_cut(BUY, [(1, 10, 1), (2, 40, 2), (3, 50, 3)], 15, {1: 1, 2: 6, 3: 8})


def test_tiebreak_then_earliest_submitted_sell_side() -> None:
    # two bids of 1.0 MWh share T = 1.5 MWh: 7.5 -> 7 each, same remainder and allocation;
    # D = 1 -> the earlier submitted, which is bid 2 (order 1) although its id is larger
    check_cut(SELL, [(1, 10, 2), (2, 10, 1)], 15, {1: 7, 2: 8})


def test_tiebreak_then_earliest_submitted_buy_side() -> None:
    check_cut(BUY, [(1, 10, 2), (2, 10, 1)], 15, {1: 7, 2: 8})


def test_cut_to_nothing_drops_the_bid() -> None:
    # 0.1 MWh shared by two bids of 1.0 MWh: 0.5 -> 0 each, D = 1 -> the earlier gets it;
    # the other gets nothing and does not appear in the allocations at all
    res = clear(contested(SELL, [(1, 10, 1), (2, 10, 2)], 1))
    assert res.allocations == {(1, 0): 1, (99, 0): 1}


# ======================================================================= vertical step


def test_vertical_step_midpoint() -> None:
    # sell 10.0 @ 40.00, buy 10.0 @ 60.00: S = D = 100 for every p in [40.00, 60.00]
    # -> indeterminate; midpoint (4000 + 6000) // 2 = 5000; nobody cut
    res = clear([step(1, SELL, 4000, 100), step(2, BUY, 6000, 100)])
    assert (res.price, res.volume, res.case) == (5000, 100, "vertical")
    assert res.price_range == (4000, 6000)
    assert alloc(res) == {1: 100, 2: 100}


def test_vertical_step_odd_cents_rounded_down() -> None:
    # range [40.00, 45.55]: midpoint 4277.5 cents -> 42.77 (down to the cent)
    res = clear([step(1, SELL, 4000, 100), step(2, BUY, 4555, 100)])
    assert (res.price, res.price_range, res.case) == (4277, (4000, 4555), "vertical")
    # range [40.00, 40.01]: 4000.5 -> 40.00
    res = clear([step(1, SELL, 4000, 100), step(2, BUY, 4001, 100)])
    assert (res.price, res.price_range) == (4000, (4000, 4001))
    # negative prices: range [-40.01, -20.00]: -3000.5 -> -30.01 (down, not towards zero)
    res = clear([step(1, SELL, -4001, 100), step(2, BUY, -2000, 100)])
    assert (res.price, res.price_range) == (-3001, (-4001, -2000))


def test_vertical_step_between_two_horizontal_cuts() -> None:
    # sells 1) 10.0 @ 40.00, 2) 5.0 @ 50.00; buys 3) 10.0 @ 60.00, 4) 5.0 @ 45.00
    # p=45.00: S=100 < D=150, excess 50 = buys at 45.00 -> admissible, volume 100
    # (45,50): S=100 = D=100 -> admissible;  p=50.00: S=150 > D=100, excess 50 = sells
    # at 50.00 -> admissible.  40.00: S=100 < D=150, no buy at 40.00 -> no.  60.00: no.
    # -> range [45.00, 50.00], price 47.50; at 47.50 S = D = 100: bids 2 and 4 get nothing
    steps = [step(1, SELL, 4000, 100), step(2, SELL, 5000, 50),
             step(3, BUY, 6000, 100), step(4, BUY, 4500, 50)]
    res = clear(steps)
    assert (res.price, res.volume, res.case, res.price_range) == (4750, 100, "vertical",
                                                                  (4500, 5000))
    assert alloc(res) == {1: 100, 3: 100}


# ======================================================================= multi-step bids


def test_multi_step_bids() -> None:
    # seller bid 1: 5.0 @ 30.00, 5.0 @ 40.00, 5.0 @ 50.00
    # buyer bid 2:  6.0 @ 60.00, 4.0 @ 45.00, 5.0 @ 35.00
    # S: [30,40) 50, [40,50) 100, >=50 150.  D: <=35 150, (35,45] 100, (45,60] 60.
    # 35.00: S=50 < D=150, excess 100 > 50 at 35.00 -> no;  40.00: S=100=D -> yes (100)
    # (40,45): S=100 = D(45)=100 -> yes;  45.00: S=100=D -> yes
    # (45,50): S=100 != D=60 -> no;  50.00: excess 90 > 50 at 50.00 -> no
    # -> vertical [40.00, 45.00], price 42.50: steps 1.0, 1.1 and 2.0, 2.1 in full
    steps = [Step(1, 0, SELL, 3000, 50, 1), Step(1, 1, SELL, 4000, 50, 1),
             Step(1, 2, SELL, 5000, 50, 1),
             Step(2, 0, BUY, 6000, 60, 2), Step(2, 1, BUY, 4500, 40, 2),
             Step(2, 2, BUY, 3500, 50, 2)]
    res = clear(steps)
    assert (res.price, res.volume, res.case, res.price_range) == (4250, 100, "vertical",
                                                                  (4000, 4500))
    assert res.allocations == {(1, 0): 50, (1, 1): 50, (2, 0): 60, (2, 1): 40}


def test_multi_step_bid_cut_on_one_of_its_steps() -> None:
    # seller bid 1: 4.0 @ 20.00, 6.0 @ 30.00; seller bid 2: 2.0 @ 30.00
    # buyer bid 3: 3.0 @ 70.00, 5.0 @ 30.00; buyer bid 4: 1.0 @ 10.00
    # 30.00: S = 40+60+20 = 120, D = 30+50 = 80 -> excess 40 <= 80 sold at 30.00 -> yes, 80
    # 20.00: S=40 < D=80, no buy at 20.00 -> no;  (30,70): S=120 != D=30 -> no
    # -> 30.00, horizontal; the 30.00 sells share 80 - 40 = 40 in proportion 60:20:
    #    step 1.1: 40*60/80 = 30; bid 2: 40*20/80 = 10 (exact, D = 0)
    steps = [Step(1, 0, SELL, 2000, 40, 1), Step(1, 1, SELL, 3000, 60, 1),
             Step(2, 0, SELL, 3000, 20, 2),
             Step(3, 0, BUY, 7000, 30, 3), Step(3, 1, BUY, 3000, 50, 3),
             Step(4, 0, BUY, 1000, 10, 4)]
    res = clear(steps)
    assert (res.price, res.volume, res.case) == (3000, 80, "horizontal")
    assert res.allocations == {(1, 0): 40, (1, 1): 30, (2, 0): 10, (3, 0): 30, (3, 1): 50}


# ======================================================================= precedence R41.2


def test_precedence_sells() -> None:
    # by price ascending; at equal price *newer* first («orden decreciente de fecha ... de
    # inserción»); then the larger energy; then the code in decreasing order
    a = step(1, SELL, 4000, 10, order=5, unit="U1")  # cheapest
    b = step(2, SELL, 5000, 50, order=1, unit="U1")  # oldest at 50.00 -> last
    c = step(3, SELL, 5000, 10, order=2, unit="U1")  # newer than b
    d = step(4, SELL, 5000, 30, order=2, unit="AAA")  # same time as c, more energy
    e = step(5, SELL, 5000, 30, order=2, unit="BBB")  # same time and energy, code BBB > AAA
    f = step(6, SELL, 6000, 99, order=9, unit="ZZZ")  # dearest
    for perm in (list("abcdef"), list("fedcba"), list("cafbed")):
        steps = [{"a": a, "b": b, "c": c, "d": d, "e": e, "f": f}[x] for x in perm]
        assert precedence(steps) == [a, e, d, c, b, f]


def test_precedence_buys() -> None:
    # by price descending, then the same ties
    a = step(1, BUY, 6000, 10, order=5, unit="U1")  # highest price first
    b = step(2, BUY, 5000, 10, order=1, unit="U1")
    c = step(3, BUY, 5000, 10, order=3, unit="U1")  # newer than b
    d = step(4, BUY, 5000, 20, order=3, unit="U1")  # same time, more energy
    e = step(5, BUY, 4000, 10, order=0, unit="U1")
    assert precedence([e, b, a, d, c]) == [a, d, c, b, e]


def test_precedence_code_decreasing_prefix() -> None:
    # decreasing alphabetical order: "ABC" > "AB" > "AA"
    xs = [step(i, SELL, 100, 10, order=1, unit=u) for i, u in enumerate(["AB", "AA", "ABC"])]
    assert [s.unit for s in precedence(xs)] == ["ABC", "AB", "AA"]
    assert precedence([]) == []


# ============================================================== reference model (hypothesis)


def ref_prorata(group: list[Step], total: int) -> dict[tuple[int, int], int]:
    """R40.2 f) written from the rule's text with exact fractions."""
    q = sum(s.qty for s in group)
    share = {s: Fraction(total * s.qty, q) for s in group}
    out = {s: floor(share[s]) for s in group}
    d = total - sum(out.values())
    ranked = sorted(group, key=lambda s: (-(share[s] - out[s]), -out[s], s.order, s.id, s.n))
    for s in ranked[:d]:
        out[s] += 1
    return {(s.id, s.n): v for s, v in out.items()}


def reference(steps: list[Step]) -> tuple[int | None, int, dict[tuple[int, int], int], str]:
    """Brute force: every cent from below the lowest bid price to above the highest."""
    sells = [s for s in steps if s.side == SELL]
    buys = [s for s in steps if s.side == BUY]
    if not sells or not buys:
        return None, 0, {}, "none"
    lo_p = min(s.price for s in steps) - 1
    hi_p = max(s.price for s in steps) + 1
    adm: dict[int, int] = {}
    for p in range(lo_p, hi_p + 1):
        sup = sum(s.qty for s in sells if s.price <= p)
        dem = sum(b.qty for b in buys if b.price >= p)
        at_s = sum(s.qty for s in sells if s.price == p)
        at_d = sum(b.qty for b in buys if b.price == p)
        if (sup == dem or (sup > dem and at_s >= sup - dem)
                or (dem > sup and at_d >= dem - sup)) and min(sup, dem) > 0:
            adm[p] = min(sup, dem)
    if not adm:
        return None, 0, {}, "none"
    best = max(adm.values())
    chosen = sorted(p for p, v in adm.items() if v == best)
    price = chosen[0] if len(chosen) == 1 else (chosen[0] + chosen[-1]) // 2
    sup = sum(s.qty for s in sells if s.price <= price)
    dem = sum(b.qty for b in buys if b.price >= price)
    case = "vertical" if len(chosen) > 1 else ("exact" if sup == dem else "horizontal")
    out = {(s.id, s.n): s.qty for s in sells if s.price <= price}
    out.update({(b.id, b.n): b.qty for b in buys if b.price >= price})
    if sup != dem:
        side, fixed_total = (sells, dem) if sup > dem else (buys, sup)
        group = [s for s in side if s.price == price]
        fixed = (sup if sup > dem else dem) - sum(s.qty for s in group)
        out.update(ref_prorata(group, fixed_total - fixed))
    return price, best, {k: v for k, v in out.items() if v}, case


SMALL_PRICES = st.integers(-20, 20)
SMALL_QTYS = st.integers(1, 30)


@st.composite
def bid_sets(draw: st.DrawFn, prices: st.SearchStrategy[int] = SMALL_PRICES,
             qtys: st.SearchStrategy[int] = SMALL_QTYS, max_bids: int = 6) -> list[Step]:
    """Buy and sell bids of 1-3 steps (distinct prices within a bid, as a real bid's
    curve), each bid with its own submission order (a random permutation of the ids)."""
    nb = draw(st.integers(1, max_bids))
    ns = draw(st.integers(1, max_bids))
    orders = draw(st.permutations(list(range(1, nb + ns + 1))))
    out: list[Step] = []
    for i in range(nb + ns):
        side = BUY if i < nb else SELL
        k = draw(st.integers(1, 3))
        ps = draw(st.lists(prices, min_size=k, max_size=k, unique=True))
        ps.sort(reverse=side == BUY)
        for n, p in enumerate(ps):
            out.append(Step(i + 1, n, side, p, draw(qtys), orders[i]))
    return out


DENSE = bid_sets()  # prices in a few cents: many ties and vertical steps
SPARSE = bid_sets(prices=st.integers(-8, 8).map(lambda k: 37 * k),
                  qtys=st.one_of(st.integers(1, 30), st.integers(1, 2000)))


@settings(max_examples=400, deadline=None)
@given(st.one_of(DENSE, SPARSE))
def test_clear_matches_brute_force_reference(steps: list[Step]) -> None:
    res = clear(steps)
    price, volume, allocations, case = reference(steps)
    event(f"case {case}")
    assert (res.price, res.volume) == (price, volume), steps
    assert res.allocations == allocations, steps
    assert res.case == case, steps


def check_invariants(steps: list[Step], res: PeriodResult) -> None:
    by_key = {(s.id, s.n): s for s in steps}
    if res.price is None:
        assert res.volume == 0 and res.allocations == {}
        # no crossing: no buy at or above any sell
        sells = [s.price for s in steps if s.side == SELL]
        buys = [s.price for s in steps if s.side == BUY]
        assert not sells or not buys or max(buys) < min(sells)
        return
    p = res.price
    bought = sum(q for k, q in res.allocations.items() if by_key[k].side == BUY)
    sold = sum(q for k, q in res.allocations.items() if by_key[k].side == SELL)
    assert bought == sold == res.volume > 0
    for k, q in res.allocations.items():
        s = by_key[k]
        assert type(q) is int and 0 < q <= s.qty  # whole tenths, within the step
        assert s.price <= p if s.side == SELL else s.price >= p
    for s in steps:  # strictly in the money: matched in full
        if (s.side == SELL and s.price < p) or (s.side == BUY and s.price > p):
            assert res.allocations.get((s.id, s.n)) == s.qty
    # at most one side is cut, and only at the marginal price
    cut = {by_key[k].side for k in by_key
           if by_key[k].qty - res.allocations.get(k, 0) > 0
           and (by_key[k].price <= p if by_key[k].side == SELL else by_key[k].price >= p)}
    assert len(cut) <= 1


@settings(max_examples=300, deadline=None)
@given(st.one_of(DENSE, SPARSE,
                 bid_sets(prices=st.integers(-50_000, 300_000), qtys=st.integers(1, 9990),
                          max_bids=25)))
def test_clear_invariants(steps: list[Step]) -> None:
    res = clear(steps)
    check_invariants(steps, res)
    # the order of the input does not matter
    shuffled = list(steps)
    random.Random(len(steps)).shuffle(shuffled)
    again = clear(shuffled)
    assert (again.price, again.volume, again.allocations, again.case) == (
        res.price, res.volume, res.allocations, res.case)
