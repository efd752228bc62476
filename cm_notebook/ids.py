"""Identifiers: generating them, and refusing hostile ones.

Context ids and message ids become file and folder names, so they are held to a
strict alphabet. Branch names only live inside ``metadata.json`` and URLs, so they
may contain spaces and non-ASCII letters, but never path separators, ``..`` or
control characters. Every check raises :class:`~cm_notebook.errors.InvalidIdError`
with a sentence saying what was wrong and what is allowed.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata

from .errors import InvalidIdError

__all__ = [
    "MAX_BRANCH_NAME_LENGTH",
    "MAX_ID_LENGTH",
    "new_id",
    "validate_branch_name",
    "validate_context_id",
    "validate_message_id",
]

MAX_ID_LENGTH = 128
MAX_BRANCH_NAME_LENGTH = 100

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Windows reserves these names whatever the extension; refuse them everywhere so a
# data directory can be copied to any machine.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10))} | {
    f"lpt{i}" for i in range(10)
}

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """A new id that sorts by creation time: ``prefix`` + 10 time chars + 10 random chars."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(7), "big")
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
    if ".." in value or not _ID_PATTERN.fullmatch(value) or value.lower() in _RESERVED:
        raise InvalidIdError(
            f"{kind} {shown!r} is not valid: ids may contain only ASCII letters, digits, "
            f"'_', '.' and '-', must start with a letter or digit and may not contain '..'. "
            f"{hint}"
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


def validate_branch_name(value: object) -> str:
    """Return ``value`` if it is an acceptable branch name, else raise InvalidIdError."""
    hint = "Branch names are 1-100 characters: letters, digits, spaces, '_', '-', '.' and '+'."
    if not isinstance(value, str):
        raise InvalidIdError(f"branch name must be a string, got {type(value).__name__}. {hint}")
    shown = value if len(value) <= 60 else value[:57] + "..."
    if not value or len(value) > MAX_BRANCH_NAME_LENGTH:
        raise InvalidIdError(f"branch name {shown!r} is not valid: wrong length. {hint}")
    if value != value.strip():
        raise InvalidIdError(
            f"branch name {shown!r} is not valid: it starts or ends with white space. {hint}"
        )
    if ".." in value:
        raise InvalidIdError(f"branch name {shown!r} is not valid: it contains '..'. {hint}")
    if unicodedata.normalize("NFC", value) != value:
        # Two spellings of one visible name (decomposed accents, the Angstrom sign) would
        # make two branches that look identical in every view.
        raise InvalidIdError(
            f"branch name {shown!r} is not valid: it is not in Unicode normal form C; "
            f"use {unicodedata.normalize('NFC', value)!r}. {hint}"
        )
    for char in value:
        category = unicodedata.category(char)
        if char in "_-.+ ":
            continue
        if category[0] in "LN":
            continue
        raise InvalidIdError(
            f"branch name {shown!r} is not valid: character {char!r} is not allowed. {hint}"
        )
    return value
