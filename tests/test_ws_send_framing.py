"""The WebSocket server's own framing of what it sends (gateway/ws.py ``WsTransport._write``)
against the library's, byte for byte.

A server's data frame is its header and the payload unmasked (RFC 6455 §5.1, §5.2); the
transport writes it itself when the library would write exactly that.  The reference is the
``websockets`` library: its ``Frame.serialize`` for one frame, and over real sockets the
same transport with its own framing switched off, whose bytes on the wire must be the
same.  Where the library has something of its own waiting (a ping it queued), that goes
first, as the library would send it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode

from gateway.ws import WsTransport, frame_header

# every length form and both sides of each boundary (7-bit, 16-bit, 64-bit length)
EDGES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@settings(max_examples=300, deadline=None)
@given(binary=st.booleans(),
       n=st.one_of(st.sampled_from(EDGES), st.integers(0, 200_000)))
def test_rfc6455_5_2_header_and_payload_are_the_librarys_frame(binary: bool, n: int) -> None:
    payload = bytes(i % 251 for i in range(n))
    opcode = Opcode.BINARY if binary else Opcode.TEXT
    want = Frame(opcode, payload).serialize(mask=False, extensions=[])
    got = frame_header(0x82 if binary else 0x81, n) + payload
    assert got == want


async def _raw_client(port: int, total: asyncio.Future[int]) -> bytes:
    """Open a WebSocket by hand and read ``total`` bytes after the handshake's answer."""
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    try:
        await loop.sock_sendall(sock, (
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
            assert chunk, "closed during the handshake"
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 101")
        buf = buf[buf.index(b"\r\n\r\n") + 4:]
        n = await asyncio.wait_for(total, 10)
        while len(buf) < n:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
            assert chunk, f"closed after {len(buf)} of {n} bytes"
            buf += chunk
        return buf
    finally:
        sock.close()


async def _wire(msgs: list[dict[str, Any]], own: bool, binary: bool, batched: bool,
                queued_ping: bool) -> tuple[bytes, bool]:
    """The bytes a client receives when the server's transport sends ``msgs`` (with its
    own framing or the library's), and whether the own framing was used."""
    used: list[bool] = []
    done = asyncio.Event()
    total: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        t = WsTransport(ws, binary)
        assert t._own_framing  # this library version: the fast path is available
        t._own_framing = own
        if queued_ping:  # the library's own frame waiting to be written
            ws.protocol.send_ping(b"first")
        p = ws.protocol
        library_frames = [0]  # frames the library's own send path made
        real_text, real_binary = p.send_text, p.send_binary

        def count_text(data: Any, fin: bool = True) -> None:
            library_frames[0] += 1
            real_text(data, fin)

        def count_binary(data: Any, fin: bool = True) -> None:
            library_frames[0] += 1
            real_binary(data, fin)

        p.send_text, p.send_binary = count_text, count_binary  # type: ignore[method-assign]
        sizes = [len(t._encode(m)) for m in msgs]
        total.set_result(sum(n + len(frame_header(0x81, n)) for n in sizes)
                         + (7 if queued_ping else 0))
        if batched:
            await t.send_many(msgs)
        else:
            assert t.send_now(msgs)
        used.append(library_frames[0] == 0)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        try:
            data = await _raw_client(port, total)
        finally:
            done.set()
    return data, used[0]


SIZES = [0, 100, 111, 112, 113, 65_500, 65_600, 150_000]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
@pytest.mark.parametrize("batched", [False, True], ids=["send_now", "send_many"])
@pytest.mark.parametrize("queued_ping", [False, True], ids=["idle", "ping_queued"])
async def test_own_framing_puts_the_same_bytes_on_the_wire_as_the_library(
        binary: bool, batched: bool, queued_ping: bool) -> None:
    # messages whose encodings fall on both sides of 125/126 and 65535/65536 bytes
    msgs = [{"type": "pad", "pad": "x" * k} for k in SIZES]
    mine, used = await _wire(msgs, True, binary, batched, queued_ping)
    lib, _ = await _wire(msgs, False, binary, batched, queued_ping)
    assert mine == lib
    assert used is not queued_ping  # a queued frame of the library's: its path, in order
    if queued_ping:
        assert mine.startswith(b"\x89\x05first")
    # the stream parses back into the messages, in order
    pos = 7 if queued_ping else 0
    got = []
    while pos < len(mine):
        assert mine[pos] == (0x82 if binary else 0x81)
        n = mine[pos + 1]
        pos += 2
        if n == 126:
            n = int.from_bytes(mine[pos:pos + 2], "big")
            pos += 2
        elif n == 127:
            n = int.from_bytes(mine[pos:pos + 8], "big")
            pos += 8
        got.append(mine[pos:pos + n])
        pos += n
    if binary:
        assert [msgpack.unpackb(g) for g in got] == msgs
    else:
        assert [orjson.loads(g) for g in got] == msgs
