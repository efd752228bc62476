"""IPython magics: ``%cm`` and ``%%cm`` for quick conversations from cells.

Load them with ``%load_ext cm_notebook``, then::

    %cm new "Capitals"                 # a context, current from now on (offline model)
    %%cm --temperature 0
    What is the capital of {country}?  # {country}: the kernel variable

    %%cm --ab "Answer in five words." "Answer like a pirate."
    Why is the sky blue?               # one message on two branches, compared

``%cm help`` lists every subcommand, ``%cm help SUBCOMMAND`` says what one does. A
magic never blocks the kernel: it returns a live view at once and the reply streams into
it (``await`` the view to wait for it). Bad input is a one-line usage error, never a traceback.

Modules: :mod:`._parse` (words into validated models), :mod:`._args` (the models),
:mod:`._help` (``%cm help``, written from the models' docstrings),
:mod:`._interpolate` (``{name}``), :mod:`._commands` (what each subcommand does),
:mod:`._sending` (sending from cells, in the order they ran),
:mod:`._reply` and :mod:`._comparison` (the views a cell returns), :mod:`._queue`
(cells that wait for the one before them), :mod:`._remedies` (errors in the magics'
terms), :mod:`._shown` (what ``await _`` shows), :mod:`._magics` (the IPython glue),
:mod:`._input` (keeps IPython's ``obj?`` help syntax off ``%cm send ...?``),
:mod:`._var_reads` (a Python cell reading a ``--var`` still being written waits for it),
:mod:`._cell_reads` (what a cell's code names) and :mod:`._letting_go` (a context no
longer current is closed once nothing uses it).
"""

from __future__ import annotations

from typing import Any

from ._commands import NO_CONTEXT, Commands
from ._comparison import ComparisonView
from ._input import register
from ._letting_go import register as let_go_after_cells
from ._magics import CMMagics
from ._reply import ReplyView
from ._shown import register as show_awaited_briefly
from ._var_reads import register as wait_for_variables

__all__ = [
    "NO_CONTEXT",
    "CMMagics",
    "Commands",
    "ComparisonView",
    "ReplyView",
    "load_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%cm`` / ``%%cm`` (what ``%load_ext cm_notebook`` calls)."""
    # Loaded again (`%reload_ext cm_notebook`): the current context, the cells under
    # way and the --var values still coming carry over, as they would have with no reload.
    earlier = ipython.magics_manager.registry.get(CMMagics.__name__)
    commands = getattr(earlier, "commands", None)
    magics = CMMagics(ipython, commands if isinstance(commands, Commands) else None)
    ipython.register_magics(magics)
    register(ipython)  # `%cm send ...?` is a message, not IPython's help syntax
    show_awaited_briefly(ipython)  # `await _` does not show the reply a second time
    # Run All: a Python cell reading a --var still being written (or exporting JSON)
    # waits for the reply.
    wait_for_variables(ipython, magics.commands)
    # A context no longer current is closed once a cell has let go of it.
    let_go_after_cells(ipython, magics.commands.letting_go)
