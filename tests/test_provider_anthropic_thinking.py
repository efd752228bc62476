"""Extended thinking from Anthropic-format servers (Claude, and the Anthropic endpoints of
DeepSeek or MiniMax), against a real local server: thinking text is kept apart from the
answer, and the signed (and redacted) thinking blocks go back, first and in order, with
the turn that called tools; the server here refuses the request otherwise, as
Anthropic's API does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from provider_streams import run, text_of
from wire_server import WireHandler, WireServer

from cm_notebook.model import Message, MessageMetadata, MessageStatus, ToolCall
from cm_notebook.providers._anthropic_request import build_request
from cm_notebook.providers._reasoning_back import reasoning_sent_back
from cm_notebook.providers.anthropic import AnthropicProvider
from cm_notebook.providers.base import (
    ChatRequest,
    Finish,
    ReasoningBlock,
    ReasoningDelta,
    ToolCallRequest,
)
from cm_notebook.session import ContextSession
from cm_notebook.tools import tool

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]

SIGNATURE = "EqQBCkgIARABGAIiQL2signature=="
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"
REFUSED = (
    "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
    "`tool_use`. When `thinking` is enabled, a final `assistant` message must start "
    "with a thinking block"
)


def message_start() -> dict[str, Any]:
    message = {
        "id": "msg_think",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1},
    }
    return {"type": "message_start", "message": message}


def thinking(index: int, pieces: list[str]) -> list[dict[str, Any]]:
    start = {"type": "thinking", "thinking": "", "signature": ""}
    events: list[dict[str, Any]] = [
        {"type": "content_block_start", "index": index, "content_block": start}
    ]
    for piece in pieces:
        delta = {"type": "thinking_delta", "thinking": piece}
        events.append({"type": "content_block_delta", "index": index, "delta": delta})
    delta = {"type": "signature_delta", "signature": SIGNATURE}
    events.append({"type": "content_block_delta", "index": index, "delta": delta})
    events.append({"type": "content_block_stop", "index": index})
    return events


def redacted(index: int) -> list[dict[str, Any]]:
    block = {"type": "redacted_thinking", "data": REDACTED}
    return [
        {"type": "content_block_start", "index": index, "content_block": block},
        {"type": "content_block_stop", "index": index},
    ]


def text(index: int, words: str) -> list[dict[str, Any]]:
    delta = {"type": "text_delta", "text": words}
    return [
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "text", "text": ""},
        },
        {"type": "content_block_delta", "index": index, "delta": delta},
        {"type": "content_block_stop", "index": index},
    ]


def tool_use(index: int) -> list[dict[str, Any]]:
    block = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}
    delta = {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}
    return [
        {"type": "content_block_start", "index": index, "content_block": block},
        {"type": "content_block_delta", "index": index, "delta": delta},
        {"type": "content_block_stop", "index": index},
    ]


def end(reason: str) -> list[dict[str, Any]]:
    delta = {"stop_reason": reason, "stop_sequence": None}
    return [
        {"type": "message_delta", "delta": delta, "usage": {"output_tokens": 80}},
        {"type": "message_stop"},
    ]


def stream(events: list[dict[str, Any]]) -> Any:
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        for event in [message_start(), *events]:
            handler.event(event, name=event["type"])
        handler.end_stream()

    return behave


THINK_THEN_CALL = [
    *thinking(0, ["The user wants the weather.", " I should call get_weather."]),
    *redacted(1),
    *tool_use(2),
    *end("tool_use"),
]


def provider_for(wire: WireServer) -> AnthropicProvider:
    return AnthropicProvider("claude-test", api_key="test-key", base_url=wire.url, timeout=5)


async def test_thinking_streams_apart_and_its_blocks_come_whole(wire: WireServer) -> None:
    wire.default = stream(THINK_THEN_CALL)
    events, error = await run(provider_for(wire))
    assert error is None
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == [
        "The user wants the weather.",
        " I should call get_weather.",
    ]
    assert [e for e in events if isinstance(e, ReasoningBlock)] == [
        ReasoningBlock(
            "thinking",
            thinking="The user wants the weather. I should call get_weather.",
            signature=SIGNATURE,
        ),
        ReasoningBlock("redacted_thinking", data=REDACTED),
    ]
    assert text_of(events) == ""
    assert next(e for e in events if isinstance(e, ToolCallRequest)).name == "get_weather"
    assert events[-1] == Finish("tool_calls", "msg_think")


def anthropic_tool_loop(handler: WireHandler, body: dict[str, Any]) -> None:
    """The request after the tool ran, as Anthropic's API judges it with thinking on."""
    turn = body["messages"][1]["content"]
    kinds = [block["type"] for block in turn]
    if kinds[:2] != ["thinking", "redacted_thinking"] or not turn[0].get("signature"):
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": REFUSED}}
        handler.send_body(400, "application/json", json.dumps(error).encode())
        return
    stream([*thinking(0, ["Sunny."]), *text(1, "It is sunny in Paris."), *end("end_turn")])(
        handler, body
    )


async def test_thinking_blocks_lead_the_turn_sent_back_with_tool_use(
    wire: WireServer, data_dir: Path
) -> None:
    @tool
    def get_weather(city: str) -> str:
        """Forecast for a city."""
        return f"{city}: sunny"

    wire.behaviours.extend([stream(THINK_THEN_CALL), anthropic_tool_loop])
    session = ContextSession.create(
        provider=provider_for(wire),
        data_dir=data_dir,
        tools=[get_weather],
        approval="auto",
    )
    try:
        reply = await session.send("Weather in Paris?")
        assert reply.status is MessageStatus.COMPLETE
        assert reply.content == "It is sunny in Paris."
        assert reply.metadata.reasoning == "Sunny."
        calling = session.history()[1]
        assert calling.metadata.reasoning == (
            "The user wants the weather. I should call get_weather."
        )
        sent = wire.requests[1][2]["messages"][1]["content"]
        assert sent == [
            {
                "type": "thinking",
                "thinking": "The user wants the weather. I should call get_weather.",
                "signature": SIGNATURE,
            },
            {"type": "redacted_thinking", "data": REDACTED},
            {
                "type": "tool_use",
                "id": "toolu_01",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ]
    finally:
        session.close()


async def test_a_thinking_delta_outside_a_thinking_block_is_malformed(wire: WireServer) -> None:
    delta = {"type": "thinking_delta", "thinking": "stray"}
    wire.default = stream(
        [
            *text(0, "Hi."),
            {"type": "content_block_delta", "index": 0, "delta": delta},
            *end("end_turn"),
        ]
    )
    _, error = await run(provider_for(wire))
    assert error is not None
    assert "not a thinking block" in str(error)


async def test_a_thinking_budget_in_a_session_is_added_to_max_tokens(
    wire: WireServer, data_dir: Path
) -> None:
    def judge(handler: WireHandler, body: dict[str, Any]) -> None:
        # As Anthropic's API: the budget must fit within max_tokens.
        if body["max_tokens"] <= body["thinking"]["budget_tokens"]:
            message = "`max_tokens` must be greater than `thinking.budget_tokens`."
            detail = {"type": "invalid_request_error", "message": message}
            error = {"type": "error", "error": detail}
            handler.send_body(400, "application/json", json.dumps(error).encode())
            return
        stream([*thinking(0, ["hm"]), *text(1, "Hi."), *end("end_turn")])(handler, body)

    wire.default = judge
    session = ContextSession.create(provider=provider_for(wire), data_dir=data_dir)
    try:
        reply = await session.send("Hi", thinking=2000)
        assert reply.content == "Hi."
        assert wire.requests[-1][2]["max_tokens"] == 3024
        # What is recorded is what was sent.
        assert reply.metadata.parameters["max_tokens"] == 3024
        given = await session.send("Again", thinking=2000, max_tokens=4000)
        assert given.content == "Hi."
        assert wire.requests[-1][2]["max_tokens"] == 4000
    finally:
        session.close()


def test_thinking_blocks_go_back_only_to_the_model_that_signed_them() -> None:
    block = {"type": "thinking", "thinking": "Call it.", "signature": SIGNATURE}
    call = ToolCall(id="toolu_01", name="get_weather", arguments={"city": "Paris"})

    def sent_to(model: str, written_by: tuple[str, str]) -> list[dict[str, Any]]:
        provider, author = written_by
        metadata = MessageMetadata(provider=provider, model=author, reasoning_blocks=[block])
        messages = [
            Message(role="user", content="Weather?"),
            Message(role="assistant", tool_calls=[call], metadata=metadata),
        ]
        request = ChatRequest(messages=messages, params={"model": model})
        content: list[dict[str, Any]] = build_request(
            request, model="claude-test", max_tokens=1024
        )["messages"][1]["content"]
        return content

    assert sent_to("claude-test", ("anthropic", "claude-test"))[0] == block
    assert sent_to("claude-other", ("anthropic", "claude-test"))[0]["type"] == "tool_use"
    assert sent_to("claude-test", ("openai", "claude-test"))[0]["type"] == "tool_use"


def test_a_reply_that_only_thought_is_not_sent_back_as_a_turn_of_thinking_alone() -> None:
    # The API refuses an assistant turn whose last block is thinking ("The final block
    # in an assistant message cannot be `thinking`"): a reply cut off while it thought
    # (max_tokens), with neither text nor tool calls, is left out, and the user's
    # messages around it become one turn, as the API merges them.
    block = {"type": "thinking", "thinking": "Let me see...", "signature": SIGNATURE}
    metadata = MessageMetadata(
        provider="anthropic", model="claude-test", reasoning_blocks=[block], reasoning="x"
    )
    messages = [
        Message(role="user", content="Hard question?"),
        Message(role="assistant", metadata=metadata),
        Message(role="user", content="Go on."),
    ]
    request = ChatRequest(messages=messages, params={"model": "claude-test"})
    sent = build_request(request, model="claude-test", max_tokens=1024)["messages"]
    assert [turn["role"] for turn in sent] == ["user"]
    assert [b["text"] for b in sent[0]["content"]] == ["Hard question?", "Go on."]
    # The request's hash covers what is sent: no thinking of that reply.
    assert reasoning_sent_back(messages[1], "anthropic", "claude-test") is None
    # With an answer, its thinking still leads it.
    answered = messages[1].model_copy(update={"content": "42."})
    request = ChatRequest(messages=[messages[0], answered], params={"model": "claude-test"})
    sent = build_request(request, model="claude-test", max_tokens=1024)["messages"]
    assert sent[1]["content"] == [block, {"type": "text", "text": "42."}]
