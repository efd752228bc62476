"""Reading a tool's description and per-parameter help out of its docstring.

Supports the three styles people actually write: Google (``Args:``), NumPy
(``Parameters`` underlined with dashes) and Sphinx (``:param name: text``). Anything
else is not an error: the parameter simply gets no description.
"""

from __future__ import annotations

import inspect
import re

__all__ = ["parse_docstring"]

_GOOGLE_HEADER = re.compile(
    r"(?i)(args|arguments|parameters|params|keyword args|keyword arguments|other parameters):"
)
_NUMPY_HEADER = re.compile(r"(?i)(parameters|other parameters|keyword arguments)")
# Any header that ends the summary paragraph, in either style.
_ANY_HEADER = re.compile(
    r"(?i)(args|arguments|parameters|params|keyword args|keyword arguments|other parameters|"
    r"returns?|yields?|raises|examples?|notes?|see also|attributes|warnings?):?"
)
_DASHES = re.compile(r"-{3,}")
# The type in parentheses may hold parentheses itself: ``point (tuple(int, int)): ...``.
_GOOGLE_ENTRY = re.compile(r"\*{0,2}(\w+)\s*(?:\((?:[^()]|\([^()]*\))*\))?\s*:(.*)")
# NumPy allows several names sharing a type: ``a, b : int``.
_NUMPY_ENTRY = re.compile(r"\*{0,2}(\w+(?:\s*,\s*\*{0,2}\w+)*)(?:\s*:.*)?")
_SPHINX_ENTRY = re.compile(r":param\s+(?:[^:]*\s)?\*{0,2}(\w+)\s*:(.*)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into (first paragraph as one line, {parameter: description}).

    >>> parse_docstring('''Add two numbers.
    ...
    ... Args:
    ...     a: The first number.
    ...     b: The second number,
    ...         which may be negative.
    ... ''')[1]["b"]
    'The second number, which may be negative.'
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    for line in lines:
        text = line.strip()
        # The first blank line or section header ends the summary paragraph.
        if not text or _ANY_HEADER.fullmatch(text) or text.startswith(":"):
            break
        summary.append(text)
    return " ".join(summary), _parameter_docs(lines)


def _parameter_docs(lines: list[str]) -> dict[str, str]:
    docs: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        base = _indent(lines[i])
        if _GOOGLE_HEADER.fullmatch(text):
            i = _read_section(lines, i + 1, docs, base, numpy=False)
        elif (
            _NUMPY_HEADER.fullmatch(text)
            and i + 1 < len(lines)
            and _DASHES.fullmatch(lines[i + 1].strip())
        ):
            i = _read_section(lines, i + 2, docs, base, numpy=True)
        elif match := _SPHINX_ENTRY.fullmatch(text):
            parts = docs.setdefault(match.group(1), [])
            parts.append(match.group(2).strip())
            i += 1
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > base:
                parts.append(lines[i].strip())
                i += 1
        else:
            i += 1
    return {name: " ".join(p for p in parts if p) for name, parts in docs.items()}


def _read_section(
    lines: list[str], start: int, docs: dict[str, list[str]], base: int, *, numpy: bool
) -> int:
    """Collect entries from ``start`` until the section ends; return the next line index.

    Google entries sit one level deeper than their header, NumPy entries at the header's
    level; in both, the lines indented deeper than an entry continue its description.
    """
    entry_indent: int | None = base if numpy else None
    current: list[str] | None = None
    i = start
    while i < len(lines):
        line = lines[i]
        text = line.strip()
        if not text:
            i += 1
            continue
        indent = _indent(line)
        if entry_indent is None:
            if indent <= base:
                return i
            entry_indent = indent
        if indent < entry_indent:
            return i
        if indent > entry_indent:
            if current is not None:
                current.append(text)
            i += 1
            continue
        # A line at entry level: a new entry, or (NumPy) the next section's header.
        if numpy and i + 1 < len(lines) and _DASHES.fullmatch(lines[i + 1].strip()):
            return i
        match = (_NUMPY_ENTRY if numpy else _GOOGLE_ENTRY).fullmatch(text)
        if match is None:
            return i
        if numpy:
            # Names sharing an entry share its description (one list, filled below).
            current = []
            for name in re.split(r"\s*,\s*", match.group(1)):
                docs[name.lstrip("*")] = current
        else:
            current = docs.setdefault(match.group(1), [])
            current.append(match.group(2).strip())
        i += 1
    return i
