"""The adapter's requests read from the connection's bytes, not through the client
library's frame objects.

aiormq reads a frame with three awaited ``readexactly`` calls, a lock and a ``BytesIO``,
unmarshals it through pamqp's objects (the content header's fourteen properties one
decoder call each), puts it in its channel's queue, where the channel's task takes it,
assembles the delivery and starts a task to run the consumer: at 2,000 requests/s that
was the larger part of the AMQP adapter's CPU (``perf/bench_amqp.py --profile-server``:
the library's reading path twice the adapter's own handling of a request).

:class:`FrameReader` takes the library's place as its connection's frame source
(:func:`install`).  It splits the connection's bytes into frames as the connection's
protocol receives them (it stands in for its stream's ``feed_data``).  A frame that starts
a delivery to a consumer registered with :func:`intercept` is assembled with its content
there (``basic.deliver``, the content header, the body frames; AMQP 0-9-1 §4.2.6) and
handed to that consumer in the same callback, as a :class:`Delivery`, in the order the
broker sent it: a request reaches the adapter without waking the library's reading task
first (one turn of the event loop, and the task's switch, less per read).  Every other
frame goes on whole to the stream, where :meth:`FrameReader.get_frame` reads it in chunks
and pamqp unmarshals it for the library, as its own reader would (the same frames, the
same errors: a malformed frame closes the connection as it did).  A connection the
library opened without such a consumer (a client's, in the tests) reads the same frames
as before.

The library judges a connection stuck when it has not seen a frame for a while; the
deliveries read here are counted as seen (:data:`ALIVE_EVERY_S`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any, ClassVar

import aiormq.connection
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import frame as pframe
from pamqp.exceptions import PAMQPException

log = logging.getLogger("ronda.amqp")

_FRAME = struct.Struct(">BHI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_DELIVER = b"\x00\x3c\x00\x3c"  # class basic (60), method deliver (60)
_END = 0xCE
FRAME_HEAD = 7  # type, channel, size: the frame before its payload
_FRAME_TYPES = (b"\x01", b"\x02", b"\x03", b"\x08")  # method, header, body, heartbeat
_HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"
READ_SIZE = 65536
# the library's last-frame time is refreshed at least this often while only deliveries
# come (its stuck-connection check runs every half heartbeat, 30 s by default)
ALIVE_EVERY_S = 1.0


class Delivery:
    """A request as the broker delivered it: the body, the delivery tag, the redelivered
    flag and the five properties the adapter reads; as aio-pika reads them, an empty
    string is no value (the content type is kept as it came)."""

    __slots__ = ("body", "content_type", "correlation_id", "delivery_tag", "message_id",
                 "redelivered", "reply_to", "user_id")

    def __init__(self, body: bytes, delivery_tag: int, redelivered: bool = False, *,
                 content_type: str | None = None, correlation_id: str | None = None,
                 message_id: str | None = None, reply_to: str | None = None,
                 user_id: str | None = None) -> None:
        self.body = body
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.content_type = content_type
        self.correlation_id = correlation_id
        self.message_id = message_id
        self.reply_to = reply_to
        self.user_id = user_id

    @classmethod
    def of(cls, m: DeliveredMessage) -> Delivery:
        """From the library's delivered message (a consumer not read here)."""
        p = m.header.properties
        d = m.delivery
        return cls(m.body, d.delivery_tag or 0, bool(d.redelivered),  # type: ignore[union-attr]
                   content_type=p.content_type, correlation_id=p.correlation_id or None,
                   message_id=p.message_id or None, reply_to=p.reply_to or None,
                   user_id=p.user_id or None)

    def __repr__(self) -> str:
        return (f"Delivery(tag={self.delivery_tag}, redelivered={self.redelivered}, "
                f"message_id={self.message_id!r}, {len(self.body)} bytes)")


OnDelivery = Callable[[Delivery], None]


def _short(data: bytes, off: int) -> tuple[str, int]:
    n = data[off]
    end = off + 1 + n
    if end > len(data):
        raise ValueError("short string beyond the frame")
    # not UTF-8: kept as its bytes, as amqpframes.tolerate_invalid_utf8 reads it
    return data[off + 1:end].decode("utf-8", "surrogateescape"), end


def read_header(payload: bytes) -> tuple[int, str | None, str | None, str | None, str | None,
                                         str | None]:
    """A content header frame's payload (class basic): its body size, content type,
    correlation id, message id, reply to and user id.  Raises ValueError when it is not
    a well-formed header of class basic."""
    if len(payload) < 14:
        raise ValueError("content header too short")
    cls, size, flags = _U16.unpack_from(payload, 0)[0], _U64.unpack_from(payload, 4)[0], \
        _U16.unpack_from(payload, 12)[0]
    if cls != 60:
        raise ValueError(f"content header of class {cls}, not basic")
    if flags & 1:
        raise ValueError("property flags continue (no such property in class basic)")
    off = 14
    ctype = corr = mid = reply = user = None
    if flags & 0x8000:  # content-type
        ctype, off = _short(payload, off)
    if flags & 0x4000:  # content-encoding
        _, off = _short(payload, off)
    if flags & 0x2000:  # headers: a table, skipped whole
        if off + 4 > len(payload):
            raise ValueError("headers beyond the frame")
        off += 4 + _U32.unpack_from(payload, off)[0]
    if flags & 0x1000:  # delivery-mode
        off += 1
    if flags & 0x0800:  # priority
        off += 1
    if flags & 0x0400:
        corr, off = _short(payload, off)
    if flags & 0x0200:
        reply, off = _short(payload, off)
    if flags & 0x0100:  # expiration
        _, off = _short(payload, off)
    if flags & 0x0080:
        mid, off = _short(payload, off)
    if flags & 0x0040:  # timestamp
        off += 8
    if flags & 0x0020:  # type
        _, off = _short(payload, off)
    if flags & 0x0010:
        user, off = _short(payload, off)
    if flags & 0x0008:  # app-id
        _, off = _short(payload, off)
    if flags & 0x0004:  # cluster-id
        _, off = _short(payload, off)
    if off > len(payload):
        raise ValueError("properties beyond the frame")
    return size, ctype, corr or None, mid or None, reply or None, user or None


class _Pending:
    """A delivery being assembled on one channel."""

    __slots__ = ("body", "got", "header", "on_delivery", "redelivered", "size", "tag")

    def __init__(self, on_delivery: OnDelivery, tag: int, redelivered: bool) -> None:
        self.on_delivery = on_delivery
        self.tag = tag
        self.redelivered = redelivered
        self.header: tuple[Any, ...] | None = None
        self.size = 0
        self.got = 0
        self.body: list[bytes] = []


class FrameReader(aiormq.connection.FrameReceiver):
    """The library's frame source for a connection (see the module).

    It takes the place of its stream's ``feed_data``: the bytes the connection's protocol
    receives are split into frames there, as they arrive.  The frames of a delivery to an
    intercepted consumer are taken and the delivery handed over in that same callback;
    every other frame goes on, whole and in order, into the stream, from which
    :meth:`get_frame` gives the library its frames.  The broker speaks only after the
    client's protocol header, which the library writes after it made this reader, so
    every byte of the connection passes here."""

    consumers: ClassVar[dict[str, OnDelivery]] = {}

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._buf = b""  # what get_frame read from the stream and did not yet take, from _pos
        self._pos = 0
        # the incoming side: the start of a frame not yet whole, its size when known
        self._part: list[bytes] = []
        self._part_len = 0
        self._need = FRAME_HEAD
        self._first = True
        self._split = True  # False once the bytes are not frames (all go on untouched)
        self._error: InvalidFrameError | None = None
        self._pending: dict[int, _Pending] = {}
        self._alive_at = 0.0
        self._to_stream = reader.feed_data
        self._eof_to_stream = reader.feed_eof
        reader.feed_data = self._received  # type: ignore[method-assign, assignment]
        reader.feed_eof = self._ended  # type: ignore[method-assign]

    # ------------------------------------------------------------------ the incoming bytes

    def _received(self, data: bytes) -> None:
        """What the connection's protocol received (its stream's ``feed_data``)."""
        if not self._split:
            if self._error is None:
                self._to_stream(data)
            return  # after a malformed delivery: the connection is being closed
        if self._part:
            self._part.append(data)
            self._part_len += len(data)
            if self._part_len < self._need:
                return  # a frame still incomplete: joined once, when it is whole
            data = b"".join(self._part)
            self._part.clear()
        elif self._first:
            self._first = False
            if data[:1] not in _FRAME_TYPES:
                # not a frame (the broker's protocol header, refusing our version):
                # the library reads and reports it
                self._split = False
                self._to_stream(data)
                return
        try:
            self._split_frames(data)
        except InvalidFrameError as e:
            self._fail(e)
        except Exception as e:  # a defect here must close the connection, not lose bytes
            log.exception("AMQP: reading the connection's frames failed")
            self._fail(InvalidFrameError(f"reading the frames failed: {e!r}"))

    def _split_frames(self, data: bytes) -> None:
        n = len(data)
        pos = 0
        sent = 0  # data[sent:pos]: whole frames not taken, not yet in the stream
        take = self._take if self.consumers or self._pending else None
        while n - pos >= FRAME_HEAD:
            kind, channel, size = _FRAME.unpack_from(data, pos)
            end = pos + FRAME_HEAD + size  # the end octet's index
            if end >= n:
                break
            try:
                taken = take is not None and take(kind, channel, data, pos, end)
            except Exception:
                if sent < pos:  # the frames before this one are the library's still
                    self._to_stream(data[sent:pos])
                raise
            if taken:
                if sent < pos:
                    self._to_stream(data[sent:pos])
                sent = end + 1
                if not self._pending:  # a delivery complete: the library is told
                    now = self.loop.time()  # the connection is alive (ALIVE_EVERY_S)
                    if now - self._alive_at >= ALIVE_EVERY_S:
                        self._alive_at = now
                        self._to_stream(_HEARTBEAT)
            pos = end + 1
        if sent < pos:
            self._to_stream(data[sent:pos] if sent or pos < n else data)
        if pos < n:
            self._part.append(data[pos:] if pos else data)
            self._part_len = n - pos
            self._need = (FRAME_HEAD + 1 + _FRAME.unpack_from(data, pos)[2]
                          if n - pos >= FRAME_HEAD else FRAME_HEAD)

    def _ended(self) -> None:
        """The end of the connection's bytes (its stream's ``feed_eof``): a frame begun
        and not ended goes on to the stream, where the library finds it cut short."""
        if self._part and self._error is None:
            self._to_stream(b"".join(self._part))
        self._part.clear()
        self._eof_to_stream()

    def _fail(self, error: InvalidFrameError) -> None:
        """A malformed delivery: what came before it is read by the library, then
        ``error`` (the library closes the connection); nothing after it is read."""
        self._split = False
        self._error = error
        self._part.clear()
        self._eof_to_stream()

    def _take(self, kind: int, channel: int, data: bytes, start: int, end: int) -> bool:
        """Whether the frame ``data[start:end + 1]`` (``end``: its end octet) belongs to
        a delivery read here (and if so, take it)."""
        pending = self._pending.get(channel)
        if pending is None:
            if kind != 1 or data[start + 7:start + 11] != _DELIVER:
                return False
            try:
                tag, off = _short(data, start + 11)
            except (ValueError, IndexError):
                return False  # the library reports it
            on_delivery = self.consumers.get(tag)
            if on_delivery is None:
                return False
            if data[end] != _END or off + 9 > end:
                raise InvalidFrameError(f"malformed basic.deliver on channel {channel}")
            self._pending[channel] = _Pending(on_delivery, _U64.unpack_from(data, off)[0],
                                              bool(data[off + 8] & 1))
            return True
        if data[end] != _END:
            raise InvalidFrameError(f"frame on channel {channel} without its end octet")
        if pending.header is None:
            if kind != 2:
                raise InvalidFrameError(f"frame of type {kind} instead of the content "
                                        f"header of a delivery on channel {channel}")
            try:
                pending.header = read_header(data[start + 7:end])
            except (ValueError, IndexError, struct.error) as e:
                raise InvalidFrameError(f"content header on channel {channel}: {e}") from e
            pending.size = pending.header[0]
            if pending.size == 0:
                self._deliver(channel, pending, b"")
            return True
        if kind != 3:
            raise InvalidFrameError(f"frame of type {kind} inside the body of a delivery "
                                    f"on channel {channel}")
        part = data[start + 7:end]
        pending.got += len(part)
        if pending.got > pending.size:
            raise InvalidFrameError(f"body of a delivery on channel {channel} longer than "
                                    "its header says")
        if pending.got == pending.size:
            self._deliver(channel, pending,
                          b"".join((*pending.body, part)) if pending.body else part)
        else:
            pending.body.append(part)
        return True

    def _deliver(self, channel: int, pending: _Pending, body: bytes) -> None:
        del self._pending[channel]
        h = pending.header
        assert h is not None
        d = Delivery(body, pending.tag, pending.redelivered, content_type=h[1],
                     correlation_id=h[2], message_id=h[3], reply_to=h[4], user_id=h[5])
        try:
            pending.on_delivery(d)
        except Exception:  # the consumer's own failure must not stop the reading
            log.exception("AMQP: handling delivery %r failed", d)

    # ------------------------------------------------------------------ the library's side

    async def _more(self, missing: int) -> bool:
        """Read what the stream has; False at its end.  A frame that needs more than a
        read's worth (``missing`` bytes) is read whole at once, not copied again with each
        chunk."""
        try:
            if missing > READ_SIZE:
                data = await self.reader.readexactly(missing)
            else:
                data = await self.reader.read(READ_SIZE)
        except asyncio.IncompleteReadError as e:
            if self._error is not None:
                raise self._error from None
            raise AMQPConnectionError(
                "Server connection unexpectedly closed. "
                f"Read {len(e.partial)} bytes but {e.expected} bytes expected") from e
        except ConnectionRefusedError as e:
            raise AMQPConnectionError(f"Server connection refused: {e!r}") from e
        except ConnectionResetError as e:
            raise AMQPConnectionError(f"Server connection reset: {e!r}") from e
        except ConnectionError as e:
            raise AMQPConnectionError(f"Server connection error: {e!r}") from e
        except OSError as e:
            raise AMQPConnectionError(f"Server communication error: {e!r}") from e
        if not data:
            return False
        rest = self._buf[self._pos:]
        self._buf = rest + data if rest else data
        self._pos = 0
        return True

    async def get_frame(self) -> aiormq.connection.ReceivedFrame:
        while True:
            buf, pos = self._buf, self._pos
            n = len(buf) - pos
            need = FRAME_HEAD + 1 + _FRAME.unpack_from(buf, pos)[2] \
                if n >= FRAME_HEAD else FRAME_HEAD + 1
            if n < need:
                if not self.started and n >= 4 and buf[pos:pos + 4] == b"AMQP":
                    raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                if not n and self.reader.at_eof():
                    if self._error is not None:
                        raise self._error
                    # the stream had ended before this frame was asked for: as the
                    # library's reader, the end of the frames, not an error
                    raise StopAsyncIteration
                if not await self._more(need - n):
                    if self._error is not None:
                        raise self._error
                    # the broker closed the connection while a frame was awaited
                    raise AMQPConnectionError(
                        "Server connection unexpectedly closed. "
                        f"Read {n} bytes but {need} bytes expected")
                continue
            if not self.started:
                if buf[pos:pos + 4] == b"AMQP":
                    raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                self.started = True
            frame = buf[pos:pos + need]
            self._pos = pos + need
            try:
                return pframe.unmarshal(frame)
            except PAMQPException as e:
                raise InvalidFrameError(str(e)) from e


def install() -> None:
    """Make :class:`FrameReader` the frame source of the connections the library opens
    from now on in this process (idempotent)."""
    aiormq.connection.FrameReceiver = FrameReader  # type: ignore[misc]


def intercept(consumer_tag: str, on_delivery: OnDelivery) -> None:
    """Deliveries to ``consumer_tag`` (unique: the adapter makes it of a random UUID) go
    to ``on_delivery`` as they are read."""
    FrameReader.consumers[consumer_tag] = on_delivery


def release(consumer_tag: str) -> None:
    FrameReader.consumers.pop(consumer_tag, None)
