"""The server's threads for blocking work, shared fairly between contexts.

Handlers never block the server's event loop: a write that may wait for a context's
lock (another process is writing it, for up to the store's lock timeout) or for the
disk runs on a thread of :class:`OffLoop`, which the extension owns and stops with
the server. Its threads are the server's own, not the loop's default executor that
everything else in the process shares.

Fairness: a context that is stuck (its lock held by a hung process) could otherwise
take every thread with requests waiting for that lock, and requests for all other
contexts would queue behind them. So each context may use at most ``per_context``
threads at once; its further requests wait for one of those without holding a thread
(an ``asyncio.Semaphore``), and every other context still finds a free thread as long
as fewer than ``threads // per_context`` contexts are stuck at the same time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "DEFAULT_PER_CONTEXT",
    "DEFAULT_THREADS",
    "STOPPING_MESSAGE",
    "OffLoop",
    "ServerStoppingError",
]

T = TypeVar("T")

#: Threads for the server's blocking work.
DEFAULT_THREADS = 8
#: Of those, how many one context may use at once.
DEFAULT_PER_CONTEXT = 2


#: What a request is told once the server is stopping (shutting down).
STOPPING_MESSAGE = (
    "cm_notebook's server is stopping (shutting down) and takes no more work; "
    "retry once it has restarted"
)


class ServerStoppingError(RuntimeError):
    """The server is stopping: it opens no session and :meth:`OffLoop.run` takes no
    more work."""


class _Gate:
    # One context's share of the threads, and how many requests are using or awaiting it
    # (the gate is dropped when none is, so a server that saw many contexts keeps none).
    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.users = 0


class OffLoop:
    """Runs blocking calls on the server's threads, at most ``per_context`` per context.

    Args:
        threads: the number of threads (at least 1).
        per_context: how many of them one context may use at once (1 to ``threads``).
    """

    def __init__(
        self, threads: int = DEFAULT_THREADS, per_context: int = DEFAULT_PER_CONTEXT
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if not 1 <= per_context <= threads:
            raise ValueError(f"per_context must be from 1 to {threads}, got {per_context}")
        self.threads = threads
        self.per_context = per_context
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="cm_notebook-server"
        )
        self._gates: dict[str, _Gate] = {}
        self._stopped = False

    def __repr__(self) -> str:
        return f"<OffLoop threads={self.threads} per_context={self.per_context}>"

    async def run(
        self, context_id: str, fn: Callable[..., T], /, *args: object, **kwargs: object
    ) -> T:
        """``fn(*args, **kwargs)`` on one of the threads, counted against
        ``context_id``'s share.

        A request cancelled meanwhile (its client went away) does not stop the call: it
        finishes on its thread, and that thread counts against the context until then.

        Raises:
            ServerStoppingError: the server is stopping (:meth:`shutdown` was called).
        """
        self._refuse_if_stopped()
        gate = self._gates.get(context_id)
        if gate is None:
            gate = self._gates[context_id] = _Gate(self.per_context)
        gate.users += 1
        try:
            await gate.semaphore.acquire()
        except BaseException:
            self._leave(context_id, gate)
            raise
        loop = asyncio.get_running_loop()
        try:
            self._refuse_if_stopped()  # it may have stopped while this call waited
            future = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except BaseException:
            gate.semaphore.release()
            self._leave(context_id, gate)
            raise

        def finished(done: asyncio.Future[T]) -> None:
            gate.semaphore.release()
            self._leave(context_id, gate)
            if not done.cancelled():
                done.exception()  # seen here: a request that went away does not read it

        future.add_done_callback(finished)
        # Shielded: the share is given back when the call ends, not when the awaiting
        # request is cancelled (the thread is still busy then).
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled() and self._stopped:
                # Dropped from the queue by shutdown() before it started: say so, rather
                # than a bare cancellation the handler would report as a client abort.
                self._refuse_if_stopped()
            raise

    def _refuse_if_stopped(self) -> None:
        if self._stopped:
            raise ServerStoppingError(STOPPING_MESSAGE)

    def _leave(self, context_id: str, gate: _Gate) -> None:
        gate.users -= 1
        if gate.users == 0 and self._gates.get(context_id) is gate:
            del self._gates[context_id]

    def busy_contexts(self) -> dict[str, int]:
        """Contexts with calls running or waiting, and how many (for diagnostics)."""
        return {context_id: gate.users for context_id, gate in self._gates.items()}

    def shutdown(self) -> None:
        """Stop taking calls and drop those not started; those running finish on their
        threads. Calls made afterwards raise :class:`ServerStoppingError`."""
        self._stopped = True
        self._pool.shutdown(wait=False, cancel_futures=True)
