"""A session dropped without ``close()``: let it be collected, then release what it held.

The registry holds sessions weakly, so a session nobody references any more (a notebook
cell that made one re-run, a script's loop variable) is garbage, unless something
long-lived still points at it. The log follower's thread is such a thing: it calls back
into the session. Those callbacks go through :func:`weak_callback`, so the thread does
not keep the session alive. Once it is collected, :func:`release_dropped` (a
``weakref.finalize`` of the session) stops the follower and closes the signal log,
the branch claims' lock files and the store the session opened, as ``close()`` would
have; without it, each dropped session kept two threads and about nine open files.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import Protocol, TypeVar

from ._claims import BranchClaims
from ._follower import LogFollower
from .redact import get_logger
from .signal_log import SignalLog

__all__ = ["release_dropped", "weak_callback"]

_log = get_logger(__name__)

R = TypeVar("R")


class _Closable(Protocol):
    async def close(self) -> None: ...


def weak_callback(method: Callable[..., R], default: R) -> Callable[..., R]:
    """``method`` (a bound method) called through a weak reference to its object:
    ``default`` once the object is gone."""
    ref = weakref.WeakMethod(method)

    def call(*args: object) -> R:
        bound = ref()
        return default if bound is None else bound(*args)

    return call


def release_dropped(
    follower: LogFollower | None,
    signal_log: SignalLog | None,
    claims: BranchClaims,
    store: _Closable | None,
) -> None:
    """Release what a collected session held (see the module docstring).

    A finalizer runs on whichever thread the collection happened on, possibly one of
    those stopped here: the work is done on a thread of its own.
    """
    if follower is not None:
        follower.close()  # does not wait: safe on any thread

    def release() -> None:
        claims.close()
        if signal_log is not None:
            with contextlib.suppress(OSError):  # its last fsync: nothing to report to
                signal_log.close()
        if store is not None:
            try:
                asyncio.run(store.close())
            except Exception as exc:  # nobody is left to tell but the log
                _log.warning("could not close the store of a dropped session: %s", exc)

    threading.Thread(target=release, name="cm-session-release", daemon=True).start()
