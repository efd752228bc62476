"""Workload 4 (in this process): ``stream_replies`` x ``chunks_per_reply`` chunks through
``ContextSession.stream``, against iterating the same scripted chunks bare.

The per-chunk overhead (session + state machine + signals) is the time from a reply's
first delta to its last, over the deltas in between, as the consumer of
``session.stream`` sees it: the store writes that start and finish a turn are not in it,
what each chunk costs (its signal, the live text, any streaming checkpoint) is.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cm_notebook import ContextSession
from cm_notebook.providers import ChatRequest
from cm_notebook.testing import ScriptedProvider

from ..common import Bench
from ..report import Limit, Row

NAME = "streaming"


def chunk_pieces(reply: int, chunks: int) -> list[str]:
    return [f"tok{reply}.{chunk} " for chunk in range(chunks)]


def _provider(replies: int, chunks: int) -> ScriptedProvider:
    provider = ScriptedProvider(strict=True)
    for reply in range(replies):
        pieces = chunk_pieces(reply, chunks)
        provider.reply("".join(pieces), chunks=pieces)
    return provider


class _Gaps:
    """Seconds between the first and the last chunk of each reply, and the chunks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.gaps = 0
        self.chunks = 0
        self._first: float | None = None
        self._last = 0.0

    def chunk(self) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = now
        self._last = now
        self.chunks += 1

    def end_reply(self, chunks: int) -> None:
        if self._first is not None and chunks > 1:
            self.seconds += self._last - self._first
            self.gaps += chunks - 1
        self._first = None

    @property
    def per_chunk(self) -> float:
        return self.seconds / self.gaps if self.gaps else float("nan")


async def _bare(replies: int, chunks: int) -> tuple[float, _Gaps]:
    provider = _provider(replies, chunks)
    gaps = _Gaps()
    started = time.perf_counter()
    for _ in range(replies):
        before = gaps.chunks
        async for _chunk in provider.stream(ChatRequest(messages=[])):
            gaps.chunk()
        gaps.end_reply(gaps.chunks - before)
    return time.perf_counter() - started, gaps


async def _session(data_dir: Path, replies: int, chunks: int) -> tuple[float, _Gaps]:
    provider = _provider(replies, chunks)
    session = ContextSession.create("stream", provider=provider, data_dir=data_dir)
    gaps = _Gaps()
    try:
        started = time.perf_counter()
        for reply in range(replies):
            before = gaps.chunks
            async for _delta in session.stream(f"reply {reply}, please"):
                gaps.chunk()
            gaps.end_reply(gaps.chunks - before)
        return time.perf_counter() - started, gaps
    finally:
        await session.aclose()


def run(bench: Bench) -> list[Row]:
    """Stream through the session and bare; time both, and the time per chunk."""
    replies, chunks = bench.sizes.stream_replies, bench.sizes.chunks_per_reply
    total_chunks = replies * chunks
    bare, bare_gaps = asyncio.run(_bare(replies, chunks))
    seconds, gaps = asyncio.run(_session(bench.folder("stream"), replies, chunks))
    return [
        Row(
            "4 streaming",
            f"{total_chunks:,} chunks across {replies} replies through session.stream()",
            seconds,
            "s",
            baseline=bare,
            baseline_label="the same chunks iterated bare",
            seed=Limit("value", 5.0, "< 5 s"),
            note=f"{gaps.chunks:,} deltas received",
        ),
        Row(
            "4 streaming",
            "per-chunk overhead (session + FSM + signals)",
            gaps.per_chunk * 1e6,
            "us",
            baseline=bare_gaps.per_chunk * 1e6,
            baseline_label="bare iteration, per chunk",
            goal=Limit("value", 10.0, "< 10 us"),
        ),
    ]
