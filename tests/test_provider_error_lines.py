"""llama.cpp reports a failure met mid-reply with a line of its own field,
``error: {"code": 500, "message": ...}``, after the text it had streamed. Over the
``openai:`` provider the reply must end with the server's message, judged by its code
(a 5xx retried, a 4xx not), however the line is split across the network's chunks.
A real local server sends the bytes; nothing of the provider is replaced."""

from __future__ import annotations

import json
from typing import Any

import pytest
from provider_streams import run, text_of
from wire_server import Behaviour, WireHandler, WireServer, chunk

from cm_notebook.errors import PermanentProviderError, TransientProviderError
from cm_notebook.providers.base import Finish
from cm_notebook.providers.openai import OpenAIProvider

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]

KV_CACHE = {"code": 500, "message": "llama_decode failed: out of KV cache slots"}


def gpt(server: WireServer) -> OpenAIProvider:
    return OpenAIProvider("m", base_url=f"{server.url}/v1", timeout=5)


def error_line(
    error: object, *, end: str = "\n", blank: bool = True, split: int | None = None
) -> Behaviour:
    """Some text, then ``error: <error>`` and the end of the body; ``split``: the
    error line's bytes sent that many to an HTTP chunk, each flushed on its own."""

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        handler.raw(
            f"data: {json.dumps(chunk({'role': 'assistant', 'content': 'Hel'}))}{end}{end}".encode()
        )
        text = error if isinstance(error, str) else json.dumps(error)
        line = f"error: {text}{end}{end if blank else ''}".encode()
        size = split or len(line)
        for start in range(0, len(line), size):
            handler.raw(line[start : start + size])
        handler.end_stream()

    return behave


@pytest.mark.parametrize("split", [None, 1, 2, 5])
@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
async def test_a_mid_reply_error_line_ends_the_reply_with_the_servers_message(
    wire: WireServer, split: int | None, end: str
) -> None:
    wire.default = error_line(KV_CACHE, end=end, split=split)
    events, failure = await run(gpt(wire))
    assert text_of(events) == "Hel"  # what came before the error stays with the reply
    assert isinstance(failure, TransientProviderError)  # a 500: worth another try
    assert "llama_decode failed: out of KV cache slots" in str(failure)
    assert "stream cut" not in str(failure)


@pytest.mark.parametrize("blank", [True, False])
async def test_an_error_line_at_the_very_end_of_the_body_is_read(
    wire: WireServer, blank: bool
) -> None:
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        handler.event(chunk({"content": "Hel"}))
        handler.raw(b"error: " + json.dumps(KV_CACHE).encode() + (b"\n" if blank else b""))
        handler.end_stream()

    wire.default = behave
    _, failure = await run(gpt(wire))
    assert isinstance(failure, TransientProviderError)
    assert "out of KV cache slots" in str(failure)


async def test_an_error_line_with_a_4xx_code_is_not_retried(wire: WireServer) -> None:
    error = {"code": 400, "message": "the request exceeds the available context size"}
    wire.default = error_line(error, split=3)
    _, failure = await run(gpt(wire))
    assert isinstance(failure, PermanentProviderError)
    assert "exceeds the available context size" in str(failure)


async def test_an_error_line_of_plain_text_keeps_the_text(wire: WireServer) -> None:
    wire.default = error_line("the model crashed")
    _, failure = await run(gpt(wire))
    assert isinstance(failure, TransientProviderError)
    assert "the model crashed" in str(failure)


async def test_lines_that_only_begin_like_an_error_field_are_data_as_before(
    wire: WireServer,
) -> None:
    # "err", "errors:" and "error" without a colon are not the error field; a text that
    # says "error:" inside a data line is text.
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        for raw in (b"err", b"ors: 1\n", b"error\n", b": comment error: x\n\n"):
            handler.raw(raw)
        handler.event(chunk({"role": "assistant", "content": "error: none"}))
        handler.event(chunk({}, "stop"))
        handler.event("[DONE]")
        handler.end_stream()

    wire.default = behave
    events, failure = await run(gpt(wire))
    assert failure is None
    assert text_of(events) == "error: none"
    assert isinstance(events[-1], Finish)
    assert events[-1].reason == "stop"
