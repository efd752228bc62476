"""The OpenAI provider against a real OpenAI-compatible HTTP server: the bundled SmolLM2
model served by llama.cpp (xllamacpp) on 127.0.0.1, through the official ``openai`` SDK.

llama.cpp's server serves its one model whatever ``model`` a request names, so an
unknown model is not an error there (checked below); the 404 "unknown model" path is
tested against the fault server in test_provider_faults.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cm_notebook.errors import PermanentProviderError, ProviderError, TransientProviderError
from cm_notebook.model import Message
from cm_notebook.providers.base import ChatRequest, Finish, StreamChunk, TextDelta, Usage
from cm_notebook.providers.local import LocalProvider, LocalServer, serve_openai_compatible
from cm_notebook.providers.openai import OpenAIProvider

pytestmark = [pytest.mark.anyio, pytest.mark.local_model]

API_KEY = "test-key-not-secret"
GREEDY = {"temperature": 0.0, "top_k": 1, "seed": 0}


@pytest.fixture(scope="module")
def llama_server() -> Iterator[LocalServer]:
    """llama.cpp's HTTP server with the bundled model, requiring ``API_KEY``."""
    base_url, server = serve_openai_compatible(n_ctx=2048, api_key=API_KEY)
    assert base_url == server.base_url
    with server:
        yield server


def provider_for(server: LocalServer, **options: Any) -> OpenAIProvider:
    options.setdefault("api_key", API_KEY)
    options.setdefault("timeout", 30.0)
    return OpenAIProvider(server.model, base_url=server.base_url, **options)


def request(text: str, *, system: str | None = None, **params: Any) -> ChatRequest:
    messages = [Message(role="system", content=system)] if system else []
    messages.append(Message(role="user", content=text))
    return ChatRequest(messages=messages, params=params)


async def collect(provider: OpenAIProvider, req: ChatRequest) -> list[StreamChunk]:
    try:
        return [event async for event in provider.stream(req)]
    finally:
        await provider.aclose()


def text_of(events: list[StreamChunk]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_streams_text_usage_and_finish(llama_server: LocalServer) -> None:
    events = await collect(
        provider_for(llama_server), request("Name three colours.", max_tokens=32, **GREEDY)
    )
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) >= 5  # token by token
    assert text_of(events).strip()
    usage, finish = events[-2], events[-1]
    assert isinstance(usage, Usage)
    assert usage.input_tokens > 5
    assert 0 < usage.output_tokens <= 32
    assert isinstance(finish, Finish)
    assert finish.reason in ("stop", "length")


async def test_max_tokens_gives_finish_reason_length(llama_server: LocalServer) -> None:
    events = await collect(
        provider_for(llama_server), request("Write a long poem about rain.", max_tokens=6)
    )
    assert events[-1] == Finish("length")
    usage = events[-2]
    assert isinstance(usage, Usage)
    assert usage.output_tokens == 6


async def test_greedy_text_matches_the_in_process_provider(llama_server: LocalServer) -> None:
    # Same file, same greedy settings: HTTP and in-process give the same reply.
    question = "What is the capital of France?"
    over_http = text_of(
        await collect(provider_for(llama_server), request(question, max_tokens=24, **GREEDY))
    )
    local = LocalProvider(n_ctx=2048)
    in_process = text_of([e async for e in local.stream(request(question, max_tokens=24))])
    assert over_http == in_process
    assert over_http.strip()


async def test_system_prompt_is_sent_and_shapes_the_reply(llama_server: LocalServer) -> None:
    question = "Who are you?"
    plain = text_of(
        await collect(provider_for(llama_server), request(question, max_tokens=20, **GREEDY))
    )
    pirate = text_of(
        await collect(
            provider_for(llama_server),
            request(question, system="You are Captain Hook, a pirate.", max_tokens=20, **GREEDY),
        )
    )
    assert plain != pirate


async def test_llama_cpp_ignores_unknown_model_names(llama_server: LocalServer) -> None:
    provider = OpenAIProvider(
        "gpt-does-not-exist", base_url=llama_server.base_url, api_key=API_KEY, timeout=30
    )
    events = await collect(provider, request("Hi", max_tokens=3))
    assert isinstance(events[-1], Finish)


async def test_wrong_key_is_a_permanent_401(llama_server: LocalServer) -> None:
    provider = provider_for(llama_server, api_key="wrong-key")
    with pytest.raises(PermanentProviderError) as info:
        await collect(provider, request("Hi", max_tokens=3))
    assert info.value.status_code == 401
    assert "OPENAI_API_KEY" in str(info.value)
    assert "wrong-key" not in str(info.value)


async def test_invalid_request_is_permanent_with_the_servers_message(
    llama_server: LocalServer,
) -> None:
    with pytest.raises(PermanentProviderError) as info:
        await collect(provider_for(llama_server), request("Hi", max_tokens=-5))
    assert info.value.status_code == 400
    assert "max_tokens" in str(info.value)


async def _timed(server: LocalServer, prompt: str, tokens: int) -> tuple[float, int]:
    """Seconds for one greedy reply of at most ``tokens``, and the text chunks it had."""
    started = time.monotonic()
    events = await collect(provider_for(server), request(prompt, max_tokens=tokens, **GREEDY))
    return time.monotonic() - started, sum(isinstance(e, TextDelta) for e in events)


async def test_breaking_off_frees_the_server(llama_server: LocalServer) -> None:
    # The machine's speed now (it varies with what else runs): a short reply, and how
    # long a token takes, counted from the chunks that came (a reply may end early).
    short, short_tokens = await _timed(llama_server, "Hi", 4)
    long, long_tokens = await _timed(llama_server, "Tell me a very long story.", 68)
    assert long_tokens > short_tokens, (long_tokens, short_tokens)
    per_token = (long - short) / (long_tokens - short_tokens)
    provider = provider_for(llama_server)
    # Greedy, this story runs to the full 1,500 tokens (checked by hand: it ends on length).
    story = request("Tell me a very long story.", max_tokens=1500, **GREEDY)
    stream = provider.stream(story)
    seen = 0
    async for event in stream:
        if isinstance(event, TextDelta):
            seen += 1
            if seen == 3:
                break
    await stream.aclose()  # type: ignore[attr-defined]
    await provider.aclose()
    # llama.cpp notices the closed connection and stops; the next reply comes at once.
    # Had it gone on, this single-slot server would first finish the story's 1,500
    # tokens: the bound is half of that time, measured in the same run.
    after, _ = await _timed(llama_server, "Hi", 4)
    assert after < short + 750 * per_token, (after, short, per_token)


async def test_closed_server_is_a_transient_connection_error() -> None:
    # A port that was just free: nothing listens there. (A second llama.cpp server in
    # this process, freed while the module's one runs, can hang in its destructor.)
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    provider = OpenAIProvider("smollm2", base_url=f"http://127.0.0.1:{port}/v1", timeout=5)
    with pytest.raises(TransientProviderError, match="connection failed"):
        await collect(provider, request("Hi", max_tokens=3))


async def test_errors_keep_the_sdk_exception_as_cause(llama_server: LocalServer) -> None:
    with pytest.raises(ProviderError) as info:
        await collect(provider_for(llama_server, api_key="nope"), request("Hi"))
    assert type(info.value.__cause__).__module__.startswith("openai")


def test_a_port_in_use_is_named_not_blamed_on_the_model_file(llama_server: LocalServer) -> None:
    from cm_notebook.errors import PermanentProviderError

    with pytest.raises(PermanentProviderError, match=rf"port {llama_server.port} .*port=0") as exc:
        serve_openai_compatible(llama_server.port)
    assert "model file" not in str(exc.value)


async def test_a_conversation_longer_than_the_window_says_how_to_go_on(
    llama_server: LocalServer,
) -> None:
    # The server is started with n_ctx=2048: this prompt is longer. Every send on the
    # branch would fail alike, so the error says what to do instead of only "try
    # increasing it".
    with pytest.raises(PermanentProviderError) as info:
        await collect(provider_for(llama_server), request("word " * 3000, max_tokens=8))
    message = str(info.value)
    assert "context size" in message  # the server's own words are kept
    assert "branch from an earlier message or edit one" in message
