"""Stand-ins for unreadable messages in tool rounds and in chains of damaged files.

A repaired branch must be one a provider takes: every tool result answers a call of
the assistant message before it, and every call is answered. Real files, real
FileStores; the requests are built by the providers' own converters (no network).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from cm_notebook._conversation import for_request
from cm_notebook.model import ContextMetadata, Message, ToolCall, ToolCallStatus
from cm_notebook.providers._anthropic_request import to_anthropic_messages
from cm_notebook.providers._convert import to_openai_messages
from cm_notebook.store import FileStore, StoreWarning

pytestmark = pytest.mark.anyio


async def tool_round(data_dir: Path, calls: int = 1) -> list[Message]:
    """user, assistant calling ``calls`` tools, their results one after another, a final
    answer; the journal gone and the snapshot empty (an index to rebuild)."""
    u = Message(role="user", content="q")
    a = Message(
        role="assistant",
        parent_id=u.id,
        tool_calls=[
            ToolCall(id=f"call_{n}", name="f", status=ToolCallStatus.DONE)
            for n in range(1, calls + 1)
        ],
    )
    messages = [u, a]
    for n in range(1, calls + 1):
        messages.append(
            Message(role="tool", parent_id=messages[-1].id, content="r", tool_call_id=f"call_{n}")
        )
    messages.append(Message(role="assistant", parent_id=messages[-1].id, content="final"))
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        for message in messages:
            await store.append_message("c1", message, branch="main")
    folder = data_dir / "contexts" / "c1"
    (folder / "message_index.journal").unlink()
    (folder / "message_index.json").write_text("{}")
    return messages


def damage(data_dir: Path, message: Message, before: bytes) -> None:
    """Cut ``message``'s file short just before the field ``before``."""
    file = data_dir / "contexts" / "c1" / "messages" / f"{message.id}.json"
    whole = file.read_bytes()
    file.write_bytes(whole[: whole.index(before)])


async def repaired_path(data_dir: Path, last: str) -> list[Message]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        async with FileStore(data_dir) as store:
            report = await store.check("c1", repair=True)
            assert report.ok, str(report)
            meta = await store.get_metadata("c1")
            [name] = [name for name, branch in meta.branches.items() if branch.head == last]
            return await store.get_messages("c1", await store.path("c1", branch=name))


def assert_providers_take(path: list[Message]) -> None:
    sent = for_request(path, None)
    openai = to_openai_messages(sent)
    calls: set[str] = set()
    for item in openai:
        if item["role"] == "tool":
            assert item["tool_call_id"] in calls, openai  # answers a call just made
            calls.discard(item["tool_call_id"])
        else:
            assert not calls, openai  # every call answered before the next turn
            calls = {call["id"] for call in item.get("tool_calls", [])}
    _, anthropic = to_anthropic_messages(sent)  # raises on a result that answers nothing
    uses: set[str] = set()
    for turn in anthropic:
        blocks: list[dict[str, Any]] = turn["content"]
        if turn["role"] == "user":
            results = {b["tool_use_id"] for b in blocks if b["type"] == "tool_result"}
            assert results == uses, anthropic
            uses = set()
        else:
            assert not uses, anthropic
            uses = {b["id"] for b in blocks if b["type"] == "tool_use"}
    assert not uses


async def test_a_damaged_assistant_that_called_tools_gets_the_calls_its_results_answer(
    data_dir: Path,
) -> None:
    u, a, t, f = await tool_round(data_dir)
    damage(data_dir, a, b'"content"')  # its parent and role still read, its calls lost
    path = await repaired_path(data_dir, f.id)
    assert [m.id for m in path] == [u.id, a.id, t.id, f.id]
    stand_in = path[1]
    assert stand_in.role == "assistant"
    assert [(c.id, c.name, c.status) for c in stand_in.tool_calls] == [
        ("call_1", "unknown_tool", ToolCallStatus.DONE)
    ]
    assert_providers_take(path)


async def test_an_assistant_stand_in_makes_every_call_its_results_in_a_row_answer(
    data_dir: Path,
) -> None:
    messages = await tool_round(data_dir, calls=3)
    # Cut short in its second call: the names of the first two still read.
    file = data_dir / "contexts" / "c1" / "messages" / f"{messages[1].id}.json"
    whole = file.read_bytes()
    file.write_bytes(whole[: whole.index(b'"arguments"', whole.index(b'"call_2"'))])
    path = await repaired_path(data_dir, messages[-1].id)
    assert [m.id for m in path] == [m.id for m in messages]
    assert [(c.id, c.name) for c in path[1].tool_calls] == [
        ("call_1", "f"),
        ("call_2", "f"),
        ("call_3", "unknown_tool"),
    ]
    assert_providers_take(path)


async def test_a_damaged_tool_result_keeps_the_call_id_still_readable(data_dir: Path) -> None:
    u, a, t, f = await tool_round(data_dir)
    damage(data_dir, t, b'"status"')  # cut short after its tool_call_id
    path = await repaired_path(data_dir, f.id)
    assert [m.id for m in path] == [u.id, a.id, t.id, f.id]
    assert (path[2].role, path[2].tool_call_id) == ("tool", "call_1")
    assert_providers_take(path)


async def test_a_damaged_tool_result_whose_call_is_unknown_stands_in_as_user_text(
    data_dir: Path,
) -> None:
    u, a, t, f = await tool_round(data_dir)
    damage(data_dir, t, b'"content"')  # its role reads, not the call it answered
    path = await repaired_path(data_dir, f.id)
    assert [m.id for m in path] == [u.id, a.id, t.id, f.id]
    assert (path[2].role, path[2].tool_call_id) == ("user", None)
    assert "could not be read" in path[2].content
    assert_providers_take(path)


async def test_two_damaged_messages_in_a_row_both_get_stand_ins_in_one_chain(
    data_dir: Path,
) -> None:
    u, a, t, f = await tool_round(data_dir)
    damage(data_dir, a, b'"content"')
    damage(data_dir, t, b'"status"')
    path = await repaired_path(data_dir, f.id)
    assert [(m.id, m.parent_id) for m in path] == [
        (u.id, None),
        (a.id, u.id),
        (t.id, a.id),
        (f.id, t.id),
    ]
    assert [m.metadata.model_dump().get("unreadable_file") for m in path[1:3]] == [
        f"damaged/{a.id}.json",
        f"damaged/{t.id}.json",
    ]
    assert [c.id for c in path[1].tool_calls] == ["call_1"]
    assert_providers_take(path)


async def test_damaged_messages_whose_parents_loop_still_get_stand_ins(data_dir: Path) -> None:
    _u, a, t, f = await tool_round(data_dir)
    damage(data_dir, t, b'"content"')  # says its parent is a
    file = data_dir / "contexts" / "c1" / "messages" / f"{a.id}.json"
    file.write_bytes(f'{{"id": "{a.id}", "parent_id": "{t.id}", "role": "assi'.encode())
    path = await repaired_path(data_dir, f.id)
    # The loop is cut before the message the readable reply goes back to: one chain.
    assert [(m.id, m.parent_id) for m in path] == [(a.id, None), (t.id, a.id), (f.id, t.id)]
    assert all("could not be read" in m.content for m in path[:-1])
    assert_providers_take(path)
