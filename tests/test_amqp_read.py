"""The adapter's own reading of requests (gateway/amqpread.py) against the client
library's: the same stream of bytes, cut anywhere, gives the library the same frames
(pamqp's objects), and the adapter the same requests (``Delivery.of`` the library's
assembled message); a malformed delivery closes the connection as the library's reading
did.  AMQP 0-9-1 §2.3.5 (frames), §4.2.6 (content)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage
from aiormq.connection import FrameReceiver
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pbody
from pamqp import commands, frame, header
from pamqp.heartbeat import Heartbeat

from gateway import amqpframes, amqpread
from gateway.amqpread import Delivery, FrameReader

TAG = "ronda-gateway-test"
MAX = 100  # frame body size for the tests: bodies over it take several frames

short = st.text(max_size=30)
props = st.fixed_dictionaries({}, optional={
    "content_type": st.one_of(st.none(), st.just(""), st.just("application/json"), short),
    "content_encoding": st.one_of(st.none(), short),
    "headers": st.one_of(st.none(), st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.one_of(st.text(max_size=40), st.integers(-(2**31), 2**31 - 1), st.booleans()),
        max_size=4)),
    "delivery_mode": st.one_of(st.none(), st.sampled_from([1, 2])),
    "priority": st.one_of(st.none(), st.integers(0, 9)),
    "correlation_id": st.one_of(st.none(), st.just(""), short),
    "reply_to": st.one_of(st.none(), st.just(""), short),
    "expiration": st.one_of(st.none(), st.integers(0, 10**6).map(str)),
    "message_id": st.one_of(st.none(), st.just(""), short),
    "timestamp": st.one_of(st.none(), st.datetimes(
        min_value=__import__("datetime").datetime(2000, 1, 1),
        max_value=__import__("datetime").datetime(2100, 1, 1)).map(
            lambda d: d.replace(microsecond=0))),
    "message_type": st.one_of(st.none(), short),
    "user_id": st.one_of(st.none(), st.just(""), short),
    "app_id": st.one_of(st.none(), short),
    # cluster_id: pamqp refuses any value (deprecated in 0-9-1); never sent by clients
})


def _content(channel: int, method: Any, p: dict[str, Any], body: bytes) -> list[Any]:
    frames: list[Any] = [method, header.ContentHeader(
        properties=commands.Basic.Properties(**p), body_size=len(body))]
    frames += [pbody.ContentBody(body[i:i + MAX]) for i in range(0, len(body), MAX)]
    return frames


def _deliver(tag: str, n: int, redelivered: bool) -> commands.Basic.Deliver:
    return commands.Basic.Deliver(consumer_tag=tag, delivery_tag=n, redelivered=redelivered,
                                  exchange="ronda.requests", routing_key="request")


item = st.one_of(
    st.tuples(st.just("ours"), props, st.binary(max_size=40)
              | st.binary(min_size=MAX - 1, max_size=3 * MAX + 1), st.booleans()),
    st.tuples(st.just("other"), props, st.binary(max_size=150), st.booleans()),
    st.tuples(st.just("heartbeat")),
    st.tuples(st.just("method")),
)


async def _read_all(cls: type[FrameReceiver], data: bytes, cuts: list[int]
                    ) -> list[tuple[int, Any]]:
    reader = asyncio.StreamReader()
    rec = cls(reader)  # as the library makes it: before the connection's first byte
    last = 0
    for c in [*sorted(set(cuts)), len(data)]:
        if last < c <= len(data):
            reader.feed_data(data[last:c])
            last = c
    reader.feed_eof()
    got: list[tuple[int, Any]] = []
    with pytest.raises(StopAsyncIteration):
        while True:
            _, channel, value = await rec.get_frame()
            got.append((channel, value))
    return got


def _marshalled(value: Any) -> bytes:
    return value.marshal() if isinstance(value, Heartbeat) else frame.marshal(value, 0)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(item, max_size=8), channel=st.integers(1, 3),
       cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_the_library_gets_the_same_frames_and_the_adapter_the_same_requests(
        items: list[tuple[Any, ...]], channel: int, cuts: list[int]) -> None:
    stream: list[tuple[int, Any]] = []
    for n, it in enumerate(items, 1):
        if it[0] in ("ours", "other"):
            _, p, body, redelivered = it
            method = _deliver(TAG if it[0] == "ours" else "someone-else", n, redelivered)
            frames = _content(channel, method, p, body)
            stream += [(channel, f) for f in frames]
        elif it[0] == "heartbeat":
            stream.append((0, Heartbeat()))
        else:
            stream.append((channel, commands.Basic.QosOk()))
    data = b"".join(f.marshal() if isinstance(f, Heartbeat) else frame.marshal(f, ch)
                    for ch, f in stream)
    library = asyncio.run(_read_all(FrameReceiver, data, cuts))
    got: list[Delivery] = []
    amqpread.intercept(TAG, got.append)
    try:
        ours = asyncio.run(_read_all(FrameReader, data, cuts))
    finally:
        amqpread.release(TAG)
    # what the library reads, less our deliveries' frames (and the reader's heartbeats)
    ours_frames = [(ch, f) for ch, f in ours if not isinstance(f, Heartbeat)]
    # the library's frames, our deliveries assembled from them as its channel does
    theirs = []
    expected: list[Delivery] = []
    current: list[Any] = []  # deliver, header, body parts of one of ours
    for ch, f in library:
        if isinstance(f, commands.Basic.Deliver) and f.consumer_tag == TAG:
            current = [f]
        elif len(current) == 1:
            assert isinstance(f, header.ContentHeader)
            current.append(f)
        elif current and isinstance(f, pbody.ContentBody):
            current.append(f.value)
        elif not isinstance(f, Heartbeat):
            theirs.append((ch, f))
        if len(current) >= 2 and sum(map(len, current[2:])) == current[1].body_size:
            expected.append(Delivery.of(DeliveredMessage(
                delivery=current[0], header=current[1], body=b"".join(current[2:]),
                channel=None)))  # type: ignore[arg-type]
            current = []
    assert [(ch, _marshalled(f)) for ch, f in ours_frames] == \
        [(ch, _marshalled(f)) for ch, f in theirs]
    assert [(d.body, d.delivery_tag, d.redelivered, d.content_type, d.correlation_id,
             d.message_id, d.reply_to, d.user_id) for d in got] == \
        [(d.body, d.delivery_tag, d.redelivered, d.content_type, d.correlation_id,
          d.message_id, d.reply_to, d.user_id) for d in expected]


def _read_ours(data: bytes) -> tuple[list[Delivery], BaseException | None]:
    got: list[Delivery] = []
    amqpread.intercept(TAG, got.append)
    try:
        asyncio.run(_read_all(FrameReader, data, []))
        return got, None
    except (InvalidFrameError, AMQPConnectionError) as e:
        return got, e
    finally:
        amqpread.release(TAG)


def _delivery_bytes(body: bytes, size: int | None = None, cls: int = 60) -> bytes:
    deliver = frame.marshal(_deliver(TAG, 7, False), 1)
    props = amqpframes.properties(content_type="application/json", correlation_id="c1")
    hdr = amqpframes._CONTENT.pack(2, 1, 12 + len(props), cls,
                                   len(body) if size is None else size)
    return deliver + hdr + props + b"\xce" + (
        amqpframes._FRAME.pack(3, 1, len(body)) + body + b"\xce" if body else b"")


def test_a_well_formed_delivery_is_read() -> None:
    got, err = _read_ours(_delivery_bytes(b"{}"))
    assert err is None
    assert [(d.body, d.delivery_tag, d.correlation_id, d.content_type) for d in got] == \
        [(b"{}", 7, "c1", "application/json")]


def test_a_body_longer_than_its_header_says_closes_the_connection() -> None:
    got, err = _read_ours(_delivery_bytes(b"{}{}", size=2))
    assert got == [] and isinstance(err, InvalidFrameError)


def test_a_content_header_of_another_class_closes_the_connection() -> None:
    got, err = _read_ours(_delivery_bytes(b"{}", cls=50))
    assert got == [] and isinstance(err, InvalidFrameError)


def test_a_frame_without_its_end_octet_closes_the_connection() -> None:
    data = bytearray(_delivery_bytes(b"{}"))
    data[-1] = 0
    got, err = _read_ours(bytes(data))
    assert got == [] and isinstance(err, InvalidFrameError)


def test_the_stream_ending_inside_a_frame_closes_the_connection() -> None:
    got, err = _read_ours(_delivery_bytes(b"{}")[:-3])
    assert got == [] and isinstance(err, AMQPConnectionError)


def test_a_failing_consumer_does_not_stop_the_reading(caplog: pytest.LogCaptureFixture
                                                     ) -> None:
    calls: list[int] = []

    def boom(d: Delivery) -> None:
        calls.append(d.delivery_tag)
        raise RuntimeError("boom")

    amqpread.intercept(TAG, boom)
    try:
        data = _delivery_bytes(b"{}") * 2 + frame.marshal(commands.Basic.QosOk(), 1)
        frames = asyncio.run(_read_all(FrameReader, data, [5, 50]))
    finally:
        amqpread.release(TAG)
    assert calls == [7, 7]
    assert [type(f).__name__ for _, f in frames if not isinstance(f, Heartbeat)] == ["QosOk"]
    assert "handling delivery" in caplog.text


def test_deliveries_alone_still_show_the_library_the_connection_is_alive() -> None:
    # the library judges a connection stuck when no frame reaches it for a while
    amqpread.intercept(TAG, lambda d: None)
    try:
        frames = asyncio.run(_read_all(FrameReader, _delivery_bytes(b"{}"), []))
    finally:
        amqpread.release(TAG)
    assert [type(f).__name__ for _, f in frames] == ["Heartbeat"]


def test_the_broker_closing_while_a_frame_is_awaited_is_an_error_as_for_the_library(
) -> None:
    # a frame, then the broker's end of stream while the next one is awaited: the
    # library's reader raises AMQPConnectionError (a lost connection, not a clean end)
    async def run(cls: type[FrameReceiver]) -> list[str]:
        reader = asyncio.StreamReader()
        rec = cls(reader)
        reader.feed_data(frame.marshal(commands.Basic.QosOk(), 1))
        got = [type((await rec.get_frame())[2]).__name__]
        waiting = asyncio.ensure_future(rec.get_frame())
        await asyncio.sleep(0.01)
        reader.feed_eof()
        try:
            await waiting
        except (AMQPConnectionError, StopAsyncIteration) as e:
            got.append(type(e).__name__)
        return got

    assert asyncio.run(run(FrameReceiver)) == ["QosOk", "AMQPConnectionError"]
    assert asyncio.run(run(FrameReader)) == ["QosOk", "AMQPConnectionError"]


def test_a_large_delivery_arriving_in_small_pieces_is_read_whole() -> None:
    body = bytes(range(256)) * 4000  # 1,024,000 bytes in one body frame
    deliver = frame.marshal(_deliver(TAG, 9, True), 1)
    props = amqpframes.properties(correlation_id="big")
    data = (deliver + amqpframes._CONTENT.pack(2, 1, 12 + len(props), 60, len(body)) + props
            + b"\xce" + amqpframes._FRAME.pack(3, 1, len(body)) + body + b"\xce")

    async def run() -> list[Delivery]:
        reader = asyncio.StreamReader()
        got: list[Delivery] = []
        amqpread.intercept(TAG, got.append)
        try:
            rec = FrameReader(reader)

            async def feed() -> None:
                for i in range(0, len(data), 1448):  # as TCP segments come
                    reader.feed_data(data[i:i + 1448])
                    if i % (1448 * 64) == 0:
                        await asyncio.sleep(0)
                reader.feed_eof()

            feeder = asyncio.ensure_future(feed())
            with pytest.raises(StopAsyncIteration):
                while True:
                    await rec.get_frame()
            await feeder
        finally:
            amqpread.release(TAG)
        return got

    got = asyncio.run(run())
    assert [(d.delivery_tag, d.redelivered, d.correlation_id, d.body == body)
            for d in got] == [(9, True, "big", True)]



def test_a_delivery_reaches_the_consumer_as_its_bytes_arrive() -> None:
    # no turn of the event loop between the bytes' arrival and the adapter: the library's
    # reading task is not woken for a request (nor asked for a frame at all here)
    first, second = _delivery_bytes(b'{"a":1}'), _delivery_bytes(b"{}")
    data = first + second
    cuts = [10, len(first) - 1, len(first) + 3, len(data)]  # pieces ending inside frames

    async def run() -> list[list[int]]:
        reader = asyncio.StreamReader()
        got: list[Delivery] = []
        amqpread.intercept(TAG, got.append)
        try:
            FrameReader(reader)
            seen: list[list[int]] = []
            last = 0
            for c in cuts:
                reader.feed_data(data[last:c])
                last = c
                seen.append([d.delivery_tag for d in got])
            return seen
        finally:
            amqpread.release(TAG)

    assert asyncio.run(run()) == [[], [], [7], [7, 7]]


@pytest.mark.parametrize("where", [-1, len(frame.marshal(_deliver(TAG, 7, False), 1)) - 1])
def test_the_frames_before_a_malformed_delivery_reach_the_library_then_its_error(
        where: int) -> None:
    bad = bytearray(_delivery_bytes(b"{}"))
    bad[where] = 0  # the body frame, or the basic.deliver itself, without its end octet
    data = frame.marshal(commands.Basic.QosOk(), 1) + bytes(bad) + _delivery_bytes(b"{}")

    async def run() -> tuple[list[str], list[Delivery]]:
        reader = asyncio.StreamReader()
        got: list[Delivery] = []
        amqpread.intercept(TAG, got.append)
        try:
            rec = FrameReader(reader)
            reader.feed_data(data)
            reader.feed_data(b"more after it")  # the connection is being closed: dropped
            reader.feed_eof()
            seen: list[str] = []
            try:
                while True:
                    seen.append(type((await rec.get_frame())[2]).__name__)
            except InvalidFrameError:
                seen.append("InvalidFrameError")
            return seen, got
        finally:
            amqpread.release(TAG)

    seen, got = asyncio.run(run())
    assert seen == ["QosOk", "InvalidFrameError"]
    assert got == []  # neither the malformed delivery nor the one after it


def test_a_broker_refusing_the_protocol_version_is_reported_as_by_the_library() -> None:
    # AMQP 0-9-1 §4.2.2: the server answers a protocol header it does not accept with its
    # own, and closes
    async def run(cls: type[FrameReceiver]) -> str:
        reader = asyncio.StreamReader()
        rec = cls(reader)
        reader.feed_data(b"AMQP\x00\x00\x09\x01")
        reader.feed_eof()
        try:
            await rec.get_frame()
        except Exception as e:
            return type(e).__name__
        return "no error"

    assert asyncio.run(run(FrameReceiver)) == "ProtocolSyntaxError"
    assert asyncio.run(run(FrameReader)) == "ProtocolSyntaxError"
