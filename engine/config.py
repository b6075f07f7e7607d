"""Bounds and parameters of the continuous market as configuration (R46.2.1, A1§7)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Price bounds in cents of €/MWh, quantity bounds in tenths of MWh.

    The default is the harmonised European range (−9999.00 … 9999.00 €/MWh, 0.1 … 999.0 MWh);
    the ``omie-2018`` profile has the values of A1§7 (0 … 180.30 €/MWh).
    """

    name: str = "harmonised"
    price_min: int = -999_900
    price_max: int = 999_900
    qty_min: int = 1
    qty_max: int = 9_990
    max_basket: int = 100  # orders in one basket

    def __post_init__(self) -> None:
        if self.price_min > self.price_max:
            raise ValueError("price_min above price_max")
        if not 1 <= self.qty_min <= self.qty_max:
            raise ValueError("quantity bounds must satisfy 1 <= qty_min <= qty_max")
        if self.max_basket < 1:
            raise ValueError("max_basket must be at least 1")


PROFILES: dict[str, EngineConfig] = {
    "harmonised": EngineConfig(),
    "omie-2018": EngineConfig(name="omie-2018", price_min=0, price_max=18_030),
}


def fmt_price(ticks: int) -> str:
    """Cents of €/MWh as the wire's decimal string: ``4510 -> '45.10'``."""
    sign = "-" if ticks < 0 else ""
    a = abs(ticks)
    return f"{sign}{a // 100}.{a % 100:02d}"


def fmt_second(sec: int) -> str:
    """A second (s UTC) as the wire writes an instant's: ``'2027-01-15T09:00:00'`` (a
    computation on the number: no clock is read)."""
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def fmt_ms(ms: int) -> str:
    """An instant (ms UTC) as the wire writes it: ``'2027-01-15T09:00:00.000Z'`` (the
    engine's reasons; gateway.wire.fmt_instant is the same, with caches)."""
    sec, milli = divmod(ms, 1000)
    return f"{fmt_second(sec)}.{milli:03d}Z"


def fmt_qty(ticks: int) -> str:
    """Tenths of MWh as the wire's decimal string: ``125 -> '12.5'``."""
    sign = "-" if ticks < 0 else ""
    a = abs(ticks)
    return f"{sign}{a // 10}.{a % 10}"
