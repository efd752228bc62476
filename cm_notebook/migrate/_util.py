"""Small deterministic helpers shared by the migration layers: hashing, derived ids, and
text that UTF-8 can hold."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from .. import _json
from .._unicode import REPLACEMENT, has_surrogates, without_surrogates

__all__ = [
    "FILE_DEPTH",
    "RECORD_DEPTH",
    "canonical_json",
    "content_digest",
    "derived_id",
    "json_text",
    "load_json",
    "replaced_note",
    "sha256_text",
    "too_deep",
    "without_half_emojis",
]


def canonical_json(value: Any) -> str:
    """A stable JSON text of ``value`` (sorted keys, no spaces) for hashing."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


#: How deeply a whole v1 file (or LocalStorage's text of all chats) may nest. Its
#: records sit a few levels down and are each held to :data:`RECORD_DEPTH` on their own
#: (:func:`too_deep`), so that one deep record fails alone and the others migrate. Well
#: within what Python's parser reads.
FILE_DEPTH = 500
#: How deeply one v1 record (a context) may nest: what the store itself reads.
RECORD_DEPTH = _json.MAX_DEPTH


def load_json(text: str, *, max_depth: int = _json.MAX_DEPTH) -> Any:
    """Decode JSON text read from a v1 source: the one place the migration does, so
    what it accepts is decided here. Raises ValueError for anything it cannot decode,
    nesting deeper than ``max_depth`` (:data:`FILE_DEPTH` for a whole file) included."""
    try:
        return _json.loads(text, max_depth=max_depth)
    except RecursionError as exc:
        raise ValueError("it is nested too deeply to read") from exc


def too_deep(record: Any) -> str | None:
    """Why one v1 record nests too deeply to migrate, or None (checked without recursion,
    before anything recursive reads the record)."""
    try:
        _json.check_depth(record, RECORD_DEPTH)
    except _json.JSONLimitError as exc:
        return (
            f"it is {exc}, more than cm_notebook stores; take the deeply nested value out "
            "of this record in the v1 file (or flatten it) and migrate again"
        )
    return None


def without_half_emojis(value: Any) -> tuple[Any, int]:
    """``value`` (decoded JSON) with every string, keys included, made valid for UTF-8,
    and how many characters were replaced.

    JSON's ``"\\ud83d"`` decodes to a lone UTF-16 surrogate: half of an emoji, cut by
    JavaScript's ``String.slice`` in v1's front end. UTF-8 cannot encode it, so neither
    hashing nor the store could take it. Halves that form a pair are joined; a lone
    half becomes U+FFFD, the replacement character, and the rest of the text is kept.
    What holds no surrogate is returned as it is (the same object), so it hashes as before.
    """
    replaced = 0

    def clean(item: Any) -> Any:
        nonlocal replaced
        if isinstance(item, str):
            if not has_surrogates(item):
                return item
            fixed = without_surrogates(item)
            replaced += fixed.count(REPLACEMENT) - item.count(REPLACEMENT)
            return fixed
        if isinstance(item, dict):
            pairs = [(clean(key), clean(child)) for key, child in item.items()]
            same = all(
                new is old
                for pair, original in zip(pairs, item.items(), strict=True)
                for new, old in zip(pair, original, strict=True)
            )
            return item if same else dict(pairs)
        if isinstance(item, (list, tuple)):
            children = [clean(child) for child in item]
            same = all(c is child for c, child in zip(children, item, strict=True))
            if same:
                return item
            return children if isinstance(item, list) else tuple(children)
        return item

    return clean(value), replaced


def replaced_note(count: int) -> str:
    """The report's note for ``count`` replaced half emojis (see :func:`without_half_emojis`)."""
    what = "1 character that was" if count == 1 else f"{count} characters that were"
    was = "was" if count == 1 else "were"
    # Named, not shown: a terminal's encoding may lack the character itself.
    return f"{what} half an emoji {was} replaced with U+FFFD, the replacement character"


def json_text(value: Any) -> str:
    """``value`` itself if it is text, else its JSON (for results and arguments that v1
    kept either way)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def sha256_text(text: str) -> str:
    """Hex sha256 of UTF-8 ``text`` (a lone surrogate, which UTF-8 cannot hold, is hashed
    as its three-byte form instead of raising: a file name that is not UTF-8 may hold one)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


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
        data = content.encode("utf-8", "surrogatepass")
        digest.update(f"{role}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()
