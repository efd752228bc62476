"""Giving back the magics' hold on a context that is no longer current.

``%cm new`` and ``%cm use ID|TITLE`` open a context, which is a hold on its session
(:mod:`cm_notebook._registry`); an open session keeps threads, open files and file
watches (the follower of its signal log, the log's syncer). When another context
becomes current, the magics give that hold back, and the last hold closes the
session. Until then every context a kernel had used stayed open for its life, and a
long notebook ran out of file descriptors.

The magics need not be the session's only user, though. A hold someone else also has
(``s = ContextSession.open(ID)``) is given back at once: the session stays open for
them. A hold that is the last is given back only once the session is free:

* no turn runs on it, nor a sweep, a replay or background work (closing would stop
  them);
* no cell of this kernel is still under way in it (streaming, or queued by Run All);
* no view follows its signals (a chat view, a comparison shown by ``%cm`` or
  ``%cm compare``: they keep working);
* no variable of the kernel names it (``s = view.session``), IPython's output cache
  (``_``, ``_5``...) aside.

A session not free yet is looked at again when the cells it waited for end, after
each cell, and whenever the current context changes. A reply view left in IPython's
output cache (``Out``) does not keep its session open: its reply has ended by then and
is kept in the view, so ``await`` on it still gives the reply; what needs the session
itself (``view.session.send(...)``) says that it is closed and how to open it again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from .._registry import REGISTRY
from ..redact import get_logger
from ..session import ContextSession

__all__ = ["LettingGo", "register"]

_log = get_logger(__name__)

#: Names of IPython's output cache, which keeps every cell's result: ``_``, ``__``,
#: ``___`` and ``_N``.
_OUTPUT_CACHE = re.compile(r"_{1,3}|_\d+")


class LettingGo:
    """The sessions whose hold the magics give back once they are free (see the module
    docstring).

    ``namespace``: the kernel's variables. ``cells(session)``: what this kernel's cells
    under way in ``session``'s context will set done when they end. Used on the
    kernel's loop thread only.
    """

    def __init__(
        self,
        namespace: Mapping[str, Any],
        cells: Callable[[ContextSession], list[concurrent.futures.Future[None]]],
    ) -> None:
        self._namespace = namespace
        self._cells = cells
        self._waiting: list[ContextSession] = []  # one entry per hold to give back
        self._watched: set[concurrent.futures.Future[None]] = set()

    def give_back(self, session: ContextSession) -> None:
        """Give back one hold on ``session``, now if it is free, else once it is."""
        self._waiting.append(session)
        self.check()

    def check(self) -> None:
        """Give back the holds on the sessions that are free now."""
        still: list[ContextSession] = []
        for session in self._waiting:
            if not self._free(session):
                still.append(session)
                continue
            try:
                session.close()  # the last hold closes it, in the background
            except Exception as exc:  # after every cell: a traceback there would repeat
                _log.warning("could not close context %s: %s", session.id, exc)
        self._waiting = still

    def after_cell(self, _result: object = None) -> None:
        """IPython's ``post_run_cell`` event: a cell may have let go of a session."""
        self.check()

    def _free(self, session: ContextSession) -> bool:
        if session.closed or REGISTRY.holds(session) > 1:
            return True  # nothing to close, or someone else keeps it open
        cells = self._cells(session)
        if cells:
            self._watch(session, cells)
            return False
        return not _in_use(session) and not self._named(session)

    def _watch(self, session: ContextSession, cells: list[concurrent.futures.Future[None]]) -> None:
        # Looked at again on the kernel's loop when each cell ends (a Run All's last
        # contexts would otherwise wait for the next cell).
        loop = session._loop
        for cell in cells:
            if cell in self._watched:
                continue
            self._watched.add(cell)

            def ended(done: concurrent.futures.Future[None]) -> None:
                self._watched.discard(done)
                # A loop that has ended leaves the session to the exit's closing.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self.check)

            cell.add_done_callback(ended)

    def _named(self, session: ContextSession) -> bool:
        # A variable of the kernel's that is the session itself (a copy of a view's
        # .session): the user may still send with it.
        return any(
            value is session
            for name, value in list(self._namespace.items())
            if not _OUTPUT_CACHE.fullmatch(name)
        )


def _in_use(session: ContextSession) -> bool:
    # What closing the session would stop: its turns, sweeps, replays and background
    # work (a title being made), and the views following its signals.
    with session._lock:
        jobs = bool(session._jobs) or bool(session._background)
    return jobs or not session._all_idle() or session._bus.subscriber_count > 0


def register(shell: Any, letting_go: LettingGo) -> None:
    """Have ``letting_go`` look at its sessions after each cell of ``shell``, in place
    of one an earlier load of the extension registered."""
    events = getattr(shell, "events", None)
    if events is None:
        return
    for earlier in list(events.callbacks.get("post_run_cell", [])):
        owner = getattr(earlier, "__self__", None)
        if type(owner).__name__ == LettingGo.__name__:
            events.unregister("post_run_cell", earlier)
    events.register("post_run_cell", letting_go.after_cell)
