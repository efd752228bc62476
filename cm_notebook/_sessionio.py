"""Synchronous access to an async :class:`~cm_notebook.store.Store`, from any thread.

A notebook cell runs on the kernel's event loop thread, so it cannot wait for a
coroutine on that same loop. Store calls from synchronous code (``session.history()``,
``session.branches``...) therefore run on a private loop in a daemon thread that does
nothing but store I/O; the caller blocks for the few milliseconds the call takes.
Because that loop never runs user callbacks, waiting on it cannot deadlock.

Writes a caller must not wait for (the user's message of a ``send()`` made on an
event loop) are :meth:`StoreAccess.submit` instead: they start at once on that
same thread (or, given to :meth:`StoreAccess.track`, on a store's worker thread), and
every later :meth:`StoreAccess.call` of the same session waits for them first, so a
session always reads its own writes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._loop import start_loop_thread
from .store import Store

__all__ = ["StoreAccess"]

T = TypeVar("T")

_lock = threading.Lock()
_io_loop: asyncio.AbstractEventLoop | None = None
_io_thread: threading.Thread | None = None


def _loop() -> asyncio.AbstractEventLoop:
    global _io_loop, _io_thread
    with _lock:
        if _io_loop is None:
            _io_loop, _io_thread = start_loop_thread("cm_notebook-store")
        return _io_loop


class StoreAccess:
    """Runs a store's coroutines to completion for synchronous callers."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` (a call on the store) and return its result or raise its error.

        Waits first for the writes given to :meth:`submit` before (their errors are reported
        where they were submitted, not here).
        """
        loop = _loop()
        if threading.current_thread() is _io_thread:  # pragma: no cover - defensive
            coro.close()
            raise RuntimeError("StoreAccess.call must not be used from the store's own loop")
        with self._lock:
            pending = list(self._pending)
        if pending:
            concurrent.futures.wait(pending)
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def writing(self) -> bool:
        """Whether writes given to :meth:`submit` are still under way."""
        with self._lock:
            return bool(self._pending)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the store's thread and return its future at once."""
        return self.track(asyncio.run_coroutine_threadsafe(coro, _loop()))

    def track(self, future: concurrent.futures.Future[T]) -> concurrent.futures.Future[T]:
        """Treat a write started elsewhere (e.g. ``FileStore.start_append``) as one given
        to :meth:`submit`: later calls wait for it first. Returns ``future``."""
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._settled)
        return future

    def _settled(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)
