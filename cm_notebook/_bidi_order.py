"""The order in which a branch name's characters are drawn on screen.

A name written with right-to-left letters (Hebrew, Arabic) is drawn reordered by the
Unicode Bidirectional Algorithm (UAX #9), and where digits or signs sit at the edge of
those letters, two different names can be drawn identically: in a left-to-right page
``שלום-2`` and ``2-שלום`` both show as ``2-םולש``. :func:`drawn_order` gives the
characters in the order they appear from left to right, so names can be compared as a
reader sees them.

Only what a branch name may hold is handled: letters, digits, spaces and ``_-.+`` (no
marks, brackets, tabs or explicit direction controls, which branch names refuse), in
one paragraph. That leaves the algorithm's weak-type rules (W2-W7), neutral rules
(N1, N2), implicit levels (I1, I2) and the reordering (L2).
"""

from __future__ import annotations

import unicodedata

__all__ = ["drawn_order", "has_right_to_left", "starts_right_to_left"]

# Bidi classes after resolution that count as right-to-left for the neutral rules.
_AS_RIGHT = frozenset({"R", "EN", "AN"})
_NEUTRAL = frozenset({"ON", "WS", "ES", "CS", "ET", "B", "S"})


def has_right_to_left(text: str) -> bool:
    """Whether ``text`` holds anything drawn out of order: a right-to-left letter or an
    Arabic digit. Text without one is drawn as written in a left-to-right page."""
    return any(unicodedata.bidirectional(char) in ("R", "AL", "AN") for char in text)


def starts_right_to_left(text: str) -> bool:
    """Whether the first letter of ``text`` that has a direction is right-to-left: a
    page that takes the text's own direction (HTML's ``dir="auto"``, ``<bdi>``) then
    draws it right to left."""
    for char in text:
        kind = unicodedata.bidirectional(char)
        if kind in ("L", "R", "AL"):
            return kind != "L"
    return False


def drawn_order(text: str, *, right_to_left: bool = False) -> str:
    """The characters of ``text`` from left to right as drawn in a paragraph of that
    direction (left to right unless ``right_to_left``)."""
    if not right_to_left and not has_right_to_left(text):
        return text  # the common case: nothing moves
    base = 1 if right_to_left else 0
    edge = "R" if right_to_left else "L"
    kinds = _weak_types([unicodedata.bidirectional(char) for char in text], edge)
    _neutral_types(kinds, edge)
    levels = [_level(kind, base) for kind in kinds]
    return "".join(_reorder(list(text), levels))


def _weak_types(kinds: list[str], edge: str) -> list[str]:
    # W1: a mark (a vowel sign, a point) goes the way of the character it is on.
    for i, kind in enumerate(kinds):
        if kind == "NSM":
            kinds[i] = kinds[i - 1] if i else edge
    # W2, W3: a European digit after an Arabic letter is an Arabic one; Arabic
    # letters are right-to-left letters from then on.
    strong = edge
    for i, kind in enumerate(kinds):
        if kind in ("L", "R", "AL"):
            strong = kind
        elif kind == "EN" and strong == "AL":
            kinds[i] = "AN"
    kinds = ["R" if kind == "AL" else kind for kind in kinds]
    # W4: one separator between two numbers of a kind joins them.
    for i in range(1, len(kinds) - 1):
        before, after = kinds[i - 1], kinds[i + 1]
        if kinds[i] == "ES" and before == after == "EN":
            kinds[i] = "EN"
        elif kinds[i] == "CS" and before == after and before in ("EN", "AN"):
            kinds[i] = before
    # W5: terminators next to European digits are part of the number.
    for i, kind in enumerate(kinds):
        if kind == "ET" and _next_to(kinds, i, "ET", "EN"):
            kinds[i] = "EN"
    # W6: other separators and terminators are neutral; W7: European digits after a
    # left-to-right letter (or at the start of a left-to-right paragraph) are
    # left-to-right.
    kinds = ["ON" if kind in ("ES", "ET", "CS") else kind for kind in kinds]
    strong = edge
    for i, kind in enumerate(kinds):
        if kind in ("L", "R"):
            strong = kind
        elif kind == "EN" and strong == "L":
            kinds[i] = "L"
    return kinds


def _next_to(kinds: list[str], at: int, run: str, wanted: str) -> bool:
    # Whether the run of ``run`` around ``at`` touches ``wanted`` on either side.
    left = at
    while left > 0 and kinds[left - 1] == run:
        left -= 1
    right = at
    while right < len(kinds) - 1 and kinds[right + 1] == run:
        right += 1
    return (left > 0 and kinds[left - 1] == wanted) or (
        right < len(kinds) - 1 and kinds[right + 1] == wanted
    )


def _neutral_types(kinds: list[str], edge: str) -> None:
    # N1: a run of neutrals between two sides of one direction takes it (numbers count
    # as right-to-left); N2: else the paragraph's.
    i = 0
    while i < len(kinds):
        if kinds[i] not in _NEUTRAL:
            i += 1
            continue
        end = i
        while end < len(kinds) and kinds[end] in _NEUTRAL:
            end += 1
        before = _side(kinds[i - 1]) if i > 0 else edge
        after = _side(kinds[end]) if end < len(kinds) else edge
        chosen = before if before == after else edge
        kinds[i:end] = [chosen] * (end - i)
        i = end


def _side(kind: str) -> str:
    return "R" if kind in _AS_RIGHT else "L"


def _level(kind: str, base: int) -> int:
    # I1, I2: the embedding level of each character.
    if base == 0:
        return {"R": 1, "AN": 2, "EN": 2}.get(kind, 0)
    return 2 if kind in ("L", "AN", "EN") else 1


def _reorder(chars: list[str], levels: list[int]) -> list[str]:
    # L2: from the highest level down to the lowest odd one, reverse every run of
    # characters at that level or higher.
    lowest_odd = min((level for level in levels if level % 2), default=None)
    if lowest_odd is None:
        return chars
    for level in range(max(levels), lowest_odd - 1, -1):
        i = 0
        while i < len(chars):
            if levels[i] < level:
                i += 1
                continue
            end = i
            while end < len(chars) and levels[end] >= level:
                end += 1
            chars[i:end] = chars[i:end][::-1]
            levels[i:end] = levels[i:end][::-1]
            i = end
    return chars
