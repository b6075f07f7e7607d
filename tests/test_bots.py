"""The simulated traders (clients/bots.py): backing off after limit refusals, and cleaning
up when stopped, also while the connection is being re-established.  The demo bots trading
together are in tests/test_sdk.py (``test_demo_bots_trade_and_stop_cleanly``)."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_sdk import C1, C2, Env, eventually

from clients.bots import BotConfig, LinkedBasketTrader, MarketMaker, StopResult, run_bots
from clients.sdk import Answer, Order


class RefusingClient:
    """Just enough of the SDK's Client for MarketMaker.step: one live quote, and every
    modification (and entry) refused with ``code``."""

    def __init__(self, orders: list[Order], code: str) -> None:
        self.orders = {o.order_id: o for o in orders}
        self.books: dict[str, Any] = {}
        self.code = code
        self.modifies = 0
        self.places = 0

    def _refusal(self) -> Answer:
        return Answer(type="reject", ok=False, code=self.code, reason="refused")

    async def modify(self, order: Any, **kw: Any) -> Answer:
        self.modifies += 1
        return self._refusal()

    async def place(self, *a: Any, **kw: Any) -> Answer:
        self.places += 1
        return self._refusal()


def quoting_market_maker(code: str) -> tuple[MarketMaker, RefusingClient]:
    """A market maker with two live bids (levels 0 and 1) whose re-quotes are refused."""
    mm = MarketMaker(BotConfig("ws://unused", "bea", "x", [C1], {"BUY": "SELLU3"},
                               params={"levels": 2, "cooldown": 10}))
    mm.contracts = [C1]
    quotes = [Order(order_id=7 + level, contract=C1, user="bea", agent="AG3", unit="SELLU3",
                    side="BUY", status="ACTIVE", price=Decimal("40.00") - level,
                    visible=Decimal("1.0"), hidden=Decimal(0), filled=Decimal(0),
                    exec="NON", validity="GFS", peak=Decimal(0),
                    price_increment=Decimal(0), revision=1, basket=0, active=True)
              for level in (0, 1)]
    client = RefusingClient(quotes, code)
    mm.client = client  # type: ignore[assignment]
    for level, quote in enumerate(quotes):
        mm.quotes[(C1, "BUY", level)] = quote.order_id
    return mm, client


async def steps(mm: MarketMaker, n: int) -> None:
    for _ in range(n):
        await mm.step()
        mm.stats["steps"] += 1  # as Bot.run does


@pytest.mark.parametrize("code", ["OPERATIVE_LIMIT", "ENERGY_MAX", "ENERGY_MIN"])
async def test_market_maker_backs_off_after_a_limit_refusal_of_a_requote(code: str) -> None:
    """A re-quote (a modification) refused for a limit starts the side's cooldown, as a
    refused entry does: neither it nor the side's next level is sent again until the
    cooldown is over (they were re-sent at every step: counted, never tracked).  Other
    refusals (a stale revision) are tried again at the next step."""
    mm, client = quoting_market_maker(code)
    await steps(mm, 5)
    assert (client.modifies, client.places) == (1, 0)
    assert (mm.stats["rejected"], mm.stats[code]) == (1, 1)
    assert not mm.resting_allowed(C1, "BUY")
    await steps(mm, 6)  # the cooldown (10 steps) is over: the quote is tried again
    assert (client.modifies, client.places) == (2, 0)

    stale, again = quoting_market_maker("STALE_REVISION")
    await steps(stale, 3)
    assert (again.modifies, again.places) == (6, 0) and stale.resting_allowed(C1, "BUY")


async def test_bot_stopped_while_reconnecting_cancels_its_orders(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Stopped while its connection is being re-established, a bot waits for the
    reconnection and cancels the orders it placed (it used to cancel only if connected at
    that moment, leaving them in the book) - and only those: the user's other orders
    stay."""
    env = Env(tmp_path)
    await env.start()
    try:
        ana = await env.client("ana")
        own = await ana.place(C1, "SELLU1", "SELL", "70.00", "1.0")
        cfg = BotConfig(env.url, "ana", "ana-demo-token", [C1], {"SELL": "SELLU1"},
                        interval=0.05, params={"levels": 2}, stop_timeout=5.0)
        mm = MarketMaker(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(mm.run(stop))
        await eventually(lambda: mm.client is not None
                         and len(mm.placed & set(mm.client.orders)) == 2)
        await mm.c.drop_connection()  # a network blip...
        assert not mm.c.connected
        stop.set()  # ...while the bot is being stopped
        result = await asyncio.wait_for(task, 10)
        assert [o.id for o in env.srv.core.orders_of("AG1")] == [own.order_id]
        assert result == mm.result == StopResult(True)
        assert mm.c.stats["reconnects"] == 1 and mm.c.closed
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await env.close()


async def test_bot_that_cannot_cancel_says_its_orders_may_still_be_live(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """When the connection does not come back within ``stop_timeout``, the bot gives up
    (in bounded time), logs at error level and returns a StopResult that is not clean and
    lists the orders that may still be live (it used to end silently)."""
    env = Env(tmp_path)
    await env.start()
    try:
        cfg = BotConfig(env.url, "ana", "ana-demo-token", [C1], {"SELL": "SELLU1"},
                        interval=0.05, params={"levels": 2}, stop_timeout=0.5)
        mm = MarketMaker(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(run_bots([mm], stop))
        await eventually(lambda: mm.client is not None
                         and len(mm.placed & set(mm.client.orders)) == 2)
        live = sorted(o.id for o in env.srv.core.orders_of("AG1"))
        await env.stop()  # the server goes away: no reconnection
        await eventually(lambda: not mm.c.connected)
        stop.set()
        caplog.set_level(logging.ERROR, "ronda.bots")
        (result,) = await asyncio.wait_for(task, 5)
        assert result == mm.result
        assert (result.clean, list(result.live)) == (False, live)
        assert "0.5 s" in result.reason and "not re-established" in result.reason
        errors = [r.getMessage() for r in caplog.records
                  if r.name == "ronda.bots" and r.levelno == logging.ERROR]
        assert len(errors) == 1 and "may still be live" in errors[0]
        assert all(str(i) in errors[0] for i in live)
        assert mm.c.closed and mm.stats["left_live"] == 2
    finally:
        await env.close()


class _Ask:
    price = Decimal("50.00")


class _SyncedBook:
    synced = True

    def best_ask(self) -> _Ask:
        return _Ask()

    def best_bid(self) -> _Ask:
        return _Ask()


@pytest.mark.parametrize("code", ["OPERATIVE_LIMIT", "ENERGY_MAX"])
async def test_linked_basket_trader_backs_off_after_a_limit_refusal(code: str) -> None:
    """A LINKED basket refused for a limit leaves both its contracts alone for the
    cooldown (it was sent again at every step); another refusal is not a limit: the
    next step tries again."""
    for refusal, expected in ((code, 1), ("FOK_NOT_FILLABLE", 5)):
        bot = LinkedBasketTrader(BotConfig("ws://unused", "carlos", "x", [C1, C2],
                                           {"BUY": "BUYU2"}, params={"cooldown": 10}))
        bot.contracts = [C1, C2]
        client = RefusingClient([], refusal)
        client.books = {C1: _SyncedBook(), C2: _SyncedBook()}
        sent = 0

        async def basket(*a: Any, _c: RefusingClient = client, **kw: Any) -> Answer:
            nonlocal sent
            sent += 1
            return _c._refusal()

        client.basket = basket  # type: ignore[attr-defined]
        bot.client = client  # type: ignore[assignment]
        for _ in range(5):
            await bot.step()
            bot.stats["steps"] += 1
        assert sent == expected, (refusal, sent)
