"""The AMQP API against a real RabbitMQ (tests/broker.py) and a real server in-process.

A WebSocket client and AMQP clients trade in the same books; identity is checked by the
broker (validated user_id); redeliveries and resends are harmless; a broker restart under
load loses nothing acknowledged and executes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
import msgpack
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage
from websockets.asyncio.client import ClientConnection, connect
from wsclient import lift_rate_limits

from engine.commands import CreateContract, NewOrder, OpenContracts
from engine.model import Side
from gateway.amqp import (
    JSON,
    MSGPACK,
    REPLAYED_HEADER,
    REQUEST_EXCHANGE,
    REQUEST_KEY,
    REQUEST_QUEUE,
    SEQ_HEADER,
    STREAM_HEADER,
    AmqpTransport,
    bcast_queue,
)
from gateway.executed import Entry
from gateway.server import Config, Server

if TYPE_CHECKING:
    from broker import Broker

pytest_plugins = ["broker"]

DAY_MS = 86_400_000
_ids = itertools.count(1)


def _contract_ids() -> tuple[str, str]:
    """Two hourly contracts the day after tomorrow (UTC date; ids are local days)."""
    day = time.strftime("%Y%m%d", time.gmtime(time.time() + 2 * 86_400))
    return f"PH-{day}-10", f"PH-{day}-11"


CID, CID2 = _contract_ids()


def order(side: str, price: str, qty: str = "1.0", contract: str = CID, **kw: Any
          ) -> dict[str, Any]:
    unit = {"BUY": "BUYU2", "SELL": "SELLU1"}[side]
    return {"type": "order_entry", "contract": contract, "unit": kw.pop("unit", unit),
            "side": side, "price": price, "quantity": qty, **kw}


# ---------------------------------------------------------------------------- clients


class AmqpClient:
    """A minimal algorithmic trader: requests carry user_id, reply_to, correlation_id and
    a message_id that stays the same when the request is resent; the broadcast queue is
    consumed into :attr:`bcast`.  After losing the connection, :meth:`reconnect` resends
    every request that has no answer yet."""

    def __init__(self, url: str, user: str) -> None:
        self.url = url
        self.user = user
        self.pending: dict[str, tuple[aio_pika.Message, asyncio.Future[dict[str, Any]]]] = {}
        self.headers: dict[str, dict[str, Any]] = {}  # message_id -> the answer's headers
        self.replies: Counter[str] = Counter()  # message_id -> answers received
        self.answers: dict[str, list[dict[str, Any]]] = {}  # message_id -> every answer
        self.bcast: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # key, headers, msg
        self._bcast_event = asyncio.Event()
        self.mids: list[str | None] = []  # every broadcast message's message_id
        # private-stream messages as they came: key, headers, type, message_id, body
        self.batches: list[tuple[str, dict[str, Any], str | None, str | None, list[Any]]] = []
        self.conn: aio_pika.abc.AbstractConnection | None = None
        self.reconnects = 0

    async def connect(self, consume_bcast: bool = True) -> None:
        self.conn = await aio_pika.connect(self.url, timeout=5)
        self.ch = await self.conn.channel()  # publisher confirms
        self.reply_q = await self.ch.declare_queue(exclusive=True)
        await self.reply_q.consume(self._on_reply, no_ack=True)
        self.exchange = await self.ch.get_exchange(REQUEST_EXCHANGE, ensure=False)
        if consume_bcast:
            q = await self.ch.get_queue(bcast_queue(self.user))  # passive: it must exist
            await q.consume(self._on_bcast, no_ack=True)

    async def close(self) -> None:
        if self.conn is not None and not self.conn.is_closed:
            await self.conn.close()

    async def _on_reply(self, m: AbstractIncomingMessage) -> None:
        data = (msgpack.unpackb(m.body) if m.content_type == MSGPACK
                else orjson.loads(m.body))
        key = m.correlation_id or ""
        self.headers[key] = dict(m.headers or {})
        self.replies[key] += 1
        self.answers.setdefault(key, []).append(data)
        entry = self.pending.pop(key, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(data)

    async def _on_bcast(self, m: AbstractIncomingMessage) -> None:
        key, headers, body = m.routing_key or "", dict(m.headers or {}), orjson.loads(m.body)
        self.mids.append(m.message_id)
        if isinstance(body, list):
            # a private stream's batch (docs/amqp.md): one stream, in sequence, the header
            # naming the first; kept whole in ``batches`` and unpacked into ``bcast``
            self.batches.append((key, headers, m.type, m.message_id, body))
            for item in body:
                self.bcast.append((key, {**headers, SEQ_HEADER: item.get("seq")}, item))
        else:
            self.bcast.append((key, headers, body))
        self._bcast_event.set()

    def message(self, msg: dict[str, Any], message_id: str | None = None,
                content_type: str = JSON, user_id: str | None = None) -> aio_pika.Message:
        body = (msgpack.packb(msg) if content_type == MSGPACK else orjson.dumps(msg))
        mid = message_id or uuid.uuid4().hex
        return aio_pika.Message(body, content_type=content_type, message_id=mid,
                                correlation_id=mid, reply_to=self.reply_q.name,
                                user_id=self.user if user_id is None else user_id,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

    async def submit(self, msg: dict[str, Any], message_id: str | None = None,
                     content_type: str = JSON) -> asyncio.Future[dict[str, Any]]:
        m = self.message(msg, message_id, content_type)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[m.message_id or ""] = (m, fut)
        await self.exchange.publish(m, REQUEST_KEY, timeout=5)
        return fut

    async def request(self, msg: dict[str, Any], message_id: str | None = None,
                      content_type: str = JSON, timeout: float = 10) -> dict[str, Any]:
        fut = await self.submit(msg, message_id, content_type)
        return await asyncio.wait_for(fut, timeout)

    async def reconnect(self) -> None:
        """Connect again (back-off 0.1 s doubling to 1 s), then resend what is unanswered,
        with the same message_id and body (so the same client_order_id)."""
        with contextlib.suppress(Exception):
            await self.close()
        delay = 0.1
        while True:
            try:
                await self.connect(consume_bcast=False)
                break
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self.reconnects += 1
        for mid, (old, fut) in list(self.pending.items()):
            m = aio_pika.Message(old.body, content_type=old.content_type, message_id=mid,
                                 correlation_id=mid, reply_to=self.reply_q.name,
                                 user_id=self.user,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            self.pending[mid] = (m, fut)
            await self.exchange.publish(m, REQUEST_KEY)

    async def wait_bcast(self, pred: Callable[[str, dict[str, Any], dict[str, Any]], bool],
                         timeout: float = 5) -> tuple[str, dict[str, Any], dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for item in self.bcast:
                if pred(*item):
                    return item
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no such broadcast message; got {self.bcast[-5:]}")
            self._bcast_event.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._bcast_event.wait(), left)

    def stream(self, name: str) -> list[tuple[int, dict[str, Any]]]:
        """(seq, message) of one stream, in arrival order."""
        return [(h[SEQ_HEADER], m) for _, h, m in self.bcast if h.get(STREAM_HEADER) == name]


class WsClient:
    """A manual trader on the WebSocket API."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.stream: list[dict[str, Any]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def login(cls, port: int, user: str, token: str, **extra: Any) -> WsClient:
        ws = await connect(f"ws://127.0.0.1:{port}/ws")
        c = cls(ws)
        ans = await c.request({"type": "login", "user": user, "token": token, **extra})
        assert ans["type"] == "ack", ans
        return c

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = orjson.loads(raw)
            rid = msg.get("req_id")
            answer = msg.get("type") in ("ack", "reject", "error") or "stream" not in msg \
                or msg.get("snapshot")
            if answer and rid in self.waiting:
                self.waiting.pop(rid).set_result(msg)
            else:
                self.stream.append(msg)

    async def request(self, msg: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        rid = f"ws-{next(_ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        await self.ws.send(orjson.dumps({**msg, "req_id": rid}).decode())
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(Exception):
            await self._reader


# ---------------------------------------------------------------------------- fixtures


async def _reset_broker(broker: Broker) -> None:
    """Each test starts with empty queues and no bindings left by an earlier test."""
    conn = await aio_pika.connect(broker.url, timeout=5)
    try:
        ch = await conn.channel()
        for name in [REQUEST_QUEUE, *(bcast_queue(u) for u in
                                      ("ana", "carlos", "bea", "rita", "marta", "sofia"))]:
            await ch.queue_delete(name)
    finally:
        await conn.close()


async def _start_server(broker: Broker, data: Path) -> Server:
    srv = Server(Config(data_dir=data, calendar=None, fsync=False, port=0,
                        amqp_url=broker.url, heartbeat_s=1.0))
    await srv.start()
    await asyncio.wait_for(srv.amqp.connected.wait(), 10)
    return srv


async def _start_market(broker: Broker, data: Path) -> Server:
    """A fresh broker layout, a server, and two contracts open for trading."""
    await _reset_broker(broker)
    srv = await _start_server(broker, data)
    close_at = int(time.time() * 1000) + DAY_MS
    for cid in (CID, CID2):
        await srv.sequencer.submit(CreateContract(cid, close_at), "operator")
    await srv.sequencer.submit(OpenContracts((CID, CID2)), "operator")
    return srv


@pytest.fixture
async def server(rabbitmq: Broker, tmp_path: Path) -> AsyncIterator[Server]:
    srv = await _start_market(rabbitmq, tmp_path / "data")
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def carlos(rabbitmq: Broker, server: Server) -> AsyncIterator[AmqpClient]:
    c = AmqpClient(rabbitmq.url_for("carlos"), "carlos")
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def ana_ws(server: Server) -> AsyncIterator[WsClient]:
    c = await WsClient.login(server.port, "ana", "ana-demo-token")
    try:
        yield c
    finally:
        await c.close()


def live_orders(server: Server, agent: str) -> list[dict[str, Any]]:
    return [server.core.order_view(o) for o in server.core.orders_of(agent)]


def assert_contiguous(seqs: list[int]) -> None:
    assert seqs, "no messages"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


# ---------------------------------------------------------------------------- trading


async def test_order_entry_modify_cancel_and_private_stream(carlos: AmqpClient,
                                                            server: Server) -> None:
    ans = await carlos.request(order("BUY", "40.00", client_order_id="c-1", req_id="r1"))
    assert ans["type"] == "ack" and ans["kind"] == "order_entry" and ans["req_id"] == "r1"
    (oid,) = ans["order_ids"]
    rep = ans["reports"][0]
    assert (rep["action"], rep["client_order_id"], rep["price"]) == ("ADDED", "c-1", "40.00")

    ans = await carlos.request({"type": "order_modify", "order_id": oid,
                                "revision": rep["revision"], "price": "41.50",
                                "quantity": "2.0"})
    assert ans["type"] == "ack", ans
    mod = ans["reports"][0]
    assert (mod["action"], mod["price"], mod["visible"]) == ("MODIFIED", "41.50", "2.0")
    assert mod["revision"] == rep["revision"] + 1

    stale = await carlos.request({"type": "order_modify", "order_id": oid,
                                  "revision": rep["revision"], "price": "42.00",
                                  "quantity": "2.0"})
    assert (stale["type"], stale["code"]) == ("reject", "STALE_REVISION")

    (view,) = live_orders(server, "AG2")
    assert (view["order_id"], view["price"], view["revision"]) == (oid, 4150, mod["revision"])

    ans = await carlos.request({"type": "order_cancel", "order_id": oid})
    assert ans["type"] == "ack" and ans["reports"][0]["action"] == "CANCELLED"
    assert live_orders(server, "AG2") == []

    # the private stream (subscribed automatically) went to private.carlos, in sequence
    await carlos.wait_bcast(lambda k, h, m: m.get("action") == "CANCELLED")
    private = carlos.stream("private:AG2")
    assert_contiguous([s for s, _ in private])
    actions = [m["action"] for _, m in private if m["type"] == "order_report"]
    assert actions == ["ADDED", "MODIFIED", "CANCELLED"]
    assert {k for k, h, _ in carlos.bcast if h[STREAM_HEADER] == "private:AG2"} == {
        "private.carlos"}


async def test_private_stream_batches(carlos: AmqpClient, server: Server) -> None:
    """docs/amqp.md: on ``private.<user>`` every message is a JSON array of one private
    stream's messages in sequence (type ``batch``, headers the stream and its first
    ``seq``, ``message_id`` ``<stream>:<first seq>@<run>``); what one request caused goes as one
    AMQP message: a basket's three reports and the account update after them."""
    ans = await carlos.request({"type": "basket_entry", "basket": "NONE", "orders": [
        {k: v for k, v in order("BUY", p, client_order_id=f"pb-{i}").items() if k != "type"}
        for i, p in enumerate(("30.00", "31.00", "32.00"))]})
    assert ans["type"] == "ack" and len(ans["order_ids"]) == 3, ans
    await carlos.wait_bcast(lambda k, h, m: m.get("client_order_id") == "pb-2")
    private = [b for b in carlos.batches if b[0] == "private.carlos"]
    assert private and all(k == "private.carlos" for k, *_ in carlos.batches)
    seqs: list[int] = []
    for _, headers, typ, mid, body in private:
        assert typ == "batch" and body, (typ, body)
        assert {m["stream"] for m in body} == {headers[STREAM_HEADER]} == {"private:AG2"}
        assert headers[SEQ_HEADER] == body[0]["seq"]
        assert mid == f"private:AG2:{body[0]['seq']}{server.amqp.run_id}", mid
        assert server.amqp.run_id.startswith("@")
        seqs += [m["seq"] for m in body]
    assert_contiguous(seqs)
    # no private message came any other way
    assert not [m for k, _, m in carlos.bcast
                if str(m.get("stream", "")).startswith("private:") and k != "private.carlos"]
    (basket,) = [body for *_, body in private
                 if any(m.get("client_order_id") == "pb-0" for m in body)]
    assert [m.get("client_order_id") for m in basket if m["type"] == "order_report"] == [
        "pb-0", "pb-1", "pb-2"]
    assert basket[-1]["type"] == "account", basket


def test_a_flush_is_cut_into_one_batch_per_run_of_a_private_stream() -> None:
    """AmqpTransport.send_now: consecutive messages of one private stream go as one batch,
    in order; a change of stream (an officer following two agents) starts another, and a
    message of another kind (a book snapshot on user.<user>) goes alone between them."""

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, Any]] = []

        def to_private(self, user: str, stream: str, msgs: list[dict[str, Any]]) -> None:
            self.calls.append((f"private {user} {stream}", [m["seq"] for m in msgs]))

        def to_user(self, user: str, msg: dict[str, Any]) -> None:
            self.calls.append((f"user {user}", msg["type"]))

    rec = Recorder()
    t = AmqpTransport(rec, "olga")  # type: ignore[arg-type]
    a1, a2 = "private:AG1", "private:AG2"
    msgs = [{"stream": a1, "seq": 1, "type": "order_report"},
            {"stream": a1, "seq": 2, "type": "account"},
            {"stream": a2, "seq": 7, "type": "trade"},
            {"stream": "book:C", "seq": 0, "type": "book"},
            {"stream": a2, "seq": 8, "type": "order_report"},
            {"stream": a2, "seq": 9, "type": "account"},
            {"type": "heartbeat"}]
    assert t.send_now(msgs) is True
    assert rec.calls == [("private olga private:AG1", [1, 2]),
                         ("private olga private:AG2", [7]),
                         ("user olga", "book"),
                         ("private olga private:AG2", [8, 9]),
                         ("user olga", "heartbeat")]


async def test_a_subscription_field_of_another_stream_is_refused(carlos: AmqpClient) -> None:
    """As on the WebSocket (docs/protocol.md, subscribe): a field the stream has not is an
    error naming it, not ignored; over AMQP the public streams are bindings of the user's
    queue, handled by the adapter, which checks the same."""
    for msg, field in (({"stream": "book", "contract": CID, "agent": "AG2"}, "agent"),
                       ({"stream": "states", "contract": CID}, "contract"),
                       ({"stream": "private", "contract": CID}, "contract")):
        ans = await carlos.request({"type": "subscribe", **msg})
        assert (ans["type"], ans["field"]) == ("error", field), (msg, ans)


async def test_basket_deactivate_and_reactivate(carlos: AmqpClient, server: Server) -> None:
    ans = await carlos.request({"type": "basket_entry", "basket": "NONE", "orders": [
        {k: v for k, v in order("BUY", p, client_order_id=f"b-{i}").items() if k != "type"}
        for i, p in enumerate(("30.00", "31.00", "32.00"))]})
    assert ans["type"] == "ack" and len(ans["order_ids"]) == 3, ans
    ids = ans["order_ids"]

    ans = await carlos.request({"type": "order_deactivate"})
    assert ans["type"] == "ack", ans
    assert {v["status"] for v in live_orders(server, "AG2")} == {"HIBERNATED"}

    ans = await carlos.request({"type": "order_activate", "order_ids": [ids[2], ids[0]]})
    assert ans["type"] == "ack", ans
    status = {v["order_id"]: v["status"] for v in live_orders(server, "AG2")}
    assert status == {ids[0]: "ACTIVE", ids[1]: "HIBERNATED", ids[2]: "ACTIVE"}

    # a LINKED basket with a member that is not FOK is refused as a whole
    ans = await carlos.request({"type": "basket_entry", "basket": "LINKED", "orders": [
        {k: v for k, v in order("BUY", "20.00").items() if k != "type"}]})
    assert ans["type"] == "reject", ans

    ans = await carlos.request({"type": "cancel_all"})
    assert ans["type"] == "ack" and sorted(ans["order_ids"]) == sorted(ids)
    assert live_orders(server, "AG2") == []


async def test_queries_login_and_heartbeat(carlos: AmqpClient, server: Server) -> None:
    me = await carlos.request({"type": "query_me", "req_id": "q"})
    assert (me["type"], me["user"], me["agent"], me["req_id"]) == ("me", "carlos", "AG2", "q")
    login = await carlos.request({"type": "login"})
    assert (login["type"], login["kind"], login["user"]) == ("ack", "login", "carlos")
    other = await carlos.request({"type": "login", "user": "ana", "token": "ana-demo-token"})
    assert (other["type"], other["code"]) == ("reject", "LOGIN_FAILED")
    hib = await carlos.request({"type": "login", "on_disconnect": "hibernate"})
    assert (hib["type"], hib["field"]) == ("error", "on_disconnect")

    contracts = await carlos.request({"type": "query_contracts"})
    assert [c["contract"] for c in contracts["contracts"]] == [CID, CID2]
    assert {c["state"] for c in contracts["contracts"]} == {"TRADE"}
    acct = await carlos.request({"type": "query_account"})
    assert (acct["type"], acct["agent"]) == ("account", "AG2")
    await carlos.request(order("BUY", "12.34"))
    book = await carlos.request({"type": "query_book", "contract": CID})
    assert [(b["price"], b["quantity"]) for b in book["bids"]] == [("12.34", "1.0")]
    orders = await carlos.request({"type": "query_orders"})
    assert [o["price"] for o in orders["orders"]] == ["12.34"]
    thr = await carlos.request({"type": "query_throttling"})
    assert thr["type"] == "throttling"
    hb = await carlos.request({"type": "heartbeat", "req_id": "h"})
    assert (hb["type"], hb["req_id"]) == ("heartbeat", "h")
    # without reply_to, the answer goes to the user's own broadcast queue
    m = carlos.message({"type": "query_me", "req_id": "no-reply-to"})
    m.reply_to = None
    await carlos.exchange.publish(m, REQUEST_KEY)
    k, h, ans = await carlos.wait_bcast(lambda k, h, m: m.get("req_id") == "no-reply-to")
    assert (k, ans["type"], h[STREAM_HEADER]) == ("user.carlos", "me", "user:carlos")
    # msgpack in, msgpack out; on msgpack, prices and quantities are integer ticks
    mp = await carlos.request({"type": "query_me"}, content_type=MSGPACK)
    assert mp["user"] == "carlos"
    mp = await carlos.request({**order("BUY", "0"), "price": 1111, "quantity": 15},
                              content_type=MSGPACK)
    assert mp["type"] == "ack", mp
    assert (mp["reports"][0]["price"], mp["reports"][0]["visible"]) == (1111, 15)
    mp = await carlos.request({**order("BUY", "0"), "price": 11.11}, content_type=MSGPACK)
    assert (mp["type"], mp["field"]) == ("error", "price")
    js = await carlos.request({**order("BUY", "0"), "price": 1111})  # JSON: decimal strings
    assert (js["type"], js["field"]) == ("error", "price")
    # a msgpack field name may be binary, not text: refused (JSON's are always text)
    mp = await carlos.request({**order("BUY", "0"), "price": 1111, "quantity": 15,
                               b"side": "SELL"}, content_type=MSGPACK)
    assert (mp["type"], mp["field"]) == ("error", "message"), mp
    assert "every field name must be a string" in mp["reason"]
    # the session's own heartbeats reach the broadcast queue, with their own sequence
    _, h, _ = await carlos.wait_bcast(lambda k, h, m: m["type"] == "heartbeat", timeout=5)
    assert h[STREAM_HEADER] == "user:carlos" and h[SEQ_HEADER] >= 1


async def test_a_settlement_query_is_answered_to_its_request(
        carlos: AmqpClient, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """query_settlement reads the store off the event loop: its answer still goes to the
    request's reply_to (it got an UNAVAILABLE "the session is closing" at once, and the
    report went, unasked, to the broadcast queue); a failing store gets a reject, answered
    and acknowledged, not left to the broker as an unexecuted command."""
    day = datetime.now(UTC).date().isoformat()
    ans = await carlos.request({"type": "query_settlement", "day": day, "req_id": "s1"})
    assert (ans["type"], ans["req_id"], ans["agent"]) == ("settlement", "s1", "AG2"), ans
    import sync.report

    async def failing(*args: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(sync.report, "report", failing)
    ans = await carlos.request({"type": "query_settlement", "day": day, "req_id": "s2"})
    assert (ans["type"], ans["code"], ans["req_id"]) == ("reject", "UNAVAILABLE", "s2"), ans
    assert "settlement store: OSError" in ans["reason"]
    await asyncio.sleep(0.3)
    assert not any(m.get("req_id") in ("s1", "s2") for _, _, m in carlos.bcast), carlos.bcast
    assert (await carlos.request({"type": "query_me"}))["user"] == "carlos"


async def test_on_disconnect_hibernates_when_the_last_connection_drops_amqp_or_not(
        carlos: AmqpClient, server: Server) -> None:
    """A user with an AMQP session (kept until its logout, connected or not) who logs in on
    the WebSocket with on_disconnect "hibernate": a second WebSocket connection keeps the
    orders active, the last one dropping hibernates them (the AMQP session counted as a
    connection, and the option never fired)."""
    assert (await carlos.request({"type": "query_me"}))["type"] == "me"
    first = await WsClient.login(server.port, "carlos", "carlos-demo-token",
                                 on_disconnect="hibernate")
    second = await WsClient.login(server.port, "carlos", "carlos-demo-token",
                                  on_disconnect="hibernate")
    ans = await first.request(order("BUY", "40.00"))
    assert ans["type"] == "ack", ans
    oid = ans["order_ids"][0]
    await first.ws.close()
    await asyncio.sleep(0.3)
    assert server.core.engine.orders[oid].status.value == "ACTIVE"
    await second.ws.close()
    for _ in range(50):
        if server.core.engine.orders[oid].status.value == "HIBERNATED":
            break
        await asyncio.sleep(0.05)
    assert server.core.engine.orders[oid].status.value == "HIBERNATED"
    assert "carlos" in server.amqp.sessions  # the AMQP session itself goes on


async def test_ws_and_amqp_trade_in_one_book(carlos: AmqpClient, ana_ws: WsClient,
                                             server: Server) -> None:
    for stream in ("book", "trades"):
        ack = await carlos.request({"type": "subscribe", "stream": stream, "contract": CID})
        assert (ack["type"], ack["stream"]) == ("ack", f"{stream}:{CID}")
    ack = await carlos.request({"type": "subscribe", "stream": "states"})
    assert ack["type"] == "ack"
    await ana_ws.request({"type": "subscribe", "stream": "book", "contract": CID})
    await ana_ws.request({"type": "subscribe", "stream": "private"})

    # ana (WebSocket) offers; carlos (AMQP) sees it in the book and lifts it
    ans = await ana_ws.request(order("SELL", "50.00", "2.0", client_order_id="a-1"))
    assert ans["type"] == "ack", ans
    await carlos.wait_bcast(lambda k, h, m: m["type"] == "book" and not m["snapshot"]
                            and m["price"] == "50.00")
    ans = await carlos.request(order("BUY", "50.00", "1.5", client_order_id="c-1"))
    assert ans["type"] == "ack" and ans["reports"][0]["action"] == "FILLED", ans

    _, h, trade = await carlos.wait_bcast(lambda k, h, m: m["type"] == "public_trade")
    assert (trade["price"], trade["quantity"]) == ("50.00", "1.5")
    assert h[STREAM_HEADER] == f"trades:{CID}" and h[SEQ_HEADER] == 1
    _, _, own = await carlos.wait_bcast(lambda k, h, m: m["type"] == "trade")
    assert (own["side"], own["quantity"], own["agent"]) == ("BUY", "1.5", "AG2")
    for _ in range(100):  # ana's side of the same trade, on the WebSocket
        if any(m["type"] == "trade" for m in ana_ws.stream):
            break
        await asyncio.sleep(0.02)
    ws_trade = next(m for m in ana_ws.stream if m["type"] == "trade")
    assert (ws_trade["side"], ws_trade["trade_id"]) == ("SELL", own["trade_id"])

    # one book, whoever looks: AMQP and WebSocket queries agree, and the AMQP book stream
    # (snapshot + deltas, gap-free sequence) rebuilds it
    q_amqp = await carlos.request({"type": "query_book", "contract": CID})
    q_ws = await ana_ws.request({"type": "query_book", "contract": CID})
    assert q_amqp["asks"] == q_ws["asks"] == [
        {"entry": q_ws["asks"][0]["entry"], "price": "50.00", "quantity": "0.5"}]
    await carlos.wait_bcast(lambda k, h, m: m["type"] == "book" and m.get("quantity") == "0.5")
    book = carlos.stream(f"book:{CID}")
    snap_seq, snap = book[0]
    assert snap["snapshot"] and snap_seq == snap["seq"]
    deltas = [(s, m) for s, m in book[1:]]
    assert_contiguous([snap_seq, *(s for s, _ in deltas)])
    asks: dict[int, str] = {a["entry"]: a["quantity"] for a in snap["asks"]}
    for _, d in deltas:
        if d["side"] == "SELL":
            if d["action"] == "REMOVE":
                asks.pop(d["entry"], None)
            else:
                asks[d["entry"]] = d["quantity"]
    assert asks == {a["entry"]: a["quantity"] for a in q_amqp["asks"]}
    # routing keys per stream; no public message carries a party
    keys = {h[STREAM_HEADER]: k for k, h, _ in carlos.bcast}
    assert keys[f"book:{CID}"] in ("user.carlos", f"book.{CID}")
    assert keys[f"trades:{CID}"] == f"trades.{CID}"
    for k, _, m in carlos.bcast:
        if k.startswith(("book.", "trades.")):
            assert not {"user", "agent", "unit"} & set(m), m


async def test_public_stream_is_published_once_for_many_subscribers(
        rabbitmq: Broker, carlos: AmqpClient, server: Server) -> None:
    bea = AmqpClient(rabbitmq.url_for("bea"), "bea")
    await bea.connect()
    try:
        for c in (carlos, bea):
            ack = await c.request({"type": "subscribe", "stream": "book", "contract": CID2})
            assert ack["type"] == "ack"
        before = server.amqp.stats["public:book"]
        await carlos.request(order("BUY", "10.00", contract=CID2))
        for c in (carlos, bea):
            await c.wait_bcast(lambda k, h, m: k == f"book.{CID2}" and m["price"] == "10.00")
        assert server.amqp.stats["public:book"] == before + 1  # one publish, two queues
        # bea unsubscribes: her queue is unbound, carlos still gets the stream
        assert (await bea.request({"type": "unsubscribe", "stream": "book",
                                   "contract": CID2}))["type"] == "ack"
        await carlos.request(order("BUY", "11.00", contract=CID2))
        await carlos.wait_bcast(lambda k, h, m: k == f"book.{CID2}" and m["price"] == "11.00")
        await asyncio.sleep(0.2)
        assert not [m for k, _, m in bea.bcast if k == f"book.{CID2}"
                    and m.get("price") == "11.00"]
    finally:
        await bea.close()


# ---------------------------------------------------------------------------- identity


async def test_forged_user_id_never_reaches_the_server(carlos: AmqpClient,
                                                       server: Server) -> None:
    received = server.amqp.stats["received"]
    forged = carlos.message(order("BUY", "45.00", client_order_id="forged"), user_id="ana")
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await carlos.exchange.publish(forged, REQUEST_KEY)
    await asyncio.sleep(0.3)
    assert server.amqp.stats["received"] == received
    assert live_orders(server, "AG1") == [] and live_orders(server, "AG2") == []
    # the connection is still carlos's: a new channel works, as carlos
    await carlos.close()
    await carlos.connect()
    me = await carlos.request({"type": "query_me"})
    assert me["user"] == "carlos"


async def test_request_without_user_id_is_refused(carlos: AmqpClient, server: Server) -> None:
    m = carlos.message(order("BUY", "45.00"))
    m.user_id = None
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    carlos.pending[m.message_id or ""] = (m, fut)
    await carlos.exchange.publish(m, REQUEST_KEY)
    ans = await asyncio.wait_for(fut, 5)
    assert (ans["type"], ans["field"]) == ("error", "user_id")
    assert live_orders(server, "AG2") == []


async def test_unknown_platform_user_is_refused(rabbitmq: Broker, server: Server) -> None:
    if "zoe" not in rabbitmq.passwords:
        rabbitmq.add_user("zoe")
    zoe = AmqpClient(rabbitmq.url_for("zoe"), "zoe")
    await zoe.connect(consume_bcast=False)
    try:
        ans = await zoe.request({"type": "query_me"})
        assert (ans["type"], ans["code"]) == ("reject", "LOGIN_FAILED")
        assert "zoe" not in server.amqp.sessions
    finally:
        await zoe.close()


async def test_cannot_act_for_another_agent(carlos: AmqpClient, ana_ws: WsClient,
                                            server: Server) -> None:
    ans = await ana_ws.request(order("SELL", "60.00"))
    (ana_order,) = ans["order_ids"]
    cancel = await carlos.request({"type": "order_cancel", "order_id": ana_order})
    assert (cancel["type"], cancel["code"]) == ("reject", "ORDER_UNKNOWN")
    q = await carlos.request({"type": "query_orders", "agent": "AG1"})
    assert (q["type"], q["code"]) == ("reject", "NOT_PERMITTED")
    sub = await carlos.request({"type": "subscribe", "stream": "private", "agent": "AG1"})
    assert (sub["type"], sub["code"]) == ("reject", "NOT_PERMITTED")
    foreign_unit = await carlos.request(order("SELL", "60.00", unit="SELLU1"))
    assert foreign_unit["type"] == "reject", foreign_unit
    op = await carlos.request({"type": "contract_close", "contracts": [CID]})
    assert (op["type"], op["code"]) == ("reject", "NOT_PERMITTED")
    assert [v["order_id"] for v in live_orders(server, "AG1")] == [ana_order]
    assert live_orders(server, "AG2") == []
    # and the broker keeps carlos out of ana's broadcast queue
    foreign = await carlos.ch.get_queue(bcast_queue("ana"), ensure=False)
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await foreign.consume(carlos._on_bcast, no_ack=True)


async def test_malformed_messages_get_an_error_naming_the_field(carlos: AmqpClient,
                                                                server: Server) -> None:
    bad_price = await carlos.request(order("BUY", "1.001", req_id="p"))
    assert (bad_price["type"], bad_price["field"], bad_price["req_id"]) == (
        "error", "price", "p")
    assert "3 decimals" in bad_price["reason"]
    unknown = await carlos.request({**order("BUY", "1.00"), "colour": "red"})
    assert (unknown["type"], unknown["field"]) == ("error", "colour")
    missing = await carlos.request({"type": "order_cancel"})
    assert (missing["type"], missing["field"]) == ("error", "order_id")
    no_type = await carlos.request({"contract": CID})
    assert (no_type["type"], no_type["field"]) == ("error", "type")
    bad_sub = await carlos.request({"type": "subscribe", "stream": "book", "contract": "X"})
    assert (bad_sub["type"], bad_sub["field"]) == ("error", "contract")
    extra = await carlos.request({"type": "subscribe", "stream": "states", "colour": "red"})
    assert (extra["type"], extra["field"]) == ("error", "colour")
    assert not server.amqp.sessions["carlos"].public

    # undecodable bodies and unknown content types (built by hand)
    for body, ctype, field in ((b"{not json", JSON, "message"),
                               (b"\xc1", MSGPACK, "message"),
                               (b"{}", "text/plain", "content_type"),
                               # nested deeper than any request (was a recursion error)
                               (b"[" * 500 + b"]" * 500, JSON, "message"),
                               (b"\x91" * 499 + b"\x90", MSGPACK, "message")):
        m = carlos.message({})
        m.body, m.content_type = body, ctype
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        carlos.pending[m.message_id or ""] = (m, fut)
        await carlos.exchange.publish(m, REQUEST_KEY)
        ans = await asyncio.wait_for(fut, 5)
        assert (ans["type"], ans["field"]) == ("error", field), ans
    # the session lives on
    assert (await carlos.request({"type": "query_me"}))["user"] == "carlos"
    assert live_orders(server, "AG2") == []


async def test_unanswerable_requests_do_not_hold_the_adapters_prefetch(
        rabbitmq: Broker, carlos: AmqpClient, server: Server) -> None:
    """Requests that fail to decode are acknowledged too: more of them than the adapter's
    prefetch (256) from one user, none with a reply_to, leave the gateway taking another
    user's order (deeply nested ones each held a slot for ever, and came back at every
    reconnection, until the gateway took nothing more from anyone)."""
    for i in range(300):
        m = aio_pika.Message(b"[" * 500 + b"]" * 500, content_type=JSON,
                             message_id=f"deep-{i}", user_id="carlos")
        await carlos.exchange.publish(m, REQUEST_KEY)
    ana = AmqpClient(rabbitmq.url_for("ana"), "ana")
    await ana.connect()
    try:
        ans = await ana.request(order("SELL", "50.00", unit="SELLU1", client_order_id="a-1"),
                                timeout=10)
        assert ans["type"] == "ack", ans
    finally:
        await ana.close()


async def test_flood_of_malformed_messages_is_throttled_then_blocked(
        carlos: AmqpClient, server: Server) -> None:
    limit = server.config.max_errors_per_10s
    codes = [(await carlos.request({"type": "order_cancel"}))["code"]
             for _ in range(limit + 5)]
    k = codes.index("THROTTLED")
    assert k >= 5 and set(codes[:k]) == {"INVALID_FIELD"} and set(codes[k:]) == {"THROTTLED"}
    assert "carlos" not in server.amqp.sessions  # the session was closed
    blocked = await carlos.request({"type": "query_me"})  # and the user waits a while
    assert (blocked["type"], blocked["code"]) == ("error", "THROTTLED")


# ---------------------------------------------------------------------------- idempotency


async def test_only_commands_answers_are_kept_for_repeats_within_a_bound(
        carlos: AmqpClient, server: Server) -> None:
    """The answers kept for repeats are commands' (a repeat must not execute again), at
    most ``remember`` of them and ``remember_items`` items in all; a query's answer is not
    kept (a repeat is answered again): 300 query_orders over 300 orders held 30 MiB, and
    the 20,000 answers kept could have held gigabytes."""
    await lift_rate_limits(server)
    for i in range(300):
        await server.sequencer.submit(
            NewOrder("carlos", "AG2", "BUYU2", CID, Side.BUY, 1000 + i, 10), "carlos")
    executed = server.amqp.executed
    futs = [await carlos.submit({"type": "query_orders"}) for _ in range(50)]
    for f in futs:
        ans = await asyncio.wait_for(f, 30)
        assert ans["type"] == "orders" and len(ans["orders"]) == 300
    assert len(executed) == 0
    again = await carlos.request({"type": "query_orders"}, message_id="q-1")
    gone = again["orders"][0]["order_id"]
    cancel = await carlos.request({"type": "order_cancel", "order_id": gone})
    assert cancel["type"] == "ack", cancel
    repeat = await carlos.request({"type": "query_orders"}, message_id="q-1")
    assert (len(again["orders"]), len(repeat["orders"])) == (300, 299)  # answered again
    kept = [executed.get(*k) for k in list(executed.entries)]
    assert [e.answer["kind"] for e in kept if e is not None and e.answer] == [
        "order_cancel"]
    # commands' answers: bounded by count and by items (1 + the length of their lists)
    assert (await carlos.request({"type": "cancel_all"}))["type"] == "ack"  # room for more
    executed.limit, executed.limit_items = 5, 12
    for i in range(8):
        await carlos.request(order("BUY", "30.00", client_order_id=f"b-{i}"),
                             message_id=f"b-{i}")
    kept = [Entry._make(e) for e in executed.entries.values()]
    # an order's ack counts 3 (itself, its order id, its report): the items bind first
    assert len(kept) == 4 and executed.items == sum(e.items for e in kept) == 12
    assert [k[1] for k in executed.entries] == [f"b-{i}" for i in range(8 - len(kept), 8)]
    repeat = await carlos.request(order("BUY", "30.00", client_order_id="b-7"),
                                  message_id="b-7")
    assert carlos.headers["b-7"].get(REPLAYED_HEADER) is True and repeat["type"] == "ack"


async def test_a_request_refused_before_the_sequencer_neither_takes_its_message_id_nor_evicts(
        carlos: AmqpClient, server: Server) -> None:
    """A command request refused by the session (a bad field, a role the sender lacks) is
    neither executed nor journaled: it does not take its message_id (the corrected
    request under it is executed, as a restarted server would), and such refusals, which
    cost nothing, do not push the commands executed out of the memory (a repeat of one
    would then be executed again)."""
    bad = await carlos.request(order("BUY", "1.001", req_id="r-3"), message_id="m-bad")
    assert bad["type"] == "error", bad
    fixed = await carlos.request(order("BUY", "1.00", req_id="r-3"), message_id="m-bad")
    assert fixed["type"] == "ack", fixed
    executed = server.executed
    executed.limit = 50  # the bound scaled down (20,000 in production)
    first = await carlos.request(order("BUY", "30.00"), message_id="victim")
    assert first["type"] == "ack", first
    for i in range(60):  # a trader sending operators' commands: NOT_PERMITTED
        r = await carlos.request({"type": "contract_open", "contracts": [CID]},
                                 message_id=f"junk-{i}")
        assert r["code"] == "NOT_PERMITTED", r
    again = await carlos.request(order("BUY", "30.00"), message_id="victim")
    assert again == first
    assert sorted(v["price"] for v in live_orders(server, "AG2")) == [100, 3000]


async def test_resent_request_gets_the_same_answer_once(carlos: AmqpClient,
                                                        server: Server) -> None:
    req = order("BUY", "33.00", client_order_id="once")
    first = await carlos.request(req, message_id="m-once")
    assert first["type"] == "ack"
    again = await carlos.request(req, message_id="m-once")
    assert again == first
    assert carlos.headers["m-once"].get(REPLAYED_HEADER) is True
    # two copies in flight at once: one execution, two identical answers
    await carlos.submit(order("BUY", "34.00", client_order_id="twice"), "m-twice")
    f2 = await carlos.submit(order("BUY", "34.00", client_order_id="twice"), "m-twice")
    a2 = await asyncio.wait_for(f2, 5)
    assert a2["type"] == "ack"
    for _ in range(100):
        if carlos.replies["m-twice"] == 2:
            break
        await asyncio.sleep(0.02)
    assert carlos.replies["m-twice"] == 2
    # a new message_id with the same client_order_id: the engine refuses the repeat
    dup = await carlos.request(req, message_id="m-other")
    assert (dup["type"], dup["code"]) == ("reject", "DUPLICATE_CLIENT_ORDER_ID")
    coids = Counter(v["client_order_id"] for v in live_orders(server, "AG2"))
    assert coids == {"once": 1, "twice": 1}


async def test_server_restart_keeps_sessions_and_refuses_repeats(rabbitmq: Broker,
                                                                 tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = await _start_market(rabbitmq, data)
    carlos = AmqpClient(rabbitmq.url_for("carlos"), "carlos")
    running = [srv]
    try:
        await carlos.connect()
        sub = await carlos.request({"type": "subscribe", "stream": "book", "contract": CID})
        assert sub["type"] == "ack"
        req = order("BUY", "35.00", client_order_id="persist")
        first = await carlos.request(req, message_id="m-persist")
        assert first["type"] == "ack"
        await carlos.wait_bcast(lambda k, h, m: m.get("client_order_id") == "persist")
        n_before = len(carlos.mids)
        seen = set(carlos.mids)
        running.remove(srv)
        await srv.stop()

        # a new server process on the same data: the journal brings the order back, and
        # with it the request's message_id: a resend is answered as the first time
        srv2 = await _start_server(rabbitmq, data)
        running.append(srv2)
        assert "carlos" in srv2.amqp.sessions  # restored, with its subscriptions
        _, h, resync = await carlos.wait_bcast(lambda k, h, m: m["type"] == "resync")
        assert h[STREAM_HEADER] == "user:carlos"
        assert {"stream": f"book:{CID}", "seq": 0} in resync["streams"]
        assert {"stream": "private:AG2", "seq": 0} in resync["streams"]
        again = await carlos.request(req, message_id="m-persist")
        assert again == first and carlos.headers["m-persist"].get(REPLAYED_HEADER) is True
        # a new message_id with the same client_order_id: the engine refuses the repeat
        other = await carlos.request(req, message_id="m-persist-2")
        assert (other["type"], other["code"]) == ("reject", "DUPLICATE_CLIENT_ORDER_ID")
        assert [v["client_order_id"] for v in live_orders(srv2, "AG2")] == ["persist"]
        # the restored book subscription streams again
        await carlos.request(order("BUY", "36.00"))
        await carlos.wait_bcast(lambda k, h, m: k == f"book.{CID}" and m["price"] == "36.00")
        # the new run numbers its streams from 0 again, but no message of it carries the
        # message_id of one of the first run's (a client discarding duplicates by id
        # would have dropped new messages: found by a black-box test)
        later = carlos.mids[n_before:]
        assert later and not seen & set(later), sorted(seen & set(later))
        assert srv2.amqp.run_id != srv.amqp.run_id
        # logout ends the session and forgets it
        bye = await carlos.request({"type": "logout"})
        assert (bye["type"], bye["kind"]) == ("ack", "logout")
        assert "carlos" not in srv2.amqp.sessions
        assert '"carlos"' not in (data / "amqp-sessions.json").read_text()
    finally:
        await carlos.close()
        for s in running:
            await s.stop()


async def test_a_repeat_after_a_restart_is_answered_from_the_journal_not_executed(
        rabbitmq: Broker, tmp_path: Path) -> None:
    """Requests that no engine key makes harmless to repeat (an order without a
    client_order_id, a guarantee request) are executed once, whether the repeat reaches
    the same server process or one restarted since: the journal keeps each command's
    message_id, and the restarted server answers the repeat with the answer the command
    was given (built again from the replay), marked replayed.  A different request under a
    message_id already used is refused MESSAGE_ID_REUSED, before and after the restart."""
    data = tmp_path / "data"
    srv = await _start_market(rabbitmq, data)
    running = [srv]
    carlos = AmqpClient(rabbitmq.url_for("carlos"), "carlos")
    try:
        await carlos.connect()
        no_coid = order("BUY", "31.00", req_id="r-1")
        first = await carlos.request(no_coid, message_id="m-order")
        assert first["type"] == "ack", first
        gr = {"type": "guarantee_request", "change": "increase", "amount": "100.00",
              "req_id": "r-2"}
        granted = await carlos.request(gr, message_id="m-guarantee")
        assert granted["type"] == "ack", granted
        failing = await carlos.request(order("BUY", "1.001", req_id="r-3"),
                                       message_id="m-bad")  # not a command: not kept
        assert failing["type"] == "error"
        reused = await carlos.request(order("BUY", "32.00"), message_id="m-order")
        assert (reused["type"], reused["code"], reused["field"]) == (
            "error", "MESSAGE_ID_REUSED", "message_id"), reused
        assert srv.core.risk is not None
        requests_before = len(srv.core.risk.requests)
        running.remove(srv)
        await srv.stop()

        srv2 = await _start_server(rabbitmq, data)
        running.append(srv2)
        assert srv2.core.risk is not None
        assert len(srv2.core.risk.requests) == requests_before
        again = await carlos.request(no_coid, message_id="m-order")
        assert again == first and carlos.headers["m-order"].get(REPLAYED_HEADER) is True
        again_gr = await carlos.request(gr, message_id="m-guarantee")
        assert again_gr == granted
        assert carlos.headers["m-guarantee"].get(REPLAYED_HEADER) is True
        assert len(srv2.core.risk.requests) == requests_before  # not requested again
        assert [v["price"] for v in live_orders(srv2, "AG2")] == [3100]
        reused = await carlos.request(order("BUY", "32.00"), message_id="m-order")
        assert reused["code"] == "MESSAGE_ID_REUSED", reused
        assert [v["price"] for v in live_orders(srv2, "AG2")] == [3100]
        # a refused decoding kept nothing: the same message_id with a valid request runs
        fixed = await carlos.request(order("BUY", "1.00", req_id="r-3"), message_id="m-bad")
        assert fixed["type"] == "ack", fixed
        # a second repeat is answered from the kept answer (the events were dropped)
        assert (await carlos.request(no_coid, message_id="m-order")) == first
        entry = srv2.executed.get("carlos", "m-order")
        assert entry is not None and entry.events is None and entry.answer == first
    finally:
        await carlos.close()
        for s in running:
            await s.stop()


def _slow_sequencer(server: Server, seconds: float) -> None:
    """Make every batch of the sequencer wait ``seconds`` before its commit (commands stay
    in progress that long; the event loop goes on, as it does while a batch is flushed)."""
    seq = server.sequencer
    commit = seq._commit

    async def slow(loop: Any, batch: Any) -> None:
        await asyncio.sleep(seconds)
        await commit(loop, batch)

    seq._commit = slow  # type: ignore[method-assign]


async def _carlos_is_served(broker: Broker) -> None:
    """A new connection of carlos gets its request answered."""
    carlos = AmqpClient(broker.url_for("carlos"), "carlos")
    await carlos.connect()
    try:
        assert (await carlos.request({"type": "query_me"}))["user"] == "carlos"
    finally:
        await carlos.close()


async def _until(cond: Callable[[], bool], timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_redelivery_after_a_lost_connection_is_not_executed_again(
        carlos: AmqpClient, server: Server) -> None:
    """The server's connection drops while a command is in the sequencer: its ack is lost,
    the broker redelivers the request, and the server answers it without executing it
    again."""
    amqp = server.amqp
    _slow_sequencer(server, 0.5)
    received = amqp.stats["received"]
    fut = await carlos.submit(order("BUY", "37.00", client_order_id="redeliver"),
                              message_id="m-redeliver")
    await _until(lambda: amqp.stats["received"] > received)
    link = amqp._link
    assert link is not None
    await link.connection.close()  # as if the network dropped
    ans = await asyncio.wait_for(fut, 10)
    assert ans["type"] == "ack", ans
    await _until(lambda: amqp.stats["redelivered"] >= 1)
    await _until(lambda: not amqp._pending and not amqp._inflight)
    await asyncio.sleep(0.3)
    # every answer the client got (one or two, depending on when the connection came
    # back) is the original acknowledgement, never a DUPLICATE_CLIENT_ORDER_ID
    assert carlos.answers["m-redeliver"] == [ans] * len(carlos.answers["m-redeliver"])
    assert [v["client_order_id"] for v in live_orders(server, "AG2")] == ["redeliver"]
    assert amqp.connections >= 2
    # acknowledged at last: nothing is delivered again
    seen = amqp.stats["received"]
    await asyncio.sleep(0.3)
    assert amqp.stats["received"] == seen


async def test_server_stop_answers_requests_in_progress(rabbitmq: Broker,
                                                        tmp_path: Path) -> None:
    srv = await _start_market(rabbitmq, tmp_path / "data")
    carlos = AmqpClient(rabbitmq.url_for("carlos"), "carlos")
    try:
        await carlos.connect()
        assert (await carlos.request({"type": "query_me"}))["user"] == "carlos"
        _slow_sequencer(srv, 0.3)
        futs = [await carlos.submit(order("BUY", f"2{i}.00", client_order_id=f"s-{i}"))
                for i in range(3)]
        await _until(lambda: len(srv.amqp._pending) == 3)
        await srv.stop()  # waits for the three commands and sends their answers
        answers = [await asyncio.wait_for(f, 5) for f in futs]
        assert [a["type"] for a in answers] == ["ack"] * 3
        # and acknowledged them: a new server gets nothing to process
        srv = await _start_server(rabbitmq, tmp_path / "data")
        await asyncio.sleep(0.3)
        assert srv.amqp.stats["received"] == 0
        assert sorted(v["client_order_id"] for v in live_orders(srv, "AG2")) == [
            "s-0", "s-1", "s-2"]
    finally:
        await carlos.close()
        await srv.stop()


# ---------------------------------------------------------------------------- restarts


async def test_broker_restart_under_load(rabbitmq: Broker, carlos: AmqpClient,
                                         ana_ws: WsClient, server: Server) -> None:
    """Orders flow while the broker application stops and starts: the server reconnects,
    the client reconnects and resends what has no answer (same message_id, same
    client_order_id); every order ends up in the engine exactly once."""
    n = 80
    answers: dict[str, dict[str, Any]] = {}
    lost = asyncio.Event()

    def on_close(*_: Any) -> None:
        lost.set()

    assert carlos.conn is not None
    carlos.conn.close_callbacks.add(on_close)
    connections = server.amqp.connections

    async def restart_broker() -> None:
        await asyncio.sleep(0.8)
        await asyncio.to_thread(rabbitmq.stop_app)
        try:
            # the WebSocket side keeps serving while the broker is away
            me = await ana_ws.request({"type": "query_me"})
            assert me["user"] == "ana"
            await asyncio.sleep(0.5)
            assert not server.amqp.connected.is_set()
        finally:
            await asyncio.to_thread(rabbitmq.start_app)

    restarter = asyncio.get_running_loop().create_task(restart_broker())
    futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
    for i in range(n):
        coid = f"load-{i}"
        req = order("BUY", f"{10 + i % 7}.{i:02d}"[:5], client_order_id=coid)
        try:
            if lost.is_set():
                raise ConnectionError("lost")
            futures[coid] = await carlos.submit(req, message_id=f"m-{coid}")
        except Exception:
            # remember it unsent, reconnect, resend everything unanswered
            m = carlos.message(req, message_id=f"m-{coid}")
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            carlos.pending[f"m-{coid}"] = (m, fut)
            futures[coid] = fut
            await carlos.reconnect()
            lost.clear()
            assert carlos.conn is not None
            carlos.conn.close_callbacks.add(on_close)
        await asyncio.sleep(0.03)  # ~30 orders/s: below the platform's rate limit
    await restarter
    if lost.is_set() or carlos.conn is None or carlos.conn.is_closed:
        await carlos.reconnect()
    deadline = asyncio.get_running_loop().time() + 20
    while carlos.pending and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
        if lost.is_set():
            lost.clear()
            await carlos.reconnect()
    for coid, fut in futures.items():
        answers[coid] = await asyncio.wait_for(fut, 1)

    assert server.amqp.connections > connections  # the server reconnected
    assert carlos.reconnects >= 1  # and so did the client
    # the server kept running, so a repeat is answered from its memory: the original ack
    # (a server restart would answer DUPLICATE_CLIENT_ORDER_ID instead, tested above)
    outcomes = Counter((a["type"], a.get("code")) for a in answers.values())
    assert outcomes == {("ack", None): n}, outcomes
    for coid in answers:
        assert all(a == answers[coid] for a in carlos.answers[f"m-{coid}"])
    coids = Counter(v["client_order_id"] for v in live_orders(server, "AG2"))
    assert coids == {f"load-{i}": 1 for i in range(n)}, coids
    # every acknowledged order is in the engine under the id the answer gave
    by_id = {v["order_id"]: v["client_order_id"] for v in live_orders(server, "AG2")}
    for coid, a in answers.items():
        if a["type"] == "ack":
            assert by_id[a["order_ids"][0]] == coid
    assert server.amqp.connected.is_set()


async def test_server_starts_without_the_broker_and_connects_later(rabbitmq: Broker,
                                                                   tmp_path: Path) -> None:
    await _reset_broker(rabbitmq)
    await asyncio.to_thread(rabbitmq.stop_app)
    srv: Server | None = None
    try:
        srv = Server(Config(data_dir=tmp_path / "data", calendar=None, fsync=False, port=0,
                            amqp_url=rabbitmq.url))
        await asyncio.wait_for(srv.start(), 5)  # does not wait for the broker
        ws = await WsClient.login(srv.port, "ana", "ana-demo-token")
        assert (await ws.request({"type": "query_me"}))["user"] == "ana"
        await ws.close()
        await asyncio.sleep(0.5)
        assert not srv.amqp.connected.is_set() and srv.amqp.stats["connect_failures"] >= 2
    finally:
        await asyncio.to_thread(rabbitmq.start_app)
    try:
        await asyncio.wait_for(srv.amqp.connected.wait(), 10)
        await _carlos_is_served(rabbitmq)
    finally:
        await srv.stop()


async def test_properties_that_are_not_utf8_neither_break_the_link_nor_go_unanswered(
        carlos: AmqpClient, server: Server) -> None:
    """AMQP short strings and table names are bytes; the client library decoded them as
    UTF-8 and dropped the connection when they were not, and the broker then redelivered
    the request to the next connection, for ever: one such request stopped the AMQP API for
    everybody (the adapter reconnected 17 times in 2 s and answered nobody).  Now it is
    answered like any other, its correlation_id echoed as the very bytes it came as, and
    the link stays up.  A ``message_id`` that is not UTF-8 is refused by name: it is the
    request's idempotency key, journaled with its command (gateway/executed.py)."""
    from aiormq.abc import ChannelFrame

    from gateway import amqpframes

    assert carlos.conn is not None
    raw = await (await carlos.conn.channel(publisher_confirms=False)).get_underlay_channel()

    def shortstr(b: bytes) -> bytes:
        return bytes((len(b),)) + b

    async def send(corr: bytes, message_id: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        bad_name = b"x-\xff"
        headers = shortstr(bad_name) + b"S" + (3).to_bytes(4, "big") + b"\xfe\xfd\xfc"
        props = ((amqpframes.CONTENT_TYPE | amqpframes.HEADERS | amqpframes.CORRELATION_ID
                  | 1 << 9 | amqpframes.MESSAGE_ID | 1 << 4).to_bytes(2, "big")
                 + shortstr(b"application/json") + len(headers).to_bytes(4, "big")
                 + headers + shortstr(corr) + shortstr(carlos.reply_q.name.encode())
                 + shortstr(message_id) + shortstr(b"carlos"))
        await raw.write_queue.put(ChannelFrame(
            payload=amqpframes.publish(raw.number, REQUEST_EXCHANGE, REQUEST_KEY, props,
                                       orjson.dumps(msg), 100_000),
            should_close=False))
        key = corr.decode("utf-8", "surrogateescape")  # as this process reads it
        for _ in range(100):
            if carlos.answers.get(key):
                break
            await asyncio.sleep(0.05)
        got = carlos.answers[key]
        assert len(got) == 1, got
        return got[0]

    me = await send(b"c-\xff\xfe", b"m-ok", {"type": "query_me"})
    assert me == {"type": "me", "req_id": None, "user": "carlos", "agent": "AG2",
                  "roles": ["trader"], "units": ["BUYU2"], "unit_sides": {"BUYU2": "BUY"}}, me
    refused = await send(b"c-\xff\xfd", b"m-\xc3", order("BUY", "30.00"))
    assert (refused["type"], refused["field"]) == ("error", "message_id"), refused
    assert "UTF-8" in refused["reason"]
    assert live_orders(server, "AG2") == []
    assert (await carlos.request({"type": "query_me"}))["user"] == "carlos"
    assert server.amqp.connections == 1 and server.amqp.stats["received"] == 3


async def test_a_broker_user_that_cannot_be_a_platform_user_is_refused_and_acknowledged(
        rabbitmq: Broker, carlos: AmqpClient, server: Server) -> None:
    """Broker user names go up to 255 bytes, platform user ids to 64 plain characters
    (risk.refdata).  The adapter built the names an answer needs (the message id
    ``user:<name>:<seq>``, the routing key ``user.<name>``) from the broker's name and
    failed on a long one: the request was never acknowledged, and as many as the prefetch
    (256) stopped the AMQP API for everybody.  Such a user is refused (LOGIN_FAILED) to its
    reply_to, and every request of it is acknowledged, with or without a reply_to."""
    name = "z" * 255
    if name not in rabbitmq.passwords:
        await asyncio.to_thread(rabbitmq.add_user, name, "long-pw")
    long_user = AmqpClient(rabbitmq.url_for(name), name)
    await long_user.connect(consume_bcast=False)
    try:
        ans = await long_user.request({"type": "query_me"})
        assert (ans["type"], ans["code"]) == ("reject", "LOGIN_FAILED")
        assert "is not a platform user" in ans["reason"] and len(ans["reason"]) < 120
        received = server.amqp.stats["received"]
        n = server.amqp.prefetch + 20
        for _ in range(n):  # no reply_to: nowhere to answer, but acknowledged all the same
            m = long_user.message({"type": "query_me"})
            m.reply_to = None
            await long_user.exchange.publish(m, REQUEST_KEY, timeout=5)
        await _until(lambda: server.amqp.stats["received"] == received + n, timeout=10)
    finally:
        await long_user.close()
    assert (await carlos.request({"type": "query_me"}))["user"] == "carlos"

    assert await _request_queue(rabbitmq) == ["0", "0"]
    assert name not in server.amqp.sessions
    assert server.amqp.connections == 1 and server.amqp.stats["unanswerable"] == 0


async def test_a_broker_that_stops_answering_is_reconnected_to(rabbitmq: Broker,
                                                             tmp_path: Path) -> None:
    """When no frame comes from the broker within the heartbeat grace, the client library
    gives the connection up and fails what waits on it with CancelledError.  The adapter
    took that for the server stopping and never connected again: the AMQP API was gone
    until a restart.  Here the broker freezes while the adapter waits for its answer to a
    binding; once it is back, the adapter connects again and serves."""
    await _reset_broker(rabbitmq)
    srv = Server(Config(data_dir=tmp_path / "data", calendar=None, fsync=False, port=0,
                        amqp_url=rabbitmq.url + "?heartbeat=1", heartbeat_s=1.0))
    await srv.start()
    try:
        await asyncio.wait_for(srv.amqp.connected.wait(), 10)
        await _carlos_is_served(rabbitmq)
        session = srv.amqp.sessions["carlos"]
        await asyncio.to_thread(rabbitmq.pause)
        try:
            srv.amqp.set_public(session, "states", True)  # a binding: waits for the broker
            # the library's grace is 3 × (heartbeat + 1 s) = 6 s without a frame
            await _until(lambda: not srv.amqp.connected.is_set(), timeout=15)
        finally:
            await asyncio.to_thread(rabbitmq.resume)
        await _until(lambda: srv.amqp.connections == 2, timeout=15)
        assert not srv.amqp._closed
        await _carlos_is_served(rabbitmq)
    finally:
        await srv.stop()


async def test_a_message_that_cannot_be_encoded_is_dropped_alone(carlos: AmqpClient,
                                                                server: Server) -> None:
    """Defence in depth: should a message in the outbox carry a name the protocol cannot
    hold (a routing key over 255 bytes), the writer drops that message alone and counts
    it; the ones around it go out and the connection stays (it used to break the batch and
    the link)."""
    from gateway import amqp as amqp_mod

    adapter = server.amqp
    assert (await carlos.request({"type": "query_me"}))["user"] == "carlos"
    props = amqp_mod.amqpframes.properties(content_type=JSON)
    adapter._enqueue(amqp_mod._Publish("", "q" * 256, b"{}", props))
    adapter.to_user("carlos", {"type": "notice", "text": "after"})
    await carlos.wait_bcast(lambda _k, _h, m: m == {"type": "notice", "text": "after"})
    assert adapter.stats["unsendable"] == 1 and adapter.connections == 1


async def test_the_outbox_waits_for_a_full_socket_and_keeps_its_order(
        rabbitmq: Broker, carlos: AmqpClient, server: Server) -> None:
    """What a turn of the loop puts in the outbox is written to the socket at once while the
    socket takes it; once the socket's buffer is at its high-water mark (the broker frozen,
    reading nothing) it is left to the pump, which waits for the socket, so the process's
    memory does not take what the broker cannot (DESIGN: bounded queues).  Whichever way
    they go, the messages arrive in the order they were made, and once the broker reads
    again the answers go straight to the socket again."""
    from gateway import amqp as amqp_mod

    adapter = server.amqp
    # the first request declares the user's queue: a control operation, for the pump
    assert (await carlos.request({"type": "query_me"}))["user"] == "carlos"
    direct = adapter.stats["writes_direct"]
    assert (await carlos.request({"type": "query_me"}))["user"] == "carlos"
    assert adapter.stats["writes_direct"] > direct  # this answer went straight to the socket
    link = adapter._link
    assert link is not None and link.transport is not None
    tr = link.transport
    high = tr.get_write_buffer_limits()[1]
    direct, queued = adapter.stats["writes_direct"], adapter.stats["writes_queued"]
    pad = "x" * 4000
    made = 0

    def make(n: int) -> None:
        nonlocal made
        for _ in range(n):
            adapter.to_user("carlos", {"type": "notice", "text": f"{made} {pad}"})
            made += 1

    await asyncio.to_thread(rabbitmq.pause)
    try:
        # the kernel's buffers first (a few MB), then the transport's own
        while tr.get_write_buffer_size() < high:
            assert made < 40_000, "the socket never filled"
            make(50)
            await asyncio.sleep(0)  # the turn ends: the callback writes what it can
        assert adapter.stats["writes_direct"] > direct
        more = amqp_mod.PUMP_BATCH + 400
        make(more)
        for _ in range(20):
            await asyncio.sleep(0)
        # one batch went to the library's writer, which waits for the socket; the rest
        # waits in the outbox instead of piling up in the socket's buffer
        assert len(adapter._outbox) >= more - amqp_mod.PUMP_BATCH
        # (a notice's frames: about 4.2 KB)
        assert tr.get_write_buffer_size() <= high + (amqp_mod.PUMP_BATCH + 50) * 4500
    finally:
        await asyncio.to_thread(rabbitmq.resume)

    def notices() -> list[int]:
        return [int(m["text"].split(" ", 1)[0]) for _, _, m in carlos.bcast
                if m.get("type") == "notice"]

    await _until(lambda: len(notices()) >= made, timeout=60)
    assert notices() == list(range(made))
    assert adapter.stats["writes_queued"] > queued
    direct = adapter.stats["writes_direct"]
    assert (await carlos.request({"type": "query_me"}))["user"] == "carlos"
    assert adapter.stats["writes_direct"] > direct
    assert adapter.connections == 1 and adapter.stats["dropped"] == 0


async def test_a_logout_after_an_order_in_progress_answers_both_in_order(
        rabbitmq: Broker, carlos: AmqpClient, server: Server) -> None:
    """The logout waits for the answers of the requests before it (each request gets its
    one answer, as over WebSocket); over AMQP its own answer still goes to its reply_to and
    its delivery is acknowledged, and the session ends."""
    _slow_sequencer(server, 0.3)
    placed = await carlos.submit(order("BUY", "41.00", client_order_id="before-logout"))
    bye = await carlos.submit({"type": "logout"})
    ans = await asyncio.wait_for(placed, 10)
    assert ans["type"] == "ack" and ans["kind"] == "order_entry"
    done = await asyncio.wait_for(bye, 10)
    assert (done["type"], done["kind"]) == ("ack", "logout")
    assert set(carlos.replies.values()) == {1}  # one answer each, nothing else
    await _until(lambda: "carlos" not in server.amqp.sessions)
    assert [v["client_order_id"] for v in live_orders(server, "AG2")] == ["before-logout"]
    assert await _request_queue(rabbitmq) == ["0", "0"]  # nothing ready, nothing unacked


async def _request_queue(broker: Broker) -> list[str]:
    """The request queue's ready and unacknowledged counts, once both are 0 (or after 5 s)."""
    row: list[str] = []
    for _ in range(50):
        out = await asyncio.to_thread(broker.ctl, "list_queues", "-q", "name",
                                      "messages_ready", "messages_unacknowledged")
        rows = [ln.split() for ln in out.splitlines() if ln.split()[:1] == [REQUEST_QUEUE]]
        row = rows[0][1:] if rows else []
        if row == ["0", "0"]:
            break
        await asyncio.sleep(0.1)
    return row


async def test_requests_are_read_by_the_adapter_not_through_the_librarys_messages(
        carlos: AmqpClient, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # gateway/amqpread.py: the adapter's consumer is served from the connection's bytes; the
    # library's delivered-message path (Delivery.of) is only a fallback, never taken
    from aiormq import connection as aiormq_connection

    from gateway.amqpread import Delivery, FrameReader

    def refuse(_m: object) -> Delivery:
        raise AssertionError("a request came through the library's delivered messages")

    monkeypatch.setattr(Delivery, "of", staticmethod(refuse))
    assert aiormq_connection.FrameReceiver is FrameReader
    assert any(t.startswith("ronda-gateway-") for t in FrameReader.consumers)
    ans = await carlos.request(order("BUY", "40.00", client_order_id="via-reader"))
    assert ans["type"] == "ack" and ans["kind"] == "order_entry"
    assert [o["order_id"] for o in live_orders(server, "AG2")] == ans["order_ids"]


async def test_one_requests_many_reports_do_not_end_the_session(carlos: AmqpClient,
                                                                 server: Server) -> None:
    """A cancel_all of 15 orders sends 15 order reports at once: more than the hard bound
    of a session with max_queue 1 (10 messages, gateway/session.py).  What one commit
    produces is not held against the session: every report arrives on the private stream,
    and the session lives on (before, it ended: "slow consumer: outbound queue full")."""
    server.config.max_queue = 1  # the session is opened by carlos's first request
    ans = await carlos.request({"type": "basket_entry", "basket": "NONE", "orders": [
        {k: v for k, v in order("BUY", f"{30 + i}.00", client_order_id=f"m-{i}").items()
         if k != "type"} for i in range(15)]})
    assert ans["type"] == "ack" and len(ans["order_ids"]) == 15, ans
    ans = await carlos.request({"type": "cancel_all"})
    assert ans["type"] == "ack" and len(ans["order_ids"]) == 15, ans
    last = ans["order_ids"][-1]
    await carlos.wait_bcast(lambda k, h, m: m.get("order_id") == last
                            and m.get("action") == "CANCELLED")
    cancelled = {m["order_id"] for _k, _h, m in carlos.bcast
                 if m.get("type") == "order_report" and m.get("action") == "CANCELLED"}
    assert cancelled == set(ans["order_ids"])
    (session,) = server.sessions_of["carlos"]
    assert not session._closing
    assert (await carlos.request({"type": "query_me"}))["type"] == "me"
