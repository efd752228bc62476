"""The threads a store's blocking file work runs on.

Every store call does its file work (reads, writes, fsyncs, lock waits) on a worker
thread, never on the caller's event loop; the one exception is a write of a message
still streaming that waits for nothing (see ``FileStore``). The workers are one process-wide pool of
long-lived threads: a thread per call costs more than a small write does, and
``anyio.to_thread`` ties its workers to the task that first asked for one, so on a
loop whose calls are each their own task (the store's own loop) it starts and stops a
thread per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable
from typing import TypeVar, cast

import anyio

__all__ = [
    "FSYNC_WORKERS",
    "MAX_WORKERS",
    "fsync_each",
    "fsync_pool",
    "run_blocking",
    "submit_blocking",
]

T = TypeVar("T")

# As many as anyio's default limit: a call may wait for another process's lock for
# up to its lock timeout, and such waits must not starve every other context.
MAX_WORKERS = 40

#: Threads that fsync a batch of files at once (see :func:`fsync_each`).
FSYNC_WORKERS = 8

_lock = threading.Lock()
# name -> (pool, pid of the process that made it)
_pools: dict[str, tuple[concurrent.futures.ThreadPoolExecutor, int]] = {}


def _executor(
    name: str = "file", workers: int = MAX_WORKERS
) -> concurrent.futures.ThreadPoolExecutor:
    pid = os.getpid()
    made = _pools.get(name)
    if made is not None and made[1] == pid:
        return made[0]
    with _lock:
        # A forked child inherits the pool object but none of its threads: it gets its own.
        made = _pools.get(name)
        if made is None or made[1] != pid:
            made = (concurrent.futures.ThreadPoolExecutor(workers, f"cm_notebook-{name}"), pid)
            _pools[name] = made
        return made[0]


def fsync_each(paths: list[str], flush: Callable[[str], None]) -> None:
    """Call ``flush(path)`` for every path, several at once; return when all are done.

    For a batch of fsyncs: a journaling file system commits fsyncs that wait at the
    same time together, so a batch of 32 small files costs less than half as long as
    one after another (measured on ext4). Raises the first path's error, in the order
    given, once every call has ended: nothing is still being flushed when it returns.
    Runs on a pool of its own, so a store worker may call it without waiting for
    itself.
    """
    if len(paths) < 2:
        for path in paths:
            flush(path)
        return
    pool = fsync_pool()
    futures = [pool.submit(flush, path) for path in paths]
    concurrent.futures.wait(futures)
    for future in futures:
        future.result()


def fsync_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The pool of threads that make fsyncs (:data:`FSYNC_WORKERS` of them): its
    threads only fsync, never wait for the pool, so a store worker may wait for it."""
    return _executor("fsync", FSYNC_WORKERS)


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
    # The worker settles a future of the caller's loop itself (one wake-up of the
    # loop); ``loop.run_in_executor`` chains a second future to the pool's, and that
    # chaining cost a fifth of a small write's round trip.
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()
    _executor().submit(_call_for, loop, waiter, func)
    with anyio.CancelScope(shield=True):
        # shield(): a native task.cancel() must not cancel the waiter (the result would
        # then have nowhere to go); the scope keeps anyio's cancellations out meanwhile.
        result = await asyncio.shield(waiter)
    return result  # noqa: RET504 - after the scope, whose __exit__ could swallow an error


def _call_for(
    loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[T], func: Callable[[], T]
) -> None:
    # On the worker: run ``func`` and hand its outcome to the caller's loop.
    try:
        result = func()
    except BaseException as exc:  # handed to the caller, who re-raises it
        outcome: tuple[T | None, BaseException | None] = (None, exc)
    else:
        outcome = (result, None)
    with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to tell
        loop.call_soon_threadsafe(_settle, waiter, *outcome)


def _settle(waiter: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if waiter.done():  # cancelled by its caller's loop meanwhile
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(cast(T, result))
