"""Crash recovery of ``ronda serve`` (DESIGN rules 3 and 7): the server runs as a
subprocess; traders send crossing orders continuously and record every acknowledged order
and every trade they are told about; the server is SIGKILLed at random (seeded) instants
and restarted on the same data folder, several times.

After each crash:

* the journal, exported with ``ronda journal export`` and replayed with ``ronda replay``,
  gives the same final ``state_hash`` as a fresh in-process :class:`gateway.core.Core` fed
  the journal's records (the records the server replays on start);
* every acknowledged order and every trade a trader was told about is in that replay;
* the restarted server recovered exactly those records and reached that state: its logged
  state hash, its live orders (``query_orders``) and its books (``query_book``) equal the
  replay's.

Set ``RONDA_CRASH_SEED`` to replay one particular schedule of crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from wsclient import Client, connect_as, contract_id, iso, now_ms, order

from engine.config import PROFILES
from engine.events import OrderReport, Trade
from gateway.core import Core
from gateway.fanout import Hub
from gateway.journal import Journal
from gateway.session import _order_wire

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("RONDA_CRASH_SEED", "20261123"))
CONTRACTS = [contract_id(h) for h in (14, 15, 16, 17)]
AGENTS = ("AG1", "AG2", "AG3")
# who sends what: user -> [(unit, side, lowest price, highest price)]
FLOW = {
    "ana": [("SELLU1", "SELL", 4500, 5200)],
    "carlos": [("BUYU2", "BUY", 4800, 5500)],
    "bea": [("SELLU3", "SELL", 4600, 5300), ("PTBUY4", "BUY", 4700, 5400)],
}


# ---------------------------------------------------------------------- the server process


class ServerProcess:
    """``python -m gateway.cli serve`` on a data folder; output in a log file."""

    def __init__(self, data_dir: Path, args: tuple[str, ...] = (),
                 preexec: Callable[[], None] | None = None) -> None:
        self.data_dir = data_dir
        self.args = args
        self.preexec = preexec
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.recovered = -1
        self.state_hash = ""

    async def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--data-dir",
                 str(self.data_dir), "--port", "0", "--no-calendar", *self.args],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, preexec_fn=self.preexec)
        deadline = time.monotonic() + 20
        while True:
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            m = re.search(r"serving on http://127\.0\.0\.1:(\d+) .*recovered (\d+) records",
                          text)
            if m:
                break
            assert self.proc.poll() is None, f"the server died:\n{text}"
            assert time.monotonic() < deadline, f"the server did not start:\n{text}"
            await asyncio.sleep(0.05)
        self.port, self.recovered = int(m.group(1)), int(m.group(2))
        logged = re.search(r"recovered (\d+) records; state (\w+)", text)
        assert logged is not None, text
        assert int(logged.group(1)) == self.recovered
        self.state_hash = logged.group(2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung shutdown
                self.proc.kill()
                self.proc.wait(10)
                raise
        self.proc = None


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    made: list[ServerProcess] = []
    try:
        yield made
    finally:
        for s in made:
            s.kill()


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


# ---------------------------------------------------------------------- the replay


@dataclass
class Replay:
    """The journal replayed in-process, and what it says happened."""

    core: Core
    records: int
    orders: dict[int, tuple[str, str, str, int, int]] = field(default_factory=dict)
    filled: dict[int, int] = field(default_factory=dict)
    trades: dict[int, tuple[str, int, int, int, int]] = field(default_factory=dict)


def replay_journal(data_dir: Path) -> Replay:
    """Open the journal as the server does on start (cutting a torn tail), feed its records
    to a fresh Core; the journal is closed again afterwards."""
    core = Core(PROFILES["harmonised"])
    rp = Replay(core, 0)
    with Journal(data_dir / "journal") as j:
        for rec in j.records():
            rp.records += 1
            for ev in core.apply(rec.command, rec.ts):
                if type(ev) is OrderReport:
                    if ev.order_id not in rp.orders:  # first report: as entered
                        rp.orders[ev.order_id] = (ev.user, ev.contract, ev.side, ev.price,
                                                  ev.visible + ev.hidden + ev.filled)
                    rp.filled[ev.order_id] = ev.filled
                elif type(ev) is Trade:
                    rp.trades[ev.trade_id] = (ev.contract, ev.buy_order, ev.sell_order,
                                              ev.price, ev.qty)
    assert core.failures == 0
    return rp


def replay_tool_hash(data_dir: Path, out: Path) -> str:
    """``ronda journal export`` then ``ronda replay``: the state hash it prints last."""
    cli("journal", "export", str(data_dir / "journal"), "-o", str(out))
    last = cli("replay", str(out)).strip().splitlines()[-1]
    msg = orjson.loads(last)
    assert msg["type"] == "state_hash"
    return str(msg["hash"])


# ---------------------------------------------------------------------- the traders


def ticks(text: str, scale: int) -> int:
    whole, _, frac = text.partition(".")
    sign = -1 if whole.startswith("-") else 1
    return sign * (abs(int(whole)) * scale + int((frac or "0").ljust(len(str(scale)) - 1, "0")))


@dataclass
class Told:
    """What the traders were told, over all rounds."""

    acked: dict[int, tuple[str, str, str, int, int]] = field(default_factory=dict)
    filled: dict[int, int] = field(default_factory=dict)
    trades: dict[tuple[int, str], tuple[str, int, int, int]] = field(default_factory=dict)

    def order(self, oid: int, entry: tuple[str, str, str, int, int]) -> None:
        old = self.acked.setdefault(oid, entry)
        assert old == entry, f"order id {oid} given twice: {old} and {entry}"

    def report(self, r: dict[str, Any]) -> None:
        f = ticks(r["filled"], 10)
        self.filled[r["order_id"]] = max(self.filled.get(r["order_id"], 0), f)

    def trade(self, t: dict[str, Any]) -> None:
        key = (t["trade_id"], t["side"])
        entry = (t["contract"], t["order_id"], ticks(t["price"], 100),
                 ticks(t["quantity"], 10))
        old = self.trades.setdefault(key, entry)
        assert old == entry, f"trade {key} told twice differently: {old} and {entry}"


async def trader(c: Client, user: str, rng: random.Random, told: Told) -> None:
    """Crossing orders, one after the other, until the connection goes."""
    flow = FLOW[user]
    while True:
        unit, side, lo, hi = rng.choice(flow)
        cid = rng.choice(CONTRACTS)
        price = rng.randrange(lo, hi, 5)
        qty = rng.randint(1, 5)
        msg = order(cid, unit, side, f"{price / 100:.2f}", f"{qty / 10:.1f}")
        try:
            ans = await c.request(msg, timeout=5)
        except (ConnectionError, TimeoutError):
            return
        if ans["type"] == "ack":
            (oid,) = ans["order_ids"]
            told.order(oid, (user, cid, side, price, qty))
            for r in ans["reports"]:
                told.report(r)
        else:
            assert ans["type"] == "reject", ans
        await asyncio.sleep(rng.uniform(0, 0.01))


def collect_private(c: Client, told: Told) -> None:
    for m in c.stream(f"private:{c.agent}"):
        if m["type"] == "trade":
            told.trade(m)
        elif m["type"] == "order_report":
            told.report(m)


async def trading_round(port: int, rng: random.Random, told: Told,
                        kill_after: float, kill: Any) -> int:
    """Traders trade until the server is SIGKILLed under them; returns the orders sent."""
    clients = []
    try:
        for user in FLOW:
            c = await connect_as(port, user)
            assert (await c.request({"type": "subscribe", "stream": "private"}))[
                "type"] == "ack"
            clients.append(c)
        tasks = [asyncio.create_task(trader(c, c.user or "", random.Random(rng.random()),
                                            told))
                 for c in clients for _ in range(2)]
        await asyncio.sleep(kill_after)
        kill()
        done, pending = await asyncio.wait(tasks, timeout=10)
        assert not pending
        for t in done:
            t.result()
        for c in clients:
            await c.wait_closed()
            collect_private(c, told)
        return sum(len(c.sent_req_ids) for c in clients)
    finally:
        for c in clients:
            await c.close()


# ---------------------------------------------------------------------- checks


def check_durable(rp: Replay, told: Told) -> None:
    """Everything acknowledged or told is in the journal."""
    for oid, (user, cid, side, price, qty) in told.acked.items():
        assert oid in rp.orders, f"acknowledged order {oid} lost"
        assert rp.orders[oid] == (user, cid, side, price, qty), oid
    for oid, f in told.filled.items():
        assert rp.filled.get(oid, 0) >= f, f"order {oid}: told filled {f}, journal less"
    for (tid, side), (cid, oid, price, qty) in told.trades.items():
        assert tid in rp.trades, f"trade {tid} lost"
        t_cid, buy, sell, t_price, t_qty = rp.trades[tid]
        assert (t_cid, buy if side == "BUY" else sell, t_price, t_qty) == (
            cid, oid, price, qty), tid
    live = rp.core.engine.orders
    for oid, (*_, qty) in told.acked.items():
        if oid not in live:  # only GFS NON orders were sent: gone means filled
            assert rp.filled[oid] == qty, f"order {oid} neither live nor filled"


async def check_server_equals_replay(srv: ServerProcess, rp: Replay) -> None:
    assert srv.recovered == rp.records
    assert srv.state_hash == rp.core.state_hash()
    hub = Hub(rp.core)
    hub.rebuild(rp.core)
    rita = await connect_as(srv.port, "rita")
    try:
        for agent in AGENTS:
            ans = await rita.request({"type": "query_orders", "agent": agent})
            want = [_order_wire(rp.core.order_view(o)) for o in rp.core.orders_of(agent)]
            assert ans["orders"] == orjson.loads(orjson.dumps(want)), agent
        for cid in CONTRACTS:
            ans = await rita.request({"type": "query_book", "contract": cid})
            want_book = hub.book_snapshot(cid)
            assert (ans["bids"], ans["asks"]) == (want_book["bids"], want_book["asks"]), cid
    finally:
        await rita.close()


async def open_market(port: int) -> None:
    marta = await connect_as(port, "marta")
    rita = await connect_as(port, "rita")
    try:
        close_at = iso(now_ms() + 3_600_000)
        for cid in CONTRACTS:
            ans = await marta.request({"type": "contract_create", "contract": cid,
                                       "close_at": close_at})
            assert ans["type"] == "ack", ans
        ans = await marta.request({"type": "contract_open", "contracts": CONTRACTS})
        assert ans["type"] == "ack", ans
        lim = await rita.request({"type": "set_rate_limits",
                                  "rules": [{"window_ms": 1000, "max": 1_000_000}]})
        assert lim["type"] == "ack", lim
        cs = await marta.request({"type": "query_contracts"})
        assert {c["contract"]: c["state"] for c in cs["contracts"]} == dict.fromkeys(
            CONTRACTS, "TRADE")
    finally:
        await marta.close()
        await rita.close()


# ---------------------------------------------------------------------- the tests


@pytest.mark.parametrize("snapshots", [False, True], ids=["replay", "snapshots"])
async def test_sigkill_at_random_points_loses_nothing_acknowledged(
        tmp_path: Path, servers: list[ServerProcess], snapshots: bool) -> None:
    """With ``snapshots``, the server writes a snapshot every 0.3 s while the traders trade
    (gateway/snapshot.py), so that restarts start from one and replay the journal's tail:
    what they recover must be the same as a replay of the whole journal."""
    rng = random.Random(SEED)
    print(f"RONDA_CRASH_SEED={SEED}")
    data = tmp_path / "data"
    srv = ServerProcess(data, ("--snapshot-every", "0.3" if snapshots else "0"))
    servers.append(srv)
    await srv.start()
    assert srv.recovered == 0
    await open_market(srv.port)
    told = Told()
    sent = 0
    hashes: list[tuple[str, str, str]] = []  # (when, replay tool, in-process Core)
    for rnd in range(4):
        sent += await trading_round(srv.port, rng, told, rng.uniform(0.6, 2.0), srv.kill)
        # the server is down: the journal as it was left
        rp = replay_journal(data)
        hashes.append((f"after crash {rnd}",
                       replay_tool_hash(data, tmp_path / f"export-{rnd}.jsonl"),
                       rp.core.state_hash()))
        check_durable(rp, told)
        await srv.start()
        await check_server_equals_replay(srv, rp)
    print(f"sent {sent} orders, {len(told.acked)} acknowledged, told of {len(told.trades)}"
          f" trade sides; journal {rp.records} records")
    from_snapshot = len(re.findall(r"recovered \d+ records; state \w+ \(from the snapshot",
                                   srv.log.read_text()))
    if snapshots:  # at least two of the four restarts started from a snapshot
        assert from_snapshot >= 2, srv.log.read_text()[-3000:]
    else:
        assert from_snapshot == 0
    assert sent > 200 and len(told.acked) > 100
    assert len(told.trades) > 50  # the orders crossed
    # a clean stop at the end: the same once more
    srv.terminate()
    rp = replay_journal(data)
    check_durable(rp, told)
    hashes.append(("after the clean stop",
                   replay_tool_hash(data, tmp_path / "export-final.jsonl"),
                   rp.core.state_hash()))
    # `ronda journal export` + `ronda replay` reach the state the server recovers to
    assert [h for h in hashes if h[1] != h[2]] == []


async def test_trades_of_the_day_survive_a_restart(tmp_path: Path,
                                                   servers: list[ServerProcess]) -> None:
    """query_trades («trades of the day, own side», docs/protocol.md) and
    query_public_trades (a contract's last trades, each with its trades stream seq) after a
    crash still list the trades from before it: they are in the journal (the public ones
    were lost), and the trades stream goes on numbering from there."""
    data = tmp_path / "data"
    srv = ServerProcess(data)
    servers.append(srv)
    await srv.start()
    await open_market(srv.port)
    ana = await connect_as(srv.port, "ana")
    carlos = await connect_as(srv.port, "carlos")
    try:
        assert (await ana.request(order(CONTRACTS[0], "SELLU1", "SELL", "50.00", "1.0")))[
            "type"] == "ack"
        assert (await carlos.request(order(CONTRACTS[0], "BUYU2", "BUY", "50.00", "1.0")))[
            "reports"][0]["action"] == "FILLED"
        before = (await ana.request({"type": "query_trades"}))["trades"]
        assert len(before) == 1
        public = (await ana.request({"type": "query_public_trades",
                                     "contract": CONTRACTS[0]}))["trades"]
        assert [(t["trade_id"], t["seq"]) for t in public] == [(before[0]["trade_id"], 1)]
    finally:
        await ana.close()
        await carlos.close()
    srv.kill()
    await srv.start()
    ana = await connect_as(srv.port, "ana")
    carlos = await connect_as(srv.port, "carlos")
    try:
        after = (await ana.request({"type": "query_trades"}))["trades"]
        assert [t["trade_id"] for t in after] == [t["trade_id"] for t in before]
        again = (await ana.request({"type": "query_public_trades",
                                    "contract": CONTRACTS[0]}))["trades"]
        assert again == public
        sub = await ana.request({"type": "subscribe", "stream": "trades",
                                 "contract": CONTRACTS[0]})
        assert sub["seq"] == 1  # the stream goes on from the trade before the crash
        assert (await ana.request(order(CONTRACTS[0], "SELLU1", "SELL", "50.00", "1.0")))[
            "type"] == "ack"
        assert (await carlos.request(order(CONTRACTS[0], "BUYU2", "BUY", "50.00", "1.0")))[
            "type"] == "ack"
        new = await ana.wait_for(lambda m: m.get("type") == "public_trade")
        assert new["seq"] == 2
    finally:
        await ana.close()
        await carlos.close()
    srv.terminate()



async def test_a_failed_journal_stops_the_server_and_a_restart_recovers(
        tmp_path: Path, servers: list[ServerProcess]) -> None:
    """The journal's file cannot grow any more (a file-size limit on the process: what a
    full disk does).  The order being recorded is answered OUTCOME_UNKNOWN, the server
    closes every connection and exits with status 3; restarted without the limit, it cuts
    the torn write off and every acknowledged order is there."""
    limit = 256 * 1024

    def file_size_limit() -> None:  # (Python ignores SIGXFSZ: the write fails with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    data = tmp_path / "data"
    srv = ServerProcess(data, ("--no-fsync",), file_size_limit)
    servers.append(srv)
    await srv.start()
    await open_market(srv.port)
    ana = await connect_as(srv.port, "ana")
    carlos = await connect_as(srv.port, "carlos")  # another session, closed as well
    acked: list[int] = []
    try:
        for i in range(20_000):
            ans = await ana.request(order(CONTRACTS[i % 4], "SELLU1", "SELL",
                                          f"{60 + i % 300 / 100:.2f}", "0.1",
                                          client_order_id=f"c{i}"), timeout=10)
            if ans["type"] != "ack":
                break
            acked.extend(ans["order_ids"])
        assert (ans["type"], ans["code"]) == ("reject", "OUTCOME_UNKNOWN"), ans
        assert len(acked) > 500
        await ana.wait_closed(10)
        await carlos.wait_closed(10)
    finally:
        await ana.close()
        await carlos.close()
    assert srv.proc is not None
    assert srv.proc.wait(20) == 3
    text = srv.log.read_text(errors="replace")
    assert "ronda serve: the journal failed" in text and "File too large" in text
    srv.proc = None
    again = ServerProcess(data)
    servers.append(again)
    await again.start()
    rita = await connect_as(again.port, "rita")
    try:
        live = (await rita.request({"type": "query_orders", "agent": "AG1"}))["orders"]
    finally:
        await rita.close()
    found = {o["order_id"] for o in live}
    assert set(acked) <= found  # nothing acknowledged lost
    assert len(found) <= len(acked) + 1  # and at most the order in doubt besides
    again.terminate()


async def test_a_crash_hibernates_the_orders_of_connections_with_on_disconnect(
        tmp_path: Path, servers: list[ServerProcess]) -> None:
    """The login option ``on_disconnect: hibernate`` hibernates the user's orders when its
    connection is lost.  A crash loses every connection without a word: the restarted
    server hibernates those users' orders before it serves anything (the journal's
    session marks tell whose).  A user without the option keeps its orders active; a
    second, clean restart does not do it again."""
    data = tmp_path / "data"
    srv = ServerProcess(data)
    servers.append(srv)
    await srv.start()
    await open_market(srv.port)
    ana = await connect_as(srv.port, "ana", on_disconnect="hibernate")
    carlos = await connect_as(srv.port, "carlos")
    a = (await ana.request(order(CONTRACTS[0], "SELLU1", "SELL", "60.00", "1.0")))
    c = (await carlos.request(order(CONTRACTS[0], "BUYU2", "BUY", "40.00", "1.0")))
    assert a["type"] == c["type"] == "ack", (a, c)
    srv.kill()  # both connections open
    for client in (ana, carlos):
        with contextlib.suppress(Exception):
            await client.close()
    await srv.start()

    async def statuses() -> dict[int, str]:
        out = {}
        for user in ("ana", "carlos"):
            cl = await connect_as(srv.port, user)
            try:
                ans = await cl.request({"type": "query_orders"})
                out.update({o["order_id"]: o["status"] for o in ans["orders"]})
            finally:
                await cl.close()
        return out

    assert await statuses() == {a["order_ids"][0]: "HIBERNATED",
                                c["order_ids"][0]: "ACTIVE"}
    log = srv.log.read_text()
    assert log.count("hibernated 1 orders of ana") == 1, log[-2000:]
    srv.terminate()
    await srv.start()
    assert srv.log.read_text().count("hibernated 1 orders of ana") == 1
    assert await statuses() == {a["order_ids"][0]: "HIBERNATED",
                                c["order_ids"][0]: "ACTIVE"}
