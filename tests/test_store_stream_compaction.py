"""A write beside another writer's stream, when the journal is due to be folded.

Another writer streaming a reply makes every write of this store look for dead streams
first, and fold the journal if that is due (the other writer's streaming writes leave
it for the next write). The fold saves the journal's head moves in metadata.json; the
write must then work from those heads, not from metadata.json as it was before the
fold: a title change or a new branch would otherwise write the old heads back (an
acknowledged turn dropped from its branch), and an append would be refused for a head
that no writer set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cm_notebook.model import ContextMetadata, Message, MessageStatus
from cm_notebook.store import FileStore
from cm_notebook.store.index import COMPACT_MIN_LINES

pytestmark = pytest.mark.anyio


def journal_lines(data_dir: Path, context_id: str) -> int:
    journal = data_dir / "contexts" / context_id / "message_index.journal"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


@pytest.fixture
async def due(data_dir: Path) -> AsyncIterator[tuple[FileStore, FileStore, str, str]]:
    """Two stores on one context (``writer`` streaming a reply, ``other`` idle), whose
    journal is due to be folded, ``main`` moved by every line of it; and main's head."""
    async with FileStore(data_dir) as writer, FileStore(data_dir) as other:
        context = await writer.create_context(ContextMetadata(title="Before"))
        await other.get_metadata(context.id)  # metadata.json as created: main has no head
        head = None
        while journal_lines(data_dir, context.id) < COMPACT_MIN_LINES - 1:
            message = Message(role="user", content="a turn", parent_id=head)
            await writer.append_message(context.id, message, branch="main")
            head = message.id
        assert journal_lines(data_dir, context.id) == COMPACT_MIN_LINES - 1  # never folded
        # The reply's placeholder: written on this loop's thread, which folds nothing.
        reply = Message(
            role="assistant", content="", parent_id=head, status=MessageStatus.STREAMING
        )
        await writer.append_message(context.id, reply, branch=None)
        assert journal_lines(data_dir, context.id) == COMPACT_MIN_LINES
        assert head is not None
        yield writer, other, context.id, head


async def test_a_title_change_keeps_the_heads_the_fold_saved(
    due: tuple[FileStore, FileStore, str, str], data_dir: Path
) -> None:
    writer, other, context_id, head = due
    await other.update_metadata(context_id, title="After")
    assert journal_lines(data_dir, context_id) < COMPACT_MIN_LINES  # the write folded it
    for store in (other, writer):
        metadata = await store.get_metadata(context_id)
        assert metadata.title == "After"
        assert metadata.branches["main"].head == head
    async with FileStore(data_dir) as fresh:
        assert (await fresh.get_metadata(context_id)).branches["main"].head == head


async def test_a_new_branch_keeps_the_heads_the_fold_saved(
    due: tuple[FileStore, FileStore, str, str], data_dir: Path
) -> None:
    _writer, other, context_id, head = due
    await other.create_branch(context_id, "other", head=head)
    await other.set_active_branch(context_id, "other")
    async with FileStore(data_dir) as fresh:
        metadata = await fresh.get_metadata(context_id)
        assert metadata.active_branch == "other"
        assert metadata.branches["main"].head == head
        assert metadata.branches["other"].head == head


async def test_an_append_on_the_branch_is_not_refused_for_a_head_nobody_set(
    due: tuple[FileStore, FileStore, str, str], data_dir: Path
) -> None:
    _writer, other, context_id, head = due
    message = Message(role="user", content="next", parent_id=head)
    await other.append_message(context_id, message, branch="main", expected_head=head)
    async with FileStore(data_dir) as fresh:
        assert (await fresh.get_metadata(context_id)).branches["main"].head == message.id
