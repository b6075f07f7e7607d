"""Authorisation at the gateway, systematically: every request kind of
``gateway.session.ROLES``, every query and every subscription, tried by every role (a
trader of AG1, a trader of AG2, a risk officer, the market operator, the system operator)
against other agents' orders, units and accounts.

* a request kind outside the role's permissions is refused with ``NOT_PERMITTED``;
* a trader acts only for its agent's units (``UNIT_NOT_RESPONSIBLE``) and cannot see or
  touch another agent's orders: ``ORDER_UNKNOWN``, answered exactly as for an order id that
  does not exist (the other order's existence, state and revision do not leak);
* a trader cannot query another agent's account, orders or trades, nor subscribe to its
  private stream (``NOT_PERMITTED``); officers can;
* nothing crosses: at the end, each agent's private stream held only its own data, the
  public streams carried no party, and the targeted orders are untouched.

One server serves the whole module (a module-scoped event loop), so that the last test can
look at everything the private streams carried during the suite.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from wsclient import (
    AGENT_OF,
    USERS_OF,
    Client,
    connect_as,
    contract_id,
    iso,
    now_ms,
    order,
    start_server,
)

from auctions.session import OpenAuction, ScheduleAuction
from engine.commands import CreateContract, InterruptContracts, OpenContracts
from gateway.session import ROLES

pytestmark = pytest.mark.asyncio(loop_scope="module")

# role under test -> (user, the roles the reference data give it)
ROLE_USERS = {
    "trader_AG1": ("ana", {"trader"}),
    "trader_AG2": ("carlos", {"trader"}),
    "risk_officer": ("rita", {"risk_officer"}),
    "market_operator": ("marta", {"market_operator", "auction_operator"}),
    "system_operator": ("sofia", {"system_operator"}),
}
ROLE_NAMES = list(ROLE_USERS)
KINDS = sorted(ROLES)
# the agent whose orders / units / account each role goes after
VICTIM = {"trader_AG1": "AG2", "trader_AG2": "AG1", "risk_officer": "AG1",
          "market_operator": "AG2", "system_operator": "AG1"}
OTHER_USER = {"trader_AG1": "carlos", "trader_AG2": "ana", "risk_officer": "ana",
              "market_operator": "carlos", "system_operator": "ana"}
UNIT_SIDE = {"AG1": ("SELLU1", "SELL", "70.00"), "AG2": ("BUYU2", "BUY", "30.00")}
NONEXISTENT = 999_999_999

C1, C2, CX, CA = contract_id(10), contract_id(11), contract_id(12), contract_id(13)
AUCTION = "AUC-OPEN"  # an auction session receiving bids, horizon CA
PUBLIC_FORBIDDEN = {"agent", "user", "unit", "order_id", "client_order_id", "buy_agent",
                    "sell_agent", "buy_user", "sell_user", "buy_unit", "sell_unit",
                    "buy_order", "sell_order"}
# operator-style kinds that act on one contract: the state it must be in beforehand, and
# the state a permitted request leaves it in
CONTRACT_KINDS: dict[str, tuple[str | None, str]] = {
    "contract_create": (None, "UPC"),
    "contract_open": ("UPC", "TRADE"),
    "contract_close": ("TRADE", "FIN"),
    "contract_interrupt": ("TRADE", "INT"),
    "contract_resume": ("INT", "TRADE"),
    "interrupt_contracts": ("TRADE", "INT"),
    "resume_contracts": ("INT", "TRADE"),
    "reactivate": ("TRADE", "TRADE"),
}


# who may send what, as docs/protocol.md ("Authorisation") says; checked against ROLES
# (the auction requests as docs/auctions.md says: bids and the reactivation choice are the
# agents' own; running, delaying and cancelling sessions is the auction operator's)
TRADING = {"order_entry", "basket_entry", "order_modify", "order_cancel", "order_deactivate",
           "order_activate", "cancel_all", "guarantee_request", "set_breach_action",
           "auction_bid", "auction_bid_cancel", "set_reactivation"}
OFFICER = {"set_guarantees", "decide_guarantee_request", "suspend_agent", "reinstate_agent",
           "set_rate_limits", "interrupt_contracts", "resume_contracts", "cancel_agent_orders"}
MARKET = {"contract_create", "contract_open", "contract_close", "contract_interrupt",
          "contract_resume", "hibernate", "reactivate", "cancel_agent_orders", "time",
          "interrupt_contracts", "resume_contracts", "auction_run", "auction_delay",
          "auction_cancel"}
SYSTEM = {"set_program", "set_unavailability", "set_limitation"}
DOCUMENTED = {"trader_AG1": TRADING, "trader_AG2": TRADING, "risk_officer": OFFICER,
              "market_operator": MARKET, "system_operator": SYSTEM}


# auction operator kinds that act on one session (SCHEDULED beforehand): the state a
# permitted request leaves it in
SESSION_KINDS = {"auction_run": "OPEN", "auction_delay": "SCHEDULED",
                 "auction_cancel": "CANCELLED"}


def permitted(role: str, kind: str) -> bool:
    return kind in DOCUMENTED[role]


def sees_everyone(role: str) -> bool:
    return role in ("risk_officer", "market_operator")


@dataclass
class World:
    server: Any
    clients: dict[str, Client]
    observers: dict[str, Client]  # agent -> a connection subscribed to its private stream
    public: Client  # subscribed to the public streams of C1, C2 and CX, and to states
    traders: dict[str, Client]  # agent -> a trader connection used for setting things up
    targets: dict[str, dict[str, int]]  # agent -> {"active": id, "hibernated": id, "bid": id}
    first_seq: dict[str, int]  # agent -> the seq its observer's stream starts at
    contracts: dict[tuple[str, str], str] = field(default_factory=dict)


async def _setup(tmp_path: Any) -> tuple[World, list[Client]]:
    srv = await start_server(tmp_path, (C1, C2, CX, CA))
    t0 = now_ms()
    await srv.sequencer.submit(ScheduleAuction(AUCTION, (CA,), t0, t0 + 3_600_000,
                                               t0 + 7_200_000), "calendar")
    await srv.sequencer.submit(OpenAuction(AUCTION), "calendar")
    opened: list[Client] = []

    async def conn(user: str) -> Client:
        c = await connect_as(srv.port, user)
        opened.append(c)
        return c

    clients = {}
    for role, (user, roles) in ROLE_USERS.items():
        c = clients[role] = await conn(user)
        me = await c.request({"type": "query_me"})
        assert set(me["roles"]) == roles
    observers = {}
    first_seq = {}
    for agent, user in (("AG1", "ana"), ("AG2", "carlos"), ("AG3", "bea")):
        o = observers[agent] = await conn(user)
        ack = await o.request({"type": "subscribe", "stream": "private"})
        assert ack["stream"] == f"private:{agent}"
        first_seq[agent] = ack["seq"] + 1
    public = await conn("bea")
    for sub in (*({"stream": s, "contract": c} for s in ("book", "trades")
                  for c in (C1, C2, CX)), {"stream": "states"}):
        assert (await public.request({"type": "subscribe", **sub}))["type"] == "ack"
    traders = {"AG1": await conn("ana"), "AG2": await conn("carlos"), "AG3": await conn("bea")}
    targets: dict[str, dict[str, int]] = {}
    for agent in ("AG1", "AG2"):
        unit, side, price = UNIT_SIDE[agent]
        t = traders[agent]
        active = await t.request(order(C1, unit, side, price, "1.0"))
        hib = await t.request(order(C1, unit, side, price, "1.0", state="HIBERNATED"))
        assert active["type"] == hib["type"] == "ack", (active, hib)
        bid = await t.request({"type": "auction_bid", "session": AUCTION, "unit": unit,
                               "contract": CA, "side": side,
                               "steps": [{"price": price, "quantity": "1.0"}]})
        assert bid["type"] == "ack", bid
        targets[agent] = {"active": active["order_ids"][0], "hibernated": hib["order_ids"][0],
                          "bid": bid["order_ids"][0]}
    # a trade for each of AG1 and AG2, and an order of AG3
    assert (await traders["AG1"].request(order(C2, "SELLU1", "SELL", "50.00", "1.0")))[
        "type"] == "ack"
    fill = await traders["AG2"].request(order(C2, "BUYU2", "BUY", "50.00", "1.0"))
    assert fill["reports"][0]["action"] == "FILLED"
    assert (await traders["AG3"].request(order(C1, "SELLU3", "SELL", "80.00", "1.0")))[
        "type"] == "ack"
    world = World(srv, clients, observers, public, traders, targets, first_seq)
    # one contract per (role, contract kind), in the state the kind needs
    free = (contract_id(h, d) for d, h in itertools.product((3, 4, 5), range(1, 23)))
    close_at = now_ms() + 3_600_000
    for role in ROLE_NAMES:
        for kind, (before, _) in CONTRACT_KINDS.items():
            cid = world.contracts[(role, kind)] = next(free)
            if before is None:
                continue
            await srv.sequencer.submit(CreateContract(cid, close_at), "operator")
            if before in ("TRADE", "INT"):
                await srv.sequencer.submit(OpenContracts((cid,)), "operator")
            if before == "INT":
                await srv.sequencer.submit(InterruptContracts((cid,), "setup"), "operator")
        for kind in SESSION_KINDS:
            await srv.sequencer.submit(ScheduleAuction(
                f"AUC-{role}-{kind}", (CA,), t0 + 3_600_000, t0 + 5_400_000, t0 + 7_200_000),
                "calendar")
    return world, opened


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: Any) -> Any:
    w, opened = await _setup(tmp_path_factory.mktemp("authorisation"))
    try:
        yield w
    finally:
        for c in opened:
            await c.close()
        await w.server.stop()


def order_targets(world: World, agent: str) -> set[int]:
    return {world.targets[agent]["active"], world.targets[agent]["hibernated"]}


def session_state(world: World, role: str, kind: str) -> tuple[str, int]:
    s = world.server.core.auctions.sessions[f"AUC-{role}-{kind}"]
    return s.state, s.opens_at


def contract_state(world: World, cid: str) -> str | None:
    c = world.server.core.engine.contracts.get(cid)
    return None if c is None else c.state.value


def _normalise(ans: dict[str, Any], oid: int) -> dict[str, Any]:
    """An answer with the order id it names blanked out (and without req_id)."""
    d = {k: v for k, v in ans.items() if k != "req_id"}
    if d.get("order_id") == oid:
        d["order_id"] = "<id>"
    d["reason"] = re.sub(rf"\b{oid}\b", "<id>", d.get("reason", ""))
    return d


async def _same_as_nonexistent(c: Client, msg: dict[str, Any], key: str, oid: int,
                               code: str = "ORDER_UNKNOWN") -> dict[str, Any]:
    """Send ``msg`` naming another agent's order (or bid) ``oid`` and naming an id that
    does not exist: both must be refused with ``code``, identically."""

    def naming(x: int) -> dict[str, Any]:
        return {**msg, key: [x] if key == "order_ids" else x}

    theirs = await c.request(naming(oid))
    nothing = await c.request(naming(NONEXISTENT))
    assert (theirs["type"], theirs["code"]) == ("reject", code), theirs
    assert _normalise(theirs, oid) == _normalise(nothing, NONEXISTENT)
    return theirs


def _request(world: World, role: str, kind: str) -> dict[str, Any]:
    """A request of ``kind`` aimed at another agent's orders, units or account."""
    victim = VICTIM[role]
    tgt = world.targets[victim]
    unit, side, price = UNIT_SIDE[victim]
    cid = world.contracts.get((role, kind))
    one = {k: v for k, v in order(C1, unit, side, price, "1.0").items() if k != "type"}
    return {
        "order_entry": order(C1, unit, side, price, "1.0"),
        "basket_entry": {"type": "basket_entry", "basket": "NONE", "orders": [one, one]},
        "order_modify": {"type": "order_modify", "order_id": tgt["active"], "revision": 1,
                         "price": price, "quantity": "2.0"},
        "order_cancel": {"type": "order_cancel", "order_id": tgt["active"]},
        "order_deactivate": {"type": "order_deactivate", "order_ids": [tgt["active"]]},
        "order_activate": {"type": "order_activate", "order_ids": [tgt["hibernated"]]},
        "cancel_all": {"type": "cancel_all", "scope": "agent", "contract": CX},
        "guarantee_request": {"type": "guarantee_request", "change": "increase",
                              "amount": "100.00"},
        "set_breach_action": {"type": "set_breach_action", "hibernate_on_breach": False},
        "set_guarantees": {"type": "set_guarantees", "agent": "AG4", "amount": "20000.00"},
        "decide_guarantee_request": {"type": "decide_guarantee_request",
                                     "request_id": NONEXISTENT, "accept": False},
        "suspend_agent": {"type": "suspend_agent", "agent": "AG4", "reason": "test"},
        "reinstate_agent": {"type": "reinstate_agent", "agent": "AG4"},
        "set_rate_limits": {"type": "set_rate_limits", "user": "bea",
                            "rules": [{"window_ms": 1000, "max": 100_000}]},
        "interrupt_contracts": {"type": "interrupt_contracts", "contracts": [cid]},
        "resume_contracts": {"type": "resume_contracts", "contracts": [cid]},
        "set_program": {"type": "set_program", "unit": "SELLU1",
                        "period": contract_id(20, 6), "energy": "10.0"},
        "set_unavailability": {"type": "set_unavailability", "unit": "SELLU1",
                               "period": contract_id(20, 6), "unavailable": "1.0"},
        "set_limitation": {"type": "set_limitation", "unit": "SELLU1",
                           "period": contract_id(20, 6), "max_energy": "150.0"},
        "contract_create": {"type": "contract_create", "contract": cid,
                            "close_at": iso(now_ms() + 3_600_000)},
        "contract_open": {"type": "contract_open", "contracts": [cid]},
        "contract_close": {"type": "contract_close", "contracts": [cid]},
        "contract_interrupt": {"type": "contract_interrupt", "contracts": [cid]},
        "contract_resume": {"type": "contract_resume", "contracts": [cid]},
        "hibernate": {"type": "hibernate", "agent": "AG4"},
        "reactivate": {"type": "reactivate", "contracts": [cid], "agents": ["AG4"]},
        "time": {"type": "time"},
        "cancel_agent_orders": {"type": "cancel_agent_orders", "agent": "AG4"},
        "auction_bid": {"type": "auction_bid", "session": AUCTION, "unit": unit,
                        "contract": CA, "side": side,
                        "steps": [{"price": price, "quantity": "1.0"}]},
        "auction_bid_cancel": {"type": "auction_bid_cancel", "session": AUCTION,
                               "bid_id": tgt["bid"]},
        "set_reactivation": {"type": "set_reactivation", "reactivate": True},
        "auction_run": {"type": "auction_run", "session": f"AUC-{role}-{kind}",
                        "step": "open"},
        "auction_delay": {"type": "auction_delay", "session": f"AUC-{role}-{kind}",
                          "delay_s": 60},
        "auction_cancel": {"type": "auction_cancel", "session": f"AUC-{role}-{kind}"},
    }[kind]


async def test_every_kind_is_covered() -> None:
    assert set().union(*DOCUMENTED.values()) == set(ROLES)
    for role, (_, roles) in ROLE_USERS.items():  # the table in the code says the same
        assert {k for k in KINDS if not roles.isdisjoint(ROLES[k])} == DOCUMENTED[role]
    tgt = {"active": 1, "hibernated": 2, "bid": 3}
    dummy = World(None, {}, {}, None, {}, {"AG1": tgt, "AG2": tgt}, {})  # type: ignore[arg-type]
    for kind in KINDS:
        assert _request(dummy, "trader_AG1", kind)["type"] == kind
    # every role is allowed something, and every kind is allowed to someone under test
    for role in ROLE_NAMES:
        assert any(permitted(role, k) for k in KINDS), role
    for kind in KINDS:
        assert any(permitted(r, kind) for r in ROLE_NAMES), kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("role", ROLE_NAMES)
async def test_request_kind_by_role(world: World, role: str, kind: str) -> None:
    c = world.clients[role]
    msg = _request(world, role, kind)
    cid = world.contracts.get((role, kind))
    before = None if cid is None else contract_state(world, cid)
    auction_before = session_state(world, role, kind) if kind in SESSION_KINDS else None
    if not permitted(role, kind):
        ans = await c.request(msg)
        assert (ans["type"], ans["code"]) == ("reject", "NOT_PERMITTED"), ans
        assert " or ".join(sorted(ROLES[kind])) in ans["reason"]
        if cid is not None:
            assert contract_state(world, cid) == before  # nothing happened
        if auction_before is not None:
            assert session_state(world, role, kind) == auction_before
        return
    victim = VICTIM[role]
    tgt = world.targets[victim]
    if kind == "order_entry":
        ans = await c.request(msg)
        assert (ans["type"], ans["code"]) == ("reject", "UNIT_NOT_RESPONSIBLE"), ans
    elif kind == "basket_entry":
        ans = await c.request(msg)
        codes = [ans.get("code")] + [r["code"] for r in ans.get("rejects", [])] + [
            d["code"] for d in ans.get("details", [])]
        assert "UNIT_NOT_RESPONSIBLE" in codes, ans
        assert not ans.get("order_ids"), ans
    elif kind == "order_modify":
        await _same_as_nonexistent(c, msg, "order_id", tgt["active"])
        # neither a hibernated order (ORDER_NOT_ACTIVE for the owner) nor a stale
        # revision (STALE_REVISION for the owner) tells anything
        await _same_as_nonexistent(c, msg, "order_id", tgt["hibernated"])
        await _same_as_nonexistent(c, {**msg, "revision": 7}, "order_id", tgt["active"])
    elif kind == "order_cancel":
        await _same_as_nonexistent(c, msg, "order_id", tgt["active"])
        await _same_as_nonexistent(c, msg, "order_id", tgt["hibernated"])
    elif kind == "order_deactivate":
        await _same_as_nonexistent(c, msg, "order_ids", tgt["active"])
        await _same_as_nonexistent(c, msg, "order_ids", tgt["hibernated"])
    elif kind == "order_activate":
        await _same_as_nonexistent(c, msg, "order_ids", tgt["hibernated"])
        await _same_as_nonexistent(c, msg, "order_ids", tgt["active"])
    elif kind == "cancel_all":
        own_agent = AGENT_OF[ROLE_USERS[role][0]]
        unit, side, price = UNIT_SIDE[victim]
        theirs = await world.traders[victim].request(order(CX, unit, side, price, "1.0"))
        own_unit, own_side, own_price = UNIT_SIDE[own_agent]
        mine = await c.request(order(CX, own_unit, own_side, own_price, "1.0"))
        own_on_cx = {o["order_id"] for o in (await c.request({"type": "query_orders"}))[
            "orders"] if o["contract"] == CX}
        assert mine["order_ids"][0] in own_on_cx
        ans = await c.request(msg)
        assert ans["type"] == "ack", ans
        assert set(ans["order_ids"]) == own_on_cx  # its own, not the other's
        live = world.server.core.engine.orders
        assert theirs["order_ids"][0] in live and mine["order_ids"][0] not in live
    elif kind == "guarantee_request":
        ans = await c.request(msg)
        assert ans["type"] == "ack", ans
        acct = await c.request({"type": "query_account"})
        assert acct["agent"] == AGENT_OF[ROLE_USERS[role][0]]
        assert any(r["amount"] == "100.00" for r in acct["pending_requests"])
    elif kind == "auction_bid":
        ans = await c.request(msg)
        assert (ans["type"], ans["code"]) == ("reject", "UNIT_NOT_RESPONSIBLE"), ans
    elif kind == "auction_bid_cancel":
        await _same_as_nonexistent(c, msg, "bid_id", tgt["bid"], "AUCTION_BID_UNKNOWN")
    elif kind in SESSION_KINDS:
        ans = await c.request(msg)
        assert ans["type"] == "ack", ans
        state, opens_at = session_state(world, role, kind)
        assert state == SESSION_KINDS[kind]
        if kind == "auction_delay":
            assert opens_at == auction_before[1] + 60_000  # type: ignore[index]
    elif kind == "decide_guarantee_request":
        ans = await c.request(msg)
        assert (ans["type"], ans["code"]) == ("reject", "REQUEST_UNKNOWN"), ans
    elif kind in CONTRACT_KINDS:
        ans = await c.request(msg)
        assert ans["type"] == "ack", ans
        assert contract_state(world, cid) == CONTRACT_KINDS[kind][1]  # type: ignore[arg-type]
    else:  # set_breach_action, officers' and system operator's requests, time, ...
        ans = await c.request(msg)
        assert ans["type"] == "ack", ans
        if kind == "suspend_agent":
            acct = await c.request({"type": "query_account", "agent": "AG4"})
            assert acct["suspended"] is True
            assert (await c.request({"type": "reinstate_agent", "agent": "AG4"}))[
                "type"] == "ack"
    c.check_one_answer_each()


# ---------------------------------------------------------------------- queries, streams

QUERIES = ["query_me", "query_contracts", "query_book", "query_orders_own",
           "query_orders_other", "query_trades_other", "query_account_other",
           "query_throttling_other", "subscribe_book", "subscribe_trades",
           "subscribe_states", "subscribe_private_other", "subscribe_private_all",
           "query_agents", "query_audit_own", "query_audit_other", "query_settlement_other",
           "query_public_trades"]


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("role", ROLE_NAMES)
async def test_query_or_subscription_by_role(world: World, role: str, query: str) -> None:
    c = world.clients[role]
    user = ROLE_USERS[role][0]
    own = AGENT_OF[user]
    victim = VICTIM[role]
    if query == "query_me":
        ans = await c.request({"type": "query_me"})
        assert (ans["user"], ans["agent"]) == (user, own)
    elif query == "query_contracts":
        ans = await c.request({"type": "query_contracts"})
        assert {C1, C2, CX} <= {x["contract"] for x in ans["contracts"]}
    elif query == "query_book":
        ans = await c.request({"type": "query_book", "contract": C1})
        assert ans["type"] == "book" and ans["asks"] and ans["bids"]
        for x in ans["asks"] + ans["bids"]:
            assert set(x) == {"entry", "price", "quantity"}
    elif query == "query_orders_own":
        ans = await c.request({"type": "query_orders"})
        assert ans["type"] == "orders" and ans["agent"] == own
        assert all(o["agent"] == own for o in ans["orders"])
        if own in world.targets:
            assert order_targets(world, own) <= {o["order_id"] for o in ans["orders"]}
    elif query in ("query_orders_other", "query_trades_other", "query_account_other"):
        typ = query.removesuffix("_other")
        ans = await c.request({"type": typ, "agent": victim})
        if not sees_everyone(role):
            assert (ans["type"], ans["code"]) == ("reject", "NOT_PERMITTED"), ans
            assert victim not in str(ans)
        elif typ == "query_orders":
            ids = {o["order_id"] for o in ans["orders"]}
            assert order_targets(world, victim) <= ids
            assert all(o["agent"] == victim for o in ans["orders"])
        elif typ == "query_trades":
            assert ans["trades"] and all(t["agent"] == victim for t in ans["trades"])
        else:
            assert (ans["type"], ans["agent"]) == ("account", victim)
    elif query == "query_throttling_other":
        other = OTHER_USER[role]
        ans = await c.request({"type": "query_throttling", "user": other})
        if role == "risk_officer":
            assert (ans["type"], ans["user"]) == ("throttling", other)
        else:
            assert (ans["type"], ans["code"]) == ("reject", "NOT_PERMITTED"), ans
    elif query == "query_agents":
        ans = await c.request({"type": "query_agents"})
        if sees_everyone(role):
            assert {"AG1", "AG2"} <= {a["agent"] for a in ans["agents"]}
        else:
            assert (ans["type"], ans["code"]) == ("reject", "NOT_PERMITTED"), ans
    elif query == "query_audit_own":
        ans = await c.request({"type": "query_audit"})
        assert ans["type"] == "audit", ans
        if not sees_everyone(role):  # only the entries about its own agent
            assert ans["agent"] == own
            assert all(own in e["agents"] for e in ans["entries"])
    elif query == "query_audit_other":
        ans = await c.request({"type": "query_audit", "agent": victim})
        if sees_everyone(role):
            assert ans["type"] == "audit" and all(victim in e["agents"]
                                                  for e in ans["entries"])
        else:
            assert (ans["type"], ans["code"]) == ("reject", "NOT_PERMITTED"), ans
    elif query == "query_settlement_other":
        ans = await c.request({"type": "query_settlement", "agent": victim,
                               "day": C1[3:7] + "-" + C1[7:9] + "-" + C1[9:11]})
        if sees_everyone(role):
            assert (ans["type"], ans["agent"]) == ("settlement", victim), ans
        else:
            assert (ans["type"], ans["code"]) == ("reject", "NOT_PERMITTED"), ans
            assert victim not in str(ans)
    elif query == "query_public_trades":
        ans = await c.request({"type": "query_public_trades", "contract": C1})
        assert ans["type"] == "public_trades"
        for t in ans["trades"]:  # public: no agent, user or unit
            assert not {"agent", "user", "unit", "buy_agent", "sell_agent"} & set(t), t
    elif query in ("subscribe_book", "subscribe_trades"):
        stream = query.removeprefix("subscribe_")
        for typ in ("subscribe", "unsubscribe"):
            ans = await c.request({"type": typ, "stream": stream, "contract": C1})
            assert (ans["type"], ans["stream"]) == ("ack", f"{stream}:{C1}")
    elif query == "subscribe_states":
        for typ in ("subscribe", "unsubscribe"):
            ans = await c.request({"type": typ, "stream": "states"})
            assert (ans["type"], ans["stream"]) == ("ack", "states")
    else:
        agent = victim if query == "subscribe_private_other" else "*"
        ans = await c.request({"type": "subscribe", "stream": "private", "agent": agent})
        if sees_everyone(role):
            assert (ans["type"], ans["stream"]) == ("ack", f"private:{agent}")
            off = await c.request({"type": "unsubscribe", "stream": "private",
                                   "agent": agent})
            assert off["type"] == "ack"
        else:
            assert (ans["type"], ans["code"]) == ("reject", "NOT_PERMITTED"), ans
            hub = world.server.hub
            subscribed = hub.officer_subs | set().union(*hub.private_subs.values())
            assert not any(s.user == user for s in subscribed if s.agent != own)
    c.check_one_answer_each()


# ---------------------------------------------------------------------- nothing crossed


async def test_zz_nothing_crossed(world: World) -> None:
    """Runs last: what every stream carried during the whole suite."""
    # a little more traffic for each agent first
    t = world.traders
    assert (await t["AG1"].request(order(C2, "SELLU1", "SELL", "51.00", "2.0")))[
        "type"] == "ack"
    assert (await t["AG2"].request(order(C2, "BUYU2", "BUY", "51.00", "2.0")))[
        "type"] == "ack"
    assert (await t["AG3"].request(order(C1, "PTBUY4", "BUY", "20.00", "1.0")))[
        "type"] == "ack"
    for c in (*world.observers.values(), world.public):
        await c.request({"type": "query_me"})  # everything before it has arrived
    ids_of: dict[str, set[int]] = {}
    for agent, obs in world.observers.items():
        msgs = obs.stream(f"private:{agent}")
        kinds = {m["type"] for m in msgs}
        assert {"order_report", "account"} <= kinds, (agent, kinds)
        seqs = [m["seq"] for m in msgs]
        start = world.first_seq[agent]
        assert seqs == list(range(start, start + len(seqs))), agent  # nothing lost either
        for m in msgs:
            assert m.get("agent", agent) == agent, m
            if "user" in m:
                assert m["user"] in USERS_OF[agent], m
            assert not {k for k in m if k.startswith(("buy_", "sell_"))}, m
        ids_of[agent] = {m["order_id"] for m in msgs if m["type"] in ("order_report", "trade")}
        # and the connection received no other agent's private stream
        names = {m["stream"] for m in obs.received if str(m.get("stream", "")).startswith(
            "private:")}
        assert names == {f"private:{agent}"}
    assert "trade" in {m["type"] for m in world.observers["AG1"].stream("private:AG1")}
    for a, b in itertools.combinations(ids_of, 2):
        assert not ids_of[a] & ids_of[b], (a, b)
    for role in ("trader_AG1", "trader_AG2"):
        own = AGENT_OF[ROLE_USERS[role][0]]
        names = {m["stream"] for m in world.clients[role].received
                 if str(m.get("stream", "")).startswith("private:")}
        assert names <= {f"private:{own}"}, (role, names)
    # the public streams name no party
    pub = [m for m in world.public.received if m.get("stream")
           and not m.get("kind") and "req_id" not in m]
    assert {m["type"] for m in pub} >= {"book", "public_trade", "contract_state"}
    for m in pub:
        assert not PUBLIC_FORBIDDEN & set(m), m
        text = str(m)
        for user in ROLE_USERS.values():
            assert f"'{user[0]}'" not in text, m
    # the orders everyone went after are as they were
    live = world.server.core.engine.orders
    for tgt in world.targets.values():
        assert live[tgt["active"]].status.value == "ACTIVE"
        assert live[tgt["active"]].revision == 1
        assert live[tgt["hibernated"]].status.value == "HIBERNATED"
        assert world.server.core.auctions.sessions[AUCTION].bids[tgt["bid"]].live
