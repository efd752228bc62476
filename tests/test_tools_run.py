"""Tools at run time: approval policy, registry, requests from the model, execution."""

from __future__ import annotations

import math
import os
import threading
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.to_thread
import pytest
from tool_samples import Abort, Color, Opaque, Pair, Point, weather

from cm_notebook.errors import InvalidInputError, ToolDefinitionError, ToolError
from cm_notebook.model import ToolCallStatus
from cm_notebook.providers.base import ToolCallRequest
from cm_notebook.redact import REDACTED
from cm_notebook.tools import (
    MAX_RESULT_CHARS,
    ToolOutcome,
    ToolPolicy,
    ToolRegistry,
    UnknownToolError,
    denied_result,
    encode_result,
    run_tool,
    tool,
    tool_call_from_request,
    truncate_result,
)

# Async tests run on asyncio (conftest's anyio_backend); the mark does not affect sync tests.
pytestmark = pytest.mark.anyio
DONE, FAILED = ToolCallStatus.DONE, ToolCallStatus.FAILED


# --- policy ---------------------------------------------------------------------------------------


def test_policy_precedence() -> None:
    own_auto = tool(lambda: None, name="search_web", policy="auto")
    own_deny = tool(lambda: None, name="delete_all", policy="deny")
    no_own = tool(lambda: None, name="plain")

    assert ToolPolicy().decide(no_own) == "ask"  # session default
    assert ToolPolicy(default="auto").decide(no_own) == "auto"
    assert ToolPolicy(default="auto").decide(own_deny) == "deny"  # tool's own beats default
    policy = ToolPolicy(rules={"search_*": "ask", "search_web": "deny", "delete_*": "auto"})
    assert policy.decide(own_auto) == "deny"  # exact rule beats glob and tool's own
    assert policy.decide(own_deny) == "auto"  # glob rule beats tool's own
    assert policy.decide("search_images") == "ask"


def test_policy_globs_most_specific_then_most_cautious() -> None:
    policy = ToolPolicy(rules={"*": "deny", "s*": "ask", "search_*": "auto"})
    assert policy.decide("search_web") == "auto"  # longest pattern wins
    assert policy.decide("summarise") == "ask"
    assert policy.decide("rm") == "deny"
    assert ToolPolicy(rules={"a?": "auto", "?b": "deny", "[a]b": "ask"}).decide("ab") == "ask"
    assert ToolPolicy(rules={"a*": "auto", "*b": "deny"}).decide("ab") == "deny"  # tie
    assert ToolPolicy(rules={"Search*": "auto"}).decide("search") == "ask"  # case-sensitive


def test_policy_validation_and_coerce() -> None:
    with pytest.raises(InvalidInputError, match="must be one of"):
        ToolPolicy(default="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="rule 'x'"):
        ToolPolicy(rules={"x": "sometimes"})  # type: ignore[dict-item]
    rules = {"a": "auto"}
    policy = ToolPolicy(rules=rules)  # type: ignore[arg-type]
    rules["a"] = "deny"
    assert policy.decide("a") == "auto"  # a private copy
    assert ToolPolicy.coerce(None) == ToolPolicy()
    assert ToolPolicy.coerce(policy) is policy
    assert ToolPolicy.coerce("deny").decide("x") == "deny"
    # A session-wide policy given as a string beats a tool's own (the session decides).
    own_auto = tool(lambda: None, name="rm_rf", policy="auto")
    own_deny = tool(lambda: None, name="off", policy="deny")
    assert ToolPolicy.coerce("deny").decide(own_auto) == "deny"
    assert ToolPolicy.coerce("ask").decide(own_auto) == "ask"
    assert ToolPolicy.coerce("auto").decide(own_deny) == "auto"
    assert ToolPolicy.coerce(None).decide(own_auto) == "auto"  # no session rule: its own
    assert ToolPolicy.coerce({"x": "auto"}).decide("x") == "auto"
    with pytest.raises(InvalidInputError):
        ToolPolicy.coerce(3)  # type: ignore[arg-type]


# --- registry and requests from the model -------------------------------------------------------


def test_registry() -> None:
    def now() -> str:
        """The time."""
        return "noon"

    registry = ToolRegistry([weather, now])
    assert len(registry) == 2
    assert "now" in registry
    assert weather in registry
    assert "later" not in registry
    assert [t.name for t in registry] == ["weather", "now"] == registry.names
    assert registry.get("now")() == "noon"
    assert registry.specs() == [weather.spec, registry.get("now").spec]
    assert repr(registry) == "ToolRegistry(['weather', 'now'])"


def test_registry_errors() -> None:
    with pytest.raises(ToolDefinitionError, match="two tools are named 'weather'"):
        ToolRegistry([weather, tool(lambda: None, name="weather")])
    with pytest.raises(UnknownToolError) as info:
        ToolRegistry([weather]).get("forecast")
    assert str(info.value) == "no tool named 'forecast'; available: weather"
    assert isinstance(info.value, ToolError)
    assert isinstance(info.value, KeyError)


def test_tool_call_from_request_valid() -> None:
    request = ToolCallRequest("call_1", "weather", '{"city": "Oslo"}')
    call, error = tool_call_from_request(request, ToolRegistry([weather]))
    assert error is None
    assert (call.id, call.name, call.status) == ("call_1", "weather", ToolCallStatus.PENDING)
    assert call.arguments == {"city": "Oslo", "days": 3, "units": "metric"}


def test_tool_call_from_request_fails_closed() -> None:
    registry = ToolRegistry([weather])
    request = ToolCallRequest("call_2", "weather", '{"city": 1, "days": "x"}')
    call, error = tool_call_from_request(request, registry)
    assert call.status is FAILED
    assert error is not None
    assert error.startswith("error: Invalid arguments for tool 'weather':")
    assert call.result == error
    assert call.reason is not None
    assert "days" in call.reason
    assert call.arguments == {"city": 1, "days": "x"}  # what the model sent, for the person

    call, error = tool_call_from_request(ToolCallRequest("c", "nope", "not json"), registry)
    assert error == "error: no tool named 'nope'; available: weather"
    assert call.arguments == {}

    call, error = tool_call_from_request(ToolCallRequest("", "x" * 300, "[]"), registry)
    assert call.id.startswith("call_")
    assert len(call.name) == 200
    assert call.status is FAILED


def test_denied_result() -> None:
    assert denied_result("rm", " risky ") == (
        "error: the call to tool 'rm' was denied: risky. Do not retry it unchanged."
    )
    assert (
        denied_result("rm") == "error: the call to tool 'rm' was denied. Do not retry it unchanged."
    )


# --- execution ------------------------------------------------------------------------------------


async def test_run_sync_tool_in_worker_thread() -> None:
    seen: list[int] = []

    @tool
    def where(x: int) -> str:
        seen.append(threading.get_ident())
        return f"x={x}"

    outcome = await run_tool(where, {"x": 2})
    assert outcome == ToolOutcome(DONE, "x=2", outcome.duration_ms)
    assert outcome.ok
    assert outcome.duration_ms >= 0
    assert seen != [threading.get_ident()]


async def test_run_async_tool_with_rich_positional_only_arguments() -> None:
    @tool
    async def describe(color: Color, point: Point, when: datetime, /) -> dict[str, Any]:
        """Arguments arrive as Python objects."""
        return {"color": color.name, "sum": point.x + point.y, "year": when.year}

    arguments = describe.validate({"color": "red", "point": {"x": 1, "y": 2}, "when": "2024-01-01"})
    outcome = await run_tool(describe, arguments)
    assert (outcome.status, outcome.result) == (DONE, '{"color":"RED","sum":3,"year":2024}')


@pytest.mark.parametrize("is_async", [False, True])
async def test_exception_becomes_failed_outcome(is_async: bool) -> None:
    def boom(x: int) -> int:
        raise ValueError(f"bad x {x}")

    async def aboom(x: int) -> int:
        raise ValueError(f"bad x {x}")

    outcome = await run_tool(tool(aboom if is_async else boom), {"x": 7})
    assert (outcome.status, outcome.result) == (FAILED, "error: ValueError: bad x 7")
    assert not outcome.ok


async def test_a_secret_in_a_tools_error_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    # The error text is stored, shown, and sent to the model: no key may be in it.
    monkeypatch.setenv("OPENAI_API_KEY", "plainvalue0123456789")

    def call_api() -> None:
        raise PermissionError(f"the server refused key {os.environ['OPENAI_API_KEY']}")

    outcome = await run_tool(tool(call_api), {})
    assert outcome.status is FAILED
    assert outcome.result == f"error: PermissionError: the server refused key {REDACTED}"


async def test_exception_without_message_and_invalid_arguments() -> None:
    def f() -> None:
        raise RuntimeError

    assert (await run_tool(tool(f), {})).result == "error: RuntimeError"
    outcome = await run_tool(weather, {"city": "Oslo", "days": "many"})
    assert outcome.status is FAILED
    assert outcome.result.startswith("error: Invalid arguments for tool 'weather':")


async def test_async_timeout() -> None:
    @tool
    async def hang() -> str:
        await anyio.Event().wait()
        return "never"

    outcome = await run_tool(hang, {}, timeout=0.2)
    assert (outcome.status, outcome.result) == (
        FAILED,
        "error: tool 'hang' timed out after 0.2 s and was cancelled part way: some of its "
        "side effects may have happened; check before running it again",
    )
    assert outcome.duration_ms >= 200


async def test_sync_timeout_uses_tool_timeout_and_abandons_thread() -> None:
    release = threading.Event()

    @tool(timeout=0.2)
    def stuck() -> str:
        release.wait()
        return "late"

    try:
        outcome = await run_tool(stuck, {})
    finally:
        release.set()  # let the abandoned worker thread finish
    assert (outcome.status, outcome.result) == (
        FAILED,
        "error: tool 'stuck' timed out after 0.2 s, but it may still be running (Python "
        "cannot stop it): its side effects may have happened, or may yet happen; check "
        "before running it again",
    )


async def test_timeout_error_raised_by_the_tool_is_not_our_timeout() -> None:
    @tool
    async def flaky() -> str:
        raise TimeoutError("upstream slow")

    assert (await run_tool(flaky, {})).result == "error: TimeoutError: upstream slow"


async def test_cancellation_propagates_async() -> None:
    started, cleaned_up, outcomes = anyio.Event(), [], []

    @tool
    async def hang() -> str:
        started.set()
        try:
            await anyio.Event().wait()
        finally:
            cleaned_up.append(True)
        return "never"

    async def call() -> None:
        outcomes.append(await run_tool(hang, {}, timeout=math.inf))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await started.wait()
        tg.cancel_scope.cancel()
    assert (outcomes, cleaned_up) == ([], [True])


async def test_cancellation_propagates_sync() -> None:
    entered, release = threading.Event(), threading.Event()
    outcomes: list[ToolOutcome] = []

    @tool
    def block() -> str:
        entered.set()
        release.wait()
        return "late"

    async def call() -> None:
        outcomes.append(await run_tool(block, {}))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.to_thread.run_sync(entered.wait)
            tg.cancel_scope.cancel()
    finally:
        release.set()
    assert outcomes == []


@pytest.mark.parametrize("is_async", [False, True])
async def test_base_exceptions_raised_by_the_tool_fail_the_call(is_async: bool) -> None:
    # Let through, they would stop the caller (the turn, or the loop's thread) for
    # good; only a cancellation of the caller propagates (the tests above).
    def stop() -> None:
        raise Abort("halt")

    async def astop() -> None:
        raise Abort("halt")

    outcome = await run_tool(tool(astop if is_async else stop, name="stop"), {})
    assert (outcome.status, outcome.result) == (FAILED, "error: tool 'stop' raised Abort: halt")


# --- result encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text", "plain text"),
        ("", ""),
        (42, "42"),
        (None, "null"),
        ({"a": [1, 2.5, True]}, '{"a":[1,2.5,true]}'),
        (Point(x=1), '{"x":1,"y":0}'),
        (Pair(1, "r"), '{"left":1,"right":"r"}'),
        (datetime(2024, 1, 2, tzinfo=timezone.utc), '"2024-01-02T00:00:00Z"'),
        (Color.BLUE, '"blue"'),
        ({"t": (1, 2), "s": {3}}, '{"t":[1,2],"s":[3]}'),
    ],
)
def test_encode_result(value: object, expected: str) -> None:
    assert encode_result(value) == expected


def test_encode_result_falls_back_to_repr() -> None:
    thing = Opaque()
    assert encode_result({"thing": thing}) == '{"thing":' + f'"{thing!r}"}}'
    assert encode_result(b"\xff\xfe") == repr(b"\xff\xfe")


def test_numpy_numbers_and_arrays_are_sent_as_the_numbers_they_hold() -> None:
    np = pytest.importorskip("numpy")
    value = {
        "count": np.int64(7),
        "mean": np.float32(4.5),
        "any": np.True_,
        "head": np.arange(3),
        "grid": np.array([[1.5, np.inf]]),
    }
    assert encode_result(value) == (
        '{"count":7,"mean":4.5,"any":true,"head":[0,1,2],"grid":[[1.5,"Infinity"]]}'
    )


def test_a_tolist_that_fails_or_gives_back_the_value_falls_back_to_repr() -> None:
    class Stubborn:
        def tolist(self) -> object:
            return self

        def __repr__(self) -> str:
            return "<stubborn>"

    class Broken(Stubborn):
        def tolist(self) -> object:
            raise RuntimeError("no")

    assert encode_result([Stubborn(), Broken()]) == '["<stubborn>","<stubborn>"]'


async def test_long_results_are_truncated() -> None:
    assert truncate_result("short", 100) == "short"
    cut = truncate_result("x" * 1000, 100)
    assert len(cut) <= 100
    assert cut.startswith("x" * 40)
    assert cut.endswith("of 1,000 characters]")

    @tool
    def big() -> str:
        return "y" * (MAX_RESULT_CHARS * 3)

    outcome = await run_tool(big, {})
    assert outcome.status is DONE
    assert len(outcome.result) <= MAX_RESULT_CHARS
    assert outcome.result.endswith(" of 60,000 characters]")
    assert len((await run_tool(big, {}, max_result_chars=500)).result) <= 500
