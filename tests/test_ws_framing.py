"""The WebSocket server's own framing (gateway/ws.py ``_Connection.data_received``) against
the library's, over real sockets.

The server cuts what arrives into frames itself and hands complete data frames straight to
the session; everything else goes to the ``websockets`` library whole.  The reference is
the library doing all the framing: the same connection class with the fast path switched
off (``_passthrough``), which is how every connection ran before.  Hypothesis writes
streams of frames (requests as text or binary frames, fragmented or not, with pings and
pongs between fragments; optionally one last frame the protocol refuses: bad UTF-8,
reserved bits, an unmasked frame, a reserved opcode, an oversize frame, a control frame too
long, or a proper close) and cuts the bytes into random pieces; both connections get the
same pieces.  The oracle: every request answered in order and a pong for every ping, as
the library gives them; and when the stream ends with a frame the protocol refuses, the
same close code as the library's (the answers and pongs before it then a prefix of those:
the library closes as soon as it reads the bad frame, and what was read in the same
segment may go unanswered on either path, depending on how TCP cut the stream).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.speedups import apply_mask
from wsclient import TOKENS, start_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
from wsload import Conn

MAX_FRAME = 2048  # the server's max_frame_bytes here: an oversize frame stays small

Frame = tuple[int, bytes, bool, int]  # (first byte, payload, masked, length to announce)


def encode(first: int, payload: bytes, masked: bool = True, announce: int | None = None
           ) -> bytes:
    """One client frame; ``announce`` overrides the length field (it is the real one
    unless a test wants a lie)."""
    n = len(payload) if announce is None else announce
    if n < 126:
        head = bytes((first, (0x80 if masked else 0) | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def request(i: int) -> bytes:
    return orjson.dumps({"type": "query_me", "req_id": f"r{i}"})


@st.composite
def streams(draw: Any) -> tuple[list[bytes], int, list[bytes], str | None]:
    """Frames as bytes, the number of requests in them, the payloads of the pings, and
    how the stream ends (None: it does not; "truncated": half a frame, then the client's
    end of the stream)."""
    out: list[bytes] = []
    pings: list[bytes] = []
    n = draw(st.integers(1, 6))
    for i in range(n):
        body = request(i) + b" " * draw(st.sampled_from([0, 0, 100, 300]))  # 16-bit lengths
        binary = draw(st.booleans())
        first_op = 0x2 if binary else 0x1
        cuts = sorted(set(draw(st.lists(st.integers(1, len(body) - 1), max_size=3))))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        for k, piece in enumerate(pieces):
            op = first_op if k == 0 else 0x0
            fin = 0x80 if k == len(pieces) - 1 else 0
            out.append(encode(fin | op, piece))
            if draw(st.booleans()):  # a control frame between fragments or messages
                ctl = draw(st.sampled_from([0x89, 0x8A]))
                payload = draw(st.binary(max_size=20))
                out.append(encode(ctl, payload))
                if ctl == 0x89:
                    pings.append(payload)
    ending = draw(st.sampled_from(
        [None, None, "bad_utf8", "rsv", "unmasked", "opcode", "oversize", "long_ping",
         "close", "fragmented_ping", "truncated"]))
    if ending == "bad_utf8":
        out.append(encode(0x81, b'{"type": "query_me", "req_id": "\xff"}'))
    elif ending == "rsv":
        out.append(encode(0xC1, request(99)))
    elif ending == "unmasked":
        out.append(encode(0x81, request(99), masked=False))
    elif ending == "opcode":
        out.append(encode(0x83, request(99)))
    elif ending == "oversize":
        out.append(encode(0x81, b"x" * (MAX_FRAME + 1)))
    elif ending == "long_ping":
        out.append(encode(0x89, b"p" * 126))
    elif ending == "close":
        out.append(encode(0x88, struct.pack("!H", 1000) + b"bye"))
    elif ending == "fragmented_ping":
        out.append(encode(0x09, b"ping"))
    elif ending == "truncated":
        out.append(encode(0x81, request(99))[:draw(st.integers(1, 10))])
    return out, n, pings, ending


def read_server(sock: socket.socket, expected: int, closing: bool, timeout: float = 5.0
                ) -> tuple[list[Any], list[bytes], int | None]:
    """Answers (type, req_id, user), pong payloads and the close code, until every
    request is answered (and, if ``closing``, the close frame came)."""
    answers: list[Any] = []
    pongs: list[bytes] = []
    code: int | None = None
    buf = b""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        if len(answers) >= expected and (code is not None or not closing):
            break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                n, off = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, off = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < off + n:
                break
            op, payload, buf = buf[0] & 0x0F, buf[off:off + n], buf[off + n:]
            if op == 0x1:
                m = orjson.loads(payload)
                answers.append((m.get("type"), m.get("req_id"), m.get("user")))
            elif op == 0xA:
                pongs.append(payload)
            elif op == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return answers, pongs, code


def login(port: int) -> Conn:
    conn = Conn(f"ws://127.0.0.1:{port}/ws", "ronda.json")
    ans = conn.request({"type": "login", "user": "ana", "token": TOKENS["ana"]})
    assert ans["type"] == "ack", ans
    conn.sock.setblocking(True)
    return conn


@pytest.fixture
async def server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.WARNING)
    srv = await start_server(tmp_path, heartbeat_s=3600, max_frame_bytes=MAX_FRAME,
                             max_errors_per_10s=1_000_000)
    try:
        yield srv
    finally:
        await srv.stop()


async def test_own_framing_answers_as_the_library_would(
        server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.ws import _Connection

    loop = asyncio.get_running_loop()
    port = server.port
    fast = [0]  # frames handed to a session by the server's own framing
    real_handle = _Connection._handle

    def counting(self: Any, on: Any, msg: Any) -> None:
        if sys._getframe(1).f_code.co_name == "data_received":
            fast[0] += 1
        real_handle(self, on, msg)

    monkeypatch.setattr(_Connection, "_handle", counting)

    async def connections() -> tuple[Conn, Conn]:
        ref = await loop.run_in_executor(None, login, port)
        (ref_session,) = server.sessions_of["ana"]
        ref_session.transport.ws._passthrough = True  # the library frames everything
        fast = await loop.run_in_executor(None, login, port)
        return ref, fast

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    @settings(deadline=None, max_examples=60, suppress_health_check=list(HealthCheck))
    @given(stream=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=6))
    def body(stream: tuple[list[bytes], int, list[bytes], str | None], cuts: list[int]
             ) -> None:
        frames, n, pings, ending = stream
        closing = ending is not None
        data = b"".join(frames)
        points = sorted({c % (len(data) + 1) for c in cuts})
        chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
        ref, own = run(connections())
        try:
            results = []
            for conn in (ref, own):
                for chunk in chunks:
                    if chunk:
                        conn.sock.sendall(chunk)
                        time.sleep(0.001)  # separate reads on the server, mostly
                if ending == "truncated":
                    conn.sock.shutdown(socket.SHUT_WR)
                results.append(read_server(conn.sock, n, closing))
            (ref_answers, ref_pongs, ref_code), (answers, pongs, code) = results
            expected = [("me", f"r{i}", "ana") for i in range(n)]
            if not closing:
                assert ref_answers == answers == expected
                assert ref_pongs == pongs == pings
                assert ref_code is None and code is None
            else:  # a truncated frame: no close frame, the connection just ends
                assert code == ref_code and (code is None) == (ending == "truncated")
                for got, want in ((answers, expected), (ref_answers, expected),
                                  (pongs, pings), (ref_pongs, pings)):
                    assert got == want[:len(got)], (got, want)
        finally:
            for conn in (ref, own):
                conn.sock.close()
            run(_gone(server))

    await loop.run_in_executor(None, body)
    assert fast[0] > 0  # the server's own framing did hand requests over


async def _gone(server: Any) -> None:
    for _ in range(300):
        if not server.sessions_of.get("ana"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("sessions did not end")
