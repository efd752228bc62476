"""Reading a session's properties does not go to the store unless its files changed,
and still sees every change (this process's or another's) on the next read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cm_notebook.model import ContextMetadata
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider


class CountingStore:
    """The real FileStore behind the Store protocol, counting metadata reads."""

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner
        self.metadata_reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get_metadata(self, context_id: str) -> ContextMetadata:
        self.metadata_reads += 1
        return await self.inner.get_metadata(context_id)


@pytest.fixture
def counting(data_dir: Path) -> Iterator[CountingStore]:
    inner = FileStore(data_dir)
    yield CountingStore(inner)
    anyio.run(inner.close)


def test_properties_are_read_from_the_cache_until_the_files_change(
    data_dir: Path, counting: CountingStore, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider(), store=counting, title="Kept")
    assert session.title == "Kept"
    before = counting.metadata_reads
    for _ in range(50):
        assert session.active_branch == "main"
        assert list(session.branches) == ["main"]
    assert counting.metadata_reads - before <= 1

    async def rename_elsewhere() -> None:
        async with FileStore(data_dir) as other:  # as another process would
            await other.update_metadata(session.id, title="Renamed")
            await other.create_branch(session.id, "side", head=None)

    anyio.run(rename_elsewhere)
    assert session.title == "Renamed"
    assert set(session.branches) == {"main", "side"}
    # This session's own writes are seen at once too.
    session.send("hi").result(10)
    assert session.branches["main"].head == session.history()[-1].id
