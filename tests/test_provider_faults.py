"""The OpenAI provider against a real, misbehaving HTTP server (tests/fault_server.py).

Every fault is a real socket event: an HTTP status with headers, a TCP reset after
some chunks, a stream that ends early, a chunk that is not JSON, silence past the
client's timeout. Each must surface as the right error class, with the deltas that
arrived before it already yielded to the consumer.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

import pytest
from fault_server import (
    EndWithoutFinish,
    ErrorEvent,
    FaultServer,
    Hang,
    Malformed,
    Reply,
    ResetAfter,
    Status,
    ToolCall,
)
from openai import AsyncStream
from provider_streams import request, run, text_of

from cm_notebook.errors import (
    InvalidInputError,
    PermanentProviderError,
    TransientProviderError,
)
from cm_notebook.model import Message
from cm_notebook.model import ToolCall as StoredToolCall
from cm_notebook.providers import get_provider
from cm_notebook.providers.base import (
    ChatRequest,
    Finish,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    Usage,
)
from cm_notebook.providers.openai import OpenAIProvider

pytestmark = pytest.mark.anyio

TIMEOUT = 1.0


def provider_for(server: FaultServer, **options: Any) -> OpenAIProvider:
    options.setdefault("timeout", TIMEOUT)
    return OpenAIProvider("gpt-test", base_url=server.url, **options)


# -- the happy path --------------------------------------------------------------------


async def test_normal_reply_streams_deltas_usage_and_finish(fault_server: FaultServer) -> None:
    fault_server.script([Reply("Hello there, friend.")])
    events, error = await run(provider_for(fault_server))
    assert error is None
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 3
    assert text_of(events) == "Hello there, friend."
    assert events[-2:] == [Usage(input_tokens=7, output_tokens=5), Finish("stop")]
    sent = fault_server.requests[0]
    assert sent["model"] == "gpt-test"
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "user", "content": "Hi"}]


async def test_parameters_tools_and_model_override_reach_the_server(
    fault_server: FaultServer,
) -> None:
    tool = ToolSpec(
        "get_weather",
        "Weather for a city.",
        {"type": "object", "properties": {"city": {"type": "string"}}},
    )
    req = ChatRequest(
        messages=[Message(role="system", content="Be brief."), Message(role="user", content="Hi")],
        tools=[tool],
        params={
            "temperature": 0.2,
            "max_tokens": 17,
            "top_p": 0.9,
            "seed": 42,
            "stop": ["\n\n"],
            "model": "gpt-other",
            "top_k": 3,  # not an OpenAI parameter: sent in the body for compatible servers
        },
    )
    _, error = await run(provider_for(fault_server), req)
    assert error is None
    sent = fault_server.requests[0]
    assert sent["model"] == "gpt-other"
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert (sent["temperature"], sent["max_tokens"], sent["top_p"], sent["seed"]) == (
        0.2,
        17,
        0.9,
        42,
    )
    assert sent["stop"] == ["\n\n"]
    assert sent["top_k"] == 3
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]


async def test_tool_call_split_across_deltas_is_assembled(fault_server: FaultServer) -> None:
    fault_server.script(
        [
            Reply(
                "Let me check.",
                tool_calls=[
                    ToolCall("call_a", "get_weather", '{"city": "Paris", "unit": "C"}', pieces=5),
                    ToolCall("call_b", "get_time", '{"tz": "Europe/Paris"}', pieces=2),
                ],
            )
        ]
    )
    events, error = await run(provider_for(fault_server))
    assert error is None
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert calls == [
        ToolCallRequest("call_a", "get_weather", '{"city": "Paris", "unit": "C"}'),
        ToolCallRequest("call_b", "get_time", '{"tz": "Europe/Paris"}'),
    ]
    assert json.loads(calls[0].arguments_json) == {"city": "Paris", "unit": "C"}
    assert text_of(events) == "Let me check."
    assert events[-1] == Finish("tool_calls")
    # Tool calls come after the text and before usage/finish.
    kinds = [type(e).__name__ for e in events]
    assert kinds[-4:] == ["ToolCallRequest", "ToolCallRequest", "Usage", "Finish"]


async def test_tool_results_are_sent_back_in_openai_shape(fault_server: FaultServer) -> None:
    history = [
        Message(role="system", content="sys"),
        Message(role="user", content="Weather?"),
        Message(
            role="assistant",
            content="",
            tool_calls=[
                StoredToolCall(id="call_a", name="get_weather", arguments={"city": "Oslo"})
            ],
        ),
        Message(role="tool", tool_call_id="call_a", content="-3 C"),
    ]
    _, error = await run(provider_for(fault_server), ChatRequest(messages=history))
    assert error is None
    assert fault_server.requests[0]["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "-3 C"},
    ]


# -- HTTP statuses ---------------------------------------------------------------------


async def test_429_is_transient_with_retry_after(fault_server: FaultServer) -> None:
    fault_server.script([Status(429, "Rate limit reached", "rate_limit_error", retry_after="2")])
    events, error = await run(provider_for(fault_server))
    assert events == []
    assert isinstance(error, TransientProviderError)
    assert error.status_code == 429
    assert error.retry_after == 2.0
    assert "Rate limit reached" in str(error)
    assert isinstance(error.__cause__, Exception)  # the SDK error, kept as the cause
    assert len(fault_server.requests) == 1  # the SDK itself did not retry


async def test_retry_after_ms_and_http_date(fault_server: FaultServer) -> None:
    fault_server.script(
        [
            Status(429, headers={"retry-after-ms": "1500"}, retry_after="9"),
            Status(503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"),  # in the past: 0
            Status(503),
        ]
    )
    _, first = await run(provider_for(fault_server))
    _, second = await run(provider_for(fault_server))
    _, third = await run(provider_for(fault_server))
    assert isinstance(first, TransientProviderError)
    assert first.retry_after == 1.5
    assert isinstance(second, TransientProviderError)
    assert second.retry_after == 0.0
    assert isinstance(third, TransientProviderError)
    assert third.retry_after is None


async def test_500_is_transient(fault_server: FaultServer) -> None:
    fault_server.script([Status(500, "The server had an error")])
    _, error = await run(provider_for(fault_server))
    assert isinstance(error, TransientProviderError)
    assert error.status_code == 500
    assert error.provider == "openai"
    assert "The server had an error" in str(error)


async def test_401_is_permanent_and_says_to_set_the_key(fault_server: FaultServer) -> None:
    fault_server.script([Status(401, "Incorrect API key provided", "invalid_request_error")])
    _, error = await run(provider_for(fault_server, api_key="sk-wrong"))
    assert isinstance(error, PermanentProviderError)
    assert error.status_code == 401
    assert "OPENAI_API_KEY" in str(error)
    assert "sk-wrong" not in str(error)


async def test_403_is_permanent_and_says_to_check_the_key(fault_server: FaultServer) -> None:
    fault_server.script([Status(403, "Project does not have access", "permission_error")])
    _, error = await run(provider_for(fault_server))
    assert isinstance(error, PermanentProviderError)
    assert "check the key" in str(error)


async def test_404_unknown_model_names_the_model_and_how_to_list(
    fault_server: FaultServer,
) -> None:
    fault_server.script([Status.unknown_model("gpt-nope")])
    _, error = await run(provider_for(fault_server), request(model="gpt-nope"))
    assert isinstance(error, PermanentProviderError)
    assert error.status_code == 404
    assert "'gpt-nope'" in str(error)
    assert f"{fault_server.url}/models" in str(error)
    # A base_url without the server's /v1 gives the same 404: the hint says to check it.
    assert "check base_url: OpenAI-compatible servers usually serve under /v1" in str(error)
    fault_server.script([Status.unknown_model("gpt-nope")])
    with_query = OpenAIProvider("m", base_url=f"{fault_server.url}?tenant=a", timeout=TIMEOUT)
    _, error = await run(with_query, request(model="gpt-nope"))
    assert f"{fault_server.url}/models?tenant=a" in str(error)  # not ".../v1?tenant=a/models"


@pytest.mark.parametrize("base_url", ["localhost:8080/v1", "ftp://host/v1", "127.0.0.1:8080"])
def test_a_base_url_without_a_web_scheme_is_refused_at_once(base_url: str) -> None:
    # The SDK failed every request as a connection error, retried, with no hint.
    with pytest.raises(InvalidInputError, match="base_url must start with http:// or https://"):
        OpenAIProvider("m", base_url=base_url)


async def test_400_is_permanent_with_the_servers_message(fault_server: FaultServer) -> None:
    fault_server.script([Status(400, "max_tokens is too large: 999999", "invalid_request_error")])
    _, error = await run(provider_for(fault_server))
    assert isinstance(error, PermanentProviderError)
    assert "max_tokens is too large: 999999" in str(error)


# -- faults mid-stream -----------------------------------------------------------------


async def test_connection_reset_mid_stream_keeps_partial_text(fault_server: FaultServer) -> None:
    fault_server.script([ResetAfter(["Hel", "lo", " wor"])])
    events, error = await run(provider_for(fault_server))
    assert text_of(events) == "Hello wor"
    assert isinstance(error, TransientProviderError)
    assert "stream cut mid-reply" in str(error)
    assert not any(isinstance(e, Finish) for e in events)


async def test_stream_without_finish_reason_is_a_transient_cut(fault_server: FaultServer) -> None:
    fault_server.script([EndWithoutFinish(["Par", "tial"]), EndWithoutFinish(["X"], done=True)])
    events, error = await run(provider_for(fault_server))
    assert text_of(events) == "Partial"
    assert isinstance(error, TransientProviderError)
    assert "stream cut mid-reply" in str(error)
    events, error = await run(provider_for(fault_server))
    assert text_of(events) == "X"
    assert isinstance(error, TransientProviderError)


async def test_malformed_chunk_is_transient_with_a_clear_message(
    fault_server: FaultServer,
) -> None:
    fault_server.script(
        [Malformed(["Good", " start"]), Malformed(["A"], raw='{"choices": "not a list"}')]
    )
    events, error = await run(provider_for(fault_server))
    assert text_of(events) == "Good start"
    assert isinstance(error, TransientProviderError)
    assert "malformed response" in str(error)
    events, error = await run(provider_for(fault_server))
    assert text_of(events) == "A"
    assert isinstance(error, TransientProviderError)
    assert "'choices' is not a list" in str(error)


def _line(delta: dict[str, Any] | str, finish: str | None = None) -> str:
    return json.dumps(
        {"id": "c1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    )


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ('"hello"', "a chunk is not a JSON object: 'hello'"),
        ("[1, 2]", "a chunk is not a JSON object: [1, 2]"),
        ('{"choices": ["x"]}', "a choice is not a JSON object: 'x'"),
        (_line("hello"), "a delta is not a JSON object: 'hello'"),
        (b'{"choices": [{"index": 0, "delta": {"content": "\xff"}}]}', "not valid UTF-8"),
        (
            [
                _line({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f"}}]}),
                _line({}, "tool_calls"),
                _line({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
            ],
            "a tool-call piece came after the finish reason",
        ),
    ],
)
async def test_a_chunk_of_the_wrong_shape_is_malformed_never_read_as_empty(
    fault_server: FaultServer, raw: str | bytes | list[str], words: str
) -> None:
    # Read as empty, its text or tool call was lost without a word; one invalid byte
    # failed the turn for good as an internal error.
    fault_server.script([Malformed(["So far"], raw=raw)])
    events, error = await run(provider_for(fault_server))
    assert text_of(events) == "So far"
    assert isinstance(error, TransientProviderError)
    assert "malformed response" in str(error)
    assert words in str(error)


async def test_tool_call_arguments_sent_as_an_object_are_kept(fault_server: FaultServer) -> None:
    # Some servers send the arguments as a JSON object: they were dropped, and the tool
    # would have run with its defaults.
    call = {"index": 0, "id": "a", "function": {"name": "f", "arguments": {"table": "tmp"}}}
    fault_server.script([Malformed([], raw=[_line({"tool_calls": [call]}, "tool_calls")])])
    events, error = await run(provider_for(fault_server))
    assert error is None
    [asked] = [e for e in events if isinstance(e, ToolCallRequest)]
    assert json.loads(asked.arguments_json) == {"table": "tmp"}


async def test_an_error_event_given_as_text_keeps_the_servers_words(
    fault_server: FaultServer,
) -> None:
    fault_server.script([Malformed(["So"], raw='{"error": "model is overloaded"}')])
    _, error = await run(provider_for(fault_server))
    assert isinstance(error, TransientProviderError)
    assert "model is overloaded" in str(error)


async def test_error_event_mid_stream(fault_server: FaultServer) -> None:
    fault_server.script(
        [
            ErrorEvent("the server is overloaded", after=["So"]),
            ErrorEvent("context is too long", code=400, error_type="invalid_request_error"),
        ]
    )
    events, error = await run(provider_for(fault_server))
    assert text_of(events) == "So"
    assert isinstance(error, TransientProviderError)
    # The connection was fine: the server said what went wrong.
    assert str(error) == "openai: the server reported an error mid-reply: the server is overloaded"
    _, error = await run(provider_for(fault_server))
    assert isinstance(error, PermanentProviderError)
    assert "context is too long" in str(error)


async def test_hang_before_headers_times_out(fault_server: FaultServer) -> None:
    fault_server.script([Hang(seconds=10)])
    started = time.monotonic()
    events, error = await run(provider_for(fault_server))
    elapsed = time.monotonic() - started
    assert events == []
    assert isinstance(error, TransientProviderError)
    assert "timed out after 1 s" in str(error)
    assert elapsed < 5  # the client's timeout, not the server's hang


async def test_hang_mid_stream_times_out_with_partial_text(fault_server: FaultServer) -> None:
    fault_server.script([Hang(seconds=10, after=["Slow", "ly"])])
    started = time.monotonic()
    events, error = await run(provider_for(fault_server))
    assert time.monotonic() - started < 5
    assert text_of(events) == "Slowly"
    assert isinstance(error, TransientProviderError)
    assert "stream cut mid-reply" in str(error)


async def test_drop_after_finish_reason_keeps_the_reply(fault_server: FaultServer) -> None:
    fault_server.script([Reply("All here.", reset_after_finish=True)])
    events, error = await run(provider_for(fault_server))
    assert error is None
    assert text_of(events) == "All here."
    assert events[-1] == Finish("stop")
    assert not any(isinstance(e, Usage) for e in events)  # lost with the connection


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAIProvider("gpt-test", base_url=f"http://127.0.0.1:{port}/v1", timeout=TIMEOUT)
    _, error = await run(provider)
    assert isinstance(error, TransientProviderError)
    assert "connection failed" in str(error)


async def test_the_session_can_retry_after_a_fault(fault_server: FaultServer) -> None:
    # The same provider instance survives a fault and succeeds on the next request.
    fault_server.script([ResetAfter(["x"]), Reply("fine")])
    provider = provider_for(fault_server)
    try:
        with pytest.raises(TransientProviderError):
            async for _ in provider.stream(request()):
                pass
        events = [e async for e in provider.stream(request())]
    finally:
        await provider.aclose()
    assert text_of(events) == "fine"
    assert len(fault_server.requests) == 2


# -- keys, specs and the registry -------------------------------------------------------


async def test_key_is_sent_but_never_shown(fault_server: FaultServer) -> None:
    provider = provider_for(fault_server, api_key="sk-test-SECRET-123")
    assert "SECRET" not in repr(provider)
    assert "SECRET" not in str(vars(provider).get("_client_options"))
    _, error = await run(provider)
    assert error is None
    assert fault_server.headers[0]["authorization"] == "Bearer sk-test-SECRET-123"


async def test_base_url_without_key_uses_a_placeholder(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _, error = await run(provider_for(fault_server))
    assert error is None
    assert fault_server.headers[0]["authorization"] == "Bearer not-needed"


async def test_missing_key_without_base_url_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    provider = OpenAIProvider("gpt-4o-mini")
    with pytest.raises(PermanentProviderError, match="set OPENAI_API_KEY"):
        async for _ in provider.stream(request()):
            pass
    await provider.aclose()


async def test_spec_env_base_url_and_registry(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    provider = get_provider("openai:gpt-test", timeout=TIMEOUT)
    assert isinstance(provider, OpenAIProvider)
    assert (provider.name, provider.model, provider.base_url) == (
        "openai",
        "gpt-test",
        fault_server.url,
    )
    events = [e async for e in provider.stream(request())]
    await provider.aclose()
    assert events[-1] == Finish("stop")
    assert OpenAIProvider.from_spec(None, model="gpt-x").model == "gpt-x"
    with pytest.raises(InvalidInputError, match="needs a model"):
        OpenAIProvider.from_spec(None)


async def test_closed_provider_refuses_new_requests(fault_server: FaultServer) -> None:
    provider = provider_for(fault_server)
    await provider.aclose()
    with pytest.raises(PermanentProviderError, match="closed"):
        async for _ in provider.stream(request()):
            pass
    assert fault_server.requests == []


# -- the SDK's stream iterator is closed with the reply --------------------------------


@contextmanager
def async_generators_started() -> Iterator[list[AsyncGenerator[Any, Any]]]:
    """Every async generator first stepped inside the block (kept alive, to inspect)."""
    started: list[AsyncGenerator[Any, Any]] = []
    hooks = sys.get_asyncgen_hooks()

    def firstiter(generator: AsyncGenerator[Any, Any]) -> None:
        started.append(generator)
        if hooks.firstiter is not None:
            hooks.firstiter(generator)  # the event loop's own bookkeeping

    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=hooks.finalizer)
    try:
        yield started
    finally:
        sys.set_asyncgen_hooks(*hooks)


def sdk_stream_iterators(started: list[AsyncGenerator[Any, Any]]) -> list[Any]:
    """The iterators of the SDK's streams (``AsyncStream.__aiter__``) among ``started``."""
    return [g for g in started if g.ag_code is AsyncStream.__aiter__.__code__]


async def test_the_sdk_iterator_is_closed_when_the_reply_ends(fault_server: FaultServer) -> None:
    provider = provider_for(fault_server)
    try:
        # The reply ends at its usage chunk: [DONE] and the end of the body are not read.
        with async_generators_started() as started:
            events = [event async for event in provider.stream(request())]
        assert events[-1] == Finish("stop", "chatcmpl-fault")
        (iterator,) = sdk_stream_iterators(started)
        assert iterator.ag_frame is None  # closed, not waiting for the garbage collector

        # A consumer that stops after the first words.
        with async_generators_started() as started:
            async with aclosing(provider.stream(request())) as stream:
                async for _ in stream:
                    break
        (iterator,) = sdk_stream_iterators(started)
        assert iterator.ag_frame is None
    finally:
        await provider.aclose()
