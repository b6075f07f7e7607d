"""The fan-out's books are mirrored only once someone asks for them (gateway/fanout.py,
``Hub.book``): a contract nobody subscribed to or queried costs the single writer nothing
per change (docs/performance.md, WebSocket: the saturated rate 7–8 % higher).  The oracle: a hub
that mirrors a book from the start (as every book was before).  Whenever the lazy hub is
first asked for the book, in the middle of any flow of entries, cancels and fills, its
snapshot is the eager hub's, and every delta a subscriber gets from then on is the same
(R46.2.8: the anonymous local order list, by price and time)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_auctions import AGENT, BUY, C1, C2, SELL, Mkt

from engine.commands import CancelOrder, NewOrder
from engine.events import OrderReport
from gateway.fanout import Hub

DEPTH = 3  # small, so that entries enter and leave the view often

# (user, unit, side) of the demo reference data
TRADERS = (("ana", "SELLU1", SELL), ("bea", "SELLU3", SELL), ("carlos", "BUYU2", BUY))


class BookFollower:
    """A subscriber of book streams: every message it is delivered, without its seq (the
    lazy hub's stream starts at its first request, the eager one's at the start)."""

    def __init__(self) -> None:
        self.msgs: list[dict[str, Any]] = []

    def deliver_book(self, contract: str, msg: dict[str, Any]) -> None:
        self.msgs.append({k: v for k, v in msg.items() if k != "seq"})


def subscribe(hub: Hub, contract: str, who: BookFollower) -> dict[str, Any]:
    """As a session subscribes (gateway/session.py): ``Hub.follow`` (the mirror made if need
    be), then the snapshot."""
    hub.follow("book", contract, who, True)
    snap = hub.book_snapshot(contract)
    return {k: v for k, v in snap.items() if k != "seq"}


step = st.one_of(
    st.tuples(st.just("new"), st.integers(0, len(TRADERS) - 1), st.sampled_from((C1, C2)),
              st.integers(395, 405), st.integers(1, 12)),
    st.tuples(st.just("cancel"), st.integers(0, 10_000)),
    st.just(("toggle",)),  # the lazy hub's subscriber subscribes, or unsubscribes
)


def without_seq(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k != "seq"}


@settings(max_examples=80, deadline=None)
@given(flow=st.lists(step, min_size=1, max_size=60))
def test_a_book_asked_for_at_any_point_is_the_one_mirrored_from_the_start(
        flow: list[tuple[Any, ...]]) -> None:
    m = Mkt()
    eager, lazy = Hub(m.core, DEPTH), Hub(m.core, DEPTH)
    for hub in (eager, lazy):
        hub.rebuild(m.core)  # as a server does once it has recovered
    ref, got = BookFollower(), BookFollower()
    subscribe(eager, C1, ref)
    resting: list[tuple[str, int]] = []  # (user, order id)
    watching = asked = False
    for s in flow + [("toggle",)] * 2:  # ends asked for, watched or not
        if s[0] == "toggle":
            if watching:  # the same deltas as the eager hub's since the subscription
                assert got.msgs == ref.msgs
                lazy.follow("book", C1, got, False)
            else:
                if not asked:
                    assert C1 not in lazy.books  # nothing kept for a book nobody asked for
                assert subscribe(lazy, C1, got) == without_seq(eager.book_snapshot(C1))
                asked = True
            ref.msgs.clear()
            got.msgs.clear()
            watching = not watching
            continue
        if s[0] == "new":
            _, t, contract, price, qty = s
            user, unit, side = TRADERS[t]
            cmd: Any = NewOrder(user, AGENT[user], unit, contract, side, price * 10, qty)
        else:
            if not resting:
                continue
            user, oid = resting.pop(s[1] % len(resting))
            cmd = CancelOrder(user, AGENT[user], oid)
        evs = m.do(cmd)
        for ev in evs:
            if type(ev) is OrderReport and ev.action == "ADDED" and ev.status == "ACTIVE":
                resting.append((ev.user, ev.order_id))
        batch = [(cmd, "x", evs)]
        eager.publish(batch)
        lazy.publish(batch)
        if not watching:
            assert got.msgs == []  # an unsubscribed session is sent nothing
    assert without_seq(lazy.book_snapshot(C1)) == without_seq(eager.book_snapshot(C1))
    # C2 traded all along and nobody asked for it: the lazy hub kept nothing of it
    assert C2 not in lazy.books


def test_a_book_stream_starts_at_zero_when_first_asked_for_and_counts_on() -> None:
    """The first snapshot of a book nobody asked for before has seq 0 whatever happened to
    the book before; each delta after it is the next seq (protocol.md, Streams)."""
    m = Mkt()
    hub = Hub(m.core, DEPTH)
    hub.rebuild(m.core)
    for price in (4000, 4010, 4020):
        cmd = NewOrder("ana", "AG1", "SELLU1", C1, SELL, price, 5)
        hub.publish([(cmd, "x", m.do(cmd))])
    assert C1 not in hub.books
    who = BookFollower()
    hub.follow("book", C1, who, True)  # the mirror made from the engine's book now
    assert C1 in hub.books and who in hub.book_subs[C1]
    snap = hub.book_snapshot(C1)
    assert snap["seq"] == 0
    assert [e["price"] for e in snap["asks"]] == ["40.00", "40.10", "40.20"]
    cmd = NewOrder("ana", "AG1", "SELLU1", C1, SELL, 3990, 5)
    hub.publish([(cmd, "x", m.do(cmd))])
    assert hub.books[C1].seq == 2  # the new best ADDed, the fourth pushed out of the view
    assert [(x["action"], x["price"]) for x in who.msgs] == [("ADD", "39.90"),
                                                              ("REMOVE", "40.20")]
