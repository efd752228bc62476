"""Migration from v1's per-context ``<uuid>.json`` files: one file, or a folder of them.

The fixtures in ``fixtures/v1/context_files`` are a folder as v1 left it: an A/B
experiment with a system prompt per branch, a tool round, a file with odd records
(a missing parent, a branch naming an unknown message, a node that is not an object,
a thread on no branch) and a file cut off mid-write.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from cm_notebook.cli import main
from cm_notebook.errors import MigrationError
from cm_notebook.migrate import (
    ContextStatus,
    ConvertedContext,
    check_converted,
    content_digest,
    convert,
    load_v1,
    migrate,
    parse_v1,
    read_v1,
)
from cm_notebook.migrate._toolcalls import NO_RESULT_REASON
from cm_notebook.model import ContextMetadata, Message, ToolCallStatus
from cm_notebook.store import FileStore

FOLDER = Path(__file__).parent / "fixtures" / "v1" / "context_files"
AB = "3f6c1a52-8a4e-4d2b-9c1e-2b7f4e9a1c01"
TOOLS = "7d2e9b40-1c3a-4f5e-8b6d-0a9c8e7f6d02"
ODD = "b5e8f0a2-6d4c-4e1b-a7f3-9c2d1e0b8a03"
CUT = "e91d4c7b-2a5f-4b8e-9d3c-6f1a0b2c3d04"


def e(n: int) -> str:
    """An id of the odd file's pool."""
    return f"e0000000-0000-4000-8000-{n:012x}"


def converted(name: str) -> ConvertedContext:
    (ctx,) = load_v1(FOLDER / f"{name}.json")
    conv = convert(ctx)
    assert check_converted(conv) == []
    return conv


def by_id(conv: ConvertedContext) -> dict[str, Message]:
    return {m.id: m for m in conv.messages}


def pool_file(pool: dict[str, Any], branches: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": "ctx-pool", "message_pool": pool, "branches": branches, **fields}


def node(key: str, role: str, text: str, parent: str | None, when: str = "") -> dict[str, Any]:
    meta = {"created_at": when} if when else {}
    return {
        "id": key,
        "message": {"role": role, "content": [{"type": "text", "text": text}], "metadata": meta},
        "parent_id": parent,
    }


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A copy of the fixture folder, so that backups land in tmp_path."""
    return Path(shutil.copytree(FOLDER, tmp_path / "contexts"))


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


# -- reading and converting (no store) ------------------------------------------------


def test_a_folder_is_read_file_by_file_and_a_damaged_file_is_named() -> None:
    source = read_v1(FOLDER)
    assert source.kind == "context-files"
    contexts = source.contexts
    assert [c.id for c in contexts] == [AB, TOOLS, ODD, None]
    assert [c.fatal is None for c in contexts] == [True, True, True, False]
    damaged = contexts[3]
    assert damaged.fatal is not None
    assert str(FOLDER / f"{CUT}.json") in damaged.fatal
    assert "is not JSON" in damaged.fatal
    assert damaged.source_file == FOLDER / f"{CUT}.json"


def test_each_branch_keeps_its_path_and_its_own_system_prompt() -> None:
    conv = converted(AB)
    meta = conv.metadata
    user, long_reply, follow_up, wellington = (
        "9a4c2e71-0f3b-4d6a-8e25-7b1c9d0a4f01",
        "2d9b7c10-6a5e-4e3f-b812-4c0a9e1d7f02",
        "c7f2b0d4-8e1a-4b3c-9d56-0a2e4f6b8c04",
        "5e8d1a27-3c4b-4f90-a6e2-1d7f0b9c8a05",
    )
    terse_reply = "0b1e6f3c-5d2a-4c8e-9f71-3a6d2c1b0e03"
    assert conv.path("main") == [user, long_reply, follow_up, wellington]
    assert conv.path("terse") == [user, terse_reply]
    assert conv.copies == 0  # the branches agree with the parent links: nothing copied
    assert meta.branches["main"].system_prompt == (
        "You are a patient geography tutor. Explain your answers."
    )
    assert meta.branches["terse"].system_prompt == "Answer in five words or fewer."
    # v1 had prompts per branch only: none moves up to the context, so no branch can
    # inherit another's.
    assert meta.active_branch == "terse"
    assert meta.system_prompt is None
    assert meta.title == "Capital cities, two prompts"
    assert meta.extra["v1_branch_extra"] == {
        "main": {"system_prompt_id": "tutor"},
        "terse": {"system_prompt_id": "terse", "user_prompt": "Be brief."},
    }
    assert meta.extra["v1_extra"]["config"]["model_id"] == "gpt-4o-mini"
    assert meta.extra["v1_source_kind"] == "context-files"
    messages = by_id(conv)
    assert [messages[i].role for i in conv.path("main")] == [
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert messages[user].metadata.model_extra is not None
    assert messages[user].metadata.model_extra["v1_role"] == "User"
    assert messages[long_reply].content == (
        "The capital of Australia is Canberra.\n\n"
        "It was chosen in 1908 as a compromise between Sydney and Melbourne."
    )
    assert messages[user].created_at.isoformat() == "2025-03-04T10:00:00+00:00"
    # v1's token counts and duration become the message's usage and duration.
    stats = messages["0b1e6f3c-5d2a-4c8e-9f71-3a6d2c1b0e03"].metadata
    assert stats.usage is not None
    assert (stats.usage.input_tokens, stats.usage.output_tokens) == (31, 3)
    assert stats.duration_ms == 412
    assert messages[user].metadata.usage is None
    assert meta.created_at == messages[user].created_at


def test_the_order_of_the_pool_in_the_file_does_not_matter() -> None:
    data = json.loads((FOLDER / f"{AB}.json").read_text())
    reordered = dict(reversed(list(data["message_pool"].items())))
    first = convert(parse_v1(data).contexts[0])
    second = convert(parse_v1({**data, "message_pool": reordered}).contexts[0])
    assert second.messages == first.messages
    assert second.metadata == first.metadata
    # Parents always come before their children, whatever the file's order.
    seen: set[str] = set()
    for message in second.messages:
        assert message.parent_id is None or message.parent_id in seen
        seen.add(message.id)


def test_tool_calls_and_their_results() -> None:
    conv = converted(TOOLS)
    messages = [by_id(conv)[i] for i in conv.path("main")]
    _, asked, answer, _ = messages
    oslo, bergen = asked.tool_calls
    assert (oslo.name, oslo.arguments, oslo.status) == (
        "get_weather",
        {"city": "Oslo"},
        ToolCallStatus.DONE,
    )
    assert oslo.result == '{"temp_c": 4, "sky": "cloudy"}'
    # Never answered in v1: failed with a reason, never offered for approval again.
    assert (bergen.status, bergen.reason) == (ToolCallStatus.FAILED, NO_RESULT_REASON)
    assert asked.metadata.model_extra is not None
    assert asked.metadata.model_extra["v1_tool_call_extra"] == {
        "call_oslo": {"approval_status": "Approved"},
        "call_bergen": {"approval_status": "Pending"},
    }
    assert answer.role == "tool"
    assert answer.tool_call_id == "call_oslo"
    assert answer.content == '{"temp_c": 4, "sky": "cloudy"}'


def test_odd_records_are_reported_and_everything_readable_stays_reachable() -> None:
    conv = converted(ODD)
    meta = conv.metadata
    assert meta.id == ODD  # no id inside: the file name gives it
    assert meta.title == "Untitled"
    assert conv.source.message_count == 6
    assert len(conv.originals) == 5
    assert conv.problems == [
        f"message {e(6)!r} is a str, not an object; skipped",
        "branch 'main' lists unknown message 'deadbeef-0000-4000-8000-000000000000'; skipped",
        f"message {e(3)!r} names parent {e(255)!r}, which is not in the source; it starts a "
        "new thread (metadata.v1_parent_id keeps the name)",
    ]
    messages = by_id(conv)
    # A missing parent: the message starts a thread of its own and keeps the name.
    assert messages[e(3)].parent_id is None
    assert (messages[e(3)].metadata.model_extra or {})["v1_parent_id"] == e(255)
    assert conv.path("rhyme") == [e(3), e(4)]
    assert conv.path("main") == [e(1), e(2)]  # the unknown id is skipped, the rest kept
    # A reply on no v1 branch hangs under its parent and gets a branch of its own.
    assert messages[e(5)].parent_id == e(2)
    assert conv.path("v1-unbranched") == [e(1), e(2), e(5)]
    assert meta.branches["main"].system_prompt == "You are a poet."
    assert meta.branches["rhyme"].system_prompt is None


def test_parent_links_that_form_a_loop_still_give_a_valid_tree() -> None:
    pool = {
        "a": node("a", "User", "first", "b", "2025-01-01T00:00:00Z"),
        "b": node("b", "Assistant", "second", "a", "2025-01-01T00:00:01Z"),
    }
    conv = convert(parse_v1(pool_file(pool, {})).contexts[0])
    assert check_converted(conv) == []
    assert sum(m.parent_id is None for m in conv.messages) == 1
    assert any("parent links form a loop" in n for n in conv.notes)


def test_a_branch_that_disagrees_with_parent_id_wins_with_a_note() -> None:
    pool = {
        "q": node("q", "User", "question", None),
        "x": node("x", "Assistant", "answer x", "q"),
        "y": node("y", "Assistant", "answer y", "q"),
        "z": node("z", "User", "follow-up", "x"),
    }
    branches = {"main": {"message_ids": ["q", "y", "z"], "system_prompt": "Be kind."}}
    conv = convert(parse_v1(pool_file(pool, branches)).contexts[0])
    assert check_converted(conv) == []
    assert conv.path("main") == ["q", "y", "z"]
    assert by_id(conv)["x"].parent_id == "q"
    assert "message 'z': its parent_id disagrees with a branch" in " ".join(conv.notes)
    # A plain-text prompt is taken as it is.
    assert conv.metadata.branches["main"].system_prompt == "Be kind."
    assert conv.metadata.system_prompt is None


@pytest.mark.parametrize("active", ["other", "main", "m\u0430in"])
def test_a_look_alike_branch_listed_first_does_not_take_the_real_ones_name(active: str) -> None:
    # 'mаin' with a Cyrillic а, listed before the real 'main': the real one keeps its
    # name and its messages, whichever branch was active.
    pool = {
        "q": node("q", "User", "question", None),
        "r": node("r", "Assistant", "the real main answer", "q"),
        "f": node("f", "Assistant", "the look-alike's answer", "q"),
        "o": node("o", "Assistant", "another answer", "q"),
    }
    branches = {
        "m\u0430in": {"message_ids": ["q", "f"]},
        "main": {"message_ids": ["q", "r"]},
        "other": {"message_ids": ["q", "o"]},
    }
    conv = convert(parse_v1(pool_file(pool, branches, active_branch_name=active)).contexts[0])
    assert check_converted(conv) == []
    assert conv.path("main") == ["q", "r"]
    assert conv.path("main-2") == ["q", "f"]
    assert conv.metadata.branches["main-2"].description == "v1 branch 'm\u0430in'"
    assert conv.metadata.active_branch == {"m\u0430in": "main-2"}.get(active, active)


def test_a_single_file_is_recognised_on_its_own() -> None:
    data = json.loads((FOLDER / f"{TOOLS}.json").read_text())
    source = parse_v1(data, name="one.json")
    assert source.kind == "context-files"
    assert [c.id for c in source.contexts] == [TOOLS]


def test_what_a_folder_must_hold(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match=r"holds no \.json files"):
        read_v1(tmp_path)
    (tmp_path / "contexts.json").write_text(json.dumps([{"id": "x", "messages": []}]))
    (tmp_path / "not-a-pool.json").mkdir()
    shutil.copy2(FOLDER / f"{TOOLS}.json", tmp_path / "good.json")
    results = {c.source_file.name: c for c in read_v1(tmp_path).contexts if c.source_file}
    assert results["good.json"].fatal is None
    other = results["contexts.json"].fatal
    assert other is not None
    assert "not a v1 per-context file" in other
    assert f"cm-notebook migrate {tmp_path / 'contexts.json'}" in other
    assert "not-a-pool.json is a folder, not a file: move it out of" in (
        results["not-a-pool.json"].fatal or ""
    )


def test_a_pool_that_is_not_an_object_and_a_file_nested_too_deep(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"id": "a", "message_pool": "gone"}))
    (tmp_path / "b.json").write_text('{"message_pool": ' + "[" * 100_000 + "]" * 100_000 + "}")
    shutil.copy2(FOLDER / f"{TOOLS}.json", tmp_path / "c.json")
    a, b, c = read_v1(tmp_path).contexts
    assert a.fatal == "'message_pool' is a str, not an object of id -> message"
    assert b.fatal is not None
    assert str(tmp_path / "b.json") in b.fatal
    assert c.fatal is None
    with pytest.raises(MigrationError, match=r"nested (too deeply|deeper than)"):
        read_v1(tmp_path / "b.json")


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links")
def test_links_in_a_folder_are_not_followed(tmp_path: Path) -> None:
    (tmp_path / "link.json").symlink_to(FOLDER / f"{TOOLS}.json")
    (ctx,) = read_v1(tmp_path).contexts
    assert ctx.fatal is not None
    assert "symbolic link" in ctx.fatal


# -- migrating into a store -----------------------------------------------------------


@pytest.fixture
async def store(data_dir: Path) -> Any:
    async with FileStore(data_dir) as opened:
        yield opened


@pytest.mark.anyio
async def test_a_folder_migrates_and_the_damaged_file_is_reported(
    store: FileStore, folder: Path
) -> None:
    report = await migrate(folder, store, progress=False)
    assert report.source_kind == "context-files"
    assert [c.status for c in report.contexts] == [
        ContextStatus.MIGRATED,
        ContextStatus.MIGRATED,
        ContextStatus.PARTIAL,
        ContextStatus.FAILED,
    ]
    assert not report.ok  # one file could not be migrated: the exit code says so
    assert report.messages_migrated == 5 + 4 + 5
    damaged = report.contexts[3]
    assert damaged.source_file == str(folder / f"{CUT}.json")
    assert damaged.problems[0].startswith(f"cannot convert: {folder / f'{CUT}.json'} is not JSON")
    text = str(report)
    assert f"from {folder / f'{CUT}.json'}" in text
    assert "2 migrated, 1 partial, 0 skipped, 1 failed; 14 message(s) migrated" in text
    # What was written is what v1 had: paths, prompts, contents.
    meta = await store.get_metadata(AB)
    assert meta.branches["terse"].system_prompt == "Answer in five words or fewer."
    assert meta.branches["main"].system_prompt is not None
    assert meta.active_branch == "terse"
    assert len(await store.path(AB, "main")) == 4
    assert await store.path(ODD, "v1-unbranched") == [e(1), e(2), e(5)]
    v1 = json.loads((folder / f"{TOOLS}.json").read_text())["message_pool"]
    written = await store.get_messages(TOOLS, await store.path(TOOLS, "main"))
    assert [m.id for m in written] == list(v1)
    assert report.contexts[1].content_sha256 == content_digest((m.role, m.content) for m in written)
    # The backup is a sibling folder holding every JSON file as it was.
    assert report.backup is not None
    assert_backup_of(folder, report.backup)


def assert_backup_of(folder: Path, backup: Path) -> None:
    assert backup.parent == folder.parent
    assert backup.name.startswith(f"{folder.name}.v1-backup-")
    assert sorted(p.name for p in backup.iterdir()) == sorted(p.name for p in folder.iterdir())
    for copy in backup.iterdir():
        assert copy.read_bytes() == (folder / copy.name).read_bytes()


@pytest.mark.anyio
async def test_a_second_run_changes_nothing(store: FileStore, folder: Path, data_dir: Path) -> None:
    first = await migrate(folder, store, progress=False)
    before = snapshot(data_dir)
    siblings = sorted(folder.parent.iterdir())
    again = await migrate(folder, store, progress=False)
    assert [c.status for c in again.contexts] == [ContextStatus.SKIPPED] * 3 + [
        ContextStatus.FAILED
    ]
    assert again.messages_migrated == 0
    assert again.backup is None  # nothing to write: no new backup either
    assert snapshot(data_dir) == before
    assert sorted(folder.parent.iterdir()) == siblings
    # Repairing the damaged file and running again migrates just that one, and the
    # backup of the changed folder is a new one.
    shutil.copy2(FOLDER / f"{AB}.json", folder / f"{CUT}.json")
    data = json.loads((folder / f"{CUT}.json").read_text())
    data["id"] = CUT
    (folder / f"{CUT}.json").write_text(json.dumps(data))
    third = await migrate(folder, store, progress=False)
    assert [c.status for c in third.contexts][3] is ContextStatus.MIGRATED
    assert third.backup is not None
    assert third.backup != first.backup


@pytest.mark.anyio
async def test_a_dry_run_writes_nothing(store: FileStore, folder: Path, data_dir: Path) -> None:
    before = snapshot(folder.parent)
    report = await migrate(folder, store, dry_run=True, progress=False)
    assert [c.status for c in report.contexts][:3] == [
        ContextStatus.MIGRATED,
        ContextStatus.MIGRATED,
        ContextStatus.PARTIAL,
    ]
    assert snapshot(folder.parent) == before
    assert await store.list_contexts() == []


class PromptDroppingStore:
    """The real FileStore, except that it forgets branch system prompts on create."""

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create_context(self, metadata: ContextMetadata) -> ContextMetadata:
        branches = {
            n: b.model_copy(update={"system_prompt": None}) for n, b in metadata.branches.items()
        }
        return await self.inner.create_context(metadata.model_copy(update={"branches": branches}))


@pytest.mark.anyio
async def test_validation_catches_a_lost_branch_prompt(store: FileStore) -> None:
    report = await migrate(
        FOLDER / f"{AB}.json", PromptDroppingStore(store), progress=False, backup=False
    )
    (result,) = report.contexts
    assert result.status is ContextStatus.FAILED
    assert any("does not carry its v1 system prompt" in p for p in result.problems)
    assert await store.list_contexts() == []  # removed again, so a later run starts afresh


def test_the_command_migrates_a_folder(
    capsys: pytest.CaptureFixture[str], data_dir: Path, folder: Path
) -> None:
    code = main(["--data-dir", str(data_dir), "migrate", str(folder)])
    out, _ = capsys.readouterr()
    assert code == 1  # the damaged file
    assert "(context-files): 4 context(s); 2 migrated, 1 partial, 0 skipped, 1 failed" in out
    assert f"{folder / f'{CUT}.json'} is not JSON" in out
    assert main(["--data-dir", str(data_dir), "show", AB, "--branch", "main"]) == 0
    out, _ = capsys.readouterr()
    assert "Wellington" in out
    assert "system prompt: You are a patient geography tutor." in out
    assert "other branches: terse (see one with --branch NAME)" in out
    assert main(["--data-dir", str(data_dir), "export", AB, "-f", "markdown"]) == 0
    out, _ = capsys.readouterr()
    assert "## System prompt\n\nAnswer in five words or fewer." in out  # the active branch
    assert main(["migrate", "--help"]) == 0
    out, _ = capsys.readouterr()
    assert "folder" in out
    assert os.listdir(data_dir)
