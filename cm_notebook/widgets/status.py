"""``StatusBar``: where each branch is, and what its last reply cost.

One chip per branch that is busy or failed, and always one for the active branch:
the state machine's state, the retry countdown in ``TransientFailure`` (counted down by
the front end, so it costs no messages), the error and what to do in
``PermanentFailure``, and for the last reply its model, tokens, time to first token
and tokens per second (of a reply that completed).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets as t

from .. import events as ev
from ..model import MessageStatus
from ._base import FollowingView, static_text
from ._messages import stats_of

if TYPE_CHECKING:
    from ..session import ContextSession

__all__ = ["StatusBar"]

_RETRY_IN = re.compile(r"retrying in ([0-9.]+) s")

_WHAT_TO_DO = {
    "PermanentFailure": "Fix the cause (key, model name, network), then ↻ in the chat or "
    "session.retry(); or edit the prompt.",
}


class StatusBar(FollowingView, anywidget.AnyWidget):
    """State per branch, retry countdown, error and what to do, model and speed."""

    _esm = static_text("isolated.js") + static_text("status.js")
    _css = static_text("views.css")

    rows = t.List(t.Dict(), help="one entry per shown branch (see the module docstring)").tag(
        sync=True
    )

    def __init__(self, session: ContextSession) -> None:
        super().__init__()
        self._errors: dict[str, dict[str, Any]] = {}  # branch -> last error, while it applies
        self._follow(session, 0.25)
        self._render()

    def __repr__(self) -> str:
        return "<cm_notebook StatusBar>"

    def _show_error(self, text: str) -> None:
        self._errors[self.session.active_branch] = {"error": text, "retry_at": None}
        self._throttle.poke()

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ErrorReported) and event.branch:
            retry = _RETRY_IN.search(event.message)
            retry_at = event.at.timestamp() + float(retry.group(1)) if retry else None
            self._errors[event.branch] = {
                "error": event.message,
                "kind": event.kind,
                "retry_at": retry_at * 1000 if retry_at else None,
            }
            self._throttle.now()
        elif isinstance(event, ev.StateChanged):
            new, old = event.new.value, event.old.value
            # A new turn, a new attempt streaming, or a good end: the old error is history.
            if event.branch and (
                new in ("Streaming", "Idle") or (old, new) == ("Idle", "AwaitingResponse")
            ):
                self._errors.pop(event.branch, None)
            self._throttle.now()
        elif isinstance(event, (ev.BranchSwitched, ev.BranchCreated, ev.BranchDeleted)):
            if not isinstance(event, ev.BranchSwitched):
                # A deleted branch's error is not one of a new branch made under its name.
                self._errors.pop(event.branch, None)
            # A person's click, rare: the chip changes with the tree, not a beat later.
            self._throttle.now()
        elif isinstance(event, (ev.MessageCompleted, ev.Resync)):
            if isinstance(event, ev.Resync):
                # The signals missed may have deleted branches: their errors go with them.
                known = set(self.session.branch_names)
                self._errors = {k: v for k, v in self._errors.items() if k in known}
            self._throttle.poke()

    def _render(self) -> None:
        session = self.session
        active = session.active_branch
        rows = []
        for name in session.branch_names:
            state = session.state_of(name).value
            if name != active and state == "Idle" and name not in self._errors:
                continue
            row: dict[str, Any] = {"branch": name, "active": name == active, "state": state}
            error = self._errors.get(name)
            if error is not None:
                row["error"] = error["error"]
                if state == "TransientFailure" and error.get("retry_at"):
                    row["retry_at"] = error["retry_at"]
            if state in _WHAT_TO_DO:
                row["hint"] = _WHAT_TO_DO[state]
            history = session.history(name, limit=8)
            reply = next((m for m in reversed(history) if m.role == "assistant"), None)
            if reply is not None:
                stats = stats_of(reply)
                # Tokens and speed of a failed or interrupted reply are an attempt's,
                # not a reply's: only its model is shown.
                ok = reply.status is MessageStatus.COMPLETE
                row["stats"] = stats if ok else {"model": stats["model"]}
            rows.append(row)
        rows.sort(key=lambda r: not r["active"])
        self.rows = rows
