"""ScriptedProvider: the deterministic fake model every other test builds on."""

from __future__ import annotations

import json
from collections.abc import Sequence

import anyio
import pytest

from cm_notebook.errors import (
    InvalidInputError,
    PermanentProviderError,
    TransientProviderError,
)
from cm_notebook.model import Message
from cm_notebook.providers import (
    ChatRequest,
    Finish,
    Provider,
    StreamChunk,
    TextDelta,
    ToolCallRequest,
    Usage,
    get_provider,
)
from cm_notebook.testing import ScriptedProvider, ScriptExhaustedError


def request(*texts: str) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text) for text in texts])


async def collect(provider: ScriptedProvider, req: ChatRequest | None = None) -> list[StreamChunk]:
    return [event async for event in provider.stream(req or request("hi"))]


async def drain(fake: ScriptedProvider, seen: list[StreamChunk]) -> None:
    """Like collect, but keeps the events seen before an error or cancellation."""
    async for event in fake.stream(request("q")):
        seen.append(event)


def texts(events: Sequence[StreamChunk]) -> list[str]:
    return [event.text for event in events if isinstance(event, TextDelta)]


def test_is_a_provider() -> None:
    fake = ScriptedProvider()
    assert isinstance(fake, Provider)
    assert (fake.name, fake.model) == ("scripted", "scripted")


@pytest.mark.anyio
async def test_reply_defaults_to_one_delta_estimated_usage_and_stop() -> None:
    fake = ScriptedProvider().reply("Hello there")
    events = await collect(fake, request("one two three"))
    assert events == [TextDelta("Hello there"), Usage(3, 2), Finish("stop")]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (None, ["Hello big world"]),
        (4, ["Hell", "o bi", "g wo", "rld"]),
        ("words", ["Hello ", "big ", "world"]),
        (["Hel", "lo big", " world"], ["Hel", "lo big", " world"]),
    ],
)
async def test_reply_chunking(chunks: int | str | list[str] | None, expected: list[str]) -> None:
    fake = ScriptedProvider().reply("Hello big world", chunks=chunks)  # type: ignore[arg-type]
    assert texts(await collect(fake)) == expected


@pytest.mark.parametrize("chunks", [0, -3, True, "letters", ["not", "the text"]])
def test_bad_chunks_are_refused(chunks: object) -> None:
    with pytest.raises(InvalidInputError):
        ScriptedProvider().reply("the text", chunks=chunks)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_reply_usage_finish_and_empty_text() -> None:
    fake = (
        ScriptedProvider()
        .reply("a", usage=Usage(10, 20))
        .reply("b", usage=(1, 2), finish="length")
        .reply("", finish=None)
    )
    assert await collect(fake) == [TextDelta("a"), Usage(10, 20), Finish("stop")]
    assert await collect(fake) == [TextDelta("b"), Usage(1, 2), Finish("length")]
    # No text, and no Finish: a backend that ends the stream without saying why.
    assert await collect(fake, request("x y")) == [Usage(2, 0)]


@pytest.mark.anyio
async def test_tool_call_ids_are_deterministic_and_arguments_are_json() -> None:
    fake = (
        ScriptedProvider()
        .tool_call("add", {"a": 1, "b": 2})
        .tool_call("add", '{"a": oops', text="Let me add. ")
        .tool_call("now", id="my-id")
    )
    first = await collect(fake)
    assert first[0] == ToolCallRequest("call_1", "add", '{"a": 1, "b": 2}')
    assert json.loads(first[0].arguments_json) == {"a": 1, "b": 2}  # type: ignore[union-attr]
    assert first[-1] == Finish("tool_calls")
    second = await collect(fake)
    # Raw strings go through verbatim, so tests can send the model's broken JSON.
    assert second[:2] == [TextDelta("Let me add. "), ToolCallRequest("call_2", "add", '{"a": oops')]
    third = await collect(fake)
    assert third[0] == ToolCallRequest("my-id", "now", "{}")


@pytest.mark.anyio
async def test_several_tool_calls_in_one_reply() -> None:
    ready = ToolCallRequest("x1", "mul", '{"a": 3}')
    fake = ScriptedProvider().tool_calls(("add", {"a": 1}), ("div", {"a": 2}, "given"), ready)
    events = await collect(fake)
    calls = [event for event in events if isinstance(event, ToolCallRequest)]
    assert [(c.id, c.name) for c in calls] == [("call_1", "add"), ("given", "div"), ("x1", "mul")]
    assert events[-1] == Finish("tool_calls")
    with pytest.raises(InvalidInputError):
        fake.tool_calls()
    with pytest.raises(InvalidInputError):
        fake.tool_call("", {})


@pytest.mark.parametrize(
    "calls",
    [
        ([("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})],),
        (("get_weather",),),
        ((1, {}),),
    ],
    ids=["a list of calls", "no arguments", "no name"],
)
def test_tool_calls_given_in_another_shape_say_the_shape(calls: tuple[object, ...]) -> None:
    with pytest.raises(InvalidInputError, match=r"each tool call is \(name, arguments\)"):
        ScriptedProvider().tool_calls(*calls)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_transient_and_permanent_errors() -> None:
    fake = ScriptedProvider().error("transient", retry_after=2.5).error("permanent").reply("ok")
    with pytest.raises(TransientProviderError) as transient:
        await collect(fake)
    assert transient.value.retry_after == 2.5
    with pytest.raises(PermanentProviderError):
        await collect(fake)
    assert texts(await collect(fake)) == ["ok"]  # the retry after a failure succeeds


@pytest.mark.anyio
async def test_error_mid_stream_after_chunks() -> None:
    fake = (
        ScriptedProvider()
        .error("transient", after_chunks=2)
        .error("permanent", after_chunks=3, text="abcdefgh", message="boom")
    )
    seen: list[StreamChunk] = []
    with pytest.raises(TransientProviderError):
        await drain(fake, seen)
    assert seen == [TextDelta("part1 "), TextDelta("part2 ")]
    seen.clear()
    with pytest.raises(PermanentProviderError, match="boom"):
        await drain(fake, seen)
    assert texts(seen) == ["abc", "def", "gh"]


@pytest.mark.anyio
async def test_error_accepts_exception_instances_and_classes() -> None:
    boom = RuntimeError("a bug in the backend")
    fake = ScriptedProvider([boom, boom]).error(KeyError)
    for _ in range(2):  # the same instance can be raised twice
        with pytest.raises(RuntimeError, match="a bug in the backend"):
            await collect(fake)
    with pytest.raises(KeyError):
        await collect(fake)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"error": "permanent", "retry_after": 1.0}, "retry_after"),
        ({"error": "sometimes"}, "transient"),
        ({"error": "transient", "after_chunks": -1}, "after_chunks"),
    ],
)
def test_bad_error_scripts_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        ScriptedProvider().error(**kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_seeding_the_script_in_the_constructor() -> None:
    events = [TextDelta("raw"), Finish("stop")]
    fake = ScriptedProvider(["first", events, TransientProviderError("flaky")])
    assert texts(await collect(fake)) == ["first"]
    assert await collect(fake) == events  # event sequences are streamed verbatim
    with pytest.raises(TransientProviderError, match="flaky"):
        await collect(fake)


@pytest.mark.anyio
async def test_events_streams_exactly_what_it_is_given() -> None:
    fake = ScriptedProvider().chunks(TextDelta("x"), TextDelta("y"))
    assert await collect(fake) == [TextDelta("x"), TextDelta("y")]


@pytest.mark.anyio
async def test_requests_are_recorded_when_stream_is_called() -> None:
    fake = ScriptedProvider().reply("a").reply("b")
    first, second = request("one"), request("two")
    stream_one = fake.stream(first)
    fake.stream(second)  # never iterated: still recorded, and it took the second turn
    assert fake.requests == [first, second]
    assert fake.last_request is second
    assert texts([event async for event in stream_one]) == ["a"]
    assert fake.remaining == 0


def test_only_the_last_keep_requests_requests_are_kept() -> None:
    # A long run must not hold every request (each one carries its whole conversation).
    fake = ScriptedProvider(keep_requests=3)
    sent = [request(f"q{i}") for i in range(10)]
    for req in sent:
        fake.stream(req)
    assert fake.requests == sent[-3:]
    assert fake.last_request is sent[-1]
    assert fake.request_count == 10
    assert "requests=10" in repr(fake)
    assert ScriptedProvider().keep_requests == ScriptedProvider.KEEP_REQUESTS
    everything = ScriptedProvider(keep_requests=None)
    for req in sent:
        everything.stream(req)
    assert everything.requests == sent


@pytest.mark.parametrize("keep", [0, -1, 2.5, True, "10"])
def test_bad_keep_requests_is_refused(keep: object) -> None:
    with pytest.raises(InvalidInputError, match="keep_requests"):
        ScriptedProvider(keep_requests=keep)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_strict_numbers_requests_beyond_those_kept() -> None:
    fake = ScriptedProvider(["one"], strict=True, keep_requests=1)
    await collect(fake)
    with pytest.raises(ScriptExhaustedError, match="request #2"):
        await collect(fake)


@pytest.mark.anyio
async def test_empty_script_echoes_the_last_user_message() -> None:
    fake = ScriptedProvider()
    convo = ChatRequest(
        messages=[
            Message(role="system", content="be brief"),
            Message(role="user", content="hello big world"),
            Message(role="assistant", content="hi"),
        ]
    )
    events = await collect(fake, convo)
    assert "".join(texts(events)) == "echo: hello big world"
    assert len(texts(events)) > 1  # streamed word by word, so views see real deltas
    assert events[-1] == Finish("stop")
    no_user = await collect(fake, ChatRequest(messages=[]))
    assert "".join(texts(no_user)) == "echo: "


@pytest.mark.anyio
async def test_strict_script_raises_when_exhausted() -> None:
    fake = ScriptedProvider(["only one"], strict=True)
    await collect(fake)
    with pytest.raises(ScriptExhaustedError, match="request #2") as info:
        await collect(fake)
    assert isinstance(info.value, PermanentProviderError)


@pytest.mark.anyio
async def test_delays_use_anyio_sleep_and_can_be_cancelled() -> None:
    fake = ScriptedProvider(delay=0.01).reply("a b c", chunks="words").reply("slow", delay=30)
    start = anyio.current_time()
    assert texts(await collect(fake)) == ["a ", "b ", "c"]
    assert anyio.current_time() - start >= 0.03
    seen: list[StreamChunk] = []
    with anyio.move_on_after(0.05) as scope:
        await drain(fake, seen)
    assert scope.cancelled_caught
    assert seen == []


@pytest.mark.anyio
async def test_delay_applies_to_tool_calls_too() -> None:
    fake = ScriptedProvider().tool_call("f", {}, delay=30)
    with anyio.move_on_after(0.05) as scope:
        await collect(fake)
    assert scope.cancelled_caught


@pytest.mark.parametrize("delay", [-1.0])
def test_negative_delay_is_refused(delay: float) -> None:
    with pytest.raises(InvalidInputError):
        ScriptedProvider(delay=delay)
    with pytest.raises(InvalidInputError):
        ScriptedProvider().reply("x", delay=delay)


@pytest.mark.anyio
async def test_hang_waits_until_cancelled() -> None:
    fake = ScriptedProvider().hang(after_chunks=2, text="abcd")
    seen: list[StreamChunk] = []
    with anyio.move_on_after(0.05) as scope:
        await drain(fake, seen)
    assert scope.cancelled_caught
    assert seen == [TextDelta("ab"), TextDelta("cd")]


@pytest.mark.anyio
async def test_aclose_marks_closed() -> None:
    fake = ScriptedProvider()
    await fake.aclose()
    assert fake.closed


def test_repr_shows_progress() -> None:
    fake = ScriptedProvider(["a", "b"], strict=True)
    assert repr(fake) == (
        "ScriptedProvider(model='scripted', remaining=2, requests=0, strict=True)"
    )


@pytest.mark.anyio
async def test_registry_builds_fresh_fakes_and_passes_instances_through() -> None:
    first, second = get_provider("scripted"), get_provider("scripted:label", strict=True)
    assert isinstance(first, ScriptedProvider)
    assert isinstance(second, ScriptedProvider)
    assert first is not second
    assert second.model == "label"
    assert second.strict
    scripted = ScriptedProvider(["shared"])
    assert get_provider(scripted) is scripted
    assert texts(await collect(scripted)) == ["shared"]


# -- scripts given as JSON (provider options, REST) -------------------------------------


def test_load_builds_turns_from_json_values() -> None:
    fake = ScriptedProvider.from_spec(
        None,
        script=[
            {"reply": "Hi there", "chunks": "words", "usage": [3, 2]},
            {"tool_call": "add", "arguments": {"a": 1}, "id": "c1"},
            {"error": "transient", "after_chunks": 1},
            {"hang": True},
        ],
    )
    assert fake.remaining == 4


@pytest.mark.parametrize(
    "script",
    [
        "reply",
        {"reply": "x"},
        [{"reply": "x", "tool_call": "y"}],
        [{}],
        [{"reply": "x", "colour": "red"}],
        [{"reply": 5}],
        [{"hang": False}],
        [{"error": "sometimes"}],
        [{"reply": "x", "chunks": "letters"}],
    ],
)
def test_load_refuses_malformed_scripts(script: object) -> None:
    with pytest.raises(InvalidInputError):
        ScriptedProvider().load(script)  # type: ignore[arg-type]
