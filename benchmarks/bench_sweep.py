"""What a sweep adds per cell, and what its concurrency buys.

Runs 40 short scripted replies three ways: as 40 sends on one branch one after the
other (the baseline), as a sweep of 40 cells one at a time (``concurrency=1``: the
sweep's own cost per cell, a branch created and labelled each), and as the same sweep
with ``concurrency=4`` against a provider that waits 20 ms per reply (what overlapping
the waits saves). Also the cost of resuming the finished sweep (every cell skipped),
and the cost per cell of a sweep of 800 cells against one of 100 (each cell is a
branch: what grows with the number of branches shows here).

Run: ``.venv/bin/python benchmarks/bench_sweep.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time

from cm_notebook import ContextSession
from cm_notebook.testing import ScriptedProvider

CELLS = 40
WAIT = 0.02
SMALL, LARGE = 100, 800


async def _sends(data_dir: str) -> float:
    session = ContextSession.create("sends", provider=ScriptedProvider(), data_dir=data_dir)
    started = time.perf_counter()
    for i in range(CELLS):
        await session.send(f"question {i}")
    elapsed = time.perf_counter() - started
    await session.aclose()
    return elapsed


async def _sweep(data_dir: str, concurrency: int, delay: float) -> tuple[float, float]:
    fake = ScriptedProvider(delay=delay)
    session = ContextSession.create("sweep", provider=fake, data_dir=data_dir)
    prompts = [f"question {i}" for i in range(CELLS)]
    started = time.perf_counter()
    await session.sweep(prompts, [{}], concurrency=concurrency, progress=False, name="b")
    elapsed = time.perf_counter() - started
    started = time.perf_counter()
    await session.sweep(prompts, [{}], concurrency=concurrency, progress=False, name="b")
    resumed = time.perf_counter() - started
    await session.aclose()
    return elapsed, resumed


async def _per_cell(cells: int) -> float:
    with tempfile.TemporaryDirectory() as data_dir:
        session = ContextSession.create("scale", provider=ScriptedProvider(), data_dir=data_dir)
        prompts = [f"question {i}" for i in range(cells)]
        started = time.perf_counter()
        await session.sweep(prompts, [{}], progress=False, name="s")
        elapsed = time.perf_counter() - started
        await session.aclose()
    return elapsed / cells


async def _main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        sends = await _sends(data_dir)
        one, resumed = await _sweep(data_dir, 1, 0.0)
        slow_one, _ = await _sweep(data_dir, 1, WAIT)
        slow_four, _ = await _sweep(data_dir, 4, WAIT)
    small = await _per_cell(SMALL)
    large = await _per_cell(LARGE)
    print(f"sweep of {CELLS} cells, scripted replies")
    print(f"  {CELLS} sends on one branch   {sends / CELLS * 1000:8.1f} ms per reply")
    print(
        f"  sweep, concurrency=1        {one / CELLS * 1000:8.1f} ms per cell"
        f"   (x{one / sends:.2f} the sends)"
    )
    print(f"  resume, all cells done      {resumed * 1000:8.1f} ms for {CELLS} cells")
    print(
        f"  {WAIT * 1000:.0f} ms provider wait: concurrency=1 {slow_one:.2f} s, "
        f"concurrency=4 {slow_four:.2f} s   (x{slow_one / slow_four:.1f} faster)"
    )
    print(
        f"  per cell, {LARGE} cells vs {SMALL}:  {large * 1000:.1f} ms vs {small * 1000:.1f} ms"
        f"   (x{large / small:.2f})"
    )


def main() -> None:
    """Run the benchmark and print its figures."""
    asyncio.run(_main())


if __name__ == "__main__":
    main()
