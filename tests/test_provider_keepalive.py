"""Servers that keep a stream open with keep-alive messages alone: event-stream comments
(``: keep-alive``, ``: ping``) or Anthropic ``ping`` events, which restart the HTTP
client's read timeout with every one. The provider's ``timeout`` bounds the time
between pieces of the reply too, and its ``first_token_timeout`` the wait for the first
piece (a gateway sends keep-alives while the model thinks), so such a reply fails with
a retryable timeout that says which limit it was, the text before it kept; a reply that
is slow but keeps moving on, or whose model thinks long before its first words, is not
cut, nor is one whose consumer is slow. A server gone silent after the reply's opening
chunk fails as silence, not as keep-alives. The OpenAI and Anthropic providers against
real local HTTP servers.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import anyio
import pytest
from fault_server import KEEP_ALIVE, FaultServer, Hang, KeepAlive, Reply, SlowReply
from provider_streams import request, run, text_of
from test_provider_wire_faults import anthropic_events, claude
from wire_server import Behaviour, WireHandler, WireServer, chunk

from cm_notebook.errors import TransientProviderError
from cm_notebook.providers.base import Finish, StreamChunk, Usage
from cm_notebook.providers.openai import OpenAIProvider

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]

TIMEOUT = 0.5  # the provider's timeout: keep-alives alone fail a reply after this
# The provider's first_token_timeout in these tests: keep-alives before the first piece
# fail a reply after this, not after TIMEOUT.
FIRST = 1.5
# Far longer than both: a reply that is not bounded would hang past it (the failure
# the fix is for), and fails the test instead of hanging it.
DEADLINE = 20.0
MID_REPLY_SAYS = f"the server sent only keep-alive messages for {TIMEOUT:g} s mid-reply"
FIRST_SAYS = f"the server sent only keep-alive messages for {FIRST:g} s and no reply yet"

# What servers and proxies send to keep an idle stream up.
OPENAI_KEEPALIVES = {
    "comment": KEEP_ALIVE,
    "ping comment": b": ping\n\n",
    "bare colon": b":\n\n",
    "comment with CR LF": b": OPENROUTER PROCESSING\r\n\r\n",
    # A chunk that moves nothing on (no text, no finish): a keep-alive in all but name.
    "empty delta": b'data: {"id": "k", "object": "chat.completion.chunk", "created": 1, '
    b'"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": null}]}\n\n',
}


def openai(server: FaultServer, timeout: float = TIMEOUT, **options: Any) -> OpenAIProvider:
    return OpenAIProvider("fault-model", base_url=server.url, timeout=timeout, **options)


def assert_keepalive_timeout(error: Exception | None, provider: str) -> None:
    # Mid-reply: a timeout like a read timeout, transient (retried), and it says what
    # happened, which limit it was and how to raise it.
    assert isinstance(error, TransientProviderError), error
    message = str(error)
    assert message.startswith(f"{provider}: the request timed out"), message
    assert MID_REPLY_SAYS in message
    assert "provider_options={'timeout': ...}" in message
    assert "first_token_timeout" not in message
    assert "check the server" in message


def assert_first_token_timeout(error: Exception | None, provider: str, constructor: str) -> None:
    # Before the first piece: the server said it was still working, for longer than
    # first_token_timeout; the message names that limit and how to raise it, and does
    # not say the server stopped answering.
    assert isinstance(error, TransientProviderError), error
    message = str(error)
    assert message.startswith(f"{provider}: the request timed out"), message
    assert FIRST_SAYS in message
    assert "the model may still be working on it" in message
    assert "provider_options={'first_token_timeout': ...}" in message
    assert f"{constructor}(..., first_token_timeout=...)" in message
    assert "stopped answering" not in message


@pytest.mark.parametrize("keepalive", OPENAI_KEEPALIVES.values(), ids=OPENAI_KEEPALIVES.keys())
async def test_openai_keepalives_alone_fail_the_reply_keeping_its_text(
    fault_server: FaultServer, keepalive: bytes
) -> None:
    fault_server.script([KeepAlive(["Hel", "lo"], comment=keepalive)])
    with anyio.fail_after(DEADLINE):  # without the bound: keep-alives forever
        events, error = await run(openai(fault_server))
    assert text_of(events) == "Hello"  # kept, as for a stream cut mid-reply
    assert_keepalive_timeout(error, "openai")
    assert "the text received before them is incomplete" in str(error)


@pytest.mark.parametrize("keepalive", OPENAI_KEEPALIVES.values(), ids=OPENAI_KEEPALIVES.keys())
async def test_openai_keepalives_before_any_text_fail_at_the_first_token_timeout(
    fault_server: FaultServer, keepalive: bytes
) -> None:
    # The opening chunk (a role alone), then keep-alives past first_token_timeout.
    fault_server.script([KeepAlive([], comment=keepalive)])
    with anyio.fail_after(DEADLINE):
        events, error = await run(openai(fault_server, first_token_timeout=FIRST))
    assert text_of(events) == ""
    assert_first_token_timeout(error, "openai", "OpenAIProvider")
    assert "received before them" not in str(error)


def openai_thinking(seconds: float, keepalive: bytes, pieces: list[str]) -> Behaviour:
    """A model behind a gateway: the opening chunk, ``keepalive`` every 0.05 s for
    ``seconds`` while the model thinks, then ``pieces`` and the finish reason."""

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        release = handler.server.release
        handler.start_stream()
        handler.event(chunk({"role": "assistant", "content": ""}))
        for _ in range(round(seconds / 0.05)):
            if release.wait(0.05):
                return
            handler.raw(keepalive)
        for piece in pieces:
            handler.event(chunk({"content": piece}))
        handler.event(chunk({}, "stop"))
        handler.event("[DONE]")
        handler.end_stream()

    return behave


@pytest.mark.parametrize("keepalive", OPENAI_KEEPALIVES.values(), ids=OPENAI_KEEPALIVES.keys())
async def test_an_openai_model_that_thinks_past_the_timeout_before_its_first_words_answers(
    wire: WireServer, keepalive: bytes
) -> None:
    # OpenRouter's comments while the model thinks, for longer than the timeout but not
    # first_token_timeout; then the answer, whole.
    # (first_token_timeout as by default: 600 s.)
    wire.default = openai_thinking(1.0, keepalive, ["Hel", "lo"])
    provider = OpenAIProvider("m", base_url=f"{wire.url}/v1", timeout=TIMEOUT)
    with anyio.fail_after(DEADLINE):
        events, error = await run(provider, request())
    assert error is None
    assert text_of(events) == "Hello"
    assert events[-1] == Finish("stop")


async def test_an_openai_model_thinks_up_to_the_timeout_when_it_is_the_longer(
    wire: WireServer,
) -> None:
    # first_token_timeout is never the shorter limit: a timeout raised for a slow model
    # holds before the first words too.
    wire.default = openai_thinking(1.0, KEEP_ALIVE, ["Hi"])
    provider = OpenAIProvider("m", base_url=f"{wire.url}/v1", timeout=3.0, first_token_timeout=0.5)
    with anyio.fail_after(DEADLINE):
        events, error = await run(provider, request())
    assert error is None
    assert text_of(events) == "Hi"


@pytest.mark.parametrize(
    "options", [{}, {"first_token_timeout": TIMEOUT}], ids=["default", "first as timeout"]
)
async def test_an_openai_server_silent_after_its_opening_chunk_is_a_cut_stream(
    fault_server: FaultServer, options: dict[str, Any]
) -> None:
    # The opening chunk (a role alone, at once), then nothing at all: silence, which
    # fails at the read timeout, not as keep-alives (its bytes are the reply's).
    fault_server.script([Hang(seconds=10.0, after=[])])
    provider = openai(fault_server, **options)
    with anyio.fail_after(DEADLINE):
        events, error = await run(provider)
    assert events == []
    assert isinstance(error, TransientProviderError), error
    message = str(error)
    assert message.startswith(f"openai: stream cut mid-reply (no data for {TIMEOUT:g} s)"), message
    assert "keep-alive" not in message


async def test_a_slow_consumer_does_not_use_up_the_servers_time(
    fault_server: FaultServer,
) -> None:
    # Keep-alives for 0.2 s before each piece, and the consumer takes twice the timeout
    # over each: the time it takes is its own, not the server's.
    fault_server.script([SlowReply(Reply("One two three"), pause=0.2)])
    provider = openai(fault_server)
    events: list[StreamChunk] = []
    with anyio.fail_after(DEADLINE):
        try:
            async for event in provider.stream(request()):
                events.append(event)
                await anyio.sleep(2 * TIMEOUT)
        finally:
            await provider.aclose()
    assert text_of(events) == "One two three"
    assert events[-1] == Finish("stop")


async def test_an_openai_reply_slow_in_all_but_moving_on_is_not_cut(
    fault_server: FaultServer,
) -> None:
    # Keep-alives for 0.25 s before each of four pieces and the finish reason: longer
    # than the 1 s timeout in all, never as long between two pieces.
    fault_server.script([SlowReply(Reply("One two three four"), pause=0.25)])
    with anyio.fail_after(DEADLINE):
        events, error = await run(openai(fault_server, timeout=1.0))
    assert error is None
    assert text_of(events) == "One two three four"
    assert events[-2:] == [Usage(7, 5), Finish("stop")]


# -- Anthropic -------------------------------------------------------------------------

ANTHROPIC_KEEPALIVES = {
    "ping event": b'event: ping\ndata: {"type": "ping"}\n\n',
    "unnamed ping": b'data: {"type": "ping"}\n\n',
    "comment": KEEP_ALIVE,
}


def anthropic_keepalives(
    events: list[dict[str, Any]], keepalive: bytes, *, pause: float | None = None
) -> Behaviour:
    """``events``, then ``keepalive`` every 0.05 s until the client hangs up; with
    ``pause``, keep-alives for ``pause`` seconds before each event instead, then the end."""

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        release = handler.server.release
        handler.start_stream()
        for event in events:
            for _ in range(round(pause / 0.05) if pause else 0):
                if release.wait(0.05):
                    return
                handler.raw(keepalive)
            handler.event(event, name=event["type"])
        if pause:
            handler.end_stream()
            return
        while not release.wait(0.05):
            handler.raw(keepalive)  # fails once the client hung up, ending this

    return behave


@pytest.mark.parametrize(
    "keepalive", ANTHROPIC_KEEPALIVES.values(), ids=ANTHROPIC_KEEPALIVES.keys()
)
async def test_anthropic_pings_alone_fail_the_reply_keeping_its_text(
    wire: WireServer, keepalive: bytes
) -> None:
    # message_start, the text block's start and its first words; then pings only.
    wire.default = anthropic_keepalives(anthropic_events("Par")[:3], keepalive)
    with anyio.fail_after(DEADLINE):
        events, error = await run(claude(wire, timeout=TIMEOUT))
    assert text_of(events) == "Par"
    assert_keepalive_timeout(error, "anthropic")
    assert "the text received before them is incomplete" in str(error)


@pytest.mark.parametrize("opened", [False, True], ids=["nothing before", "after message_start"])
async def test_anthropic_pings_before_the_first_block_fail_at_the_first_token_timeout(
    wire: WireServer, opened: bool
) -> None:
    events_before = anthropic_events("Par")[:1] if opened else []
    wire.default = anthropic_keepalives(events_before, ANTHROPIC_KEEPALIVES["ping event"])
    with anyio.fail_after(DEADLINE):
        events, error = await run(claude(wire, timeout=TIMEOUT, first_token_timeout=FIRST))
    assert events == []
    assert_first_token_timeout(error, "anthropic", "AnthropicProvider")


@pytest.mark.parametrize(
    "keepalive", ANTHROPIC_KEEPALIVES.values(), ids=ANTHROPIC_KEEPALIVES.keys()
)
async def test_an_anthropic_model_that_thinks_past_the_timeout_before_its_first_block_answers(
    wire: WireServer, keepalive: bytes
) -> None:
    # message_start at once, pings for longer than the timeout (not first_token_timeout,
    # 600 s by default) while the model thinks, then the reply.
    events_sent = anthropic_events("Paris.")

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        for number, event in enumerate(events_sent):
            handler.event(event, name=event["type"])
            for _ in range(20 if number == 0 else 0):  # 1 s
                if handler.server.release.wait(0.05):
                    return
                handler.raw(keepalive)
        handler.end_stream()

    wire.default = behave
    with anyio.fail_after(DEADLINE):
        events, error = await run(claude(wire, timeout=TIMEOUT))
    assert error is None
    assert text_of(events) == "Paris."
    assert events[-1] == Finish("stop")


async def test_an_anthropic_reply_slow_in_all_but_moving_on_is_not_cut(wire: WireServer) -> None:
    # Pings for 0.25 s before each of six events: longer than the 1 s timeout in all.
    events_sent = anthropic_events("Paris.")
    wire.default = anthropic_keepalives(events_sent, ANTHROPIC_KEEPALIVES["ping event"], pause=0.25)
    with anyio.fail_after(DEADLINE):
        events, error = await run(claude(wire, timeout=1.0))
    assert error is None
    assert text_of(events) == "Paris."
    expected: list[StreamChunk] = [Usage(5, 7), Finish("stop")]
    assert events[-2:] == expected


# -- a compressed stream ---------------------------------------------------------------


def gzipped_openai(pieces: list[str], *, then: str) -> Behaviour:
    """An OpenAI stream sent gzip-compressed, each event flushed on its own: ``pieces``,
    then the finish reason and the end (``then="end"``), keep-alives until the client
    hangs up (``then="keepalives"``) or nothing more, the connection open (``"hold"``)."""

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        packer = zlib.compressobj(wbits=31)  # the gzip format

        def send(data: bytes) -> None:
            handler.raw(packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH))

        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("content-encoding", "gzip")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        for piece in pieces:
            send(f"data: {json.dumps(chunk({'content': piece}))}\n\n".encode())
        if then == "end":
            send(f"data: {json.dumps(chunk({}, 'stop'))}\n\ndata: [DONE]\n\n".encode())
            handler.raw(packer.flush())
            handler.end_stream()
            return
        if then == "hold":
            handler.hold()
            return
        while not handler.server.release.wait(0.05):
            send(KEEP_ALIVE)  # fails once the client hung up, ending this

    return behave


async def test_a_compressed_stream_tells_keepalives_from_silence(wire: WireServer) -> None:
    # Its bytes are counted before they are decompressed: keep-alives are told apart
    # from a server gone silent, which fails as a read timeout does.
    wire.behaviours.extend(
        [
            gzipped_openai(["Hel", "lo"], then="keepalives"),
            gzipped_openai(["Hel", "lo"], then="hold"),
            gzipped_openai(["Hi"], then="end"),
        ]
    )
    provider = OpenAIProvider("m", base_url=f"{wire.url}/v1", timeout=TIMEOUT)
    with anyio.fail_after(DEADLINE):
        events, error = await run(provider)
    assert text_of(events) == "Hello"
    assert_keepalive_timeout(error, "openai")
    provider = OpenAIProvider("m", base_url=f"{wire.url}/v1", timeout=TIMEOUT)
    with anyio.fail_after(DEADLINE):
        events, error = await run(provider)
    assert text_of(events) == "Hello"
    assert isinstance(error, TransientProviderError)
    assert str(error).startswith("openai: stream cut mid-reply (no data for 0.5 s)"), error
    # The same kind of body, whole: read as before.
    provider = OpenAIProvider("m", base_url=f"{wire.url}/v1", timeout=TIMEOUT)
    with anyio.fail_after(DEADLINE):
        events, error = await run(provider, request())
    assert error is None
    assert text_of(events) == "Hi"
    assert events[-1] == Finish("stop")
