"""The Python SDK (clients/sdk.py) against a real in-process server over WebSocket, and over
AMQP with a private RabbitMQ (tests/broker.py).

Demo reference data (examples/refdata.toml): ana trades for AG1 (sells on SELLU1), carlos for
AG2 (buys on BUYU2), bea for AG3 (SELLU3, and PTBUY4 for AG4); marta is the market operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
import warnings
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
import msgpack
import pytest

from clients import sdk
from clients.sdk import (
    Account,
    Answer,
    BookDelta,
    BookSnapshot,
    BookUpdate,
    Client,
    ConnectionEvent,
    ContractInfo,
    ContractStateEvent,
    Heartbeat,
    Me,
    Order,
    OrderReport,
    OrderSpec,
    PublicTrade,
    RawEvent,
    Rejected,
    RequestError,
    Settlement,
    StreamGap,
    Throttling,
    Trade,
    wire_decimal,
    wire_instant,
)
from engine.commands import CreateContract, OpenContracts
from gateway.server import Config, Server
from risk.commands import SetRateLimits

if TYPE_CHECKING:
    from broker import Broker

pytest_plugins = ["broker"]

TOKENS = {"ana": "ana-demo-token", "carlos": "carlos-demo-token", "bea": "bea-demo-token",
          "rita": "rita-demo-token", "marta": "marta-demo-token"}


def contract_id(hour: int) -> str:
    day = datetime.now(UTC).date() + timedelta(days=2)
    return f"PH-{day:%Y%m%d}-{hour:02d}"


C1, C2 = contract_id(10), contract_id(11)


class Env:
    """One server (restartable on the same port and data folder) and the clients of a
    test, all closed at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.port = 0
        self.server: Server | None = None
        self.clients: list[Client] = []
        self.config: dict[str, Any] = {}

    @property
    def srv(self) -> Server:
        assert self.server is not None
        return self.server

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self, **config: Any) -> Server:
        self.config = {**self.config, **config}
        first = self.port == 0
        srv = Server(Config(data_dir=self.data, port=self.port, calendar=None, fsync=False,
                            **self.config))
        await srv.start()
        self.server = srv
        self.port = srv.port
        if first:
            close_at = int(time.time() * 1000) + 3_600_000
            for cid in (C1, C2):
                await srv.sequencer.submit(CreateContract(cid, close_at), "operator")
            await srv.sequencer.submit(OpenContracts((C1, C2)), "operator")
            # the demo allows 50 requests a second per user: lift it for the tests
            await srv.sequencer.submit(SetRateLimits("rita", None, ((1000, 10_000_000),)),
                                       "rita")
        return srv

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def client(self, user: str, **kw: Any) -> Client:
        kw.setdefault("backoff_min", 0.02)
        kw.setdefault("backoff_max", 0.2)
        c = await Client.connect_ws(self.url, user, TOKENS[user], **kw)
        self.clients.append(c)
        return c

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5)
        await self.stop()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    await e.start()
    try:
        yield e
    finally:
        await e.close()


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def engine_coids(server: Server, agent: str) -> list[str | None]:
    return [o.coid for o in server.core.orders_of(agent)]


async def books_agree(local: sdk.LocalBook, reference: Client, contract: str,
                      timeout: float = 5.0) -> BookSnapshot:
    """Wait until the local book has caught up with a snapshot taken by another client (one
    without a local book, so the query does not touch ``local``), and compare."""
    deadline = time.monotonic() + timeout
    while True:
        q = await reference.query_book(contract)
        if local.synced and local.seq == q.seq:
            assert local.bids() == list(q.bids)
            assert local.asks() == list(q.asks)
            return q
        if time.monotonic() > deadline:
            raise AssertionError(f"local book {local!r} never reached {q}")
        await asyncio.sleep(0.02)


# ====================================================================== conversions


def test_decimals_go_out_exactly_and_floats_are_refused() -> None:
    assert wire_decimal(Decimal("45.1"), 2) == "45.10"
    assert wire_decimal(Decimal("45.100"), 2) == "45.10"  # same value, no rounding
    assert wire_decimal("-3.5", 2) == "-3.50"
    assert wire_decimal(Decimal("1E+1"), 1) == "10.0"
    assert wire_decimal(7, 1) == "7.0"
    assert wire_decimal("-0", 2) == "0.00"
    with pytest.raises(TypeError):
        wire_decimal(45.1, 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        wire_decimal(True, 2)
    for bad in ("45.105", Decimal("0.05"), "NaN", "Infinity", "abc"):
        with pytest.raises(ValueError):
            wire_decimal(bad, 2 if bad != Decimal("0.05") else 1)
    assert wire_instant(datetime(2027, 1, 15, 9, 0, 0, 5000, tzinfo=UTC)) == \
        "2027-01-15T09:00:00.005Z"
    assert wire_instant(datetime(2027, 1, 15, 10, tzinfo=timezone_plus(1))) == \
        "2027-01-15T09:00:00.000Z"
    with pytest.raises(ValueError):
        wire_instant(datetime(2027, 1, 15, 9))  # naive
    with pytest.raises(ValueError):
        wire_instant(datetime(2027, 1, 15, 9, 0, 0, 1500, tzinfo=UTC))  # sub-millisecond


def timezone_plus(hours: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


def test_amqp_layout_matches_the_gateway() -> None:
    from gateway import amqp

    assert sdk.AMQP_REQUEST_EXCHANGE == amqp.REQUEST_EXCHANGE
    assert sdk.AMQP_REQUEST_KEY == amqp.REQUEST_KEY
    assert amqp.bcast_queue("ana") == sdk.AMQP_BCAST_PREFIX + "ana"



def test_msgpack_tick_fields_match_the_gateway() -> None:
    """The SDK reads msgpack's integer ticks back by field name: the same names the server
    converts (gateway/wire.py), so a new field cannot reach listeners as ticks."""
    from gateway import wire

    assert sdk._TICK_PRICES == wire._TICK_PRICES
    assert sdk._TICK_QTYS == wire._TICK_QTYS
    assert sdk._TICK_INSTANTS == wire._TICK_INSTANTS
    msg = {"type": "order_report", "price": -350, "visible": 125, "peak": 5,
           "price_increment": 0, "ts": 1_800_000_000_007, "expiry": None, "revision": 3,
           "order_ids": [4510], "rules": [{"used": 3, "max": 50}], "suspended": True}
    assert sdk._decode_msgpack(msgpack.packb(msg)) == {
        "type": "order_report", "price": "-3.50", "visible": "12.5", "peak": "0.5",
        "price_increment": "0.00", "ts": "2027-01-15T08:00:00.007Z", "expiry": None,
        "revision": 3, "order_ids": [4510], "rules": [{"used": 3, "max": 50}],
        "suspended": True}
    # the settlement report's numbers are exact decimals, as when it comes in JSON
    settlement = sdk._decode_msgpack(msgpack.packb(
        {"type": "settlement", "entries": [{"price": 4510, "x": 0.1}]}))
    assert settlement["entries"] == [{"price": "45.10", "x": Decimal("0.1")}]


async def test_msgpack_messages_read_back_exactly_as_their_json_form(env: Env) -> None:
    """Every kind of message a session gets, sent as msgpack (the server's to_ticks), is
    read back by the SDK into exactly the JSON message: decimals, quantities and instants
    from their ticks, counts left as counts."""
    from gateway.wire import to_ticks

    ana, carlos = await env.client("ana"), await env.client("carlos")
    seen: list[dict[str, Any]] = []
    dispatch = carlos._dispatch

    def record(msg: Any, gen: int) -> None:
        if isinstance(msg, dict):
            seen.append(msg)
        dispatch(msg, gen)

    carlos._dispatch = record  # type: ignore[method-assign]
    await carlos.subscribe_book(C1)
    await carlos.subscribe("trades", C1)
    await carlos.subscribe("states")
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    await carlos.place(C1, "BUYU2", "BUY", "40.10", "5.0", validity="GTD", expiry=expiry,
                       peak="1.5", price_increment="-0.05")
    await ana.place(C1, "SELLU1", "SELL", "40.10", "0.7")
    await carlos.query_account()
    await carlos.query_throttling()
    await carlos.query_contracts()
    await carlos.query_orders()
    await carlos.query_trades()
    await carlos.query_book(C1)
    await carlos.query_settlement(datetime.now(UTC).date())
    await carlos.heartbeat()
    await carlos.cancel(424242, raise_on_reject=False)
    await eventually(lambda: {"trade", "public_trade"} <= {m.get("type") for m in seen})
    types = {m.get("type") for m in seen}
    assert types >= {"ack", "order_report", "trade", "public_trade", "book", "account",
                     "throttling", "contracts", "orders", "trades", "settlement",
                     "heartbeat", "reject"}, types
    changed = 0
    for m in seen:
        ticks = to_ticks(m)
        changed += ticks != m
        assert sdk._decode_msgpack(msgpack.packb(ticks, use_bin_type=True)) == m
    assert changed >= 10  # not vacuous: most messages carry ticks in msgpack


# ====================================================================== trading


async def test_place_modify_cancel_with_typed_results(env: Env) -> None:
    ana = await env.client("ana")
    assert (ana.user, ana.agent, ana.roles) == ("ana", "AG1", ("trader",))
    ans = await ana.place(C1, "SELLU1", "SELL", Decimal("45.1"), "2.0", client_order_id="a-1")
    assert isinstance(ans, Answer) and ans.ok and ans.kind == "order_entry"
    r = ans.report
    assert isinstance(r, OrderReport)
    assert (r.action, r.status, r.client_order_id, r.order_id) == ("ADDED", "ACTIVE", "a-1",
                                                                   ans.order_id)
    assert r.price == Decimal("45.10") and isinstance(r.price, Decimal)
    assert (r.visible, r.hidden, r.filled) == (Decimal("2.0"), 0, 0)

    mod = await ana.modify(r.order_id, r.revision, price="46.5", quantity=Decimal(3))
    assert mod.report is not None
    assert (mod.report.action, mod.report.price, mod.report.visible, mod.report.revision) == (
        "MODIFIED", Decimal("46.50"), Decimal("3.0"), r.revision + 1)
    with pytest.raises(Rejected) as stale:
        await ana.modify(r.order_id, r.revision, price="47.00", quantity="1.0")
    assert stale.value.code == "STALE_REVISION" and stale.value.reason

    (live,) = await ana.query_orders()
    assert isinstance(live, Order) and (live.revision, live.client_order_id) == (2, "a-1")
    kept = await ana.modify(live, price="47.00")  # revision and quantity from the order
    assert kept.report is not None
    assert (kept.report.price, kept.report.remaining) == (Decimal("47.00"), Decimal("3.0"))
    view = env.srv.core.order_view(env.srv.core.orders_of("AG1")[0])
    assert (view["price"], view["revision"]) == (4700, 3)

    can = await ana.cancel(r.order_id)
    assert can.report is not None
    assert (can.report.action, can.report.status) == ("CANCELLED", "INACTIVE")
    assert await ana.query_orders() == []
    assert env.srv.core.orders_of("AG1") == []

    # the SDK gives every order a client order id of its own
    auto = await ana.place(C1, "SELLU1", "SELL", "45.00", "1.0")
    assert auto.report is not None and auto.report.client_order_id
    assert engine_coids(env.srv, "AG1") == [auto.report.client_order_id]
    # local refusals send nothing
    with pytest.raises(TypeError):
        await ana.place(C1, "SELLU1", "SELL", 45.5, "1.0")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await ana.place(C1, "SELLU1", "SELL", "45.555", "1.0")
    assert len(env.srv.core.orders_of("AG1")) == 1


async def test_execution_conditions_validity_iceberg_and_states(env: Env) -> None:
    ana, carlos = await env.client("ana"), await env.client("carlos")
    await ana.place(C1, "SELLU1", "SELL", "50.00", "1.0")
    ioc = await carlos.place(C1, "BUYU2", "BUY", "50.00", "3.0", exec="IOC")
    assert ioc.report is not None
    assert (ioc.report.status, ioc.report.code, ioc.report.filled) == (
        "INACTIVE", "IOC_REMAINDER", Decimal("1.0"))
    fok = await carlos.place(C1, "BUYU2", "BUY", "50.00", "1.0", exec="FOK")
    assert fok.report is not None
    assert (fok.report.action, fok.report.code) == ("CANCELLED", "FOK_NOT_FILLABLE")

    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    gtd = await carlos.place(C1, "BUYU2", "BUY", "30.00", "1.0", validity="GTD",
                             expiry=expiry)
    assert gtd.report is not None
    assert (gtd.report.validity, gtd.report.expiry) == ("GTD", expiry)
    late = await carlos.place(C1, "BUYU2", "BUY", "30.00", "1.0", validity="GTD",
                              expiry=expiry + timedelta(hours=2), raise_on_reject=False)
    assert (late.ok, late.code) == (False, "GTD_EXPIRY_AFTER_CLOSE")

    ice = await ana.place(C1, "SELLU1", "SELL", "60.00", "10.0", peak="2.0",
                          price_increment="0.50")
    assert ice.report is not None
    assert (ice.report.peak, ice.report.visible, ice.report.hidden,
            ice.report.price_increment) == (Decimal("2.0"), Decimal("2.0"), Decimal("8.0"),
                                            Decimal("0.50"))
    hib = await carlos.place(C1, "BUYU2", "BUY", "31.00", "1.0", state="HIBERNATED")
    assert hib.report is not None and hib.report.status == "HIBERNATED"

    assert gtd.order_id is not None and hib.order_id is not None
    deact = await carlos.deactivate([gtd.order_id])
    assert [r.action for r in deact.reports] == ["HIBERNATED"]
    status = {o.order_id: o.status for o in await carlos.query_orders()}
    assert status == {gtd.order_id: "HIBERNATED", hib.order_id: "HIBERNATED"}
    act = await carlos.activate()  # all of them
    assert sorted(act.order_ids) == sorted([gtd.order_id, hib.order_id])
    assert {r.action for r in act.reports} == {"ACTIVATED"}
    await carlos.deactivate(contract=C1)
    assert {o.status for o in await carlos.query_orders()} == {"HIBERNATED"}
    gone = await carlos.cancel_all()
    assert sorted(gone.order_ids) == sorted([gtd.order_id, hib.order_id])
    assert await carlos.query_orders() == [] and env.srv.core.orders_of("AG2") == []


async def test_modify_keeps_each_iceberg_field_on_its_own(env: Env) -> None:
    """Given an Order, modify() keeps what is not given, each field on its own: a new peak
    keeps the price increment (it used to be dropped: the server's default 0 replaced
    0.10), a new increment keeps the peak, and GTD with its expiry stays.  An increment
    with no peak at all is refused before anything is sent, as in place()."""
    ana = await env.client("ana")
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    ans = await ana.place(C1, "SELLU1", "SELL", "50.00", "10.0", validity="GTD",
                          expiry=expiry, peak="2.0", price_increment="0.10")
    oid = ans.order_id
    assert oid is not None
    await eventually(lambda: oid in ana.orders)

    def engine_view() -> tuple[int, int, int, int, str, int | None]:
        v = env.srv.core.order_view(env.srv.core.orders_of("AG1")[0])
        return (v["price"], v["peak"], v["price_increment"], v["revision"],
                str(v["validity"]), v["expiry"])

    mod = await ana.modify(ana.orders[oid], peak="3.0")  # only the peak changes
    r = mod.report
    assert r is not None
    assert (r.price, r.remaining, r.peak, r.price_increment, r.validity, r.expiry) == (
        Decimal("50.00"), Decimal("10.0"), Decimal("3.0"), Decimal("0.10"), "GTD", expiry)
    exp_ms = int(expiry.timestamp() * 1000)
    assert engine_view() == (5000, 30, 10, 2, "GTD", exp_ms)

    await eventually(lambda: ana.orders[oid].revision == 2)
    mod = await ana.modify(ana.orders[oid], price_increment="0.20")  # only the increment
    r = mod.report
    assert r is not None and (r.peak, r.price_increment) == (Decimal("3.0"), Decimal("0.20"))
    await eventually(lambda: ana.orders[oid].revision == 3)
    mod = await ana.modify(ana.orders[oid], price_increment="0")  # an explicit 0 is sent
    r = mod.report
    assert r is not None and (r.peak, r.price_increment) == (Decimal("3.0"), Decimal(0))
    assert engine_view() == (5000, 30, 0, 4, "GTD", exp_ms)

    # an increment without a peak (a plain order, or an order the SDK does not know) is
    # refused locally instead of being dropped: nothing is sent
    plain = await ana.place(C1, "SELLU1", "SELL", "51.00", "1.0")
    assert plain.order_id is not None
    await eventually(lambda: plain.order_id in ana.orders)
    sent = ana.stats["requests"]
    with pytest.raises(ValueError, match="peak"):
        await ana.modify(ana.orders[plain.order_id], price_increment="0.10")
    with pytest.raises(ValueError, match="peak"):
        await ana.modify(424242, 1, price="51.00", quantity="1.0", price_increment="0.10")
    assert ana.stats["requests"] == sent
    assert [o.revision for o in env.srv.core.orders_of("AG1")] == [4, 1]


async def test_modify_keeps_the_validity_and_refuses_to_change_it(env: Env) -> None:
    """R46.2.6: a modification does not change the validity.  modify() of a GTD order,
    by id alone (an order the SDK is not asked to look up) or with the Order, keeps GTD
    and its expiry; a validity given that is not the order's is sent and refused by the
    server (MODIFY_CHANGES_FIXED_FIELD), never dropped by the SDK."""
    ana = await env.client("ana")
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    ans = await ana.place(C1, "SELLU1", "SELL", "50.00", "1.0", validity="GTD",
                          expiry=expiry)
    oid = ans.order_id
    assert oid is not None
    mod = await ana.modify(oid, 1, price="50.50")
    assert mod.report is not None and (mod.report.validity, mod.report.expiry) == (
        "GTD", expiry)
    await eventually(lambda: oid in ana.orders and ana.orders[oid].revision == 2)
    with pytest.raises(Rejected) as exc:
        await ana.modify(ana.orders[oid], price="51.00", validity="GFS")
    assert exc.value.code == "MODIFY_CHANGES_FIXED_FIELD"
    v = env.srv.core.order_view(env.srv.core.orders_of("AG1")[0])
    assert (v["price"], str(v["validity"]), v["revision"]) == (5050, "GTD", 2)


async def test_modify_without_quantity_does_not_undo_a_fill(env: Env) -> None:
    """modify(order, price=...) sends no quantity: the server keeps the open quantity the
    order has when it applies the modification.  The SDK used to send the quantity of the
    Order it was given, which can be from before a fill (a fill does not change the
    revision): the filled part came back into the book."""
    ana, carlos = await env.client("ana"), await env.client("carlos")
    ans = await ana.place(C1, "SELLU1", "SELL", "50.00", "5.0")
    oid = ans.order_id
    assert oid is not None
    await eventually(lambda: oid in ana.orders)
    before = ana.orders[oid]  # read before the fill
    await carlos.place(C1, "BUYU2", "BUY", "50.00", "2.0")
    await eventually(lambda: ana.orders[oid].remaining == Decimal("3.0"))
    assert ana.orders[oid].revision == before.revision == 1

    mod = await ana.modify(before, price="51.00")
    assert mod.report is not None
    assert (mod.report.price, mod.report.remaining, mod.report.filled,
            mod.report.revision) == (Decimal("51.00"), Decimal("3.0"), Decimal("2.0"), 2)
    (o,) = env.srv.core.orders_of("AG1")
    assert (o.price, o.remaining, o.filled) == (5100, 30, 20)
    # an order the SDK does not know needs only its revision and price
    mod = await ana.modify(424242, 1, price="51.00", raise_on_reject=False)
    assert (mod.ok, mod.code) == (False, "ORDER_UNKNOWN")


async def test_baskets_none_valid_linked(env: Env) -> None:
    ana, carlos = await env.client("ana"), await env.client("carlos")
    none = await carlos.basket([
        OrderSpec(C1, "BUYU2", "BUY", "20.00", "1.0"),
        OrderSpec(C1, "BUYU2", "BUY", "99999.00", "1.0", client_order_id="too-high"),
        OrderSpec(C2, "BUYU2", "BUY", "21.00", "1.0"),
    ])
    assert none.ok and len(none.order_ids) == 2
    assert [(r.client_order_id, r.code) for r in none.rejects] == [
        ("too-high", "PRICE_OUT_OF_RANGE")]
    # each member's report, and the order as queried, carries the basket's condition
    assert {(r.basket_type, r.basket != 0) for r in none.reports} == {("NONE", True)}
    mine = {o.order_id: o for o in await carlos.query_orders()}
    assert {mine[i].basket_type for i in none.order_ids} == {"NONE"}
    assert {carlos.orders[i].basket_type for i in none.order_ids} == {"NONE"}  # the stream's

    bad = [OrderSpec(C1, "BUYU2", "BUY", "20.00", "1.0", client_order_id="v-1"),
           OrderSpec(C1, "BUYU2", "BUY", "99999.00", "1.0", client_order_id="v-2")]
    with pytest.raises(Rejected) as exc:
        await carlos.basket(bad, "VALID")
    assert exc.value.code == "BASKET_MEMBER_INVALID"
    assert {(d.client_order_id, d.code) for d in exc.value.details} == {
        ("v-1", "BASKET_MEMBER_INVALID"), ("v-2", "PRICE_OUT_OF_RANGE")}
    res = await carlos.basket(bad, "VALID", raise_on_reject=False)
    assert (res.ok, res.code, len(res.details)) == (False, "BASKET_MEMBER_INVALID", 2)

    await ana.place(C1, "SELLU1", "SELL", "40.00", "1.0")
    await ana.place(C2, "SELLU1", "SELL", "41.00", "2.0")
    linked = await carlos.basket([OrderSpec(C1, "BUYU2", "BUY", "40.00", "1.0", exec="FOK"),
                                  OrderSpec(C2, "BUYU2", "BUY", "41.00", "2.0", exec="FOK")],
                                 "LINKED")
    assert linked.ok and len(linked.order_ids) == 2
    assert {r.action for r in linked.reports} == {"FILLED"}
    missed = await carlos.basket([OrderSpec(C1, "BUYU2", "BUY", "40.00", "1.0", exec="FOK"),
                                  OrderSpec(C2, "BUYU2", "BUY", "41.00", "1.0", exec="FOK")],
                                 "LINKED")
    assert {(r.action, r.code) for r in missed.reports} == {("CANCELLED",
                                                             "LINKED_NOT_FILLABLE")}
    with pytest.raises(Rejected) as not_fok:
        await carlos.basket([OrderSpec(C1, "BUYU2", "BUY", "40.00", "1.0")], "LINKED")
    assert [d.code for d in not_fok.value.details] == ["LINKED_MEMBER_NOT_FOK"]
    trades = await carlos.query_trades()
    assert sorted((t.contract, t.price, t.quantity) for t in trades) == [
        (C1, Decimal("40.00"), Decimal("1.0")), (C2, Decimal("41.00"), Decimal("2.0"))]


async def test_rejections_raise_or_return_and_malformed_requests(env: Env) -> None:
    carlos = await env.client("carlos")
    with pytest.raises(Rejected) as exc:
        await carlos.cancel(987654)
    assert (exc.value.code, type(exc.value)) == ("ORDER_UNKNOWN", Rejected)
    assert exc.value.answer is not None and exc.value.answer.order_ids == (987654,)
    res = await carlos.cancel(987654, raise_on_reject=False)
    assert (res.ok, res.type, res.code) == (False, "reject", "ORDER_UNKNOWN") and res.reason
    with pytest.raises(Rejected) as unit:
        await carlos.place(C1, "SELLU1", "SELL", "10.00", "1.0")  # ana's unit
    assert unit.value.code == "UNIT_NOT_RESPONSIBLE"

    with pytest.raises(RequestError) as err:
        await carlos.place("XX-1", "BUYU2", "BUY", "10.00", "1.0")
    assert (err.value.code, err.value.field) == ("INVALID_FIELD", "contract")
    assert isinstance(err.value, Rejected)  # one except clause catches every refusal
    res = await carlos.place("XX-1", "BUYU2", "BUY", "10.00", "1.0", raise_on_reject=False)
    assert (res.ok, res.type, res.field) == (False, "error", "contract")
    # queries raise
    with pytest.raises(Rejected) as perm:
        await carlos.query_orders(agent="AG1")
    assert perm.value.code == "NOT_PERMITTED"
    with pytest.raises(RequestError):
        await carlos.query_book("PH-20000101-01")
    assert carlos.connected and env.srv.core.orders_of("AG2") == []


async def test_queries_are_typed(env: Env) -> None:
    ana, carlos = await env.client("ana"), await env.client("carlos")
    await ana.place(C1, "SELLU1", "SELL", "45.50", "2.0")
    await carlos.place(C1, "BUYU2", "BUY", "45.50", "0.5")

    contracts = await carlos.query_contracts()
    assert [c.contract for c in contracts] == [C1, C2]
    assert all(isinstance(c, ContractInfo) and c.state == "TRADE" for c in contracts)
    assert contracts[0].delivery_end - contracts[0].delivery_start == timedelta(hours=1)
    (trade,) = await carlos.query_trades()
    assert isinstance(trade, Trade)
    assert (trade.side, trade.price, trade.quantity, trade.agent) == (
        "BUY", Decimal("45.50"), Decimal("0.5"), "AG2")
    acct = await carlos.query_account()
    assert isinstance(acct, Account) and acct.agent == "AG2"
    assert acct.used == acct.obligations + acct.debtor_orders > 0
    assert acct.free == acct.operative_limit
    book = await carlos.query_book(C1)
    assert isinstance(book, BookSnapshot) and book.bids == ()
    assert [(a.price, a.quantity) for a in book.asks] == [(Decimal("45.50"), Decimal("1.5"))]
    thr = await carlos.query_throttling()
    assert isinstance(thr, Throttling) and thr.user == "carlos" and thr.rules
    st = await carlos.query_settlement(datetime.now(UTC).date())
    assert isinstance(st, Settlement) and st.agent == "AG2" and st.net == Decimal(0)
    me = await carlos.query_me()
    assert me == Me(user="carlos", agent="AG2", roles=("trader",))
    t = await carlos.heartbeat()
    assert abs((t - datetime.now(UTC)).total_seconds()) < 5 and carlos.server_time == t


# ====================================================================== streams


async def test_streams_callbacks_iterators_and_orders_cache(env: Env) -> None:
    ana, carlos = await env.client("ana"), await env.client("carlos")
    marta = await env.client("marta", private=True)
    public: list[PublicTrade] = []
    remove = carlos.on(PublicTrade, public.append)
    sub = await carlos.subscribe("trades", C1)
    assert sub.stream == f"trades:{C1}"
    states = await carlos.subscribe("states")
    assert states.stream == "states" and isinstance(states.seq, int)

    async with carlos.events(OrderReport, Trade) as private:
        rest = await ana.place(C1, "SELLU1", "SELL", "50.00", "1.0")
        assert rest.order_id in ana.orders or await eventually_true(
            lambda: rest.order_id in ana.orders)
        bid = await carlos.place(C1, "BUYU2", "BUY", "50.00", "1.0")
        got = [await private.get(timeout=5), await private.get(timeout=5)]
    (report,) = [e for e in got if isinstance(e, OrderReport)]
    (own,) = [e for e in got if isinstance(e, Trade)]
    assert report.order_id == bid.order_id
    assert report.action == "FILLED" and report.stream == "private:AG2"
    assert isinstance(own, Trade) and (own.side, own.price) == ("BUY", Decimal("50.00"))
    await eventually(lambda: len(public) == 1)
    assert (public[0].price, public[0].quantity, public[0].aggressor) == (
        Decimal("50.00"), Decimal("1.0"), "BUY")
    assert rest.order_id not in ana.orders  # filled: gone from the live cache

    # the operator's generic request, and the states stream
    interrupted = carlos.wait_for(ContractStateEvent, lambda e: e.contract == C2)
    ans = await marta.request({"type": "contract_interrupt", "contracts": [C2]})
    assert ans["type"] == "ack", ans
    ev = await interrupted
    assert (ev.contract, ev.state, ev.previous) == (C2, "INT", "TRADE")
    assert (await marta.request({"type": "contract_resume", "contracts": [C2]}))["type"] == "ack"

    # a resting order of carlos is in his cache, and leaves it when cancelled
    live = await carlos.place(C1, "BUYU2", "BUY", "10.00", "1.0")
    await eventually(lambda: live.order_id in carlos.orders)
    assert carlos.orders[live.order_id or 0].price == Decimal("10.00")
    await carlos.cancel(live.order_id or 0)
    await eventually(lambda: live.order_id not in carlos.orders)

    await carlos.unsubscribe("trades", C1)
    remove()
    await ana.place(C1, "SELLU1", "SELL", "50.00", "1.0")
    await carlos.place(C1, "BUYU2", "BUY", "50.00", "1.0")
    await asyncio.sleep(0.2)
    assert len(public) == 1 and f"trades:{C1}" not in carlos.subscriptions


async def eventually_true(cond: Callable[[], bool]) -> bool:
    await eventually(cond)
    return True


async def test_local_book_equals_query_book_after_random_activity(tmp_path: Path) -> None:
    env = Env(tmp_path)
    await env.start(depth=5)  # a short depth: entries enter and leave the view
    try:
        ana, carlos = await env.client("ana"), await env.client("carlos")
        observer = await env.client("bea", private=False)
        updates: list[BookUpdate] = []
        observer.on(BookUpdate, updates.append)
        book = await observer.subscribe_book(C1)
        rng = random.Random(20270115)
        answers: list[Answer] = []
        for _ in range(250):
            # the price ranges overlap a little: most orders rest, some trade
            c, unit, side, lo, hi = rng.choice([(ana, "SELLU1", "SELL", 4150, 4500),
                                                (carlos, "BUYU2", "BUY", 3800, 4180)])
            action = rng.random()
            mine = sorted(c.orders)  # live orders, kept from the private stream
            if action < 0.6 or not mine:
                price = Decimal(rng.randint(lo, hi)) / 100
                qty = Decimal(rng.randint(1, 30)) / 10
                kw: dict[str, Any] = {}
                if rng.random() < 0.1:
                    kw = {"peak": "0.5"}
                answers.append(await c.place(C1, unit, side, price, qty,
                                             raise_on_reject=False, **kw))
            elif action < 0.8:
                answers.append(await c.modify(rng.choice(mine), price=Decimal(
                    rng.randint(lo, hi)) / 100, quantity="1.0", raise_on_reject=False))
            else:
                answers.append(await c.cancel(rng.choice(mine), raise_on_reject=False))
        assert sum(a.ok for a in answers) > 200
        assert any(r.action == "PARTIALLY_FILLED" or r.action == "FILLED"
                   for a in answers for r in a.reports)
        await books_agree(book, ana, C1)
        assert book.gaps == 0 and book.snapshots == 1  # deltas alone kept it
        assert len(book.bids()) <= 5 and len(book.asks()) <= 5
        assert len(env.srv.hub.book(C1).entries) > 10  # more than the view: depth exercised
        deltas = [u.delta for u in updates if u.delta is not None]
        assert {d.action for d in deltas} == {"ADD", "UPDATE", "REMOVE"}
        assert [u.seq for u in updates] == list(range(updates[0].seq,
                                                      updates[0].seq + len(updates)))
    finally:
        await env.close()


async def test_gap_is_detected_and_the_book_re_snapshots(env: Env) -> None:
    ana = await env.client("ana")
    observer = await env.client("carlos")
    book = await observer.subscribe_book(C1)
    gaps: list[StreamGap] = []
    observer.on(StreamGap, gaps.append)
    for p in ("50.00", "51.00"):
        await ana.place(C1, "SELLU1", "SELL", p, "1.0")
    await books_agree(book, ana, C1)
    lost: list[BookDelta] = []

    def lose_one(d: BookDelta) -> bool:
        if not lost:
            lost.append(d)
            return False  # as if lost in transit
        return True

    observer.delta_filter = lose_one
    await ana.place(C1, "SELLU1", "SELL", "52.00", "1.0")  # this delta is lost
    await eventually(lambda: bool(lost))
    assert [a.price for a in book.asks()] == [Decimal("50.00"), Decimal("51.00")]
    await ana.place(C1, "SELLU1", "SELL", "53.00", "1.0")  # the next one shows the gap
    await eventually(lambda: book.snapshots == 2 and book.synced)
    assert book.gaps == 1 and observer.stats["resyncs"] >= 1
    assert gaps == [StreamGap(f"book:{C1}", lost[0].seq, lost[0].seq + 1)]
    q = await books_agree(book, ana, C1)
    assert [a.price for a in q.asks] == [Decimal(p) for p in ("50.00", "51.00", "52.00",
                                                              "53.00")]
    await ana.place(C1, "SELLU1", "SELL", "54.00", "1.0")  # and deltas flow on
    await books_agree(book, ana, C1)
    assert book.gaps == 1


async def test_private_gap_refreshes_the_orders_cache(env: Env) -> None:
    ana = await env.client("ana")
    first = await ana.place(C1, "SELLU1", "SELL", "60.00", "1.0")
    await eventually(lambda: first.order_id in ana.orders)
    refreshed = ana.stats["orders_refreshed"]
    stream = f"private:{ana.agent}"
    # forget that a message arrived: the next one looks as if one had been lost
    ana._seqs[stream] -= 1
    gap = ana.wait_for(StreamGap, timeout=5)
    ana.orders.clear()  # the cache is now wrong; the refresh puts it right
    second = await ana.place(C1, "SELLU1", "SELL", "61.00", "1.0")
    ev = await gap
    assert ev.stream == stream and ev.received == ev.expected + 1
    await eventually(lambda: ana.stats["orders_refreshed"] == refreshed + 1)
    await eventually(lambda: set(ana.orders) == {first.order_id, second.order_id})
    assert ana.orders[second.order_id or 0].price == Decimal("61.00")


async def test_work_spawned_just_before_close_is_closed_with_the_client(env: Env) -> None:
    # a stream gap spawns a refresh of the orders; the client closing before that task ran
    # once must close the refresh too, not leave a coroutine that was never awaited
    # (close() goes straight to _shutdown when it has nothing to say to the server first:
    # an AMQP client without public subscriptions)
    ana = await env.client("ana")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = ana._spawn(ana._refresh_orders())
        await ana._shutdown(sdk.ConnectionLost("the client is closed"))
        await asyncio.sleep(0)
        assert task.cancelled()
        del task
        gc.collect()
    assert [str(w.message) for w in caught if w.category is RuntimeWarning] == []


async def test_on_disconnect_hibernate(env: Env) -> None:
    ana = await env.client("ana", on_disconnect="hibernate")
    ans = await ana.place(C1, "SELLU1", "SELL", "60.00", "1.0")
    await ana.drop_connection()
    await eventually(lambda: ana.stats["reconnects"] == 1)
    await ana.wait_connected(5)
    (o,) = await ana.query_orders()
    assert (o.order_id, o.status) == (ans.order_id, "HIBERNATED")
    assert ana.orders[o.order_id].status == "HIBERNATED"  # the cache was reloaded
    act = await ana.activate()
    assert [(r.order_id, r.action) for r in act.reports] == [(o.order_id, "ACTIVATED")]


# ====================================================================== reconnection


async def test_server_restart_reconnects_resubscribes_and_sends_waiting_order_once(
        env: Env) -> None:
    ana, carlos = await env.client("ana"), await env.client("carlos")
    book = await carlos.subscribe_book(C1)
    await carlos.subscribe("trades", C1)
    await ana.place(C1, "SELLU1", "SELL", "50.00", "1.0", client_order_id="before")
    await books_agree(book, ana, C1)
    conn_events = carlos.events(ConnectionEvent)

    await env.stop()
    assert (await conn_events.get(timeout=5)).state == "disconnected"
    await eventually(lambda: not book.synced)
    waiting = asyncio.get_running_loop().create_task(
        carlos.place(C1, "BUYU2", "BUY", "40.00", "1.0", client_order_id="during-outage"))
    await asyncio.sleep(0.3)
    assert not waiting.done() and not carlos.connected

    srv = await env.start()  # same data folder and port: the journal is replayed
    ans = await asyncio.wait_for(waiting, 10)
    assert ans.ok and ans.report is not None and ans.report.action == "ADDED"
    assert not ans.resent  # it had never left: sent once, after the reconnection
    assert (await conn_events.get(timeout=5)).state == "reconnected"
    assert carlos.stats["reconnects"] == 1 and carlos.connected
    assert engine_coids(srv, "AG2") == ["during-outage"]
    assert engine_coids(srv, "AG1") == ["before"]  # recovered from the journal

    # re-subscribed: the book came back from a fresh snapshot and follows the deltas
    await book.wait_synced(5)
    await ana.wait_connected(5)
    trade = carlos.wait_for(PublicTrade, timeout=5)  # the trades stream is back too
    await ana.place(C1, "SELLU1", "SELL", "40.00", "0.5")  # hits carlos's bid
    assert (await trade).price == Decimal("40.00")
    await books_agree(book, ana, C1)
    assert [b.quantity for b in book.bids()] == [Decimal("0.5")]
    assert carlos.orders and next(iter(carlos.orders.values())).client_order_id == \
        "during-outage"
    conn_events.close()


def drop_before_the_answer(srv: Server, user: str, kind: str) -> None:
    """The server executes the user's next ``kind`` request, then the connection drops
    before its ack is sent."""
    (session,) = srv.sessions_of[user]
    original = session.send

    def send(msg: dict[str, Any]) -> None:
        if msg.get("type") == "ack" and msg.get("kind") == kind:
            session.send = original  # type: ignore[method-assign]
            session._closing = "test: the connection drops before the answer"
            session._wake.set()
            return
        original(msg)

    session.send = send  # type: ignore[method-assign]


@pytest.mark.parametrize("kind", ["order_entry", "basket_entry", "order_modify"])
async def test_unanswered_request_is_resent_and_executed_once(env: Env, kind: str) -> None:
    """The server executes the request but the connection drops before its answer: the SDK
    reconnects, re-sends, and answers the call from what the engine holds."""
    ana = await env.client("ana", private=False)  # no private stream: found by query
    base = None
    if kind == "order_modify":
        base = await ana.place(C1, "SELLU1", "SELL", "55.00", "1.0", client_order_id="m-1")
    drop_before_the_answer(env.srv, "ana", kind)
    if kind == "order_entry":
        ans = await ana.place(C1, "SELLU1", "SELL", "55.00", "1.0", client_order_id="once-1")
        coids = ["once-1"]
    elif kind == "basket_entry":
        ans = await ana.basket([OrderSpec(C1, "SELLU1", "SELL", "55.00", "1.0",
                                          client_order_id="b-1"),
                                OrderSpec(C2, "SELLU1", "SELL", "56.00", "1.0",
                                          client_order_id="b-2")], "VALID")
        coids = ["b-1", "b-2"]
    else:
        assert base is not None and base.report is not None
        ans = await ana.modify(base.report.order_id, base.report.revision, price="57.00",
                               quantity="2.0")
        coids = ["m-1"]
    assert ans.ok and ans.resent and ans.recovered and not ans.unresolved
    assert ana.stats["resent"] == 1 and ana.stats["reconnects"] == 1
    engine = {o.coid: o for o in env.srv.core.orders_of("AG1")}
    assert sorted(engine) == sorted(coids)  # each client order id exactly once
    assert list(ans.order_ids) == [engine[c].id for c in coids]
    assert [o.client_order_id for o in ans.recovered_orders] == coids
    if kind == "order_modify":
        assert (engine["m-1"].price, engine["m-1"].revision) == (5700, 2)
        assert ans.recovered_orders[0].price == Decimal("57.00")
    # the connection works normally again
    assert (await ana.query_me()).user == "ana"


async def test_a_request_without_a_key_is_not_resent_but_said_to_be_in_doubt(
        env: Env) -> None:
    """A guarantee request has no key that makes a repeat harmless: when the connection
    drops after the server executed it but before its answer, the SDK does not send it
    again (the agent had two requests of 1,000 EUR) but raises OutcomeUnknown; the
    engine holds the request once, and the client goes on."""
    ana = await env.client("ana", private=False)
    drop_before_the_answer(env.srv, "ana", "guarantee_request")
    with pytest.raises(sdk.OutcomeUnknown, match="may have been executed"):
        await ana.request({"type": "guarantee_request", "change": "increase",
                           "amount": "1000.00"})
    assert ana.stats["outcome_unknown_raised"] == 1 and ana.stats["resent"] == 0
    account = env.srv.core.account("AG1")
    assert account is not None and len(account["pending_requests"]) == 1
    assert (await ana.query_me()).user == "ana"
    assert "order_entry" in sdk.RESENDABLE and "guarantee_request" not in sdk.RESENDABLE
    assert "auction_bid" not in sdk.RESENDABLE


def fail_the_sync_of(srv: Server, client_order_id: str) -> None:
    """The journal writes the batch holding that order, then its sync fails."""
    real_append = srv.journal.append

    def append(records: Any, **kw: Any) -> bool:
        owed = real_append(records, **kw)
        if any(getattr(r.command, "client_order_id", None) == client_order_id
               for r in records):
            raise OSError(5, "Input/output error")
        return owed

    srv.journal.append = append  # type: ignore[method-assign]


async def test_an_order_in_doubt_waits_for_the_restarted_server_and_is_done_once(
        env: Env) -> None:
    """The journal fails while recording an order (its record reached the disk): the
    server answers OUTCOME_UNKNOWN and halts.  That is not an answer: the call waits,
    the SDK reconnects to the restarted server, re-sends, and the server's
    DUPLICATE_CLIENT_ORDER_ID tells it the order was done; the call returns that order."""
    ana = await env.client("ana")
    srv = env.srv
    fail_the_sync_of(srv, "doubt-1")
    call = asyncio.ensure_future(ana.place(C1, "SELLU1", "SELL", "55.00", "1.0",
                                           client_order_id="doubt-1"))
    await asyncio.wait_for(srv.halted.wait(), 5)
    assert isinstance(srv.failure, OSError)
    await eventually(lambda: ana.stats["outcome_unknown"] == 1)
    await asyncio.sleep(0.1)
    assert not call.done()  # an OUTCOME_UNKNOWN is not an answer
    await env.stop()
    await env.start()  # replays the journal: the order is there
    ans = await asyncio.wait_for(call, 10)
    assert ans.ok and ans.resent and ans.recovered
    engine = [o for o in env.srv.core.orders_of("AG1") if o.coid == "doubt-1"]
    assert len(engine) == 1 and list(ans.order_ids) == [engine[0].id]


async def test_heartbeats_and_a_silent_connection_is_replaced(tmp_path: Path) -> None:
    env = Env(tmp_path)
    await env.start(heartbeat_s=0.1)
    try:
        ana = await env.client("ana", idle_timeout=0.4)
        hb = await ana.wait_for(Heartbeat, timeout=5)
        assert abs((hb.server_time - datetime.now(UTC)).total_seconds()) < 5
        assert ana.server_time is not None
        await asyncio.sleep(0.6)  # heartbeats keep it alive: no probe needed
        assert ana.stats["probes"] == 0 and ana.stats["reconnects"] == 0

        (session,) = env.srv.sessions_of["ana"]
        session.send = lambda msg: None  # type: ignore[method-assign]  # silent, socket open
        await eventually(lambda: ana.stats["reconnects"] == 1, timeout=5)
        assert ana.stats["probes"] >= 1 and ana.stats["idle_disconnects"] == 1
        assert (await ana.query_me()).user == "ana"
    finally:
        await env.close()


async def test_close_fails_pending_calls_and_ends_streams(env: Env) -> None:
    ana = await env.client("ana")
    stream = ana.events()
    await env.stop()
    waiting = asyncio.get_running_loop().create_task(ana.query_me())
    never = ana.wait_for(OrderReport, timeout=None)
    await asyncio.sleep(0.1)
    await ana.close()
    with pytest.raises(sdk.ConnectionLost):
        await never
    with pytest.raises(sdk.ConnectionLost):
        await waiting
    with pytest.raises(sdk.ConnectionLost):
        await ana.query_me()
    seen = [ev async for ev in stream]  # ends
    assert [e.state for e in seen if isinstance(e, ConnectionEvent)][-1] == "closed"
    assert ana.closed


async def test_login_failure_raises(env: Env) -> None:
    with pytest.raises(sdk.LoginFailed) as exc:
        await Client.connect_ws(env.url, "ana", "wrong-token")
    assert exc.value.code == "LOGIN_FAILED"


# ====================================================================== AMQP


async def _reset_broker(broker: Broker) -> None:
    from gateway.amqp import REQUEST_QUEUE, bcast_queue

    conn = await aio_pika.connect(broker.url, timeout=5)
    try:
        ch = await conn.channel()
        for name in [REQUEST_QUEUE, *(bcast_queue(u) for u in TOKENS)]:
            await ch.queue_delete(name)
    finally:
        await conn.close()


@pytest.fixture
async def amqp_env(rabbitmq: Broker, tmp_path: Path) -> AsyncIterator[Env]:
    await _reset_broker(rabbitmq)
    e = Env(tmp_path)
    srv = await e.start(amqp_url=rabbitmq.url, heartbeat_s=1.0)
    await asyncio.wait_for(srv.amqp.connected.wait(), 10)
    try:
        yield e
    finally:
        await e.close()


async def test_amqp_core_operations(rabbitmq: Broker, amqp_env: Env) -> None:
    env = amqp_env
    carlos = await Client.connect_amqp(rabbitmq.url_for("carlos"), backoff_min=0.05,
                                       backoff_max=0.3)
    env.clients.append(carlos)
    assert (carlos.user, carlos.agent, carlos.transport) == ("carlos", "AG2", "amqp")
    ana = await env.client("ana")  # WebSocket: one market for both transports
    book = await carlos.subscribe_book(C1)
    async with carlos.events(OrderReport) as reports:
        await ana.place(C1, "SELLU1", "SELL", "50.00", "2.0")
        hit = await carlos.place(C1, "BUYU2", "BUY", "50.00", "1.5", exec="IOC")
        assert hit.report is not None and hit.report.action == "FILLED"
        first = await reports.get(timeout=5)
        assert (first.order_id, first.action) == (hit.order_id, "FILLED")

    rest = await carlos.place(C1, "BUYU2", "BUY", Decimal("40.1"), "1.0",
                              client_order_id="amqp-1")
    assert rest.report is not None and rest.report.price == Decimal("40.10")
    mod = await carlos.modify(rest.order_id or 0, rest.report.revision, price="41.00",
                              quantity="2.0")
    assert mod.report is not None and mod.report.revision == 2
    basket = await carlos.basket([OrderSpec(C2, "BUYU2", "BUY", "20.00", "1.0"),
                                  OrderSpec(C2, "BUYU2", "BUY", "21.00", "1.0")])
    assert basket.ok and len(basket.order_ids) == 2
    with pytest.raises(Rejected) as exc:
        await carlos.cancel(424242)
    assert exc.value.code == "ORDER_UNKNOWN"
    res = await carlos.cancel(424242, raise_on_reject=False)
    assert (res.ok, res.code) == (False, "ORDER_UNKNOWN")

    assert [c.contract for c in await carlos.query_contracts()] == [C1, C2]
    assert {o.client_order_id for o in await carlos.query_orders()} >= {"amqp-1"}
    (trade,) = await carlos.query_trades()
    assert (trade.price, trade.quantity) == (Decimal("50.00"), Decimal("1.5"))
    assert (await carlos.query_account()).agent == "AG2"
    assert (await carlos.query_me()).user == "carlos"
    await eventually(lambda: {o.client_order_id for o in carlos.orders.values()} >= {"amqp-1"})

    await books_agree(book, ana, C1)
    assert [(b.price, b.quantity) for b in book.bids()] == [(Decimal("41.00"),
                                                             Decimal("2.0"))]
    cancelled = await carlos.cancel_all()
    assert len(cancelled.order_ids) == 3 and env.srv.core.orders_of("AG2") == []
    await books_agree(book, ana, C1)
    assert book.bids() == [] and book.gaps == 0


async def test_the_reconnection_is_counted_before_a_waiting_requests_answer_is_read(
        env: Env) -> None:
    """The race CI once met over AMQP: a request waiting for the reconnection is sent as the
    session is established again, and its answer came back while its publish was still
    being confirmed, before the reconnection was counted.  Here the send of every order
    entry is held for 0.5 s once it is on the wire, as a slow confirm would be."""
    carlos = await env.client("carlos")
    connector = carlos._connector
    connect = connector.connect

    async def held_connect(on_message: Any, on_close: Any) -> Any:
        conn = await connect(on_message, on_close)
        send = conn.send

        async def held_send(msg: dict[str, Any]) -> None:
            await send(msg)
            if msg.get("type") == "order_entry":
                await asyncio.sleep(0.5)

        conn.send = held_send  # type: ignore[method-assign]
        return conn

    connector.connect = held_connect  # type: ignore[method-assign]
    await carlos.drop_connection()
    assert not carlos.connected
    ans = await asyncio.wait_for(
        carlos.place(C1, "BUYU2", "BUY", "45.00", "1.0", client_order_id="held"), 10)
    assert ans.ok
    assert not carlos.connected  # the session is still sending: the answer came first
    assert carlos.stats["reconnects"] == 1
    await carlos.wait_connected(5)
    assert carlos.stats["reconnects"] == 1


async def test_amqp_reconnect_sends_waiting_order_once(rabbitmq: Broker,
                                                       amqp_env: Env) -> None:
    env = amqp_env
    carlos = await Client.connect_amqp(rabbitmq.url_for("carlos"), "carlos",
                                       backoff_min=0.05, backoff_max=0.3)
    env.clients.append(carlos)
    ana = await env.client("ana")
    book = await carlos.subscribe_book(C1)
    await carlos.drop_connection()
    assert not carlos.connected
    ans = await carlos.place(C1, "BUYU2", "BUY", "45.00", "1.0", client_order_id="after-drop")
    assert ans.ok and carlos.stats["reconnects"] == 1
    assert engine_coids(env.srv, "AG2") == ["after-drop"]
    await ana.place(C1, "SELLU1", "SELL", "46.00", "1.0")
    await books_agree(book, ana, C1)
    assert [b.price for b in book.bids()] == [Decimal("45.00")]
    assert [a.price for a in book.asks()] == [Decimal("46.00")]


async def test_amqp_msgpack_messages_on_the_broadcast_queue_carry_decimals(
        rabbitmq: Broker, amqp_env: Env) -> None:
    """Another process of the same user sends msgpack requests without ``reply_to``: the
    answers (integer ticks) land on the user's broadcast queue, which the SDK consumes.
    They reach the listeners in their JSON form, decimals and instants, never as ticks (an
    order's price was 4510, the local book's prices and the account's euros x100)."""
    carlos = await Client.connect_amqp(rabbitmq.url_for("carlos"), backoff_min=0.05,
                                       backoff_max=0.3)
    env = amqp_env
    env.clients.append(carlos)
    other = await aio_pika.connect(rabbitmq.url_for("carlos"), timeout=5)
    try:
        ch = await other.channel()
        exchange = await ch.get_exchange(sdk.AMQP_REQUEST_EXCHANGE, ensure=False)

        async def send(msg: dict[str, Any], mid: str) -> None:  # no reply_to
            await exchange.publish(aio_pika.Message(
                msgpack.packb(msg), content_type="application/msgpack", message_id=mid,
                user_id="carlos"), sdk.AMQP_REQUEST_KEY)

        async with carlos.events(RawEvent, OrderReport) as events:
            await send({"type": "order_entry", "contract": C1, "unit": "BUYU2",
                        "side": "BUY", "price": 4510, "quantity": 15,
                        "client_order_id": "mp-1"}, "mp-1")
            # the answer (msgpack: an ack with the report) and the private stream's report
            got = [await events.get(timeout=5), await events.get(timeout=5)]
        (ack,) = [e for e in got if isinstance(e, RawEvent)]
        (report,) = [e for e in got if isinstance(e, OrderReport)]
        assert ack.type == "ack" and ack.data["order_ids"] == [report.order_id]
        (r,) = ack.data["reports"]  # the JSON form, as a listener reads it over JSON
        assert (r["client_order_id"], r["price"], r["visible"], r["hidden"]) == (
            "mp-1", "45.10", "1.5", "0.0")
        assert r["ts"] == report.ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        assert OrderReport.model_validate(r) == report.model_copy(update={"stream": None,
                                                                          "seq": None})

        # a book snapshot answered to the other process is applied to the local book
        book = await carlos.subscribe_book(C1)
        snapshots = book.snapshots
        await send({"type": "query_book", "contract": C1}, "mp-3")
        await eventually(lambda: book.snapshots > snapshots)
        assert [(b.price, b.quantity) for b in book.bids()] == [(Decimal("45.10"),
                                                                 Decimal("1.5"))]

        acct = await carlos.query_account()  # JSON, on the reply queue
        assert acct.debtor_orders > 0
        async with carlos.events(Account) as accounts:
            await send({"type": "query_account"}, "mp-2")
            answer = await accounts.get(timeout=5)
            while answer.stream is not None:  # a late one of the private stream (JSON)
                answer = await accounts.get(timeout=5)
        fields = {"agent", "reserved", "obligations", "debtor_orders", "sync_reduction",
                  "requested_reductions", "requested_increases", "operative_limit",
                  "used", "free", "suspended"}
        assert answer.model_dump(include=fields) == acct.model_dump(include=fields)
    finally:
        await other.close()


# ====================================================================== bots


async def test_demo_bots_trade_and_stop_cleanly(env: Env) -> None:
    from clients.bots import demo_bots, run_bots

    bots = demo_bots(env.url, [C1, C2], seed=7)
    for b in bots:
        b.cfg.interval = 0.05
    watcher = await env.client("rita", private=False)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(run_bots(bots, stop))
    try:
        trades = env.srv.hub.trades_by_agent
        await eventually(lambda: all(b.stats["steps"] >= 5 for b in bots)
                         and bots[3].stats["baskets_filled"] >= 1
                         and all(trades[a] for a in ("AG1", "AG2", "AG3")), timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    maker, taker, iceberg, linked = bots
    assert maker.stats["orders"] > 0 and maker.stats["requotes"] > 0
    assert linked.stats["baskets_filled"] >= 1
    assert taker.stats["filled_mwh_x10"] > 0
    assert iceberg.stats["orders"] > 0
    for agent in ("AG1", "AG2", "AG3"):  # trades on every agent, and the books followed
        assert (await watcher.query_trades(agent=agent)), (agent, [b.stats for b in bots])
    # the bots cancelled what they had placed, and closed their connections
    assert env.srv.core.orders_of("AG1") == env.srv.core.orders_of("AG3") == []
    assert all(b.client is not None and b.client.closed for b in bots)
    assert not any(env.srv.sessions_of[u] for u in ("ana", "bea", "carlos"))


async def test_amqp_an_order_in_doubt_is_redelivered_to_the_restarted_server(
        rabbitmq: Broker, amqp_env: Env) -> None:
    """Over AMQP the SDK's connection is to the broker, which outlives the server: the
    gateway answers OUTCOME_UNKNOWN but leaves the request unacknowledged, the broker
    redelivers it (and the SDK resends it, the same message_id) to the restarted server,
    which finds the command in the journal it replayed and answers with the command's own
    ack (not DUPLICATE_CLIENT_ORDER_ID, which the SDK had to recover from), and the SDK
    answers the call with that order, done once."""
    env = amqp_env
    carlos = await Client.connect_amqp(rabbitmq.url_for("carlos"), backoff_min=0.05,
                                       backoff_max=0.3, request_timeout=20)
    env.clients.append(carlos)
    srv = env.srv
    fail_the_sync_of(srv, "doubt-2")
    call = asyncio.ensure_future(carlos.place(C1, "BUYU2", "BUY", "45.00", "1.0",
                                              client_order_id="doubt-2"))
    await asyncio.wait_for(srv.halted.wait(), 5)
    await eventually(lambda: carlos.stats["outcome_unknown"] == 1)
    assert not call.done()
    await env.stop()
    await env.start(amqp_url=rabbitmq.url, heartbeat_s=1.0)  # replays the journal
    ans = await asyncio.wait_for(call, 20)
    assert ans.ok and not ans.recovered and ans.kind == "order_entry", ans
    assert env.srv.amqp.stats["replayed"] >= 1
    engine = [o for o in env.srv.core.orders_of("AG2") if o.coid == "doubt-2"]
    assert len(engine) == 1 and list(ans.order_ids) == [engine[0].id]


async def test_amqp_broadcast_queue_is_consumed_with_acknowledgements(
        rabbitmq: Broker, amqp_env: Env) -> None:
    """docs/amqp.md: the broadcast queue keeps what was not taken.  The SDK consumes it with
    acknowledgements (at most 1,000 unacknowledged), so that a message delivered but not
    yet handled when the connection drops is delivered again; it used to consume without,
    and such messages were lost.  The broker's own view of the consumer says so, and every
    private message of the run is handled once."""
    carlos = await Client.connect_amqp(rabbitmq.url_for("carlos"))
    amqp_env.clients.append(carlos)
    out = await asyncio.to_thread(rabbitmq.ctl, "list_consumers", "queue_name",
                                  "ack_required", "prefetch_count")
    rows = [line.split("\t") for line in out.splitlines()]
    assert ["ronda.bcast.carlos", "true", "1000"] in rows, out
    ans = await carlos.place(C1, "BUYU2", "BUY", "30.00", "1.0")
    await eventually(lambda: ans.order_id in carlos.orders)
    assert carlos.stats["stale"] == 0
