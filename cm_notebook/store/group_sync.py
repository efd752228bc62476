"""The fsyncs of journal lines written on the caller's thread, made off it.

A finished message written on the caller's thread (see :mod:`.quick_writes`: every
lock of its context was free, nothing else due) writes its journal line there without
an fsync and releases the locks; the write is acknowledged once the line is durable.
The caller hands a duplicate of the journal's descriptor over here: a thread of the
store's fsync pool (:func:`.workers.fsync_each`'s) fsyncs and closes it at once, so
the fsyncs of writes made meanwhile (other contexts') wait together, which a
journaling file system commits as one transaction.

The outcomes go back to each event loop through an inbox of its own: the first
outcome that finds the inbox empty wakes the loop (``call_soon_threadsafe``), and
the ones that arrive before the loop has emptied it ride along. Every wake-up of a
loop from another thread is a system call and a hand-over of the GIL; ten contexts
driven on one loop made two per write (to a store worker and back) and ran slower
than the same turns one after another.

An fsync that fails is reported to its caller as the ``OSError`` it raised; the
line stays in the journal (see ``FileStore.append_message``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Callable

import anyio

from .atomic import Fsync
from .workers import fsync_pool

__all__ = ["synced", "synced_future"]

_Outcome = tuple[asyncio.Future[None], BaseException | None]


class _Inbox:
    """Outcomes for one event loop's waiters, delivered with one wake-up per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: the inbox is a value of a dict weakly keyed by its loop, which a
        # strong reference from here would keep alive for ever.
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._outcomes: list[_Outcome] = []

    def put(self, waiter: asyncio.Future[None], error: BaseException | None) -> None:
        with self._lock:
            self._outcomes.append((waiter, error))
            if len(self._outcomes) > 1:
                return  # the loop was woken for the first, and takes this one too
        loop = self._loop()
        if loop is None:
            return  # the loop is gone: nobody left to tell
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody left to tell
            loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
        for waiter, error in outcomes:
            if waiter.done():  # cancelled meanwhile by whoever made it
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(None)


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox]
_inboxes = weakref.WeakKeyDictionary()
_inboxes_lock = threading.Lock()


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _inboxes.get(loop)
    if inbox is None:
        with _inboxes_lock:
            inbox = _inboxes.setdefault(loop, _Inbox(loop))
    return inbox


def _flush(fd: int, fsync: Fsync, tell: Callable[[BaseException | None], None]) -> None:
    # On a thread of the fsync pool: fsync and close ``fd``, then ``tell`` the outcome.
    error: BaseException | None = None
    try:
        fsync(fd)
    except BaseException as exc:  # handed to its caller, who raises it
        error = exc
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    tell(error)


async def synced(fd: int, fsync: Fsync) -> None:
    """fsync ``fd`` (a duplicate this call closes) on another thread and return once
    it is done; raises what ``fsync`` raised.

    Cancelling the caller does not cancel the fsync: it is made all the same.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    inbox = _inbox(loop)
    _start(fd, fsync, lambda error: inbox.put(waiter, error))
    with anyio.CancelScope(shield=True):
        # As in workers.run_blocking: shield() keeps a native task.cancel() off the
        # waiter, the scope keeps anyio's cancellations out meanwhile.
        await asyncio.shield(waiter)


def synced_future(fd: int, fsync: Fsync) -> concurrent.futures.Future[None]:
    """:func:`synced` without an event loop: the future is done once ``fd`` (a
    duplicate, closed here) is fsync'd, on the thread that made the fsync, or has
    its error."""
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def tell(error: BaseException | None) -> None:
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(None)

    _start(fd, fsync, tell)
    return done


def _start(fd: int, fsync: Fsync, tell: Callable[[BaseException | None], None]) -> None:
    # On the fsync pool; made here if the pool refuses (the interpreter shutting down).
    try:
        fsync_pool().submit(_flush, fd, fsync, tell)
    except RuntimeError:
        _flush(fd, fsync, tell)
