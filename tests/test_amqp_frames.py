"""The AMQP adapter encodes its publishes and acks itself (gateway/amqpframes.py): the bytes
must be exactly those the client library writes for the same message (pamqp's marshalling,
the body split as aiormq splits it), so the broker sees the same frames either way."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

import pytest
from aiormq.abc import ChannelFrame
from aiormq.channel import Channel as RawChannel
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, header
from pamqp import frame as pframe

from gateway import amqpframes

short_text = st.text(max_size=40)
header_value = st.one_of(
    st.text(max_size=60), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([-129, -128, 127, 128, -32769, -32768, 32767, 32768, 65535, 65536,
                     2**31 - 1, 2**31, 2**32 - 1, 2**32, -(2**31), -(2**31) - 1]))
props_args = st.fixed_dictionaries({}, optional={
    "content_type": st.one_of(st.none(), st.just(""), st.sampled_from(
        ["application/json", "application/msgpack"]), short_text),
    "headers": st.one_of(st.none(), st.dictionaries(st.text(min_size=1, max_size=20),
                                                    header_value, max_size=5)),
    "delivery_mode": st.one_of(st.none(), st.sampled_from([1, 2])),
    "correlation_id": st.one_of(st.none(), st.just(""), short_text),
    "expiration": st.one_of(st.none(), st.just(""), st.integers(0, 10**9).map(str)),
    "message_id": st.one_of(st.none(), st.just(""), short_text),
    "message_type": st.one_of(st.none(), st.just(""), short_text),
    "app_id": st.one_of(st.none(), st.just("ronda"), short_text),
    "reply_to": st.one_of(st.none(), st.just(""), short_text),
    "user_id": st.one_of(st.none(), st.just(""), short_text),
})


def _library_publish(channel: int, exchange: str, key: str, props: dict[str, Any],
                     body: bytes, max_content: int) -> bytes:
    """What aiormq's ``basic_publish`` puts in the write queue (without its random
    message_id filler): its frames marshalled by pamqp, the body split by aiormq."""
    frames: list[Any] = [
        commands.Basic.Publish(exchange=exchange, routing_key=key, mandatory=False),
        header.ContentHeader(properties=commands.Basic.Properties(**props),
                             body_size=len(body)),
        *RawChannel._split_body(SimpleNamespace(max_content_size=max_content),  # type: ignore[arg-type]
                                body),
    ]
    return ChannelFrame.marshall(channel_number=channel, frames=frames).payload


@settings(max_examples=400, deadline=None)
@given(props=props_args, channel=st.integers(1, 65535),
       exchange=st.sampled_from(["", "ronda.broadcast"])
       | st.from_regex(r"[A-Za-z0-9_.:-]{0,40}", fullmatch=True),  # the library's rule
       key=short_text, body=st.binary(max_size=300),
       # -8: the broker set no frame size limit (frame_max 0, less the frame overhead)
       max_content=st.sampled_from([16, 100, 131064, -8]))
def test_a_publish_is_the_librarys_own_bytes(props: dict[str, Any], channel: int,
                                             exchange: str, key: str, body: bytes,
                                             max_content: int) -> None:
    ours = amqpframes.publish(channel, exchange, key, amqpframes.properties(**props), body,
                              max_content)
    assert ours == _library_publish(channel, exchange, key, props, body, max_content)


def test_with_no_frame_size_limit_the_body_goes_in_one_frame() -> None:
    """A broker configured with ``frame_max = 0`` sets no limit; the library's
    ``max_content_size`` is then negative.  The body must still be sent (one frame): a
    content header announcing a body that never comes is a protocol error that closes the
    connection (505 UNEXPECTED_FRAME), and every publish would do it again."""
    body = bytes(range(256)) * 1000
    out = amqpframes.publish(1, "", "q", amqpframes.properties(content_type="x"), body, -8)
    frames = _split_frames(out)
    assert [kind for kind, _ in frames] == [1, 2, 3]
    assert frames[2][1] == body


def _split_frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        kind, _channel, size = struct.unpack(">BHI", data[:7])
        assert data[7 + size] == 0xCE
        out.append((kind, data[7:7 + size]))
        data = data[8 + size:]
    return out


def test_the_adapters_own_shapes_are_the_librarys_bytes() -> None:
    """The messages the adapter sends: an answer to ``reply_to``, a private-stream message
    with its stream and sequence headers, a heartbeat that expires, a replayed answer; a
    body exactly one frame long and one frame longer."""
    cases: list[dict[str, Any]] = [
        {"content_type": "application/json", "correlation_id": "c-1", "headers": None,
         "message_type": "ack", "app_id": "ronda", "delivery_mode": 1},
        {"content_type": "application/json", "headers": {"x-ronda-stream": "private:A1",
                                                         "x-ronda-seq": 70_000},
         "delivery_mode": 2, "message_type": "order", "app_id": "ronda",
         "message_id": "private:A1:70000"},
        {"content_type": "application/json", "headers": {"x-ronda-stream": "user:u1",
                                                         "x-ronda-seq": 3},
         "delivery_mode": 1, "message_type": "heartbeat", "app_id": "ronda",
         "expiration": "30000", "message_id": "user:u1:3"},
        {"content_type": "application/msgpack", "correlation_id": "m",
         "headers": {"x-ronda-replayed": True}, "message_type": "reject",
         "app_id": "ronda", "delivery_mode": 1},
    ]
    for props in cases:
        for body in (b"", b"x" * 100, b"y" * 101, b"{}" * 1000):
            assert amqpframes.publish(7, "ronda.broadcast", "private.u1",
                                      amqpframes.properties(**props), body, 100) == \
                _library_publish(7, "ronda.broadcast", "private.u1", props, body, 100)


@given(channel=st.integers(1, 65535), tag=st.integers(0, 2**63 - 1))  # pamqp's range
def test_an_ack_is_the_librarys_own_bytes(channel: int, tag: int) -> None:
    assert amqpframes.ack(channel, tag) == pframe.marshal(
        commands.Basic.Ack(delivery_tag=tag, multiple=False), channel)


def test_what_the_library_refuses_is_refused_before_anything_is_written() -> None:
    with pytest.raises(ValueError, match="short string of 256 bytes"):
        amqpframes.publish(1, "", "k" * 256, amqpframes.properties(), b"", 100)
    with pytest.raises(ValueError, match="short string"):
        amqpframes.properties(correlation_id="é" * 128)  # 256 bytes in UTF-8
    with pytest.raises(TypeError, match="float"):
        amqpframes.properties(headers={"x": 1.5})
    with pytest.raises(ValueError, match="out of range"):
        amqpframes.properties(headers={"x": 2**63})
    with pytest.raises(ValueError, match="delivery mode"):
        amqpframes.properties(delivery_mode=0)
    # the library refuses the same
    with pytest.raises(TypeError):
        commands.Basic.Properties(correlation_id="é" * 128).marshal()


@pytest.mark.parametrize("value", [
    -(2**63), -(2**31) - 1, -(2**31), -32769, -32768, -129, -128, -1, 0, 1, 127, 128, 255,
    32767, 32768, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1])
def test_an_integer_header_takes_the_librarys_smallest_type(value: int) -> None:
    props = {"headers": {"x-ronda-seq": value}}
    assert amqpframes.properties(**props) == commands.Basic.Properties(**props).marshal()


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=50), tag=st.integers(1, 2**63 - 1), redelivered=st.booleans(),
       content_type=st.none() | st.sampled_from(["application/json", "application/msgpack"]),
       correlation_id=st.none() | short_text, message_id=st.none() | short_text,
       reply_to=st.none() | short_text, user_id=st.none() | short_text)
def test_a_delivery_reads_what_aio_pikas_message_would(
        body: bytes, tag: int, redelivered: bool, content_type: str | None,
        correlation_id: str | None, message_id: str | None, reply_to: str | None,
        user_id: str | None) -> None:
    """The adapter takes a request from the library's delivered frames (gateway.amqp
    Delivery) instead of aio-pika's message object: the same values either way."""
    from aio_pika.message import IncomingMessage
    from aiormq.abc import DeliveredMessage

    from gateway.amqp import Delivery

    delivered = DeliveredMessage(
        delivery=commands.Basic.Deliver(consumer_tag="c", delivery_tag=tag,
                                        redelivered=redelivered, exchange="ronda.requests",
                                        routing_key="request"),
        header=header.ContentHeader(properties=commands.Basic.Properties(
            content_type=content_type, correlation_id=correlation_id,
            message_id=message_id, reply_to=reply_to, user_id=user_id),
            body_size=len(body)),
        body=body, channel=None)  # type: ignore[arg-type]
    ours = Delivery.of(delivered)
    theirs = IncomingMessage(delivered, no_ack=False)
    for name in Delivery.__slots__:
        assert getattr(ours, name) == getattr(theirs, name), name


@given(raw=st.binary(max_size=60))
def test_a_short_string_that_is_not_utf8_is_read_and_written_back_as_its_bytes(
        raw: bytes) -> None:
    """gateway.amqpframes.tolerate_invalid_utf8: what pamqp refused (and with it the whole
    frame, and the connection) is read, and goes back out as the same bytes; valid UTF-8
    reads as pamqp reads it."""
    from pamqp import decode

    amqpframes.tolerate_invalid_utf8()
    wire = bytes((len(raw),)) + raw
    n, value = decode.by_type(wire + b"tail", "shortstr")
    assert n == len(wire) and amqpframes.short_string(value) == wire
    try:
        assert value == decode.short_str(wire)[1]  # the library's own, where it reads it
    except UnicodeDecodeError:
        assert raw.decode("utf-8", "surrogateescape") == value


@given(table=st.dictionaries(st.text(min_size=1, max_size=20), header_value, max_size=6),
       bad_name=st.binary(min_size=1, max_size=20))
def test_a_table_reads_as_the_library_reads_it_and_a_name_that_is_not_utf8_too(
        table: dict[str, Any], bad_name: bytes) -> None:
    from pamqp import decode

    amqpframes.tolerate_invalid_utf8()
    wire = amqpframes.table(table)
    assert decode.METHODS["table"](wire) == decode.field_table(wire)  # the library's own
    # a name that is not UTF-8 (the library raises there), nested in a table too
    entry = bytes((len(bad_name),)) + bad_name + b"b\x07"
    inner = len(entry).to_bytes(4, "big") + entry
    outer_entry = b"\x01nF" + inner
    outer = len(outer_entry).to_bytes(4, "big") + outer_entry
    name = bad_name.decode("utf-8", "surrogateescape")
    assert decode.METHODS["table"](outer) == (len(outer), {"n": {name: 7}})
    assert amqpframes.table({name: 7}) == inner


@settings(max_examples=400, deadline=None)
@given(ctype=st.sampled_from(["application/json", "application/msgpack", ""]) | short_text,
       corr=st.one_of(st.none(), st.just(""), short_text),
       typ=st.sampled_from(["ack", "error", "order_report", ""]) | short_text,
       app=st.sampled_from(["ronda", ""]) | short_text, mode=st.sampled_from([1, 2]))
def test_an_answers_cached_properties_are_the_general_encoders(
        ctype: str, corr: str | None, typ: str, app: str, mode: int) -> None:
    for _ in range(2):  # the first call fills the cache, the second reads it
        assert amqpframes.answer_properties(ctype, corr, typ, app, mode) == \
            amqpframes.properties(content_type=ctype, correlation_id=corr,
                                  message_type=typ, app_id=app, delivery_mode=mode)


@settings(max_examples=400, deadline=None)
@given(ctype=st.sampled_from(["application/json", ""]),
       names=st.sampled_from([("x-ronda-stream", "x-ronda-seq"), ("b", "a"), ("a", "b")])
       | st.tuples(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20)
                   ).filter(lambda t: t[0] != t[1]),
       stream=st.sampled_from(["private:A1", "user:carlos", "trades:MI-1", "states"])
       | short_text,
       seq=st.one_of(st.none(), st.integers(0, 2**63 - 1), st.sampled_from(
           [0, 127, 128, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31, 2**32])),
       mode=st.sampled_from([1, 2]), typ=st.sampled_from(["order_report", ""]) | short_text,
       app=st.sampled_from(["ronda", ""]),
       exp=st.one_of(st.none(), st.just(""), st.integers(0, 10**6).map(str)),
       run=st.sampled_from(["", "@1", "@123456789"]))
def test_a_stream_messages_cached_properties_are_the_general_encoders(
        ctype: str, names: tuple[str, str], stream: str, seq: int | None, mode: int,
        typ: str, app: str, exp: str | None, run: str) -> None:
    stream_h, seq_h = names
    headers: dict[str, Any] = {stream_h: stream}
    if seq is not None:
        headers[seq_h] = seq
    for _ in range(2):  # the first call fills the cache, the second reads it
        assert amqpframes.stream_properties(ctype, stream_h, stream, seq_h, seq, mode, typ,
                                            app, exp, run) == \
            amqpframes.properties(content_type=ctype, headers=headers, delivery_mode=mode,
                                  expiration=exp, message_type=typ, app_id=app,
                                  message_id=None if seq is None else f"{stream}:{seq}{run}")


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_coalesced_acks_acknowledge_exactly_what_was_done(data: st.DataObject) -> None:
    # a model of the broker's channel: deliveries 1..n; the adapter finishes some of
    # them in any order, in batches, and never some others (left for redelivery)
    n = data.draw(st.integers(1, 40))
    order = data.draw(st.permutations(range(1, n + 1)))
    never = data.draw(st.sets(st.sampled_from(order), max_size=n // 3))
    done = [t for t in order if t not in never]
    unacked = set(range(1, n + 1))  # the adapter's view
    broker = set(range(1, n + 1))  # the broker's: what a redelivery would bring back
    frames = 0
    i = 0
    while i < len(done):
        k = data.draw(st.integers(1, 6))
        batch, i = done[i:i + k], i + k
        upto, single = amqpframes.coalesce_acks(unacked, batch)
        if upto is not None:  # multiple: everything up to it the broker still holds
            assert upto in broker  # else the broker closes the channel (unknown tag)
            broker -= {t for t in broker if t <= upto}
            frames += 1
        for t in single:
            assert t in broker
            broker.discard(t)
            frames += 1
        assert not (set(never) - broker), "a request never done was acknowledged"
        assert not (set(done[:i]) & broker), "a done request is still unacknowledged"
    assert broker == set(never) == unacked
    assert frames <= len(done)
