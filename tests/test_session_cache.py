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


def test_a_turn_reads_the_active_branch_and_system_prompt_as_they_are_now(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # A turn reads these from the store's own metadata object (no copy): changes made
    # here and elsewhere show, and nothing read that way is changed by a caller.
    fake = ScriptedProvider().reply("one").reply("two").reply("three")
    session = new_session(provider=fake, system="Be brief.")
    session.send("first").result(10)
    assert fake.last_request.messages[0].content == "Be brief."

    async def change_elsewhere() -> None:
        async with FileStore(data_dir) as other:  # as another process would
            await other.update_metadata(session.id, system_prompt="Be thorough.")
            await other.create_branch(session.id, "side", head=session.history()[-1].id)
            await other.set_active_branch(session.id, "side")

    anyio.run(change_elsewhere)
    assert session.active_branch == "side"
    assert session.branch_names == ["main", "side"]
    session.send("second").result(10)
    assert fake.last_request.messages[0].content == "Be thorough."
    assert session.branches["side"].head == session.history("side")[-1].id

    # What a caller does to the metadata it was handed never reaches the store's own.
    handed = session.metadata
    handed.active_branch = "main"
    handed.system_prompt = "changed by hand"
    session.send("third", branch="side").result(10)
    assert fake.last_request.messages[0].content == "Be thorough."
    assert session.active_branch == "side"
    assert session.metadata.system_prompt == "Be thorough."


def test_what_a_caller_changes_in_the_metadata_it_was_given_changes_nothing(
    new_session: Callable[..., ContextSession],
) -> None:
    # ``metadata`` and ``branches`` are copies: a change made to them is neither read
    # back nor sent to the model, though nothing was written since.
    fake = ScriptedProvider().reply("one").reply("two")
    session = new_session(provider=fake, system="Be brief.")
    session.send("first").result(10)
    handed = session.metadata
    handed.title = "changed by hand"
    handed.system_prompt = "changed by hand"
    handed.branches["main"].system_prompt = "changed by hand"
    session.branches["main"].system_prompt = "changed by hand"
    assert session.metadata.system_prompt == "Be brief."
    assert session.branches["main"].system_prompt is None
    assert session.branch_names == ["main"]
    assert session.title != "changed by hand"
    session.send("second").result(10)
    assert fake.last_request.messages[0].content == "Be brief."
