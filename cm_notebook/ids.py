"""Identifiers: generating them, and refusing hostile, unportable and look-alike ones.

Context ids and message ids become file and folder names, so they are held to a
strict alphabet, and to what every file system accepts: no name Windows reserves for a
device (``con``, ``NUL.json``, ``com1.txt``: the extension does not matter there) and
no trailing dot (Windows drops it, so ``abc.`` would be ``abc``). Two ids that differ
only in case are one folder on Windows and macOS: :func:`id_key` gives what to compare.

Branch names only live inside ``metadata.json``, journal lines and URLs, so they may
contain spaces and non-ASCII letters, but never path separators, ``..``, control
characters or decomposed accents (:func:`validate_branch_name`: every name read, looked
up, stored or imported is held to that). A branch the user makes now must also not be
open to look-alikes (:func:`validate_new_branch_name`): it must be in Unicode normal
form NFKC (no fullwidth letters, ligatures or superscripts), may not mix scripts
(``mаin`` with a Cyrillic ``а``; Latin mixed with Han, kana or Hangul, as Japanese and
Korean write, is fine) and may not have a letter that shows nothing (the Hangul
fillers), nor be drawn two ways (right-to-left letters with digits or signs at an edge).
Names read back (stored, exported, imported) are not held to those rules: earlier
versions made branches without them, and data that has one still opens and moves.
:func:`branch_name_key` folds case, maps the Cyrillic and Greek letters that look Latin
and puts the characters in the order they are drawn, and :func:`check_branch_name_free`
refuses a new name whose key equals an existing branch's, naming that branch.
:func:`free_branch_name` makes the names the package picks itself (an edit's fork, a
fan-out's arms) within all the rules, also from a stem that an older branch's name
brings (:func:`new_branch_stem`).

Every check raises :class:`~cm_notebook.errors.InvalidIdError` with a sentence saying
what was wrong and what is allowed.
"""

from __future__ import annotations

import functools
import os
import random
import re
import time
import unicodedata
from collections.abc import Callable, Iterable

from ._bidi_order import drawn_order, starts_right_to_left
from .errors import InvalidIdError, InvalidInputError

__all__ = [
    "MAX_BRANCH_NAME_LENGTH",
    "MAX_ID_LENGTH",
    "branch_name_key",
    "check_branch_name_free",
    "check_branch_names_free",
    "free_branch_name",
    "id_key",
    "new_branch_stem",
    "new_id",
    "validate_branch_name",
    "validate_context_id",
    "validate_message_id",
    "validate_new_branch_name",
    "without_invisible_letters",
]

MAX_ID_LENGTH = 128
MAX_BRANCH_NAME_LENGTH = 100
_HINT = "Branch names are 1-100 characters: letters, digits, spaces, '_', '-', '.' and '+'."

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Windows reserves these names whatever the extension; refuse them everywhere so a
# data directory can be copied to any machine.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10))} | {
    f"lpt{i}" for i in range(10)
}

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"

# The random half of an id needs to be unique, not secret: a generator seeded from the
# OS once (and again in a forked child, which would otherwise repeat its parent's ids).
# os.urandom per id gave the GIL up for a system call on the event loop's thread, and
# getting it back from a busy store worker cost ~70 us a time, three times a turn.
_random = random.Random()
if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_random.seed)


def new_id(prefix: str) -> str:
    """A new id that sorts by creation time: ``prefix`` + 10 time chars + 10 random chars."""
    millis = time.time_ns() // 1_000_000
    rand = _random.getrandbits(50)
    chars = []
    for _ in range(10):
        chars.append(_CROCKFORD[millis & 31])
        millis >>= 5
    stamp = "".join(reversed(chars))
    tail = []
    for _ in range(10):
        tail.append(_CROCKFORD[rand & 31])
        rand >>= 5
    return f"{prefix}{stamp}{''.join(tail)}"


def _check_id(value: object, kind: str, hint: str) -> str:
    if not isinstance(value, str):
        raise InvalidIdError(f"{kind} must be a string, got {type(value).__name__}. {hint}")
    shown = value if len(value) <= 60 else value[:57] + "..."
    if not value or len(value) > MAX_ID_LENGTH:
        raise InvalidIdError(
            f"{kind} {shown!r} is not valid: it must be 1 to {MAX_ID_LENGTH} characters. {hint}"
        )
    if ".." in value or not _ID_PATTERN.fullmatch(value):
        raise InvalidIdError(
            f"{kind} {shown!r} is not valid: ids may contain only ASCII letters, digits, "
            f"'_', '.' and '-', must start with a letter or digit and may not contain '..'. "
            f"{hint}"
        )
    if value.split(".", 1)[0].lower() in _RESERVED:
        raise InvalidIdError(
            f"{kind} {shown!r} is not valid: Windows reserves {value.split('.', 1)[0]!r} "
            f"for a device, with any extension, so the folder could not be copied there. "
            f"{hint}"
        )
    if value.endswith("."):
        raise InvalidIdError(
            f"{kind} {shown!r} is not valid: it ends with '.', which Windows drops "
            f"(it would be {value.rstrip('.')!r} there). {hint}"
        )
    return value


def validate_context_id(value: object) -> str:
    """Return ``value`` if it is a safe context id, else raise InvalidIdError."""
    return _check_id(
        value, "context id", "List existing ids with ContextSession.list() or `cm-notebook ls`."
    )


def validate_message_id(value: object) -> str:
    """Return ``value`` if it is a safe message id, else raise InvalidIdError."""
    return _check_id(value, "message id", "Use an id from session.history().")


def id_key(value: str) -> str:
    """What a context or message id is compared by where files are named after it: two
    ids with the same key are one file on a case-insensitive file system."""
    return value.lower()


# Scripts that one name may combine: Japanese writes Han with kana, Korean Han with
# Hangul, and both use Latin letters beside them. Any other mix is how look-alikes
# are made (``mаin`` with a Cyrillic ``а``).
_SCRIPT_MIXES = ({"LATIN", "HAN", "KANA"}, {"LATIN", "HAN", "HANGUL"}, {"LATIN", "HAN", "BOPOMOFO"})
_SCRIPT_ALIASES = {"CJK": "HAN", "HIRAGANA": "KANA", "KATAKANA": "KANA"}


def _script(char: str) -> str:
    # The first word of a letter's Unicode name is its script for every script a
    # look-alike is made from (LATIN, CYRILLIC, GREEK, ARMENIAN, CHEROKEE, ...).
    first = unicodedata.name(char, "UNKNOWN").split(" ", 1)[0]
    return _SCRIPT_ALIASES.get(first, first)


def _mixed_scripts(value: str) -> tuple[str, str] | None:
    """(main script, first letter of the rarest other script) if ``value`` mixes them."""
    first: dict[str, str] = {}
    counts: dict[str, int] = {}
    for char in value:
        if unicodedata.category(char)[0] == "L":
            script = _script(char)
            first.setdefault(script, char)
            counts[script] = counts.get(script, 0) + 1
    if len(counts) < 2 or any(set(counts) <= allowed for allowed in _SCRIPT_MIXES):
        return None
    # The odd letter out is the one a reader would not expect: the rarest script's.
    main = max(counts, key=lambda s: counts[s])
    odd = min((s for s in counts if s != main), key=lambda s: counts[s])
    return main, first[odd]


# Cyrillic and Greek letters (after case folding) that look like a Latin letter in
# common fonts, from Unicode's confusables data. Whole-script look-alikes (``раре``
# all Cyrillic) pass the mixed-script rule; this map lets them be caught as look-alikes.
_LOOK_ALIKES = str.maketrans(
    "авсԁеһіјкӏмноԛрѕтуԝхαβεηικνορτυχ",
    "abcdehijklmhoqpstywxabenikvoptux",
)
# Hangul fillers: letters (category Lo) that show nothing, so "ma<filler>in" reads "main".
_INVISIBLE_LETTERS = "\u115f\u1160\u3164\uffa0"
_WITHOUT_INVISIBLE = str.maketrans("", "", _INVISIBLE_LETTERS)


@functools.lru_cache(maxsize=16384)  # every create compares with every branch (a sweep's 10,000)
def branch_name_key(name: str) -> str:
    """What a branch name is compared by: NFKC, case-folded, look-alike letters mapped
    to the Latin ones they resemble, in the order the characters are drawn (``שלום-2``
    and ``2-שלום`` are both drawn ``2-םולש`` in a left-to-right page). Two names with
    one key look the same."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return drawn_order(unicodedata.normalize("NFKC", folded).translate(_LOOK_ALIKES))


def check_branch_name_free(name: str, existing: Iterable[str]) -> str:
    """Return ``name`` unless it looks like one of ``existing`` (but is not it).

    Raises InvalidIdError naming the existing branch, so a reader of a list of
    branches can never see two that look the same. The exact name is left to the
    caller's own "already exists" check.
    """
    check_branch_names_free([name], existing)
    return name


def check_branch_names_free(names: Iterable[str], existing: Iterable[str]) -> None:
    """:func:`check_branch_name_free` for each of ``names`` in turn, each one then
    counted as existing; in time linear in the number of names (a sweep's 10,000)."""
    keys = {branch_name_key(other): other for other in existing}
    for name in names:
        other = keys.setdefault(branch_name_key(name), name)
        if other != name:
            raise _looks_like(name, other)


def free_branch_name(stem: str, taken: Callable[[str], bool], *, bare: bool = False) -> str:
    """The first of ``<stem>-1``, ``<stem>-2``... (``<stem>``, ``<stem>-2``... if
    ``bare``) for which ``taken(name)`` is false.

    ``taken`` should compare by :func:`branch_name_key`, as creating a branch does, so
    the name neither is nor looks like an existing one. The stem is cut as far as
    needed for the name to fit the length limit, and made fit for a new name
    (:func:`new_branch_stem`): a fork of a 95-character branch, or of one an earlier
    version named ``β-test``, must not fail with an error about a name the user never
    typed. Raises InvalidInputError after 9999 names taken.
    """
    stem = new_branch_stem(stem)
    for n in range(1, 10_000):
        suffix = "" if bare and n == 1 else f"-{n}"
        name = _cut(stem, MAX_BRANCH_NAME_LENGTH - len(suffix)) + suffix
        if not taken(name):
            return name
    raise InvalidInputError(f"no free branch name starting with {stem!r}")


def _cut(text: str, length: int) -> str:
    # ``text`` cut to ``length`` characters, not ending in " ", "." or "-" where cut
    # (a bare stem is a name of its own, and may not end in a space).
    if len(text) <= length:
        return text
    cut = text[:length]
    return cut.rstrip(" .-") or cut


def validate_new_branch_name(value: object) -> str:
    """:func:`validate_branch_name`, and the rules only a branch made now is held to, so
    that its name cannot pass for another: Unicode form NFKC, one script (or one of the
    mixes Japanese and Korean write), no letter that shows nothing (a Hangul filler).

    Not applied to names read back (stored, exported, imported): an earlier version
    made branches without these rules (``β-test``, ``x²``), and they still open.
    """
    name = validate_branch_name(value)
    shown = name if len(name) <= 60 else name[:57] + "..."
    if unicodedata.normalize("NFKC", name) != name:
        raise InvalidIdError(
            f"branch name {shown!r} is not valid: it has compatibility characters "
            f"(fullwidth letters, ligatures, superscripts) that stand for others; use "
            f"{unicodedata.normalize('NFKC', name).translate(_WITHOUT_INVISIBLE)!r}. {_HINT}"
        )
    mixed = _mixed_scripts(name)
    if mixed is not None:
        script, char = mixed
        raise InvalidIdError(
            f"branch name {shown!r} is not valid: it mixes {script.title()} letters with "
            f"{char!r} ({unicodedata.name(char, '?').title()}), which makes look-alikes of "
            f"other names; write it in one script. {_HINT}"
        )
    _refuse_invisible_letters(name)
    _refuse_two_ways_drawn(name, shown)
    return name


def _refuse_two_ways_drawn(name: str, shown: str) -> None:
    # A name that starts with a right-to-left letter is drawn right to left where a
    # page isolates it (``<bdi>``), left to right where it does not; if the two differ
    # (digits or signs at its edges move), it looks like another name in one of them:
    # ``2-שלום`` drawn left to right is ``שלום-2``'s ``2-םולש``.
    if not starts_right_to_left(name):
        return
    if drawn_order(name) != drawn_order(name, right_to_left=True):
        raise InvalidIdError(
            f"branch name {shown!r} is not valid: the digits or signs at its start or end "
            "are drawn on one side of its right-to-left letters in some views and on the "
            "other side in others, where it can pass for another name; start it with a "
            f"letter and end it with a letter or a digit. {_HINT}"
        )


def _fit_stem(stem: str) -> bool:
    # Whether a new branch may be named after ``stem`` (as cut to fit the length limit).
    try:
        validate_new_branch_name(_cut(stem, MAX_BRANCH_NAME_LENGTH))
    except InvalidIdError:
        return False
    return True


def new_branch_stem(stem: str) -> str:
    """``stem`` (from which the package names a branch: ``<branch>-edit``) as close as
    can be that a new branch may be named after: itself if it may.

    A stem from a branch an earlier version named is made plain: compatibility forms
    become what they stand for (``x²`` becomes ``x2``, ``ﬁnal`` ``final``), a letter
    that shows nothing goes, any other character not allowed in a name becomes ``-``,
    in a name of mixed scripts letters that look Latin become Latin (``β-test`` becomes
    ``b-test``) and then the letters of a script still mixed in are left out.
    ``branch`` if nothing is left.
    """
    if _fit_stem(stem):
        return stem
    text = unicodedata.normalize("NFKC", stem.translate(_WITHOUT_INVISIBLE))
    # NFKC may spell a character with ones a name may not hold ("½" has a fraction slash).
    text = "".join(
        c if c in "_-.+ " or unicodedata.category(c)[0] in "LN" or _own_mark(p, c) else "-"
        for p, c in zip(" " + text, text, strict=False)
    )
    text = re.sub(r"\.{2,}", ".", text)
    if _mixed_scripts(text) is not None:
        text = "".join(_as_latin(char) for char in text)
    while (mixed := _mixed_scripts(text)) is not None:
        odd = _script(mixed[1])
        text = "".join(c for c in text if unicodedata.category(c)[0] != "L" or _script(c) != odd)
    text = unicodedata.normalize("NFKC", text).strip(" .-")
    return text if _fit_stem(text) else "branch"


def _as_latin(char: str) -> str:
    # The Latin letter ``char`` looks like (in its case), or ``char``.
    lower = char.lower()
    latin = lower.translate(_LOOK_ALIKES)
    if latin == lower or len(lower) != 1:
        return char
    return latin if char == lower else latin.upper()


def without_invisible_letters(name: str) -> str:
    """``name`` without the letters that show nothing (see :func:`validate_new_branch_name`)."""
    return name.translate(_WITHOUT_INVISIBLE)


def _refuse_invisible_letters(name: str) -> None:
    hidden = next((char for char in name if char in _INVISIBLE_LETTERS), None)
    if hidden is not None:
        raise InvalidIdError(
            f"branch name {name!r} is not valid: it has {hidden!r} "
            f"({unicodedata.name(hidden, '?').title()}), a letter that shows nothing, so "
            f"the name looks like {name.translate(_WITHOUT_INVISIBLE)!r}; leave it out."
        )


def _looks_like(name: str, other: str) -> InvalidIdError:
    return InvalidIdError(
        f"branch name {name!r} looks like the existing branch {other!r} (they differ "
        f"only in case or in letters that look alike); use {other!r}, or a name that "
        "reads differently."
    )


def validate_branch_name(value: object) -> str:
    """Return ``value`` if it is a well-formed branch name, else raise InvalidIdError.

    What every name read, looked up, stored or imported is held to: 1-100 characters,
    letters, digits, spaces and ``_-.+`` (never a path separator, ``..`` or a control
    character), no white space at either end, Unicode form NFC. A letter may carry the
    marks its own script writes it with (Devanagari's vowel signs, Thai's tone marks,
    Hebrew's and Arabic's points), not Latin, Greek or Cyrillic ones, which NFC has
    composed into the letter where one exists. A branch made now is
    held to :func:`validate_new_branch_name` too.
    """
    if not isinstance(value, str):
        raise InvalidIdError(f"branch name must be a string, got {type(value).__name__}. {_HINT}")
    shown = value if len(value) <= 60 else value[:57] + "..."
    if not value or len(value) > MAX_BRANCH_NAME_LENGTH:
        raise InvalidIdError(f"branch name {shown!r} is not valid: wrong length. {_HINT}")
    if value != value.strip():
        raise InvalidIdError(
            f"branch name {shown!r} is not valid: it starts or ends with white space. {_HINT}"
        )
    if ".." in value:
        raise InvalidIdError(f"branch name {shown!r} is not valid: it contains '..'. {_HINT}")
    if unicodedata.normalize("NFC", value) != value:
        # Two spellings of one visible name (decomposed accents, the Angstrom sign) would
        # make two branches that look identical in every view.
        raise InvalidIdError(
            f"branch name {shown!r} is not valid: it is not in Unicode normal form C; "
            f"use {unicodedata.normalize('NFC', value)!r}. {_HINT}"
        )
    previous, marks = "", 0
    for char in value:
        category = unicodedata.category(char)
        # A letter takes at most three marks (Hebrew's shin, dagesh and vowel): a stack
        # of more draws over itself, and over its neighbours.
        marks = marks + 1 if category[0] == "M" else 0
        if char in "_-.+ " or category[0] in "LN" or (_own_mark(previous, char) and marks <= 3):
            previous = char
            continue
        raise InvalidIdError(
            f"branch name {shown!r} is not valid: character {char!r} is not allowed. {_HINT}"
        )
    return value


#: Whose marks are letters' accents: Latin, Greek and Cyrillic have a precomposed
#: letter for each accent in use (NFC composes them), so a mark left over is an overlay
#: (``main\u0338``) or a stack, not a letter's part.
_PRECOMPOSED_SCRIPTS = frozenset({"LATIN", "GREEK", "CYRILLIC", "COMBINING"})


#: Marks that draw nothing (Unicode's default-ignorable ones of scripts whose marks are
#: allowed): ``main-ក`` and ``main-ក឴`` would look the same.
_INVISIBLE_MARKS = frozenset("\u17b4\u17b5\u180b\u180c\u180d\u180f")


def _own_mark(previous: str, char: str) -> bool:
    # Whether ``char`` is a mark of the script of the letter (or mark) before it: a
    # vowel sign, virama or point, with which Devanagari, Thai, Arabic, Hebrew... write
    # their letters (``हिंदी``, ``ที่``), and which NFC leaves as they are. Not one that
    # draws nothing, nor the mark before it again (``ที่่`` draws as ``ที่``).
    if not previous or unicodedata.category(char)[0] != "M":
        return False
    if unicodedata.category(previous)[0] not in "LM" or char in _INVISIBLE_MARKS:
        return False
    script = _script(char)
    return script not in _PRECOMPOSED_SCRIPTS and _script(previous) == script and char != previous
