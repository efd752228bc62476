"""A session dropped without ``close()``: let it be collected, then release what it held.

The registry holds sessions weakly, so a session nobody references any more (a notebook
cell that made one re-run, a script's loop variable) is garbage, unless something
long-lived still points at it. The log follower's thread is such a thing: it calls back
into the session. Those callbacks go through :func:`weak_callback`, so the thread does
not keep the session alive. Once it is collected, its finalizer
(:func:`release_when_collected`) has the follower stopped and the signal bus (with
its log), the branch claims' lock files and the store the session opened closed, as
``close()`` would have; without it, each dropped session kept two threads and about
nine open files, and its event streams never ended.

A finalizer runs wherever the collection happens: on any thread, possibly one holding
a lock that the release needs (the file watcher's, a signal log's). So the finalizer
only puts the work in a queue (``SimpleQueue.put`` is safe there), and a thread of
this module's, started with the first session, does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Protocol, TypeVar

from . import events as ev
from ._claims import BranchClaims
from ._follower import LogFollower
from .redact import get_logger

__all__ = ["release_when_collected", "weak_callback"]

_log = get_logger(__name__)

R = TypeVar("R")

_RELEASES: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_releaser: threading.Thread | None = None
_releaser_lock = threading.Lock()


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


def release_when_collected(
    session: object,
    follower: LogFollower | None,
    bus: ev.EventBus,
    loop: asyncio.AbstractEventLoop,
    claims: BranchClaims,
    store: _Closable | None,
) -> weakref.finalize:  # type: ignore[type-arg]
    """A finalizer of ``session`` that queues the release of what it held (see the
    module docstring); ``detach()`` it when the session is closed instead. Called from
    the session's constructor: it starts the releasing thread, once."""
    global _releaser
    with _releaser_lock:
        if _releaser is None or not _releaser.is_alive():
            _releaser = threading.Thread(
                target=_release_forever, name="cm-session-release", daemon=True
            )
            _releaser.start()
    # The job is made now: the finalizer itself only puts it in the queue.
    job = functools.partial(_release, follower, bus, loop, claims, store)
    finalizer = weakref.finalize(session, _RELEASES.put, job)
    finalizer.atexit = False
    return finalizer


def _release_forever() -> None:
    while True:
        job = _RELEASES.get()
        try:
            job()
        except Exception as exc:  # nobody is left to tell but the log
            _log.warning("could not release a session dropped without close(): %s", exc)


def _release(
    follower: LogFollower | None,
    bus: ev.EventBus,
    loop: asyncio.AbstractEventLoop,
    claims: BranchClaims,
    store: _Closable | None,
) -> None:
    if follower is not None:
        follower.close()
    # The bus belongs to its loop's thread: closed there if that loop still runs (it
    # ends the session's event streams and closes its signal log), else here.
    closed_there = False
    if loop.is_running():
        with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing uses the bus
            loop.call_soon_threadsafe(bus.close)
            closed_there = True
    if not closed_there:
        bus.close()
    claims.close()
    if store is not None:
        asyncio.run(store.close())  # failing, it is logged by _release_forever
