"""Auction bids at the close of reception: the reception instant (R39.4.1.1), and the energy
of a unit's hourly and 15-minute bids summed per quarter-hour (R39.4.2.2, R39.4.3.2).

Reference data and helpers as in ``test_auctions.py``: SELLU1 (ana, AG1) is a selling unit
with a maximum of 200.0 MWh per hour, i.e. 200.0 MW in every quarter-hour; BUYU2 (carlos,
AG2) a buying unit.  Units: prices in cents of €/MWh, quantities in tenths of MWh, energies
per quarter-hour in tenths of MW, instants in ms UTC.
"""

from __future__ import annotations

from typing import Any

from test_auctions import BUY, C1, C2, C3, SELL, SID, Mkt, code, of

from auctions.session import (
    AuctionAllocation,
    CancelAuctionBid,
    ClearAuction,
    CloseAuction,
    DelayAuction,
)
from engine.commands import NewOrder
from engine.events import Reject, Trade
from risk.commands import SetProgram

# the four quarter-hours of C1 (PH-20270115-20: 19:00-20:00 local, 18:00-19:00 UTC)
QS = tuple(f"QH-20270115-{77 + i:03d}" for i in range(4))


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
