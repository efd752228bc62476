"""Tools: schema derivation, validation, approval policy, registry and execution."""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
import pytest
from pydantic import BaseModel, Field

from cm_notebook.errors import InvalidInputError, ToolArgumentsError, ToolDefinitionError, ToolError
from cm_notebook.model import ToolCallStatus
from cm_notebook.providers.base import ToolCallRequest, ToolSpec
from cm_notebook.tools import (
    MAX_RESULT_CHARS,
    Tool,
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
    validate_edited_arguments,
)

# Async tests run on asyncio (conftest's anyio_backend); the mark does not affect sync tests.
pytestmark = pytest.mark.anyio
DONE, FAILED = ToolCallStatus.DONE, ToolCallStatus.FAILED

# Types used in signatures live at module level: a tool resolves its (string) annotations
# in its function's module globals.


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    y: int = 0


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


@dataclasses.dataclass
class Pair:
    left: int
    right: str


class Opaque:
    """Not a JSON type."""


class Abort(BaseException):
    """Stands in for KeyboardInterrupt / SystemExit without upsetting the test runner."""


@tool
def weather(city: str, days: int = 3, units: Literal["metric", "imperial"] = "metric") -> str:
    """Forecast for a city."""
    return f"{city}: sunny for {days} days ({units})"


def props(t: Tool[..., Any]) -> dict[str, Any]:
    return dict(t.parameters["properties"])


# --- schema derivation --------------------------------------------------------------------


def test_scalar_types_and_required() -> None:
    @tool
    def f(n: int, x: float, s: str, b: bool, maybe: int | None, limit: int = 5) -> None: ...

    assert f.parameters == {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "s": {"type": "string"},
            "b": {"type": "boolean"},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "limit": {"type": "integer", "default": 5},
        },
        "required": ["n", "x", "s", "b", "maybe"],
        "additionalProperties": False,
    }


def test_literal_enum_list_dict_and_models_are_inlined_without_titles() -> None:
    @tool
    def f(
        mode: Literal["fast", "slow"],
        color: Color,
        tags: list[str],
        meta: dict[str, int],
        point: Point,
        title: str,
    ) -> None:
        """A parameter called title must survive title-stripping."""

    p = props(f)
    assert p["mode"] == {"type": "string", "enum": ["fast", "slow"]}
    assert p["color"] == {"type": "string", "enum": ["red", "blue"]}  # no $ref
    assert p["tags"] == {"type": "array", "items": {"type": "string"}}
    assert p["meta"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert p["point"] == {
        "type": "object",
        "properties": {"x": {"type": "integer"}, "y": {"type": "integer", "default": 0}},
        "required": ["x"],
    }
    assert p["title"] == {"type": "string"}
    assert "$defs" not in f.parameters


def test_recursive_model_keeps_refs() -> None:
    @tool
    def f(tree: Tree) -> None: ...

    assert props(f)["tree"] == {"$ref": "#/$defs/Tree"}
    tree = f.parameters["$defs"]["Tree"]
    assert tree["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}
    assert "title" not in tree


def test_no_parameters_and_empty_arguments() -> None:
    @tool
    def now() -> str:
        """The time."""
        return "noon"

    assert now.parameters == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }
    assert now.validate("") == {} == now.validate(None) == now.validate("  ")


def test_parameter_names_that_clash_with_pydantic() -> None:
    @tool
    def f(json: str, schema: int, model_name: str, copy: bool = False) -> None: ...

    assert list(props(f)) == ["json", "schema", "model_name", "copy"]
    assert f.validate({"json": "a", "schema": 1, "model_name": "m"})["copy"] is False


# --- descriptions --------------------------------------------------------------------------


def test_google_docstring() -> None:
    @tool
    def search(query: str, limit: int = 5) -> list[str]:
        """Search the notes
        for words.

        Longer explanation for developers.

        Args:
            query: Words to look for,
                across lines.
            limit (int): At most this many.

        Returns:
            Titles.
        """
        return []

    assert search.description == "Search the notes for words."
    assert props(search)["query"]["description"] == "Words to look for, across lines."
    assert props(search)["limit"]["description"] == "At most this many."


def test_numpy_and_sphinx_docstrings() -> None:
    @tool
    def numpy_style(a: int, b: int) -> int:
        """Add.

        Parameters
        ----------
        a : int
            First
            number.
        b : int
            Second number.

        Returns
        -------
        int
        """
        return a + b

    @tool
    def sphinx_style(a: int) -> int:
        """Negate.

        :param a: The number.
        :returns: Its negation.
        """
        return -a

    assert props(numpy_style)["a"]["description"] == "First number."
    assert props(numpy_style)["b"]["description"] == "Second number."
    assert sphinx_style.description == "Negate."
    assert props(sphinx_style)["a"]["description"] == "The number."


def test_annotated_descriptions_win_over_docstring() -> None:
    @tool
    def f(
        a: Annotated[int, Field(description="from Field", ge=0)],
        b: Annotated[str, "from a bare string"],
        c: int,
    ) -> None:
        """Mixed.

        Args:
            a: from the docstring
            c: docstring only
        """

    assert props(f)["a"] == {"type": "integer", "minimum": 0, "description": "from Field"}
    assert props(f)["b"]["description"] == "from a bare string"
    assert props(f)["c"]["description"] == "docstring only"


def test_explicit_options_and_no_docstring() -> None:
    @tool(name="web-search", description="Search the web.", policy="auto", timeout=3)
    def f(q: str) -> str:
        return q

    assert (f.name, f.description, f.policy, f.timeout) == (
        "web-search",
        "Search the web.",
        "auto",
        3,
    )
    assert f.spec == ToolSpec("web-search", "Search the web.", f.parameters)
    assert tool(lambda: None, name="noop").description == ""


# --- the Tool object ------------------------------------------------------------------------


async def test_tool_stays_callable() -> None:
    @tool
    def add(a: int, b: int = 1) -> int:
        """Add."""
        return a + b

    @tool
    async def double(x: int) -> int:
        return 2 * x

    assert add(2, 3) == 5
    assert add.__doc__ == "Add."
    assert repr(add) == "<Tool 'add' policy=None timeout=None>"
    assert not add.is_async
    assert double.is_async
    assert await double(4) == 8


async def test_other_callables_and_rewrapping() -> None:
    class Notes:
        def search(self, q: str) -> list[str]:
            """Search notes."""
            return [n for n in ("alpha", "beta") if q in n]

    class Adder:
        async def __call__(self, a: int) -> int:
            return a + 1

    def power(base: int, exp: int) -> int:
        """Power."""
        return int(base**exp)

    method, adder = tool(Notes().search), tool(Adder(), name="adder")
    square = tool(functools.partial(power, exp=2), name="square")
    assert (method.name, method.description, list(props(method))) == (
        "search",
        "Search notes.",
        ["q"],
    )
    assert adder.is_async
    assert square.description == "Power."
    assert (await run_tool(method, {"q": "al"})).result == '["alpha"]'
    assert (await run_tool(adder, {"a": 1})).result == "2"
    assert (await run_tool(square, {"base": 3})).result == "9"
    renamed = tool(name="pow")(tool(power, policy="deny"))
    assert (renamed.name, renamed.policy, renamed.fn) == ("pow", None, power)


# --- definition errors ------------------------------------------------------------------------


# Functions that cannot be tools. Type-checkers rightly complain about some of them.
def untyped(a: int, b): ...  # type: ignore[no-untyped-def]
def star(*items: str) -> None: ...
def double_star(**options: str) -> None: ...
def opaque(thing: Opaque) -> None: ...
def callback(fn: Callable[[int], int]) -> None: ...
def bad_default(a: int = None) -> None: ...  # type: ignore[assignment]  # noqa: RUF013
def field_default(a: int = Field(3)) -> None: ...
def generator() -> Iterator[int]: yield 1  # fmt: skip


def unresolved(a: NotDefinedAnywhere) -> None: ...  # type: ignore[name-defined]  # noqa: F821
def fine(a: int = 1) -> None: ...


@pytest.mark.parametrize(
    ("fn", "options", "expected"),
    [
        (untyped, {}, "'b' has no type annotation; annotate it (e.g. `b: str`)"),
        (star, {}, "*items is not supported, as a model passes only named arguments. Replace it"),
        (star, {}, "e.g. `items: list[str]`"),
        (double_star, {}, "**options is not supported"),
        (opaque, {}, "'thing' has type Opaque, which has no JSON schema. Use JSON-shaped types"),
        (callback, {}, "parameter 'fn' has type"),
        (bad_default, {}, "default None, which is not a valid int; widen the type (e.g. `a: int"),
        (field_default, {}, "Annotated[<type>, Field(description=...)]"),
        (generator, {}, "is a generator"),
        (unresolved, {}, "NotDefinedAnywhere"),
        (fine, {"name": "has space"}, "not allowed: providers accept 1 to 64 ASCII letters"),
        (fine, {"name": "x" * 65}, "not allowed"),
        (fine, {"policy": "maybe"}, "must be one of 'ask', 'auto', 'deny'"),
        (fine, {"timeout": 0}, "timeout must be a positive number"),
        (42, {}, "needs a function"),
    ],
)
def test_definition_errors(fn: Any, options: dict[str, Any], expected: str) -> None:
    with pytest.raises(ToolDefinitionError) as info:
        tool(fn, **options)
    assert expected in str(info.value)
    assert isinstance(info.value, ToolError)


# --- validation ---------------------------------------------------------------------------------


def _arguments_error(t: Tool[..., Any], arguments: Any) -> str:
    with pytest.raises(ToolArgumentsError) as info:
        t.validate(arguments)
    return str(info.value)


def test_validate_fills_defaults_and_coerces() -> None:
    assert weather.validate('{"city": "Oslo", "days": "5"}') == {
        "city": "Oslo",
        "days": 5,
        "units": "metric",
    }

    @tool
    def f(when: datetime, color: Color, point: Point, ok: bool) -> None: ...

    assert f.validate(
        {"when": "2024-05-01T12:00:00Z", "color": "blue", "point": {"x": "1"}, "ok": "yes"}
    ) == {"when": "2024-05-01T12:00:00Z", "color": "blue", "point": {"x": 1, "y": 0}, "ok": True}


def test_malformed_json_and_non_objects() -> None:
    message = _arguments_error(weather, '{"city": "Oslo"')
    assert message.startswith(
        "Invalid arguments for tool 'weather': the arguments are not valid JSON (Expecting"
    )
    assert "line 1 column" in message
    assert message.endswith("whose keys are the argument names: city, days, units")
    assert "expected a JSON object of named arguments" in _arguments_error(weather, "[1, 2]")
    assert "got a string" in _arguments_error(weather, '"Oslo"')


def test_missing_wrong_type_and_extra_fields() -> None:
    message = _arguments_error(weather, {"days": "many", "units": "kelvin", "country": "NO"})
    assert message.splitlines() == [
        "Invalid arguments for tool 'weather':",
        "- city: missing required argument (expected string)",
        "- days: Input should be a valid integer, unable to parse string as an integer; got 'many'",
        "- units: Input should be 'metric' or 'imperial'; got 'kelvin'",
        "- country: unexpected argument; this tool accepts: city, days, units",
    ]

    @tool
    def f(points: list[Point]) -> None: ...

    assert "- points[1].x: Input should be a valid integer" in _arguments_error(
        f, {"points": [{"x": 1}, {"x": "?"}]}
    )


def test_validate_edited_arguments() -> None:
    assert validate_edited_arguments(weather, {"city": "Bergen"})["days"] == 3
    assert validate_edited_arguments(weather, '{"city": "Bergen", "days": 1}')["days"] == 1
    with pytest.raises(ToolArgumentsError, match=r"^The edited arguments for tool 'weather' are"):
        validate_edited_arguments(weather, {"city": "Bergen", "days": -0.5})
    assert issubclass(ToolArgumentsError, ValueError)


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
    assert (outcome.status, outcome.result) == (FAILED, "error: tool 'hang' timed out after 0.2 s")
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
    assert (outcome.status, outcome.result) == (FAILED, "error: tool 'stuck' timed out after 0.2 s")


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
async def test_base_exceptions_are_not_swallowed(is_async: bool) -> None:
    def stop() -> None:
        raise Abort

    async def astop() -> None:
        raise Abort

    with pytest.raises(Abort):
        await run_tool(tool(astop if is_async else stop), {})


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
