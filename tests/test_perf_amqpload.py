"""The AMQP benchmark's lean client (perf/amqpload.py) speaks the protocol right: checked
against a real RabbitMQ, with messages published by aio-pika (the library the adapter and
the benchmark's echo server use).  A client that misread a delivery would count answers
it never got, or charge latency to the wrong request."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aio_pika
import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import amqpload

from gateway import amqpframes

if TYPE_CHECKING:
    from broker import Broker

pytest_plugins = ["broker"]


async def _client(rabbitmq: Broker, user: str = "ronda") -> amqpload.LeanClient:
    return await amqpload.connect("127.0.0.1", rabbitmq.port, user,
                                  rabbitmq.passwords[user])


async def _collect(got: list[tuple[str, bytes]], n: int) -> None:
    for _ in range(3000):
        if len(got) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(got)} of {n} deliveries arrived: {got[-3:]}")


async def test_deliveries_of_every_shape_are_read_whole_with_their_correlation_id(
        rabbitmq: Broker) -> None:
    c = await _client(rabbitmq)
    try:
        queue = await c.declare_reply_queue()
        got: list[tuple[str, bytes]] = []
        await c.consume(queue, lambda corr, body: got.append((corr, body)))
        # published by aio-pika, with every property that comes before correlation_id in
        # the list set or not, and bodies of no frame, one frame and many frames
        big = bytes(range(256)) * 1200  # 307,200 bytes: several frames of 128 KiB
        sent = [
            ("a", b"", {}),
            ("b", b"x", {"content_type": "application/json"}),
            ("c", b"{}" * 50, {"content_type": "t", "content_encoding": "gzip",
                              "headers": {"stream": "private:A", "seq": 70000},
                              "delivery_mode": aio_pika.DeliveryMode.PERSISTENT,
                              "priority": 3}),
            ("", b"no correlation id", {"message_id": "m1"}),
            ("é-ü", big, {"headers": {"x": "y" * 300}, "priority": 0}),
        ]
        conn = await aio_pika.connect(rabbitmq.url)
        try:
            ch = await conn.channel()
            for corr, body, props in sent:
                await ch.default_exchange.publish(
                    aio_pika.Message(body, correlation_id=corr or None, **props), queue)
            await _collect(got, len(sent))
        finally:
            await conn.close()
        assert got == [(corr, body) for corr, body, _ in sent]
    finally:
        await c.close()


async def test_own_publishes_are_confirmed_and_delivered_to_the_other_consumer(
        rabbitmq: Broker) -> None:
    c = await _client(rabbitmq)
    try:
        replies = await c.declare_reply_queue()
        other = await c.declare_reply_queue()
        got_r: list[tuple[str, bytes]] = []
        got_o: list[tuple[str, bytes]] = []
        await c.consume(replies, lambda corr, body: got_r.append((corr, body)))
        await c.consume(other, lambda corr, body: got_o.append((corr, body)))
        for i in range(200):  # written back to back: frames of many messages per read
            q = other if i % 3 == 0 else replies
            c.publish("", q, amqpframes.properties(correlation_id=str(i), delivery_mode=2),
                      b"%d" % i)
        await _collect(got_r, 133)
        await _collect(got_o, 67)
        assert got_o == [(str(i), b"%d" % i) for i in range(0, 200, 3)]
        assert got_r == [(str(i), b"%d" % i) for i in range(200) if i % 3]
        for _ in range(3000):  # persistent: the broker confirms after its disk sync
            if c.confirmed == 200:
                break
            await asyncio.sleep(0.01)
        assert (c.published, c.confirmed, c.nacked, c.error) == (200, 200, 0, None)
    finally:
        await c.close()


async def test_a_refused_publish_closes_the_channel_with_the_brokers_reason(
        rabbitmq: Broker) -> None:
    # a trader may not publish to the default exchange (docs/amqp.md's permissions)
    c = await _client(rabbitmq, "carlos")
    try:
        c.publish("", "anything", amqpframes.properties(), b"x")
        for _ in range(3000):
            if c.error is not None:
                break
            await asyncio.sleep(0.01)
        assert c.error is not None and "ACCESS_REFUSED" in c.error
        assert c.confirmed == 0
    finally:
        await c.close()


async def test_a_wrong_password_fails_the_set_up(rabbitmq: Broker) -> None:
    with pytest.raises(amqpload.AmqpError):
        await asyncio.wait_for(
            amqpload.connect("127.0.0.1", rabbitmq.port, "carlos", "wrong"), 10)


@st.composite
def _confirms(draw: st.DrawFn) -> tuple[int, list[tuple[bool, int, bool]]]:
    """Publishes and the broker's answers to them, in an order the broker may use: each
    publish answered once, singly or by a ``multiple`` answer covering every tag up to it
    not answered yet, in any order across tags; plus repeats of answers already given."""
    n = draw(st.integers(1, 40))
    pending = set(range(1, n + 1))
    out: list[tuple[bool, int, bool]] = []
    while pending:
        tag = draw(st.sampled_from(sorted(pending)))
        multiple = draw(st.booleans())
        ack = draw(st.integers(0, 9)) > 0
        out.append((ack, tag, multiple))
        pending -= {t for t in pending if t <= tag} if multiple else {tag}
        if draw(st.integers(0, 9)) == 0:  # a repeat of an answer already given
            out.append(draw(st.sampled_from(out)))
    return n, out


@given(_confirms())
def test_out_of_order_confirms_count_each_publish_once(
        case: tuple[int, list[tuple[bool, int, bool]]]) -> None:
    # RabbitMQ confirms a persistent message when its queue has synced it: a message to one
    # queue may be confirmed before an older one to another, and a later "multiple" answer
    # covers only the tags not answered yet.  Reference model: the set of answered tags.
    n, answers = case
    c = amqpload.LeanClient()
    c.published = n
    answered: set[int] = set()
    want_ack = want_nack = 0
    for ack, tag, multiple in answers:
        new = {t for t in range(1, tag + 1) if t not in answered} if multiple else (
            {tag} - answered)
        answered |= new
        want_ack += len(new) if ack else 0
        want_nack += 0 if ack else len(new)
        method = amqpframes.ack(amqpload.CHANNEL, tag, multiple)
        if not ack:  # basic.nack (60/120): the same fields, "requeue" a bit beside "multiple"
            method = method[:9] + b"\x00\x78" + method[11:]
        c.data_received(method)
        assert (c.confirmed, c.nacked) == (want_ack, want_nack)
    assert c.confirmed + c.nacked == n


@pytest.mark.parametrize(("resolution", "thread"), [(0.0, False), (0.001, False),
                                                    (0.0, True)],
                         ids=["poll", "sleep-1ms", "thread-timer"])
def test_the_pace_hands_every_item_once_in_order_and_never_before_its_time(
        resolution: float, thread: bool) -> None:
    # an open-loop benchmark measures latency from the scheduled time: a request sent
    # early would have its latency understated.  uvloop's timers truncate to the
    # millisecond: one sleep per request sent a third of the requests up to 1.1 ms early;
    # the pace checks the clock again after every sleep
    fired: list[tuple[float, int, float]] = []

    def fire(due: list[tuple[float, int]]) -> None:
        now = time.perf_counter()
        fired.extend((t, k, now) for t, k in due)

    async def run() -> None:
        start = time.perf_counter() + 0.01
        # spacings below, at and above a millisecond, and items due at the same instant
        gaps = [0.0003, 0.0, 0.0011, 0.0025, 0.0007, 0.0]
        items, t = [], start
        for k in range(120):
            t += gaps[k % len(gaps)]
            items.append((t, k))
        if thread:  # the sleeps timed by a thread: never before their time either
            timer = amqpload.ThreadTimer()
            try:
                await amqpload.pace(items, fire, resolution, sleep=timer.sleep)
            finally:
                timer.close()
        else:
            await amqpload.pace(items, fire, resolution)

    uvloop.run(run())
    assert [k for _, k, _ in fired] == list(range(120))
    early = [(k, t - now) for t, k, now in fired if now < t]
    assert not early, early


async def test_the_pace_refuses_items_out_of_time_order() -> None:
    with pytest.raises(ValueError, match="time order"):
        await amqpload.pace([(2.0, "b"), (1.0, "a")], lambda due: None)


async def test_the_lean_echo_answers_every_request_and_acknowledges_it(
        rabbitmq: Broker) -> None:
    """perf/amqpecho.py, the floor baseline of ``bench_amqp.py --echo lean``: each request
    gets ``{"type": "ack", "kind": <its type>}`` on its ``reply_to`` with its
    ``correlation_id`` (else its ``message_id``), in order, bodies of several frames and
    bodies that are not JSON included; a request without ``reply_to`` is only
    acknowledged; nothing is left unacknowledged in the queue."""
    import subprocess

    import orjson

    name = "test.lean.echo"
    root = Path(__file__).resolve().parents[1]
    echo = subprocess.Popen([sys.executable, str(root / "perf" / "amqpecho.py"),
                             rabbitmq.url, name], stdout=subprocess.PIPE)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(echo.stdout.readline), 30)  # type: ignore[union-attr]
        assert line.strip() == b"ready", line
        conn = await aio_pika.connect(rabbitmq.url)
        try:
            ch = await conn.channel()
            replies = await ch.declare_queue("", exclusive=True)
            got: list[tuple[str | None, bytes]] = []

            async def on_reply(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                got.append((m.correlation_id, m.body))

            await replies.consume(on_reply, no_ack=True)
            ex = await ch.get_exchange(name)
            big = orjson.dumps({"type": "order_entry", "pad": "x" * 300_000})
            sent = [({"correlation_id": "c1"}, orjson.dumps({"type": "order_entry"})),
                    ({"message_id": "m2"}, orjson.dumps({"type": "order_cancel"})),
                    ({"correlation_id": "c3"}, big),
                    ({"correlation_id": "c4"}, b"not json"),
                    ({"correlation_id": "c5"}, b"[1, 2]")]
            for props, body in sent:
                await ex.publish(aio_pika.Message(body, reply_to=replies.name, **props),
                                 "request")
            await ex.publish(aio_pika.Message(b'{"type": "x"}'), "request")  # no reply_to
            for _ in range(500):
                if len(got) >= len(sent):
                    break
                await asyncio.sleep(0.01)
            assert [(c, orjson.loads(b)) for c, b in got] == [
                ("c1", {"type": "ack", "kind": "order_entry"}),
                ("m2", {"type": "ack", "kind": "order_cancel"}),
                ("c3", {"type": "ack", "kind": "order_entry"}),
                ("c4", {"type": "ack", "kind": None}),
                ("c5", {"type": "ack", "kind": None})]
        finally:
            await conn.close()
        row: list[str] = []
        for _ in range(50):  # ready and unacknowledged: both 0 once the acks are in
            out = await asyncio.to_thread(rabbitmq.ctl, "list_queues", "-q", "name",
                                          "messages_ready", "messages_unacknowledged")
            row = next((ln.split()[1:] for ln in out.splitlines()
                        if ln.split()[:1] == [name]), [])
            if row == ["0", "0"]:
                break
            await asyncio.sleep(0.1)
        assert row == ["0", "0"]
    finally:
        echo.kill()
        echo.wait(10)
