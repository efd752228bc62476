"""What OpenAI-compatible servers answer besides well-formed chunks, over real HTTP: error
events the SDK does not raise (vLLM's bare error object, ``event: error`` without an
``error`` key), and one whole ``chat.completion`` from a server that ignores
``stream: true``; and a 400 that refuses ``stream_options``. A real local server
sends the bytes; nothing of the provider is replaced.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from provider_streams import run, text_of
from wire_server import Behaviour, WireHandler, WireServer, chunk

from cm_notebook.errors import (
    PermanentProviderError,
    ProviderSetupError,
    TransientProviderError,
)
from cm_notebook.providers.base import (
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallRequest,
    Usage,
)
from cm_notebook.providers.openai import OpenAIProvider

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]


def gpt(server: WireServer, **options: Any) -> OpenAIProvider:
    return OpenAIProvider("m", base_url=f"{server.url}/v1", timeout=5, **options)


def events_then_end(*events: bytes) -> Behaviour:
    """Some text, then ``events`` (raw SSE bytes), then the end of the body."""

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        handler.event(chunk({"role": "assistant", "content": "Hel"}))
        for event in events:
            handler.raw(event)
        handler.end_stream()

    return behave


# -- error events without an "error" key -----------------------------------------------

VLLM_TOO_LONG = (
    b'data: {"object": "error", "message": "This model\'s maximum context length is 4096 '
    b'tokens. However, you requested 5000 tokens.", "type": "BadRequestError", '
    b'"param": null, "code": 400}\n\n'
)


async def test_a_bare_error_object_in_the_stream_fails_with_its_message_by_its_code(
    wire: WireServer,
) -> None:
    wire.default = events_then_end(VLLM_TOO_LONG)
    events, failure = await run(gpt(wire))
    assert text_of(events) == "Hel"
    assert isinstance(failure, PermanentProviderError)  # a 400: not retried
    assert "maximum context length is 4096 tokens" in str(failure)
    assert "stream cut" not in str(failure)


@pytest.mark.parametrize(
    ("data", "kind", "said"),
    [
        (
            b'{"message": "quota exceeded for this project", "code": 429}',
            TransientProviderError,
            "rate limited (HTTP 429): quota exceeded for this project",
        ),
        (
            b'{"message": "bad tool schema", "type": "invalid_request_error"}',
            PermanentProviderError,
            "rejected: bad tool schema",
        ),
        (
            b'{"message": "the worker died"}',
            TransientProviderError,
            "error mid-reply: the worker died",
        ),
    ],
)
async def test_a_named_error_event_without_an_error_key_fails_with_its_message(
    wire: WireServer, data: bytes, kind: type[Exception], said: str
) -> None:
    wire.default = events_then_end(b"event: error\ndata: " + data + b"\n\n")
    events, failure = await run(gpt(wire))
    assert text_of(events) == "Hel"
    assert type(failure) is kind
    assert said in str(failure)
    assert "stream cut" not in str(failure)


# -- a whole completion instead of a stream --------------------------------------------


def whole_completion(message: dict[str, Any], **fields: Any) -> Behaviour:
    """One ``chat.completion`` JSON body, as a server that ignores ``stream`` sends."""
    answer = {
        "id": "chatcmpl-whole",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, **fields}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13},
    }

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.send_body(200, "application/json", json.dumps(answer).encode())

    return behave


async def test_a_whole_completion_instead_of_a_stream_is_the_reply(wire: WireServer) -> None:
    wire.default = whole_completion(
        {"content": "A complete answer.", "reasoning_content": "Think first."},
        finish_reason="length",
    )
    events, failure = await run(gpt(wire))
    assert failure is None
    assert len(wire.requests) == 1
    assert events == [
        ReasoningDelta("Think first.", "reasoning_content"),
        TextDelta("A complete answer."),
        Usage(input_tokens=5, output_tokens=8),
        Finish("length", "chatcmpl-whole"),
    ]


async def test_a_whole_completion_with_tool_calls_gives_each_call(wire: WireServer) -> None:
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    # No finish reason: the body came whole, so the reply ended (with its tool calls).
    wire.default = whole_completion({"content": None, "tool_calls": calls})
    events, failure = await run(gpt(wire, include_usage=False))
    assert failure is None
    assert events == [
        ToolCallRequest("c1", "f", '{"a": 1}'),
        ToolCallRequest("c2", "g", "{}"),
        Usage(input_tokens=5, output_tokens=8),
        Finish("tool_calls", "chatcmpl-whole"),
    ]


# -- a server that refuses stream_options ----------------------------------------------


def refuses_stream_options(handler: WireHandler, body: dict[str, Any]) -> None:
    if "stream_options" in body:
        error = {
            "message": "Unrecognized request argument supplied: stream_options",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        handler.send_body(400, "application/json", json.dumps({"error": error}).encode())
        return
    handler.start_stream()
    handler.event(chunk({"content": "fine"}))
    handler.event(chunk({}, "stop"))
    handler.event("[DONE]")
    handler.end_stream()


async def test_a_refused_stream_options_says_how_to_leave_it_out(wire: WireServer) -> None:
    wire.default = refuses_stream_options
    _, failure = await run(gpt(wire))
    assert isinstance(failure, ProviderSetupError)  # every send would fail the same way
    message = str(failure)
    assert "Unrecognized request argument supplied: stream_options" in message
    assert "provider_options={'include_usage': False}" in message
    # The option it names is the one that works, as a session passes provider_options.
    provider = OpenAIProvider.from_spec(
        "m", base_url=f"{wire.url}/v1", timeout=5, include_usage=False
    )
    events, failure = await run(provider)
    assert failure is None
    assert text_of(events) == "fine"


async def test_an_error_event_after_the_finish_reason_keeps_the_whole_reply(
    wire: WireServer,
) -> None:
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        handler.event(chunk({"content": "Whole."}))
        handler.event(chunk({}, "stop"))
        handler.raw(b'event: error\ndata: {"message": "usage unavailable", "code": 500}\n\n')
        handler.end_stream()

    wire.default = behave
    events, failure = await run(gpt(wire))
    assert failure is None
    assert text_of(events) == "Whole."
    assert events[-1] == Finish("stop", "chatcmpl-wire")
