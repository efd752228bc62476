"""Where background work runs: the kernel's event loop, or a private one for scripts.

In a notebook the kernel's asyncio loop is running while a cell executes, so work is
scheduled on it with ``create_task`` and the cell returns at once (a cell must never
block waiting for the user: the click it waits for would be queued behind it). In a
plain script there is no running loop; work then goes to one private loop running in
a daemon thread, shared by every session in the process, and callers block on
``concurrent.futures.Future.result``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .redact import get_logger

__all__ = ["background_loop", "running_loop", "schedule_on", "start_loop_thread"]

T = TypeVar("T")

logger = get_logger(__name__)

_lock = threading.Lock()
_background: asyncio.AbstractEventLoop | None = None
_background_thread: threading.Thread | None = None


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def start_loop_thread(name: str) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A new event loop running forever in a daemon thread called ``name``.

    A task that raises ``SystemExit`` or ``KeyboardInterrupt`` ends asyncio's
    ``run_forever``; here that is logged and the loop goes on, since every session of
    the process may be running on it. It ends only when stopped.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        while True:
            try:
                loop.run_forever()
            except (SystemExit, KeyboardInterrupt) as exc:
                # The task's own future holds the exception for whoever awaits it.
                logger.error("a task on %s raised %s; the loop goes on", name, type(exc).__name__)
                continue
            return  # stopped

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    ready.wait()
    return loop, thread


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide private loop (started on first use, in a daemon thread).

    Never a loop whose thread has ended (then a new one is started): work handed to
    it would wait forever.
    """
    global _background, _background_thread
    with _lock:
        alive = _background_thread is not None and _background_thread.is_alive()
        if _background is None or _background.is_closed() or not alive:
            if _background is not None and not alive:
                logger.warning("the background event loop's thread had ended; starting another")
            _background, _background_thread = start_loop_thread("cm_notebook-loop")
            atexit.register(_stop_background)
        return _background


def _stop_background() -> None:
    loop = _background
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(loop.stop)


def schedule_on(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]
) -> asyncio.Task[T] | concurrent.futures.Future[T]:
    """Start ``coro`` on ``loop``: a task if we are on that loop, else thread-safely."""
    if running_loop() is loop:
        return loop.create_task(coro)
    return asyncio.run_coroutine_threadsafe(coro, loop)
