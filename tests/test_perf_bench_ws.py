"""The WebSocket benchmark's own machinery (perf/bench_ws.py, perf/hiccup.py): a long open
loop keeps the other server's connections alive, a long phase's p99 is given per window, and
the control process that measures the machine's own stalls sees a stall when there is one.
A benchmark that broke its idle connections, mixed its windows up or missed a stall would
misreport the server."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
from websockets.sync.server import ServerConnection, serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
from bench_ws import Load, open_loop, p99_by_window, percentile
from hiccup import HiccupMeter, summary
from wsload import Conn, pump


def _ack(ws: ServerConnection) -> None:
    for msg in ws:
        req = orjson.loads(msg)
        ws.send(orjson.dumps({"type": "ack", "req_id": req["req_id"]}).decode())


@contextlib.contextmanager
def _two_loads() -> Iterator[tuple[Load, Load]]:
    """Two connections to a server that pings every 0.1 s and closes a connection whose pong
    is 0.2 s late: one to load, one left idle (the other side's)."""
    with serve(_ack, "127.0.0.1", 0, ping_interval=0.1, ping_timeout=0.2,
               compression=None) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        busy, idle = Load(Conn(url), "X", True), Load(Conn(url), "X", True)
        try:
            yield busy, idle
        finally:
            busy.conn.close()
            idle.conn.close()
            server.shutdown()


def test_the_open_loop_answers_the_idle_sides_pings() -> None:
    # the open loop runs 0.8 s on one connection, four ping timeouts, while another is idle
    with _two_loads() as (busy, idle):
        elapsed, late = open_loop([busy], 250, 200, [idle.conn])
        assert elapsed >= 0.79 and len(late) == 200 and busy.answers == 200
        # the idle connection is still open and still answers
        idle.send(time.perf_counter())
        deadline = time.monotonic() + 10
        while idle.answers < 1 and not idle.conn.closed and time.monotonic() < deadline:
            pump([idle.conn], 0.05)
        assert not idle.conn.closed, idle.conn.close_reason
        assert idle.answers == 1


def test_an_idle_connection_left_unserved_is_closed_by_the_server() -> None:
    # the reason for the above: the same phase without serving it loses the connection
    with _two_loads() as (busy, idle):
        open_loop([busy], 250, 200)
        deadline = time.monotonic() + 10
        while not idle.conn.closed and time.monotonic() < deadline:
            pump([idle.conn], 0.05)
        assert idle.conn.closed and idle.conn.close_reason is not None
        assert idle.conn.close_reason.startswith("1011")  # keepalive ping timeout


def test_p99_by_window_groups_by_scheduled_time_from_the_first_send() -> None:
    # scheduled 0.0-0.99 s: latencies 1..100; 1.0-1.99 s: 1001..1100; in shuffled order
    first = [(10.0 + i / 100, i + 1) for i in range(100)]
    second = [(11.0 + i / 100, 1001 + i) for i in range(100)]
    samples = [s for pair in zip(second, first, strict=True) for s in pair]
    assert p99_by_window(samples, 1.0) == [100, 1100]
    # the reference: each window's p99 as the benchmark computes any p99
    assert p99_by_window(samples, 1.0) == [percentile(sorted(v for _, v in first), 99),
                                           percentile(sorted(v for _, v in second), 99)]
    assert p99_by_window(samples, 10.0) == [percentile(sorted(v for _, v in samples), 99)]
    assert p99_by_window([], 1.0) == []


def test_hiccup_summary_against_a_sorted_reference() -> None:
    values = [(i * 7919) % 10_007 for i in range(10_007)]  # 0..10006, shuffled
    s = summary(values)
    assert s == {"n": 10_007, "p50_us": 5003, "p99_us": 9906, "p999_us": 9996,
                 "max_us": 10_006, "over_1ms": 9006, "over_5ms": 5006}
    assert summary([])["n"] == 0


def test_the_hiccup_meter_sees_a_stall_of_its_process() -> None:
    meter = HiccupMeter()
    time.sleep(0.3)  # it started and took its first sleeps
    os.kill(meter.proc.pid, signal.SIGSTOP)  # the machine stops it for 150 ms
    time.sleep(0.15)
    os.kill(meter.proc.pid, signal.SIGCONT)
    time.sleep(0.1)
    got = meter.stop()
    assert got["n"] > 10
    assert got["max_us"] >= 100_000
    assert got["over_5ms"] >= 1
    assert meter.proc.returncode == 0
