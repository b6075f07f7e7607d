"""Request bodies to Python values, for both APIs: JSON (orjson) and msgpack.

Neither decoder refuses an object with a key given twice: both keep the last value, where
other parsers keep the first.  A request such as ``{"price": "10.00", "price": "60.00"}``
is ambiguous, and the protocol refuses what it would have to guess (``docs/protocol.md``):
such a message is refused as a whole (``ValueError``, reported as ``INVALID_ENCODING``).

JSON: after orjson's parse, the keys of the result are counted against the ``":`` of the
text.  When no blank comes before a colon anywhere in the text, every key written is
followed by ``":`` (a string may hold more of them), so the text has at least as many as it
has keys, and the result has fewer keys than the text exactly when a key came twice: equal
counts prove there was none.  Otherwise (a duplicate, a blank before a colon, a string
holding ``":``) the text is parsed again keeping every pair, to tell which.  What this
costs a plain order: two counts of the text, about 0.4 µs (a GTD order, whose expiry holds
colons, four more searches); msgpack: the map's pairs are checked as the map is built
(about 0.4 µs)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import orjson


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (the last three "..."), for an error that names
    what a client sent without replaying all of it."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shown(v: Any, limit: int = 40) -> str:
    """A client's value in an error message: its repr, cut to ``limit`` characters."""
    return clip(repr(v), limit)


# the deepest nesting a request may have: the protocol's deepest message (a basket's
# orders, an auction bid's steps) has four levels; anything far deeper is refused as a whole
# before it reaches code that recurses (a recursion error is not a client's error message)
MAX_DEPTH = 32


def _keys(v: Any) -> int:
    """Keys of every object in ``v``; :class:`ValueError` if it nests deeper than
    :data:`MAX_DEPTH` (walked without recursion)."""
    n = 0
    level: list[Any] = [v]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise ValueError(f"the message nests deeper than {MAX_DEPTH} levels")
        inner: list[Any] = []
        for x in level:
            if type(x) is dict:
                n += len(x)
                inner.extend(y for y in x.values() if type(y) is dict or type(y) is list)
            elif type(x) is list:
                inner.extend(y for y in x if type(y) is dict or type(y) is list)
        level = inner
    return n


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[Any] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"the key {shown(k)} is given twice")
            seen.add(k)
    return d


def decode_json(raw: str | bytes) -> Any:
    data = orjson.loads(raw)
    if isinstance(raw, bytes):
        marks = raw.count(b'":')
        # every colon right after a quote, or else no blank right before one (JSON's
        # blanks: space, tab, line feed, carriage return; RFC 8259 §2)
        keyed = marks == raw.count(b":") or not (
            b" :" in raw or b"\n:" in raw or b"\t:" in raw or b"\r:" in raw)
        opens = raw.count(b"[") + raw.count(b"{")
    else:
        marks = raw.count('":')
        keyed = marks == raw.count(":") or not (
            " :" in raw or "\n:" in raw or "\t:" in raw or "\r:" in raw)
        opens = raw.count("[") + raw.count("{")
    # a value nests at most as deep as the text has opening brackets: only a text with
    # more of them than MAX_DEPTH needs the walk that refuses a deeper one
    keys = _keys(data) if opens > MAX_DEPTH else -1
    if keyed and ((type(data) is dict and marks == len(data))  # a flat request
                  or marks == (keys if keys >= 0 else _keys(data))):
        return data
    json.loads(raw, object_pairs_hook=_pairs)  # raises on a key given twice
    return data


def decode_msgpack(raw: bytes) -> Any:
    data = msgpack.unpackb(raw, raw=False, strict_map_key=True, object_pairs_hook=_pairs)
    if type(data) is dict:
        for v in data.values():
            if type(v) is dict or type(v) is list:
                _keys(data)  # nested: check the depth
                break
    elif type(data) is list:
        _keys(data)
    return data
