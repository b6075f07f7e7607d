"""AMQP benchmark: open-loop order load through RabbitMQ against ``ronda serve``, and a raw
aio-pika RPC echo baseline on the same broker.

* **A private RabbitMQ node** is started for the run (``tests/broker.py``: its own node name,
  free ports on 127.0.0.1, data, logs and Erlang cookie in a temporary folder) and stopped
  at the end, with its epmd, whatever happens.  Its users: ``ronda`` (the server,
  administrator), the bench traders ``u0``…``uN`` (the platform users of the generated
  reference data, with the permissions of docs/amqp.md: ``client_permissions``) and
  ``echo`` for the baseline's clients (the same kind of permissions, for the echo exchange).
* **The server** runs as a separate process (``ronda serve --amqp-url … --no-calendar``,
  journal fsynced per batch, risk on), the load generator in this one, the echo server in a
  third; all of them and the broker share the machine.
* **Requests** are published as docs/amqp.md says: to ``ronda.requests`` with routing key
  ``request``, ``user_id`` (validated by the broker), ``message_id`` = ``correlation_id``,
  ``reply_to`` an exclusive server-named queue, persistent, on a channel with publisher
  confirms (counted as they come, never awaited in line: the send schedule never waits for
  a confirm), by a lean client of the protocol (``perf/amqpload.py``: the load generator
  shares the machine, so it should cost little; through aiormq it cost ~290 µs of CPU per
  request, as much as the server, and ~95 µs with it).  One connection per trader; each
  also consumes its broadcast queue (its private stream, 1.4-2 messages per request).
* **Open loop**: every request has a scheduled send time (each connection at R/C per
  second, all of them at the same instants; ``--spread``: request k at start + k/R on
  connection k mod C, an even stream); its latency is measured from the *scheduled* time to
  the reply, so a stalled server is charged for the requests it delayed (no coordinated
  omission).  A request is never sent before its time (``amqpload.pace``: uvloop's timers
  truncate to the millisecond, and one sleep per request sent a third of them up to 1.1 ms
  early, understating their latency).  The sleeps between sends are timed by a thread
  (``amqpload.ThreadTimer``: ``nanosleep``, tens of microseconds of slack), so a request
  goes out a few tens of microseconds late; ``--pacer loop`` sleeps on uvloop's own
  timers instead (the shortest sleep a millisecond: a request then goes out up to about a
  millisecond late), as every run before 2026-12-06 did.  Either way it is charged with
  its lateness: pessimistic, never flattering.
  ``send_late_p50_us``/``send_late_p99_us`` say how late the generator sent, its own share
  of the latencies.  Percentiles come from an HDR histogram (µs resolution, 3 significant
  digits).  A request still unanswered 30 s after the last send is charged with its age and
  counted as ``missing``.
* **The flow**: orders that rest (no crossing, risk checks in full, with a
  ``client_order_id``) and cancels of acknowledged ones, so the book stays at a stationary
  size (as perf/bench_ws.py).
* **Baseline, same run**: an aio-pika RPC echo server (another process; consumer of a
  durable queue ``bench.echo`` bound to a direct exchange ``bench.echo``, prefetch 256 and
  manual ack as the server's, replying to ``reply_to``/``correlation_id`` with a small
  JSON, then acking) at the same rate with the same messages and properties, and both at
  saturation (a fixed number of requests in flight per connection) for the throughput
  ratio: short windows of each side in turn (ABBA…), so that a change in the load of a
  shared machine weighs on both.  ``--echo lean`` takes ``perf/amqpecho.py`` instead, an
  echo on the generator's lean client (about 45 µs of CPU per request against the aio-pika
  echo's 240–330): the floor that the generator and the broker leave any server.
* **CPU per request** of each process (client, server or echo, broker; from /proc) in each
  phase: steadier than wall-clock figures on a shared machine.  ``cpu_ratio`` is the
  throughput ratio that the CPU cost alone implies (echo path / ronda path, client
  included).

Last line: one JSON object.  Targets: p99 <= 5 ms at 2,000 orders/s; saturated throughput
>= 0.5 x the raw RPC echo.

    python perf/bench_amqp.py [--rate 2000] [--seconds 10] [--connections 4]
                              [--inflight 32] [--rounds 4] [--saturate-seconds 1]
                              [--transient-requests] [--profile-server FILE.prof]

``--server-cpus 1 --broker-cpus 0`` pins the server (all its threads, from its start) and the
broker (every thread of its Erlang VM, once it is up) to those CPUs, as an operator may
(``taskset``, systemd's ``CPUAffinity=``: docs/amqp.md); the generator and the echo are
left to the kernel.

``--profile-server`` runs the server under cProfile with a CPU clock (the event loop's
thread: time spent preempted by the other processes of a busy machine is not counted; the
journal's fsync thread is not profiled); its figures are then not representative.  At the
end, stderr gets the server's CPU time by package and its top functions.  Use a rate the
profiled server can sustain (``--rate 500``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import orjson
from hdrh.histogram import HdrHistogram

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "perf", ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import amqpload  # noqa: E402
from bench_ws import (  # noqa: E402
    CONTRACT,
    bench_refdata,
    free_port,
    open_bench_contract,
    wait_port,
)
from broker import Broker, start_broker  # noqa: E402
from procstat import CpuMeter  # noqa: E402

from gateway import amqpframes  # noqa: E402
from gateway.amqp import JSON, REQUEST_EXCHANGE, REQUEST_KEY, bcast_queue  # noqa: E402

PY = sys.executable
ECHO_EXCHANGE = ECHO_QUEUE = "bench.echo"
ECHO_USER = ("echo", "echo-pw")
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"  # RabbitMQ's pseudo-queue (no queue, at most once)
PERSISTENT = 2
TRANSIENT = 1
DRAIN_S = 30.0  # how long to wait for the last answers
PACE_RESOLUTION_S = 0.001  # uvloop's timers: the shortest sleep of the send schedule

# The baseline: the same consumer settings as the server's adapter (prefetch 256, manual
# ack after the reply is published on the same channel, no confirms on that channel).
ECHO_SERVER = """
import asyncio, sys, aio_pika, orjson, uvloop
async def main():
    conn = await aio_pika.connect(sys.argv[1])
    ch = await conn.channel(publisher_confirms=False)
    await ch.set_qos(prefetch_count=256)
    ex = await ch.declare_exchange(sys.argv[2], aio_pika.ExchangeType.DIRECT, durable=True)
    q = await ch.declare_queue(sys.argv[2], durable=True)
    await q.bind(ex, "request")
    out = ch.default_exchange
    async def on_message(m):
        d = orjson.loads(m.body)
        body = orjson.dumps({"type": "ack", "kind": d.get("type")})
        await out.publish(aio_pika.Message(
            body, content_type="application/json", type="ack", app_id="echo",
            correlation_id=m.correlation_id or m.message_id), m.reply_to)
        await m.ack()
    await q.consume(on_message)
    print("ready", flush=True)
    await asyncio.Future()
uvloop.run(main())
"""


def echo_permissions() -> tuple[str, str, str]:
    """Like a trader's (tests/broker.py ``client_permissions``), for the echo exchange."""
    gen = r"amq\.gen-.*"
    return f"^{gen}$", rf"^(bench\.echo|{gen})$", f"^{gen}$"


class AmqpLoad:
    """One connection's load: entries that rest, then cancels of acknowledged ones.  Phase
    ``open``: sent at scheduled times, latencies into :attr:`hist`; phase ``sat``: every
    answer sends the next request (a fixed number in flight) until :attr:`refill_until`."""

    def __init__(self, url: str, user: str, unit: str, echo: bool,
                 consume_bcast: bool, delivery_mode: int = PERSISTENT,
                 direct_reply_to: bool = False) -> None:
        self.url = url
        self.direct_reply_to = direct_reply_to
        self.delivery_mode = delivery_mode
        self.user = user
        self.unit = unit
        self.echo = echo
        self.consume_bcast = consume_bcast and not echo
        self.sched: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.hist = HdrHistogram(1, 60_000_000, 3)
        # (scheduled time, latency) of each answer of the open loop, with --trace
        self.trace: list[tuple[float, float]] | None = None
        self.acked: list[str] = []
        self.answers = 0
        self.rejects: Counter[str] = Counter()
        self.expected = 0
        self.done = asyncio.Event()
        self.phase = "open"
        self.refill_until = 0.0
        self.sat_answers = 0
        self.next_i = 0
        self.bcast = 0
        self.publish_errors: Counter[str] = Counter()
        self.conn: amqpload.LeanClient | None = None
        self.exchange = ECHO_EXCHANGE if echo else REQUEST_EXCHANGE

    async def connect(self) -> None:
        # the lean client (perf/amqpload.py): the load generator shares the machine, so it
        # should cost as little as possible (through aiormq it cost as much CPU per request
        # as the server; through aio-pika's message objects ~40 % more than that)
        url = urlsplit(self.url)
        self.conn = await amqpload.connect(url.hostname or "127.0.0.1", url.port or 5672,
                                           unquote(url.username or ""),
                                           unquote(url.password or ""))
        if self.direct_reply_to:
            # RabbitMQ's direct reply-to: no reply queue, the answer goes from the server's
            # channel to this one (consumed before the first request, on the same channel)
            self.reply_to = DIRECT_REPLY_TO
        else:
            self.reply_to = await self.conn.declare_reply_queue()
        # requests as docs/amqp.md says: persistent, on a channel with publisher confirms
        # (counted as they come, never awaited in line: the send schedule never waits)
        self._props = functools.partial(
            amqpframes.properties, content_type=JSON, user_id=self.user,
            reply_to=self.reply_to, delivery_mode=self.delivery_mode)
        await self.conn.consume(self.reply_to, self.on_reply)
        if self.consume_bcast:
            await self.conn.consume(bcast_queue(self.user), self.on_bcast)

    async def close(self) -> None:
        if self.conn is not None:
            for what, n in (("nack", self.conn.nacked), ("blocked", self.conn.blocked)):
                if n:
                    self.publish_errors[what] += n
            with contextlib.suppress(Exception):
                await self.conn.close()

    def request(self, i: int) -> dict[str, Any]:
        if self.echo or i % 2 == 0 or not self.acked:
            price = f"{40 + (i % 500) / 100:.2f}"
            return {"type": "order_entry", "contract": CONTRACT, "unit": self.unit,
                    "side": "BUY", "price": price, "quantity": "1.0",
                    "client_order_id": f"{self.user}-{i}"}
        return {"type": "order_cancel", "order_id": self.acked.pop()}

    def _publish(self, mid: str, msg: dict[str, Any]) -> None:
        assert self.conn is not None
        if self.conn.error is not None:
            self.publish_errors[self.conn.error] += 1
            return
        self.conn.publish(self.exchange, REQUEST_KEY,
                          self._props(message_id=mid, correlation_id=mid), orjson.dumps(msg))

    def send(self, i: int, t: float) -> None:
        mid = str(i)  # unique per user in the run: the server replays a known message_id
        self.sched[mid] = t
        self._publish(mid, self.request(i))

    async def call(self, msg: dict[str, Any], mid: str, timeout: float = 30) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[mid] = fut
        self._publish(mid, msg)
        return await asyncio.wait_for(fut, timeout)

    def on_reply(self, cid: str, body: bytes) -> None:
        now = time.perf_counter()
        fut = self.waiting.pop(cid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(orjson.loads(body))
            return
        t0 = self.sched.pop(cid, None)
        if t0 is None:
            return
        d = orjson.loads(body)
        if d.get("type") == "ack":
            if d.get("kind") == "order_entry" and d.get("order_ids"):
                self.acked.append(d["order_ids"][0])
        else:
            self.rejects[str(d.get("code") or d.get("type"))] += 1
        if self.phase == "open":
            self.hist.record_value(max(1, int((now - t0) * 1e6)))
            if self.trace is not None:
                self.trace.append((t0, now - t0))
            self.answers += 1
            if self.answers >= self.expected:
                self.done.set()
        elif now < self.refill_until:
            self.sat_answers += 1
            self.send(self.next_i, now)
            self.next_i += 1

    def on_bcast(self, cid: str, body: bytes) -> None:
        self.bcast += 1

    def start_open(self, n: int) -> None:
        """Phase ``open``: ``n`` requests will be sent at their scheduled times (by the
        run's :class:`amqpload.Pacer`)."""
        self.phase = "open"
        self.expected = n

    def charge_missing(self) -> int:
        """Unanswered requests: charged with their age so far."""
        now = time.perf_counter()
        for t0 in self.sched.values():
            self.hist.record_value(max(1, int((now - t0) * 1e6)))
        missing = len(self.sched)
        self.sched.clear()
        return missing

    async def saturate(self, inflight: int, seconds: float, base: int) -> int:
        """Keep ``inflight`` requests outstanding for ``seconds``; return the answers."""
        self.phase = "sat"
        self.sat_answers = 0
        self.next_i = base + inflight
        now = time.perf_counter()
        self.refill_until = now + seconds
        for i in range(inflight):
            self.send(base + i, now)
        await asyncio.sleep(seconds)
        self.refill_until = 0.0
        return self.sat_answers

    async def drain(self, timeout: float) -> int:
        deadline = time.perf_counter() + timeout
        while self.sched and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        left = len(self.sched)
        self.sched.clear()
        return left


async def wait_layout(url: str, user: str, server: subprocess.Popen[bytes],
                      timeout: float = 60) -> None:
    """Until the server has declared its layout (the user's broadcast queue is declared
    after the exchanges, the request queue and its binding)."""
    deadline = time.monotonic() + timeout
    conn = await aio_pika.connect(url, timeout=10)
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited ({server.returncode})")
            ch = await conn.channel()
            try:
                await ch.get_queue(bcast_queue(user), ensure=True)
                return
            except aio_pika.exceptions.ChannelClosed:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not declare its AMQP layout") from None
                await asyncio.sleep(0.1)
            finally:
                with contextlib.suppress(Exception):
                    await ch.close()
    finally:
        await conn.close()


class Target:
    """The connections of one side (ronda or the echo) and what they measured."""

    def __init__(self, broker: Broker, users: list[str], echo: bool,
                 args: argparse.Namespace) -> None:
        self.echo = echo
        self.args = args
        self.loads = [AmqpLoad(broker.url_for(ECHO_USER[0] if echo else u),
                               ECHO_USER[0] if echo else u, "X" if echo else f"U{u[1:]}",
                               echo, not args.no_bcast,
                               TRANSIENT if args.transient_requests else PERSISTENT,
                               args.direct_reply_to)
                      for u in users]
        self.procs = ("client", "broker", "echo" if echo else "server")
        self.sat_answers = 0
        self.sat_seconds = 0.0
        self.sat_cpu: Counter[str] = Counter()
        self.sat_lost = 0
        self.sat_rounds = 0

    async def start(self) -> None:
        for ld in self.loads:
            await ld.connect()
        # warm up: the server opens each user's session at its first request
        for ld in self.loads:
            ans = await ld.call({"type": "login"} if not self.echo else ld.request(0),
                                "warm-up")
            if ans.get("type") != "ack":
                raise RuntimeError(f"warm-up request of {ld.user} refused: {ans}")

    async def close(self) -> None:
        for ld in self.loads:
            await ld.close()

    async def open_loop(self, cpu: CpuMeter) -> dict[str, Any]:
        loads, args = self.loads, self.args
        bcast0 = sum(ld.bcast for ld in loads)
        per = args.rate / len(loads)
        n = int(per * args.seconds)
        total = len(loads) * n
        # request i of each connection at start + i/(R/C), every connection at the same
        # instants; with --spread, request k at start + k/R on connection k mod C.  Sent
        # never before its time (amqpload.pace: uvloop's timers alone would send up to a
        # millisecond early)
        start = time.perf_counter() + 0.2
        c = len(loads)
        items = [(start + (k / args.rate if args.spread else (k // c) / per),
                  (loads[k % c], k // c)) for k in range(total)]
        late = HdrHistogram(1, 60_000_000, 3)
        clock = time.perf_counter

        def fire(due: list[tuple[float, tuple[AmqpLoad, int]]]) -> None:
            for t, (ld, i) in due:
                late.record_value(max(1, int((clock() - t) * 1e6)))
                ld.send(i, t)

        for ld in loads:
            ld.start_open(n)
            ld.trace = [] if args.trace else None
        t0, w0 = cpu.snapshot(), cpu.waits()
        if args.pacer == "thread":
            timer = amqpload.ThreadTimer()
            try:
                await amqpload.pace(items, fire, sleep=timer.sleep)
            finally:
                timer.close()
        else:
            await amqpload.pace(items, fire, PACE_RESOLUTION_S)
        sent_at = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(ld.done.wait() for ld in loads)), DRAIN_S)
        elapsed = time.perf_counter() - start
        used, waited = cpu.since(t0), cpu.waits_since(w0)
        missing = sum(ld.charge_missing() for ld in loads)
        hist = HdrHistogram(1, 60_000_000, 3)
        for ld in loads:
            hist.add(ld.hist)
        bcast = sum(ld.bcast for ld in loads) - bcast0
        if args.trace:
            with open(f"{args.trace}.{'echo' if self.echo else 'ronda'}.jsonl", "wb") as f:
                for t, lat in sorted(x for ld in loads for x in ld.trace or ()):
                    f.write(orjson.dumps([round((t - start) * 1e6), round(lat * 1e6)]) + b"\n")
        return {
            "achieved_rate": round(total / elapsed),
            "send_rate": round(total / (sent_at - start)),
            "requests": total,
            "p50_us": hist.get_value_at_percentile(50),
            "p90_us": hist.get_value_at_percentile(90),
            "p99_us": hist.get_value_at_percentile(99),
            "p999_us": hist.get_value_at_percentile(99.9),
            "max_us": hist.get_max_value(),
            "missing": missing,
            # how late the generator sent (its own share of the latencies above)
            "send_late_p50_us": late.get_value_at_percentile(50),
            "send_late_p99_us": late.get_value_at_percentile(99),
            **({} if self.echo else {"broadcast_per_request": round(bcast / total, 2)}),
            "cpu_us_per_request": {k: round(used[k] * 1e6 / total) for k in self.procs},
            # time the processes' threads were runnable but waited for a core
            "runq_wait_us_per_request": {k: round(waited[k] * 1e6 / total)
                                         for k in self.procs},
        }

    async def saturate(self, cpu: CpuMeter) -> None:
        """One window with ``--inflight`` requests outstanding per connection."""
        args = self.args
        base = 10_000_000 * (1 + self.sat_rounds)  # message ids stay unique per user
        self.sat_rounds += 1
        t0 = cpu.snapshot()
        counts = await asyncio.gather(*(ld.saturate(args.inflight, args.saturate_seconds,
                                                    base) for ld in self.loads))
        self.sat_lost += sum(await asyncio.gather(*(ld.drain(DRAIN_S) for ld in self.loads)))
        self.sat_cpu.update(cpu.since(t0))  # (with the window's last answers)
        self.sat_answers += sum(counts)
        self.sat_seconds += args.saturate_seconds

    def saturation(self) -> dict[str, Any]:
        n = max(1, self.sat_answers)
        cpu_us = {k: round(self.sat_cpu[k] * 1e6 / n) for k in self.procs}
        rejects = sum((ld.rejects for ld in self.loads), Counter())
        errors = sum((ld.publish_errors for ld in self.loads), Counter())
        return {
            "saturated_per_s": round(self.sat_answers / self.sat_seconds),
            "saturation_unanswered": self.sat_lost,
            "cpu_us_per_request_saturated": cpu_us,
            "cpu_us_per_request_saturated_total": sum(cpu_us.values()),
            "rejects": dict(rejects),
            "publish_errors": dict(errors),
        }


async def measure(broker: Broker, port: int, srv: subprocess.Popen[bytes],
                  echo: subprocess.Popen[bytes], users: list[str], args: argparse.Namespace
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    await wait_port(port, srv)
    line = await asyncio.wait_for(asyncio.to_thread(echo.stdout.readline), 60)  # type: ignore[union-attr]
    if line.strip() != b"ready":
        raise RuntimeError(f"the echo server did not start ({echo.poll()})")
    await open_bench_contract(f"ws://127.0.0.1:{port}/ws")
    for u in users:
        await wait_layout(broker.url_for(u), u, srv)
    cpu = CpuMeter({"client": (os.getpid(), None), "server": srv.pid, "echo": echo.pid,
                    "broker": int((broker.base / "rabbitmq.pid").read_text().strip())})
    ronda, base = Target(broker, users, False, args), Target(broker, users, True, args)
    try:
        await ronda.start()
        await base.start()
        ronda_open = await ronda.open_loop(cpu)
        if srv.poll() is not None:
            raise RuntimeError(f"the server exited during the run ({srv.returncode})")
        await asyncio.sleep(0.5)
        base_open = await base.open_loop(cpu)
        # saturation: windows of each side in turn (ABBAAB…), so that a change of the
        # machine's load during the run weighs on both
        for r in range(args.rounds):
            for t in (ronda, base) if r % 2 == 0 else (base, ronda):
                await asyncio.sleep(0.3)
                await t.saturate(cpu)
    finally:
        await ronda.close()
        await base.close()
    return {**ronda_open, **ronda.saturation()}, {**base_open, **base.saturation()}


def stop_process(p: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL, by PID (the process we started)."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


def stop_broker(broker: Broker) -> None:
    """The node and its epmd (tests/broker.py); then make sure the Erlang VM is gone (the
    PID in its pid file) in case ``rabbitmqctl stop`` failed."""
    try:
        broker.stop()
    finally:
        pid_file = broker.base / "rabbitmq.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
            os.kill(pid, signal.SIGKILL)


# the server under cProfile, timed by the CPU clock of the event loop's thread
PROFILED_SERVER = """
import cProfile, runpy, sys, time
out = sys.argv.pop(1)
sys.argv[0] = "gateway.cli"
p = cProfile.Profile(time.thread_time)
p.enable()
try:
    runpy.run_module("gateway.cli", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    p.disable()
    p.dump_stats(out)
"""


def profile_groups(st: pstats.Stats) -> list[tuple[str, float]]:
    """Own (not cumulative) time by package: the AMQP client stack against the rest."""
    groups: dict[str, float] = {}
    for (fn, _line, name), (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        if "site-packages/" in fn:
            key = fn.split("site-packages/", 1)[1].split("/", 1)[0]
        elif fn.startswith(str(ROOT)):
            rel = Path(fn).relative_to(ROOT)
            key = str(rel) if rel.name == "amqp.py" else f"ronda {rel.parts[0]}/"
        elif "/asyncio/" in fn:
            key = "asyncio" + (" (socket writes)" if name == "write" else "")
        elif fn == "~":
            key = "builtins"
        else:
            key = "stdlib"
        groups[key] = groups.get(key, 0.0) + tt
    return sorted(groups.items(), key=lambda kv: -kv[1])


def print_profile(path: Path, top: int = 25) -> None:
    out = io.StringIO()
    st = pstats.Stats(str(path), stream=out)
    groups = profile_groups(st)
    total = sum(t for _, t in groups) or 1.0
    print(f"server CPU (event loop thread) by package: {total:.2f} s", file=out)
    for key, t in groups[:15]:
        print(f"  {t:7.2f} s {100 * t / total:5.1f} %  {key}", file=out)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    print(out.getvalue(), file=sys.stderr)


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cpu_list(text: str) -> set[int]:
    """``0``, ``0,1``, ``0-3``: the CPUs of this machine it names (argparse's type)."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, dash, hi = part.partition("-")
            first, last = int(lo), int(hi if dash else lo)
            if last < first:
                raise ValueError
            cpus.update(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a CPU list like 0,1 or 0-3") from None
    usable = os.sched_getaffinity(0)
    if not cpus or not cpus <= usable:
        raise argparse.ArgumentTypeError(f"{text!r}: this process may use CPUs "
                                         f"{sorted(usable)} only")
    return cpus


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` to ``cpus`` (as ``taskset -a -p``).  (The server is
    pinned from its start instead, so the journal's sync helper it starts inherits it.)"""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cpus)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    # SIGTERM, and SIGINT even when started in the background (where it is ignored), stop
    # the run through the finally clauses below: every process started here is stopped
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)

    users = [f"u{i}" for i in range(args.connections)]
    load_at_start = float(Path("/proc/loadavg").read_text().split()[0])
    with tempfile.TemporaryDirectory(prefix="bench-amqp-") as tmp_s:
        tmp = Path(tmp_s)
        broker: Broker | None = None
        srv: subprocess.Popen[bytes] | None = None
        echo: subprocess.Popen[bytes] | None = None
        srv_log = tmp / "server.log"
        try:
            broker = start_broker(tmp / "rabbitmq", {u: f"{u}-pw" for u in users},
                                  args.broker_erl_args)
            broker.add_user(*ECHO_USER, permissions=echo_permissions())
            if args.broker_cpus:
                pin_process(int((broker.base / "rabbitmq.pid").read_text().strip()),
                            args.broker_cpus)
            if args.queue_version:
                # every queue of the node (ronda's, the echo's) in that classic-queue
                # version, by policy, before anything is declared
                broker.ctl("set_policy", "bench-queue-version", ".*",
                           json.dumps({"queue-version": args.queue_version}),
                           "--apply-to", "queues")
            refdata = tmp / "refdata.toml"
            bench_refdata(refdata, args.connections)
            port = free_port()
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            prof = ([PY, "-c", PROFILED_SERVER, str(Path(args.profile_server).resolve())]
                    if args.profile_server else [PY, "-m", "gateway.cli"])
            with srv_log.open("wb") as log:
                srv = subprocess.Popen(
                    [*prof, "serve", "--data-dir", str(tmp / "data"),
                     "--port", str(port), "--refdata", str(refdata), "--no-calendar",
                     "--amqp-url", broker.url],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
                    preexec_fn=(None if not args.server_cpus else functools.partial(
                        os.sched_setaffinity, 0, args.server_cpus)))
            echo_cmd = ([PY, "-c", ECHO_SERVER] if args.echo == "aio-pika"
                        else [PY, str(ROOT / "perf" / "amqpecho.py")])
            echo = subprocess.Popen([*echo_cmd, broker.url, ECHO_QUEUE], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            ronda, base = uvloop.run(measure(broker, port, srv, echo, users, args))
        except BaseException:
            with contextlib.suppress(OSError):
                tail = srv_log.read_text(errors="replace").splitlines()[-30:]
                print("--- server log (tail)", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            stop_process(srv, 30)
            stop_process(echo, 10)
            if broker is not None:
                stop_broker(broker)
    if args.profile_server:
        print_profile(Path(args.profile_server))
    sat = ronda["saturated_per_s"] / max(1, base["saturated_per_s"])
    return {
        "benchmark": "amqp", "rate": args.rate, "seconds": args.seconds,
        "connections": args.connections, "inflight": args.inflight,
        **{f"ronda_{k}": v for k, v in ronda.items()},
        **{f"echo_{k}": v for k, v in base.items()},
        "throughput_ratio": round(sat, 3),
        # what the ratio would be if the machine's CPU were the only limit
        "cpu_ratio": round(base["cpu_us_per_request_saturated_total"]
                           / max(1, ronda["cpu_us_per_request_saturated_total"]), 3),
        "target_p99_met": ronda["p99_us"] <= 5000 and ronda["missing"] == 0,
        "target_ratio_met": sat >= 0.5,
        "fsync": True,
        "loadavg_at_start": load_at_start,
        "profiled": bool(args.profile_server),
        "requests_delivery_mode": "transient" if args.transient_requests else "persistent",
        "schedule": "spread" if args.spread else "together",
        "pacer": args.pacer,
        "replies": "direct reply-to" if args.direct_reply_to else "exclusive queue",
        "broker_erl_args": args.broker_erl_args,
        "server_cpus": sorted(args.server_cpus) if args.server_cpus else None,
        "broker_cpus": sorted(args.broker_cpus) if args.broker_cpus else None,
        "echo_server": args.echo,
        "queue_version": args.queue_version,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rate", type=float, default=2000, help="requests per second, in all")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=4, help="traders (one connection each)")
    ap.add_argument("--inflight", type=int, default=32, help="per connection, at saturation")
    ap.add_argument("--saturate-seconds", type=float, default=1.0,
                    help="length of one saturation window")
    ap.add_argument("--rounds", type=int, default=4,
                    help="saturation windows of each side, in turn")
    ap.add_argument("--spread", action="store_true",
                    help="request k on connection k mod C at start + k/R (default: every "
                         "connection at R/C per second, at the same instants)")
    ap.add_argument("--transient-requests", action="store_true",
                    help="publish the requests (ronda's and the echo's) transient instead of "
                         "persistent: the client's other choice (docs/amqp.md)")
    ap.add_argument("--pacer", choices=("thread", "loop"), default="thread",
                    help="what times the sleeps between sends: a thread of the generator's "
                         "(tens of microseconds late) or uvloop's timers (up to a "
                         "millisecond late, the runs before 2026-12-06)")
    ap.add_argument("--direct-reply-to", action="store_true",
                    help="the traders (ronda's and the echo's) take their answers by "
                         "RabbitMQ's direct reply-to instead of an exclusive reply queue")
    ap.add_argument("--queue-version", type=int, choices=(1, 2), default=None,
                    help="a policy giving every queue of the benchmark's node this classic "
                         "queue version (RabbitMQ 3.10+); default: the node's own (1)")
    ap.add_argument("--echo", choices=("aio-pika", "lean"), default="aio-pika",
                    help="the baseline server: the aio-pika RPC echo (the default), or "
                         "perf/amqpecho.py, the least a server can cost (the floor of the "
                         "generator's and the broker's latency)")
    ap.add_argument("--no-bcast", action="store_true",
                    help="do not consume the traders' broadcast queues")
    ap.add_argument("--broker-erl-args", default="", metavar="FLAGS",
                    help="flags added to the broker's Erlang VM (e.g. '+sbwt none')")
    ap.add_argument("--server-cpus", type=cpu_list, metavar="LIST",
                    help="pin the server to these CPUs (e.g. 1)")
    ap.add_argument("--broker-cpus", type=cpu_list, metavar="LIST",
                    help="pin the broker's threads to these CPUs once it is up (e.g. 0)")
    ap.add_argument("--trace", metavar="PREFIX",
                    help="write each open-loop answer's scheduled time and latency (µs) to "
                         "PREFIX.ronda.jsonl and PREFIX.echo.jsonl")
    ap.add_argument("--profile-server", metavar="FILE",
                    help="run the server under cProfile, write its stats to FILE")
    args = ap.parse_args()
    if args.connections < 1 or args.rate <= 0 or args.seconds <= 0 or args.rounds < 1:
        ap.error("--connections, --rate, --seconds and --rounds must be positive")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
