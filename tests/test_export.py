"""Export to JSON and Markdown, and JSON import back into a store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from store_helpers import FailingStore

from cm_notebook._export_markdown import markdown_of
from cm_notebook.errors import (
    BranchNotFoundError,
    ContextExistsError,
    ContextNotFoundError,
    InvalidInputError,
)
from cm_notebook.export import (
    EXPORT_FORMAT,
    ExportDocument,
    export_context,
    import_document,
    is_export,
    is_unfinished_import,
    parse_export,
    to_json,
    to_markdown,
)
from cm_notebook.model import (
    ContextMetadata,
    Message,
    MessageMetadata,
    MessageStatus,
    ProviderSettings,
    TokenUsage,
    ToolCall,
    ToolCallStatus,
)
from cm_notebook.render import code_fence
from cm_notebook.store import FileStore

pytestmark = pytest.mark.anyio

CID = "ctx-rich"


async def build_rich_context(store: FileStore) -> None:
    """A context with tool calls, a forked branch, an empty branch and odd content."""
    await store.create_context(
        ContextMetadata(
            id=CID,
            title="Rich 🎯 context",
            system_prompt="Be brief.",
            tags=["demo", "export"],
            provider=ProviderSettings(spec="openai:gpt-4o-mini", params={"temperature": 0.2}),
            extra={"source": "test", "nested": {"n": 1}},
        )
    )
    call = ToolCall(
        id="call-1",
        name="weather",
        arguments={"city": "Oslo"},
        status=ToolCallStatus.DONE,
        result="```\n-3 °C\n```",
    )
    messages = [
        Message(id="u1", role="user", content="Weather in Oslo?"),
        Message(
            id="a1",
            parent_id="u1",
            role="assistant",
            tool_calls=[call],
            metadata=MessageMetadata(
                provider="openai",
                model="gpt-4o-mini",
                usage=TokenUsage(input_tokens=12, output_tokens=7),
                custom_key="kept",  # extra keys are kept
            ),
        ),
        Message(id="t1", parent_id="a1", role="tool", content="-3 °C", tool_call_id="call-1"),
        Message(id="a2", parent_id="t1", role="assistant", content="Cold: **-3 °C**. ❄️"),
    ]
    for message in messages:
        await store.append_message(CID, message, branch="main")
    await store.create_branch(
        CID,
        "retry",
        head="t1",
        forked_from="a2",
        description="regenerated reply",
        system_prompt="Be briefer.",
        provider=ProviderSettings(spec="scripted:other"),
        params={"temperature": 0.9},
    )
    await store.append_message(
        CID,
        Message(
            id="a2b",
            parent_id="t1",
            role="assistant",
            content="Freez",
            status=MessageStatus.INTERRUPTED,
        ),
        branch="retry",
    )
    await store.create_branch(CID, "empty branch", head=None)
    await store.set_active_branch(CID, "retry")


@pytest.fixture
async def store(data_dir: Path) -> AsyncIterator[FileStore]:
    async with FileStore(data_dir) as opened:
        await build_rich_context(opened)
        yield opened


@pytest.fixture
async def other_store(tmp_path: Path) -> AsyncIterator[FileStore]:
    async with FileStore(tmp_path / "other") as opened:
        yield opened


def comparable(metadata: ContextMetadata) -> dict[str, Any]:
    """Metadata without what an import cannot keep: updated_at (the store stamps every
    write)."""
    data = metadata.model_dump(mode="json")
    del data["updated_at"]
    data["branches"] = dict(sorted(data["branches"].items()))
    return data


async def test_json_round_trip_keeps_the_whole_tree(
    store: FileStore, other_store: FileStore
) -> None:
    document = await export_context(store, CID)
    assert document.branch is None
    assert [m.id for m in document.messages] == ["u1", "a1", "t1", "a2", "a2b"]
    text = to_json(document)
    assert "Rich 🎯 context" in text  # UTF-8 kept, not \u-escaped
    assert json.loads(text)["format"] == EXPORT_FORMAT
    imported = await import_document(other_store, parse_export(text))
    assert imported.id == CID
    again = await export_context(other_store, CID)
    assert again.messages == document.messages
    assert comparable(again.metadata) == comparable(document.metadata)
    # In the same order: a branch that starts at the root, listed after a fork, stays
    # after it.
    assert list(document.metadata.branches) == ["main", "retry", "empty branch"]
    assert list(again.metadata.branches) == list(document.metadata.branches)
    assert again.metadata.active_branch == "retry"
    assert again.metadata.branches["retry"].forked_from == "a2"
    assert again.metadata.branches["retry"].system_prompt == "Be briefer."
    assert again.metadata.branches["retry"].params == {"temperature": 0.9}
    assert await other_store.path(CID, "retry") == ["u1", "a1", "t1", "a2b"]
    assert await other_store.path(CID, "empty branch") == []
    a1 = await other_store.get_message(CID, "a1")
    assert a1.metadata.model_extra == {"custom_key": "kept"}
    assert a1.tool_calls[0].result == "```\n-3 °C\n```"


async def test_import_refuses_a_taken_id_but_takes_a_new_one(store: FileStore) -> None:
    document = await export_context(store, CID)
    with pytest.raises(ContextExistsError):
        await import_document(store, document)
    copy = await import_document(store, document, context_id="ctx-copy")
    assert copy.id == "ctx-copy"
    assert (await export_context(store, "ctx-copy")).messages == document.messages
    with pytest.raises(InvalidInputError):
        await import_document(store, document, context_id="../../etc")


async def test_branch_export_stands_alone(store: FileStore, other_store: FileStore) -> None:
    document = await export_context(store, CID, branch="main")
    assert document.branch == "main"
    assert [m.id for m in document.messages] == ["u1", "a1", "t1", "a2"]
    assert list(document.metadata.branches) == ["main"]
    assert document.metadata.active_branch == "main"
    await import_document(other_store, parse_export(to_json(document)))
    assert await other_store.path(CID) == ["u1", "a1", "t1", "a2"]


async def test_export_errors(store: FileStore) -> None:
    with pytest.raises(BranchNotFoundError):
        await export_context(store, CID, branch="nope")
    with pytest.raises(ContextNotFoundError):
        await export_context(store, "ctx-missing")


def test_markdown_shows_a_result_under_its_call_when_no_turn_of_the_branch_does() -> None:
    call = ToolCall(
        id="c1", name="weather", arguments={}, status=ToolCallStatus.DONE, result="-3 °C"
    )
    asking = Message(role="assistant", content="", tool_calls=[call])
    answer = Message(role="tool", content="-3 °C", tool_call_id="c1", parent_id=asking.id)
    alone = markdown_of("t", "ctx", "main", [], "today", [], None, [asking])
    assert "Result:\n\n```\n-3 °C\n```" in alone
    answered = markdown_of("t", "ctx", "main", [], "today", [], None, [asking, answer])
    assert "Result:" not in answered
    assert answered.count("-3 °C") == 1


async def test_markdown(store: FileStore) -> None:
    document = await export_context(store, CID)
    text = to_markdown(document)
    assert text.startswith("# Rich 🎯 context\n")
    assert "- Context: `ctx-rich`" in text
    assert "- Branch: `retry` (other branches: `empty branch`, `main`)" in text
    assert "- Messages: 4" in text
    assert "- Tags: demo, export" in text
    # The branch's own prompt, not the context's.
    assert "## System prompt\n\nBe briefer." in text
    assert "## User · " in text
    assert "## Assistant (interrupted) · " in text
    assert "Freez" in text
    assert "Cold:" not in text  # that reply is on main, not on the active branch
    assert "**Tool call** `weather` (done)" in text
    assert '```json\n{\n  "city": "Oslo"\n}\n```' in text
    # The result is shown once, in the tool's turn that answers the call, not again
    # under the call.
    assert "*Result of tool call `call-1`*" in text
    assert "Result:" not in text
    # A text holding a ``` fence is wrapped in a longer one.
    assert code_fence("```\n-3 °C\n```") == "````\n```\n-3 °C\n```\n````"
    main = to_markdown(document, branch="main")
    assert "Cold: **-3 °C**. ❄️" in main
    assert "- Branch: `main`" in main
    assert "## System prompt\n\nBe brief.\n" in main
    with pytest.raises(BranchNotFoundError, match="has no branch 'x'"):
        to_markdown(document, branch="x")


def _document() -> dict[str, Any]:
    return ExportDocument(
        metadata=ContextMetadata(id="ctx-a"),
        messages=[Message(id="m1", role="user", content="hi")],
    ).model_dump(mode="json")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: {**d, "format": "something else"}, "not a cm_notebook export"),
        (lambda d: [d], "not a cm_notebook export"),
        (lambda d: {**d, "format_version": 99}, "newer cm_notebook"),
        (lambda d: {**d, "surprise": 1}, "surprise: Extra inputs are not permitted"),
        (
            lambda d: {**d, "messages": [{**d["messages"][0], "parent_id": "gone"}]},
            "comes before its parent 'gone'",
        ),
        (lambda d: {**d, "messages": d["messages"] * 2}, "appears twice"),
        (
            lambda d: {
                **d,
                "messages": [{**d["messages"][0], "metadata": {"scores": [1.0, float("nan")]}}],
            },
            r"messages\[0\]\['metadata'\]\['scores'\]\[1\] is NaN or an infinity",
        ),
        (
            # As text: Python's JSON reader takes the token Infinity.
            lambda d: json.dumps({**d, "metadata": {**d["metadata"], "extra": {"x": -1e999}}}),
            r"metadata\['extra'\]\['x'\] is NaN or an infinity",
        ),
        (
            lambda d: {**d, "messages": [{**d["messages"][0], "id": "../x"}]},
            "message id '../x' is not valid",
        ),
        (
            lambda d: {
                **d,
                "metadata": {
                    **d["metadata"],
                    "branches": {"main": {"name": "main", "head": "zz"}},
                },
            },
            "refers to missing message 'zz'",
        ),
    ],
)
def test_parse_export_rejects_bad_documents(change: Any, error: str) -> None:
    with pytest.raises(InvalidInputError, match=error):
        parse_export(change(_document()))


def _scored(score_under: str, scored: str) -> dict[str, Any]:
    # A question and its reply, and a score listed under ``score_under`` for ``scored``.
    return {
        **_document(),
        "messages": [
            {**_document()["messages"][0]},
            {**_document()["messages"][0], "id": "m2", "role": "assistant", "parent_id": "m1"},
        ],
        "scores": {score_under: {"message_id": scored, "thumbs": "up"}},
    }


@pytest.mark.parametrize(
    ("score_under", "scored", "error"),
    [
        ("m2", "m1", "the score listed under 'm2' is the score of 'm1'"),
        ("m1", "m1", "rates a user message; only replies"),
    ],
)
def test_parse_export_rejects_scores_that_are_not_their_message_s(
    score_under: str, scored: str, error: str
) -> None:
    parse_export(_scored("m2", "m2"))  # as an export writes it: accepted
    with pytest.raises(InvalidInputError, match=error):
        parse_export(_scored(score_under, scored))


def test_parse_export_accepts_text_bytes_and_dicts() -> None:
    data = _document()
    assert is_export(data)
    assert not is_export([data])
    text = json.dumps(data)
    assert parse_export(text) == parse_export(text.encode()) == parse_export(data)


async def test_failed_import_leaves_nothing_behind(
    store: FileStore, other_store: FileStore
) -> None:
    document = await export_context(store, CID)
    failing = FailingStore(other_store, fail_on="t1")
    with pytest.raises(OSError, match="No space left"):
        await import_document(failing, document)
    assert await other_store.list_contexts() == []


_DIE_WHILE_IMPORTING = """
import os, sys, anyio
from cm_notebook.export import import_document, parse_export
from cm_notebook.store import FileStore

class DyingStore:
    # The real store, but this process is killed (SIGKILL) as it appends message t1.
    def __init__(self, store): self._store = store
    def __getattr__(self, name): return getattr(self._store, name)
    async def append_message(self, context_id, message, **options):
        if message.id == "t1":
            os.kill(os.getpid(), 9)
        return await self._store.append_message(context_id, message, **options)

async def main():
    document = parse_export(open(sys.argv[2], encoding="utf-8").read())
    async with FileStore(sys.argv[1]) as store:
        # With a third argument, under that id (as `import --new-id` does).
        await import_document(DyingStore(store), document, context_id=(sys.argv[3:] or [None])[0])

anyio.run(main)
"""


async def test_an_import_killed_half_way_is_reported_and_replaced_by_the_next(
    store: FileStore, tmp_path: Path
) -> None:
    import sys

    from cm_notebook.cli import main

    document = await export_context(store, CID)
    exported = tmp_path / "export.json"
    exported.write_text(to_json(document), encoding="utf-8")
    target = tmp_path / "target"
    script = tmp_path / "die.py"
    script.write_text(_DIE_WHILE_IMPORTING)
    command = [sys.executable, str(script), str(target), str(exported)]
    killed = await anyio.run_process(command, check=False)
    assert killed.returncode == -9
    async with FileStore(target) as half:
        assert is_unfinished_import(await half.get_metadata(CID))
    # Not "ok": the check says so, and the next import of the file takes its place.
    assert await anyio.to_thread.run_sync(main, ["--data-dir", str(target), "check"]) == 1
    assert (
        await anyio.to_thread.run_sync(main, ["--data-dir", str(target), "import", str(exported)])
        == 0
    )
    async with FileStore(target) as done:
        imported = await export_context(done, CID)
        assert not is_unfinished_import(imported.metadata)
        assert imported.messages == document.messages
        assert comparable(imported.metadata) == comparable(document.metadata)
    assert await anyio.to_thread.run_sync(main, ["--data-dir", str(target), "check"]) == 0


async def test_a_killed_import_under_a_new_id_gets_advice_that_works(
    store: FileStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shlex
    import sys

    from cm_notebook.cli import main

    def cli(*argv: str) -> Any:
        return anyio.to_thread.run_sync(main, list(argv))

    document = await export_context(store, CID)
    exported = tmp_path / "export.json"
    exported.write_text(to_json(document), encoding="utf-8")
    target = tmp_path / "target"
    script = tmp_path / "die.py"
    script.write_text(_DIE_WHILE_IMPORTING)
    command = [sys.executable, str(script), str(target), str(exported), "cnew1"]
    killed = await anyio.run_process(command, check=False)
    assert killed.returncode == -9
    capsys.readouterr()
    assert await cli("--data-dir", str(target), "check") == 1
    err = capsys.readouterr().err
    assert "cnew1: its import never finished" in err
    # Importing the file again (with --new-id, as it was) would leave this one as it is:
    # the advice names the command that removes it, and that command works.
    advised = err.split("`")[1]
    assert advised == f"cm-notebook --data-dir {shlex.quote(str(target))} rm cnew1 --yes"
    assert await cli(*shlex.split(advised)[1:]) == 0
    assert await cli("--data-dir", str(target), "import", str(exported), "--new-id") == 0
    assert await cli("--data-dir", str(target), "check") == 0
    async with FileStore(target) as done:
        (left,) = await done.list_contexts()
    assert left.id != "cnew1"
    assert not is_unfinished_import(left)


_PAUSE_WHILE_IMPORTING = _DIE_WHILE_IMPORTING.replace(
    "os.kill(os.getpid(), 9)", "print('paused', flush=True); sys.stdin.readline()"
)


async def test_an_import_under_way_in_another_process_is_not_replaced(
    store: FileStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from cm_notebook.cli import main

    def cli(*argv: str) -> Any:
        return anyio.to_thread.run_sync(main, ["--data-dir", str(target), *argv])

    document = await export_context(store, CID)
    exported = tmp_path / "export.json"
    exported.write_text(to_json(document), encoding="utf-8")
    target = tmp_path / "target"
    script = tmp_path / "pause.py"
    script.write_text(_PAUSE_WHILE_IMPORTING)
    command = [sys.executable, str(script), str(target), str(exported)]
    async with await anyio.open_process(command) as first:
        assert first.stdout is not None
        assert first.stdin is not None
        assert (await first.stdout.receive()).startswith(b"paused")  # half-way, alive
        assert await cli("import", str(exported)) == 1
        assert "being imported by another process" in capsys.readouterr().err
        assert await cli("check") == 0  # not damage
        assert "being imported" in capsys.readouterr().out
        await first.stdin.send(b"go on\n")
        assert await first.wait() == 0
    assert await cli("check") == 0
    async with FileStore(target) as done:
        imported = await export_context(done, CID)
    assert not is_unfinished_import(imported.metadata)
    assert imported.messages == document.messages
