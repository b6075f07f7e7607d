"""Events to wire dictionaries (gateway/wire.py)."""

from __future__ import annotations

from engine.events import OrderReport
from gateway.wire import event_to_wire, event_to_wire_copy


def _report(price: int) -> OrderReport:
    return OrderReport(1_800_000_000_123, 7, "c-1", "r-1", "PH-20270115-10", "ana", "AG1",
                       "SELLU1", "SELL", "ADDED", "ACTIVE", price, 125, 0, 0, "NON", "GFS",
                       None, 0, 0, 1, 0, None, None)


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
