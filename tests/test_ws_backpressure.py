"""Inbound back-pressure of a WebSocket connection (issue 4: memory never grows without
bound).

A session counts its requests that are in the sequencer and not yet answered; at
``max_inflight`` its connection stops being read (the socket is paused, and the rest of
what was already read is held unparsed), and reading resumes once half of them are
answered.  A client that sends faster than the sequencer answers is slowed by TCP instead
of filling the server's memory, and nothing it sent is lost or reordered.  The sequencer is
held shut here (its next commit waits on an event, the event loop going on), so that
requests stay in flight as long as the test wants.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsclient import TOKENS, session_of, start_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
from wsload import Conn, client_frame, pump

LIMIT = 4


class Held:
    """The server's sequencer, shut until :meth:`open`: the batch it takes waits before its
    commit (the journal's append runs on the loop's thread and could not wait without
    stopping the loop); the event loop goes on, and what comes meanwhile queues behind."""

    def __init__(self, server: Any) -> None:
        self.gate = asyncio.Event()
        seq = server.sequencer
        real = seq._commit

        async def commit(loop: Any, batch: Any) -> None:
            try:
                await asyncio.wait_for(self.gate.wait(), 20)
            except TimeoutError:
                raise TimeoutError("the test never opened the sequencer") from None
            await real(loop, batch)

        seq._commit = commit

    def open(self) -> None:
        self.gate.set()


def cancel(i: int) -> bytes:
    """A request that goes through the sequencer (the order does not exist: a reject)."""
    return client_frame(0x1, orjson.dumps(
        {"type": "order_cancel", "req_id": f"r{i}", "order_id": 10_000 + i}))


def connect(port: int) -> tuple[Conn, list[dict[str, Any]]]:
    conn = Conn(f"ws://127.0.0.1:{port}/ws")
    got: list[dict[str, Any]] = []
    conn.on_text = lambda raw: got.append(orjson.loads(raw))
    conn.send_text(orjson.dumps({"type": "login", "user": "ana", "token": TOKENS["ana"],
                                 "req_id": "login"}))
    wait_for(conn, lambda: bool(got))
    assert got.pop(0)["type"] == "ack"
    return conn, got


def wait_for(conn: Conn, done: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not done():
        left = end - time.monotonic()
        assert left > 0, "timed out"
        conn.flush()
        pump([conn], min(left, 0.05))


async def until(cond: Any, timeout: float = 10.0) -> None:
    """Wait for the server to reach a state (the event loop runs meanwhile)."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


def answers(got: list[dict[str, Any]]) -> list[str]:
    return [m["req_id"] for m in got if m.get("type") == "reject"]


async def limited_server(tmp: Path) -> Any:
    return await start_server(tmp, heartbeat_s=3600, max_inflight=LIMIT,
                              max_errors_per_10s=1_000_000)


def record_inflight(server: Any, session: Any) -> list[int]:
    """The session's requests in flight at each of its submissions to the sequencer."""
    seen: list[int] = []
    real_submit = server.sequencer.submit_with

    def submit_with(cmd: Any, origin: str, done: Any, key: Any = None) -> None:
        seen.append(session.inflight)
        real_submit(cmd, origin, done, key)

    server.sequencer.submit_with = submit_with
    return seen


async def paused(server: Any, n: int) -> tuple[Held, Conn, list[dict[str, Any]], Any,
                                               list[int]]:
    """The journal shut, a logged-in connection sends ``n`` requests in one write and is
    left paused at the limit with the rest held: (journal, client connection, what it
    received, server session, requests in flight at each submission)."""
    held = Held(server)
    conn, got = await asyncio.get_running_loop().run_in_executor(None, connect, server.port)
    session = session_of(server, "ana")
    seen = record_inflight(server, session)
    conn.sock.sendall(b"".join(cancel(i) for i in range(n)))  # one write: one read, mostly
    await until(lambda: session.inflight == LIMIT and session.transport.ws._held)
    return held, conn, got, session, seen


def run_in_tmp(main: Any, loop_kind: str = "asyncio") -> None:
    """``main(tmp)`` on a fresh event loop of that kind, with a directory of its own (for
    tests that run several servers, or on uvloop)."""
    with tempfile.TemporaryDirectory() as tmp:
        (uvloop.run if loop_kind == "uvloop" else asyncio.run)(main(Path(tmp)))


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    srv = await limited_server(tmp_path)
    try:
        yield srv
    finally:
        await srv.stop()


async def test_at_the_limit_the_connection_is_not_read_and_nothing_is_lost(
        server: Any) -> None:
    loop = asyncio.get_running_loop()
    n = 40
    held, conn, got, session, seen = await paused(server, n)
    ws = session.transport.ws
    await asyncio.sleep(0.2)  # and nothing more is taken meanwhile
    # the limit reached: the socket paused, the rest held unread
    assert session.inflight == LIMIT
    assert seen == list(range(LIMIT))
    assert ws._input_paused and not ws.transport.is_reading()
    assert ws._held  # what was read after the 4th request, not parsed
    assert len(server.sequencer._pending) <= LIMIT
    # the library resumes reading for its own reasons (its flow control of fragmented
    # messages): what then arrives is held too, and reading paused again
    kept = len(ws._held)
    ws.transport.resume_reading()
    more = b"".join(cancel(i) for i in range(n, n + 5))
    conn.sock.sendall(more)
    await until(lambda: len(ws._held) == kept + len(more))
    assert session.inflight == LIMIT and not ws.transport.is_reading()
    n += 5
    held.open()
    await loop.run_in_executor(None, wait_for, conn, lambda: len(answers(got)) >= n)
    # every request answered once, in the order sent, never more than 4 in flight
    assert answers(got) == [f"r{i}" for i in range(n)]
    assert all(m["code"] == "ORDER_UNKNOWN" for m in got if m["type"] == "reject")
    assert len(seen) == n and max(seen) < LIMIT
    assert session.inflight == 0
    assert not ws._input_paused and ws.transport.is_reading() and not ws._held
    conn.close()


@settings(deadline=None, max_examples=12, suppress_health_check=list(HealthCheck))
@given(cuts=st.lists(st.integers(1, 3000), max_size=12), n=st.integers(1, 30),
       opens_after=st.floats(0, 0.05))
def test_requests_cut_anywhere_are_all_answered_in_order_under_the_limit(
        cuts: list[int], n: int, opens_after: float) -> None:
    async def main(tmp: Path) -> None:
        srv = await limited_server(tmp)
        try:
            loop = asyncio.get_running_loop()
            held = Held(srv)
            conn, got = await loop.run_in_executor(None, connect, srv.port)
            seen = record_inflight(srv, session_of(srv, "ana"))
            data = b"".join(cancel(i) for i in range(n))
            points = sorted({c % len(data) for c in cuts} - {0})
            pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)],
                                                strict=True)]

            def send_all() -> None:
                for p in pieces:
                    conn.sock.sendall(p)
                    time.sleep(0.002)

            await loop.run_in_executor(None, send_all)
            await asyncio.sleep(opens_after)
            held.open()
            await loop.run_in_executor(None, wait_for, conn,
                                       lambda: len(answers(got)) >= n)
            assert answers(got) == [f"r{i}" for i in range(n)]
            assert len(seen) == n and max(seen) < LIMIT
            conn.close()
        finally:
            await srv.stop()

    run_in_tmp(main)


async def test_what_was_held_is_handled_before_the_end_of_the_stream(server: Any) -> None:
    """The peer half-closes while its connection is paused: the paused socket is not read,
    so the end of the stream is seen only once reading resumes, after everything held
    was handled, as it would have been without the pause."""
    before = server.sequencer.applied
    n = 20
    held, conn, _, session, _ = await paused(server, n)
    conn.sock.shutdown(socket.SHUT_WR)
    await asyncio.sleep(0.2)
    assert session.inflight == LIMIT  # still paused: neither the rest nor the end read
    held.open()
    for _ in range(100):
        if server.sequencer.applied - before >= n:
            break
        await asyncio.sleep(0.05)
    assert server.sequencer.applied - before == n
    conn.close()


async def test_the_librarys_queue_waits_too(server: Any) -> None:
    """A fragmented request makes the frames after it go through the library's queue and
    the handler task (to keep their order): the handler waits for room as well."""
    loop = asyncio.get_running_loop()
    held = Held(server)
    conn, got = await loop.run_in_executor(None, connect, server.port)
    session = session_of(server, "ana")
    seen = record_inflight(server, session)
    body = orjson.dumps({"type": "order_cancel", "req_id": "frag", "order_id": 1})
    first = bytes([0x01]) + client_frame(0x1, body[:10])[1:]  # a text frame, FIN unset
    rest = client_frame(0x0, body[10:])  # its continuation, FIN set
    n = 200
    conn.sock.sendall(first + rest + b"".join(cancel(i) for i in range(n)))
    await until(lambda: session.inflight == LIMIT)
    await asyncio.sleep(0.2)
    assert session.inflight == LIMIT and max(seen) == LIMIT - 1
    held.open()
    await loop.run_in_executor(None, wait_for, conn, lambda: len(answers(got)) >= n + 1)
    assert answers(got) == ["frag", *(f"r{i}" for i in range(n))]
    assert len(seen) == n + 1 and max(seen) == LIMIT - 1
    conn.close()


@pytest.mark.parametrize("partial", [False, True], ids=["whole", "ending_mid_frame"])
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_what_arrives_while_resuming_comes_after_what_was_held(
        loop_kind: str, partial: bool) -> None:
    """The library resumed reading while input was paused, and the client's next requests
    arrive as the answer that frees room goes out: they are handled after what was held,
    also on uvloop (which runs socket reads before callbacks scheduled meanwhile), and a
    frame cut at the end of them is completed, not spliced."""

    async def main(tmp: Path) -> None:
        srv = await limited_server(tmp)
        try:
            loop = asyncio.get_running_loop()
            n = 10
            held, conn, got, session, _ = await paused(srv, n)
            ws = session.transport.ws
            ws.transport.resume_reading()  # the library's own flow control
            extra = b"".join(cancel(i) for i in range(n, n + 3))
            tail = cancel(n + 3)
            if partial:
                extra += tail[:5]
            real_resume = ws.resume_input

            def resume_input() -> None:
                real_resume()
                conn.sock.sendall(extra)  # arriving right now
                time.sleep(0.05)
                ws.resume_input = real_resume

            ws.resume_input = resume_input
            held.open()
            want = n + 3
            if partial:
                await loop.run_in_executor(None, wait_for, conn,
                                           lambda: len(answers(got)) >= want or conn.closed)
                conn.sock.sendall(tail[5:])
                want += 1
            await loop.run_in_executor(None, wait_for, conn,
                                       lambda: len(answers(got)) >= want)
            assert answers(got) == [f"r{i}" for i in range(want)]
            assert not conn.closed
            conn.close()
        finally:
            await srv.stop()

    run_in_tmp(main, loop_kind)

