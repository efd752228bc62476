"""The IPython magics ``%cm`` and ``%%cm``: parse, validate, dispatch.

A line is split into a subcommand and its words, the words are validated into the
subcommand's model (:mod:`._args`) and :class:`~._commands.Commands` runs it. Anything
wrong with the input is a one-line :class:`~IPython.core.error.UsageError`.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

from . import _args as a
from ._commands import Commands
from ._help import HELP, help_text
from ._parse import did_you_mean, parse_args, parse_text_args, split_words
from ._remedies import translated

__all__ = ["CMMagics"]


@magics_class
class CMMagics(Magics):
    """``%cm SUBCOMMAND ...`` (see ``%cm help``) and ``%%cm [options]`` with a message."""

    def __init__(self, shell: Any, commands: Commands | None = None) -> None:
        super().__init__(shell)
        #: The current context, the cells under way and their ``--var`` names.
        self.commands = commands if commands is not None else Commands(shell.user_ns)

    # A line is taken as typed: IPython's own expansion would rewrite a message's
    # "{x}" or "$price" with no record of it (a cell's {name} is filled in, and
    # recorded, by _interpolate), evaluate any expression in braces, and takes time
    # quadratic in the line's length.
    @no_var_expand
    @line_cell_magic
    def cm(self, line: str, cell: str | None = None) -> Any:
        """Talk to the current context: ``%cm help`` lists the subcommands."""
        if cell is not None:
            cell_words = split_words(line, a.CellArgs.USAGE)
            if _asks_help(cell_words):  # the cell is not sent
                print(help_text("%%cm"))
                return None
            cell_args = parse_args(a.CellArgs, cell_words)
            with translated(self.commands.current):
                return self.commands.cell(cell_args, cell)
        # The subcommand ends at any whitespace (`%cm send<Tab>text` is a send too); the
        # text starts after that one character.
        stripped = line.strip()
        name = stripped.split(maxsplit=1)[0] if stripped else ""
        text = stripped[len(name) + 1 :]
        if name == "send" and _asks_help([text.strip()]):
            print(help_text("send"))
            return None
        if name == "send":
            # A message is not shell words: its quotes and apostrophes are kept. (A line
            # ending in "?" only gets here thanks to _input.py.)
            with translated(self.commands.current):
                return self.commands.send(parse_text_args(a.SendArgs, text))
        words = split_words(line, "%cm help")
        if not words:
            with translated(self.commands.current):
                # The live view, then a snapshot that stays in the saved notebook.
                return self.commands.view()
        name, rest = words[0], words[1:]
        if _asks_help(words):  # `%cm --help`, `%cm new --help`: what `%cm help` says
            print(help_text(name if name in a.COMMANDS else None))
            return None
        model = a.COMMANDS.get(name)
        if model is None:
            raise UsageError(
                f"unknown subcommand {name!r}{did_you_mean(name, a.COMMANDS)}; the "
                f"subcommands are {', '.join(a.COMMANDS)} (`%cm help` shows their usage)"
            )
        args = parse_args(model, rest)
        with translated(self.commands.current):
            return getattr(self.commands, name)(args)


def _asks_help(words: list[str]) -> bool:
    # ``--help`` or ``-h`` as a word of its own, as most command lines take it (no
    # subcommand has such an option, nor a value that could be one).
    return any(word in ("--help", "-h") for word in words)


# ``%cm?`` and ``%%cm?`` show the magic's docstring: every subcommand's usage.
CMMagics.cm.__doc__ = f"Talk to the current context (`%cm help` shows this too).\n\n{HELP}\n"
