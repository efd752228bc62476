"""The scale workload's child processes.

``python -m benchmarks.workloads.scale_child build DATA_DIR COUNT`` makes a context of
COUNT messages (one branch, alternating user and assistant) through ``FileStore`` and
prints its id. It is a fixture, not a measurement: to build 10,000 messages in a
minute instead of several, this process (and only this one) makes ``os.fsync`` a no-op.
The files are the same; what is measured is done elsewhere with every fsync.

``python -m benchmarks.workloads.scale_child open DATA_DIR CONTEXT_ID [memory]`` opens
the context with ``ContextSession.open`` in this fresh process and reads its last 50
messages (``history(limit=50)``); prints the seconds, the peak RSS and, with
``memory``, the peak of Python allocations during the open (tracemalloc, which slows
the process, so the seconds of such a run are not reported).
"""

from __future__ import annotations

import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from ..common import peak_rss, report_child

CONTENT = "a typical short chat message, about one line of text. " * 3
PAGE = 50


async def append_chain(store: Any, context_id: str, count: int, start: int) -> None:
    """Append ``count`` messages to the active branch of ``context_id``."""
    from cm_notebook.model import Message

    metadata = await store.get_metadata(context_id)
    branch = metadata.active_branch
    head = metadata.branches[branch].head
    for number in range(start, start + count):
        role = "user" if number % 2 == 0 else "assistant"
        message = Message(role=role, parent_id=head, content=CONTENT)
        await store.append_message(context_id, message, branch=branch)
        head = message.id


def build(data_dir: Path, count: int) -> dict[str, Any]:
    """See the module docstring."""
    import anyio

    def skip(fd: Any) -> None:
        del fd

    os.fsync = skip
    os.fdatasync = skip

    from cm_notebook.model import ContextMetadata
    from cm_notebook.store import FileStore

    async def make() -> str:
        async with FileStore(data_dir) as store:
            metadata = await store.create_context(ContextMetadata(title=f"{count} messages"))
            await append_chain(store, metadata.id, count, 0)
            return metadata.id

    return {"context_id": anyio.run(make)}


def open_page(data_dir: Path, context_id: str, memory: bool) -> dict[str, Any]:
    """See the module docstring."""
    from cm_notebook import ContextSession
    from cm_notebook.testing import ScriptedProvider

    if memory:
        tracemalloc.start()
    started = time.perf_counter()
    session = ContextSession.open(context_id, data_dir=data_dir, provider=ScriptedProvider())
    page = session.history(limit=PAGE)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"seconds": seconds, "messages": len(page)}
    if memory:
        result["traced_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    session.close()
    result["peak_rss"] = peak_rss()
    return result


def main(argv: list[str]) -> None:
    """Build or open (see the module docstring)."""
    if argv[0] == "build":
        report_child(build(Path(argv[1]), int(argv[2])))
    elif argv[0] == "open":
        report_child(open_page(Path(argv[1]), argv[2], argv[3:] == ["memory"]))
    else:
        raise SystemExit("usage: build DATA_DIR COUNT | open DATA_DIR CONTEXT_ID [memory]")


if __name__ == "__main__":
    main(sys.argv[1:])
