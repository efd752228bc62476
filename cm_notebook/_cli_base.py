"""What the ``cm-notebook`` subcommands share: the registry, errors and output.

See :mod:`cm_notebook.cli` for how a subcommand is added.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import _json
from ._cli_advice import elsewhere, for_data_dir
from ._json_bytes import NotJSONText, decode_json_bytes
from ._unicode import for_terminal
from .render import one_line
from .store.base import Store
from .store.diagnostics import StoreWarning
from .store.paths import contexts_root

__all__ = [
    "COMMANDS",
    "PROG",
    "Command",
    "CommandError",
    "Handler",
    "advising_for",
    "cli_wording",
    "clip",
    "command",
    "decode_json",
    "isatty",
    "of_a_listed_context",
    "out",
    "port_number",
    "positive_int",
    "when",
    "write_whole",
    "writing_stdout",
]

PROG = "cm-notebook"

Handler = Callable[[argparse.Namespace, Store], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its arguments and its handler."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Handler


#: Subcommands in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def command(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = _no_arguments
) -> Callable[[Handler], Handler]:
    """Register the decorated async handler as subcommand ``name``."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(help, configure, handler)
        return handler

    return register


class CommandError(Exception):
    """A failure to report as one line with an exit code (1 failure, 2 usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


#: The package's remedies that name Python calls, as the command line says them.
_CLI_REMEDIES = (
    (
        re.compile(
            r"List existing (?:contexts|ids) with "
            r"(?:FileStore\.list_contexts\(\)|ContextSession\.list\(\))"
            # To the sentence's end: the command in backquotes after it may name a folder
            # with dots or backquotes in it; the sentence ends the line or a space follows.
            r"(?: \(?or `.*?`\)?)?\.(?=\s|$)"
        ),
        "List existing contexts with `cm-notebook ls`.",
    ),
    (
        re.compile(
            r"(context '(?P<id>[^']+)' is being written .*?)delete it anyway with "
            r"FileStore\.delete_context\(\.\.\., force=True\)",
            re.DOTALL,
        ),
        r"\1delete it anyway with `cm-notebook rm --force \g<id>`",
    ),
    (
        re.compile(r"\((FileStore\.set_branch_head(?: or FileStore\.delete_branch)?)\)"),
        r"(from Python: \1; cm-notebook has no command for it)",
    ),
    (re.compile(r"session\.export\(branch=\.\.\.\)"), "--branch"),
    # Where the data directory is chosen: the command line's option, not a Python keyword.
    (re.compile(r"\(CM_NOTEBOOK_DATA_DIR or data_dir=\)"), "(--data-dir or $CM_NOTEBOOK_DATA_DIR)"),
    (
        # A message id in a file or an argument: its ids are listed the command line's way.
        re.compile(r"Use an id from session\.history\(\)\."),
        "`cm-notebook show ID` lists a conversation's messages.",
    ),
)


#: The data directory this run of the command line uses, as given, when the commands
#: it advises need ``--data-dir`` to act on it (see :func:`advising_for`).
_DATA_DIR: ContextVar[str | Path | None] = ContextVar("cli_data_dir", default=None)


@contextmanager
def advising_for(data_dir: str | Path | None) -> Iterator[None]:
    """Within: :func:`cli_wording` says the commands it advises with ``--data-dir``
    ``data_dir`` (the one given, else ``$CM_NOTEBOOK_DATA_DIR``; None: the default)."""
    token = _DATA_DIR.set(elsewhere(data_dir))
    try:
        yield
    finally:
        _DATA_DIR.reset(token)


def cli_wording(message: str) -> str:
    """``message`` (an error, a warning, a report) with the remedies that name Python
    calls the command line does not have said the command line's way, and the commands
    it advises given the data directory in use (see :func:`advising_for`)."""
    for pattern, wording in _CLI_REMEDIES:
        message = pattern.sub(wording, message)
    return for_data_dir(message, _DATA_DIR.get())


def isatty(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (False for a replaced or closed stream)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def out(text: str = "") -> None:
    # Shown, never obeyed: a reply or a title may hold terminal escapes.
    with writing_stdout():
        print(for_terminal(text), file=sys.stdout)


@contextmanager
def writing_stdout() -> Iterator[None]:
    """Report a failed write to stdout (a full disk, ``> /dev/full``) as one line that
    says it was stdout; a reader gone away (BrokenPipeError) is left to the caller."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise CommandError(f"cannot write to standard output: {exc.strerror or exc}") from None


def write_whole(stream: Any, data: bytes) -> None:
    """Write all of ``data`` to the binary ``stream``, or raise OSError.

    A buffered stream's ``write`` may take only part of what it is given and return
    how much, leaving the error that stopped it (a file size limit, a full disk, a
    reader gone away) for the next write: the rest is written again until it is all
    taken, or that error is raised.
    """
    view = memoryview(data)
    while view:
        written = stream.write(view)
        if not written:  # None: a stream that would block; 0: one that takes nothing
            raise OSError(errno.EIO, "the output took none of what was left to write")
        view = view[written:]


def of_a_listed_context(message: Warning | str, data_dir: Path, ids: list[str]) -> bool:
    """Whether a warning given while listing is about a context that was listed (not
    one skipped as unreadable): its path is in that context's folder."""
    path = getattr(message, "path", None)
    if not isinstance(message, StoreWarning) or path is None:
        return False
    try:
        parts = Path(path).relative_to(contexts_root(data_dir)).parts
    except ValueError:
        return False
    return bool(parts) and parts[0] in ids


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def decode_json(raw: bytes, path: Path) -> Any:
    """The JSON value of the bytes read from ``path`` (UTF-8, or UTF-16/32 as Windows
    tools save JSON; a CommandError naming it if they are not JSON text)."""
    try:
        text = decode_json_bytes(raw, path)
    except NotJSONText as exc:
        raise CommandError(f"{path} {exc}") from None
    try:
        return _json.loads(text)
    except _json.JSONLimitError as exc:
        raise CommandError(f"{path} cannot be read: it is {exc}") from None
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc


def when(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M}"


def clip(text: str, width: int) -> str:
    """``text`` as one table cell: on one line (a title with newlines must not break the
    table), cut to ``width``."""
    return one_line(text, width)
