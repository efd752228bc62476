"""The saved copy of a ``ToolApproval``: its calls and decisions as static HTML.

A ``ToolApproval`` shown on its own (the value of a cell, or ``display(...)``) is a
widget, and widget state is not saved by default (JupyterLab, VS Code, Colab); a
``text/html`` beside the widget in its own bundle is not shown either when the widget
cannot render (DESIGN fact 10). So the widget is followed by a separate
``display_data`` output with static HTML: the calls it shows (tool, branch, id, the
arguments asked for, and what became of each), and its decision history (approved,
denied, edited arguments, by whom, the reason), with a short, stable ``text/plain``
for nbval. The view brings it up to date, throttled, as calls are asked and decided
(:meth:`ApprovalCopy.poke`); a notebook saved afterwards, and its nbconvert HTML,
show them without a kernel. On a live page the view's
:class:`~cm_notebook.widgets._copy_hider.SavedCopyHider` hides the copy.

Every name, argument and reason is escaped and isolated (:mod:`cm_notebook._html_text`):
a model's arguments or a person's reason may hold markup or bidirectional controls.
"""

from __future__ import annotations

import asyncio
import html
from typing import TYPE_CHECKING, Any

from .._html_text import WRAP_ANYWHERE, isolated, json_html
from .._theme import ERROR, MUTED
from .._unicode import one_line_for_display
from ._base import Throttle
from ._copy_hider import mark_copy
from ._live_output import LiveOutput, register_copy

if TYPE_CHECKING:
    from ..approvals import ApprovalRecord
    from ..session import ContextSession
    from .approval import CallRow, ToolApproval

__all__ = ["PLAIN", "ApprovalCopy", "approval_html", "describe_decision"]

#: The ``text/plain`` of the copy: short and stable for nbval.
PLAIN = "<cm_notebook tool approvals (HTML)>"

#: Seconds between two updates of the copy (each re-sends the calls and the history).
INTERVAL = 0.5

#: How many of the latest decisions the history shows (the log keeps them all).
HISTORY_SHOWN = 50

#: The colour of an approval: the theme's (JupyterLab's dark theme too), else this.
_GREEN = "var(--jp-success-color0,#059669)"


def describe_decision(record: ApprovalRecord) -> str:
    """One line of the decision history (HTML, escaped): when, who, what, and how."""
    verdict = "approved" if record.approved else "denied"
    if record.approved and record.remember != "once":
        verdict += f" (always, {record.remember})"
    # A name logged before by= refused control characters shows them as escapes.
    who = isolated(one_line_for_display(record.by))
    if record.remote:
        who += " <i>from another process</i>"
    parts = [
        f'<span style="color:{MUTED}">{record.at:%Y-%m-%d %H:%M:%S}</span>',
        f"<code>{isolated(record.tool)}</code>",
        f'<b style="color:{_GREEN if record.approved else ERROR}">{verdict}</b>',
        f"by {who}",
        f'<span style="color:{MUTED}">on {isolated(record.branch)}</span>',
    ]
    line = " ".join(parts)
    if record.edited_arguments is not None:
        asked = json_html(record.arguments)
        ran = json_html(record.edited_arguments)
        line += f"<br>&nbsp;&nbsp;arguments <code>{asked}</code> → <code>{ran}</code>"
    if record.reason and not record.approved:
        line += f"<br>&nbsp;&nbsp;reason: {isolated(record.reason)}"
    return f'<div class="cm-decision">{line}</div>'


_PRE = f"white-space:pre-wrap;{WRAP_ANYWHERE};margin:4px 0;font-family:monospace"


def _call_html(row: CallRow) -> str:
    # One call the view shows: what was asked, and what became of it (the row's own
    # status line, built escaped by the row) or that it waits.
    call = row.call
    where = f" on branch <b>{isolated(row._branch)}</b>" if row._branch else ""
    title = (
        f"⚙ <code>{isolated(call.name)}</code>{where} "
        f'<span style="color:{MUTED}">({html.escape(call.id)})</span>'
    )
    arguments = f'<div style="{_PRE}">{json_html(call.arguments, indent=2)}</div>'
    if not row.decided:
        outcome = "<b>waiting for approval</b>"
    else:
        outcome = row.status.value or f'<span style="color:{MUTED}">being decided…</span>'
    return (
        '<div class="cm-approval-call" style="border:1px solid #f59e0b;'
        f'padding:4px 8px;margin:4px 0">{title}{arguments}{outcome}</div>'
    )


def approval_html(view: ToolApproval) -> str:
    """What ``view`` shows, as static HTML: its calls, then its decision history
    (newest first, as many as the view shows)."""
    rows = list(view.rows.values())
    waiting = sum(1 for row in rows if not row.decided)
    head = (
        f"<b>{waiting} tool call{'s' if waiting != 1 else ''} waiting for approval</b>"
        if waiting
        else "<b>No tool call waiting for approval</b>"
    )
    records = view.history.records
    shown = records[-HISTORY_SHOWN:][::-1]
    history = ""
    if records:
        left_out = len(records) - len(shown)
        more = (
            f'<div style="color:{MUTED}">({left_out} earlier decisions not shown: '
            "session.approval_log() lists them all)</div>"
            if left_out
            else ""
        )
        history = (
            f'<div style="margin-top:6px"><b>Decision history ({len(records)})</b></div>'
            + "".join(map(describe_decision, shown))
            + more
        )
    calls = "".join(map(_call_html, rows))
    return (
        '<div class="cm-approval-copy" style="font-family:sans-serif;max-width:900px;'
        f'{WRAP_ANYWHERE}"><div>{head}</div>{calls}{history}</div>'
    )


class ApprovalCopy:
    """Shows :func:`approval_html` of a view as an output and keeps it current."""

    def __init__(self, view: ToolApproval, loop: asyncio.AbstractEventLoop, copy_id: str) -> None:
        self.view = view
        #: Marks the HTML for the live view's :class:`~._copy_hider.SavedCopyHider`.
        self.copy_id = copy_id
        self._loop = loop
        self._output = LiveOutput()
        self._throttle = Throttle(loop, INTERVAL, self._update)
        self._closed = False

    def __repr__(self) -> str:
        return "<cm_notebook ApprovalCopy>"

    @property
    def session(self) -> ContextSession:
        """The session whose calls the copy shows (for :func:`flush_copies`)."""
        return self.view.session

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the copy is updated on (the session's)."""
        return self._loop

    def display(self) -> None:
        """Emit one more copy of the output (in the current cell); later updates
        replace every copy in place."""
        self._output.show(self._bundle())
        register_copy(self)

    def poke(self) -> None:
        """Bring the copy up to date soon (throttled; on :attr:`loop`)."""
        if not self._closed:
            self._throttle.poke()

    def flush_pending(self) -> None:
        """Send a waiting update now (on :attr:`loop`)."""
        self._throttle.flush_pending()

    def close(self) -> None:
        """Stop updating the output, after sending a waiting update (it keeps its
        last content)."""
        if not self._closed:
            self._throttle.flush_pending()
            self._closed = True
            self._throttle.cancel()

    def _bundle(self) -> dict[str, Any]:
        return {"text/html": mark_copy(approval_html(self.view), self.copy_id), "text/plain": PLAIN}

    def _update(self) -> None:
        if self._output.shown and not self._closed:
            self._output.update(self._bundle())
