"""Workload 3: ``tool_cycles`` tool cycles with auto-approval.

Each cycle is one send: the model asks for a tool, the session runs it (approved by
the ``"auto"`` policy), the model answers with the result. Four messages per cycle;
the baseline is the floor of writing those messages as atomic, durable files.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cm_notebook import ContextSession, tool
from cm_notebook.testing import ScriptedProvider

from ..common import Bench, durable_floor
from ..report import Limit, Row
from .conversation import payloads

NAME = "tools"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def _run(data_dir: Path, cycles: int) -> tuple[float, list[bytes]]:
    provider = ScriptedProvider(strict=True)
    for cycle in range(cycles):
        provider.tool_call("add", {"a": cycle, "b": 1})
        provider.reply(f"The sum is {cycle + 1}.")
    session = ContextSession.create(
        "tools", provider=provider, data_dir=data_dir, tools=[add], approval="auto"
    )
    try:
        started = time.perf_counter()
        for cycle in range(cycles):
            await session.send(f"What is {cycle} + 1?")
        seconds = time.perf_counter() - started
        return seconds, payloads(session)
    finally:
        await session.aclose()


def run(bench: Bench) -> list[Row]:
    """Time the cycles; the floor of durable writes of their messages is the baseline."""
    cycles = bench.sizes.tool_cycles
    seconds, stored = asyncio.run(_run(bench.folder("tools"), cycles))
    floor = durable_floor(bench.folder("tools-floor"), stored)
    return [
        Row(
            "3 tool-intensive",
            f"{cycles} tool cycles, auto-approved ({len(stored)} messages)",
            seconds,
            "s",
            baseline=floor,
            baseline_label=f"{len(stored)} atomic durable file writes",
            seed=Limit("value", 3.0, "< 3 s"),
            goal=Limit("value", 0.3, "< 0.3 s"),
        )
    ]
