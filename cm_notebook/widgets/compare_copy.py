"""The saved copy of a comparison: static HTML that a notebook keeps without a kernel.

A comparison shown on its own (``session.compare_view(...)``, ``%cm compare``,
``%%cm --ab``) is a widget, and widget state is not saved by default (JupyterLab, VS
Code, Colab); a ``text/html`` placed beside the widget in its own bundle is not shown
either when the widget cannot render (DESIGN fact 10). So the widget is followed by a
separate ``display_data`` output with the comparison's static HTML
(``Comparison._repr_html_``) and a short, stable ``text/plain`` for nbval, replaced in
place through its display id whenever a compared branch's turn ends: a notebook saved
afterwards, and its nbconvert HTML, show the comparison without a kernel. Its metadata
records, under ``cm_notebook``, the context and each arm's reply provenance
(:meth:`ComparisonSnapshot.provenance`). A fan-out's arm (``%%cm --ab`` /
``--fanout``) whose own reply has not started yet shows and records no answer, not the
one it was forked after (:func:`own_answers`). On a live page the widget's
:class:`~cm_notebook.widgets._copy_hider.SavedCopyHider` hides the copy.
"""

from __future__ import annotations

import html as html_text
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.display import display

from .. import events as ev
from .._theme import MUTED
from ..compare import BranchResult, Comparison
from ..errors import CMError
from ..provenance import provenance_of
from ._base import SETTLED_STATES, FollowingCopy, SessionFollower, Throttle, shown_closed
from ._copy_hider import SavedCopyHider, mark_copy
from ._live_output import LiveOutput, register_copy

if TYPE_CHECKING:
    from ..fanout import FanOut
    from ..session import ContextSession

__all__ = ["PLAIN", "ComparisonSnapshot", "own_answers", "said_html", "show_widget"]

#: The ``text/plain`` of a comparison's saved copy: short and stable for nbval.
PLAIN = "<cm_notebook comparison (HTML)>"

#: Seconds between two updates of the saved copy (each re-sends the whole comparison).
INTERVAL = 0.5


def said_html(text: str) -> str:
    """``text`` as the grey line a copy shows in place of a comparison."""
    return f'<div><span style="color:{MUTED}">{html_text.escape(text)}</span></div>'


def show_widget(widget: Any, remedy: str) -> str | None:
    """Show ``widget`` as IPython would without ``_ipython_display_``; return the id of
    the part that hides its saved copy (added if it has none) on a live page.

    A closed ``widget`` is not shown: a line says it was closed and ``remedy`` (what
    shows a new one), and None is returned (it has no saved copy to show either)."""
    if shown_closed(widget, remedy):
        return None
    # The widget's own bundle, as IPython would show it without _ipython_display_, with
    # a part that hides the saved copy shown after it on a live page; returns its id.
    hider = next((c for c in widget.children if isinstance(c, SavedCopyHider)), None)
    if hider is None:
        hider = SavedCopyHider()
        widget.children = (*widget.children, hider)
    display(widget._repr_mimebundle_(), raw=True)  # type: ignore[no-untyped-call]
    return str(hider.copy_id)


def own_answers(
    session: ContextSession, comparison: Comparison, forked_at: str | None
) -> Comparison:
    """``comparison`` of a fan-out's arms, forked after message ``forked_at`` (None:
    from a branch with no messages), with each arm's answer only if it is its own.

    ``session.compare()`` gives a branch its last answer, which for an arm whose reply
    has not started yet is the one it was forked after (the base branch's): shown or
    recorded as the arm's, a notebook saved then would say that the arm gave it. Such an
    arm is shown as having no reply yet (:attr:`BranchResult.pending`), under its own
    system prompt."""
    results: list[BranchResult] = []
    for result in comparison.results:
        if not _answered_since(session, result, forked_at):
            result = BranchResult(
                branch=result.branch,
                system_prompt=session.system_prompt_of(result.branch),
                pending=True,
            )
        results.append(result)
    return Comparison(results=results)


def _answered_since(session: ContextSession, result: BranchResult, forked_at: str | None) -> bool:
    # Whether the reply ``result`` shows comes after the fork on its branch's path.
    if result.message_id is None:
        return False
    path = session._io.call(session._store.path(session.id, result.branch))
    if forked_at is not None and forked_at in path:
        path = path[path.index(forked_at) + 1 :]
    return result.message_id in path


class ComparisonSnapshot(FollowingCopy):
    """``branches`` of ``session`` compared, as static HTML kept current in one output.

    A compared branch deleted since (here or in another process) is dropped; once
    fewer than two are left, the output says so and is no longer updated. An error of
    the session's while updating is said in the output too: updates run on a signal,
    while any cell may be running, and a traceback would land in that cell.
    """

    def __init__(
        self,
        session: ContextSession,
        branches: list[str],
        variables: dict[str, str] | None = None,
        copy_id: str | None = None,
        waiting: str = "",
        explain: Callable[[BaseException], str] = str,
        fan: FanOut | None = None,
    ) -> None:
        self.session = session
        #: The fan-out whose arms are compared, if they are one's (see own_answers).
        self.fan = fan
        #: How the copy says an error of the session's (the magics say it in their terms).
        self.explain = explain
        #: The HTML shown while there are no branches to compare yet.
        self.waiting = waiting
        #: Marks the HTML for the live view's :class:`SavedCopyHider`.
        self.copy_id = copy_id
        self.branches = list(branches)
        #: The kernel variables that fed the arms' message (``%%cm --ab {name}``).
        self.variables = dict(variables or {})
        self._deleted: list[str] = []  # compared branches deleted since, in that order
        self._output = LiveOutput()
        self._follower = SessionFollower(session, self._on_event, lambda _text: None)
        self._throttle = Throttle(self._follower.loop, INTERVAL, self._update)

    def __repr__(self) -> str:
        return f"<cm_notebook ComparisonSnapshot of {self.branches}>"

    def html(self) -> str:
        """The comparison as it stands (each branch's last answer so far)."""
        if not self.branches:
            return self.waiting
        return self._compared()._repr_html_()

    def follow(self, branches: list[str], fan: FanOut | None = None) -> None:
        """Compare ``branches`` from now on (a queued ``%%cm --ab`` cell's arms, once
        they are forked: those of ``fan``); the output is brought up to date at once."""
        self.branches = list(branches)
        if fan is not None:
            self.fan = fan
        self._update()

    def _compared(self) -> Comparison:
        # The compared branches' last answers; a fan-out's arm has only its own.
        comparison = self.session.compare(*self.branches)
        if self.fan is None:
            return comparison
        return own_answers(self.session, comparison, self.fan.forked_at)

    def failed(self, message: str) -> None:
        """Say ``message`` (why nothing is compared) in place of the waiting line: a
        saved notebook must not say for good that the comparison is still to come."""
        self.waiting = said_html(message)
        self._update()

    def provenance(self, comparison: Comparison | None = None) -> dict[str, Any]:
        """What the output's metadata records under ``cm_notebook``: the context, and
        per arm its branch and the provenance of its last answer (provider, model,
        parameters, seed, request id and hash, the kernel variables that fed it), or
        ``"status": None`` while it has none (a fan-out's arm: none of its own)."""
        if not self.branches:
            return {"context_id": self.session.id, "arms": []}
        if comparison is None:
            comparison = self._compared()
        arms: list[dict[str, Any]] = []
        for result in comparison.results:
            arm: dict[str, Any] = {"branch": result.branch, "status": None}
            if result.message_id is not None:
                try:
                    answer = self.session.get(result.message_id)
                except CMError as exc:  # unreadable: say so rather than drop the arm
                    arm.update(message_id=result.message_id, status="unreadable", error=str(exc))
                else:
                    arm.update(provenance_of(answer, self.variables))
            arms.append(arm)
        return {"context_id": self.session.id, "arms": arms}

    def display(self) -> None:
        """Emit one more copy of the output (in the current cell); later updates
        replace every copy in place (a view displayed again in a later cell keeps
        its earlier copy current too: see :class:`LiveOutput`)."""
        self._output.show(*self._bundle())
        register_copy(self)

    def _bundle(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if not self.branches:  # a queued cell's arms are not forked yet, or too few left
            return self._said_bundle(self.waiting)
        try:
            comparison = self._compared()
            html = mark_copy(comparison._repr_html_(), self.copy_id)
            metadata = self.provenance(comparison)
        except CMError as exc:
            # Updates run on a signal, while any cell may be running: a traceback would
            # land in that cell. (A branch deleted by another process is missing until
            # its signal arrives here: the update after that compares the rest.)
            return self._said_bundle(said_html(f"not compared: {self.explain(exc)}"))
        return {"text/html": html, "text/plain": PLAIN}, {"cm_notebook": metadata}

    def _said_bundle(self, html: str) -> tuple[dict[str, Any], dict[str, Any]]:
        # A line in place of the comparison; the metadata records no arm.
        bundle = {"text/html": mark_copy(html, self.copy_id), "text/plain": PLAIN}
        return bundle, {"cm_notebook": {"context_id": self.session.id, "arms": []}}

    def _drop(self, branch: str) -> None:
        # A compared branch was deleted: compare the rest, or with fewer than two left,
        # say so for good (a saved notebook must not show the branch as if it were
        # still there) and stop following.
        self.branches = [name for name in self.branches if name != branch]
        self._deleted.append(branch)
        if len(self.branches) >= 2:
            self._throttle.poke()
            return
        self.branches = []
        self.close()
        names = ", ".join(map(repr, self._deleted))
        was = "was" if len(self._deleted) == 1 else "were"
        self.failed(
            f"not compared any more: branch {names} {was} deleted, and a comparison "
            "needs two or more branches"
        )

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.StateChanged):
            if event.branch in self.branches and event.new.value in SETTLED_STATES:
                self._throttle.poke()
        elif isinstance(event, ev.BranchDeleted):
            if event.branch in self.branches:
                self._drop(event.branch)
        elif isinstance(event, (ev.BranchUpdated, ev.Resync)):
            self._throttle.poke()

    def _update(self) -> None:
        if self._output.shown:
            self._output.update(*self._bundle())
