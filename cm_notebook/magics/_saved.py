"""What ``%cm``, ``%cm compare`` and ``%%cm --ab`` / ``--fanout`` leave in a saved notebook.

Their live views are widgets, and widget state is not saved by default (JupyterLab,
VS Code, Colab); a ``text/html`` placed beside the widget in its own bundle is not
shown either when the widget cannot render (DESIGN fact 10). So, as displaying a
session does, each view here is followed by a separate ``display_data`` output with
static HTML (and a short, stable ``text/plain`` for nbval) that is replaced in place
through its display id whenever a shown branch's turn ends: a notebook saved
afterwards, and its nbconvert HTML, show the conversation or the comparison without
a kernel. The HTML is the project's own static rendering
(:func:`~cm_notebook.widgets.snapshot_html`, ``Comparison._repr_html_``). A
comparison's output metadata records, under ``cm_notebook``, the context and each
arm's reply provenance (:meth:`ComparisonSnapshot.provenance`), as a ``%%cm`` reply's
does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from IPython.display import display

from .. import events as ev
from ..errors import CMError
from ..provenance import provenance_of
from ..widgets import CompareView, SessionView
from ..widgets._base import SessionFollower, Throttle, close_parts
from ..widgets._copy_hider import SavedCopyHider, mark_copy
from ..widgets._live_output import LiveOutput, register_copy
from ._comparison import ComparisonView
from ._queue import wait_for
from ._remedies import said
from ._reply import note

if TYPE_CHECKING:
    from ..compare import Comparison
    from ..fanout import FanOut
    from ..session import ContextSession

__all__ = [
    "PLAIN",
    "ComparisonSnapshot",
    "LaterCompareView",
    "SavedCompareView",
    "SavedComparisonView",
    "SavedSessionView",
]

#: The ``text/plain`` of a comparison's saved copy: short and stable for nbval.
PLAIN = "<cm_notebook comparison (HTML)>"

#: Seconds between two updates of the saved copy (each re-sends the whole comparison).
INTERVAL = 0.5

#: What a queued comparison's copy says until its arms are forked.
_WAITING = f"<div>{note('… waits for the replies above it, then asks')}</div>"

#: What a ``%cm compare`` copy says until the cells above it have run.
_COMPARES_LATER = f"<div>{note('… compares once the cells above have run')}</div>"

#: The states in which a branch's turn is over (or waits for a person): worth a copy.
_SETTLED = ("Idle", "PermanentFailure", "AwaitingToolApproval")


def _show_widget(widget: Any) -> str:
    # The widget's own bundle, as IPython would show it without _ipython_display_, with
    # a part that hides the saved copy shown after it on a live page; returns its id.
    hider = next((c for c in widget.children if isinstance(c, SavedCopyHider)), None)
    if hider is None:
        hider = SavedCopyHider()
        widget.children = (*widget.children, hider)
    display(widget._repr_mimebundle_(), raw=True)  # type: ignore[no-untyped-call]
    return str(hider.copy_id)


class ComparisonSnapshot:
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
        waiting: str = _WAITING,
    ) -> None:
        self.session = session
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
        return self.session.compare(*self.branches)._repr_html_()

    def follow(self, branches: list[str]) -> None:
        """Compare ``branches`` from now on (a queued ``%%cm --ab`` cell's arms, once
        they are forked); the output is brought up to date at once."""
        self.branches = list(branches)
        self._update()

    def failed(self, message: str) -> None:
        """Say ``message`` (why nothing is compared) in place of the waiting line: a
        saved notebook must not say for good that the comparison is still to come."""
        self.waiting = _said(message)
        self._update()

    def provenance(self, comparison: Comparison | None = None) -> dict[str, Any]:
        """What the output's metadata records under ``cm_notebook``: the context, and
        per arm its branch and the provenance of its last answer (provider, model,
        parameters, seed, request id and hash, the kernel variables that fed it), or
        ``"status": None`` while it has none."""
        if not self.branches:
            return {"context_id": self.session.id, "arms": []}
        if comparison is None:
            comparison = self.session.compare(*self.branches)
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
            comparison = self.session.compare(*self.branches)
            html = mark_copy(comparison._repr_html_(), self.copy_id)
            metadata = self.provenance(comparison)
        except CMError as exc:
            # Updates run on a signal, while any cell may be running: a traceback would
            # land in that cell. (A branch deleted by another process is missing until
            # its signal arrives here: the update after that compares the rest.)
            return self._said_bundle(_said(f"not compared: {said(exc)}"))
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

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the copy is updated on (the session's)."""
        return self._follower.loop

    def flush_pending(self) -> None:
        """Send a waiting update now (on :attr:`loop`)."""
        self._throttle.flush_pending()

    def close(self) -> None:
        """Stop updating the output (it keeps its last content)."""
        self._follower.close()
        self._throttle.cancel()

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.StateChanged):
            if event.branch in self.branches and event.new.value in _SETTLED:
                self._throttle.poke()
        elif isinstance(event, ev.BranchDeleted):
            if event.branch in self.branches:
                self._drop(event.branch)
        elif isinstance(event, (ev.BranchUpdated, ev.Resync)):
            self._throttle.poke()

    def _update(self) -> None:
        if self._output.shown:
            self._output.update(*self._bundle())


class SavedSessionView(SessionView):
    """What ``%cm`` shows: the session's live view, then its saved-notebook snapshot
    (as every :class:`~cm_notebook.widgets.SessionView` shown on its own does)."""


class SavedCompareView(CompareView):
    """What ``%cm compare`` shows: the live comparison, then its saved copy."""

    saved: ComparisonSnapshot | None = None

    def _ipython_display_(self) -> None:
        copy_id = _show_widget(self)
        if self.saved is None:
            self.saved = ComparisonSnapshot(self.session, self.branch_names, copy_id=copy_id)
        self.saved.display()

    def close(self) -> None:
        """Stop following the session (the saved copy keeps its last content)."""
        if self.saved is not None:
            self.saved.close()
        super().close()


class LaterCompareView(w.VBox):  # type: ignore[misc]
    """What ``%cm compare`` shows while this kernel's cells in the context are under way
    (Run All): a line saying it waits, then, once every one of ``waits`` is done, the
    live comparison of ``branches`` (default: every branch then, the arms of an
    ``--ab`` cell above included) in its place, and its saved copy."""

    saved: ComparisonSnapshot | None = None
    #: Why nothing was compared, once that is known (the saved copy says it too).
    failure: str | None = None

    def __init__(
        self,
        session: ContextSession,
        branches: Sequence[str],
        waits: Sequence[concurrent.futures.Future[None]],
    ) -> None:
        self.session = session
        self.requested = list(branches)
        #: The live comparison, once the cells above have run (None until then).
        self.compare: CompareView | None = None
        self._waits = list(waits)
        super().__init__([w.HTML(note("… compares once the cells above have run"))])
        session._loop.call_soon_threadsafe(self._begin)

    def __repr__(self) -> str:
        return "<cm_notebook comparison after the cells above>"

    def _ipython_display_(self) -> None:
        copy_id = _show_widget(self)
        if self.saved is None:
            waiting = _COMPARES_LATER if self.failure is None else _said(self.failure)
            self.saved = ComparisonSnapshot(self.session, [], copy_id=copy_id, waiting=waiting)
        self.saved.display()

    def close(self) -> None:
        """Stop following the session (the saved copy keeps its last content)."""
        if self.compare is not None:
            self.compare.close()
        if self.saved is not None:
            self.saved.close()
        close_parts(self)  # its note and placeholder, their layouts (a box closes no part)
        super().close()

    def _begin(self) -> None:
        asyncio.get_running_loop().create_task(self._when_ready())

    async def _when_ready(self) -> None:
        box: Any = self  # (ipywidgets' traits are untyped)
        try:
            await wait_for(self._waits)
            self.compare = CompareView(self.session, *self.requested)
        except Exception as exc:  # a view must never take the kernel down
            self.failure = f"not compared: {said(exc)}"
            self.children = (w.HTML(note(self.failure)), *box.children[1:])
            if self.saved is not None:
                self.saved.failed(self.failure)
            return
        self.children = (self.compare, *box.children[1:])
        if self.saved is not None:
            self.saved.follow(self.compare.branch_names)


def _said(text: str) -> str:
    return f"<div>{note(text)}</div>"


class SavedComparisonView(ComparisonView):
    """What ``%%cm --ab`` / ``--fanout`` show: the arms live, then the saved comparison."""

    saved: ComparisonSnapshot | None = None
    #: The kernel variables that fed the arms' message (recorded in the saved copy).
    variables: dict[str, str] | None = None

    def _ipython_display_(self) -> None:
        copy_id = _show_widget(self)
        if self.saved is None:
            self.saved = ComparisonSnapshot(
                self.session, self.branches, self.variables, copy_id=copy_id
            )
        self.saved.display()

    def filled_in(self, variables: dict[str, str]) -> None:
        """The kernel variables that fed a queued cell's message, once it is sent."""
        self.variables = dict(variables)
        if self.saved is not None:
            self.saved.variables = dict(variables)

    def _forked_now(self, fan: FanOut) -> None:
        if self.saved is not None:
            self.saved.follow(fan.branches)

    def close(self) -> None:
        """Stop following the session (the saved copy keeps its last content)."""
        if self.saved is not None:
            self.saved.close()
        super().close()
