"""The saved-notebook copy of a conversation: static HTML updated through a display id.

Widget state is not saved by default (JupyterLab, VS Code, Colab), and HTML placed in
the widget's own output bundle is not shown where the widget cannot render (DESIGN
fact 10). So the composite view is followed by a separate ``display_data`` output with
``text/html`` (and a short, stable ``text/plain`` for nbval), which this class
replaces in place whenever a turn ends, the active branch changes or the context's
title or system prompt does. A notebook saved afterwards, and its nbconvert HTML,
show the conversation without a kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import events as ev
from .._cli_advice import for_contexts_in
from ..prompts import prompt_trail
from ..render import tool_results
from ._base import SETTLED_STATES, FollowingCopy, SessionFollower, Throttle
from ._copy_hider import mark_copy
from ._live_output import LiveOutput, register_copy
from ._messages import message_dict, transcript_html
from .chat import MESSAGES_SHOWN

if TYPE_CHECKING:
    from ..session import ContextSession

__all__ = ["PLAIN", "Snapshot", "snapshot_html"]

#: The ``text/plain`` of the snapshot output: short and stable, so nbval does not churn.
PLAIN = "<cm_notebook conversation (HTML)>"

#: Seconds between two updates of the snapshot (each re-sends the whole transcript).
SNAPSHOT_INTERVAL = 0.5


def snapshot_html(
    session: ContextSession, branch: str | None = None, *, last: int | None = None
) -> str:
    """The active branch (or ``branch``) of ``session`` as static HTML; with ``last``,
    only its last ``last`` messages (a line says how many are left out, and how to get
    the whole conversation)."""
    name = branch or session.active_branch
    history = session._read_path(name)
    names = {c.id: c.name for m in history for c in m.tool_calls}
    shown = history if last is None else history[-last:]
    results = tool_results(history)
    items = [message_dict(m, tool_names=names, tool_results=results) for m in shown]
    # Said for the session's folder: a saved notebook's reader pastes it as it is.
    whole = for_contexts_in(
        f"`cm-notebook export {session.id}` (or session.export() in Python) writes the "
        "whole conversation.",
        getattr(session._store, "data_dir", None),
    )
    # Each reply under the prompt it was made under (see prompt_trail), for the part shown.
    prompts = prompt_trail(shown, session.system_prompt_of(name))
    return transcript_html(
        session.title,
        name,
        prompts.first,
        items,
        prompts=prompts,
        earlier=len(history) - len(shown),
        whole=whole,
    )


class Snapshot(FollowingCopy):
    """Shows :func:`snapshot_html` as an output and keeps it current."""

    def __init__(self, session: ContextSession, copy_id: str | None = None) -> None:
        self.session = session
        #: Marks the HTML for the live view's :class:`~._copy_hider.SavedCopyHider`.
        self.copy_id = copy_id
        self._output = LiveOutput()
        self._follower = SessionFollower(session, self._on_event, lambda _text: None)
        self._throttle = Throttle(self._follower.loop, SNAPSHOT_INTERVAL, self._update)

    def __repr__(self) -> str:
        return "<cm_notebook Snapshot>"

    def _bundle(self) -> dict[str, Any]:
        # As many messages as the live view shows at first: the copy is sent whole again
        # after every turn, and saved in the notebook.
        html = mark_copy(snapshot_html(self.session, last=MESSAGES_SHOWN), self.copy_id)
        return {"text/html": html, "text/plain": PLAIN}

    def display(self) -> None:
        """Emit one more copy of the output (in the current cell); later updates
        replace every copy in place."""
        self._output.show(self._bundle())
        register_copy(self)

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.StateChanged):
            if event.branch == self.session.active_branch and event.new.value in SETTLED_STATES:
                self._throttle.poke()
        elif isinstance(event, (ev.BranchSwitched, ev.BranchUpdated, ev.ContextUpdated, ev.Resync)):
            # ContextUpdated: the copy shows the context's title (renamed by hand, or
            # set by auto_title after the turn that named it has already ended) and
            # its system prompt.
            self._throttle.poke()

    def _update(self) -> None:
        if self._output.shown:
            self._output.update(self._bundle())
