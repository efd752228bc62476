"""Workload 2: ``contexts`` contexts of ``messages_per_context`` messages each, driven
concurrently on one event loop (as a notebook would) versus one after another.

Concurrency helps only if a session's store writes leave the loop free for the other
sessions; the ratio concurrent / sequential must be below 1. Each way runs four times,
in two rounds of sequential, concurrent, concurrent, sequential, and the means are
compared; the note gives each round's ratio, to show how much the machine moved.
"""

from __future__ import annotations

import asyncio
import statistics
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


# Rounds of four runs, each in this order: a machine that gets slower (or faster) over
# the workload's seconds - disks do, as their caches fill - weighs on both ways alike,
# where one run of each would charge the drift to whichever ran second. Two rounds,
# because on a shared machine one round's ratio moves by 10-20% from run to run.
_ROUND = ("sequential", "concurrent", "concurrent", "sequential")
_ROUNDS = 2


def run(bench: Bench) -> list[Row]:
    """Time both ways in rounds (see _ROUND); the sequential runs are the baseline."""
    sizes = bench.sizes
    turns = sizes.messages_per_context // 2
    ways = {"sequential": _sequential, "concurrent": _concurrent}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    round_ratios = []
    for round_number in range(_ROUNDS):
        this_round: dict[str, list[float]] = {way: [] for way in ways}
        for number, way in enumerate(_ROUND):
            folder = bench.folder(f"{way}-{round_number}-{number}")
            this_round[way].append(asyncio.run(ways[way](folder, sizes.contexts, turns)))
        for way in ways:
            seconds[way] += this_round[way]
        round_ratios.append(
            statistics.fmean(this_round["concurrent"]) / statistics.fmean(this_round["sequential"])
        )
    sequential, concurrent = (statistics.fmean(seconds[way]) for way in ways)
    runs = _ROUNDS * _ROUND.count("concurrent")
    return [
        Row(
            "2 concurrent contexts",
            f"{sizes.contexts} x {sizes.messages_per_context} messages, concurrently "
            f"(mean of {runs} runs)",
            concurrent,
            "s",
            baseline=sequential,
            baseline_label=f"the same one after another, {runs} runs around them",
            seed=Limit("value", 10.0, "< 10 s"),
            goal=Limit("ratio", 1.0, "< 1x sequential"),
            note="rounds: " + ", ".join(f"{ratio:.2f}x" for ratio in round_ratios),
            extra={"seconds": seconds, "round_ratios": round_ratios},
        )
    ]
