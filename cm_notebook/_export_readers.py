"""How readers other than CommonMark read the Markdown export (for :mod:`._export_markdown`).

The export judges from a CommonMark parse what is code, kept as typed, and where a
paragraph's code spans are. nbconvert's reader (mistune, with nbconvert's math and
definition lists) ends containers at other lines: it runs a quote or a list item on
over lazy lines, a definition over a run of lines (without their indent), adds a line
it does not take as a block to the last paragraph it read however far back, and reads
display math before any other block. What is here keeps those differences from making
markup of anything kept as typed: which paragraphs' code spans every reader pairs
alike, where a fence in a container needs its closing line and a list a blank line
before it, and which display math to escape.
"""

from __future__ import annotations

import bisect
import itertools
import re

__all__ = [
    "BACKTICKS",
    "fence_closing",
    "kept_paragraphs",
    "needs_blank_before",
    "without_math_over_code",
]

#: A run of backticks, which opens or closes a code span.
BACKTICKS = re.compile("`+")

#: A line nbconvert may add to the last paragraph it read, however far back, when it
#: is not a block of its own: an indented line, a label, an item of a list not
#: starting at 1 (each of them: nbconvert makes no list of them), or a line that looks
#: like one and is in no list starting at 1.
_APPENDED = re.compile(r"[ \t>]*(?:(?:[-+*]|\d{1,9}[.)])[ \t]+)*(?:[ ]{4}|\t|\[)")
_LIST_FROM_2 = re.compile(r"[ \t>]*(?:[-+*][ \t]+)*(?!0*1[.)])\d{1,9}[.)]")
#: An empty first list item (nbconvert adds it to a paragraph before it), and a list
#: item's mark.
_EMPTY_ITEM = re.compile(r"[ \t>]*(?:[-+*]|\d{1,9}[.)])[ \t]*$")
_ITEM_MARK = re.compile(r"[-+*]|\d{1,9}[.)]")
#: A line that opens a list item with text: never read as going on with the lines
#: before it (a list from 2 aside, above). A quote's line is: nbconvert runs a quote
#: on over the lines after it, and the next quote line joins them.
_OPENS_CONTAINER = re.compile(r" {0,3}(?:[-+*]|\d{1,9}[.)])[ \t]+\S")
#: What, in a paragraph, may make a reader pair its backticks otherwise (see
#: :mod:`._export_markdown`): also a bare address, which some readers (nbconvert's)
#: make a link that runs on into a code span.
_UNSURE_PAIRING = ("](", "|", "$", "\\", "://", "www.")

#: Display math as nbconvert reads it, before any other block, from any line or place
#: in one: ``$$`` (not after a backslash) to the next ``$$``, ``\\[`` to ``\\]``,
#: ``\begin{x}`` to ``\end{x}``. The openings, then where each kind closes.
_MATH_OPENING = re.compile(r"(?<!\\)\$\$|\\\\\[|\\begin\{([a-z]*\*?)\}")
_DOLLARS_CLOSING = re.compile(r"(?<!\\)(?=\$\$)")
_LATEX_CLOSING = re.compile(r"(?=\\\\\])")
_ENVIRONMENT_CLOSING = re.compile(r"\\end\{([a-z]*\*?)\}")


def needs_blank_before(line: str, *, from_1: bool) -> bool:
    """Whether a top-level list opening on ``line`` (starting at 1 or with bullets:
    ``from_1``) needs a blank line before it for nbconvert to open it there."""
    # Else nbconvert adds a list from 2, or an empty first item, to a paragraph before
    # (however far back), and reads the items' text, a fence in them, as its own.
    return not from_1 or bool(_EMPTY_ITEM.match(line))


def fence_closing(lines: list[str], start: int, end: int, markup: str) -> dict[int, str]:
    """For a fence in a list or a quote (``lines[start:end]``, opened by ``markup``)
    that CommonMark closes only where its container ends: its closing line, by the
    line after which it goes (its last with text), in the container (the opening
    line's marks, a list item's as spaces); else nothing."""
    # A reader that ends the container elsewhere, or takes the fence out of it, would
    # leave it open, to run into the next message and be closed by its fence.
    last = lines[end - 1].strip(" \t>")
    if end - start > 1 and set(last) == {markup[0]} and len(last) >= len(markup):
        return {}
    opening = lines[start]
    marks = _ITEM_MARK.sub(lambda mark: " " * len(mark[0]), opening[: opening.index(markup)])
    after = max(
        (number for number in range(start, end) if lines[number].strip(" \t>")), default=start
    )
    return {after: marks + markup}


def kept_paragraphs(
    lines: list[str], paragraphs: dict[int, int], apart: set[int], from_1: set[int]
) -> dict[int, int]:
    """Of ``paragraphs`` (first line -> end), those whose backticks every reader pairs
    as CommonMark does, so their code spans can be kept as typed. ``apart``: lines
    set apart by blank lines (code blocks), ``from_1``: the first lines of the items
    of lists starting at 1 (or with bullets)."""
    # Readers end containers at other lines, so a paragraph's lines may be parted, or
    # joined after lines before them: nbconvert runs a quote or a list item on over
    # lines CommonMark leaves out, a definition list over a whole run of lines, and
    # adds a line it does not take as a block (``appended``: a list starting at 2, an
    # indented line) to the last paragraph it read, however far back. Parted, each
    # line must pair its own backticks; joined, no line before it may leave a run
    # unpaired (or read its runs otherwise) of a length the paragraph has: such a run
    # would take one of its own.
    appended = {
        number
        for number, line in enumerate(lines)
        if _APPENDED.match(line) or (_LIST_FROM_2.match(line) and number not in from_1)
    }
    kept: dict[int, int] = {}
    in_run: set[int] = set()  # lengths unsafe since the last blank line
    in_stretch: set[int] = set()  # ... since the last code block (0: any length)
    for number, line in enumerate(lines):
        if number in apart:
            in_run, in_stretch = set(), set()
            continue
        if not line.strip():
            in_run = set()
            continue
        if number in paragraphs:
            end = paragraphs[number]
            block = lines[number:end]
            lengths = {len(run) for part in block for run in BACKTICKS.findall(part)}
            if appended & set(range(number, end)):
                unsafe = in_stretch
            else:
                unsafe = set() if _OPENS_CONTAINER.match(line) else in_run
            if (
                not any(map(_left_over, block))
                and not any(mark in "\n".join(block) for mark in _UNSURE_PAIRING)
                and not (0 in unsafe or lengths & unsafe)
            ):
                kept[number] = end
        left = _unpaired(line)
        in_run |= left
        in_stretch |= left
    return kept


def _unpaired(line: str) -> set[int]:
    # The lengths of the backtick runs ``line`` may leave unpaired (or read otherwise)
    # in a paragraph some reader joins it to; 0 if it may take the next line's start
    # (a link destination there).
    left = {0} if line.rstrip().endswith("](") else set()
    if any(mark in line for mark in _UNSURE_PAIRING):
        return left | {len(run) for run in BACKTICKS.findall(line)}
    return left | _left_over(line)


def _left_over(line: str) -> set[int]:
    # The lengths of the backtick runs in ``line`` that pair with none on the line:
    # CommonMark pairs a run with the next one of its length.
    runs = [len(run) for run in BACKTICKS.findall(line)]
    later: dict[int, list[int]] = {}  # a run length -> the runs of it, by position
    for at, length in enumerate(runs):
        later.setdefault(length, []).append(at)
    left: set[int] = set()
    at = 0
    while at < len(runs):
        same = later[runs[at]]
        after = bisect.bisect_right(same, at)
        if after == len(same):
            left.add(runs[at])
            at += 1
        else:
            at = same[after] + 1
    return left


def without_math_over_code(lines: list[str], code: set[int], raw: set[int]) -> list[str]:
    """``lines`` with the display math that nbconvert would read over text kept as
    typed (``raw``: code, in ``code``, and lines with inline code) made text."""
    # nbconvert adds math to the paragraph before it, where a stray backtick can start
    # a span that takes its opening, and may start it mid-line or inside a container
    # that ends before it closes (its closing then opens math instead): so math is
    # kept only where nothing but math can start it, at a line's start after a blank
    # line (added if missing), closed before any raw line. Any other opening is
    # escaped: ``\$\$``, ``\\&#91;``, ``&#92;begin``; but for one inside a line of a
    # paragraph that starts with a letter after a blank line, and goes on with such
    # lines: nbconvert reads those lines as one paragraph at once, and math in it
    # stays there.
    text = "\n".join(lines)
    starts = list(itertools.accumulate((len(line) + 1 for line in lines[:-1]), initial=0))
    dollars = [match.start() for match in _DOLLARS_CLOSING.finditer(text)]
    latex = [match.start() for match in _LATEX_CLOSING.finditer(text)]
    environments: dict[str, list[int]] = {}
    for match in _ENVIRONMENT_CLOSING.finditer(text):
        environments.setdefault(match[1], []).append(match.end())
    raw_lines = sorted(raw)
    prose: set[int] = set()
    for number, words in enumerate(lines):
        after = number == 0 or not lines[number - 1].strip() or number - 1 in prose
        if after and words[:1].isalpha() and "|" not in words and number not in code:
            prose.add(number)
    pieces: list[str] = []
    done = at = 0
    while opening := _MATH_OPENING.search(text, at):
        line = bisect.bisect_right(starts, opening.start()) - 1
        if line in code:  # read as code: opens nothing
            at = starts[line + 1] if line + 1 < len(starts) else len(text)
            continue
        if line in prose:
            at = opening.end()
            continue
        if opening[0] == "$$":
            close = _first_after(dollars, opening.end())
            end = None if close is None else close + 2
        elif opening[1] is None:
            close = _first_after(latex, opening.end())
            end = None if close is None else close + 3
        else:
            end = _first_after(environments.get(opening[1], []), opening.end())
        if end is not None and opening.start() == starts[line]:
            last = bisect.bisect_right(starts, end - 1) - 1
            over = _first_after(raw_lines, line)
            if over is None or over > last:  # math, kept
                if line and lines[line - 1].strip():
                    pieces += [text[done : starts[line]], "\n"]
                    done = starts[line]
                at = end
                continue
        if opening[0] == "$$":
            run_end = opening.start()
            while text[run_end : run_end + 1] == "$":
                run_end += 1
            pieces += [text[done : opening.start()], "\\$" * (run_end - opening.start())]
            done = at = run_end
        elif opening[1] is None:
            pieces += [text[done : opening.end() - 1], "&#91;"]
            done = at = opening.end()
        else:
            pieces += [text[done : opening.start()], "&#92;"]
            done = opening.start() + 1
            at = opening.end()
    pieces.append(text[done:])
    return "".join(pieces).split("\n")


def _first_after(positions: list[int], at: int) -> int | None:
    # The first of the sorted ``positions`` at or after ``at``, if any.
    index = bisect.bisect_left(positions, at)
    return positions[index] if index < len(positions) else None
