"""Hostile and careless input on the WebSocket API (a review's findings, each once a
defect): every such input gets a clear error naming the field, is never guessed, never
breaks the server for anyone else and never loses what was accepted.

Real server, real sockets (tests/wsclient.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from wsclient import JSON, MSGPACK, Client, contract_id, order, start_server

from engine.commands import NewOrder
from engine.model import Side
from gateway.protocol import parse_instant
from gateway.server import Server

C1 = contract_id(10)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------------------- instants


@pytest.mark.parametrize("proto,close_at", [
    (JSON, "9999-12-31T23:59:59.000-23:00"),  # UTC year 10000
    (JSON, "0001-01-01T00:00:00.000+01:00"),  # UTC year 0
    (MSGPACK, 2**62),
])
async def test_an_instant_outside_the_years_2000_to_2999_is_refused(
        tmp_path: Path, proto: str, close_at: object) -> None:
    """Such an instant was acknowledged and journaled; the fan-out then failed on it,
    every later query_contracts closed the asker's connection, and the server could no
    longer start (the journal's replay could not format it)."""
    server = await start_server(tmp_path / "d")
    try:
        m = await Client.connect(server.port, proto)
        await m.login("marta")
        ans = await m.request({"type": "contract_create", "contract": contract_id(5),
                               "close_at": close_at})
        assert (ans["type"], ans["field"]) == ("error", "close_at"), ans
        assert "2000 to 2999" in ans["reason"]
        a = await Client.connect(server.port)
        await a.login("ana")
        assert (await a.request({"type": "query_contracts"}))["type"] == "contracts"
    finally:
        await server.stop()
    server = await start_server(tmp_path / "d")  # the journal replays
    await server.stop()


@pytest.mark.parametrize("text", ["2027-01-15T09:00:00.001+01:00:00.500000",
                                  "2027-01-15T09:00:00-01:00:00.000400",
                                  "2027-01-15T09:00:00.000+01:00:30"])
def test_a_utc_offset_that_is_not_whole_minutes_is_refused(text: str) -> None:
    """The offset's fraction of a second was dropped: an expiry 500 ms off, or finer than
    a millisecond and silently cut."""
    with pytest.raises(ValueError, match="whole minutes"):
        parse_instant(text)


@pytest.mark.parametrize("text,ms", [
    ("2027-01-15T09:00:00.001+01:00", 1_800_000_000_001),  # 08:00:00.001 UTC
    ("2027-01-15T08:00:00.001Z", 1_800_000_000_001),
    ("2027-01-15T02:30:00.999-05:30", 1_800_000_000_999),
])
def test_an_instant_is_read_to_the_millisecond(text: str, ms: int) -> None:
    assert parse_instant(text) == ms == (datetime.fromisoformat(text) - EPOCH) // timedelta(
        milliseconds=1)


# ---------------------------------------------------------------------------- answers


async def test_an_order_sent_just_before_logout_gets_its_answer(tmp_path: Path) -> None:
    """Each accepted request gets its one answer: the order was live in the book, but the
    logout closed the session before its answer went out."""
    server = await start_server(tmp_path / "d", (C1,))
    try:
        c = await Client.connect(server.port)
        await c.login("ana")
        await c.send({**order(C1, "SELLU1", "SELL", "50.00", "1.0"), "req_id": "o1"})
        await c.send({"type": "logout", "req_id": "bye"})
        await c.send({"type": "query_me", "req_id": "after"})  # after the logout: ignored
        await c.wait_closed()
        assert len(server.core.orders_of("AG1")) == 1
        assert [m["type"] for m in c.answers.get("o1", [])] == ["ack"], c.received
        order_of = [m.get("req_id") for m in c.received if m.get("req_id") in ("o1", "bye")]
        assert order_of[-1] == "bye"
        assert "after" not in c.answers
    finally:
        await server.stop()


async def test_settlement_queries_are_bounded_per_connection(tmp_path: Path) -> None:
    """One connection could queue any number of store queries on the settlement store's
    worker thread: another user's query waited behind 20,000 of them."""
    server = await start_server(tmp_path / "d")
    try:
        a = await Client.connect(server.port, read=False)
        await a.ws.send(orjson.dumps({"type": "login", "user": "ana",
                                      "token": "ana-demo-token"}).decode())
        b = await Client.connect(server.port)
        await b.login("carlos")
        before = len(asyncio.all_tasks())
        msg = orjson.dumps({"type": "query_settlement", "day": "2027-01-15"}).decode()
        for _ in range(5_000):
            await a.ws.send(msg)
        await asyncio.sleep(0.5)
        assert len(asyncio.all_tasks()) - before <= 4
        ans = await b.request({"type": "query_settlement", "day": "2027-01-15"}, timeout=60)
        assert ans["type"] == "settlement"
    finally:
        await server.stop()


@pytest.mark.parametrize("day", ["20270115", "2027-W03-5", "2027W035"])
async def test_a_settlement_day_must_be_written_yyyy_mm_dd(tmp_path: Path, day: str) -> None:
    """Such a day was read as a date, then looked up as text: an empty report."""
    server = await start_server(tmp_path / "d")
    try:
        c = await Client.connect(server.port)
        await c.login("ana")
        ans = await c.request({"type": "query_settlement", "day": day})
        assert (ans["type"], ans["field"]) == ("error", "day"), ans
    finally:
        await server.stop()


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("proto", [MSGPACK, JSON])
@pytest.mark.parametrize("case", ["type", "price", "unknown_field", "session_field",
                                  "login_field"])
async def test_an_error_names_the_field_without_replaying_the_input(
        tmp_path: Path, proto: str, case: str) -> None:
    """A 60,000-character value came back as a 240,000-character reason."""
    big = "\x00" * (60_000 if proto == MSGPACK else 10_000)  # JSON: 6 bytes per NUL
    server = await start_server(tmp_path / "d", (C1,))
    try:
        c = await Client.connect(server.port, proto)
        if case != "login_field":
            await c.login("ana")
        msg = {
            "type": {"type": big},
            "price": order(C1, "SELLU1", "SELL", big, "1.0"),
            "unknown_field": {**order(C1, "SELLU1", "SELL", "50.00", "1.0"), big: 1},
            "session_field": {"type": "query_me", big: 1},
            "login_field": {"type": "login", "user": "ana", "token": "t", big: 1},
        }[case]
        ans = await c.request(msg)
        assert ans["type"] == "error"
        assert len(ans["reason"]) + len(ans["field"]) <= 200, ans["field"][:30]
    finally:
        await server.stop()


async def test_an_error_burst_long_past_does_not_throttle_a_valid_request(
        tmp_path: Path) -> None:
    """The throttle read its 10-second window without dropping what had left it."""
    server = await start_server(tmp_path / "d", (C1,))
    try:
        c = await Client.connect(server.port)
        await c.login("ana")
        for _ in range(server.config.max_errors_per_10s // 2 + 1):
            assert (await c.request({"type": "order_entry", "price": "x"}))["type"] == "error"
        ans = await c.request(order(C1, "SELLU1", "SELL", "50.00", "1.0"))
        assert (ans["type"], ans.get("code")) == ("error", "THROTTLED"), ans
        await asyncio.sleep(10.5)
        ans = await c.request(order(C1, "SELLU1", "SELL", "50.00", "1.0"))
        assert ans["type"] == "ack", ans
    finally:
        await server.stop()


@pytest.mark.parametrize("user,msg", [
    ("ana", {"type": "set_breach_action", "hibernate_on_breach": "off"}),
    ("ana", {"type": "set_breach_action", "hibernate_on_breach": 1}),
    ("ana", {"type": "set_reactivation", "reactivate": "yes"}),
    ("rita", {"type": "set_rate_limits", "rules": [{"window_ms": 1000, "max": 50}],
              "warning_ratio": "1e-1"}),
])
async def test_a_value_of_the_wrong_type_is_refused_not_guessed(
        tmp_path: Path, user: str, msg: dict[str, object]) -> None:
    server = await start_server(tmp_path / "d")
    try:
        c = await Client.connect(server.port)
        await c.login(user)
        ans = await c.request(msg)
        assert ans["type"] == "error", ans
        assert ans["field"] in ("hibernate_on_breach", "reactivate", "warning_ratio")
    finally:
        await server.stop()


# ---------------------------------------------------------------------------- memory


async def test_subscriptions_to_unknown_agents_are_refused_and_leave_nothing_behind(
        tmp_path: Path) -> None:
    """An officer's subscription to any agent text was accepted and its key kept for ever,
    also after the connection closed: memory without bound."""
    server = await start_server(tmp_path / "d")
    try:
        r = await Client.connect(server.port)
        await r.login("rita")
        ans = await r.request({"type": "subscribe", "stream": "private", "agent": "NOPE"})
        assert (ans["type"], ans.get("code")) == ("reject", "AGENT_UNKNOWN"), ans
        keys = len(server.hub.private_subs) + len(server.hub.private_seq)
        for i in range(200):
            await r.send({"type": "subscribe", "stream": "private", "agent": f"{i:06d}X"})
        ans = await r.request({"type": "subscribe", "stream": "private", "agent": "AG2"})
        assert ans["type"] == "ack"
        await r.request({"type": "heartbeat"}, timeout=30)
        await r.close()
        for _ in range(100):
            if "AG2" not in server.hub.private_subs:
                break
            await asyncio.sleep(0.01)
        assert len(server.hub.private_subs) + len(server.hub.private_seq) <= keys + 1
        assert "AG2" not in server.hub.private_subs  # emptied sets are removed
    finally:
        await server.stop()




# ---------------------------------------------------------------------------- queries


async def _with_orders(tmp_path: Path, n: int) -> Server:
    contracts = [contract_id(h) for h in range(1, 24)]
    server = await start_server(tmp_path / "d", contracts)
    for i in range(n):
        await server.sequencer.submit(NewOrder("ana", "AG1", "SELLU1", contracts[i % 23],
                                               Side.SELL, 5000 + i % 500, 1), "ana")
    return server


async def test_a_burst_of_queries_is_answered_a_few_at_a_time(tmp_path: Path) -> None:
    """300 query_orders over 3,000 orders written at once took the event loop for 6.6 s
    (every user waited): each was built as soon as it was read, all in one callback.  Now
    the connection is read on only when at most QUERY_BACKLOG (8) answers wait to be
    written: every query is answered, in order, a few per turn of the event loop."""
    server = await _with_orders(tmp_path, 3000)
    try:
        a = await Client.connect(server.port)
        await a.login("ana")
        (s,) = server.sessions_of["ana"]
        per_turn: list[int] = []
        done = False

        async def turns() -> None:  # runs once per turn of the loop the server runs on
            last = s._pushed
            while not done:
                await asyncio.sleep(0)
                per_turn.append(s._pushed - last)
                last = s._pushed

        ticker = asyncio.get_running_loop().create_task(turns())
        msg = orjson.dumps({"type": "query_orders", "req_id": "q"})
        frame = bytes((0x81, 0x80 | len(msg))) + bytes(4) + msg  # masked with key 0
        a.ws.transport.write(frame * 300)  # type: ignore[attr-defined]
        for _ in range(600):
            if sum(1 for m in a.received if m.get("req_id") == "q") >= 300:
                break
            await asyncio.sleep(0.05)
        done = True
        await ticker
        answers = [m for m in a.received if m.get("req_id") == "q"]
        assert [m["type"] for m in answers] == ["orders"] * 300
        assert all(len(m["orders"]) == 3000 for m in answers)
        assert max(per_turn) <= 16, max(per_turn)
    finally:
        await server.stop()


async def test_a_client_that_does_not_read_cannot_make_the_server_hold_its_answers(
        tmp_path: Path) -> None:
    """The outbound queue bounds messages, not bytes: 1,900 answers of 1,000 orders each
    (1.4 GB) waited for a client that never read.  Now the server stops reading such a
    client once QUERY_BACKLOG answers (8) or QUERY_BACKLOG_ITEMS items (10,000) wait to
    be written; when it reads, every query is answered."""
    server = await _with_orders(tmp_path, 1000)
    try:
        a = await Client.connect(server.port, read=False)
        await a.ws.send(orjson.dumps({"type": "login", "user": "ana",
                                      "token": "ana-demo-token"}).decode())
        msg = orjson.dumps({"type": "query_orders", "req_id": "q"}).decode()
        sending = asyncio.get_running_loop().create_task(_send_all(a, msg, 1900))
        await asyncio.sleep(2.0)
        (s,) = server.sessions_of["ana"]
        # held: in the session's queue, and written to the socket's buffer (a few 1,000-
        # order answers, about 150 kB each; without the bound, 1,389 answers in the
        # queue and 162 MB in the socket's buffer)
        held = sum(len(m.get("orders", ())) for m in s._out)
        assert held <= 10_000 and len(s._queries) <= 8, (held, len(s._queries))
        buffered = s.transport.ws.transport.get_write_buffer_size()  # type: ignore[attr-defined]
        assert buffered < 5_000_000, buffered
        assert s._pushed < 1900 and not s._closing
        a.start_reading()
        await asyncio.wait_for(sending, 60)
        for _ in range(600):
            if sum(1 for m in a.received if m.get("req_id") == "q") >= 1900:
                break
            await asyncio.sleep(0.05)
        answers = [m for m in a.received if m.get("req_id") == "q"]
        assert [m["type"] for m in answers] == ["orders"] * 1900
    finally:
        await server.stop()


async def _send_all(c: Client, msg: str, n: int) -> None:
    for _ in range(n):
        await c.ws.send(msg)


@pytest.mark.parametrize("text", [
    '{"type": "order_entry", "req_id": "d", "contract": "%s", "unit": "SELLU1",'
    ' "side": "SELL", "price": "10.00", "price": "60.00", "quantity": "1.0"}',
    '{"type" : "order_entry", "req_id" : "d", "contract" : "%s", "unit" : "SELLU1",'
    ' "side" : "SELL", "price" : "10.00", "quantity" : "1.0", "price" : "60.00",'
    ' "client_order_id" : ":"}',
])
async def test_an_object_with_a_key_given_twice_is_refused(tmp_path: Path, text: str) -> None:
    """JSON parsers disagree on a repeated key (the first or the last): the request is
    ambiguous, and the server refuses it rather than guess (it took the last price)."""
    server = await start_server(tmp_path / "d", (C1,))
    try:
        c = await Client.connect(server.port)
        await c.login("ana")
        await c.send_raw(text % C1)
        ans = await c.wait_for(lambda m: m.get("type") == "error")
        assert (ans["field"], ans["code"]) == ("message", "INVALID_ENCODING"), ans
        assert "'price' is given twice" in ans["reason"]
        assert not list(server.core.orders_of("AG1"))
    finally:
        await server.stop()


@pytest.mark.parametrize("subprotocol", [JSON, MSGPACK])
async def test_a_deeply_nested_message_gets_an_error_and_the_session_lives(
        tmp_path: Path, subprotocol: str) -> None:
    """1,000 bytes of valid JSON (500 nested arrays), or the msgpack of the same: an
    INVALID_ENCODING error naming the reason, and the session goes on (it was closed with
    1011, internal error, by a recursion error)."""
    server = await start_server(tmp_path / "d", (C1,))
    try:
        c = await Client.connect(server.port, subprotocol)
        assert (await c.login("ana"))["type"] == "ack"
        await c.send_raw("[" * 500 + "]" * 500 if subprotocol == JSON
                         else b"\x91" * 499 + b"\x90")
        err = await c.wait_for(lambda m: m.get("type") == "error")
        assert (err["field"], err["code"]) == ("message", "INVALID_ENCODING"), err
        assert "nests deeper than 32 levels" in err["reason"]
        ans = await c.request(order(C1, "SELLU1", "SELL", "50.00", "1.0"))
        assert ans["type"] == "ack", ans
    finally:
        await server.stop()


async def test_a_command_that_fails_inside_the_engine_is_answered_internal_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A defect that makes a command raise inside the core: the core stays up (the single
    writer lives, identically in a replay) and the sender gets a reject INTERNAL_ERROR
    naming the exception's type (it got an empty ack, as if the order had been taken)."""
    server = await start_server(tmp_path / "d", (C1,))
    try:
        c = await Client.connect(server.port)
        await c.login("ana")
        engine = server.core.engine

        def broken(*args: object, **kw: object) -> None:
            raise KeyError("defect")

        monkeypatch.setitem(engine._handlers, NewOrder, broken)
        ans = await c.request(order(C1, "SELLU1", "SELL", "50.00", "1.0"))
        assert (ans["type"], ans["code"]) == ("reject", "INTERNAL_ERROR"), ans
        assert "KeyError" in ans["reason"] and server.core.failures == 1
        monkeypatch.undo()
        ans = await c.request(order(C1, "SELLU1", "SELL", "50.00", "1.0"))
        assert ans["type"] == "ack" and ans["order_ids"], ans
    finally:
        await server.stop()
