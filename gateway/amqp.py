"""The AMQP transport for algorithmic traders (RabbitMQ), laid out as M7 users expect.

Layout (the reference is ``docs/amqp.md``)::

    client --publish--> exchange ronda.requests (direct, durable)
                          --"request"--> queue ronda.requests (durable) --> this adapter
    this adapter --reply_to / correlation_id--> the client's reply queue
    this adapter --publish--> exchange ronda.broadcast (topic, durable)
                          --private.<user>, user.<user>, book.<c>, trades.<c>, states-->
                          queue ronda.bcast.<user> (durable, one per user) --> the client

Identity: a request must carry the AMQP ``user_id`` property.  RabbitMQ validates it against
the user of the publishing connection (a mismatch closes the publisher's channel and the
message never gets here), so the platform user of the same id is logged in without a
token: the broker authenticated it.  One :class:`AmqpSession` (the shared
:class:`gateway.session.Session` logic) serves all AMQP connections of a user; it lives
from the user's first request until ``logout`` and is recorded in the data folder
(``amqp-sessions.json``) so that its subscriptions survive client reconnects and server
restarts.

Acknowledgement: a request is acked to the broker only after its answer exists, and a
command's answer exists only after the command is durable in the journal (the sequencer's
future; DESIGN rule 7).  The answer is published to ``reply_to`` before the ack on the same
channel.  If the server or the connection dies first, the broker redelivers the request.
Redeliveries and client resends are made harmless by ``message_id``: a command is
journaled with its request's ``message_id`` and a digest of the request, and the server
remembers the commands it executed so (:mod:`gateway.executed`, rebuilt from the journal at
a restart): a repeat gets the answer the command was given instead of executing it again,
a different request under a ``message_id`` already used is refused
(``MESSAGE_ID_REUSED``); a query's repeat is answered again; a request still in progress
collects the duplicate and answers both.  A repeat older than what the server remembers
(the last 20,000 commands) is processed again: the engine refuses a repeated
``client_order_id`` with ``DUPLICATE_CLIENT_ORDER_ID``, a stale ``revision`` with
``STALE_REVISION``, a cancelled order with ``ORDER_UNKNOWN``/``ORDER_NOT_ACTIVE``.

Everything leaving the adapter (replies, acks, bindings, broadcast messages) goes through
one FIFO on one channel, so a queue receives what concerns it in the order the server
produced it: a subscription's binding, then its snapshot, then the deltas that follow.  What
a step of the loop puts in it (a commit's answers, acks and stream messages) is written to
the socket right after that step, by a plain callback, when the socket takes it; a task
writes the rest, waiting for the socket when it is full and for the broker's answer to a
binding or a declaration (``AmqpAdapter._flush_out``).  While the broker is away nothing
is queued: broadcast messages are dropped (the messages' per-stream ``seq`` shows the gap;
a ``resync`` message and fresh book snapshots follow each reconnection), unanswered
requests are redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from contextvars import Context, ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import aiormq.connection
import msgpack
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
)
from aiormq.abc import ChannelFrame, DeliveredMessage
from aiormq.channel import Channel as RawChannel
from aiormq.exceptions import ChannelInvalidStateError
from yarl import URL

from gateway import amqpframes, amqpread
from gateway.amqpread import Delivery
from gateway.executed import request_digest
from gateway.inbound import decode_json, decode_msgpack, shown
from gateway.journal import RequestKey
from gateway.sequencer import Done
from gateway.session import Session, command_answer
from gateway.wire import fmt_instant, to_ticks
from risk.refdata import CODE_RE

if TYPE_CHECKING:
    from gateway.server import Server

log = logging.getLogger("ronda.amqp")

REQUEST_EXCHANGE = "ronda.requests"
REQUEST_QUEUE = "ronda.requests"
REQUEST_KEY = "request"
BROADCAST_EXCHANGE = "ronda.broadcast"
BCAST_PREFIX = "ronda.bcast."
JSON = "application/json"
MSGPACK = "application/msgpack"
SEQ_HEADER = "x-ronda-seq"
STREAM_HEADER = "x-ronda-stream"
REPLAYED_HEADER = "x-ronda-replayed"
PRIVATE_PREFIX = "private:"  # a private stream's name: private:<agent>, private:*
BATCH_TYPE = "batch"  # the type property of a private-stream message: a JSON array
# a user's broadcast queue keeps at most this many AMQP messages (the oldest go first); a
# private-stream batch (up to 256 of the stream's messages) is one
BCAST_MAX_LENGTH = 100_000
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
DEFAULT_HEARTBEAT_S = 10  # AMQP connection heartbeat, unless the URL sets one
DRAIN_TIMEOUT_S = 5.0
BLOCK_S = 10.0  # a user disconnected for flooding malformed messages waits this long
SESSIONS_FILE = "amqp-sessions.json"

PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)
TRANSIENT = int(aio_pika.DeliveryMode.NOT_PERSISTENT)
PUMP_BATCH = 256  # outbound operations written between two waits for the socket

Message = dict[str, Any]


def bcast_queue(user: str) -> str:
    """The name of ``user``'s broadcast queue."""
    return BCAST_PREFIX + user


def routing_key(stream: str) -> str:
    """``book:PH-20270115-10`` -> ``book.PH-20270115-10``; ``states`` -> ``states``."""
    return stream.replace(":", ".", 1)


# ---------------------------------------------------------------------------- requests


@dataclass(eq=False)
class _Request:
    """One request being processed, and every delivery of it (broker redeliveries and
    client resends with the same ``message_id`` that arrived meanwhile)."""

    session: AmqpSession
    key: tuple[str, str] | None  # (user, message_id)
    deliveries: list[tuple[int, Delivery]] = field(default_factory=list)
    digest: bytes = b""  # of the request as received, with a key (gateway.executed)
    internal: bool = False  # the adapter's own request (implicit login, restore)
    pending: bool = False  # answered later (a command in the sequencer, a store read)
    command: bool = False  # a command request (it may have been refused before the sequencer)
    submitted: bool = False  # its command was handed to the sequencer (journaled with the key)
    answered: bool = False
    answer: Message | None = None


# The request being handled.  The session answers a command from the sequencer's
# callback, which runs in the sequencer's task: ``AmqpSession._answerer`` captures the
# request when the command is submitted (inside ``Session.handle``) and makes it current
# again around the answer.
_CURRENT: ContextVar[_Request | None] = ContextVar("ronda_amqp_request", default=None)


# ---------------------------------------------------------------------------- outbox


@dataclass(slots=True)
class _Publish:
    exchange: str  # "" (default exchange: reply queues) or BROADCAST_EXCHANGE
    routing_key: str
    body: bytes
    properties: bytes  # encoded (gateway.amqpframes.properties)


@dataclass(slots=True)
class _Ack:
    gen: int  # the connection the delivery came through
    delivery: Delivery


@dataclass(slots=True)
class _Bind:
    user: str
    key: str
    on: bool


@dataclass(slots=True)
class _Declare:
    user: str


_Op = _Publish | _Ack | _Bind | _Declare


@dataclass(eq=False)
class _Link:
    """One live connection to the broker."""

    gen: int
    connection: AbstractConnection
    channel: AbstractChannel
    raw: RawChannel  # the channel's protocol object
    transport: asyncio.WriteTransport  # the connection's socket
    broadcast: AbstractExchange
    declared: set[str] = field(default_factory=set)
    # the deliveries on the channel not acknowledged yet (at most the prefetch count)
    unacked: set[int] = field(default_factory=set)


class _SocketTap(aiormq.connection.TransportFactory):
    """How the client library opens the connection's socket (its ``transport_factory``):
    as it would itself (TLS for ``amqps``), keeping the socket's writer for the adapter,
    which writes its own frames there (:meth:`AmqpAdapter._flush_out`)."""

    def __init__(self, url: URL) -> None:
        self.inner: aiormq.connection.TransportFactory = (
            aiormq.connection.TLSTransportFactory() if url.scheme == "amqps"
            else aiormq.connection.TCPTransportFactory())
        self.writer: asyncio.StreamWriter | None = None

    async def create(self, url: URL, **kwargs: Any
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.inner.create(url, **kwargs)
        self.writer = writer
        return reader, writer


class _TappedConnection(aio_pika.Connection):
    """An aio-pika connection whose library connection is made with a :class:`_SocketTap`
    (aio-pika passes its ``kwargs`` on to the library's connection)."""

    def __init__(self, url: URL, *, tap: _SocketTap, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.kwargs["transport_factory"] = tap


# ---------------------------------------------------------------------------- sessions


class AmqpTransport:
    """The session's transport: messages that are not answers (the private stream,
    heartbeats, notices) go to the user's broadcast queue."""

    def __init__(self, adapter: AmqpAdapter, user: str) -> None:
        self.adapter = adapter
        self.user = user
        self.session: AmqpSession | None = None

    async def send(self, msg: dict[str, Any]) -> None:
        self.adapter.to_user(self.user, msg)

    async def send_many(self, msgs: list[dict[str, Any]]) -> None:
        self.send_now(msgs)

    def send_now(self, msgs: list[dict[str, Any]]) -> bool:
        """Into the adapter's outbox at once (it never waits: the outbox pump deals with
        the broker), so the session's flush needs no writer task (gateway/session.py).
        Consecutive messages of one private stream (what one flush of the session holds:
        an order's report and the account update that follows it, a cancel-all's reports)
        go as one AMQP message, a JSON array (:meth:`AmqpAdapter.to_private`)."""
        adapter, user = self.adapter, self.user
        i, n = 0, len(msgs)
        while i < n:
            stream = msgs[i].get("stream")
            if isinstance(stream, str) and stream.startswith(PRIVATE_PREFIX):
                j = i + 1
                while j < n and msgs[j].get("stream") == stream:
                    j += 1
                adapter.to_private(user, stream, msgs[i:j])
                i = j
            else:
                adapter.to_user(user, msgs[i])
                i += 1
        return True

    async def close(self, code: int, reason: str) -> None:
        self.abort(reason)

    def abort(self, reason: str = "closed") -> None:
        if self.session is not None:
            self.adapter.end_session(self.session, reason)


class AmqpSession(Session):
    """A :class:`Session` whose answers go to the request's ``reply_to`` and whose public
    subscriptions are bindings of the user's broadcast queue."""

    connection_bound = False  # kept until logout, across connections and restarts

    def __init__(self, adapter: AmqpAdapter, user: str) -> None:
        transport = AmqpTransport(adapter, user)
        # the broker authenticated ``user``: it logs in like a verified client certificate
        super().__init__(adapter.server, transport, cert_user=user,
                         max_queue=adapter.server.config.max_queue,
                         max_behind_s=adapter.server.config.max_behind_s)
        transport.session = self
        self.adapter = adapter
        self.public: set[str] = set()  # "book:<c>", "trades:<c>", "states"
        self.login_ack: Message = {}

    def send(self, msg: dict[str, Any]) -> None:
        req = _CURRENT.get()
        if req is not None and req.session is self and not req.answered:
            self.adapter.complete(req, msg)
            return
        super().send(msg)

    def _reply_later(self) -> Callable[[dict[str, Any]], None]:
        req = _CURRENT.get()
        if req is None or req.session is not self:
            return super()._reply_later()
        req.pending = True  # answered when the answers in flight are out

        def reply(msg: dict[str, Any]) -> None:
            token = _CURRENT.set(req)
            try:
                self.send(msg)
            finally:
                _CURRENT.reset(token)

        return reply

    def _command(self, typ: str, data: dict[str, Any], req_id: Any) -> None:
        req = _CURRENT.get()
        if req is not None and req.session is self:
            req.pending = req.command = True  # answered now (refused) or once durable
        super()._command(typ, data, req_id)

    def _key(self) -> RequestKey | None:
        req = _CURRENT.get()
        if req is None or req.session is not self or req.key is None:
            return None
        return req.key[1], req.digest

    def _answerer(self, typ: str, req_id: Any) -> Done:
        """The answer goes to the delivery being handled now: the sequencer calls back
        from its own task, so the request is captured here and made current again."""
        req = _CURRENT.get()
        if req is not None and req.session is self:
            req.submitted = True  # (asked for right as the command is handed over)
        answer = super()._answerer(typ, req_id)

        def done(events: list[Any] | None, exc: BaseException | None) -> None:
            token = _CURRENT.set(req)
            try:
                answer(events, exc)
            finally:
                _CURRENT.reset(token)

        return done

    def _login(self, data: dict[str, Any]) -> None:
        if self.user is None:  # the implicit login (the adapter's own request)
            super()._login(data)
            return
        req_id = data.get("req_id")
        extra = set(data) - {"type", "req_id", "user", "token", "on_disconnect"}
        if extra:
            self.error(sorted(extra)[0], "unknown field", req_id)
            return
        if data.get("user", self.user) != self.user:
            self.reject(req_id, "LOGIN_FAILED",
                        f"this AMQP user is {self.user!r} (the broker vouches for it)")
            return
        if data.get("on_disconnect", "none") != "none":
            self.error("on_disconnect", "not available over AMQP: the session is not bound "
                       "to a connection (use order_deactivate to hibernate orders)", req_id)
            return
        now = fmt_instant(self.server.sequencer.clock.now())
        self.send({**self.login_ack, "req_id": req_id, "server_time": now})

    def _subscribe(self, on: bool, data: dict[str, Any], req_id: Any) -> None:
        stream = data.get("stream")  # (unknown fields were refused by Session.handle)
        if stream in ("book", "trades", "states") and self._misplaced(stream, data, req_id):
            return
        if stream not in ("book", "trades", "states"):
            super()._subscribe(on, data, req_id)  # private: this session is the subscriber
            self.adapter.save()
            return
        hub = self.server.hub
        contract = ""
        if stream == "states":
            name, seq = "states", hub.state_seq
        else:
            c = data.get("contract")
            if not isinstance(c, str) or c not in self.server.core.engine.contracts:
                self.error("contract", "unknown contract", req_id)
                return
            contract = c
            name = f"{stream}:{contract}"
            seq = hub.book(contract).seq if stream == "book" else hub.trade_seq[contract]
        self.adapter.set_public(self, name, on)
        self.send({"type": "ack", "kind": "subscribe" if on else "unsubscribe",
                   "req_id": req_id, "stream": name, "seq": seq})
        if on and stream == "book" and self.user is not None:
            # after the binding, before any later delta: the queue gets them in order
            self.adapter.to_user(self.user, hub.book_snapshot(contract))
        self.adapter.save()


class _PublicFeed:
    """The adapter's single subscriber to a public stream: each message is published once,
    and the broker copies it to every queue bound to its routing key."""

    def __init__(self, adapter: AmqpAdapter) -> None:
        self.adapter = adapter

    def deliver(self, msg: dict[str, Any]) -> None:
        self.adapter.to_public(msg)

    def deliver_book(self, contract: str, msg: dict[str, Any]) -> None:
        self.adapter.to_public(msg)


def _subscribe_request(name: str) -> Message:
    kind, _, rest = name.partition(":")
    if kind == "private":
        return {"type": "subscribe", "stream": "private", **({"agent": rest} if rest else {})}
    if kind == "states":
        return {"type": "subscribe", "stream": "states"}
    return {"type": "subscribe", "stream": kind, "contract": rest}


def _media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``; none means JSON."""
    return (content_type or JSON).split(";", 1)[0].strip().lower()


def _decode(body: bytes, content_type: str) -> Any:
    if content_type == MSGPACK:
        return decode_msgpack(body)
    return decode_json(body)


def _stopping() -> bool:
    """Whether the running task is being cancelled (the server stops), as opposed to a
    CancelledError the client library raised into one of its calls."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _is_text(s: str) -> bool:
    """Whether ``s`` is text (a property that was not UTF-8 is read with surrogates)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reused(message_id: str, data: Any) -> Message:
    msg = _error("message_id", f"{shown(message_id)} was already used for a different "
                 f"request; a repeat must be the same message, a new request needs a new "
                 f"message_id", "MESSAGE_ID_REUSED")
    req_id = data.get("req_id") if isinstance(data, dict) else None
    if isinstance(req_id, str) and 1 <= len(req_id) <= 64:
        msg["req_id"] = req_id
    return msg


def _error(field_: str, reason: str, code: str = "INVALID_FIELD") -> Message:
    return {"type": "error", "code": code, "field": field_, "reason": reason}


# ---------------------------------------------------------------------------- adapter


class AmqpAdapter:
    """Connects the server to RabbitMQ: consumes requests, publishes answers and streams,
    reconnects with exponential back-off when the broker goes away."""

    def __init__(self, server: Server, url: str, *, prefetch: int = 256,
                 max_outbox: int = 100_000) -> None:
        # a request whose properties are not UTF-8 must not break the connection (and come
        # back from the broker to break the next one): see amqpframes.tolerate_invalid_utf8
        amqpframes.tolerate_invalid_utf8()
        # requests are read from the connection's bytes (gateway/amqpread.py)
        amqpread.install()
        self.server = server
        u = URL(url)
        if "heartbeat" not in u.query:
            u = u.update_query(heartbeat=DEFAULT_HEARTBEAT_S)
        self.url = u
        self.prefetch = prefetch
        # the commands executed under a message_id: the server's, rebuilt at recovery
        self.executed = server.executed
        self.max_outbox = max_outbox
        # what tells this run's stream messages from an earlier run's, which numbered its
        # streams from 0 too: the journal's position when it started, in every stream
        # message's message_id (<stream>:<seq>@<run>), so that a client discarding the
        # duplicates of a message never takes a new one for an old one
        journal = server.journal
        self.run_id = f"@{journal.next_seq}" if journal.is_open else ""
        self.sessions: dict[str, AmqpSession] = {}
        self.connected = asyncio.Event()
        self.connections = 0  # successful connections so far
        self.stats: dict[str, int] = defaultdict(int)
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._inflight: dict[tuple[str, str], _Request] = {}
        self._pending: set[_Request] = set()
        self._public_users: dict[str, set[str]] = defaultdict(set)  # stream -> users
        self._feed = _PublicFeed(self)
        self._user_seq: dict[str, int] = defaultdict(int)
        self._blocked: dict[str, float] = {}
        self._outbox: deque[_Op] = deque()
        self._wake = asyncio.Event()  # the pump's
        self._flush_due = False  # a _flush_out callback is scheduled
        self._pump_busy = False  # the pump is writing, or waiting for the broker
        self._link: _Link | None = None
        self._gen = 0
        self._restoring = False
        self._closed = False
        self._sessions_file = server.config.data_dir / SESSIONS_FILE

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> None:
        """Connect, declare, consume; reconnect with back-off (0.1 s doubling to 5 s) when
        the broker goes away.  Returns only when cancelled (or closed)."""
        self._restore()
        delay = BACKOFF_MIN
        while not self._closed:
            tap = _SocketTap(self.url)
            try:
                # (aio-pika calls its connection_class with the URL and its options)
                conn = await aio_pika.connect(
                    self.url, timeout=5,
                    client_properties={"connection_name": "ronda gateway"},
                    connection_class=cast(Any, functools.partial(_TappedConnection, tap=tap)))
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _stopping():
                    raise
                self.stats["connect_failures"] += 1
                log.warning("AMQP: cannot connect (%s); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            before = self.connections
            try:
                if tap.writer is None:  # (the library made its socket elsewhere)
                    raise ConnectionError("the connection's socket was not made by its tap")
                await self._serve(conn, tap.writer)
            except (Exception, asyncio.CancelledError) as exc:
                # a CancelledError that is not this task's own cancellation is the client
                # library's, raised into a call on a connection it gave up (see _serve)
                if isinstance(exc, asyncio.CancelledError) and _stopping():
                    raise
                log.warning("AMQP: connection lost (%s)", str(exc) or type(exc).__name__)
            finally:
                self._disconnected()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(conn.close(), 2)
            if self.connections > before:  # it worked for a while: start over
                delay = BACKOFF_MIN
            if not self._closed:
                log.warning("AMQP: reconnecting in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def close(self) -> None:
        """Stop: no new requests; the writers stop; the connection closes (the broker
        requeues whatever was not acknowledged)."""
        self._closed = True
        writers = list(self._writers.values())
        for w in writers:
            w.cancel()
        for w in writers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await w
        self._writers.clear()
        link = self._link
        self._disconnected()
        if link is not None and not link.connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.connection.close(), 2)
        self.server.hub.unsubscribe_all(self._feed)

    async def _serve(self, conn: AbstractConnection, writer: asyncio.StreamWriter) -> None:
        """One connection: declare the layout, consume, pump the outbox until the
        connection or the channel closes.  On cancellation (server stop) finish the
        requests in progress first, so that their answers and acks go out."""
        lost = asyncio.Event()

        def on_close(*_: Any) -> None:
            lost.set()

        conn.close_callbacks.add(on_close)
        ch = await conn.channel(publisher_confirms=False)
        ch.close_callbacks.add(on_close)
        await ch.set_qos(prefetch_count=self.prefetch)
        req_ex = await ch.declare_exchange(REQUEST_EXCHANGE, aio_pika.ExchangeType.DIRECT,
                                           durable=True)
        bc_ex = await ch.declare_exchange(BROADCAST_EXCHANGE, aio_pika.ExchangeType.TOPIC,
                                          durable=True)
        queue = await ch.declare_queue(REQUEST_QUEUE, durable=True)
        await queue.bind(req_ex, REQUEST_KEY)
        raw = cast(RawChannel, await ch.get_underlay_channel())
        if raw.publisher_confirms:  # its delivery tags would have to be counted here
            raise RuntimeError("the adapter's channel must not confirm publishes")
        self._gen += 1
        link = _Link(self._gen, conn, ch, raw, writer.transport, bc_ex)
        # every platform user gets its queue at once, so a client can consume before its
        # first request; then the bindings of the current subscriptions
        for user in sorted(set(self.server.core.ref.users) | set(self.sessions)):
            await self._declare(link, user)
        for name, users in sorted(self._public_users.items()):
            for user in sorted(users):
                await (await ch.get_queue(bcast_queue(user), ensure=False)).bind(
                    bc_ex, routing_key(name))
        self._outbox.clear()
        self._link = link
        self._resync()
        pump = asyncio.get_running_loop().create_task(self._pump(link), name="amqp-pump")
        waiter = asyncio.get_running_loop().create_task(lost.wait())
        gen = link.gen

        async def on_message(message: DeliveredMessage) -> None:
            # a delivery the library read: after amqpread.release at the end of this
            # connection (or, never, on a connection opened before amqpread.install)
            on_delivery(Delivery.of(message))

        def on_delivery(delivery: Delivery) -> None:
            if self._link is not link:
                # read after this connection was given up: its answer and ack could not
                # go out, so it is not executed here; unacknowledged, the broker
                # delivers it again on the next connection
                return
            link.unacked.add(delivery.delivery_tag)
            self.receive(delivery, gen)

        tag = f"ronda-gateway-{uuid.uuid4().hex}"
        amqpread.intercept(tag, on_delivery)
        try:
            await raw.basic_consume(REQUEST_QUEUE, on_message, consumer_tag=tag)
        except BaseException:
            amqpread.release(tag)
            raise
        self.connections += 1
        self.connected.set()
        log.info("AMQP: connected to %s (connection %d)", self.url.host, self.connections)
        try:
            done, _ = await asyncio.wait({pump, waiter},
                                         return_when=asyncio.FIRST_COMPLETED)
            if pump in done:
                if pump.cancelled():
                    # the library fails what waits on a connection it judged stuck (no
                    # frame from the broker within the heartbeat grace) with
                    # CancelledError: the connection is lost, the server is not stopping
                    raise ConnectionError("the connection to the broker was given up "
                                          "(no frame from it in time)")
                pump.result()  # raises what broke the channel
        except asyncio.CancelledError:  # the server stops
            self._closed = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(raw.basic_cancel(tag), 1)
            await self._drain(pump, waiter)
            raise
        finally:
            amqpread.release(tag)
            waiter.cancel()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump

    async def _drain(self, pump: asyncio.Task[None], lost: asyncio.Task[Any]) -> None:
        """Let the requests in progress get their answers out (bounded wait)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while ((self._pending or self._outbox) and loop.time() < deadline
               and not pump.done() and not lost.done()):
            await asyncio.sleep(0.01)

    def _disconnected(self) -> None:
        if self._link is not None:
            log.log(logging.INFO if self._closed else logging.WARNING,
                    "AMQP: disconnected; %d outbound operations dropped", len(self._outbox))
        self._link = None
        self.connected.clear()
        self._outbox.clear()

    async def _declare(self, link: _Link, user: str) -> None:
        if user in link.declared:
            return
        q = await link.channel.declare_queue(
            bcast_queue(user), durable=True,
            arguments={"x-max-length": BCAST_MAX_LENGTH, "x-overflow": "drop-head"})
        await q.bind(link.broadcast, f"private.{user}")
        await q.bind(link.broadcast, f"user.{user}")
        link.declared.add(user)

    # ------------------------------------------------------------------ outbox

    def _enqueue(self, op: _Op) -> bool:
        if self._link is None:
            return False
        self._outbox.append(op)
        if not self._flush_due:
            asyncio.get_running_loop().call_soon(self._flush_out)
            self._flush_due = True
        return True

    def _flush_out(self) -> None:
        """What was put in the outbox since the loop last came here (a commit's answers,
        its acks, its stream messages) goes to the socket now, in one write, from this
        plain callback, which the loop runs right after the step that made it (before the
        sequencer takes its next batch), if nothing of the outbox is on its way through the
        pump (so the order holds) and the socket takes it (its buffer below the high-water
        mark).  Otherwise, and for a control operation, the pump is woken: it waits for the
        socket, and for the broker's answer to a binding.  Handing every batch to the pump
        and from it to the library's writer task (a task each, woken in turn) cost two more
        steps of the loop per batch (docs/performance.md, AMQP section, "answers written
        by a callback")."""
        self._flush_due = False
        link, box = self._link, self._outbox
        if link is None or not box:
            return
        tr, raw = link.transport, link.raw
        if (self._pump_busy or raw.is_closed or tr.is_closing()
                or tr.get_write_buffer_size() >= tr.get_write_buffer_limits()[1]):
            self._wake.set()
            return
        payload = self._frames(link, raw)
        if payload:
            try:
                tr.write(payload)
            except (OSError, RuntimeError) as exc:
                # the socket is failing: the library sees it and the link is re-established;
                # these requests, not acknowledged, are redelivered
                log.warning("AMQP: writing to the broker failed (%s)", exc)
                return
            self.stats["writes_direct"] += 1
        if box:  # a control operation (or more than one write's worth): the pump
            self._wake.set()

    async def _pump(self, link: _Link) -> None:
        """Write what :meth:`_flush_out` leaves of the outbox, in order.  Publishes and acks
        are encoded here (``gateway.amqpframes``: the library's own marshalling cost more
        than anything else the adapter does) and go to the connection's writer task
        together, up to :data:`PUMP_BATCH` in one write, which is waited for (that keeps
        the socket's buffer bounded); bindings and declarations wait for the broker's
        answer, as the order of a subscription's binding and its snapshot requires.
        Nothing here confirms delivery: a request is acked after its reply was written on
        the same channel, so the broker has the reply before it forgets the request."""
        box = self._outbox
        ch = link.raw
        while True:
            if not box:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._pump_busy = True
            try:
                payload = self._frames(link, ch)
                if payload:
                    await self._write(ch, payload)
                    self.stats["writes_queued"] += 1
                elif box:
                    await self._control(link, box.popleft())
            finally:
                self._pump_busy = False

    def _frames(self, link: _Link, ch: RawChannel) -> bytes:
        """The frames of the outbox's publishes and acks, from its head up to its first
        control operation (at most :data:`PUMP_BATCH` operations), taken off it."""
        box = self._outbox
        number = ch.number
        max_content = ch.max_content_size
        publish, ack = amqpframes.publish, amqpframes.ack
        gen = link.gen
        frames: list[bytes] = []
        acks: list[int] = []
        while box and len(frames) + len(acks) < PUMP_BATCH:
            op = box[0]
            if type(op) is _Publish:
                # not mandatory: a broadcast nobody is bound to is simply dropped
                try:
                    frames.append(publish(number, op.exchange, op.routing_key,
                                          op.properties, op.body, max_content))
                except ValueError as exc:  # a name over 255 bytes: this one only
                    self.stats["unsendable"] += 1
                    log.error("AMQP: a message to %.40r cannot be sent (%s); dropped",
                              op.routing_key, exc)
            elif type(op) is _Ack:
                if op.gen == gen:  # an older connection's delivery is redelivered
                    acks.append(op.delivery.delivery_tag)
            else:
                break  # a control operation: what came before it is written first
            box.popleft()
        if acks:
            # after the batch's answers (each request's answer came before its ack);
            # one ack with "multiple" for the requests done below the oldest one
            # still in progress, one each for the others (amqpframes.coalesce_acks)
            upto, single = amqpframes.coalesce_acks(link.unacked, acks)
            if upto is not None:
                frames.append(ack(number, upto, True))
            frames += [ack(number, t) for t in single]
        return b"".join(frames)

    @staticmethod
    async def _write(ch: RawChannel, payload: bytes) -> None:
        """Whole frames to the connection's writer, in the queue the library's own frames
        go through (so they never interleave with another frame of this channel), and
        wait until they are handed to the socket.  Raises if the channel is closed, as
        the library's publish does: the link is then re-established."""
        if ch.is_closed:
            raise ChannelInvalidStateError(f"{ch!r} closed")
        drained = ch.create_future()  # failed by the library if the channel closes
        await ch.write_queue.put(ChannelFrame(payload=payload, should_close=False,
                                              drain_future=drained))
        await drained

    async def _control(self, link: _Link, op: _Op) -> None:
        """A binding change or a queue declaration: waits for the broker's answer."""
        if type(op) is _Bind:
            await self._declare(link, op.user)
            q = await link.channel.get_queue(bcast_queue(op.user), ensure=False)
            if op.on:
                await q.bind(link.broadcast, op.key)
            else:
                await q.unbind(link.broadcast, op.key)
        elif type(op) is _Declare:
            await self._declare(link, op.user)

    def _broadcast(self, key: str, msg: Message | list[Message], stream: str, seq: int | None,
                   persistent: bool, expiration: float | None = None,
                   message_type: str = "") -> None:
        if self._link is None or len(self._outbox) >= self.max_outbox:
            self.stats["dropped"] += len(msg) if isinstance(msg, list) else 1
            return
        props = amqpframes.stream_properties(
            JSON, STREAM_HEADER, stream, SEQ_HEADER, seq,
            PERSISTENT if persistent else TRANSIENT,
            message_type if isinstance(msg, list) else str(msg.get("type", "")), "ronda",
            None if expiration is None else str(int(expiration * 1000)), self.run_id)
        self._enqueue(_Publish(BROADCAST_EXCHANGE, key, orjson.dumps(msg), props))

    def to_private(self, user: str, stream: str, msgs: list[Message]) -> None:
        """Messages of one private stream (``private:<agent>``, in sequence) for one user:
        one AMQP message on ``private.<user>``, whose body is their JSON array, type
        ``batch``, headers the stream and the first message's ``seq`` (each message in
        it carries its own ``seq``, as on the WebSocket).  One publish for what one
        flush of the session holds instead of one per message: the broker's routing and
        delivery are most of the cost of a request here (docs/performance.md)."""
        seq = msgs[0].get("seq")
        self._broadcast(f"private.{user}", msgs, stream, seq if isinstance(seq, int) else None,
                        True, message_type=BATCH_TYPE)

    def to_user(self, user: str, msg: Message) -> None:
        """A message for one user's queue: its private stream (``private.<user>``, a
        batch of one: :meth:`to_private`), or anything else addressed to it alone
        (``user.<user>``)."""
        stream = msg.get("stream")
        if isinstance(stream, str):
            if stream.startswith(PRIVATE_PREFIX):
                self.to_private(user, stream, [msg])
                return
            seq = msg.get("seq")
            self._broadcast(f"user.{user}", msg, stream, seq if isinstance(seq, int) else None,
                            True)
            return
        self._user_seq[user] += 1
        hb = msg.get("type") == "heartbeat"
        self._broadcast(f"user.{user}", msg, f"user:{user}", self._user_seq[user],
                        persistent=not hb,
                        expiration=3 * self.server.config.heartbeat_s if hb else None)

    def to_public(self, msg: Message) -> None:
        stream = str(msg["stream"])
        seq = msg.get("seq")
        self.stats["public:" + stream.partition(":")[0]] += 1
        self._broadcast(routing_key(stream), msg, stream, seq if isinstance(seq, int) else None,
                        persistent=False)

    def _resync(self) -> None:
        """After (re)connecting: tell every session's user where its streams stand and
        send fresh book snapshots, since messages may have been dropped meanwhile."""
        hub = self.server.hub
        for user, s in sorted(self.sessions.items()):
            seqs: list[dict[str, Any]] = []
            for name in self.streams_of(s):
                kind, _, rest = name.partition(":")
                seq: int | None = None
                if kind == "private" and rest != "*":
                    seq = hub.private_seq[rest]
                elif kind == "states":
                    seq = hub.state_seq
                elif kind == "trades":
                    seq = hub.trade_seq[rest]
                elif kind == "book":
                    seq = hub.book(rest).seq
                seqs.append({"stream": name, "seq": seq})
            self.to_user(user, {"type": "resync", "reason": "the gateway (re)connected to "
                                "the broker; messages may have been lost meanwhile",
                                "streams": seqs})
            for name in sorted(s.public):
                if name.startswith("book:"):
                    self.to_user(user, hub.book_snapshot(name[5:]))

    # ------------------------------------------------------------------ requests

    def receive(self, message: Delivery, gen: int) -> None:
        """One request from the broker.  Synchronous up to ``Session.handle`` so that
        requests are handled in the order they arrive."""
        if self._closed:  # stopping: left unacknowledged, the broker requeues it
            return
        self.stats["received"] += 1
        user = message.user_id
        if not user:
            self._answer_now(gen, message, None, _error(
                "user_id", "the AMQP user_id property is required: set it to your broker "
                "user name (the broker checks it)"))
            return
        if CODE_RE.match(user) is None:
            # a broker user that cannot be a platform user (platform ids are at most 64
            # plain characters): refused at once, and only to its reply_to, since a name of
            # up to 255 bytes does not fit in the queue names and message ids made from it
            self._answer_now(gen, message, None, {
                "type": "reject", "code": "LOGIN_FAILED",
                "reason": f"the AMQP user {user[:64]!r}{'...' if len(user) > 64 else ''} "
                          "is not a platform user"})
            return
        cfg = self.server.config
        loop = asyncio.get_running_loop()
        until = self._blocked.get(user)
        if until is not None:
            if loop.time() < until:
                self._answer_now(gen, message, user, _error(
                    "message", "too many malformed messages; wait and slow down",
                    "THROTTLED"))
                return
            del self._blocked[user]
        body = message.body
        if len(body) > cfg.max_message_bytes:
            self._answer_now(gen, message, user, _error(
                "message", f"{len(body)} bytes; at most {cfg.max_message_bytes} per message",
                "TOO_LARGE"))
            return
        ctype = _media_type(message.content_type)
        if ctype not in (JSON, MSGPACK):
            self._answer_now(gen, message, user, _error(
                "content_type", f"must be {JSON} or {MSGPACK}, got {ctype!r}"))
            return
        try:
            data = _decode(body, ctype)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:
            self._answer_now(gen, message, user, _error(
                "message", f"cannot decode: {exc}", "INVALID_ENCODING"))
            return
        if message.redelivered:
            self.stats["redelivered"] += 1
        mid = message.message_id
        key = (user, mid) if mid else None
        digest = b""
        if key is not None:
            assert mid is not None
            if not _is_text(mid):
                self._answer_now(gen, message, user, _error(
                    "message_id", "must be UTF-8 text (it is the request's idempotency key)"))
                return
            digest = request_digest(ctype, body)
            done = self.executed.get(user, mid)
            if done is not None:  # executed already: the same answer again
                if done.digest != digest:
                    self._answer_now(gen, message, user, _reused(mid, data))
                    return
                ans = done.answer
                if ans is None:  # recovered from the journal: answered as it was then
                    ans = self._answer_again(user, data, done.events or [])
                    self.executed.answered(user, mid, ans)
                    first: bytes | None = None
                else:  # the very bytes of the first JSON answer
                    first = done.packed if type(done.packed) is bytes else None
                self.stats["replayed"] += 1
                self._reply(gen, message, user, ans, replayed=True, json_body=first)
                self._enqueue(_Ack(gen, message))
                return
            running = self._inflight.get(key)
            if running is not None:  # still in progress: answer both when done
                if running.digest != digest:
                    self._answer_now(gen, message, user, _reused(mid, data))
                    return
                running.deliveries.append((gen, message))
                return
        if message.redelivered:
            # not answered before (or answered by an earlier server process): process it;
            # the engine refuses a repeated client_order_id (DUPLICATE_CLIENT_ORDER_ID)
            self.stats["redelivered_unknown"] += 1
            log.info("AMQP: redelivered request %s of %s is processed again",
                     message.message_id, user)
        session = self.sessions.get(user)
        if session is None:
            session, refusal = self._open_session(user)
            if session is None:
                self._answer_now(gen, message, user, refusal)
                return
        req = _Request(session, key, [(gen, message)], digest)
        if key is not None:
            self._inflight[key] = req
        self._pending.add(req)
        # msgpack requests carry integer ticks, as on the WebSocket's ronda.msgpack
        session.ticks = ctype == MSGPACK
        token = _CURRENT.set(req)
        try:
            session.handle(data, ctype == JSON)  # JSON's field names are text: no check
        finally:
            _CURRENT.reset(token)
        if not req.answered and not req.pending:  # the session dropped it (closing)
            self.complete(req, {"type": "error", "code": "UNAVAILABLE",
                                "reason": "the session is closing; send the request again"})
        if session._closing:
            self.end_session(session, session._closing)

    def complete(self, req: _Request, msg: Message) -> None:
        """The session answered ``req``: reply to every delivery, then ack them."""
        req.answered = True
        req.answer = msg
        self._pending.discard(req)
        if req.key is not None:
            self._inflight.pop(req.key, None)
        if req.internal:
            return
        if req.command and msg.get("type") == "reject" and msg.get("code") == "UNAVAILABLE":
            # the sequencer is stopping or its journal failed: the command was not
            # executed; leave the request unacknowledged for the broker to redeliver
            log.warning("AMQP: request of %s not executed (%s); left to the broker",
                        req.session.user, msg.get("reason"))
            return
        user = req.session.user
        if req.command and msg.get("type") == "reject" and msg.get("code") == "OUTCOME_UNKNOWN":
            # the journal failed while recording it and the server stops: the sender is
            # told, and the request is left unacknowledged, so that the broker redelivers it
            # to the restarted server, which finds it done (client_order_id) or does it
            log.warning("AMQP: request of %s in doubt (%s); left to the broker", user,
                        msg.get("reason"))
            for gen, delivery in req.deliveries:
                self._reply(gen, delivery, user, msg)
            return
        json_body = None
        if req.key is not None and req.submitted:
            # a command's answer, for a repeat (it must not be executed again); a query's
            # or a subscription's is not kept: a repeat is simply answered again, and
            # keeping every query's answer (orders, trades) let a client fill the memory;
            # nor is the refusal of a command that never reached the sequencer (a bad
            # field, a role it lacks): nothing was executed or journaled under the key,
            # so a restarted server would not know it either, and free refusals must not
            # push the commands executed out of the memory
            json_body = self.executed.put(user or "", (req.key[1], req.digest), msg)
        for gen, delivery in req.deliveries:
            self._reply(gen, delivery, user, msg, json_body=json_body)
            self._enqueue(_Ack(gen, delivery))

    @staticmethod
    def _answer_again(user: str, data: Any, events: list[Any]) -> Message:
        """The answer to a repeat of a command that a previous server process executed:
        built from the events the journal's replay gave the command, as the first answer
        was (the repeat is the same message: its digest matched)."""
        req_id = data.get("req_id") if isinstance(data, dict) else None
        typ = data.get("type") if isinstance(data, dict) else None
        return command_answer(str(typ), req_id, user, events)

    def _answer_now(self, gen: int, message: Delivery, user: str | None,
                    msg: Message) -> None:
        """An answer that needs no session (the request cannot be processed)."""
        if msg.get("type") == "error":
            self.stats["errors"] += 1
        self._reply(gen, message, user, msg)
        self._enqueue(_Ack(gen, message))

    def _reply(self, gen: int, delivery: Delivery, user: str | None,
               msg: Message, replayed: bool = False, json_body: bytes | None = None) -> None:
        """``json_body``: ``msg`` already encoded by orjson (the repeat memory's), if so."""
        try:
            self._send_reply(delivery, user, msg, replayed, json_body)
        except (ValueError, TypeError) as exc:
            # nothing a client sends can make an answer unencodable (receive refuses what
            # could); should it happen, the request is still acknowledged, never left to
            # come back for ever, and the answer is counted as lost
            self.stats["unanswerable"] += 1
            log.error("AMQP: the answer to %s of %s cannot be encoded (%s); dropped",
                      delivery.message_id, user, exc)

    def _send_reply(self, delivery: Delivery, user: str | None, msg: Message,
                    replayed: bool, json_body: bytes | None) -> None:
        self.stats["answers"] += 1
        ctype = _media_type(delivery.content_type)
        if ctype == MSGPACK:  # integer ticks and ms, as the WebSocket's ronda.msgpack
            body = msgpack.packb(to_ticks(msg), use_bin_type=True)
        else:
            ctype = JSON
            body = orjson.dumps(msg) if json_body is None else json_body
        headers: dict[str, Any] = {}
        if replayed:
            headers[REPLAYED_HEADER] = True
        corr = delivery.correlation_id or delivery.message_id
        typ = str(msg.get("type", ""))
        if delivery.reply_to:
            props = amqpframes.properties(
                content_type=ctype, correlation_id=corr, headers=headers,
                message_type=typ, app_id="ronda", delivery_mode=TRANSIENT) if headers \
                else amqpframes.answer_properties(ctype, corr, typ, "ronda", TRANSIENT)
            self._enqueue(_Publish("", delivery.reply_to, body, props))
        elif user is not None:  # no reply_to: the answer goes to the user's own queue
            self._user_seq[user] += 1
            seq = self._user_seq[user]
            props = amqpframes.properties(
                content_type=ctype, correlation_id=corr,
                headers={**headers, STREAM_HEADER: f"user:{user}", SEQ_HEADER: seq},
                message_type=typ, app_id="ronda", delivery_mode=PERSISTENT,
                message_id=f"user:{user}:{seq}{self.run_id}")
            self._enqueue(_Publish(BROADCAST_EXCHANGE, f"user.{user}", body, props))

    # ------------------------------------------------------------------ sessions

    def _internal(self, session: AmqpSession, data: Message) -> Message | None:
        """Handle one of the adapter's own requests on behalf of ``session``."""
        req = _Request(session, None, internal=True)
        token = _CURRENT.set(req)
        try:
            session.handle(data)
        finally:
            _CURRENT.reset(token)
        return req.answer

    def _open_session(self, user: str, streams: list[str] | None = None
                      ) -> tuple[AmqpSession | None, Message]:
        """The session of an AMQP user, logged in as the platform user of the same id.
        A new session subscribes to its agent's private stream; a restored one to what
        it had."""
        session = AmqpSession(self, user)
        ans = self._internal(session, {"type": "login", "user": user})
        if ans is None or ans.get("type") != "ack":
            return None, {"type": "reject", "code": "LOGIN_FAILED",
                          "reason": f"the AMQP user {user!r} is not a platform user"}
        session.login_ack = {k: v for k, v in ans.items() if k not in ("req_id",)}
        self.sessions[user] = session
        self._writers[user] = asyncio.get_running_loop().create_task(
            session.writer(), name=f"amqp-writer-{user}", context=Context())
        self._enqueue(_Declare(user))
        for name in streams if streams is not None else ["private"]:
            self._internal(session, _subscribe_request(name))
        self.save()
        log.info("AMQP: session of %s opened", user)
        return session, ans

    def end_session(self, session: AmqpSession, reason: str) -> None:
        """Logout, or a session closed for misbehaviour: forget its subscriptions."""
        user = session.user or ""
        if self.sessions.get(user) is not session:
            return
        del self.sessions[user]
        for name in sorted(session.public):
            self.set_public(session, name, False)
        hub = self.server.hub
        hub.unsubscribe_all(session)
        self.server.sessions_of[user].discard(session)
        session._closing = session._closing or reason
        w = self._writers.pop(user, None)
        if w is not None:
            w.cancel()
        if reason.startswith("too many"):
            self._blocked[user] = asyncio.get_running_loop().time() + BLOCK_S
        self.save()
        log.info("AMQP: session of %s ended: %s", user, reason)

    def set_public(self, session: AmqpSession, name: str, on: bool) -> None:
        """Bind or unbind the user's queue for a public stream; the feed subscribes to the
        hub while at least one AMQP user wants the stream."""
        user = session.user
        assert user is not None
        users = self._public_users[name]
        if on:
            session.public.add(name)
            if user in users:
                return
            if not users:
                self._follow(name, True)
            users.add(user)
        else:
            session.public.discard(name)
            if user not in users:
                return
            users.discard(user)
            if not users:
                self._follow(name, False)
                del self._public_users[name]
        self._enqueue(_Bind(user, routing_key(name), on))

    def _follow(self, name: str, on: bool) -> None:
        """The feed subscribed to the hub's stream ``name``, or not any more."""
        hub = self.server.hub
        kind, _, contract = name.partition(":")
        if kind in ("book", "trades"):
            hub.follow(kind, contract, self._feed, on)  # a book's mirror made if need be
        elif on:
            hub.state_subs.add(self._feed)
        else:
            hub.state_subs.discard(self._feed)

    def streams_of(self, session: AmqpSession) -> list[str]:
        hub = self.server.hub
        out = sorted(session.public)
        if session in hub.officer_subs:
            out.append("private:*")
        out.extend(f"private:{agent}" for agent, subs in sorted(hub.private_subs.items())
                   if session in subs)
        return out

    def save(self) -> None:
        """Record the sessions and their subscriptions (restored at the next start)."""
        if self._restoring:
            return
        state = {"version": 1, "sessions": {u: self.streams_of(s)
                                            for u, s in sorted(self.sessions.items())}}
        tmp = self._sessions_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(state, indent=1) + "\n")
            os.replace(tmp, self._sessions_file)
        except OSError as exc:
            log.warning("AMQP: cannot record the sessions in %s: %s", self._sessions_file, exc)

    def _restore(self) -> None:
        try:
            state = json.loads(self._sessions_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("AMQP: cannot read %s (%s); no session restored",
                        self._sessions_file, exc)
            return
        sessions = state.get("sessions") if isinstance(state, dict) else None
        if not isinstance(sessions, dict):
            return
        self._restoring = True
        try:
            for user, streams in sorted(sessions.items()):
                if not isinstance(streams, list) or user in self.sessions:
                    continue
                self._open_session(str(user), [str(s) for s in streams])
        finally:
            self._restoring = False
        self.save()
