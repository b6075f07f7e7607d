"""The wire protocol's requests as pydantic models, and their conversion to core commands.

This is the edge where decimals become integer ticks (DESIGN rule 4): on JSON, prices and
quantities are decimal strings (``"45.10"``, ``"12.5"``) and instants ISO-8601 strings
with an offset; with the ``ticks`` validation context (msgpack), they may also be integer
ticks and integer milliseconds.  A value with more decimals than the tick allows, a float, a bool, a
non-number, NaN or an out-of-range value is refused with an error that names the field;
nothing is ever rounded.

The same models serve the gateway (WebSocket, AMQP) and the replay tool.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)

from engine import commands as c
from engine.config import fmt_price
from engine.model import BasketType, Exec, Side, Validity
from gateway.inbound import clip, shown

__all__ = [
    "OPERATOR_ADAPTER",
    "REQUEST_ADAPTER",
    "ProtocolError",
    "ValidationError",
    "fast_command",
    "json_schema",
    "parse_instant",
    "parse_operator",
    "parse_request",
    "to_command",
    "to_operator_command",
]

# Bounds that keep hostile input cheap; the market's own bounds are checked by the engine
# with the configured profile (R46.2.1), so a value inside these but outside the market's
# range gets PRICE_OUT_OF_RANGE with the limit, as a rejection event.
_MAX_PRICE_TICKS = 10**9
_MAX_QTY_TICKS = 10**9
_MAX_ID = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_INSTANT = 946_684_800_000  # 2000-01-01T00:00Z
_MAX_INSTANT = 32_503_680_000_000 - 1  # before 3000-01-01T00:00Z
# ASCII digits only, and nothing after the number (a trailing newline is not a number)
_DEC_RE = re.compile(r"(-?)([0-9]{1,12})(?:\.([0-9]{1,12}))?\Z")


class ProtocolError(ValueError):
    """A request that does not follow the protocol: ``field`` says where, ``reason`` why."""

    def __init__(self, field: str, reason: str, code: str = "INVALID_FIELD") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code


def _ticks_mode(info: ValidationInfo) -> bool:
    ctx = info.context
    return bool(ctx and ctx.get("ticks"))


def _decimal_to_ticks(v: Any, decimals: int, unit: str, info: ValidationInfo) -> int:
    if _ticks_mode(info) and not isinstance(v, str):
        # msgpack: an integer number of ticks, or the decimal string as on JSON
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be an integer number of ticks or a decimal string, got"
                             f" {type(v).__name__}")
        return v
    if not isinstance(v, str):
        raise ValueError(
            f"must be a decimal string such as {'45.10' if decimals == 2 else '12.5'!r}"
            f" ({unit}), got {type(v).__name__}"
        )
    m = _DEC_RE.match(v)
    if m is None:
        shown = repr(v) if len(v) <= 24 else repr(v[:20]) + f"... ({len(v)} characters)"
        raise ValueError(f"{shown} is not a decimal number")
    sign: str = m.group(1)
    whole: str = m.group(2)
    frac: str = m.group(3) or ""
    if len(frac) > decimals:
        # refused, never rounded (DESIGN rule 4)
        raise ValueError(
            f"{v!r} has {len(frac)} decimals; at most {decimals} are allowed ({unit})"
        )
    scale: int = 10**decimals
    ticks = int(whole) * scale + int(frac.ljust(decimals, "0") or "0")
    return -ticks if sign else ticks


def _price(v: Any, info: ValidationInfo) -> int:
    t = _decimal_to_ticks(v, 2, "€/MWh, 0.01 tick", info)
    if abs(t) > _MAX_PRICE_TICKS:
        raise ValueError(f"{fmt_price(t)} is out of any possible price range")
    return t


def _qty(v: Any, info: ValidationInfo) -> int:
    t = _decimal_to_ticks(v, 1, "MWh, 0.1 tick", info)
    if t <= 0:
        raise ValueError("must be positive")
    if t > _MAX_QTY_TICKS:
        raise ValueError("is out of any possible quantity range")
    return t


def parse_instant(v: Any) -> int:
    """ISO-8601 with an explicit offset (``2027-01-15T09:00:00.000Z``) to ms UTC."""
    if not isinstance(v, str):
        raise ValueError(f"must be an ISO-8601 instant string, got {type(v).__name__}")
    if len(v) > 40:
        raise ValueError("is too long for an instant")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an ISO-8601 instant") from None
    off = dt.utcoffset()
    if off is None:
        raise ValueError(f"{v!r} has no UTC offset; write it with Z or +01:00")
    if off % timedelta(minutes=1):
        raise ValueError(f"{v!r}: the UTC offset must be whole minutes (+01:00)")
    if dt.microsecond % 1000:
        raise ValueError(f"{v!r} is more precise than a millisecond")
    ms = (dt - _EPOCH) // timedelta(milliseconds=1)
    return _instant_range(ms)


def _instant_range(ms: int) -> int:
    if not _MIN_INSTANT <= ms <= _MAX_INSTANT:
        raise ValueError("is outside the years 2000 to 2999")
    return ms


def _instant(v: Any, info: ValidationInfo) -> int:
    if _ticks_mode(info) and not isinstance(v, str):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("must be an integer of milliseconds since the epoch (UTC)")
        return _instant_range(v)
    return parse_instant(v)


Price = Annotated[int, BeforeValidator(_price), WithJsonSchema({
    "type": "string", "pattern": r"^-?[0-9]{1,12}(\.[0-9]{1,2})?$",
    "description": "€/MWh as a decimal string, at most 2 decimals (msgpack: integer cents)"})]
Qty = Annotated[int, BeforeValidator(_qty), WithJsonSchema({
    "type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9])?$",
    "description": "MWh as a decimal string, at most 1 decimal (msgpack: integer tenths)"})]
Instant = Annotated[int, BeforeValidator(_instant), WithJsonSchema({
    "type": "string", "format": "date-time",
    "description": "ISO-8601 with offset, at most ms precision (msgpack: integer ms UTC)"})]
Id = Annotated[int, Field(strict=True, gt=0, le=_MAX_ID)]
Revision = Annotated[int, Field(strict=True, gt=0, le=_MAX_ID)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
ReqId = Annotated[str, Field(min_length=1, max_length=64)]
ClientOrderId = Annotated[str, Field(min_length=1, max_length=40)]
ContractId = Annotated[str, Field(pattern=r"^(PH-[0-9]{8}-[0-9]{2}|QH-[0-9]{8}-[0-9]{3})$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Iceberg(_Model):
    """A1§3.4: the visible peak; A1§3.4.1: optional price increment per instantiation."""

    peak: Qty
    price_increment: Price = 0


class OrderFields(_Model):
    contract: ContractId
    unit: Name
    side: Side
    price: Price
    quantity: Qty
    exec: Exec = Exec.NON
    validity: Validity = Validity.GFS
    expiry: Instant | None = None
    iceberg: Iceberg | None = None
    state: Literal["ACTIVE", "HIBERNATED"] = "ACTIVE"
    client_order_id: ClientOrderId | None = None


class _Request(_Model):
    req_id: ReqId | None = None


class OrderEntry(_Request, OrderFields):
    type: Literal["order_entry"]


class BasketEntry(_Request):
    type: Literal["basket_entry"]
    basket: BasketType
    orders: Annotated[list[OrderFields], Field(min_length=1, max_length=1000)]


class OrderModify(_Request):
    type: Literal["order_modify"]
    order_id: Id
    revision: Revision
    price: Price
    # absent: the open quantity the order has when the modification is applied (R46.2.6.1)
    quantity: Qty | None = None
    exec: Exec = Exec.NON
    # absent (with expiry absent): the order's own; another than the order's is refused
    # (R46.2.6: a modification does not change the validity)
    validity: Validity | None = None
    expiry: Instant | None = None
    iceberg: Iceberg | None = None


class OrderCancel(_Request):
    type: Literal["order_cancel"]
    order_id: Id


class OrderDeactivate(_Request):
    type: Literal["order_deactivate"]
    order_ids: Annotated[list[Id], Field(min_length=1, max_length=10_000)] | None = None
    contract: ContractId | None = None


class OrderActivate(_Request):
    type: Literal["order_activate"]
    order_ids: Annotated[list[Id], Field(min_length=1, max_length=10_000)] | None = None
    contract: ContractId | None = None


class CancelAllRequest(_Request):
    type: Literal["cancel_all"]
    scope: Literal["user", "agent"] = "user"
    contract: ContractId | None = None


def _money(v: Any, info: ValidationInfo) -> int:
    t = _decimal_to_ticks(v, 2, "€, 0.01", info)
    if abs(t) > 10**15:
        raise ValueError("is out of any possible amount range")
    return t


def _energy(v: Any, info: ValidationInfo) -> int:
    t = _decimal_to_ticks(v, 1, "MWh, 0.1", info)
    if t < 0:
        raise ValueError("must not be negative")
    if t > _MAX_QTY_TICKS:
        raise ValueError("is out of any possible energy range")
    return t


Money = Annotated[int, BeforeValidator(_money), WithJsonSchema({
    "type": "string", "pattern": r"^-?[0-9]{1,13}(\.[0-9]{1,2})?$",
    "description": "€ as a decimal string, at most 2 decimals (msgpack: integer cents)"})]
Energy = Annotated[int, BeforeValidator(_energy), WithJsonSchema({
    "type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9])?$",
    "description": "MWh in the period, at most 1 decimal (msgpack: integer tenths)"})]
Reason = Annotated[str, Field(min_length=1, max_length=200)]


class GuaranteeRequestReq(_Request):
    """A trader asks to increase or reduce its agent's reserved guarantees (R49.1.4.4)."""

    type: Literal["guarantee_request"]
    change: Literal["increase", "reduction"]
    amount: Money


class BreachActionReq(_Request):
    """A trader's own choice: hibernate my orders if I breach my rate limit (R48.c)."""

    type: Literal["set_breach_action"]
    hibernate_on_breach: StrictBool


class SetGuaranteesReq(_Request):
    type: Literal["set_guarantees"]
    agent: Name
    amount: Money


class DecideRequestReq(_Request):
    type: Literal["decide_guarantee_request"]
    request_id: Id
    accept: StrictBool
    reason: Annotated[str, Field(max_length=200)] = ""


class SuspendAgentReq(_Request):
    type: Literal["suspend_agent"]
    agent: Name
    reason: Reason = "suspended"


class ReinstateAgentReq(_Request):
    type: Literal["reinstate_agent"]
    agent: Name


class RateRule(_Model):
    window_ms: Annotated[int, Field(strict=True, ge=1, le=86_400_000)]
    max: Annotated[int, Field(strict=True, ge=1, le=10_000_000)]


class SetRateLimitsReq(_Request):
    type: Literal["set_rate_limits"]
    user: Name | None = None
    rules: Annotated[list[RateRule], Field(min_length=1, max_length=10)]
    warning_ratio: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.8
    hibernate_on_breach: StrictBool = False


class InterruptContractReq(_Request):
    """A risk officer or the operator interrupts trading of contracts (R48.b)."""

    type: Literal["interrupt_contracts"]
    contracts: Annotated[list[ContractId], Field(min_length=1, max_length=1000)]
    reason: Reason = "interrupted by the operator"


class ResumeContractReq(_Request):
    type: Literal["resume_contracts"]
    contracts: Annotated[list[ContractId], Field(min_length=1, max_length=1000)]


class SetProgramReq(_Request):
    """System operator / settlement side: a unit's program in one period (R50)."""

    type: Literal["set_program"]
    unit: Name
    period: ContractId
    energy: Energy


class SetUnavailabilityReq(_Request):
    type: Literal["set_unavailability"]
    unit: Name
    period: ContractId
    unavailable: Energy


class SetLimitationReq(_Request):
    type: Literal["set_limitation"]
    unit: Name
    period: ContractId
    min_energy: Energy | None = None
    max_energy: Energy | None = None


SessionId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class AuctionStep(_Model):
    price: Price
    quantity: Qty


class AuctionBidReq(_Request):
    """A simple bid of a unit for one period of an intraday auction session (R39)."""

    type: Literal["auction_bid"]
    session: SessionId
    unit: Name
    contract: ContractId
    side: Side
    steps: Annotated[list[AuctionStep], Field(min_length=1, max_length=5)]


class AuctionBidCancelReq(_Request):
    type: Literal["auction_bid_cancel"]
    session: SessionId
    bid_id: Id


class SetReactivationReq(_Request):
    """Reactivate my hibernated orders after each auction (R46.2.7)."""

    type: Literal["set_reactivation"]
    reactivate: StrictBool


class AuctionRunReq(_Request):
    """The auction operator runs a session's next step now (open, close, clear, reopen)."""

    type: Literal["auction_run"]
    session: SessionId
    step: Literal["open", "close", "clear", "reopen"]


class AuctionDelayReq(_Request):
    type: Literal["auction_delay"]
    session: SessionId
    delay_s: Annotated[int, Field(strict=True, gt=0, le=86_400)]


class AuctionCancelReq(_Request):
    type: Literal["auction_cancel"]
    session: SessionId
    reason: Reason = "cancelled by the auction operator"


TradingRequest = Annotated[
    OrderEntry | BasketEntry | OrderModify | OrderCancel | OrderDeactivate | OrderActivate
    | CancelAllRequest | GuaranteeRequestReq | BreachActionReq | SetGuaranteesReq
    | DecideRequestReq | SuspendAgentReq | ReinstateAgentReq | SetRateLimitsReq
    | InterruptContractReq | ResumeContractReq | SetProgramReq | SetUnavailabilityReq
    | SetLimitationReq | AuctionBidReq | AuctionBidCancelReq | SetReactivationReq
    | AuctionRunReq | AuctionDelayReq | AuctionCancelReq,
    Field(discriminator="type"),
]
REQUEST_ADAPTER: TypeAdapter[Any] = TypeAdapter(TradingRequest)

# --- operator commands (market operator, calendar, sync) -----------------------------------


class ContractCreate(_Request):
    type: Literal["contract_create"]
    contract: ContractId
    close_at: Instant


class ContractList(_Request):
    contracts: Annotated[list[ContractId], Field(min_length=1, max_length=1000)]


class ContractOpen(ContractList):
    type: Literal["contract_open"]


class ContractClose(ContractList):
    type: Literal["contract_close"]


class ContractInterrupt(ContractList):
    type: Literal["contract_interrupt"]
    reason: Annotated[str, Field(min_length=1, max_length=200)] = "interrupted"


class ContractResume(ContractList):
    type: Literal["contract_resume"]


class Hibernate(_Request):
    type: Literal["hibernate"]
    contract: ContractId | None = None
    agent: Name | None = None
    user: Name | None = None
    reason: Annotated[str, Field(min_length=1, max_length=200)] = "hibernated by the platform"


class Reactivate(ContractList):
    type: Literal["reactivate"]
    agents: list[Name] | None = None


class CancelAgentOrders(_Request):
    type: Literal["cancel_agent_orders"]
    agent: Name
    reason: Annotated[str, Field(min_length=1, max_length=200)] = "cancelled by the operator"


class TimeTick(_Request):
    type: Literal["time"]


OperatorRequest = Annotated[
    ContractCreate | ContractOpen | ContractClose | ContractInterrupt | ContractResume
    | Hibernate | Reactivate | CancelAgentOrders | TimeTick,
    Field(discriminator="type"),
]
OPERATOR_ADAPTER: TypeAdapter[Any] = TypeAdapter(OperatorRequest)


def json_schema() -> dict[str, Any]:
    """JSON Schema of every request (docs/protocol-schema.json is generated from this)."""
    return {
        "trading_requests": REQUEST_ADAPTER.json_schema(),
        "operator_requests": OPERATOR_ADAPTER.json_schema(),
    }


def _first_error(exc: ValidationError) -> ProtocolError:
    """Turn pydantic's error list into one error naming the field (dotted path)."""
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    # drop the discriminator tag pydantic puts first (e.g. 'order_entry')
    if loc and loc[0] in _TAGS:
        loc = loc[1:]
    field = ".".join(loc) or "message"
    field = clip(field, 100)  # an attacker's key: named, not replayed
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "union_tag_invalid":
        field = "type"
        msg = f"unknown message type {shown(err.get('input', {}).get('type'))}"
    elif err["type"] == "union_tag_not_found":
        field = "type"
        msg = "missing message type"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    return ProtocolError(field, msg)


_TAGS = {
    "order_entry", "basket_entry", "order_modify", "order_cancel", "order_deactivate",
    "order_activate", "cancel_all", "contract_create", "contract_open", "contract_close",
    "contract_interrupt", "contract_resume", "hibernate", "reactivate",
    "cancel_agent_orders", "time", "guarantee_request", "set_breach_action",
    "set_guarantees", "decide_guarantee_request", "suspend_agent", "reinstate_agent",
    "set_rate_limits", "interrupt_contracts", "resume_contracts", "set_program",
    "set_unavailability", "set_limitation", "auction_bid", "auction_bid_cancel",
    "set_reactivation", "auction_run", "auction_delay", "auction_cancel",
}


def parse_request(data: Any, ticks: bool = False) -> Any:
    """Validate a decoded trading request; raise :class:`ProtocolError` naming the field."""
    if not isinstance(data, dict):
        raise ProtocolError("message", f"must be an object, got {type(data).__name__}")
    try:
        return REQUEST_ADAPTER.validate_python(data, context={"ticks": ticks})
    except ValidationError as exc:
        raise _first_error(exc) from None


def parse_operator(data: Any, ticks: bool = False) -> Any:
    if not isinstance(data, dict):
        raise ProtocolError("message", f"must be an object, got {type(data).__name__}")
    try:
        return OPERATOR_ADAPTER.validate_python(data, context={"ticks": ticks})
    except ValidationError as exc:
        raise _first_error(exc) from None


def _new_order(f: OrderFields, user: str, agent: str, req_id: str | None) -> c.NewOrder:
    ice = f.iceberg
    return c.NewOrder(
        user=user, agent=agent, unit=f.unit, contract=f.contract, side=f.side,
        price=f.price, qty=f.quantity, exec=f.exec, validity=f.validity, expiry=f.expiry,
        peak=ice.peak if ice else 0, incr=ice.price_increment if ice else 0,
        client_order_id=f.client_order_id, req_id=req_id,
        hibernated=f.state == "HIBERNATED",
    )


# ---------------------------------------------------------------- the hot requests' fast path
#
# Order entry, modification and cancellation are most of the traffic.  ``fast_command``
# builds their core command directly from the decoded message when every field is plainly
# valid, applying exactly the checks of the models above; anything else (a missing,
# unknown or doubtful field, an iceberg, a basket) returns None and takes the validated
# path, which also names the field of an error.  tests/test_protocol.py checks with
# hypothesis that whenever the fast path answers, the validated path gives the same command.

_NAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,64}\Z")
_CONTRACT_RE = re.compile(r"(?:PH-[0-9]{8}-[0-9]{2}|QH-[0-9]{8}-[0-9]{3})\Z")
_SIDES = {s.value: s for s in Side}
_EXECS = {e.value: e for e in Exec}
_VALIDITIES = {v.value: v for v in Validity}
_ENTRY_KEYS = frozenset({"type", "req_id", "contract", "unit", "side", "price", "quantity",
                         "exec", "validity", "expiry", "state", "client_order_id"})
_MODIFY_KEYS = frozenset({"type", "req_id", "order_id", "revision", "price", "quantity",
                          "exec", "validity", "expiry"})
_CANCEL_KEYS = frozenset({"type", "req_id", "order_id"})
_STATES = {"ACTIVE": False, "HIBERNATED": True}
# the commands of plainly valid requests, every field given (engine.commands.builder)
_NEW_ORDER = c.builder(c.NewOrder)
_MODIFY_ORDER = c.builder(c.ModifyOrder)
_CANCEL_ORDER = c.builder(c.CancelOrder)
T = TypeVar("T")


def _pick(table: dict[str, T], v: Any) -> T | None:
    """An enumerated value (a value that is not a string, a list say, is simply absent)."""
    return table.get(v) if type(v) is str else None


def _fast_ticks(v: Any, decimals: int, ticks: bool) -> int | None:
    if type(v) is str:
        m = _DEC_RE.match(v)
        if m is None:
            return None
        sign, whole, frac = m.groups()
        scale: int = 10**decimals
        if frac is None:
            t = int(whole) * scale
        elif len(frac) > decimals:
            return None
        else:
            t = int(whole) * scale + int(frac.ljust(decimals, "0"))
        return -t if sign else t
    if ticks and type(v) is int:
        return int(v)
    return None


# The same few hundred price and quantity texts come again and again: each valid text's
# ticks are kept (bounded; cleared when full), so it is parsed once.
_TEXT_CACHE_MAX = 65_536
_PRICE_TEXTS: dict[str, int] = {}
_QTY_TEXTS: dict[str, int] = {}


def _fast_text(v: Any, ticks: bool, cache: dict[str, int], decimals: int, lo: int,
               hi: int) -> int | None:
    """Ticks of a decimal text (or an int with ``ticks``) within ``lo..hi``, or None."""
    if type(v) is str:
        t = cache.get(v)
        if t is not None:
            return t
    t = _fast_ticks(v, decimals, ticks)
    if t is None or not lo <= t <= hi:
        return None
    if type(v) is str:
        if len(cache) >= _TEXT_CACHE_MAX:
            cache.clear()
        cache[v] = t
    return t


def _fast_price(v: Any, ticks: bool) -> int | None:
    return _fast_text(v, ticks, _PRICE_TEXTS, 2, -_MAX_PRICE_TICKS, _MAX_PRICE_TICKS)


def _fast_qty(v: Any, ticks: bool) -> int | None:
    return _fast_text(v, ticks, _QTY_TEXTS, 1, 1, _MAX_QTY_TICKS)


def _fast_id(v: Any) -> int | None:
    if type(v) is int and 0 < v <= _MAX_ID:
        return int(v)
    return None


def _fast_expiry(data: dict[str, Any], ticks: bool) -> tuple[bool, int | None]:
    v = data.get("expiry")
    if v is None:
        return True, None
    if type(v) is str:
        try:
            return True, parse_instant(v)
        except ValueError:
            return False, None
    if ticks and type(v) is int and _MIN_INSTANT <= v <= _MAX_INSTANT:
        return True, v
    return False, None


def _fast_conditions(data: dict[str, Any], ticks: bool
                     ) -> tuple[int, int, Exec, Validity, int | None] | None:
    """price, quantity, exec, validity and expiry, each plainly valid, or None."""
    ex = _pick(_EXECS, data.get("exec", "NON"))
    val = _pick(_VALIDITIES, data.get("validity", "GFS"))
    price = _fast_price(data.get("price"), ticks)
    qty = _fast_qty(data.get("quantity"), ticks)
    ok, expiry = _fast_expiry(data, ticks)
    if ex is None or val is None or price is None or qty is None or not ok:
        return None
    return price, qty, ex, val, expiry


def _fast_entry(data: dict[str, Any], ticks: bool, user: str, agent: str, rq: str | None
                ) -> c.NewOrder | None:
    if not data.keys() <= _ENTRY_KEYS:
        return None
    contract = data.get("contract")
    unit = data.get("unit")
    if (type(contract) is not str or _CONTRACT_RE.match(contract) is None
            or type(unit) is not str or _NAME_RE.match(unit) is None):
        return None
    coid = data.get("client_order_id")
    if coid is not None and (type(coid) is not str or not 0 < len(coid) <= 40):
        return None
    hib = _pick(_STATES, data.get("state", "ACTIVE"))
    side = _pick(_SIDES, data.get("side"))
    cond = _fast_conditions(data, ticks)
    if hib is None or side is None or cond is None:
        return None
    price, qty, ex, val, expiry = cond
    return _NEW_ORDER(user, agent, unit, contract, side, price, qty, ex, val, expiry, 0, 0,
                      coid, rq, hib)


def _fast_modify(data: dict[str, Any], ticks: bool, user: str, agent: str, rq: str | None
                 ) -> c.ModifyOrder | None:
    if not data.keys() <= _MODIFY_KEYS:
        return None
    oid = _fast_id(data.get("order_id"))
    rev = _fast_id(data.get("revision"))
    cond = _fast_conditions(data, ticks)
    if oid is None or rev is None or cond is None:
        return None
    price, qty, ex, val, expiry = cond
    # no validity: the order's own (OrderModify)
    return _MODIFY_ORDER(user, agent, oid, rev, price, qty, ex,
                         val if "validity" in data else None, expiry, 0, 0, rq)


def fast_command(typ: str, data: dict[str, Any], ticks: bool, user: str, agent: str
                 ) -> Any:
    """The command of a plainly valid order entry, modification or cancellation, or None
    (then :func:`parse_request` and :func:`to_command` decide, and name any error)."""
    rq = data.get("req_id")
    if rq is not None and (type(rq) is not str or not 0 < len(rq) <= 64):
        return None
    if typ == "order_entry":
        return _fast_entry(data, ticks, user, agent, rq)
    if typ == "order_cancel":
        if not data.keys() <= _CANCEL_KEYS:
            return None
        oid = _fast_id(data.get("order_id"))
        return None if oid is None else _CANCEL_ORDER(user, agent, oid, rq)
    if typ == "order_modify":
        return _fast_modify(data, ticks, user, agent, rq)
    return None


def to_command(req: Any, user: str, agent: str) -> Any:
    """The core command for a validated trading request of ``user`` acting for ``agent``."""
    rq = req.req_id
    if isinstance(req, OrderEntry):
        return _new_order(req, user, agent, rq)
    if isinstance(req, BasketEntry):
        return c.EnterBasket(user, agent, req.basket,
                             tuple(_new_order(f, user, agent, rq) for f in req.orders), rq)
    if isinstance(req, OrderModify):
        ice = req.iceberg
        return c.ModifyOrder(
            user, agent, req.order_id, req.revision, req.price, req.quantity, req.exec,
            req.validity, req.expiry, ice.peak if ice else 0,
            ice.price_increment if ice else 0, rq,
        )
    if isinstance(req, OrderCancel):
        return c.CancelOrder(user, agent, req.order_id, rq)
    if isinstance(req, OrderDeactivate):
        ids = None if req.order_ids is None else tuple(req.order_ids)
        return c.Deactivate(user, agent, ids, req.contract, rq)
    if isinstance(req, OrderActivate):
        ids = None if req.order_ids is None else tuple(req.order_ids)
        return c.Activate(user, agent, ids, req.contract, rq)
    if isinstance(req, CancelAllRequest):
        return c.CancelAll(user, agent, req.scope, req.contract, rq)
    return _risk_command(req, user, agent)


def _risk_command(req: Any, user: str, agent: str) -> Any:
    from risk import commands as r

    rq = req.req_id
    if isinstance(req, GuaranteeRequestReq):
        return r.RequestGuaranteeChange(user, agent, req.change == "increase", req.amount, rq)
    if isinstance(req, BreachActionReq):
        return r.SetBreachAction(user, req.hibernate_on_breach, rq)
    if isinstance(req, SetGuaranteesReq):
        return r.SetGuarantees(user, req.agent, req.amount, rq)
    if isinstance(req, DecideRequestReq):
        return r.DecideGuaranteeRequest(user, req.request_id, req.accept, req.reason, rq)
    if isinstance(req, SuspendAgentReq):
        return r.SuspendAgent(user, req.agent, req.reason, rq)
    if isinstance(req, ReinstateAgentReq):
        return r.ReinstateAgent(user, req.agent, rq)
    if isinstance(req, SetRateLimitsReq):
        return r.SetRateLimits(user, req.user, tuple((x.window_ms, x.max) for x in req.rules),
                               req.warning_ratio, req.hibernate_on_breach, rq)
    if isinstance(req, InterruptContractReq):
        return c.InterruptContracts(tuple(req.contracts), req.reason)
    if isinstance(req, ResumeContractReq):
        return c.ResumeContracts(tuple(req.contracts))
    if isinstance(req, SetProgramReq):
        return r.SetProgram(user, req.unit, req.period, req.energy)
    if isinstance(req, SetUnavailabilityReq):
        return r.SetUnavailability(user, req.unit, req.period, req.unavailable)
    if isinstance(req, SetLimitationReq):
        return r.SetLimitation(user, req.unit, req.period, req.min_energy, req.max_energy)
    return _auction_command(req, user, agent)


def _auction_command(req: Any, user: str, agent: str) -> Any:
    from auctions import session as au

    rq = req.req_id
    if isinstance(req, AuctionBidReq):
        return au.SubmitAuctionBid(user, agent, req.session, req.unit, req.contract,
                                   req.side.value,
                                   tuple((s.price, s.quantity) for s in req.steps), rq)
    if isinstance(req, AuctionBidCancelReq):
        return au.CancelAuctionBid(user, agent, req.session, req.bid_id, rq)
    if isinstance(req, SetReactivationReq):
        return au.SetReactivation(user, agent, req.reactivate, rq)
    if isinstance(req, AuctionRunReq):
        cls = {"open": au.OpenAuction, "close": au.CloseAuction, "clear": au.ClearAuction,
               "reopen": au.ReopenAfterAuction}[req.step]
        return cls(req.session, user)
    if isinstance(req, AuctionDelayReq):
        return au.DelayAuction(req.session, req.delay_s * 1000, user)
    if isinstance(req, AuctionCancelReq):
        return au.CancelAuction(req.session, req.reason, user)
    raise TypeError(f"not a trading request: {type(req).__name__}")


def to_operator_command(req: Any) -> Any:
    if isinstance(req, ContractCreate):
        return c.CreateContract(req.contract, req.close_at)
    if isinstance(req, ContractOpen):
        return c.OpenContracts(tuple(req.contracts))
    if isinstance(req, ContractClose):
        return c.CloseContracts(tuple(req.contracts))
    if isinstance(req, ContractInterrupt):
        return c.InterruptContracts(tuple(req.contracts), req.reason)
    if isinstance(req, ContractResume):
        return c.ResumeContracts(tuple(req.contracts))
    if isinstance(req, Hibernate):
        return c.HibernateOrders(req.contract, req.agent, req.user, req.reason)
    if isinstance(req, Reactivate):
        return c.ReactivateOrders(tuple(req.contracts),
                                  None if req.agents is None else tuple(req.agents))
    if isinstance(req, CancelAgentOrders):
        return c.CancelAgentOrders(req.agent, req.reason)
    if isinstance(req, TimeTick):
        return c.Tick()
    raise TypeError(f"not an operator request: {type(req).__name__}")
