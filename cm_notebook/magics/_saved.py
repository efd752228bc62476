"""What ``%cm``, ``%cm compare`` and ``%%cm --ab`` / ``--fanout`` leave in a saved notebook.

Their live views are widgets, and widget state is not saved by default. So, as
displaying a session or a comparison does, each view here is followed by a separate
``display_data`` output with static HTML that is replaced in place whenever a shown
branch's turn ends (:mod:`cm_notebook.widgets.compare_copy`,
:mod:`cm_notebook.widgets.snapshot`): a notebook saved afterwards shows the
conversation or the comparison without a kernel. What the magics add: a copy that
waits for the cells above it (a queued ``--ab`` cell, ``%cm compare`` under Run All,
a ``%cm`` view that waits for a ``%cm branch`` or ``switch`` above it), and errors said
in the magics' terms.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..widgets import CompareView, SessionView
from ..widgets._base import close_parts
from ..widgets._copy_hider import mark_copy
from ..widgets.compare_copy import ComparisonSnapshot, said_html, show_widget
from ..widgets.snapshot import PLAIN as SNAPSHOT_PLAIN
from ..widgets.snapshot import Snapshot
from ._comparison import ComparisonView
from ._queue import release, wait_for
from ._remedies import said
from ._reply import note

if TYPE_CHECKING:
    from ..fanout import FanOut
    from ..session import ContextSession

__all__ = [
    "LaterCompareView",
    "LaterSessionView",
    "SavedCompareView",
    "SavedComparisonView",
    "SavedSessionView",
]

#: What a queued comparison's copy says until its arms are forked.
_WAITING = f"<div>{note('… waits for the replies above it, then asks')}</div>"

#: What a ``%cm`` view below a branch command still to come says until it has run.
_SHOWS_LATER = "… shows the conversation once the commands above have run"

#: What a ``%cm compare`` copy says until the cells above it have run.
_COMPARES_LATER = f"<div>{note('… compares once the cells above have run')}</div>"


class SavedSessionView(SessionView):
    """What ``%cm`` shows: the session's live view, then its saved-notebook snapshot
    (as every :class:`~cm_notebook.widgets.SessionView` shown on its own does)."""

    REOPEN = "%cm (or session.view()) shows a new one"


class _AfterCells(w.VBox):  # type: ignore[misc]
    """A box that says it waits for the cells above (``waits``), then puts a live part
    in its place on the session's loop (:meth:`_when_ready`); closing it closes that
    part and its saved copy."""

    saved: Any = None
    #: Why nothing is shown, once that is known (the saved copy says it too).
    failure: str | None = None

    def __init__(
        self,
        session: ContextSession,
        waits: Sequence[concurrent.futures.Future[None]],
        waiting: str,
    ) -> None:
        self.session = session
        self._waits = list(waits)
        super().__init__([w.HTML(note(waiting))])
        session._loop.call_soon_threadsafe(self._begin)

    def _live(self) -> w.Widget | None:
        """The live part, once made."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop following the session (the saved copy keeps its last content)."""
        live = self._live()
        if live is not None:
            live.close()
        if self.saved is not None:
            self.saved.close()
        close_parts(self)  # its note and placeholder, their layouts (a box closes no part)
        super().close()

    def _begin(self) -> None:
        asyncio.get_running_loop().create_task(self._when_ready())

    async def _when_ready(self) -> None:
        raise NotImplementedError


class LaterSessionView(_AfterCells):
    """What ``%cm`` shows below a command or cell still to come that may change the
    active branch (``%cm branch``, ``%cm switch``, a queued ``--system`` cell: Run
    All): a line saying it waits, then, once every one of ``waits`` is done, the live
    view of the context in its place, on the branch active then (as one by one), and
    its saved copy. Nothing waits for the replies above it to end: they stream into it."""

    saved: _LaterSnapshot | None = None

    def __init__(
        self, session: ContextSession, waits: Sequence[concurrent.futures.Future[None]]
    ) -> None:
        #: The live view, once the commands above have run (None until then).
        self.view: SessionView | None = None
        #: Done once the view is made (or failed): the cells and commands below wait
        #: for that, so a ``%cm switch`` below does not move it first.
        self.attached: concurrent.futures.Future[None] = concurrent.futures.Future()
        super().__init__(session, waits, _SHOWS_LATER)

    def __repr__(self) -> str:
        return "<cm_notebook SessionView after the cells above>"

    def _ipython_display_(self) -> None:
        copy_id = show_widget(self, SavedSessionView.REOPEN)
        if copy_id is None:  # closed
            return
        if self.saved is None:
            self.saved = _LaterSnapshot(self.session, copy_id)
        self.saved.display()
        # Made on the loop, as the view: whichever comes first, the copy follows it.
        self.session._loop.call_soon_threadsafe(self._copy_follows)

    def _live(self) -> w.Widget | None:
        return self.view

    async def _when_ready(self) -> None:
        box: Any = self  # (ipywidgets' traits are untyped)
        try:
            await wait_for(self._waits)
            if self.comm is None:  # closed meanwhile: nothing to show, nor to follow
                return
            self.view = SessionView(self.session)
        except Exception as exc:  # a view must never take the kernel down
            self.failure = f"not shown: {said(exc, self.session)}"
            self.children = (w.HTML(note(self.failure)), *box.children[1:])
        else:
            self.children = (self.view, *box.children[1:])
        finally:
            release(self.attached)
        self._copy_follows()

    def _copy_follows(self) -> None:
        # On the loop: the copy shows the conversation once the view is made (or why
        # it is not), and stops saying that it waits.
        if self.saved is None or not self.saved.waits:
            return
        if self.view is not None:
            self.saved.follow()
        elif self.failure is not None:
            self.saved.failed(self.failure)


class _LaterSnapshot(Snapshot):
    """The saved copy of a :class:`LaterSessionView`: a line saying it waits, then the
    conversation (its active branch), kept current as every :class:`Snapshot`."""

    def __init__(self, session: ContextSession, copy_id: str) -> None:
        super().__init__(session, copy_id=copy_id)
        self._waiting: str | None = f"<div>{note(_SHOWS_LATER)}</div>"

    @property
    def waits(self) -> bool:
        """Whether it still says that it waits."""
        return self._waiting is not None

    def follow(self) -> None:
        """Show the conversation from now on (brought up to date at once)."""
        self._waiting = None
        self._update()

    def failed(self, message: str) -> None:
        """Say ``message`` for good: a saved notebook must not say it still waits."""
        self._waiting = said_html(message)
        self._update()

    def _bundle(self) -> dict[str, Any]:
        if self._waiting is None:
            return super()._bundle()
        return {"text/html": mark_copy(self._waiting, self.copy_id), "text/plain": SNAPSHOT_PLAIN}


class SavedCompareView(CompareView):
    """What ``%cm compare`` shows: the live comparison, then its saved copy (as every
    :class:`~cm_notebook.widgets.CompareView` shown on its own), errors in the copy
    said in the magics' terms."""

    REOPEN = "%cm compare (or session.compare_view(...)) shows a new one"

    def _saved_copy(self, copy_id: str) -> ComparisonSnapshot:
        return ComparisonSnapshot(
            self.session,
            self.branch_names,
            copy_id=copy_id,
            waiting=_WAITING,
            explain=partial(said, session=self.session),
        )


class LaterCompareView(_AfterCells):
    """What ``%cm compare`` shows while this kernel's cells in the context are under way
    (Run All): a line saying it waits, then, once every one of ``waits`` is done, the
    live comparison of ``branches`` (default: every branch then, the arms of an
    ``--ab`` cell above included) in its place, and its saved copy."""

    saved: ComparisonSnapshot | None = None

    def __init__(
        self,
        session: ContextSession,
        branches: Sequence[str],
        waits: Sequence[concurrent.futures.Future[None]],
    ) -> None:
        self.requested = list(branches)
        #: The live comparison, once the cells above have run (None until then).
        self.compare: CompareView | None = None
        #: Done once the branches it compares are chosen (or it failed): the cells after
        #: it wait for that, so it does not compare the arms of an ``--ab`` cell below.
        self.chosen: concurrent.futures.Future[None] = concurrent.futures.Future()
        super().__init__(session, waits, "… compares once the cells above have run")

    def __repr__(self) -> str:
        return "<cm_notebook comparison after the cells above>"

    def _ipython_display_(self) -> None:
        copy_id = show_widget(self, "run the %cm compare cell again for a new one")
        if copy_id is None:  # closed
            return
        if self.saved is None:
            waiting = _COMPARES_LATER if self.failure is None else said_html(self.failure)
            self.saved = ComparisonSnapshot(
                self.session,
                [],
                copy_id=copy_id,
                waiting=waiting,
                explain=partial(said, session=self.session),
            )
        self.saved.display()

    def _live(self) -> w.Widget | None:
        return self.compare

    async def _when_ready(self) -> None:
        box: Any = self  # (ipywidgets' traits are untyped)
        try:
            await wait_for(self._waits)
            self.compare = CompareView(self.session, *self.requested)
        except Exception as exc:  # a view must never take the kernel down
            self.failure = f"not compared: {said(exc, self.session)}"
            self.children = (w.HTML(note(self.failure)), *box.children[1:])
            if self.saved is not None:
                self.saved.failed(self.failure)
            return
        finally:
            release(self.chosen)
        self.children = (self.compare, *box.children[1:])
        if self.saved is not None:
            self.saved.follow(self.compare.branch_names)


class SavedComparisonView(ComparisonView):
    """What ``%%cm --ab`` / ``--fanout`` show: the arms live, then the saved comparison."""

    saved: ComparisonSnapshot | None = None
    #: The kernel variables that fed the arms' message (recorded in the saved copy).
    variables: dict[str, str] | None = None
    #: Why a queued cell was not sent, once that is known (the saved copy says it too).
    failure: str | None = None

    def _ipython_display_(self) -> None:
        # Its replies stay in their branches: a comparison of them can be shown anew.
        copy_id = show_widget(
            self, "%cm compare (or session.compare_view(...)) compares its arms again"
        )
        if copy_id is None:  # closed
            return
        if self.saved is None:
            waiting = _WAITING if self.failure is None else said_html(self.failure)
            self.saved = ComparisonSnapshot(
                self.session,
                self.branches,
                self.variables,
                copy_id=copy_id,
                waiting=waiting,
                explain=said,
                fan=self.fan,
            )
        self.saved.display()

    def filled_in(self, variables: dict[str, str]) -> None:
        """The kernel variables that fed a queued cell's message, once it is sent."""
        self.variables = dict(variables)
        if self.saved is not None:
            self.saved.variables = dict(variables)

    def _forked_now(self, fan: FanOut) -> None:
        if self.saved is not None:
            self.saved.follow(fan.branches, fan)

    def _not_sent(self, why: str) -> None:
        # A saved notebook must not say for good that the cell still asks.
        self.failure = why
        if self.saved is not None:
            self.saved.failed(why)

    def close(self) -> None:
        """Stop following the session (the saved copy keeps its last content)."""
        if self.saved is not None:
            self.saved.close()
        super().close()
