"""One async reader of an event bus: its buffer, and the iterator it reads through.

Split from :mod:`cm_notebook.events` (which re-exports :class:`EventStream`); the bus
puts events in a reader's :class:`_Buffer`, the reader takes them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType

import anyio
import anyio.lowlevel

from ._loop import running_loop
from .signals import Event

__all__ = ["EventStream"]


class _Buffer:
    # One async subscriber's queue. The bus holds these, not the EventStream objects, so a
    # stream nobody references any more can be garbage-collected (and then unregistered).
    __slots__ = ("backlog", "closed", "events", "loop", "waiter")

    def __init__(self, backlog: list[Event]) -> None:
        self.backlog: deque[Event] = deque(backlog)  # history asked for with ``since``
        self.events: deque[Event] = deque()  # live events, bounded by the bus
        self.waiter: anyio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the waiting reader's loop
        self.closed = False

    def wake(self) -> None:
        # Called on the publishing thread. A reader on another loop (a script reading a
        # session that runs on the package's own loop) is woken on its loop's thread:
        # setting its event from here would not wake that loop (nor is it safe).
        waiter, loop = self.waiter, self.loop
        if waiter is None:
            return
        self.waiter = None
        if loop is None or running_loop() is loop:
            waiter.set()
            return
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
            loop.call_soon_threadsafe(waiter.set)


class EventStream:
    """An async iterator over a bus's events, made by ``EventBus.stream()``.

    It is registered with the bus as soon as it is created, so no event published
    after :meth:`~cm_notebook.events.EventBus.stream` returns is missed. Use it with
    ``async for``, optionally inside ``async with`` (or call :meth:`aclose`) to
    unregister promptly; a stream that is simply dropped is unregistered when it is
    garbage-collected.
    """

    def __init__(self, discard: Callable[[_Buffer], None], buffer: _Buffer) -> None:
        self._buffer = buffer
        self._finalizer = weakref.finalize(self, discard, buffer)
        self._finalizer.atexit = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        buffer = self._buffer
        while True:
            if buffer.backlog or buffer.events:
                # Allow cancellation without a full scheduling round trip per event.
                await anyio.lowlevel.checkpoint_if_cancelled()
                queue = buffer.backlog if buffer.backlog else buffer.events
                return queue.popleft()
            if buffer.closed:
                raise StopAsyncIteration
            buffer.loop = running_loop()
            waiter = buffer.waiter = anyio.Event()
            # An event put in from another thread between the look above and here
            # found no waiter to wake: look again before waiting.
            if buffer.backlog or buffer.events or buffer.closed:
                buffer.waiter = None
                continue
            await waiter.wait()

    @property
    def pending(self) -> int:
        """How many events are buffered and not yet read."""
        return len(self._buffer.backlog) + len(self._buffer.events)

    def close(self) -> None:
        """Unregister from the bus and end the iteration; buffered events are dropped."""
        buffer = self._buffer
        buffer.backlog.clear()
        buffer.events.clear()
        buffer.closed = True
        buffer.wake()
        self._finalizer()

    async def aclose(self) -> None:
        """Async spelling of :meth:`close`, for ``contextlib.aclosing`` and friends."""
        self.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
