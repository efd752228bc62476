"""``check`` with one unreadable message file early in a long conversation.

Every message after it goes back to it: a check must read each file a bounded number
of times however many branches end after it (not once per branch and message), report
the files it cuts off in a few lines, and a repair must bring them all back. Real
files, real FileStores; files are counted as the operating system opens them (an audit
hook on ``open``), not by patching.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from store_helpers import chain

from cm_notebook.model import Branch, ContextMetadata
from cm_notebook.store import FileStore, StoreWarning

pytestmark = pytest.mark.anyio

_counting: list[Counter[str]] = []


def _count_opens(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _counting and isinstance(args[0], str | Path):
        path = str(args[0])
        if f"{Path('messages')}" in path and path.endswith(".json"):
            _counting[-1][Path(path).name] += 1


sys.addaudithook(_count_opens)  # cannot be removed: it counts only inside opened_files()


@contextmanager
def opened_files() -> Iterator[Counter[str]]:
    """How many times each message file was opened inside the block, by name."""
    counts: Counter[str] = Counter()
    _counting.append(counts)
    try:
        yield counts
    finally:
        _counting.remove(counts)


async def build(data_dir: Path, n: int, branches: int) -> tuple[list[str], int]:
    """A context of ``n`` messages in one conversation, ``branches`` more branches on
    its second half, its journal gone and the snapshot empty (an index to rebuild),
    and the message at the middle emptied; returns the ids and where it is."""
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", n)
        step = (n // 2) // branches
        await store.create_branches(
            "c1",
            [
                Branch(name=f"b{k}", head=ids[n - 1 - k * step], forked_from=None)
                for k in range(branches)
            ],
        )
    folder = data_dir / "contexts" / "c1"
    (folder / "message_index.journal").unlink()
    (folder / "message_index.json").write_text("{}")
    middle = n // 2
    (folder / "messages" / f"{ids[middle]}.json").write_bytes(b"")
    return ids, middle


async def test_check_reads_each_file_a_few_times_whatever_the_branches(data_dir: Path) -> None:
    n, branches = 200, 40
    ids, middle = await build(data_dir, n, branches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        with opened_files() as counts:
            async with FileStore(data_dir) as store:
                report = await store.check("c1")
    assert not report.ok
    # An open that walks up from every branch head reads the files after the emptied
    # one once per branch through them: 40 times for the one just after it.
    assert counts, "no message file was opened: the count sees nothing"
    assert max(counts.values()) <= 4, counts.most_common(3)
    assert sum(counts.values()) <= 4 * n, sum(counts.values())
    # The files it cuts off are summed up, not listed one line each.
    text = str(report)
    assert len(text.splitlines()) < 20, text
    assert f"{n - middle - 1} message file(s)" in text
    assert ids[middle] in text
