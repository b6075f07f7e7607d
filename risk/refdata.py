"""Reference data: agents, users, units, ownership shares, authorisations, rate limits.

The document (TOML or JSON, read by the gateway: the core does no I/O) is validated whole by
:func:`load`: every error is listed with its path, cross references are checked, and nothing
is half-loaded.  The validated document becomes plain slotted objects that the checks read on
the hot path.  Its format is documented in ``docs/refdata.md``; ``examples/refdata.toml`` is
the demo.

Units: energies are MWh per hourly period (= average MW) with one decimal, held as integer
tenths; shares are percentages with up to two decimals, held as basis points (sum 10000);
tax rates are percentages with up to eight decimals, held exactly as a rational factor.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_PCT_RE = re.compile(r"^\d{1,3}(\.\d{1,8})?$")
_DEC1_RE = re.compile(r"^-?\d{1,9}(\.\d)?$")
_MONEY_RE = re.compile(r"^-?\d{1,15}(\.\d{1,2})?$")

ROLES = ("trader", "risk_officer", "market_operator", "system_operator", "auction_operator")
PRODUCTS = ("PH", "QH")


class RefDataError(ValueError):
    """The document is refused; ``errors`` lists every problem as 'path: reason'."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("reference data refused:\n  " + "\n  ".join(errors))
        self.errors = errors


def _dec_str(v: Any, regex: re.Pattern[str], what: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f"must be {what} written as a string or integer")
    s = str(v)
    if not regex.match(s):
        raise ValueError(f"{s!r} is not {what}")
    return s


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
# the same rule, for the gateways: a string that fails it cannot name a user, agent or unit
CODE_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,64}\Z")


class TaxDoc(_M):
    """Rates in percent that apply to the agent's obligations (R53.5, R55.7.3)."""

    electricity_tax: str = "0"
    vat: str = "0"

    @field_validator("electricity_tax", "vat", mode="before")
    @classmethod
    def _pct(cls, v: Any) -> str:
        return _dec_str(v, _PCT_RE, "a percentage with at most 8 decimals")


def _all_products() -> list[Literal["PH", "QH"]]:
    return ["PH", "QH"]


class AgentDoc(_M):
    code: Code
    name: Annotated[str, Field(min_length=1, max_length=200)]
    registered_from: date
    registered_to: date | None = None
    status: Literal["active", "suspended"] = "active"
    products: list[Literal["PH", "QH"]] = Field(default_factory=_all_products)
    represents: list[Code] = Field(default_factory=list)
    tax: TaxDoc = Field(default_factory=TaxDoc)
    guarantees: str = "0"  # GMIC reserved for continuous trading, € (R49.1.4.1)
    deposited: str | None = None  # guarantees deposited with the settlement side (default: GMIC)

    @field_validator("guarantees", "deposited", mode="before")
    @classmethod
    def _money(cls, v: Any) -> str | None:
        if v is None:
            return None
        return _dec_str(v, _MONEY_RE, "an amount in € with at most 2 decimals")


class UserDoc(_M):
    id: Code
    agent: Code
    roles: Annotated[list[Literal[ROLES]], Field(min_length=1)]  # type: ignore[valid-type]
    token_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class OwnerDoc(_M):
    agent: Code
    share: str  # percent

    @field_validator("share", mode="before")
    @classmethod
    def _share(cls, v: Any) -> str:
        s = _dec_str(v, re.compile(r"^\d{1,3}(\.\d{1,2})?$"), "a percentage with 2 decimals")
        return s


class UnitDoc(_M):
    code: Code
    kind: Literal["sell", "buy"]
    area: Literal["ES", "PT"]
    max_energy: str  # MWh per hourly period
    min_energy: str = "0"
    responsible: Code
    owners: Annotated[list[OwnerDoc], Field(min_length=1)]
    valid_from: date
    valid_to: date | None = None

    @field_validator("max_energy", "min_energy", mode="before")
    @classmethod
    def _energy(cls, v: Any) -> str:
        return _dec_str(v, _DEC1_RE, "an energy in MWh with at most 1 decimal")


class RuleDoc(_M):
    window_ms: Annotated[int, Field(strict=True, ge=1, le=86_400_000)]
    max: Annotated[int, Field(strict=True, ge=1, le=10_000_000)]


class RateLimitDoc(_M):
    rules: list[RuleDoc] = Field(
        default_factory=lambda: [RuleDoc(window_ms=1000, max=50),
                                 RuleDoc(window_ms=60_000, max=1500)])
    warning_ratio: Annotated[float, Field(gt=0, le=1)] = 0.8
    hibernate_on_breach: bool = False


class RefDataDoc(_M):
    agents: Annotated[list[AgentDoc], Field(min_length=1)]
    users: list[UserDoc] = Field(default_factory=list)
    units: list[UnitDoc] = Field(default_factory=list)
    rate_limits: RateLimitDoc = Field(default_factory=RateLimitDoc)
    user_rate_limits: dict[str, RateLimitDoc] = Field(default_factory=dict)


# --- the objects the checks read --------------------------------------------------------------


def pct_to_factor(rate: str) -> tuple[int, int]:
    """'21' -> (121, 100); '5.11269632' -> (10511269632, 10**10): 1 + rate/100, exactly."""
    whole, _, frac = rate.partition(".")
    den = 100 * 10 ** len(frac)
    return den + int(whole + frac), den


def _tenths(s: str) -> int:
    neg = s.startswith("-")
    whole, _, frac = s.lstrip("-").partition(".")
    v = int(whole) * 10 + int(frac or "0")
    return -v if neg else v


def _cents(s: str) -> int:
    neg = s.startswith("-")
    whole, _, frac = s.lstrip("-").partition(".")
    v = int(whole) * 100 + int(frac.ljust(2, "0") or "0")
    return -v if neg else v


@dataclass(slots=True)
class Agent:
    code: str
    name: str
    registered_from: date
    registered_to: date | None
    suspended: bool
    products: frozenset[str]
    represents: frozenset[str]
    tax_num: int  # obligations are charged ceil(value * tax_num / tax_den) (both taxes)
    tax_den: int
    guarantees: int  # GMIC in cents of €
    deposited: int  # guarantees deposited with the settlement side, cents of €
    tax_iee: str  # the rates as written (percent), for the settlement entries
    tax_vat: str


@dataclass(slots=True)
class User:
    id: str
    agent: str
    roles: frozenset[str]
    token_sha256: str | None


@dataclass(slots=True)
class Unit:
    code: str
    sells: bool  # a selling unit (else buying)
    area: str
    max_energy: int  # tenths of MWh per hour = tenths of MW
    min_energy: int
    responsible: str
    owners: tuple[tuple[str, int], ...]  # (agent, basis points)
    valid_from: date
    valid_to: date | None


@dataclass(slots=True)
class RateLimit:
    rules: tuple[tuple[int, int], ...]  # (window ms, max requests)
    warning_ratio: float
    hibernate_on_breach: bool


@dataclass(slots=True)
class RefData:
    agents: dict[str, Agent] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    units: dict[str, Unit] = field(default_factory=dict)
    rate_limit: RateLimit = field(
        default_factory=lambda: RateLimit(((1000, 50), (60_000, 1500)), 0.8, False))
    user_rate_limits: dict[str, RateLimit] = field(default_factory=dict)


def _rate(doc: RateLimitDoc) -> RateLimit:
    return RateLimit(tuple((r.window_ms, r.max) for r in doc.rules), doc.warning_ratio,
                     doc.hibernate_on_breach)


def _codes(doc: Any, key: str, field: str) -> list[tuple[int, str]]:
    """(index, code) of every entry of ``doc[key]`` whose ``field`` is a string, valid or
    not otherwise: references to it are not "unknown", duplicates of it are duplicates."""
    raw = doc.get(key) if isinstance(doc, dict) else None
    return [(i, e[field]) for i, e in enumerate(raw if isinstance(raw, list) else [])
            if isinstance(e, dict) and isinstance(e.get(field), str)]


def _cross_checks(doc: Any, agent_list: list[tuple[int, AgentDoc]],
                  user_list: list[tuple[int, UserDoc]], unit_list: list[tuple[int, UnitDoc]],
                  rate_users: list[str]) -> list[str]:
    """Errors between entries: duplicates, unknown references, shares, representation."""
    errors: list[str] = []
    agents = {c for _, c in _codes(doc, "agents", "code")}
    for kind, codes in (("agents", _codes(doc, "agents", "code")),
                        ("users", _codes(doc, "users", "id")),
                        ("units", _codes(doc, "units", "code"))):
        seen: set[str] = set()
        for i, c in codes:
            if c in seen:
                errors.append(f"{kind}.{i}: duplicate {c!r}")
            seen.add(c)
    for i, a in agent_list:
        if a.deposited is not None and _cents(a.deposited) < _cents(a.guarantees):
            errors.append(f"agents.{i}.guarantees: more than the deposited {a.deposited} €")
        if a.registered_to is not None and a.registered_to < a.registered_from:
            errors.append(f"agents.{i}.registered_to: before registered_from")
        for j, r in enumerate(a.represents):
            if r not in agents:
                errors.append(f"agents.{i}.represents.{j}: unknown agent {r!r}")
            elif r == a.code:
                errors.append(f"agents.{i}.represents.{j}: an agent cannot represent itself")
    for i, u in user_list:
        if u.agent not in agents:
            errors.append(f"users.{i}.agent: unknown agent {u.agent!r}")
    by_code = {a.code: a for _, a in agent_list}
    for i, un in unit_list:
        if un.valid_to is not None and un.valid_to < un.valid_from:
            errors.append(f"units.{i}.valid_to: before valid_from")
        if _tenths(un.min_energy) > _tenths(un.max_energy):
            errors.append(f"units.{i}.min_energy: above max_energy")
        if _tenths(un.min_energy) < 0:
            errors.append(f"units.{i}.min_energy: must not be negative")
        if un.responsible not in agents:
            errors.append(f"units.{i}.responsible: unknown agent {un.responsible!r}")
        total = 0
        owners = set()
        for j, o in enumerate(un.owners):
            if o.agent not in agents:
                errors.append(f"units.{i}.owners.{j}.agent: unknown agent {o.agent!r}")
            if o.agent in owners:
                errors.append(f"units.{i}.owners.{j}.agent: {o.agent!r} listed twice")
            owners.add(o.agent)
            bp = _cents(o.share)
            if bp <= 0:
                errors.append(f"units.{i}.owners.{j}.share: must be positive")
            total += bp
        if total != 10_000:
            errors.append(f"units.{i}.owners: shares sum to {total / 100:.2f} %, not 100 %")
        resp = by_code.get(un.responsible)
        if resp is not None:
            strangers = sorted(o for o in owners
                               if o in agents and o != resp.code and o not in resp.represents)
            if strangers:
                errors.append(
                    f"units.{i}.responsible: {resp.code} neither owns nor represents"
                    f" {', '.join(strangers)}")
    for uid in rate_users:
        if uid not in {c for _, c in _codes(doc, "users", "id")}:
            errors.append(f"user_rate_limits.{uid}: unknown user")
    return errors


def _each(doc: Any, key: str, model: type[_M]) -> list[tuple[int, Any]]:
    """The entries of ``doc[key]`` that are valid on their own, with their indices."""
    raw = doc.get(key) if isinstance(doc, dict) else None
    out = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        with contextlib.suppress(ValidationError):
            out.append((i, model.model_validate(item)))
    return out


def load(document: Any) -> RefData:
    """Validate a reference-data document (already parsed from TOML or JSON) and build the
    objects; raise :class:`RefDataError` listing every problem by path — the format errors
    and, for the entries that are well formed, every cross-reference error too."""
    try:
        doc = RefDataDoc.model_validate(document)
    except ValidationError as exc:
        errs = []
        for e in exc.errors(include_url=False):
            path = ".".join(str(p) for p in e["loc"]) or "document"
            msg = e["msg"].removeprefix("Value error, ")
            errs.append(f"{path}: {'unknown field' if e['type'] == 'extra_forbidden' else msg}")
        urls = document.get("user_rate_limits") if isinstance(document, dict) else None
        errs += _cross_checks(document, _each(document, "agents", AgentDoc),
                              _each(document, "users", UserDoc),
                              _each(document, "units", UnitDoc),
                              list(urls) if isinstance(urls, dict) else [])
        raise RefDataError(errs) from None
    errors = _cross_checks(document, list(enumerate(doc.agents)), list(enumerate(doc.users)),
                           list(enumerate(doc.units)), list(doc.user_rate_limits))
    if errors:
        raise RefDataError(errors)
    rd = RefData()
    for a in doc.agents:
        n1, d1 = pct_to_factor(a.tax.electricity_tax)
        n2, d2 = pct_to_factor(a.tax.vat)
        rd.agents[a.code] = Agent(
            a.code, a.name, a.registered_from, a.registered_to, a.status == "suspended",
            frozenset(a.products), frozenset(a.represents), n1 * n2, d1 * d2,
            _cents(a.guarantees),
            _cents(a.deposited) if a.deposited is not None else _cents(a.guarantees),
            a.tax.electricity_tax, a.tax.vat)
    for u in doc.users:
        rd.users[u.id] = User(u.id, u.agent, frozenset(u.roles), u.token_sha256)
    for un in doc.units:
        rd.units[un.code] = Unit(
            un.code, un.kind == "sell", un.area, _tenths(un.max_energy), _tenths(un.min_energy),
            un.responsible, tuple((o.agent, _cents(o.share)) for o in un.owners),
            un.valid_from, un.valid_to)
    rd.rate_limit = _rate(doc.rate_limits)
    rd.user_rate_limits = {k: _rate(v) for k, v in doc.user_rate_limits.items()}
    return rd
