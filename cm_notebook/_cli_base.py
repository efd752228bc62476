"""What the ``cm-notebook`` subcommands share: the registry, errors and output.

See :mod:`cm_notebook.cli` for how a subcommand is added.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import _json
from ._unicode import for_terminal
from .store.base import Store

__all__ = [
    "COMMANDS",
    "PROG",
    "Command",
    "CommandError",
    "Handler",
    "clip",
    "command",
    "out",
    "positive_int",
    "read_json",
    "when",
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


def out(text: str = "") -> None:
    # Shown, never obeyed: a reply or a title may hold terminal escapes.
    print(for_terminal(text), file=sys.stdout)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path} is not UTF-8 text") from exc
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
    text = " ".join(text.split())  # titles with newlines must not break the table
    return text if len(text) <= width else text[: width - 1] + "…"
