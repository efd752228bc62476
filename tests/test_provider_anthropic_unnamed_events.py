"""Anthropic-format events sent as ``data:`` lines without ``event:`` lines (as some
proxies and compatible servers send them), over real HTTP: the reply is read by each
event's ``type``, an unnamed ``error`` event ends it with the server's message, and
events that are named, or whose data has no type, pass as before. A real local server
sends the bytes; nothing of the provider is replaced.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from provider_streams import run, text_of
from wire_server import Behaviour, WireHandler, WireServer

from cm_notebook.errors import PermanentProviderError, TransientProviderError
from cm_notebook.providers.anthropic import AnthropicProvider
from cm_notebook.providers.base import Finish, Usage

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]

START = {
    "type": "message_start",
    "message": {
        "id": "msg_wire",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    },
}
BLOCK = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}


def text(piece: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": piece},
    }


END = [
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 7},
    },
    {"type": "message_stop"},
]


def claude(server: WireServer) -> AnthropicProvider:
    return AnthropicProvider("claude-test", api_key="test-key", base_url=server.url, timeout=5)


def unnamed(
    events: list[dict[str, Any]], *, end: str = "\n", split: int | None = None
) -> Behaviour:
    """``events`` as ``data:`` lines only, lines ending with ``end``, the body sent
    ``split`` bytes to an HTTP chunk (each flushed on its own)."""

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        data = "".join(f"data: {json.dumps(e)}{end}{end}" for e in events).encode()
        size = split or len(data)
        for start in range(0, len(data), size):
            handler.raw(data[start : start + size])
        handler.end_stream()

    return behave


@pytest.mark.parametrize("split", [None, 1, 7])
@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
async def test_events_without_names_are_read_by_their_type(
    wire: WireServer, end: str, split: int | None
) -> None:
    ping = {"type": "ping"}
    wire.default = unnamed(
        [START, ping, BLOCK, text("Hel"), text("lo"), *END], end=end, split=split
    )
    events, failure = await run(claude(wire))
    assert failure is None
    assert text_of(events) == "Hello"
    assert events[-2:] == [Usage(5, 7), Finish("stop", "msg_wire")]
    assert len(wire.requests) == 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            {"type": "invalid_request_error", "message": "prompt is too long"},
            PermanentProviderError,
        ),
        ({"type": "overloaded_error", "message": "Overloaded"}, TransientProviderError),
    ],
)
async def test_an_unnamed_error_event_ends_the_reply_with_its_message(
    wire: WireServer, error: dict[str, str], kind: type[Exception]
) -> None:
    wire.default = unnamed([START, BLOCK, text("Hal"), {"type": "error", "error": error}])
    events, failure = await run(claude(wire))
    assert text_of(events) == "Hal"
    assert type(failure) is kind
    assert error["message"] in str(failure)
    assert "stream cut" not in str(failure)


async def test_named_events_and_data_without_a_type_pass_as_before(wire: WireServer) -> None:
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        handler.raw(b': a comment\n\ndata: not json\n\ndata: {"no": "type"}\n\n')
        for event in [START, BLOCK, text("Named."), *END]:
            handler.event(event, name=event["type"])
        handler.end_stream()

    wire.default = behave
    events, failure = await run(claude(wire))
    assert failure is None
    assert text_of(events) == "Named."
