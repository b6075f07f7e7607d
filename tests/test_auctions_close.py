"""Auction bids at the close of reception: the reception instant (R39.4.1.1), the bids
verified again at the close (R39.4.1.5), and the energy of a unit's hourly and 15-minute
bids summed per quarter-hour (R39.4.2.2, R39.4.3.2).

Reference data and helpers as in ``test_auctions.py``: SELLU1 (ana, AG1) is a selling unit
with a maximum of 200.0 MWh per hour, i.e. 200.0 MW in every quarter-hour; BUYU2 (carlos,
AG2) a buying unit.  Units: prices in cents of €/MWh, quantities in tenths of MWh, energies
per quarter-hour in tenths of MW, instants in ms UTC.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_auctions import AGENT, BUY, C1, C2, C3, SELL, SID, Mkt, code, of

from auctions.session import (
    AuctionAllocation,
    CancelAuction,
    CancelAuctionBid,
    ClearAuction,
    CloseAuction,
    DelayAuction,
    SubmitAuctionBid,
)
from engine.commands import NewOrder
from engine.events import Reject, Trade
from risk.commands import SetProgram, SetSyncReduction

# the four quarter-hours of C1 (PH-20270115-20: 19:00-20:00 local, 18:00-19:00 UTC)
QS = tuple(f"QH-20270115-{77 + i:03d}" for i in range(4))
MAX = 2000  # SELLU1: 200.0 MW


def mkt() -> Mkt:
    m = Mkt((C1, C2, C3, *QS))
    m.schedule(contracts=(C1, C2, *QS))
    return m


def sell_continuously(m: Mkt, contract: str, qty: int) -> bool:
    """ana sells ``qty`` on the continuous market and carlos takes it; whether it traded
    (ana's order may be refused: then nothing is sent for carlos)."""
    evs = m.do(NewOrder("ana", "AG1", "SELLU1", contract, SELL, 100, qty))
    if of(evs, Reject):
        return False
    evs = m.do(NewOrder("carlos", "AG2", "BUYU2", contract, BUY, 100, qty))
    (tr,) = of(evs, Trade)
    assert tr.qty == qty
    return True


def closing_rejections(evs: list[Any]) -> dict[int, Reject]:
    return {e.order_id: e for e in of(evs, Reject)}


# ====================================================================== R39.4.1.1


def test_r39_4_1_1_a_bid_received_at_the_closing_instant_is_refused() -> None:
    """R39.4.1.1: the reception instant must be «anterior al momento de finalización del
    periodo de aceptación de ofertas».  The timekeeper's CloseAuction may be sequenced
    after bids stamped at or after ``closes_at``: those are refused all the same."""
    m = mkt()
    s = m.core.auctions.sessions[SID]
    m.t = s.closes_at - 2000  # the next command is stamped closes_at - 1000
    assert isinstance(m.bid("ana", "SELLU1", C1, "SELL", (4000, 100)), int)
    m.t = s.closes_at - 1000  # exactly closes_at
    r = m.bid("ana", "SELLU1", C1, "SELL", (4000, 100))
    assert code(r) == "AUCTION_NOT_OPEN" and "R39.4.1.1" in r.reason
    r = m.bid("carlos", "BUYU2", C1, "BUY", (5000, 100))  # closes_at + 1000
    assert code(r) == "AUCTION_NOT_OPEN"
    assert s.state == "OPEN" and len(s.bids) == 1


def test_r39_4_1_1_no_cancellation_after_the_closing_instant() -> None:
    """R39.5: bids «devendrán firmes en el momento de finalización del periodo de aceptación
    de ofertas»: a cancellation stamped after it, before the CloseAuction, is refused and the
    bid takes part in the clearing."""
    m = mkt()
    s = m.core.auctions.sessions[SID]
    a = m.bid("ana", "SELLU1", C1, "SELL", (4000, 100))
    m.bid("carlos", "BUYU2", C1, "BUY", (5000, 100))
    m.t = s.closes_at
    (rej,) = m.do(CancelAuctionBid("ana", "AG1", SID, a))
    assert code(rej) == "AUCTION_NOT_OPEN"
    assert s.bids[a].live
    m.do(CloseAuction(SID))
    evs = m.do(ClearAuction(SID))
    assert {(e.bid_id, e.qty) for e in of(evs, AuctionAllocation) if e.agent == "AG1"} == {
        (a, 100)}


def test_r39_4_1_1_a_delayed_close_moves_the_limit() -> None:
    m = mkt()
    s = m.core.auctions.sessions[SID]
    m.do(DelayAuction(SID, 60_000, "marta"))
    m.t = s.closes_at - 61_000  # the old closing instant: still receiving
    assert isinstance(m.bid("ana", "SELLU1", C1, "SELL", (4000, 100)), int)
    m.t = s.closes_at - 1000
    assert code(m.bid("ana", "SELLU1", C1, "SELL", (4000, 100))) == "AUCTION_NOT_OPEN"


# ====================================================================== hourly + 15-minute


def test_r39_4_2_2_hourly_and_quarter_hour_bids_summed_per_quarter() -> None:
    """R39.4.2.2 (the energy offered «para cada hora», checked per quarter-hour here as the
    continuous market's energy checks are): an hourly bid of 120.0 MWh puts 120.0 MW in each
    quarter of its hour; a 15-minute bid of 25.0 MWh puts 100.0 MW in its quarter.  Together
    220.0 MW > 200.0 in that quarter: refused, though each alone fits."""
    m = mkt()
    assert isinstance(m.bid("ana", "SELLU1", C1, "SELL", (4000, 1200)), int)
    r = m.bid("ana", "SELLU1", QS[1], "SELL", (4000, 250))
    assert code(r) == "ENERGY_MAX" and "220.0 MW" in r.reason
    assert isinstance(m.bid("ana", "SELLU1", QS[1], "SELL", (4000, 200)), int)  # 200.0
    # the hourly bid now finds that quarter full
    assert code(m.bid("ana", "SELLU1", C1, "SELL", (4000, 1))) == "ENERGY_MAX"
    # other quarters still have 80.0 MW: 20.0 MWh in 15 minutes
    assert code(m.bid("ana", "SELLU1", QS[2], "SELL", (4000, 201))) == "ENERGY_MAX"
    assert isinstance(m.bid("ana", "SELLU1", QS[2], "SELL", (4000, 200)), int)


def test_r39_4_2_2_quarter_hour_first_then_hourly() -> None:
    m = mkt()
    assert isinstance(m.bid("ana", "SELLU1", QS[3], "SELL", (4000, 250)), int)  # 100.0 MW
    r = m.bid("ana", "SELLU1", C1, "SELL", (4000, 1200))  # 100.0 + 120.0 in quarter 4
    assert code(r) == "ENERGY_MAX" and "220.0 MW" in r.reason
    assert isinstance(m.bid("ana", "SELLU1", C1, "SELL", (4000, 1000)), int)
    # a cancelled 15-minute bid gives its quarter back to the hour
    s = m.core.auctions.sessions[SID]
    (qb,) = [b.id for b in s.bids.values() if b.contract == QS[3]]
    m.do(CancelAuctionBid("ana", "AG1", SID, qb))
    assert isinstance(m.bid("ana", "SELLU1", C1, "SELL", (4000, 1000)), int)


def test_r39_4_3_2_buy_bids_of_a_selling_unit_summed_per_quarter() -> None:
    """R39.4.3.2, a buy of a selling unit: program − offered ≥ the minimum, with its hourly
    and 15-minute buy bids summed in each quarter; the quarters have programs of their own
    (the hour has particular quarters)."""
    m = mkt()
    m.do(SetProgram("sofia", "SELLU1", C1, 1000))  # 100.0 MW in every quarter
    m.do(SetProgram("sofia", "SELLU1", QS[0], 150))  # quarter 1: 15.0 MWh = 60.0 MW
    assert isinstance(m.bid("ana", "SELLU1", C1, "BUY", (3000, 500)), int)  # 50.0 MW
    assert code(m.bid("ana", "SELLU1", QS[0], "BUY", (3000, 26))) == "ENERGY_MIN"  # 60-50-10.4
    assert isinstance(m.bid("ana", "SELLU1", QS[0], "BUY", (3000, 25)), int)  # 60 - 50 - 10
    assert isinstance(m.bid("ana", "SELLU1", QS[1], "BUY", (3000, 125)), int)  # 100 - 50 - 50
    assert code(m.bid("ana", "SELLU1", C1, "BUY", (3000, 1))) == "ENERGY_MIN"


# ====================================================================== R39.4.1.5


def test_r39_4_1_5_a_bid_beyond_the_maximum_with_continuous_trades_is_rejected_at_close(
) -> None:
    """R39.4.1.5: «repetirá dicha verificación al cierre de la sesión ... teniendo en cuenta
    además las posibles energías casadas en cada periodo hasta ese momento en el mercado
    intradiario continuo, siendo definitivamente rechazadas o consideradas como válidas».
    SELLU1 (200.0 MWh) bids 150.0 MWh, then sells 150.0 MWh continuously in the same period:
    300.0 > 200.0, so the bid is rejected at the close (whole: the rule does not reduce it),
    privately to ana, and allocated nothing."""
    m = mkt()
    bid = m.bid("ana", "SELLU1", C1, "SELL", (4000, 1500))
    m.bid("carlos", "BUYU2", C1, "BUY", (5000, 1500))
    assert sell_continuously(m, C1, 1500)
    evs = m.do(CloseAuction(SID))
    (rej,) = of(evs, Reject)
    assert (rej.user, rej.agent, rej.order_id, rej.code) == ("ana", "AG1", bid, "ENERGY_MAX")
    assert "R39.4.1.5" in rej.reason and "300.0 MW" in rej.reason
    assert not m.core.auctions.sessions[SID].bids[bid].live
    evs = m.do(ClearAuction(SID))
    assert of(evs, AuctionAllocation) == []
    assert m.prog("SELLU1", C1) == {0}


def test_r39_4_1_5_earlier_bids_survive_later_ones_are_rejected() -> None:
    """In submission order, each against the unit's earlier surviving bids: 100.0 + 50.0
    fitted at reception; after 60.0 MWh sold continuously the first (160.0) still fits, the
    second (210.0) does not.  The running totals are rebuilt from the survivors."""
    m = mkt()
    first = m.bid("ana", "SELLU1", C1, "SELL", (4000, 1000))
    second = m.bid("ana", "SELLU1", C1, "SELL", (4100, 500))
    m.bid("carlos", "BUYU2", C1, "BUY", (5000, 2000))
    assert sell_continuously(m, C1, 600)
    rejected = closing_rejections(m.do(CloseAuction(SID)))
    assert set(rejected) == {second} and "210.0 MW" in rejected[second].reason
    s = m.core.auctions.sessions[SID]
    assert m.core.risk is not None
    quarters = m.core.risk.auction_quarters(C1)[0]
    assert {k: v for k, v in s.energy.items() if k[0] == "SELLU1"} == {
        ("SELLU1", "SELL", q): 1000 for q in quarters}
    evs = m.do(ClearAuction(SID))
    assert {(e.bid_id, e.qty) for e in of(evs, AuctionAllocation) if e.agent == "AG1"} == {
        (first, 1000)}
    assert m.prog("SELLU1", C1) == {1000}


def test_r39_4_3_4_guarantees_verified_again_at_close() -> None:
    """R39.4.3.4: the bid «será validada de nuevo con el balance de garantías ... en el
    momento de cierre de recepción de ofertas ..., no incorporándose al proceso de casación
    si alguno de los agentes no dispone de garantías suficientes».  AG1 (50 000.00 €, VAT
    21 %) bids 200.0 MWh at -206.61 €/MWh (49 999.62 € with VAT: it fits, and is held);
    then the settlement side communicates a reduction d) of 1 210.00 € (R49.1.4.2 step 2):
    at the close the bid no longer fits, is rejected, and its hold is released.

    (Corrected: this test lowered the limit with a continuous sell of 10.0 MWh at -100.00
    €/MWh placed after the bid; it was accepted only because the bid held nothing.  Since
    an accepted bid holds its value (R39.4.3.4) that order is refused at once, so the limit
    now drops by a reduction d) instead, which the bid cannot stop.)"""
    m = mkt()
    bid = m.bid("ana", "SELLU1", C1, "SELL", (-20661, 2000))
    assert isinstance(bid, int)
    assert m.core.account("AG1")["operative_limit"] == 38  # type: ignore[index]
    m.do(SetSyncReduction("sync", "AG1", 121_000))
    rejected = closing_rejections(m.do(CloseAuction(SID)))
    assert set(rejected) == {bid} and rejected[bid].code == "OPERATIVE_LIMIT"
    acct = m.core.account("AG1")
    assert acct is not None
    assert (acct["operative_limit"], acct["auction_bids"]) == (5_000_000 - 121_000, 0)


def test_r39_4_3_4_each_bid_taken_reduces_what_is_left_for_the_next_bids_and_trading(
        ) -> None:
    """R39.4.3.4: «Por cada oferta de compra incorporada al proceso de casación se anotará
    una reducción del balance de garantías excedentarias».  AG2 (100 000.00 €; IEE
    5.11269632 %, VAT 21 %) bids 300.0 MWh at 200.00 €/MWh in C1: 76 311.82 € with taxes,
    which fits and is held; the same bid in C2 no longer fits what is left (23 688.18 €),
    nor does a continuous buy of 25 437.27 €.  Cancelling the first bid gives its value
    back; cancelling the session gives back the other's."""
    m = Mkt()
    m.schedule()  # C1 and C2
    assert m.core.account("AG2")["operative_limit"] == 10_000_000  # type: ignore[index]
    b1 = m.bid("carlos", "BUYU2", C1, "BUY", (20000, 3000))
    assert isinstance(b1, int)
    acct = m.core.account("AG2")
    assert acct is not None
    # 6 000 000 c × 1.271863625472 = 7 631 181.75 c held
    assert (acct["auction_bids"], acct["operative_limit"]) == (7_631_182, 2_368_818)
    r = m.bid("carlos", "BUYU2", C2, "BUY", (20000, 3000))
    assert code(r) == "OPERATIVE_LIMIT" and "23688.18" in r.reason
    evs = m.do(NewOrder("carlos", "AG2", "BUYU2", C3, BUY, 20000, 1000))
    assert [e.code for e in of(evs, Reject)] == ["OPERATIVE_LIMIT"]
    m.do(CancelAuctionBid("carlos", "AG2", SID, b1))
    assert m.core.account("AG2")["operative_limit"] == 10_000_000  # type: ignore[index]
    b2 = m.bid("carlos", "BUYU2", C2, "BUY", (20000, 3000))
    assert isinstance(b2, int)
    assert m.core.account("AG2")["operative_limit"] == 2_368_818  # type: ignore[index]
    # a creditor bid (a buy at a negative price) holds nothing
    assert isinstance(m.bid("carlos", "BUYU2", C1, "BUY", (-500, 100)), int)
    assert m.core.account("AG2")["operative_limit"] == 2_368_818  # type: ignore[index]
    m.do(CancelAuction(SID, "incident"))
    acct = m.core.account("AG2")
    assert acct is not None
    assert (acct["auction_bids"], acct["operative_limit"]) == (0, 10_000_000)
    assert m.core.risk is not None and m.core.risk.bid_holds == {}


def test_r39_4_3_4_the_bids_verified_at_close_count_the_earlier_survivors() -> None:
    """R39.4.3.4 at the close: the bids are verified again in submission order, each
    against what the earlier surviving bids hold (not against its own hold).  Two bids of
    AG2 that fit together at reception (40 000.00 € of bids against 100 000.00 €) both
    survive a reduction d) that leaves room for both; a larger reduction rejects the
    later one only."""
    m = Mkt()
    m.schedule()
    b1 = m.bid("carlos", "BUYU2", C1, "BUY", (10000, 2000))  # 25 437.27 €
    b2 = m.bid("carlos", "BUYU2", C2, "BUY", (10000, 2000))
    assert isinstance(b1, int) and isinstance(b2, int)
    # 50 874.55 € held; a reduction of 49 000.00 € leaves 51 000.00 € for both
    m.do(SetSyncReduction("sync", "AG2", 4_900_000))
    assert m.core.account("AG2")["operative_limit"] == 10_000_000 - 4_900_000 - 5_087_455  # type: ignore[index]
    m.do(SetSyncReduction("sync", "AG2", 5_000_000))  # 50 000.00 €: room for one
    rejected = closing_rejections(m.do(CloseAuction(SID)))
    assert set(rejected) == {b2} and rejected[b2].code == "OPERATIVE_LIMIT"
    acct = m.core.account("AG2")
    assert acct is not None
    # 2 000 000 c × 1.271863625472 = 2 543 727.25 c still held by b1
    assert acct["auction_bids"] == 2_543_728
    assert acct["operative_limit"] == 10_000_000 - 5_000_000 - 2_543_728


# ====================================================================== a reference model

CONTRACTS = (C1, *QS)


def covers(contract: str, qty: int) -> dict[int, int]:
    """The quarters (0-3 of C1's hour) a contract covers and what ``qty`` weighs in each."""
    if contract == C1:
        return dict.fromkeys(range(4), qty)
    return {QS.index(contract): 4 * qty}


actions = st.lists(st.one_of(
    st.tuples(st.just("bid"), st.sampled_from(CONTRACTS), st.sampled_from(("SELL", "BUY")),
              st.integers(1, 1200)),
    st.tuples(st.just("trade"), st.sampled_from(CONTRACTS), st.just("SELL"),
              st.integers(1, 600)),
), max_size=14)


@given(actions)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_bids_at_reception_and_at_close_against_a_reference_model(
        steps: list[tuple[str, str, str, int]]) -> None:
    """A selling unit (200.0 MW) bids hourly and 15-minute, sells and buys, and trades
    continuously in between.  Model: per quarter, traded + the same side's accepted bids
    (each weighed per quarter) + the new bid ≤ 200.0 for sells, traded − buys ≥ 0 for buys
    (R39.4.2.2, R39.4.3.2); at the close the same again in submission order, against what
    was traded by then (R39.4.1.5)."""
    m = mkt()
    traded = [0, 0, 0, 0]
    bids: list[tuple[int, str, dict[int, int]]] = []  # (id, side, per quarter)

    def fits(side: str, w: dict[int, int], accepted: list[tuple[int, str, dict[int, int]]]
             ) -> bool:
        for q, x in w.items():
            same = sum(b[2].get(q, 0) for b in accepted if b[1] == side)
            if side == "SELL" and traded[q] + same + x > MAX:
                return False
            if side == "BUY" and traded[q] - same - x < 0:
                return False
        return True

    for kind, contract, side, qty in steps:
        w = covers(contract, qty)
        if kind == "trade":
            expect = all(traded[q] + x <= MAX for q, x in w.items())
            assert sell_continuously(m, contract, qty) is expect
            if expect:
                for q, x in w.items():
                    traded[q] += x
            continue
        r = m.do(SubmitAuctionBid("ana", AGENT["ana"], SID, "SELLU1", contract, side,
                                  ((4000, qty),)))
        (ev,) = r
        if fits(side, w, bids):
            assert type(ev) is not Reject, ev
            bids.append((ev.order_ids[0], side, w))
        else:
            assert code(ev) in ("ENERGY_MAX", "ENERGY_MIN")
    survivors: list[tuple[int, str, dict[int, int]]] = []
    for b in bids:
        if fits(b[1], b[2], survivors):
            survivors.append(b)
    rejected = closing_rejections(m.do(CloseAuction(SID)))
    assert set(rejected) == {b[0] for b in bids} - {b[0] for b in survivors}
    s = m.core.auctions.sessions[SID]
    assert {b.id for b in s.bids.values() if b.live} == {b[0] for b in survivors}


def test_r50_the_phf_after_the_auction_includes_its_result() -> None:
    """SELLU1 sells 100.0 MWh in the auction: its base program goes 0 → 100.0 at the
    clearing.  The system operators' PHF after the session («del resultado de sesiones de
    subastas intradiarias ... realizadas hasta el momento», R50) says 100.0: the program is
    100.0, not 200.0 (the energy checks read this figure: tests/test_risk_programs.py)."""
    m = mkt()
    m.bid("ana", "SELLU1", C1, "SELL", (4000, 1000))
    m.bid("carlos", "BUYU2", C1, "BUY", (5000, 1000))
    m.do(CloseAuction(SID))
    m.do(ClearAuction(SID))
    assert m.prog("SELLU1", C1) == {1000}
    m.do(SetProgram("sofia", "SELLU1", C1, 1000))
    assert m.prog("SELLU1", C1) == {1000}
