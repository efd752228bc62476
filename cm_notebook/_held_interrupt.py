"""Ctrl-C held back while ``send()`` stores the user's message and starts its turn.

Python raises KeyboardInterrupt in the main thread between any two of its steps. Raised
in ``send()`` while the user's message is being stored (the write goes on on the
store's thread) or before its turn is started, it left the message stored with no
reply coming, so the next send put two user messages in a row on the branch, or a
turn registered on its branch that never ran. :class:`HeldInterrupt` holds SIGINT back
over that stretch: Python's own handler is swapped for one that only notes the signal,
and put back at the end; the caller then acts on it (``send()`` stops the reply it
started, as ``session.stop()`` does, and raises KeyboardInterrupt saying so). A turn's
start (``SessionCore._start``, for every operation that starts one) is held so too: a
turn registered on its branch is one that runs.

Only in the main thread (the only one Python delivers signals to) and only in place of
Python's default handler: a handler the program installed (asyncio.run()'s, a
kernel's) is left alone.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["HeldInterrupt"]


class HeldInterrupt:
    """A context manager: SIGINT noted (:attr:`pending`), not raised, while inside."""

    def __init__(self) -> None:
        #: Whether Ctrl-C came while held.
        self.pending = False
        self._previous: Any = None  # the handler put back on exit

    def __enter__(self) -> HeldInterrupt:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, _signum: int, _frame: FrameType | None) -> None:
        self.pending = True

    def raise_pending(self, said: str = "") -> None:
        """Raise the KeyboardInterrupt held so far, if any (saying ``said``), and hold
        no more of it."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt(*([said] if said else []))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if self.pending and exc is not None and not isinstance(exc, KeyboardInterrupt):
            # The held section failed: the Ctrl-C is not lost behind its error.
            self.pending = False
            raise KeyboardInterrupt from exc
