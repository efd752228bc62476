"""The word diff behind comparisons, stability and per-turn diffs, in bounded memory.

An alignment of two token lists (rapidfuzz's bit-parallel ``Indel.opcodes``) keeps a
bit for every pair of tokens: two 600 KB replies (300,000 tokens each) need 11 GB. So
the work is bounded: texts whose token counts multiply to at most :data:`DIFF_BUDGET`
are aligned word by word as they are (the exact diff, ~30 MB at most); longer ones
first set aside the tokens they share at their start and end (most of a real diff),
and only when what remains is still over the budget are they diffed coarsely: split at
the lines found once in each text (a patience diff), each run between them word by
word where it fits the budget, else split at its words found once in each, and what
is still over the budget marked as one change. Such a diff says so
(:attr:`WordDiff.coarse`).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Callable, Iterable

from rapidfuzz.distance import Indel

__all__ = ["COARSE_NOTE", "DIFF_BUDGET", "WordDiff", "alignable", "word_diff", "words"]

_TOKEN = re.compile(r"\s+|[^\s]+")

#: The most token pairs aligned at once: the alignment keeps a bit per pair, so
#: 250 million pairs (e.g. two answers of ~7,900 words, or one of 100,000 words against
#: a short one) take ~31 MB and well under 0.1 s. Beyond it the diff is coarser.
DIFF_BUDGET = 250_000_000

#: What a view says beside a coarse diff.
COARSE_NOTE = "a coarse diff: the texts are too long to diff word by word"


class WordDiff(list[tuple[str, str]]):
    """A :func:`word_diff`: a list of ``(op, text)``, op in ``= - +``.

    ``coarse`` is True when the texts were too long to align word by word (see
    :data:`DIFF_BUDGET`): the diff then still gives both texts back, but may mark as
    changed some words the texts have in common (it first matches lines found once in
    each text, and marks a run still too long to align as one change).
    """

    __slots__ = ("coarse",)

    def __init__(self, ops: Iterable[tuple[str, str]] = (), *, coarse: bool = False) -> None:
        super().__init__(ops)
        self.coarse = coarse

    def __repr__(self) -> str:
        return f"WordDiff({list.__repr__(self)}{', coarse=True' if self.coarse else ''})"


def words(text: str) -> list[str]:
    """``text`` as the diff's tokens: its words and the runs of white space between."""
    return _TOKEN.findall(text)


def alignable(words_a: list[str], words_b: list[str], budget: int = DIFF_BUDGET) -> bool:
    """Whether the two token lists, less what they share at their start and end, are
    within ``budget`` token pairs (so aligning them word by word stays bounded)."""
    if len(words_a) * len(words_b) <= budget:
        return True
    head, tail = _affix(words_a, words_b)
    return (len(words_a) - head - tail) * (len(words_b) - head - tail) <= budget


def word_diff(a: str, b: str) -> WordDiff:
    """Diff two texts word by word: a list of (op, text), op in ``= - +``.

    Words keep their surrounding white space so joining the ``=`` and ``-`` parts gives
    ``a`` back, and the ``=`` and ``+`` parts give ``b``. Texts too long to align word
    by word in bounded memory are diffed more coarsely, and the result says so
    (:attr:`WordDiff.coarse`; see :data:`DIFF_BUDGET`).
    """
    words_a, words_b = words(a), words(b)
    # A longest common subsequence of the words (rapidfuzz's bit-parallel Indel
    # alignment, in C++): 8,000-word answers in ~30 ms, where difflib's SequenceMatcher
    # took 14 s (it is quadratic and worse with the repeated words of prose).
    if len(words_a) * len(words_b) <= DIFF_BUDGET:
        # As it always was: the texts as they are (trimming first could pick another
        # of the equally short diffs).
        return WordDiff(_readable(_aligned(words_a, words_b)))
    head, tail = _affix(words_a, words_b)
    middle_a = words_a[head : len(words_a) - tail]
    middle_b = words_b[head : len(words_b) - tail]
    parts = [_Part("".join(words_a[:head]))]
    coarse = len(middle_a) * len(middle_b) > DIFF_BUDGET
    if coarse:
        parts += _coarse(middle_a, middle_b)
    else:
        parts += _aligned(middle_a, middle_b)
    parts.append(_Part("".join(words_a[len(words_a) - tail :])))
    return WordDiff(_readable(_joined(parts)), coarse=coarse)


def _affix(words_a: list[str], words_b: list[str]) -> tuple[int, int]:
    # How many tokens the lists share at their start, then at their end (not counting
    # the start's again).
    most = min(len(words_a), len(words_b))
    head = 0
    while head < most and words_a[head] == words_b[head]:
        head += 1
    tail = 0
    while tail < most - head and words_a[-1 - tail] == words_b[-1 - tail]:
        tail += 1
    return head, tail


class _Part:
    """A run the texts share (``same``), or a change: ``removed`` from a, ``added`` in b."""

    __slots__ = ("added", "removed", "same")

    def __init__(self, same: str, removed: str = "", added: str = "") -> None:
        self.same, self.removed, self.added = same, removed, added

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.added)


def _aligned(words_a: list[str], words_b: list[str]) -> list[_Part]:
    # The word-by-word alignment (the caller keeps the two lists within the budget).
    parts: list[_Part] = []
    for code in Indel.opcodes(words_a, words_b):
        gone = "".join(words_a[code.src_start : code.src_end])
        if code.tag == "equal":
            parts.append(_Part(gone))
        elif parts and parts[-1].changed:  # Indel splits a replacement in two
            parts[-1].removed += gone
            parts[-1].added += "".join(words_b[code.dest_start : code.dest_end])
        else:
            parts.append(_Part("", gone, "".join(words_b[code.dest_start : code.dest_end])))
    return parts


def _coarse(words_a: list[str], words_b: list[str]) -> list[_Part]:
    # Texts over the budget: split where both have the same line, one found once in
    # each (a patience diff's anchors), then each run between such lines word by word,
    # or split again at words found once in each where it is still over the budget.
    lines_a = "".join(words_a).splitlines(keepends=True)
    lines_b = "".join(words_b).splitlines(keepends=True)
    return _anchored(lines_a, lines_b, lambda a, b: _gap(words(a), words(b), split=True))


def _gap(words_a: list[str], words_b: list[str], *, split: bool) -> list[_Part]:
    # A run between two anchors: word by word within the budget, else split at its own
    # anchors once (``split``), else one change.
    if len(words_a) * len(words_b) <= DIFF_BUDGET:
        return _aligned(words_a, words_b)
    if split:
        return _anchored(words_a, words_b, lambda a, b: _gap(words(a), words(b), split=False))
    return [_Part("", "".join(words_a), "".join(words_b))]


def _anchored(
    units_a: list[str], units_b: list[str], between: Callable[[str, str], list[_Part]]
) -> list[_Part]:
    # The units (lines, or words) found exactly once in each list are matched, and the
    # longest run of matches in the same order on both sides kept: they stay in common,
    # and ``between`` diffs the texts between two of them.
    count_a, count_b = Counter(units_a), Counter(units_b)
    where_b = {unit: at for at, unit in enumerate(units_b) if count_b[unit] == 1}
    pairs = [
        (at, where_b[unit])
        for at, unit in enumerate(units_a)
        if count_a[unit] == 1 and unit in where_b
    ]
    parts: list[_Part] = []
    from_a = from_b = 0
    for at_a, at_b in [*_increasing(pairs), (len(units_a), len(units_b))]:
        gone, came = "".join(units_a[from_a:at_a]), "".join(units_b[from_b:at_b])
        if gone or came:
            parts += between(gone, came)
        if at_a < len(units_a):
            parts.append(_Part(units_a[at_a]))
        from_a, from_b = at_a + 1, at_b + 1
    return parts


def _increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    # The longest subsequence of ``pairs`` (in increasing first items) whose second items
    # increase too: patience sorting, O(n log n).
    tails: list[int] = []  # the smallest last second item of a run of each length
    ends: list[int] = []  # which pair ends that run
    before = [-1] * len(pairs)  # the pair before each in its run
    for index, (_at_a, at_b) in enumerate(pairs):
        length = bisect.bisect_left(tails, at_b)
        if length == len(tails):
            tails.append(at_b)
            ends.append(index)
        else:
            tails[length], ends[length] = at_b, index
        before[index] = ends[length - 1] if length else -1
    run: list[tuple[int, int]] = []
    index = ends[-1] if ends else -1
    while index >= 0:
        run.append(pairs[index])
        index = before[index]
    return run[::-1]


def _joined(parts: list[_Part]) -> list[_Part]:
    # Runs as _readable expects them: no empty ones, shared and changed ones alternating.
    out: list[_Part] = []
    for part in parts:
        if not (part.same or part.changed):
            continue
        if out and out[-1].changed == part.changed:
            out[-1].same += part.same
            out[-1].removed += part.removed
            out[-1].added += part.added
        else:
            out.append(part)
    return out


def _readable(parts: list[_Part]) -> list[tuple[str, str]]:
    # A shortest diff can keep a lone space in common between two changes
    # ("-Sunlight +Arr, = +sunlight"): such a space joins the change around it, and
    # white space both sides of a change share moves out of it, so changes read as
    # whole phrases: "-Sunlight +Arr, sunlight = scatters".
    merged: list[_Part] = []
    for at, part in enumerate(parts):
        # Between two changes: one just merged, and one after it (parts alternate).
        island = part.same.isspace() and at < len(parts) - 1 and merged and merged[-1].changed
        if island:
            merged[-1].removed += part.same
            merged[-1].added += part.same
        elif part.changed and merged and merged[-1].changed:
            merged[-1].removed += part.removed
            merged[-1].added += part.added
        else:
            merged.append(part)
    out: list[tuple[str, str]] = []
    for part in merged:
        if not part.changed:
            _same(out, part.same)
            continue
        lead = _shared_space(part.removed, part.added, from_end=False)
        trail = _shared_space(part.removed[lead:], part.added[lead:], from_end=True)
        _same(out, part.removed[:lead])
        removed = part.removed[lead : len(part.removed) - trail]
        added = part.added[lead : len(part.added) - trail]
        if removed:
            out.append(("-", removed))
        if added:
            out.append(("+", added))
        _same(out, part.removed[len(part.removed) - trail :] if trail else "")
    return out


def _same(out: list[tuple[str, str]], text: str) -> None:
    if not text:
        return
    if out and out[-1][0] == "=":
        out[-1] = ("=", out[-1][1] + text)
    else:
        out.append(("=", text))


def _shared_space(first: str, second: str, *, from_end: bool) -> int:
    # How many white-space characters ``first`` and ``second`` share at their start (or
    # end); none unless both sides of the change keep some text besides.
    count = 0
    limit = min(len(first), len(second)) - 1
    while count < limit:
        x = first[-1 - count] if from_end else first[count]
        y = second[-1 - count] if from_end else second[count]
        if x != y or not x.isspace():
            break
        count += 1
    return count
