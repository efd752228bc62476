"""v1 tool calls -> :class:`~cm_notebook.model.ToolCall`.

v1 stored tool calls in three shapes: OpenAI's (``{"id", "type": "function",
"function": {"name", "arguments": "<json>"}}``, results in later ``tool`` messages),
a flat one (``{"id", "name", "arguments", "result", "status", "error"}``), and the
per-context files' (``{"id", "tool_name", "arguments", "approval_status"}``, results in
later ``tool`` messages' ``tool_result``). OpenAI's older function calling (a message's
``function_call``: ``{"name", "arguments"}``, answered by a ``function`` message) is read
as a call without an id (``_v1`` marks it ``"v1_field": "function_call"``, kept in
``metadata.v1_tool_call_extra``); it gets a derived id.

Status, first rule that applies:

1. an ``error`` -> ``failed`` (reason: the error);
2. v1 status denied/rejected/declined/cancelled -> ``denied``;
3. a ``result`` (or ``output``), or a ``tool`` message answering the call -> ``done``
   (which message answers which call is decided in ``_toollinks``: the result must
   follow the call's own asking message on its path);
4. v1 status failed/error -> ``failed``;
5. otherwise (v1 pending, approved, running, or nothing) -> ``failed`` with
   :data:`NO_RESULT_REASON`. Never ``pending``: a migrated context must not resurrect
   an approval prompt for a call made long ago in another system, and ``failed`` with
   a reason says honestly that no result exists. v1's status is kept in
   ``metadata.v1_tool_call_extra[<call id>]["status"]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from ..model import ToolCall, ToolCallStatus
from ._util import derived_id, json_text, load_json
from ._v1 import V1Message

__all__ = ["NO_RESULT_REASON", "call_ids_of", "convert_tool_calls"]

NO_RESULT_REASON = (
    "v1 recorded no result for this call; the migration marked it failed so that it is "
    "never offered for approval again"
)
_DENIED = {"denied", "rejected", "declined", "cancelled", "canceled"}
_FAILED = {"failed", "error", "errored"}
_ARGUMENTS = ("arguments", "args", "input", "parameters")
_RESULTS = ("result", "output", "response")
_NAMES = ("name", "tool_name")
_STATUSES = ("status", "approval_status")
_KNOWN = {"id", "type", "function", "error", "reason", *_NAMES, *_STATUSES, *_ARGUMENTS, *_RESULTS}


def _arguments(raw: dict[str, Any], fn: dict[str, Any]) -> dict[str, Any]:
    args: Any = next((raw[k] for k in _ARGUMENTS if k in raw), fn.get("arguments"))
    if isinstance(args, str):
        # OpenAI sends arguments as JSON text; text that is not JSON is kept as it is.
        with contextlib.suppress(ValueError):
            args = load_json(args) if args.strip() else {}
    if args is None:
        return {}
    return args if isinstance(args, dict) else {"v1_arguments": args}


def _name(raw: Any) -> str | None:
    """The tool name of a raw v1 call, or None if it has none (it cannot be a ToolCall)."""
    if not isinstance(raw, dict):
        return None
    fn = raw.get("function")
    fn = fn if isinstance(fn, dict) else {}
    name = next((raw[k] for k in _NAMES if k in raw), fn.get("name"))
    return name.strip()[:200] if isinstance(name, str) and name.strip() else None


def call_ids_of(msg: V1Message, context_id: str) -> dict[int, tuple[str, str]]:
    """Call index -> (v1 call id, tool name) for each of ``msg``'s calls that can be a
    ToolCall; a call without an id gets one derived from its place."""
    out = {}
    for i, raw in enumerate(msg.tool_calls):
        name = _name(raw)
        if name is None:
            continue
        call_id = raw.get("id")
        if isinstance(call_id, bool) or not isinstance(call_id, (str, int)) or call_id == "":
            call_id = derived_id("call-", context_id, msg.position, i)
        out[i] = (str(call_id)[:200], name)
    return out


def _status(
    raw: dict[str, Any], index: int, results: Mapping[int, str]
) -> tuple[ToolCallStatus, str | None, Any]:
    """(status, reason, result) following the rules in the module docstring."""
    result = next((raw[k] for k in _RESULTS if k in raw), None)
    v1_status = str(next((raw[k] for k in _STATUSES if k in raw), "")).lower()
    if raw.get("error"):
        return ToolCallStatus.FAILED, json_text(raw["error"]), result
    if v1_status in _DENIED:
        return ToolCallStatus.DENIED, str(raw.get("reason") or "denied in v1"), result
    if result is not None:
        return ToolCallStatus.DONE, None, result
    if index in results:
        return ToolCallStatus.DONE, None, results[index]
    if v1_status in _FAILED:
        return ToolCallStatus.FAILED, str(raw.get("reason") or "failed in v1"), None
    return ToolCallStatus.FAILED, NO_RESULT_REASON, None


def convert_tool_calls(
    msg: V1Message,
    context_id: str,
    results: Mapping[int, str],
    ids: Mapping[int, str],
    problems: list[str],
) -> tuple[list[ToolCall], dict[str, Any]]:
    """The message's ToolCalls, plus metadata keeping whatever did not fit in them.

    ``results`` maps call indexes to the content of the ``tool`` message answering that
    call, ``ids`` to the id each call gets (unique in the context; see ``_toollinks``).
    Calls without a tool name cannot be ToolCalls: they are reported in ``problems``
    and kept whole in ``metadata.v1_unconverted_tool_calls``.
    """
    calls: list[ToolCall] = []
    leftovers: dict[str, Any] = {}
    unconverted: list[Any] = []
    v1_ids = call_ids_of(msg, context_id)
    for i, raw in enumerate(msg.tool_calls):
        if i not in v1_ids:
            unconverted.append(raw)
            problems.append(
                f"message #{msg.position}: tool call #{i} has no tool name; kept in "
                "metadata.v1_unconverted_tool_calls"
            )
            continue
        v1_id, name = v1_ids[i]
        call_id = ids.get(i, v1_id)
        fn = raw.get("function")
        status, reason, result = _status(raw, i, results)
        calls.append(
            ToolCall(
                id=call_id,
                name=name,
                arguments=_arguments(raw, fn if isinstance(fn, dict) else {}),
                status=status,
                reason=reason,
                result=None if result is None else json_text(result),
            )
        )
        extra = {k: v for k, v in raw.items() if k not in _KNOWN}
        extra.update((k, raw[k]) for k in _STATUSES if k in raw)
        if call_id != v1_id:
            extra["v1_id"] = raw.get("id", v1_id)
        if extra:
            leftovers[call_id] = extra
    meta: dict[str, Any] = {}
    if leftovers:
        meta["v1_tool_call_extra"] = leftovers
    if unconverted:
        meta["v1_unconverted_tool_calls"] = unconverted
    return calls, meta
