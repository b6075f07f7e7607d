"""The pure settlement of a synchronisation (sync/settle.py): worked examples computed by
hand, then properties over random trades.

Reference data: the demo (examples/refdata.toml).

==========  =============================================  =================================
agent       taxes (IEE, VAT)                               settlement side at the start
==========  =============================================  =================================
AG1         0 %, 21 %                                      deposited 60 000 €, reserved
                                                           50 000 € → balance 10 000 €
AG2         5.11269632 %, 21 %                             150 000 €, 100 000 € → 50 000 €
AG3         0 %, 21 %                                      30 000 €, 30 000 € → 0 €
AG4         0 %, 23 %                                      20 000 €, 20 000 € → 0 €
==========  =============================================  =================================

Units: SELLU1 (selling, AG1 100 %), BUYU2 (buying, AG2 100 %), SELLU3 (selling, AG3 60 % /
AG4 40 %), PTBUY4 (buying, AG4 100 %).

Units of account: energy in tenths of MWh, prices in cents of €/MWh, so energy × price is in
milli-euros (m€): 60 (6.0 MWh) × 4510 (45.10 €/MWh) = 270 600 m€ = 270.600 €.  Taxes are
rounded half up to the milli-euro: iee = base × IEE, vat = (base + iee) × VAT.  Balances in
m€; reductions and requests in cents.
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from math import ceil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import Trade
from gateway.refdata_file import read_and_validate
from risk.refdata import RefData
from sync.settle import (
    Balance,
    Decision,
    Entry,
    PendingRequest,
    SyncResult,
    entries_of,
    round_half_up,
    settle,
    split,
    trade_row,
)

ROOT = Path(__file__).resolve().parents[1]
REF: RefData = read_and_validate(ROOT / "examples" / "refdata.toml")[1]
_DEMO_DOC = json.loads(read_and_validate(ROOT / "examples" / "refdata.toml")[0])
C1 = "PH-20270115-10"
C2 = "PH-20270115-11"
DAY = "2027-01-15"


def trade(tid: int, price: int, qty: int, sell_unit: str = "SELLU1", buy_unit: str = "BUYU2",
          contract: str = C1, rnd: int = 1) -> Trade:
    """A trade as the engine emits it (agents: the units' responsible agents)."""
    sa = REF.units[sell_unit].responsible if sell_unit in REF.units else "X"
    ba = REF.units[buy_unit].responsible if buy_unit in REF.units else "X"
    return Trade.of(1_800_000_000_000 + tid, tid, contract, rnd, price, qty, "BUY", 100 + tid,
                 "u", ba, buy_unit, 200 + tid, "u", sa, sell_unit)


def by_owner(entries: list[Entry]) -> dict[tuple[int, str, str], Entry]:
    return {(e.trade_id, e.side, e.agent): e for e in entries}


def amounts(e: Entry) -> tuple[str, int, int, int, int]:
    return (e.kind, e.base, e.iee, e.vat, e.total)


def fresh(*trades: Trade, requests: tuple[PendingRequest, ...] = (),
          uncommitted: dict[str, int] | None = None, sync_id: int = 1, from_round: int = 1,
          balances: dict[str, Balance] | None = None) -> SyncResult:
    return settle(sync_id, from_round, trades, REF, balances or {}, requests,
                  uncommitted or {})


# ------------------------------------------------------------------ entries (R49.1.1, R49.1.2)


def test_sell_at_positive_price_is_a_right_the_buy_an_obligation() -> None:
    # SELLU1 (AG1) sells 6.0 MWh to BUYU2 (AG2) at 45.10 €/MWh.
    # base = 60 × 4510 = 270 600 m€ (270.60 €).
    # AG1, sell at a positive price -> DCIC (R49.1.1): iee = 0;
    #   vat = 270 600 × 0.21 = 56 826 (exact); total = 327 426.
    # AG2, buy at a positive price -> OPIC (R49.1.2):
    #   iee = 270 600 × 0.0511269632 = 13 834.956… -> 13 835;
    #   vat = (270 600 + 13 835) × 0.21 = 284 435 × 0.21 = 59 731.35 -> 59 731;
    #   total = 270 600 + 13 835 + 59 731 = 344 166.
    es = by_owner(entries_of(trade(1, 4510, 60), REF))
    assert set(es) == {(1, "SELL", "AG1"), (1, "BUY", "AG2")}
    assert amounts(es[1, "SELL", "AG1"]) == ("DCIC", 270_600, 0, 56_826, 327_426)
    assert amounts(es[1, "BUY", "AG2"]) == ("OPIC", 270_600, 13_835, 59_731, 344_166)
    s, b = es[1, "SELL", "AG1"], es[1, "BUY", "AG2"]
    assert (s.unit, s.contract, s.day, s.round, s.energy, s.price, s.share_bp) == (
        "SELLU1", C1, DAY, 1, 60, 4510, 10_000)
    assert b.unit == "BUYU2"
    assert s.signed == 327_426 and b.signed == -344_166


def test_sell_at_negative_price_is_an_obligation_shared_by_the_owners() -> None:
    # SELLU3 (AG3 60 %, AG4 40 %) sells 2.0 MWh to BUYU2 at −10.00 €/MWh.
    # base = 20 × |−1000| = 20 000 m€.
    # sell at a negative price -> OPIC (R49.1.2), split 60/40:
    #   AG3: 12 000, vat 21 % = 2 520 -> 14 520;  AG4: 8 000, vat 23 % = 1 840 -> 9 840.
    # buy at a negative price -> DCIC (R49.1.1), AG2:
    #   iee = 20 000 × 0.0511269632 = 1 022.539… -> 1 023;
    #   vat = 21 023 × 0.21 = 4 414.83 -> 4 415;  total = 20 000 + 1 023 + 4 415 = 25 438.
    es = by_owner(entries_of(trade(2, -1000, 20, sell_unit="SELLU3"), REF))
    assert set(es) == {(2, "SELL", "AG3"), (2, "SELL", "AG4"), (2, "BUY", "AG2")}
    assert amounts(es[2, "SELL", "AG3"]) == ("OPIC", 12_000, 0, 2_520, 14_520)
    assert amounts(es[2, "SELL", "AG4"]) == ("OPIC", 8_000, 0, 1_840, 9_840)
    assert amounts(es[2, "BUY", "AG2"]) == ("DCIC", 20_000, 1_023, 4_415, 25_438)
    assert es[2, "SELL", "AG3"].share_bp == 6000 and es[2, "SELL", "AG4"].share_bp == 4000
    # each owner's entry keeps the whole trade's energy and signed price
    assert {(e.energy, e.price) for e in es.values()} == {(20, -1000)}


@pytest.mark.parametrize(("price", "sell_kind", "buy_kind"), [
    (1, "DCIC", "OPIC"),  # positive: the seller collects, the buyer pays
    (-1, "OPIC", "DCIC"),  # negative: the seller pays, the buyer collects
])
def test_which_side_is_dcic_and_which_opic(price: int, sell_kind: str, buy_kind: str) -> None:
    for sell_unit, buy_unit in (("SELLU1", "BUYU2"), ("SELLU3", "PTBUY4"),
                                ("BUYU2", "SELLU1")):  # whatever the units' kinds
        es = entries_of(trade(3, price * 777, 11, sell_unit=sell_unit, buy_unit=buy_unit),
                        REF)
        assert {e.kind for e in es if e.side == "SELL"} == {sell_kind}
        assert {e.kind for e in es if e.side == "BUY"} == {buy_kind}


def test_taxes_round_half_up_to_the_milli_euro() -> None:
    # 0.5 MWh at 0.10 €/MWh: base = 5 × 10 = 50 m€.
    # AG1 (DCIC): vat = 50 × 0.21 = 10.5 -> 11 (half up; banker's rounding would give 10).
    # AG2 (OPIC): iee = 50 × 0.0511269632 = 2.556… -> 3; vat = 53 × 0.21 = 11.13 -> 11.
    es = by_owner(entries_of(trade(4, 10, 5), REF))
    assert amounts(es[4, "SELL", "AG1"]) == ("DCIC", 50, 0, 11, 61)
    assert amounts(es[4, "BUY", "AG2"]) == ("OPIC", 50, 3, 11, 64)
    # An exact half of IEE: 2.5 MWh at 7 812.50 €/MWh, base = 25 × 781 250 = 19 531 250 m€
    # = 10^10 / 512, so iee = 511 269 632 / 512 = 998 573.5 -> 998 574;
    # vat = (19 531 250 + 998 574) × 0.21 = 20 529 824 × 0.21 = 4 311 263.04 -> 4 311 263.
    # AG1: vat = 19 531 250 × 0.21 = 4 101 562.5 -> 4 101 563 (another exact half).
    es = by_owner(entries_of(trade(5, 781_250, 25), REF))
    assert amounts(es[5, "BUY", "AG2"]) == ("OPIC", 19_531_250, 998_574, 4_311_263, 24_841_087)
    assert amounts(es[5, "SELL", "AG1"]) == ("DCIC", 19_531_250, 0, 4_101_563, 23_632_813)


def test_round_half_up_goes_away_from_zero() -> None:
    assert [round_half_up(Fraction(n, 2)) for n in (-3, -1, 1, 3, 5)] == [-2, -1, 1, 2, 3]
    assert round_half_up(Fraction(149, 100)) == 1
    assert round_half_up(Fraction(-149, 100)) == -1
    assert round_half_up(Fraction(7)) == 7


def test_shared_unit_split_by_largest_remainder() -> None:
    # 0.7 MWh at −0.01 €/MWh: base = 7 m€.  60 % = 4.2, 40 % = 2.8: floors 4 + 2 = 6, the
    # milli-euro left goes to the largest remainder (0.8, AG4), not to the larger share:
    # AG3 4, AG4 3.  VAT: AG3 4 × 0.21 = 0.84 -> 1 (total 5); AG4 3 × 0.23 = 0.69 -> 1
    # (total 4).  The buyer AG2 (DCIC): iee 7 × 0.0511… = 0.357 -> 0, vat 1.47 -> 1, total 8.
    es = by_owner(entries_of(trade(6, -1, 7, sell_unit="SELLU3"), REF))
    assert amounts(es[6, "SELL", "AG3"]) == ("OPIC", 4, 0, 1, 5)
    assert amounts(es[6, "SELL", "AG4"]) == ("OPIC", 3, 0, 1, 4)
    assert amounts(es[6, "BUY", "AG2"]) == ("DCIC", 7, 0, 1, 8)
    # the split itself
    assert split(7, [6000, 4000]) == [4, 3]
    assert split(1, [6000, 4000]) == [1, 0]  # remainders 0.6 vs 0.4
    assert split(5, [5000, 5000]) == [3, 2]  # a tie goes to the earlier owner
    assert split(10, [3333, 3333, 3334]) == [3, 3, 4]  # 3.333, 3.333, 3.334
    assert split(0, [6000, 4000]) == [0, 0]
    assert split(20_000, [6000, 4000]) == [12_000, 8_000]  # exact: no remainder


def test_zero_price_gives_zero_amounts_but_counts_the_energy() -> None:
    # 3.0 MWh at 0.00 €/MWh: nothing to collect or pay (base 0), both sides still recorded
    # with their energy, and the programs move (R50).
    res = fresh(trade(7, 0, 30))
    assert len(res.entries) == 2
    assert {(e.side, e.agent, e.base, e.iee, e.vat, e.total) for e in res.entries} == {
        ("SELL", "AG1", 0, 0, 0, 0), ("BUY", "AG2", 0, 0, 0, 0)}
    assert res.balances["AG1"].balance == 10_000_000  # unchanged
    assert res.balances["AG2"].balance == 50_000_000
    assert res.programs == {("SELLU1", C1): 30, ("BUYU2", C1): 30}


def test_unit_missing_from_reference_data_charges_the_trading_agent() -> None:
    # a unit no longer in the reference data: the side's agent owns 100 %; an agent unknown
    # to the reference data has no taxes.  4.0 MWh at 20.00 €/MWh: base 80 000 m€.
    es = by_owner(entries_of(trade(8, 2000, 40, sell_unit="GHOST"), REF))
    assert amounts(es[8, "SELL", "X"]) == ("DCIC", 80_000, 0, 0, 80_000)
    assert es[8, "SELL", "X"].share_bp == 10_000
    assert amounts(es[8, "BUY", "AG2"])[:2] == ("OPIC", 80_000)


# ------------------------------------------------------------------ balances (R55.7.2)


def test_initial_balances_come_from_reference_data() -> None:
    # balance = deposited − reserved, in m€ (reference data in cents × 10)
    res = fresh()
    b = res.balances
    assert (b["AG1"].deposited, b["AG1"].reserved, b["AG1"].balance) == (
        60_000_000, 50_000_000, 10_000_000)
    assert (b["AG2"].deposited, b["AG2"].reserved, b["AG2"].balance) == (
        150_000_000, 100_000_000, 50_000_000)
    assert (b["AG3"].deposited, b["AG3"].reserved, b["AG3"].balance) == (
        30_000_000, 30_000_000, 0)
    assert b["AG4"].balance == 0
    assert res.trades == 0 and res.entries == [] and res.history == []
    assert all(v == 0 for v in res.reductions.values())


def test_balance_is_deposited_minus_reserved_plus_rights_minus_obligations() -> None:
    # trades 1 (45.10 €, 6.0 MWh) and 2 (−10.00 €, 2.0 MWh) of the examples above:
    # AG1: 10 000 000 + 327 426 = 10 327 426
    # AG2: 50 000 000 − 344 166 + 25 438 = 49 681 272
    # AG3: 0 − 14 520 = −14 520;  AG4: 0 − 9 840 = −9 840
    res = fresh(trade(1, 4510, 60), trade(2, -1000, 20, sell_unit="SELLU3"))
    b = res.balances
    assert b["AG1"].balance == 10_327_426
    assert b["AG2"].balance == 49_681_272
    assert b["AG3"].balance == -14_520
    assert b["AG4"].balance == -9_840
    # deposited and reserved do not move with entries
    assert (b["AG2"].deposited, b["AG2"].reserved) == (150_000_000, 100_000_000)
    assert res.history == [
        ("AG1", 327_426, "sync 1: rounds 1-1", 10_327_426),
        ("AG2", -318_728, "sync 1: rounds 1-1", 49_681_272),
        ("AG3", -14_520, "sync 1: rounds 1-1", -14_520),
        ("AG4", -9_840, "sync 1: rounds 1-1", -9_840),
    ]
    # R49.1.4.2 step 2: the negative balances must be covered by reducing the reserved
    # amount by exactly the shortfall, in cents: 14 520 m€ = 1 452 c, 9 840 m€ = 984 c
    assert res.reductions == {"AG1": 0, "AG2": 0, "AG3": 1452, "AG4": 984, "OMIE": 0,
                              "REE": 0}


def test_balances_carry_over_between_synchronisations() -> None:
    # sync 1: trade 1;  sync 2 starts from sync 1's balances (not from the reference data)
    r1 = fresh(trade(1, 4510, 60))
    r2 = fresh(trade(2, -1000, 20, sell_unit="SELLU3", contract=C2, rnd=2), sync_id=2,
               from_round=2, balances=r1.balances)
    assert r2.balances["AG1"].balance == 10_327_426  # only sync 1's right
    assert r2.balances["AG2"].balance == 50_000_000 - 344_166 + 25_438
    assert r2.history[0] == ("AG2", 25_438, "sync 2: rounds 2-2", 49_681_272)
    assert r1.balances["AG2"].balance == 49_655_834  # the input is not modified


@pytest.mark.parametrize(("balance", "cents"), [
    (-14_520, 1452),  # exactly 14.52 €
    (-14_521, 1453),  # 14.521 € -> 14.53 € (rounded up: the balance must not stay negative)
    (-1, 1),
    (-10, 1),
    (0, 0),
    (5, 0),
])
def test_negative_balance_gives_a_reduction_of_the_shortfall(balance: int, cents: int
                                                             ) -> None:
    res = fresh(balances={"AG3": Balance(30_000_000, 30_000_000, balance)})
    assert res.reductions["AG3"] == cents
    # the reduction covers the shortfall, and by less than one cent more
    assert 0 <= res.reductions["AG3"] * 10 + min(balance, 0) < 10


def test_several_rounds_in_one_synchronisation() -> None:
    # rounds 1 and 2 closed before the sync: one sync (id 2) over both, entries keep their
    # round; one history line per agent with the sum of both rounds.
    # AG1: trade 1 right 327 426 + trade 3 (SELLU1 sells 1.0 MWh at 50.00 €: base 50 000,
    #   vat 10 500, total 60 500) = 387 926.
    # AG2: −344 166 and trade 3's obligation: iee 50 000 × 0.0511269632 = 2 556.348 ->
    #   2 556; vat 52 556 × 0.21 = 11 036.76 -> 11 037; total 63 593 -> −407 759.
    res = fresh(trade(1, 4510, 60), trade(3, 5000, 10, contract=C2, rnd=2), sync_id=2)
    assert res.sync_id == 2 and res.from_round == 1 and res.trades == 2
    assert {(e.trade_id, e.round, e.contract) for e in res.entries} == {
        (1, 1, C1), (3, 2, C2)}
    assert amounts(by_owner(res.entries)[3, "BUY", "AG2"]) == (
        "OPIC", 50_000, 2_556, 11_037, 63_593)
    assert res.history == [
        ("AG1", 387_926, "sync 2: rounds 1-2", 10_387_926),
        ("AG2", -407_759, "sync 2: rounds 1-2", 49_592_241),
    ]
    # entries in trade order whatever the input order
    res2 = fresh(trade(3, 5000, 10, contract=C2, rnd=2), trade(1, 4510, 60), sync_id=2)
    assert [e.trade_id for e in res2.entries] == [1, 1, 3, 3]
    assert res2.entries == res.entries


# ------------------------------------------------------------------ requests (R49.1.4.4)


def test_increase_accepted_with_surplus_and_refused_without() -> None:
    # after trades 1 and 2: AG1 balance 10 327 426, AG2 49 681 272.
    # 1: AG2 +1 000.00 € (1 000 000 m€ <= 49 681 272): accepted; balance 48 681 272,
    #    reserved 100 000 000 + 1 000 000 = 101 000 000.
    # 2: AG1 +11 000.00 € (11 000 000 > 10 327 426): refused, nothing moves.
    res = fresh(trade(1, 4510, 60), trade(2, -1000, 20, sell_unit="SELLU3"), requests=(
        PendingRequest(2, "AG1", True, 1_100_000), PendingRequest(1, "AG2", True, 100_000)))
    d = {x.request_id: x for x in res.decisions}
    assert [x.request_id for x in res.decisions] == [1, 2]  # in request order
    assert d[1].accept and d[1].agent == "AG2"
    assert "surplus available" in d[1].reason
    assert not d[2].accept and d[2].agent == "AG1"
    assert "10327.43 € below 11000.00 €" in d[2].reason
    assert (res.balances["AG2"].balance, res.balances["AG2"].reserved) == (
        48_681_272, 101_000_000)
    assert (res.balances["AG1"].balance, res.balances["AG1"].reserved) == (
        10_327_426, 50_000_000)
    assert res.history[-1] == ("AG2", -1_000_000, "increase 1 accepted", 48_681_272)
    assert not any(h[2].startswith("increase 2") for h in res.history)


def test_increase_boundary_is_the_whole_surplus() -> None:
    # AG1's balance 10 327 426 m€: 10 327.42 € fits (6 m€ left), 10 327.43 € does not
    ok = fresh(trade(1, 4510, 60), requests=(PendingRequest(1, "AG1", True, 1_032_742),))
    assert ok.decisions[0].accept and ok.balances["AG1"].balance == 6
    no = fresh(trade(1, 4510, 60), requests=(PendingRequest(1, "AG1", True, 1_032_743),))
    assert not no.decisions[0].accept and no.balances["AG1"].balance == 10_327_426


def test_requests_are_settled_in_order_against_the_moving_balance() -> None:
    # AG1 10 000 000 m€: +6 000 € accepted (4 000 000 left), then +5 000 € refused
    res = fresh(requests=(PendingRequest(7, "AG1", True, 600_000),
                          PendingRequest(8, "AG1", True, 500_000)))
    assert [(x.request_id, x.accept) for x in res.decisions] == [(7, True), (8, False)]
    assert res.balances["AG1"].balance == 4_000_000
    assert res.balances["AG1"].reserved == 56_000_000


# R49.1.4.4: a reduction «será validada por la Plataforma de Negociación ... en el siguiente
# instante de sincronización»: the platform decides it at the round close (risk/guard.py
# round_closed) and the settlement side records what it decided.  These tests replace four
# that had settle() decide reductions itself from the limit at the close: the platform then
# decided them again when the feedback came, on other figures, so the two sides could
# disagree (the store ACCEPTED, the platform REFUSED) and a refused reduction could fund an
# increase accepted in the same sync (the review of commit ea0ac4b, defect 4).


def platform(rid: int, agent: str, amount: int, accept: bool) -> Decision:
    return Decision(rid, agent, accept, "accepted" if accept else "refused", True, amount)


def test_r49_1_4_4_the_platforms_reductions_are_recorded_as_decided() -> None:
    # 3: AG2 −500.00 € accepted on the platform: 500 000 m€ back to the balance,
    #    50 000 000 + 500 000 = 50 500 000; reserved 100 000 000 − 500 000 = 99 500 000.
    # 4: AG3 −29 990.00 € refused on the platform: nothing moves.
    res = settle(1, 1, (), REF, {}, (), {},
                 platform_decisions=(platform(3, "AG2", 50_000, True),
                                     platform(4, "AG3", 2_999_000, False)))
    assert [(x.request_id, x.accept, x.platform) for x in res.decisions] == [
        (3, True, True), (4, False, True)]
    assert (res.balances["AG2"].balance, res.balances["AG2"].reserved) == (
        50_500_000, 99_500_000)
    assert (res.balances["AG3"].balance, res.balances["AG3"].reserved) == (0, 30_000_000)
    assert ("AG2", 500_000, "reduction 3 accepted on the platform", 50_500_000) in res.history


def test_r49_1_4_4_a_reduction_is_never_decided_by_the_settlement_side() -> None:
    with pytest.raises(ValueError, match=r"R49\.1\.4\.4"):
        fresh(requests=(PendingRequest(1, "AG2", False, 1234),))


def test_r49_1_4_4_a_reduction_the_platform_refused_funds_no_increase() -> None:
    # AG2: 150 000 € deposited, 100 000 € reserved: 50 000 € of surplus.  It asked to
    # reduce by 100 000 € and to increase by 150 000 €.  The platform refused the reduction
    # (committed), so the surplus is still 50 000 €: the increase is refused.  (Before, the
    # settlement accepted the reduction itself, then the increase from the 150 000 € it
    # freed, and the platform, refusing the reduction, ended at 250 000 € reserved.)
    res = settle(1, 1, (), REF, {}, (PendingRequest(2, "AG2", True, 15_000_000),), {},
                 {"AG2": 10_000_000},
                 platform_decisions=(platform(1, "AG2", 10_000_000, False),))
    assert [(x.request_id, x.accept) for x in res.decisions] == [(1, False), (2, False)]
    b = res.balances["AG2"]
    assert (b.deposited, b.reserved, b.balance) == (150_000_000, 100_000_000, 50_000_000)
    # accepted on the platform, the same reduction funds it: 150 000 € of surplus
    res = settle(1, 1, (), REF, {}, (PendingRequest(2, "AG2", True, 15_000_000),), {},
                 {"AG2": 0},
                 platform_decisions=(platform(1, "AG2", 10_000_000, True),))
    assert [(x.request_id, x.accept) for x in res.decisions] == [(1, True), (2, True)]
    b = res.balances["AG2"]
    assert (b.reserved, b.balance) == (150_000_000, 0)  # never more than deposited


def test_accepted_reduction_can_cover_a_negative_balance() -> None:
    # AG3 −14 520 m€ after trade 2; its reduction of 20.00 €, accepted on the platform,
    # moves 20 000 m€ back: −14 520 + 20 000 = 5 480 >= 0, so no reduction is imposed.
    res = settle(1, 1, (trade(2, -1000, 20, sell_unit="SELLU3"),), REF, {}, (), {},
                 platform_decisions=(platform(1, "AG3", 2000, True),))
    assert res.decisions[0].accept
    assert res.balances["AG3"].balance == 5_480
    assert res.reductions["AG3"] == 0
    assert res.reductions["AG4"] == 984


# ------------------------------------------------------------------ programs (R50)


def test_programs_per_unit_and_period() -> None:
    # a selling unit: + its sells − its buys; a buying unit: + its buys − its sells
    res = fresh(
        trade(1, 4510, 60),  # SELLU1 sells 6.0 to BUYU2
        trade(2, -1000, 20, sell_unit="SELLU3"),  # SELLU3 sells 2.0 to BUYU2
        trade(3, 4000, 15, sell_unit="BUYU2", buy_unit="SELLU1"),  # BUYU2 sells 1.5 back
        trade(4, 3000, 10, buy_unit="PTBUY4", contract=C2, rnd=2),  # other period
    )
    assert res.programs == {
        ("SELLU1", C1): 60 - 15,  # 4.5 MWh
        ("BUYU2", C1): 60 + 20 - 15,  # 6.5 MWh
        ("SELLU3", C1): 20,
        ("SELLU1", C2): 10,
        ("PTBUY4", C2): 10,
    }


# ------------------------------------------------------------------ properties


UNITS = sorted(REF.units)
TRADE = st.tuples(
    st.integers(-999_900, 999_900) | st.sampled_from([0, 1, -1, 50, 781_250]),
    st.integers(1, 9_990),
    st.sampled_from(UNITS), st.sampled_from(UNITS), st.sampled_from([C1, C2]))


def _tax(base: int, percent: str) -> int:
    """An independent half-up rounding (decimal) of base × percent / 100."""
    return int((Decimal(base) * Decimal(percent) / 100).quantize(Decimal(1), ROUND_HALF_UP))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TRADE, max_size=25))
def test_property_entries_balances_and_programs(raw: list[tuple[int, int, str, str, str]]
                                                ) -> None:
    trades = [trade(i + 1, p, q, sell_unit=s, buy_unit=b, contract=c,
                    rnd=1 if c == C1 else 2) for i, (p, q, s, b, c) in enumerate(raw)]
    before = {a: Balance(x.deposited * 10, x.guarantees * 10,
                         (x.deposited - x.guarantees) * 10) for a, x in REF.agents.items()}
    res = settle(2, 1, trades, REF, before, (), {})
    assert res.trades == len(trades)
    # the sync job's plain rows settle exactly as the engine's Trade events (any order)
    rows = [trade_row(t) for t in reversed(trades)]
    assert settle(2, 1, rows, REF, before, (), {}) == res
    per_trade: dict[int, list[Entry]] = {}
    for e in res.entries:
        per_trade.setdefault(e.trade_id, []).append(e)
    dcic = opic = 0
    for t in trades:
        es = per_trade.pop(t.trade_id)
        # exactly two sides, each split over its unit's owners
        assert {e.side for e in es} == {"BUY", "SELL"}
        for side, unit in (("BUY", t.buy_unit), ("SELL", t.sell_unit)):
            part = [e for e in es if e.side == side]
            assert [e.agent for e in part] == [a for a, _ in REF.units[unit].owners]
            assert sum(e.share_bp for e in part) == 10_000
            # the shares add up exactly to energy × |price|
            assert sum(e.base for e in part) == t.qty * abs(t.price)
            for e in part:
                # each part within one milli-euro of its exact share
                assert abs(e.base * 10_000 - t.qty * abs(t.price) * e.share_bp) < 10_000
                ag = REF.agents[e.agent]
                assert e.iee == _tax(e.base, ag.tax_iee)
                assert e.vat == _tax(e.base + e.iee, ag.tax_vat)
                assert e.total == e.base + e.iee + e.vat
            kinds = {e.kind for e in part}
            assert len(kinds) == 1
            if t.price != 0:
                payer = (t.price > 0) == (side == "BUY")
                assert kinds == {"OPIC" if payer else "DCIC"}
        if t.price != 0:  # one side collects what the other pays
            assert {e.kind for e in es} == {"DCIC", "OPIC"}
        dcic += sum(e.base for e in es if e.kind == "DCIC")
        opic += sum(e.base for e in es if e.kind == "OPIC")
    assert per_trade == {}  # no entry of a trade that was not given
    assert dcic == opic  # each trade's amount once as a right and once as an obligation
    # balances move by exactly the signed entries; deposited and reserved do not move
    delta: dict[str, int] = {}
    for e in res.entries:
        delta[e.agent] = delta.get(e.agent, 0) + e.signed
    for a, b in res.balances.items():
        assert b.balance == before[a].balance + delta.get(a, 0)
        assert (b.deposited, b.reserved) == (before[a].deposited, before[a].reserved)
        assert res.reductions[a] == (ceil(Fraction(-b.balance, 10)) if b.balance < 0 else 0)
    assert {h[0]: h[1] for h in res.history} == {a: d for a, d in delta.items()}
    # programs: per unit and period, the net energy in the unit's direction
    prog: dict[tuple[str, str], int] = {}
    for t in trades:
        for unit, selling in ((t.sell_unit, True), (t.buy_unit, False)):
            k = (unit, t.contract)
            prog[k] = prog.get(k, 0) + (t.qty if REF.units[unit].sells == selling else -t.qty)
    assert res.programs == prog


# ------------------------------------------------------------------ the fast paths


def _split_reference(total: int, shares: list[int]) -> list[int]:
    """Largest remainder written plainly: floors, then one milli-euro each to the largest
    remainders, ties to the earlier owner."""
    parts = [total * bp // 10_000 for bp in shares]
    order = sorted(range(len(shares)), key=lambda i: (-(total * shares[i] % 10_000), i))
    for i in order[:total - sum(parts)]:
        parts[i] += 1
    return parts


SHARES = [[6000, 4000], [4000, 6000], [5000, 5000], [1, 9999], [9999, 1],
          [3333, 3333, 3334], [3334, 3333, 3333], [2500, 2500, 2500, 2500], [7000, 2000, 1000]]


@pytest.mark.parametrize("shares", SHARES)
def test_split_is_the_largest_remainder(shares: list[int]) -> None:
    for total in [*range(0, 20_001), 999_999_999, 10**12 + 7]:
        assert split(total, shares) == _split_reference(total, shares), total


def _shared_ref() -> RefData:
    """Reference data with one selling unit per share pattern of SHARES (owners A0, A1, …
    with different taxes) and one buying unit."""
    from risk.refdata import load

    taxes = [("5.11269632", "21"), ("0", "21"), ("0", "23"), ("0", "0")]
    agents = [{"code": f"A{i}", "name": f"A{i}", "registered_from": "2018-01-01",
               "guarantees": "1000.00", "deposited": "1000.00",
               "tax": {"electricity_tax": taxes[i][0], "vat": taxes[i][1]},
               "represents": [f"A{j}" for j in range(4) if j != i]} for i in range(4)]
    units = [{"code": f"SU{n}", "kind": "sell", "area": "ES", "max_energy": "999.0",
              "responsible": "A0", "valid_from": "2018-01-01",
              "owners": [{"agent": f"A{i}", "share": f"{bp / 100:.2f}"}
                         for i, bp in enumerate(shares)]} for n, shares in enumerate(SHARES)]
    units.append({"code": "BU", "kind": "buy", "area": "ES", "max_energy": "999.0",
                  "responsible": "A1", "owners": [{"agent": "A1", "share": "100"}],
                  "valid_from": "2018-01-01"})
    return load({"agents": agents, "units": units})


def test_shared_units_in_settle_split_and_tax_like_the_plain_rules() -> None:
    # settle() splits two-owner units by rounding owner 0's part half up (the same as the
    # largest remainder when the shares make the whole) and computes the taxes with
    # pre-doubled integer constants: check both against split() and decimal rounding
    ref = _shared_ref()
    trades = []
    tid = 0
    for n in range(len(SHARES)):
        for price in (1, -1, 7, -13, 4510, -1000, 781_250, 0, 999_900):
            for qty in (1, 3, 7, 11, 60, 9_990):
                tid += 1
                trades.append(Trade.of(tid, tid, C1, 1, price, qty, "BUY", tid, "u", "A1", "BU",
                                    tid, "u", "A0", f"SU{n}"))
    res = settle(1, 1, trades, ref, {}, (), {})
    sells = [e for e in res.entries if e.side == "SELL"]
    assert len(sells) == sum(len(SHARES[int(t.sell_unit[2:])]) for t in trades)
    by_trade: dict[int, list[Entry]] = {}
    for e in sells:
        by_trade.setdefault(e.trade_id, []).append(e)
    for t in trades:
        shares = SHARES[int(t.sell_unit[2:])]
        es = by_trade[t.trade_id]
        assert [e.share_bp for e in es] == shares
        assert [e.base for e in es] == _split_reference(t.qty * abs(t.price), shares)
        for e in es:
            a = ref.agents[e.agent]
            assert e.iee == _tax(e.base, a.tax_iee)
            assert e.vat == _tax(e.base + e.iee, a.tax_vat)
    # and settle() gives what entries_of() gives trade by trade
    assert res.entries == [e for t in trades for e in entries_of(t, ref)]


def test_r53_6_each_trade_is_settled_with_the_reference_data_it_was_made_under() -> None:
    """R53.6: a change of owners or taxes has no effect on trades already matched.  Trades
    1 and 2 were made under the demo data, trade 3 after SELLU3 became AG3's alone and
    AG3's VAT 10 %, trade 4 after another change (AG3's VAT 5 %); the close's data are the
    last.  Each is settled with its own; trades given in any order."""
    import copy

    from risk.refdata import load

    def doc_with(owners: list[dict[str, str]], vat: str) -> RefData:
        d = copy.deepcopy(_DEMO_DOC)
        for u in d["units"]:
            if u["code"] == "SELLU3":
                u["owners"] = owners
        for a in d["agents"]:
            if a["code"] == "AG3":
                a.setdefault("tax", {})["vat"] = vat
        return load(d)

    r2 = doc_with([{"agent": "AG3", "share": "100"}], "10")
    r3 = doc_with([{"agent": "AG3", "share": "100"}], "5")
    ts = [trade(i, -1000, 20, sell_unit="SELLU3") for i in (4, 2, 3, 1)]
    res = settle(1, 1, ts, r3, {}, (), {}, trade_refs=[(3, r2), (1, REF), (4, r3)])
    sells = sorted((e.trade_id, e.agent, e.share_bp, e.base, e.vat)
                   for e in res.entries if e.side == "SELL")
    assert sells == [(1, "AG3", 6000, 12_000, 2_520), (1, "AG4", 4000, 8_000, 1_840),
                     (2, "AG3", 6000, 12_000, 2_520), (2, "AG4", 4000, 8_000, 1_840),
                     (3, "AG3", 10_000, 20_000, 2_000), (4, "AG3", 10_000, 20_000, 1_000)]
    # without trade_refs: everything with the data given (the close's), as before
    res = settle(1, 1, ts, REF, {}, (), {})
    assert {e.agent for e in res.entries if e.side == "SELL"} == {"AG3", "AG4"}


def test_r53_6_a_resting_sides_reference_data_override_those_of_its_trade() -> None:
    """R53.6, R49.1.4.3 b: a side whose resting order was admitted before a reload is
    settled with the reference data of its admission (the platform charged its obligation
    to those owners), the other side with those in force at the trade.  Trade 1: SELLU3's
    sell rested from before SELLU3 became AG3's alone (AG3 60 %, AG4 40 %); the aggressor
    BUYU2 is settled with the new data.  Trade 2: a later sell, admitted after the reload."""
    import copy

    from risk.refdata import load

    d = copy.deepcopy(_DEMO_DOC)
    for u in d["units"]:
        if u["code"] == "SELLU3":
            u["owners"] = [{"agent": "AG3", "share": "100"}]
    r2 = load(d)
    ts = [trade(1, -1000, 20, sell_unit="SELLU3"), trade(2, -1000, 10, sell_unit="SELLU3")]
    res = settle(1, 1, ts, r2, {}, (), {}, trade_refs=[(1, r2)],
                 side_refs={(1, "SELL"): REF})
    sells = sorted((e.trade_id, e.agent, e.share_bp) for e in res.entries if e.side == "SELL")
    assert sells == [(1, "AG3", 6000), (1, "AG4", 4000), (2, "AG3", 10_000)]
    assert res.reductions["AG4"] == 984  # 8 000 m€ + 23 % VAT: AG4's part, as charged


def test_settle_pauses_the_collector_and_leaves_no_cyclic_garbage(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    import sync.settle

    trades = [trade(i, p, q, sell_unit=s) for i, (p, q, s) in enumerate(
        [(4510, 60, "SELLU1"), (-1000, 20, "SELLU3"), (0, 30, "SELLU1")] * 200, start=1)]
    seen: list[bool] = []
    real = sync.settle._Ctx.entries

    def spy(self: sync.settle._Ctx, *args: Any) -> bool:
        seen.append(gc.isenabled())
        return real(self, *args)

    monkeypatch.setattr(sync.settle._Ctx, "entries", spy)
    assert gc.isenabled()
    gc.collect()
    fresh(*trades)
    assert seen and not any(seen)  # off while the entries are built
    assert gc.isenabled()  # and on again afterwards
    with pytest.raises(TypeError):  # also after a failure inside
        settle(1, 1, [None, None], REF, {}, (), {})  # type: ignore[list-item]
    assert gc.isenabled()
    gc.disable()  # a caller that has it off keeps it off
    try:
        seen.clear()
        res = fresh(*trades)
        assert seen and not gc.isenabled()
        del res
        assert gc.collect() == 0, "settle() left objects in reference cycles"
    finally:
        gc.enable()
