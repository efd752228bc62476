"""The OpenAI and Anthropic providers against a real local server that sends, byte for
byte, what misbehaving or unusual servers send: credentials echoed in error bodies,
partial usage reports, replies whose connection stays open after the last event,
events with fields missing, parallel tool calls under one index, and 200 answers that
are not event streams. No mocks: only the far end of the socket is scripted.
"""

from __future__ import annotations

import json
import traceback
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from provider_streams import request, run, text_of
from wire_server import (
    Behaviour,
    WireHandler,
    WireServer,
    chunk,
    openai_reply,
    usage_chunk,
)

from cm_notebook.errors import (
    CMError,
    PermanentProviderError,
    TransientProviderError,
)
from cm_notebook.events import ErrorReported
from cm_notebook.export import export_context, to_json, to_markdown
from cm_notebook.model import MessageStatus, TokenUsage
from cm_notebook.providers.anthropic import AnthropicProvider
from cm_notebook.providers.base import (
    Finish,
    ToolCallRequest,
    Usage,
)
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]

FAST = RetryPolicy(initial_delay=0.01, multiplier=1.0, max_attempts=3, jitter=0.0)
# Far longer than a reply that ends when its last event arrives; far shorter than the
# read timeout a reply that waits for the end of the body would sit through.
HANG_DEADLINE = 20.0
LONG_TIMEOUT = 120.0


# -- OpenAI behaviours -----------------------------------------------------------------


def openai_provider(server: WireServer, **options: Any) -> OpenAIProvider:
    options.setdefault("timeout", 5.0)
    return OpenAIProvider("m", base_url=f"{server.url}/v1", **options)


# -- Anthropic behaviours --------------------------------------------------------------


def anthropic_events(text: str) -> list[dict[str, Any]]:
    message: dict[str, Any] = {
        "id": "msg_wire",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    return [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 7},
        },
        {"type": "message_stop"},
    ]


def anthropic_reply(events: list[dict[str, Any]], then: str = "end") -> Behaviour:
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        for event in events:
            handler.event(event, name=event["type"])
        if then == "hold":
            handler.hold()
        else:
            handler.end_stream()

    return behave


def claude(server: WireServer, **options: Any) -> AnthropicProvider:
    options.setdefault("timeout", 5.0)
    return AnthropicProvider("claude-default", api_key="test-key", base_url=server.url, **options)


# -- 1. credentials in default_headers -------------------------------------------------


def files_holding(folder: Path, secret: str) -> list[Path]:
    # Paths only: a failing assertion must not print the secret.
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.parametrize(
    ("header", "template", "echoed"),
    [
        ("X-Api-Token", "{}", "{}"),
        ("api-key", "{}", "{}"),
        ("X-Functions-Key", "{}", "{}"),
        ("Authorization", "Token {}", "{}"),  # the server quotes the credential alone
        ("Cookie", "theme=dark; session={}", "{}"),
    ],
)
async def test_a_credential_header_echoed_by_the_server_is_stored_nowhere(
    wire: WireServer, data_dir: Path, header: str, template: str, echoed: str
) -> None:
    # Unique per case: remembered secrets last the process, so one case's token must
    # not be redacted thanks to another's. No known key shape: found by value only.
    token = f"tok{uuid.uuid4().hex}"

    def echo(handler: WireHandler, body: dict[str, Any]) -> None:
        error = {"message": f"Token {echoed.format(token)} may not use this model"}
        handler.send_body(403, "application/json", json.dumps({"error": error}).encode())

    wire.default = echo
    provider = openai_provider(wire, default_headers={header: template.format(token)})
    session = ContextSession.create(provider=provider, data_dir=data_dir, retry=FAST)
    try:
        with pytest.raises(CMError) as caught:
            await session.send("Hi")
        reply = session.history()[-1]
        shown = [e.message for e in session.events() if isinstance(e, ErrorReported)]
    finally:
        await session.aclose()
        await provider.aclose()
    document = await export_context(FileStore(data_dir), session.id)
    assert wire.requests[0][1][header.lower()] == template.format(token)  # it was used
    assert "permission denied" in str(caught.value)
    in_error = token in "".join(traceback.format_exception(caught.value))
    in_metadata = token in str(reply.metadata.error)
    in_signals = any(token in text for text in shown)
    in_export = token in to_json(document) or token in to_markdown(document)
    assert not in_error, "the header's credential is in the error"
    assert not in_metadata, "the header's credential is in the reply's metadata"
    assert not in_signals, "the header's credential is in an error signal"
    assert not in_export, "the header's credential is in the export"
    assert files_holding(data_dir, token) == []


# -- 2. partial usage reports ----------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 12, "total_tokens": 12}, Usage(12, 0)),
        ({"prompt_tokens": 12, "total_tokens": 19}, Usage(12, 7)),
        ({"prompt_tokens": 12.0, "completion_tokens": 5.0, "total_tokens": 17.0}, Usage(12, 5)),
        ({"completion_tokens": 5}, Usage(0, 5)),
        ({}, None),
        ({"prompt_tokens": "twelve", "completion_tokens": None}, None),
    ],
)
async def test_a_partial_usage_report_keeps_the_reply(
    wire: WireServer, usage: dict[str, Any], expected: Usage | None
) -> None:
    wire.default = openai_reply("The capital of France is Paris.", usage=usage)
    events, error = await run(openai_provider(wire))
    assert error is None
    assert text_of(events) == "The capital of France is Paris."
    assert events[-1] == Finish("stop")
    assert [e for e in events if isinstance(e, Usage)] == ([expected] if expected else [])
    assert len(wire.requests) == 1


async def test_a_session_keeps_a_reply_whose_usage_lacks_the_output_count(
    wire: WireServer, data_dir: Path
) -> None:
    wire.default = openai_reply("Paris.", usage={"prompt_tokens": 12, "total_tokens": 12})
    session = ContextSession.create(
        provider="openai:m",
        provider_options={"base_url": f"{wire.url}/v1", "timeout": 5.0},
        data_dir=data_dir,
        retry=FAST,
    )
    try:
        reply = await session.send("Capital of France?")
    finally:
        await session.aclose()
    assert reply.status is MessageStatus.COMPLETE
    assert reply.content == "Paris."
    assert reply.metadata.usage == TokenUsage(input_tokens=12, output_tokens=0)
    assert len(wire.requests) == 1


async def test_usage_reported_before_the_finish_reason_does_not_end_the_reply(
    wire: WireServer,
) -> None:
    # Servers that report usage on every chunk: the reply's usage is the last one.
    early = usage_chunk({"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3})
    wire.default = openai_reply(
        "Paris.", before=[early], usage={"prompt_tokens": 3, "completion_tokens": 2}
    )
    events, error = await run(openai_provider(wire))
    assert error is None
    assert text_of(events) == "Paris."
    assert events[-2:] == [Usage(3, 2), Finish("stop")]


# -- 3. replies whose connection stays open after the last event -----------------------


@pytest.mark.parametrize("include_usage", [True, False])
async def test_an_openai_reply_ends_at_its_last_chunk_without_done(
    wire: WireServer, include_usage: bool
) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    wire.default = openai_reply("Paris.", usage=usage if include_usage else None, then="hold")
    provider = openai_provider(wire, timeout=LONG_TIMEOUT, include_usage=include_usage)
    with anyio.fail_after(HANG_DEADLINE):  # the bug: held until the read timeout
        events, error = await run(provider)
    assert error is None
    assert text_of(events) == "Paris."
    expected = [Usage(3, 2), Finish("stop")] if include_usage else [Finish("stop")]
    assert events[-len(expected) :] == expected
    # The response was closed, not left to the pool half read: the server sees it go.
    assert await anyio.to_thread.run_sync(wire.client_closed.wait, HANG_DEADLINE)


async def test_an_anthropic_reply_ends_at_message_stop(wire: WireServer) -> None:
    wire.default = anthropic_reply(anthropic_events("Paris."), then="hold")
    with anyio.fail_after(HANG_DEADLINE):
        events, error = await run(claude(wire, timeout=LONG_TIMEOUT))
    assert error is None
    assert text_of(events) == "Paris."
    assert events[-2:] == [Usage(5, 7), Finish("stop")]
    assert await anyio.to_thread.run_sync(wire.client_closed.wait, HANG_DEADLINE)


# -- 4. Anthropic events with fields missing -------------------------------------------


@pytest.mark.parametrize(
    ("usage", "complaint"),
    [
        (None, "usage: Field required"),
        ({"output_tokens": None}, "usage.output_tokens"),
    ],
)
async def test_a_message_delta_without_usable_usage_is_a_malformed_response(
    wire: WireServer, usage: dict[str, Any] | None, complaint: str
) -> None:
    events = anthropic_events("Hello world")
    delta = {k: v for k, v in events[4].items() if k != "usage"}
    events[4] = delta if usage is None else {**delta, "usage": usage}
    wire.default = anthropic_reply(events)
    seen, error = await run(claude(wire))
    assert text_of(seen) == "Hello world"  # kept by the consumer, as after any fault
    assert isinstance(error, TransientProviderError)  # retried, not reported as our bug
    assert "malformed response" in str(error)
    assert f"bad message_delta event: {complaint}" in str(error)


# -- 5. parallel tool calls under one index --------------------------------------------


def tool_piece(index: int, arguments: str, call_id: str = "", name: str = "") -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        piece.update(id=call_id, type="function")
        piece["function"]["name"] = name
    return chunk({"tool_calls": [piece]})


async def test_tool_calls_with_one_index_and_different_ids_stay_apart(wire: WireServer) -> None:
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        for piece in (
            tool_piece(0, "", "call_a", "get_weather"),
            tool_piece(0, '{"city":'),
            tool_piece(0, ' "Paris"}'),
            tool_piece(0, "", "call_b", "get_time"),
            tool_piece(0, '{"tz": "CET"}'),
            tool_piece(1, '{"q": 1}', "call_c", "search"),
        ):
            handler.event(piece)
        handler.event(chunk({}, "tool_calls"))
        handler.event("[DONE]")
        handler.end_stream()

    wire.default = behave
    events, error = await run(openai_provider(wire, include_usage=False))
    assert error is None
    assert [e for e in events if isinstance(e, ToolCallRequest)] == [
        ToolCallRequest("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCallRequest("call_b", "get_time", '{"tz": "CET"}'),
        ToolCallRequest("call_c", "search", '{"q": 1}'),
    ]
    assert events[-1] == Finish("tool_calls")


# -- 6. the model an Anthropic 404 names -----------------------------------------------


async def test_an_anthropic_404_names_the_model_the_request_asked_for(wire: WireServer) -> None:
    def not_found(handler: WireHandler, body: dict[str, Any]) -> None:
        error = {"type": "not_found_error", "message": f"model: {body.get('model')}"}
        data = json.dumps({"type": "error", "error": error}).encode()
        handler.send_body(404, "application/json", data)

    wire.default = not_found
    _, error = await run(claude(wire), request(model="claude-typo-9"))
    assert wire.requests[0][2]["model"] == "claude-typo-9"
    assert isinstance(error, PermanentProviderError)
    assert "model 'claude-typo-9' was not found" in str(error)
    assert "claude-default" not in str(error)


# -- 7. 200 answers that are not event streams -----------------------------------------

HTML = b"<html><body>Welcome to the router login page</body></html>"
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-whole",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
    }
).encode()


def answer(content_type: str, data: bytes) -> Behaviour:
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.send_body(200, content_type, data)

    return behave


@pytest.mark.parametrize(
    ("which", "content_type", "data"),
    [
        ("openai", "text/html; charset=utf-8", HTML),
        ("anthropic", "text/html; charset=utf-8", HTML),
        # An OpenAI completion is the reply of a server that ignored "stream": true
        # (test_provider_openai_answers.py); at an Anthropic URL it is the wrong server.
        ("anthropic", "application/json", COMPLETION),
    ],
)
async def test_a_200_that_is_not_an_event_stream_says_to_check_the_base_url(
    wire: WireServer, which: str, content_type: str, data: bytes
) -> None:
    wire.default = answer(content_type, data)
    provider = openai_provider(wire) if which == "openai" else claude(wire)
    events, error = await run(provider)
    assert events == []
    assert isinstance(error, PermanentProviderError)  # the same page on every retry
    message = str(error)
    assert "did not answer with an event stream" in message
    assert repr(content_type) in message
    assert "check the base URL" in message
    assert wire.url in message
    assert "stream cut" not in message


OLLAMA_ERROR = {
    "error": {
        "message": "model 'llama3' not found, try pulling it first",
        "type": "api_error",
        "param": None,
        "code": None,
    }
}


@pytest.mark.parametrize(
    ("body", "kind", "said"),
    [
        (OLLAMA_ERROR, PermanentProviderError, "model 'llama3' not found, try pulling it first"),
        ({"error": "the model is loading"}, PermanentProviderError, "the model is loading"),
        (
            {"error": {"message": "busy, try later", "type": "server_error", "code": None}},
            TransientProviderError,
            "busy, try later",
        ),
        (
            {"error": {"message": "engine crashed", "code": "503"}},
            TransientProviderError,
            "server error (HTTP 503): engine crashed",
        ),
        (  # vLLM's error body
            {
                "object": "error",
                "message": "bad temperature",
                "type": "BadRequestError",
                "code": 400,
            },
            PermanentProviderError,
            "rejected (HTTP 400): bad temperature",
        ),
    ],
)
async def test_a_200_json_error_says_the_servers_message_not_to_check_the_base_url(
    wire: WireServer, body: dict[str, Any], kind: type[CMError], said: str
) -> None:
    wire.default = answer("application/json; charset=utf-8", json.dumps(body).encode())
    events, error = await run(openai_provider(wire))
    assert events == []
    assert type(error) is kind
    message = str(error)
    assert said in message
    assert "event stream" not in message
    assert "check the base URL" not in message


async def test_an_event_stream_with_a_charset_is_accepted(wire: WireServer) -> None:
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        data = (
            f"data: {json.dumps(chunk({'content': 'Hi'}))}\n\n"
            f"data: {json.dumps(chunk({}, 'stop'))}\n\ndata: [DONE]\n\n"
        ).encode()
        handler.send_body(200, "Text/Event-Stream; charset=utf-8", data)

    wire.default = behave
    events, error = await run(openai_provider(wire, include_usage=False))
    assert error is None
    assert text_of(events) == "Hi"
    assert events[-1] == Finish("stop")


# -- 8. error pages of a proxy in front of the server --------------------------------

ERROR_PAGE = (
    b'<!DOCTYPE html>\n<html lang="en-US"><head><title>example.com | 502: Bad gateway'
    b'</title><meta charset="UTF-8" /><style>body{margin:0;padding:0}.cf-error'
    b"{font-family:sans-serif}</style><script>window.cf = 1;</script></head><body>"
    b"<h1>Bad gateway</h1><p>The web server reported a bad gateway error.</p></body></html>"
)
UNTITLED_PAGE = b"<html><body><h1>503 Service Temporarily Unavailable</h1><hr>nginx</body></html>"


@pytest.mark.parametrize(
    ("page", "said"),
    [
        (ERROR_PAGE, "'example.com | 502: Bad gateway'"),
        (UNTITLED_PAGE, "'503 Service Temporarily Unavailable nginx'"),
    ],
    ids=["titled", "untitled"],
)
@pytest.mark.parametrize("which", ["openai", "anthropic"])
async def test_an_html_error_page_is_reported_by_what_it_says_not_its_markup(
    wire: WireServer, which: str, page: bytes, said: str
) -> None:
    def proxy_error(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.send_body(502, "text/html; charset=UTF-8", page)

    wire.default = proxy_error
    provider = openai_provider(wire) if which == "openai" else claude(wire)
    _, error = await run(provider)
    assert isinstance(error, TransientProviderError)  # a 5xx: retried by the session
    message = str(error)
    assert f"the server answered with an HTML error page: {said}" in message
    assert "<" not in message  # no markup, styles or scripts
    assert "margin" not in message
    assert "window.cf" not in message
