"""Streaming statistics of one reply: time to first token, chunks, tokens per second.

The turn runner feeds a :class:`StreamMeter` as the reply streams (a request starts, a
text chunk arrives, the provider reports usage) and stores :meth:`StreamMeter.stats`
in the reply's metadata (:class:`~cm_notebook.model.StreamStats`), so every assistant
message says how it was produced and a :class:`~cm_notebook.compare.Comparison` can
put the numbers of several branches side by side.

Definitions (measured in the receiving process, on a monotonic clock):

* ``ttft_ms``: from the start of the last attempt's request to its first text chunk,
  answer or reasoning: a thinking model's first token is its first thought.
* ``duration_ms``: from the start of the reply (its first attempt) to its end.
* ``output_tokens``: the provider's usage report of the last attempt if it gave one
  (``tokens_from_usage``), else the number of text chunks, reasoning included (one
  token per chunk is what streaming chat APIs send).
* ``tokens_per_second``: the output tokens after the first one over the time from the
  first text chunk to the end of the last attempt: the generation speed without the
  time to first token. The first token is not counted because the clock starts when it
  arrives (counting it made a two-chunk reply look twice as fast as it streamed). None
  with fewer than two chunks or two tokens: one chunk carries no rate.
* ``attempts``: requests made for the reply (retries after transient errors count).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .model import StreamStats

__all__ = ["StreamMeter"]


class StreamMeter:
    """Accumulates the streaming statistics of one reply (not thread-safe: one task).

    ``clock`` returns seconds on a monotonic clock; tests may pass their own.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = clock()
        self._attempts = 0
        self._attempt_started = self._started
        self._first: float | None = None
        self._last: float | None = None
        self._chunks = 0
        self._usage_tokens: int | None = None

    def attempt(self) -> None:
        """A request starts: the first, or a retry (which restarts the text)."""
        self._attempts += 1
        self._attempt_started = self._clock()
        self._first = self._last = None
        self._chunks = 0
        self._usage_tokens = None

    def chunk(self) -> None:
        """A non-empty text chunk arrived (of the answer or of the reasoning)."""
        now = self._clock()
        if self._first is None:
            self._first = now
        self._last = now
        self._chunks += 1

    def usage(self, output_tokens: int) -> None:
        """The provider reported how many tokens it generated."""
        self._usage_tokens = output_tokens

    def stats(self) -> StreamStats:
        """The statistics so far, as stored with the reply (the reply ends now)."""
        end = self._clock()
        from_usage = self._usage_tokens is not None
        tokens = self._usage_tokens if self._usage_tokens is not None else self._chunks
        rate = None
        if self._first is not None and self._chunks >= 2 and tokens >= 2 and end > self._first:
            rate = (tokens - 1) / (end - self._first)
        return StreamStats(
            ttft_ms=(self._first - self._attempt_started) * 1000
            if self._first is not None
            else None,
            chunks=self._chunks,
            duration_ms=(end - self._started) * 1000,
            output_tokens=tokens,
            tokens_per_second=rate,
            attempts=self._attempts,
            tokens_from_usage=from_usage,
        )
