"""Tools: schema derivation, validation, approval policy, registry and execution."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, Any, Literal
from typing import TypedDict as TypingTypedDict

import pytest
from pydantic import BaseModel, ConfigDict, Field, Json, SecretStr, computed_field
from tool_samples import Color, Opaque, Point, Tree, props, weather

from cm_notebook.errors import ToolArgumentsError, ToolDefinitionError, ToolError
from cm_notebook.model import ToolCallStatus
from cm_notebook.providers.base import ToolSpec
from cm_notebook.tools import (
    Tool,
    run_tool,
    tool,
    validate_edited_arguments,
)

# Async tests run on asyncio (conftest's anyio_backend); the mark does not affect sync tests.
pytestmark = pytest.mark.anyio
DONE, FAILED = ToolCallStatus.DONE, ToolCallStatus.FAILED


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
    # A keyword the partial binds is the partial's: not offered to the model (its value
    # not in the schema), and not one it may override.
    assert list(props(square)) == ["base"]
    assert "exp" not in json.dumps(square.parameters)
    with pytest.raises(ToolArgumentsError, match="exp: unexpected argument"):
        square.validate({"base": 3, "exp": 10})
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
        (opaque, {}, "'thing' has type Opaque, which has no JSON schema ("),
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


def test_nan_or_infinity_given_as_text_is_refused_where_it_comes_in() -> None:
    @tool
    def scale(x: float) -> float: ...

    # Coerced to a float by validation, it would be stored as null and fail to run.
    for text in ("nan", "inf", "-Infinity"):
        assert "x is NaN or an infinity" in _arguments_error(scale, {"x": text})
    with pytest.raises(ToolArgumentsError, match="NaN or an infinity"):
        validate_edited_arguments(scale, {"x": "inf"})
    assert scale.validate({"x": "1.5"}) == {"x": 1.5}


class Person(BaseModel):
    name: str = Field(validation_alias="full_name", serialization_alias="fullName")


class Creds(BaseModel):
    token: SecretStr


class _Spot(TypingTypedDict):
    x: int


class _Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = 9


class _Dog(BaseModel):
    kind: Literal["dog"]


class _Box(BaseModel):
    model_config = ConfigDict(extra="forbid")
    w: int
    h: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def area(self) -> int:
        return self.w * self.h


async def test_arguments_run_as_they_were_validated() -> None:
    # The stored (JSON) form is what runs: it must read back as the validated values.
    @tool
    def measure(box: _Box, sizes: Json[list[int]]) -> str:
        """Measure."""
        return f"{box.area} {sum(sizes)}"

    stored = measure.validate({"box": {"w": 2, "h": 3}, "sizes": "[1, 2]"})
    assert stored == {"box": {"w": 2, "h": 3}, "sizes": "[1,2]"}
    outcome = await run_tool(measure, stored)
    assert (outcome.status, outcome.result) == (DONE, "6 3")


def test_types_that_cannot_read_back_their_json_are_refused_clearly() -> None:
    @tool
    def greet(person: Person) -> str: ...

    message = _arguments_error(greet, {"person": {"full_name": "Ada"}})
    assert "the tool's parameter types do not read back their own JSON form" in message


def test_secret_types_are_refused_when_the_tool_is_defined() -> None:
    def login(user: str, password: SecretStr) -> str: ...

    with pytest.raises(ToolDefinitionError, match=r"parameter 'password' is a secret type"):
        tool(login)

    def nested(creds: Creds) -> str: ...

    with pytest.raises(ToolDefinitionError, match="is a secret type"):
        tool(nested)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="typing.TypedDict works from 3.12")
def test_a_typing_typeddict_error_names_the_fix() -> None:
    def f(spot: _Spot) -> None: ...

    with pytest.raises(ToolDefinitionError, match=r"typing_extensions\.TypedDict") as info:
        tool(f)
    assert "has no JSON schema (" in str(info.value)


def test_a_discriminated_union_inlined_points_nowhere_else() -> None:
    @tool
    def adopt(pet: Annotated[_Cat | _Dog, Field(discriminator="kind")]) -> str: ...

    text = json.dumps(adopt.parameters)
    assert "$defs" not in text  # inlined, and no mapping left pointing into it
    assert adopt.parameters["properties"]["pet"]["discriminator"] == {"propertyName": "kind"}
    assert adopt.validate({"pet": {"kind": "cat"}}) == {"pet": {"kind": "cat", "lives": 9}}


def test_docstring_entries_with_nested_types_and_shared_names() -> None:
    from cm_notebook.tools._docstrings import parse_docstring

    google = """Move a point.

    Args:
        point (tuple(int, int)): Where it is.
        dx (int): How far right.
        dy: How far up.
    """
    assert parse_docstring(google)[1] == {
        "point": "Where it is.",
        "dx": "How far right.",
        "dy": "How far up.",
    }
    numpy = """Add.

    Parameters
    ----------
    a, b : int
        The numbers.
    c : int
        A third.
    """
    assert parse_docstring(numpy)[1] == {"a": "The numbers.", "b": "The numbers.", "c": "A third."}


def test_set_arguments_are_not_refused_whatever_their_order() -> None:
    # A set's JSON list may come back from validation in another order: still the set.
    @tool
    def tag(tags: set[str], ids: frozenset[int]) -> None: ...

    for n in range(200):
        words = [f"w{n}-{k}" for k in range(12)]
        stored = tag.validate({"tags": words, "ids": [-k * n for k in range(12)]})
        assert set(stored["tags"]) == set(words)
