"""A small async WebSocket client for the gateway's tests, and helpers to run a server.

:class:`Client` connects to a running gateway (``ronda.json`` or ``ronda.msgpack``), reads
every message in a background task, matches each answer to its request by ``req_id``
(:meth:`Client.request`), and keeps everything it received so that tests can look at the
streams (:meth:`Client.stream`) or wait for a message (:meth:`Client.wait_for`).

An *answer* is the one message a request causes (``ack``, ``reject``, ``error`` or a query's
result); a *stream* message carries ``stream`` (``book:C``, ``trades:C``, ``states``,
``private:AGENT``).  Private order reports and rejections also carry the request's
``req_id``, but they are stream messages, not answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import orjson
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

JSON = "ronda.json"
MSGPACK = "ronda.msgpack"

TOKENS = {
    "ana": "ana-demo-token",
    "carlos": "carlos-demo-token",
    "bea": "bea-demo-token",
    "rita": "rita-demo-token",
    "marta": "marta-demo-token",
    "sofia": "sofia-demo-token",
}
AGENT_OF = {"ana": "AG1", "carlos": "AG2", "bea": "AG3", "rita": "OMIE", "marta": "OMIE",
            "sofia": "REE"}
USERS_OF = {"AG1": {"ana"}, "AG2": {"carlos"}, "AG3": {"bea"}, "AG4": set(),
            "OMIE": {"rita", "marta"}, "REE": {"sofia"}}
# the units each agent may offer (it is responsible for them)
UNITS_OF = {"AG1": ("SELLU1",), "AG2": ("BUYU2",), "AG3": ("SELLU3", "PTBUY4")}

ANSWER_TYPES = frozenset({"ack", "reject", "error", "heartbeat", "me", "contracts", "orders",
                          "trades", "account", "book", "throttling", "settlement", "agents",
                          "public_trades", "audit"})


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def contract_id(hour: int, days_ahead: int = 2) -> str:
    """An hourly contract (period ``hour``) delivered ``days_ahead`` days from today (UTC)."""
    day = datetime.now(UTC).date() + timedelta(days=days_ahead)
    return f"PH-{day:%Y%m%d}-{hour:02d}"


def is_answer(msg: dict[str, Any]) -> bool:
    """Whether a message answers a request (as opposed to a stream message or a push)."""
    if msg.get("type") not in ANSWER_TYPES:
        return False
    if "stream" not in msg:
        return "req_id" in msg  # server heartbeats and DISCONNECTED carry no req_id
    # stream-tagged answers: subscription acks and the snapshot a query_book returns
    return msg["type"] == "ack" or (msg["type"] == "book" and "req_id" in msg)


class Client:
    def __init__(self, ws: ClientConnection, read: bool = True) -> None:
        self.ws = ws
        self.binary = ws.subprotocol == MSGPACK
        self.received: list[dict[str, Any]] = []
        self.answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.sent_req_ids: list[str] = []
        self.user: str | None = None
        self.agent: str | None = None
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._event = asyncio.Event()
        self._ids = itertools.count(1)
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if read:
            self.start_reading()

    @classmethod
    async def connect(cls, port: int, subprotocol: str | None = JSON, read: bool = True,
                      rcvbuf: int | None = None, **kw: Any) -> Client:
        """Connect to ``ws://127.0.0.1:port/ws``.  ``read=False`` makes a client that reads
        nothing until :meth:`start_reading`; ``rcvbuf`` shrinks its socket's receive buffer
        (a slow consumer)."""
        sock = None
        if rcvbuf is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        protos = [subprotocol] if subprotocol else None
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", subprotocols=protos,
                                      sock=sock, open_timeout=5, **kw)
        return cls(ws, read)

    # ------------------------------------------------------------------ receiving

    def start_reading(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._reader())

    def decode(self, raw: str | bytes) -> Any:
        if isinstance(raw, bytes) and self.binary:
            return msgpack.unpackb(raw, raw=False)
        return orjson.loads(raw)

    async def _reader(self) -> None:
        try:
            async for raw in self.ws:
                msg = self.decode(raw)
                self._dispatch(msg)
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else self.ws.close_code
            self.close_reason = rcvd.reason if rcvd is not None else self.ws.close_reason
            self.closed.set()
            self._event.set()
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(
                        f"connection closed ({self.close_code} {self.close_reason!r})"))
            self._waiters.clear()

    def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            raise AssertionError(f"the server sent a non-object: {msg!r}")
        self.received.append(msg)
        rid = msg.get("req_id")
        if isinstance(rid, str) and is_answer(msg):
            self.answers[rid].append(msg)
            fut = self._waiters.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        self._event.set()

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0,
                       start: int = 0) -> dict[str, Any]:
        """The first received message (from index ``start``) satisfying ``pred``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        i = start
        while True:
            self._event.clear()
            while i < len(self.received):
                if pred(self.received[i]):
                    return self.received[i]
                i += 1
            if self.closed.is_set():
                raise AssertionError("connection closed while waiting")
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("no such message arrived")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)

    async def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str | None]:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code, self.close_reason

    def stream(self, name: str) -> list[dict[str, Any]]:
        """The messages of one stream, in arrival order (answers excluded)."""
        return [m for m in self.received if m.get("stream") == name and not is_answer(m)]

    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == "error"]

    def check_one_answer_each(self) -> None:
        """Every request sent with a req_id got exactly one answer."""
        for rid in self.sent_req_ids:
            got = self.answers.get(rid, [])
            assert len(got) == 1, f"request {rid}: {len(got)} answers: {got}"

    # ------------------------------------------------------------------ sending

    def encode(self, msg: Any) -> str | bytes:
        if self.binary:
            return msgpack.packb(msg, use_bin_type=True)  # type: ignore[no-any-return]
        return json.dumps(msg, ensure_ascii=False)

    async def send(self, msg: Any) -> None:
        await self.ws.send(self.encode(msg))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    def next_req_id(self) -> str:
        return f"r{next(self._ids)}"

    async def request(self, msg: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send a request (a req_id is added if it has none) and return its answer."""
        msg = dict(msg)
        rid = msg.setdefault("req_id", self.next_req_id())
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        self.sent_req_ids.append(rid)
        try:
            try:
                await self.send(msg)
            except ConnectionClosed as exc:
                raise ConnectionError(f"connection closed: {exc}") from None
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.pop(rid, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved, whatever happened

    async def login(self, user: str, token: str | None = None, **extra: Any
                    ) -> dict[str, Any]:
        ans = await self.request({"type": "login", "user": user,
                                  "token": TOKENS[user] if token is None else token, **extra})
        if ans.get("type") == "ack":
            self.user = user
            self.agent = ans["agent"]
        return ans

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def connect_as(port: int, user: str, subprotocol: str | None = JSON,
                     **login: Any) -> Client:
    c = await Client.connect(port, subprotocol)
    ans = await c.login(user, **login)
    assert ans["type"] == "ack", ans
    return c


# ---------------------------------------------------------------------- orders


def order(contract: str, unit: str, side: str, price: str, qty: str, **kw: Any
          ) -> dict[str, Any]:
    return {"type": "order_entry", "contract": contract, "unit": unit, "side": side,
            "price": price, "quantity": qty, **kw}


# ---------------------------------------------------------------------- in-process server


async def open_contracts(server: Any, ids: Iterable[str], close_in_ms: int = 3_600_000
                         ) -> None:
    from engine.commands import CreateContract, OpenContracts

    ids = tuple(ids)
    close_at = now_ms() + close_in_ms
    for cid in ids:
        await server.sequencer.submit(CreateContract(cid, close_at), "operator")
    await server.sequencer.submit(OpenContracts(ids), "operator")


async def lift_rate_limits(server: Any) -> None:
    """The demo data allow 50 requests a second per user: enough for people, not for load."""
    from risk.commands import SetRateLimits

    await server.sequencer.submit(SetRateLimits("rita", None, ((1000, 10_000_000),)), "rita")


async def start_server(data_dir: Path, contracts: Iterable[str] = (), *,
                       demo_rate_limits: bool = False, **config: Any) -> Any:
    """An in-process server (no calendar, no fsync unless asked) with ``contracts`` open
    and, unless ``demo_rate_limits``, the demo's rate limits lifted."""
    from gateway.server import Config, Server

    config.setdefault("fsync", False)
    server = Server(Config(data_dir=data_dir, port=0, calendar=None, **config))
    await server.start()
    try:
        ids = tuple(contracts)
        if ids:
            await open_contracts(server, ids)
        if not demo_rate_limits:
            await lift_rate_limits(server)
    except BaseException:
        await server.stop()
        raise
    return server


@contextlib.asynccontextmanager
async def running_server(data_dir: Path, contracts: Iterable[str] = (), **config: Any
                         ) -> AsyncIterator[Any]:
    server = await start_server(data_dir, contracts, **config)
    try:
        yield server
    finally:
        await server.stop()


def session_of(server: Any, user: str) -> Any:
    """The server-side session of the user's only connection."""
    sessions = list(server.sessions_of.get(user, ()))
    assert len(sessions) == 1, sessions
    return sessions[0]
