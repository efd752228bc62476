"""Running a tool call: time limit, worker thread for sync code, result text for the model.

A tool's failure is part of the conversation, not a crash: exceptions and time-outs
become a FAILED :class:`ToolOutcome` whose text tells the model what went wrong. Only
``Exception`` is caught; cancellation, ``KeyboardInterrupt`` and ``SystemExit`` always
propagate.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from pydantic_core import to_json

from .. import _json
from ..errors import ToolArgumentsError
from ..model import ToolCallStatus
from ._tool import Tool

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_RESULT_CHARS",
    "ToolOutcome",
    "denied_result",
    "encode_result",
    "run_tool",
    "truncate_result",
]

#: Seconds a tool call may take when neither the call nor the tool says otherwise.
DEFAULT_TIMEOUT = 60.0
#: Longest result text sent back to the model, so one tool cannot flood the context.
MAX_RESULT_CHARS = 20_000


@dataclass(frozen=True)
class ToolOutcome:
    """How a tool call ended.

    Attributes:
        status: ``ToolCallStatus.DONE`` or ``ToolCallStatus.FAILED``.
        result: The text that goes back to the model (``"error: ..."`` when FAILED).
        duration_ms: Wall-clock time of the call, validation included.
    """

    status: ToolCallStatus
    result: str
    duration_ms: float

    @property
    def ok(self) -> bool:
        """True when the tool returned normally."""
        return self.status is ToolCallStatus.DONE


async def run_tool(
    tool: Tool[..., Any],
    arguments: Mapping[str, Any],
    *,
    # A parameter, not the caller's cancel scope: the limit is per tool and it is
    # reported to the model as a result, which an outer scope could not do.
    timeout: float | None = None,  # noqa: ASYNC109
    max_result_chars: int = MAX_RESULT_CHARS,
) -> ToolOutcome:
    """Run ``tool`` with validated ``arguments``; never raises for the tool's own failures.

    ``timeout`` defaults to ``tool.timeout``, else :data:`DEFAULT_TIMEOUT`; pass
    ``math.inf`` for no limit. Sync tools run in a worker thread so a slow tool does not
    freeze the kernel; on time-out or cancellation that thread is abandoned (Python
    cannot stop a thread) and its eventual result is discarded. Async tools are
    cancelled at the time limit.

    The result text is the return value itself if it is a ``str``, else its JSON
    (pydantic-aware: models, dataclasses, datetimes...), cut to ``max_result_chars``.

    >>> import anyio
    >>> @tool
    ... def double(x: int) -> int:
    ...     '''Double a number.'''
    ...     return 2 * x
    >>> anyio.run(run_tool, double, {"x": 21}).result  # doctest: +SKIP
    '42'
    """
    limit = timeout if timeout is not None else tool.timeout
    limit = DEFAULT_TIMEOUT if limit is None else limit
    started = time.perf_counter()

    def finish(status: ToolCallStatus, text: str) -> ToolOutcome:
        elapsed = (time.perf_counter() - started) * 1000
        return ToolOutcome(status, truncate_result(text, max_result_chars), elapsed)

    try:
        args, kwargs = tool._call_args(arguments)
    except ToolArgumentsError as exc:
        return finish(ToolCallStatus.FAILED, f"error: {exc}")
    with anyio.move_on_after(limit) as scope:
        try:
            value = await _invoke(tool, args, kwargs)
        except Exception as exc:  # the tool's own failure: tell the model, keep talking
            return finish(ToolCallStatus.FAILED, _describe_exception(exc))
    if scope.cancelled_caught:
        shown = "inf" if math.isinf(limit) else f"{limit:g}"
        return finish(ToolCallStatus.FAILED, f"error: tool {tool.name!r} timed out after {shown} s")
    try:
        _json.check_depth(value)  # encoding it, or the model reading it, would fail
    except _json.JSONLimitError as exc:
        return finish(
            ToolCallStatus.FAILED,
            f"error: tool {tool.name!r} returned a {type(value).__name__} {exc}, which cannot "
            "be sent to the model",
        )
    return finish(ToolCallStatus.DONE, encode_result(value))


async def _invoke(tool: Tool[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    if tool.is_async:
        return await tool.fn(*args, **kwargs)
    call = functools.partial(tool.fn, *args, **kwargs)
    value = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    # A sync callable may still hand back an awaitable (e.g. a lambda around a coroutine).
    if inspect.isawaitable(value):
        value = await value
    return value


def _describe_exception(exc: Exception) -> str:
    message = str(exc)
    return f"error: {type(exc).__name__}: {message}" if message else f"error: {type(exc).__name__}"


def denied_result(tool_name: str, reason: str | None = None) -> str:
    """The text the model gets when a person (or the policy) refuses a call.

    Worded so the model knows not to simply retry the same call.

    >>> denied_result("rm", "too risky")
    "error: the call to tool 'rm' was denied: too risky. Do not retry it unchanged."
    """
    why = f": {reason.strip()}" if reason and reason.strip() else ""
    return f"error: the call to tool {tool_name!r} was denied{why}. Do not retry it unchanged."


def encode_result(value: object) -> str:
    """The text for a tool's return value: ``str`` as-is, anything else as JSON.

    >>> encode_result("plain"), encode_result({"n": 1}), encode_result(None)
    ('plain', '{"n":1}', 'null')
    """
    if isinstance(value, str):
        return value
    try:
        return to_json(value, fallback=repr).decode()
    except Exception:  # e.g. bytes that are not UTF-8: still say something useful
        try:
            return repr(value)
        except Exception:  # a repr that fails too (or recurses through an object)
            return f"<{type(value).__name__} that cannot be shown>"


def truncate_result(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """Cut ``text`` to at most ``limit`` characters, saying so at the end.

    >>> truncate_result("x" * 100, 60)
    'xxxxxxxx\\n[truncated: showing the first 8 of 100 characters]'
    """
    if len(text) <= limit:
        return text
    note = "\n[truncated: showing the first {} of " + f"{len(text):,} characters]"
    # Room for the note with the widest number it could show, so the total fits.
    keep = max(0, limit - len(note.format(f"{limit:,}")))
    return text[:keep] + note.format(f"{keep:,}")
