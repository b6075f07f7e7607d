"""Place a linked basket with the ronda SDK: the same quantity bought (or sold) in two or
more contracts, all or nothing.

Every member of a linked basket is Fill-or-Kill (A1§5.3): the platform fills all of them or
none.  By default each member's limit is the best opposite price now in that contract's
book (``--price`` sets one limit for all).

    ./run.sh serve                      # in another terminal: the platform, demo users
    .venv/bin/python clients/examples/linked_basket.py --user carlos \\
        --token carlos-demo-token --unit BUYU2 --side BUY --quantity 1.0

Exit status: 0 filled, 1 not fillable (nothing traded), 2 refused or unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from decimal import Decimal
from pathlib import Path

try:
    from clients.sdk import Client, OrderSpec, Rejected
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from clients.sdk import Client, OrderSpec, Rejected


async def run(args: argparse.Namespace) -> int:
    async with await Client.connect_ws(args.url, args.user, args.token) as client:
        contracts = args.contracts
        if not contracts:
            trading = [c.contract for c in await client.query_contracts()
                       if c.state == "TRADE"]
            contracts = trading[:2]
        if len(contracts) < 2:
            print(f"a linked basket needs two contracts; trading: {contracts}",
                  file=sys.stderr)
            return 2
        members = []
        for contract in contracts:
            if args.price is not None:
                price = Decimal(args.price)
            else:
                book = await client.query_book(contract)
                best = (book.asks if args.side == "BUY" else book.bids)[:1]
                if not best:
                    print(f"{contract}: nothing to {args.side.lower()} from; give --price")
                    return 1
                price = best[0].price
            members.append(OrderSpec(contract, args.unit, args.side, price, args.quantity,
                                     exec="FOK"))
            print(f"  {args.side} {args.quantity} MWh of {contract} at {price} or better")
        try:
            ans = await client.basket(members, "LINKED")
        except Rejected as exc:
            print(f"refused: {exc.code}: {exc.reason}")
            for d in exc.details:
                print(f"  {d.client_order_id}: {d.code}: {d.reason}")
            return 2
        for r in ans.reports:
            print(f"  order {r.order_id} {r.contract}: {r.action} {r.code or ''}"
                  f" filled {r.filled} MWh")
        filled = bool(ans.reports) and all(r.action == "FILLED" for r in ans.reports)
        print("filled in every contract" if filled else "not fillable: nothing traded")
        return 0 if filled else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="the WebSocket API")
    p.add_argument("--user", default="carlos")
    p.add_argument("--token", default="carlos-demo-token")
    p.add_argument("--unit", default="BUYU2")
    p.add_argument("--side", choices=("BUY", "SELL"), default="BUY")
    p.add_argument("--quantity", default="1.0", help="MWh in each contract")
    p.add_argument("--price", help="one limit for every member (default: best opposite)")
    p.add_argument("--contracts", nargs="+", help="default: the first two trading")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except ValueError as exc:  # e.g. a quantity with more decimals than the tick
        print(f"invalid order: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot reach {args.url}: {exc} (is `./run.sh serve` running?)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
