"""The tools a session offers, and turning a model's tool-call request into a ToolCall."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .. import _json
from ..errors import InvalidInputError, ToolArgumentsError, ToolDefinitionError, ToolError
from ..ids import new_id
from ..model import ToolCall, ToolCallStatus
from ..providers.base import ToolCallRequest, ToolSpec
from ._tool import MAX_ARGUMENTS_CHARS, Tool

__all__ = [
    "ToolRegistry",
    "UnknownToolError",
    "arguments_text_not_kept",
    "tool_call_from_request",
    "validate_edited_arguments",
]

# ToolCall.id and ToolCall.name are limited to 200 characters; a model can send more.
_MAX_FIELD = 200


class UnknownToolError(ToolError, KeyError):
    """No tool with that name is registered. The message lists the ones that are."""

    def __str__(self) -> str:  # KeyError would quote the sentence
        return str(self.args[0]) if self.args else ""


class ToolRegistry:
    """The tools on offer, by name, in the order they were added.

    Plain typed functions are wrapped with :func:`~cm_notebook.tools.tool` on the way in.

    >>> def now() -> str:
    ...     '''The current time.'''
    ...     return "12:00"
    >>> registry = ToolRegistry([now])
    >>> "now" in registry, len(registry), registry.get("now").description
    (True, 1, 'The current time.')
    """

    def __init__(self, tools: Iterable[Tool[..., Any] | Callable[..., Any]] = ()) -> None:
        if isinstance(tools, (str, bytes)) or callable(tools) or not isinstance(tools, Iterable):
            raise InvalidInputError(
                f"tools must be a list of tools or typed functions, e.g. tools=[add]; got "
                f"{type(tools).__name__} {tools!r:.80}"
            )
        self._tools: dict[str, Tool[..., Any]] = {}
        for item in tools:
            self.add(item)

    def add(self, item: Tool[..., Any] | Callable[..., Any]) -> Tool[..., Any]:
        """Register a tool (or a typed function, wrapped); return the ``Tool``.

        Raises:
            ToolDefinitionError: a tool with that name is already registered, or the
                function cannot be a tool.
        """
        new = item if isinstance(item, Tool) else Tool(item)
        if new.name in self._tools:
            raise ToolDefinitionError(
                f"two tools are named {new.name!r}; rename one with @tool(name=...)"
            )
        self._tools[new.name] = new
        return new

    def get(self, name: str) -> Tool[..., Any]:
        """The tool called ``name``.

        Raises:
            UnknownToolError: ``"no tool named X; available: a, b"``, fit to send to the model.
        """
        try:
            return self._tools[name]
        except KeyError:
            available = ", ".join(self._tools) or "(none)"
            raise UnknownToolError(f"no tool named {name!r}; available: {available}") from None

    def specs(self) -> list[ToolSpec]:
        """What to offer the model, in registration order."""
        return [t.spec for t in self._tools.values()]

    @property
    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._tools)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Tool):
            return self._tools.get(item.name) is item
        return isinstance(item, str) and item in self._tools

    def __iter__(self) -> Iterator[Tool[..., Any]]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names!r})"


def tool_call_from_request(
    request: ToolCallRequest, registry: ToolRegistry
) -> tuple[ToolCall, str | None]:
    """Turn a provider's :class:`ToolCallRequest` into a :class:`~cm_notebook.model.ToolCall`.

    Returns ``(call, None)`` with ``call.status == PENDING`` and validated arguments
    (defaults filled in) when the tool exists and the arguments are valid. Otherwise it
    fails closed: ``(call, error)`` where ``call.status == FAILED``, ``call.reason`` says
    why, and ``error`` (equal to ``call.result``) is the ``"error: ..."`` text to send
    back to the model so it can correct itself. Never raises: a tool that fails while
    checking the arguments (its own fault) fails the call closed too.

    >>> registry = ToolRegistry()
    >>> call, error = tool_call_from_request(ToolCallRequest("c1", "nope", "{}"), registry)
    >>> call.status.value, error
    ('failed', "error: no tool named 'nope'; available: (none)")
    """
    call_id = request.id[:_MAX_FIELD] or new_id("call_")
    name = request.name[:_MAX_FIELD] or "(no name)"
    try:
        tool = registry.get(request.name)
        arguments = tool.validate(request.arguments_json)
        return ToolCall(id=call_id, name=name, arguments=arguments), None
    except (UnknownToolError, ToolArgumentsError) as exc:
        reason = str(exc)
        error = f"error: {exc}"
    except Exception as exc:  # the tool's fault, not the model's: still fail closed
        reason = (
            f"tool {name!r} failed while checking the arguments ({_describe(exc)}). The "
            "call was not run; the tool's parameter types or defaults must be fixed"
        )
        error = (
            f"error: tool {name!r} failed while checking the arguments (a fault in the tool, "
            "not in the arguments); the call was not run"
        )
    try:
        sent = _as_sent(request.arguments_json)
        failed = ToolCall(
            id=call_id,
            name=name,
            arguments=sent,
            status=ToolCallStatus.FAILED,
            reason=reason,
            result=error,
        )
    except Exception:  # what the model sent cannot be kept as arguments: the reason says
        failed = ToolCall(
            id=call_id, name=name, status=ToolCallStatus.FAILED, reason=reason, result=error
        )
    return failed, error


def arguments_text_not_kept(request: ToolCallRequest) -> str | None:
    """The arguments text of ``request`` when no :class:`~cm_notebook.model.ToolCall`
    can hold it (not a JSON object: malformed, cut off, an array), else None.

    Kept beside the call (``MessageMetadata.tool_arguments_text``) so what the model
    wrote is never lost; at most ``MAX_ARGUMENTS_CHARS`` characters of it.

    >>> arguments_text_not_kept(ToolCallRequest("c1", "add", '{"a": 1'))
    '{"a": 1'
    >>> arguments_text_not_kept(ToolCallRequest("c1", "add", '{"a": 1}')) is None
    True
    """
    text = request.arguments_json
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        value = _json.loads(text, max_chars=MAX_ARGUMENTS_CHARS)
    except ValueError:  # not JSON, or beyond the limits
        return text[:MAX_ARGUMENTS_CHARS]
    return None if isinstance(value, Mapping) else text[:MAX_ARGUMENTS_CHARS]


def validate_edited_arguments(
    tool: Tool[..., Any], arguments: str | Mapping[str, Any]
) -> dict[str, Any]:
    """Validate arguments a person edited before approving a call; return what will run.

    Accepts a mapping or JSON text (e.g. straight from a text box).

    Raises:
        ToolArgumentsError: worded for the person, e.g. "The edited arguments for tool
            'search' are invalid: ...".
    """
    return tool._validate(arguments, f"The edited arguments for tool {tool.name!r} are invalid")


def _describe(exc: Exception) -> str:
    try:
        message = str(exc).strip().splitlines()
    except Exception:  # an exception that cannot even be printed
        message = []
    return f"{type(exc).__name__}: {message[0][:300]}" if message else type(exc).__name__


def _as_sent(arguments_json: object) -> dict[str, Any]:
    # Keep what the model sent when it is a JSON object, so the person sees the mistake;
    # anything else cannot live in ToolCall.arguments and is described in the reason.
    value = arguments_json
    try:
        if isinstance(value, (str, bytes)):
            value = _json.loads(value, max_chars=MAX_ARGUMENTS_CHARS) if value.strip() else {}
        else:
            _json.check_depth(value)
    except ValueError:  # not JSON, or beyond the limits: the reason says which
        return {}
    return dict(value) if isinstance(value, Mapping) else {}
