"""The ``cm-notebook`` commands a message advises, said for the data directory in use.

A remedy such as "run `cm-notebook check --repair ID`" acts on the platform's data
directory when typed as written. Where the contexts are elsewhere (``--data-dir``,
``$CM_NOTEBOOK_DATA_DIR``, a session's ``data_dir=``), the advised command gets that
folder as ``--data-dir``, so that it acts on the data the message is about. Messages
name commands in backquotes, without the folder; it is added here: by the command
line, the magics and the demo to every message they show, and, for what a Python
caller reads as it was raised, where the message is made with the store at hand
(:func:`for_contexts_in`: exporting, walking a branch, a saved copy's hint). A command
already given ``--data-dir`` is left as it is, so a message passes both ways once.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from .store.paths import DATA_DIR_ENV, platform_data_dir

__all__ = ["data_dir_option", "elsewhere", "for_contexts_in", "for_data_dir", "path_argument"]

#: A command a message advises, in backquotes. Not a file "made by `cm-notebook
#: export`": that names where a file comes from, not a command to run here. Nor one
#: that already names its folder (said where the message was made, with the store at
#: hand), which the command line's or the magics' rewrite would otherwise repeat.
_COMMAND = re.compile(r"(?<!made by )`cm-notebook(?=[ `])(?! --data-dir[ =])")


def elsewhere(data_dir: str | Path | None) -> str | Path | None:
    """``data_dir``, or None when it is the platform's data directory (which a command
    uses without ``--data-dir``, unless ``$CM_NOTEBOOK_DATA_DIR`` says otherwise)."""
    if data_dir is None or str(data_dir) == "":
        return None
    if os.environ.get(DATA_DIR_ENV, "").strip():
        return data_dir  # a terminal without that variable would use another folder
    try:
        same = Path(data_dir).expanduser().resolve() == platform_data_dir().resolve()
    except (OSError, RuntimeError):  # a path that cannot be resolved: said as given
        same = False
    return None if same else data_dir


def data_dir_option(data_dir: str | Path) -> str:
    """``--data-dir DIR``, quoted for a POSIX shell (``--data-dir=DIR`` for a folder
    whose name starts with ``-``, which would otherwise read as an option)."""
    text = str(data_dir)
    quoted = _quoted(text)
    return f"--data-dir={quoted}" if text.startswith("-") else f"--data-dir {quoted}"


def path_argument(path: str | Path) -> str:
    """``path`` as one argument of an advised command, quoted for a POSIX shell (a
    space in it would otherwise split it in two); ``./`` before a relative path that
    starts with ``-``, which would otherwise read as an option."""
    text = str(path)
    if text.startswith("-"):
        text = f"./{text}"
    return _quoted(text)


#: Bytes a ``$'...'`` argument holds as they are; any other is written ``\xNN``.
_PLAIN_BYTES = frozenset(range(0x20, 0x7F)) - {ord("'"), ord("\\")}


def _quoted(text: str) -> str:
    # A name that is not text (bytes that are not UTF-8, which Python holds as lone
    # surrogates) cannot be pasted as it is shown: it is written as the bytes it is,
    # in the $'...' quoting of bash, zsh and ksh, which makes those bytes again.
    if not any("\ud800" <= char <= "\udfff" for char in text):
        return shlex.quote(text)
    raw = os.fsencode(text)
    return "$'" + "".join(chr(b) if b in _PLAIN_BYTES else f"\\x{b:02x}" for b in raw) + "'"


def for_data_dir(message: str, data_dir: str | Path | None) -> str:
    """``message`` with each `` `cm-notebook ...` `` command it advises given
    ``--data-dir`` (none when ``data_dir`` is None)."""
    if data_dir is None:
        return message
    option = data_dir_option(data_dir)
    return _COMMAND.sub(lambda _match: f"`cm-notebook {option}", message)


def for_contexts_in(message: str, data_dir: object) -> str:
    """``message`` with the commands it advises given ``--data-dir`` for contexts
    stored in ``data_dir`` (a store's folder), unless that is the default one. Anything
    that is no folder (a store that keeps none) leaves the message as it is."""
    if not isinstance(data_dir, str | Path):
        return message
    return for_data_dir(message, elsewhere(data_dir))
