"""Workload 2: ``contexts`` contexts of ``messages_per_context`` messages each, driven
concurrently on one event loop (as a notebook would) versus one after another.

Concurrency helps only if a session's store writes leave the loop free for the other
sessions; the ratio concurrent / sequential must be below 1.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cm_notebook import ContextSession

from ..common import Bench
from ..report import Limit, Row
from .conversation import drive, scripted

NAME = "concurrent"


async def _one(data_dir: Path, name: str, turns: int) -> None:
    session = ContextSession.create(name, provider=scripted(range(turns)), data_dir=data_dir)
    try:
        await drive(session, range(turns))
    finally:
        await session.aclose()


async def _sequential(data_dir: Path, contexts: int, turns: int) -> float:
    started = time.perf_counter()
    for number in range(contexts):
        await _one(data_dir, f"sequential {number}", turns)
    return time.perf_counter() - started


async def _concurrent(data_dir: Path, contexts: int, turns: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(_one(data_dir, f"concurrent {n}", turns) for n in range(contexts)))
    return time.perf_counter() - started


def run(bench: Bench) -> list[Row]:
    """Time both ways; the sequential run is the baseline."""
    sizes = bench.sizes
    turns = sizes.messages_per_context // 2
    sequential = asyncio.run(_sequential(bench.folder("sequential"), sizes.contexts, turns))
    concurrent = asyncio.run(_concurrent(bench.folder("concurrent"), sizes.contexts, turns))
    return [
        Row(
            "2 concurrent contexts",
            f"{sizes.contexts} x {sizes.messages_per_context} messages, concurrently",
            concurrent,
            "s",
            baseline=sequential,
            baseline_label="the same one after another",
            seed=Limit("value", 10.0, "< 10 s"),
            goal=Limit("ratio", 1.0, "< 1x sequential"),
        )
    ]
