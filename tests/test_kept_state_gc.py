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
