"""Tools: typed Python functions the model may call, with approval policy and safe execution.

The pieces, in the order a tool call meets them::

    @tool                                   function -> Tool (name, description, schema)
    ToolRegistry([...])                     what the session offers: .specs() for providers
    tool_call_from_request(req, registry)   model's request -> ToolCall (PENDING) or an
                                            error for the model (FAILED, fail closed)
    arguments_text_not_kept(req)            the model's arguments text, when it is no
                                            JSON object (kept in the reply's metadata)
    ToolPolicy(...).decide(tool)            "auto" | "ask" | "deny"
    validate_edited_arguments(tool, args)   when a person approves with edited arguments
    await run_tool(tool, call.arguments)    -> ToolOutcome(status, result text, duration_ms)
    denied_result(name, reason)             the text the model gets for a denied call

Example::

    from cm_notebook.tools import ToolPolicy, ToolRegistry, run_tool, tool

    @tool(policy="auto", timeout=5)
    def add(a: int, b: int) -> int:
        '''Add two integers.'''
        return a + b

    registry = ToolRegistry([add])
    outcome = await run_tool(add, add.validate('{"a": 1, "b": "2"}'))
    assert outcome.result == "3"

Everything a tool does wrong at run time (raising, even ``SystemExit``; running past its
time limit, if it has one: by default it has none) becomes a FAILED outcome whose text
goes back to the model; everything a *programmer* does wrong (an untyped
parameter, a duplicate name) raises :class:`~cm_notebook.errors.ToolDefinitionError` at
definition time.
"""

from __future__ import annotations

from ._policy import POLICIES, Policy, ToolPolicy
from ._registry import (
    ToolRegistry,
    UnknownToolError,
    arguments_text_not_kept,
    tool_call_from_request,
    validate_edited_arguments,
)
from ._run import (
    DEFAULT_TIMEOUT,
    MAX_RESULT_CHARS,
    ToolOutcome,
    denied_result,
    encode_result,
    run_tool,
    truncate_result,
)
from ._tool import NAME_PATTERN, Tool, tool

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_RESULT_CHARS",
    "NAME_PATTERN",
    "POLICIES",
    "Policy",
    "Tool",
    "ToolOutcome",
    "ToolPolicy",
    "ToolRegistry",
    "UnknownToolError",
    "arguments_text_not_kept",
    "denied_result",
    "encode_result",
    "run_tool",
    "tool",
    "tool_call_from_request",
    "truncate_result",
    "validate_edited_arguments",
]
