"""The trading calendar (A1§1–2): contracts, when they open and close, and the intraday
auction sessions with their reception windows and horizons.

Two shipped profiles (``PROFILES``):

* ``omie-2018`` — hourly contracts; day D opens at 22:00 of D−1; gate closure one hour
  before delivery; the six intraday auction sessions of A1 figure 1 (the version in force):

  | session | opens | closes | published | horizon |
  |---|---|---|---|---|
  | 1 | 17:00 D | 18:50 | 18:55 | 21:00–24:00 of D and all of D+1 (periods 22–24, 1–24) |
  | 2 | 21:00 D | 21:50 | 21:55 | all of D+1 |
  | 3 | 01:00 D | 01:50 | 01:55 | 04:00–24:00 of D (periods 5–24) |
  | 4 | 04:00 D | 04:50 | 04:55 | 07:00–24:00 (8–24) |
  | 5 | 08:00 D | 08:50 | 08:55 | 11:00–24:00 (12–24) |
  | 6 | 12:00 D | 12:50 | 12:55 | 15:00–24:00 (16–24) |

* ``sidc-2024`` — hourly and 15-minute contracts; day D opens at 15:00 of D−1 (after IDA1);
  gate closure one hour before delivery (configurable); the three pan-European intraday
  auctions: IDA1 closing 15:00 D−1 and IDA2 closing 22:00 D−1, both covering day D, and IDA3
  closing 10:00 D covering 12:00–24:00 of D.  Reception opens one hour before the close;
  results are published 20 minutes after it.

Horizons are delivery intervals in local time, so on daylight-saving days they hold 23/25
hours (92/100 quarter-hours) exactly like the contracts.  Everything here is pure: the
scheduler (:mod:`auctions.scheduler`) asks "what is due at instant t".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache

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
    # the contract's id, formatted once: the scheduler looks every contract of the window up
    # by it at each deadline (ContractSpec.id formats it anew at each call)
    id: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", self.spec.id)


@dataclass(frozen=True, slots=True)
class SessionRule:
    """An auction session held on local day D: times as minutes after D's local midnight
    (negative: on D−1), horizon as [start, end) minutes after the local midnight of the
    session's *delivery* day (D + ``day_offset``)."""

    name: str
    opens_min: int
    closes_min: int
    publish_min: int
    day_offset: int
    horizon_start_min: int
    horizon_end_min: int | None  # None: the end of the delivery day (23/24/25 h)
    horizon_spans_next_day: bool = False  # session 1 of omie-2018: … and all of D+1


@dataclass(frozen=True, slots=True)
class AuctionTimes:
    session: str
    contracts: tuple[str, ...]
    opens_at: int
    closes_at: int
    publish_at: int


def _local(day: date, minutes: int) -> int:
    """Local wall-clock time ``minutes`` after ``day``'s midnight, as UTC ms (exact on DST
    days: the offset is that of the instant)."""
    base = local_midnight_utc(day)
    guess = base + minutes * MINUTE_MS
    # correct by the change of offset between midnight and that instant
    from engine.contracts import utc_offset_ms

    return guess - (utc_offset_ms(guess) - utc_offset_ms(base))


@dataclass(frozen=True, slots=True)
class Calendar:
    products: tuple[Product, ...] = (Product.HOURLY,)
    gate_closure_min: int = 60
    open_hour: int = 22  # local hour of D-1 at which day D opens (A1§2)
    sessions: tuple[SessionRule, ...] = ()
    name: str = "custom"

    def day(self, d: date) -> list[ContractTimes]:
        return list(_day(self, d))

    def _day_uncached(self, d: date) -> tuple[ContractTimes, ...]:
        open_at = _local(d - timedelta(days=1), self.open_hour * 60)
        out = []
        for p in self.products:
            for spec in contracts_of_day(p, d):
                out.append(ContractTimes(spec, open_at,
                                         spec.start - self.gate_closure_min * MINUTE_MS))
        out.sort(key=lambda c: (c.close_at, c.id))
        return tuple(out)

    def window(self, now: int) -> list[ContractTimes]:
        """Contracts not yet closed at ``now`` among today's, tomorrow's and the day
        after's (local days)."""
        today = local_day_of(now)
        out: list[ContractTimes] = []
        for d in (today, today + timedelta(days=1), today + timedelta(days=2)):
            out.extend(c for c in self.day(d) if c.close_at > now)
        return out

    def auctions_of(self, d: date) -> list[AuctionTimes]:
        """The auction sessions held on local day ``d``."""
        return list(_auctions(self, d))

    def _auctions_uncached(self, d: date) -> tuple[AuctionTimes, ...]:
        out = []
        for r in self.sessions:
            delivery = d + timedelta(days=r.day_offset)
            start = _local(delivery, r.horizon_start_min)
            last_day = delivery + timedelta(days=1) if r.horizon_spans_next_day else delivery
            end = (local_midnight_utc(last_day + timedelta(days=1))
                   if r.horizon_end_min is None else _local(last_day, r.horizon_end_min))
            ids = []
            for dd in sorted({delivery, last_day}):
                for p in self.products:
                    ids += [c.id for c in contracts_of_day(p, dd) if start <= c.start < end]
            out.append(AuctionTimes(f"{r.name}-{d:%Y%m%d}", tuple(sorted(set(ids))),
                                    _local(d, r.opens_min), _local(d, r.closes_min),
                                    _local(d, r.publish_min)))
        return tuple(out)

    def auction_window(self, now: int) -> list[AuctionTimes]:
        """Sessions not yet published among yesterday's to the day after tomorrow's."""
        today = local_day_of(now)
        out: list[AuctionTimes] = []
        for k in (-1, 0, 1, 2):
            out.extend(a for a in self.auctions_of(today + timedelta(days=k))
                       if a.publish_at > now - 24 * HOUR_MS)
        return out


# Calendars are immutable data and days are pure functions of them: cache the few days in
# use, so the scheduler's once-a-second look at "what is due" costs microseconds.
@lru_cache(maxsize=32)
def _day(cal: Calendar, d: date) -> tuple[ContractTimes, ...]:
    return cal._day_uncached(d)


@lru_cache(maxsize=32)
def _auctions(cal: Calendar, d: date) -> tuple[AuctionTimes, ...]:
    return cal._auctions_uncached(d)


def _h(hh: int, mm: int = 0) -> int:
    return hh * 60 + mm


OMIE_2018 = Calendar(
    products=(Product.HOURLY,), gate_closure_min=60, open_hour=22, name="omie-2018",
    sessions=(
        SessionRule("MI1", _h(17), _h(18, 50), _h(18, 55), 0, _h(21), None, True),
        SessionRule("MI2", _h(21), _h(21, 50), _h(21, 55), 1, 0, None),
        SessionRule("MI3", _h(1), _h(1, 50), _h(1, 55), 0, _h(4), None),
        SessionRule("MI4", _h(4), _h(4, 50), _h(4, 55), 0, _h(7), None),
        SessionRule("MI5", _h(8), _h(8, 50), _h(8, 55), 0, _h(11), None),
        SessionRule("MI6", _h(12), _h(12, 50), _h(12, 55), 0, _h(15), None),
    ),
)

SIDC_2024 = Calendar(
    products=(Product.HOURLY, Product.QUARTER_HOURLY), gate_closure_min=60, open_hour=15,
    name="sidc-2024",
    sessions=(
        SessionRule("IDA1", _h(14), _h(15), _h(15, 20), 1, 0, None),
        SessionRule("IDA2", _h(21), _h(22), _h(22, 20), 1, 0, None),
        SessionRule("IDA3", _h(9), _h(10), _h(10, 20), 0, _h(12), None),
    ),
)

PROFILES: dict[str, Calendar] = {"omie-2018": OMIE_2018, "sidc-2024": SIDC_2024,
                                 "continuous": Calendar(name="continuous")}
