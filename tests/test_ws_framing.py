"""The WebSocket server's own framing (gateway/ws.py ``_Connection.data_received``) against
the library's, over real sockets.

The server cuts what arrives into frames itself and hands complete data frames straight to
the session; everything else goes to the ``websockets`` library whole.  The reference is
the library doing all the framing: the same connection class with the fast path switched
off (``_passthrough``), which is how every connection ran before.  Hypothesis writes a
stream in two parts, each cut into random pieces, and both connections get the same
pieces:

* the body: requests as text or binary frames (JSON or msgpack sessions), fragmented or
  not, with 7-, 16- or 64-bit length fields, pings and pongs between fragments.  Oracle:
  every request answered, in order, and a pong for every ping, on both connections;
* optionally an ending, sent once the body is answered: a frame the protocol refuses (bad
  UTF-8, reserved bits, an unmasked frame, a reserved opcode, an oversize frame, a
  continuation over what is left of the message's limit, a control frame too long or
  fragmented, a whole message inside a fragmented one, a bad header alone in its read), a
  close frame with a request behind it, or half a frame and the end of the stream.
  Oracle: the same close code as the library's (none for the cut stream), at once, and
  nothing answered after it.
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

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.speedups import apply_mask
from wsclient import TOKENS, start_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
from wsload import Conn

MAX_FRAME = 2048  # the server's max_frame_bytes here: an oversize frame stays small


def encode(first: int, payload: bytes, masked: bool = True, width: int = 0) -> bytes:
    """One client frame.  ``width`` 16 or 64 writes the length in that many bits even when
    it is small (RFC 6455 asks for the shortest form; the library takes any)."""
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126 and not width:
        head = bytes((first, m | n))
    elif n < 65536 and width != 64:
        head = struct.pack("!BBH", first, m | 126, n)
    else:
        head = struct.pack("!BBQ", first, m | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def request(i: int, binary_session: bool, pad: int = 0) -> bytes:
    """A query_me; JSON may carry ``pad`` spaces (longer frames), msgpack cannot."""
    msg = {"type": "query_me", "req_id": f"r{i}"}
    if binary_session:
        return msgpack.packb(msg)  # type: ignore[no-any-return]
    return orjson.dumps(msg) + b" " * pad


ENDINGS = ["bad_utf8", "rsv", "unmasked", "opcode", "oversize", "continuation_over_limit",
           "long_ping", "fragmented_ping", "message_in_fragments", "header_unmasked_64",
           "header_opcode", "huge_64", "close_then_request", "truncated"]


@st.composite
def streams(draw: Any, binary_session: bool, ending: str | None
            ) -> tuple[list[bytes], int, list[bytes], list[bytes]]:
    """(body frames, requests in them, ping payloads, the ending's frames)."""
    body: list[bytes] = []
    pings: list[bytes] = []
    n = draw(st.integers(1, 6 if ending is None else 2))
    for i in range(n):
        msg = request(i, binary_session, draw(st.sampled_from([0, 0, 100, 300, 1500])))
        # JSON comes as text or binary frames; msgpack only as binary ones
        first_op = 0x2 if binary_session or draw(st.booleans()) else 0x1
        cuts = sorted(set(draw(st.lists(st.integers(1, len(msg) - 1), max_size=3))))
        pieces = [msg[a:b] for a, b in zip([0, *cuts], [*cuts, len(msg)], strict=True)]
        for k, piece in enumerate(pieces):
            op = first_op if k == 0 else 0x0
            fin = 0x80 if k == len(pieces) - 1 else 0
            body.append(encode(fin | op, piece, width=draw(st.sampled_from([0, 0, 16, 64]))))
            if draw(st.booleans()):  # a control frame between fragments or messages
                ctl = draw(st.sampled_from([0x89, 0x8A]))
                payload = draw(st.binary(max_size=20))
                body.append(encode(ctl, payload))
                if ctl == 0x89:
                    pings.append(payload)
    text = 0x81 if not binary_session else 0x82
    last = request(99, binary_session)
    end: list[bytes] = []
    if ending == "bad_utf8":
        end.append(encode(0x81, b'{"type": "query_me", "req_id": "\xff"}'))
    elif ending == "rsv":
        end.append(encode(0xC0 | text & 0x0F, last))
    elif ending == "unmasked":
        end.append(encode(text, last, masked=False))
    elif ending == "opcode":
        end.append(encode(0x83, last))
    elif ending == "oversize":
        end.append(encode(text, b" " * (MAX_FRAME + 1)))
    elif ending == "continuation_over_limit":  # only the continuation's header comes
        end.append(encode(text & 0x0F, b" " * 1500))
        end.append(bytes((0x80, 0xFE)) + struct.pack("!H", 1000))
    elif ending == "long_ping":
        end.append(encode(0x89, b"p" * 126))
    elif ending == "fragmented_ping":
        end.append(encode(0x09, b"ping"))
    elif ending == "message_in_fragments":
        end.append(encode(text & 0x0F, last[:5]))
        end.append(encode(text, last))
    elif ending == "header_unmasked_64":
        end.append(bytes((0x81, 0x7F)))  # the rest of the header never comes
    elif ending == "header_opcode":
        end.append(bytes((0x83, 0xFF)))
    elif ending == "huge_64":  # 4 GiB and 5 bytes announced, 5 sent
        end.append(struct.pack("!BBQ", text, 0xFF, 2**32 + 5) + os.urandom(4) + b"12345")
    elif ending == "close_then_request":
        end.append(encode(0x88, struct.pack("!H", 1000) + b"bye"))
        end.append(encode(text, last))
    elif ending == "truncated":
        end.append(encode(text, last)[:draw(st.integers(1, 10))])
    return body, n, pings, end


def read_server(sock: socket.socket, expected: int, closing: bool, binary_session: bool,
                pongs_expected: int = 0, timeout: float = 5.0
                ) -> tuple[list[Any], list[bytes], int | None]:
    """Answers (type, req_id, user), pong payloads and the close code, until ``expected``
    answers and ``pongs_expected`` pongs came (and, if ``closing``, the close frame or the
    end of the stream)."""
    answers: list[Any] = []
    pongs: list[bytes] = []
    code: int | None = None
    buf = b""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        if (len(answers) >= expected and len(pongs) >= pongs_expected
                and (code is not None or not closing)):
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
            if op in (0x1, 0x2):
                m = msgpack.unpackb(payload) if binary_session else orjson.loads(payload)
                answers.append((m.get("type"), m.get("req_id"), m.get("user")))
            elif op == 0xA:
                pongs.append(payload)
            elif op == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return answers, pongs, code


def login(port: int, subprotocol: str) -> Conn:
    conn = Conn(f"ws://127.0.0.1:{port}/ws", subprotocol)
    conn.sock.setblocking(True)
    binary_session = subprotocol == "ronda.msgpack"
    msg = {"type": "login", "user": "ana", "token": TOKENS["ana"]}
    conn.sock.sendall(encode(0x82, msgpack.packb(msg)) if binary_session
                      else encode(0x81, orjson.dumps(msg)))
    answers, _, _ = read_server(conn.sock, 1, False, binary_session)
    assert answers and answers[0][0] == "ack", answers
    return conn


def cut(data: bytes, points: list[int]) -> list[bytes]:
    ps = sorted({p % (len(data) + 1) for p in points})
    return [c for c in (data[a:b] for a, b in zip([0, *ps], [*ps, len(data)], strict=True))
            if c]


def send(sock: socket.socket, chunks: list[bytes]) -> None:
    for chunk in chunks:
        sock.sendall(chunk)
        time.sleep(0.001)  # separate reads on the server, mostly


@pytest.fixture
async def server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.WARNING)
    srv = await start_server(tmp_path, heartbeat_s=3600, max_frame_bytes=MAX_FRAME,
                             max_errors_per_10s=1_000_000)
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.mark.parametrize("ending", [None, *ENDINGS])
@pytest.mark.parametrize("subprotocol", ["ronda.json", "ronda.msgpack"])
async def test_own_framing_answers_and_closes_as_the_library_would(
        server: Any, monkeypatch: pytest.MonkeyPatch, subprotocol: str, ending: str | None
        ) -> None:
    from gateway.ws import _Connection

    binary_session = subprotocol == "ronda.msgpack"
    loop = asyncio.get_running_loop()
    port = server.port
    handled: list[tuple[str, Any]] = []  # (which path, message) of every message handled
    real_handle = _Connection._handle

    def recording(self: Any, on: Any, msg: Any) -> None:
        handled.append((sys._getframe(1).f_code.co_name, msg))
        real_handle(self, on, msg)

    monkeypatch.setattr(_Connection, "_handle", recording)

    async def connections() -> tuple[Conn, Conn]:
        ref = await loop.run_in_executor(None, login, port, subprotocol)
        (ref_session,) = server.sessions_of["ana"]
        ref_session.transport.ws._passthrough = True  # the library frames everything
        own = await loop.run_in_executor(None, login, port, subprotocol)
        return ref, own

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    @settings(deadline=None, max_examples=40 if ending is None else 6,
              suppress_health_check=list(HealthCheck))
    @given(stream=streams(binary_session, ending),
           cuts=st.lists(st.integers(0, 10_000), max_size=20),
           end_cuts=st.lists(st.integers(0, 10_000), max_size=3))
    def body(stream: Any, cuts: list[int], end_cuts: list[int]) -> None:
        frames, n, pings, ending_frames = stream
        ref, own = run(connections())
        try:
            ends = []
            for conn in (ref, own):
                send(conn.sock, cut(b"".join(frames), cuts))
                answers, pongs, code = read_server(conn.sock, n, False, binary_session,
                                                   len(pings))
                assert answers == [("me", f"r{i}", "ana") for i in range(n)]
                assert pongs == pings and code is None
                if ending is not None:
                    mark = len(handled)
                    send(conn.sock, cut(b"".join(ending_frames), end_cuts))
                    if ending == "truncated":
                        conn.sock.shutdown(socket.SHUT_WR)
                    ends.append(read_server(conn.sock, 0, True, binary_session))
                    # nothing after the refused or closing frame is handled
                    late = [m for _, m in handled[mark:]
                            if (b"r99" if isinstance(m, bytes) else "r99") in m]
                    assert late == [], (ending, late)
            if ending is not None:
                (ref_answers, _, ref_code), (answers, _, code) = ends
                assert ref_answers == answers == []
                assert code == ref_code, (ending, code, ref_code)
                assert (code is None) == (ending == "truncated"), (ending, code)
        finally:
            for conn in (ref, own):
                conn.sock.close()
            run(_gone(server))

    await loop.run_in_executor(None, body)
    # the server's own framing did hand requests over
    assert any(path == "data_received" for path, _ in handled)


async def _gone(server: Any) -> None:
    for _ in range(500):
        if not server.sessions_of.get("ana"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("sessions did not end")
