"""``%cm help`` and ``%cm help SUBCOMMAND``: the usage lines, and one subcommand's page.

A subcommand's page is its usage line and the docstring of its argument model
(:mod:`._args`), so the help cannot drift from the models that parse the line.
"""

from __future__ import annotations

import inspect
import re
import textwrap

from IPython.core.error import UsageError

from . import _args as a
from ._parse import MagicArgs, did_you_mean

__all__ = ["HELP", "help_text"]

#: What the cell magic's usage line cannot say.
_CELL_NOTES = [
    "  {name} in the cell is the kernel variable `name` ({{ and }} for braces);",
    "  --var NAME stores the reply's text in NAME once it completes, or its partial",
    "  text if stopped (with --ab / --fanout: the arms' Comparison, once they end);",
    "  a later cell's {NAME}, or Python naming NAME, waits for it;",
    "  a cell's view is awaitable: `reply = await _` waits for the reply.",
]

HELP = "\n".join(
    [
        "%cm                      the current context's live view",
        *(f"{model.USAGE}" for name, model in a.COMMANDS.items() if name not in ("ls", "branches")),
        "%cm ls | %cm branches    list contexts / branches of the current one",
        a.CellArgs.USAGE,
        *_CELL_NOTES,
        "`%cm help SUBCOMMAND` (or `%cm help %%cm`) says more about one of them.",
    ]
)

#: The subcommands that share one argument model say what each does here.
_OWN_PAGES = {
    "ls": ("%cm ls", "The stored contexts, the current one marked."),
    "branches": ("%cm branches", "The current context's branches, the active one marked."),
}
#: The words that ask for the cell magic's page.
_CELL_NAMES = ("%%cm", "cell")
#: The width a subcommand's page is wrapped to.
_WIDTH = 88
#: ``%cm x``: at the start of a docstring (the usage line says it already).
_LEAD = re.compile(r"^``%%?cm[^`]*``:\s*")


def help_text(subcommand: str | None = None) -> str:
    """Every usage line, or ``subcommand``'s usage and what it does.

    Raises:
        UsageError: ``subcommand`` is none of them (with a close match, if any).
    """
    if subcommand is None:
        return HELP
    name = subcommand.strip().lower().removeprefix("%cm ").strip()
    if name in _OWN_PAGES:
        usage, text = _OWN_PAGES[name]
        return f"{usage}\n\n{text}"
    if name in _CELL_NAMES:
        model: type[MagicArgs] = a.CellArgs
    elif name in a.COMMANDS:
        model = a.COMMANDS[name]
    else:
        known = [*a.COMMANDS, "%%cm"]
        raise UsageError(
            f"no subcommand {subcommand!r}{did_you_mean(name, known)}; `%cm help` lists them all"
        )
    page = f"{model.USAGE}\n\n{_plain(inspect.getdoc(model) or '')}"
    return "\n".join([page, "", *_CELL_NOTES]) if model is a.CellArgs else page


def _plain(doc: str) -> str:
    # A docstring's reST markup as text for a cell's output, each paragraph wrapped.
    paragraphs = [" ".join(part.split()) for part in doc.split("\n\n")]
    paragraphs[0] = _LEAD.sub("", paragraphs[0])
    paragraphs[0] = paragraphs[0][:1].upper() + paragraphs[0][1:]
    return "\n\n".join(
        textwrap.fill(part.replace("``", "`"), _WIDTH, break_on_hyphens=False)
        for part in paragraphs
    )
