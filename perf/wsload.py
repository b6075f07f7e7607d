"""A lean WebSocket load generator for ``perf/bench_ws.py``: one thread, plain non-blocking
sockets, ``select`` with microsecond timeouts, frames written and parsed by hand.

Why not the ``websockets`` asyncio client the server is built on: measured on the project's
2-core machine at 5,000 requests/s, that client cost about 90 µs of CPU per request and sent
its requests late by 0.3 ms at the median and 1.5–3.5 ms at p99 (the event loop's timers
have a resolution of a millisecond, and answers arrive in bursts that the loop works through
before the next send).  An open-loop benchmark charges that lateness to the server it
measures, and the generator's CPU is taken from the server on a machine they share.  This one
sends within tens of microseconds of the scheduled time and costs a fraction of the CPU, so
that what is measured is the server.

Only what a benchmark client needs: the opening handshake through the library's sans-I/O
:class:`websockets.client.ClientProtocol` (the same code that checks the server's answer in
the library's own client), unfragmented text frames masked with a fresh key (RFC 6455
§5.3), pongs to the server's pings, and the close frame.  Anything else from the server (a
fragmented or binary message, a frame with reserved bits) raises :class:`WsLoadError`.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.speedups import apply_mask
from websockets.typing import Subprotocol
from websockets.uri import parse_uri


class WsLoadError(Exception):
    """The connection did something this generator does not handle."""


def client_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """A final, masked client frame (RFC 6455 §5.2, §5.3), with a fresh random masking key
    unless ``key`` is given."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    if key is None:
        key = os.urandom(4)
    return head + key + apply_mask(payload, key)


class Conn:
    """One client connection.  ``on_text`` receives every text message from the server."""

    def __init__(self, url: str, subprotocol: str | None = None, timeout: float = 10.0
                 ) -> None:
        uri = parse_uri(url)
        self.sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        proto = ClientProtocol(
            uri, subprotocols=[Subprotocol(subprotocol)] if subprotocol else None)
        proto.send_request(proto.connect())
        self.sock.sendall(b"".join(proto.data_to_send()))
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WsLoadError("the server closed the connection during the handshake")
            raw += chunk
        end = raw.index(b"\r\n\r\n") + 4
        proto.receive_data(raw[:end])
        events = proto.events_received()
        if proto.handshake_exc is not None:
            raise WsLoadError(f"handshake refused: {proto.handshake_exc}")
        if not events or not isinstance(events[0], Response):
            raise WsLoadError("no handshake response")
        self.sock.setblocking(False)
        self.inbuf = bytearray(raw[end:])  # frames sent right after the handshake
        self.unparsed = bool(self.inbuf)  # to be parsed once ``on_text`` is set
        self.out = bytearray()
        self.closed = False
        self.close_reason: str | None = None  # the server's close code and reason
        self.on_text: Callable[[bytes], None] = lambda data: None

    def fileno(self) -> int:
        return self.sock.fileno()

    # ------------------------------------------------------------------ out

    def send_text(self, payload: bytes, flush: bool = True) -> None:
        """Queue a text message and write what the socket takes now (``flush``), or leave
        it queued for one write with the messages that follow."""
        self.out += client_frame(0x1, payload)
        if flush:
            self.flush()

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        try:
            n = self.sock.send(out)
        except BlockingIOError:
            return
        del out[:n]

    # ------------------------------------------------------------------ in

    def read(self) -> None:
        """Read what the socket has and hand every complete message to ``on_text``."""
        try:
            data = self.sock.recv(262144)
        except BlockingIOError:
            return
        if not data:
            self.closed = True
            if self.close_reason is None:
                self.close_reason = "the socket ended without a close frame"
            return
        self.inbuf += data
        self.parse()

    def parse(self) -> None:
        """Hand every complete message in the input buffer to ``on_text``."""
        self.unparsed = False
        buf = self.inbuf
        pos = 0
        end = len(buf)
        on_text = self.on_text
        while end - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1]
            if n & 0x80:
                raise WsLoadError("a masked frame from the server (RFC 6455 §5.1)")
            off = pos + 2
            if n == 126:
                if end - pos < 4:
                    break
                n = int.from_bytes(buf[off:off + 2], "big")
                off += 2
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[off:off + 8], "big")
                off += 8
            if end - off < n:
                break
            payload = bytes(buf[off:off + n])
            pos = off + n
            if b0 == 0x81:
                on_text(payload)
            elif b0 == 0x89:  # ping: answer with the same payload
                self.out += client_frame(0xA, payload)
                self.flush()
            elif b0 == 0x8A:  # pong
                pass
            elif b0 == 0x88:  # close: echo it and stop
                self.out += client_frame(0x8, payload[:2])
                self.flush()
                self.closed = True
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.close_reason = f"{code} {payload[2:].decode(errors='replace')}"
            else:
                raise WsLoadError(f"unexpected frame: first byte {b0:#04x}")
        del buf[:pos]

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message and wait (blocking) for the next message from the server."""
        got: list[bytes] = []
        prev = self.on_text
        self.on_text = got.append
        try:
            if self.unparsed:
                self.parse()
            self.send_text(orjson.dumps(message))
            deadline = time.monotonic() + 10
            while not got:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise WsLoadError(f"no answer to {message.get('type')}")
                select.select([self], [self] if self.out else [], [], left)
                self.flush()
                self.read()
        finally:
            self.on_text = prev
        ans: dict[str, Any] = orjson.loads(got[0])
        return ans

    def close(self) -> None:
        """Send a close frame (1000) and close the socket without waiting for the echo."""
        try:
            self.sock.setblocking(True)
            self.sock.sendall(bytes(self.out) + client_frame(0x8, (1000).to_bytes(2, "big")))
        except OSError:
            pass
        self.sock.close()


def pump(conns: list[Conn], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for any connection to be readable (or writable, with
    output pending), and serve what is ready."""
    for c in conns:
        if c.unparsed:  # what came with the handshake's answer
            c.parse()
    wr = [c for c in conns if c.out]
    r, w, _ = select.select(conns, wr, [], timeout)
    for c in w:
        c.flush()
    for c in r:
        c.read()
