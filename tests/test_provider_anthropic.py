"""The Anthropic provider without a network: event translation on recorded streams,
message conversion, and error translation with real SDK exception objects.

``test_provider_anthropic_e2e.py`` replays the same recordings through the SDK's real
HTTP client against a local server."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from cm_notebook.errors import (
    InvalidInputError,
    PermanentProviderError,
    ProviderError,
    ProviderSetupError,
    TransientProviderError,
)
from cm_notebook.model import Message, ToolCall, ToolCallStatus
from cm_notebook.providers import (
    ChatRequest,
    Finish,
    ReasoningBlock,
    ReasoningDelta,
    StreamChunk,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    Usage,
    get_provider,
)
from cm_notebook.providers.anthropic import (
    AnthropicEventTranslator,
    AnthropicProvider,
    build_request,
    map_stop_reason,
    to_anthropic_messages,
    translate_sdk_error,
)

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
ADAPTER: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)


ALL = sorted(path.stem for path in FIXTURES.glob("*.json"))
_EXPECTED_KINDS: dict[str, Any] = {
    "text": TextDelta,
    "tool_call": ToolCallRequest,
    "usage": Usage,
    "finish": Finish,
}
_ERRORS = {"transient": TransientProviderError, "permanent": PermanentProviderError}


@dataclass(frozen=True)
class Recording:
    """A recorded stream: wire events, the provider events they must produce, and the
    error (class, message pattern) they must end with, if any."""

    events: list[dict[str, Any]]
    expected: list[StreamChunk]
    error: type[ProviderError] | None
    match: str | None

    def sdk_events(self) -> list[RawMessageStreamEvent | dict[str, Any]]:
        """The events parsed into the SDK's models. ``ping`` and ``error`` are not in the
        SDK's event union (its stream drops pings and raises errors): they stay dicts."""
        return [
            event if event["type"] in ("ping", "error") else ADAPTER.validate_python(event)
            for event in self.events
        ]


def recording(name: str) -> Recording:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    expected = [_EXPECTED_KINDS[e.pop("type")](**e) for e in data["expected"]]
    error = data["error"]
    return Recording(
        data["events"],
        expected,
        _ERRORS[error["kind"]] if error else None,
        error["match"] if error else None,
    )


def wire_events(name: str) -> list[dict[str, Any]]:
    return recording(name).events


def translate(events: list[Any]) -> list[StreamChunk]:
    translator = AnthropicEventTranslator()
    out: list[StreamChunk] = []
    for event in events:
        out.extend(translator.feed(event))
    translator.finish()
    return out


def feed_all(
    translator: AnthropicEventTranslator, events: list[Any], seen: list[StreamChunk]
) -> None:
    """Feed every event, then end the stream, keeping the output before an error."""
    for event in events:
        seen.extend(translator.feed(event))
    translator.finish()


# -- the translator on recorded sequences -----------------------------------------------


def test_every_kind_of_recording_is_there() -> None:
    assert set(ALL) >= {
        "text_only",
        "tool_use",
        "text_and_tool_use",
        "max_tokens",
        "cut_stream",
        "overloaded_error",
        "invalid_request_error",
    }


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("parsed", [True, False], ids=["sdk-models", "wire-json"])
def test_recorded_streams_translate(name: str, parsed: bool) -> None:
    rec = recording(name)
    events = rec.sdk_events() if parsed else rec.events
    seen: list[StreamChunk] = []
    if rec.error is None:
        feed_all(AnthropicEventTranslator(), events, seen)
    else:
        with pytest.raises(rec.error, match=rec.match) as info:
            feed_all(AnthropicEventTranslator(), events, seen)
        assert info.value.provider == "anthropic"
    assert seen == rec.expected


def test_tool_input_partials_join_into_valid_json() -> None:
    call = translate(recording("tool_use").sdk_events())[0]
    assert isinstance(call, ToolCallRequest)
    assert json.loads(call.arguments_json) == {"location": "San Francisco, CA", "unit": "celsius"}


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        (None, "stop"),
        ("pause_turn", "pause_turn"),
        ("refusal", "refusal"),  # not content_filter: the model declined, no filter
    ],
)
def test_stop_reasons(reason: str | None, finish: str) -> None:
    assert map_stop_reason(reason) == finish


def test_usage_counts_cached_input_and_cumulative_deltas() -> None:
    events = wire_events("text_only")
    events[0]["message"]["usage"].update(
        cache_creation_input_tokens=100, cache_read_input_tokens=1000
    )
    assert Usage(1121, 12) in translate(events)
    # A message_delta that restates input tokens (cumulative) replaces the first count.
    events[-2]["usage"]["input_tokens"] = 30
    assert Usage(30, 12) in translate(events)


def test_unknown_and_unused_events_are_skipped() -> None:
    events = wire_events("text_only")
    thinking = [
        {
            "type": "content_block_start",
            "index": 5,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {
            "type": "content_block_delta",
            "index": 5,
            "delta": {"type": "thinking_delta", "thinking": "hmm"},
        },
        {"type": "content_block_stop", "index": 5},
        {"type": "a_future_event", "payload": 1},
        {"type": "content_block_start", "index": 6, "content_block": {"type": "hologram"}},
        {"type": "content_block_delta", "index": 6, "delta": {"type": "hologram_delta"}},
        {"type": "content_block_stop", "index": 6},
    ]
    # Thinking is read (apart from the text); what this version does not know is skipped.
    assert translate(events[:1] + thinking + events[1:]) == [
        ReasoningDelta("hmm"),
        ReasoningBlock("thinking", thinking="hmm"),
        *recording("text_only").expected,
    ]
    # Events after message_stop are ignored.
    assert translate([*events, *events[1:4]]) == recording("text_only").expected


def test_input_json_for_a_non_tool_block_is_malformed() -> None:
    translator = AnthropicEventTranslator()
    with pytest.raises(TransientProviderError, match="malformed"):
        translator.feed(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": "{"},
            }
        )


def test_a_garbled_known_event_is_malformed() -> None:
    with pytest.raises(TransientProviderError, match="malformed"):
        AnthropicEventTranslator().feed({"type": "content_block_stop"})


# -- message conversion -----------------------------------------------------------------


def test_conversion_separates_system_and_alternates() -> None:
    messages = [
        Message(role="system", content="You are terse."),
        Message(role="user", content="Hi"),
        Message(role="user", content="Still there?"),
        Message(role="assistant", content=""),  # an empty reply is dropped
        Message(role="assistant", content="Yes."),
        Message(role="system", content="Answer in French."),
    ]
    system, converted = to_anthropic_messages(messages)
    assert system == "You are terse.\n\nAnswer in French."
    assert converted == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Still there?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
    ]


def test_conversion_of_tool_calls_and_results() -> None:
    messages = [
        Message(role="user", content="2+40 and the time?"),
        Message(
            role="assistant",
            content="Checking.",
            tool_calls=[
                ToolCall(id="t1", name="add", arguments={"a": 2, "b": 40}),
                ToolCall(id="t2", name="now", status=ToolCallStatus.DENIED, reason="no"),
            ],
        ),
        Message(role="tool", tool_call_id="t1", content="42"),
        Message(role="tool", tool_call_id="t2", content="denied: no"),
        Message(role="user", content="Thanks"),
    ]
    system, converted = to_anthropic_messages(messages)
    assert system is None
    assert converted[1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "t1", "name": "add", "input": {"a": 2, "b": 40}},
            {"type": "tool_use", "id": "t2", "name": "now", "input": {}},
        ],
    }
    # Both results and the next user text share one user message, results first.
    assert converted[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
            {"type": "tool_result", "tool_use_id": "t2", "content": "denied: no", "is_error": True},
            {"type": "text", "text": "Thanks"},
        ],
    }
    assert len(converted) == 3


def test_tool_message_without_call_id_is_refused() -> None:
    with pytest.raises(PermanentProviderError, match="tool_call_id"):
        to_anthropic_messages([Message(role="tool", content="42")])


def test_build_request_params_and_tools() -> None:
    request = ChatRequest(
        messages=[Message(role="system", content="sys"), Message(role="user", content="hi")],
        tools=[
            ToolSpec("add", "Add numbers", {"type": "object", "properties": {"a": {}}}),
            ToolSpec("now", "", {}),
        ],
        params={"temperature": 0.2, "top_k": 5, "seed": 7, "stop": "END", "max_tokens": 50},
    )
    kwargs = build_request(request, model="claude-haiku-4-5", max_tokens=1024)
    assert kwargs["model"] == "claude-haiku-4-5"
    assert kwargs["max_tokens"] == 50
    assert kwargs["system"] == "sys"
    assert kwargs["stop_sequences"] == ["END"]
    assert kwargs["extra_body"] == {"temperature": 0.2, "top_k": 5}  # seed: not an Anthropic param
    assert kwargs["tools"] == [
        {
            "name": "add",
            "input_schema": {"type": "object", "properties": {"a": {}}},
            "description": "Add numbers",
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    override = build_request(
        ChatRequest(messages=[], params={"model": "claude-other"}), model="m", max_tokens=9
    )
    assert (override["model"], override["max_tokens"]) == ("claude-other", 9)
    assert "system" not in override
    assert "tools" not in override


def test_extended_thinking_is_asked_for_with_a_budget_or_the_apis_object() -> None:
    def sent(params: dict[str, Any]) -> dict[str, Any]:
        request = ChatRequest(messages=[Message(role="user", content="hi")], params=params)
        return build_request(request, model="claude-sonnet-4-5", max_tokens=1024)

    # A budget: the API's object, and max_tokens room for the answer beyond it.
    kwargs = sent({"thinking": 2000})
    assert kwargs["extra_body"] == {"thinking": {"type": "enabled", "budget_tokens": 2000}}
    assert kwargs["max_tokens"] == 3024
    assert sent({"thinking": 2000, "max_tokens": 8000})["max_tokens"] == 8000
    # The API's own object goes as given; none (or False) asks for nothing.
    adaptive = sent({"thinking": {"type": "adaptive"}})
    assert adaptive["extra_body"] == {"thinking": {"type": "adaptive"}}
    assert adaptive["max_tokens"] == 1024
    assert "extra_body" not in sent({"thinking": False})
    for wrong in ("lots", True, 0, {"budget_tokens": 5}):
        with pytest.raises(PermanentProviderError, match="not a thinking setting; give a"):
            sent({"thinking": wrong})
    assert "thinking" in AnthropicProvider.parameters


# -- error translation with real SDK exceptions -----------------------------------------

URL = "https://api.anthropic.com/v1/messages"


def response(status: int, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(status, headers=headers or {}, request=httpx2.Request("POST", URL))


def body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def test_rate_limit_is_transient_with_retry_after() -> None:
    exc = anthropic.RateLimitError(
        "rate limited",
        response=response(429, {"retry-after": "7"}),
        body=body("rate_limit_error", "slow down"),
    )
    error = translate_sdk_error(exc, model="claude-x")
    assert isinstance(error, TransientProviderError)
    assert (error.status_code, error.retry_after) == (429, 7.0)
    assert "slow down" in str(error)


@pytest.mark.parametrize(
    ("cls", "status", "kind", "expected", "needle"),
    [
        (
            anthropic.AuthenticationError,
            401,
            "authentication_error",
            ProviderSetupError,
            "ANTHROPIC_API_KEY",
        ),
        (
            anthropic.PermissionDeniedError,
            403,
            "permission_error",
            ProviderSetupError,
            "claude-x",
        ),
        (anthropic.NotFoundError, 404, "not_found_error", ProviderSetupError, "claude-x"),
        (
            anthropic.BadRequestError,
            400,
            "invalid_request_error",
            PermanentProviderError,
            "bad field",
        ),
        (anthropic.InternalServerError, 500, "api_error", TransientProviderError, "HTTP 500"),
        (anthropic.OverloadedError, 529, "overloaded_error", TransientProviderError, "HTTP 529"),
    ],
)
def test_status_errors(
    cls: type[anthropic.APIStatusError],
    status: int,
    kind: str,
    expected: type[ProviderError],
    needle: str,
) -> None:
    exc = cls("error", response=response(status), body=body(kind, "bad field"))
    error = translate_sdk_error(exc, model="claude-x")
    assert type(error) is expected
    assert error is not None
    assert error.status_code == status
    assert needle in str(error)


def test_error_event_raised_by_the_sdk_inside_a_200_stream() -> None:
    # The SDK turns an SSE ``error`` event into an APIStatusError carrying the 200 status.
    exc = anthropic.APIStatusError(
        "overloaded", response=response(200), body=body("overloaded_error", "Overloaded")
    )
    assert isinstance(translate_sdk_error(exc), TransientProviderError)


@pytest.mark.parametrize(
    ("kind", "expected", "hint"),
    [
        ("authentication_error", ProviderSetupError, "Check the key in ANTHROPIC_API_KEY"),
        ("permission_error", ProviderSetupError, "may not use this model"),
        ("not_found_error", ProviderSetupError, "models.list()"),
        ("invalid_request_error", PermanentProviderError, ""),
        ("api_error", TransientProviderError, ""),
    ],
)
def test_error_event_inside_a_200_stream_is_classed_as_its_status_would_be(
    kind: str, expected: type[Exception], hint: str
) -> None:
    # An ``error`` event saying the key or model is refused fails every request alike,
    # as 401/403/404 do: a sweep must stop the variant, not fail each cell in turn.
    exc = anthropic.APIStatusError("refused", response=response(200), body=body(kind, "no"))
    error = translate_sdk_error(exc, model="claude-x")
    assert type(error) is expected
    assert kind in str(error)
    assert hint in str(error)


def test_timeouts_connection_and_transport_errors() -> None:
    request = httpx2.Request("POST", URL)
    timeout = translate_sdk_error(anthropic.APITimeoutError(request), timeout=12.0)
    assert isinstance(timeout, TransientProviderError)
    assert "12 s" in str(timeout)
    refused = translate_sdk_error(anthropic.APIConnectionError(request=request))
    assert isinstance(refused, TransientProviderError)
    broken = translate_sdk_error(httpx2.RemoteProtocolError("incomplete chunked read"))
    assert isinstance(broken, TransientProviderError)
    assert translate_sdk_error(ValueError("not ours")) is None


# -- the provider object ----------------------------------------------------------------


def test_from_spec_needs_a_model() -> None:
    with pytest.raises(InvalidInputError, match="anthropic:<model>"):
        get_provider("anthropic")
    with pytest.raises(InvalidInputError):
        AnthropicProvider("claude-x", max_tokens=0)


@pytest.mark.parametrize("timeout", ["30", None, True, 0, -1.5, float("nan")])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(timeout: object) -> None:
    with pytest.raises(InvalidInputError, match="timeout must be a positive number of seconds"):
        AnthropicProvider("claude-x", timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(
        InvalidInputError, match=r"^first_token_timeout must be a positive number of seconds"
    ):
        AnthropicProvider("claude-x", first_token_timeout=timeout)  # type: ignore[arg-type]


def test_repr_never_shows_the_key() -> None:
    provider = get_provider("anthropic:claude-x", api_key="sk-ant-very-secret")
    assert isinstance(provider, AnthropicProvider)
    assert "sk-ant" not in repr(provider)
    assert "sk-ant" not in repr(vars(provider).keys() - {"_client"})
    assert repr(provider) == "AnthropicProvider(model='claude-x')"
