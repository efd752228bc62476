"""Migration from v1: which tool message answers which call (repeated call ids, v1's
older function calling, results that answer no call), and that the migrated
conversation can be sent on to every provider."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli_process import cli

from cm_notebook.migrate import ConvertedContext, check_converted, convert, parse_v1
from cm_notebook.migrate._toolcalls import NO_RESULT_REASON
from cm_notebook.model import Message, ToolCallStatus
from cm_notebook.providers._anthropic_request import to_anthropic_messages
from cm_notebook.providers._convert import to_openai_messages
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def call(call_id: str, city: str, **extra: Any) -> dict[str, Any]:
    arguments = json.dumps({"city": city})
    fn = {"name": "weather", "arguments": arguments}
    return {"id": call_id, "type": "function", "function": fn, **extra}


# Every turn numbers its calls from call_0, as some v1 front ends did; Oslo's call was
# never answered.
REPEATED_IDS = {
    "id": "dupcalls",
    "title": "weather three times",
    "messages": [
        {"id": "u1", "role": "user", "content": "Weather in Paris?"},
        {"id": "a1", "role": "assistant", "content": "", "tool_calls": [call("call_0", "Paris")]},
        {"id": "t1", "role": "tool", "tool_call_id": "call_0", "content": "Paris: 18C"},
        {"id": "a2", "role": "assistant", "content": "18C in Paris."},
        {"id": "u2", "role": "user", "content": "And Rome?"},
        {"id": "a3", "role": "assistant", "content": "", "tool_calls": [call("call_0", "Rome")]},
        {"id": "t2", "role": "tool", "tool_call_id": "call_0", "content": "Rome: 24C"},
        {"id": "u3", "role": "user", "content": "And Oslo?"},
        {
            "id": "a4",
            "role": "assistant",
            "content": "",
            "tool_calls": [call("call_0", "Oslo", status="pending")],
        },
    ],
}

FUNCTION_CALLING = {
    "id": "legacy",
    "title": "function calling",
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "weather", "arguments": '{"city": "Paris"}'},
        },
        {"role": "function", "name": "weather", "content": "18C"},
        {"role": "assistant", "content": "It is 18C."},
    ],
}

ORPHAN = {
    "id": "orphan",
    "messages": [
        {"id": "u1", "role": "user", "content": "do it"},
        {"id": "a1", "role": "assistant", "content": "", "tool_calls": [call("c1", "Rome")]},
        {"id": "t1", "role": "tool", "tool_call_id": "c1", "content": "Rome: 24C"},
        {"id": "t2", "role": "tool", "tool_call_id": "nobody", "content": "orphan result"},
        {"id": "a2", "role": "assistant", "content": "ok"},
    ],
}


def converted(record: dict[str, Any]) -> ConvertedContext:
    conv = convert(parse_v1([record]).contexts[0])
    assert check_converted(conv) == []
    return conv


def by_id(conv: ConvertedContext) -> dict[str, Message]:
    return {m.id: m for m in conv.messages}


def sendable(messages: list[Message]) -> None:
    """Both request formats accept the conversation: every result follows its call."""
    to_anthropic_messages(messages)  # raises for a tool message it cannot place
    asked: set[str] = set()
    for item in to_openai_messages(messages):
        asked.update(c["id"] for c in item.get("tool_calls", []))
        if item["role"] == "tool":
            assert item["tool_call_id"] in asked


def test_repeated_call_ids_each_keep_their_own_result() -> None:
    conv = converted(REPEATED_IDS)
    messages = by_id(conv)
    paris, rome, oslo = (messages[i].tool_calls[0] for i in ("a1", "a3", "a4"))
    assert (paris.arguments, paris.status, paris.result) == (
        {"city": "Paris"},
        ToolCallStatus.DONE,
        "Paris: 18C",
    )
    assert (rome.arguments, rome.status, rome.result) == (
        {"city": "Rome"},
        ToolCallStatus.DONE,
        "Rome: 24C",
    )
    assert (oslo.status, oslo.result, oslo.reason) == (
        ToolCallStatus.FAILED,
        None,
        NO_RESULT_REASON,
    )
    # Ids unique in the context, each tool message carrying its own call's.
    assert paris.id == "call_0"
    assert len({paris.id, rome.id, oslo.id}) == 3
    assert rome.id.startswith("call_0_")
    assert oslo.id.startswith("call_0_")
    assert messages["t1"].tool_call_id == paris.id
    assert messages["t2"].tool_call_id == rome.id
    assert (messages["t2"].metadata.model_extra or {})["v1_tool_call_id"] == "call_0"
    kept = (messages["a3"].metadata.model_extra or {})["v1_tool_call_extra"]
    assert kept[rome.id]["v1_id"] == "call_0"
    assert any("'call_0' is used by 3 calls" in note for note in conv.notes)
    assert convert(parse_v1([REPEATED_IDS]).contexts[0]).messages == conv.messages


def test_function_calling_becomes_a_tool_call_and_its_result() -> None:
    conv = converted(FUNCTION_CALLING)
    asking, answer = conv.messages[1], conv.messages[2]
    assert len(asking.tool_calls) == 1
    made = asking.tool_calls[0]
    assert (made.name, made.arguments, made.status, made.result) == (
        "weather",
        {"city": "Paris"},
        ToolCallStatus.DONE,
        "18C",
    )
    assert (answer.role, answer.tool_call_id, answer.content) == ("tool", made.id, "18C")
    assert (answer.metadata.model_extra or {})["v1_role"] == "function"
    assert conv.problems == []
    sendable(conv.messages)


def test_a_result_that_answers_no_call_is_kept_reported_and_sendable() -> None:
    conv = converted(ORPHAN)
    messages = by_id(conv)
    orphan = messages["t2"]
    assert (orphan.role, orphan.content, orphan.tool_call_id) == ("user", "orphan result", None)
    assert orphan.metadata.model_extra == {"v1_role": "tool", "v1_tool_call_id": "nobody"}
    assert messages["t1"].tool_call_id == "c1"
    assert len(conv.problems) == 1
    assert "message #3 is a tool result for call 'nobody'" in conv.problems[0]
    sendable(conv.messages)


def test_migrated_tool_conversations_can_be_continued(tmp_path: Path) -> None:
    source = tmp_path / "contexts.json"
    source.write_text(json.dumps([REPEATED_IDS, FUNCTION_CALLING, ORPHAN]))
    data = tmp_path / "data"
    run = cli(data, "migrate", str(source))
    assert run.returncode == 0, run.stderr
    assert "migrated 'weather three times'" in run.stdout
    assert "migrated 'function calling'" in run.stdout
    assert "partial  'Untitled' (orphan)" in run.stdout
    for context in ("dupcalls", "legacy", "orphan"):
        fake = ScriptedProvider().reply("ok")
        with ContextSession.open(context, data_dir=data, provider=fake) as session:
            session.send("go on").result(10)
        sent = fake.requests[0].messages
        sendable(sent)
        if context == "dupcalls":
            results = [m.content for m in sent if m.role == "tool"]
            assert results[:2] == ["Paris: 18C", "Rome: 24C"]
            assert "Rome: 24C" not in results[2]  # Oslo's call has no result
