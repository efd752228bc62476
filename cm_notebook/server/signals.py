"""Where the events stream gets its signals, and how one signal looks on the wire.

The SSE handler reads signals through one small interface, :class:`SignalSource`:
``open(since)`` returns an async iterator of numbered signals that first replays
those after ``since`` and then follows live ones, with no gap and no repeat, and a
single :class:`~cm_notebook.events.Resync` when it cannot (the numbers asked for are
gone). The server's source is the context's signal log on disk (:class:`LogSignals`):
its numbers are shared by every process writing the context and survive restarts, so
a client reconnecting after a server restart with ``Last-Event-ID`` misses nothing.
The in-process bus (:class:`BusSignals`, numbers restarting with the process) remains
for stores without a log.

The wire format is Server-Sent Events, one signal per message::

    id: 42
    event: ContentDelta
    data: {"type":"ContentDelta","seq":42,"text":"Hel","delta":"Hel","offset":0,...}

``event:`` is the signal's name, so a browser listens per kind with
``addEventListener('ContentDelta', e => JSON.parse(e.data).delta)`` (a thinking
model's reasoning, apart from the text: ``'ReasoningDelta'``, read the same way);
``id:`` is the
sequence number, which a reconnecting ``EventSource`` sends back as ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import anyio

from .._file_events import Subscription, watch_folders
from ..errors import InvalidInputError
from ..events import ContentDelta, Event, EventStream, ReasoningDelta
from ..session import ContextSession
from ..signal_log import LogReader

__all__ = [
    "BusSignals",
    "BusStream",
    "LogSignals",
    "LogStream",
    "SignalSource",
    "SignalSourceFactory",
    "SignalStream",
    "parse_since",
    "sse_comment",
    "sse_message",
]


class SignalStream(Protocol):
    """An async iterator of signals in sequence order, which can be closed early."""

    def __aiter__(self) -> SignalStream: ...

    async def __anext__(self) -> Event: ...

    def close(self) -> None:
        """Stop following (the iteration ends); safe to call more than once."""

    async def drain(self) -> list[Event]:
        """The signals there are now and not yet returned, without waiting for more;
        then the stream is closed. For a stream ending because its session closed: the
        signals the session wrote while closing are among them."""
        ...


class SignalSource(Protocol):
    """The signals of one context, replayable from a sequence number."""

    def open(self, since: int | None) -> SignalStream:
        """Signals after ``since`` (None: only those published from now on), then live ones.

        Signals that cannot be replayed any more come as one ``Resync``.
        """
        ...


#: Makes the source for a session's context; the server's ``signal_source`` setting.
SignalSourceFactory = Callable[[ContextSession], SignalSource]


class BusSignals:
    """The in-process source: the session's own signal bus.

    Its numbers are the bus's: they restart when the server restarts, and a client
    asking for a number ahead of the bus gets a ``Resync``.
    """

    def __init__(self, session: ContextSession) -> None:
        self._session = session

    def open(self, since: int | None) -> SignalStream:
        """A stream registered at once, so nothing published after this call is missed."""
        return BusStream(self._session.event_stream(since))


class BusStream:
    """A session's bus stream (:class:`~cm_notebook.events.EventStream`) as a
    :class:`SignalStream`."""

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream

    def __aiter__(self) -> BusStream:
        return self

    async def __anext__(self) -> Event:
        return await anext(self._stream)

    def close(self) -> None:
        """Unregister from the bus; safe to call more than once."""
        self._stream.close()

    async def drain(self) -> list[Event]:
        """The signals the bus buffered for this stream; then the stream is closed."""
        events = []
        with contextlib.suppress(StopAsyncIteration):
            while self._stream.pending:
                events.append(await anext(self._stream))
        self.close()
        return events


class LogSignals:
    """The context's signal log: durable numbers, every process's signals.

    Falls back to the session's bus for a store that keeps no log.
    """

    def __init__(self, session: ContextSession) -> None:
        self._session = session

    def open(self, since: int | None) -> SignalStream:
        """A stream positioned at once (at the log's end when ``since`` is None)."""
        path = self._session.signal_log_path
        if path is None:
            return BusStream(self._session.event_stream(since))
        return LogStream(path, since)


class LogStream:
    """Follows a signal log: woken by file-change notification, else polling.

    The process's one file watcher (:mod:`cm_notebook._file_events`) wakes the stream
    when the log's folder changes; it reads anyway every ``safety`` seconds. Without
    notification (see ``CM_NOTEBOOK_FILE_EVENTS``) it reads every ``interval`` seconds.
    Reads never take the log's lock, so a slow client never holds up a writer.
    """

    def __init__(
        self, path: Path, since: int | None, *, interval: float = 0.05, safety: float = 1.0
    ) -> None:
        self._reader = LogReader(path, since)
        self._interval, self._safety = interval, safety
        self._pending: deque[Event] = deque()
        self._closed = False
        self._changed: asyncio.Event | None = None
        self._subscription: Subscription | None = None
        # The read under way on a worker thread (a big log takes a while to decode:
        # never on the server's event loop).
        self._read: asyncio.Future[list[tuple[str, Event]]] | None = None

    def __aiter__(self) -> LogStream:
        return self

    def _watch(self) -> asyncio.Event | None:
        # On the first read (it needs the running loop): subscribe to the log's folder.
        if self._changed is None:
            self._changed = asyncio.Event()
            loop, changed = asyncio.get_running_loop(), self._changed

            def wake() -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(changed.set)

            log = os.path.realpath(self._reader.path)
            self._subscription = watch_folders(
                [self._reader.path.parent], wake, lambda path: path == log
            )
        if self._subscription is None or not self._subscription.live:
            return None
        return self._changed

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            changed = self._watch()
            if changed is not None:
                changed.clear()  # before the read: a change made during it wakes the next
            if self._read is None:
                self._read = asyncio.ensure_future(asyncio.to_thread(self._reader.poll))
            # Shielded: a cancelled wait leaves the read to finish, and the next call (or
            # close()) takes it over, so two reads never share the reader.
            polled = await asyncio.shield(self._read)
            self._read = None
            if self._closed:
                raise StopAsyncIteration
            self._pending.extend(event for _, event in polled)
            if self._pending:
                break
            if changed is None:
                await anyio.sleep(self._interval)  # the polling interval
            else:
                with anyio.move_on_after(self._safety):
                    await changed.wait()
        return self._pending.popleft()

    async def drain(self) -> list[Event]:
        """What the log holds that this stream has not returned yet (a read under way
        included), without waiting for more; then the stream is closed."""
        while not self._closed:
            if self._read is None:
                self._read = asyncio.ensure_future(asyncio.to_thread(self._reader.poll))
            polled = await asyncio.shield(self._read)  # as in __anext__
            self._read = None
            if not polled:
                break
            self._pending.extend(event for _, event in polled)
        events = list(self._pending)
        self.close()
        return events

    def close(self) -> None:
        """Stop following; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._pending.clear()
            read, self._read = self._read, None
            if read is not None and not read.done():
                read.add_done_callback(self._close_reader)  # not under a read's feet
            else:
                self._close_reader(read)
            if self._subscription is not None:
                self._subscription.cancel()
            if self._changed is not None:
                self._changed.set()  # a read waiting for a change ends now

    def _close_reader(self, read: asyncio.Future[list[tuple[str, Event]]] | None) -> None:
        if read is not None and not read.cancelled():
            read.exception()  # retrieved: the stream is closed, nobody else wants it
        self._reader.close()


def parse_since(last_event_id: str | None, since: int | None) -> int | None:
    """The sequence number to replay after: ``Last-Event-ID`` wins over ``?since=``.

    A reconnecting ``EventSource`` sends the header but repeats the original URL, so
    the header is the newer of the two.
    """
    if last_event_id is None or last_event_id.strip() == "":
        return since
    value = last_event_id.strip()
    # ASCII digits only: str.isdigit() also accepts e.g. superscripts, which int() refuses.
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise InvalidInputError(
            "Last-Event-ID must be a signal's sequence number (a whole number >= 0), "
            f"got {_as_sent(last_event_id)[:40]!r}"
        )
    return int(value)


def _as_sent(header: str) -> str:
    # Header values arrive decoded as Latin-1; a client that wrote UTF-8 (every
    # browser, httpx) is shown its own text, not mojibake.
    try:
        return header.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return header


def sse_message(event: Event) -> str:
    """One signal as an SSE message (``id``, ``event``, one ``data`` line)."""
    data = event.model_dump(mode="json")
    if isinstance(event, (ContentDelta, ReasoningDelta)):
        # The browser snippet reads ``.delta``; the model calls the same text ``text``.
        data["delta"] = event.text
    # json.dumps escapes line breaks inside strings, so ``data:`` stays one line.
    payload = json.dumps(data, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {payload}\n\n"


def sse_comment(text: str) -> str:
    """An SSE comment line: ignored by clients, keeps proxies and idle timers awake."""
    return f": {' '.join(text.split())}\n\n"
