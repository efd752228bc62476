"""A bound on the time a streamed reply may go without real progress.

A server may keep a stream open with keep-alive messages alone: event-stream comments
(``: keep-alive``, ``: ping``, sent by many proxies and gateways) or Anthropic's
``ping`` events. The SDKs skip them, but each is bytes on the socket, so the HTTP
client's read timeout, which bounds the time between bytes, starts again with every
one: a server stuck after its first words (or before them) would hold the turn
forever, with no error.

:class:`ProgressDeadline` bounds the time between pieces of real progress (text,
reasoning, a tool-call piece, usage, the finish reason) by the provider's own
``timeout``. The provider waits for each event of the SDK's stream through
:meth:`ProgressDeadline.next` and calls :meth:`ProgressDeadline.progressed` for each
one that moves the reply on. When ``timeout`` seconds pass without progress the wait
is cancelled and :class:`Stalled` raised, which says whether any bytes came meanwhile:
if some did, they were keep-alives, and the provider fails the reply with
:func:`~._errors.keepalive_timeout_error`; if none did, the read timeout was about to
fire too, and the provider fails it as it fails a read timeout. Both are
:class:`~cm_notebook.errors.TransientProviderError` timeouts, retried as such.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import anyio

__all__ = ["ProgressDeadline", "Stalled"]

_T = TypeVar("_T")


class Stalled(Exception):
    """No progress for the deadline's ``timeout``; ``keepalives``: bytes came meanwhile
    (or could not be counted), so only keep-alive messages, or nothing that moved the
    reply on, were sent."""

    def __init__(self, keepalives: bool) -> None:
        super().__init__("no progress" + (" (keep-alives only)" if keepalives else ""))
        self.keepalives = keepalives


class ProgressDeadline:
    """Waits for a stream's events, at most ``timeout`` seconds after the last progress.

    ``bytes_read`` tells how many bytes of the body have come so far (None when they
    cannot be counted): compared with its value at the last progress, it tells
    keep-alives from silence. Only the time spent in :meth:`next` counts, from when the
    stream has opened (the time to the response's headers is the HTTP client's to
    bound).
    """

    def __init__(self, timeout: float, bytes_read: Callable[[], int | None]) -> None:
        self.timeout = timeout
        self._bytes_read = bytes_read
        # Only time spent waiting for the server counts: a consumer that takes its time
        # with an event (a slow view, a disk write) does not use up the server's.
        self._waited = 0.0
        self._bytes_then = bytes_read()

    def progressed(self) -> None:
        """The reply moved on: the next ``timeout`` seconds of waiting start now."""
        self._waited = 0.0
        self._bytes_then = self._bytes_read()

    async def next(self, events: AsyncIterator[_T]) -> _T:
        """The next event of ``events``; raises :class:`Stalled` when the time waited
        since the last progress reaches ``timeout`` first (``StopAsyncIteration`` at
        the end, as usual)."""
        started = anyio.current_time()
        try:
            with anyio.CancelScope(deadline=started + self.timeout - self._waited):
                return await events.__anext__()
        finally:
            self._waited += anyio.current_time() - started
        # Reached only when the deadline cancelled the wait. The SDK's iterator is done
        # for (cancelled mid-read); the caller closes the response.
        now = self._bytes_read()
        raise Stalled(keepalives=now is None or self._bytes_then is None or now > self._bytes_then)
