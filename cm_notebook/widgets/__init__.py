"""Live notebook views of a :class:`~cm_notebook.session.ContextSession`.

One view per module; each only renders a session and reacts to its signals (no I/O
of its own), and each has a short, stable ``repr`` (nbval compares ``text/plain``):

- :class:`ChatView` (:mod:`.chat`): a branch with the reply streaming in live, send,
  stop, edit-and-resend, regenerate, ``< 2/3 >`` siblings, fork from any message.
- :class:`BranchTree` (:mod:`.branches`): the branches as a tree; switch by click.
- :class:`ToolApproval` (:mod:`.approval`): pending tool calls with editable,
  validated arguments; Approve / Deny with a reason.
- :class:`StatusBar` (:mod:`.status`): state per branch, retry countdown, errors and
  what to do, model, tokens, TTFT, tokens/s.
- :class:`CompareView` (:mod:`.compare`): branches side by side from where they diverge.
- :class:`SessionView` (:mod:`.session_view`): all of the above; what displaying a
  session shows, followed by a static HTML snapshot for saved notebooks
  (:mod:`.snapshot`).
"""

from __future__ import annotations

from .approval import ToolApproval
from .branches import BranchTree
from .chat import ChatView
from .compare import CompareView
from .session_view import SessionView, display_session
from .snapshot import Snapshot, snapshot_html
from .status import StatusBar

__all__ = [
    "BranchTree",
    "ChatView",
    "CompareView",
    "SessionView",
    "Snapshot",
    "StatusBar",
    "ToolApproval",
    "display_session",
    "snapshot_html",
]
