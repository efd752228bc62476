"""Synchronous access to an async :class:`~cm_notebook.store.Store`, from any thread.

A notebook cell runs on the kernel's event loop thread, so it cannot wait for a
coroutine on that same loop. Store calls from synchronous code (``session.history()``,
``session.branches``...) therefore run on a private loop in a daemon thread that does
nothing but store I/O; the caller blocks for the few milliseconds the call takes.
Because that loop never runs user callbacks, waiting on it cannot deadlock.
"""

from __future__ import annotations

import asyncio
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

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` (a call on the store) and return its result or raise its error."""
        loop = _loop()
        if threading.current_thread() is _io_thread:  # pragma: no cover - defensive
            coro.close()
            raise RuntimeError("StoreAccess.call must not be used from the store's own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()
