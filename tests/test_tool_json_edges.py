"""What JSON cannot hold, at a tool's edges: defaults, validation faults, results.

A default that cannot be written as JSON (a sentinel ``object()``, NaN or an infinity,
even nested) is refused when the tool is defined, and a tool whose own argument checking
fails (its fault, not the model's) fails the call closed, the assistant's request kept;
a result holding NaN or an infinity reaches the model as valid JSON. The model is a
ScriptedProvider; what it *saw* is read from ``fake.requests``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, field_validator
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


class Limits(BaseModel):
    cost: float = 1.0


def inf_default(q: str, max_cost: float = math.inf) -> str:
    """Search, at most this dear."""
    return q


def nan_default(q: str, threshold: float = math.nan) -> str:
    """Search above a threshold."""
    return q


def inf_in_dict(q: str, costs: dict[str, float] = {"a": -math.inf}) -> str:  # noqa: B006
    """Search with costs."""
    return q


def nan_in_list(q: str, weights: list[float] = [1.0, math.nan]) -> str:  # noqa: B006
    """Search with weights."""
    return q


def inf_in_model(q: str, limits: Limits = Limits(cost=math.inf)) -> str:  # noqa: B008
    """Search within limits."""
    return q


def nan_in_schema(q: Annotated[str, Field(json_schema_extra={"examples": [math.nan]})]) -> str:
    """Search."""
    return q


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (inf_default, "parameter 'max_cost' has default inf, and NaN and infinities"),
        (nan_default, "parameter 'threshold' has default nan, and NaN"),
        (inf_in_dict, "has default {'a': -inf} (at costs['a']), and NaN"),
        (nan_in_list, "has default [1.0, nan] (at weights[1]), and NaN"),
        (inf_in_model, "has default Limits(cost=inf) (at limits['cost']), and NaN"),
        (nan_in_schema, "its JSON schema holds NaN or an infinity at properties['q']"),
    ],
)
def test_a_default_that_is_nan_or_an_infinity_is_refused_when_the_tool_is_defined(
    fn: Callable[..., Any], expected: str
) -> None:
    with pytest.raises(ToolDefinitionError) as info:
        tool(fn)
    assert expected in str(info.value)
    if fn is inf_default:
        assert "Use None as the default (`max_cost: float | None = None`)" in str(info.value)


def test_a_finite_default_still_makes_a_schema_any_request_can_carry() -> None:
    def search(q: str, max_cost: float | None = None, top: float = 1e308) -> str:
        """Search."""
        return q

    schema = tool(search).parameters
    json.dumps(schema, allow_nan=False)
    assert schema["properties"]["top"]["default"] == 1e308


# -- results -------------------------------------------------------------------------------


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


@tool(policy="auto")
def mean_of(values: list[float]) -> float:
    """The mean (NaN for no values, as numpy gives)."""
    return sum(values) / len(values) if values else math.nan


@tool(policy="auto")
def stats(values: list[float]) -> dict[str, Any]:
    """Summary statistics."""
    return {"mean": math.nan, "range": [-math.inf, math.inf], "n": len(values)}


def test_a_result_holding_nan_or_an_infinity_is_sent_as_valid_json(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = (
        ScriptedProvider(strict=True)
        .tool_calls(("mean_of", {"values": []}), ("stats", {"values": []}))
        .reply("Nothing to average.")
    )
    session = new_session(provider=fake, tools=[mean_of, stats])
    session.send("go").result(DEADLINE)
    told = tool_messages(fake.requests[1].messages)
    calls = {call.name: call for call in session.history()[1].tool_calls}
    assert told[calls["mean_of"].id] == calls["mean_of"].result == '"NaN"'
    assert _strict_json(told[calls["stats"].id]) == {
        "mean": "NaN",
        "range": ["-Infinity", "Infinity"],
        "n": 0,
    }
    assert calls["stats"].result == told[calls["stats"].id]
    assert {call.status for call in calls.values()} == {ToolCallStatus.DONE}
