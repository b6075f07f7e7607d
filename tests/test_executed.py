"""The memory of the commands executed under an AMQP request's key (gateway/executed.py):
bounded by count and by items, recovered entries turned into answers, digests."""

from __future__ import annotations

from engine.commands import Tick
from gateway.executed import Executed, answer_items, request_digest
from gateway.journal import Record

D1, D2 = bytes(16), b"\x01" * 16


def rec(seq: int, user: str, mid: str, digest: bytes = D1) -> Record:
    return Record(seq, 1_800_000_000_000 + seq, user, Tick(), (mid, digest))


def test_recovered_entries_weigh_their_events_and_are_keyed_by_user_and_message_id() -> None:
    ex = Executed(limit=10, limit_items=100)
    ex.recovered(rec(1, "ana", "m-1"), ["e"] * 4)
    ex.recovered(rec(2, "carlos", "m-1", D2), ["e"])
    assert ex.items == 5 + 2 and len(ex) == 2
    a, c = ex.get("ana", "m-1"), ex.get("carlos", "m-1")
    assert a is not None and c is not None
    assert (a.digest, a.events, a.answer) == (D1, ["e"] * 4, None)
    assert c.digest == D2 and ex.get("bea", "m-1") is None


def test_an_answered_recovered_entry_keeps_the_answer_and_is_weighed_again() -> None:
    ex = Executed(limit=10, limit_items=100)
    ex.recovered(rec(1, "ana", "m-1"), ["e"] * 9)
    e = ex.get("ana", "m-1")
    assert e is not None and ex.items == 10
    answer = {"type": "ack", "order_ids": [7], "reports": [{}]}
    ex.answered(e, answer)
    assert (e.answer, e.events, e.items, ex.items) == (answer, None, 3, 3)
    assert answer_items(answer) == 3


def test_the_oldest_are_forgotten_first_by_count_and_by_items() -> None:
    ex = Executed(limit=3, limit_items=1000)
    for i in range(5):
        ex.put("ana", (f"m-{i}", D1), {"type": "ack"})
    assert [k[1] for k in ex.entries] == ["m-2", "m-3", "m-4"] and ex.items == 3
    assert ex.get("ana", "m-2") is not None  # used: the most recent now
    ex.put("ana", ("m-5", D1), {"type": "ack"})
    assert [k[1] for k in ex.entries] == ["m-4", "m-2", "m-5"]
    ex.limit, ex.limit_items = 10, 6
    ex.put("ana", ("big", D1), {"type": "ack", "order_ids": [1, 2, 3]})  # weighs 4
    assert [k[1] for k in ex.entries] == ["m-2", "m-5", "big"] and ex.items == 6
    ex.put("ana", ("big", D2), {"type": "ack"})  # the same key again: replaced, not added
    assert [k[1] for k in ex.entries] == ["m-2", "m-5", "big"] and ex.items == 3
    e = ex.get("ana", "big")
    assert e is not None and e.digest == D2


def test_the_digest_tells_the_body_and_the_content_type_apart() -> None:
    j = request_digest("application/json", b'{"a":1}')
    assert len(j) == 16 and j == request_digest("application/json", b'{"a":1}')
    assert j != request_digest("application/json", b'{"a":2}')
    assert j != request_digest("application/msgpack", b'{"a":1}')
    # the separator keeps the two parts apart
    assert request_digest("a", b"b\nc") != request_digest("a\nb", b"c")
