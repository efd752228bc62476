"""Servers that keep a stream open with keep-alive messages alone: event-stream comments
(``: keep-alive``, ``: ping``) or Anthropic ``ping`` events, which restart the HTTP
client's read timeout with every one. The provider's ``timeout`` bounds the time
between pieces of the reply too, so such a reply fails with a retryable timeout that
says what happened, the text before it kept; a reply that is slow but keeps moving on
is not cut. The OpenAI and Anthropic providers against real local HTTP servers.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import anyio
import pytest
from fault_server import KEEP_ALIVE, FaultServer, KeepAlive, Reply, SlowReply
from provider_streams import request, run, text_of
from test_provider_wire_faults import anthropic_events, claude
from wire_server import Behaviour, WireHandler, WireServer, chunk

from cm_notebook.errors import TransientProviderError
from cm_notebook.providers.base import Finish, StreamChunk, Usage
from cm_notebook.providers.openai import OpenAIProvider

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]

TIMEOUT = 0.5  # the provider's timeout: keep-alives alone fail a reply after this
# Far longer than TIMEOUT: a reply that is not bounded would hang past it (the failure
# the fix is for), and fails the test instead of hanging it.
DEADLINE = 20.0
KEEPALIVE_SAYS = f"the server sent only keep-alive messages for {TIMEOUT:g} s, no reply text"

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


def openai(server: FaultServer, timeout: float = TIMEOUT) -> OpenAIProvider:
    return OpenAIProvider("fault-model", base_url=server.url, timeout=timeout)


def assert_keepalive_timeout(error: Exception | None, provider: str) -> None:
    # A timeout like a read timeout: transient (retried), and it says what happened
    # and what to do.
    assert isinstance(error, TransientProviderError), error
    message = str(error)
    assert message.startswith(f"{provider}: the request timed out"), message
    assert KEEPALIVE_SAYS in message
    assert "provider_options={'timeout': ...}" in message
    assert "check the server" in message


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


async def test_openai_keepalives_before_any_text_fail_the_reply(
    fault_server: FaultServer,
) -> None:
    fault_server.script([KeepAlive([])])
    with anyio.fail_after(DEADLINE):
        events, error = await run(openai(fault_server))
    assert text_of(events) == ""
    assert_keepalive_timeout(error, "openai")
    assert "received before them" not in str(error)


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


async def test_anthropic_pings_before_any_event_fail_the_reply(wire: WireServer) -> None:
    wire.default = anthropic_keepalives([], ANTHROPIC_KEEPALIVES["ping event"])
    with anyio.fail_after(DEADLINE):
        events, error = await run(claude(wire, timeout=TIMEOUT))
    assert events == []
    assert_keepalive_timeout(error, "anthropic")


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
