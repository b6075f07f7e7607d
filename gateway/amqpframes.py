"""The AMQP 0-9-1 frames the adapter writes most, encoded here: a ``basic.publish`` (its
method frame, content header frame and body frames) and a ``basic.ack``; and what the
adapter tolerates in the frames it reads (:func:`tolerate_invalid_utf8`).

The client library marshals every frame through general objects (pamqp's ``Basic.Publish``,
``ContentHeader``, ``Basic.Properties``, one method call per property and per table value)
and puts each publish in the connection's write queue on its own, behind an asyncio lock, a
timeout and a drain future: about 120 µs of the event loop's time per publish, the largest
item of the AMQP adapter's CPU (``perf/bench_amqp.py --profile-server``), and the adapter
publishes 2.4 messages per request (the answer and the trader's private stream).  The
frames of the few shapes the adapter sends are plain byte layouts (AMQP 0-9-1 §2.3.5, §4.2.6
and the class ``basic``), built here as the library builds them: the same bytes for the
same message, which ``tests/test_amqp_frames.py`` checks against pamqp's own marshalling.

Only the properties the adapter sets are supported (content type, headers, delivery mode,
correlation id, expiration, message id, type, app id), and the two a request carries
(reply to, user id: the load generator of ``perf/bench_amqp.py`` writes requests with
it); a header value is a str, a bool or an int, encoded as pamqp encodes it (its
smallest integer type, a long string, a boolean); header names in sorted order, as pamqp
writes them.  A property or header value the library
would refuse (a short string over 255 bytes, another type) raises :class:`ValueError` or
:class:`TypeError` here too, before anything is written.
"""

from __future__ import annotations

import struct
from typing import Any

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_END = b"\xce"
# the size of a frame beyond its payload: type (1), channel (2), size (4), end (1)
FRAME_OVERHEAD = 8

_FRAME = struct.Struct(">BHI")
_PUBLISH = struct.pack(">IH", 0x003C0028, 0)  # basic.publish, ticket 0
_ACK = struct.Struct(">IQB")  # basic.ack: the method, delivery tag, multiple
_ACK_METHOD = 0x003C0050
_BASIC = 60
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

# property flags (AMQP 0-9-1, class basic), in the order the list is written
CONTENT_TYPE = 1 << 15
HEADERS = 1 << 13
DELIVERY_MODE = 1 << 12
CORRELATION_ID = 1 << 10
REPLY_TO = 1 << 9
EXPIRATION = 1 << 8
MESSAGE_ID = 1 << 7
TYPE = 1 << 5
USER_ID = 1 << 4
APP_ID = 1 << 3


def short_string(value: str) -> bytes:
    # a string read with tolerate_invalid_utf8 goes back as the bytes it came as
    b = value.encode("utf-8", "surrogateescape")
    n = len(b)
    if n > 255:
        raise ValueError(f"short string of {n} bytes (at most 255): {value[:40]!r}...")
    return bytes((n,)) + b


def _table_value(value: Any) -> bytes:
    t = type(value)
    if t is str:
        b: bytes = value.encode("utf-8", "surrogateescape")
        return b"S" + _U32.pack(len(b)) + b
    if t is bool:
        return b"t\x01" if value else b"t\x00"
    if t is int:
        if -128 <= value <= 127:
            return b"b" + struct.pack(">b", value)
        if -32768 <= value <= 32767:
            return b"s" + struct.pack(">h", value)
        if 0 <= value <= 65535:
            return b"u" + struct.pack(">H", value)
        if -2147483648 <= value <= 2147483647:
            return b"I" + struct.pack(">i", value)
        if 0 <= value <= 4294967295:
            return b"i" + struct.pack(">I", value)
        if -9223372036854775808 <= value <= 9223372036854775807:
            return b"l" + struct.pack(">q", value)
        raise ValueError(f"integer header value out of range: {value}")
    raise TypeError(f"header value of type {t.__name__}: only str, bool and int are sent")


def table(headers: dict[str, Any]) -> bytes:
    """A field table, its names in sorted order (as pamqp writes them)."""
    parts = []
    for name in sorted(headers):
        if len(name.encode("utf-8", "surrogateescape")) > 128:
            raise ValueError(f"header name over 128 bytes: {name[:40]!r}...")
        parts.append(short_string(name))
        parts.append(_table_value(headers[name]))
    data = b"".join(parts)
    return _U32.pack(len(data)) + data


def properties(content_type: str | None = None, headers: dict[str, Any] | None = None,
               delivery_mode: int | None = None, correlation_id: str | None = None,
               expiration: str | None = None, message_id: str | None = None,
               message_type: str | None = None, app_id: str | None = None,
               reply_to: str | None = None, user_id: str | None = None) -> bytes:
    """The property flags and list of a content header.  As pamqp: a property that is
    None or an empty string is left out (an empty table is not: it is sent empty)."""
    flags = 0
    parts: list[bytes] = []
    if content_type:
        flags |= CONTENT_TYPE
        parts.append(short_string(content_type))
    if headers is not None:
        flags |= HEADERS
        parts.append(table(headers))
    if delivery_mode is not None:
        if delivery_mode != 1 and delivery_mode != 2:
            raise ValueError(f"delivery mode {delivery_mode}: 1 (transient) or 2 (persistent)")
        flags |= DELIVERY_MODE
        parts.append(bytes((delivery_mode,)))
    for flag, value in ((CORRELATION_ID, correlation_id), (REPLY_TO, reply_to),
                        (EXPIRATION, expiration), (MESSAGE_ID, message_id),
                        (TYPE, message_type), (USER_ID, user_id), (APP_ID, app_id)):
        if value:  # the short strings, in the list's order
            flags |= flag
            parts.append(short_string(value))
    return _U16.pack(flags) + b"".join(parts)


# The properties of the adapter's two frequent messages, from cached parts: the same bytes
# as properties() (tests/test_amqp_frames.py), without encoding the parts that do not
# change from one message to the next.  The caches are emptied when they grow past
# _CACHE_MAX (names that came from clients, like a reply type, are few but unbounded).
_CACHE_MAX = 4096
_answers: dict[tuple[str, str, str, int], tuple[bytes, bytes]] = {}
_streams: dict[tuple[str, str, str, str, int, str, str, str | None, bool],
               tuple[bytes, bytes, bool, bytes, bytes]] = {}


def answer_properties(content_type: str, correlation_id: str | None, message_type: str,
                      app_id: str, delivery_mode: int) -> bytes:
    """``properties(content_type=..., correlation_id=..., message_type=..., app_id=...,
    delivery_mode=...)``: an answer's (no headers)."""
    key = (content_type, message_type, app_id, delivery_mode)
    parts = _answers.get(key)
    if parts is None:
        with_corr = properties(content_type=content_type, delivery_mode=delivery_mode,
                               correlation_id="x", message_type=message_type,
                               app_id=app_id)
        head = properties(content_type=content_type, delivery_mode=delivery_mode)[2:]
        tail = properties(message_type=message_type, app_id=app_id)[2:]
        if len(_answers) >= _CACHE_MAX:
            _answers.clear()
        parts = _answers[key] = (with_corr[:2] + head, tail)
    if not correlation_id:
        return properties(content_type=content_type, delivery_mode=delivery_mode,
                          message_type=message_type, app_id=app_id)
    return parts[0] + short_string(correlation_id) + parts[1]


def stream_properties(content_type: str, stream_header: str, stream: str, seq_header: str,
                      seq: int | None, delivery_mode: int, message_type: str, app_id: str,
                      expiration: str | None = None, run: str = "") -> bytes:
    """A stream message's: ``properties(content_type=..., headers={stream_header:
    stream, seq_header: seq}, delivery_mode=..., expiration=..., message_id=
    f"{stream}:{seq}{run}", message_type=..., app_id=...)``; without a sequence number,
    no ``seq_header`` and no message id.  ``run`` tells apart the messages of two runs of
    the server, whose sequences both start from 0 (``"@<n>"``, gateway/amqp.py)."""
    key = (content_type, stream_header, stream, seq_header, delivery_mode, message_type,
           app_id, expiration, seq is None)
    parts = _streams.get(key)
    if parts is None:
        if seq is None:
            whole = properties(content_type=content_type, headers={stream_header: stream},
                               delivery_mode=delivery_mode, expiration=expiration,
                               message_type=message_type, app_id=app_id)
            parts = (whole, b"", False, b"", b"")
        else:
            if seq_header == stream_header:
                raise ValueError(f"one header name for the stream and its sequence: "
                                 f"{seq_header!r}")
            # checks every fixed part as properties() would, and gives the flags
            probe = properties(content_type=content_type, headers={stream_header: stream},
                               delivery_mode=delivery_mode, expiration=expiration,
                               message_id="x", message_type=message_type, app_id=app_id)
            table({seq_header: 0})  # the name's own checks
            head = probe[:2] + (short_string(content_type) if content_type else b"")
            entry = short_string(stream_header) + _table_value(stream)
            middle = properties(delivery_mode=delivery_mode, expiration=expiration)[2:]
            tail = properties(message_type=message_type, app_id=app_id)[2:]
            parts = (head, entry, seq_header < stream_header, middle, tail)
        if len(_streams) >= _CACHE_MAX:
            _streams.clear()
        _streams[key] = parts
    head, entry, seq_first, middle, tail = parts
    if seq is None:
        return head
    seq_entry = short_string(seq_header) + _table_value(seq)
    table_data = seq_entry + entry if seq_first else entry + seq_entry
    return b"".join((head, _U32.pack(len(table_data)), table_data, middle,
                     short_string(f"{stream}:{seq}{run}"), tail))


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + FRAME_END


_methods: dict[tuple[int, str, str], bytes] = {}
_CONTENT = struct.Struct(">BHIHxxQ")  # a content header frame's start: frame, class, size


def publish(channel: int, exchange: str, routing_key: str, props: bytes, body: bytes,
            max_content: int) -> bytes:
    """A ``basic.publish`` (not mandatory, not immediate) with its content: the method
    frame, the content header (``props`` from :func:`properties`) and the body in frames
    of at most ``max_content`` bytes (the negotiated frame size less
    :data:`FRAME_OVERHEAD`; zero or less when the broker set no limit, ``frame_max`` 0:
    the whole body in one frame, as the library does); no body frame for an empty
    body.  The method frames are cached by channel, exchange and routing key."""
    key = (channel, exchange, routing_key)
    method = _methods.get(key)
    if method is None:
        method = _frame(FRAME_METHOD, channel, _PUBLISH + short_string(exchange)
                        + short_string(routing_key) + b"\x00")
        if len(_methods) >= _CACHE_MAX:
            _methods.clear()
        _methods[key] = method
    n = len(body)
    parts = [method, _CONTENT.pack(FRAME_HEADER, channel, 12 + len(props), _BASIC, n), props,
             FRAME_END]
    if n <= max_content or max_content <= 0:
        if n:
            parts += (_FRAME.pack(FRAME_BODY, channel, n), body, FRAME_END)
    else:
        for i in range(0, n, max_content):
            parts.append(_frame(FRAME_BODY, channel, body[i:i + max_content]))
    return b"".join(parts)


def ack(channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
    """A ``basic.ack`` of one delivery, or with ``multiple`` of every delivery up to
    ``delivery_tag`` not acknowledged yet on the channel."""
    return _frame(FRAME_METHOD, channel, _ACK.pack(_ACK_METHOD, delivery_tag, multiple))


def coalesce_acks(unacked: set[int], acks: list[int]) -> tuple[int | None, list[int]]:
    """How to acknowledge ``acks`` (delivery tags, all in ``unacked``: the channel's
    deliveries not acknowledged yet) in few frames: one ``multiple`` ack up to the first
    returned tag (None: none) covers every ack below the lowest delivery that stays
    unacknowledged; the rest, one ack each.  A delivery left unacknowledged (a request
    not done yet, or never: the broker must redeliver it) is never covered.  Removes
    ``acks`` from ``unacked``."""
    unacked.difference_update(acks)
    low = min(unacked) if unacked else None
    below = [t for t in acks if low is None or t < low]
    above = [t for t in acks if low is not None and t > low]
    return (max(below) if below else None), above


# ---------------------------------------------------------------------------- reading


def _short_str(value: bytes) -> tuple[int, str]:
    """pamqp's ``short_str``, but bytes that are not UTF-8 are kept (``surrogateescape``)."""
    try:
        length = value[0]
    except IndexError as err:
        raise ValueError("Could not unpack short string value") from err
    return length + 1, value[1:length + 1].decode("utf-8", "surrogateescape")


def _field_table(value: bytes) -> tuple[int, dict[str, Any]]:
    """pamqp's ``field_table``, but a name that is not UTF-8 is kept (``surrogateescape``)."""
    from pamqp import decode

    try:
        length = _U32.unpack(value[0:4])[0]
        offset = 4
        data: dict[str, Any] = {}
        end = offset + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        while offset < end:
            key_length = value[offset]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset:offset + key_length].decode("utf-8", "surrogateescape")
            offset += key_length
            consumed, result = decode.embedded_value(value[offset:])
            offset += consumed
            data[key] = result
        return end, data
    except (struct.error, TypeError, IndexError) as err:
        raise ValueError("Could not unpack data") from err


def tolerate_invalid_utf8() -> None:
    """Let the client library read short strings and table names that are not UTF-8.

    AMQP's short strings are bytes; pamqp decodes them as UTF-8 and, when they are not, the
    whole frame fails, aiormq closes the connection, the broker redelivers the request to
    the next one, and so on: a single request with a ``correlation_id`` (or ``message_id``,
    ``reply_to``, a header name...) that is not UTF-8 kept the adapter reconnecting and
    served nobody.  With this, such a string is read with its undecodable bytes kept as
    surrogates (``surrogateescape``), the request is handled (a field the adapter
    validates is refused by name), and :func:`short_string` writes it back as the same
    bytes (a ``correlation_id`` echoed on the answer is the client's own).  Valid UTF-8 is
    read as before.  Installed in pamqp's decoder tables, for the process (idempotent)."""
    from pamqp import decode

    decode.METHODS["shortstr"] = _short_str
    decode.METHODS["table"] = _field_table
    decode.TABLE_MAPPING[b"F"] = _field_table
