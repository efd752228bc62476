"""``ToolApproval``: the tool calls waiting for a person, as buttons, and the decisions.

Each pending call shows its tool and the exact arguments that will run, as JSON in an
editable text box (the arguments editor). Edits are validated against the tool's schema
as they are typed, the error shown under the box (the approve buttons stay disabled
while they are invalid), and again when approving. Approve once, Always allow the tool
(for this session, or for the context in every process), or Deny with a reason: the
waiting turn resumes at once, without running a cell (DESIGN fact 1). The buttons
disable after use; a second click, on any of them and from any thread, does nothing.
The decision is made on a worker thread, never on the kernel's loop: allowing a tool
for the context writes its allow-list (a lock, fsyncs).

Under the calls, a collapsible decision history shows the context's approval audit log
(:meth:`~cm_notebook.session.ContextSession.approval_log`), kept current by the
``ToolCallResolved`` signals that carry a decision, whichever process made it.

Built from stock ipywidgets, so a click is the standard widget message. An invisible
part (:mod:`._connection`) brings the views' stylesheet and, after a kernel restart,
disables the buttons and says that the view is not connected. Shown on its own (a
cell's value), it is followed by a static copy of its calls and decisions that a
notebook saved without widget state keeps (:mod:`.approval_copy`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import html
import json
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from .. import events as ev
from .._approval_apply import check_arguments_shape
from .._html_text import isolated
from .._theme import MUTED
from ..approvals import ApprovalRecord, Remember
from ..errors import (
    CMError,
    InvalidInputError,
    ToolCallAlreadyResolvedError,
    ToolCallNotFoundError,
)
from ..model import ToolCall
from ..store.workers import submit_blocking
from ..tools import validate_edited_arguments
from ._base import SessionFollower, close_parts
from ._connection import ConnectionWatch
from ._copy_hider import SavedCopyHider
from .approval_copy import HISTORY_SHOWN, ApprovalCopy, describe_decision
from .compare_copy import show_widget

if TYPE_CHECKING:
    from ..session import ContextSession

__all__ = ["CallRow", "DecisionHistory", "ToolApproval"]

#: Colours of the row's texts: the theme's (JupyterLab's dark theme too), else these.
_RED = "var(--jp-error-color1,#b91c1c)"
_GREEN = "var(--jp-success-color0,#059669)"

#: Said of edited arguments that are a JSON object, for a call whose tool this process
#: lacks: the process that runs the call checks them against its schema (a refusal
#: there leaves the call waiting, and an error says why).
_CHECKED_ELSEWHERE = (
    "edited arguments are a JSON object; the process that runs this call checks them "
    "against its tool when it is approved"
)

#: The arguments box shows this many lines of JSON at least, and at most (then scrolls).
ARGS_ROWS = (2, 16)


def _rows_for(text: str) -> int:
    low, high = ARGS_ROWS
    return max(low, min(high, text.count("\n") + 1))


_APPROVED_AS = {
    "once": "approved",
    "session": "approved, always for this session",
    "context": "approved, always for this context",
}


class CallRow(w.VBox):  # type: ignore[misc]
    """One pending tool call: its arguments as editable JSON, Approve once, Always allow
    (for the session, for the context), Deny with a reason."""

    def __init__(
        self, session: ContextSession, follower: SessionFollower, call: ToolCall, branch: str
    ) -> None:
        self.session = session
        self.call = call
        # Named in decisions when known: calls waiting in two other processes may share
        # an id (each numbers its own), and the branch says which this row is.
        self._branch = branch or None
        self._follower = follower
        self._lock = threading.Lock()
        self._used = False
        # Whether a signal has shown what became of the call (see _show_decided).
        self._outcome_shown = False
        self._original = json.dumps(call.arguments, indent=2, ensure_ascii=False)
        where = f" on branch <b>{isolated(branch)}</b>" if branch else ""
        self.title = w.HTML(
            f"⚙ <code>{isolated(call.name)}</code>{where} "
            f'<span style="color:{MUTED}">({html.escape(call.id)})</span>'
        )
        # As tall as its JSON (within bounds: longer arguments scroll), and as wide as
        # the row: "auto" stretches it to the row's width less its margins ("100%" plus
        # the margins made the row scroll sideways).
        # Named for screen readers by a description that only they see (the title
        # above says it on the screen).
        self.arguments = w.Textarea(
            value=self._original,
            description=f"Arguments of {call.name} ({call.id}), as JSON",
            rows=_rows_for(self._original),
            layout=w.Layout(width="auto"),
        )
        self.arguments.add_class("cm-label-unseen")
        self.check = w.HTML("")
        self.approve_button = w.Button(
            description="Approve once",
            button_style="success",
            icon="check",
            tooltip="Run this call (with the arguments above)",
        )
        # Where the focus goes from a decided row (see static/connection.js).
        self.approve_button.add_class("cm-approve")
        self.session_button = w.Button(
            description="Always allow (session)",
            icon="check-double",
            tooltip="Run this call, and this tool from now on without asking, in this session",
            layout=w.Layout(width="auto"),
        )
        self.context_button = w.Button(
            description="Always allow (context)",
            icon="check-double",
            tooltip="Run this call, and this tool from now on without asking, in this "
            "context, for every notebook or server that opens it",
            layout=w.Layout(width="auto"),
        )
        self.reason = w.Text(
            description="Reason for denying",
            placeholder="reason (optional), told to the model",
        )
        self.reason.add_class("cm-label-unseen")
        self.deny_button = w.Button(description="Deny", button_style="danger", icon="times")
        self.status = w.HTML("")
        super().__init__(
            [
                self.title,
                self.arguments,
                self.check,
                w.HBox([self.approve_button, self.session_button, self.context_button]),
                w.HBox([self.reason, self.deny_button]),
                self.status,
            ],
            layout=w.Layout(border="1px solid #f59e0b", padding="4px 8px", margin="4px 0"),
        )
        self.add_class("cm-call-row")
        self.approve_button.on_click(lambda _b: self._decide(True, "once"))
        self.session_button.on_click(lambda _b: self._decide(True, "session"))
        self.context_button.on_click(lambda _b: self._decide(True, "context"))
        self.deny_button.on_click(lambda _b: self._decide(False))
        self.arguments.observe(lambda _c: follower.on_loop(self._check), names="value")

    def close(self) -> None:
        """Close the row and all its parts (harmless twice); its view drops a decided
        row this way while it goes on showing the others."""
        close_parts(self)
        super().close()

    @property
    def _approve_buttons(self) -> tuple[w.Button, ...]:
        return (self.approve_button, self.session_button, self.context_button)

    def __repr__(self) -> str:
        return "<cm_notebook tool call row>"

    @property
    def decided(self) -> bool:
        """Whether Approve or Deny has been used."""
        with self._lock:
            return self._used

    def _check(self) -> None:
        # As the person types: the verdict is shown next to the box, nothing is raised.
        with contextlib.suppress(CMError):
            self._validate()

    def _validate(self) -> dict[str, Any] | None:
        # Returns the edited arguments when they differ from the model's, else None.
        text = self.arguments.value
        if text == self._original:
            self.check.value = ""
            self._enable_approve(not self.decided)
            return None
        tools = self.session.tools
        # A call waiting in another process may use a tool this one lacks: as approve()
        # does, only the shape is checked here, and that process checks the schema.
        here = self.call.name in tools
        try:
            if here:
                edited = validate_edited_arguments(tools.get(self.call.name), text)
            else:
                edited = check_arguments_shape(text)
        except CMError as exc:
            self.check.value = f'<span style="color:{_RED}">{html.escape(str(exc))}</span>'
            self._enable_approve(False)
            raise
        self._enable_approve(not self.decided)
        if edited == self.call.arguments:  # reformatted, not changed
            self.check.value = ""
            return None
        self.check.value = (
            f'<span style="color:{_GREEN}">✓ edited arguments are valid</span>'
            if here
            else f'<span style="color:{MUTED}">{_CHECKED_ELSEWHERE}</span>'
        )
        return edited

    def _enable_approve(self, enabled: bool) -> None:
        for button in self._approve_buttons:
            button.disabled = not enabled

    def _decide(self, approve: bool, remember: Remember = "once") -> None:
        # Runs on the comm thread: claim the row at once, so a second click (on this
        # button or another) is a no-op.
        with self._lock:
            if self._used:
                return
            self._used = True
        self._follower.on_loop(lambda: self._carry_out(approve, remember))

    def _carry_out(self, approve: bool, remember: Remember = "once") -> None:
        # On the loop: read what the row says, then decide on a worker thread. Deciding
        # may write files - a context's allow-list (a lock another process may hold, and
        # fsyncs), a record for a call waiting in another process - and the loop is the
        # kernel's: every view and cell would wait. The desk takes decisions from any
        # thread; what the row shows next is set back on the loop.
        self._set_disabled(True)
        session, call_id, branch = self.session, self.call.id, self._branch
        decide: Callable[[], str]
        if approve:
            try:
                edited = self._validate()
            except CMError:
                self._release()
                return

            def decide() -> str:
                session.approve(call_id, arguments=edited, remember=remember, branch=branch)
                return f"<b>{_APPROVED_AS[remember]}</b>" + (
                    " (edited arguments)" if edited else ""
                )

        else:
            reason = self.reason.value.strip() or "denied by the user"

            def decide() -> str:
                session.deny(call_id, reason=reason, branch=branch)
                return f"<b>denied</b>: {isolated(reason)}"

        submit_blocking(decide).add_done_callback(
            lambda done: self._follower.on_loop(lambda: self._show_decided(done))
        )

    def _show_decided(self, done: concurrent.futures.Future[str]) -> None:
        # On the loop, once the decision is made (or refused). The call may have run
        # meanwhile (a context's allowance is written after the call is decided): what
        # its signals showed is newer and stays.
        try:
            shown = done.result()
        except (ToolCallAlreadyResolvedError, ToolCallNotFoundError) as exc:
            if not self._outcome_shown:
                self.status.value = _WRAP.format(
                    f'<span style="color:{MUTED}">{html.escape(str(exc))}</span>'
                )
        except CMError as exc:
            self.status.value = _WRAP.format(
                f'<span style="color:{_RED}">{html.escape(str(exc))}</span>'
            )
            if not self._outcome_shown:
                self._release()
        else:
            if not self._outcome_shown:
                self.status.value = _WRAP.format(shown)

    def _release(self) -> None:
        # The row is usable again: Deny and the editor, and the approve buttons only
        # while the arguments are valid (a refused approval of invalid ones leaves
        # them disabled, the error still shown).
        with self._lock:
            self._used = False
        self._set_disabled(False)
        self._check()

    def _set_disabled(self, disabled: bool) -> None:
        self._enable_approve(not disabled)
        self.deny_button.disabled = disabled
        self.arguments.disabled = disabled
        self.reason.disabled = disabled

    def resolved(self, status: str, result: str | None, reason: str | None) -> None:
        """Show what became of the call (on the session's loop)."""
        with self._lock:
            self._used = True
        self._outcome_shown = True
        self._set_disabled(True)
        text = f"<b>{html.escape(status)}</b>"
        # The reason and the result isolated: a right-to-left one, or an override in
        # one, cannot move or reverse the words around it.
        if reason:
            text += f": {isolated(reason)}"
        if result is not None:
            text += f' → <code style="white-space:pre-wrap">{isolated(result)}</code>'
        self.status.value = _WRAP.format(text)


#: The row's status: long words (a long reason, a URL) wrap within the row, with the
#: line height of text (an HTML widget's is that of a row of widgets).
_WRAP = '<div style="overflow-wrap:anywhere;white-space:normal;line-height:normal">{}</div>'


def _asked_on(branch: str, asked: str) -> bool:
    # Whether a signal or decision on ``branch`` can be of a call asked on ``asked``: the
    # same branch, or a conflict branch a turn asked there was diverted to (named
    # ``<branch>-conflict-<n>``, see cm_notebook._turn_writes).
    return branch == asked or branch.startswith(f"{asked}-conflict"[:90] + "-")


class DecisionHistory(w.Accordion):  # type: ignore[misc]
    """The approval audit log of a session's context, newest first, collapsed at first."""

    def __init__(
        self, session: ContextSession, keep: Callable[[ApprovalRecord], bool] | None = None
    ) -> None:
        self.session = session
        self._keep = keep or (lambda _record: True)
        self.body = w.HTML("")
        self.records: list[ApprovalRecord] = []
        super().__init__(children=[self.body], selected_index=None)
        self.add_class("cm-decisions")
        self.reload()

    def __repr__(self) -> str:
        return "<cm_notebook decision history>"

    def reload(self) -> None:
        """Read the whole log again (on a Resync, and at first)."""
        try:
            self.records = [r for r in self.session.approval_log() if self._keep(r)]
        except CMError as exc:
            self.body.value = f'<span style="color:{_RED}">{html.escape(str(exc))}</span>'
            return
        self._show()

    def add(self, record: ApprovalRecord) -> None:
        """Show one more decision (from a ``ToolCallResolved`` signal)."""
        if self._keep(record) and record not in self.records[-HISTORY_SHOWN:]:
            self.records.append(record)
            self._show()

    def _show(self) -> None:
        # Hidden until there is a decision: a session without tools shows nothing here.
        self.layout.display = "" if self.records else "none"
        shown = self.records[-HISTORY_SHOWN:][::-1]
        self.set_title(0, f"Decision history ({len(self.records)})")
        self.body.value = "".join(map(describe_decision, shown)) or (
            f'<span style="color:{MUTED}">No decisions yet.</span>'
        )


class ToolApproval(w.VBox):  # type: ignore[misc]
    """The session's pending tool calls, one :class:`CallRow` each.

    With ``branch``, only the calls asked for on that branch from now on, and only their
    decisions (what a ``%%cm`` cell shows under its reply: its own turn's calls, not
    those of every later cell); :meth:`finish` then stops following the session.

    Shown on its own (a cell's value, ``display``), it is followed by a saved copy:
    static HTML of its calls and decisions, kept current, for a notebook saved without
    widget state (see :mod:`.approval_copy`).
    """

    #: What shows a new view, said when this one is shown again once closed.
    REOPEN = "ToolApproval(session) shows a new one"

    def __init__(self, session: ContextSession, *, branch: str | None = None) -> None:
        self.session = session
        self.header = w.HTML("")
        # Read out by screen readers as it changes: "1 tool call waiting for approval".
        self.header.add_class("cm-announce")
        self._only = branch
        # With ``branch``: the (tool call id, branch) of the calls shown. By both: another
        # process's ``call_1`` on another branch is not this view's ``call_1``.
        self._seen: set[tuple[str, str]] = set()
        self.history = DecisionHistory(session, None if branch is None else self._decided_here)
        # The views' stylesheet, and the view disabled after a kernel restart.
        self.connection = ConnectionWatch()
        super().__init__([self.header, self.connection, self.history])
        self.add_class("cm-approval")
        #: The rows by (tool call id, branch): two processes may number their calls
        #: alike (each its own ``call_1``), never on one branch at once.
        self.rows: dict[tuple[str, str], CallRow] = {}
        #: The saved copy, once shown on its own; its hider is one of the children then.
        self.saved: ApprovalCopy | None = None
        self._hider: list[SavedCopyHider] = []
        self._follower = SessionFollower(session, self._on_event, self._show_error)
        self._sync()

    def __repr__(self) -> str:
        return "<cm_notebook ToolApproval>"

    def _ipython_display_(self) -> None:
        # The live view, then the static copy a notebook saved without widget state
        # still shows (a text/html in the widget's own bundle would not be: DESIGN
        # fact 10). Displayed again in a later cell, one more copy, kept current too.
        if not self._hider:  # kept by _sync, which sets the children anew
            self._hider.append(SavedCopyHider())
            self._set_children()
        copy_id = show_widget(self, self.REOPEN)
        if copy_id is None:  # closed
            return
        if self.saved is None:
            self.saved = ApprovalCopy(self, self._follower.loop, copy_id)
        self.saved.display()

    def close(self) -> None:
        """Stop following the session and close the widgets (harmless twice); the
        saved copy keeps its last content."""
        saved: ApprovalCopy | None = getattr(self, "saved", None)
        if saved is not None:
            saved.close()
        if hasattr(self, "_follower"):
            self._follower.close()
        # Every row, also one made but not yet shown (a sync cut short).
        for row in getattr(self, "rows", {}).values():
            row.close()
        close_parts(self)  # the header and the decision history
        super().close()

    def finish(self) -> None:
        """Stop following the session, leaving the rows as they are (their outcome
        shown); a row still undecided can no longer be used (its turn is over)."""
        self._follower.close()
        for row in self.rows.values():
            if not row.decided:
                row.resolved("no longer waiting: the turn is over", None, None)
        self.header.value = ""
        if self.saved is not None:  # says so too, and is not updated any more
            self.saved.poke()
            self.saved.close()

    def row(self, tool_call_id: str, *, branch: str | None = None) -> CallRow:
        """The row of one call; ``branch`` is needed only when calls on several branches
        share the id (InvalidInputError then names them). KeyError if it is not shown."""
        shown = self._rows_of(tool_call_id)
        found = [row for on, row in shown.items() if branch in (None, on)]
        if not found:
            where = "" if branch is None else f" on branch {branch!r}"
            raise KeyError(f"no tool call {tool_call_id!r}{where} is shown")
        if len(found) > 1:
            raise InvalidInputError(
                f"tool calls {tool_call_id!r} wait on branches {sorted(shown)}; say which "
                "with branch="
            )
        return found[0]

    def _rows_of(self, call_id: str) -> dict[str, CallRow]:
        # The rows of the calls with this id, by branch.
        return {on: row for (each, on), row in self.rows.items() if each == call_id}

    def _decided_here(self, record: ApprovalRecord) -> bool:
        # With ``branch``: whether ``record`` decides one of the calls shown (its id, on
        # its branch).
        return any(
            record.tool_call_id == call_id and _asked_on(record.branch, on)
            for call_id, on in self._seen
        )

    def _show_error(self, text: str) -> None:
        self.header.value = f'<span style="color:{_RED}">{html.escape(text)}</span>'

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ToolApprovalRequested):
            self._sync()
        elif isinstance(event, ev.ToolCallResolved):
            if event.decision is not None:
                self.history.add(event.decision)
            row = self._row_for(event.tool_call_id, event.branch or "")
            if row is not None:
                result = None
                if event.status.value in ("done", "failed"):
                    result = self._result_of(event.tool_call_id, event.branch)
                row.resolved(event.status.value, result, event.reason)
            self._update_header()
        elif isinstance(event, ev.Resync):
            self.history.reload()
            self._sync()
        else:
            return
        if self.saved is not None:
            self.saved.poke()

    def _row_for(self, call_id: str, branch: str) -> CallRow | None:
        # The row a signal speaks of: by id and branch, else the only row of that id on
        # the branch a turn diverted to a conflict branch was asked on (it signals on
        # the conflict branch; its row has the turn's). Not a row of that id on another
        # branch: another process's ``call_1`` there, which this view may not show.
        row = self.rows.get((call_id, branch))
        if row is None:
            found = [row for on, row in self._rows_of(call_id).items() if _asked_on(branch, on)]
            row = found[0] if len(found) == 1 else None
        return row

    def _result_of(self, call_id: str, branch: str | None) -> str | None:
        for message in reversed(self.session.history(branch)):
            if message.role == "tool" and message.tool_call_id == call_id:
                return message.content
        return None

    def _shows(self, call_id: str, branch: str) -> bool:
        # With ``branch`` given to the view: only that branch's calls (the history then
        # shows the decisions of the calls seen).
        if self._only is None:
            return True
        if branch != self._only:
            return False
        self._seen.add((call_id, branch))
        return True

    def _sync(self) -> None:
        # Keep the rows of undecided calls and the newly pending ones; drop the rest.
        pending = {
            (call.id, branch): call
            for call, branch in self.session._pending_on_branches()
            if self._shows(call.id, branch)
        }
        for key in list(self.rows):
            if key not in pending and self.rows[key].decided:
                self.rows.pop(key).close()
        for key, call in pending.items():
            if key not in self.rows:
                self.rows[key] = CallRow(self.session, self._follower, call, key[1])
        self._update_header(pending.keys())
        self._set_children()

    def _set_children(self) -> None:
        rows = list(self.rows.values())
        self.children = [self.header, self.connection, *rows, self.history, *self._hider]

    def _update_header(self, pending: Iterable[tuple[str, str]] | None = None) -> None:
        # ``pending``: the (call id, branch) of the calls waiting, when the caller has
        # just read them (a read of another process's calls reads their messages).
        if pending is None:
            pending = [(call.id, on) for call, on in self.session._pending_on_branches()]
        waiting = sum(1 for key in pending if key in self.rows)
        self.header.value = (
            f"<b>{waiting} tool call{'s' if waiting != 1 else ''} waiting for approval</b>"
            if waiting
            else ""
        )
