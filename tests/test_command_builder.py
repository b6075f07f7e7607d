"""engine.commands.builder: a faster constructor of a command, which must build exactly
the object that calling the class builds (the gateway's fast path uses it for new orders,
modifications and cancellations; the journal and the engine see no difference)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import commands as c

COMMANDS = [v for v in vars(c).values()
            if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == c.__name__]


def test_every_command_is_covered() -> None:
    assert {c.NewOrder, c.ModifyOrder, c.CancelOrder, c.EnterBasket, c.Tick} <= set(COMMANDS)


@pytest.mark.parametrize("cls", COMMANDS, ids=lambda k: k.__name__)
@given(data=st.data())
def test_the_builder_builds_the_object_the_class_builds(cls: type, data: Any) -> None:
    made = data.draw(st.builds(cls))
    values = [getattr(made, f.name) for f in dataclasses.fields(cls)]
    built = c.builder(cls)(*values)
    assert type(built) is cls
    assert built == made and hash(built) == hash(made) and repr(built) == repr(made)
    assert [getattr(built, f.name) for f in dataclasses.fields(cls)] == values
    for f in dataclasses.fields(cls):  # as immutable as the class's own
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(built, f.name, getattr(made, f.name))
    with pytest.raises(TypeError):  # every field is required, positionally
        c.builder(cls)(*values, None)


def test_only_frozen_slotted_classes_without_post_init() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("a")

    @dataclasses.dataclass(frozen=True, slots=True)
    class KeywordOnly:
        a: int
        b: int = dataclasses.field(kw_only=True, default=0)

    @dataclasses.dataclass(frozen=True, slots=True)
    class NotInInit:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    for cls in (Mutable, NoSlots, Checked, KeywordOnly, NotInInit, int):
        with pytest.raises(TypeError):
            c.builder(cls)
