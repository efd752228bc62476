"""Bounded JSON: every JSON value the package reads is limited in size and nesting depth.

JSON arrives from people (edited tool arguments, imports), from models (tool-call
arguments) and from files (the store, exports, v1 sources). Unbounded, a few hundred
kilobytes of ``[[[[...`` make the parser, pydantic or ``json.dumps`` raise a bare
``RecursionError`` deep inside the package. Here the text is measured before parsing,
a parser recursion becomes :class:`JSONLimitError`, and the parsed value's depth is
checked without recursion (:func:`check_depth`, also for values that arrive already
parsed, such as a dict passed to ``approve(arguments=...)``).

:class:`JSONLimitError` is a :class:`json.JSONDecodeError`, so every reader that
already turns bad JSON into its own error (``ToolArgumentsError`` for a model,
``CorruptDataError`` with the path for a store file...) turns an oversized one into the
same, with a message that says which limit was hit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_TEXT_CHARS",
    "JSONLimitError",
    "check_depth",
    "check_size",
    "loads",
    "non_finite_at",
]

#: How deeply arrays and objects may nest. Real conversations, tool arguments and
#: metadata stay far below; Python's own parser gives up near 1,000.
MAX_DEPTH = 100
#: The longest JSON text read by default (characters). Store files and exports are
#: far smaller; callers with a tighter budget (tool arguments) pass their own.
MAX_TEXT_CHARS = 256 * 1024 * 1024


class JSONLimitError(json.JSONDecodeError):
    """A JSON text or value exceeds a size or depth limit (not a syntax error)."""

    def __init__(self, msg: str, doc: str = "", pos: int = 0) -> None:
        super().__init__(msg, doc, pos)
        # JSONDecodeError's str() adds "line 1 column 1 (char 0)", meaningless here.
        self.args = (msg,)

    def __str__(self) -> str:
        return self.msg


_CONTAINERS = (Mapping, list, tuple)


def check_depth(value: object, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`JSONLimitError` if ``value`` nests lists/dicts deeper than ``max_depth``.

    Walks with an explicit stack, so a value nested 100,000 deep is refused rather than
    crashing the walk.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > max_depth:
            raise JSONLimitError(f"nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, _CONTAINERS))


def check_size(value: object, max_chars: int) -> None:
    """Raise :class:`JSONLimitError` if ``value`` written as compact JSON would be
    longer than ``max_chars`` (for values that arrive parsed, such as a dict of edited
    tool arguments: their text was never measured). ``value`` is checked for depth
    first; what JSON cannot hold is measured by its ``str()``."""
    check_depth(value)
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))
    if size > max_chars:
        raise JSONLimitError(f"larger than {max_chars:,} characters ({size:,})")


def non_finite_at(value: object) -> str | None:
    """Where ``value`` holds a float JSON cannot store (NaN, an infinity), else None.

    The place is written as Python would reach it (``top_k``, ``runs[2]['score']``,
    ``[0]``). Writing such a float as JSON gives ``null`` (pydantic) or a token that
    other JSON readers refuse (``json.dumps``): a value a user gave would change
    silently, so it is refused where it comes in, naming this place.
    """
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float):
            if item != item or item in (_INFINITY, -_INFINITY):
                return where or "the value"
        elif isinstance(item, Mapping):
            for key, child in reversed(list(item.items())):
                stack.append((child, f"{where}[{key!r}]" if where else str(key)))
        elif isinstance(item, (list, tuple)):
            for index in range(len(item) - 1, -1, -1):
                stack.append((item[index], f"{where}[{index}]"))
    return None


_INFINITY = float("inf")


def loads(
    text: str | bytes | bytearray,
    *,
    max_chars: int = MAX_TEXT_CHARS,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """``json.loads(text)`` within limits.

    Raises:
        JSONLimitError: ``text`` is longer than ``max_chars``, holds an integer of
            more than 4,300 digits, or nests deeper than ``max_depth``.
        json.JSONDecodeError: ``text`` is not JSON.
        UnicodeDecodeError: ``text`` is bytes that are not UTF-8/16/32.
    """
    if len(text) > max_chars:
        raise JSONLimitError(f"larger than {max_chars:,} characters ({len(text):,})")
    try:
        value = json.loads(text)
    except RecursionError:
        # The C parser counts its own recursion and stops cleanly.
        raise JSONLimitError(f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError:
        # Python refuses to convert an integer of more than 4,300 digits (a plain
        # ValueError, which callers would not take for damaged data).
        raise JSONLimitError("past the 4,300-digit limit for a number") from None
    # Fewer brackets than the limit cannot nest past it: skip the walk (the common case
    # for a message file), which costs more than the parse itself on large documents.
    brackets = (b"[", b"{") if isinstance(text, (bytes, bytearray)) else ("[", "{")
    if text.count(brackets[0]) + text.count(brackets[1]) > max_depth:  # type: ignore[arg-type]
        check_depth(value, max_depth)
    return value
