"""R50: a unit's base program, as the system operators' PHF and the auctions' results make it.

The PHF is made «del resultado de sesiones de subastas intradiarias ... realizadas hasta el
momento», so a program sent after an auction's result includes it: ``SetProgram`` absorbs
the results applied to its period before it, and a result applied after it adds to it.
An hourly program is the hour's (a quarter with a program of its own keeps its figure,
15-minute results stay until their quarter's program); a 15-minute program is its quarter's
whole figure.

The property compares the guard with a reference model that keeps the list of what came and
reads each quarter's figure from it, instead of keeping running totals.  Units: energies in
tenths of MWh as sent, a quarter's figure in tenths of MW (a 15-minute energy × 4).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from risk_helpers import (
    CID,
    QH_OF_CID,
    SELL,
    Core,
    actions,
    notices,
    reject_codes,
    rejects,
    set_unit,
    std_doc,
)

from risk.commands import AdjustProgram, SetProgram

Op = tuple[str, int | None, int]  # ("set" | "adj", quarter or None for the hour, energy)


def accepted(events: list[Any]) -> bool:
    return not rejects(events) and "ADDED" in actions(events)


def core() -> Core:
    doc = set_unit(std_doc(), "SELLU", max_energy="100.0")
    return Core(doc, CID, *QH_OF_CID)


def send(c: Core, op: Op) -> list[Any]:
    kind, q, energy = op
    period = CID if q is None else QH_OF_CID[q]
    if kind == "set":
        return c.send(SetProgram(by="sofia", unit="SELLU", period=period, energy=energy))
    return c.send(AdjustProgram(by="auction", unit="SELLU", period=period, delta=energy))


def figures(c: Core) -> tuple[int, ...]:
    return c.guard.base_program("SELLU", CID)


def model(ops: list[Op]) -> tuple[int, ...]:
    """Each quarter's figure read from the whole list: from its last own program if it has
    one (× 4), with the hour's and its own results after it; otherwise from the hour's last
    program, with the hour's results after that one and every result of its own."""
    out = []
    for i in range(4):
        own = [j for j, (k, q, _e) in enumerate(ops) if k == "set" and q == i]
        if own:
            j = own[-1]
            fig = 4 * ops[j][2] + sum(e if q is None else 4 * e for k, q, e in ops[j + 1:]
                                      if k == "adj" and q in (None, i))
        else:
            hourly = [j for j, (k, q, _e) in enumerate(ops) if k == "set" and q is None]
            j = hourly[-1] if hourly else -1
            fig = (ops[j][2] if hourly else 0) + sum(
                e for k, q, e in ops[j + 1:] if k == "adj" and q is None) + sum(
                4 * e for k, q, e in ops if k == "adj" and q == i)
        out.append(fig)
    return tuple(out)


def absorbed(ops: list[Op], j: int) -> int:
    """What the program ``ops[j]`` absorbs, in tenths of MW of its quarter (or hour): an
    hourly program, the hour's results since the hour's last program; a quarter's, the
    hour's results since the quarter's last own program (without one: since the hour's
    last program) and the quarter's own results since its last own program."""
    _kind, qj, _e = ops[j]
    before = ops[:j]

    def last(pred: Any) -> int:
        idx = [i for i, op in enumerate(before) if pred(op)]
        return idx[-1] if idx else -1

    hourly_set = last(lambda op: op[0] == "set" and op[1] is None)
    if qj is None:
        return sum(e for k, q, e in before[hourly_set + 1:] if k == "adj" and q is None)
    own = last(lambda op: op[0] == "set" and op[1] == qj)
    since = own if own >= 0 else hourly_set
    return sum(e for k, q, e in before[since + 1:] if k == "adj" and q is None) + sum(
        4 * e for k, q, e in before[own + 1:] if k == "adj" and q == qj)


OPS = st.lists(st.tuples(st.sampled_from(("set", "adj")), st.sampled_from((None, 0, 1, 2, 3)),
                         st.integers(-600, 600)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_r50_programs_and_auction_results_match_the_model(ops: list[Op]) -> None:
    ops = [(k, q, abs(e) if k == "set" else e) for k, q, e in ops]
    c = core()
    for j, op in enumerate(ops):
        (n,) = notices(send(c, op), "PROGRAM_SET")
        if op[0] == "set":
            a, k = absorbed(ops, j), 1 if op[1] is None else 4
            told = f"including the auction results applied before it ({a / (10 * k):+.1f} MWh"
            assert (told in n.detail) if a else ("including" not in n.detail), (op, n.detail)
    assert figures(c) == model(ops)


def test_r50_an_hourly_program_includes_the_hours_auction_result() -> None:
    """An auction sold 20.0 MWh of SELLU in the hour (program 30.0 → 50.0); the PHF that
    follows says 50.0: the figure is 50.0, not 70.0, and the notice says what it absorbed."""
    c = core()
    send(c, ("set", None, 300))
    send(c, ("adj", None, 200))
    assert figures(c) == (500,) * 4
    (n,) = notices(send(c, ("set", None, 500)), "PROGRAM_SET")
    assert figures(c) == (500,) * 4
    assert "including the auction results applied before it (+20.0 MWh, R50)" in n.detail
    # a later auction's result adds to the new program
    send(c, ("adj", None, -50))
    assert figures(c) == (450,) * 4


def test_r50_a_quarter_program_is_the_quarters_whole_figure() -> None:
    """Hour: program 30.0 plus an hourly result of 10.0 (40.0 MW in each quarter), quarter 2
    a 15-minute result of 2.5 MWh (+10.0 MW: 50.0 MW).  Quarter 2's PHF of 12.5 MWh
    (50.0 MW) includes both: 50.0 MW, not 60.0 or 70.0.  The hour's next PHF (45.0) leaves
    quarter 2 at its own figure."""
    c = core()
    send(c, ("set", None, 300))
    send(c, ("adj", None, 100))
    send(c, ("adj", 2, 25))
    assert figures(c) == (400, 400, 500, 400)
    (n,) = notices(send(c, ("set", 2, 125)), "PROGRAM_SET")
    assert figures(c) == (400, 400, 500, 400)
    # the hour's 10.0 MW and the quarter's 10.0 MW: 20.0 MW for 15 minutes, 5.0 MWh
    assert "(+5.0 MWh, R50)" in n.detail
    send(c, ("set", None, 450))
    assert figures(c) == (450, 450, 500, 450)


def test_r50_a_second_quarter_program_does_not_absorb_the_hours_result_again() -> None:
    """The hour's result of 10.0 MW is in quarter 2's first program; its second program
    absorbs nothing (review of the R50 change)."""
    c = core()
    send(c, ("adj", None, 100))
    (n1,) = notices(send(c, ("set", 2, 125)), "PROGRAM_SET")
    assert "(+2.5 MWh, R50)" in n1.detail
    (n2,) = notices(send(c, ("set", 2, 150)), "PROGRAM_SET")
    assert figures(c)[2] == 600 and "including" not in n2.detail


def test_r50_a_program_without_earlier_results_says_nothing_of_them() -> None:
    c = core()
    (n,) = notices(send(c, ("set", None, 300)), "PROGRAM_SET")
    assert n.detail == f"program of SELLU in {CID}: 30.0 MWh"


def test_r46_2_4_the_checks_read_the_absorbed_program() -> None:
    """SELLU (max 100.0 MW): a program of 40.0, an auction result of +30.0, then the PHF of
    70.0 that includes it: 30.0 more may be sold, not 0 (a double count would give 100.0)."""
    c = core()
    send(c, ("set", None, 400))
    send(c, ("adj", None, 300))
    send(c, ("set", None, 700))
    assert reject_codes(c.new("sam", "SELLU", SELL, 9000, 301)) == ["ENERGY_MAX"]
    assert accepted(c.new("sam", "SELLU", SELL, 9000, 300))
