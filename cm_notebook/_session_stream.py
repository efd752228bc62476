"""``session.stream()``: send, and yield the reply's text as it arrives.

A stream that is left early (``break``, an exception, cancellation) stops its reply as
``session.stop()`` does, the text so far kept, and is over once that stop is: closed
with ``contextlib.aclosing``, the branch is free for the next send when the
``async with`` ends. Left with a plain ``break``, Python closes it a moment later, on
the loop; a send on the branch before then is refused with a :class:`BusyError` that
says so, and how to close it at once (not the ``turn.cancel()`` of a turn the caller
never had).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ._session_reading import SessionReading
from .errors import BusyError
from .providers.pool import ProviderLike
from .turn import DeltaFeed, Turn

__all__ = ["StreamMethods"]


class StreamMethods(SessionReading):
    """The ``stream`` method of :class:`~cm_notebook.session.ContextSession`."""

    _streamed: weakref.WeakSet[Turn]  # the turns started by stream()

    def send(
        self,
        text: str,
        *,
        branch: str | None = None,
        provider: ProviderLike | None = None,
        metadata: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> Turn:
        raise NotImplementedError  # ContextSession's

    async def stream(
        self,
        text: str,
        *,
        branch: str | None = None,
        provider: ProviderLike | None = None,
        **params: Any,
    ) -> AsyncIterator[str]:
        """Send ``text`` and yield the reply's text deltas as they arrive.

        If a retry restarts the reply, the deltas of the failed attempt were already
        yielded; read the final message with :meth:`history` for the clean text.

        Left early (``break``, an exception, cancellation), the stream stops the reply
        as :meth:`stop` does (the text so far kept, status ``interrupted``) and is over
        once that stop is. Closed with ``contextlib.aclosing``, the branch is free for
        the next send as soon as the ``async with`` ends::

            async with contextlib.aclosing(session.stream("Hello")) as deltas:
                async for delta in deltas:
                    if enough(delta):
                        break
            session.send("Shorter, please")

        After a plain ``break``, Python closes the stream a moment later, on the loop;
        until then a send on the branch is refused (BusyError).
        """
        turn = self.send(text, branch=branch, provider=provider, **params)
        with self._lock:
            self._streamed.add(turn)
        feed = DeltaFeed(turn.progress)
        try:
            if feed.so_far:
                yield feed.so_far
            # The feed's batches read directly: an async iterator in between costs a
            # microsecond per delta, a tenth of what a streamed chunk costs here.
            finished = False
            while not finished:
                for delta in await feed.batch():
                    if delta is None:
                        finished = True
                        break
                    yield delta
            await turn  # re-raise a failure
        finally:
            feed.close()
            # A consumer that stops reading (break, an exception, cancellation) does
            # not want the rest of the reply: stop generating it (the text is kept),
            # and end once it is stopped, so the branch is free when the stream closes.
            if not turn.done():
                turn.cancel()
                with contextlib.suppress(Exception):  # its outcome is the turn's to tell
                    await turn

    def _refuse_running(self, branch: str) -> None:
        # A reply a stream() started, still running or being stopped: the caller has
        # no turn to await or cancel, only the stream to close.
        with self._lock:
            running = self._runners.get(branch)
            streamed = running is not None and running.turn in self._streamed
        if streamed:
            raise BusyError(
                f"the reply on branch {branch!r} was started by session.stream(), whose "
                "stream is not closed yet: it stops the reply (the text so far kept) when "
                "it is closed, which after a plain `break` Python does a moment later. "
                "Read it in `async with contextlib.aclosing(session.stream(...)) as "
                "deltas:`, and the branch is free once that block ends; or await "
                f"session.turn({branch!r}) before sending"
            )
        super()._refuse_running(branch)
