"""Products, contracts and delivery intervals in Iberian local time (R45.c, R45.e, A1§2).

A *product* is a delivery granularity; a *contract* is a product applied to one delivery
interval of one local delivery day.  Delivery periods are counted in Iberian (peninsular
Spanish) local time, CET in winter and CEST in summer, so the hourly product has 23
contracts on the last Sunday of March and 25 on the last Sunday of October; the 15-minute
product has 92 and 100 (A1§2).

The engine reads no clock and no time-zone database: the European Union's summer-time rule
(Directive 2000/84/EC: from 01:00 UTC on the last Sunday of March to 01:00 UTC on the last
Sunday of October) is computed here, so the core stays free of I/O.  Tests check it against
the system's ``zoneinfo`` for ``Europe/Madrid``.

Contract identifier (stable, sortable, documented in ``docs/replay.md``)::

    PH-20261025-03      hourly product, delivery day 2026-10-25, period 3 (1-based)
    QH-20260329-012     15-minute product, delivery day 2026-03-29, period 12

Periods are numbered from 1 at local midnight, one per product length of *elapsed* time,
so on the October change day ``PH-…-03`` is 02:00–03:00 CEST and ``PH-…-04`` is
02:00–03:00 CET.  All instants are integer milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum

from engine.errors import InvalidIdentifier

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
_EPOCH = date(1970, 1, 1)


class Product(Enum):
    """Delivery granularities: code, minutes per period, digits of the period number."""

    HOURLY = ("PH", 60, 2)
    QUARTER_HOURLY = ("QH", 15, 3)

    def __init__(self, code: str, minutes: int, digits: int) -> None:
        self.code = code
        self.minutes = minutes
        self.digits = digits

    @property
    def period_ms(self) -> int:
        return self.minutes * MINUTE_MS

    @classmethod
    def from_code(cls, code: str) -> Product:
        for p in cls:
            if p.code == code:
                return p
        raise InvalidIdentifier(f"unknown product code {code!r} (expected PH or QH)")


def _day_ms(d: date) -> int:
    return (d - _EPOCH).days * 86_400_000


def _last_sunday(year: int, month: int) -> date:
    # last day of the month, then back to Sunday (weekday 6)
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - 6) % 7)


def summer_time_utc(year: int) -> tuple[int, int]:
    """Start and end (UTC ms) of summer time in ``year``: 01:00 UTC on the last Sundays of
    March and October (EU rule)."""
    return (
        _day_ms(_last_sunday(year, 3)) + HOUR_MS,
        _day_ms(_last_sunday(year, 10)) + HOUR_MS,
    )


def utc_offset_ms(instant_ms: int) -> int:
    """Offset of Iberian peninsular local time from UTC at ``instant_ms``: +1 h or +2 h."""
    year = datetime.fromtimestamp(instant_ms / 1000, tz=UTC).year
    start, end = summer_time_utc(year)
    return 2 * HOUR_MS if start <= instant_ms < end else HOUR_MS


def local_midnight_utc(day: date) -> int:
    """The UTC instant (ms) of local 00:00 of ``day``; unambiguous on every day (the clock
    changes at 02:00/03:00 local time)."""
    local = _day_ms(day)
    for off in (HOUR_MS, 2 * HOUR_MS):
        if utc_offset_ms(local - off) == off:
            return local - off
    raise AssertionError(f"no consistent offset at local midnight of {day}")  # pragma: no cover


def day_length_ms(day: date) -> int:
    """Length of the local delivery day: 23, 24 or 25 hours."""
    return local_midnight_utc(day + timedelta(days=1)) - local_midnight_utc(day)


def periods_in_day(product: Product, day: date) -> int:
    """Number of contracts of ``product`` for local delivery ``day`` (24/23/25, 96/92/100)."""
    return day_length_ms(day) // product.period_ms


def local_day_of(instant_ms: int) -> date:
    """The local (Iberian) calendar day containing ``instant_ms``."""
    return _EPOCH + timedelta(days=(instant_ms + utc_offset_ms(instant_ms)) // 86_400_000)


_ID_RE = re.compile(r"(PH|QH)-([0-9]{4})([0-9]{2})([0-9]{2})-([0-9]{2,3})")


@dataclass(frozen=True, slots=True)
class ContractSpec:
    """The fixed description of a contract: product, delivery day and period, and the
    derived delivery interval [start, end) in UTC ms."""

    product: Product
    day: date
    period: int
    start: int
    end: int

    @property
    def id(self) -> str:
        return f"{self.product.code}-{self.day:%Y%m%d}-{self.period:0{self.product.digits}d}"

    @classmethod
    def of(cls, product: Product, day: date, period: int) -> ContractSpec:
        n = periods_in_day(product, day)
        if not 1 <= period <= n:
            raise InvalidIdentifier(
                f"period {period} out of range 1..{n} for {product.code} on {day.isoformat()}"
            )
        start = local_midnight_utc(day) + (period - 1) * product.period_ms
        return cls(product, day, period, start, start + product.period_ms)

    @classmethod
    def parse(cls, contract_id: str) -> ContractSpec:
        m = _ID_RE.fullmatch(contract_id)
        if m is None:
            raise InvalidIdentifier(
                f"contract id {contract_id!r} does not match PH-YYYYMMDD-NN or QH-YYYYMMDD-NNN"
            )
        product = Product.from_code(m.group(1))
        if len(m.group(5)) != product.digits:
            raise InvalidIdentifier(
                f"contract id {contract_id!r}: {product.code} periods have {product.digits} digits"
            )
        try:
            day = date(int(m.group(2)), int(m.group(3)), int(m.group(4)))
        except ValueError as exc:
            raise InvalidIdentifier(f"contract id {contract_id!r}: {exc}") from None
        return cls.of(product, day, int(m.group(5)))


def contracts_of_day(product: Product, day: date) -> list[ContractSpec]:
    """Every contract of ``product`` for local delivery ``day``, in delivery order (A1§2)."""
    return [ContractSpec.of(product, day, p) for p in range(1, periods_in_day(product, day) + 1)]
