"""``SessionView``: what displaying a session shows, all views of it in one.

The status bar on top; the branch tree beside the chat; the tool approvals under
them. Its parts are attributes (``.status``, ``.tree``, ``.chat``, ``.approvals``)
and can be shown on their own. :func:`display_session` shows it followed by the
saved-notebook snapshot (:mod:`.snapshot`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as w
from IPython.display import display

from ._base import close_parts, shown_closed
from ._copy_hider import SavedCopyHider
from .approval import ToolApproval
from .branches import BranchTree
from .chat import ChatView
from .snapshot import Snapshot
from .status import StatusBar

if TYPE_CHECKING:
    from ..session import ContextSession

__all__ = ["SessionView", "display_session"]


class SessionView(w.VBox):  # type: ignore[misc]
    """Status, branch tree, chat and approvals of ``session``, live."""

    #: What shows a new view, said when this one is shown again once closed.
    REOPEN = "session.view() shows a new one"

    def __init__(self, session: ContextSession) -> None:
        self.session = session
        self.status = StatusBar(session)
        self.tree = BranchTree(session)
        self.chat = ChatView(session)
        self.approvals = ToolApproval(session)
        # Hides the snapshot below on a live page (it repeats this view).
        self.copy_hider = SavedCopyHider()
        # Set on the parts' own layouts: a layout replaced would stay registered, unclosed.
        self.tree.layout.width = "28%"
        self.tree.layout.min_width = "180px"
        self.tree.layout.overflow = "auto"
        self.chat.layout.flex = "1 1 auto"
        self.chat.layout.width = "auto"
        super().__init__(
            [
                self.status,
                w.HBox([self.tree, self.chat], layout=w.Layout(width="100%")),
                self.approvals,
                self.copy_hider,
            ],
            layout=w.Layout(width="100%"),
        )
        self.add_class("cm-session")
        self.snapshot: Snapshot | None = None

    def __repr__(self) -> str:
        return "<cm_notebook SessionView>"

    def _ipython_display_(self) -> None:
        # Shown on its own (``session.view()``, ``%cm``): the live view, then the static
        # snapshot a notebook saved without widget state still shows (a text/html in
        # the widget's own bundle would not be: DESIGN fact 10).
        if shown_closed(self, self.REOPEN):  # nor its snapshot: it keeps its last content
            return
        display(self._repr_mimebundle_(), raw=True)  # type: ignore[no-untyped-call]
        # Displayed again in a later cell, the one snapshot shows one more copy and
        # keeps every copy current (the earlier cell's must not stay stale when saved).
        if self.snapshot is None:
            self.snapshot = Snapshot(self.session, copy_id=self.copy_hider.copy_id)
        self.snapshot.display()

    def close(self) -> None:
        """Stop following the session and close every part (harmless twice)."""
        snapshot = getattr(self, "snapshot", None)  # none when construction failed half-way
        if snapshot is not None:
            snapshot.close()
        # The status, tree, chat and approvals close as parts: each stops following too.
        close_parts(self)
        super().close()


def display_session(session: ContextSession) -> SessionView:
    """Display the live view of ``session`` and, below it, its saved-notebook snapshot."""
    view = SessionView(session)
    display(view)  # type: ignore[no-untyped-call]
    return view
