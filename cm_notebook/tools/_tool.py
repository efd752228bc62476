"""Turning a typed Python function into a :class:`Tool`: name, description, schema, validation.

The arguments schema is a pydantic model built from the signature. Its fields get
internal names (``p0``, ``p1``...) and the parameter names as aliases, so parameters
called ``json``, ``schema``, ``model_name`` or ``_private`` do not collide with
pydantic's own attributes or warn about protected namespaces.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Generic, ParamSpec, TypeVar, get_args, get_origin, overload

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic.fields import FieldInfo

from .. import _json
from .._unicode import scrub
from ..errors import InvalidInputError, ToolArgumentsError, ToolDefinitionError
from ..providers.base import ToolSpec
from ._docstrings import parse_docstring
from ._policy import Policy, check_policy
from ._schema import describe_schema, provider_schema

__all__ = ["MAX_ARGUMENTS_CHARS", "NAME_PATTERN", "Tool", "tool"]

P = ParamSpec("P")
R = TypeVar("R")

#: The longest JSON text accepted as one call's arguments (characters).
MAX_ARGUMENTS_CHARS = 1_000_000

#: Tool names that OpenAI, Anthropic and llama.cpp all accept.
NAME_PATTERN = re.compile(r"[a-zA-Z0-9_-]{1,64}")

_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class Tool(Generic[P, R]):
    """A Python function the model may call, with its name, description and JSON schema.

    Make one with the :func:`tool` decorator. A ``Tool`` is still callable like the
    function it wraps, so it can be tested directly.

    Attributes:
        fn: The wrapped function.
        name: The name the model calls it by.
        description: What the model is told the tool does.
        parameters: The JSON schema of the arguments (an object schema, provider-ready).
        policy: The tool's own approval policy, or ``None`` to leave it to the session.
        timeout: Seconds a call may take, or ``None`` for no limit (unless the session
            sets ``tool_timeout``, which then applies instead).
        is_async: Whether ``fn`` is a coroutine function (else it runs in a worker thread).

    >>> @tool
    ... def add(a: int, b: int = 1) -> int:
    ...     '''Add two integers.'''
    ...     return a + b
    >>> add(2, 3), add.name, add.description
    (5, 'add', 'Add two integers.')
    >>> add.validate('{"a": "2"}')
    {'a': 2, 'b': 1}
    """

    fn: Callable[P, R]
    name: str
    description: str
    parameters: dict[str, Any]
    policy: Policy | None
    timeout: float | None
    is_async: bool

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        policy: Policy | None = None,
        timeout: float | None = None,
    ) -> None:
        if not callable(fn):
            raise ToolDefinitionError(f"tool() needs a function, got {type(fn).__name__}")
        if isinstance(fn, Tool):
            fn = fn.fn  # re-wrapping a Tool (e.g. to rename it) wraps its function
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = _check_name(name if name is not None else getattr(fn, "__name__", None), fn)
        target = fn.func if isinstance(fn, functools.partial) else fn
        summary, param_docs = parse_docstring(inspect.getdoc(target))
        self.description = (description if description is not None else summary).strip()
        try:
            self.policy = None if policy is None else check_policy(policy)
        except InvalidInputError as exc:
            raise ToolDefinitionError(f"tool {self.name!r}: {exc}") from None
        self.timeout = _check_timeout(self.name, timeout)
        if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
            raise ToolDefinitionError(
                f"tool {self.name!r} is a generator; tools must return their whole result "
                "(e.g. collect the items into a list and return it)"
            )
        self.is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
            getattr(target, "__call__", None)  # noqa: B004  (an object with async __call__)
        )
        self._model, self._params = _arguments_model(self.name, fn, param_docs)
        schema = self._model.model_json_schema(by_alias=True)
        secret = _write_only_at(schema)
        if secret is not None:
            # A secret type (SecretStr) is written out masked: the call would be stored,
            # shown and run with "**********" instead of the value the model sent.
            raise ToolDefinitionError(
                f"tool {self.name!r}: {secret} is a secret type (e.g. SecretStr), whose "
                "value is masked when stored, so the tool would be called with '**********'. "
                "Take a plain str, and keep secrets out of tool arguments: what the model "
                "sends is stored in the conversation; read them in the tool instead (an "
                "environment variable, say)"
            )
        self.parameters = provider_schema(schema)
        where = _json.non_finite_at(self.parameters)
        if where is not None:  # e.g. Field(examples=[math.nan]): no request could carry it
            raise ToolDefinitionError(
                f"tool {self.name!r}: its JSON schema holds NaN or an infinity at {where}, "
                "which JSON cannot hold, so no request offering the tool could be sent. "
                "Remove that value from the parameter's Field(...) or json_schema_extra"
            )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Tool {self.name!r} policy={self.policy!r} timeout={self.timeout!r}>"

    @property
    def spec(self) -> ToolSpec:
        """What providers send to the model: ``ToolSpec(name, description, parameters)``.

        Usually via :meth:`ToolRegistry.specs`; ``ChatRequest(messages, tools=[add.spec])``.
        """
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def validate(self, arguments: str | bytes | Mapping[str, Any] | None) -> dict[str, Any]:
        """Parse and validate arguments; return them as JSON-able data, defaults filled in.

        ``arguments`` is the model's raw JSON text (an empty string means no arguments)
        or an already parsed mapping. Values are coerced where unambiguous (``"2"`` ->
        ``2`` for an ``int``). The result is exactly what will run, so show it to the
        person approving the call.

        Raises:
            ToolArgumentsError: with a message written to be sent back to the model.
        """
        return self._validate(arguments, f"Invalid arguments for tool {self.name!r}")

    def _validate(self, arguments: object, headline: str) -> dict[str, Any]:
        model = self._parse_and_check(arguments, headline)
        where = _json.non_finite_at(model.model_dump(by_alias=True))
        if where is not None:  # e.g. "nan" given for a float: stored, it would be null
            raise ToolArgumentsError(
                f"{headline}: {where} is NaN or an infinity, which is not a JSON number; "
                "give a finite number"
            )
        # Lone halves of surrogate pairs (pasted broken text) cannot be stored or logged
        # as UTF-8: replaced here, so what is shown as valid is what runs and is kept.
        # ``round_trip``: JSON that validates again (Json[...] fields stay text, computed
        # fields are left out), since the call runs from this stored form.
        validated: dict[str, Any] = scrub(
            model.model_dump(mode="json", by_alias=True, round_trip=True)
        )
        try:
            # What runs is this form validated again (see _call_args): it must validate.
            # (Not compared with the first result: a set's JSON list may come back in
            # another order, the same set.)
            self._model.model_validate(validated)
        except ValidationError:
            # The tool's types, not the model's arguments (e.g. a field whose validation
            # and serialization aliases differ): the call could not run as shown.
            raise ToolArgumentsError(
                f"{headline}: these arguments are valid, but the tool's parameter types do "
                "not read back their own JSON form, so the call cannot be stored and run "
                "as approved; the tool's author must change those types (e.g. a field's "
                "serialization alias that differs from its validation alias)"
            ) from None
        return validated

    def _call_args(self, arguments: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Validate (again) and split into the positional and keyword arguments to call with.

        Validation rebuilds Python values (enums, models, datetimes) from the JSON form.
        """
        model = self._parse_and_check(arguments, f"Invalid arguments for tool {self.name!r}")
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for field_name, param_name, positional_only in self._params:
            value = getattr(model, field_name)
            if positional_only:
                args.append(value)
            else:
                kwargs[param_name] = value
        return args, kwargs

    def _parse_and_check(self, arguments: object, headline: str) -> BaseModel:
        data = _parse(arguments, headline, self._accepted())
        try:
            return self._model.model_validate(data)
        except ValidationError as exc:
            problems = "\n".join(f"- {p}" for p in self._problems(exc))
            raise ToolArgumentsError(f"{headline}:\n{problems}") from None

    def _accepted(self) -> str:
        names = list(self.parameters["properties"])
        return ", ".join(names) if names else "(no arguments)"

    def _problems(self, exc: ValidationError) -> list[str]:
        properties: Mapping[str, Any] = self.parameters["properties"]
        problems = []
        for error in exc.errors(include_url=False):
            where = _location(error["loc"])
            if error["type"] == "missing":
                expected = properties.get(where)
                hint = f" ({describe_schema(expected)})" if expected is not None else ""
                problems.append(f"{where}: missing required argument{hint}")
            elif error["type"] == "extra_forbidden":
                problems.append(
                    f"{where}: unexpected argument; this tool accepts: {self._accepted()}"
                )
            else:
                problems.append(f"{where or 'arguments'}: {error['msg']}; got {_short(error)}")
        return problems


@overload
def tool(
    fn: Callable[P, R],
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    policy: Policy | None = None,
    timeout: float | None = None,
) -> Tool[P, R]: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    policy: Policy | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...
def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    policy: Policy | None = None,
    timeout: float | None = None,
) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
    """Turn a typed function (sync or async) into a :class:`Tool`.

    Use it bare, with options, or as a plain call::

        @tool
        def search(query: str, limit: int = 5) -> list[str]:
            '''Search the notes.

            Args:
                query: Words to look for.
                limit: At most this many results.
            '''

        @tool(name="fetch-page", policy="ask", timeout=10)
        async def fetch(url: str) -> str: ...

        shell = tool(run_shell, policy="deny")

    The description is the docstring's first paragraph; parameter descriptions come from
    ``Annotated[int, Field(description=...)]`` or else from a Google (``Args:``), NumPy
    (``Parameters``) or Sphinx (``:param x:``) docstring section.

    Raises:
        ToolDefinitionError: the name is invalid, a parameter is untyped, variadic
            (``*args``/``**kwargs``) or of a type with no JSON schema, or a default does
            not match its type or cannot be written as JSON (a sentinel ``object()``,
            ``math.inf``: use ``None``). The message names the parameter and the fix.
    """

    def wrap(function: Callable[P, R]) -> Tool[P, R]:
        return Tool(function, name=name, description=description, policy=policy, timeout=timeout)

    return wrap if fn is None else wrap(fn)


def _check_name(name: object, fn: object) -> str:
    if not isinstance(name, str):
        raise ToolDefinitionError(f"{fn!r} has no __name__; pass one: tool(fn, name='my_tool')")
    if not NAME_PATTERN.fullmatch(name):
        raise ToolDefinitionError(
            f"tool name {name!r} is not allowed: providers accept 1 to 64 ASCII letters, "
            "digits, '_' and '-'. Pass another with @tool(name=...)"
        )
    return name


def _check_timeout(name: str, timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ToolDefinitionError(f"tool {name!r}: timeout must be seconds, got {timeout!r}")
    if math.isnan(timeout) or timeout <= 0:
        raise ToolDefinitionError(
            f"tool {name!r}: timeout must be a positive number of seconds (math.inf for "
            f"none), got {timeout!r}"
        )
    return float(timeout)


def _arguments_model(
    name: str, fn: Callable[..., Any], param_docs: Mapping[str, str]
) -> tuple[type[BaseModel], tuple[tuple[str, str, bool], ...]]:
    """Build the pydantic model of the arguments; also (field, parameter, positional-only)."""
    try:
        # eval_str resolves `from __future__ import annotations` strings in fn's globals.
        signature = inspect.signature(fn, eval_str=True)
    except (NameError, SyntaxError, TypeError, ValueError) as exc:
        raise ToolDefinitionError(
            f"tool {name!r}: cannot read its signature or resolve its type hints ({exc}). "
            "Define the types it uses at module level, before the function"
        ) from exc
    fields: dict[str, Any] = {}
    params: list[tuple[str, str, bool]] = []
    # functools.partial(f, key=value) keeps ``key`` in its signature, the bound value
    # as its default: offered to the model, it could be overridden (a pinned folder, a
    # connection string with its password sent in every request's schema). The partial
    # supplies it; the model never sees it.
    bound = set(fn.keywords) if isinstance(fn, functools.partial) else set()
    for index, (pname, param) in enumerate(signature.parameters.items()):
        if pname in bound:
            continue
        annotation = _check_parameter(name, pname, param)
        options: dict[str, Any] = {"alias": pname}
        description = _annotated_description(annotation) or param_docs.get(pname)
        if description and not _has_field_description(annotation):
            options["description"] = description
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[f"p{index}"] = (annotation, Field(default, **options))
        params.append((f"p{index}", pname, param.kind is inspect.Parameter.POSITIONAL_ONLY))
    try:
        model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
        model.model_json_schema()
    except Exception as exc:  # definition time: turn any pydantic complaint into ours
        raise ToolDefinitionError(f"tool {name!r}: cannot derive its arguments: {exc}") from exc
    return model, tuple(params)


def _check_parameter(name: str, pname: str, param: inspect.Parameter) -> Any:
    if param.kind in _VARIADIC:
        star, example = ("*", "list[str]") if param.kind is _VARIADIC[0] else ("**", "dict")
        raise ToolDefinitionError(
            f"tool {name!r}: parameter {star}{pname} is not supported, as a model passes only "
            f"named arguments. Replace it with a named, typed parameter, e.g. "
            f"`{pname}: {example}`"
        )
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        raise ToolDefinitionError(
            f"tool {name!r}: parameter {pname!r} has no type annotation; annotate it (e.g. "
            f"`{pname}: str`) so its JSON schema can be derived"
        )
    if isinstance(param.default, FieldInfo):
        raise ToolDefinitionError(
            f"tool {name!r}: parameter {pname!r} uses Field(...) as its default; write "
            f"`{pname}: Annotated[<type>, Field(description=...)] = <default>` instead"
        )
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        adapter.json_schema()
    except Exception as exc:  # schema generation failures come in several pydantic types
        # pydantic's own first line names the fix when there is one (on Python < 3.12,
        # a TypedDict must come from typing_extensions).
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ToolDefinitionError(
            f"tool {name!r}: parameter {pname!r} has type {_type_name(annotation)}, which "
            f"has no JSON schema ({why}). Use JSON-shaped types: str, int, float, bool, "
            "None, list, dict, Literal, Enum, datetime, or a pydantic model / dataclass / "
            "TypedDict (typing_extensions.TypedDict before Python 3.12)"
        ) from exc
    if param.default is not inspect.Parameter.empty:
        _check_default(name, pname, param.default, annotation, adapter)
    return annotation


def _check_default(
    name: str, pname: str, default: object, annotation: Any, adapter: TypeAdapter[Any]
) -> None:
    typed = _type_name(annotation)
    widened = f"`{pname}: {typed}{'' if _accepts_none(adapter) else ' | None'} = None`"
    try:
        adapter.validate_python(default)
    except ValidationError:
        raise ToolDefinitionError(
            f"tool {name!r}: parameter {pname!r} has default {default!r}, which is not a "
            f"valid {typed}; widen the type (e.g. {widened}) or fix the default"
        ) from None
    try:
        # A call leaving the parameter out is stored (and shown) with its default as JSON
        # (the default as given: pydantic does not validate defaults).
        dumped = adapter.dump_python(default, mode="json", warnings=False)
    except Exception as exc:  # e.g. a sentinel object(): pydantic only warns, then fails
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ToolDefinitionError(
            f"tool {name!r}: parameter {pname!r} has default {default!r}, which cannot be "
            f"written as JSON ({why}), so every call leaving it out would fail. Use None as "
            f"the default ({widened}) and treat None as 'not given'"
        ) from None
    where = _json.non_finite_at({pname: dumped})
    if where is not None:  # math.inf as "no limit": the schema cannot be sent either
        part = "" if where == pname else f" (at {where})"
        raise ToolDefinitionError(
            f"tool {name!r}: parameter {pname!r} has default {default!r}{part}, and NaN and "
            "infinities are not JSON numbers: the tool's schema could not be sent to the "
            "model, and every call leaving it out would be refused. Use None as the "
            f"default ({widened}) and treat None as 'no limit' or 'not given'"
        )


def _accepts_none(adapter: TypeAdapter[Any]) -> bool:
    try:
        adapter.validate_python(None)
    except ValidationError:
        return False
    return True


def _annotated_description(annotation: Any) -> str | None:
    # Annotated[int, "How many"]: a bare string in the metadata reads as a description.
    if get_origin(annotation) is Annotated:
        for extra in get_args(annotation)[1:]:
            if isinstance(extra, str):
                return extra
    return None


def _has_field_description(annotation: Any) -> bool:
    return get_origin(annotation) is Annotated and any(
        isinstance(extra, FieldInfo) and extra.description for extra in get_args(annotation)[1:]
    )


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


def _parse(arguments: object, headline: str, accepted: str) -> Mapping[str, Any]:
    if arguments is None:
        return {}
    if isinstance(arguments, (str, bytes, bytearray)):
        if not arguments.strip():
            return {}  # some providers send "" for a call without arguments
        try:
            arguments = _json.loads(arguments, max_chars=MAX_ARGUMENTS_CHARS)
        except _json.JSONLimitError as exc:
            raise _too_big(headline, exc, accepted) from None
        except ValueError as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            position = (
                f" at line {exc.lineno} column {exc.colno}"
                if isinstance(exc, json.JSONDecodeError)
                else ""
            )
            raise ToolArgumentsError(
                f"{headline}: the arguments are not valid JSON ({detail}{position}). Send one "
                f"JSON object whose keys are the argument names: {accepted}"
            ) from None
    if not isinstance(arguments, Mapping):
        raise ToolArgumentsError(
            f"{headline}: expected a JSON object of named arguments ({accepted}), got "
            f"{_json_kind(arguments)}"
        )
    try:
        # Parsed by the caller: validation would recurse, and the size was never measured.
        _json.check_size(arguments, MAX_ARGUMENTS_CHARS)
    except _json.JSONLimitError as exc:
        raise _too_big(headline, exc, accepted) from None
    where = _json.non_finite_at(arguments)
    if where is not None:
        # Not JSON (Python's reader takes NaN and Infinity): stored, NaN would become null
        # and the call run with other arguments than those shown.
        raise ToolArgumentsError(
            f"{headline}: {where} is NaN or an infinity, which is not a JSON number; "
            "give a finite number"
        )
    return arguments


def _write_only_at(schema: object, where: str = "") -> str | None:
    # The first property of ``schema`` marked writeOnly (a secret type), as
    # "parameter 'x'" / "parameter 'x.y'"; None if there is none.
    if isinstance(schema, dict):
        if schema.get("writeOnly") is True:
            return f"parameter {where!r}" if where else "a parameter"
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                for name, sub in value.items():
                    found = _write_only_at(sub, f"{where}.{name}" if where else str(name))
                    if found is not None:
                        return found
            elif key != "properties":
                found = _write_only_at(value, where)
                if found is not None:
                    return found
    elif isinstance(schema, list):
        for item in schema:
            found = _write_only_at(item, where)
            if found is not None:
                return found
    return None


def _too_big(headline: str, exc: _json.JSONLimitError, accepted: str) -> ToolArgumentsError:
    return ToolArgumentsError(
        f"{headline}: the arguments are {exc}, beyond what a tool call may carry (at most "
        f"{MAX_ARGUMENTS_CHARS:,} characters, nested at most {_json.MAX_DEPTH} levels). "
        f"Send one flat JSON object whose keys are the argument names: {accepted}"
    )


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    for kind, label in kinds.items():
        if isinstance(value, kind):
            return label
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(error: Mapping[str, Any]) -> str:
    shown = repr(error.get("input"))
    return shown if len(shown) <= 80 else shown[:77] + "..."
