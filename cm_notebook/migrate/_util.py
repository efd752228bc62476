"""Small deterministic helpers shared by the migration layers: hashing and derived ids."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from .. import _json

__all__ = [
    "canonical_json",
    "content_digest",
    "derived_id",
    "json_text",
    "load_json",
    "sha256_text",
]


def canonical_json(value: Any) -> str:
    """A stable JSON text of ``value`` (sorted keys, no spaces) for hashing."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def load_json(text: str) -> Any:
    """Decode JSON text read from a v1 source: the one place the migration does, so
    what it accepts is decided here. Raises ValueError for anything it cannot decode,
    nesting too deep for the parser included."""
    try:
        return _json.loads(text)
    except RecursionError as exc:
        raise ValueError("it is nested too deeply to read") from exc


def json_text(value: Any) -> str:
    """``value`` itself if it is text, else its JSON (for results and arguments that v1
    kept either way)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def sha256_text(text: str) -> str:
    """Hex sha256 of UTF-8 ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def derived_id(prefix: str, *parts: object) -> str:
    """A deterministic safe id: ``prefix`` + 24 hex digits of sha256 over ``parts``.

    Deterministic so that converting the same v1 data twice gives the same ids, which is
    what makes a second migration run recognise its own earlier work.
    """
    return prefix + sha256_text("\x1f".join(str(p) for p in parts))[:24]


def content_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 over (role, content) pairs in order; lengths make the encoding unambiguous."""
    digest = hashlib.sha256()
    for role, content in pairs:
        data = content.encode("utf-8")
        digest.update(f"{role}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()
