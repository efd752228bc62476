"""The data model: JSON round trips, validation, and refusal of secrets."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from cm_notebook.model import (
    SCHEMA_VERSION,
    Branch,
    ContextMetadata,
    Message,
    MessageMetadata,
    MessageStatus,
    ProviderSettings,
    StreamStats,
    TokenUsage,
    ToolCall,
    ToolCallStatus,
)


def _full_message() -> Message:
    return Message(
        id="m1",
        parent_id="m0",
        role="assistant",
        content="héllo ✓",
        tool_calls=[
            ToolCall(id="t1", name="add", arguments={"a": 1, "b": [2, 3]}),
            ToolCall(id="t2", name="x", status=ToolCallStatus.DENIED, reason="no"),
        ],
        status=MessageStatus.INTERRUPTED,
        metadata=MessageMetadata(
            provider="scripted",
            model="m",
            parameters={"temperature": 0.2},
            usage=TokenUsage(input_tokens=3, output_tokens=4),
            duration_ms=12.5,
            finish_reason="stop",
            system_prompt="Be brief.",
            stats=StreamStats(
                ttft_ms=40.0,
                chunks=4,
                duration_ms=90.0,
                output_tokens=4,
                tokens_per_second=80.0,
                attempts=2,
                tokens_from_usage=True,
            ),
            imported_from="v1",  # unknown keys are kept
        ),
    )


def test_message_round_trips_through_json() -> None:
    message = _full_message()
    again = Message.model_validate_json(message.model_dump_json())
    assert again == message
    assert again.metadata.model_extra == {"imported_from": "v1"}
    assert again.metadata.usage is not None
    assert again.metadata.usage.total_tokens == 7


def test_metadata_round_trips_through_json() -> None:
    metadata = ContextMetadata(
        id="c1",
        title="t",
        branches={
            "main": Branch(name="main"),
            "alt x": Branch(
                name="alt x",
                head="m1",
                system_prompt="Answer in five words.",
                provider=ProviderSettings(spec="scripted:fast"),
                params={"temperature": 0.7},
            ),
        },
        active_branch="alt x",
        provider=ProviderSettings(spec="openai:gpt-4o", params={"max_tokens": 10}),
        tags=["a"],
        extra={"anything": [1, 2]},
    )
    again = ContextMetadata.model_validate(metadata.model_dump(mode="json"))
    assert again == metadata
    assert again.schema_version == SCHEMA_VERSION


def test_defaults_are_sensible() -> None:
    metadata = ContextMetadata()
    assert metadata.id.startswith("c")
    assert list(metadata.branches) == ["main"]
    assert metadata.active_branch == "main"
    assert metadata.created_at.tzinfo is not None
    message = Message(role="user")
    assert message.id.startswith("m")
    assert message.status is MessageStatus.COMPLETE


def test_naive_datetimes_are_taken_as_utc() -> None:
    message = Message(role="user", created_at=datetime(2024, 1, 2, 3, 4, 5))
    assert message.created_at.tzinfo is not None
    assert message.created_at.utcoffset() == timezone.utc.utcoffset(None)


@pytest.mark.parametrize(
    "params",
    [
        {"api_key": "sk-123"},
        {"OPENAI_API_KEY": "sk"},
        {"apiKey": "x"},
        {"secret": "x"},
        {"client_secret": "x"},
        {"password": "x"},
        {"Authorization": "Bearer x"},
        {"access_key": "x"},
        {"auth_token": "x"},
        {"headers": {"authorization": "x"}},  # nested dicts are searched too
    ],
)
def test_secrets_are_refused_in_provider_params(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="looks like a secret"):
        ProviderSettings(spec="openai", params=params)
    with pytest.raises(ValidationError, match="environment variables"):
        ContextMetadata.model_validate({"provider": {"spec": "x", "params": params}})


@pytest.mark.parametrize(
    "params",
    [{"max_tokens": 100}, {"temperature": 0.5, "top_p": 0.9}, {"tokenizer": "x"}],
)
def test_ordinary_provider_params_are_allowed(params: dict[str, object]) -> None:
    assert ProviderSettings(params=params).params == params


def test_active_branch_must_exist() -> None:
    with pytest.raises(ValidationError, match="active branch"):
        ContextMetadata(active_branch="nope")


def test_branch_keys_must_match_names() -> None:
    with pytest.raises(ValidationError, match="does not match"):
        ContextMetadata(branches={"main": Branch(name="other")})


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "con"])
def test_message_ids_are_validated(bad: str) -> None:
    with pytest.raises(ValidationError):
        Message(role="user", id=bad)
    with pytest.raises(ValidationError):
        Message(role="user", parent_id=bad)


def test_context_ids_and_branch_names_are_validated() -> None:
    with pytest.raises(ValidationError):
        ContextMetadata(id="../../etc")
    with pytest.raises(ValidationError):
        Branch(name="a/b")


def test_unknown_fields_and_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "user", "surprise": 1})
    with pytest.raises(ValidationError):
        Message(role="robot")
    with pytest.raises(ValidationError):
        TokenUsage(input_tokens=-1)
    with pytest.raises(ValidationError):
        ToolCall(id="", name="x")


def test_branch_settings_default_to_inheriting_and_refuse_secrets() -> None:
    branch = Branch(name="b")
    assert (branch.system_prompt, branch.provider, branch.params) == (None, None, {})
    with pytest.raises(ValidationError, match="looks like a secret"):
        Branch(name="b", params={"api_key": "sk-123"})
