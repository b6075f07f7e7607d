"""The memory of the commands executed under an AMQP request's key (gateway/executed.py):
bounded by count and by items, recovered entries turned into answers, digests."""

from __future__ import annotations

from engine.commands import CreateContract, NewOrder, OpenContracts, Tick
from engine.events import Reject
from engine.model import Side, Validity
from gateway.core import Core
from gateway.executed import Executed, answer_items, request_digest
from gateway.journal import Record
from gateway.session import command_answer

CID = "PH-20270115-10"
T0 = 1_800_000_000_000

D1, D2 = bytes(16), b"\x01" * 16


def rejects(n: int, user: str = "ana") -> list[Reject]:
    """``n`` events of the kind an answer is made of."""
    return [Reject((T0, user, "A1", None, None, None, "RATE_LIMIT", "slow down"))
            for _ in range(n)]


def rec(seq: int, user: str, mid: str, digest: bytes = D1) -> Record:
    return Record(seq, 1_800_000_000_000 + seq, user, Tick(), (mid, digest))


def test_recovered_entries_weigh_their_events_and_are_keyed_by_user_and_message_id() -> None:
    ex = Executed(limit=10, limit_items=100)
    ex.recovered(rec(1, "ana", "m-1"), rejects(4))
    ex.recovered(rec(2, "carlos", "m-1", D2), rejects(1, "carlos"))
    assert ex.items == 5 + 2 and len(ex) == 2
    a, c = ex.get("ana", "m-1"), ex.get("carlos", "m-1")
    assert a is not None and c is not None
    assert (a.digest, a.events, a.answer) == (D1, rejects(4), None)
    assert c.digest == D2 and ex.get("bea", "m-1") is None


def test_an_answered_recovered_entry_keeps_the_answer_and_is_weighed_again() -> None:
    ex = Executed(limit=10, limit_items=100)
    ex.recovered(rec(1, "ana", "m-1"), rejects(9))
    e = ex.get("ana", "m-1")
    assert e is not None and ex.items == 10
    answer = {"type": "ack", "order_ids": [7], "reports": [{}]}
    ex.answered("ana", "m-1", answer)
    e = ex.get("ana", "m-1")
    assert e is not None
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


def test_a_recovered_command_weighs_its_answer_not_every_event_it_caused() -> None:
    """At recovery a command's entry keeps the events its answer is made of and weighs
    what they weigh, as the live memory weighs the answer: the GTD expiries the engine runs
    before the first command of their instant (here 2,000 orders sharing one instant, the
    bound scaled down to 3,000 items) made one entry weigh more than the whole memory, and
    every command, that one included, was forgotten (a redelivery then executed again)."""
    core = Core(risk=False)
    core.apply(CreateContract(CID, T0 + 86_400_000), T0)
    core.apply(OpenContracts((CID,)), T0)
    live, recovered = Executed(limit_items=3_000), Executed(limit_items=3_000)
    seq = 0

    def keyed(user: str, mid: str, cmd: NewOrder, ts: int) -> None:
        nonlocal seq
        seq += 1
        events = core.apply(cmd, ts)
        key = (mid, bytes([seq]) * 16)
        live.put(user, key, command_answer("order_entry", cmd.req_id, user, events))
        recovered.recovered(Record(seq, ts, user, cmd, key), events)

    keyed("u9", "m-1", NewOrder("u9", "A9", "U9", CID, Side.BUY, 1000, 10, req_id="r1"),
          T0 + 1)
    expiry = T0 + 10_000
    for i in range(2_000):
        core.apply(NewOrder("u1", "A1", "U1", CID, Side.SELL, 9000 + i % 50, 10,
                            validity=Validity.GTD, expiry=expiry), T0 + 2)
    keyed("u2", "m-2", NewOrder("u2", "A2", "U2", CID, Side.BUY, 1000, 10, req_id="r2"),
          expiry)
    for mid, user in (("m-1", "u9"), ("m-2", "u2")):
        got, want = recovered.get(user, mid), live.get(user, mid)
        assert got is not None and want is not None, f"{mid} forgotten at recovery"
        assert got.events is not None and want.answer is not None
        # what is kept gives the very answer the live server gave
        req_id = "r1" if mid == "m-1" else "r2"
        assert command_answer("order_entry", req_id, user, got.events) == want.answer
        assert got.items <= 1 + want.items
    assert recovered.items <= live.items
