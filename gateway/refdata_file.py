"""Reading a reference-data file (TOML or JSON) at the edge, for the core to load."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from risk.refdata import RefData, RefDataError, load


def read_document(path: str | Path) -> dict[str, Any]:
    """Parse the file by its suffix (.toml or .json); syntax errors become RefDataError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise RefDataError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        doc = json.loads(raw) if p.suffix == ".json" else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RefDataError([f"{p}: {exc}"]) from None
    if not isinstance(doc, dict):
        raise RefDataError([f"{p}: the document must be a table/object"])
    return doc


def canonical_json(doc: dict[str, Any]) -> str:
    """The document as canonical JSON (dates as ISO strings), as the journal keeps it."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str,
                      ensure_ascii=False)


def read_and_validate(path: str | Path) -> tuple[str, RefData]:
    """Read and validate at start: a wrong file is refused whole with every error listed."""
    doc = read_document(path)
    text = canonical_json(doc)
    return text, load(json.loads(text))
