"""A power loss after any fsync: every acknowledged change is still there.

The kill -9 tests (test_store_crash_points.py) stop a writer at every file event, but
the operating system keeps what it had been given. Here the store runs with a
:class:`power_loss.PowerLossRecorder` as its fsync, and for every fsync it made the
test builds the folder a power loss just after it would leave, opens it with a new
FileStore and checks that:

* every operation that had returned by then is there: the context, each message as
  it was written (content, status, metadata) on its branch's path, each branch, each
  score;
* reading it raises nothing, and the context takes the next write;
* with a session (its signal log's fsyncs recorded too): every signal record an fsync
  made durable is in the log, unchanged; a reader reads it through, in order; the next
  signal written takes the next number and is read after them.

Three kinds of folder (see power_loss.py): after each fsync, only what some fsync made
durable; after each fsync, every name kept as it was with the files' bytes still only
what was fsync'd; and during each fsync of a file that had grown, half of its new
bytes written (a journal line cut in half).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from power_loss import PowerLossRecorder, tmpfs_folder
from store_helpers import msg

from cm_notebook import ContextSession
from cm_notebook.fsm import State
from cm_notebook.model import ContextMetadata, Message, MessageStatus
from cm_notebook.signal_log import LogReader, SignalLog
from cm_notebook.signals import StateChanged
from cm_notebook.store import FileStore
from cm_notebook.store.atomic import mkdir_durable
from cm_notebook.store.folders import signal_log_in
from cm_notebook.store.index import COMPACT_MIN_LINES
from cm_notebook.testing import ScriptedProvider

TMPFS = tmpfs_folder()
pytestmark = [
    pytest.mark.skipif(TMPFS is None, reason="needs a tmpfs at /dev/shm (unique inode numbers)"),
    pytest.mark.skipif(os.name != "posix", reason="reads files through /proc"),
    pytest.mark.slow,
]


@dataclass
class Acknowledged:
    """What had returned, each with the number of fsyncs made by then."""

    rec: PowerLossRecorder
    context: tuple[int, str] | None = None
    messages: list[tuple[int, Message, str | None]] = field(default_factory=list)
    branches: list[tuple[int, str]] = field(default_factory=list)
    scores: list[tuple[int, str, dict[str, Any] | None]] = field(default_factory=list)
    title: tuple[int, str] | None = None
    approvals: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    gone: list[tuple[int, str]] = field(default_factory=list)  # deleted branches
    heads: list[tuple[int, str, str]] = field(default_factory=list)  # branch moved to
    allowed: tuple[int, list[str]] | None = None

    def message(self, message: Message, branch: str | None) -> None:
        self.messages.append((self.rec.count, message, branch))


Scenario = Callable[[FileStore, Acknowledged], Awaitable[None]]
Prepare = Callable[[Path], Coroutine[Any, Any, tuple[str, list[Message]]]]


async def _store_calls(store: FileStore, acks: Acknowledged) -> None:
    """The store's writes, called directly: long enough to be compacted."""
    context = await store.create_context(ContextMetadata(title="power loss"))
    cid = context.id
    acks.context = (acks.rec.count, cid)

    head: str | None = None
    main: list[Message] = []
    for number in range(COMPACT_MIN_LINES + 20):
        message = msg("user" if number % 2 == 0 else "assistant", head, f"main {number}")
        await store.append_message(cid, message, branch="main")
        acks.message(message, "main")
        head = message.id
        main.append(message)

    await store.create_branch(cid, "side", head=main[40].id)
    acks.branches.append((acks.rec.count, "side"))
    side = main[40].id
    for number in range(4):
        message = msg("user" if number % 2 == 0 else "assistant", side, f"side {number}")
        await store.append_message(cid, message, branch="side")
        acks.message(message, "side")
        side = message.id

    # A streamed reply: its placeholder, a checkpoint, its final state.
    question = msg("user", head, "one more question")
    await store.append_message(cid, question, branch="main")
    acks.message(question, "main")
    reply = msg("assistant", question.id, "", status=MessageStatus.STREAMING)
    await store.append_message(cid, reply, branch="main")
    await store.update_message(cid, reply.model_copy(update={"content": "the answer so"}))
    final = reply.model_copy(
        update={"content": "the answer so far", "status": MessageStatus.COMPLETE}
    )
    await store.update_message(cid, final)
    acks.message(final, "main")

    # A score, changed once; the title; the active branch.
    for stars in (4, 2):
        score = {"message_id": final.id, "score": stars}
        stored = await store.update_score(cid, final.id, functools.partial(_replace, score))
        acks.scores.append((acks.rec.count, final.id, stored))
    await store.update_metadata(cid, title="after the storm")
    acks.title = (acks.rec.count, "after the storm")

    # A branch made and deleted; a branch rewound (its later messages stay in the tree).
    await store.create_branch(cid, "doomed", head=main[5].id)
    await store.delete_branch(cid, "doomed")
    acks.gone.append((acks.rec.count, "doomed"))
    await store.set_branch_head(cid, "side", main[40].id)
    acks.heads.append((acks.rec.count, "side", main[40].id))
    await store.set_active_branch(cid, "side")
    acks.branches.append((acks.rec.count, "side"))


async def _two_writers(store: FileStore, acks: Acknowledged) -> None:
    """Two FileStores on one data folder, as a kernel's and a server's: each with its own
    locks and cached state. They take turns on one branch (compare-and-set moves, past
    a compaction made by one and read by the other), then write two branches at once."""
    context = await store.create_context(ContextMetadata(title="two writers"))
    cid = context.id
    acks.context = (acks.rec.count, cid)
    async with FileStore(store.data_dir, fsync=store.fsync) as other:

        async def append(writer: FileStore, message: Message, branch: str) -> None:
            await writer.append_message(
                cid, message, branch=branch, expected_head=message.parent_id
            )
            acks.message(message, branch)

        head: str | None = None
        for number in range(COMPACT_MIN_LINES + 20):
            message = msg("user" if number % 2 == 0 else "assistant", head, f"turn {number}")
            await append(store if number % 3 else other, message, "main")
            head = message.id
        await other.create_branch(cid, "theirs", head=head)
        acks.branches.append((acks.rec.count, "theirs"))
        ours = theirs = head
        for number in range(20):
            role = "user" if number % 2 == 0 else "assistant"
            mine, yours = msg(role, ours, f"ours {number}"), msg(role, theirs, f"theirs {number}")
            await asyncio.gather(append(store, mine, "main"), append(other, yours, "theirs"))
            ours, theirs = mine.id, yours.id


async def _prepare_damaged(data: Path) -> tuple[str, list[Message]]:
    """A context of 60 messages whose index is damaged (its snapshot gone): the next
    store to use it rebuilds the index from the message files."""
    async with FileStore(data) as store:
        cid = (await store.create_context(ContextMetadata(title="damaged"))).id
        head: str | None = None
        written = []
        for number in range(60):
            message = msg("user" if number % 2 == 0 else "assistant", head, f"old {number}")
            await store.append_message(cid, message, branch="main")
            head = message.id
            written.append(message)
        await store.compact(cid)
    (data / "contexts" / cid / "message_index.json").unlink()
    return cid, written


async def _rebuild_then_write(store: FileStore, acks: Acknowledged) -> None:
    """A metadata write finds the damage (the index is rebuilt, and saved), then more
    messages, past a compaction."""
    assert acks.context is not None
    cid = acks.context[1]
    old = [message for _at, message, _branch in acks.messages]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await store.create_branch(cid, "side", head=old[10].id)
    assert any("rebuilt" in str(w.message) for w in caught), "the damage went unnoticed"
    acks.branches.append((acks.rec.count, "side"))
    head = old[-1].id
    for number in range(COMPACT_MIN_LINES + 10):
        message = msg("user" if number % 2 == 0 else "assistant", head, f"new {number}")
        await store.append_message(cid, message, branch="main")
        acks.message(message, "main")
        head = message.id


_INDEX_FILES = ("message_index.json", "message_index.journal", "metadata.json")


async def _prepare_hidden(data: Path) -> tuple[str, list[Message]]:
    """A context whose index, journal and metadata were put back from a copy taken 20
    messages ago: those 20 are files the index does not list."""
    async with FileStore(data) as store:
        cid = (await store.create_context(ContextMetadata(title="hidden"))).id
        folder = data / "contexts" / cid
        head: str | None = None
        written = []
        for number in range(60):
            if number == 40:
                await store.compact(cid)
                saved = {name: (folder / name).read_bytes() for name in _INDEX_FILES}
            message = msg("user" if number % 2 == 0 else "assistant", head, f"old {number}")
            await store.append_message(cid, message, branch="main")
            head = message.id
            written.append(message)
        await store.compact(cid)
    for name, data_bytes in saved.items():
        (folder / name).write_bytes(data_bytes)
    return cid, written[:40]


async def _repair_then_write(store: FileStore, acks: Acknowledged) -> None:
    """``check(repair=True)`` brings the hidden messages back on a ``recovered`` branch;
    then more messages on main."""
    assert acks.context is not None
    cid = acks.context[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rebuild is reported
        report = await store.check(cid, repair=True)
    assert report.recovered_branches == ("recovered",)
    assert len(report.brought_back) == 20
    acks.branches.append((acks.rec.count, "recovered"))
    for message_id in await store.path(cid, "recovered"):
        acks.message(await store.get_message(cid, message_id), "recovered")
    head = (await store.get_metadata(cid)).branches["main"].head
    for number in range(10):
        message = msg("user" if number % 2 == 0 else "assistant", head, f"new {number}")
        await store.append_message(cid, message, branch="main")
        acks.message(message, "main")
        head = message.id


def _replace(new: dict[str, Any], _old: dict[str, Any] | None) -> dict[str, Any]:
    return new


def _add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


async def _session_turns(store: FileStore, acks: Acknowledged) -> None:
    """Turns through a ContextSession, past a compaction: plain ones and tool cycles, the
    first approved for the whole context, the others then allowed by that."""
    turns = COMPACT_MIN_LINES // 3 + 5
    fake = ScriptedProvider(strict=True)
    for turn in range(turns):
        if turn % 10 == 3:
            fake.tool_call("_add", {"a": turn, "b": 1}).reply(f"the sum is {turn + 1}")
        else:
            fake.reply(f"answer {turn}", chunks="words")
    session = ContextSession.create(
        "power loss", provider=fake, store=store, tools=[_add], approval="ask"
    )
    try:
        acks.context = (acks.rec.count, session.id)
        for turn in range(turns):
            running = session.send(f"question {turn}")
            if turn % 10 == 3 and await session.wait_for_approval():
                session.approve(remember="context")
                acks.allowed = (acks.rec.count, ["_add"])
            await running
            for message in session.history():
                acks.message(message, "main")
            records = [record.model_dump() for record in session.approval_log()]
            acks.approvals.append((acks.rec.count, records))
    finally:
        await session.aclose()


async def _check_folder(folder: Path, after: int, acks: Acknowledged) -> None:
    assert acks.context is not None
    created_at, cid = acks.context
    async with FileStore(folder) as store:
        contexts = {c.id for c in await store.list_contexts()}
        if after < created_at and cid not in contexts:
            return  # never acknowledged: it may be gone
        assert cid in contexts, "an acknowledged context is gone"
        metadata = await store.get_metadata(cid)
        for branch_at, name in acks.branches:
            if branch_at <= after:
                assert name in metadata.branches, f"acknowledged branch {name!r} is gone"
        if acks.title is not None and acks.title[0] <= after:
            assert metadata.title == acks.title[1]
        for deleted_at, name in acks.gone:
            if deleted_at <= after:
                assert name not in metadata.branches, f"deleted branch {name!r} is back"
        heads = {name: head for moved_at, name, head in acks.heads if moved_at <= after}
        for name, head in heads.items():
            assert metadata.branches[name].head == head, f"branch {name!r} moved back"
        # The last acknowledged state of each message, and the branch it must be on.
        expected: dict[str, tuple[Message, str | None]] = {}
        for written_at, message, branch in acks.messages:
            if written_at <= after:
                # A branch rewound since no longer shows it (it stays in the tree).
                rewound = any(
                    name == branch and written_at < moved_at <= after
                    for moved_at, name, _head in acks.heads
                )
                expected[message.id] = (message, None if rewound else branch)
        paths: dict[str, set[str]] = {}
        found = await store.get_messages(cid, list(expected))
        for (message, branch), stored in zip(expected.values(), found, strict=True):
            assert stored.model_dump() == message.model_dump(), (
                f"message {message.content!r} ({message.status}) came back as "
                f"{stored.content!r} ({stored.status})"
            )
            if branch is not None:
                if branch not in paths:
                    paths[branch] = set(await store.path(cid, branch))
                assert message.id in paths[branch], f"{message.content!r} left branch {branch!r}"
        scores: dict[str, dict[str, Any] | None] = {}
        for scored_at, message_id, score in acks.scores:
            if scored_at <= after:
                scores[message_id] = score
        for message_id, score in scores.items():
            assert await store.read_score(cid, message_id) == score, "a score went back"
        await _check_approvals(store, cid, after, acks)
        # The context takes the next write.
        head = metadata.branches["main"].head
        after_storm = msg("user", head, "after the power came back")
        await store.append_message(cid, after_storm, branch="main")
    async with FileStore(folder) as reopened:  # and keeps it
        assert (await reopened.path(cid, "main"))[-1] == after_storm.id, "the next write is lost"


def _records(data: bytes) -> dict[int, dict[str, Any]]:
    # The whole signal records in a log's bytes by number (a torn line is no record).
    found = {}
    for line in data.split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("e"), dict):
            found[record["e"]["seq"]] = record
    return found


def _check_signal_log(folder: Path, after: int, acks: Acknowledged) -> None:
    """The context's signal log after the power loss: every record an fsync made durable
    is there (from the oldest one kept on: compaction drops older ones), unchanged and
    in order; readers get through it; the next signal takes the next number."""
    assert acks.context is not None
    log_path = signal_log_in(folder / "contexts" / acks.context[1])
    synced: dict[int, dict[str, Any]] = {}
    for data in acks.rec.synced_files(after):
        if data.startswith(b'{"w":'):
            synced.update(_records(data))
    if not log_path.exists():
        assert not synced, f"the signal log is gone with {len(synced)} fsync'd records"
        return
    kept = _records(log_path.read_bytes())
    reader = LogReader(log_path, since=0)
    try:
        read = [event.seq for _writer, event in reader.poll()]
    finally:
        reader.close()
    assert read == sorted(kept), "a reader skipped records or read them out of order"
    if synced:
        assert kept, f"the signal log lost all {len(synced)} fsync'd records"
        lost = [seq for seq in synced if seq >= min(kept) and kept.get(seq) != synced[seq]]
        assert not lost, f"fsync'd signal records lost or changed: {lost[:10]}"
    log = SignalLog(log_path)
    try:
        last = max(kept, default=0)
        state = StateChanged(branch="main", old=State.IDLE, new=State.IDLE)
        stamped = log.record(lambda seq: state.model_copy(update={"seq": seq}))
        assert stamped.seq == last + 1, f"the next signal took {stamped.seq} after {last}"
    finally:
        log.close()
    reader = LogReader(log_path, since=0)
    try:
        after_it = [event.seq for _writer, event in reader.poll()]
        assert after_it == [*sorted(kept), last + 1], "a record written after the loss is unread"
    finally:
        reader.close()


async def _check_approvals(store: FileStore, cid: str, after: int, acks: Acknowledged) -> None:
    records = [records for logged_at, records in acks.approvals if logged_at <= after]
    allowed = acks.allowed is not None and acks.allowed[0] <= after
    if not records and not allowed:
        return
    session = ContextSession.open(cid, store=store, provider=ScriptedProvider())
    try:
        if records:
            logged = [record.model_dump() for record in session.approval_log()]
            assert logged[: len(records[-1])] == records[-1], "an approval record is gone"
        if allowed:
            assert session.allowed_tools()["context"] == ["_add"], "an allowance is gone"
    finally:
        await session.aclose()


@pytest.mark.parametrize("kind", ["only-fsynced", "names-kept", "torn"])
@pytest.mark.parametrize(
    ("prepare", "scenario"),
    [
        (None, _store_calls),
        (None, _session_turns),
        (_prepare_damaged, _rebuild_then_write),
        (_prepare_hidden, _repair_then_write),
        (None, _two_writers),
    ],
    ids=["store", "session", "rebuild", "repair", "two-writers"],
)
def test_every_acknowledged_change_survives_a_power_loss_after_any_fsync(
    prepare: Prepare | None, scenario: Scenario, kind: str
) -> None:
    assert TMPFS is not None
    root = TMPFS / f"cm-power-loss-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    try:
        prepared = None if prepare is None else asyncio.run(prepare(root / "data"))
        # What is in the folder now counts as durable: the recorder starts from it.
        rec = PowerLossRecorder(root / "data")
        acks = Acknowledged(rec)
        if prepared is not None:
            acks.context = (0, prepared[0])
            acks.messages = [(0, message, "main") for message in prepared[1]]

        async def run() -> None:
            async with FileStore(root / "data", fsync=rec) as store:
                await scenario(store, acks)

        asyncio.run(run())
        assert rec.count >= 10  # the recorder saw the store's fsyncs
        failures: list[str] = []
        # Torn: only where the next fsync was of a grown file (else it is "only-fsynced").
        points = sorted(set(rec.torn_points())) if kind == "torn" else range(rec.count + 1)
        assert len(points) >= 10  # the journal's appends at least
        for after in points:
            folder = root / f"after-{after}"
            rec.leave(after, folder, names_kept=kind == "names-kept", torn=kind == "torn")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # repairs are reported; only losses count
                try:
                    if scenario is _session_turns:
                        _check_signal_log(folder, after, acks)
                    asyncio.run(_check_folder(folder, after, acks))
                except Exception as exc:
                    failures.append(f"after fsync {after}/{rec.count}: {type(exc).__name__}: {exc}")
            shutil.rmtree(folder)
        assert not failures, f"{len(failures)} power-loss points lose data:\n" + "\n".join(
            failures[:20]
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_mkdir_durable_fsyncs_the_parent_of_each_folder_it_makes(tmp_path: Path) -> None:
    synced: list[str] = []

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        os.fsync(fd)

    target = tmp_path / "a" / "b"
    mkdir_durable(target, fsync, parents=True)
    assert target.is_dir()
    assert synced == [str(tmp_path), str(tmp_path / "a")]
    mkdir_durable(target, fsync, parents=True)  # there already: nothing to make durable
    assert len(synced) == 2
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(FileExistsError):
        mkdir_durable(tmp_path / "file", fsync)


def test_the_recorder_tears_a_grown_file_and_a_new_files_first_fsync() -> None:
    # The torn reading must cover a file's first fsync too (a new journal, a new log),
    # not only the later ones of a file that grows.
    assert TMPFS is not None
    root = TMPFS / f"cm-power-loss-recorder-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    try:
        rec = PowerLossRecorder(root)
        fd = os.open(root / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, b"line one\n")
            folder = os.open(root, os.O_RDONLY)
            try:
                rec(folder)  # fsync 1: the new file's name
            finally:
                os.close(folder)
            rec(fd)  # fsync 2: the file's first
            os.write(fd, b"line two\n")
            rec(fd)  # fsync 3: the file grew
        finally:
            os.close(fd)
        assert rec.torn_points() == [1, 2]
        rec.leave(1, root / "torn-first", torn=True)  # the power fails during fsync 2
        assert (root / "torn-first" / "log").read_bytes() == b"line"
        rec.leave(2, root / "torn-late", torn=True)  # during fsync 3
        assert (root / "torn-late" / "log").read_bytes() == b"line one\nline"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_metadata_never_names_a_head_whose_journal_line_a_power_loss_takes() -> None:
    # A reply's placeholder is appended without an fsync. A metadata.json written next
    # (a branch made while the reply streams, a compaction) holds the head it moved:
    # the journal line must be durable before it, or a power loss leaves "main"
    # pointing at a message no index lists.
    assert TMPFS is not None
    root = TMPFS / f"cm-power-loss-placeholder-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    try:
        rec = PowerLossRecorder(root / "data")

        async def run() -> None:
            async with FileStore(root / "data", fsync=rec) as store:
                await store.create_context(ContextMetadata(id="c1", title="placeholder"))
                user = msg("user", None, "hi")
                await store.append_message("c1", user, branch="main")
                reply = msg("assistant", user.id, "", status=MessageStatus.STREAMING)
                await store.append_message("c1", reply, branch="main")
                await store.create_branch("c1", "side", head=user.id)

        asyncio.run(run())
        for after in range(rec.count + 1):
            folder = root / f"after-{after}"
            rec.leave(after, folder)

            async def check(folder: Path = folder) -> None:
                async with FileStore(folder) as store:
                    if "c1" in {c.id for c in await store.list_contexts()}:
                        await store.path("c1")  # raises if "main" leads nowhere

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an interrupted reply is reported
                asyncio.run(check())
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
