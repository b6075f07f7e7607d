"""Codec between core commands and msgpack-friendly plain data (the journal's command format).

A command is a frozen dataclass registered under a stable snake_case name (the engine's
commands by default, see :data:`ENGINE_COMMAND_NAMES`; other packages such as ``risk/`` add
theirs with :func:`register`).  Its encoding is a list::

    [name, field_1, field_2, ...]          # every field, in dataclass field order

    encode(NewOrder("u1", "A1", "U1", "PH-20270115-10", Side.BUY, 4510, 125))
    == ["new_order", "u1", "A1", "U1", "PH-20270115-10", "BUY", 4510, 125,
        "NON", "GFS", None, 0, 0, None, None, False]

Field values follow the field's declared type (resolved with :func:`typing.get_type_hints`
when the class is registered):

=====================  ==========================================================
declared type          encoding
=====================  ==========================================================
``int``                int, ``-2**63 <= v < 2**64`` (what msgpack carries); a bool
                       is not accepted as an int, nor an int as a bool
``bool``               bool
``float``              float, finite (an int is accepted and becomes a float); for
                       ratios only: amounts are integer ticks (DESIGN rule 4)
``str``                str (UTF-8 encodable)
an ``Enum``            its value (a :class:`~enum.StrEnum` gives its string)
``X | None``           ``None`` or the encoding of X
``tuple[X, ...]``      a list of the encodings of X
``tuple[X, Y]``        a list of exactly that length (e.g. ``tuple[tuple[int, int], ...]``)
a registered command   its own encoding ``[name, ...]`` (``EnterBasket.orders``)
=====================  ==========================================================

:func:`decode` is the exact inverse: ``decode(encode(c)) == c`` for every command, and the
same after a trip through ``msgpack.packb``/``msgpack.unpackb`` (lists may come back as
lists or tuples).  Encoding is strict as well, so that whatever is encoded, hence journaled,
can be decoded and replayed (DESIGN rule 3).  Every problem, encoding or decoding, raises
one exception type, :class:`CodecError` (a :class:`ValueError`), naming the command and the
field, e.g. ``enter_basket.orders[1].side: 'HOLD' is not a valid Side``.  Registering an
unsupported class is a programming error and raises :class:`TypeError` or
:class:`ValueError` at registration time.

Stability: the names and the field order *are* the journal format.  Never rename a
registered name, reorder fields or insert a field in the middle of a registered command;
decoding requires exactly as many fields as the class has.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from engine import commands as _cmd

__all__ = [
    "ENGINE_COMMAND_NAMES",
    "Codec",
    "CodecError",
    "decode",
    "default_codec",
    "encode",
    "register",
    "registered",
]

T = TypeVar("T")

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**64 - 1  # msgpack's integer range: int64 .. uint64

_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]*")
_NONE_TYPE: Final = type(None)

ENGINE_COMMAND_NAMES: Final[Mapping[type, str]] = types.MappingProxyType({
    # Order matters only in that a nested command (NewOrder in EnterBasket) comes first.
    _cmd.NewOrder: "new_order",
    _cmd.EnterBasket: "enter_basket",
    _cmd.ModifyOrder: "modify_order",
    _cmd.CancelOrder: "cancel_order",
    _cmd.CancelAll: "cancel_all",
    _cmd.Deactivate: "deactivate",
    _cmd.Activate: "activate",
    _cmd.CreateContract: "create_contract",
    _cmd.OpenContracts: "open_contracts",
    _cmd.CloseContracts: "close_contracts",
    _cmd.InterruptContracts: "interrupt_contracts",
    _cmd.ResumeContracts: "resume_contracts",
    _cmd.HibernateOrders: "hibernate_orders",
    _cmd.ReactivateOrders: "reactivate_orders",
    _cmd.CancelAgentOrders: "cancel_agent_orders",
    _cmd.Tick: "tick",
})
"""The engine's commands and their journal names (stable: they are the file format)."""


class CodecError(ValueError):
    """Data that is not (or cannot become) a valid encoded command.

    ``command`` is the registered name when known, ``field`` the path of the offending field
    inside it (``"orders[1].side"``) when there is one, ``reason`` what is wrong.
    """

    def __init__(self, reason: str, command: str | None = None,
                 field: str | None = None) -> None:
        where = ".".join(p for p in (command, field) if p)
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.command = command
        self.field = field


class _Invalid(Exception):
    """Internal: raised by the converters, collects the field path on its way up."""

    __slots__ = ("path", "reason")

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def _path(parts: list[str]) -> str | None:
    out = ""
    for p in parts:
        out += p if p.startswith("[") or not out else "." + p
    return out or None


def _show(v: object) -> str:
    """A short description of a bad value for an error message."""
    try:
        r = repr(v)
    except Exception:  # a hostile __repr__ must not escape as another exception type
        r = "<unrepresentable>"
    if len(r) > 60:
        r = r[:57] + "..."
    return f"{type(v).__name__} {r}"


_Conv = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    cls: type
    fields: tuple[str, ...]
    getter: Callable[[Any], tuple[Any, ...]]
    encoders: tuple[_Conv, ...]
    decoders: tuple[_Conv, ...]
    fast_encode: Callable[[Any], list[Any] | None]
    fast_decode: Callable[[Any], Any]


# --- scalar converters (encode and decode check the same things) ---------------------------


def _int(v: Any) -> Any:
    if type(v) is int and INT_MIN <= v <= INT_MAX:
        return v
    if type(v) is int:
        raise _Invalid(f"integer {v} is out of range [-2**63, 2**64)")
    raise _Invalid(f"expected int, got {_show(v)}")


def _bool(v: Any) -> Any:
    if type(v) is bool:
        return v
    raise _Invalid(f"expected bool, got {_show(v)}")


def _str(v: Any) -> Any:
    if type(v) is str:
        if not v.isascii():
            try:
                v.encode()
            except UnicodeEncodeError:
                raise _Invalid("string is not UTF-8 encodable (surrogates)") from None
        return v
    raise _Invalid(f"expected str, got {_show(v)}")


def _float(v: Any) -> Any:
    t = type(v)
    if t is float:
        if math.isfinite(v):
            return v
        raise _Invalid(f"float must be finite, got {_show(v)}")
    if t is int:
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if f == v:  # exactly representable
            return f
        raise _Invalid(f"integer {v} is not exactly representable as a float")
    raise _Invalid(f"expected float, got {_show(v)}")


def _enum_convs(tp: type[enum.Enum]) -> tuple[_Conv, _Conv]:
    value_types = frozenset(type(m.value) for m in tp)
    bad = value_types - {int, str}
    if bad:
        raise TypeError(f"enum {tp.__name__}: only str or int values are supported")
    name = tp.__name__
    members: dict[Any, enum.Enum] = {m.value: m for m in tp}

    def enc(v: Any) -> Any:
        if type(v) is tp:  # an Enum with members cannot be subclassed
            return v._value_
        raise _Invalid(f"expected {name}, got {_show(v)}")

    def dec(v: Any) -> Any:
        if type(v) in value_types:  # hashable: int or str
            m = members.get(v)
            if m is not None:
                return m
        raise _Invalid(f"{_show(v)} is not a valid {name}")

    return enc, dec


def _optional(inner: tuple[_Conv, _Conv]) -> tuple[_Conv, _Conv]:
    ienc, idec = inner

    def enc(v: Any) -> Any:
        return None if v is None else ienc(v)

    def dec(v: Any) -> Any:
        return None if v is None else idec(v)

    return enc, dec


def _tuple_of(inner: tuple[_Conv, _Conv]) -> tuple[_Conv, _Conv]:
    ienc, idec = inner

    def enc(v: Any) -> Any:
        if type(v) is not tuple:
            raise _Invalid(f"expected tuple, got {_show(v)}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(ienc(x))
            except _Invalid as e:
                e.path.insert(0, f"[{i}]")
                raise
        return out

    def dec(v: Any) -> Any:
        if type(v) is not list and type(v) is not tuple:
            raise _Invalid(f"expected a list, got {_show(v)}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(idec(x))
            except _Invalid as e:
                e.path.insert(0, f"[{i}]")
                raise
        return tuple(out)

    return enc, dec


def _fixed_tuple(items: list[tuple[_Conv, _Conv]]) -> tuple[_Conv, _Conv]:
    n = len(items)
    encs = [e for e, _ in items]
    decs = [d for _, d in items]

    def run(convs: list[_Conv], v: Any) -> list[Any]:
        out = []
        for i, (conv, x) in enumerate(zip(convs, v, strict=True)):
            try:
                out.append(conv(x))
            except _Invalid as e:
                e.path.insert(0, f"[{i}]")
                raise
        return out

    def enc(v: Any) -> Any:
        if type(v) is not tuple or len(v) != n:
            raise _Invalid(f"expected a tuple of {n}, got {_show(v)}")
        return run(encs, v)

    def dec(v: Any) -> Any:
        if (type(v) is not list and type(v) is not tuple) or len(v) != n:
            raise _Invalid(f"expected a list of {n}, got {_show(v)}")
        return tuple(run(decs, v))

    return enc, dec


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda _c: ()
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda c: (one(c),)
    return operator.attrgetter(*names)  # returns the tuple of the field values


def _inline(tp: Any) -> tuple[str, bool, Any] | None:
    """(kind, optional, enum class) of a field type whose check can be inlined."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not _NONE_TYPE]
        if len(rest) != 1:
            return None
        tp, optional = rest[0], True
    if tp is str or tp is int or tp is bool:
        return tp.__name__, optional, None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "enum", optional, tp
    return None


def _compile(name: str, cls: type, fields: tuple[str, ...], hints: Mapping[str, Any],
             encoders: tuple[_Conv, ...], decoders: tuple[_Conv, ...],
             ) -> tuple[Callable[[Any], list[Any] | None], Callable[[Any], Any]]:
    """Generate the fast paths: an encoder and a decoder with the checks of str, int, bool
    and enum fields (and their ``| None``) inlined, calling the converters for the rest.
    Each returns None when a check fails; the caller then takes the slow path, which names
    the field (or, for a non-ASCII string, accepts it).  Only ``v{i}`` names and the
    dataclass's own field names (identifiers) appear in the generated source."""
    ns: dict[str, Any] = {"NAME": name, "CLS": cls, "MIN": INT_MIN, "MAX": INT_MAX}
    econds: list[str] = []
    dconds: list[str] = []
    eouts: list[str] = []
    douts: list[str] = []
    for i, f in enumerate(fields):
        v = f"v{i}"
        info = _inline(hints[f])
        if info is None:
            ns[f"enc{i}"], ns[f"dec{i}"] = encoders[i], decoders[i]
            eouts.append(f"enc{i}({v})")
            douts.append(f"dec{i}({v})")
            continue
        kind, optional, ecls = info
        if kind == "enum":
            ns[f"E{i}"] = ecls
            ns[f"M{i}"] = {m.value: m for m in ecls}
            ns[f"T{i}"] = frozenset(type(m.value) for m in ecls)
            ec, dc = f"type({v}) is E{i}", f"(type({v}) in T{i} and {v} in M{i})"
            eo, do = f"{v}._value_", f"M{i}[{v}]"
        else:
            ec = {"str": f"(type({v}) is str and {v}.isascii())",
                  "int": f"(type({v}) is int and MIN <= {v} <= MAX)",
                  "bool": f"type({v}) is bool"}[kind]
            dc, eo, do = ec, v, v
        if optional:
            ec, dc = f"({v} is None or {ec})", f"({v} is None or {dc})"
            if kind == "enum":
                eo, do = f"(None if {v} is None else {eo})", f"(None if {v} is None else {do})"
        econds.append(ec)
        dconds.append(dc)
        eouts.append(eo)
        douts.append(do)
    names = "".join(f"v{i}, " for i in range(len(fields)))
    src = ["def fast_encode(c):"]
    src += [f"    v{i} = c.{f}" for i, f in enumerate(fields)]
    if econds:
        src.append(f"    if not ({' and '.join(econds)}):\n        return None")
    src.append(f"    return [NAME, {', '.join(eouts)}]")
    src.append("def fast_decode(d):")
    if fields:
        src.append(f"    _, {names}= d")
    if dconds:
        src.append(f"    if not ({' and '.join(dconds)}):\n        return None")
    src.append(f"    return CLS({', '.join(douts)})")
    exec(compile("\n".join(src), f"<codec {name}>", "exec"), ns)
    return ns["fast_encode"], ns["fast_decode"]


def _encode_spec(spec: _Spec, cmd: Any) -> list[Any]:
    try:
        out = spec.fast_encode(cmd)
    except _Invalid:
        out = None
    if out is not None:
        return out
    values = spec.getter(cmd)  # slow path: accept non-ASCII strings, or name the bad field
    res = [spec.name]
    for fname, enc, v in zip(spec.fields, spec.encoders, values, strict=True):
        try:
            res.append(enc(v))
        except _Invalid as e:
            e.path.insert(0, fname)
            raise
    return res


def _decode_spec(spec: _Spec, data: list[Any] | tuple[Any, ...]) -> Any:
    """``data[0]`` is known to be ``spec.name``."""
    n = len(spec.fields)
    if len(data) != n + 1:
        raise _Invalid(f"expected {n} field{'s' if n != 1 else ''}, got {len(data) - 1}")
    try:
        try:
            out = spec.fast_decode(data)
        except _Invalid:
            out = None
        if out is not None:
            return out
        args = []
        for fname, dec, v in zip(spec.fields, spec.decoders, data[1:], strict=True):
            try:  # slow path: name the bad field
                args.append(dec(v))
            except _Invalid as e:
                e.path.insert(0, fname)
                raise
        return spec.cls(*args)
    except _Invalid:
        raise
    except Exception as exc:  # a __post_init__ check of a future command refusing the values
        raise _Invalid(f"{spec.cls.__name__} refused the values: {exc}") from None


class Codec:
    """A registry of command classes with their encoders and decoders.

    The module-level functions use :func:`default_codec`, which holds the engine's commands;
    ``Codec(engine_commands=False)`` starts empty (tests, tools).
    """

    def __init__(self, *, engine_commands: bool = True) -> None:
        self._by_name: dict[str, _Spec] = {}
        self._by_class: dict[type, _Spec] = {}
        if engine_commands:
            for cls, name in ENGINE_COMMAND_NAMES.items():
                self.register(cls, name)

    # --- registry ---------------------------------------------------------------------

    def register(self, cls: type[T], name: str) -> type[T]:
        """Register command class ``cls`` under the stable ``name``; return ``cls``.

        ``cls`` must be a frozen dataclass whose fields all have a supported type (see the
        module docstring); a nested command class must be registered first.  Registering the
        same class under the same name again is a no-op; any other reuse of a name or a
        class is a :class:`ValueError`.
        """
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(f"command name {name!r} must be snake_case ([a-z][a-z0-9_]*)")
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"{cls!r} is not a dataclass")
        known = self._by_class.get(cls)
        if known is not None:
            if known.name == name:
                return cls
            raise ValueError(f"{cls.__qualname__} is already registered as {known.name!r}")
        if name in self._by_name:
            other = self._by_name[name].cls.__qualname__
            raise ValueError(f"name {name!r} is already registered for {other}")
        params = getattr(cls, "__dataclass_params__", None)
        if not getattr(params, "frozen", False):
            raise TypeError(f"{cls.__qualname__} must be a frozen dataclass (a journaled "
                            "command never changes)")
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:
            raise TypeError(f"cannot resolve the type hints of {cls.__qualname__}: {exc}") \
                from exc
        fields = dataclasses.fields(cls)
        encoders: list[_Conv] = []
        decoders: list[_Conv] = []
        for f in fields:
            if not f.init:
                raise TypeError(f"{cls.__qualname__}.{f.name}: init=False fields are not "
                                "supported")
            try:
                enc, dec = self._converters(hints[f.name])
            except TypeError as exc:
                raise TypeError(f"{cls.__qualname__}.{f.name}: {exc}") from None
            encoders.append(enc)
            decoders.append(dec)
        names = tuple(f.name for f in fields)
        encs, decs = tuple(encoders), tuple(decoders)
        fast_enc, fast_dec = _compile(name, cls, names, hints, encs, decs)
        spec = _Spec(name, cls, names, _getter(names), encs, decs, fast_enc, fast_dec)
        self._by_name[name] = spec
        self._by_class[cls] = spec
        return cls

    def registered(self) -> Mapping[str, type]:
        """A read-only snapshot ``{name: class}`` of every registered command."""
        return types.MappingProxyType({n: s.cls for n, s in self._by_name.items()})

    def name_of(self, cls: type) -> str:
        """The registered name of ``cls`` (:class:`CodecError` if it is not registered)."""
        spec = self._by_class.get(cls)
        if spec is None:
            raise CodecError(f"{getattr(cls, '__qualname__', cls)!r} is not a registered "
                             "command")
        return spec.name

    def _converters(self, tp: Any) -> tuple[_Conv, _Conv]:
        if tp is bool:
            return _bool, _bool
        if tp is int:
            return _int, _int
        if tp is str:
            return _str, _str
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return _enum_convs(tp)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Union or origin is types.UnionType:
            rest = [a for a in args if a is not _NONE_TYPE]
            if len(args) == 2 and len(rest) == 1:
                return _optional(self._converters(rest[0]))
            raise TypeError(f"unsupported union {tp!r} (only X | None)")
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return _tuple_of(self._converters(args[0]))
            if Ellipsis not in args:  # tuple[X, Y] (tuple[()] has no args)
                return _fixed_tuple([self._converters(a) for a in args])
            raise TypeError(f"unsupported tuple type {tp!r}")
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            spec = self._by_class.get(tp)
            if spec is None:
                raise TypeError(f"nested {tp.__qualname__} must be registered first")
            return self._nested(spec)
        if tp is float:
            return _float, _float
        raise TypeError(f"unsupported field type {tp!r}")

    @staticmethod
    def _nested(spec: _Spec) -> tuple[_Conv, _Conv]:
        cls, name = spec.cls, spec.name

        def enc(v: Any) -> Any:
            if type(v) is not cls:
                raise _Invalid(f"expected {cls.__name__}, got {_show(v)}")
            return _encode_spec(spec, v)

        def dec(v: Any) -> Any:
            if (type(v) is not list and type(v) is not tuple) or not v:
                raise _Invalid(f"expected an encoded {name}, got {_show(v)}")
            if type(v[0]) is not str or v[0] != name:
                raise _Invalid(f"expected an encoded {name}, got name {_show(v[0])}")
            return _decode_spec(spec, v)

        return enc, dec

    # --- encoding and decoding --------------------------------------------------------

    def encode(self, cmd: object) -> list[Any]:
        """``cmd`` as ``[name, field_1, ...]`` (plain ints, strs, bools, None and lists)."""
        spec = self._by_class.get(type(cmd))
        if spec is None:
            raise CodecError(f"{type(cmd).__qualname__} is not a registered command")
        try:
            return _encode_spec(spec, cmd)
        except _Invalid as e:
            raise CodecError(e.reason, spec.name, _path(e.path)) from None

    def decode(self, data: object) -> Any:
        """The command encoded in ``data``; :class:`CodecError` for anything else."""
        if type(data) is not list and type(data) is not tuple:
            raise CodecError(f"an encoded command is a list [name, fields...], got "
                             f"{_show(data)}")
        if not data:
            raise CodecError("an encoded command is a list [name, fields...], got []")
        name = data[0]
        if type(name) is not str:
            raise CodecError(f"command name must be a str, got {_show(name)}")
        spec = self._by_name.get(name)
        if spec is None:
            raise CodecError(f"unknown command {_show(name)}")
        try:
            return _decode_spec(spec, data)
        except _Invalid as e:
            raise CodecError(e.reason, spec.name, _path(e.path)) from None


_DEFAULT: Final = Codec()


def default_codec() -> Codec:
    """The process-wide codec used by :func:`encode`, :func:`decode` and the journal."""
    return _DEFAULT


def register(cls: type[T], name: str) -> type[T]:
    """Register a command class in the default codec (see :meth:`Codec.register`)."""
    return _DEFAULT.register(cls, name)


def registered() -> Mapping[str, type]:
    """``{name: class}`` of the default codec."""
    return _DEFAULT.registered()


def encode(cmd: object) -> list[Any]:
    """Encode with the default codec (see :meth:`Codec.encode`)."""
    return _DEFAULT.encode(cmd)


def decode(data: object) -> Any:
    """Decode with the default codec (see :meth:`Codec.decode`)."""
    return _DEFAULT.decode(data)
