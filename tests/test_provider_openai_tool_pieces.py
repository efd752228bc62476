"""Tool calls streamed in pieces by OpenAI-compatible servers, over real HTTP: parallel
calls without ids under one index (or none) stay apart, while a server that repeats
the function name in every piece of one call still gives one call. A real local
server sends the bytes; nothing of the provider is replaced.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from provider_streams import run
from wire_server import Behaviour, WireHandler, WireServer, chunk

from cm_notebook.providers.base import Finish, ToolCallRequest
from cm_notebook.providers.openai import OpenAIProvider

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]

NO_INDEX = -1


def piece(name: str | None, arguments: str, index: int = 0) -> dict[str, Any]:
    """A tool-call piece without an id (``index`` NO_INDEX: without an index either)."""
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    call: dict[str, Any] = {"type": "function", "function": function}
    if index != NO_INDEX:
        call["index"] = index
    return chunk({"tool_calls": [call]})


def calls_then_finish(*pieces: dict[str, Any]) -> Behaviour:
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        for sent in pieces:
            handler.event(sent)
        handler.event(chunk({}, "tool_calls"))
        handler.event("[DONE]")
        handler.end_stream()

    return behave


async def calls(wire: WireServer, *pieces: dict[str, Any]) -> list[tuple[str, str, Any]]:
    wire.default = calls_then_finish(*pieces)
    provider = OpenAIProvider("m", base_url=f"{wire.url}/v1", timeout=5, include_usage=False)
    events, failure = await run(provider)
    assert failure is None
    assert events[-1] == Finish("tool_calls")
    requests = [e for e in events if isinstance(e, ToolCallRequest)]
    return [(c.id, c.name, json.loads(c.arguments_json)) for c in requests]


@pytest.mark.parametrize("index", [0, NO_INDEX])
async def test_whole_calls_without_ids_under_one_index_stay_apart(
    wire: WireServer, index: int
) -> None:
    got = await calls(
        wire,
        piece("get_weather", '{"city": "Paris"}', index),
        piece("get_time", '{"tz": "UTC"}', index),
        piece("get_weather", '{"city": "Rome"}', index),
    )
    assert got == [
        ("call_0", "get_weather", {"city": "Paris"}),
        ("call_0_1", "get_time", {"tz": "UTC"}),
        ("call_0_2", "get_weather", {"city": "Rome"}),
    ]


async def test_one_tool_called_twice_in_fragments_without_ids_gives_two_calls(
    wire: WireServer,
) -> None:
    got = await calls(
        wire,
        piece("get_weather", ""),
        piece(None, '{"city":'),
        piece(None, ' "Paris"}'),
        piece("get_weather", ""),
        piece(None, '{"city": "Rome"}'),
    )
    assert got == [
        ("call_0", "get_weather", {"city": "Paris"}),
        ("call_0_1", "get_weather", {"city": "Rome"}),
    ]


async def test_a_name_repeated_in_every_piece_of_one_call_gives_one_call(
    wire: WireServer,
) -> None:
    got = await calls(
        wire,
        piece("search", ""),
        piece("search", '{"q":'),
        piece("search", ' "cats", "n": 2'),
        piece("search", "}"),
        piece("search", ""),  # a closing piece that repeats the name once more
        piece("lookup", '{"id": 7}', 1),
    )
    assert got == [
        ("call_0", "search", {"q": "cats", "n": 2}),
        ("call_1", "lookup", {"id": 7}),
    ]


@pytest.mark.parametrize(
    "tail",
    [
        [piece("get", "\n")],  # white space with the name repeated
        [piece("get", ""), piece(None, " ")],  # the name alone, then white space
    ],
)
async def test_white_space_after_a_whole_call_starts_no_other(
    wire: WireServer, tail: list[dict[str, Any]]
) -> None:
    got = await calls(wire, piece("get", '{"a": '), piece("get", "1}"), *tail)
    assert got == [("call_0", "get", {"a": 1})]


async def test_an_id_sent_after_a_whole_call_is_that_call_s(wire: WireServer) -> None:
    late_id = chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "call_late", "type": "function", "function": {"arguments": ""}}
            ]
        }
    )
    got = await calls(wire, piece("get", '{"a": 1}'), late_id)
    assert got == [("call_late", "get", {"a": 1})]
