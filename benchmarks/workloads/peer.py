"""Workload 7: the same conversation and forks through LangGraph, side by side.

Three child processes (:mod:`benchmarks.workloads.peer_child`), each running
``peer_messages`` messages and then ``peer_forks`` forks at message ``fork_at`` with
one turn each: ours (``ContextSession`` on a ``FileStore``), LangGraph with
``SqliteSaver.from_conn_string(path)`` (its documented on-disk set-up, nothing tuned)
and LangGraph with ``InMemorySaver``. The graph has a ``messages`` state merged by
``add_messages`` and one node that answers with the same text our scripted model does.

Durability: ours fsyncs every acknowledged message (its file, its index journal line,
the metadata that moves the head) before ``send`` reports it, so it survives a killed
process and a power loss. SqliteSaver's ``setup()`` sets ``PRAGMA journal_mode=WAL``
and leaves ``synchronous`` at SQLite's default, read back from the connection and
printed (FULL here: the WAL is fsynced at every commit, so a committed checkpoint
survives a power loss too); ``invoke()`` returns after its checkpoints are committed
(LangGraph's default ``durability="async"`` writes them while the next step runs, and
waits for them at the end of the run). InMemorySaver keeps nothing past the process.

Needs the ``[bench]`` extra; without it the rows say how to install it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..common import Bench, run_child
from ..report import Limit, Row, skipped

NAME = "peer"
WORKLOAD = "7 LangGraph peer"
INSTALL = "skipped: pip install cm_notebook[bench]"


def _installed() -> bool:
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("langgraph", "langgraph.checkpoint.sqlite")
        )
    except ModuleNotFoundError:
        return False


def _side(bench: Bench, side: str) -> dict[str, Any]:
    sizes = bench.sizes
    folder = bench.folder(f"peer-{side}")
    return run_child(
        "benchmarks.workloads.peer_child",
        side,
        str(folder),
        str(sizes.peer_messages),
        str(sizes.peer_forks),
        str(sizes.fork_at),
    )


def run(bench: Bench) -> list[Row]:
    """Run the three sides and compare ours against each LangGraph saver."""
    sizes = bench.sizes
    what = f"{sizes.peer_messages:,} messages + {sizes.peer_forks} forks"
    if not _installed():
        return [skipped(WORKLOAD, what, INSTALL)]
    ours = _side(bench, "ours")
    sqlite = _side(bench, "sqlite")
    memory = _side(bench, "memory")
    total = {
        name: s["conversation"] + s["forks"]
        for name, s in (("ours", ours), ("sqlite", sqlite), ("memory", memory))
    }
    sqlite_label = f"SqliteSaver (WAL, synchronous={sqlite['synchronous']})"
    return [
        Row(
            WORKLOAD,
            f"{what}: time, ours",
            total["ours"],
            "s",
            baseline=total["sqlite"],
            baseline_label=sqlite_label,
            goal=Limit("ratio", 1.0, "< 1x SqliteSaver"),
            extra={"ours": ours, "sqlite": sqlite, "memory": memory},
        ),
        Row(
            WORKLOAD,
            f"the {sizes.peer_forks} forks alone: time, ours",
            ours["forks"],
            "s",
            baseline=sqlite["forks"],
            baseline_label="SqliteSaver",
        ),
        Row(
            WORKLOAD,
            f"{what}: time, ours",
            total["ours"],
            "s",
            baseline=total["memory"],
            baseline_label="InMemorySaver (not durable)",
        ),
        Row(
            WORKLOAD,
            "bytes on disk, ours",
            float(ours["bytes"]),
            "B",
            baseline=float(sqlite["bytes"]),
            baseline_label="SqliteSaver, closed",
        ),
        Row(
            WORKLOAD,
            "peak RSS of the process, ours",
            float(ours["peak_rss"]),
            "B",
            baseline=float(sqlite["peak_rss"]),
            baseline_label="SqliteSaver",
            note=f"after imports {ours['imported_rss'] / 2**20:.0f} MiB "
            f"vs {sqlite['imported_rss'] / 2**20:.0f} MiB",
        ),
        Row(
            WORKLOAD,
            "durability",
            None,
            note="ours: every acknowledged message fsynced; SqliteSaver: "
            f"journal_mode={sqlite['journal_mode']}, synchronous={sqlite['synchronous']}; "
            "InMemorySaver: none",
        ),
    ]
