"""Text that UTF-8 can hold: halves of UTF-16 surrogate pairs made whole or replaced.

Python strings may hold lone surrogates (U+D800-U+DFFF): JSON's ``"\\ud83d"`` (an emoji
cut in two by a JavaScript front end, or a stream split between its two halves) decodes
to one. UTF-8 cannot encode them, so a store that writes UTF-8 JSON must not be handed
them. :func:`scrub` joins the halves that form a pair (two chunks of one emoji) and
replaces the others with U+FFFD, the replacement character, so the rest of the text is
kept.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from .errors import InvalidInputError

__all__ = [
    "REPLACEMENT",
    "control_characters",
    "for_terminal",
    "grapheme_prefix",
    "has_surrogates",
    "json_for_terminal",
    "one_line_for_display",
    "refuse_control_characters",
    "scrub",
    "without_controls",
    "without_surrogates",
]

#: What a lone half of a surrogate pair becomes.
REPLACEMENT = "\ufffd"

_SURROGATE = re.compile("[\ud800-\udfff]")


#: What a terminal acts on rather than shows: C0 controls but line feed and tab, DEL,
#: C1 controls, the line and paragraph separators, and the bidirectional overrides and
#: isolates that reorder a line.
_TERMINAL_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def for_terminal(text: str) -> str:
    """``text`` with every character a terminal would act on shown as its escape
    (``\\x1b``), so that printing a model's reply cannot clear the screen, retitle
    the window, hide text or reorder a line."""
    return _TERMINAL_CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def one_line_for_display(text: str) -> str:
    """``text`` as :func:`for_terminal` shows it, and its line feeds and tabs as escapes
    too (``\\n``, ``\\t``): for a name shown on one line (who decided, who rated)
    stored before such names refused control characters."""
    return for_terminal(text).replace("\n", "\\n").replace("\t", "\\t")


def json_for_terminal(text: str) -> str:
    """JSON text with the characters :func:`for_terminal` escapes written as ``\\uXXXX``
    escapes: the same JSON value, shown on a terminal without acting on it.

    JSON allows no raw control character outside a string and ``json.dumps`` escapes
    C0 controls inside one, so what is left (DEL, C1 controls, separators, bidi
    overrides) is inside strings, where ``\\uXXXX`` means the same character.
    """
    return _TERMINAL_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def has_surrogates(text: str) -> bool:
    """Whether ``text`` holds any UTF-16 surrogate code point."""
    return _SURROGATE.search(text) is not None


def without_surrogates(text: str) -> str:
    """``text`` with surrogate pairs joined into their character and lone halves
    replaced by U+FFFD (``text`` itself when it has none)."""
    if not has_surrogates(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def scrub(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string, keys
    included, passed through :func:`without_surrogates`."""
    if isinstance(value, str):
        return without_surrogates(value)
    if isinstance(value, dict):
        return {scrub(key): scrub(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    return value


#: The line and paragraph separators, and the bidirectional embeddings, overrides and
#: isolates: no control characters to Unicode (they are format characters), but they
#: break a line or reorder it wherever it is shown.
_LAYOUT = re.compile("[\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def control_characters(text: str, *, lines: bool = False, layout: bool = False) -> list[str]:
    """The control characters in ``text`` as ``U+XXXX``, each once, sorted (C0 and C1
    controls and DEL); with ``lines``, line feeds and tabs are text, and so is a
    carriage return that ends a line (``\\r\\n``). With ``layout``, the line and
    paragraph separators (U+2028, U+2029) and the bidirectional overrides, embeddings
    and isolates (U+202A-U+202E, U+2066-U+2069) count too: for text that must stay one
    line, shown as written (a label).

    For names and labels that lists and terminals show: an escape sequence or a NUL in
    them garbles every list they appear in, so they are refused where they enter. A
    carriage return of its own sends a terminal back to the start of the line, where
    the text after it hides the text before.
    """
    found = set()
    for at, c in enumerate(text):
        if not (c < " " or "\x7f" <= c <= "\x9f" or (layout and _LAYOUT.match(c))):
            continue
        if lines and (c in "\n\t" or text.startswith("\r\n", at)):
            continue
        found.add(f"U+{ord(c):04X}")
    return sorted(found)


# A terminal's escape sequences, each taken whole, in their 7-bit and C1 forms: CSI
# (colours, cursor moves, clearing the screen), and OSC (a window title, a hyperlink)
# when terminated. An OSC's text holds no control character, so a search for its end
# never runs past the next one (a lone ESC is a control character like any other).
_CSI = "(?:\x1b\\[|\x9b)[0-?]*[ -/]*[@-~]"
_OSC = "(?:\x1b\\]|\x9d)[^\x00-\x1f\x7f-\x9f]*(?:\x07|\x1b\\\\|\x9c)"
_ESCAPE_SEQUENCE = re.compile(f"{_CSI}|{_OSC}")
#: The control characters that are not white space (white space is a word's end).
_NOT_SPACE_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")


def without_controls(text: str) -> str:
    """``text`` without terminal escape sequences (whole: ``"\\x1b[31mRed"`` gives
    ``"Red"``) and without the control characters :func:`control_characters` finds,
    but those that are white space (line breaks, tabs...), which are left for the
    caller to fold: for a name made from text that may hold them, such as a title."""
    return _NOT_SPACE_CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", text))


def refuse_control_characters(
    text: str, what: str, *, lines: bool = False, layout: bool = False, advice: str = ""
) -> None:
    """Raise InvalidInputError naming the control characters in ``text`` (see
    :func:`control_characters`, with ``lines`` and ``layout``); ``what`` names the text,
    e.g. ``"the tag 'x'"``; ``advice`` follows "remove them" (e.g. what the text is)."""
    found = control_characters(text, lines=lines, layout=layout)
    if found:
        kept = " (line breaks and tabs may stay)" if lines else ""
        raise InvalidInputError(
            f"{what} cannot contain control characters (found {', '.join(found[:5])}); "
            f"remove them{kept}{advice}"
        )


# Characters that attach to the one before them, so no cut may fall just before them:
# zero width joiner, variation selectors, emoji skin-tone modifiers, tag characters
# (subdivision flags), and Hangul conjoining vowels and finals.
_EXTENDS = re.compile(
    "[\u200d\ufe00-\ufe0f\U000e0100-\U000e01ef\U0001f3fb-\U0001f3ff"
    "\U000e0020-\U000e007f\u1160-\u11ff\ud7b0-\ud7ff]"
)
_REGIONAL = re.compile("[\U0001f1e6-\U0001f1ff]")


def _boundary(text: str, at: int) -> bool:
    # Whether a cut between text[at - 1] and text[at] leaves every user-perceived
    # character (grapheme cluster) whole: no mark torn from its letter, no emoji
    # sequence split at a joiner or modifier, no flag cut between its two letters.
    before, after = text[at - 1], text[at]
    if before == "\r" and after == "\n":
        return False
    if before == "\u200d" or _EXTENDS.match(after):
        return False
    if unicodedata.category(after) in ("Mn", "Mc", "Me"):
        return False
    if _REGIONAL.match(after) and _REGIONAL.match(before):
        # Regional indicators pair up from the start of their run: a cut after an
        # odd number of them falls inside a flag.
        run = at
        while run > 0 and _REGIONAL.match(text[run - 1]):
            run -= 1
        return (at - run) % 2 == 0
    return True


def grapheme_prefix(text: str, limit: int) -> str:
    """The longest start of ``text`` of at most ``limit`` code points that ends between
    two user-perceived characters: a cut there drops no accent, splits no flag or
    emoji sequence (``""`` when the first such character is longer than ``limit``)."""
    if len(text) <= limit:
        return text
    at = max(limit, 0)
    while at > 0 and not _boundary(text, at):
        at -= 1
    return text[:at]
