"""The core's events are records (engine.events.Event): tuples with named fields, built by
tuple's own constructor; they read like named tuples, and ``of`` builds one by name."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from engine.events import Ack, BookChange, Event, OrderReport, Trade
from risk.events import RiskNotice


def _book_change() -> BookChange:
    return BookChange((1, "PH-20270115-10", 2, "ADD", 3, "BUY", 4500, 10))


def test_fields_read_by_name_and_position_and_match() -> None:
    b = _book_change()
    assert b._fields == ("ts", "contract", "seq", "action", "entry", "side", "price", "qty")
    assert (b.seq, b.price, b[6], len(b)) == (2, 4500, 4500, 8)
    assert b._asdict()["qty"] == 10
    match b:
        case BookChange(action="ADD", price=p, qty=q):
            assert (p, q) == (4500, 10)
        case _:
            pytest.fail("a BookChange did not match its own class pattern")
    assert repr(b).startswith("BookChange(ts=1, contract='PH-20270115-10', seq=2")


def test_an_event_has_no_instance_dict_and_is_immutable() -> None:
    b = _book_change()
    assert not hasattr(b, "__dict__")
    with pytest.raises(AttributeError):
        b.price = 1  # type: ignore[misc]


def test_of_takes_fields_by_position_or_name_each_exactly_once() -> None:
    a = Ack.of(5, "ana", "r-1", "cancel_all", (1, 2))
    assert a == Ack.of(5, "ana", kind="cancel_all", req_id="r-1", order_ids=(1, 2))
    assert type(a) is Ack and a.order_ids == (1, 2)
    with pytest.raises(TypeError, match="missing order_ids"):
        Ack.of(5, "ana", "r-1", "cancel_all")
    with pytest.raises(TypeError, match="no field 'qty'"):
        Ack.of(5, "ana", "r-1", "cancel_all", (), qty=1)
    with pytest.raises(TypeError, match="'user' given twice"):
        Ack.of(5, "ana", "r-1", "cancel_all", (), user="bea")
    with pytest.raises(TypeError, match="5 fields, 6 given"):
        Ack.of(5, "ana", "r-1", "cancel_all", (), 7)


def test_replace_copy_and_pickle_keep_the_type() -> None:
    b = _book_change()
    r = b._replace(qty=4)
    assert type(r) is BookChange and r.qty == 4 and r[:7] == b[:7]
    for c in (copy.copy(b), copy.deepcopy(b), pickle.loads(pickle.dumps(b))):
        assert type(c) is BookChange and c == b


@pytest.mark.parametrize("body", [
    {"__slots__": (), "__new__": lambda cls, *a: tuple.__new__(cls, a)},
    {"__slots__": (), "__init__": lambda self, *a: None},
    {},  # no __slots__: instances would carry a __dict__
])
def test_an_event_class_keeps_tuples_own_constructor_and_no_dict(body: dict[str, Any]
                                                                 ) -> None:
    with pytest.raises(TypeError, match="an event"):
        type("Bad", (Event,), {"__annotations__": {"ts": "int"}, **body})


def test_every_event_class_is_a_record() -> None:
    for cls in (OrderReport, Trade, BookChange, Ack, RiskNotice):
        assert "__new__" not in cls.__dict__ and cls.__dict__["__slots__"] == ()
        assert cls.__new__ is tuple.__new__  # type: ignore[comparison-overlap]
        assert len(cls._fields) == len(set(cls._fields)) > 2


def _event_classes() -> dict[str, type[Event]]:
    import engine.events
    import risk.events

    found: dict[str, type[Event]] = {}
    todo = list(Event.__subclasses__())
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    assert {engine.events.OrderReport, risk.events.RiskNotice} <= set(found.values())
    return found


def test_every_event_built_from_a_tuple_in_the_code_has_exactly_its_fields() -> None:
    """An event is built from one tuple, and that constructor checks no arity (it is the
    hot path's): a site that builds ``Trade((...))`` with a field too many or too few would
    shift every field after it.  So every such site in the product's code is checked here
    against its class's fields, rare paths included (the flows of the other tests reach
    only some of them)."""
    import ast
    from pathlib import Path

    classes = _event_classes()
    root = Path(__file__).resolve().parents[1]
    sites = 0
    wrong: list[str] = []
    for folder in ("engine", "risk", "auctions", "gateway", "sync", "clients"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and len(node.args) == 1
                        and not node.keywords and isinstance(node.args[0], ast.Tuple)):
                    continue
                f = node.func
                name = f.id if isinstance(f, ast.Name) else (
                    f.attr if isinstance(f, ast.Attribute) else None)
                cls = classes.get(name or "")
                if cls is None:
                    continue
                elts = node.args[0].elts
                sites += 1
                if any(isinstance(e, ast.Starred) for e in elts):
                    wrong.append(f"{path.name}:{node.lineno} {name}: unpacks, arity unchecked")
                elif len(elts) != len(cls._fields):
                    wrong.append(f"{path.name}:{node.lineno} {name}: {len(elts)} values for "
                                 f"{len(cls._fields)} fields")
    assert not wrong, wrong
    assert sites >= 20  # the engine's and the guard's sites were found (24 in all)
