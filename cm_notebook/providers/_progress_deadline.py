"""A bound on the time a streamed reply may go without real progress.

A server may keep a stream open with keep-alive messages alone: event-stream comments
(``: keep-alive``, ``: ping``, OpenRouter's ``: OPENROUTER PROCESSING``) or Anthropic's
``ping`` events. The SDKs skip them, but each is bytes on the socket, so the HTTP
client's read timeout, which bounds the time between bytes, starts again with every
one: a server stuck after its first words (or before them) would hold the turn
forever, with no error.

:class:`ProgressDeadline` bounds the time spent waiting for the server between pieces of
real progress (text, reasoning, a tool-call piece, usage, the finish reason). Before the
first piece, keep-alives are the server saying it is still working (a gateway sends
them while the model thinks, which may take minutes): that wait is bounded by the
provider's ``first_token_timeout`` (never less than its ``timeout``); after it, the
time between pieces by ``timeout``. When the limit is used up, :class:`Stalled` is
raised, saying which limit it was and whether any bytes came after the last event the
SDK handed on: if some did, they were keep-alives, and the provider fails the reply
with :func:`~._errors.keepalive_timeout_error`; if none did, the server went silent,
and the provider fails it as it fails a read timeout. Both are
:class:`~cm_notebook.errors.TransientProviderError` timeouts, retried as such.

The deadline is kept where the body is read (see :func:`~._http_client.watch_progress`),
not around each of the SDK's events: only the time spent in a read of the socket counts
(a consumer that takes its time with an event, a slow view or a disk write, does not
use up the server's), and a read is bounded by a cancel scope only when the limit left
is shorter than the HTTP client's own read timeout, which bounds it otherwise. A reply
that keeps moving on, each read after a piece of progress, so costs no scope at all;
the provider only notes each event (:meth:`ProgressDeadline.progressed`,
:meth:`ProgressDeadline.returned`), a few attribute writes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio

from ..errors import InvalidInputError

__all__ = ["ProgressDeadline", "Stalled", "seconds_option"]


def seconds_option(name: str, value: object) -> float:
    """``value`` as the seconds of a provider's timeout option ``name``; raises
    :class:`~cm_notebook.errors.InvalidInputError` unless it is a positive number (a
    bool is refused: True is no number of seconds)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidInputError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


class Stalled(Exception):
    """No progress within the deadline's limit.

    ``keepalives``: bytes came after the last event (keep-alive messages, or an event
    not yet whole), rather than none at all. ``first``: no piece of the reply had come
    yet, so the limit was ``first_token_timeout``. ``seconds``: the limit used up.
    """

    def __init__(self, *, keepalives: bool, first: bool, seconds: float) -> None:
        what = "keep-alives only" if keepalives else "nothing"
        super().__init__(f"no progress for {seconds:g} s ({what})")
        self.keepalives = keepalives
        self.first = first
        self.seconds = seconds


class ProgressDeadline:
    """The time a stream's body may be waited for without real progress.

    ``first_token_timeout`` bounds the wait before the reply's first piece (the larger
    of it and ``timeout`` is used, so the first wait is never the shorter one),
    ``timeout`` the wait between pieces. The body reads through :meth:`next`, which
    raises :class:`Stalled` when the limit is used up; the provider calls
    :meth:`progressed` for each event that moves the reply on and :meth:`returned` for
    every other event it gets.
    """

    def __init__(self, timeout: float, first_token_timeout: float) -> None:
        self.timeout = timeout
        self.first_token_timeout = max(first_token_timeout, timeout)
        #: The HTTP client's read timeout for this body (set with the body, None when
        #: unknown): a read it bounds needs no cancel scope of ours.
        self.read_timeout: float | None = None
        #: The body's bytes read through :meth:`next` so far.
        self.bytes_read = 0
        self._limit = self.first_token_timeout
        self._moved = False  # a piece of the reply came: ``timeout`` bounds the wait now
        self._waited = 0.0  # seconds spent reading since the last progress
        # The bytes read when the SDK handed on its last event: any more are keep-alives
        # (or the start of an event still coming), none is silence.
        self._bytes_at_event = 0
        #: The :class:`Stalled` :meth:`next` raised, if it did: an SDK may pass it on
        #: wrapped in an error of its own (a "connection error").
        self.stalled: Stalled | None = None

    def progressed(self) -> None:
        """The reply moved on: the next ``timeout`` seconds of waiting start now."""
        self._waited = 0.0
        self._limit = self.timeout
        self._moved = True
        self._bytes_at_event = self.bytes_read

    def returned(self) -> None:
        """The SDK handed on an event that did not move the reply on (a role-only
        chunk, say): the wait goes on, but bytes before it are not keep-alives."""
        self._bytes_at_event = self.bytes_read

    async def next(self, chunks: AsyncIterator[bytes]) -> bytes:
        """The body's next bytes from ``chunks`` (``StopAsyncIteration`` at its end);
        raises :class:`Stalled` when the limit is used up first."""
        remaining = self._limit - self._waited
        # Durations only: the monotonic clock, cheaper than asking the event loop.
        started = time.monotonic()
        try:
            if self.read_timeout is not None and remaining >= self.read_timeout:
                # A read that gets nothing fails at the read timeout before the limit is
                # used up, and one that gets bytes is counted when it returns.
                chunk = await chunks.__anext__()
                self.bytes_read += len(chunk)
                return chunk
            with anyio.CancelScope(deadline=anyio.current_time() + remaining):
                chunk = await chunks.__anext__()
                self.bytes_read += len(chunk)
                return chunk
        finally:
            self._waited += time.monotonic() - started
        # Reached only when the limit cancelled the read. The body is done for
        # (cancelled mid-read); the provider closes the response.
        self.stalled = Stalled(
            keepalives=self.bytes_read > self._bytes_at_event,
            first=not self._moved,
            seconds=self._limit,
        )
        raise self.stalled
