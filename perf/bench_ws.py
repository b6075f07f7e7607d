"""WebSocket benchmark: open-loop order load against ``ronda serve``, and a raw echo baseline.

* The server runs as a separate process (``ronda serve``, journal fsynced per batch, risk on),
  the load generator in this one; both share the machine, as the target says.
* **Open loop**: every request has a scheduled send time (rate R, request k at start + k/R
  on connection k mod C); its latency is measured from the *scheduled* time to the answer,
  so a stalled server is charged for the requests it delayed (no coordinated omission).
  Percentiles come from an HDR histogram (µs resolution, 3 significant digits).
* **The load generator** (``perf/wsload.py``) is one thread on plain sockets with
  microsecond timeouts, not an asyncio client: it sends within tens of microseconds of the
  scheduled time and costs the machine little CPU.  Its thread's timer slack is set to 1 µs
  (``hiccup.fine_timer_slack``): Linux lets a timed wait overrun by 50 µs by default, which
  every send was, late.  ``send_late_p99_us`` reports how late it sent, its own share of the
  latencies.  While one side's open loop runs, the other side's connections are served
  (their pings answered), so a phase may last longer than the servers' ping timeout.
* **The machine's own stalls** (``host_hiccup``, per open-loop phase): an idle process of
  its own (``perf/hiccup.py``) sleeps a millisecond at a time and records how late it woke.
  A server's tail that its stalls match is the machine's, not the server's.  A phase of
  20 s or more also gives its p99 per 10 s window (``p99_windows_us``).
* The flow: orders that rest (no crossing, risk checks in full) and cancels of acknowledged
  ones, so the book stays at a stationary size.
* **Baseline, same run**: a raw echo server on the same stack (websockets + uvloop, JSON
  decode and encode of each message) at the same rate, and both at saturation (a fixed number
  of requests in flight per connection) for the throughput ratio: in alternating windows
  (ronda, echo, echo, ronda, three times by default), so that a change of the machine's
  load weighs on both; ``throughput_ratio_rounds`` is the ratio of each round, its spread.
* **CPU per request** of the server (ronda or echo, with the processes it started: ronda's
  helper that syncs large batches), of the server's event-loop thread (the single writer's,
  which bounds its throughput) and of this load generator in each phase (this process
  alone, not the servers it started), from /proc: steadier than wall-clock figures on a
  shared machine.  ``server_cpu_ratio`` is
  the throughput ratio the servers' CPU cost alone implies (echo / ronda).
* **The disk's floor** (``disk_fdatasync``): before the load, the journal's directory gets
  a record-sized write over preallocated zeros (as the journal writes) and an
  ``fdatasync`` every millisecond for a second.  An answer waits for its batch's sync, so no
  durable server's p99 can be below this one's p99.

Last line: one JSON object.

    python perf/bench_ws.py [--rate 5000] [--seconds 10] [--connections 4] [--inflight 32]
                            [--rounds 3] [--window 1.0] [--server-arg ARG]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hiccup import HiccupMeter, fine_timer_slack
from procstat import CpuMeter
from wsload import Conn, pump

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CONTRACT = "PH-20991231-12"
DRAIN_S = 30.0  # how long to wait for the last answers of the open loop
ECHO_SERVER = """
import asyncio, sys, orjson, uvloop
from websockets.asyncio.server import serve
async def echo(ws):
    async for m in ws:
        d = orjson.loads(m)
        await ws.send(orjson.dumps({"type": "ack", "req_id": d.get("req_id")}).decode())
async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), compression=None):
        print("ready", flush=True)
        await asyncio.Future()
uvloop.run(main())
"""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: the sockets are held open together while they are chosen
    (one at a time, the kernel may give the port of a server not yet listening twice; the
    echo then took ronda's port and the benchmark measured the echo against itself)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def bench_refdata(path: Path, users: int) -> None:
    """Traders with ample guarantees, energy and request limits: every order is checked
    in full and accepted."""
    lines = ['[rate_limits]', 'rules = [{ window_ms = 1000, max = 1000000 }]', '']
    lines += ['[[agents]]', 'code = "OMIE"', 'name = "operator"',
              'registered_from = 2020-01-01', 'products = []', '',
              '[[users]]', 'id = "op"', 'agent = "OMIE"', 'roles = ["market_operator"]',
              f'token_sha256 = "{_sha("op")}"', '']
    for i in range(users):
        lines += [
            '[[agents]]', f'code = "B{i}"', f'name = "bench {i}"',
            'registered_from = 2020-01-01', 'guarantees = "900000000000.00"',
            'tax = { electricity_tax = "5.11269632", vat = "21" }', '',
            '[[users]]', f'id = "u{i}"', f'agent = "B{i}"', 'roles = ["trader"]',
            f'token_sha256 = "{_sha(f"u{i}")}"', '',
            '[[units]]', f'code = "U{i}"', 'kind = "buy"', 'area = "ES"',
            'max_energy = "99999999.0"', f'responsible = "B{i}"',
            f'owners = [{{ agent = "B{i}", share = "100" }}]', 'valid_from = 2020-01-01', '']
    path.write_text("\n".join(lines))


def _sha(s: str) -> str:
    import hashlib

    return hashlib.sha256(s.encode()).hexdigest()


async def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited: {err}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("server did not start")


async def login(url: str, user: str) -> ClientConnection:
    ws = await connect(url, subprotocols=["ronda.json"], compression=None, max_size=2**24)  # type: ignore[list-item]
    await ws.send(orjson.dumps({"type": "login", "req_id": "l", "user": user,
                                "token": user}).decode())
    ans = orjson.loads(await ws.recv())
    if ans.get("type") != "ack":
        raise RuntimeError(f"login failed: {ans}")
    return ws


async def open_bench_contract(url: str) -> None:
    """The operator creates and opens the benchmark's contract."""
    op = await login(url, "op")
    for m in ({"type": "contract_create", "req_id": "c", "contract": CONTRACT,
               "close_at": "2099-12-31T09:00:00Z"},
              {"type": "contract_open", "req_id": "o", "contracts": [CONTRACT]}):
        await op.send(json.dumps(m))
        ans = orjson.loads(await op.recv())
        if ans["type"] != "ack":
            raise RuntimeError(f"setup failed: {ans}")
    await op.close()


class Load:
    """One connection's share of the load: entries that rest, then cancels of them."""

    def __init__(self, conn: Conn, unit: str, echo: bool) -> None:
        self.conn = conn
        conn.on_text = self.on_text
        self.unit = unit
        self.echo = echo
        self.sched: dict[str, float] = {}  # req_id -> scheduled send time
        self.lat = array("q")  # µs from the scheduled time to the answer
        self.lat_sched = array("d")  # the scheduled time of each of ``lat``
        self.acked: list[int] = []
        self.answers = 0
        self.rejects = 0
        self.next = 0  # the next request's number on this connection

    def request(self, i: int) -> dict[str, Any]:
        rid = str(i)
        if self.echo or i % 2 == 0 or not self.acked:
            price = f"{40 + (i % 500) / 100:.2f}"
            return {"type": "order_entry", "req_id": rid, "contract": CONTRACT,
                    "unit": self.unit, "side": "BUY", "price": price, "quantity": "1.0"}
        return {"type": "order_cancel", "req_id": rid, "order_id": self.acked.pop()}

    def send(self, t: float, flush: bool = True) -> None:
        """Send the next request, scheduled at ``t`` (perf_counter seconds)."""
        i = self.next
        self.next = i + 1
        self.sched[str(i)] = t
        self.conn.send_text(orjson.dumps(self.request(i)), flush)

    def on_text(self, raw: bytes) -> None:
        """The first message that carries a pending request's id is its answer."""
        m = orjson.loads(raw)
        rid = m.get("req_id")
        t0 = self.sched.pop(rid, None) if rid is not None else None
        if t0 is None:
            return
        self.lat.append(max(1, int((time.perf_counter() - t0) * 1e6)))
        self.lat_sched.append(t0)
        self.answers += 1
        if m["type"] == "ack":
            if m.get("kind") == "order_entry" and m.get("order_ids"):
                self.acked.append(m["order_ids"][0])
        else:
            self.rejects += 1


def open_loop(loads: list[Load], rate: float, n: int, idle: list[Conn] | None = None
              ) -> tuple[float, array[int]]:
    """Send ``n`` requests at ``rate`` per second in all, request k on connection
    k mod C at its scheduled time start + k/rate, and wait for every answer.  Returns the
    time from the first scheduled send to the last answer, and each send's lateness (µs
    after its scheduled time: the generator's own share of the latencies).  The ``idle``
    connections (the other server's) are served meanwhile: their pings answered, or that
    server closes them when the phase is longer than its ping timeout (20 s)."""
    clock = time.perf_counter
    conns = [ld.conn for ld in loads] + (idle or [])
    c = len(loads)
    late = array("q")
    start = clock() + 0.2
    step = 1.0 / rate
    k = 0
    deadline = start + n * step + DRAIN_S
    due = sum(ld.answers for ld in loads) + n
    while True:
        now = clock()
        while k < n and start + k * step <= now:
            t = start + k * step
            loads[k % c].send(t)
            late.append(int((clock() - t) * 1e6))
            k += 1
        if k == n:
            if sum(ld.answers for ld in loads) >= due:
                break
            if now > deadline:
                raise RuntimeError(f"{due - sum(ld.answers for ld in loads)} requests not"
                                   f" answered {DRAIN_S} s after the last was sent")
            timeout = deadline - now
        else:
            timeout = start + k * step - clock()
        pump(conns, max(0.0, timeout))
        if any(cn.closed for cn in conns):
            raise RuntimeError("the server closed a connection during the load: "
                               + "; ".join(str(cn.close_reason) for cn in conns if cn.closed)
                               + f" (at {rate:.0f}/s)")
    return clock() - start, late


def closed_loop(loads: list[Load], inflight: int, seconds: float) -> int:
    """Keep ``inflight`` requests outstanding on every connection for ``seconds``; return
    the answers received."""
    clock = time.perf_counter
    conns = [ld.conn for ld in loads]
    for ld in loads:
        ld.next = max(ld.next, 10_000_000)
    before = sum(ld.answers for ld in loads)
    end = clock() + seconds
    while True:
        now = clock()
        if now >= end:
            break
        for ld in loads:
            if len(ld.sched) < inflight:
                while len(ld.sched) < inflight:
                    ld.send(now, flush=False)
                ld.conn.flush()
        pump(conns, end - now)
    return sum(ld.answers for ld in loads) - before


def drain(loads: list[Load], seconds: float) -> None:
    """Serve the connections for ``seconds`` (late answers, pings) and close them."""
    conns = [ld.conn for ld in loads]
    end = time.perf_counter() + seconds
    while (left := end - time.perf_counter()) > 0:
        pump(conns, left)
    for cn in conns:
        cn.close()


def fsync_floor(directory: Path, n: int = 1000) -> dict[str, int]:
    """The disk's own latency for what the journal does per batch: a record-sized write over
    preallocated zeros and its ``fdatasync``, one every millisecond, nothing else running.
    An answer waits for its batch's sync (DESIGN rule 7: durable before acknowledged), so
    this is a floor under the latencies of any server that acknowledges only durable
    requests."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    lat: list[int] = []
    try:
        # as the journal does (gateway/journal.py, Preallocation): zeros written and synced
        # first, the records then written over them, so that a sync flushes data alone
        os.write(fd, bytes(300 * n))
        os.fsync(fd)
        for i in range(n):
            os.pwrite(fd, b"x" * 300, 300 * i)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(int((time.perf_counter() - t) * 1e6))
            time.sleep(0.001)
    finally:
        os.close(fd)
        path.unlink()
    lat.sort()
    return {"p50_us": percentile(lat, 50), "p99_us": percentile(lat, 99),
            "max_us": lat[-1]}


def ws_login(url: str, user: str) -> Conn:
    conn = Conn(url, "ronda.json")
    ans = conn.request({"type": "login", "req_id": "l", "user": user, "token": user})
    if ans.get("type") != "ack":
        raise RuntimeError(f"login failed: {ans}")
    return conn


def percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


def connect_loads(url: str, users: list[str], echo: bool) -> list[Load]:
    """One logged-in connection per user (the echo needs no login)."""
    conns = [ws_login(url, u) if not echo else Conn(url) for u in users]
    return [Load(cn, f"U{u[1:]}" if not echo else "X", echo)
            for cn, u in zip(conns, users, strict=True)]


@contextlib.contextmanager
def no_collections() -> Iterator[None]:
    """The generator's own collections off while it measures (they would be charged to
    the server), after one collection of what is there."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


WINDOW_S = 10.0  # the p99 of each such window of a phase of twice that or more


def p99_by_window(samples: list[tuple[float, int]], window_s: float) -> list[int]:
    """The p99 of the latencies (µs) of each ``window_s`` of scheduled time, from the first
    scheduled send: ``samples`` are (scheduled time, latency) pairs in any order."""
    if not samples:
        return []
    first = min(t for t, _ in samples)
    windows: dict[int, list[int]] = {}
    for t, v in samples:
        windows.setdefault(int((t - first) // window_s), []).append(v)
    return [percentile(sorted(windows[w]), 99) for w in sorted(windows)]


def open_phase(loads: list[Load], rate: float, seconds: float, server_pid: int,
               idle: list[Load]) -> dict[str, Any]:
    """The open loop at ``rate`` for ``seconds``: latencies and CPU per request (the
    ``idle`` side's connections served meanwhile: :func:`open_loop`)."""
    n = int(rate * seconds) // len(loads) * len(loads)
    # the server's event loop runs in its main thread, whose id is the process id
    cpu = CpuMeter({"server": server_pid, "server_loop_thread": (server_pid, server_pid),
                    "client": (os.getpid(), None)})
    meter = HiccupMeter()
    with no_collections():
        c0 = cpu.snapshot()
        elapsed, late = open_loop(loads, rate, n, [ld.conn for ld in idle])
        open_cpu = cpu.since(c0)
    hiccups = meter.stop()
    hist = HdrHistogram(1, 60_000_000, 3)
    m = n // len(loads)
    for ld in loads:
        for v in ld.lat[:m]:
            hist.record_value(v)
    lateness = sorted(late)
    # a long phase's p99 is also given window by window: how it moves with the machine
    p99_windows = (p99_by_window([(t, v) for ld in loads
                                  for t, v in zip(ld.lat_sched[:m], ld.lat[:m], strict=True)],
                                 WINDOW_S)
                   if seconds >= 2 * WINDOW_S else None)
    return {
        "achieved_rate": round(n / elapsed),
        "p50_us": hist.get_value_at_percentile(50),
        "p99_us": hist.get_value_at_percentile(99),
        "p999_us": hist.get_value_at_percentile(99.9),
        "max_us": hist.get_max_value(),
        "p99_windows_us": p99_windows,
        "rejects": sum(ld.rejects for ld in loads),
        # how late the generator sent (µs after the scheduled time): its own part of the
        # latencies above
        "send_late_p50_us": percentile(lateness, 50),
        "send_late_p99_us": percentile(lateness, 99),
        # CPU per request (µs) of the server and of this load generator, from /proc
        "cpu_us_per_request": {k: round(v * 1e6 / n) for k, v in open_cpu.items()},
        # the machine's own stalls meanwhile: how late an idle process's 1 ms sleeps woke
        # (perf/hiccup.py)
        "host_hiccup": hiccups,
    }


SUSTAIN_ACHIEVED = 0.99  # a server keeping up answers a trial at this share of its rate


def trial(loads: list[Load], rate: float, seconds: float) -> dict[str, Any]:
    """One open-loop trial at ``rate`` for ``seconds``: did the server keep up?  It kept up
    when it answered the trial's requests at :data:`SUSTAIN_ACHIEVED` of the offered rate
    or more, from the first scheduled send to the last answer.  A server that falls behind
    by a share x of the rate ends the trial with x × rate × seconds requests queued, which
    it answers after the last send: over 3 s, 1 % behind costs about 1 % of the achieved
    rate (and a last answer 30 ms late costs 1 % too: the criterion is that coarse).  The
    latencies of the trial are reported, not judged: a server may keep up with a long
    queue."""
    n = max(len(loads), int(rate * seconds) // len(loads) * len(loads))
    marks = [len(ld.lat) for ld in loads]
    with no_collections():
        elapsed, late = open_loop(loads, rate, n)
    lat = sorted(v for ld, m in zip(loads, marks, strict=True) for v in ld.lat[m:])
    achieved = n / elapsed
    p50 = percentile(lat, 50)
    late_sorted = sorted(late)
    return {"rate": round(rate), "achieved": round(achieved), "p50_us": p50,
            "p99_us": percentile(lat, 99),
            "send_late_p50_us": percentile(late_sorted, 50),
            "kept_up": achieved >= SUSTAIN_ACHIEVED * rate}


def sustained(sides: list[list[Load]], first: float, factor: float, top: float,
              seconds: float, steps: int) -> list[dict[str, Any]]:
    """The highest open-loop rate each side keeps up with (:func:`trial`, a failure tried
    twice): rates from ``first`` up by ``factor`` (at most ``top``), the sides alternating
    at each rate, until a side falls behind; then ``steps`` halvings of the interval
    between its last rate kept up and its first one not (the sides still alternating).
    Per side: that rate and every trial."""
    trials: list[list[dict[str, Any]]] = [[], []]

    def kept_up(k: int, rate: float) -> bool:
        """A trial at ``rate``; a failed one is tried again (a moment of the machine's
        noise must not end the search): the rate is kept up if either trial keeps up."""
        for _ in range(2):
            t = trial(sides[k], rate, seconds)
            trials[k].append(t)
            settle(sides[k])
            if t["kept_up"]:
                return True
        return False

    lo = [0.0, 0.0]
    hi: list[float | None] = [None, None]
    rate = first
    while rate <= top and any(h is None for h in hi):
        for k in (0, 1):
            if hi[k] is None:
                if kept_up(k, rate):
                    lo[k] = rate
                else:
                    hi[k] = rate
        rate *= factor
    for _ in range(steps):
        for k in (0, 1):
            h = hi[k]
            if h is None:
                continue
            mid = (lo[k] + h) / 2
            if kept_up(k, mid):
                lo[k] = mid
            else:
                hi[k] = mid
    out = []
    for k in (0, 1):
        h = hi[k]
        out.append({"sustained_per_s": round(lo[k]),
                    "sustained_below_per_s": None if h is None else round(h),
                    "sustained_trials": trials[k]})
    return out


def settle(loads: list[Load], seconds: float = 2.0) -> None:
    """Read the answers still due on these connections (up to ``seconds``), so that the
    next window starts with nothing in flight."""
    conns = [ld.conn for ld in loads]
    end = time.perf_counter() + seconds
    while any(ld.sched for ld in loads) and (left := end - time.perf_counter()) > 0:
        pump(conns, min(left, 0.05))
    for ld in loads:
        ld.sched.clear()


def saturation(sides: list[tuple[list[Load], int]], inflight: int, rounds: int,
               window_s: float) -> list[dict[str, Any]]:
    """Both sides at saturation (``inflight`` requests in flight per connection) in
    alternating windows, ABBA ``rounds`` times, so that a change of the machine's load
    weighs on both alike; each window starts with nothing in flight.  Per side: requests
    per second over its windows, the CPU per request, and (on the first side) the ratio
    of each round's two windows to the other side's."""
    counts: list[list[int]] = [[], []]
    spent = [0.0, 0.0]
    cpus: list[dict[str, float]] = [{}, {}]
    with no_collections():
        for _ in range(rounds):
            for k in (0, 1, 1, 0):
                loads, pid = sides[k]
                cpu = CpuMeter({"server": pid, "server_loop_thread": (pid, pid),
                                "client": (os.getpid(), None)})
                c0 = cpu.snapshot()
                t0 = time.perf_counter()
                counts[k].append(closed_loop(loads, inflight, window_s))
                spent[k] += time.perf_counter() - t0
                for name, v in cpu.since(c0).items():
                    cpus[k][name] = cpus[k].get(name, 0.0) + v
                settle(loads)
    out = []
    for k in (0, 1):
        total = sum(counts[k])
        out.append({
            "saturated_per_s": round(total / spent[k]),
            "cpu_us_per_request_saturated": {name: round(v * 1e6 / max(1, total))
                                             for name, v in cpus[k].items()},
        })
    # each round: the first side's two windows against the second side's two
    out[0]["round_ratios"] = [
        round((counts[0][2 * r] + counts[0][2 * r + 1])
              / max(1, counts[1][2 * r] + counts[1][2 * r + 1]), 3)
        for r in range(rounds)]
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        disk = fsync_floor(Path(tmp))
        refdata = Path(tmp) / "refdata.toml"
        users = [f"u{i}" for i in range(args.connections)]
        bench_refdata(refdata, args.connections)
        port, eport = free_ports(2)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        srv = subprocess.Popen(
            [PY, "-m", "gateway.cli", "serve", "--data-dir", str(Path(tmp) / "data"),
             "--port", str(port), "--refdata", str(refdata), "--no-calendar",
             *args.server_arg],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        echo = subprocess.Popen([PY, "-c", ECHO_SERVER, str(eport)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            await wait_port(port, srv)
            await wait_port(eport, echo)
            if srv.poll() is not None:  # the port answering is not ronda's
                raise RuntimeError("ronda exited: " + (srv.stderr.read().decode()
                                                      if srv.stderr else ""))
            url = f"ws://127.0.0.1:{port}/ws"
            await open_bench_contract(url)
            # the load runs in this thread, blocking: nothing else runs on this loop
            r_loads = connect_loads(url, users, False)
            e_loads = connect_loads(f"ws://127.0.0.1:{eport}", users, True)
            ronda = open_phase(r_loads, args.rate, args.seconds, srv.pid, e_loads)
            settle(r_loads)
            base = open_phase(e_loads, args.rate, args.seconds, echo.pid, r_loads)
            settle(e_loads)
            r_sat, e_sat = saturation([(r_loads, srv.pid), (e_loads, echo.pid)],
                                      args.inflight, args.rounds, args.window)
            ronda.update(r_sat)
            base.update(e_sat)
            if args.sustain:
                r_sus, e_sus = sustained([r_loads, e_loads], args.sustain_from, 1.25,
                                         args.sustain_top, args.sustain_seconds, 3)
                ronda.update(r_sus)
                base.update(e_sus)
            for loads in (r_loads, e_loads):
                drain(loads, 0.5)
        finally:
            for p in (srv, echo):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    round_ratios = ronda.pop("round_ratios")
    return {
        "benchmark": "ws", "rate": args.rate, "seconds": args.seconds,
        "connections": args.connections,
        **{f"ronda_{k}": v for k, v in ronda.items()},
        **{f"echo_{k}": v for k, v in base.items()},
        "throughput_ratio": round(ronda["saturated_per_s"] / base["saturated_per_s"], 3),
        # the same ratio in each round of alternating windows: its spread over the run
        "throughput_ratio_rounds": round_ratios,
        "saturation_windows": f"ABBA x {args.rounds}, {args.window} s each",
        # the "sustained throughput": the highest open-loop rate kept up (trial())
        "sustained_ratio": (round(ronda["sustained_per_s"] / base["sustained_per_s"], 3)
                            if args.sustain and base["sustained_per_s"] else None),
        # the throughput ratio the servers' CPU cost alone implies (echo / ronda, per request)
        "server_cpu_ratio": round(base["cpu_us_per_request_saturated"]["server"]
                                  / max(1, ronda["cpu_us_per_request_saturated"]["server"]), 3),
        # the same for the event loop's thread alone (the echo has no other)
        "loop_thread_cpu_ratio": round(
            base["cpu_us_per_request_saturated"]["server_loop_thread"]
            / max(1, ronda["cpu_us_per_request_saturated"]["server_loop_thread"]), 3),
        "loadavg_at_end": float(Path("/proc/loadavg").read_text().split()[0]),
        "server_args": args.server_arg,
        "fsync": True,
        # the journal's disk alone: a write + fdatasync, unloaded (see fsync_floor)
        "disk_fdatasync": disk,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--inflight", type=int, default=32,
                    help="requests in flight per connection at saturation")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of saturation windows (ABBA: ronda, echo, echo, ronda)")
    ap.add_argument("--window", type=float, default=1.0,
                    help="seconds of each saturation window")
    ap.add_argument("--no-sustain", dest="sustain", action="store_false",
                    help="skip the search for the highest open-loop rate each server keeps up")
    ap.add_argument("--sustain-from", type=float, default=5000)
    ap.add_argument("--sustain-top", type=float, default=100_000)
    ap.add_argument("--sustain-seconds", type=float, default=3.0)
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="pass ARG to ronda serve (repeat: --server-arg=--journal-sync"
                         " --server-arg=loop)")
    args = ap.parse_args()
    fine_timer_slack()  # the generator's waits: perf/wsload.py
    import uvloop

    print(json.dumps(uvloop.run(main_async(args))))


if __name__ == "__main__":
    main()
