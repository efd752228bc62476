"""Workload 4 (in this process): ``stream_replies`` x ``chunks_per_reply`` chunks through
``ContextSession.stream``, against iterating the same scripted chunks bare.

The per-chunk overhead (session + state machine + signals) comes from twins: each
reply is streamed in ``chunks_per_reply`` deltas and then, as the next turn, the same
text in one delta; the difference of the two medians over the extra deltas is what a
chunk costs, with the per-turn store writes cancelled out (medians, because an fsync
now and then is slow). The scripted model does not pause between chunks.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from cm_notebook import ContextSession
from cm_notebook.providers import ChatRequest
from cm_notebook.testing import ScriptedProvider

from ..common import Bench
from ..report import Limit, Row

NAME = "streaming"


def chunk_pieces(reply: int, chunks: int) -> list[str]:
    """The chunks of reply number ``reply``: ``chunks`` short words."""
    return [f"tok{reply}.{chunk} " for chunk in range(chunks)]


def _provider(replies: int, chunks: int) -> ScriptedProvider:
    # Alternating: each reply in ``chunks`` deltas, then the same text in one delta.
    provider = ScriptedProvider(strict=True)
    for reply in range(replies):
        pieces = chunk_pieces(reply, chunks)
        provider.reply("".join(pieces), chunks=pieces)
        provider.reply("".join(pieces))
    return provider


async def _bare_split(replies: int, chunks: int) -> float:
    """Seconds to iterate the chunked replies only."""
    provider = _provider(replies, chunks)
    seconds = 0.0
    for _ in range(replies):
        started = time.perf_counter()
        async for _chunk in provider.stream(ChatRequest(messages=[])):
            pass
        seconds += time.perf_counter() - started
        async for _chunk in provider.stream(ChatRequest(messages=[])):
            pass
    return seconds


async def _session(data_dir: Path, replies: int, chunks: int) -> tuple[list[float], list[float]]:
    """Seconds of each chunked reply and of each one-delta twin, as ``stream()`` gives them."""
    session = ContextSession.create(
        "stream", provider=_provider(replies, chunks), data_dir=data_dir
    )
    split: list[float] = []
    whole: list[float] = []
    try:
        for reply in range(replies):
            for times in (split, whole):
                started = time.perf_counter()
                async for _delta in session.stream(f"reply {reply}, please"):
                    pass
                times.append(time.perf_counter() - started)
        return split, whole
    finally:
        await session.aclose()


def run(bench: Bench) -> list[Row]:
    """Stream through the session and bare; the per-chunk cost from the twins' medians."""
    replies, chunks = bench.sizes.stream_replies, bench.sizes.chunks_per_reply
    total_chunks = replies * chunks
    bare = asyncio.run(_bare_split(replies, chunks))
    split, whole = asyncio.run(_session(bench.folder("stream"), replies, chunks))
    extra = chunks - 1
    per_chunk = (statistics.median(split) - statistics.median(whole)) / extra if extra else 0.0
    return [
        Row(
            "4 streaming",
            f"{total_chunks:,} chunks across {replies} replies through session.stream()",
            sum(split),
            "s",
            baseline=bare,
            baseline_label="the same chunks iterated bare",
            seed=Limit("value", 5.0, "< 5 s"),
        ),
        Row(
            "4 streaming",
            "per-chunk overhead (session + FSM + signals)",
            per_chunk * 1e6,
            "us",
            baseline=bare / total_chunks * 1e6,
            baseline_label="bare iteration, per chunk",
            goal=Limit("value", 10.0, "< 10 us"),
        ),
    ]
