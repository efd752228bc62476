"""What every view shares: following a session's signals, the loop hand-off, throttling.

Views only render a session and react to its signals; they do no I/O of their own.
Two threads matter (DESIGN facts 2 and 14):

- signals arrive on the session's loop thread (in a notebook, the kernel's);
- widget callbacks (a click, an edit) may arrive on another thread (a subshell), so
  they never touch the session directly: :meth:`SessionFollower.on_loop` hands the
  work to the session's loop with ``call_soon_threadsafe``.

Updates to the front end are coalesced by :class:`Throttle` (DESIGN fact 4: the kernel
does not coalesce, and jupyter_server drops iopub messages above 1,000 a second).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from IPython.display import display

from .. import events as ev
from .._auto_names import made_under_free_name
from ..errors import CMError
from ..redact import get_logger

if TYPE_CHECKING:
    from ..model import Branch
    from ..session import ContextSession

__all__ = [
    "SETTLED_STATES",
    "FollowingCopy",
    "FollowingView",
    "SessionFollower",
    "Throttle",
    "close_parts",
    "fork_under_free_name",
    "shown_closed",
    "static_text",
]

#: The states in which a branch's turn is over (or waits for a person): when a saved
#: copy of it is worth updating.
SETTLED_STATES = ("Idle", "PermanentFailure", "AwaitingToolApproval")

logger = get_logger(__name__)

_STATIC = Path(__file__).parent / "static"


def static_text(name: str) -> str:
    """The text of ``static/<name>``, for an anywidget's ``_esm`` or ``_css``.

    Given as text, not as a path: for a path, anywidget ties every widget of the class
    to the file's change signal for good (closed or not), so no view once made could
    ever be freed.
    """
    return (_STATIC / name).read_text(encoding="utf-8")


def shown_closed(widget: w.Widget, remedy: str) -> bool:
    """If ``widget`` was closed, display a line saying so and ``remedy`` (what shows a
    new one) and return True; else display nothing and return False."""
    # ipywidgets 8 drops a closed widget's comm and sets its _repr_mimebundle_ to None:
    # a view that shows itself would fail with "'NoneType' object is not callable".
    # A closed widget without a display of its own shows its text repr; this says more.
    if widget.comm is not None:
        return False
    display({"text/plain": f"{widget!r} was closed; {remedy}"}, raw=True)  # type: ignore[no-untyped-call]
    return True


def close_parts(widget: w.Widget) -> None:
    """Close every widget ``widget`` holds, not ``widget`` itself: its children, layout,
    style and any other widget in its synced traits, and theirs in turn.

    ipywidgets keeps each widget registered (in a kernel, an open comm) until it is
    closed, and closing a box closes neither its children nor its layout or style. So a
    view's ``close`` calls this, then closes itself. A part that is a view closes itself
    (its own ``close`` runs: it stops following its session too). Closing twice is
    harmless. Only what ``widget`` holds is closed: a view's parts are its own.
    """
    # All found first: closing a part (a view) may change what the others hold.
    for part in list(_parts(widget, {id(widget)})):
        part.close()


def _parts(widget: w.Widget, seen: set[int]) -> Iterator[w.Widget]:
    # Depth first, a part after its own parts: a box closes after what it shows.
    # Only synced traits are read: those were all read when the widget was sent to the
    # front end, so reading them makes no new widget (a layout made on first use).
    for name in widget.keys:
        for part in _widgets_in(getattr(widget, name, None)):
            if id(part) not in seen:
                seen.add(id(part))
                yield from _parts(part, seen)
                yield part


def _widgets_in(value: object) -> Iterator[w.Widget]:
    # The widgets a trait's value holds: itself, or those in a list, tuple or dict.
    if isinstance(value, w.Widget):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _widgets_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _widgets_in(item)


class Throttle:
    """Call ``flush`` at most once per ``interval`` seconds on ``loop``, never losing the last.

    :meth:`poke` asks for a flush (the first one in a quiet period runs at once, later
    ones are coalesced into one at the end of the interval); :meth:`now` flushes at
    once and cancels the pending one. ``interval`` may be a function, asked afresh each
    time (e.g. longer gaps as a reply grows). Use it on the loop's thread only.

    A flush runs on the loop, so while it runs nothing else does (a streaming reply
    included). With ``max_share``, the throttle times each flush and keeps the time
    from one flush's start to the next's at least the last flush's duration divided by
    ``max_share``: flushes take at most that share of the loop's time, however costly
    they grow (a flush that re-renders a text that keeps growing). :meth:`now` is never
    held back.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float | Callable[[], float],
        flush: Callable[[], None],
        *,
        max_share: float | None = None,
    ) -> None:
        if max_share is not None and not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], not {max_share!r}")
        self._loop = loop
        self._interval = interval if callable(interval) else (lambda: interval)
        self._flush = flush
        self._max_share = max_share
        self._last = -1e9
        self._cost = 0.0
        self._handle: asyncio.TimerHandle | None = None

    @property
    def flush_cost(self) -> float:
        """Seconds the last flush took (0 before the first)."""
        return self._cost

    @property
    def interval(self) -> float:
        """Seconds from the last flush's start before a poke flushes again: the given
        interval, or with ``max_share`` the last flush's cost paced by it if longer."""
        given = self._interval()
        if self._max_share is None:
            return given
        return max(given, self._cost / self._max_share)

    def poke(self) -> None:
        """Ask for a flush within the interval."""
        if self._handle is not None:
            return
        wait = self._last + self.interval - time.monotonic()
        if wait <= 0:
            self.now()
        else:
            self._handle = self._loop.call_later(wait, self.now)

    def now(self) -> None:
        """Flush at once (e.g. the final value of a reply)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._last = time.monotonic()
        started = time.perf_counter()
        try:
            self._flush()
        finally:
            self._cost = time.perf_counter() - started

    def flush_pending(self) -> None:
        """Flush at once if a flush is waiting for its interval (else nothing)."""
        if self._handle is not None:
            self.now()

    def cancel(self) -> None:
        """Drop a pending flush."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class SessionFollower:
    """Subscribes a view to a session's signals and runs its actions on the session's loop.

    ``on_event`` is called on the loop thread for every signal; ``on_error`` gets the
    message of a :class:`~cm_notebook.errors.CMError` raised by an action (a busy
    branch, bad input), which the view shows instead of a traceback.
    """

    def __init__(
        self,
        session: ContextSession,
        on_event: Callable[[ev.Event], None],
        on_error: Callable[[str], None],
    ) -> None:
        self.session = session
        self.loop: asyncio.AbstractEventLoop = session._loop
        self._on_error = on_error
        self._lock = threading.Lock()
        self._closed = False
        self._unsubscribe = session.subscribe(on_event)

    def on_loop(self, action: Callable[[], Any]) -> None:
        """Run ``action`` on the session's loop soon; safe from any thread."""

        def run() -> None:
            if self._closed:
                return
            try:
                action()
            except CMError as exc:
                self._on_error(str(exc))
            except Exception as exc:  # a view must never take the kernel down
                logger.exception("view action %r failed", action)
                self._on_error(f"{type(exc).__name__}: {exc}")

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError:  # the session's loop has been closed: nothing left to act on
            self._on_error("this session is closed; open it again to continue")

    def close(self) -> None:
        """Stop following the session (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._unsubscribe()


class FollowingView:
    """A view that follows its session's signals and re-renders, throttled.

    A subclass lists this class before its widget class, calls :meth:`_follow` in its
    ``__init__`` and defines ``_on_event``, ``_show_error`` (see
    :class:`SessionFollower`) and ``_render`` (run through ``self._throttle``).
    """

    session: ContextSession
    _follower: SessionFollower
    _throttle: Throttle

    def _follow(self, session: ContextSession, interval: float) -> None:
        self.session = session
        self._follower = SessionFollower(session, self._on_event, self._show_error)
        self._throttle = Throttle(self._follower.loop, interval, self._render)

    def _on_event(self, event: ev.Event) -> None:
        raise NotImplementedError

    def _show_error(self, text: str) -> None:
        raise NotImplementedError

    def _render(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop following the session and close the widget and all its parts."""
        if hasattr(self, "_follower"):  # not when construction failed half-way
            self._follower.close()
            self._throttle.cancel()
        close_parts(self)
        super().close()  # type: ignore[misc]  # the widget class, next in the MRO


class FollowingCopy:
    """What a saved copy that follows its session, throttled, shares (a base class):
    the copies of a conversation and of a comparison."""

    _follower: SessionFollower
    _throttle: Throttle

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


def fork_under_free_name(
    session: ContextSession,
    stem: str,
    from_message: str | None = None,
    *,
    from_branch: str | None = None,
) -> Branch:
    """A fork button's branch (``session.branch``) under the first free ``<stem>-N``,
    chosen again if another process takes that name first (a click in another
    kernel's view at the same moment): the user never typed it, so its being taken is
    no error of theirs."""
    return made_under_free_name(
        "the fork",
        lambda refused: session._free_branch_name(stem, refused),
        lambda name: session.branch(name, from_message, from_branch=from_branch),
    )
