"""What an append writes and what a page reads, observed on disk (no patching).

* Appending the N-th message writes the same bytes whatever N is: its own file and one
  journal line (which carries the message and the head move; metadata.json is not
  rewritten); the index snapshot is rewritten only at geometric compaction points, so
  its cost per append stays bounded.
* A page of the last 50 messages of a 2,000-message context opens only those 50
  files: the test destroys 1,000 other message files and the page still comes back
  complete and without a single warning.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.store.index import COMPACT_MIN_LINES

pytestmark = pytest.mark.anyio

Signature = tuple[int, int, int]  # inode, size, mtime_ns


def top_level(folder: Path) -> dict[str, Signature]:
    result = {}
    for entry in os.scandir(folder):
        if entry.is_file():
            st = entry.stat()
            result[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return result


async def test_the_nth_append_writes_constant_bytes(data_dir: Path) -> None:
    total = 600
    folder = data_dir / "contexts" / "c1"
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        head = None
        per_append: list[int] = []  # bytes written, not counting snapshot rewrites
        snapshot_bytes = 0
        rewrites: list[int] = []
        for n in range(total):
            before = top_level(folder)
            message = Message(role="user", parent_id=head, content="x" * 200)
            await store.append_message("c1", message, branch="main")
            head = message.id
            after = top_level(folder)
            changed = {name for name in after if after[name] != before.get(name)}
            # Lock files hold no data (the lock is the OS's, not the file's content).
            assert all(after[name][1] == 0 for name in changed if name.startswith("."))
            changed = {name for name in changed if not name.startswith(".")}
            assert changed <= {"metadata.json", "message_index.journal", "message_index.json"}
            written = (folder / "messages" / f"{message.id}.json").stat().st_size
            index_rewritten = after["message_index.json"][0] != before["message_index.json"][0]
            if index_rewritten:
                rewrites.append(n)
                snapshot_bytes += after["message_index.json"][1]
                # Compaction started an empty journal (a new file).
                assert after["message_index.journal"][1] == 0
            else:
                assert "metadata.json" not in changed
                assert after["message_index.journal"][0] == before["message_index.journal"][0]
                growth = after["message_index.journal"][1] - before["message_index.journal"][1]
                last_line = (folder / "message_index.journal").read_bytes().splitlines()[-1]
                # Exactly one new line: this message's index entry.
                assert growth == len(last_line) + 1
                assert message.id.encode() in last_line
                written += growth
                per_append.append(written)
    early = sum(per_append[5:50]) / 45
    late = sum(per_append[-45:]) / 45
    assert late <= early * 1.02 + 8, (early, late)
    # The snapshot is rewritten at geometric points only: 128, 256, 512, ...
    assert rewrites == [COMPACT_MIN_LINES * 2**k - 1 for k in range(len(rewrites))]
    assert len(rewrites) <= 3
    # ... so its amortised cost per append is bounded by two index entries.
    entry_size = after["message_index.json"][1] / (rewrites[-1] + 1)
    assert snapshot_bytes / total <= 2 * entry_size


@pytest.mark.slow
async def test_page_reads_only_the_messages_it_returns(data_dir: Path) -> None:
    folder = data_dir / "contexts" / "big"
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="big"))
        head = None
        for i in range(2000):
            message = Message(role="user" if i % 2 else "assistant", parent_id=head, content=f"{i}")
            await store.append_message("big", message, branch="main")
            head = message.id
        path = await store.path("big")
    assert len(path) == 2000
    last = set(path[-50:])
    # Destroy the first 1,000 message files, half deleted, half garbage. (The journal
    # still holds copies of the messages since the last compaction, at 1,024 lines;
    # opening the context would restore those, with warnings.)
    for number, mid in enumerate(path[:1000]):
        file = folder / "messages" / f"{mid}.json"
        if number % 2:
            file.unlink()
        else:
            file.write_text("this is not JSON")
    async with FileStore(data_dir) as fresh:
        # No StoreWarning (warnings are errors in this suite): nothing else was opened.
        page = await fresh.page("big", limit=50)
        assert [m.id for m in page] == path[-50:]
        assert [m.content for m in page] == [str(i) for i in range(1950, 2000)]
        assert await fresh.path("big") == path  # the index alone, no message files
        assert await fresh.children("big", path[100]) == [path[101]]
        assert {m.id for m in await fresh.get_messages("big", sorted(last))} == last
        # The destroyed files really are unreadable: a page of them finds none.
        with pytest.warns(StoreWarning):
            assert await fresh.page("big", limit=50, before=path[1000]) == []
