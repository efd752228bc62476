"""Stream fields as servers other than the reference ones fill them, against a real local
server that sends them byte for byte: an empty string where a finish or stop reason is
not yet known (servers whose field is a plain string send ``""``, never ``null``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from provider_streams import run, text_of
from wire_server import WireHandler, WireServer, chunk, usage_chunk

from cm_notebook.model import MessageStatus
from cm_notebook.providers.anthropic import AnthropicProvider
from cm_notebook.providers.base import Finish, ToolCallRequest, Usage
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]


def empty_reasons(pieces: list[str], *, tool: bool = False, usage_every_chunk: bool = False) -> Any:
    """``pieces`` (and a tool call) each with ``"finish_reason": ""``, then the real one."""
    usage = {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 9}

    def with_usage(item: dict[str, Any]) -> dict[str, Any]:
        return {**item, "usage": usage} if usage_every_chunk else item

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        for piece in pieces:
            handler.event(with_usage(chunk({"content": piece}, "")))
        if tool:
            call = {"index": 0, "id": "call_1", "type": "function"}
            call["function"] = {"name": "lookup", "arguments": '{"q": 1}'}
            handler.event(with_usage(chunk({"tool_calls": [call]}, "")))
        handler.event(with_usage(chunk({}, "tool_calls" if tool else "stop")))
        if not usage_every_chunk:
            handler.event(usage_chunk(usage))
        handler.event("[DONE]")
        handler.end_stream()

    return behave


PIECES = ["The answer", " is 42, because", " of reasons."]


@pytest.mark.parametrize("usage_every_chunk", [False, True])
@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("tool", [False, True])
async def test_an_empty_openai_finish_reason_does_not_end_the_reply(
    wire: WireServer, tool: bool, include_usage: bool, usage_every_chunk: bool
) -> None:
    wire.default = empty_reasons(PIECES, tool=tool, usage_every_chunk=usage_every_chunk)
    provider = OpenAIProvider(
        "m", base_url=f"{wire.url}/v1", timeout=5.0, include_usage=include_usage
    )
    events, error = await run(provider)
    assert error is None
    assert text_of(events) == "".join(PIECES)
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert calls == ([ToolCallRequest("call_1", "lookup", '{"q": 1}')] if tool else [])
    assert events[-1] == Finish("tool_calls" if tool else "stop", "chatcmpl-wire")
    if include_usage:
        assert events[-2] == Usage(5, 3)


async def test_a_session_stores_the_whole_reply_of_a_server_sending_empty_reasons(
    wire: WireServer, data_dir: Path
) -> None:
    wire.default = empty_reasons(PIECES, usage_every_chunk=True)
    session = ContextSession.create(
        provider="openai:m",
        provider_options={"base_url": f"{wire.url}/v1", "timeout": 5.0},
        data_dir=data_dir,
        retry=RetryPolicy(initial_delay=0.01, multiplier=1.0, max_attempts=2, jitter=0.0),
    )
    try:
        reply = await session.send("Hi")
    finally:
        await session.aclose()
    assert reply.status is MessageStatus.COMPLETE
    assert reply.content == "".join(PIECES)
    assert reply.metadata.finish_reason == "stop"
    assert len(wire.requests) == 1


def anthropic_stream(stop_reasons: list[str | None]) -> Any:
    """A one-block text reply whose message_delta events carry ``stop_reasons``."""
    message = {
        "id": "msg_wire",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [],
        "stop_reason": "",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    text = {"type": "text_delta", "text": "Paris."}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": text},
        {"type": "content_block_stop", "index": 0},
    ]
    for reason in stop_reasons:
        delta = {"stop_reason": reason, "stop_sequence": None}
        events.append({"type": "message_delta", "delta": delta, "usage": {"output_tokens": 2}})
    events.append({"type": "message_stop"})

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        for event in events:
            handler.event(event, name=event["type"])
        handler.end_stream()

    return behave


@pytest.mark.parametrize(
    ("stop_reasons", "finish"),
    [([""], "stop"), (["max_tokens", ""], "length"), (["max_tokens", None], "length")],
)
async def test_an_empty_anthropic_stop_reason_is_no_reason(
    wire: WireServer, stop_reasons: list[str | None], finish: str
) -> None:
    wire.default = anthropic_stream(stop_reasons)
    provider = AnthropicProvider("claude-test", api_key="test-key", base_url=wire.url, timeout=5)
    events, error = await run(provider)
    assert error is None
    assert text_of(events) == "Paris."
    assert events[-1] == Finish(finish, "msg_wire")
