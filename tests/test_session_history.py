"""Scrolling back through a long branch, and the message tree, read from the index.

Cost is observed on disk, not patched: the tests delete the message files a call must
not need, and the call still answers completely, without a single warning (pytest
turns warnings into errors here, and a skipped unreadable file warns).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cm_notebook.errors import InvalidInputError
from cm_notebook.model import ContextMetadata, Message, MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.anyio

LENGTH = 120


async def long_context(data_dir: Path) -> tuple[list[str], str]:
    """Context ``long``: ``LENGTH`` messages on main, and branch ``alt`` forked at 10."""
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="long", title="long"))
        head = None
        ids = []
        for n in range(LENGTH):
            role = "user" if n % 2 == 0 else "assistant"
            message = Message(role=role, parent_id=head, content=f"message {n}")
            await store.append_message("long", message, branch="main")
            head = message.id
            ids.append(head)
        await store.create_branch("long", "alt", head=ids[10])
        alt = Message(role="user", parent_id=ids[10], content="alternative")
        await store.append_message("long", alt, branch="alt")
        # The journal keeps copies of recent messages (and restores deleted files from
        # them); fold it, so that the tests below can take message files away.
        await store.compact("long")
    return ids, alt.id


def keep_only(data_dir: Path, ids: list[str]) -> None:
    for file in (data_dir / "contexts" / "long" / "messages").glob("*.json"):
        if file.stem not in ids:
            file.unlink()


async def test_history_pages_backwards(data_dir: Path) -> None:
    ids, _alt = await long_context(data_dir)
    session = ContextSession.open("long", data_dir=data_dir, provider=ScriptedProvider())
    try:
        page = session.history(limit=20)
        assert [m.id for m in page] == ids[-20:]
        seen: list[str] = [m.id for m in page]
        while page:
            page = session.history(before=page[0].id, limit=50)
            seen = [m.id for m in page] + seen
        assert seen == ids
        assert [m.id for m in session.history(before=ids[5])] == ids[:5]
        assert session.history(before=ids[0]) == []
        # Another branch pages its own path (the shared part included).
        assert [m.content for m in session.history("alt", limit=2)] == [
            "message 10",
            "alternative",
        ]
        with pytest.raises(InvalidInputError, match="not on branch"):
            session.history("alt", before=ids[90], limit=5)
        with pytest.raises(InvalidInputError, match="not on branch"):
            session.history("alt", before=ids[90])
        for bad in (0, -1, True, 2.5):
            with pytest.raises(InvalidInputError, match="positive integer"):
                session.history(limit=bad)  # type: ignore[arg-type]
    finally:
        await session.aclose()


async def test_a_page_reads_only_its_own_message_files(data_dir: Path) -> None:
    ids, _alt = await long_context(data_dir)
    wanted = ids[80:100]
    keep_only(data_dir, wanted)
    session = ContextSession.open("long", data_dir=data_dir, provider=ScriptedProvider())
    try:
        page = session.history(before=ids[100], limit=20)
        assert [m.id for m in page] == wanted
        assert page[0].content == "message 80"
    finally:
        await session.aclose()


async def test_the_tree_comes_from_the_index_alone(data_dir: Path) -> None:
    ids, alt = await long_context(data_dir)
    keep_only(data_dir, [])  # not a single message file is left
    session = ContextSession.open("long", data_dir=data_dir, provider=ScriptedProvider())
    try:
        tree = session.tree()
        assert len(tree.nodes) == LENGTH + 1
        assert tree.heads == {"main": ids[-1], "alt": alt}
        assert tree.active_branch == "main"
        assert [n.id for n in tree.children(None)] == [ids[0]]
        # Siblings, oldest first: main's continuation, then alt's message.
        assert [n.id for n in tree.children(ids[10])] == [ids[11], alt]
        assert tree.nodes[alt].branch_heads == ["alt"]
        assert tree.nodes[ids[-1]].branch_heads == ["main"]
        assert tree.nodes[ids[1]].role == "assistant"
        assert tree.nodes[ids[1]].status is MessageStatus.COMPLETE
        assert tree.nodes[ids[1]].parent_id == ids[0]
        assert [n.id for n in tree.path("alt")] == [*ids[:11], alt]
        assert tree.children(ids[-1]) == []
        # Plain data: a server can send it as JSON.
        assert tree.model_dump(mode="json")["heads"]["alt"] == alt
        assert repr(tree) == f"<MessageTree {LENGTH + 1} messages, 2 branches>"
    finally:
        await session.aclose()
