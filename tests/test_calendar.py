"""Whole trading days on the shipped calendars (:mod:`auctions.calendar`), run by the
scheduler with no clock (:func:`auctions.scheduler.simulate`) in a core, from 00:00 local
time of D−1 to the end of D, and counted per local day D: contracts opened and closed,
rounds, synchronisations (with a :class:`sync.job.SyncJob`), auction sessions and the
pauses of continuous trading they cause (CloseAuction: contracts to INT; ReopenAfterAuction:
back to TRADE).  Expected values come from the rules (A1 figure 1, A1§2), the calendar's
documentation (sidc-2024), and the Europe/Madrid time-zone database — not from the code.

Days: Wednesday 2026-06-10 (24 hours), Sunday 2026-03-29 (23 hours: 92 quarter-hours) and
Sunday 2026-10-25 (25 hours: 100 quarter-hours).

Speed: the scheduler recomputes the calendar (every contract of three days, every session of
four) at each deadline, and each ContractSpec recomputes the summer-time rule, so simulating
two sidc-2024 days takes tens of seconds as shipped.  The module fixture memoizes those pure
functions (same results, no behaviour change) so that the file runs in seconds.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import auctions.calendar as acal
import engine.contracts as ec
from auctions.calendar import PROFILES
from auctions.scheduler import next_deadline, simulate
from auctions.session import AuctionState, CloseAuction, ReopenAfterAuction
from engine.events import ContractStateChanged, RoundClosed
from gateway.core import Core

MADRID = ZoneInfo("Europe/Madrid")
HOUR = 3_600_000
QUARTER = 900_000
NORMAL, SPRING, AUTUMN = date(2026, 6, 10), date(2026, 3, 29), date(2026, 10, 25)
DAYS = (NORMAL, SPRING, AUTUMN)


def at(d: date, hh: int, mm: int = 0) -> int:
    """Local wall-clock time of ``d`` as UTC ms (Europe/Madrid, from the tz database)."""
    return int(datetime(d.year, d.month, d.day, hh, mm, tzinfo=MADRID).timestamp() * 1000)


def midnight(d: date) -> int:
    return at(d, 0)


def hours(d: date) -> int:
    return (midnight(d + timedelta(days=1)) - midnight(d)) // HOUR


def contracts(d: date, quarters: bool, start: int | None = None) -> set[str]:
    """Ids of the contracts of delivery day ``d`` (hourly, and 15-minute if ``quarters``)
    whose delivery starts at or after ``start``: periods numbered from 1 at local midnight
    by elapsed time (engine/contracts.py's documented identifiers)."""
    m = midnight(d)
    lo = m if start is None else start
    out = {f"PH-{d:%Y%m%d}-{k:02d}" for k in range(1, hours(d) + 1) if m + (k - 1) * HOUR >= lo}
    if quarters:
        out |= {f"QH-{d:%Y%m%d}-{k:03d}" for k in range(1, 4 * hours(d) + 1)
                if m + (k - 1) * QUARTER >= lo}
    return out


def gate(cid: str) -> int:
    """Gate closure: one hour before delivery (both profiles)."""
    kind, ymd, k = cid.split("-")
    d = date(int(ymd[:4]), int(ymd[4:6]), int(ymd[6:]))
    step = HOUR if kind == "PH" else QUARTER
    return midnight(d) + (int(k) - 1) * step - HOUR


# ------------------------------------------------------------------ the calendars, by hand


@dataclass(frozen=True)
class Expected:
    name: str
    opens: tuple[int, int]
    closes: tuple[int, int]
    publish: tuple[int, int]

    def horizon(self, profile: str, d: date) -> set[str]:
        """The horizon of this session held on ``d``."""
        q = profile == "sidc-2024"
        nxt = d + timedelta(days=1)
        return {
            # A1 figure 1: 27 h (22-24 of D, 1-24 of D+1), 24 h (1-24 of D+1), 20 h (5-24),
            # 17 h (8-24), 13 h (12-24), 9 h (16-24): from 21:00, 04:00, 07:00, 11:00, 15:00
            "MI1": lambda: contracts(d, q, at(d, 21)) | contracts(nxt, q),
            "MI2": lambda: contracts(nxt, q),
            "MI3": lambda: contracts(d, q, at(d, 4)),
            "MI4": lambda: contracts(d, q, at(d, 7)),
            "MI5": lambda: contracts(d, q, at(d, 11)),
            "MI6": lambda: contracts(d, q, at(d, 15)),
            # sidc-2024: IDA1 and IDA2 cover the next day, IDA3 12:00-24:00 of the same day
            "IDA1": lambda: contracts(nxt, q),
            "IDA2": lambda: contracts(nxt, q),
            "IDA3": lambda: contracts(d, q, at(d, 12)),
        }[self.name]()


SESSIONS = {
    "omie-2018": [Expected("MI1", (17, 0), (18, 50), (18, 55)),
                  Expected("MI2", (21, 0), (21, 50), (21, 55)),
                  Expected("MI3", (1, 0), (1, 50), (1, 55)),
                  Expected("MI4", (4, 0), (4, 50), (4, 55)),
                  Expected("MI5", (8, 0), (8, 50), (8, 55)),
                  Expected("MI6", (12, 0), (12, 50), (12, 55))],
    "sidc-2024": [Expected("IDA1", (14, 0), (15, 0), (15, 20)),
                  Expected("IDA2", (21, 0), (22, 0), (22, 20)),
                  Expected("IDA3", (9, 0), (10, 0), (10, 20))],
}
# day D opens at this local time of D−1: omie-2018 at 22:00 (A1§2); sidc-2024 when IDA1's
# results are out (15:20), since D is IDA1's horizon and nothing of it may trade while the
# auction is being cleared (R46.2.7, R56)
OPEN_AT = {"omie-2018": (22, 0), "sidc-2024": (15, 20)}
QUARTERS = {"omie-2018": False, "sidc-2024": True}
# contracts paused by each session on a day (A1 figure 2: MI1 pauses 22-24 of D because
# D+1 is not open yet; MI2 closes before D+1 opens at 22:00; IDA1 closes at the instant
# D+1 opens, before it)
PAUSED = {"MI1": 3, "MI2": 0, "MI3": 20, "MI4": 17, "MI5": 13, "MI6": 9, "IDA1": 0,
          "IDA3": 60}


# ------------------------------------------------------------------ simulation


@pytest.fixture(scope="module", autouse=True)
def memoized_calendar() -> Iterator[None]:
    """Memoize pure date functions for speed (see the module docstring)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ec, "summer_time_utc", functools.lru_cache(None)(ec.summer_time_utc))
        lm = functools.lru_cache(None)(ec.local_midnight_utc)
        mp.setattr(ec, "local_midnight_utc", lm)
        mp.setattr(acal, "local_midnight_utc", lm)
        mp.setattr(acal, "contracts_of_day", functools.lru_cache(None)(ec.contracts_of_day))
        yield


@dataclass
class Run:
    profile: str
    day: date
    core: Core
    log: list[tuple[int, Any, list[Any]]] = field(default_factory=list)

    def in_day(self) -> Iterator[tuple[int, Any, list[Any]]]:
        lo, hi = midnight(self.day), midnight(self.day + timedelta(days=1))
        return ((t, c, e) for t, c, e in self.log if lo <= t < hi)

    def events(self, kind: type, in_day: bool = True) -> list[Any]:
        src = self.in_day() if in_day else iter(self.log)
        return [e for _, _, evs in src for e in evs if type(e) is kind]


_RUNS: dict[tuple[str, date], Run] = {}


def run(profile: str, day: date) -> Run:
    """From 00:00 local of D−1 through the end of D (cached per module)."""
    key = (profile, day)
    if key not in _RUNS:
        r = Run(profile, day, Core(risk=False))
        simulate(r.core, PROFILES[profile], midnight(day - timedelta(days=1)),
                 midnight(day + timedelta(days=1)) - 1,
                 on_step=lambda now, cmd, evs: r.log.append((now, cmd, list(evs))))
        assert r.core.failures == 0
        _RUNS[key] = r
    return _RUNS[key]


CASES = [(p, d) for p in ("omie-2018", "sidc-2024") for d in DAYS]
IDS = [f"{p}-{d}" for p, d in CASES]


# ------------------------------------------------------------------ contracts and rounds


@pytest.mark.parametrize(("profile", "day"), CASES, ids=IDS)
def test_contracts_of_the_day_open_and_close(profile: str, day: date) -> None:
    r = run(profile, day)
    q = QUARTERS[profile]
    mine = contracts(day, q)
    assert len(mine) == hours(day) * (5 if q else 1)  # 24/23/25 (+ 96/92/100)
    opened: dict[str, list[int]] = {}
    closed: dict[str, list[int]] = {}
    for e in r.events(ContractStateChanged, in_day=False):
        if e.state == "TRADE" and e.previous == "UPC":
            opened.setdefault(e.contract, []).append(e.ts)
        if e.state == "FIN":
            closed.setdefault(e.contract, []).append(e.ts)
    # every contract of D opens once, at the opening hour of D−1 (A1§2), and closes once,
    # at its gate closure; no other contract of D exists
    assert {c for c in opened if c[3:11] == f"{day:%Y%m%d}"} == mine
    open_at = at(day - timedelta(days=1), *OPEN_AT[profile])
    assert {c: opened[c] for c in mine} == {c: [open_at] for c in mine}
    assert {c: closed.get(c) for c in mine} == {c: [gate(c)] for c in mine}
    # counted within local day D: the contracts closing are those delivering from 01:00 of
    # D to 01:00 of D+1 (one per hour / quarter of D); the contracts opening are D+1's
    in_d = Counter((e.previous, e.state) for e in r.events(ContractStateChanged))
    assert in_d[("TRADE", "FIN")] == hours(day) * (5 if q else 1)
    assert in_d[("UPC", "TRADE")] == len(contracts(day + timedelta(days=1), q))


@pytest.mark.parametrize(("profile", "day"), CASES, ids=IDS)
def test_rounds_per_day(profile: str, day: date) -> None:
    r = run(profile, day)
    rounds = r.events(RoundClosed)
    # one round per gate-closure instant: every hour (omie), every quarter-hour (sidc: an
    # hourly and a quarter-hour contract close together on the hour)
    per_hour = 4 if QUARTERS[profile] else 1
    assert len(rounds) == hours(day) * per_hour
    assert len({x.ts for x in rounds}) == len(rounds)
    assert [x.round for x in rounds] == list(range(rounds[0].round,
                                                  rounds[0].round + len(rounds)))
    sizes = Counter(len(x.contracts) for x in rounds)
    assert sizes == ({1: hours(day)} if per_hour == 1
                     else {2: hours(day), 1: 3 * hours(day)})


# ------------------------------------------------------------------ auction sessions


@pytest.mark.parametrize(("profile", "day"), CASES, ids=IDS)
def test_sessions_of_the_day(profile: str, day: date) -> None:
    r = run(profile, day)
    states: dict[str, list[tuple[str, int]]] = {}
    horizon: dict[str, tuple[str, ...]] = {}
    for e in r.events(AuctionState, in_day=False):
        states.setdefault(e.session, []).append((e.state, e.ts))
        horizon[e.session] = e.contracts
    for x in SESSIONS[profile]:
        sid = f"{x.name}-{day:%Y%m%d}"
        assert sid in states, sorted(states)
        o, c, p = at(day, *x.opens), at(day, *x.closes), at(day, *x.publish)
        seq = states[sid]
        assert [s for s, _ in seq] == ["SCHEDULED", "OPEN", "CLOSED", "CLEARED", "DONE"]
        assert [t for s, t in seq[1:]] == [o, c, p, p]
        assert set(horizon[sid]) == x.horizon(profile, day)
    held = {s for s in states if s.endswith(f"-{day:%Y%m%d}")}
    assert len(held) == len(SESSIONS[profile])


@pytest.mark.parametrize(("profile", "day"), CASES, ids=IDS)
def test_auction_pauses(profile: str, day: date) -> None:
    """CloseAuction sends the trading contracts of the horizon to INT (with the auction as
    the reason); ReopenAfterAuction brings exactly those back to TRADE."""
    r = run(profile, day)
    q = QUARTERS[profile]
    paused: dict[str, set[str]] = {}
    reopened: dict[str, set[str]] = {}
    for _, cmd, evs in r.in_day():
        moved = [e for e in evs if type(e) is ContractStateChanged]
        if isinstance(cmd, CloseAuction):
            assert all((e.previous, e.state) == ("TRADE", "INT") for e in moved)
            assert all(e.reason == f"intraday auction {cmd.session}" for e in moved)
            paused[cmd.session] = {e.contract for e in moved}
        elif isinstance(cmd, ReopenAfterAuction):
            assert all((e.previous, e.state) == ("INT", "TRADE") for e in moved)
            reopened[cmd.session] = {e.contract for e in moved}
    expected_counts = dict(PAUSED)
    expected_counts["IDA2"] = len(contracts(day + timedelta(days=1), q))
    for x in SESSIONS[profile]:
        sid = f"{x.name}-{day:%Y%m%d}"
        c = at(day, *x.closes)
        # trading at the close: opened before it, gate closure after it
        trading = {k for k in x.horizon(profile, day)
                   if at(date(int(k[3:7]), int(k[7:9]), int(k[9:11])) - timedelta(days=1),
                         *OPEN_AT[profile]) < c < gate(k)}
        assert paused[sid] == trading
        assert len(paused[sid]) == expected_counts[x.name], (sid, sorted(paused[sid]))
        assert reopened[sid] == paused[sid]
    n_int = sum(1 for e in r.events(ContractStateChanged) if e.state == "INT")
    assert n_int == sum(len(v) for v in paused.values())


@pytest.mark.parametrize("profile", ["omie-2018", "sidc-2024"])
def test_no_continuous_trading_in_a_horizon_while_its_auction_runs(profile: str) -> None:
    """Spec §7 / R56: from the close of reception until the results are published and the
    contracts reopen, no contract of the session's horizon trades continuously (nothing
    may open or reopen in between)."""
    r = run(profile, NORMAL)
    running: dict[str, set[str]] = {}  # session -> horizon, between close and reopen
    horizons = {e.session: set(e.contracts) for e in r.events(AuctionState, in_day=False)}
    state: dict[str, str] = {}
    bad: list[tuple[str, str, str]] = []
    for _, cmd, evs in r.log:
        if isinstance(cmd, ReopenAfterAuction):
            running.pop(cmd.session, None)
        for e in evs:
            if type(e) is ContractStateChanged:
                state[e.contract] = e.state
                if e.state == "TRADE":
                    bad += [(s, e.contract, f"{datetime.fromtimestamp(e.ts / 1000, MADRID)}")
                            for s, h in running.items() if e.contract in h]
        if isinstance(cmd, CloseAuction):
            running[cmd.session] = horizons[cmd.session]
            bad += [(cmd.session, c, "TRADE at the close") for c in horizons[cmd.session]
                    if state.get(c) == "TRADE"]
    assert not bad, f"{len(bad)} contracts trading during their auction, e.g. {bad[:3]}"


# ------------------------------------------------------------------ horizons, explicitly


def ids(prefix: str, lo: int, hi: int, digits: int = 2) -> set[str]:
    return {f"{prefix}-{k:0{digits}d}" for k in range(lo, hi + 1)}


def horizon_of(profile: str, held: date, name: str) -> set[str]:
    (a,) = [a for a in PROFILES[profile].auctions_of(held)
            if a.session == f"{name}-{held:%Y%m%d}"]
    return set(a.contracts)


def test_omie_horizons_normal_day() -> None:
    assert horizon_of("omie-2018", NORMAL, "MI3") == ids("PH-20260610", 5, 24)  # 20 h
    assert horizon_of("omie-2018", NORMAL, "MI6") == ids("PH-20260610", 16, 24)  # 9 h
    mi1 = horizon_of("omie-2018", NORMAL, "MI1")  # 27 h: 22-24 of D and 1-24 of D+1
    assert mi1 == ids("PH-20260610", 22, 24) | ids("PH-20260611", 1, 24)
    assert horizon_of("omie-2018", NORMAL, "MI2") == ids("PH-20260611", 1, 24)


def test_omie_horizons_dst_days() -> None:
    # 29 March: 02:00-03:00 does not exist, so 04:00 CEST starts period 4 (elapsed hours);
    # MI3 still covers 20 hours, periods 4-23 of 23
    assert horizon_of("omie-2018", SPRING, "MI3") == ids("PH-20260329", 4, 23)
    assert horizon_of("omie-2018", SPRING, "MI5") == ids("PH-20260329", 11, 23)  # 13 h
    # the day before: MI1 covers 21:00-24:00 of the 28th and the 23 hours of the 29th
    assert horizon_of("omie-2018", SPRING - timedelta(days=1), "MI1") == (
        ids("PH-20260328", 22, 24) | ids("PH-20260329", 1, 23))
    assert horizon_of("omie-2018", SPRING - timedelta(days=1), "MI2") == ids(
        "PH-20260329", 1, 23)
    # 25 October: 02:00-03:00 twice; 04:00 CET starts period 6; MI3 = periods 6-25
    assert horizon_of("omie-2018", AUTUMN, "MI3") == ids("PH-20261025", 6, 25)
    mi1 = horizon_of("omie-2018", AUTUMN - timedelta(days=1), "MI1")  # 28 hours
    assert mi1 == ids("PH-20261024", 22, 24) | ids("PH-20261025", 1, 25)
    # the last day-ahead MI1 of the autumn day itself: 21:00-24:00 CET is periods 23-25
    assert horizon_of("omie-2018", AUTUMN, "MI1") == (
        ids("PH-20261025", 23, 25) | ids("PH-20261026", 1, 24))


def test_sidc_horizons_normal_and_dst_days() -> None:
    # IDA3: 12:00-24:00 of the day: 12 hours and 48 quarter-hours
    assert horizon_of("sidc-2024", NORMAL, "IDA3") == (
        ids("PH-20260610", 13, 24) | ids("QH-20260610", 49, 96, 3))
    # on 25 October 12:00 CET is 13 elapsed hours after midnight
    assert horizon_of("sidc-2024", AUTUMN, "IDA3") == (
        ids("PH-20261025", 14, 25) | ids("QH-20261025", 53, 100, 3))
    assert horizon_of("sidc-2024", SPRING, "IDA3") == (
        ids("PH-20260329", 12, 23) | ids("QH-20260329", 45, 92, 3))
    # IDA1 and IDA2 held on the eve cover the whole DST day: 25 + 100, 23 + 92
    for name in ("IDA1", "IDA2"):
        assert horizon_of("sidc-2024", AUTUMN - timedelta(days=1), name) == (
            ids("PH-20261025", 1, 25) | ids("QH-20261025", 1, 100, 3))
        assert horizon_of("sidc-2024", SPRING - timedelta(days=1), name) == (
            ids("PH-20260329", 1, 23) | ids("QH-20260329", 1, 92, 3))


# ------------------------------------------------------------------ synchronisations


async def test_one_sync_per_round_over_a_day(tmp_path: Any) -> None:
    """A SyncJob listening to the simulated day synchronises after every round close
    (R49.1.4.2): as many syncs in day D as rounds, each covering one round."""
    from sync.job import SyncJob
    from sync.store import SqliteStore

    day = NORMAL
    cal = PROFILES["omie-2018"]
    core = Core()
    store = SqliteStore(tmp_path / "settle.db")
    await store.open()
    try:
        job = SyncJob(core, store)
        await job.open()
        lo, hi = midnight(day), midnight(day + timedelta(days=1))
        rounds: list[int] = []
        syncs_in_day = 0
        now: int | None = midnight(day - timedelta(days=1))
        while now is not None and now < hi:
            closed: list[int] = []

            def on(t: int, cmd: Any, evs: list[Any], closed: list[int] = closed) -> None:
                job.observe([(cmd, "calendar", evs)])
                closed += [e.round for e in evs if type(e) is RoundClosed]

            simulate(core, cal, now, now, on_step=on)
            if closed:
                res = await job.sync_pending()
                assert res is not None and (res.from_round, res.sync_id) == (
                    closed[0], closed[-1])
                if lo <= now:
                    rounds += closed
                    syncs_in_day += 1
            await asyncio.sleep(0)
            now = next_deadline(core, cal, now)
        assert len(rounds) == hours(day) == syncs_in_day
        assert await store.last_sync() == rounds[-1] == job.last_synced
    finally:
        await store.close()
