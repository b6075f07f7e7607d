"""What the server keeps for long is invisible to the cyclic garbage collector.

The server runs with automatic collection on (``gateway/server.py``), and every full
collection walks every tracked container the process holds, holding the interpreter for
the whole walk.  The state that grows with trading, the trades of rounds not yet settled
(``SyncJob.trades``) and each agent's latest trades (``Hub.trades_by_agent``), is kept as
plain tuples and dicts of ints and strings, which the collector does not track.  Kept as
the engine's ``Trade`` events (a tuple subclass, never untracked) and with the aggressor's
enum in the dicts, they were 84 % of the tracked objects after 300,000 operations of the
engine benchmark's flow, and a full collection took 134–193 ms (docs/performance.md).
"""

from __future__ import annotations

import gc

from engine.events import Trade
from engine.model import Side
from gateway.core import Core
from gateway.fanout import Hub, _own_trade
from sync.job import SyncJob
from sync.settle import trade_row


def _trade(tid: int = 7, aggressor: Side = Side.BUY) -> Trade:
    return Trade.of(1_800_000_000_000, tid, "PH-20270115-10", 3, 4510, 60, aggressor, 101, "ana",
                 "AG1", "BUYU2", 102, "bea", "AG2", "SELLU1")


def test_a_trade_event_stays_tracked_and_its_row_does_not() -> None:
    t = _trade()
    row = trade_row(t)
    gc.collect()
    assert gc.is_tracked(t)  # why the rows exist: a tuple subclass is never untracked
    assert not gc.is_tracked(row)
    assert type(row) is tuple and row == tuple(t)  # the same fields, the same order
    assert type(row[6]) is str and row[6] == "BUY"


def test_the_sync_job_keeps_trades_untracked() -> None:
    job = SyncJob(Core(), None)  # type: ignore[arg-type]  # observe() needs no store
    trades = [_trade(i, Side.BUY if i % 2 else Side.SELL) for i in range(1, 51)]
    job.observe([(None, "ana", trades)])
    gc.collect()
    kept = job.trades[3]
    assert kept == [tuple(t) for t in trades]
    assert not any(gc.is_tracked(r) for r in kept)


def test_an_agents_kept_trades_are_untracked_dicts() -> None:
    hub = Hub(Core())
    hub.publish([(None, "ana", [_trade(1), _trade(2, Side.SELL)])])
    for agent, side in (("AG1", "BUY"), ("AG2", "SELL")):
        kept = list(hub.trades_by_agent[agent])
        assert [m["trade_id"] for m in kept] == [1, 2]
        assert {m["side"] for m in kept} == {side}
        assert [m["aggressor"] for m in kept] == ["BUY", "SELL"]
        assert not any(gc.is_tracked(m) for m in kept)
    # the private message and the kept one are the same text on the wire
    msg = _own_trade(_trade(3, Side.SELL), "buy")
    assert type(msg["aggressor"]) is str and msg["aggressor"] == Side.SELL


def test_the_recent_public_trades_are_untracked_dicts() -> None:
    from engine.events import PublicTrade

    hub = Hub(Core())
    ev = tuple.__new__(PublicTrade, (1_800_000_000_000, "PH-20270115-10", 1, 7, 4510, 60,
                                     Side.SELL, 3, 0))
    hub.publish([(None, "ana", [ev])])
    kept = list(hub.public_trades["PH-20270115-10"])
    assert [(m["trade_id"], m["price"], m["aggressor"]) for m in kept] == [(7, "45.10", "SELL")]
    assert not gc.is_tracked(kept[0])


def test_the_answers_kept_for_repeats_are_untracked_and_given_back_as_they_were() -> None:
    # gateway/executed.py: the last 20,000 answers to AMQP commands with a message_id; as
    # dicts and lists they were nearly all the tracked objects of a server at 2,000
    # requests/s, and each full collection held every request in flight for 54-72 ms
    from gateway.executed import Executed

    ex = Executed(limit=100, limit_items=10_000)
    answers = [{"type": "ack", "kind": "order_entry", "req_id": i, "order_ids": [i, i + 1],
                "reports": [{"order_id": i, "status": "ACTIVE", "price": "45.10"}],
                "flag": True, "none": None} for i in range(50)]
    for i, a in enumerate(answers):
        ex.put("ana", (f"m-{i}", bytes(16)), a)
    gc.collect()
    assert not any(gc.is_tracked(e) for e in ex.entries.values())
    got = [ex.get("ana", f"m-{i}") for i in range(50)]
    assert [e.answer if e is not None else None for e in got] == answers
    # the copy given back is the caller's to change: the kept answer stays as it was
    first = got[0]
    assert first is not None and first.answer is not None
    first.answer["order_ids"].append(99)
    assert first.answer == answers[0]


def test_an_answer_orjson_cannot_encode_is_kept_as_it_is() -> None:
    from gateway.executed import Executed

    ex = Executed()
    odd = {"type": "ack", "big": 2**70, "text": "\udcff"}
    ex.put("ana", ("m-1", bytes(16)), odd)
    e = ex.get("ana", "m-1")
    assert e is not None and e.answer == odd
