"""The WebSocket gateway over real sockets: login, trading requests, queries, streams,
the msgpack subprotocol, heartbeats, hibernation on disconnect, back-pressure (book
conflation, slow-consumer disconnect), message size limits, malformed input and floods.

Every server runs in-process on a free port (``Config(port=0)``) with demo reference data
(examples/refdata.toml): ana trades for AG1 (sells on SELLU1), carlos for AG2 (buys on
BUYU2), bea for AG3; rita is a risk officer, marta the market operator.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from wsclient import (
    JSON,
    MSGPACK,
    Client,
    connect_as,
    contract_id,
    is_answer,
    iso,
    now_ms,
    order,
    session_of,
    start_server,
)

from engine.commands import CancelOrder, NewOrder
from engine.model import Side

C1, C2, C3, C4 = (contract_id(h) for h in (10, 11, 12, 13))
PUBLIC_KEYS_FORBIDDEN = {"agent", "user", "unit", "order_id", "client_order_id",
                         "buy_agent", "sell_agent", "buy_user", "sell_user", "buy_unit",
                         "sell_unit", "buy_order", "sell_order"}


class Env:
    """Servers and clients of one test, all stopped and closed at its end."""

    def __init__(self, tmp_path: Any) -> None:
        self.tmp_path = tmp_path
        self.servers: list[Any] = []
        self.clients: list[Client] = []

    async def server(self, **config: Any) -> Any:
        s = await start_server(self.tmp_path / f"srv{len(self.servers)}", (C1, C2, C3),
                               **config)
        self.servers.append(s)
        return s

    async def client(self, server: Any, user: str | None = None,
                     subprotocol: str | None = JSON, **kw: Any) -> Client:
        c = await Client.connect(server.port, subprotocol, **kw)
        self.clients.append(c)
        if user is not None:
            ans = await c.login(user)
            assert ans["type"] == "ack", ans
        return c

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        for s in self.servers:
            await s.stop()


@pytest.fixture
async def env(tmp_path: Any) -> Any:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        await e.close()


async def ask(c: Client, price: str, qty: str = "1.0", contract: str = C1, **kw: Any
              ) -> int:
    """ana (AG1) offers on SELLU1; returns the new order's id."""
    ans = await c.request(order(contract, "SELLU1", "SELL", price, qty, **kw))
    assert ans["type"] == "ack", ans
    (oid,) = ans["order_ids"]
    return int(oid)


async def bid(c: Client, price: str, qty: str = "1.0", contract: str = C1, **kw: Any
              ) -> dict[str, Any]:
    """carlos (AG2) bids on BUYU2; returns the answer."""
    ans = await c.request(order(contract, "BUYU2", "BUY", price, qty, **kw))
    assert ans["type"] == "ack", ans
    return ans


async def orders_of(c: Client, agent: str | None = None) -> dict[int, dict[str, Any]]:
    q: dict[str, Any] = {"type": "query_orders"}
    if agent is not None:
        q["agent"] = agent
    ans = await c.request(q)
    assert ans["type"] == "orders", ans
    return {o["order_id"]: o for o in ans["orders"]}


# ====================================================================== login


async def test_login_with_good_token(env: Env) -> None:
    srv = await env.server()
    c = await env.client(srv)
    ans = await c.login("ana")
    assert ans["type"] == "ack" and ans["kind"] == "login"
    assert (ans["user"], ans["agent"], ans["roles"]) == ("ana", "AG1", ["trader"])
    assert ans["server_time"].endswith("Z")
    me = await c.request({"type": "query_me"})
    assert (me["type"], me["user"], me["agent"]) == ("me", "ana", "AG1")
    again = await c.request({"type": "login", "user": "carlos",
                             "token": "carlos-demo-token"})
    assert (again["type"], again["code"]) == ("reject", "ALREADY_LOGGED_IN")
    c.check_one_answer_each()


async def test_login_wrong_token_and_unknown_user_look_the_same(env: Env) -> None:
    srv = await env.server()
    c = await env.client(srv)
    wrong = await c.login("ana", token="carlos-demo-token")
    unknown = await c.login("nobody-here", token="x")
    for ans in (wrong, unknown):
        assert (ans["type"], ans["code"]) == ("reject", "LOGIN_FAILED")
    assert wrong["reason"] == unknown["reason"]  # no way to tell which users exist
    ok = await c.login("ana")  # the session is still open
    assert ok["type"] == "ack"
    c.check_one_answer_each()


async def test_requests_before_login_are_refused(env: Env) -> None:
    srv = await env.server()
    c = await env.client(srv)
    for msg in ({"type": "query_orders"}, order(C1, "SELLU1", "SELL", "50.00", "1.0"),
                {"type": "subscribe", "stream": "states"}):
        ans = await c.request(msg)
        assert (ans["type"], ans["code"]) == ("reject", "NOT_LOGGED_IN"), ans
    assert not any(o.user == "ana" for o in srv.core.engine.orders.values())


async def test_three_failed_logins_disconnect(env: Env) -> None:
    srv = await env.server()
    c = await env.client(srv)
    for _ in range(2):
        ans = await c.login("ana", token="wrong")
        assert ans["code"] == "LOGIN_FAILED"
    await c.send({"type": "login", "user": "ana", "token": "wrong", "req_id": "third"})
    code, reason = await c.wait_closed()
    assert code == 1008
    assert "failed logins" in (reason or "")
    assert not srv.sessions_of.get("ana")


async def test_third_failed_login_is_answered_before_the_disconnect(env: Env) -> None:
    """Each request gets exactly one answer, also the one that causes the disconnect."""
    srv = await env.server()
    c = await env.client(srv)
    for _ in range(2):
        await c.login("ana", token="wrong")
    await c.send({"type": "login", "user": "ana", "token": "wrong", "req_id": "third"})
    await c.wait_closed()
    assert [m["code"] for m in c.answers["third"]] == ["LOGIN_FAILED"], c.received


async def test_logout_is_acknowledged_then_closed(env: Env) -> None:
    srv = await env.server()
    c = await env.client(srv, "ana")
    await c.send({"type": "logout", "req_id": "bye"})
    code, _ = await c.wait_closed()
    assert code == 1008
    assert [(m["type"], m.get("kind")) for m in c.answers["bye"]] == [("ack", "logout")], \
        c.received


# ====================================================================== trading requests


async def test_order_entry(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv, "ana")
    ans = await ana.request(order(C1, "SELLU1", "SELL", "50.10", "1.5",
                                  client_order_id="ana-1"))
    assert ans["type"] == "ack" and ans["kind"] == "order_entry"
    (oid,) = ans["order_ids"]
    (rep,) = ans["reports"]
    assert (rep["order_id"], rep["action"], rep["status"]) == (oid, "ADDED", "ACTIVE")
    assert (rep["price"], rep["visible"], rep["client_order_id"]) == ("50.10", "1.5", "ana-1")
    live = await orders_of(ana)
    assert live[oid]["price"] == "50.10" and live[oid]["visible"] == "1.5"
    dup = await ana.request(order(C1, "SELLU1", "SELL", "51.00", "1.0",
                                  client_order_id="ana-1"))
    assert (dup["type"], dup["code"]) == ("reject", "DUPLICATE_CLIENT_ORDER_ID")
    out = await ana.request(order(C1, "SELLU1", "SELL", "10000.00", "1.0"))
    assert (out["type"], out["code"]) == ("reject", "PRICE_OUT_OF_RANGE")
    unknown = await ana.request(order(C4, "SELLU1", "SELL", "50.00", "1.0"))
    assert (unknown["type"], unknown["code"]) == ("reject", "CONTRACT_UNKNOWN")
    assert set(await orders_of(ana)) == {oid}
    ana.check_one_answer_each()


async def test_modify_with_revision(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv, "ana")
    oid = await ask(ana, "50.00")
    m1 = await ana.request({"type": "order_modify", "order_id": oid, "revision": 1,
                            "price": "51.00", "quantity": "2.0"})
    assert m1["type"] == "ack", m1
    (rep,) = m1["reports"]
    assert (rep["action"], rep["revision"], rep["price"], rep["visible"]) == (
        "MODIFIED", 2, "51.00", "2.0")
    stale = await ana.request({"type": "order_modify", "order_id": oid, "revision": 1,
                               "price": "52.00", "quantity": "3.0"})
    assert (stale["type"], stale["code"]) == ("reject", "STALE_REVISION")
    o = (await orders_of(ana))[oid]
    assert (o["revision"], o["price"], o["visible"]) == (2, "51.00", "2.0")  # unchanged
    m2 = await ana.request({"type": "order_modify", "order_id": oid, "revision": 2,
                            "price": "49.00", "quantity": "1.0"})
    assert m2["type"] == "ack" and m2["reports"][0]["revision"] == 3
    ana.check_one_answer_each()


async def test_cancel(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv, "ana")
    oid = await ask(ana, "50.00")
    ans = await ana.request({"type": "order_cancel", "order_id": oid})
    assert ans["type"] == "ack"
    assert [(r["order_id"], r["action"], r["status"]) for r in ans["reports"]] == [
        (oid, "CANCELLED", "INACTIVE")]
    assert await orders_of(ana) == {}
    again = await ana.request({"type": "order_cancel", "order_id": oid})
    assert (again["type"], again["code"], again["order_id"]) == ("reject", "ORDER_UNKNOWN", oid)
    ana.check_one_answer_each()


def basket(kind: str, *orders: dict[str, Any]) -> dict[str, Any]:
    return {"type": "basket_entry", "basket": kind,
            "orders": [{k: v for k, v in o.items() if k != "type"} for o in orders]}


async def test_baskets_none_valid_linked(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv, "ana")
    carlos = await env.client(srv, "carlos")
    good = order(C1, "SELLU1", "SELL", "60.00", "1.0")
    bad = order(C1, "BUYU2", "SELL", "60.00", "1.0")  # not ana's unit
    # NONE: each order on its own
    none = await ana.request(basket("NONE", good, bad))
    assert none["type"] == "ack", none
    assert len(none["order_ids"]) == 1
    assert [r["code"] for r in none["rejects"]] == ["UNIT_NOT_RESPONSIBLE"]
    assert set(await orders_of(ana)) == set(none["order_ids"])
    # VALID: all or nothing at entry
    valid_bad = await ana.request(basket("VALID", good, bad))
    assert valid_bad["type"] == "reject", valid_bad
    assert set(await orders_of(ana)) == set(none["order_ids"])
    valid = await ana.request(basket("VALID", good, order(C2, "SELLU1", "SELL", "61.00",
                                                               "1.0")))
    assert valid["type"] == "ack" and len(valid["order_ids"]) == 2
    assert len(await orders_of(ana)) == 3
    # LINKED: every member FOK, all filled or none
    not_fok = await carlos.request(basket(
        "LINKED", order(C1, "BUYU2", "BUY", "60.00", "1.0"),
        order(C2, "BUYU2", "BUY", "61.00", "1.0", exec="FOK")))
    assert (not_fok["type"], not_fok["code"]) == ("reject", "BASKET_MEMBER_INVALID")
    assert "LINKED_MEMBER_NOT_FOK" in [d["code"] for d in not_fok["details"]]
    unfillable = await carlos.request(basket(
        "LINKED", order(C1, "BUYU2", "BUY", "60.00", "1.0", exec="FOK"),
        order(C3, "BUYU2", "BUY", "61.00", "1.0", exec="FOK")))  # nothing offered on C3
    assert unfillable["type"] == "ack", unfillable  # accepted, then killed whole
    assert [(r["action"], r["code"]) for r in unfillable["reports"]] == [
        ("CANCELLED", "LINKED_NOT_FILLABLE")] * 2
    assert len(await orders_of(ana)) == 3  # nothing traded
    assert await orders_of(carlos) == {}
    linked = await carlos.request(basket(
        "LINKED", order(C1, "BUYU2", "BUY", "60.00", "2.0", exec="FOK"),
        order(C2, "BUYU2", "BUY", "61.00", "1.0", exec="FOK")))
    assert linked["type"] == "ack", linked
    assert sorted(r["action"] for r in linked["reports"]) == ["FILLED", "FILLED"]
    assert await orders_of(ana) == {}  # both of ana's C1 offers and her C2 offer filled
    trades = await carlos.request({"type": "query_trades"})
    assert sorted(t["quantity"] for t in trades["trades"]) == ["1.0", "1.0", "1.0"]
    ana.check_one_answer_each()
    carlos.check_one_answer_each()


async def test_deactivate_and_activate(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv, "ana")
    ids = [await ask(ana, p) for p in ("50.00", "51.00", "52.00")]
    d1 = await ana.request({"type": "order_deactivate", "order_ids": [ids[1]]})
    assert d1["type"] == "ack" and d1["order_ids"] == [ids[1]]
    assert [r["action"] for r in d1["reports"]] == ["HIBERNATED"]
    live = await orders_of(ana)
    assert live[ids[1]]["status"] == "HIBERNATED"
    book = await ana.request({"type": "query_book", "contract": C1})
    assert [a["price"] for a in book["asks"]] == ["50.00", "52.00"]
    not_hib = await ana.request({"type": "order_activate", "order_ids": [ids[0]]})
    assert (not_hib["type"], not_hib["code"]) == ("reject", "ORDER_NOT_HIBERNATED")
    a1 = await ana.request({"type": "order_activate", "order_ids": [ids[1]]})
    assert a1["type"] == "ack" and [r["action"] for r in a1["reports"]] == ["ACTIVATED"]
    assert a1["reports"][0]["revision"] == 2
    book = await ana.request({"type": "query_book", "contract": C1})
    assert [a["price"] for a in book["asks"]] == ["50.00", "51.00", "52.00"]
    # all of them: hibernated, then reactivated in their order of arrival
    d_all = await ana.request({"type": "order_deactivate"})
    assert sorted(d_all["order_ids"]) == sorted(ids)
    assert all(o["status"] == "HIBERNATED" for o in (await orders_of(ana)).values())
    assert (await ana.request({"type": "query_book", "contract": C1}))["asks"] == []
    a_all = await ana.request({"type": "order_activate"})
    assert a_all["type"] == "ack"
    assert [r["order_id"] for r in a_all["reports"]] == ids  # arrival order
    assert all(o["status"] == "ACTIVE" for o in (await orders_of(ana)).values())
    ana.check_one_answer_each()


async def test_cancel_all(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv, "ana")
    carlos = await env.client(srv, "carlos")
    on_c1 = [await ask(ana, p) for p in ("50.00", "51.00")]
    on_c2 = [await ask(ana, "50.00", contract=C2)]
    theirs = (await bid(carlos, "40.00"))["order_ids"]
    ans = await ana.request({"type": "cancel_all", "contract": C1})
    assert ans["type"] == "ack" and sorted(ans["order_ids"]) == sorted(on_c1)
    assert set(await orders_of(ana)) == set(on_c2)
    ans = await ana.request({"type": "cancel_all", "scope": "agent"})
    assert ans["type"] == "ack" and ans["order_ids"] == on_c2
    assert await orders_of(ana) == {}
    assert set(await orders_of(carlos)) == set(theirs)  # another agent's: untouched
    ana.check_one_answer_each()


# ====================================================================== queries


async def test_queries(env: Env) -> None:
    srv = await env.server(demo_rate_limits=True)
    ana = await env.client(srv, "ana")
    carlos = await env.client(srv, "carlos")
    cs = await ana.request({"type": "query_contracts"})
    assert cs["type"] == "contracts"
    by_id = {c["contract"]: c for c in cs["contracts"]}
    assert {C1, C2, C3} <= set(by_id)
    assert by_id[C1]["state"] == "TRADE" and by_id[C1]["close_at"].endswith("Z")
    acct = await ana.request({"type": "query_account"})
    assert (acct["type"], acct["agent"], acct["reserved"]) == ("account", "AG1", "50000.00")
    assert acct["free"] == "50000.00"
    oid = await ask(ana, "50.00", "2.0")
    await bid(carlos, "50.00", "0.5")
    orders = await orders_of(ana)
    assert orders[oid]["filled"] == "0.5" and orders[oid]["visible"] == "1.5"
    trades = await ana.request({"type": "query_trades"})
    assert [(t["order_id"], t["side"], t["price"], t["quantity"]) for t in trades["trades"]
            ] == [(oid, "SELL", "50.00", "0.5")]
    book = await ana.request({"type": "query_book", "contract": C1})
    assert (book["type"], book["contract"], book["bids"]) == ("book", C1, [])
    assert [(a["price"], a["quantity"]) for a in book["asks"]] == [("50.00", "1.5")]
    bad = await ana.request({"type": "query_book", "contract": "PH-20000101-01"})
    assert (bad["type"], bad["field"]) == ("error", "contract")
    thr = await ana.request({"type": "query_throttling"})
    assert thr["type"] == "throttling" and thr["user"] == "ana"
    assert thr["state"] == "OK"
    assert {r["window_ms"] for r in thr["rules"]} == {1000, 60000}
    assert sum(r["used"] for r in thr["rules"] if r["window_ms"] == 60000) >= 1
    carlos_acct = await carlos.request({"type": "query_account"})
    assert Decimal(carlos_acct["obligations"]) > 0  # carlos owes for what it bought
    ana.check_one_answer_each()


# ====================================================================== streams


def _key(side: str, price: str, entry: int) -> tuple[Decimal, int]:
    p = Decimal(price)
    return (-p if side == "BUY" else p, entry)


class BookView:
    """A client's copy of the depth-limited book, rebuilt from a snapshot and deltas."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        assert snapshot["snapshot"] is True
        self.seq = snapshot["seq"]
        self.sides: dict[str, dict[int, tuple[str, str]]] = {"BUY": {}, "SELL": {}}
        for side, key in (("BUY", "bids"), ("SELL", "asks")):
            for x in snapshot[key]:
                self.sides[side][x["entry"]] = (x["price"], x["quantity"])

    def apply(self, d: dict[str, Any]) -> None:
        assert d["seq"] == self.seq + 1, f"gap: {self.seq} -> {d['seq']}"
        self.seq = d["seq"]
        side = self.sides[d["side"]]
        if d["action"] == "ADD":
            assert d["entry"] not in side
            side[d["entry"]] = (d["price"], d["quantity"])
        elif d["action"] == "UPDATE":
            assert d["entry"] in side
            side[d["entry"]] = (side[d["entry"]][0], d["quantity"])
        else:
            assert d["action"] == "REMOVE" and d["entry"] in side
            del side[d["entry"]]

    def levels(self, side: str) -> list[tuple[int, str, str]]:
        s = self.sides[side]
        return [(e, s[e][0], s[e][1]) for e in sorted(s, key=lambda e: _key(side, s[e][0], e))]


def snap_levels(snap: dict[str, Any], key: str) -> list[tuple[int, str, str]]:
    return [(x["entry"], x["price"], x["quantity"]) for x in snap[key]]


async def test_book_snapshot_then_deltas_with_depth_limit(env: Env) -> None:
    srv = await env.server(depth=3)
    ana = await env.client(srv, "ana")
    carlos = await env.client(srv, "carlos")
    watcher = await env.client(srv, "bea")
    sub = await watcher.request({"type": "subscribe", "stream": "book", "contract": C1})
    assert sub["type"] == "ack" and sub["stream"] == f"book:{C1}"
    snap = await watcher.wait_for(lambda m: m.get("type") == "book" and "req_id" not in m)
    view = BookView(snap)
    used = 0

    async def check() -> tuple[list[str], list[str]]:
        """Rebuild from the deltas received so far, compare with a fresh query_book."""
        nonlocal used
        q = await watcher.request({"type": "query_book", "contract": C1})
        deltas = [m for m in watcher.stream(f"book:{C1}") if not m.get("snapshot")]
        for d in deltas[used:]:
            assert set(d) >= {"seq", "action", "entry", "side", "price", "quantity"}
            assert not PUBLIC_KEYS_FORBIDDEN & set(d), d
            view.apply(d)
        used = len(deltas)
        assert view.seq == q["seq"]
        assert view.levels("SELL") == snap_levels(q, "asks")
        assert view.levels("BUY") == snap_levels(q, "bids")
        assert len(q["asks"]) <= 3 and len(q["bids"]) <= 3
        return [x[1] for x in view.levels("SELL")], [x[1] for x in view.levels("BUY")]

    ids = {p: await ask(ana, p) for p in ("54.00", "52.00", "50.00", "53.00", "51.00")}
    assert await check() == (["50.00", "51.00", "52.00"], [])
    await ana.request({"type": "order_cancel", "order_id": ids["50.00"]})  # 53 enters
    assert await check() == (["51.00", "52.00", "53.00"], [])
    ids["49.50"] = await ask(ana, "49.50", "2.0")  # 53 leaves the view
    assert await check() == (["49.50", "51.00", "52.00"], [])
    await bid(carlos, "49.50", "0.5")  # partial fill: an UPDATE of the entry
    assert await check() == (["49.50", "51.00", "52.00"], [])
    assert view.levels("SELL")[0][2] == "1.5"
    await bid(carlos, "49.50", "1.5")  # the rest: REMOVE, and 53 comes back
    assert await check() == (["51.00", "52.00", "53.00"], [])
    for p in ("40.00", "41.00", "42.00", "43.00", "39.00"):
        await bid(carlos, p)
    assert await check() == (["51.00", "52.00", "53.00"], ["43.00", "42.00", "41.00"])
    await bid(carlos, "52.00", "2.0")  # takes 51 and 52: 53 and 54 enter the view
    assert await check() == (["53.00", "54.00"], ["43.00", "42.00", "41.00"])
    await carlos.request({"type": "cancel_all"})
    assert await check() == (["53.00", "54.00"], [])
    await ana.request({"type": "order_modify", "order_id": ids["54.00"], "revision": 1,
                       "price": "45.00", "quantity": "1.0"})
    assert await check() == (["45.00", "53.00"], [])
    # an iceberg shows its peak; each refill is a new entry, at the back of its price
    await ask(ana, "46.00", "3.0", iceberg={"peak": "1.0"})
    await ask(ana, "46.00", "1.0")
    assert await check() == (["45.00", "46.00", "46.00"], [])
    first = view.levels("SELL")[1]
    assert first[2] == "1.0"
    await bid(carlos, "46.00", "2.0")  # 45.00 and the iceberg's first peak
    assert await check() == (["46.00", "46.00", "53.00"], [])
    levels = view.levels("SELL")
    assert first[0] not in [e for e, _, _ in levels]  # the refill is a new entry
    assert [q for _, _, q in levels[:2]] == ["1.0", "1.0"]
    assert levels[1][0] > levels[0][0]  # behind the order that was waiting
    seqs = [m["seq"] for m in watcher.stream(f"book:{C1}")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # snapshot, then no gap
    assert view.seq > 10


async def test_public_trades_stream(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv, "ana")
    carlos = await env.client(srv, "carlos")
    watcher = await env.client(srv, "bea")
    sub = await watcher.request({"type": "subscribe", "stream": "trades", "contract": C1})
    assert sub["type"] == "ack"
    await ask(ana, "50.00", "2.0")
    await ask(ana, "50.50", "1.0")
    await bid(carlos, "51.00", "2.5")
    other = await ask(ana, "50.00", "1.0", contract=C2)
    await bid(carlos, "50.00", "1.0", contract=C2)  # not subscribed: not received
    await watcher.request({"type": "query_me"})  # everything before it has arrived
    trades = watcher.stream(f"trades:{C1}")
    assert [(t["type"], t["price"], t["quantity"], t["aggressor"]) for t in trades] == [
        ("public_trade", "50.00", "2.0", "BUY"), ("public_trade", "50.50", "0.5", "BUY")]
    assert [t["seq"] for t in trades] == [trades[0]["seq"], trades[0]["seq"] + 1]
    for t in trades:
        assert t["contract"] == C1 and isinstance(t["trade_id"], int)
        assert not PUBLIC_KEYS_FORBIDDEN & set(t), t
        assert "ana" not in str(t) and "carlos" not in str(t)
    assert other > 0
    unsub = await watcher.request({"type": "unsubscribe", "stream": "trades",
                                   "contract": C1})
    assert unsub["type"] == "ack"
    await ask(ana, "50.00", "1.0")
    await bid(carlos, "50.00", "1.0")
    await watcher.request({"type": "query_me"})
    assert len(watcher.stream(f"trades:{C1}")) == 2


async def test_trades_subscription_tells_where_the_sequence_starts(env: Env) -> None:
    """docs/protocol.md: every stream's seq is consecutive, «starting after the value in
    the subscription's ack or snapshot»."""
    srv = await env.server()
    ana = await env.client(srv, "ana")
    carlos = await env.client(srv, "carlos")
    await ask(ana, "50.00", "2.0")
    await bid(carlos, "50.00", "1.0")  # a trade before the subscription
    watcher = await env.client(srv, "bea")
    sub = await watcher.request({"type": "subscribe", "stream": "trades", "contract": C1})
    assert sub["type"] == "ack"
    await bid(carlos, "50.00", "1.0")
    t = await watcher.wait_for(lambda m: m.get("type") == "public_trade")
    assert "seq" in sub, sub
    assert t["seq"] == sub["seq"] + 1


async def test_gtd_order_expires_and_the_owner_is_told(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv, "ana")
    await ana.request({"type": "subscribe", "stream": "private"})
    oid = await ask(ana, "50.00", validity="GTD", expiry=iso(now_ms() + 700))
    rep = await ana.wait_for(lambda m: m.get("type") == "order_report"
                             and m["action"] == "EXPIRED", timeout=5)
    assert (rep["order_id"], rep["status"], rep["code"]) == (oid, "INACTIVE", "GTD_EXPIRED")
    assert await orders_of(ana) == {}
    assert (await ana.request({"type": "query_book", "contract": C1}))["asks"] == []


async def test_contract_states_stream(env: Env) -> None:
    srv = await env.server()
    watcher = await env.client(srv, "ana")
    marta = await env.client(srv, "marta")
    sub = await watcher.request({"type": "subscribe", "stream": "states"})
    assert sub["type"] == "ack" and isinstance(sub["seq"], int)
    close_at = iso(now_ms() + 3_600_000)
    for msg in ({"type": "contract_create", "contract": C4, "close_at": close_at},
                {"type": "contract_open", "contracts": [C4]},
                {"type": "contract_interrupt", "contracts": [C4], "reason": "test"},
                {"type": "contract_resume", "contracts": [C4]},
                {"type": "contract_close", "contracts": [C4]}):
        ans = await marta.request(msg)
        assert ans["type"] == "ack", ans
    await watcher.wait_for(lambda m: m.get("type") == "round_closed")
    msgs = watcher.stream("states")
    states = [(m["contract"], m["state"], m["previous"]) for m in msgs
              if m["type"] == "contract_state"]
    assert states == [(C4, "UPC", None), (C4, "TRADE", "UPC"), (C4, "INT", "TRADE"),
                      (C4, "TRADE", "INT"), (C4, "FIN", "TRADE")]
    assert [m["seq"] for m in msgs] == list(range(sub["seq"] + 1, sub["seq"] + 1 + len(msgs)))
    assert msgs[0]["close_at"] == close_at
    (rc,) = [m for m in msgs if m["type"] == "round_closed"]
    assert C4 in rc["contracts"]
    cs = await watcher.request({"type": "query_contracts"})
    assert {c["contract"]: c["state"] for c in cs["contracts"]}[C4] == "FIN"


async def test_a_field_of_another_stream_is_refused_not_ignored(env: Env) -> None:
    """A subscription naming a field its stream has not (found by a black-box test:
    ``private`` with a ``contract`` subscribed to the agent's private stream, the
    contract silently ignored)."""
    srv = await env.server()
    ana = await env.client(srv, "ana")
    for msg, field in (({"stream": "private", "contract": C1}, "contract"),
                       ({"stream": "states", "contract": C1}, "contract"),
                       ({"stream": "states", "agent": "AG1"}, "agent"),
                       ({"stream": "book", "contract": C1, "agent": "AG1"}, "agent")):
        for kind in ("subscribe", "unsubscribe"):
            ans = await ana.request({"type": kind, **msg})
            assert (ans["type"], ans["field"]) == ("error", field), (msg, ans)
    ok = await ana.request({"type": "subscribe", "stream": "private", "agent": "AG1"})
    assert (ok["type"], ok["stream"]) == ("ack", "private:AG1")


async def test_private_stream(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv, "ana")
    carlos = await env.client(srv, "carlos")
    sub = await ana.request({"type": "subscribe", "stream": "private"})
    assert (sub["type"], sub["stream"]) == ("ack", "private:AG1")
    oid = await ask(ana, "50.00", "2.0", client_order_id="p-1")
    (bought,) = (await bid(carlos, "50.00", "2.0"))["order_ids"]
    await ana.wait_for(lambda m: m.get("type") == "order_report" and m["action"] == "FILLED")
    await ana.request({"type": "query_me"})
    msgs = ana.stream("private:AG1")
    kinds = [(m["type"], m.get("action")) for m in msgs]
    assert ("order_report", "ADDED") in kinds and ("order_report", "FILLED") in kinds
    assert ("trade", None) in kinds and ("account", None) in kinds
    assert kinds.index(("order_report", "ADDED")) < kinds.index(("order_report", "FILLED"))
    assert [m["seq"] for m in msgs] == list(range(sub["seq"] + 1, sub["seq"] + 1 + len(msgs)))
    added = next(m for m in msgs if m.get("action") == "ADDED")
    assert (added["order_id"], added["client_order_id"], added["user"]) == (oid, "p-1", "ana")
    (trade,) = [m for m in msgs if m["type"] == "trade"]
    assert (trade["side"], trade["order_id"], trade["user"], trade["agent"], trade["unit"]) \
        == ("SELL", oid, "ana", "AG1", "SELLU1")
    assert (trade["price"], trade["quantity"]) == ("50.00", "2.0")
    assert bought not in trade.values() and "carlos" not in str(trade)
    assert not {k for k in trade if k.startswith(("buy_", "sell_"))}
    accounts = [m for m in msgs if m["type"] == "account"]
    assert all(a["agent"] == "AG1" for a in accounts)
    for m in msgs:
        assert m.get("agent", "AG1") == "AG1" and m.get("user", "ana") == "ana", m


async def test_private_stream_numbers_messages_nobody_heard(env: Env) -> None:
    """A private message is built only for a listener, but every message takes its number
    in the agent's stream whoever listens: a session subscribing late starts from the same
    sequence number a session subscribed all along has reached."""
    reached = {}
    for listen_first in (True, False):
        srv = await env.server()
        ana = await env.client(srv, "ana")
        carlos = await env.client(srv, "carlos")
        if listen_first:
            first = await ana.request({"type": "subscribe", "stream": "private"})
        oid = await ask(ana, "50.00", "2.0")  # report, account
        await bid(carlos, "50.00", "1.0")  # AG1: trade, report, account
        cancel = await ana.request({"type": "order_cancel", "order_id": oid})
        assert cancel["type"] == "ack" and cancel["reports"][0]["action"] == "CANCELLED"
        bad = await ana.request({"type": "order_cancel", "order_id": oid})  # a reject
        assert bad["type"] == "reject"
        await ana.request({"type": "query_me"})
        if listen_first:
            msgs = ana.stream("private:AG1")
            assert [m["seq"] for m in msgs] == list(
                range(first["seq"] + 1, first["seq"] + 1 + len(msgs)))
            assert {m["type"] for m in msgs} >= {"order_report", "trade", "account", "reject"}
            reached[listen_first] = msgs[-1]["seq"]
        else:
            late = await ana.request({"type": "subscribe", "stream": "private"})
            assert ana.stream("private:AG1") == []
            reached[listen_first] = late["seq"]
        nxt = await ask(ana, "51.00")
        report = await ana.wait_for(lambda m, n=nxt: m.get("stream") == "private:AG1"
                                    and m.get("order_id") == n)
        assert report["seq"] == reached[listen_first] + 1
    assert reached[True] == reached[False] > 0


async def test_two_traders_trade_and_both_see_it(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv, "ana")
    carlos = await env.client(srv, "carlos")
    for c in (ana, carlos):
        assert (await c.request({"type": "subscribe", "stream": "private"}))["type"] == "ack"
    sold = await ask(ana, "48.00", "3.0")
    ans = await bid(carlos, "49.00", "1.0")
    (bought,) = ans["order_ids"]
    assert ans["reports"][0]["action"] == "FILLED"
    t_ana = await ana.wait_for(lambda m: m.get("type") == "trade")
    t_carlos = await carlos.wait_for(lambda m: m.get("type") == "trade")
    assert t_ana["trade_id"] == t_carlos["trade_id"]
    assert (t_ana["price"], t_carlos["price"]) == ("48.00", "48.00")  # the resting price
    assert (t_ana["side"], t_ana["order_id"], t_ana["user"]) == ("SELL", sold, "ana")
    assert (t_carlos["side"], t_carlos["order_id"], t_carlos["user"]) == (
        "BUY", bought, "carlos")
    assert t_carlos["aggressor"] == "BUY"
    assert "ana" not in str(t_carlos) and "carlos" not in str(t_ana)
    rep = await ana.wait_for(lambda m: m.get("type") == "order_report"
                             and m["action"] == "PARTIALLY_FILLED")
    assert (rep["order_id"], rep["filled"], rep["visible"]) == (sold, "1.0", "2.0")
    for c, oid in ((ana, sold), (carlos, bought)):
        tr = await c.request({"type": "query_trades"})
        assert [(t["trade_id"], t["order_id"]) for t in tr["trades"]] == [
            (t_ana["trade_id"], oid)]


# ====================================================================== msgpack, heartbeats


async def test_msgpack_subprotocol(env: Env) -> None:
    srv = await env.server()
    c = await env.client(srv, subprotocol=MSGPACK)
    assert c.ws.subprotocol == MSGPACK
    ans = await c.login("ana")
    assert ans["type"] == "ack" and ans["agent"] == "AG1"
    me = await c.request({"type": "query_me"})
    assert me["user"] == "ana"
    cs = await c.request({"type": "query_contracts"})
    assert C1 in {x["contract"] for x in cs["contracts"]}
    await c.send_raw(b"\xc1")  # never used in msgpack
    err = await c.wait_for(lambda m: m.get("type") == "error")
    assert err["code"] == "INVALID_ENCODING"
    assert (await c.request({"type": "query_me"}))["type"] == "me"
    plain = await env.client(srv, subprotocol=None)  # no subprotocol asked: JSON
    assert (await plain.login("carlos"))["type"] == "ack"


async def test_msgpack_keys_that_are_not_text_are_refused_by_name(env: Env) -> None:
    """A msgpack map may have binary keys (JSON cannot): such a message gets an error that
    says the field names must be text, is not guessed at, and the session goes on."""
    import msgpack

    srv = await env.server()
    c = await env.client(srv, "ana", subprotocol=MSGPACK)
    await c.send_raw(msgpack.packb({"type": "query_me", b"req_id": "k"}))
    err = await c.wait_for(lambda m: m.get("type") == "error")
    assert err["field"] == "message" and "string" in err["reason"], err
    assert (await c.request({"type": "query_me"}))["type"] == "me"


async def test_msgpack_carries_integer_ticks(env: Env) -> None:
    """docs/protocol.md: on msgpack, prices and quantities are integer ticks (cents of
    €/MWh, tenths of MWh) and instants integer milliseconds."""
    srv = await env.server()
    c = await env.client(srv, "ana", subprotocol=MSGPACK)
    ans = await c.request({"type": "order_entry", "contract": C1, "unit": "SELLU1",
                           "side": "SELL", "price": 5010, "quantity": 15})
    assert ans["type"] == "ack", ans
    (rep,) = ans["reports"]
    assert (rep["price"], rep["visible"]) == (5010, 15)


async def test_heartbeats(env: Env) -> None:
    srv = await env.server(heartbeat_s=0.2)
    c = await env.client(srv, "ana")
    start = len(c.received)
    await asyncio.sleep(1.0)
    beats = [m for m in c.received[start:] if m.get("type") == "heartbeat"]
    assert len(beats) >= 3
    times = [m["server_time"] for m in beats]
    assert times == sorted(times) and all(t.endswith("Z") for t in times)
    echo = await c.request({"type": "heartbeat", "req_id": "hb-1"})
    assert (echo["type"], echo["req_id"]) == ("heartbeat", "hb-1")


# ====================================================================== disconnect


async def test_on_disconnect_hibernate(env: Env) -> None:
    srv = await env.server()
    ana = await env.client(srv)
    assert (await ana.login("ana", on_disconnect="hibernate"))["type"] == "ack"
    carlos = await env.client(srv, "carlos")  # default: nothing happens on disconnect
    mine = await ask(ana, "55.00")
    theirs = (await bid(carlos, "40.00"))["order_ids"][0]
    await ana.close()
    await carlos.close()
    rita = await env.client(srv, "rita")
    for _ in range(50):
        o = await orders_of(rita, "AG1")
        if o[mine]["status"] == "HIBERNATED":
            break
        await asyncio.sleep(0.05)
    assert o[mine]["status"] == "HIBERNATED"
    assert (await orders_of(rita, "AG2"))[theirs]["status"] == "ACTIVE"
    book = await rita.request({"type": "query_book", "contract": C1})
    assert book["asks"] == [] and len(book["bids"]) == 1
    # ana sees it in her agent's audit trail (an entry naming no agent is officers' only)
    assert [e for e in srv.audit.query(view_of="AG1") if e["action"] == "hibernate_orders"], \
        srv.audit.query(view_of="AG1")
    # back again: the owner reactivates them
    ana2 = await env.client(srv, "ana")
    act = await ana2.request({"type": "order_activate"})
    assert [r["order_id"] for r in act["reports"]] == [mine]
    bad = await env.client(srv)
    bad_login = await bad.login("ana", on_disconnect="cancel")
    assert (bad_login["type"], bad_login["field"]) == ("error", "on_disconnect")


# ====================================================================== back-pressure


def _shrink_server_sndbuf(server: Any, user: str) -> Any:
    session = session_of(server, user)
    sock = session.transport.ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return session


async def _slow_client(env: Env, srv: Any, user: str, subscribe: dict[str, Any]) -> Client:
    """A client that logs in and subscribes, then reads nothing (tiny buffers both sides)."""
    c = await env.client(srv, read=False, rcvbuf=4096, max_queue=1)
    await c.send({"type": "login", "user": user, "token": f"{user}-demo-token",
                  "req_id": "l"})
    assert c.decode(await c.ws.recv())["type"] == "ack"
    await c.send({**subscribe, "req_id": "s"})
    assert c.decode(await c.ws.recv())["type"] == "ack"
    return c


async def _churn(srv: Any, rounds: int, contract: str = C1, start: int = 0) -> None:
    """ana's offers come and go (in-process, through the sequencer): book deltas and
    private messages for AG1.  At most 10 of them rest at a time (energy limits)."""
    seq = srv.sequencer
    live: list[int] = []
    for i in range(start, start + rounds):
        cmd = NewOrder("ana", "AG1", "SELLU1", contract, Side.SELL, 5000 + i % 37, 10,
                       req_id=f"churn{i}")
        events = await seq.submit(cmd, "ana")
        live.extend(e.order_id for e in events if type(e).__name__ == "OrderReport")
        assert live, events
        if len(live) > 10:
            seq.submit_nowait(CancelOrder("ana", "AG1", live.pop(0)), "ana")
    await asyncio.gather(*(seq.submit(CancelOrder("ana", "AG1", o), "ana") for o in live))


async def _slow_book_reader(env: Env) -> tuple[Any, Client, Any]:
    """A server, bea following C1's book without reading, and her session there."""
    srv = await env.server(max_queue=40, heartbeat_s=3600)
    slow = await _slow_client(env, srv, "bea", {"type": "subscribe", "stream": "book",
                                                "contract": C1})
    return srv, slow, _shrink_server_sndbuf(srv, "bea")


async def test_slow_book_consumer_is_conflated(env: Env) -> None:
    srv, slow, session = await _slow_book_reader(env)
    for k in range(6):
        await _churn(srv, 100, start=100 * k)
        assert len(session._out) <= 40  # bounded, whatever the client does
    assert session.dropped_book_messages > 0
    assert not session._closing  # book deltas never get a consumer disconnected
    slow.start_reading()
    conflated = await slow.wait_for(lambda m: m.get("type") == "book" and m.get("conflated"),
                                    timeout=10)
    assert conflated["snapshot"] is True and conflated["contract"] == C1
    await _churn(srv, 30, start=1000)  # the stream goes on from the fresh snapshot
    ana = await env.client(srv, "ana")
    q = await ana.request({"type": "query_book", "contract": C1})
    await slow.wait_for(lambda m: m.get("seq") == q["seq"] and m.get("type") == "book",
                        timeout=10)
    i = slow.received.index(conflated)
    view = BookView(conflated)
    for m in slow.received[i + 1:]:
        if m.get("type") == "book" and m.get("snapshot") is False:
            view.apply(m)
    assert view.seq == q["seq"]
    assert view.levels("SELL") == snap_levels(q, "asks")
    assert not slow.closed.is_set()


async def test_a_book_unsubscribed_while_conflated_gets_no_snapshot_later(env: Env) -> None:
    """A slow consumer's book falls behind (a fresh snapshot is due), then the client
    unsubscribes: nothing of that book reaches it afterwards (a conflated snapshot of the
    book it had left arrived once it caught up)."""
    srv, slow, session = await _slow_book_reader(env)
    for k in range(6):
        await _churn(srv, 100, start=100 * k)
        if session._stale_books:
            break
    assert session._stale_books == {C1}
    await slow.send({"type": "unsubscribe", "stream": "book", "contract": C1,
                     "req_id": "u"})
    for _ in range(100):
        if session not in srv.hub.book_subs[C1]:
            break
        await asyncio.sleep(0.01)
    assert session not in srv.hub.book_subs[C1] and not session._stale_books
    slow.start_reading()
    await slow.wait_for(lambda m: m.get("req_id") == "u", timeout=10)
    await _churn(srv, 20, start=1000)
    heartbeat = await slow.request({"type": "heartbeat"})  # everything before it is read
    i = slow.received.index(heartbeat)
    u = next(j for j, m in enumerate(slow.received) if m.get("req_id") == "u")
    assert not [m for m in slow.received[u + 1:i] if m.get("type") == "book"]
    assert not [m for m in slow.received if m.get("conflated")]


async def test_slow_private_consumer_is_disconnected_with_a_reason(env: Env) -> None:
    """A consumer reading nothing: its backlog reaches the hard bound (ten times
    max_queue), and it is let go at once, whatever max_behind_s says."""
    srv = await env.server(max_queue=30, heartbeat_s=3600, max_behind_s=3600)
    slow = await _slow_client(env, srv, "ana", {"type": "subscribe", "stream": "private"})
    session = _shrink_server_sndbuf(srv, "ana")
    for k in range(6):
        await _churn(srv, 50, start=50 * k)
        assert len(session._out) <= 300 + 5  # the hard bound, plus one command's messages
    assert session._closing and "slow consumer" in session._closing
    await _churn(srv, 100, start=1000)
    assert len(session._out) <= 305  # the memory of a dead session does not grow
    slow.start_reading()
    code, reason = await slow.wait_closed(10)
    assert code == 1008 and "slow consumer" in (reason or "")
    last = [m for m in slow.received if m.get("type") == "error"]
    assert last and last[-1]["code"] == "DISCONNECTED" and "slow" in last[-1]["reason"]
    # the others are fine
    ana = await env.client(srv, "ana")
    assert (await ana.request({"type": "query_me"}))["type"] == "me"


async def test_stuck_consumer_is_let_go_without_reading(env: Env) -> None:
    """A consumer that overflowed and reads nothing at all is disconnected promptly: the
    server does not keep its connection and its subscriptions until the keepalive ping
    times out."""
    srv = await env.server(max_queue=30, heartbeat_s=3600, max_behind_s=0.5)
    slow = await _slow_client(env, srv, "ana", {"type": "subscribe", "stream": "private"})
    session = _shrink_server_sndbuf(srv, "ana")
    try:
        for k in range(6):
            await _churn(srv, 50, start=50 * k)
        assert session._closing
        for _ in range(30):
            if session not in srv.hub.private_subs["AG1"]:
                break
            await asyncio.sleep(0.1)
        assert session not in srv.hub.private_subs["AG1"], "still subscribed after 3 s"
        assert session not in srv.sessions_of["ana"]
    finally:
        slow.start_reading()  # let it go now (else the server's stop waits 10 s for it)
        await slow.wait_closed(5)


async def test_a_consumer_that_stays_behind_is_let_go_after_max_behind_s(env: Env) -> None:
    """More than max_queue (30) messages waiting, well below the hard bound (300), for
    longer than max_behind_s: disconnected, saying so; not before."""
    srv = await env.server(max_queue=30, heartbeat_s=3600, max_behind_s=1.0)
    slow = await _slow_client(env, srv, "ana", {"type": "subscribe", "stream": "private"})
    session = _shrink_server_sndbuf(srv, "ana")
    try:
        await _churn(srv, 60)
        assert 30 < len(session._out) < 300 and not session._closing
        t0 = asyncio.get_running_loop().time()
        while not session._closing and asyncio.get_running_loop().time() - t0 < 5:
            await asyncio.sleep(0.05)
        waited = asyncio.get_running_loop().time() - t0
        assert session._closing == "slow consumer: more than 30 messages waiting for 1 s"
        assert 0.5 < waited < 2.0, waited
    finally:
        slow.start_reading()
        await slow.wait_closed(5)


async def test_a_consumer_behind_for_a_moment_is_kept(env: Env) -> None:
    """The same backlog, and the client starts reading before max_behind_s: it gets every
    message, and stays connected."""
    srv = await env.server(max_queue=30, heartbeat_s=3600, max_behind_s=3.0)
    slow = await _slow_client(env, srv, "ana", {"type": "subscribe", "stream": "private"})
    session = _shrink_server_sndbuf(srv, "ana")
    await _churn(srv, 60)
    assert len(session._out) > 30
    slow.start_reading()
    hb = await slow.request({"type": "heartbeat"})
    assert hb["type"] == "heartbeat" and not session._closing
    await asyncio.sleep(3.5)  # past max_behind_s: caught up long before, nothing happens
    assert not session._closing and not slow.closed.is_set()
    assert (await slow.request({"type": "heartbeat"}))["type"] == "heartbeat"


async def test_one_requests_many_messages_do_not_drop_a_reading_consumer(env: Env) -> None:
    """A cancel_all of 12 orders sends 12 order reports (and account updates) at once:
    more than the hard bound of a session with max_queue 1 (10 messages).  What one
    commit produces is not held against the session: every report arrives, and the
    connection stays (before, such a session was let go: "outbound queue full")."""
    srv = await env.server(max_queue=1, heartbeat_s=3600)
    ana = await env.client(srv, "ana")
    await ana.request({"type": "subscribe", "stream": "private"})
    ids = []
    for i in range(12):
        ids.append(await ask(ana, f"{50 + i}.00", contract=(C1, C2, C3)[i % 3]))
    ans = await ana.request({"type": "cancel_all", "scope": "agent"})
    assert ans["type"] == "ack" and sorted(ans["order_ids"]) == sorted(ids)
    await ana.wait_for(lambda m: m.get("type") == "order_report"
                       and m.get("order_id") == ans["order_ids"][-1]
                       and m.get("action") == "CANCELLED", timeout=10)
    cancelled = {m["order_id"] for m in ana.received
                 if m.get("type") == "order_report" and m.get("action") == "CANCELLED"}
    assert cancelled == set(ids)
    assert not ana.closed.is_set()
    assert (await ana.request({"type": "query_me"}))["type"] == "me"


# ====================================================================== malformed input


async def test_oversize_message_gets_an_error_naming_the_limit(env: Env) -> None:
    srv = await env.server(max_message_bytes=1000, max_frame_bytes=20_000)
    c = await env.client(srv, "ana")
    await c.send({"type": "query_me", "pad": "x" * 1500})
    err = await c.wait_for(lambda m: m.get("type") == "error")
    assert err["code"] == "TOO_LARGE" and "1000" in err["reason"]
    assert (await c.request({"type": "query_me"}))["type"] == "me"  # still open
    await c.send_raw("y" * 30_000)  # above the frame limit: the connection goes (1009)
    code, _ = await c.wait_closed()
    assert code == 1009


async def test_oversize_limit_counts_bytes_not_characters(env: Env) -> None:
    srv = await env.server(max_message_bytes=1000)
    c = await env.client(srv, "ana")
    text = '{"type":"query_me","pad":"' + "€" * 600 + '"}'  # 628 characters, 1828 bytes
    assert len(text.encode()) > 1000
    await c.send_raw(text)
    await c.request({"type": "heartbeat"})
    assert [m["code"] for m in c.errors()] == ["TOO_LARGE"], c.received


MALFORMED = [
    ("{not json", "INVALID_ENCODING", "message", None),
    ('["a", "list"]', "INVALID_FIELD", "message", None),
    ({"type": "no_such_type"}, "INVALID_FIELD", "type", None),
    ({"req_id": "x"}, "INVALID_FIELD", "type", None),
    ({"type": "order_entry", "contract": C1, "unit": "SELLU1", "side": "SELL",
      "quantity": "1.0"}, "INVALID_FIELD", "price", "Field required"),
    (order(C1, "SELLU1", "SELL", "50.001", "1.0"), "INVALID_FIELD", "price", "3 decimals"),
    (order(C1, "SELLU1", "SELL", "50.00", "1.05"), "INVALID_FIELD", "quantity", "2 decimals"),
    (order(C1, "SELLU1", "SELL", 50, "1.0"), "INVALID_FIELD", "price", "decimal string"),
    (order(C1, "SELLU1", "SELL", "NaN", "1.0"), "INVALID_FIELD", "price", None),
    (order(C1, "SELLU1", "SELL", "5e1", "1.0"), "INVALID_FIELD", "price", None),
    (order(C1, "SELLU1", "SELL", True, "1.0"), "INVALID_FIELD", "price", None),
    (order(C1, "SELLU1", "SIDEWAYS", "50.00", "1.0"), "INVALID_FIELD", "side", None),
    ({**order(C1, "SELLU1", "SELL", "50.00", "1.0"), "colour": "red"}, "INVALID_FIELD",
     "colour", "unknown field"),
    (basket("NONE", order(C1, "SELLU1", "SELL", "50.00", "1.0"),
            order(C1, "SELLU1", "SELL", "50.123", "1.0")), "INVALID_FIELD",
     "orders.1.price", "3 decimals"),
    ({"type": "order_cancel", "order_id": "7"}, "INVALID_FIELD", "order_id", None),
    ({"type": "subscribe", "stream": "everything"}, "INVALID_FIELD", "stream", None),
    ({"type": "query_book", "contract": 7}, "INVALID_FIELD", "contract", None),
]


@pytest.mark.parametrize(("msg", "code", "field", "words"), MALFORMED,
                         ids=[f"{i}-{m[2]}" for i, m in enumerate(MALFORMED)])
async def test_malformed_input_gets_an_error_naming_the_field(
        env: Env, msg: Any, code: str, field: str, words: str | None) -> None:
    srv = await env.server()
    c = await env.client(srv, "ana")
    if isinstance(msg, str):
        await c.send_raw(msg)
    else:
        if isinstance(msg, dict) and "req_id" not in msg:
            msg = {**msg, "req_id": "bad"}
        await c.send(msg)
    err = await c.wait_for(lambda m: m.get("type") == "error")
    assert (err["code"], err["field"]) == (code, field), err
    assert err["reason"]
    if words:
        assert words in err["reason"], err
    if isinstance(msg, dict) and "req_id" in msg:
        assert err["req_id"] == msg["req_id"]
    assert (await c.request({"type": "query_me"}))["type"] == "me"  # the session lives
    assert not any(o.user == "ana" for o in srv.core.engine.orders.values())


@pytest.mark.parametrize("msg", [{"type": "query_orders"},
                                 {"type": "subscribe", "stream": "states"}],
                         ids=["query_orders", "subscribe"])
async def test_unknown_fields_are_refused_on_session_requests(env: Env, msg: Any) -> None:
    """docs/protocol.md: «Unknown fields are refused, not ignored.»"""
    srv = await env.server()
    c = await env.client(srv, "ana")
    ans = await c.request({**msg, "colour": "red"})
    assert (ans["type"], ans.get("field")) == ("error", "colour"), ans


async def test_flood_of_malformed_messages_is_throttled_then_disconnected(env: Env) -> None:
    srv = await env.server(max_errors_per_10s=20)
    c = await env.client(srv, "ana")
    codes = []
    with pytest.raises(ConnectionError):
        for _ in range(40):
            ans = await c.request({"type": "order_entry", "contract": C1})
            codes.append(ans["code"])
            if ans["code"] == "THROTTLED":  # while throttled, valid requests wait too
                me = await c.request({"type": "query_me"})
                codes.append(me["code"])
    k = codes.index("THROTTLED")
    assert k >= 5 and set(codes[:k]) == {"INVALID_FIELD"}
    assert set(codes[k:]) == {"THROTTLED"}
    code, reason = await c.wait_closed()
    assert code == 1008 and "malformed" in (reason or "")
    assert c.errors()[-1]["code"] == "DISCONNECTED"
    fresh = await env.client(srv, "ana")  # only that connection was cut
    assert (await fresh.request({"type": "query_me"}))["type"] == "me"


async def test_refused_operator_request_is_answered_with_a_reject(env: Env) -> None:
    """Every answer is an ack or a reject with a stable code: an operator request that the
    engine refuses must not be acknowledged."""
    srv = await env.server()
    marta = await env.client(srv, "marta")
    unknown = await marta.request({"type": "contract_open", "contracts": [C4]})
    assert (unknown["type"], unknown.get("code")) == ("reject", "CONTRACT_UNKNOWN"), unknown
    twice = await marta.request({"type": "contract_create", "contract": C1,
                                 "close_at": iso(now_ms() + 3_600_000)})
    assert (twice["type"], twice.get("code")) == ("reject", "NOTHING_TO_DO"), twice


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_queued_messages_go_out_in_one_write_as_separate_frames(binary: bool) -> None:
    """gateway/ws.py ``send_many``: what a session has queued is written at once, but each
    message is its own frame (text JSON or binary msgpack), in order, and the connection
    goes on normally afterwards; a single message takes the library's own send."""
    import msgpack
    import orjson
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    from gateway.wire import to_ticks
    from gateway.ws import WsTransport

    msgs = [{"type": "book", "seq": i, "price": f"{40 + i}.00", "text": "é" * i}
            for i in range(50)]
    writes: list[int] = []  # sizes of the socket writes of the two send_many calls

    async def handler(ws: Any) -> None:
        t = WsTransport(ws, binary)
        real_write = ws.transport.write
        ws.transport.write = lambda data: (writes.append(len(data)), real_write(data))[1]
        await t.send_many(msgs)
        await t.send_many([{"type": "heartbeat"}])
        ws.transport.write = real_write
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as c:
            got = [await asyncio.wait_for(c.recv(), 5) for _ in range(51)]
    assert all(isinstance(g, bytes if binary else str) for g in got)
    decoded = [msgpack.unpackb(g) if binary else orjson.loads(g) for g in got]
    sent = [*msgs, {"type": "heartbeat"}]
    assert decoded == ([to_ticks(m) for m in sent] if binary else sent)  # msgpack: ticks
    assert len(writes) == 2 and writes[0] > 50 * 20  # the fifty frames in one write


async def test_send_now_writes_at_once_or_leaves_everything_to_the_writer() -> None:
    """gateway/ws.py ``send_now``: on an open connection with room in the socket's buffer
    it writes the messages at once, as separate frames in one write; while the library's
    flow control would wait (the buffer above its high-water mark) or once the connection
    is closing, it sends nothing and says so, so that the session's writer task sends them
    with the library's waiting."""
    import orjson
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    from gateway.ws import WsTransport

    outcome: dict[str, Any] = {}
    writes: list[int] = []

    async def handler(ws: Any) -> None:
        t = WsTransport(ws, False)
        real_write = ws.transport.write
        ws.transport.write = lambda data: (writes.append(len(data)), real_write(data))[1]
        outcome["open"] = t.send_now([{"n": i} for i in range(10)])
        outcome["open_writes"] = len(writes)
        ws.paused = True  # what pause_writing() sets when the buffer passes high water
        outcome["paused"] = t.send_now([{"n": 99}])
        ws.paused = False
        outcome["paused_writes"] = len(writes)
        ws.transport.write = real_write
        await ws.close()
        outcome["closed"] = t.send_now([{"n": 100}])

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as c:
            got = [orjson.loads(m) async for m in c]
    assert outcome == {"open": True, "open_writes": 1, "paused": False, "paused_writes": 1,
                       "closed": False}
    assert got == [{"n": i} for i in range(10)]


async def test_answers_and_private_stream_stay_in_order_through_back_pressure(
        env: Env) -> None:
    """A session's messages go out from a plain callback while the socket takes them and
    through its writer task while it does not (gateway/session.py ``_flush``): a client
    that stops reading for a while, then reads everything, gets every answer and every
    private message, in order, the stream's sequence without a gap."""
    srv = await env.server(max_queue=100_000, heartbeat_s=3600)
    slow = await _slow_client(env, srv, "ana", {"type": "subscribe", "stream": "private"})
    session = _shrink_server_sndbuf(srv, "ana")
    n = 300
    for i in range(n):  # over the connection itself: an answer and a report each
        await slow.send(order(C1, "SELLU1", "SELL", f"{60 + i % 20}.00", "1.0", exec="IOC",
                              req_id=f"o{i}"))
    for _ in range(100):  # the socket filled up: the writer task holds the rest
        if session._out and not session._writer_idle:
            break
        await asyncio.sleep(0.05)
    assert session._out, "the socket never filled up: nothing was left to the writer"
    slow.start_reading()
    await slow.wait_for(lambda m: is_answer(m) and m.get("req_id") == f"o{n - 1}",
                        timeout=20)
    answers = [m for m in slow.received
               if is_answer(m) and str(m.get("req_id", "")).startswith("o")]
    assert [m["req_id"] for m in answers] == [f"o{i}" for i in range(n)]
    assert {(m["type"], m["reports"][0]["action"]) for m in answers} == {("ack", "CANCELLED")}
    private = slow.stream("private:AG1")  # each report comes before its answer
    seqs = [m["seq"] for m in private]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    reports = [m for m in private if m["type"] == "order_report"]
    assert [m["req_id"] for m in reports] == [f"o{i}" for i in range(n)]
    assert session._out == deque() and not session._closing
    # and with the socket drained, messages go out from the callback again
    real_send_now = session._send_now
    via_callback: list[int] = []
    session._send_now = lambda msgs: (via_callback.append(len(msgs)), real_send_now(msgs))[1]
    ans = await slow.request({"type": "query_me"})
    assert ans["type"] == "me" and via_callback == [1]


async def test_requests_are_handled_from_the_protocol_callback_and_keep_their_order(
        env: Env) -> None:
    """gateway/ws.py ``_Connection``: a complete frame goes to the session from the
    protocol's callback (its own framing in ``data_received``), not through the handler
    task; a fragmented message goes the library's way, and the frames behind it wait their
    turn: the answers come in the order the requests were sent."""
    import traceback

    srv = await env.server()
    c = await env.client(srv, "ana")
    session = session_of(srv, "ana")
    seen: list[tuple[str, bool]] = []  # (req_id, handled from the protocol's callback)
    real_handle = session.handle

    def handle(data: Any, str_keys: bool = False) -> None:
        names = {f.name for f in traceback.extract_stack()}
        # the server's own framing; the library's parse runs inside data_received too,
        # but hands frames over from process_event
        here = "data_received" in names and "process_event" not in names
        seen.append((data.get("req_id"), here))
        real_handle(data, str_keys)

    session.handle = handle
    assert (await c.request({"type": "query_me", "req_id": "a"}))["type"] == "me"
    assert seen == [("a", True)]
    # a fragmented message, then ten whole ones, back to back
    await c.ws.send(['{"type": "query_me",', ' "req_id": "frag"}'])
    for i in range(10):
        await c.send({"type": "query_me", "req_id": f"w{i}"})
    last = await c.wait_for(lambda m: m.get("req_id") == "w9")
    answered = [m["req_id"] for m in c.received if m.get("type") == "me"]
    assert answered == ["a", "frag", *[f"w{i}" for i in range(10)]], answered
    assert last["type"] == "me"
    assert [r for r, _ in seen] == answered
    assert seen[1] == ("frag", False)  # reassembled by the library, read by the handler


async def test_a_defect_while_handling_a_request_ends_only_that_connection(
        env: Env) -> None:
    """An exception out of the session (a defect, never bad input: that gets an error)
    while a frame is handled from the protocol's callback closes that connection with
    1011, and nothing it sent afterwards is handled, neither from the callback nor from
    the library's queue; the server and the others go on."""
    srv = await env.server()
    c = await env.client(srv, "ana")
    other = await env.client(srv, "carlos")
    calls: list[Any] = []

    def broken(data: Any, str_keys: bool = False) -> None:
        calls.append(data)
        raise RuntimeError("defect")

    session_of(srv, "ana").handle = broken
    for i in range(3):
        await c.send({"type": "query_me", "req_id": f"x{i}"})
    code, _ = await c.wait_closed(5)
    assert code == 1011
    assert [d["req_id"] for d in calls] == ["x0"]
    assert (await other.request({"type": "query_me"}))["type"] == "me"


async def test_a_message_that_cannot_be_sent_ends_the_session_with_a_reason(
        env: Env) -> None:
    """A queued message that cannot be encoded (a defect) must not leave a gap in what the
    client receives while the connection goes on: the session ends and says why."""
    srv = await env.server()
    c = await env.client(srv, "ana")
    session = session_of(srv, "ana")
    session.send({"type": "notice", "n": 1})
    session.send({"type": "notice", "bad": {1, 2}})  # a set: not JSON
    session.send({"type": "notice", "n": 3})
    code, reason = await c.wait_closed(5)
    assert code == 1008 and "cannot send" in (reason or "")
    assert [m.get("n") for m in c.received if m.get("type") == "notice"] == []
    other = await env.client(srv, "carlos")
    assert (await other.request({"type": "query_me"}))["type"] == "me"


async def test_a_text_frame_that_is_not_utf8_closes_the_connection_with_1007(
        env: Env) -> None:
    """RFC 6455 §8.1: a text frame must be valid UTF-8, else the connection fails with
    1007; the fast path leaves such a frame to the library, which does that."""
    srv = await env.server()
    c = await env.client(srv, "ana")
    assert (await c.request({"type": "query_me"}))["type"] == "me"
    async with c.ws.send_context():
        c.ws.protocol.send_text(b'{"type": "query_me", "x": "\xff\xfe"}')
    code, _ = await c.wait_closed(5)
    assert code == 1007
    ana = await env.client(srv, "ana")  # the server goes on
    assert (await ana.request({"type": "query_me"}))["type"] == "me"


def test_a_subscriber_dropped_while_a_stream_is_delivered_does_not_cut_it_short() -> None:
    """gateway/fanout.py: delivering a message can drop a slow consumer, which unsubscribes
    it from the very set being delivered to; the other subscribers still get the message
    and the ones after it (each loop goes over a copy of its subscribers)."""
    from engine.events import Reject
    from gateway.core import Core
    from gateway.fanout import Hub

    hub = Hub(Core())

    class Sub:
        def __init__(self, slow: bool) -> None:
            self.slow = slow
            self.got: list[int] = []

        def deliver(self, msg: dict[str, Any]) -> None:
            if self.slow:  # as Session._drop does for a full queue
                hub.unsubscribe_all(self)
                return
            self.got.append(msg["seq"])

    subs = [Sub(slow=i % 2 == 0) for i in range(6)]
    for s in subs:
        hub.private_subs["AG1"].add(s)
    batch = [(None, "ana", [Reject.of(1, "ana", "AG1", str(i), None, None, "X", "why")
                            for i in range(3)])]
    hub.publish(batch)  # must not raise "Set changed size during iteration"
    assert all(s.got == [1, 2, 3] for s in subs if not s.slow)
    assert hub.private_subs["AG1"] == {s for s in subs if not s.slow}


async def test_a_journal_failure_tells_in_doubt_apart_from_refused(env: Env) -> None:
    """The disk fails while an order is being recorded: that order's sender is told
    ``OUTCOME_UNKNOWN`` (its record may be on disk and take effect at the next start: a
    "not processed" would be a lie then), a request queued behind it ``UNAVAILABLE``
    (never recorded), and so is every request after; the session lives."""
    srv = await env.server()
    ana = await env.client(srv, "ana")
    carlos = await env.client(srv, "carlos")
    real_append = srv.journal.append
    seq = srv.sequencer
    real_commit = seq._commit
    entered, release = asyncio.Event(), asyncio.Event()

    def doubtful(items: Any) -> bool:
        return any(getattr(x[0], "client_order_id", None) == "doubt" for x in items)

    async def held_commit(loop: Any, batch: Any) -> None:
        if doubtful(batch):  # the batch waits (the loop goes on) until the test says
            entered.set()
            await asyncio.wait_for(release.wait(), 5)
        await real_commit(loop, batch)

    def failing_append(records: Any, **kw: Any) -> bool:
        if any(getattr(r.command, "client_order_id", None) == "doubt" for r in records):
            real_append(records, **kw)  # on disk, and then the sync fails
            raise OSError(5, "Input/output error")
        return real_append(records, **kw)

    seq._commit = held_commit  # type: ignore[method-assign]
    srv.journal.append = failing_append  # type: ignore[method-assign]
    first = asyncio.ensure_future(ana.request(order(C1, "SELLU1", "SELL", "50.10", "1.0",
                                                    client_order_id="doubt")))
    await asyncio.wait_for(entered.wait(), 5)
    second = asyncio.ensure_future(carlos.request(order(C1, "BUYU2", "BUY", "40.00", "1.0")))
    await asyncio.sleep(0.05)  # in the sequencer's queue, behind the failing batch
    release.set()
    doubt, refused = await first, await second
    assert (doubt["type"], doubt["code"]) == ("reject", "OUTCOME_UNKNOWN")
    assert "may take effect when the server restarts" in doubt["reason"]
    assert (refused["type"], refused["code"]) == ("reject", "UNAVAILABLE")
    assert "not processed" in refused["reason"]
    late = await ana.request(order(C1, "SELLU1", "SELL", "50.20", "1.0"))
    assert (late["type"], late["code"]) == ("reject", "UNAVAILABLE")
    ana.check_one_answer_each()
    srv.journal.append = real_append
    await srv.stop()
    # restarted on the same data: the order in doubt was recorded, and it is there
    again = await start_server(srv.config.data_dir)
    env.servers.append(again)
    ana2 = await env.client(again, "ana")
    live = await orders_of(ana2)
    assert [o["client_order_id"] for o in live.values()] == ["doubt"]


async def test_an_officer_following_every_agent_and_one_gets_each_message_once(
        tmp_path: Path) -> None:
    """A risk officer subscribed to private "*" and to private AG1: AG1's stream reaches it
    once, its seq never repeated (every message came twice, the same seq on both)."""
    c = contract_id(10)
    server = await start_server(tmp_path / "d", [c])
    try:
        rita = await connect_as(server.port, "rita")
        ana = await connect_as(server.port, "ana")
        for agent in ("*", "AG1"):
            a = await rita.request({"type": "subscribe", "stream": "private", "agent": agent})
            assert a["type"] == "ack", a
        for price in ("50.00", "51.00"):
            a = await ana.request(order(c, "SELLU1", "SELL", price, "1.0"))
            assert a["type"] == "ack", a
        await asyncio.sleep(0.3)
        seqs = [m["seq"] for m in rita.stream("private:AG1")]
        assert len(seqs) >= 4 and seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    finally:
        await server.stop()
