"""The command codec: exact round trips for every registered command (property-based, built
from the type hints), and one exception type, naming command and field, for bad data."""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.commands as c
from engine.model import BasketType, Exec, Side, Validity
from gateway import codec
from gateway.codec import INT_MAX, INT_MIN, Codec, CodecError, decode, encode


# A command of another package (risk/ adds its own): a float ratio and fixed-size tuples.
@dataclass(frozen=True, slots=True)
class ProbeLimits:
    by: str
    user: str | None
    rules: tuple[tuple[int, int], ...]
    warning_ratio: float = 0.8
    hibernate_on_breach: bool = False


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True, slots=True)
class ProbeNested:
    level: Level
    order: c.NewOrder | None
    pair: tuple[str, Level | None]
    baskets: tuple[tuple[c.NewOrder, ...], ...]


codec.register(ProbeLimits, "codec_test_probe_limits")  # into the default codec, as risk/ will
codec.register(ProbeNested, "codec_test_probe_nested")

ORDER = c.NewOrder("u1", "A1", "U1", "PH-20270115-10", Side.BUY, 4510, 125, req_id="r1")


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# --- strategies from the type hints ---------------------------------------------------------


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(INT_MIN, INT_MAX)
    if tp is str:
        return st.text(max_size=12)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else strategy_for(a) for a in args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return command_strategy(tp)
    raise AssertionError(f"no strategy for {tp!r}")


def command_strategy(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy_for(hints[f.name])
                             for f in dataclasses.fields(cls)})


garbage = st.recursive(
    st.none() | st.booleans() | st.integers(INT_MIN, INT_MAX) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8) | st.sampled_from(sorted(codec.registered())),
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=30,
)


def same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types all the way down (a StrEnum equals its string, an int
    equals a float: == alone would hide a missing conversion)."""
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a))
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def plain(x: Any) -> bool:
    """Only what msgpack carries natively: no tuples, no enums, no subclasses."""
    if x is None or type(x) in (bool, int, float, str):
        return True
    return type(x) is list and all(plain(y) for y in x)


def lists(x: Any) -> Any:
    return [lists(y) for y in x] if isinstance(x, list | tuple) else x


# --- the registry ----------------------------------------------------------------------------


def test_every_engine_command_is_registered_under_its_snake_case_name() -> None:
    engine_commands = typing.get_args(c.Command)
    names = codec.registered()
    for cls in engine_commands:
        assert names.get(snake(cls.__name__)) is cls, cls
    assert dict(codec.ENGINE_COMMAND_NAMES) == {k: snake(k.__name__) for k in engine_commands}
    assert Codec(engine_commands=False).registered() == {}


def test_new_order_encoding_is_the_documented_list() -> None:
    assert encode(ORDER) == [
        "new_order", "u1", "A1", "U1", "PH-20270115-10", "BUY", 4510, 125, "NON", "GFS",
        None, 0, 0, None, "r1", False,
    ]
    assert encode(c.Tick()) == ["tick"]
    assert decode(["tick"]) == c.Tick()


def test_basket_encodes_its_orders_recursively() -> None:
    b = c.EnterBasket("u1", "A1", BasketType.LINKED, (ORDER, dataclasses.replace(ORDER, qty=1)))
    e = encode(b)
    assert e[:4] == ["enter_basket", "u1", "A1", "LINKED"]
    assert e[4] == [encode(ORDER), encode(dataclasses.replace(ORDER, qty=1))]
    assert e[5] is None
    assert same(decode(e), b)


def test_tuples_become_lists_and_back() -> None:
    d = c.Deactivate("u1", "A1", (3, 1, 2), "PH-20270115-10")
    assert encode(d) == ["deactivate", "u1", "A1", [3, 1, 2], "PH-20270115-10", None]
    assert same(decode(encode(d)), d)
    assert encode(c.Activate("u1", "A1")) == ["activate", "u1", "A1", None, None, None]


def test_register_rules() -> None:
    k = Codec()
    assert k.register(c.NewOrder, "new_order") is c.NewOrder  # same pair again: no-op
    with pytest.raises(ValueError, match="already registered as 'new_order'"):
        k.register(c.NewOrder, "order")
    with pytest.raises(ValueError, match="already registered for NewOrder"):
        k.register(ProbeLimits, "new_order")
    for bad in ("", "NewOrder", "new-order", "1x", None):
        with pytest.raises(ValueError, match="snake_case"):
            k.register(ProbeLimits, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a dataclass"):
        k.register(int, "integer")

    @dataclass
    class Mutable:
        x: int

    with pytest.raises(TypeError, match="frozen"):
        k.register(Mutable, "mutable")

    @dataclass(frozen=True)
    class WithDict:
        x: dict[str, int]

    with pytest.raises(TypeError, match=r"WithDict\.x: unsupported field type"):
        k.register(WithDict, "with_dict")

    @dataclass(frozen=True)
    class WithUnion:
        x: int | str

    with pytest.raises(TypeError, match=re.escape("only X | None")):
        k.register(WithUnion, "with_union")

    @dataclass(frozen=True)
    class WithNoInit:
        x: int = dataclasses.field(default=0, init=False)

    with pytest.raises(TypeError, match="init=False"):
        k.register(WithNoInit, "with_no_init")

    empty = Codec(engine_commands=False)
    with pytest.raises(TypeError, match="nested NewOrder must be registered first"):
        empty.register(c.EnterBasket, "enter_basket")
    assert "enter_basket" not in empty.registered()  # a failed registration leaves nothing


def test_a_command_of_another_package_round_trips_with_floats_and_fixed_tuples() -> None:
    p = ProbeLimits("officer", None, ((1000, 5), (60_000, 100)), 0.75, True)
    e = encode(p)
    assert e == ["codec_test_probe_limits", "officer", None, [[1000, 5], [60_000, 100]], 0.75,
                 True]
    assert same(decode(msgpack.unpackb(msgpack.packb(e))), p)
    with pytest.raises(CodecError, match=r"rules\[1\]: expected a list of 2"):
        decode(["codec_test_probe_limits", "o", None, [[1, 2], [3]], 0.5, False])
    with pytest.raises(CodecError, match=r"rules\[0\]\[1\]: expected int"):
        decode(["codec_test_probe_limits", "o", None, [[1, "2"]], 0.5, False])
    # an int in a float field is accepted when exact and becomes a float
    assert same(decode(["codec_test_probe_limits", "o", None, [], 1, False]).warning_ratio, 1.0)
    assert encode(ProbeLimits("o", None, (), 2))[4] == 2.0
    for bad in (float("nan"), float("inf"), 2**53 + 1, "0.5", True):
        with pytest.raises(CodecError, match="warning_ratio"):
            decode(["codec_test_probe_limits", "o", None, [], bad, False])
        with pytest.raises(CodecError, match="warning_ratio"):
            encode(ProbeLimits("o", None, (), bad))  # type: ignore[arg-type]


def test_int_valued_enums_and_nested_optionals() -> None:
    p = ProbeNested(Level.HIGH, ORDER, ("x", None), ((ORDER,), ()))
    e = encode(p)
    assert e == ["codec_test_probe_nested", 2, encode(ORDER), ["x", None], [[encode(ORDER)], []]]
    assert same(decode(e), p)
    with pytest.raises(CodecError, match=r"level: str '2' is not a valid Level"):
        decode(["codec_test_probe_nested", "2", None, ["x", None], []])
    with pytest.raises(CodecError, match=r"pair\[1\]: int 3 is not a valid Level"):
        decode(["codec_test_probe_nested", 1, None, ["x", 3], []])
    with pytest.raises(CodecError, match=r"order: expected an encoded new_order, got name str"):
        decode(["codec_test_probe_nested", 1, ["tick"], ["x", 1], []])
    with pytest.raises(CodecError, match=r"baskets\[0\]\[0\]\.price: expected int"):
        bad = encode(ORDER)
        bad[6] = "1"
        decode(["codec_test_probe_nested", 1, None, ["x", 1], [[bad]]])


def test_post_init_refusal_is_a_codec_error() -> None:
    @dataclass(frozen=True)
    class Positive:
        n: int

        def __post_init__(self) -> None:
            if self.n <= 0:
                raise ValueError("n must be positive")

    k = Codec(engine_commands=False)
    k.register(Positive, "positive")
    assert k.decode(["positive", 3]) == Positive(3)
    with pytest.raises(CodecError, match="positive: Positive refused the values: n must be"):
        k.decode(["positive", 0])


# --- round trips -----------------------------------------------------------------------------


ALL_NAMES = sorted(codec.registered())


@pytest.mark.parametrize("name", ALL_NAMES)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_of_every_registered_command(name: str, data: st.DataObject) -> None:
    cls = codec.registered()[name]
    cmd = data.draw(command_strategy(cls))
    e = encode(cmd)
    assert e[0] == name
    assert len(e) == 1 + len(dataclasses.fields(cls))
    assert plain(e)
    assert same(decode(e), cmd)
    packed = msgpack.packb(e, strict_types=True)  # strict: plain types only, no subclasses
    assert same(decode(msgpack.unpackb(packed)), cmd)
    assert same(decode(msgpack.unpackb(packed, use_list=False)), cmd)
    assert decode(e) == cmd


@settings(max_examples=400)
@given(garbage)
def test_garbage_gives_codec_error_only(data: Any) -> None:
    try:
        cmd = decode(data)
    except CodecError as exc:
        assert str(exc)
    else:  # garbage that happens to be valid (e.g. ["tick"]) must be an exact encoding
        assert encode(cmd) == lists(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_one_bad_field_is_named(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(ALL_NAMES))
    cls = codec.registered()[name]
    fields = [f.name for f in dataclasses.fields(cls)]
    if not fields:
        return
    e = encode(data.draw(command_strategy(cls)))
    i = data.draw(st.integers(1, len(fields)))
    e[i] = data.draw(garbage)
    try:
        cmd = decode(msgpack.unpackb(msgpack.packb(e)))
    except CodecError as exc:
        assert exc.command == name
        assert exc.field is not None
        assert re.match(r"[a-z_]+", exc.field)[0] == fields[i - 1]  # type: ignore[index]
        assert str(exc).startswith(f"{name}.{fields[i - 1]}")
    else:
        assert encode(cmd) == lists(msgpack.unpackb(msgpack.packb(e)))


# --- errors ----------------------------------------------------------------------------------


def new_order_with(**kw: Any) -> list[Any]:
    e = encode(ORDER)
    idx = {f.name: n for n, f in enumerate(dataclasses.fields(c.NewOrder), 1)}
    for k, v in kw.items():
        e[idx[k]] = v
    return e


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "an encoded command is a list [name, fields...], got NoneType None"),
        ({"new_order": 1}, "an encoded command is a list"),
        (b"new_order", "an encoded command is a list"),
        ([], "got []"),
        ([1, 2], "command name must be a str, got int 1"),
        ([["new_order"]], "command name must be a str"),
        (["no_such_command"], "unknown command str 'no_such_command'"),
        (["new_order"], "new_order: expected 15 fields, got 0"),
        (["tick", 1], "tick: expected 0 fields, got 1"),
        (["cancel_order", "u", "A", 1], "cancel_order: expected 4 fields, got 3"),
        (["cancel_order", "u", "A", 1, None, None], "expected 4 fields, got 5"),
        (new_order_with(side="HOLD"), "new_order.side: str 'HOLD' is not a valid Side"),
        (new_order_with(side=None), "new_order.side: NoneType None is not a valid Side"),
        (new_order_with(exec="buy"), "new_order.exec: str 'buy' is not a valid Exec"),
        (new_order_with(validity=[]), "new_order.validity: list [] is not a valid Validity"),
        (new_order_with(price="45.10"), "new_order.price: expected int, got str '45.10'"),
        (new_order_with(price=45.1), "new_order.price: expected int, got float 45.1"),
        (new_order_with(price=True), "new_order.price: expected int, got bool True"),
        (new_order_with(price=2**64), "new_order.price: integer 18446744073709551616 is out"),
        (new_order_with(qty=None), "new_order.qty: expected int, got NoneType"),
        (new_order_with(hibernated=1), "new_order.hibernated: expected bool, got int 1"),
        (new_order_with(user=b"u1"), "new_order.user: expected str, got bytes"),
        (new_order_with(expiry="soon"), "new_order.expiry: expected int, got str 'soon'"),
        (new_order_with(req_id=7), "new_order.req_id: expected str, got int 7"),
        (new_order_with(user="x" * 100), None),  # long strings are fine ...
        (["deactivate", "u", "A", [1, "2"], None, None],
         "deactivate.order_ids[1]: expected int, got str '2'"),
        (["deactivate", "u", "A", 5, None, None],
         "deactivate.order_ids: expected a list, got int 5"),
        (["open_contracts", "PH-1"], "open_contracts.contracts: expected a list, got str"),
        (["enter_basket", "u", "A", "VALID", [new_order_with(side="HOLD")], None],
         "enter_basket.orders[0].side: str 'HOLD' is not a valid Side"),
        (["enter_basket", "u", "A", "VALID", [encode(ORDER), ["cancel_order"]], None],
         "enter_basket.orders[1]: expected an encoded new_order, got name str 'cancel_order'"),
        (["enter_basket", "u", "A", "VALID", [["new_order", 1]], None],
         "enter_basket.orders[0]: expected 15 fields, got 1"),
        (["enter_basket", "u", "A", "VALID", [[]], None],
         "enter_basket.orders[0]: expected an encoded new_order, got list []"),
        (["enter_basket", "u", "A", "NONE", None, None],
         "enter_basket.orders: expected a list, got NoneType None"),
    ],
)
def test_bad_data_is_named(data: Any, message: str | None) -> None:
    if message is None:
        assert decode(data).user == "x" * 100
        return
    with pytest.raises(CodecError) as info:
        decode(data)
    assert message in str(info.value)
    assert type(info.value) is CodecError and isinstance(info.value, ValueError)


def test_error_attributes() -> None:
    with pytest.raises(CodecError) as info:
        decode(["enter_basket", "u", "A", "VALID", [encode(ORDER), new_order_with(qty="1")],
                None])
    err = info.value
    assert (err.command, err.field) == ("enter_basket", "orders[1].qty")
    assert err.reason == "expected int, got str '1'"


def test_long_garbage_is_shortened_in_messages() -> None:
    with pytest.raises(CodecError) as info:
        decode(new_order_with(price="9" * 10_000))
    assert len(str(info.value)) < 120


def test_encode_is_as_strict_as_decode() -> None:
    """Whatever is encoded (journaled) must decode again: bad values fail at encoding."""
    replace: Any = dataclasses.replace  # the wrong types are the point: untyped calls
    cmds: Any = c
    cases: list[tuple[Any, str]] = [
        (replace(ORDER, side="BUY"), "new_order.side: expected Side, got str"),
        (replace(ORDER, price=4510.0), "new_order.price: expected int, got float"),
        (replace(ORDER, qty=-(2**63) - 1), "new_order.qty: integer"),
        (replace(ORDER, user="bad\ud800"), "new_order.user: string is not UTF-8"),
        (replace(ORDER, hibernated=0), "new_order.hibernated: expected bool"),
        (cmds.Deactivate("u", "A", [1, 2]), "deactivate.order_ids: expected tuple, got list"),
        (cmds.Deactivate("u", "A", (1, None)), "deactivate.order_ids[1]: expected int"),
        (cmds.EnterBasket("u", "A", BasketType.VALID, (ORDER, cmds.Tick())),
         "enter_basket.orders[1]: expected NewOrder, got Tick"),
        (cmds.EnterBasket("u", "A", BasketType.VALID, (replace(ORDER, exec="IOC"),)),
         "enter_basket.orders[0].exec: expected Exec"),
        (cmds.OpenContracts(("a", 1)), "open_contracts.contracts[1]: expected str, got int"),
    ]
    for cmd, message in cases:
        with pytest.raises(CodecError) as info:
            encode(cmd)
        assert message in str(info.value), (cmd, str(info.value))
    with pytest.raises(CodecError, match="int is not a registered command"):
        encode(5)
    with pytest.raises(CodecError, match="ProbeLimits"):
        Codec().encode(ProbeLimits("o", None, ()))
    assert codec.default_codec().name_of(c.NewOrder) == "new_order"
    with pytest.raises(CodecError, match="not a registered command"):
        Codec().name_of(ProbeLimits)


def test_non_ascii_strings_round_trip() -> None:
    o = dataclasses.replace(ORDER, user="operadör", unit="ユニット", req_id="€")
    assert encode(o)[1] == "operadör"
    assert same(decode(msgpack.unpackb(msgpack.packb(encode(o)))), o)


def test_extreme_integers_round_trip() -> None:
    for v in (INT_MIN, -1, 0, INT_MAX, 2**63):
        o = dataclasses.replace(ORDER, price=v, expiry=v)
        assert same(decode(msgpack.unpackb(msgpack.packb(encode(o)))), o)


def test_decoded_enums_are_the_members() -> None:
    o = decode(encode(dataclasses.replace(ORDER, exec=Exec.FOK, validity=Validity.GTD,
                                          expiry=1)))
    assert o.side is Side.BUY and o.exec is Exec.FOK and o.validity is Validity.GTD
