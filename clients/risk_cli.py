"""``ronda risk``: the risk officer's console for scripts.

Connects to a running platform over WebSocket with the SDK (clients/sdk.py), logs in as a
risk officer (or the market operator), sends one request and prints its answer as JSON on
standard output.  Exit status: 0 when the platform accepted or answered the request, 1 when
it refused it (``reject`` or ``error``: the code and the reason also go to standard error),
2 when the platform cannot be reached or the login fails.

Credentials: ``--user`` and ``--token``, or the environment variables ``RONDA_USER`` and
``RONDA_TOKEN`` (so the token stays out of the shell history); ``--url`` or ``RONDA_URL``
(default ``ws://127.0.0.1:8080/ws``).  Amounts and prices are decimal strings passed to the
platform as they are: it checks them (no rounding here).  docs/risk.md lists the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson

from clients.sdk import Client, LoginFailed, RondaError

DEFAULT_URL = "ws://127.0.0.1:8080/ws"

Build = Callable[[argparse.Namespace], dict[str, Any]]


def _rule(text: str) -> dict[str, int]:
    """``WINDOW_MS:MAX`` (e.g. ``1000:50``: at most 50 requests per second)."""
    win, sep, mx = text.partition(":")
    if not sep or not win.isdigit() or not mx.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: a rule is WINDOW_MS:MAX with two whole numbers, e.g. 1000:50")
    return {"window_ms": int(win), "max": int(mx)}


def _request_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: a request id is a whole number")
    return int(text)


def _opt(msg: dict[str, Any], **kw: Any) -> dict[str, Any]:
    msg.update({k: v for k, v in kw.items() if v is not None})
    return msg


# each subcommand: (help, arguments, request builder)
COMMANDS: dict[str, tuple[str, list[tuple[tuple[str, ...], dict[str, Any]]], Build]] = {
    "agents": ("every agent: units, users, suspended", [],
               lambda a: {"type": "query_agents"}),
    "account": ("an agent's operative limit and its breakdown (R49.1.4.3)",
                [(("agent",), {})],
                lambda a: {"type": "query_account", "agent": a.agent}),
    "orders": ("an agent's live orders, active and hibernated", [(("agent",), {})],
               lambda a: {"type": "query_orders", "agent": a.agent}),
    "trades": ("an agent's trades of the day", [(("agent",), {})],
               lambda a: {"type": "query_trades", "agent": a.agent}),
    "throttling": ("a user's rate-limit status (R48.c)", [(("user_id",), {})],
                   lambda a: {"type": "query_throttling", "user": a.user_id}),
    "audit": ("the audit trail, newest first",
              [(("--agent",), {}), (("--limit",), {"type": int}),
               (("--before",), {"type": int, "help": "entries older than this seq"})],
              lambda a: _opt({"type": "query_audit"}, agent=a.agent, limit=a.limit,
                             before=a.before)),
    "set-guarantees": ("set an agent's reserved guarantees, in euros (R49.1.4.1)",
                       [(("agent",), {}), (("amount",), {"help": "e.g. 250000.00"})],
                       lambda a: {"type": "set_guarantees", "agent": a.agent,
                                  "amount": a.amount}),
    "decide": ("accept or refuse a pending guarantee request (R49.1.4.4)",
               [(("request_id",), {"type": _request_id}),
                (("decision",), {"choices": ("accept", "refuse")}),
                (("--reason",), {"default": ""})],
               lambda a: {"type": "decide_guarantee_request", "request_id": a.request_id,
                          "accept": a.decision == "accept", "reason": a.reason}),
    "suspend": ("suspend an agent: its orders are cancelled (R46.2.6.2)",
                [(("agent",), {}), (("--reason",), {"default": "suspended"})],
                lambda a: {"type": "suspend_agent", "agent": a.agent, "reason": a.reason}),
    "reinstate": ("reinstate a suspended agent", [(("agent",), {})],
                  lambda a: {"type": "reinstate_agent", "agent": a.agent}),
    "cancel-orders": ("cancel every order of an agent (R46.2.6.2)",
                      [(("agent",), {}), (("--reason",), {})],
                      lambda a: _opt({"type": "cancel_agent_orders", "agent": a.agent},
                                     reason=a.reason)),
    "interrupt": ("interrupt trading of contracts: INT, orders hibernated (R48.b)",
                  [(("contracts",), {"nargs": "+"}), (("--reason",), {})],
                  lambda a: _opt({"type": "interrupt_contracts",
                                  "contracts": a.contracts}, reason=a.reason)),
    "resume": ("resume interrupted contracts", [(("contracts",), {"nargs": "+"})],
               lambda a: {"type": "resume_contracts", "contracts": a.contracts}),
    "rate-limits": ("set the request limits of a user, or the default (R48.c)",
                    [(("--user",), {"dest": "for_user",
                                    "help": "the user (default: every user without its own)"}),
                     (("--rule",), {"type": _rule, "action": "append", "required": True,
                                    "help": "WINDOW_MS:MAX, repeatable"}),
                     (("--warning-ratio",), {"type": float}),
                     (("--hibernate-on-breach",), {"action": "store_true"})],
                    lambda a: _opt({"type": "set_rate_limits", "rules": a.rule,
                                    "hibernate_on_breach": a.hibernate_on_breach},
                                   user=a.for_user, warning_ratio=a.warning_ratio)),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("RONDA_URL", DEFAULT_URL),
                   help=f"the platform's WebSocket (default $RONDA_URL or {DEFAULT_URL})")
    p.add_argument("--user", default=os.environ.get("RONDA_USER"),
                   help="a risk officer's user id (default $RONDA_USER)")
    p.add_argument("--token", default=os.environ.get("RONDA_TOKEN"),
                   help="its token (default $RONDA_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    sub = p.add_subparsers(dest="risk_command", required=True)
    for name, (help_, arguments, build) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        for flags, kw in arguments:
            sp.add_argument(*flags, **kw)
        sp.set_defaults(build=build)
    p.set_defaults(func=run)


async def _send(args: argparse.Namespace, msg: dict[str, Any]) -> dict[str, Any]:
    client = await Client.connect_ws(args.url, args.user, args.token, reconnect=False,
                                     private=False, request_timeout=args.timeout)
    try:
        return await client.request(msg)
    finally:
        await client.close()


def run(args: argparse.Namespace) -> int:
    if not args.user:
        print("ronda risk: no user: give --user or set RONDA_USER", file=sys.stderr)
        return 2
    msg = args.build(args)
    try:
        ans = asyncio.run(_send(args, msg))
    except LoginFailed as exc:
        print(f"ronda risk: login failed: {exc}", file=sys.stderr)
        return 2
    except (OSError, RondaError, TimeoutError) as exc:
        print(f"ronda risk: {args.url}: {exc}", file=sys.stderr)
        return 2
    ans.pop("req_id", None)
    sys.stdout.buffer.write(orjson.dumps(ans, option=orjson.OPT_INDENT_2) + b"\n")
    if ans.get("type") in ("reject", "error"):
        where = f" ({ans['field']})" if ans.get("field") else ""
        print(f"ronda risk: {ans.get('type')} {ans.get('code')}{where}: {ans.get('reason')}",
              file=sys.stderr)
        return 1
    return 0
