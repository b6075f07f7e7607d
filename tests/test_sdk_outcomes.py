"""The Python SDK: what a call reports when its repeat after a reconnection is refused,
strict order ids and decimals, and an AMQP session the server ends.  Real servers, as in
tests/test_sdk.py (whose environment this file shares), and a real RabbitMQ for AMQP."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import test_sdk
from test_sdk import C1, Env, books_agree, drop_before_the_answer, eventually

from clients import sdk
from clients.sdk import Client, ConnectionEvent, Rejected, wire_decimal

if TYPE_CHECKING:
    from broker import Broker

pytest_plugins = ["broker"]

# the environments of tests/test_sdk.py: a real server, and one with a real RabbitMQ
env = test_sdk.env
amqp_env = test_sdk.amqp_env


# ====================================================================== a modification in doubt


async def _crossing_modify(env: Env, private: bool) -> tuple[Client, int, Any]:
    """carlos rests a buy at 50.00, ana a sell at 60.00; carlos moves his buy to 60.00 and
    the connection drops after the server executed it (the buy traded at 60.00) and
    before the answer.  The repeat is refused ORDER_UNKNOWN: the order is gone."""
    carlos = await env.client("carlos", private=private)
    ana = await env.client("ana")
    buy = await carlos.place(C1, "BUYU2", "BUY", "50.00", "1.0")
    await ana.place(C1, "SELLU1", "SELL", "60.00", "1.0")
    assert buy.report is not None and buy.order_id is not None
    drop_before_the_answer(env.srv, "carlos", "order_modify")
    outcome: Any
    try:
        outcome = await carlos.modify(buy.order_id, buy.report.revision, price="60.00")
    except (Rejected, sdk.OutcomeUnknown) as exc:
        outcome = exc
    assert carlos.stats["resent"] == 1 and carlos.stats["reconnects"] == 1
    (trade,) = await carlos.query_trades()
    assert (trade.order_id, trade.price) == (buy.order_id, Decimal("60.00"))
    return carlos, buy.order_id, outcome


async def test_an_executed_modification_is_not_reported_refused_after_a_drop(
        env: Env) -> None:
    """Without its reports (no private stream), nothing tells whether the repeat's
    ORDER_UNKNOWN is the first sending's doing: the call raises OutcomeUnknown, never
    Rejected, and the trade is there."""
    carlos, _, outcome = await _crossing_modify(env, private=False)
    assert isinstance(outcome, sdk.OutcomeUnknown), outcome
    assert "ORDER_UNKNOWN" in str(outcome) and "no longer live" in str(outcome)
    assert carlos.stats["outcome_unknown_raised"] == 1
    assert (await carlos.query_me()).user == "carlos"


async def test_an_executed_modification_seen_on_the_private_stream_is_recovered(
        env: Env) -> None:
    """The private stream brought the modification's reports (carrying its req_id)
    before the connection dropped: the SDK knows it was executed and answers with them."""
    _, oid, outcome = await _crossing_modify(env, private=True)
    assert isinstance(outcome, sdk.Answer), outcome
    assert outcome.ok and outcome.resent and outcome.recovered
    assert outcome.order_id == oid
    assert outcome.report is not None and outcome.report.action == "FILLED"
    assert outcome.report.price == Decimal("60.00")


async def test_a_modification_not_executed_keeps_its_refusal(env: Env) -> None:
    """The connection drops before the server reads the modification, and the server
    hibernates the order at the disconnection: the repeat is refused ORDER_NOT_ACTIVE
    and the order is still at the revision the request named, so it was not modified:
    the refusal is the answer."""
    carlos = await env.client("carlos", on_disconnect="hibernate", private=False)
    buy = await carlos.place(C1, "BUYU2", "BUY", "50.00", "1.0")
    assert buy.report is not None and buy.order_id is not None
    (session,) = env.srv.sessions_of["carlos"]
    original = session.handle

    def handle(data: Any, str_keys: bool = False) -> None:
        if isinstance(data, dict) and data.get("type") == "order_modify":
            session.handle = original  # type: ignore[method-assign]
            session._closing = "test: the connection drops before the request is read"
            session._wake.set()
            return
        original(data, str_keys)

    session.handle = handle  # type: ignore[method-assign]
    with pytest.raises(Rejected) as exc:
        await carlos.modify(buy.order_id, buy.report.revision, price="55.00")
    assert exc.value.code == "ORDER_NOT_ACTIVE" and exc.value.answer is not None
    assert exc.value.answer.resent
    (o,) = await carlos.query_orders()
    assert (o.revision, o.price, o.status) == (1, Decimal("50.00"), "HIBERNATED")


# ====================================================================== strict inputs


async def test_order_ids_must_be_plain_ints(env: Env) -> None:
    carlos = await env.client("carlos")
    buy = await carlos.place(C1, "BUYU2", "BUY", "50.00", "1.0")
    assert buy.order_id is not None and buy.report is not None
    sent = carlos.stats["requests"]
    for call, arg in [(carlos.deactivate, [float(buy.order_id) + 0.5]),
                      (carlos.deactivate, [float(buy.order_id)]),
                      (carlos.activate, [True]), (carlos.deactivate, [str(buy.order_id)]),
                      (carlos.deactivate, [buy.order_id, None])]:
        with pytest.raises(TypeError, match=r"order_ids\[\d\]"):
            await call(arg)
    with pytest.raises(TypeError, match="order_ids"):
        await carlos.deactivate(str(buy.order_id))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="order_ids"):
        await carlos.activate(buy.order_id)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="order"):
        await carlos.modify(float(buy.order_id), 1, price="51.00")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="revision"):
        await carlos.modify(buy.order_id, True, price="51.00")
    with pytest.raises(TypeError, match="revision"):
        await carlos.modify(buy.order_id, 1.0, price="51.00")  # type: ignore[arg-type]
    assert carlos.stats["requests"] == sent  # nothing was sent
    (o,) = await carlos.query_orders()
    assert (o.status, o.revision) == ("ACTIVE", 1)
    ans = await carlos.deactivate([buy.order_id])  # a plain int is sent as it is
    assert [r.action for r in ans.reports] == ["HIBERNATED"]


@pytest.mark.parametrize("text", ["1_0", " 45.10 ", "45.10\n", "+1", "1e1", "1E+1",
                                  "\u0664\u0665", "45.", ".5", "", "-", "0x10", "- 1"])
def test_decimal_text_is_the_protocols_or_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"^quantity: "):
        wire_decimal(text, 1, "quantity")


async def test_a_malformed_quantity_is_refused_before_anything_is_sent(env: Env) -> None:
    carlos = await env.client("carlos")
    sent = carlos.stats["requests"]
    with pytest.raises(ValueError, match=r"^quantity: '1_0'"):
        await carlos.place(C1, "BUYU2", "BUY", "45.10", "1_0")
    with pytest.raises(ValueError, match=r"^price: ' 45\.10 '"):
        await carlos.place(C1, "BUYU2", "BUY", " 45.10 ", "1.0")
    assert carlos.stats["requests"] == sent
    assert env.srv.core.orders_of("AG2") == []
    assert wire_decimal("-3.5", 2) == "-3.50" and wire_decimal(Decimal("1E+1"), 1) == "10.0"


# ====================================================================== AMQP: a session ended


async def test_amqp_a_session_the_server_ends_is_re_established(
        rabbitmq: Broker, amqp_env: Env) -> None:
    """The server lets the user's AMQP session go (as a slow consumer): it sends
    DISCONNECTED and unbinds the public streams.  The SDK tells the application, marks
    its books unsynced, opens a new session (log in, subscribe, snapshot) and the book
    follows the market again."""
    env = amqp_env
    carlos = await Client.connect_amqp(rabbitmq.url_for("carlos"), backoff_min=0.05,
                                       backoff_max=0.3)
    env.clients.append(carlos)
    ana = await env.client("ana")
    book = await carlos.subscribe_book(C1)
    seen: list[tuple[str, bool]] = []  # each connection event, and the book's state then
    carlos.on(ConnectionEvent, lambda e: seen.append((e.state, book.synced)))
    async with carlos.events(ConnectionEvent) as conn_events:
        session = env.srv.amqp.sessions["carlos"]
        session._drop("slow consumer: test")
        first = await conn_events.get(timeout=5)
        assert (first.state, first.reason) == (
            "disconnected", "the server ended the session: slow consumer: test")
        assert (await conn_events.get(timeout=5)).state == "reconnected"
    assert carlos.stats["sessions_ended"] == 1
    assert env.srv.amqp.sessions["carlos"] is not session  # a new session
    await book.wait_synced(5)
    await ana.place(C1, "SELLU1", "SELL", "61.00", "1.0")
    await books_agree(book, ana, C1)
    assert [a.price for a in book.asks()] == [Decimal("61.00")]
    assert seen[:2] == [("disconnected", False), ("reconnected", True)]
    # the private stream is back too
    buy = await carlos.place(C1, "BUYU2", "BUY", "40.00", "1.0")
    await eventually(lambda: buy.order_id in carlos.orders)


async def test_amqp_a_redelivered_message_without_seq_is_not_handled_again() -> None:
    """The broadcast queue is consumed with acknowledgements, so what was delivered and not
    acknowledged when a connection dropped comes again, marked ``redelivered``.  A stream
    message is known by its seq; a DISCONNECTED (or a heartbeat) has none and belonged to
    the lost connection: handling it again would end the new session.  It is acknowledged
    and not handled; a stream message redelivered is handed on (the seq check drops it if
    it was handled)."""
    handled: list[dict[str, Any]] = []
    acks: list[str] = []

    class Delivered:
        def __init__(self, body: dict[str, Any], redelivered: bool) -> None:
            self.body = orjson.dumps(body)
            self.content_type = "application/json"
            self.redelivered = redelivered

        async def ack(self) -> None:
            acks.append(orjson.loads(self.body)["type"])

    c = object.__new__(sdk._AmqpConnection)
    c._on_message = handled.append
    gone = {"type": "error", "code": "DISCONNECTED", "reason": "slow consumer"}
    report = {"type": "order_report", "stream": "private:AG2", "seq": 4, "order_id": 1}
    await c.on_broadcast(Delivered(gone, True))  # type: ignore[arg-type]
    await c.on_broadcast(Delivered(report, True))  # type: ignore[arg-type]
    await c.on_broadcast(Delivered(gone, False))  # type: ignore[arg-type]
    assert handled == [report, gone]
    assert acks == ["error", "order_report", "error"]
