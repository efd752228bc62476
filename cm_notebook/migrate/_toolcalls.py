"""v1 tool calls -> :class:`~cm_notebook.model.ToolCall`.

v1 stored tool calls in two shapes: OpenAI's (``{"id", "type": "function",
"function": {"name", "arguments": "<json>"}}``, results in later ``tool`` messages)
and a flat one (``{"id", "name", "arguments", "result", "status", "error"}``).

Status, first rule that applies:

1. an ``error`` -> ``failed`` (reason: the error);
2. v1 status denied/rejected/declined/cancelled -> ``denied``;
3. a ``result`` (or ``output``), or a later ``tool`` message answering the call's id
   -> ``done``;
4. v1 status failed/error -> ``failed``;
5. otherwise (v1 pending, approved, running, or nothing) -> ``failed`` with
   :data:`NO_RESULT_REASON`. Never ``pending``: a migrated context must not resurrect
   an approval prompt for a call made long ago in another system, and ``failed`` with
   a reason says honestly that no result exists. v1's status is kept in
   ``metadata.v1_tool_call_extra[<call id>]["status"]``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from .. import _json
from ..model import ToolCall, ToolCallStatus
from ._util import derived_id
from ._v1 import V1Message

__all__ = ["NO_RESULT_REASON", "convert_tool_calls"]

NO_RESULT_REASON = (
    "v1 recorded no result for this call; the migration marked it failed so that it is "
    "never offered for approval again"
)
_DENIED = {"denied", "rejected", "declined", "cancelled", "canceled"}
_FAILED = {"failed", "error", "errored"}
_ARGUMENTS = ("arguments", "args", "input", "parameters")
_RESULTS = ("result", "output", "response")
_KNOWN = {"id", "type", "function", "name", "error", "status", "reason", *_ARGUMENTS, *_RESULTS}


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _arguments(raw: dict[str, Any], fn: dict[str, Any]) -> dict[str, Any]:
    args: Any = next((raw[k] for k in _ARGUMENTS if k in raw), fn.get("arguments"))
    if isinstance(args, str):
        # OpenAI sends arguments as JSON text; text that is not JSON is kept as it is.
        with contextlib.suppress(ValueError):
            args = _json.loads(args) if args.strip() else {}
    if args is None:
        return {}
    return args if isinstance(args, dict) else {"v1_arguments": args}


def _status(
    raw: dict[str, Any], call_id: str, results: dict[str, str]
) -> tuple[ToolCallStatus, str | None, Any]:
    """(status, reason, result) following the rules in the module docstring."""
    result = next((raw[k] for k in _RESULTS if k in raw), None)
    v1_status = str(raw.get("status", "")).lower()
    if raw.get("error"):
        return ToolCallStatus.FAILED, _json_text(raw["error"]), result
    if v1_status in _DENIED:
        return ToolCallStatus.DENIED, str(raw.get("reason") or "denied in v1"), result
    if result is not None:
        return ToolCallStatus.DONE, None, result
    if call_id in results:
        return ToolCallStatus.DONE, None, results[call_id]
    if v1_status in _FAILED:
        return ToolCallStatus.FAILED, str(raw.get("reason") or "failed in v1"), None
    return ToolCallStatus.FAILED, NO_RESULT_REASON, None


def convert_tool_calls(
    msg: V1Message, context_id: str, results: dict[str, str], problems: list[str]
) -> tuple[list[ToolCall], dict[str, Any]]:
    """The message's ToolCalls, plus metadata keeping whatever did not fit in them.

    ``results`` maps tool call ids to the content of the ``tool`` messages answering
    them. Calls without a tool name cannot be ToolCalls: they are reported in
    ``problems`` and kept whole in ``metadata.v1_unconverted_tool_calls``.
    """
    calls: list[ToolCall] = []
    leftovers: dict[str, Any] = {}
    unconverted: list[Any] = []
    for i, raw in enumerate(msg.tool_calls):
        fn = raw.get("function") if isinstance(raw, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        name = raw.get("name", fn.get("name")) if isinstance(raw, dict) else None
        if not isinstance(raw, dict) or not isinstance(name, str) or not name.strip():
            unconverted.append(raw)
            problems.append(
                f"message #{msg.position}: tool call #{i} has no tool name; kept in "
                "metadata.v1_unconverted_tool_calls"
            )
            continue
        call_id = raw.get("id")
        if isinstance(call_id, bool) or not isinstance(call_id, (str, int)) or call_id == "":
            call_id = derived_id("call-", context_id, msg.position, i)
        call_id = str(call_id)[:200]
        status, reason, result = _status(raw, call_id, results)
        calls.append(
            ToolCall(
                id=call_id,
                name=name.strip()[:200],
                arguments=_arguments(raw, fn),
                status=status,
                reason=reason,
                result=None if result is None else _json_text(result),
            )
        )
        extra = {k: v for k, v in raw.items() if k not in _KNOWN}
        if "status" in raw:
            extra["status"] = raw["status"]
        if extra:
            leftovers[call_id] = extra
    meta: dict[str, Any] = {}
    if leftovers:
        meta["v1_tool_call_extra"] = leftovers
    if unconverted:
        meta["v1_unconverted_tool_calls"] = unconverted
    return calls, meta
