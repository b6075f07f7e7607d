"""Request bodies (gateway/inbound.py): an object with a key given twice is refused, on
both encodings; anything else decodes exactly as the plain decoders do."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.inbound import MAX_DEPTH, decode_json, decode_msgpack

keys = st.sampled_from(["type", "price", "p", "x", 'a":b', "ñ", "q \" :"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.text(max_size=6), st.sampled_from(['":', '" : "', "price"]))
# objects as lists of pairs, so that a key may come twice
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.lists(st.tuples(keys, inner), max_size=4).map(lambda p: ("obj", p))), max_leaves=12)


def _json(v: Any, sep: str) -> str:
    if isinstance(v, tuple) and v and v[0] == "obj":
        return "{" + ", ".join(json.dumps(k) + sep + _json(x, sep) for k, x in v[1]) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_json(x, sep) for x in v) + "]"
    return json.dumps(v)


def _has_duplicate(v: Any) -> bool:
    if isinstance(v, tuple) and v and v[0] == "obj":
        names = [k for k, _ in v[1]]
        return len(set(names)) != len(names) or any(_has_duplicate(x) for _, x in v[1])
    if isinstance(v, list):
        return any(_has_duplicate(x) for x in v)
    return False


def _packed(v: Any, pk: msgpack.Packer) -> bytes:
    if isinstance(v, tuple) and v and v[0] == "obj":
        out = pk.pack_map_header(len(v[1]))
        for k, x in v[1]:
            out += pk.pack(k) + _packed(x, pk)
        return out
    if isinstance(v, list):
        return pk.pack_array_header(len(v)) + b"".join(_packed(x, pk) for x in v)
    return pk.pack(v)


@settings(max_examples=500, deadline=None)
@given(v=values, sep=st.sampled_from([":", ": ", " :"]), as_bytes=st.booleans())
def test_json_with_a_key_twice_is_refused_and_anything_else_is_orjsons(
        v: Any, sep: str, as_bytes: bool) -> None:
    text = _json(v, sep)
    raw: str | bytes = text.encode() if as_bytes else text
    if _has_duplicate(v):
        with pytest.raises(ValueError, match="given twice"):
            decode_json(raw)
    else:
        assert decode_json(raw) == orjson.loads(raw)


@settings(max_examples=300, deadline=None)
@given(v=values)
def test_msgpack_with_a_key_twice_is_refused_and_anything_else_is_msgpacks(v: Any) -> None:
    raw = _packed(v, msgpack.Packer())
    if _has_duplicate(v):
        with pytest.raises(ValueError, match="given twice"):
            decode_msgpack(raw)
    else:
        assert decode_msgpack(raw) == msgpack.unpackb(raw, raw=False, strict_map_key=True)


def test_the_refusal_names_the_key_briefly() -> None:
    with pytest.raises(ValueError, match=r"the key 'price' is given twice"):
        decode_json('{"type": "order_entry", "price": "10.00", "price": "60.00"}')
    long = "k" * 1000
    with pytest.raises(ValueError) as e:
        decode_json(orjson.dumps({long: 1}).decode()[:-1] + f', "{long}": 2}}')
    assert len(str(e.value)) < 80


def _nested_json(depth: int, blank: bool) -> str:
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return '{"type"' + (" " if blank else "") + ": " + inner + "}"


@pytest.mark.parametrize("blank", [False, True])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_nesting_up_to_max_depth_decodes_and_deeper_is_refused_as_a_value_error(
        blank: bool, as_bytes: bool) -> None:
    """A value nested deeper than any request is refused before anything recurses over it
    (500 levels made the key count, then the stdlib's parser, raise RecursionError: the
    WebSocket session was closed with 1011, an AMQP request left unanswered and unacked)."""
    def enc(text: str) -> str | bytes:
        return text.encode() if as_bytes else text

    ok = _nested_json(MAX_DEPTH, blank)
    assert decode_json(enc(ok)) == orjson.loads(ok)
    for depth in (MAX_DEPTH + 1, 500, 1000):
        with pytest.raises(ValueError, match=f"nests deeper than {MAX_DEPTH} levels"):
            decode_json(enc(_nested_json(depth, blank)))
    with pytest.raises(ValueError, match="nests deeper"):
        decode_json(enc("[" * 600 + "]" * 600))  # a bare array, no key at all


def test_many_brackets_in_strings_are_not_nesting() -> None:
    text = orjson.dumps({"type": "x", "note": "[{" * 100}).decode()
    assert decode_json(text) == {"type": "x", "note": "[{" * 100}


def test_msgpack_nesting_up_to_max_depth_decodes_and_deeper_is_refused() -> None:
    def packed(depth: int) -> bytes:  # {"type": [[...[]...]]}, depth levels in all
        return b"\x81\xa4type" + b"\x91" * (depth - 2) + b"\x90"

    assert decode_msgpack(packed(MAX_DEPTH)) == msgpack.unpackb(packed(MAX_DEPTH))
    for depth in (MAX_DEPTH + 1, 500, 1000):
        with pytest.raises(ValueError, match=f"nests deeper than {MAX_DEPTH} levels"):
            decode_msgpack(packed(depth))
    with pytest.raises(ValueError, match="nests deeper"):
        decode_msgpack(b"\x91" * 600 + b"\x90")
