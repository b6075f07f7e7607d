"""The wire protocol's edge: decimals to ticks exactly, every bad input named (DESIGN rule 4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.commands import EnterBasket, ModifyOrder, NewOrder
from engine.model import BasketType, Exec, Side, Validity
from gateway.protocol import (
    ProtocolError,
    fast_command,
    parse_instant,
    parse_request,
    to_command,
)

BASE = {
    "type": "order_entry",
    "req_id": "r1",
    "contract": "PH-20270115-10",
    "unit": "UNIT1",
    "side": "BUY",
    "price": "45.10",
    "quantity": "12.5",
}


def entry(**kw: object) -> dict[str, object]:
    d = dict(BASE)
    d.update(kw)
    return {k: v for k, v in d.items() if v is not ...}


def test_decimal_strings_become_exact_ticks() -> None:
    cmd = to_command(parse_request(entry()), "u1", "A1")
    assert isinstance(cmd, NewOrder)
    assert (cmd.price, cmd.qty) == (4510, 125)
    assert (cmd.user, cmd.agent, cmd.side, cmd.exec, cmd.validity) == (
        "u1", "A1", Side.BUY, Exec.NON, Validity.GFS)


@pytest.mark.parametrize(
    ("price", "ticks"),
    [("0", 0), ("-9999.00", -999_900), ("45.1", 4510), ("-0.01", -1), ("180.30", 18_030)],
)
def test_prices_parse_to_cents(price: str, ticks: int) -> None:
    assert parse_request(entry(price=price)).price == ticks


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("price", "45.101", "at most 2"),  # never rounded
        ("price", 45.1, "decimal string"),  # a JSON number is refused
        ("price", "NaN", "not a decimal"),
        ("price", "1e3", "not a decimal"),
        ("price", True, "decimal string"),
        ("price", "", "not a decimal"),
        ("price", " 45.10", "not a decimal"),
        ("quantity", "12.55", "at most 1"),
        ("quantity", "0", "positive"),
        ("quantity", "-1.0", "positive"),
        ("side", "HOLD", ""),
        ("contract", "PH-2027-01", "pattern"),
        ("unit", "x" * 65, "at most 64"),
        ("exec", "GTC", ""),
        ("client_order_id", "c" * 41, "at most 40"),
        ("expiry", "2027-01-15T09:00:00", "no UTC offset"),
        ("expiry", "2027-01-15T09:00:00.0001Z", "more precise than a millisecond"),
    ],
)
def test_bad_fields_are_named_and_refused(field: str, value: object, why: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        parse_request(entry(**{field: value}))
    assert ei.value.field == field
    assert why.lower() in ei.value.reason.lower()


def test_missing_and_unknown_fields_and_types() -> None:
    with pytest.raises(ProtocolError) as ei:
        parse_request(entry(price=...))
    assert (ei.value.field, ei.value.reason) == ("price", "Field required")
    with pytest.raises(ProtocolError) as ei:
        parse_request(entry(colour="red"))
    assert (ei.value.field, ei.value.reason) == ("colour", "unknown field")
    with pytest.raises(ProtocolError) as ei:
        parse_request(entry(type="order_teleport"))
    assert ei.value.field == "type" and "order_teleport" in ei.value.reason
    with pytest.raises(ProtocolError) as ei:
        parse_request(entry(type=...))
    assert ei.value.field == "type"
    with pytest.raises(ProtocolError) as ei:
        parse_request([1, 2])
    assert ei.value.field == "message"


def test_nested_fields_are_named_with_their_path() -> None:
    with pytest.raises(ProtocolError) as ei:
        parse_request({"type": "basket_entry", "basket": "LINKED",
                       "orders": [entry(type=..., req_id=...),
                                  entry(type=..., req_id=..., price="1.001")]})
    assert ei.value.field == "orders.1.price"
    with pytest.raises(ProtocolError) as ei:
        parse_request(entry(iceberg={"peak": "1.25"}))
    assert ei.value.field == "iceberg.peak"


def test_ids_are_strict_integers() -> None:
    with pytest.raises(ProtocolError) as ei:
        parse_request({"type": "order_cancel", "order_id": "7"})
    assert ei.value.field == "order_id"
    with pytest.raises(ProtocolError):
        parse_request({"type": "order_cancel", "order_id": 0})
    with pytest.raises(ProtocolError):
        parse_request({"type": "order_cancel", "order_id": 2**70})


def test_msgpack_mode_takes_integer_ticks_or_decimal_strings() -> None:
    """DESIGN rule 4: msgpack carries integer ticks; the decimal strings are accepted too,
    and everything else is still refused."""
    req = parse_request(entry(price=4510, quantity=125, expiry=1_800_000_000_000,
                              validity="GTD"), ticks=True)
    assert (req.price, req.quantity, req.expiry) == (4510, 125, 1_800_000_000_000)
    assert parse_request(entry(price="45.10"), ticks=True).price == 4510
    for bad in (45.1, True, None):
        with pytest.raises(ProtocolError) as ei:
            parse_request(entry(price=bad), ticks=True)
        assert ei.value.field == "price"
    with pytest.raises(ProtocolError) as ei:
        parse_request(entry(price="45.101"), ticks=True)
    assert ei.value.field == "price"


def test_every_request_converts_to_its_command() -> None:
    b = parse_request({"type": "basket_entry", "basket": "LINKED", "req_id": "b",
                       "orders": [entry(type=..., req_id=..., exec="FOK",
                                        iceberg=None)]})
    cmd = to_command(b, "u", "A")
    assert isinstance(cmd, EnterBasket) and cmd.basket is BasketType.LINKED
    assert cmd.orders[0].exec is Exec.FOK and cmd.orders[0].req_id == "b"
    m = to_command(parse_request({"type": "order_modify", "order_id": 3, "revision": 2,
                                  "price": "1.00", "quantity": "1.0",
                                  "iceberg": {"peak": "0.5", "price_increment": "-0.10"}}),
                   "u", "A")
    assert isinstance(m, ModifyOrder) and (m.peak, m.incr, m.revision) == (5, -10, 2)


def test_instants() -> None:
    import calendar
    ref = calendar.timegm((2027, 1, 15, 9, 0, 0)) * 1000
    assert parse_instant("2027-01-15T09:00:00Z") == ref
    assert parse_instant("2027-01-15T10:00:00+01:00") == ref
    assert parse_instant("2027-01-15T09:00:00.123Z") == ref + 123
    assert parse_instant("2027-01-15T09:00:00.999+00:00") == ref + 999


@given(st.integers(min_value=-999_900, max_value=999_900))
def test_price_round_trip_through_the_wire(ticks: int) -> None:
    from engine.config import fmt_price
    assert parse_request(entry(price=fmt_price(ticks))).price == ticks


@given(st.one_of(st.text(max_size=20), st.floats(), st.integers(), st.none(),
                 st.lists(st.integers(), max_size=3)))
def test_arbitrary_price_values_never_crash(value: object) -> None:
    """Hostile input: either a valid price or a ProtocolError naming the field."""
    try:
        req = parse_request(entry(price=value))
    except ProtocolError as exc:
        assert exc.field == "price"
    else:
        assert isinstance(req.price, int)


def test_published_json_schema_is_current() -> None:
    """docs/protocol-schema.json is generated from the models (./run.sh schema)."""
    from pathlib import Path

    import orjson

    from gateway.protocol import json_schema

    path = Path(__file__).resolve().parents[1] / "docs" / "protocol-schema.json"
    assert orjson.loads(path.read_bytes()) == orjson.loads(orjson.dumps(json_schema())), (
        "regenerate with: ./run.sh schema > docs/protocol-schema.json")


# ------------------------------------------------------------------ the hot requests' fast path

_VALUES = st.one_of(
    st.sampled_from(["45.10", "45.1", "45", "-3.5", "0.1", "0", "0.0", "-0.0", "45.101",
                     "1.05", "999999999999.99", "1000000000000", "45.10\n", " 45.10",
                     "４５.10", "1e3", "NaN", "", "BUY", "SELL", "buy", "NON", "IOC", "FOK",
                     "GFS", "GTD", "ACTIVE", "HIBERNATED", "PH-20270115-10",
                     "QH-20270115-004", "PH-20270115-10\n", "PH-2027011５-10", "UNIT1",
                     "UNIT 1", "U" * 64, "U" * 65, "2027-01-15T09:00:00Z",
                     "2027-01-15T09:00:00", "2027-01-15T09:00:00.0001Z", "c" * 40,
                     "c" * 41]),
    st.integers(-3, 2**64), st.booleans(), st.none(), st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2))
_FIELDS = ["req_id", "contract", "unit", "side", "price", "quantity", "exec", "validity",
           "expiry", "state", "client_order_id", "order_id", "revision", "iceberg", "junk"]
_GOOD = {
    "order_entry": {"contract": "PH-20270115-10", "unit": "UNIT1", "side": "SELL",
                    "price": "45.10", "quantity": "12.5"},
    "order_modify": {"order_id": 7, "revision": 2, "price": "-3.50", "quantity": "0.1"},
    "order_cancel": {"order_id": 7},
}


@given(typ=st.sampled_from(sorted(_GOOD)), ticks=st.booleans(),
       drop=st.lists(st.sampled_from(_FIELDS), max_size=2),
       put=st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=3))
def test_fast_path_gives_the_validated_command_or_stands_aside(
        typ: str, ticks: bool, drop: list[str], put: dict[str, object]) -> None:
    """gateway/protocol.py ``fast_command``: for any message near a valid order entry,
    modification or cancellation, the fast path either stands aside (None) or builds exactly
    the command the validated path (pydantic models, then ``to_command``) builds; it never
    accepts what the models refuse (e.g. a trailing newline, non-ASCII digits, too many
    decimals: refused, never rounded)."""
    data: dict[str, object] = {"type": typ, "req_id": "r9", **_GOOD[typ]}
    for k in drop:
        data.pop(k, None)
    data.update(put)
    fast = fast_command(typ, data, ticks, "ana", "AG1")
    try:
        slow = to_command(parse_request(data, ticks), "ana", "AG1")
    except ProtocolError:
        assert fast is None, (data, fast)
        return
    if fast is not None:
        assert fast == slow, (data, fast, slow)


@pytest.mark.parametrize("typ", sorted(_GOOD))
@pytest.mark.parametrize("ticks", [False, True])
def test_fast_path_takes_the_plain_requests(typ: str, ticks: bool) -> None:
    """The common shapes of the hot requests do take the fast path (with the optional
    conditions the traders use), and give the validated path's command."""
    variants: list[dict[str, object]] = [dict(_GOOD[typ])]
    if typ != "order_cancel":
        variants += [{**_GOOD[typ], "exec": "FOK"},
                     {**_GOOD[typ], "validity": "GTD", "expiry": "2027-01-15T09:00:00Z"}]
    if typ == "order_entry":
        variants += [{**_GOOD[typ], "client_order_id": "x-1", "state": "HIBERNATED"}]
    for v in variants:
        data = {"type": typ, "req_id": "r1", **v}
        fast = fast_command(typ, data, ticks, "ana", "AG1")
        assert fast is not None, data
        assert fast == to_command(parse_request(data, ticks), "ana", "AG1")


@pytest.mark.parametrize("bad", ["45.10\n", "４５.10", " 45.10", "45.10 "])
def test_decimals_are_ascii_digits_and_nothing_else(bad: str) -> None:
    """DESIGN rule 4: a price is a plain decimal string; a trailing newline or non-ASCII
    digits are refused with the field named, not read as 45.10."""
    with pytest.raises(ProtocolError) as ei:
        parse_request(entry(price=bad))
    assert ei.value.field == "price"


@pytest.mark.parametrize("contract", ["PH-٢٠٢٧٠١١٥-10", "PH-20270115-١٠", "QH-２０２７0115-001"])
def test_a_contract_id_is_written_with_ascii_digits_only(contract: str) -> None:
    """Digits of other scripts (which a Unicode-aware \\d matches) are refused at the edge,
    naming the field, as the engine's own parser refuses them."""
    with pytest.raises(ProtocolError) as e:
        parse_request(entry(contract=contract))
    assert e.value.field == "contract"
    assert fast_command("order_entry", entry(contract=contract), False, "u1", "A1") is None


def test_a_modification_may_leave_out_the_quantity_to_keep_the_open_one() -> None:
    """R46.2.6.1: order_modify without quantity keeps the open quantity the order has when
    the modification is applied (what was filled meanwhile is not put back)."""
    msg = {"type": "order_modify", "req_id": "m", "order_id": 7, "revision": 2,
           "price": "51.00"}
    cmd = to_command(parse_request(msg), "u1", "A1")
    assert isinstance(cmd, ModifyOrder)
    assert (cmd.order_id, cmd.revision, cmd.price, cmd.qty) == (7, 2, 5100, None)
    given_qty = to_command(parse_request({**msg, "quantity": "4.0"}), "u1", "A1")
    assert given_qty.qty == 40
    assert fast_command("order_modify", {**msg, "quantity": "4.0"}, False, "u1", "A1") == \
        given_qty
