"""The trading calendar of continuous trading (A1§2): which contracts exist, when they open
and when they close.

Contracts of local delivery day D open at 22:00 of D−1 (A1§2) and each closes at its gate
closure, a fixed time before its delivery starts (one hour in the 2018 text; configurable).
Everything is computed from the EU summer-time rule in :mod:`engine.contracts`, so
daylight-saving days have 23 or 25 hourly contracts (92 or 100 quarter-hours).

This module is pure (no clock): :meth:`Calendar.due` answers "what should have happened by
instant t", and the scheduler turns the answer into commands through the sequencer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from engine.contracts import (
    HOUR_MS,
    MINUTE_MS,
    ContractSpec,
    Product,
    contracts_of_day,
    local_day_of,
    local_midnight_utc,
)


@dataclass(frozen=True, slots=True)
class ContractTimes:
    spec: ContractSpec
    open_at: int
    close_at: int


@dataclass(frozen=True, slots=True)
class Calendar:
    products: tuple[Product, ...] = (Product.HOURLY,)
    gate_closure_min: int = 60
    open_hour: int = 22  # local hour of D-1 at which day D opens (A1§2)

    def day(self, d: date) -> list[ContractTimes]:
        open_at = local_midnight_utc(d) - (24 - self.open_hour) * HOUR_MS
        out = []
        for p in self.products:
            for spec in contracts_of_day(p, d):
                out.append(ContractTimes(spec, open_at,
                                         spec.start - self.gate_closure_min * MINUTE_MS))
        out.sort(key=lambda c: (c.close_at, c.spec.id))
        return out

    def window(self, now: int) -> list[ContractTimes]:
        """Contracts open at ``now`` or opening later today or tomorrow (local)."""
        today = local_day_of(now)
        out: list[ContractTimes] = []
        for d in (today, today + timedelta(days=1), today + timedelta(days=2)):
            out.extend(c for c in self.day(d) if c.close_at > now and c.open_at <= now
                       + 2 * 24 * HOUR_MS)
        return out
