"""A session whose event loop is no longer running: released without it.

:class:`LoopEnds` is a base of :class:`~cm_notebook._session_core.SessionCore`. A
session's turns run on its home loop. When that loop has ended (an ``asyncio.run()``
that returned without ``close()``), the session can never run a turn again: ``open()``
lets go of it for all its holders (:meth:`_retire_if_loop_gone`) and makes a fresh one.
When the loop is only stopped (a session made inside ``loop.run_until_complete()``), a
turn sent from plain code waits on it, queued; closing the session then cancels such
turns, so they do not start (and write after the close) if the loop runs again.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Coroutine
from typing import Any

from . import events as ev
from ._claims import BranchClaims
from ._registry import REGISTRY
from ._sessionio import StoreAccess
from .model import Message
from .runner import TurnRunner
from .store import Store
from .turn import Turn

__all__ = ["LoopEnds"]


class LoopEnds:
    """Release without the session's loop (see the module docstring)."""

    _loop: asyncio.AbstractEventLoop
    _lock: threading.RLock
    _runners: dict[str, TurnRunner]
    _claims: BranchClaims
    _bus: ev.EventBus
    _owns_store: bool
    _store: Store
    _io: StoreAccess
    _dropped: weakref.finalize  # type: ignore[type-arg]
    _released_without_loop: bool  # False until released so
    _begun: weakref.WeakSet[Turn]  # the turns whose task started

    def _turn_finished(self, turn: Turn) -> None:
        raise NotImplementedError  # SessionCore's: frees the branch and its claim

    def _stop_following(self) -> None:
        raise NotImplementedError  # FollowOthers'

    def _release_without_loop(self) -> None:
        # Its loop is gone (e.g. an ended asyncio.run): no turn can be running and the
        # providers' connections died with it; only the store's locks remain. Or it is
        # stopped: turns queued on it must not start, and write, if it runs again.
        with self._lock:
            self._released_without_loop = True
            queued = [r.turn for r in self._runners.values() if r.turn not in self._begun]
        for turn in queued:
            turn.drop_queued()
            self._turn_finished(turn)  # its claim given back
        self._stop_following()
        self._claims.close()
        self._bus.close()
        if self._owns_store:
            self._io.call(self._store.close())

    def _retire_if_loop_gone(self) -> bool:
        # Closed for all its holders if its loop ended (an asyncio.run() that returned
        # without close()): it can never run a turn again, so open() must not hand it
        # out, and one close() per hold would be needed to let go of it otherwise.
        # Called under the registry's lock.
        if not self._loop.is_closed():
            return False
        REGISTRY.retire(self)
        self._dropped.detach()  # released here instead
        self._release_without_loop()
        return True

    async def _unless_released(
        self, runner: TurnRunner, work: Coroutine[Any, Any, Message]
    ) -> Message:
        # Every turn's task runs this first: one queued on a stopped loop whose session
        # was closed meanwhile does not run.
        with self._lock:
            released = self._released_without_loop
            self._begun.add(runner.turn)
        if released:
            work.close()  # never started: no "never awaited" warning
            runner.turn.progress.finish()
            raise asyncio.CancelledError("the session was closed before this turn started")
        return await work
