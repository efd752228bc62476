"""The threads a sync tool runs on: daemon threads of the package's own.

A sync tool runs in a worker thread so that it never freezes the event loop, and a
call that times out or is stopped is abandoned there (Python cannot stop a thread).
anyio's worker threads are not daemon threads, so the interpreter waits for them at
exit: an abandoned call that never returns (a server that never answers) kept a
script's process alive after its ``asyncio.run()`` had returned, and a kernel from
shutting down until it was killed. Here each call gets a daemon thread of its own,
which ends with the call, or with the process if the call never does.

What the call sees is as with ``anyio.to_thread.run_sync(..., abandon_on_cancel=True)``:
a copy of the caller's context variables; its result or exception comes back to the
awaiting task; a cancellation (the time limit, the turn being stopped) stops the wait
at once and abandons the thread, whose eventual result is dropped. The number of calls
running at once on a loop is bounded by anyio's default thread limiter of that loop
(40, shared with anyio's own worker threads, as before); an abandoned call gives its
place back, as with anyio.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import TypeVar, cast

import anyio
import anyio.to_thread

__all__ = ["run_in_daemon_thread"]

T = TypeVar("T")


async def run_in_daemon_thread(func: Callable[[], T], name: str = "cm_notebook-tool") -> T:
    """``func()`` run in a new daemon thread called ``name``; its result (or error).

    Cancelling the caller abandons the thread (see the module docstring); a call
    cancelled before its thread got to it is never made.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on asyncio (trio): its worker threads are daemon threads
        return await anyio.to_thread.run_sync(func, abandon_on_cancel=True)
    async with anyio.to_thread.current_default_thread_limiter():
        future: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=_call, args=(loop, future, context, func), name=name, daemon=True
        )
        thread.start()
        # Cancelled (the task is), this future is too: the thread's result is dropped.
        return await future


def _call(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[T],
    context: contextvars.Context,
    func: Callable[[], T],
) -> None:
    # In the thread. A call whose waiter was cancelled before it began is not made
    # (reading the flag here is a benign race, as in anyio: at worst the call is made
    # and its result dropped).
    if future.cancelled():
        return
    result: T | None = None
    error: BaseException | None = None
    try:
        result = context.run(func)
    except BaseException as exc:  # handed to the awaiting task, which raises it
        # (run_tool's calls bring SystemExit and the like back as an Exception first:
        # raised bare in a task, they would end the event loop)
        error = exc
    # The loop may have ended meanwhile (an abandoned call outliving asyncio.run):
    # nobody is waiting for the result then.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    # On the loop: the waiter gets the outcome, unless it stopped waiting (abandoned).
    if future.done():
        return
    if error is None:
        future.set_result(cast(T, result))
    elif isinstance(error, StopIteration):
        # A future cannot carry StopIteration (it would end the awaiting coroutine).
        future.set_exception(RuntimeError(f"the call raised StopIteration: {error!r}"))
    else:
        future.set_exception(error)
