"""What a cell that awaits a ``%%cm`` cell's view shows: the value's one line of text.

``await _`` after a ``%%cm`` cell gives the reply's final
:class:`~cm_notebook.model.Message` (after an ``--ab`` cell, the
:class:`~cm_notebook.compare.Comparison`). Shown as the awaiting cell's value through
its HTML, it would repeat what the ``%%cm`` cell already shows, and a saved notebook
would keep the reply twice. So in the cell that awaited it, such a value is shown by
its text alone (``<Message m… assistant complete 'The capital…' (42 chars)>``); the
same value shown in a later cell (``reply``), or a message read again
(``s.history()[-1]``), shows its HTML as always.
"""

from __future__ import annotations

from collections import deque
from typing import Any, TypeVar

from ..compare import Comparison
from ..model import Message

__all__ = ["given_by_view", "register"]

T = TypeVar("T")

# The values views gave to ``await`` in the cell running now (cleared after each cell).
_given: deque[object] = deque(maxlen=64)


def given_by_view(value: T) -> T:
    """``value``, noted as what an awaited view gave (see the module docstring)."""
    _given.append(value)
    return value


def _html_unless_given(value: Any) -> str | None:
    # None: no HTML, so IPython shows the value's text (its short repr) alone.
    if any(value is seen for seen in _given):
        return None
    html: str = value._repr_html_()
    return html


def _forget(*_args: Any) -> None:
    _given.clear()


def register(shell: Any) -> None:
    """Show awaited replies and comparisons in ``shell`` as above (again: no change)."""
    html = shell.display_formatter.formatters["text/html"]
    for kind in (Message, Comparison):
        html.for_type(kind, _html_unless_given)
    if _forget not in shell.events.callbacks["post_run_cell"]:
        shell.events.register("post_run_cell", _forget)
