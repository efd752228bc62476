"""Paths served from recent walks stay exact through forks, rewinds and other writers."""

from __future__ import annotations

from pathlib import Path

import anyio
from store_helpers import chain, msg

from cm_notebook.model import ContextMetadata
from cm_notebook.store import FileStore


def test_paths_stay_exact_when_walks_are_reused(tmp_path: Path) -> None:
    async def main() -> None:
        async with FileStore(tmp_path) as store, FileStore(tmp_path) as other:
            await store.create_context(ContextMetadata(id="c"))
            main_ids = await chain(store, "c", 30)
            assert await store.path("c") == main_ids
            # A fork from the middle: its walk stops at a message of main's walk.
            await store.create_branch("c", "fork", head=main_ids[9])
            fork_ids = main_ids[:10] + await chain(store, "c", 5, branch="fork")
            assert await store.path("c", "fork") == fork_ids
            assert await store.path("c") == main_ids
            # A rewind, then growth from there.
            await store.set_branch_head("c", "main", main_ids[4])
            assert await store.path("c") == main_ids[:5]
            regrown = main_ids[:5] + await chain(store, "c", 3)
            assert await store.path("c") == regrown
            # Another writer appends and compacts: the path is still the whole truth.
            head = regrown[-1]
            for n in range(140):  # past the compaction threshold
                message = msg("user", head, f"other {n}")
                await other.append_message("c", message, branch="main")
                head = message.id
            path = await store.path("c")
            assert path[: len(regrown)] == regrown
            assert len(path) == len(regrown) + 140
            assert path[-1] == head
            assert await store.path("c", "fork") == fork_ids

    anyio.run(main)
