"""Contracts, products and delivery intervals in Iberian local time (engine/contracts.py).

The engine computes the EU summer-time rule itself; ``zoneinfo('Europe/Madrid')`` is the
independent reference every delivery interval is checked against.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.contracts import (
    HOUR_MS,
    ContractSpec,
    Product,
    contracts_of_day,
    day_length_ms,
    local_day_of,
    local_midnight_utc,
    periods_in_day,
    summer_time_utc,
    utc_offset_ms,
)
from engine.errors import IllegalTransition, InvalidIdentifier, RondaError
from engine.states import CONTRACT_TRANSITIONS, ContractState, check_contract_transition

MADRID = ZoneInfo("Europe/Madrid")
PH = Product.HOURLY
QH = Product.QUARTER_HOURLY

# Clock-change days in Madrid (last Sundays of March and October), from published calendars.
SPRING = [date(2018, 3, 25), date(2019, 3, 31), date(2020, 3, 29), date(2021, 3, 28),
          date(2022, 3, 27), date(2023, 3, 26), date(2024, 3, 31), date(2025, 3, 30),
          date(2026, 3, 29), date(2027, 3, 28), date(2028, 3, 26), date(2029, 3, 25),
          date(2030, 3, 31)]
AUTUMN = [date(2018, 10, 28), date(2019, 10, 27), date(2020, 10, 25), date(2021, 10, 31),
          date(2022, 10, 30), date(2023, 10, 29), date(2024, 10, 27), date(2025, 10, 26),
          date(2026, 10, 25), date(2027, 10, 31), date(2028, 10, 29), date(2029, 10, 28),
          date(2030, 10, 27)]


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _zi_midnight(d: date) -> int:
    """Local 00:00 of ``d`` in Madrid, as UTC ms, by zoneinfo."""
    return _ms(datetime(d.year, d.month, d.day, tzinfo=MADRID))


def _zi_day_of(instant_ms: int) -> date:
    return datetime.fromtimestamp(instant_ms / 1000, tz=MADRID).date()


def _zi_periods_by_day(product: Product, year: int) -> dict[date, list[tuple[int, int]]]:
    """Independent reference: walk UTC in steps of the product's length over the whole year
    and give each interval to the local (zoneinfo) day its start falls in."""
    step = product.period_ms
    t = _ms(datetime(year - 1, 12, 31, 12, tzinfo=UTC))
    end = _ms(datetime(year + 1, 1, 1, 12, tzinfo=UTC))
    by_day: dict[date, list[tuple[int, int]]] = {}
    while t < end:
        by_day.setdefault(_zi_day_of(t), []).append((t, t + step))
        t += step
    return {d: v for d, v in by_day.items() if d.year == year}


# ----------------------------------------------------------------------------- A1§2 counts


@pytest.mark.parametrize("day", SPRING, ids=str)
def test_A1_2_spring_change_day_has_23_hourly_and_92_quarter_hour_contracts(day: date) -> None:
    """A1§2: «Estará generalmente compuesto por veinticuatro contratos, o 23, o 25 en los días
    de cambio de hora oficial» - the short day loses one hour (4 quarter-hours)."""
    assert day.weekday() == 6
    assert periods_in_day(PH, day) == 23
    assert periods_in_day(QH, day) == 92
    assert len(contracts_of_day(PH, day)) == 23
    assert len(contracts_of_day(QH, day)) == 92
    assert day_length_ms(day) == 23 * HOUR_MS


@pytest.mark.parametrize("day", AUTUMN, ids=str)
def test_A1_2_autumn_change_day_has_25_hourly_and_100_quarter_hour_contracts(day: date) -> None:
    """A1§2: «... o 23, o 25 en los días de cambio de hora oficial» - the long day."""
    assert day.weekday() == 6
    assert periods_in_day(PH, day) == 25
    assert periods_in_day(QH, day) == 100
    assert len(contracts_of_day(PH, day)) == 25
    assert len(contracts_of_day(QH, day)) == 100
    assert day_length_ms(day) == 25 * HOUR_MS


@pytest.mark.parametrize("year", range(2018, 2041))
def test_A1_2_every_other_day_of_the_year_has_24_and_96_contracts(year: int) -> None:
    """A1§2: «Estará generalmente compuesto por veinticuatro contratos» - every day that is
    not a clock-change day (as zoneinfo says) has 24 hourly and 96 quarter-hour contracts,
    and the change days are exactly the last Sundays of March and October."""
    d = date(year, 1, 1)
    odd: dict[date, int] = {}
    while d.year == year:
        ref_hours = (_zi_midnight(d + timedelta(days=1)) - _zi_midnight(d)) // HOUR_MS
        ph = periods_in_day(PH, d)
        qh = periods_in_day(QH, d)
        assert ph == ref_hours, d
        assert qh == 4 * ref_hours, d
        if ph != 24:
            odd[d] = ph
        d += timedelta(days=1)
    assert sorted(odd.values()) == [23, 25]
    spring, autumn = sorted(odd)
    assert (spring.month, spring.weekday(), autumn.month, autumn.weekday()) == (3, 6, 10, 6)
    assert (spring + timedelta(days=7)).month == 4
    assert (autumn + timedelta(days=7)).month == 11


# ----------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("year", [2024, 2026, 2027])
@pytest.mark.parametrize("product", [PH, QH], ids=lambda p: p.code)
def test_A1_2_every_contract_interval_of_a_year_matches_zoneinfo(product: Product,
                                                                 year: int) -> None:
    """R45.e: «Un contrato es un producto aplicado a un instante, de inicio y de fin
    concreto»; A1§2: each contract «se corresponde con cada uno de los periodos horarios del
    día». Every contract of every local day of the year has the [start, end) that the
    zoneinfo reference gives, in delivery order, numbered from 1."""
    ref = _zi_periods_by_day(product, year)
    assert len(ref) == (366 if year % 4 == 0 else 365)
    for day, intervals in ref.items():
        specs = contracts_of_day(product, day)
        assert [(s.start, s.end) for s in specs] == intervals, day
        assert [s.period for s in specs] == list(range(1, len(intervals) + 1))
        for s in specs:
            assert s.product is product and s.day == day
            assert s.end - s.start == product.period_ms
            assert local_day_of(s.start) == day == _zi_day_of(s.start)
        assert local_midnight_utc(day) == _zi_midnight(day) == specs[0].start


@pytest.mark.parametrize("year", [2019, 2026, 2031])
def test_utc_offset_matches_zoneinfo_every_quarter_hour_of_a_year(year: int) -> None:
    """A1§2: delivery periods are in Iberian local time (CET/CEST): the engine's own EU rule
    gives the same UTC offset as zoneinfo at every quarter-hour of the year, including the
    instants right around both changes."""
    t = _ms(datetime(year, 1, 1, tzinfo=UTC))
    end = _ms(datetime(year + 1, 1, 1, tzinfo=UTC))
    while t < end:
        off = datetime.fromtimestamp(t / 1000, tz=MADRID).utcoffset()
        assert off is not None
        assert utc_offset_ms(t) == off // timedelta(milliseconds=1), t
        t += 15 * 60_000
    start, stop = summer_time_utc(year)
    for edge, before, after in ((start, HOUR_MS, 2 * HOUR_MS), (stop, 2 * HOUR_MS, HOUR_MS)):
        assert utc_offset_ms(edge - 1) == before
        assert utc_offset_ms(edge) == after


def test_A1_2_change_day_periods_have_the_right_wall_clock_hours() -> None:
    """A1§2 with the module's numbering: periods count elapsed hours from local midnight, so
    on 2026-03-29 PH-03 is 03:00-04:00 CEST, and on 2026-10-25 PH-03 is 02:00-03:00 CEST and
    PH-04 is 02:00-03:00 CET (the repeated hour)."""

    def wall(cid: str) -> tuple[str, str]:
        s = ContractSpec.parse(cid)
        a = datetime.fromtimestamp(s.start / 1000, tz=MADRID)
        b = datetime.fromtimestamp(s.end / 1000, tz=MADRID)
        return f"{a:%H:%M %Z}", f"{b:%H:%M %Z}"

    assert wall("PH-20260329-02") == ("01:00 CET", "03:00 CEST")
    assert wall("PH-20260329-03") == ("03:00 CEST", "04:00 CEST")
    assert wall("PH-20260329-23") == ("23:00 CEST", "00:00 CEST")
    assert wall("PH-20261025-03") == ("02:00 CEST", "02:00 CET")
    assert wall("PH-20261025-04") == ("02:00 CET", "03:00 CET")
    assert wall("PH-20261025-25") == ("23:00 CET", "00:00 CET")
    assert wall("QH-20261025-012") == ("02:45 CEST", "02:00 CET")
    assert wall("QH-20261025-013") == ("02:00 CET", "02:15 CET")
    assert ContractSpec.parse("PH-20261025-04").start == _ms(
        datetime(2026, 10, 25, 1, tzinfo=UTC))


def test_A1_2_contracts_of_consecutive_days_tile_time_without_gap_or_overlap() -> None:
    """R45.e and A1§2: contracts are consecutive delivery intervals: the last contract of a
    day ends where the first of the next day starts, across both clock changes."""
    for product in (PH, QH):
        d = date(2026, 1, 1)
        prev_end = contracts_of_day(product, d - timedelta(days=1))[-1].end
        while d.year == 2026:
            for s in contracts_of_day(product, d):
                assert s.start == prev_end, (product, d, s.period)
                prev_end = s.end
            d += timedelta(days=1)


# ----------------------------------------------------------------------------- identifiers


@pytest.mark.parametrize("product", [PH, QH], ids=lambda p: p.code)
def test_contract_id_round_trip_for_every_contract_of_a_year(product: Product) -> None:
    """Contract identifier format (engine/contracts.py docstring): ``PH-YYYYMMDD-NN`` and
    ``QH-YYYYMMDD-NNN``; ``parse(id).id == id`` and parsing gives back the same contract."""
    d = date(2026, 1, 1)
    seen = set()
    while d.year == 2026:
        for s in contracts_of_day(product, d):
            cid = s.id
            assert cid == f"{product.code}-{d:%Y%m%d}-{s.period:0{product.digits}d}"
            p = ContractSpec.parse(cid)
            assert p == s
            assert p.id == cid
            seen.add(cid)
        d += timedelta(days=1)
    assert len(seen) == (8760 if product is PH else 35040)
    assert sorted(seen) == sorted(seen, key=lambda c: ContractSpec.parse(c).start)


def test_contract_id_examples_from_the_documentation() -> None:
    """The module docstring's examples: PH-20261025-03 (hourly, period 3) and
    QH-20260329-012 (15-minute, period 12)."""
    a = ContractSpec.parse("PH-20261025-03")
    assert (a.product, a.day, a.period) == (PH, date(2026, 10, 25), 3)
    b = ContractSpec.parse("QH-20260329-012")
    assert (b.product, b.day, b.period) == (QH, date(2026, 3, 29), 12)
    # 11 quarter-hours after local midnight (23:00 UTC): 01:45 UTC = 03:45 CEST
    assert b.start == _ms(datetime(2026, 3, 29, 1, 45, tzinfo=UTC))


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        # bad product
        ("XH-20260101-01", ["XH-20260101-01", "PH-YYYYMMDD-NN", "QH-YYYYMMDD-NNN"]),
        ("ph-20260101-01", ["ph-20260101-01", "PH-YYYYMMDD-NN"]),
        ("PD-20260101-01", ["PD-20260101-01", "PH-YYYYMMDD-NN"]),
        # bad digits
        ("PH-20260101-001", ["PH-20260101-001", "PH periods have 2 digits"]),
        ("QH-20260101-01", ["QH-20260101-01", "QH periods have 3 digits"]),
        ("PH-20260101-1", ["PH-20260101-1", "PH-YYYYMMDD-NN"]),
        ("QH-20260101-0001", ["QH-20260101-0001", "QH-YYYYMMDD-NNN"]),
        ("PH-2026011-01", ["PH-2026011-01", "PH-YYYYMMDD-NN"]),
        ("PH-20260101-0a", ["PH-20260101-0a", "PH-YYYYMMDD-NN"]),
        # period out of range for that day
        ("PH-20260329-24", ["period 24", "1..23", "2026-03-29"]),
        ("PH-20260101-25", ["period 25", "1..24", "2026-01-01"]),
        ("PH-20261025-26", ["period 26", "1..25", "2026-10-25"]),
        ("PH-20260101-00", ["period 0", "1..24"]),
        ("QH-20260329-093", ["period 93", "1..92", "2026-03-29"]),
        ("QH-20260101-097", ["period 97", "1..96"]),
        ("QH-20261025-101", ["period 101", "1..100", "2026-10-25"]),
        # bad date
        ("PH-20260230-01", ["PH-20260230-01", "day"]),
        ("PH-20261301-01", ["PH-20261301-01", "month"]),
        ("PH-20260000-01", ["PH-20260000-01", "month"]),
        ("PH-20250229-01", ["PH-20250229-01", "day"]),
        # not the canonical text of any id
        ("", ["''", "PH-YYYYMMDD-NN"]),
        (" PH-20260101-01", ["PH-YYYYMMDD-NN"]),
        ("PH-20260101-01 ", ["PH-YYYYMMDD-NN"]),
        ("PH_20260101_01", ["PH-YYYYMMDD-NN"]),
        ("PH-20260101-01\n", ["PH-YYYYMMDD-NN"]),
        ("PH-\u0662\u0660\u0662\u06660101-01", ["PH-YYYYMMDD-NN"]),
    ],
)
def test_invalid_contract_ids_raise_InvalidIdentifier_with_a_clear_message(
    bad: str, words: list[str]
) -> None:
    """Contract identifier format (engine/contracts.py): anything that is not exactly
    ``PH-YYYYMMDD-NN`` / ``QH-YYYYMMDD-NNN`` with a real date and a period that exists on
    that day (A1§2: 23/24/25 or 92/96/100) is refused with InvalidIdentifier, whose message
    names what is wrong.  A string that parses must be the id it parses to."""
    with pytest.raises(InvalidIdentifier) as info:
        ContractSpec.parse(bad)
    assert isinstance(info.value, RondaError) and isinstance(info.value, ValueError)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)


def test_PH_20260329_24_does_not_exist_but_PH_20261025_25_does() -> None:
    """A1§2: 23 contracts on the spring day, 25 on the autumn day."""
    with pytest.raises(InvalidIdentifier, match=r"period 24 out of range 1\.\.23"):
        ContractSpec.parse("PH-20260329-24")
    with pytest.raises(InvalidIdentifier):
        ContractSpec.of(PH, date(2026, 3, 29), 24)
    assert ContractSpec.parse("PH-20261025-25").id == "PH-20261025-25"
    assert ContractSpec.parse("QH-20261025-100").id == "QH-20261025-100"


def test_unknown_product_code_raises_with_the_code_named() -> None:
    """R45.c: the hourly product at least, possibly more (here PH and QH); any other product
    code is an invalid identifier."""
    with pytest.raises(InvalidIdentifier, match=r"'XH'.*PH or QH"):
        Product.from_code("XH")
    assert Product.from_code("PH") is PH and Product.from_code("QH") is QH


# ----------------------------------------------------------------------------- R45.f states

S = ContractState
ALLOWED = {
    (S.UPC, S.TRADE),  # opening
    (S.UPC, S.FIN),  # a contract withdrawn before opening
    (S.TRADE, S.INT),  # interruption (R48.b) or auction pause (R46.2.7)
    (S.TRADE, S.FIN),  # gate closure
    (S.INT, S.TRADE),  # resumption
    (S.INT, S.FIN),  # closes while interrupted
}
ALL_PAIRS = list(itertools.product(list(S), repeat=2))


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED), ids=lambda s: s.value)
def test_R45_f_allowed_contract_transitions(current: ContractState,
                                            target: ContractState) -> None:
    """R45.f: «El ciclo de vida (inicio-negociación-fin) de cada contrato»: UPC «a la espera
    de ser abierto», TRADE «abierto y en negociación», INT «negociación interrumpida», FIN
    «cerrado y finalizado». Each allowed step passes the table check."""
    check_contract_transition(current, target)
    assert target in CONTRACT_TRANSITIONS[current]


@pytest.mark.parametrize(
    ("current", "target"),
    sorted(set(ALL_PAIRS) - ALLOWED),
    ids=lambda s: s.value,
)
def test_R45_f_forbidden_contract_transitions_raise_IllegalTransition(
    current: ContractState, target: ContractState
) -> None:
    """R45.f: «FIN: Contrato cerrado y finalizado» - nothing leaves FIN; nothing returns to
    UPC; no state transitions to itself; UPC cannot be interrupted before it opened."""
    with pytest.raises(IllegalTransition) as info:
        check_contract_transition(current, target)
    err = info.value
    assert (err.machine, err.current, err.target) == ("contract", current.value, target.value)
    assert f"{current.value} -> {target.value}" in str(err)


def test_R45_f_transition_table_is_exactly_the_rule() -> None:
    """R45.f: four states, «uno de los cuatro siguientes: FIN, TRADE, UPC, INT»; the table
    covers every state and allows exactly the six steps of the life cycle."""
    assert {s.value for s in S} == {"UPC", "TRADE", "INT", "FIN"}
    assert set(CONTRACT_TRANSITIONS) == set(S)
    table = {(a, b) for a, targets in CONTRACT_TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    assert len(ALL_PAIRS) - len(ALLOWED) == 10
