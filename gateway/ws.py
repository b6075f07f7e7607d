"""The WebSocket transport (websockets on uvloop), and the static files of the web screens.

Subprotocols: ``ronda.json`` (the default, also when none is asked for) and
``ronda.msgpack`` (the same objects as msgpack binary frames).  One port serves both the
WebSocket API (path ``/ws``) and, to plain HTTP requests, the static files of the web
screens (``clients/web``), shipped in the package: nothing is loaded from the internet.

Message size: a message above ``max_message_bytes`` gets an ``error`` naming the limit and
the connection stays open; a frame above ``max_frame_bytes`` is refused by the WebSocket
layer itself (close code 1009), which is what keeps a hostile peer from making the server
buffer without bound.
"""

from __future__ import annotations

import asyncio
import http
import logging
import mimetypes
import ssl
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.speedups import apply_mask

from gateway.inbound import decode_json, decode_msgpack
from gateway.session import Session
from gateway.wire import to_ticks

if TYPE_CHECKING:
    from gateway.server import Server

log = logging.getLogger("ronda.ws")

JSON = "ronda.json"
MSGPACK = "ronda.msgpack"
WEB_ROOT = Path(__file__).resolve().parents[1] / "clients" / "web"

# RFC 6455 §5.2 headers of a server's final, unmasked text (0x81) or binary (0x82) frame
_SHORT_HEADERS = {op: [bytes((op, n)) for n in range(126)] for op in (0x81, 0x82)}
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def frame_header(opcode_byte: int, length: int) -> bytes:
    """The header of a final, unmasked data frame of ``length`` bytes (RFC 6455 §5.2):
    a 7-bit length below 126, else 126 and a 16-bit length, else 127 and a 64-bit one."""
    if length < 126:
        return _SHORT_HEADERS[opcode_byte][length]
    if length < 65536:
        return _HEADER_16.pack(opcode_byte, 126, length)
    return _HEADER_64.pack(opcode_byte, 127, length)


class WsTransport:
    """Messages out of one WebSocket connection.

    :meth:`send_many` writes the messages a session has queued as one write to the socket:
    one frame per message (the protocol is unchanged), framed here when the library would
    frame them exactly so (:meth:`_write`), and one system call instead of one each.  It
    goes through the same
    ``send_context`` as the library's own ``send`` (state checked on entry, outgoing data
    written with flow control on exit: it waits while the socket's buffer is above its
    high-water mark); where that is not there, it sends them one by one.  JSON is encoded
    by orjson straight to UTF-8 bytes and sent as a text frame without a round trip through
    ``str``.

    :meth:`send_now` is the same write without an ``await``, for when nothing would make it
    wait: the session calls it from a plain callback instead of waking its writer task."""

    def __init__(self, ws: ServerConnection, binary: bool) -> None:
        self.ws = ws
        self.binary = binary
        self._batched = all(hasattr(ws, a) for a in ("send_context", "protocol", "transport",
                                                     "send_in_progress", "paused"))
        protocol = getattr(ws, "protocol", None)
        self._own_framing = self._batched and all(
            hasattr(protocol, a)
            for a in ("writes", "extensions", "expect_continuation_frame", "debug", "state"))

    def _encode(self, msg: dict[str, Any]) -> bytes:
        if self.binary:
            return msgpack.packb(to_ticks(msg), use_bin_type=True)  # type: ignore[no-any-return]
        return orjson.dumps(msg)

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(self._encode(msg), text=not self.binary)

    async def send_many(self, msgs: list[dict[str, Any]]) -> None:
        ws = self.ws
        if not self._batched or ws.send_in_progress is not None or len(msgs) == 1:
            for m in msgs:
                await ws.send(self._encode(m), text=not self.binary)
            return
        frames = [self._encode(m) for m in msgs]
        async with ws.send_context():
            self._write(frames)

    def send_now(self, msgs: list[dict[str, Any]]) -> bool:
        """Write ``msgs`` now if no wait could be needed: the connection is open, no
        fragmented message is being sent, and the socket's buffer is below its high-water
        mark (the library's flow control would not wait).  False: nothing was sent, use
        :meth:`send_many`.  What the library's ``send_context`` does on exit is not needed
        here: a close is never expected after data frames of an open connection, and there
        is nothing to drain."""
        ws = self.ws
        if (not self._batched or ws.protocol.state is not State.OPEN
                or ws.send_in_progress is not None or ws.paused
                or ws.transport.is_closing()):
            return False
        self._write([self._encode(m) for m in msgs])
        return True

    def _write(self, frames: list[bytes]) -> None:
        """The frames to the socket in one write.

        Framed here when the library would frame them exactly so: the connection is open,
        no fragmented message is being sent, no extension is negotiated (the server offers
        none: ``compression=None``), the library has nothing of its own waiting to be
        written (it would go first), and its debug log is off (it logs every frame).  A
        server's data frame is then its header and the payload as it is (no mask, RFC 6455
        §5.1), which costs a fraction of a pass through the library's send path.
        Otherwise the frames go into the protocol and its output to the socket."""
        ws = self.ws
        protocol = ws.protocol
        if (self._own_framing and not protocol.writes and not protocol.extensions
                and not protocol.expect_continuation_frame and not protocol.debug
                and protocol.state is State.OPEN):
            op = 0x82 if self.binary else 0x81
            short = _SHORT_HEADERS[op]
            parts: list[bytes] = []
            for f in frames:
                n = len(f)
                parts.append(short[n] if n < 126 else frame_header(op, n))
                parts.append(f)
            ws.transport.write(b"".join(parts))
            return
        put = protocol.send_binary if self.binary else protocol.send_text
        for f in frames:
            put(f)
        chunks = protocol.data_to_send()
        if all(chunks):  # no end-of-stream marker among them: one write
            ws.transport.write(b"".join(chunks))
        else:  # the protocol is closing: the library writes them as it does
            for c in chunks:
                if c:
                    ws.transport.write(c)
                elif ws.transport.can_write_eof():
                    ws.transport.write_eof()
                else:
                    ws.transport.close()

    def pause_input(self) -> None:
        """Stop reading this connection's requests (its session has too many in flight):
        TCP holds the rest, nothing is lost (:meth:`_Connection.pause_input`)."""
        ws = self.ws
        if isinstance(ws, _Connection):
            ws.pause_input()
        else:
            ws.transport.pause_reading()

    def resume_input(self) -> None:
        ws = self.ws
        if isinstance(ws, _Connection):
            ws.resume_input()
        elif not ws.transport.is_closing():
            ws.transport.resume_reading()

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason[:120])

    def abort(self) -> None:
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()


def _cert_user(ws: ServerConnection) -> str | None:
    """The user a verified TLS client certificate names (its subject CN)."""
    transport = getattr(ws, "transport", None)
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class _Connection(ServerConnection):
    """A server connection that reads the frames of its requests itself and hands each
    complete data frame to its session at once: no pass through the library's frame
    parser, message queue and handler task per request.

    **Framing** (:meth:`data_received`, RFC 6455 §5.2): what arrives is cut into frames
    here.  A final, masked text or binary frame, within the library's size limits, while
    no fragmented message is in progress and the handler task has nothing queued, is
    unmasked and handed to the session.  Every other frame (pings, pongs, the close frame,
    fragments, a text frame that is not valid UTF-8) is handed to the library *whole*, in
    its place in the stream, so the library's parser always starts at a frame boundary and
    does everything it does (pongs, closing, 1007 for bad UTF-8, flow control).  An
    incomplete frame waits here for the rest.  A header this code does not accept
    (reserved bits or opcodes, an unmasked frame, a control frame too long or fragmented,
    a length over the limit) gives the library everything from that byte on, for good:
    it closes the connection as the protocol says.  The fast path starts only when the
    library is idle at a frame boundary (checked on its parser; with a library version
    whose internals differ, it never starts and every frame goes the library's way).
    Once started, the library only ever gets whole frames from here, so it stays at a
    boundary between reads; anything that hands it raw bytes ends the fast path for good.

    **Frames the library parsed** (before the fast path starts, or handed to it whole)
    still reach the session from :meth:`process_event` when complete, as before."""

    on_message: Callable[[str | bytes], None] | None = None  # set once the session exists
    failed = False  # handling a message raised: the connection is closing with 1011
    _inbuf: bytearray | None = None  # the start of an incomplete frame (fast path only)
    _need = 0  # how many bytes ``_inbuf`` must hold before it is worth parsing again
    _passthrough = False  # a header not accepted here: the library takes everything
    _framing = False  # the fast path has started (the library is idle at a boundary)
    _input_paused = False  # the session has too many requests in flight: read no more
    _held: bytearray | None = None  # what came in while paused, not yet looked at
    _handler_holding = False  # the handler task holds a message, waiting for room
    _open_event: asyncio.Event | None = None  # set when input resumes (the handler waits)

    def _fast_ready(self) -> bool:
        """The library holds no part of a frame or of a fragmented message: its parser
        waits for the next frame with an empty buffer.  With a library whose internals
        differ from the ones read here, the connection keeps the library's framing."""
        try:
            p = self.protocol
            if (p.state is not State.OPEN or p.reader.buffer
                    or p.current_size is not None):
                return False
            _ = (p.max_message_size, p.max_fragment_size, self.recv_messages.frames.queue)
            g = p.parser  # the innermost of its generators: waiting in ``at_eof``
            while (sub := getattr(g, "gi_yieldfrom", None)) is not None:
                g = sub
            return g.gi_code.co_name == "at_eof"  # type: ignore[attr-defined,no-any-return]
        except AttributeError:
            self._passthrough = True
            return False

    def _give_up(self, data: bytes | bytearray) -> None:
        """A header not accepted here: the library gets everything from it on, for good,
        and says what is wrong (it closes the connection as the protocol says)."""
        self._passthrough = True
        super().data_received(bytes(data))

    def pause_input(self) -> None:
        """Inbound back-pressure: no request of this connection is handled until
        :meth:`resume_input`.  The socket stops being read.  What was already read after
        the request that reached the limit, and anything that still arrives (the library
        may resume reading for its own reasons: reading is then paused again at once), is
        held here unparsed; what the library had already queued waits in its queue, and
        the handler task waits before handling a message it took from there
        (:meth:`wait_input`)."""
        self._input_paused = True
        self.transport.pause_reading()

    def resume_input(self) -> None:
        """Handle what waited, in the order it came (the handler task's message first, then
        what was held; from a callback of its own, not from the answer that freed the
        room), then read the socket again unless that paused it anew."""
        if self._input_paused:
            self._input_paused = False
            if self._open_event is not None:
                self._open_event.set()
            self.loop.call_soon(self._resume_now)

    def _holding(self) -> bool:
        """Input must not be handled now: paused, or something that came earlier is still
        waiting to be handled."""
        return self._input_paused or self._held is not None or self._handler_holding

    def _resume_now(self) -> None:
        if self._input_paused:
            return  # paused again meanwhile
        if self.transport.is_closing():
            self._held = None  # the connection is gone: nothing more can be answered
            return
        if self._handler_holding:  # its message came before what is held (the handler is
            self.loop.call_soon(self._resume_now)  # woken first: this is a guard)
            return
        held, self._held = self._held, None
        if held:
            self.data_received(bytes(held))
        if not self._input_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    async def wait_input(self) -> None:
        """For the handler task, before it handles a message it took from the library's
        queue: wait while input is paused (or until the connection is lost)."""
        while self._input_paused and not self.transport.is_closing():
            ev = self._open_event
            if ev is None:
                ev = self._open_event = asyncio.Event()
            ev.clear()
            self._handler_holding = True
            try:
                await ev.wait()
            finally:
                self._handler_holding = False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._open_event is not None:
            self._open_event.set()  # a handler task waiting for room: it is over

    def data_received(self, data: bytes) -> None:
        if self._passthrough:
            super().data_received(data)
            return
        if self._holding():
            if self._held is None:
                self._held = bytearray(data)
            else:
                self._held += data
            if self._input_paused:
                self.transport.pause_reading()
            return
        buf = self._inbuf
        if buf is not None:  # the library is at a boundary: it got only whole frames
            buf += data
            if len(buf) < self._need:
                return  # the frame is still incomplete: nothing new to parse
            self._inbuf = None
            data = buf  # type: ignore[assignment]
        elif not self._framing:
            if self.on_message is None or not self._fast_ready():
                super().data_received(data)
                return
            self._framing = True
        p = self.protocol
        pos = 0
        n = len(data)
        need = 2
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            op = b0 & 0x0F
            ln = b1 & 0x7F
            # refused from the first two bytes, as the library does: an unmasked frame
            # (§5.1), reserved bits (§5.2), a reserved opcode, a control frame fragmented
            # or longer than 125 bytes (§5.5)
            if (not b1 & 0x80 or b0 & 0x70
                    or (op > 2 and (op < 8 or op > 10 or not b0 & 0x80 or ln > 125))):
                self._give_up(data[pos:])
                return
            head = pos + 2
            if ln == 126:
                if n - pos < 4:
                    need = 4
                    break
                ln = (data[head] << 8) | data[head + 1]
                head += 2
            elif ln == 127:
                if n - pos < 10:
                    need = 10
                    break
                ln = int.from_bytes(data[head:head + 8], "big")
                head += 8
            # the size limits as the library's parser applies them (1009)
            cur = p.current_size
            lim = p.max_message_size
            if lim is not None and cur is not None:
                lim -= cur
            frag = p.max_fragment_size
            if (lim is not None and ln > lim) or (frag is not None and ln > frag):
                self._give_up(data[pos:])
                return
            end = head + 4 + ln
            if end > n:
                need = end - pos  # the rest of this frame is still on its way
                break
            on = self.on_message
            if ((b0 == 0x81 or b0 == 0x82) and on is not None and cur is None
                    and p.state is State.OPEN and not self.recv_messages.frames.queue):
                payload = apply_mask(data[head + 4:end], data[head:head + 4])
                msg: str | bytes | None = payload
                if b0 == 0x81:
                    try:
                        msg = payload.decode()
                    except UnicodeDecodeError:
                        msg = None  # the library closes with 1007
                if msg is not None:
                    pos = end
                    self._handle(on, msg)
                    if self._input_paused:  # that request reached the session's limit
                        if pos < n:
                            self._held = bytearray(data[pos:])
                        return
                    continue
            super().data_received(bytes(data[pos:end]))  # a whole frame, in its place
            pos = end
        if pos < n:
            if self._passthrough or p.state is not State.OPEN:
                self._give_up(data[pos:])  # closing: the library takes the rest
                return
            if isinstance(data, bytearray):  # kept, not copied again
                del data[:pos]
                self._inbuf = data
            else:
                self._inbuf = bytearray(data[pos:])
            self._need = need

    def eof_received(self) -> None:
        # (never while input is paused: a paused socket is not read, so its end is seen
        # only after what was held is handled and reading resumes)
        buf = self._inbuf
        if buf is not None:  # an incomplete frame: the library reports it
            self._inbuf = None
            self._give_up(buf)
        super().eof_received()

    def _handle(self, on: Callable[[str | bytes], None], msg: str | bytes) -> None:
        try:
            on(msg)
        except Exception:  # a defect of ours: nothing more is handled, the connection ends
            log.exception("message handling failed; closing the connection")
            self.on_message = None
            self.failed = True  # the handler task stops reading queued frames too
            self.loop.create_task(self.close(1011, "internal error"))

    def process_event(self, event: Any) -> None:
        on = self.on_message
        if (on is not None and type(event) is Frame and event.fin
                and (event.opcode is Opcode.TEXT or event.opcode is Opcode.BINARY)
                and not self.recv_messages.frames.queue and not self._input_paused
                and not self._handler_holding):
            data: str | bytes
            if event.opcode is Opcode.TEXT:
                try:
                    data = bytes(event.data).decode()
                except UnicodeDecodeError:
                    super().process_event(event)
                    return
            else:
                data = bytes(event.data)
            self._handle(on, data)
            return
        super().process_event(event)


async def _handler(server: Server, ws: ServerConnection) -> None:
    binary = ws.subprotocol == MSGPACK
    session = Session(server, WsTransport(ws, binary), _cert_user(ws),
                      max_queue=server.config.max_queue, ticks=binary,
                      max_behind_s=server.config.max_behind_s,
                      max_inflight=server.config.max_inflight)
    writer = asyncio.get_running_loop().create_task(session.writer())
    session.writer_task = writer
    limit = server.config.max_message_bytes

    def writer_ended(_: asyncio.Task[None]) -> None:
        # the writer closes the connection when it ends normally; if it died instead, the
        # connection must not stay open with nobody answering its requests
        if session._closing is None and ws.protocol.state is State.OPEN:
            asyncio.get_running_loop().create_task(ws.close(1011, "internal error"))

    writer.add_done_callback(writer_ended)

    def on_message(raw: str | bytes) -> None:
        if writer.done():  # the session is over (closed after its last answers)
            return
        size = len(raw)
        if isinstance(raw, str) and size * 4 > limit:
            size = len(raw.encode())  # the limit is in bytes, not characters
        if size > limit:
            session.error("message", f"{size} bytes; at most {limit} per message",
                          code="TOO_LARGE")
            return
        try:
            data = decode_msgpack(raw) if isinstance(raw, bytes) and binary else decode_json(raw)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:
            session.error("message", f"cannot decode: {exc}", code="INVALID_ENCODING")
            return
        # a JSON object's keys are always text; msgpack's may be bytes
        session.handle(data, not (binary and isinstance(raw, bytes)))

    fast = ws if isinstance(ws, _Connection) else None
    try:
        if fast is not None:
            fast.on_message = on_message  # from now on, frames mostly come that way
        async for raw in ws:  # what the library still delivers (see _Connection)
            if fast is not None:
                if fast.failed:
                    break
                if fast._input_paused:  # back-pressure holds the library's queue too
                    await fast.wait_input()
            on_message(raw)
            if writer.done():
                break
    except ConnectionClosed:
        pass
    finally:
        if fast is not None:
            fast.on_message = None
        await session.closed()
        if not writer.done():
            # let queued answers go out briefly, then stop
            session._closing = session._closing or "closed"
            session._wake.set()
            try:
                await asyncio.wait_for(writer, 1.0)
            except (TimeoutError, asyncio.CancelledError):
                writer.cancel()


def _static(root: Path, request: Request) -> Response:
    path = request.path.split("?", 1)[0]
    if path in ("", "/"):
        path = "/index.html"
    target = (root / path.lstrip("/")).resolve()
    if root.resolve() not in target.parents or not target.is_file():
        return Response(404, "Not Found", Headers([("Content-Type", "text/plain")]),
                        b"not found\n")
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript",):
        ctype += "; charset=utf-8"
    body = target.read_bytes()
    return Response(200, "OK", Headers([("Content-Type", ctype),
                                        ("Cache-Control", "no-cache"),
                                        ("Content-Length", str(len(body)))]), body)


async def serve_ws(server: Server) -> Any:
    cfg = server.config
    root = cfg.web_root or WEB_ROOT

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        if request.path.startswith("/ws"):
            return connection.respond(http.HTTPStatus.UPGRADE_REQUIRED,
                                      "WebSocket only\n")
        return _static(root, request)

    ctx = None
    if cfg.tls_cert is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        if cfg.tls_client_ca is not None:
            ctx.load_verify_locations(cfg.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED

    async def handler(ws: ServerConnection) -> None:
        await _handler(server, ws)

    return await serve(
        handler, cfg.host, cfg.port, subprotocols=[JSON, MSGPACK],  # type: ignore[list-item]
        select_subprotocol=lambda conn, offered: next(  # the client's first supported choice
            (p for p in offered if p in (JSON, MSGPACK)), None),
        process_request=process_request, max_size=cfg.max_frame_bytes,
        ping_interval=20, ping_timeout=20, ssl=ctx, compression=None,
        create_connection=_Connection,
    )
