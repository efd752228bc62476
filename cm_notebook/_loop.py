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

__all__ = ["background_loop", "running_loop", "schedule_on", "start_loop_thread"]

T = TypeVar("T")

_lock = threading.Lock()
_background: asyncio.AbstractEventLoop | None = None


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def start_loop_thread(name: str) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A new event loop running forever in a daemon thread called ``name``."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    ready.wait()
    return loop, thread


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide private loop (started on first use, in a daemon thread)."""
    global _background
    with _lock:
        if _background is None or _background.is_closed():
            _background, _thread = start_loop_thread("cm_notebook-loop")
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
