"""The WebSocket benchmark's load generator (perf/wsload.py) speaks the protocol right:
checked against the ``websockets`` library's own server, the one ronda's gateway runs on.
A generator that garbled frames would measure errors instead of the server."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from websockets.sync.server import ServerConnection, serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
from wsload import Conn, client_frame, pump


def test_client_frame_matches_the_rfc_6455_masked_example() -> None:
    # RFC 6455 §5.7: "A single-frame masked text message" containing "Hello"
    frame = client_frame(0x1, b"Hello", key=bytes.fromhex("37fa213d"))
    assert frame == bytes.fromhex("818537fa213d7f9f4d5158")


def test_client_frame_length_encodings() -> None:
    # RFC 6455 §5.2: 7-bit length up to 125, then 16-bit (126), then 64-bit (127)
    key = b"\0\0\0\0"  # a zero key leaves the payload as it is
    assert client_frame(0x1, b"x" * 125, key)[:2] == bytes((0x81, 0x80 | 125))
    assert client_frame(0x1, b"x" * 126, key)[:4] == bytes((0x81, 0xFE, 0, 126))
    assert client_frame(0x1, b"x" * 65536, key)[:10] == bytes(
        (0x81, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0))
    assert client_frame(0x1, b"abc", key)[-3:] == b"abc"


def _wait(conn: Conn, got: list[bytes], n: int) -> None:
    deadline = time.monotonic() + 10
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {n} messages arrived"
        pump([conn], left)


def test_messages_of_every_length_encoding_round_trip_through_a_real_server() -> None:
    received: list[str] = []

    def handler(ws: ServerConnection) -> None:
        pong = ws.ping(b"probe")
        ws.send("pong received" if pong.wait(5) else "no pong")
        for msg in ws:
            assert isinstance(msg, str)
            received.append(msg)
            ws.send(msg)

    with serve(handler, "127.0.0.1", 0, max_size=2**20) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        conn = Conn(f"ws://127.0.0.1:{port}/")
        got: list[bytes] = []
        conn.on_text = got.append
        # the server's ping is answered from read(), before anything else is sent
        _wait(conn, got, 1)
        assert got == [b"pong received"]
        sizes = [0, 1, 125, 126, 127, 65535, 65536, 300_000]
        payloads = [(f"{n}:" + "é" * n)[: n or 1].encode() for n in sizes]
        for i, p in enumerate(payloads):
            conn.send_text(p, flush=i % 2 == 0)  # queued and written later, or at once
        _wait(conn, got, 1 + len(payloads))
        assert got[1:] == payloads
        assert received == [p.decode() for p in payloads]
        conn.close()
        server.shutdown()


def test_request_waits_for_the_answer() -> None:
    def handler(ws: ServerConnection) -> None:
        for msg in ws:
            ws.send(msg.upper() if isinstance(msg, str) else msg)

    with serve(handler, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        conn = Conn(f"ws://127.0.0.1:{server.socket.getsockname()[1]}/")
        assert conn.request({"type": "login", "user": "ana"}) == {
            "TYPE": "LOGIN", "USER": "ANA"}
        conn.close()
        server.shutdown()


def test_a_message_that_comes_with_the_handshake_answer_is_delivered() -> None:
    # the server's first frame in the same TCP segment as its 101 answer: the generator
    # must not wait for more data before handing it over
    import base64
    import hashlib
    import socket

    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def server() -> None:
        s, _ = lsock.accept()
        req = b""
        while b"\r\n\r\n" not in req:
            req += s.recv(4096)
        key = next(line.split(b":", 1)[1].strip() for line in req.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                  + bytes((0x81, 5)) + b"hello")
        time.sleep(2)  # nothing more: a generator waiting for more data would time out
        s.close()

    t = threading.Thread(target=server, daemon=True)
    t.start()
    conn = Conn(f"ws://127.0.0.1:{port}/")
    got: list[bytes] = []
    conn.on_text = got.append
    pump([conn], 1.0)
    assert got == [b"hello"]
    conn.close()
    lsock.close()
