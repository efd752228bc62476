"""One side of the peer comparison, in its own process (so its peak memory is its own).

``python -m benchmarks.workloads.peer_child SIDE FOLDER MESSAGES FORKS FORK_AT`` runs
the conversation (``MESSAGES`` messages, one user message and one reply per turn), then
``FORKS`` forks at message ``FORK_AT`` with one turn each, and prints one JSON line:
seconds, bytes on disk, peak RSS and, for SQLite, the journal mode and synchronous
setting the saver ran with. SIDE is ``ours``, ``sqlite`` (LangGraph's SqliteSaver on
disk, made as its documentation shows) or ``memory`` (LangGraph's InMemorySaver).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from ..common import folder_bytes, peak_rss, report_child

SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


async def _ours(folder: Path, turns: int, forks: int, fork_at: int) -> dict[str, Any]:
    from cm_notebook import ContextSession

    from .conversation import drive, scripted

    imported = peak_rss()
    session = ContextSession.create(
        "peer", provider=scripted(range(turns + forks)), data_dir=folder
    )
    try:
        started = time.perf_counter()
        await drive(session, range(turns))
        conversation = time.perf_counter() - started
        fork_from = session.history()[fork_at - 1].id
        started = time.perf_counter()
        for fork in range(forks):
            name = f"fork-{fork}"
            session.branch(name, from_message=fork_from, switch=False)
            await drive(session, range(turns + fork, turns + fork + 1), branch=name)
        forked = time.perf_counter() - started
    finally:
        await session.aclose()
    return {"imported_rss": imported, "conversation": conversation, "forks": forked}


def _sqlite(folder: Path, turns: int, forks: int, fork_at: int) -> dict[str, Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    from .peer_langgraph import converse

    imported = peak_rss()
    with SqliteSaver.from_conn_string(str(folder / "checkpoints.sqlite")) as saver:
        result = converse(saver, turns, forks, fork_at)
        journal = saver.conn.execute("PRAGMA journal_mode").fetchone()[0]
        synchronous = saver.conn.execute("PRAGMA synchronous").fetchone()[0]
        result["bytes_open"] = folder_bytes(folder)  # with the WAL not yet checkpointed
    result.update(
        imported_rss=imported,
        journal_mode=str(journal),
        synchronous=SYNCHRONOUS.get(int(synchronous), str(synchronous)),
    )
    return result


def _memory(turns: int, forks: int, fork_at: int) -> dict[str, Any]:
    from langgraph.checkpoint.memory import InMemorySaver

    from .peer_langgraph import converse

    imported = peak_rss()
    result = converse(InMemorySaver(), turns, forks, fork_at)
    result["imported_rss"] = imported
    return result


def main(argv: list[str]) -> None:
    """Run one side and report its figures (see the module docstring)."""
    side, folder, messages, forks, fork_at = argv
    path = Path(folder)
    turns, count, at = int(messages) // 2, int(forks), int(fork_at)
    if side == "ours":
        result = asyncio.run(_ours(path, turns, count, at))
    elif side == "sqlite":
        result = _sqlite(path, turns, count, at)
    elif side == "memory":
        result = _memory(turns, count, at)
    else:
        raise SystemExit(f"unknown side {side!r}: ours, sqlite or memory")
    result.update(bytes=folder_bytes(path), peak_rss=peak_rss())
    report_child(result)


if __name__ == "__main__":
    main(sys.argv[1:])
