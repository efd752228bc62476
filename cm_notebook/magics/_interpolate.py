"""``{name}`` in a ``%%cm`` cell: kernel variables into the message.

The rules are Python's ``str.format`` with the kernel's namespace: ``{name}``,
``{name.attr}``, ``{name[0]}``, ``{name!r}``, ``{name:.2f}``; ``{{`` and ``}}`` are
literal braces. A name is read as Python reads it in code, in Unicode form NFKC (so
``{café}`` typed with a combining accent names the variable ``café`` that code typed
either way defines), and so is each attribute of a path (``{obj.café}`` reads the
attribute ``obj.café`` would). A name the kernel does not have is an error that says so, never a
silent blank. The names used are returned too, so the message can record which kernel
variables fed it (its provenance): each as a type, a short redacted repr and a hash
(:func:`cm_notebook.provenance.describe_value`), never the whole value (it may be large
or secret). A value that looks like a secret (an API key by its shape, a value of a
credential environment variable) is refused: the message would keep it.
"""

from __future__ import annotations

import importlib
import inspect
import re
import string
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from IPython.core.error import UsageError

from ..redact import holds_credential

__all__ = ["field_names", "interpolate"]

#: The conversions a field may have (``{name!r}``), and none.
_CONVERSIONS = (None, "r", "s", "a")

#: Where a field's variable name ends: ``{name.attr}``, ``{name[0]}``.
_NAME_END = re.compile(r"[.\[]")

#: How str.Formatter splits a field into its name and its attributes and indexes (the
#: C module has no type stubs).
_split_field: Callable[[str], tuple[str | int, Iterator[tuple[bool, str | int]]]] = (
    importlib.import_module("_string").formatter_field_name_split
)


def _as_python_reads(name: str) -> str:
    # Python reads an identifier in code as its NFKC form ("cafe" and a combining acute
    # is the variable "café"), so the kernel's namespace holds only that form.
    return unicodedata.normalize("NFKC", name)


class _Formatter(string.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.used: list[str] = []
        self._key = ""  # the variable of the field being filled in
        self._typed = ""  # the field's name as typed ("" for {}, which reads as {0})

    def parse(self, format_string: str) -> Iterator[tuple[str, str | None, str | None, str | None]]:
        # Each field is filled in as soon as it is parsed: what it was typed as is known.
        for literal, field, spec, conversion in super().parse(format_string):
            self._typed = field or ""
            yield literal, field, spec, conversion

    def format_field(self, value: Any, format_spec: str) -> Any:
        if format_spec and not inspect.isfunction(type(value).__format__):
            # A built-in type's format (str, int, float...): a spec it refuses is the
            # spec's fault, not the value's.
            try:
                format(value, format_spec)
            except (ValueError, TypeError) as exc:
                raise UsageError(
                    f"{{{self._key}:{format_spec}}} in the cell: the format spec "
                    f"{format_spec!r} does not fit the {type(value).__name__} in "
                    f"{self._key!r} ({exc}); fix what follows ':' (Python's format spec: "
                    "'.2f' suits a number, '>10' text), or leave it out"
                ) from exc
        text = self._users_code(super().format_field, value, format_spec)
        if holds_credential(str(text)):
            # Sent, it would be stored with the conversation, in its signals and in the
            # notebook's outputs: a key typed by mistake must not get there.
            raise UsageError(
                f"{{{self._key}}} holds what looks like a secret (an API key, a token, "
                "a password in a URL): it is not sent, since the conversation's files and "
                "the notebook would keep it. Leave it out of the message"
            )
        return text

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion not in _CONVERSIONS:
            raise UsageError(
                f"{{{self._key}!{conversion}}} in the cell: '!{conversion}' is no conversion; "
                f"use !r (repr), !s (str) or !a (ascii), e.g. {{{self._key}!r}}, or leave it out"
            )
        return self._users_code(super().convert_field, value, conversion)

    def _users_code(self, step: Any, value: Any, how: str | None) -> Any:
        # Formatting runs the value's own __format__ / __str__ / __repr__: whatever it
        # raises is the variable's problem, said in one line, not a traceback.
        try:
            return step(value, how)
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(
                f"{{{self._key}}} in the cell: the {type(value).__name__} in {self._key!r} "
                f"could not be written as text ({type(exc).__name__}: {exc}); give a "
                "variable that holds text, or convert it first"
            ) from exc

    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        # str.Formatter's, but each attribute of a path read as Python reads it in code
        # (``obj.café`` with a combining accent is the attribute ``café``, NFKC); an
        # index (``[key]``) is a string key, taken as typed, as in Python.
        first, rest = _split_field(field_name)
        value = self.get_value(first, args, kwargs)
        for is_attribute, part in rest:
            value = getattr(value, _as_python_reads(str(part))) if is_attribute else value[part]
        return value, first

    def get_value(self, key: int | str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        if isinstance(key, int) or not key:
            raise UsageError(
                f"{{{self._typed}}} in a %%cm cell needs a variable name, e.g. {{text}}; "
                "write {{ and }} for literal braces"
            )
        if not key.isidentifier():
            # JSON or code pasted in ({"a": 1}, {1, 2}): braces read as a field.
            raise UsageError(
                f"the braces at {{{key} in the cell are read as a {{name}} field, and "
                f"{key!r} is no variable name. For braces sent as they are, write each of "
                'them twice: {{"a": 1}} sends {"a": 1}'
            )
        key = _as_python_reads(key)
        if key not in kwargs:
            raise UsageError(
                f"{{{key}}} in the cell: no variable {key!r} in the kernel. Define it first, "
                f"or write each brace twice for braces sent as they are ({{{{{key}}}}} "
                f"sends {{{key}}})"
            )
        if key not in self.used:
            self.used.append(key)
        self._key = key
        return kwargs[key]


def interpolate(text: str, namespace: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``text`` with ``{name}`` fields filled from ``namespace``; and the names used."""
    formatter = _Formatter()
    try:
        return formatter.vformat(text, (), namespace), formatter.used
    except UsageError:
        raise
    except (ValueError, AttributeError, LookupError, TypeError) as exc:
        # A lone brace, a missing attribute or index, a bad format spec.
        raise UsageError(
            f"cannot fill in the cell's {{...}} fields: {exc}. Write {{{{ and }}}} for "
            "literal braces"
        ) from exc


def field_names(text: str) -> list[str]:
    """The kernel variables ``text``'s ``{name}`` fields read (in a format spec too),
    in order, as Python names them (NFKC), without reading them; none for text that is
    not a valid template (filling it in says what is wrong)."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return []
    for _literal, field, spec, _conversion in parsed:
        if field:
            name = _as_python_reads(_NAME_END.split(field, maxsplit=1)[0])
            if name and name not in names:
                names.append(name)
        if spec:
            names += [name for name in field_names(spec) if name not in names]
    return names
