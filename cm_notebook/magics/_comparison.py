"""What ``%%cm --ab`` / ``--fanout`` show: the arms of a fan-out side by side, live.

The view is made at once. When the cell before it on the same branch is still under
way (Run All, see :mod:`._queue`) it first says that it waits, and forks the arms once
that cell has let go of the branch; the comparison then takes the waiting line's
place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..errors import CMError
from ..widgets import CompareView
from ..widgets._base import close_parts
from ..widgets._live_output import flush_copies
from ._queue import (
    CellTask,
    NotSet,
    awaited_error,
    polled,
    release,
    release_after,
    say_what_goes_on,
    wait_for,
)
from ._remedies import for_magics, said
from ._reply import after_wind_down, note
from ._shown import given_by_view

if TYPE_CHECKING:
    from collections.abc import Generator

    from ..compare import Comparison
    from ..fanout import FanOut
    from ..session import ContextSession

__all__ = ["ComparisonView"]


#: What a cell awaiting the view says when interrupted while the arms go on.
_GO_ON = "… stopped waiting; the arms go on (`%cm stop --all` stops them)"


class ComparisonView(w.VBox):  # type: ignore[misc]
    """What ``%%cm --ab`` / ``--fanout`` show: the arms side by side, live.

    Made with the ``fan`` under way, or queued: ``start`` (the fan-out, called on the
    session's loop once every one of ``waits`` is done: the cell before it on ``branch``
    has let go of it, the replies whose ``--var`` its message reads have ended; ``arms``
    is how many it makes). ``await view`` gives the
    :class:`~cm_notebook.compare.Comparison` once every arm has replied; ``on_done``
    gets it too (``--var``).
    """

    def __init__(
        self,
        session: ContextSession,
        fan: FanOut | None,
        on_done: Callable[[Comparison], None] | None = None,
        *,
        branch: str,
        waits: Sequence[concurrent.futures.Future[None]] = (),
        start: Callable[[], FanOut] | None = None,
        arms: int = 0,
    ) -> None:
        if fan is None and start is None:
            raise ValueError("a queued comparison needs start")
        self.session = session
        #: The fan-out, once its arms are forked (a queued view has none until then).
        self.fan = fan
        #: The live comparison of the arms (None until they are forked).
        self.compare: CompareView | None = None
        #: The branch the arms fork from.
        self.branch = branch
        self._on_done = on_done
        self._waits = list(waits)
        self._start = start
        self._arms = len(fan.branches) if fan is not None else arms
        self.outcome = w.HTML("")
        # How the cell ended without a comparison for its ``--var`` (see unset).
        self._unset: str | None = None
        self._task = CellTask()
        self._forked: concurrent.futures.Future[FanOut] = concurrent.futures.Future()
        self._released: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._wound_down: concurrent.futures.Future[None] = concurrent.futures.Future()
        if fan is not None:
            self.compare = CompareView(session, *fan.branches)
            self._forked.set_result(fan)
            release(self._released)
            shown: w.Widget = self.compare
        else:
            shown = w.HTML(note("… waits for the replies above it, then asks"))
        super().__init__([shown, self.outcome])
        session._loop.call_soon_threadsafe(self._begin)

    def __repr__(self) -> str:
        return f"<cm_notebook comparison of {self._arms} branches>"

    def __await__(self) -> Generator[Any, None, Comparison]:
        return self._awaited().__await__()

    async def _awaited(self) -> Comparison:
        try:
            fan = await polled(self._forked)  # raises why a queued fork failed
            comparison = await after_wind_down(fan, self._wound_down)
        except asyncio.CancelledError as interrupt:
            raise say_what_goes_on(
                self._task,
                interrupt,
                queued=self.fan is None,
                under_way=not self._wound_down.done(),
                goes_on=_GO_ON,
            ) from None
        flush_copies(self.session)  # as the awaiting cell: see ReplyView
        return given_by_view(comparison)

    @property
    def released(self) -> concurrent.futures.Future[None]:
        """Done once the arms are forked (or the fork failed): a later cell on the base
        branch may send (the arms are branches of their own)."""
        return self._released

    @property
    def finished(self) -> concurrent.futures.Future[None]:
        """Done once every arm has replied (``--var`` set), or the fan-out ended."""
        return self._wound_down

    @property
    def unset(self) -> str | None:
        """Once the cell has ended with no comparison for its ``--var`` (an arm failed,
        stopped, not sent): what happened, ``{}`` standing for the variable; else
        None."""
        if not self._wound_down.done() or self._unset is None:
            return None
        return f"the comparison that sets {{}} {self._unset}"

    @property
    def branches(self) -> list[str]:
        """The branches of the experiment, one per arm (none before they are forked)."""
        return list(self.fan.branches) if self.fan is not None else []

    def close(self) -> None:
        """Stop following the session."""
        compare: CompareView | None = getattr(self, "compare", None)
        if compare is not None:
            compare.close()
        close_parts(self)  # its own note and outcome widgets, their layouts
        super().close()

    def _forked_now(self, fan: FanOut) -> None:
        """Called on the session's loop once a queued view's arms are forked."""

    def _not_sent(self, why: str) -> None:
        """Called on the session's loop when a queued view's fan-out is not sent (stopped
        first, or its send failed): ``why``, as the view says it."""

    # -- on the session's loop ---------------------------------------------------------

    def stop(self) -> None:
        """Stop every arm (their text so far is kept); a queued fan-out is not sent."""
        if self.fan is not None:
            self.fan.cancel()
        else:
            self._task.stop()

    def _begin(self) -> None:
        self._task.start(self._finish, self._never_sent)

    def _never_sent(self) -> None:
        # Stopped while it waited its turn (see ReplyView._never_sent).
        self.outcome.value = note("stopped before it was sent")
        self._unset = "was not sent"
        self._not_sent("stopped before it was sent")
        if not self._forked.done():
            self._forked.set_exception(asyncio.CancelledError())
        release_after(self._waits, self._released)
        release_after(self._waits, self._wound_down)

    async def _fork_when_free(self) -> FanOut:
        assert self._start is not None
        try:
            await wait_for(self._waits)
            fan = self._start()
        except asyncio.CancelledError:
            raise  # (see _never_sent)
        except BaseException as exc:  # an ``await view`` raises it
            self._forked.set_exception(awaited_error(exc))
            release(self._released)
            raise
        self.fan = fan
        self._forked.set_result(fan)
        release(self._released)
        self._show_arms(fan)
        self._forked_now(fan)
        return fan

    def _show_arms(self, fan: FanOut) -> None:
        # The live comparison in the waiting line's place; after it, the outcome and a
        # saved copy's hider. The arms are under way whatever happens here.
        try:
            self.compare = CompareView(self.session, *fan.branches)
        except Exception as exc:  # a view must never take the kernel down
            self.outcome.value = note(f"the arms are not shown: {exc}")
            return
        box: Any = self  # (ipywidgets' traits are untyped)
        self.children = (self.compare, *box.children[1:])

    async def _finish(self) -> None:
        try:
            fan = self.fan if self.fan is not None else await self._fork_when_free()
        except asyncio.CancelledError:
            self._never_sent()
            return
        except Exception as exc:  # not sent: the cell is what to run again
            message = said(exc, self.session)
            again = "" if isinstance(exc, NotSet) else " (run the cell again to ask)"
            self.outcome.value = note(f"not sent: {message}{again}")
            self._unset = "was not sent"
            self._not_sent(f"not sent: {message}{again}")
            release(self._wound_down)
            return
        try:
            comparison = await fan
        except asyncio.CancelledError:
            self.outcome.value = note("stopped; the text so far is kept")
            self._unset = "was stopped"
        except CMError as exc:
            self.outcome.value = note(for_magics(str(exc), self.session))
            self._unset = "failed"
        except Exception as exc:  # a view must never take the kernel down
            self.outcome.value = note(f"{type(exc).__name__}: {exc}")
            self._unset = "failed"
        else:
            if self._on_done is not None:
                self._on_done(comparison)
        finally:
            release(self._wound_down)
