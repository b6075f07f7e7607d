"""A lean AMQP 0-9-1 client for the load generator of ``perf/bench_amqp.py``.

The load generator shares the machine with the server, the broker and the echo: every
microsecond it spends is taken from them.  Through aiormq it cost about 290 µs of CPU per
request at 2,000 requests/s (a task and a confirmation future per publish, pamqp's objects
for every frame read, a task per delivery), as much as the server itself.  This client
speaks the protocol on an :class:`asyncio.Protocol`: the connection's set-up and the rare
control methods go through pamqp's marshalling, as the library's; a publish is written with
the server's own encoder (:mod:`gateway.amqpframes`, whose bytes ``tests/test_amqp_frames.py``
checks against pamqp); the frames it reads most (``basic.deliver``, its content header and
body, and the broker's publisher confirms) are parsed in place, reading only what the
generator needs: the consumer a delivery is for, its ``correlation_id`` and its body.

What it does not do, because the benchmark does not need it: more than one channel,
``basic.return``, flow control (``connection.blocked`` is counted, not obeyed), and
recovering a lost connection (the run fails instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from pamqp import commands, frame, header, heartbeat

from gateway import amqpframes
from gateway.amqpread import read_header

CHANNEL = 1
_FRAME = struct.Struct(">BHI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_DELIVER = 0x003C003C  # basic.deliver
_ACK = 0x003C0050  # basic.ack (a publisher confirm)
_NACK = 0x003C0078  # basic.nack
_BLOCKED = 0x000A003C  # connection.blocked
_UNBLOCKED = 0x000A003D
_HEARTBEAT = heartbeat.Heartbeat().marshal()

OnMessage = Callable[[str, bytes], None]  # (correlation_id, body)


class ThreadTimer:
    """Sleeps timed by a thread of their own: ``await timer.sleep(s)`` returns about
    ``s`` later, within the kernel's timer slack (tens of microseconds), where uvloop's
    timers keep to the millisecond.  The sleep runs in the thread (``time.sleep``: a
    ``nanosleep``) and wakes the event loop with ``call_soon_threadsafe``; one thread,
    one sleep at a time.  It costs the loop's thread a hand-off each way per sleep
    (``gateway.sequencer.JournalThread``: 23–36 µs of CPU, ``perf/bench_handoff.py``),
    which an open-loop schedule pays once per instant at which requests are due."""

    def __init__(self) -> None:
        from gateway.sequencer import JournalThread

        self._thread = JournalThread("pacer")

    async def sleep(self, seconds: float) -> None:
        await self._thread.call(asyncio.get_running_loop(), time.sleep, seconds)

    def close(self) -> None:
        self._thread.shutdown()


async def pace(items: Sequence[tuple[float, Any]],
               fire: Callable[[list[tuple[float, Any]]], None],
               resolution: float = 0.0,
               sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
    """Hand ``items`` (``(scheduled perf_counter time, payload)``, in time order) to
    ``fire`` when their times come, never before, every item due by then in one call: the
    send schedule of an open-loop benchmark, whose latencies are measured from the
    scheduled times (an item handed early would have its latency understated).

    The clock is read again after every sleep, because the event loop's timers are not
    exact: uvloop's have a resolution of a millisecond and truncate (``asyncio.sleep(0.0005)``
    returns at once, ``sleep(0.0015)`` after one millisecond), so one sleep per item handed
    a third of the benchmark's requests up to 1.1 ms early.  ``resolution`` is the shortest
    sleep: on uvloop give it a millisecond, or the last fraction of a millisecond before
    each item is spent polling the clock (then an item is handed up to about a
    millisecond late, which its latency is charged with: pessimistic, never flattering).
    ``sleep``: how to sleep instead of ``asyncio.sleep`` (:meth:`ThreadTimer.sleep`, whose
    sleeps keep to tens of microseconds: then give no ``resolution``)."""
    if any(a[0] > b[0] for a, b in itertools.pairwise(items)):
        raise ValueError("items must be in time order")
    snooze = asyncio.sleep if sleep is None else sleep
    clock, n, k = time.perf_counter, len(items), 0
    while k < n:
        wait = items[k][0] - clock()
        if wait > 0:
            await snooze(wait if wait > resolution else resolution)
            continue
        now, j = clock(), k + 1
        while j < n and items[j][0] <= now:
            j += 1
        fire(list(items[k:j]))
        k = j


class AmqpError(Exception):
    """The broker closed the channel or the connection, or refused the set-up."""


class LeanClient(asyncio.Protocol):
    """One connection and one channel with publisher confirms."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._control: asyncio.Queue[Any] = asyncio.Queue()
        self._consumers: dict[str, OnMessage] = {}
        self._max_content = 0
        self._heartbeat_s = 0
        self._hb_task: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        # the delivery being read: its consumer, correlation_id, size and body so far
        self._cur: OnMessage | None = None
        self._cur_corr = ""
        self._cur_size = 0
        self._cur_body: list[bytes] = []
        self._cur_got = 0
        self._cur_tag = 0
        self._cur_header: tuple[int, str | None, str | None, str | None, str | None,
                                str | None] = (0, None, None, None, None, None)
        self.published = 0
        self.confirmed = 0
        self.nacked = 0
        # publisher confirms: every tag up to _settled_upto is confirmed or nacked, and the
        # tags above it answered singly (the broker answers out of order: a message to a
        # queue that syncs sooner is confirmed before an older one to another queue)
        self._settled_upto = 0
        self._settled_above: set[int] = set()
        self.blocked = 0
        self.error: str | None = None

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = f"connection lost: {exc!r}"
        self._control.put_nowait(AmqpError(self.error))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._hb_task is not None:
            self._hb_task.cancel()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        unpack = _FRAME.unpack_from
        while n - pos >= 8:
            kind, _channel, size = unpack(buf, pos)
            end = pos + 7 + size
            if end >= n:
                break
            payload = bytes(buf[pos + 7:end])
            pos = end + 1
            if kind == 3:
                self._body(payload)
            elif kind == 2:
                self._header(payload)
            elif kind == 1:
                self._method(payload, bytes(buf[pos - 8 - size:pos]))
            # kind 8: the broker's heartbeat, nothing to do (any frame keeps us alive)
        del buf[:pos]

    # ---------------------------------------------------------------- reading

    def _method(self, payload: bytes, whole: bytes) -> None:
        method = _U32.unpack_from(payload, 0)[0]
        if method == _DELIVER:
            tag_len = payload[4]
            tag = payload[5:5 + tag_len].decode()
            self._cur = self._consumers.get(tag)
            self._cur_corr = ""
            # the delivery tag, for a consumer that acknowledges (perf/amqpecho.py)
            self._cur_tag = _U64.unpack_from(payload, 5 + tag_len)[0]
            return
        if method in (_ACK, _NACK):
            tag = _U64.unpack_from(payload, 4)[0]
            count = self._settle(tag, bool(payload[12] & 1))
            if method == _ACK:
                self.confirmed += count
            else:
                self.nacked += count
            return
        if method in (_BLOCKED, _UNBLOCKED):
            self.blocked += method == _BLOCKED
            return
        _, _, value = frame.unmarshal(whole)
        if isinstance(value, commands.Channel.Close | commands.Connection.Close):
            self.error = f"{value.reply_code} {value.reply_text}"
            if isinstance(value, commands.Connection.Close):
                self._write(frame.marshal(commands.Connection.CloseOk(), 0))
            else:
                self._write(frame.marshal(commands.Channel.CloseOk(), CHANNEL))
        self._control.put_nowait(value)

    def _settle(self, tag: int, multiple: bool) -> int:
        """How many publishes a confirm (or nack) of ``tag`` answers for the first time:
        with ``multiple`` every tag up to it not answered yet, else the tag itself (none if
        it was answered already or is not one of ours)."""
        upto, above = self._settled_upto, self._settled_above
        if tag <= upto or tag > self.published:
            return 0
        if multiple:
            below = [t for t in above if t <= tag] if above else []
            above.difference_update(below)
            count = tag - upto - len(below)
            upto = tag
        elif tag in above:
            return 0
        else:
            above.add(tag)
            count = 1
        while upto + 1 in above:
            upto += 1
            above.discard(upto)
        self._settled_upto = upto
        return count

    def _header(self, payload: bytes) -> None:
        size = _U64.unpack_from(payload, 4)[0]
        self._cur_size, self._cur_got, self._cur_body = size, 0, []
        if self._cur is not None:
            # the gateway's own reader of a content header (gateway/amqpread.py): body size,
            # content type, correlation id, message id, reply to, user id
            self._cur_header = read_header(payload)
            self._cur_corr = self._cur_header[2] or ""
        if size == 0:
            self._deliver(b"")

    def _body(self, payload: bytes) -> None:
        self._cur_got += len(payload)
        if self._cur_got >= self._cur_size and not self._cur_body:
            self._deliver(payload)
            return
        self._cur_body.append(payload)
        if self._cur_got >= self._cur_size:
            self._deliver(b"".join(self._cur_body))

    def _deliver(self, body: bytes) -> None:
        cb, self._cur = self._cur, None
        if cb is not None:
            cb(self._cur_corr, body)

    # ---------------------------------------------------------------- writing

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def publish(self, exchange: str, routing_key: str, props: bytes, body: bytes) -> None:
        """A ``basic.publish`` on the channel; its confirm is counted when it comes."""
        self.published += 1
        self._write(amqpframes.publish(CHANNEL, exchange, routing_key, props, body,
                                       self._max_content))

    async def _rpc(self, value: Any, channel: int, answer: type) -> Any:
        self._write(frame.marshal(value, channel))
        while True:
            got = await self._control.get()
            if isinstance(got, AmqpError):
                raise got
            if isinstance(got, answer):
                return got
            if isinstance(got, commands.Channel.Close | commands.Connection.Close):
                raise AmqpError(self.error or repr(got))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s / 2)
            self._write(_HEARTBEAT)

    # ---------------------------------------------------------------- set-up

    async def open(self, user: str, password: str, confirms: bool = True) -> None:
        """The handshake (PLAIN), the channel, publisher confirms (unless not ``confirms``)."""
        self._write(header.ProtocolHeader().marshal())
        start = await self._control.get()
        if not isinstance(start, commands.Connection.Start):
            raise AmqpError(f"expected connection.start, got {start!r}")
        self._write(frame.marshal(commands.Connection.StartOk(
            client_properties={"product": "ronda bench"}, mechanism="PLAIN",
            response=f"\0{user}\0{password}", locale="en_US"), 0))
        tune = await self._control.get()
        if not isinstance(tune, commands.Connection.Tune):
            raise AmqpError(f"expected connection.tune, got {tune!r} ({self.error})")
        frame_max = tune.frame_max or 131072
        self._max_content = frame_max - amqpframes.FRAME_OVERHEAD
        self._heartbeat_s = tune.heartbeat
        self._write(frame.marshal(commands.Connection.TuneOk(
            channel_max=1, frame_max=frame_max, heartbeat=tune.heartbeat), 0))
        await self._rpc(commands.Connection.Open(virtual_host="/"), 0,
                        commands.Connection.OpenOk)
        await self._rpc(commands.Channel.Open(), CHANNEL, commands.Channel.OpenOk)
        if confirms:
            await self._rpc(commands.Confirm.Select(), CHANNEL, commands.Confirm.SelectOk)
        if self._heartbeat_s:
            self._hb_task = asyncio.get_running_loop().create_task(self._heartbeats())

    async def declare_reply_queue(self) -> str:
        """An exclusive, server-named queue."""
        ok = await self._rpc(commands.Queue.Declare(queue="", exclusive=True,
                                                    auto_delete=True),
                             CHANNEL, commands.Queue.DeclareOk)
        return str(ok.queue)

    async def consume(self, queue: str, on_message: OnMessage) -> None:
        """Consume ``queue`` without acks; ``on_message(correlation_id, body)``."""
        tag = f"c{len(self._consumers)}"
        self._consumers[tag] = on_message
        await self._rpc(commands.Basic.Consume(queue=queue, consumer_tag=tag, no_ack=True),
                        CHANNEL, commands.Basic.ConsumeOk)

    async def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        bye = commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0,
                                        method_id=0)
        with contextlib.suppress(AmqpError, TimeoutError):
            await asyncio.wait_for(self._rpc(bye, 0, commands.Connection.CloseOk), 5)
        self.transport.close()
        if self._closed is not None:
            await asyncio.wait_for(asyncio.shield(self._closed), 5)


async def connect(host: str, port: int, user: str, password: str) -> LeanClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(LeanClient, host, port)
    await client.open(user, password)
    return client
