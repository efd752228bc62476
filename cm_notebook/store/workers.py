"""The threads a store's blocking file work runs on.

Every store call does its file work (reads, writes, fsyncs, lock waits) on a worker
thread, never on the caller's event loop. The workers are one process-wide pool of
long-lived threads: a thread per call costs more than a small write does, and
``anyio.to_thread`` ties its workers to the task that first asked for one, so on a
loop whose calls are each their own task (the store's own loop) it starts and stops a
thread per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio

__all__ = ["MAX_WORKERS", "run_blocking", "submit_blocking"]

T = TypeVar("T")

# As many as anyio's default limit: a call may wait for another process's lock for
# up to its lock timeout, and such waits must not starve every other context.
MAX_WORKERS = 40

_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid = 0


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is not None and _pool_pid == pid:
        return _pool
    with _lock:
        # A forked child inherits the pool object but none of its threads: it gets its own.
        if _pool is None or _pool_pid != pid:
            _pool = concurrent.futures.ThreadPoolExecutor(MAX_WORKERS, "cm_notebook-file")
            _pool_pid = pid
        return _pool


def submit_blocking(func: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Start ``func`` on a worker thread now and return its future.

    From any thread, with or without an event loop; it runs to its end whatever the
    caller does next.
    """
    return _executor().submit(func)


async def run_blocking(func: Callable[[], T]) -> T:
    """Run ``func`` on a worker thread and return what it returned (or raise its error).

    Not abandoned on cancellation: once started, the call finishes before the
    cancellation is delivered, so a cancelled write either never began or is complete.
    """
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_executor(), func)
    with anyio.CancelScope(shield=True):
        await asyncio.wait((future,))
    return future.result()
