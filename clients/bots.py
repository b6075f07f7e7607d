"""Simulated traders on the SDK (clients/sdk.py), for demos and load.

* :class:`MarketMaker` quotes both sides around a fair price that wanders (a mean-reverting
  random walk), and re-quotes by modifying its resting orders;
* :class:`AggressiveTaker` lifts offers and hits bids with IoC or FoK orders;
* :class:`IcebergTrader` keeps an iceberg order working per contract (a visible peak, a
  price increment per refill), and now and then moves it;
* :class:`LinkedBasketTrader` buys (or sells) the same quantity in two contracts at once
  with a linked basket: both filled, or neither.

Each bot is configured by a :class:`BotConfig` (user, token, contracts, units per side,
seed, pace), runs until its stop event is set (or :meth:`Bot.stop` is called), tolerates
refusals (counted in :attr:`Bot.stats`), follows the market when its contracts close (it
moves to the nearest contracts still trading), and on the way out cancels the orders it
placed - never the user's other orders.  Stopped while its connection is being
re-established, it waits for the reconnection (at most ``stop_timeout`` seconds) before
cancelling; what it could not cancel is logged at error level and listed in the
:class:`StopResult` that :meth:`Bot.run` returns.  :func:`run_demo_bots` starts a few of
them with the demo users for ``ronda demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from clients.sdk import (
    Client,
    ConnectionLost,
    LocalBook,
    OrderSpec,
    Rejected,
    RequestTimeout,
    RondaError,
)

log = logging.getLogger("ronda.bots")

TICK = Decimal("0.01")
QTY_TICK = Decimal("0.1")
# refusals that say "not now on this side" (a unit's energy, the agent's guarantees)
LIMIT_CODES = frozenset({"ENERGY_MAX", "ENERGY_MIN", "OPERATIVE_LIMIT"})
# a modification or cancellation refused with these: the order is no longer live
GONE_CODES = frozenset({"ORDER_UNKNOWN", "ORDER_NOT_ACTIVE"})
DEMO_TOKENS = {"ana": "ana-demo-token", "carlos": "carlos-demo-token",
               "bea": "bea-demo-token"}


def price_tick(p: Decimal) -> Decimal:
    """A bot's own price choice on the 0.01 grid (bots choose prices; users' inputs are
    never rounded by the SDK)."""
    return p.quantize(TICK)


def qty_tick(q: Decimal) -> Decimal:
    return max(QTY_TICK, q.quantize(QTY_TICK))


@dataclass
class BotConfig:
    url: str
    user: str
    token: str
    contracts: Sequence[str] = ()  # empty: the nearest contracts trading, found by query
    units: Mapping[str, str] = field(default_factory=dict)  # side -> unit
    seed: int = 0
    interval: float = 1.0  # seconds between steps (jittered)
    max_contracts: int = 2  # when following the market
    fair: Decimal = Decimal("50.00")  # where prices start
    size: Decimal = Decimal("1.0")  # typical quantity
    params: dict[str, Any] = field(default_factory=dict)  # per-bot knobs (see each class)
    # when stopping: how long to wait for a connection being re-established, and for the
    # cancellations of the bot's orders, before giving up (and saying so)
    stop_timeout: float = 3.0


@dataclass(frozen=True)
class StopResult:
    """How a bot stopped (:meth:`Bot.run`'s result, also :attr:`Bot.result`).

    ``clean``: every order the bot placed is known to be gone (cancelled by it, filled,
    or never placed).  Otherwise ``live`` lists the orders it placed that **may still be
    in the book** - it could not cancel them (the connection did not come back within
    ``stop_timeout``, the client was closed, a cancellation was refused or unanswered) -
    and ``reason`` says why; the bot logged it at error level.  Cancel them by hand
    (``query_orders``) or let the contract's close cancel them."""

    clean: bool
    live: tuple[int, ...] = ()
    reason: str = ""


class Bot:
    """The frame of a bot: connect (retrying until the server answers), :meth:`setup`,
    :meth:`step` every ``interval`` seconds, and clean up."""

    name = "bot"

    def __init__(self, config: BotConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.client: Client | None = None
        self.contracts: list[str] = []
        self.stats: Counter[str] = Counter()
        self.placed: set[int] = set()  # order ids this bot placed (cancelled on the way out)
        self._stop = asyncio.Event()
        self._refreshed = -1e9
        self._cooldown: dict[tuple[str, str], int] = {}  # (contract, side) -> until step
        self.result: StopResult | None = None  # set when run() ends

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg.user}, {self.contracts})"

    @property
    def c(self) -> Client:
        assert self.client is not None, "not connected"
        return self.client

    def stop(self) -> None:
        self._stop.set()

    def unit(self, side: str) -> str | None:
        return self.cfg.units.get(side)

    def sides(self) -> list[str]:
        return [s for s in ("BUY", "SELL") if s in self.cfg.units]

    async def _connect(self, stop: asyncio.Event) -> bool:
        delay = 0.2
        while not (stop.is_set() or self._stop.is_set()):
            try:
                self.client = await Client.connect_ws(self.cfg.url, self.cfg.user,
                                                      self.cfg.token)
                return True
            except Rejected:
                raise  # bad credentials: retrying will not help
            except (OSError, RondaError, TimeoutError) as exc:
                log.info("%s: cannot connect yet (%s)", self, exc)
            await self._sleep(stop, delay)
            delay = min(delay * 2, 5.0)
        return False

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def run(self, stop: asyncio.Event | None = None) -> StopResult:
        """Trade until ``stop`` is set or :meth:`stop` is called (or the task is
        cancelled), then cancel the orders this bot placed and close the connection.
        Returns (and keeps in :attr:`result`) a :class:`StopResult`: not ``clean`` when
        some of its orders may still be live."""
        stop = stop or asyncio.Event()
        if not await self._connect(stop):
            self.result = StopResult(True)
            return self.result
        try:
            await self._trade(stop)
        finally:
            self.result = await self._cleanup()
        return self.result

    async def _trade(self, stop: asyncio.Event) -> None:
        await self.refresh_contracts(force=True)
        await self.setup()
        while not (stop.is_set() or self._stop.is_set()):
            try:
                await self.refresh_contracts()
                if self.contracts:
                    await self.step()
            except Rejected as exc:
                self.stats["rejected"] += 1
                self.stats[exc.code] += 1
                log.debug("%s: refused: %s", self, exc)
            except (ConnectionLost, RequestTimeout) as exc:
                self.stats["errors"] += 1
                log.info("%s: %s", self, exc)
                if self.c.closed:
                    return
            self.stats["steps"] += 1
            await self._sleep(stop, self.cfg.interval * self.rng.uniform(0.5, 1.5))

    def _mine(self, client: Client) -> set[int]:
        """The orders this bot placed that the client still sees live."""
        return self.placed & set(client.orders)

    async def _cleanup(self) -> StopResult:
        """Cancel the orders this bot placed (never the user's others), then close.  While
        the connection is being re-established, wait for it (``stop_timeout`` seconds at
        most, for the waiting and the cancelling together): the reconnection reloads the
        live orders, then they are cancelled.  What cannot be cancelled is logged at
        error level and returned as a StopResult that is not clean."""
        client = self.client
        if client is None:
            return StopResult(True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.stop_timeout
        refused: dict[int, str] = {}  # order -> why the platform would not cancel it
        reason = ""
        try:
            while True:
                todo = sorted(self._mine(client) - set(refused))
                if not todo:
                    break
                left = deadline - loop.time()
                if client.closed:
                    reason = "the client is closed"
                    break
                if left <= 0:
                    reason = (f"not cancelled within {self.cfg.stop_timeout:g} s"
                              + ("" if client.connected else
                                 " (the connection was not re-established)"))
                    break
                if not client.connected:  # being re-established (or closed meanwhile)
                    with contextlib.suppress(TimeoutError):
                        await client.wait_connected(min(left, 0.25))
                    continue  # the reconnection reloaded client.orders
                for oid in todo:
                    try:
                        ans = await client.cancel(
                            oid, raise_on_reject=False,
                            timeout=max(0.05, min(2.0, deadline - loop.time())))
                    except (RondaError, TimeoutError) as exc:
                        log.info("%s: cancelling %d on the way out: %s", self, oid, exc)
                        break  # look at the connection again (and the time left)
                    if ans.ok or ans.code in GONE_CODES:
                        self.placed.discard(oid)
                    else:
                        refused[oid] = f"{ans.code}: {ans.reason}"
                else:
                    continue
                await asyncio.sleep(0.05)  # a lost connection or a timeout: not a busy loop
        except asyncio.CancelledError:
            self.result = self._report_left(
                client, "the bot's task was cancelled while cleaning up", refused)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(client.close(), 1)
            raise
        except Exception as exc:  # never hide why orders stay behind
            reason = f"cleanup failed: {exc!r}"
        result = self._report_left(client, reason, refused)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)
        return result

    def _report_left(self, client: Client, reason: str, refused: dict[int, str]
                     ) -> StopResult:
        live = tuple(sorted(self._mine(client)))
        if not live:
            return StopResult(True)
        if refused:
            why = "; ".join(f"{o} refused {r}" for o, r in sorted(refused.items()))
            reason = f"{reason}; {why}" if reason else f"cancellation refused: {why}"
        log.error("%s stopped, but %d order(s) it placed may still be live: %s (%s)",
                  self, len(live), ", ".join(map(str, live)), reason)
        self.stats["left_live"] = len(live)
        return StopResult(False, live, reason)

    async def refresh_contracts(self, force: bool = False) -> None:
        """Keep trading: the configured contracts while they trade; when they close (or
        none were given), the nearest contracts still trading."""
        loop = asyncio.get_running_loop()
        every = 30.0 if self.contracts else 2.0  # nothing trading yet: look again soon
        if not force and loop.time() - self._refreshed < every and all(
                c in self.c.books or not self.wants_books() for c in self.contracts):
            return
        self._refreshed = loop.time()
        infos = await self.c.query_contracts()
        trading = [i.contract for i in sorted(infos, key=lambda i: (i.close_at, i.contract))
                   if i.state == "TRADE"]
        want = [c for c in self.cfg.contracts if c in trading]
        n = len(self.cfg.contracts) or self.cfg.max_contracts
        for c in trading:
            if len(want) >= n:
                break
            if c not in want:
                want.append(c)
        if want != self.contracts:
            old = set(self.contracts)
            self.contracts = want
            log.info("%s: trading %s", self, ", ".join(want) or "nothing")
            if self.wants_books():
                for c in old - set(want):
                    with contextlib.suppress(RondaError):
                        await self.c.unsubscribe("book", c)
                for c in want:
                    if c not in self.c.books:
                        await self.c.subscribe_book(c)

    def wants_books(self) -> bool:
        return True

    def book(self, contract: str) -> LocalBook | None:
        b = self.c.books.get(contract)
        return b if b is not None and b.synced else None

    def track(self, ans: Any, contract: str | None = None, side: str | None = None) -> None:
        """Count an answer; after a limit refusal (energy, guarantees) leave that contract
        and side alone for a while (``cooldown`` steps, default 10)."""
        if getattr(ans, "ok", False):
            self.placed.update(ans.order_ids)
            self.stats["orders"] += len(ans.order_ids)
            return
        code = str(getattr(ans, "code", "REJECTED"))
        self.stats["rejected"] += 1
        self.stats[code] += 1
        if code in LIMIT_CODES and contract is not None and side is not None:
            self._cooldown[(contract, side)] = self.stats["steps"] + int(
                self.cfg.params.get("cooldown", 10))

    def resting_allowed(self, contract: str, side: str) -> bool:
        return self._cooldown.get((contract, side), -1) <= self.stats["steps"]

    async def setup(self) -> None:
        """Called once connected (after the contracts are chosen)."""

    async def step(self) -> None:
        raise NotImplementedError


class MarketMaker(Bot):
    """Quotes ``levels`` prices per side around a fair price, ``spread`` apart, and
    re-quotes every step (a modification: same order, new price).

    params: ``spread`` (€/MWh, default 1.00), ``levels`` (default 2), ``step`` between
    levels (default 0.50), ``volatility`` of the fair price per step (default 0.30)."""

    name = "market-maker"

    def __init__(self, config: BotConfig) -> None:
        super().__init__(config)
        p = config.params
        self.spread = Decimal(str(p.get("spread", "1.00")))
        self.levels = int(p.get("levels", 2))
        self.level_step = Decimal(str(p.get("step", "0.50")))
        self.volatility = Decimal(str(p.get("volatility", "0.30")))
        self.fair: dict[str, Decimal] = {}
        self.quotes: dict[tuple[str, str, int], int] = {}  # (contract, side, level) -> id

    def fair_price(self, contract: str) -> Decimal:
        f = self.fair.get(contract)
        if f is None:
            f = self.cfg.fair + Decimal(self.rng.randint(-300, 300)) / 100
        # a random walk pulled back towards the configured fair price
        drift = (self.cfg.fair - f) / 20
        shock = self.volatility * Decimal(str(round(self.rng.gauss(0, 1), 2)))
        f = price_tick(f + drift + shock)
        self.fair[contract] = f
        return f

    async def step(self) -> None:
        for contract in self.contracts:
            fair = self.fair_price(contract)
            for side in self.sides():
                unit = self.unit(side)
                assert unit is not None
                if not self.resting_allowed(contract, side):
                    continue
                sign = -1 if side == "BUY" else 1
                for level in range(self.levels):
                    if not self.resting_allowed(contract, side):
                        break  # a level was just refused for a limit: the side backs off
                    price = price_tick(fair + sign * (self.spread / 2 + level * self.level_step))
                    qty = qty_tick(self.cfg.size * Decimal(str(self.rng.uniform(0.5, 1.5))))
                    await self.quote(contract, side, unit, level, price, qty)

    async def quote(self, contract: str, side: str, unit: str, level: int, price: Decimal,
                    qty: Decimal) -> None:
        key = (contract, side, level)
        oid = self.quotes.get(key)
        live = self.c.orders.get(oid) if oid is not None else None
        if live is not None and live.status == "ACTIVE":
            if live.price == price and live.remaining == qty:
                return
            ans = await self.c.modify(live, price=price, quantity=qty, raise_on_reject=False)
            if ans.ok:
                self.stats["requotes"] += 1
                return
            if ans.code not in GONE_CODES:
                # a limit refusal (ENERGY_MAX, ENERGY_MIN, OPERATIVE_LIMIT) starts the
                # side's cooldown; anything else (a stale revision...) is retried next step
                self.track(ans, contract, side)
                return
            self.stats[str(ans.code)] += 1  # the quote is gone: place a new one
        ans = await self.c.place(contract, unit, side, price, qty,  # type: ignore[arg-type]
                                 raise_on_reject=False)
        self.track(ans, contract, side)
        if ans.ok and ans.report is not None and ans.report.status == "ACTIVE":
            self.quotes[key] = ans.report.order_id
        else:
            self.quotes.pop(key, None)


class AggressiveTaker(Bot):
    """Takes liquidity: each step picks a contract and a side and sends an IoC (or, with
    probability ``fok_ratio``, a FoK) at the best opposite price, for part of what is
    shown there.  params: ``fok_ratio`` (default 0.3), ``slippage`` in €/MWh accepted
    beyond the best price (default 0.00)."""

    name = "taker"

    async def step(self) -> None:
        fok_ratio = float(self.cfg.params.get("fok_ratio", 0.3))
        slippage = Decimal(str(self.cfg.params.get("slippage", "0.00")))
        contract = self.rng.choice(self.contracts)
        book = self.book(contract)
        sides = self.sides()
        if book is None or not sides:
            return
        side = self.rng.choice(sides)
        if not self.resting_allowed(contract, side):
            return
        best = book.best_ask() if side == "BUY" else book.best_bid()
        if best is None:
            self.stats["nothing_to_take"] += 1
            return
        price = best.price + slippage if side == "BUY" else best.price - slippage
        qty = qty_tick(min(best.quantity * Decimal("1.5"),
                           self.cfg.size * Decimal(str(self.rng.uniform(0.3, 2.0)))))
        exec_ = "FOK" if self.rng.random() < fok_ratio else "IOC"
        unit = self.unit(side)
        assert unit is not None
        ans = await self.c.place(contract, unit, side, price, qty,  # type: ignore[arg-type]
                                 exec=exec_, raise_on_reject=False)  # type: ignore[arg-type]
        self.track(ans, contract, side)
        if ans.report is not None:
            self.stats["filled_mwh_x10"] += int(ans.report.filled * 10)
            self.stats[f"{exec_}_{ans.report.action}"] += 1


class IcebergTrader(Bot):
    """Keeps one iceberg per contract and side it trades: a total of ``total`` (default
    5 x size), a visible ``peak`` (default size), a ``price_increment`` per refill (default
    0.05 away from the market: up for sells, down for buys).  With probability ``move``
    (default 0.15) per step it cancels and re-enters it at the current market."""

    name = "iceberg"

    def __init__(self, config: BotConfig) -> None:
        super().__init__(config)
        self.icebergs: dict[tuple[str, str], int] = {}

    async def step(self) -> None:
        p = self.cfg.params
        peak = qty_tick(Decimal(str(p.get("peak", self.cfg.size))))
        total = qty_tick(Decimal(str(p.get("total", self.cfg.size * 5))))
        incr = Decimal(str(p.get("price_increment", "0.05")))
        move = float(p.get("move", 0.15))
        for contract in self.contracts:
            for side in self.sides():
                key = (contract, side)
                oid = self.icebergs.get(key)
                live = oid is not None and oid in self.c.orders
                if (live and self.rng.random() >= move) or not self.resting_allowed(contract,
                                                                                    side):
                    continue
                if live and oid is not None:
                    await self.c.cancel(oid, raise_on_reject=False)
                    self.stats["moved"] += 1
                price = self.entry_price(contract, side)
                unit = self.unit(side)
                assert unit is not None
                ans = await self.c.place(
                    contract, unit, side, price, total,  # type: ignore[arg-type]
                    peak=peak, price_increment=incr if side == "SELL" else -incr,
                    raise_on_reject=False)
                self.track(ans, contract, side)
                if ans.ok and ans.report is not None and ans.report.live:
                    self.icebergs[key] = ans.report.order_id
                else:
                    self.icebergs.pop(key, None)

    def entry_price(self, contract: str, side: str) -> Decimal:
        """Just behind the best price of its own side (or around the fair price)."""
        book = self.book(contract)
        best = None
        if book is not None:
            best = book.best_ask() if side == "SELL" else book.best_bid()
        base = best.price if best is not None else self.cfg.fair + (
            Decimal("1.50") if side == "SELL" else Decimal("-1.50"))
        off = Decimal(self.rng.randint(0, 40)) / 100
        return price_tick(base + off if side == "SELL" else base - off)


class LinkedBasketTrader(Bot):
    """Buys (or sells) the same quantity in two contracts at once with a LINKED basket of
    FoK orders at the best opposite prices (plus ``slippage``, default 0.10): both fill or
    neither does (A1§5.3)."""

    name = "linked-basket"

    async def step(self) -> None:
        if len(self.contracts) < 2 or not self.sides():
            return
        slippage = Decimal(str(self.cfg.params.get("slippage", "0.10")))
        side = self.rng.choice(self.sides())
        unit = self.unit(side)
        assert unit is not None
        pair = self.rng.sample(self.contracts, 2)
        if not all(self.resting_allowed(c, side) for c in pair):  # cooling down after a
            self.stats["cooling_down"] += 1  # limit refusal of one of them
            return
        orders: list[OrderSpec] = []
        qty = qty_tick(self.cfg.size * Decimal(str(self.rng.uniform(0.3, 1.2))))
        for contract in pair:
            book = self.book(contract)
            best = None
            if book is not None:
                best = book.best_ask() if side == "BUY" else book.best_bid()
            if best is None:
                self.stats["nothing_to_take"] += 1
                return
            price = best.price + slippage if side == "BUY" else best.price - slippage
            orders.append(OrderSpec(contract, unit, side, price, qty,  # type: ignore[arg-type]
                                    exec="FOK"))
        ans = await self.c.basket(orders, "LINKED", raise_on_reject=False)
        self.track(ans, pair[0], side)
        if (pair[0], side) in self._cooldown:  # a limit refusal: leave both contracts alone
            self._cooldown[(pair[1], side)] = self._cooldown[(pair[0], side)]  # a while
        if ans.ok:
            filled = all(r.action == "FILLED" for r in ans.reports)
            self.stats["baskets_filled" if filled else "baskets_not_fillable"] += 1


async def run_bots(bots: Sequence[Bot], stop_event: asyncio.Event) -> list[StopResult]:
    """Run bots until ``stop_event`` is set (or this task is cancelled); each cleans up.
    Returns each bot's :class:`StopResult` (in order; not clean for a bot that failed)."""
    tasks = [asyncio.get_running_loop().create_task(b.run(stop_event), name=repr(b))
             for b in bots]
    out: list[StopResult] = []
    try:
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for b, r in zip(bots, results, strict=True):
            if isinstance(r, StopResult):
                out.append(r)
                continue
            if not isinstance(r, asyncio.CancelledError):
                log.error("%s stopped with %r", b, r)
            out.append(b.result or StopResult(
                not b.placed, (), "" if not b.placed else f"the bot stopped with {r!r}"))
        return out
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def demo_bots(url: str, contracts: Sequence[str] = (), seed: int = 1) -> list[Bot]:
    """The demo's traders: bea makes the market (SELLU3 both ways), carlos takes (BUYU2
    both ways) and trades linked baskets, ana works icebergs (SELLU1).  Units can only
    trade back what they traded, so positions stay within the units' limits."""
    cs = list(contracts)
    return [
        MarketMaker(BotConfig(url, "bea", DEMO_TOKENS["bea"], cs,
                              {"BUY": "SELLU3", "SELL": "SELLU3"}, seed, interval=1.5)),
        AggressiveTaker(BotConfig(url, "carlos", DEMO_TOKENS["carlos"], cs,
                                  {"BUY": "BUYU2", "SELL": "BUYU2"}, seed + 1, interval=2.0)),
        IcebergTrader(BotConfig(url, "ana", DEMO_TOKENS["ana"], cs,
                                {"SELL": "SELLU1"}, seed + 2, interval=4.0)),
        LinkedBasketTrader(BotConfig(url, "carlos", DEMO_TOKENS["carlos"], cs,
                                     {"BUY": "BUYU2", "SELL": "BUYU2"}, seed + 3,
                                     interval=6.0)),
    ]


async def run_demo_bots(url: str, contracts: Sequence[str], stop_event: asyncio.Event
                        ) -> None:
    """``ronda demo``: a market maker, an aggressive taker, an iceberg trader and a
    linked-basket trader, with the demo users, on ``contracts`` (the nearest trading ones
    if empty, and the next ones as they close), until ``stop_event`` is set."""
    bots = demo_bots(url, contracts)
    log.info("demo bots: %s", ", ".join(repr(b) for b in bots))
    await run_bots(bots, stop_event)
