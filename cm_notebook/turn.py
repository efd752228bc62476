"""The handle of one reply in progress: awaitable, cancellable, inspectable.

:meth:`ContextSession.send` returns a :class:`Turn` at once and does the work on an
event loop (see :mod:`cm_notebook._loop`). In a notebook, ``await turn`` waits for the
final assistant message; in a script, ``turn.result(timeout)`` blocks for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, Generic, TypeVar

from ._unicode import grapheme_prefix
from .errors import StateError
from .ids import new_id
from .model import Message, ToolCall

__all__ = ["DeltaFeed", "Handle", "Turn", "TurnProgress"]

T = TypeVar("T")

# How often an awaiting cell wakes up. A bare `await future` in a cell ignores the
# Interrupt button until another message arrives; polling keeps it responsive.
_POLL_SECONDS = 0.1
# How often wait_for_approval() looks at the calls waiting (as the session's does).
_APPROVAL_POLL_SECONDS = 0.05
# How often result() looks whether the loop running the work still runs.
_LOOP_CHECK_SECONDS = 0.1


class Handle(Generic[T]):
    """Work running on an event loop: awaitable, cancellable, and blocking for scripts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._future: asyncio.Future[T] | concurrent.futures.Future[T] | None = None
        self._cancel: Callable[[], None] | None = None
        self._cancel_requested = False
        #: Called in the awaiting task once ``await handle`` has its outcome (see Turn).
        self.after_await: Callable[[], None] | None = None

    def attach(
        self,
        future: asyncio.Future[T] | concurrent.futures.Future[T],
        cancel: Callable[[], None],
    ) -> None:
        """Bind the running work: its future, and how to cancel it (called on its loop).

        Called once, by whoever started the work; a cancel asked for earlier is passed on.
        """
        self._future = future
        with self._lock:
            self._cancel = cancel
            pending_cancel = self._cancel_requested
        if pending_cancel:
            self._loop.call_soon_threadsafe(cancel)

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the work has finished (soon, if it already has)."""
        future = self._require_future()
        if isinstance(future, concurrent.futures.Future):
            future.add_done_callback(lambda _finished: callback())
        else:  # an asyncio future takes callbacks on its own loop's thread only
            future.get_loop().call_soon_threadsafe(
                future.add_done_callback, lambda _finished: callback()
            )

    def done(self) -> bool:
        """True once the work has finished (completed, failed or cancelled)."""
        return self._future is not None and self._future.done()

    def stopping(self) -> bool:
        """True once :meth:`cancel` was called and the work has not finished yet."""
        with self._lock:
            return self._cancel_requested and not self.done()

    def cancel(self) -> None:
        """Stop the work. Safe from any thread, more than once, and after it finished."""
        with self._lock:
            self._cancel_requested = True
            cancel = self._cancel
        if cancel is not None and not self.done():
            self._loop.call_soon_threadsafe(cancel)

    def result(self, timeout: float | None = None) -> T:
        """Block until the work finishes and return its result (or raise its error).

        For scripts only: in a notebook cell (a running event loop) this would freeze
        the kernel, so it raises StateError; use ``await handle`` there. Ctrl-C stops
        the waiting, not the work, which goes on in the background: the
        KeyboardInterrupt carries a note saying so (call :meth:`cancel` to stop it).
        If the event loop running the work is not running, or stops while this waits,
        it can never finish: StateError says so.
        """
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            raise StateError("result() would block the running event loop; use `await` instead")
        future = self._require_future()
        if isinstance(future, asyncio.Future) and future.done():
            # Finished: nothing to wait for on its loop, which may be gone by now.
            return future.result()
        if not future.done() and not self._loop.is_running():
            raise self._cannot_finish()  # nothing runs the work while we wait
        done = threading.Event()
        if isinstance(future, asyncio.Future):
            self._loop.call_soon_threadsafe(future.add_done_callback, lambda _f: done.set())
        else:
            future.add_done_callback(lambda _f: done.set())
        try:
            self._wait_running(done, timeout)
        except KeyboardInterrupt as exc:
            self._note_still_running(exc)  # Ctrl-C while waiting, not the work's own
            raise
        return future.result()

    def _wait_running(self, done: threading.Event, timeout: float | None) -> None:
        # Wait for ``done`` in slices, so that a loop stopped meanwhile (its work can
        # then never finish) is noticed and said, as it is before the wait. A loop seen
        # stopped twice in a row: one restarting after a task's KeyboardInterrupt (see
        # cm_notebook._loop.start_loop_thread) is not running only for an instant.
        deadline = None if timeout is None else time.monotonic() + timeout
        stopped = 0
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if done.wait(_LOOP_CHECK_SECONDS if left is None else min(left, _LOOP_CHECK_SECONDS)):
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"not finished within {timeout} s")
            if not done.is_set():
                stopped = self._stopped_again(stopped)

    def _stopped_again(self, stopped: int) -> int:
        # How many looks in a row have found the work's loop stopped, this one counted;
        # the second says the work can never finish (StateError).
        stopped = 0 if self._loop.is_running() else stopped + 1
        if stopped >= 2:
            raise self._cannot_finish()
        return stopped

    def _note_still_running(self, interrupt: KeyboardInterrupt) -> None:
        # Ctrl-C in a script stops the wait in result(), not the work: say so on the
        # KeyboardInterrupt (shown under its traceback), as ``await`` does in a kernel.
        # Not when the work has ended: then the interrupt is its own (e.g. a provider's).
        if self.done() or not hasattr(interrupt, "add_note"):  # notes: Python 3.11+
            return
        goes_on = self._goes_on()
        interrupt.add_note(
            f"stopped waiting; {goes_on} (it runs in the background until the process exits)"
            if goes_on is not None
            else "stopped waiting; the work goes on in the background until the process "
            "exits: call .result() on it again for its result, or .cancel() to stop it"
        )

    def _goes_on(self) -> str | None:
        # What a stopped wait says goes on, and how to reach it without this handle:
        # the caller may never have had it (`r = await session.send(...)` interrupted
        # mid-reply). None: the work is only reachable through the handle, said as "it".
        return None

    def drop_queued(self) -> None:
        """Cancel work handed to a loop that is not running (its session closed without
        that loop): it is done (cancelled) now, and does not start if the loop runs again."""
        future = self._require_future()
        if isinstance(future, concurrent.futures.Future):
            future.cancel()  # not yet started on its loop, so this takes

    def exception(self) -> BaseException | None:
        """The error the work ended with, if it has finished with one."""
        future = self._require_future()
        if not future.done():
            return None
        if future.cancelled():
            return asyncio.CancelledError()
        return future.exception()

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    async def _wait(self) -> T:
        future = self._require_future()
        if isinstance(future, asyncio.Future) and future.done():
            # Finished: nothing to wait for on its loop, which may be gone by now (a
            # turn awaited again in a later asyncio.run()), as in result().
            if self.after_await is not None:
                self.after_await()
            return future.result()
        if isinstance(future, concurrent.futures.Future):
            wrapped: asyncio.Future[T] = asyncio.wrap_future(future)
        elif future.get_loop() is not asyncio.get_running_loop():
            echo = _echo(future)
            try:
                wrapped = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(echo, self._loop))
            except RuntimeError:  # its loop is closed: the work never finishes
                echo.close()  # no "never awaited" warning about it
                raise self._cannot_finish() from None
        else:
            wrapped = future
        # Poll instead of a bare await so the kernel's Interrupt button works, and so
        # that the work's loop (another than this one) stopping is noticed and said,
        # as in result(): the work could then never finish.
        elsewhere = self._loop is not asyncio.get_running_loop()
        stopped = 0
        try:
            while not wrapped.done():
                await asyncio.wait({wrapped}, timeout=_POLL_SECONDS)
                if elsewhere and not wrapped.done():
                    stopped = self._stopped_again(stopped)
        except asyncio.CancelledError:
            if wrapped.done():
                raise
            # The wait was cancelled (the kernel's Interrupt, a timeout around it), not
            # the work: say so, where a bare CancelledError said nothing.
            goes_on = self._goes_on() or (
                "the work goes on: await it again for its result, or call .cancel() on it "
                "to stop it"
            )
            raise asyncio.CancelledError(f"stopped waiting; {goes_on}") from None
        if self.after_await is not None:
            self.after_await()
        return wrapped.result()

    def _cannot_finish(self) -> StateError:
        # Work queued on a loop that is not running cannot finish while we wait: said
        # instead of waiting for ever (or asyncio's bare "Event loop is closed").
        if self._loop.is_closed():
            return StateError(
                "the event loop this work runs on has ended before it finished (it was "
                "made inside an asyncio.run() that has returned), so it will not finish"
            )
        return StateError(
            "the event loop this work runs on is not running (the session was made inside "
            "loop.run_until_complete(), which has returned), so waiting here would never "
            "end: run it on that loop (loop.run_until_complete(it)), or make the session "
            "outside any event loop, where it runs its turns on a loop of its own"
        )

    def _require_future(self) -> asyncio.Future[T] | concurrent.futures.Future[T]:
        if self._future is None:  # pragma: no cover - the session always attaches one
            raise StateError("this work has not been started")
        return self._future


async def _echo(future: asyncio.Future[T]) -> T:
    return await future


class TurnProgress:
    """What a running turn has produced so far, safe to read from any thread.

    The turn runner writes it (:meth:`start_message`, :meth:`add_text`, :meth:`finish`);
    the :class:`Turn` reads it, and listeners (such as ``session.stream()``) get every
    delta, then ``None`` when the turn is over.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # The text as pieces, joined when read: appending a chunk to one growing string
        # would copy the whole reply for every chunk.
        self._parts: list[str] = []
        # The reasoning so far, as pieces too (a thinking model may reason at length).
        self._reasoning: list[str] = []
        self._message_id: str | None = None
        self._listeners: tuple[Callable[[str | None], None], ...] = ()  # replaced, not changed
        self._finished = False

    @property
    def text(self) -> str:
        """The reply's text so far (of the current attempt)."""
        with self._lock:
            if len(self._parts) > 1:
                self._parts = ["".join(self._parts)]
            return self._parts[0] if self._parts else ""

    @property
    def reasoning(self) -> str:
        """The reply's reasoning so far (of the current attempt; "" without any)."""
        with self._lock:
            if len(self._reasoning) > 1:
                self._reasoning = ["".join(self._reasoning)]
            return self._reasoning[0] if self._reasoning else ""

    @property
    def message_id(self) -> str | None:
        """Id of the assistant message being written (None before the first request)."""
        with self._lock:
            return self._message_id

    def start_message(self, message_id: str) -> None:
        """A request (a first try or a retry) starts writing ``message_id`` afresh."""
        with self._lock:
            self._message_id = message_id
            self._parts = []
            self._reasoning = []

    def add_reasoning(self, delta: str) -> None:
        """More reasoning arrived (read with :attr:`reasoning`; listeners get text only)."""
        with self._lock:
            self._reasoning.append(delta)

    def add_text(self, delta: str) -> None:
        """More text arrived; listeners get ``delta``."""
        with self._lock:
            self._parts.append(delta)
            listeners = self._listeners
        for listener in listeners:
            listener(delta)

    def finish(self) -> None:
        """The turn is over; listeners get ``None``."""
        with self._lock:
            self._finished = True
            listeners = self._listeners
        for listener in listeners:
            listener(None)

    def listen(self, listener: Callable[[str | None], None]) -> tuple[str, Callable[[], None]]:
        """Call ``listener`` with each later delta, then ``None`` at the end.

        Returns the text so far and an unsubscribe function. Taken under the lock, so
        every later delta reaches the listener exactly once, and a turn that already
        finished (e.g. on another thread's loop) still tells the listener it is over.
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)
            text, finished = "".join(self._parts), self._finished
        if finished:
            listener(None)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    listeners = list(self._listeners)
                    listeners.remove(listener)
                    self._listeners = tuple(listeners)

        return text, remove


class DeltaFeed:
    """A turn's text deltas for one async reader, cheap to feed from any thread.

    Made on the reader's loop (``session.stream()``). Fed on that loop's own thread
    (the usual case: the turn runs where it is read), a delta is queued directly; fed
    from another thread (a turn on the background loop read from another loop), the
    reader is woken with one ``call_soon_threadsafe`` per batch of deltas, not one per
    delta. Iterating yields each delta, in order, until the turn is over.
    """

    def __init__(self, progress: TurnProgress) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._items: deque[str | None] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wake_scheduled = False
        #: The text the turn had produced before this feed started listening.
        self.so_far, self._remove = progress.listen(self._put)

    def close(self) -> None:
        """Stop listening (the deltas still queued are dropped)."""
        self._remove()

    def _put(self, delta: str | None) -> None:
        here = threading.get_ident() == self._thread
        with self._lock:
            self._items.append(delta)
            waiter = self._waiter
            if waiter is None or self._wake_scheduled:
                return
            if not here:
                self._wake_scheduled = True
        if here:
            self._wake()
        else:
            # A closed reader loop has nobody left to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            waiter, self._waiter = self._waiter, None
            self._wake_scheduled = False
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def batch(self) -> list[str | None]:
        """The deltas queued since the last call, waiting for one if there are none;
        ``None`` ends the turn's text (a reader that cannot use ``async for``, or wants
        to skip the per-delta step of an async iterator)."""
        while True:
            with self._lock:
                if self._items:
                    batch = list(self._items)
                    self._items.clear()
                    return batch
                waiter = self._waiter = self._loop.create_future()
            await waiter

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            for delta in await self.batch():
                if delta is None:
                    return
                yield delta


class Turn(Handle[Message]):
    """One reply being generated on a branch.

    ``await turn`` (notebooks, async code) or ``turn.result(timeout)`` (scripts) gives
    the final assistant message. ``text`` and ``message_id`` are safe to read from any
    thread while it runs.
    """

    def __init__(
        self,
        branch: str,
        loop: asyncio.AbstractEventLoop,
        *,
        prompt: concurrent.futures.Future[None] | None = None,
    ) -> None:
        super().__init__(loop)
        self.id = new_id("t")
        self.branch = branch
        #: What the turn has produced so far (written by its runner).
        self.progress = TurnProgress()
        # The write of the user's message, when it runs in the background.
        self._prompt = prompt
        #: The tool calls waiting for a decision on this turn's branch (set by the
        #: session that runs the turn).
        self.waiting_calls: Callable[[], list[ToolCall]] = list

    async def wait_for_approval(self, timeout: float | None = 60.0) -> list[ToolCall]:
        """Wait until this turn asks for decisions on tool calls, and return those calls.

        Returns ``[]`` if the turn ended without asking (the model answered, or it was
        stopped); if it failed, raises its error as ``await turn`` does (a missing API
        key, say), rather than leaving the caller with no calls and no reason. Raises
        TimeoutError after ``timeout`` seconds. Decide the calls with the session's
        ``approve`` / ``deny``::

            turn = session.send("Weather in Paris?")
            calls = await turn.wait_for_approval()
            session.approve(calls[0].id)
            reply = await turn
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            calls = self.waiting_calls()
            if calls:
                return calls
            if self.done():
                await self  # raises the error a failed turn ended with
                return []
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"turn {self.id} asked for no decision within {timeout} s")
            # Polled, not awaited on a future: the kernel's Interrupt button stops it.
            await asyncio.sleep(_APPROVAL_POLL_SECONDS)

    async def accepted(self) -> None:
        """Wait until the user's message of this turn is durable on disk.

        Raises the error that kept it from being stored (the turn then fails with it
        too). ``send()`` from a script stores the message before it returns; on an
        event loop (a notebook cell, a server) it is stored in the background so the
        loop never waits for the disk, and this is how to wait for it, e.g. before
        acknowledging the send to someone else.
        """
        if self._prompt is not None:
            await asyncio.wrap_future(self._prompt)

    def when_accepted(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call ``callback(None)`` once the user's message is stored, or
        ``callback(error)`` with the error that kept it from being stored.

        The callback runs on the thread that finished the write (at once if it has
        finished): hand anything that touches a view to its event loop. What a front
        end uses to give back text it took from its input box when the store refused
        it (a read-only folder, a full disk).
        """
        prompt = self._prompt
        if prompt is None:  # stored before send() returned
            callback(None)
            return

        def finished(future: concurrent.futures.Future[None]) -> None:
            callback(asyncio.CancelledError() if future.cancelled() else future.exception())

        prompt.add_done_callback(finished)

    @property
    def text(self) -> str:
        """The reply's text so far."""
        return self.progress.text

    @property
    def reasoning(self) -> str:
        """The reply's reasoning so far ("" without any): a thinking model's, as it
        streams (the finished reply keeps it as ``metadata.reasoning``)."""
        return self.progress.reasoning

    @property
    def message_id(self) -> str | None:
        """Id of the assistant message being written (None before the first request)."""
        return self.progress.message_id

    def cancel(self) -> None:
        """Stop generating. The partial text is kept (status ``interrupted``).

        Safe to call from any thread, more than once, and after the turn finished
        (then it does nothing).
        """
        super().cancel()

    def _goes_on(self) -> str:
        # Through the session, which has this Turn for as long as it runs.
        branch = self.branch
        return (
            f"the reply on branch {branch!r} goes on: session.turn({branch!r}) is its Turn "
            f"while it runs (await it for the reply), session.stop(branch={branch!r}) "
            "stops it"
        )

    def __repr__(self) -> str:
        status = "done" if self.done() else "running"
        text = self.text
        preview = text if len(text) <= 40 else grapheme_prefix(text, 37) + "..."
        return f"<Turn branch={self.branch!r} {status} text={preview!r}>"
