"""The fan-out's mirror of a book (``gateway.fanout.BookMirror``) against a plain model.

The mirror turns the public changes of a book into the deltas of its depth-limited view
(protocol: a book stream is a snapshot of the best ``depth`` entries per side, then ADD,
UPDATE and REMOVE of the entries of that view).  The model below keeps every entry of a side
in one sorted list, keyed by (best price first, then time priority), and reads each entry's
place with a binary search: obviously right, and slower.  Random streams of public changes,
as the engine makes them (entry ids only grow; a new entry goes to the back of its price),
must give the same deltas, snapshots and entries from both.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedList

from gateway.fanout import BookMirror

Delta = tuple[str, int, str, int, int]


class ModelMirror:
    """Every entry of a side in one sorted list: place = index in the list."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.entries: dict[int, tuple[str, int, int]] = {}
        self.sides = {"BUY": SortedList(), "SELL": SortedList()}

    @staticmethod
    def _key(side: str, price: int, entry: int) -> tuple[int, int]:
        return (-price if side == "BUY" else price, entry)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side in ("BUY", "SELL"):
            lst = []
            for _, entry in self.sides[side][: self.depth]:
                _, price, qty = self.entries[entry]
                lst.append({"entry": entry, "price": price, "quantity": qty})
            out["bids" if side == "BUY" else "asks"] = lst
        return out

    def apply(self, action: str, entry: int, side: str, price: int, qty: int) -> list[Delta]:
        sl = self.sides[side]
        d = self.depth
        out: list[Delta] = []
        if action == "ADD":
            key = self._key(side, price, entry)
            sl.add(key)
            self.entries[entry] = (side, price, qty)
            if sl.index(key) < d:
                out.append(("ADD", entry, side, price, qty))
                if len(sl) > d:
                    _, pushed = sl[d]
                    out.append(("REMOVE", pushed, side, self.entries[pushed][1], 0))
            return out
        old = self.entries.get(entry)
        if old is None:
            return out
        key = self._key(side, old[1], entry)
        rank = sl.index(key)
        if action == "UPDATE" and qty > 0:
            self.entries[entry] = (side, old[1], qty)
            if rank < d:
                out.append(("UPDATE", entry, side, old[1], qty))
            return out
        sl.remove(key)
        del self.entries[entry]
        if rank < d:
            out.append(("REMOVE", entry, side, old[1], 0))
            if len(sl) >= d:
                _, came = sl[d - 1]
                _, p2, q2 = self.entries[came]
                out.append(("ADD", came, side, p2, q2))
        return out


# a step: (what, side, price offset, quantity, which live entry)
STEP = st.tuples(st.sampled_from(["ADD", "ADD", "ADD", "UPDATE", "REMOVE", "REMOVE", "FILL"]),
                 st.sampled_from(["BUY", "SELL"]), st.integers(0, 6), st.integers(0, 50),
                 st.integers(0, 10_000))


@settings(max_examples=400, deadline=None)
@given(depth=st.integers(1, 6), steps=st.lists(STEP, max_size=120))
def test_mirror_gives_the_models_deltas_and_snapshots(depth: int,
                                                      steps: list[tuple[Any, ...]]) -> None:
    mirror, model = BookMirror("C", depth), ModelMirror(depth)
    live: dict[str, list[int]] = {"BUY": [], "SELL": []}
    next_entry = 1
    for what, side, off, qty, pick in steps:
        if what == "ADD" or not live[side]:
            # bids below 100, asks from 100: a resting book is never crossed
            price = 99 - off if side == "BUY" else 100 + off
            args: tuple[str, int, str, int, int] = ("ADD", next_entry, side, price, qty + 1)
            live[side].append(next_entry)
            next_entry += 1
        else:
            entry = live[side][pick % len(live[side])]
            price = model.entries[entry][1]
            if what == "UPDATE":  # a partial fill: the entry shows what is left
                args = ("UPDATE", entry, side, 0, qty + 1)
            elif what == "FILL":  # a fill that left nothing: an UPDATE to zero
                args = ("UPDATE", entry, side, 0, 0)
                live[side].remove(entry)
            else:
                args = ("REMOVE", entry, side, price, 0)
                live[side].remove(entry)
        assert mirror.apply(*args) == model.apply(*args), args
        assert mirror.snapshot() == model.snapshot()
        assert mirror.entries == model.entries
    # a change of an entry nobody knows is nothing
    assert mirror.apply("REMOVE", next_entry + 5, "BUY", 99, 0) == []
    assert mirror.apply("UPDATE", next_entry + 5, "SELL", 100, 3) == []


def test_a_deep_change_leaves_the_view_alone_and_a_top_one_shifts_it() -> None:
    m = BookMirror("C", 2)
    assert m.apply("ADD", 1, "SELL", 101, 5) == [("ADD", 1, "SELL", 101, 5)]
    assert m.apply("ADD", 2, "SELL", 102, 5) == [("ADD", 2, "SELL", 102, 5)]
    assert m.apply("ADD", 3, "SELL", 103, 5) == []  # third best: outside a view of 2
    assert m.apply("ADD", 4, "SELL", 101, 7) == [("ADD", 4, "SELL", 101, 7),
                                                 ("REMOVE", 2, "SELL", 102, 0)]
    assert m.apply("REMOVE", 1, "SELL", 101, 0) == [("REMOVE", 1, "SELL", 101, 0),
                                                    ("ADD", 2, "SELL", 102, 5)]
    assert m.snapshot()["asks"] == [{"entry": 4, "price": 101, "quantity": 7},
                                    {"entry": 2, "price": 102, "quantity": 5}]
    assert m.apply("UPDATE", 3, "SELL", 0, 1) == []  # outside the view: kept, not sent
    assert m.entries[3] == ("SELL", 103, 1)
