"""kill -9 at every file event of every write: the context always reopens cleanly.

For each write operation the test first runs it to the end in a forked child
(``tests/store_crash_child.py``) to count the file events it makes below the data
directory (opens, renames, removals, truncations). Then, for every K, it copies the
prepared data directory, runs the operation again and SIGKILLs the child just before
its K-th event, and reopens the copy with a fresh FileStore. Each reopened state must:

* load without a StoreWarning (a crash is not damage) and without a stream left
  "streaming", with every indexed message readable and every branch head resolvable;
* be the state before the operation or the state after it (appends may also be
  committed without having moved the head: that append never returned);
* accept the next write.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from store_helpers import chain, damage_file, msg

from cm_notebook.model import ContextMetadata, MessageStatus
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.store.index import COMPACT_MIN_LINES, LAZY_MIN_BYTES

pytestmark = [
    pytest.mark.skipif(os.name != "posix" or not hasattr(os, "fork"), reason="needs fork"),
    pytest.mark.slow,
]

SERVER = Path(__file__).with_name("store_crash_child.py")
NEW_ID = "m-crash-new"
State = dict[str, Any]


class ForkServer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, op: str, data_dir: Path, kill_at: int, after: bool = False, **args: Any) -> str:
        """Run ``op``, killed before file event ``kill_at`` (``after``: just after it,
        if it is a rename; see store_crash_child.py)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        request = {
            "op": op,
            "data_dir": str(data_dir),
            "kill_at": kill_at,
            "after": after,
            "args": args,
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.communicate(timeout=30)  # closes stdin (the server ends) and the pipes


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    fork_server = ForkServer()
    yield fork_server
    fork_server.close()


async def observe(data_dir: Path, check: bool = True) -> State:
    """What a fresh FileStore sees, checking the invariants every state must meet
    (with ``check``, also that a check finds no damage)."""
    async with FileStore(data_dir) as store:
        contexts = sorted(meta.id for meta in await store.list_contexts())
        # A delete that was killed after its rename must not leave the folder behind
        # for good: listing contexts sweeps the trash.
        trash = [n for n in os.listdir(data_dir / "contexts") if n.startswith(".trash-")]
        assert not trash, f"left in the trash: {trash}"
        if "c1" not in contexts:
            return {"contexts": contexts}
        meta = await store.get_metadata("c1")
        index = await store.index("c1")
        assert not [e.id for e in index.values() if e.status is MessageStatus.STREAMING]
        got = await store.get_messages("c1", sorted(index))
        assert [m.id for m in got] == sorted(index), "an indexed message is unreadable"
        for message in got:
            assert index[message.id].status == message.status, "index and file disagree"
        for name in meta.branches:
            await store.path("c1", name)
        await store.page("c1")
        # A crash leaves no damage a check reports, at most the file of an append cut
        # short before its commit (and none for a reply's placeholder: see below).
        report = await store.check("c1")
        assert not check or report.unindexed in ((), (NEW_ID,)), str(report)
        assert not check or replace(report, unindexed=()).ok, str(report)
        return {
            "contexts": contexts,
            "title": meta.title,
            "active": meta.active_branch,
            "heads": {name: branch.head for name, branch in meta.branches.items()},
            "messages": {m.id: (m.parent_id, m.content, m.status.value) for m in got},
            "scores": {
                mid: data.get("score") for mid, data in (await store.list_scores("c1")).items()
            },
        }


async def write_next(data_dir: Path) -> None:
    """The next write after the crash works, and another FileStore sees it."""
    async with FileStore(data_dir) as store:
        if "c1" not in [meta.id for meta in await store.list_contexts()]:
            await store.create_context(ContextMetadata(id="c1"))
        active = (await store.get_metadata("c1")).active_branch
        added = await chain(store, "c1", 1, branch=active)
    async with FileStore(data_dir) as store:
        assert (await store.path("c1"))[-1] == added[0]


async def prepare(data_dir: Path, messages: int) -> list[str]:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1", title="before"))
        await store.create_context(ContextMetadata(id="c2"))
        ids = await chain(store, "c1", messages)
        await store.create_branch("c1", "alt", head=ids[0])
        await store.append_message("c1", msg("user", ids[0], "on alt"), branch="alt")
    return ids


Accept = Callable[[State, State, State], bool]


def before_or_after(before: State, after: State, seen: State) -> bool:
    return seen in (before, after)


def append_accept(before: State, after: State, seen: State) -> bool:
    if seen in (before, after):
        return True
    # Committed, but the head move never happened: the append had not returned.
    return seen["messages"] == after["messages"] and seen["heads"] == before["heads"]


def stream_accept(before: State, after: State, seen: State) -> bool:
    reply = seen["messages"].get(NEW_ID)
    if reply is None:
        return seen == before
    _parent, content, status = reply
    # The final status is there exactly when the final text is.
    return (status == "complete") == (content == "full") and status in ("complete", "interrupted")


SCENARIOS: dict[str, tuple[int, str, Callable[[list[str]], dict[str, Any]], Accept]] = {
    "append": (3, "append", lambda ids: {"parent": ids[-1], "branch": "main"}, append_accept),
    "append-no-branch": (
        3,
        "append",
        lambda ids: {"parent": ids[0], "branch": None},
        append_accept,
    ),
    "append-streaming": (
        3,
        "append",
        # A reply's placeholder, as a turn writes it: empty.
        lambda ids: {"parent": ids[-1], "branch": "main", "status": "streaming", "content": ""},
        append_accept,
    ),
    "append-compacts": (
        COMPACT_MIN_LINES - 2,  # prepare() adds one more message on "alt"
        "append",
        lambda ids: {"parent": ids[-1], "branch": "main"},
        append_accept,
    ),
    "checkpoint": (3, "checkpoint", lambda ids: {"parent": ids[-1]}, stream_accept),
    "finish": (3, "finish", lambda ids: {"parent": ids[-1]}, stream_accept),
    "create_branch": (3, "create_branch", lambda ids: {"name": "new", "head": ids[1]}, None),
    "set_branch_head": (3, "set_branch_head", lambda ids: {"name": "alt", "head": ids[2]}, None),
    "set_active_branch": (3, "set_active_branch", lambda ids: {"name": "alt"}, None),
    "delete_branch": (3, "delete_branch", lambda ids: {"name": "alt"}, None),
    "update_metadata": (3, "update_metadata", lambda ids: {"title": "after"}, None),
    "delete_context": (3, "delete_context", lambda ids: {}, None),
    "update_score": (3, "update_score", lambda ids: {"message": ids[1], "score": 4}, None),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_at_every_file_event(server: ForkServer, tmp_path: Path, scenario: str) -> None:
    messages, op, make_args, accept = SCENARIOS[scenario]
    template = tmp_path / "template"
    template.mkdir()
    ids = anyio.run(prepare, template, messages)
    args = {"id": NEW_ID, "content": "new", **make_args(ids)}
    before = anyio.run(observe, template)

    full = tmp_path / "full"
    shutil.copytree(template, full)
    assert server.run(op, full, 10**9, **args) == "exit 0"
    events = int(Path(f"{full}.events").read_text())
    after = anyio.run(observe, full)
    assert events >= 2
    assert after != before
    if op in ("checkpoint", "finish"):
        before = {}  # the reply exists before the measured update: see stream_accept

    for kill_at in range(1, events + 1):
        work = tmp_path / f"k{kill_at}"
        shutil.copytree(template, work)
        assert server.run(op, work, kill_at, **args) == "killed 9", kill_at
        seen = anyio.run(observe, work)
        ok = (accept or before_or_after)(before, after, seen)
        assert ok, f"{scenario}: killed before file event {kill_at} of {events}: {seen}"
        if args.get("status") == "streaming":
            # The placeholder of a reply whose append never committed is empty and was
            # never acknowledged: opening the context removes it, so a check is clean.
            assert not (work / "contexts" / "c1" / "messages" / f"{NEW_ID}.json").exists() or (
                NEW_ID in seen["messages"]
            ), f"killed before file event {kill_at} of {events}: placeholder left"
        anyio.run(write_next, work)
        shutil.rmtree(work)


UPDATED = "the update of a finished message, as committed"
LATER = "a later update, acknowledged"


async def update_again(data_dir: Path, message_id: str) -> None:
    """An update acknowledged after the crash is what a fresh FileStore reads."""
    async with FileStore(data_dir) as store:
        message = await store.get_message("c1", message_id)
        await store.update_message("c1", message.model_copy(update={"content": LATER}))
    async with FileStore(data_dir) as store:
        assert (await store.get_message("c1", message_id)).content == LATER


def test_an_update_of_a_finished_message_killed_between_its_file_and_its_journal_line(
    server: ForkServer, tmp_path: Path
) -> None:
    # Every save of a tool call's status updates a finished message: the file is
    # replaced, then the fsync'd journal line commits the new version. Killed at every
    # file event, and just after each rename (the message file's included: the commit
    # line that follows is a write to the open journal, which no event reports), the
    # context opens without a StoreWarning (an update cut short is no damage), the
    # message reads as its last committed version, and a committed update is kept.
    template = tmp_path / "template"
    template.mkdir()
    target = anyio.run(prepare, template, 3)[-1]
    before = anyio.run(observe, template)

    full = tmp_path / "full"
    shutil.copytree(template, full)
    assert server.run("update", full, 10**9, id=target, content=UPDATED) == "exit 0"
    events = int(Path(f"{full}.events").read_text())
    kinds = Path(f"{full}.kinds").read_text().split()
    after = anyio.run(observe, full)
    assert after["messages"][target][1] == UPDATED
    assert {k: v for k, v in after["messages"].items() if k != target} == {
        k: v for k, v in before["messages"].items() if k != target
    }
    renames = {k for k, kind in enumerate(kinds, 1) if kind == "os.rename"}
    assert len(kinds) == events
    assert renames

    cut_short = 0  # kills that left the new file in place, its line never written
    for kill_at in range(1, events + 1):
        for after_it in (False, True) if kill_at in renames else (False,):
            where = f"killed {'after' if after_it else 'before'} file event {kill_at} of {events}"
            work = tmp_path / f"k{kill_at}{'a' if after_it else ''}"
            shutil.copytree(template, work)
            run = server.run("update", work, kill_at, after_it, id=target, content=UPDATED)
            assert run == "killed 9", where
            folder = work / "contexts" / "c1"
            committed = UPDATED.encode() in (folder / "message_index.journal").read_bytes()
            replaced = UPDATED.encode() in (folder / "messages" / f"{target}.json").read_bytes()
            cut_short += replaced and not committed
            with warnings.catch_warnings():
                warnings.simplefilter("error", StoreWarning)
                seen = anyio.run(observe, work)
                assert seen == (after if committed else before), f"{where}: {seen}"
                anyio.run(update_again, work, target)
            anyio.run(write_next, work)
            shutil.rmtree(work)
    assert cut_short, "no kill fell between the message file and its journal line"


async def prepare_long(data_dir: Path) -> list[str]:
    """c1 with index files large enough to be read lazily, and no compaction yet."""
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids: list[str] = []
        for i in range(60):
            message = msg("user", ids[-1] if ids else None, f"{i} " + "words " * 100)
            await store.append_message("c1", message, branch="main")
            ids.append(message.id)
    folder = data_dir / "contexts" / "c1"
    size = sum(
        (folder / name).stat().st_size for name in ("message_index.json", "message_index.journal")
    )
    assert size >= LAZY_MIN_BYTES
    return ids


def cut_short_update(
    server: ForkServer, tmp_path: Path, target: str, template: Path
) -> tuple[Path, bytes]:
    """A copy of ``template`` in which an update of the finished message ``target`` was
    killed just after it put the message file in place, and that file's committed bytes."""
    probe = tmp_path / "probe"
    shutil.copytree(template, probe)
    assert server.run("update", probe, 10**9, id=target, content=UPDATED) == "exit 0"
    kill_at = Path(f"{probe}.kinds").read_text().split().index("os.rename") + 1
    work = tmp_path / "work"
    shutil.copytree(template, work)
    file = work / "contexts" / "c1" / "messages" / f"{target}.json"
    committed = file.read_bytes()
    assert server.run("update", work, kill_at, True, id=target, content=UPDATED) == "killed 9"
    assert UPDATED.encode() in file.read_bytes()  # the file was replaced, and then killed
    return work, committed


def test_an_update_cut_short_in_a_long_context_is_put_back_quietly(
    server: ForkServer, tmp_path: Path
) -> None:
    # Index files this large are read lazily: the journal's last line of the message
    # is the update's marker, and the committed copy is the line before it. Another
    # writer's line after the marker, and the next open reads the journal lazily.
    template = tmp_path / "template"
    template.mkdir()
    target = anyio.run(prepare_long, template)[-1]
    work, committed = cut_short_update(server, tmp_path, target, template)

    async def append_then_read() -> None:
        async with FileStore(work) as store:
            await store.append_message("c1", msg("user", target, "after"), branch="main")
        async with FileStore(work) as store:
            page = await store.page("c1", limit=2)
            assert [m.content for m in page][1] == "after"
            assert page[0].id == target
            assert page[0].content.startswith("59 words")
            await update_again(work, target)

    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        anyio.run(append_then_read)
    file = work / "contexts" / "c1" / "messages" / f"{target}.json"
    assert LATER.encode() in file.read_bytes()
    assert committed != file.read_bytes()


@pytest.mark.parametrize("loss", ["missing", "empty", "zeroed", "garbled"])
def test_damage_to_the_file_of_an_update_cut_short_is_still_warned_about(
    server: ForkServer, tmp_path: Path, loss: str
) -> None:
    # A power loss may take the file an update cut short left, or leave zeros or other
    # bytes of its size: only the very file the marker names is no damage.
    template = tmp_path / "template"
    template.mkdir()
    target = anyio.run(prepare, template, 3)[-1]
    work, committed = cut_short_update(server, tmp_path, target, template)
    file = work / "contexts" / "c1" / "messages" / f"{target}.json"
    damage_file(file, loss)

    async def read() -> None:
        async with FileStore(work) as store:
            with pytest.warns(StoreWarning, match="restored from the journal"):
                page = await store.page("c1")
            assert page[-1].id == target
            assert page[-1].content == "main 2"

    anyio.run(read)
    assert file.read_bytes() == committed


_INDEX_FILES = ("message_index.json", "message_index.journal", "metadata.json")


async def prepare_hidden(data_dir: Path) -> list[str]:
    """c1 with 6 messages whose index, journal and metadata were put back from a copy
    taken after the third: the last three are files the index does not list."""
    folder = data_dir / "contexts" / "c1"
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1", title="before"))
        ids = await chain(store, "c1", 3)
        await store.compact("c1")
        saved = {name: (folder / name).read_bytes() for name in _INDEX_FILES}
        ids += await chain(store, "c1", 3)
    for name, data in saved.items():
        (folder / name).write_bytes(data)
    return ids


def _observe_after_repair(data_dir: Path) -> State:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)  # an open may finish the rebuild
        return anyio.run(observe, data_dir, False)  # hidden messages, by design


def test_kill_at_every_file_event_of_a_repair(server: ForkServer, tmp_path: Path) -> None:
    # A repair killed anywhere leaves the context as it was (a new repair starts over)
    # or with every hidden message back on the "recovered" branch: never brought back
    # into the index on no branch, which a new check would call fine.
    template = tmp_path / "template"
    template.mkdir()
    ids = anyio.run(prepare_hidden, template)
    before = anyio.run(observe, template, False)
    assert before["heads"]["main"] == ids[2]

    full = tmp_path / "full"
    shutil.copytree(template, full)
    assert server.run("check_repair", full, 10**9) == "exit 0"
    events = int(Path(f"{full}.events").read_text())
    after = _observe_after_repair(full)
    assert after["heads"]["recovered"] == ids[-1]

    for kill_at in range(1, events + 1):
        work = tmp_path / f"k{kill_at}"
        shutil.copytree(template, work)
        assert server.run("check_repair", work, kill_at) == "killed 9", kill_at
        seen = _observe_after_repair(work)
        assert seen == before or seen["heads"].get("recovered") == ids[-1], (
            f"repair killed before file event {kill_at} of {events}: {seen['heads']}"
        )
        anyio.run(write_next, work)
        shutil.rmtree(work)
