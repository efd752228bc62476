"""Reasoning ("thinking") and refusals from OpenAI-compatible servers, against a real
local server sending what DeepSeek, llama.cpp, vLLM, OpenRouter and OpenAI send: the
reasoning is kept apart from the answer, stored with the reply, and sent back where a
thinking model with tools requires it (the server here refuses the request otherwise,
as DeepSeek does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from provider_streams import run, text_of
from wire_server import WireHandler, WireServer, chunk, usage_chunk

from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus
from cm_notebook.providers.base import Finish, ReasoningDelta, RefusalDelta
from cm_notebook.providers.local import _ChunkReader, _events
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.session import ContextSession
from cm_notebook.tools import tool

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]

THOUGHTS = ["Let me ", "think: 2+2", " is 4."]
ANSWER = ["The answer", " is 4."]
DEEPSEEK_400 = "The reasoning_content in the thinking mode must be passed back to the API."


def thinking_reply(
    field: str = "reasoning_content",
    thoughts: list[str] = THOUGHTS,
    answer: list[str] = ANSWER,
    *,
    finish: str = "stop",
    tool_call: dict[str, Any] | None = None,
) -> Any:
    """A reply streaming ``thoughts`` in ``field``, then ``answer`` (or a tool call)."""

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        handler.event(chunk({"role": "assistant", "content": None, field: ""}))
        for piece in thoughts:
            handler.event(chunk({"content": None, field: piece}))
        for piece in answer:
            handler.event(chunk({"content": piece, field: None}))
        if tool_call is not None:
            handler.event(chunk({"tool_calls": [tool_call]}))
        handler.event(chunk({}, finish))
        handler.event(usage_chunk({"prompt_tokens": 10, "completion_tokens": 30}))
        handler.event("[DONE]")
        handler.end_stream()

    return behave


def provider_for(wire: WireServer) -> OpenAIProvider:
    return OpenAIProvider("deepseek-reasoner", base_url=f"{wire.url}/v1", timeout=5.0)


def session_for(wire: WireServer, data_dir: Path, **options: Any) -> ContextSession:
    return ContextSession.create(
        provider="openai:deepseek-reasoner",
        provider_options={"base_url": f"{wire.url}/v1", "timeout": 5.0},
        data_dir=data_dir,
        **options,
    )


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_streams_apart_from_the_answer(wire: WireServer, field: str) -> None:
    wire.default = thinking_reply(field)
    events, error = await run(provider_for(wire))
    assert error is None
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == THOUGHTS
    assert text_of(events) == "".join(ANSWER)
    assert events[-1] == Finish("stop", "chatcmpl-wire")


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_a_reply_keeps_its_reasoning_on_disk(
    wire: WireServer, data_dir: Path, field: str
) -> None:
    wire.default = thinking_reply(field)
    session = session_for(wire, data_dir)
    reply = await session.send("2+2?")
    assert reply.content == "The answer is 4."
    assert reply.metadata.reasoning == "".join(THOUGHTS)
    assert reply.metadata.stats is not None
    assert reply.metadata.stats.ttft_ms is not None
    context_id = session.id
    session.close()
    reopened = ContextSession.open(context_id, data_dir=data_dir)
    try:
        stored = reopened.history()[-1]
        assert stored.metadata.reasoning == "".join(THOUGHTS)
        assert stored.content == "The answer is 4."
    finally:
        reopened.close()


async def test_a_reply_cut_while_thinking_is_a_length_reply_with_its_reasoning(
    wire: WireServer, data_dir: Path
) -> None:
    # A thinking model that used up max_tokens before answering: no text, but not an
    # empty success. The model was answering from its first thought on.
    wire.default = thinking_reply(answer=[], finish="length")
    session = session_for(wire, data_dir)
    states: list[State] = []
    session.subscribe(lambda e: states.append(e.new), kinds={"StateChanged"})
    reply = await session.send("A hard question.", max_tokens=30)
    assert reply.status is MessageStatus.COMPLETE
    assert reply.content == ""
    assert reply.metadata.finish_reason == "length"
    assert reply.metadata.reasoning == "".join(THOUGHTS)
    assert reply.metadata.stats is not None
    assert reply.metadata.stats.ttft_ms is not None  # from the first reasoning token
    assert State.STREAMING in states
    assert "reasoned but gave no answer" in reply._repr_html_()
    session.close()


def deepseek_tool_loop(handler: WireHandler, body: dict[str, Any]) -> None:
    """The second request of a tool loop, as DeepSeek's thinking mode judges it."""
    sent = [m for m in body["messages"] if m["role"] == "assistant" and m.get("tool_calls")]
    if not all(m.get("reasoning_content") for m in sent):
        error = {"message": DEEPSEEK_400, "type": "invalid_request_error"}
        handler.send_body(400, "application/json", json.dumps({"error": error}).encode())
        return
    thinking_reply(thoughts=["Sunny: say so."], answer=["It is sunny in Paris."])(handler, body)


async def test_the_reasoning_behind_tool_calls_is_sent_back(
    wire: WireServer, data_dir: Path
) -> None:
    @tool
    def get_weather(city: str) -> str:
        """Forecast for a city."""
        return f"{city}: sunny"

    call = {"index": 0, "id": "call_00_abc", "type": "function"}
    call["function"] = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    wire.behaviours.append(
        thinking_reply(
            thoughts=["The user wants ", "the weather."],
            answer=[],
            finish="tool_calls",
            tool_call=call,
        )
    )
    wire.behaviours.append(deepseek_tool_loop)
    wire.behaviours.append(thinking_reply(answer=["You're welcome."]))
    session = session_for(wire, data_dir, tools=[get_weather], approval="auto")
    reply = await session.send("Weather in Paris?")
    assert reply.status is MessageStatus.COMPLETE
    assert reply.content == "It is sunny in Paris."
    assert reply.metadata.reasoning == "Sunny: say so."
    assistant = wire.requests[1][2]["messages"][1]
    assert assistant["reasoning_content"] == "The user wants the weather."
    assert assistant["tool_calls"][0]["id"] == "call_00_abc"
    # The answer's reasoning does not go back with the next request: only with calls.
    await session.send("Thanks.")
    answer = wire.requests[2][2]["messages"][3]
    assert answer == {"role": "assistant", "content": "It is sunny in Paris."}
    session.close()


async def test_nothing_new_is_sent_without_recorded_reasoning(
    wire: WireServer, data_dir: Path
) -> None:
    # OpenAI's own API: no reasoning arrives, and no reasoning_content goes out.
    @tool
    def get_weather(city: str) -> str:
        """Forecast for a city."""
        return f"{city}: sunny"

    call = {"index": 0, "id": "call_1", "type": "function"}
    call["function"] = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    wire.behaviours.append(thinking_reply(thoughts=[], answer=[], tool_call=call))
    wire.behaviours.append(thinking_reply(thoughts=["Now answer."], answer=["Sunny."]))
    session = session_for(wire, data_dir, tools=[get_weather], approval="auto")
    await session.send("Weather in Paris?")
    await session.send("And tomorrow?")
    for _, _, body in wire.requests[1:]:
        for message in body["messages"]:
            assert "reasoning_content" not in message
            assert "reasoning" not in message
    session.close()


def refusal_reply(handler: WireHandler, body: dict[str, Any]) -> None:
    handler.start_stream()
    handler.event(chunk({"role": "assistant", "content": None, "refusal": None}))
    for piece in ["I'm sorry, ", "I can't help with that."]:
        handler.event(chunk({"refusal": piece}))
    handler.event(chunk({}, "stop"))
    handler.event("[DONE]")
    handler.end_stream()


async def test_a_refusal_is_kept_as_the_reply_and_marked(wire: WireServer, data_dir: Path) -> None:
    wire.default = refusal_reply
    events, error = await run(provider_for(wire))
    assert error is None
    assert [e.text for e in events if isinstance(e, RefusalDelta)] == [
        "I'm sorry, ",
        "I can't help with that.",
    ]
    session = session_for(wire, data_dir)
    reply = await session.send("Plan a bank robbery.")
    assert reply.status is MessageStatus.COMPLETE
    assert reply.content == "I'm sorry, I can't help with that."
    assert reply.metadata.refusal is True
    assert "refused" in reply._repr_html_()
    session.close()


async def test_the_local_provider_reads_llama_cpp_reasoning(wire: WireServer) -> None:
    # What llama.cpp streams for a thinking model (its default reasoning_format).
    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        handler.event(chunk({"role": "assistant", "content": None}))
        handler.event(chunk({"reasoning_content": "Okay, the user asks..."}))
        handler.event(chunk({"reasoning_content": " let me think"}))
        handler.event(chunk({"content": "Paris."}))
        handler.event(chunk({}, "stop"))
        handler.event("[DONE]")
        handler.end_stream()

    wire.default = behave
    async with httpx.AsyncClient(trust_env=False) as client:
        url = f"{wire.url}/v1/chat/completions"
        async with client.stream("POST", url, json={"stream": True}) as response:
            events = [event async for event in _events(_ChunkReader().chunks(response))]
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == [
        "Okay, the user asks...",
        " let me think",
    ]
    assert text_of(events) == "Paris."


def test_stream_chunks_check_their_fields() -> None:
    with pytest.raises(TypeError):
        ReasoningDelta(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RefusalDelta(None)  # type: ignore[arg-type]


def strict_server(handler: WireHandler, body: dict[str, Any]) -> None:
    """A server with a strict message schema (Groq, Mistral): unknown fields refused."""
    for index, message in enumerate(body["messages"]):
        if "reasoning_content" in message:
            detail = f"messages.{index}: property 'reasoning_content' is unsupported"
            error = {"message": detail, "type": "invalid_request_error"}
            handler.send_body(400, "application/json", json.dumps({"error": error}).encode())
            return
    thinking_reply("reasoning", thoughts=["ok"], answer=["Sunny."])(handler, body)


WEATHER_CALL = {
    "index": 0,
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


async def test_reasoning_goes_back_only_as_it_came_and_to_the_model_that_wrote_it(
    wire: WireServer, data_dir: Path
) -> None:
    @tool
    def get_weather(city: str) -> str:
        """Forecast for a city."""
        return f"{city}: sunny"

    # Reasoning streamed as `reasoning` (Groq's gpt-oss) is not sent back at all.
    wire.behaviours.extend(
        [
            thinking_reply("reasoning", ["Need weather."], [], tool_call=WEATHER_CALL),
            strict_server,
        ]
    )
    session = session_for(wire, data_dir, tools=[get_weather], approval="auto")
    try:
        reply = await session.send("Weather in Paris?")
        assert reply.content == "Sunny."
        calling = session.history()[1]
        assert calling.metadata.reasoning == "Need weather."
        assert calling.metadata.reasoning_field == "reasoning"
    finally:
        session.close()
    # DeepSeek's reasoning_content goes back to DeepSeek, not to another model.
    wire.behaviours.extend(
        [
            thinking_reply(thoughts=["Need it."], answer=[], tool_call=WEATHER_CALL),
            deepseek_tool_loop,
            strict_server,
        ]
    )
    session = session_for(wire, data_dir, tools=[get_weather], approval="auto")
    try:
        await session.send("Weather in Rome?")
        assert session.history()[1].metadata.reasoning_field == "reasoning_content"
        other = OpenAIProvider("mistral-large", base_url=f"{wire.url}/v1", timeout=5.0)
        answer = await session.send("And tomorrow?", provider=other)
        assert answer.content == "Sunny."
    finally:
        session.close()
