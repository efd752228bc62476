"""``/contexts/{context_id}/events``: a context's signals as Server-Sent Events.

The stream replays the signals after ``Last-Event-ID`` (or ``?since=``), then follows
live ones; a comment line every ``heartbeat`` seconds keeps idle connections (and the
proxies between) open and notices a client that left. Closing the session (the
context was deleted, the server stops) ends the stream cleanly; when the server stops,
the stream first sends what the signal log holds, the last signals of the replies the
stop cut short among them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, get_args

from tornado.iostream import StreamClosedError

from ..events import ErrorReported, Event
from .base import HEARTBEAT_KEY, CMHandler, operation
from .bodies import EventsQuery
from .signals import SignalStream, parse_since, sse_comment, sse_message

__all__ = ["EventsHandler"]

_SIGNALS = ", ".join(kind.model_fields["type"].default for kind in get_args(get_args(Event)[0]))
_MEDIA_TYPE = "text/event-stream; charset=utf-8"
_SUMMARY = "Signals as Server-Sent Events (replay with Last-Event-ID or ?since=)"
_DESCRIBE = (
    "Server-Sent Events, one per signal: 'id:' is the signal's sequence number, 'event:' "
    f"its name ({_SIGNALS}), 'data:' its JSON (a ContentDelta, and a ReasoningDelta of a "
    "thinking model's reasoning, also carries its text as 'delta'). Reconnect with "
    "Last-Event-ID (or ?since=) to miss nothing; a Resync means: re-pull what you show, "
    "then carry on."
)


class EventsHandler(CMHandler):
    """The SSE stream of one context."""

    _gone: asyncio.Event | None = None

    def on_connection_close(self) -> None:
        """The client left: end the stream now rather than at the next write."""
        if self._gone is not None:
            self._gone.set()

    @operation(
        _SUMMARY,
        query=EventsQuery,
        media_type="text/event-stream",
        description=_DESCRIBE,
    )
    async def get(self, context_id: str) -> None:
        session = await self.session(context_id, stream=True)
        # Taken with the session, with no await between: a deletion that starts later
        # sets it, one under way already refused the session.
        ended = self.sessions.ended(session.id)
        query = self.query(EventsQuery)
        since = parse_since(self.request.headers.get("Last-Event-ID"), query.since)
        self._gone = asyncio.Event()
        stream = self.signal_source(session).open(since)
        self._stream_headers()
        try:
            # Headers and a first line at once: clients wait for them before reading.
            self.write("retry: 1000\n" + sse_comment(f"signals of context {session.id}"))
            await self.flush()
            rest = await self._pump(stream, ended, float(self.settings[HEARTBEAT_KEY]))
            if rest is not None:
                # The server is stopping: what the log holds, then the end, written out
                # before the lease goes (the server waits for that, a bounded time).
                for event in rest:
                    self.write(sse_message(self._for_client(event)))
                await self.finish()
                return
        except StreamClosedError:
            return  # the client left while we wrote
        finally:
            stream.close()
        if not self._gone.is_set():
            self.finish()

    @operation(
        _SUMMARY,
        query=EventsQuery,
        media_type="text/event-stream",
    )
    async def head(self, context_id: str) -> None:
        # As GET answers, but never a stream: a HEAD has no body, so one that stayed
        # open would only hold the session (and the connection) for nothing.
        await self.session(context_id)
        parse_since(self.request.headers.get("Last-Event-ID"), self.query(EventsQuery).since)
        self._stream_headers()
        self.finish(set_content_type=_MEDIA_TYPE)  # (Jupyter's finish() says JSON otherwise)

    def _stream_headers(self) -> None:
        self.set_header("Content-Type", _MEDIA_TYPE)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # tell reverse proxies not to buffer

    async def _pump(
        self, stream: SignalStream, ended: asyncio.Event, heartbeat: float
    ) -> list[Event] | None:
        # Ends when the client leaves (gone) or the session is closed (ended). Returns
        # the signals still to send when it ended because the server is stopping.
        assert self._gone is not None
        gone = asyncio.ensure_future(_first(self._gone, ended))
        upcoming: asyncio.Future[Event] | None = None
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(anext(stream))
                waiting: set[asyncio.Future[Any]] = {upcoming, gone}
                done, _ = await asyncio.wait(
                    waiting, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done:
                    if self._gone.is_set() or not self.sessions.stopping:
                        return None  # the client left, or the context was deleted
                    # The server stopped the context's replies before ending this: their
                    # last signals are in the log (none may come after, so none is
                    # waited for).
                    first, upcoming = await _settled(upcoming), None
                    return [*first, *await stream.drain()]
                if upcoming in done:
                    try:
                        event = upcoming.result()
                    except StopAsyncIteration:
                        return None  # the session closed: end the response cleanly
                    upcoming = None
                    self.write(sse_message(self._for_client(event)))
                else:
                    self.write(sse_comment("heartbeat"))
                # Raced with the end: a client that stopped reading (its window full)
                # must not keep a deleted context's stream, and its log's file, open.
                flushed = asyncio.ensure_future(self.flush())
                await asyncio.wait({flushed, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not flushed.done():
                    flushed.cancel()
                    self._gone.set()  # nothing more can be written to it: closed here
                    self.request.connection.close()  # type: ignore[union-attr]
                    return None
                flushed.result()  # StreamClosedError: the client left while we wrote
        finally:
            for task in (upcoming, gone):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await task

    def _for_client(self, event: Event) -> Event:
        # The package's own error messages (a lock timeout, a provider's failure) name
        # the server's paths and Python remedies: worded as HTTP errors are. A tool's
        # error is the tool's own text, passed on as it is.
        if isinstance(event, ErrorReported) and event.kind != "tool":
            return event.model_copy(
                update={"message": self.reword(event.message, event.context_id)}
            )
        return event


async def _settled(upcoming: asyncio.Future[Event] | None) -> list[Event]:
    # The signal a read under way already took, if it did; otherwise the read is
    # cancelled (a stream's drain() takes over what it left).
    if upcoming is None:
        return []
    if not upcoming.done():
        upcoming.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        return [await upcoming]
    return []


async def _first(*events: asyncio.Event) -> None:
    # Returns as soon as any of ``events`` is set.
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
