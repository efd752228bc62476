"""What JSON cannot hold, at a tool's edges: defaults, validation faults, results.

A default that cannot be written as JSON (a sentinel ``object()``) is refused when the
tool is defined, and a tool whose own argument checking fails (its fault, not the
model's) fails the call closed, the assistant's request kept. The model is a
ScriptedProvider; what it *saw* is read from ``fake.requests``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, field_validator
from test_session_support import DEADLINE
from test_session_tools import assert_tree_valid, tool_messages

from cm_notebook.errors import ToolDefinitionError
from cm_notebook.model import ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool

_UNSET = object()


def sentinel_default(key: str, default: Any = _UNSET) -> str:
    """Look a key up, with a sentinel for 'no default given'."""
    return key


def sentinel_in_list(keys: list[Any] = [_UNSET]) -> str:  # noqa: B006
    """Look keys up."""
    return "x"


@pytest.mark.parametrize("fn", [sentinel_default, sentinel_in_list])
def test_a_default_json_cannot_hold_is_refused_when_the_tool_is_defined(
    fn: Callable[..., Any],
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused by us, not merely warned about by pydantic
        with pytest.raises(ToolDefinitionError) as info:
            tool(fn)
    message = str(info.value)
    assert "cannot be written as JSON" in message
    assert "every call leaving it out would fail" in message
    assert "Use None as the default" in message


class Query(BaseModel):
    key: str

    @field_validator("key")
    @classmethod
    def check(cls, value: str) -> str:
        raise TypeError("not a ValueError, so pydantic lets it through")


@tool(policy="auto")
def lookup(query: Query) -> str:
    """Look a key up."""
    raise AssertionError("never runs")


def test_a_tool_failing_to_check_its_arguments_fails_the_call_closed(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = (
        ScriptedProvider(strict=True)
        .tool_call("lookup", {"query": {"key": "k"}}, text="Let me look.")
        .reply("Sorry.")
    )
    session = new_session(provider=fake, tools=[lookup])
    assert session.send("go").result(DEADLINE).content == "Sorry."
    history = session.history()
    assert_tree_valid(history)
    assert history[1].content == "Let me look."
    (call,) = history[1].tool_calls  # the model's request is kept
    assert (call.name, call.status, call.arguments) == (
        "lookup",
        ToolCallStatus.FAILED,
        {"query": {"key": "k"}},
    )
    assert call.reason is not None
    assert "failed while checking the arguments (TypeError: not a ValueError" in call.reason
    assert "parameter types or defaults must be fixed" in call.reason
    told = tool_messages(fake.requests[1].messages)[call.id]
    assert told == call.result
    assert "a fault in the tool, not in the arguments" in told
    assert "the call was not run" in told
