"""What ``%cm``, ``%cm compare`` and ``%%cm --ab`` / ``--fanout`` leave in a saved notebook.

Their live views are widgets, and widget state is not saved by default. So, as
displaying a session or a comparison does, each view here is followed by a separate
``display_data`` output with static HTML that is replaced in place whenever a shown
branch's turn ends (:mod:`cm_notebook.widgets.compare_copy`,
:mod:`cm_notebook.widgets.snapshot`): a notebook saved afterwards shows the
conversation or the comparison without a kernel. What the magics add: a copy that
waits for the cells above it (a queued ``--ab`` cell, ``%cm compare`` under Run All),
and errors said in the magics' terms.
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
from ..widgets.compare_copy import ComparisonSnapshot, said_html, show_widget
from ._comparison import ComparisonView
from ._queue import release, wait_for
from ._remedies import said
from ._reply import note

if TYPE_CHECKING:
    from ..fanout import FanOut
    from ..session import ContextSession

__all__ = [
    "LaterCompareView",
    "SavedCompareView",
    "SavedComparisonView",
    "SavedSessionView",
]

#: What a queued comparison's copy says until its arms are forked.
_WAITING = f"<div>{note('… waits for the replies above it, then asks')}</div>"

#: What a ``%cm compare`` copy says until the cells above it have run.
_COMPARES_LATER = f"<div>{note('… compares once the cells above have run')}</div>"


class SavedSessionView(SessionView):
    """What ``%cm`` shows: the session's live view, then its saved-notebook snapshot
    (as every :class:`~cm_notebook.widgets.SessionView` shown on its own does)."""

    REOPEN = "%cm (or session.view()) shows a new one"


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
        #: Done once the branches it compares are chosen (or it failed): the cells after
        #: it wait for that, so it does not compare the arms of an ``--ab`` cell below.
        self.chosen: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._waits = list(waits)
        super().__init__([w.HTML(note("… compares once the cells above have run"))])
        session._loop.call_soon_threadsafe(self._begin)

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
