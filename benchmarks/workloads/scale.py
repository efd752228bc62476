"""Workload 5: a context of ``scale_large`` messages against one of ``scale_small``.

- Opening it and showing the last 50 messages: with a new ``FileStore`` in this
  process, and with ``ContextSession.open`` in a fresh process
  (:mod:`benchmarks.workloads.scale_child`): seconds (median of ``scale_repeats``
  processes per size, interleaved so machine noise hits both alike), peak Python
  allocations (tracemalloc) and the process's peak RSS.
- Appending: the last ``appends_measured`` messages of each context are appended here
  through ``FileStore.append_message`` with every fsync, and measured by the bytes this
  process passed to ``write()`` and the seconds per append.

The goal: the large context within 2x of the small one, bytes per append flat.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import anyio

from cm_notebook.store import FileStore

from ..common import Bench, run_child, written_bytes
from ..report import Limit, Row
from .scale_child import append_chain

NAME = "scale"
WORKLOAD = "5 scale"
CHILD = "benchmarks.workloads.scale_child"


def _appends(data_dir: Path, context_id: str, count: int, start: int) -> tuple[float, float]:
    """Seconds and write() bytes per append, for ``count`` appends from message ``start``."""

    async def go() -> tuple[float, float]:
        async with FileStore(data_dir) as store:
            await store.page(context_id, limit=1)  # load the context before measuring
            before = written_bytes() or 0
            started = time.perf_counter()
            await append_chain(store, context_id, count, start)
            seconds = time.perf_counter() - started
            return seconds / count, ((written_bytes() or 0) - before) / count

    return anyio.run(go)


def _fresh_store_page(data_dir: Path, context_id: str) -> float:
    """Seconds for a new FileStore in this process to give the last 50 messages."""

    async def go() -> float:
        started = time.perf_counter()
        async with FileStore(data_dir) as store:
            await store.page(context_id, limit=50)
            return time.perf_counter() - started

    return anyio.run(go)


def run(bench: Bench) -> list[Row]:
    """Build both contexts, append the last messages, open each in fresh processes."""
    sizes = bench.sizes
    measured = sizes.appends_measured
    contexts: dict[int, tuple[Path, str]] = {}
    appends: dict[int, tuple[float, float]] = {}
    for count in (sizes.scale_small, sizes.scale_large):
        data_dir = bench.folder(f"scale-{count}")
        built = run_child(CHILD, "build", str(data_dir), str(count - measured), timeout=1800)
        contexts[count] = (data_dir, built["context_id"])
        appends[count] = _appends(data_dir, built["context_id"], measured, count - measured)
    opens: dict[int, list[dict[str, Any]]] = {count: [] for count in contexts}
    stores: dict[int, list[float]] = {count: [] for count in contexts}
    for _ in range(sizes.scale_repeats):
        for count, (data_dir, context_id) in contexts.items():
            opens[count].append(run_child(CHILD, "open", str(data_dir), context_id))
            stores[count].append(_fresh_store_page(data_dir, context_id))
    traced = {
        count: run_child(CHILD, "open", str(data_dir), context_id, "memory")
        for count, (data_dir, context_id) in contexts.items()
    }
    small, large = sizes.scale_small, sizes.scale_large

    def median(count: int, key: str) -> float:
        return float(statistics.median(run[key] for run in opens[count]))

    label = f"{small:,} messages"
    return [
        Row(
            WORKLOAD,
            f"open {large:,}-message context + last 50, fresh process: time",
            median(large, "seconds"),
            "s",
            baseline=median(small, "seconds"),
            baseline_label=label,
            goal=Limit("ratio", 2.0, "<= 2x", inclusive=True),
        ),
        Row(
            WORKLOAD,
            f"open {large:,}-message context + last 50, new FileStore in this process",
            statistics.median(stores[large]),
            "s",
            baseline=statistics.median(stores[small]),
            baseline_label=label,
            goal=Limit("ratio", 2.0, "<= 2x", inclusive=True),
        ),
        Row(
            WORKLOAD,
            "open in a fresh process: peak Python allocations (tracemalloc)",
            float(traced[large]["traced_peak"]),
            "B",
            baseline=float(traced[small]["traced_peak"]),
            baseline_label=label,
            goal=Limit("ratio", 2.0, "<= 2x", inclusive=True),
        ),
        Row(
            WORKLOAD,
            "open in a fresh process: peak RSS",
            median(large, "peak_rss"),
            "B",
            baseline=median(small, "peak_rss"),
            baseline_label=label,
        ),
        Row(
            WORKLOAD,
            f"append message {large:,}: bytes passed to write()",
            appends[large][1],
            "B",
            baseline=appends[small][1],
            baseline_label=f"message {small:,}",
            goal=Limit("ratio", 1.25, "<= 1.25x (flat)", inclusive=True),
            note=f"mean of {measured}",
        ),
        Row(
            WORKLOAD,
            f"append message {large:,}: time",
            appends[large][0],
            "s",
            baseline=appends[small][0],
            baseline_label=f"message {small:,}",
            note=f"mean of {measured}",
        ),
    ]
