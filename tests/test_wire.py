"""Events to wire dictionaries (gateway/wire.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import fmt_price, fmt_qty
from engine.events import OrderReport
from gateway import wire
from gateway.wire import event_to_wire, event_to_wire_copy, event_to_wire_last


def _report(price: int) -> OrderReport:
    return OrderReport.of(1_800_000_000_123, 7, "c-1", "r-1", "PH-20270115-10", "ana", "AG1",
                       "SELLU1", "SELL", "ADDED", "ACTIVE", price, 125, 0, 0, "NON", "GFS",
                       None, 0, 0, 1, 0, None, None, None)


def test_an_order_report_on_the_wire() -> None:
    """Ticks become decimal strings, instants ISO-8601 UTC with milliseconds, and the
    protocol's field names (DESIGN rule 4)."""
    msg = event_to_wire(_report(-4510))
    assert (msg["type"], msg["price"], msg["visible"], msg["ts"]) == (
        "order_report", "-45.10", "12.5", "2027-01-15T08:00:00.123Z")


def test_a_report_sent_twice_is_converted_once_and_copied() -> None:
    """The answer and the private stream each get their own dictionary (the stream adds
    its seq to its copy), equal to a fresh conversion; equal events are not confused."""
    ev = _report(4510)
    a = event_to_wire_copy(ev)
    b = event_to_wire_copy(ev)
    assert a == b == event_to_wire(ev)
    assert a is not b
    a["seq"] = 5
    assert "seq" not in b and "seq" not in event_to_wire_copy(ev)
    other = _report(4511)
    assert event_to_wire_copy(other)["price"] == "45.11"
    assert event_to_wire_copy(ev)["price"] == "45.10"


def test_the_answer_takes_the_conversion_the_stream_made_and_no_copy_is_shared() -> None:
    """The answer (the last use of a report) takes the memoised conversion itself, which no
    stream message shares; without one it converts afresh and memoises nothing."""
    ev = _report(4512)
    stream = event_to_wire_copy(ev)  # the private stream's message
    stream["seq"] = 9
    answer = event_to_wire_last(ev)
    assert answer == event_to_wire(ev) and "seq" not in answer and answer is not stream
    assert id(ev) not in wire._MEMO  # taken: a later answer converts afresh
    again = event_to_wire_last(ev)
    assert again == answer and again is not answer
    assert id(ev) not in wire._MEMO


@settings(max_examples=300, deadline=None)
@given(price=st.integers(-999_900, 999_900), qty=st.integers(0, 99_990),
       expiry=st.none() | st.integers(0, 4_102_444_800_000),
       incr=st.integers(-500, 500), small_cache=st.booleans())
def test_cached_texts_equal_a_fresh_formatting(price: int, qty: int, expiry: int | None,
                                               incr: int, small_cache: bool) -> None:
    """Prices and quantities come from bounded caches of their texts: whatever the cache
    holds or has dropped, the text is exactly the formatting of the value, and a missing
    value stays None."""
    with pytest.MonkeyPatch.context() as mp:
        if small_cache:
            mp.setattr(wire, "_CACHE_MAX", 2)  # cleared all the time
        ev = _report(price)._replace(visible=qty, filled=qty // 2, expiry=expiry, incr=incr)
        for _ in range(2):  # formatted, then (maybe) from the cache
            msg = event_to_wire(ev)
            assert (msg["price"], msg["visible"], msg["filled"], msg["price_increment"]) == (
                fmt_price(price), fmt_qty(qty), fmt_qty(qty // 2), fmt_price(incr))
            assert msg["expiry"] == (None if expiry is None else wire.fmt_instant(expiry))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 999, 1000, 1001, 59_999, 60_000])
                .flatmap(lambda d: st.integers(1_700_000_000_000, 1_900_000_000_000)
                         .map(lambda base: base - base % 60_000 + d)), max_size=30))
def test_instants_are_their_utc_iso_text_whatever_came_before(instants: list[int]) -> None:
    """fmt_instant caches the last instant's text and the last second's: repeated
    instants, the same second with another millisecond, and a new second each get the
    text of their own instant."""
    from datetime import UTC, datetime

    for ms in instants + instants[::-1]:
        ref = datetime.fromtimestamp(ms / 1000, tz=UTC)
        ref = ref.replace(microsecond=ms % 1000 * 1000)
        assert wire.fmt_instant(ms) == ref.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_the_engines_instants_in_reasons_read_as_the_wires(ms: int) -> None:
    """engine.config.fmt_ms (the engine's reasons: a GTD expiry, A1§4.2) writes an instant as
    gateway.wire.fmt_instant does everywhere else on the wire (found by a black-box test:
    the reasons gave raw milliseconds)."""
    from engine.config import fmt_ms
    from gateway.wire import fmt_instant

    assert fmt_ms(ms) == fmt_instant(ms)
