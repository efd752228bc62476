"""Magic lines into validated pydantic models, or one-line usage errors.

A magic's arguments are described by a pydantic model (see :mod:`._args`); this module
splits the line like a shell (``shlex``), sorts the words into positionals and options
from the model's fields, and validates. Every failure (an unknown option, a missing
value, a value of the wrong type, an unbalanced quote) becomes a
:class:`~IPython.core.error.UsageError`: IPython prints its message as one line, not a
traceback.

Options are the model's fields spelled ``--name`` (underscores as dashes), plus the
short aliases a model lists in ``SHORT``. A ``bool`` field is a flag; a ``list`` field
takes every word up to the next word that starts with ``--`` or is a short alias
(``--ab "A" "B" --temperature=0``); other fields take one word.
The fields named in ``POSITIONAL`` take the leading non-option words in order, and the
field named in ``REST`` (if any) takes all remaining ones (as a list, or joined by
spaces for a ``str`` field).
"""

from __future__ import annotations

import difflib
import re
import shlex
import types
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

from IPython.core.error import UsageError
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator

__all__ = ["MagicArgs", "did_you_mean", "parse_args", "parse_text_args", "split_words"]


class MagicArgs(BaseModel):
    """Base of every magic's argument model: forbids unknown fields, names its usage."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    #: The usage line shown with every error, e.g. ``"%cm send TEXT"``.
    USAGE: ClassVar[str] = ""
    #: Fields filled by the leading non-option words, in order.
    POSITIONAL: ClassVar[tuple[str, ...]] = ()
    #: The field that takes the remaining non-option words (None: extra words are an error).
    REST: ClassVar[str | None] = None
    #: Short option aliases, e.g. ``{"-f": "format"}``.
    SHORT: ClassVar[dict[str, str]] = {}

    #: The option :func:`parse_text_args` took from the end of the line, as typed
    #: (``--branch main``), if any: a command may say it was not taken as text.
    _from_end: str | None = PrivateAttr(default=None)

    @property
    def from_end(self) -> str | None:
        """The option taken from the end of the line, as typed (None: none was)."""
        return self._from_end

    @field_validator("branch", check_fields=False)
    @classmethod
    def _a_branch_is_named(cls, value: object) -> object:
        # ``--branch ''`` is no branch: some commands took it for the active one (and
        # stopped its reply), others refused it. Every one refuses it now.
        if isinstance(value, str) and not value:
            raise ValueError("give a branch name, or leave --branch out for the active branch")
        return value


M = TypeVar("M", bound=MagicArgs)


def split_words(line: str, usage: str) -> list[str]:
    """Split ``line`` like a shell; an unbalanced quote is a usage error."""
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"{exc} in {line!r}. Usage: {usage}") from exc


def _is_list(model: type[MagicArgs], name: str) -> bool:
    return _kind(model, name) is list


def _kind(model: type[MagicArgs], name: str) -> type | None:
    # The outer type of a field (``list``, ``bool``...), looking through ``X | None``.
    annotation = typing.get_type_hints(model)[name]
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = inner[0] if len(inner) == 1 else annotation
        origin = typing.get_origin(annotation)
    if origin is not None:
        return origin if isinstance(origin, type) else None
    return annotation if isinstance(annotation, type) else None


def _option_names(model: type[MagicArgs]) -> dict[str, str]:
    names = {f"--{field.replace('_', '-')}": field for field in model.model_fields}
    for positional in (*model.POSITIONAL, model.REST):
        if positional is not None:
            names.pop(f"--{positional.replace('_', '-')}", None)
    return {**names, **model.SHORT}


#: One option word and its value at the start (or the end) of a free-text line: the
#: value is a quoted string or a bare word.
_VALUE = r"""(?:"[^"]*"|'[^']*'|[^\s"'=][^\s]*)"""
_LEADING_OPTION = re.compile(rf"\s*(--[\w-]+)(?:=|\s+)({_VALUE})(?=\s|$)")
_TRAILING_OPTION = re.compile(rf"\s(--[\w-]+)(?:=|\s+)({_VALUE})\s*$")
#: ``--`` as a word of its own after the leading options: the rest is text.
_END_OF_OPTIONS = re.compile(r"\s*--(?:\s+|$)")


def parse_text_args(model: type[M], line: str) -> M:
    """Parse a line whose free text (``model.REST``) is kept exactly as typed.

    Options may come before the text or, for a known option, as its last two words
    (``--branch B``); everything between them is the text, quotes included: a message
    is not shell words (``Define "serendipity"`` keeps its quotes, ``What's up`` is
    not an unbalanced quote). ``--`` ends the options: the rest of the line is the
    text, even one that starts with an option or ends with a known one
    (``-- what does --branch B do``).
    """
    options = _option_names(model)
    words: list[str] = []
    text = line
    while match := _LEADING_OPTION.match(text):
        if match.group(1) not in options:
            break  # reported below, with the rest of the line
        if match.group(2) == "--":  # "--branch -- text": the value was forgotten
            raise UsageError(f"{match.group(1)} needs a value. Usage: {model.USAGE}")
        words += [match.group(1), _unquote(match.group(2), model.USAGE)]
        text = text[match.end() :]
    if end := _END_OF_OPTIONS.match(text):
        text = text[end.end() :]
        if not text.strip():
            raise UsageError(f"the text after -- is missing. Usage: {model.USAGE}")
        return parse_args(model, words, rest=text)
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    if first.startswith("--"):
        # An option that is unknown, or known but without a value: parse_args says so.
        parse_args(model, [first])
    from_end = None
    if (match := _TRAILING_OPTION.search(text)) and match.group(1) in options:
        # Only a known option is taken from the end: "what does --verbose do" is text.
        words += [match.group(1), _unquote(match.group(2), model.USAGE)]
        from_end = match.group(0).strip()
        text = text[: match.start()]
    if not text.strip():
        raise UsageError(f"the text is missing. Usage: {model.USAGE}")
    parsed = parse_args(model, words, rest=text)
    parsed._from_end = from_end
    return parsed


def _unquote(value: str, usage: str) -> str:
    return split_words(value, usage)[0] if value[:1] in "\"'" else value


def parse_args(model: type[M], words: list[str], *, rest: str | None = None) -> M:
    """Sort ``words`` into ``model``'s positionals and options, and validate them.

    ``rest``, if given, is the value of ``model.REST`` as it stands (see
    :func:`parse_text_args`); then every word must be an option.
    """
    usage = model.USAGE
    options = _option_names(model)
    values: dict[str, Any] = {}
    loose: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-") and len(word) > 1 and not _is_number(word):
            option, eq, inline = word.partition("=")
            field = options.get(option)
            if field is None:
                hint = did_you_mean(option, options)
                raise UsageError(f"unknown option {option!r}{hint}. Usage: {usage}")
            if field in values:
                raise UsageError(f"{option} is given twice. Usage: {usage}")
            kind = _kind(model, field)
            if kind is bool:
                if eq:
                    # "--all=no" must not stop everything: a flag is on when given.
                    raise UsageError(
                        f"{option} takes no value (got {inline!r}): give {option} alone, "
                        f"or leave it out. Usage: {usage}"
                    )
                values[field] = True
                i += 1
                continue
            if kind is list:
                taken = [inline] if eq else []
                i += 1
                while i < len(words) and not _ends_list(words[i], options):
                    taken.append(words[i])
                    i += 1
                if not taken:
                    quoted = (
                        f" (a value that starts with -- reads as an option: give it after "
                        f"=, e.g. {option}='{words[i]}')"
                        if i < len(words) and words[i].startswith("--")
                        else ""
                    )
                    raise UsageError(f"{option} needs at least one value{quoted}. Usage: {usage}")
                values[field] = taken
                continue
            if eq:
                values[field] = inline
                i += 1
                continue
            if i + 1 >= len(words) or words[i + 1] == "--":
                raise UsageError(f"{option} needs a value. Usage: {usage}")
            values[field] = words[i + 1]
            i += 2
            continue
        loose.append(word)
        i += 1
    for field in model.POSITIONAL:
        if loose:
            values[field] = loose.pop(0)
    if rest is not None and model.REST is not None:
        if loose:
            raise UsageError(f"unexpected {' '.join(map(repr, loose))}. Usage: {usage}")
        if rest.strip():
            values[model.REST] = rest
    if loose:
        if model.REST is None:
            raise UsageError(f"unexpected {' '.join(map(repr, loose))}. Usage: {usage}")
        values[model.REST] = loose if _is_list(model, model.REST) else " ".join(loose)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise UsageError(f"{_first_problem(exc, model)}. Usage: {usage}") from exc


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean '--temperature'?)`` for a close match among ``known``, else ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _ends_list(word: str, options: dict[str, str]) -> bool:
    # A list option stops at the next option: any "--word" (known or not, with or
    # without "=value"), so "--temperature=0" after --ab is never taken as a third
    # prompt; an unknown one is then reported by the caller. A short alias ends it too.
    # A word with a space in it is a quoted value, never an option ('--be terse').
    if any(char.isspace() for char in word.partition("=")[0]):
        return False
    return word.startswith("--") or word.partition("=")[0] in options


def _is_number(word: str) -> bool:
    # "-1" or "-0.5" is a value (e.g. after --temperature), not an option.
    try:
        float(word)
    except ValueError:
        return False
    return True


def _first_problem(exc: ValidationError, model: type[MagicArgs]) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    message = str(error["msg"]).removeprefix("Value error, ")
    if not where:
        return message
    if where in model.POSITIONAL or where == model.REST:
        # A word, not an option: no "--name" to point at (the usage line shows it).
        if error["type"] == "missing":
            return f"the {where.replace('_', ' ')} is missing"
        return f"the {where.replace('_', ' ')}: {message}"
    return f"--{where.replace('_', '-')}: {message}"
