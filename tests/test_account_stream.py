"""The private stream's ``account`` messages (protocol.md, Streams: the account "after every
change"; R46.2.12: an agent sees its guarantees used and free at every instant).

Found by a black-box test of the product: the fan-out sent an account message only to the
agent whose order was reported or traded, never to the owners of the unit it was for
(R49.1.4.1: a represented agent's account carries the orders of its units), nor on an
auction bid's hold and release (R39.4.3.4), and the message lacked the documented
``auction_bids``.  The oracle here: after every command, the last account message an
officer following every agent received for each agent equals that agent's account as the
core has it now."""

from __future__ import annotations

from typing import Any

from test_auctions import AGENT, BUY, C1, C2, C3, SELL, SID, Mkt

from auctions.session import (
    CancelAuctionBid,
    ClearAuction,
    CloseAuction,
    OpenAuction,
    ReopenAfterAuction,
    ScheduleAuction,
    SubmitAuctionBid,
)
from engine.commands import CancelOrder, CloseContracts, NewOrder
from engine.events import Ack, OrderReport
from gateway.fanout import Hub, account_message
from risk.commands import RequestGuaranteeChange, SetGuarantees, SuspendAgent


class Follower:
    """A session following private streams: every message it is delivered."""

    def __init__(self) -> None:
        self.msgs: list[dict[str, Any]] = []

    def deliver(self, msg: dict[str, Any]) -> None:
        self.msgs.append(msg)


def figures(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k not in ("stream", "seq")}


class Watched:
    """The market, its fan-out, an officer following every agent and one following AG4."""

    def __init__(self) -> None:
        self.m = Mkt()
        self.hub = Hub(self.m.core)
        self.hub.rebuild(self.m.core)  # as a server does once it has recovered
        self.officer = Follower()
        self.ag4 = Follower()
        self.hub.officer_subs.add(self.officer)
        self.hub.private_subs["AG4"].add(self.ag4)
        risk = self.m.core.risk
        assert risk is not None
        self.agents = sorted(risk.accounts)
        # what a follower knows of each account: the figures it started from, then the
        # last account message it received
        self.known = {a: figures(account_message(self.m.core.account(a) or {}))
                      for a in self.agents}

    def do(self, cmd: Any) -> list[Any]:
        evs = self.m.do(cmd)
        self.hub.publish([(cmd, "x", evs)])
        for msg in self.officer.msgs:
            if msg.get("type") == "account":
                self.known[msg["agent"]] = figures(msg)
        self.officer.msgs.clear()
        for a in self.agents:
            now = figures(account_message(self.m.core.account(a) or {}))
            assert self.known[a] == now, f"after {cmd!r}: {a}'s account changed, untold"
        return evs

    def schedule(self) -> None:
        t = self.m.t
        self.do(ScheduleAuction(SID, (C1, C2), t + 60_000, t + 3_600_000, t + 3_900_000))
        self.do(OpenAuction(SID))


def test_the_owner_of_a_represented_unit_is_told_its_account() -> None:
    w = Watched()
    # bea (AG3) buys for PTBUY4, a unit AG4 owns whole: the hold is on AG4's account
    evs = w.do(NewOrder("bea", "AG3", "PTBUY4", C1, BUY, 4100, 30))
    oid = next(e.order_id for e in evs if type(e) is OrderReport)
    told = [m for m in w.ag4.msgs if m["type"] == "account"]
    assert told and told[-1]["debtor_orders"] != "0.00", w.ag4.msgs
    w.ag4.msgs.clear()
    w.do(CancelOrder("bea", "AG3", oid))
    told = [m for m in w.ag4.msgs if m["type"] == "account"]
    assert told and told[-1]["debtor_orders"] == "0.00", w.ag4.msgs
    # SELLU3 is AG3's and AG4's (60/40): a fill against it moves both
    w.do(NewOrder("bea", "AG3", "SELLU3", C1, SELL, 4000, 20))
    w.do(NewOrder("carlos", "AG2", "BUYU2", C1, BUY, 4000, 10))


def test_an_auction_bid_held_and_released_is_told_with_its_amount() -> None:
    w = Watched()
    w.schedule()
    evs = w.do(SubmitAuctionBid("carlos", "AG2", SID, "BUYU2", C1, "BUY", ((5000, 400),)))
    (bid,) = next(e for e in evs if type(e) is Ack).order_ids
    # R39.4.3.4: held at once, shown apart as auction_bids (and within debtor_orders)
    # (Watched.do checked that the message told equals the account as the core has it)
    assert w.known["AG2"]["auction_bids"] != "0.00", w.known["AG2"]
    assert w.known["AG2"]["debtor_orders"] == w.known["AG2"]["auction_bids"]
    w.do(CancelAuctionBid("carlos", "AG2", SID, bid))
    assert w.known["AG2"]["auction_bids"] == "0.00"


def test_every_account_change_is_told_through_a_day() -> None:
    """Orders on own and represented units, fills, an auction (bids held, the close, the
    clearing, the reopening), guarantee changes and requests, a suspension, a round close:
    after each, every account as its followers last heard it is the account as it is."""
    w = Watched()
    for user, unit, c, side, price, qty in (
            ("ana", "SELLU1", C1, SELL, 6000, 150), ("bea", "PTBUY4", C1, BUY, 3000, 40),
            ("bea", "SELLU3", C1, SELL, 5000, 20), ("carlos", "BUYU2", C1, BUY, 5000, 30),
            ("bea", "PTBUY4", C3, BUY, 4500, 10)):
        w.do(NewOrder(user, AGENT[user], unit, c, side, price, qty))
    w.schedule()
    w.do(SubmitAuctionBid("ana", "AG1", SID, "SELLU1", C1, "SELL", ((4000, 300),)))
    w.do(SubmitAuctionBid("carlos", "AG2", SID, "BUYU2", C1, "BUY", ((5000, 400),)))
    w.do(SubmitAuctionBid("bea", "AG3", SID, "PTBUY4", C1, "BUY", ((4800, 100),)))
    for cmd in (CloseAuction(SID), ClearAuction(SID), ReopenAfterAuction(SID)):
        w.do(cmd)
    w.do(SetGuarantees("sofia", "AG4", 500_000))
    w.do(RequestGuaranteeChange("rita", "AG4", False, 1_000))
    w.do(SuspendAgent("sofia", "AG3"))
    w.do(CloseContracts((C3,)))


def _reload(w: Watched, mutate: Any) -> None:
    import json

    from test_auctions import REFDATA

    from gateway.refdata_file import read_and_validate
    from risk.commands import LoadReferenceData

    doc = json.loads(read_and_validate(REFDATA)[0])
    mutate(doc)
    w.do(LoadReferenceData(json.dumps(doc)))


def test_the_owners_an_order_was_admitted_under_are_told_after_a_reload() -> None:
    """R49.1.4.3 b: an order stays charged to the owners of the reference data it was
    admitted under; a reload that gives its unit to another agent does not move the
    charge, and the cancel gives the hold back to the old owner, who is told (found by
    review: the fan-out looked at the unit's owners now)."""
    w = Watched()
    evs = w.do(NewOrder("bea", "AG3", "PTBUY4", C1, BUY, 4100, 30))
    oid = next(e.order_id for e in evs if type(e) is OrderReport)

    def move(doc: dict[str, Any]) -> None:
        for u in doc["units"]:
            if u["code"] == "PTBUY4":
                u["owners"] = [{"agent": "AG3", "share": "100"}]

    _reload(w, move)
    assert w.known["AG4"]["debtor_orders"] != "0.00"
    w.do(CancelOrder("bea", "AG3", oid))  # (Watched.do: every account told as it is)
    assert w.known["AG4"]["debtor_orders"] == "0.00"


def test_a_round_close_tells_no_account_whose_figures_did_not_change() -> None:
    """A round close moves the closed round's obligations into its own bucket (no figure
    of the account message changes): no account message for that (found by review: one
    for every agent that traded in the round, a sequence number used for nothing)."""
    w = Watched()
    w.do(NewOrder("ana", "AG1", "SELLU1", C1, SELL, 4000, 10))
    w.do(NewOrder("carlos", "AG2", "BUYU2", C1, BUY, 4000, 10))  # filled: an obligation
    carlos = Follower()
    w.hub.private_subs["AG2"].add(carlos)
    w.do(CloseContracts((C1,)))
    assert [m for m in carlos.msgs if m["type"] == "account"] == [], carlos.msgs
