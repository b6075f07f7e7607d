"""Fuzzing the gateway's decoders and session with hypothesis.

Two levels:

* directly into :meth:`gateway.session.Session.handle` (with a fake transport, on a live
  server's core): arbitrary JSON values, dictionaries with a valid ``type`` and random
  fields and values, arbitrary msgpack values (bytes, bytes keys, NaN, extension types);
  each example runs on the event loop while hypothesis drives from a worker thread, so an
  example is checked as a whole (its asynchronous answer included) and shrinks;
* over real sockets, a smaller run: random text frames on ``ronda.json`` and random bytes
  and msgpack values on ``ronda.msgpack``.

The oracle: every input gets exactly one answer, every message that comes out is of a
documented type with a documented code, nothing raises (in the session, the transport
handler, the sequencer's listeners or the core), nothing is logged as an error, and the
server still answers a valid request afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from wsclient import (
    JSON,
    MSGPACK,
    TOKENS,
    Client,
    contract_id,
    iso,
    now_ms,
    start_server,
)

from auctions.session import ScheduleAuction
from engine.commands import Tick
from engine.errors import Code
from gateway.session import ROLES, SESSION_TYPES, Session

C1, C2 = contract_id(10), contract_id(11)
SESSION_CODES = {"NOT_LOGGED_IN", "ALREADY_LOGGED_IN", "LOGIN_FAILED", "NOT_PERMITTED",
                 "UNAVAILABLE", "AGENT_UNKNOWN"}
# the auction module's own codes (auctions/session.py)
AUCTION_CODES = {"AUCTION_NOT_OPEN", "AUCTION_PERIOD_NOT_IN_HORIZON", "AUCTION_BID_INVALID",
                 "AUCTION_BID_UNKNOWN", "AUCTION_UNKNOWN", "AUCTION_INVALID"}
REJECT_CODES = {c.value for c in Code} | SESSION_CODES | AUCTION_CODES
ERROR_CODES = {"INVALID_FIELD", "INVALID_ENCODING", "TOO_LARGE", "THROTTLED", "DISCONNECTED"}
ANSWERS = {"ack", "reject", "error", "heartbeat", "me", "contracts", "orders", "trades",
           "account", "book", "throttling", "settlement", "agents", "public_trades", "audit"}
STREAM_TYPES = {"order_report", "trade", "public_trade", "book", "contract_state",
                "round_closed", "account", "risk_notice", "throttling", "reject"}
USERS = [None, *TOKENS]  # None: not logged in
SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck),
                    max_examples=250)


def is_answer(m: dict[str, Any]) -> bool:
    """The answer to a request, whatever its req_id (stream messages excluded)."""
    if m.get("type") not in ANSWERS:
        return False
    if "stream" not in m:
        return True
    return m["type"] == "ack" or (m["type"] == "book" and "req_id" in m)


def check_message(m: Any) -> None:
    """One outbound message follows the protocol."""
    assert isinstance(m, dict), m
    typ = m.get("type")
    assert typ in ANSWERS | STREAM_TYPES, m
    if typ == "error":
        assert m["code"] in ERROR_CODES, m
        assert isinstance(m["reason"], str) and m["reason"], m
        if m["code"] != "DISCONNECTED":
            assert isinstance(m["field"], str), m
    elif typ == "reject":
        assert m["code"] in REJECT_CODES, m
        assert isinstance(m["reason"], str) and m["reason"], m


# ---------------------------------------------------------------------- strategies

json_leaf = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
             | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    json_leaf, lambda ch: st.lists(ch, max_size=4)
    | st.dictionaries(st.text(max_size=8), ch, max_size=4), max_leaves=12)

TYPES = sorted(set(ROLES) | SESSION_TYPES | {"login", "no_such_type"})
FIELDS = ["req_id", "session", "steps", "bid_id", "step", "delay_s", "reactivate",
          "contract", "contracts", "unit", "side", "price", "quantity", "exec",
          "validity", "expiry", "iceberg", "state", "client_order_id", "basket", "orders",
          "order_id", "order_ids", "revision", "scope", "stream", "agent", "agents", "user",
          "token", "on_disconnect", "change", "amount", "hibernate_on_breach",
          "request_id", "accept", "reason", "rules", "warning_ratio", "close_at", "period",
          "energy", "unavailable", "min_energy", "max_energy", "peak", "price_increment"]
WORDS = ["50.00", "1.0", "-3.5", "0.1", "9999.99", "10000.00", "50.001", "1.05", "NaN", "1e3",
         "", " 1.0", "0", "-0.0", C1, C2, "PH-20000101-01", "QH-20270115-001", "SELLU1",
         "BUYU2", "SELLU3", "PTBUY4", "BUY", "SELL", "NON", "IOC", "FOK", "GFS", "GTD",
         "NONE", "VALID", "LINKED", "ACTIVE", "HIBERNATED", "user", "agent", "book",
         "trades", "states", "private", "*", "AG1", "AG2", "AG3", "AG4", "OMIE", "ana",
         "carlos", "rita", "none", "hibernate", "increase", "reduction",
         "2030-01-01T00:00:00Z", "2020-01-01T00:00:00.000+01:00", "ana-demo-token"]
field_values = st.one_of(
    st.sampled_from(WORDS), json_values, st.integers(0, 40),
    st.builds(lambda: iso(now_ms() + 600_000)),
    st.lists(st.integers(0, 40), max_size=3),
    st.lists(st.sampled_from([C1, C2]), min_size=1, max_size=2),
    st.fixed_dictionaries({}, optional={"peak": st.sampled_from(["0.5", "2.0", 5]),
                                        "price_increment": st.sampled_from(["0.10", "-1"])}),
    st.lists(st.fixed_dictionaries(
        {"contract": st.sampled_from([C1, C2]), "unit": st.sampled_from(["SELLU1", "BUYU2"]),
         "side": st.sampled_from(["BUY", "SELL"]), "price": st.sampled_from(["45.00", "55.5"]),
         "quantity": st.sampled_from(["0.1", "1.0"])},
        optional={"exec": st.sampled_from(["NON", "FOK"]), "junk": json_leaf}),
        max_size=3),
    st.lists(st.fixed_dictionaries({"window_ms": st.integers(0, 2000),
                                    "max": st.integers(0, 5)}), max_size=2),
)
typed_dicts = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={f: field_values for f in FIELDS} | {"junk": json_values})

msgpack_leaf = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
                | st.text(max_size=12) | st.binary(max_size=12)
                | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)))
msgpack_values = st.recursive(
    msgpack_leaf, lambda ch: st.lists(ch, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), ch, max_size=4),
    max_leaves=12)
msgpack_typed = st.builds(
    lambda base, extra: {**extra, **base}, typed_dicts,
    st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), msgpack_leaf, max_size=3))


# requests that are nearly right: a valid template for each type, sent by a user who may
# send it (mostly), then perhaps a field dropped, a value replaced, or a field added
C3, C4 = contract_id(12), contract_id(13)
USER_ROLES = {"ana": {"trader"}, "carlos": {"trader"}, "bea": {"trader"},
              "rita": {"risk_officer"}, "marta": {"market_operator", "auction_operator"},
              "sofia": {"system_operator"}}
prices = st.sampled_from(["45.00", "50.00", "52.5", "-1.00", "9999.00"])
qtys = st.sampled_from(["0.1", "1.0", "2.5", "999.0"])
contracts = st.sampled_from([C1, C2])
op_contracts = st.lists(st.sampled_from([C3, C4, C2]), min_size=1, max_size=2)
units = st.sampled_from(["SELLU1", "BUYU2", "SELLU3", "PTBUY4"])
ids = st.integers(1, 80)
agents = st.sampled_from(["AG1", "AG2", "AG3", "AG4", "OMIE", "NOPE"])
order_fields = st.fixed_dictionaries(
    {"contract": contracts, "unit": units, "side": st.sampled_from(["BUY", "SELL"]),
     "price": prices, "quantity": qtys},
    optional={"exec": st.sampled_from(["NON", "IOC", "FOK"]),
              "validity": st.sampled_from(["GFS", "GTD"]),
              "expiry": st.builds(lambda d: iso(now_ms() + d), st.integers(-1000, 7_200_000)),
              "iceberg": st.fixed_dictionaries(
                  {"peak": st.sampled_from(["0.5", "1.0"])},
                  optional={"price_increment": st.sampled_from(["0.10", "-0.10"])}),
              "state": st.sampled_from(["ACTIVE", "HIBERNATED"]),
              "client_order_id": st.sampled_from(["a", "b", "c"])})
TEMPLATES: dict[str, Any] = {
    "order_entry": order_fields,
    "basket_entry": st.fixed_dictionaries({
        "basket": st.sampled_from(["NONE", "VALID", "LINKED"]),
        "orders": st.lists(order_fields, min_size=1, max_size=3)}),
    "order_modify": st.fixed_dictionaries({"order_id": ids, "revision": st.integers(1, 3),
                                           "price": prices, "quantity": qtys}),
    "order_cancel": st.fixed_dictionaries({"order_id": ids}),
    "order_deactivate": st.fixed_dictionaries(
        {}, optional={"order_ids": st.lists(ids, min_size=1, max_size=3),
                      "contract": contracts}),
    "order_activate": st.fixed_dictionaries(
        {}, optional={"order_ids": st.lists(ids, min_size=1, max_size=3),
                      "contract": contracts}),
    "cancel_all": st.fixed_dictionaries(
        {}, optional={"scope": st.sampled_from(["user", "agent"]), "contract": contracts}),
    "guarantee_request": st.fixed_dictionaries(
        {"change": st.sampled_from(["increase", "reduction"]),
         "amount": st.sampled_from(["100.00", "0.00", "1000000.00"])}),
    "set_breach_action": st.fixed_dictionaries({"hibernate_on_breach": st.booleans()}),
    "set_guarantees": st.fixed_dictionaries(
        {"agent": agents, "amount": st.sampled_from(["50000.00", "0.00", "-5.00"])}),
    "decide_guarantee_request": st.fixed_dictionaries(
        {"request_id": st.integers(1, 10), "accept": st.booleans()}),
    "suspend_agent": st.fixed_dictionaries({"agent": agents}),
    "reinstate_agent": st.fixed_dictionaries({"agent": agents}),
    "set_rate_limits": st.fixed_dictionaries(
        {"rules": st.lists(st.fixed_dictionaries(
            {"window_ms": st.sampled_from([1000, 60000]),
             "max": st.sampled_from([1_000_000, 1])}), min_size=1, max_size=2)},
        optional={"user": st.sampled_from(["bea", "nobody"])}),
    "interrupt_contracts": st.fixed_dictionaries({"contracts": op_contracts}),
    "resume_contracts": st.fixed_dictionaries({"contracts": op_contracts}),
    **{k: st.fixed_dictionaries({"unit": units, "period": contracts, v: qtys})
       for k, v in (("set_program", "energy"), ("set_unavailability", "unavailable"),
                    ("set_limitation", "max_energy"))},
    "contract_create": st.fixed_dictionaries(
        {"contract": st.sampled_from([C3, C4, C1, "PH-20270230-01"]),
         "close_at": st.builds(lambda d: iso(now_ms() + d), st.integers(-1000, 7_200_000))}),
    **{k: st.fixed_dictionaries({"contracts": op_contracts}) for k in (
        "contract_open", "contract_close", "contract_interrupt", "contract_resume")},
    "hibernate": st.fixed_dictionaries({}, optional={"agent": agents, "contract": contracts}),
    "reactivate": st.fixed_dictionaries({"contracts": op_contracts},
                                        optional={"agents": st.lists(agents, max_size=2)}),
    "time": st.just({}),
    "auction_bid": st.fixed_dictionaries(
        {"session": st.sampled_from(["AUC-FUZZ", "NOPE"]), "unit": units,
         "contract": st.sampled_from([C3, C1]), "side": st.sampled_from(["BUY", "SELL"]),
         "steps": st.lists(st.fixed_dictionaries({"price": prices, "quantity": qtys}),
                           min_size=1, max_size=3)}),
    "auction_bid_cancel": st.fixed_dictionaries(
        {"session": st.sampled_from(["AUC-FUZZ", "NOPE"]), "bid_id": st.integers(1, 5)}),
    "set_reactivation": st.fixed_dictionaries({"reactivate": st.booleans()}),
    "auction_run": st.fixed_dictionaries(
        {"session": st.sampled_from(["AUC-FUZZ", "NOPE"]),
         "step": st.sampled_from(["open", "close", "clear", "reopen"])}),
    "auction_delay": st.fixed_dictionaries(
        {"session": st.sampled_from(["AUC-FUZZ", "NOPE"]), "delay_s": st.integers(1, 60)}),
    "auction_cancel": st.fixed_dictionaries({"session": st.sampled_from(["AUC-FUZZ"])}),
    "cancel_agent_orders": st.fixed_dictionaries({"agent": agents}),
    "login": st.fixed_dictionaries({"user": st.sampled_from(list(TOKENS))},
                                   optional={"token": st.sampled_from(list(TOKENS.values())),
                                             "on_disconnect": st.sampled_from(
                                                 ["none", "hibernate"])}),
    "logout": st.just({}),
    "heartbeat": st.just({}),
    "query_me": st.just({}),
    "query_contracts": st.just({}),
    **{k: st.fixed_dictionaries({}, optional={"agent": agents})
       for k in ("query_orders", "query_trades", "query_account")},
    "query_book": st.fixed_dictionaries({"contract": contracts}),
    "query_public_trades": st.fixed_dictionaries({"contract": contracts}),
    "query_agents": st.just({}),
    "query_settlement": st.fixed_dictionaries(
        {"day": st.sampled_from(["2026-11-25", "2026-13-01", "yesterday"])},
        optional={"agent": agents}),
    "query_audit": st.fixed_dictionaries({}, optional={
        "agent": agents, "before": st.integers(-1, 50) | st.just("3"),
        "limit": st.integers(-1, 1001)}),
    "query_throttling": st.fixed_dictionaries(
        {}, optional={"user": st.sampled_from(list(TOKENS))}),
    "subscribe": st.fixed_dictionaries(
        {"stream": st.sampled_from(["book", "trades", "states", "private"])},
        optional={"contract": contracts, "agent": st.sampled_from(["AG1", "AG2", "*"])}),
    "unsubscribe": st.fixed_dictionaries(
        {"stream": st.sampled_from(["book", "trades", "states", "private"])},
        optional={"contract": contracts}),
}


def _sender(kind: str) -> Any:
    allowed = [u for u, r in USER_ROLES.items() if kind not in ROLES or r & ROLES[kind]]
    return st.sampled_from(allowed) | st.sampled_from(USERS)


def _mutate(kind: str, body: dict[str, Any], drop: list[str], put: dict[str, Any]
            ) -> dict[str, Any]:
    out = {"type": kind, **{k: v for k, v in body.items() if k not in drop}}
    out.update(put)
    return out


plausible = st.sampled_from(sorted(TEMPLATES)).flatmap(lambda kind: st.tuples(
    _sender(kind),
    st.builds(_mutate, st.just(kind), TEMPLATES[kind],
              st.lists(st.sampled_from(FIELDS), max_size=1),
              st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=1)
              | st.just({}) | st.just({}))))


# ---------------------------------------------------------------------- harness


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)

    async def send_many(self, msgs: list[dict[str, Any]]) -> None:
        self.sent.extend(msgs)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class Harness:
    """Runs examples on the event loop from hypothesis' worker thread."""

    def __init__(self, server: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.examples = 0
        self.outcomes: Counter[tuple[str, str]] = Counter()

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def settle(self) -> None:
        """Everything submitted so far has been applied and answered."""
        await self.server.sequencer.submit(Tick(), "operator")
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def one(self, user: str | None, data: Any) -> None:
        """One input into a fresh session (logged in as ``user``)."""
        self.examples += 1
        s = Session(self.server, FakeTransport(), max_queue=10_000)
        if user is not None:
            s.handle({"type": "login", "user": user, "token": TOKENS[user]})
            assert s.user == user
            s._out.clear()
        try:
            s.handle(data)  # must not raise
            await self.settle()
            # a few answers come from another task (query_settlement reads the store)
            for _ in range(500):
                if any(is_answer(m) for m in s._out):
                    break
                await asyncio.sleep(0.01)
            await self.settle()  # and nothing more may follow
            out = list(s._out)
            for m in out:
                check_message(m)
            answers = [m for m in out if is_answer(m)]
            assert len(answers) == 1, (data, out)
            a = answers[0]
            self.outcomes[(a["type"], str(a.get("code") or a.get("kind") or ""))] += 1
            rid = data.get("req_id") if isinstance(data, dict) else None
            if isinstance(rid, str) and answers[0]["type"] != "error":
                assert answers[0].get("req_id") == rid, (data, answers)
        finally:
            await s.closed()


async def _fuzz_in_thread(harness: Harness, body: Callable[[], None]) -> None:
    await asyncio.get_running_loop().run_in_executor(None, body)
    assert harness.examples > 0


def _server_is_healthy(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    assert server.core.failures == 0  # no command raised inside the core
    assert server.sequencer.failed is None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
async def server(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.WARNING)
    srv = await start_server(tmp_path, (C1, C2, C3), heartbeat_s=3600,
                             max_errors_per_10s=1_000_000)
    try:
        t0 = now_ms()  # an auction session for the fuzz to drive, over C3
        await srv.sequencer.submit(ScheduleAuction("AUC-FUZZ", (C3,), t0 + 60_000,
                                                   t0 + 120_000, t0 + 180_000), "calendar")
        yield srv
    finally:
        await srv.stop()


async def _still_answers(server: Any) -> None:
    c = await Client.connect(server.port)
    try:
        assert (await c.login("ana"))["type"] == "ack"
        ans = await c.request({"type": "query_contracts"})
        assert {C1, C2} <= {x["contract"] for x in ans["contracts"]}
    finally:
        await c.close()


# ---------------------------------------------------------------------- Session.handle


async def test_fuzz_session_with_json_values(server: Any,
                                             caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(server, asyncio.get_running_loop())

    @SETTINGS
    @given(user=st.sampled_from(USERS), value=json_values)
    def body(user: str | None, value: Any) -> None:
        h.run(h.one(user, orjson.loads(orjson.dumps(value))))

    await _fuzz_in_thread(h, body)
    _server_is_healthy(server, caplog)
    await _still_answers(server)


async def test_fuzz_session_with_typed_requests(server: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Any type, random fields and values: mostly errors, a few deeper."""
    h = Harness(server, asyncio.get_running_loop())

    @settings(SETTINGS, max_examples=200)
    @given(user=st.sampled_from(USERS), data=typed_dicts)
    @example(user="rita", data={"type": "query_throttling", "user": {"a": [1]}})
    def body(user: str | None, data: dict[str, Any]) -> None:
        h.run(h.one(user, orjson.loads(orjson.dumps(data))))

    await _fuzz_in_thread(h, body)
    assert h.outcomes[("error", "INVALID_FIELD")] > 0
    _server_is_healthy(server, caplog)
    await _still_answers(server)


async def test_fuzz_session_with_plausible_requests(server: Any,
                                                    caplog: pytest.LogCaptureFixture
                                                    ) -> None:
    """Nearly right requests of every type, mostly by users allowed to send them: deep
    into the engine, risk checks and operator commands."""
    h = Harness(server, asyncio.get_running_loop())

    @settings(SETTINGS, max_examples=500)
    @given(case=plausible)
    @example(case=("ana", {"type": "order_entry", "contract": C1, "unit": "SELLU1",
                           "side": "SELL", "price": "50.00", "quantity": "1.0"}))
    @example(case=("marta", {"type": "contract_open", "contracts": [C2, C2]}))
    def body(case: tuple[str | None, dict[str, Any]]) -> None:
        user, data = case
        h.run(h.one(user, orjson.loads(orjson.dumps(data))))

    await _fuzz_in_thread(h, body)
    # the fuzz went deep: requests accepted and refused by the core for many reasons
    acks = {k for (t, k), n in h.outcomes.items() if t == "ack" and k in ROLES}
    rejects = {k for (t, k), n in h.outcomes.items() if t == "reject"}
    assert len(acks) >= 10, h.outcomes
    assert len(rejects - SESSION_CODES) >= 5, h.outcomes
    _server_is_healthy(server, caplog)
    await _still_answers(server)


async def test_fuzz_session_with_msgpack_values(server: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(server, asyncio.get_running_loop())

    @SETTINGS
    @given(user=st.sampled_from(USERS), value=msgpack_values | msgpack_typed)
    @example(user=None, value={"type": "login", "colour": 1, b"size": 2})
    def body(user: str | None, value: Any) -> None:
        packed = msgpack.packb(value, use_bin_type=True)
        h.run(h.one(user, msgpack.unpackb(packed, raw=False, strict_map_key=True)))

    await _fuzz_in_thread(h, body)
    _server_is_healthy(server, caplog)
    await _still_answers(server)


async def test_msgpack_login_with_str_and_bytes_keys_is_an_error(server: Any) -> None:
    """msgpack maps may have str and bytes keys (strict_map_key allows both): an unknown
    field of each kind in a login must get an error, not break the connection."""
    c = await Client.connect(server.port, MSGPACK)
    try:
        await c.send({"type": "login", "colour": 1, b"size": 2, "req_id": "l"})
        ans = await c.request({"type": "heartbeat"})
        assert ans["type"] == "heartbeat"
        assert [m["code"] for m in c.errors()] == ["INVALID_FIELD"]
    finally:
        await c.close()


@pytest.mark.parametrize("req_id", [["a", "list"], "x" * 65], ids=["list", "too-long"])
@pytest.mark.parametrize("typ", ["query_me", "order_cancel"])
async def test_invalid_req_id_is_refused(server: Any, typ: str, req_id: Any) -> None:
    """docs/protocol.md: a req_id has 1-64 characters; anything else is refused with an
    error naming the field (not echoed back as if it were one)."""
    c = await Client.connect(server.port)
    try:
        assert (await c.login("ana"))["type"] == "ack"
        msg = {"type": typ, "req_id": req_id}
        if typ == "order_cancel":
            msg["order_id"] = 1
        await c.send(msg)
        await c.request({"type": "heartbeat"})
        (answer,) = [m for m in c.received[1:-1] if is_answer(m)]
        assert (answer["type"], answer.get("field")) == ("error", "req_id"), answer
    finally:
        await c.close()


# ---------------------------------------------------------------------- live sockets


class LiveProbe:
    """A connection that survives the fuzz (reconnecting only after a documented close)."""

    def __init__(self, server: Any, subprotocol: str) -> None:
        self.server = server
        self.subprotocol = subprotocol
        self.client: Client | None = None
        self.n = 0
        self.reconnects = 0

    async def ensure(self) -> Client:
        if self.client is None or self.client.closed.is_set():
            if self.client is not None:
                code, reason = self.client.close_code, self.client.close_reason
                # only the documented closes: logout, three failed logins
                assert code == 1008 and reason in ("logged out", "too many failed logins"), (
                    code, reason)
                self.reconnects += 1
                await self.client.close()
            self.client = await Client.connect(self.server.port, self.subprotocol)
            assert (await self.client.login("bea"))["type"] == "ack"
        return self.client

    async def frame(self, raw: str | bytes) -> None:
        c = await self.ensure()
        start = len(c.received)
        await c.send_raw(raw)
        self.n += 1
        rid = f"sentinel-{self.n}"
        try:
            # The sentinel goes through the sequencer, like any command the frame may have
            # been: answers to core commands come after journaling, in order, whereas a
            # heartbeat is answered at once and may overtake the frame's answer.
            await c.request({"type": "order_cancel", "order_id": 10**12, "req_id": rid})
        except ConnectionError:
            await self.ensure()  # checks that the close was a documented one
            return
        window = c.received[start:]
        for m in window:
            check_message(m)
        answers = [m for m in window if is_answer(m) and m.get("req_id") != rid]
        assert len(answers) <= 1, (raw, window)  # one answer (none if it closed)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


async def test_fuzz_live_json_frames(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(server, asyncio.get_running_loop())
    probe = LiveProbe(server, JSON)

    @settings(SETTINGS, max_examples=150)
    @given(frame=st.one_of(
        st.text(max_size=60),
        st.builds(lambda v: orjson.dumps(v).decode(), json_values),
        st.builds(lambda v: orjson.dumps(v).decode(), typed_dicts)))
    @example(frame='{"type": "order_entry", "price": "1.001"}')
    @example(frame='{"type": "logout"}')
    def body(frame: str) -> None:
        h.examples += 1
        h.run(probe.frame(frame))

    try:
        await _fuzz_in_thread(h, body)
        assert probe.n > 0
    finally:
        await probe.close()
    _server_is_healthy(server, caplog)
    await _still_answers(server)


async def test_fuzz_live_msgpack_frames(server: Any, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    h = Harness(server, asyncio.get_running_loop())
    probe = LiveProbe(server, MSGPACK)

    @settings(SETTINGS, max_examples=150)
    @given(frame=st.one_of(
        st.binary(max_size=60),
        st.builds(lambda v: msgpack.packb(v, use_bin_type=True), msgpack_values),
        st.builds(lambda v: msgpack.packb(v, use_bin_type=True), msgpack_typed)))
    @example(frame=b"\xc1")
    @example(frame=msgpack.packb({"type": "heartbeat"}) + b"\x00")
    @example(frame=msgpack.packb([1, 2, 3]))
    def body(frame: bytes) -> None:
        h.examples += 1
        h.run(probe.frame(frame))

    try:
        await _fuzz_in_thread(h, body)
        assert probe.n > 0
    finally:
        await probe.close()
    _server_is_healthy(server, caplog)
    await _still_answers(server)
