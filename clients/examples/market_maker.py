"""A small market-making bot on the ronda SDK.

It quotes a bid and an ask in each of its contracts (by default the first two trading, the
ones ``linked_basket.py`` buys or sells in by default) around a fair price that drifts a
little, re-quotes every few seconds by modifying its orders (same order, new price), prints
its fills, and cancels its quotes when it stops (Ctrl-C, or after ``--duration`` seconds).

    ./run.sh serve                      # in another terminal: the platform, demo users
    .venv/bin/python clients/examples/market_maker.py --user bea --token bea-demo-token \\
        --unit SELLU3 --fair 50.00 --spread 1.00

A unit can only trade back what it traded (a selling unit buys back what it sold), so the
bid may be refused (``ENERGY_MIN``) until the ask has sold something: the bot says so and
carries on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
from decimal import Decimal
from pathlib import Path

try:
    from clients.sdk import Client, Trade
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from clients.sdk import Client, Trade

TICK = Decimal("0.01")


async def run(args: argparse.Namespace) -> int:
    client = await Client.connect_ws(args.url, args.user, args.token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if args.duration:
        loop.call_later(args.duration, stop.set)
    quotes: dict[tuple[str, str], int] = {}  # (contract, side) -> order id
    try:
        contracts = args.contracts
        if not contracts:
            trading = [c for c in await client.query_contracts() if c.state == "TRADE"]
            if not trading:
                print("no contract is trading", file=sys.stderr)
                return 1
            contracts = [c.contract for c in trading[:args.count]]
        books = {c: await client.subscribe_book(c) for c in contracts}
        client.on(Trade, lambda t: print(f"fill: {t.side} {t.quantity} MWh of {t.contract}"
                                         f" at {t.price} (trade {t.trade_id})"))
        print(f"{client.user} ({client.agent}) making a market in {', '.join(contracts)}"
              f" with {args.unit}")
        rng = random.Random(args.seed)
        fair = Decimal(args.fair)
        half = Decimal(args.spread) / 2
        while not stop.is_set():
            fair = (fair + Decimal(str(round(rng.gauss(0, 0.2), 2)))).quantize(TICK)
            for contract, book in books.items():
                for side, price in (("BUY", fair - half), ("SELL", fair + half)):
                    price = price.quantize(TICK)
                    live = client.orders.get(quotes.get((contract, side), -1))
                    if live is not None and live.status == "ACTIVE":
                        if live.price != price:
                            ans = await client.modify(live, price=price, quantity=args.size,
                                                      raise_on_reject=False)
                            if not ans.ok:
                                print(f"re-quote {side} {contract} refused: {ans.code}"
                                      f" {ans.reason}")
                        continue
                    ans = await client.place(contract, args.unit, side,  # type: ignore[arg-type]
                                             price, args.size, raise_on_reject=False)
                    if ans.ok and ans.order_id is not None:
                        quotes[(contract, side)] = ans.order_id
                    else:
                        print(f"{side} quote in {contract} refused: {ans.code} {ans.reason}")
                b, a = book.best_bid(), book.best_ask()
                print(f"{contract}: fair {fair}  book {b.price if b else '-'} /"
                      f" {a.price if a else '-'}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)
    finally:
        for oid in quotes.values():
            if oid in client.orders:
                await client.cancel(oid, raise_on_reject=False)
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="the WebSocket API")
    p.add_argument("--user", default="bea")
    p.add_argument("--token", default="bea-demo-token")
    p.add_argument("--unit", default="SELLU3", help="the unit both quotes are for")
    p.add_argument("--contracts", nargs="+",
                   help="default: the first --count contracts trading")
    p.add_argument("--count", type=int, default=2,
                   help="how many trading contracts to quote in by default (2)")
    p.add_argument("--fair", default="50.00", help="starting fair price, €/MWh")
    p.add_argument("--spread", default="1.00", help="ask - bid, €/MWh")
    p.add_argument("--size", default="1.0", help="MWh per quote")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between re-quotes")
    p.add_argument("--duration", type=float, default=0, help="seconds; 0: until Ctrl-C")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except OSError as exc:
        print(f"cannot reach {args.url}: {exc} (is `./run.sh serve` running?)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
