"""Turning cm_notebook messages and tools into OpenAI chat-completions JSON.

Used by the OpenAI provider and by the local provider (llama.cpp speaks the same
format). Plain dicts come out, so the result can be sent through the SDK or as JSON.

Tool results may be stored in either of two ways and both are understood:

* a ``tool`` message whose ``tool_call_id`` names the call (the usual way), or
* the ``result`` (or denial ``reason``) recorded on the assistant message's
  :class:`~cm_notebook.model.ToolCall`; a ``tool`` message is then synthesised right
  after the assistant message, unless a real one for that call exists in the list.

An assistant message with tool calls carries its recorded reasoning back as
``reasoning_content`` (DeepSeek's thinking mode and llama.cpp require it within a tool
loop) only when the reasoning arrived in that field and from the provider and model the
request is for (``reasoning_of``): servers with strict schemas (Groq, Mistral) refuse
the field, and another model's reasoning is not its own. Otherwise nothing new is sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..model import Message, ToolCall, ToolCallStatus
from .base import ToolSpec

__all__ = ["sends_reasoning_back", "to_openai_messages", "to_openai_tools"]


def _tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }


def _recorded_result(call: ToolCall) -> str | None:
    if call.result is not None:
        return call.result
    if call.status is ToolCallStatus.DENIED:
        reason = f": {call.reason}" if call.reason else ""
        return f"The user denied this tool call{reason}"
    if call.status is ToolCallStatus.FAILED and call.reason:
        return f"The tool failed: {call.reason}"
    return None


def to_openai_messages(
    messages: Sequence[Message], reasoning_of: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """The ``messages`` array for a chat-completions request, root first.

    ``reasoning_of``: the ``(provider, model)`` the request is for, whose replies'
    ``reasoning_content`` goes back with their tool calls (None: no reasoning is sent).
    """
    answered = {m.tool_call_id for m in messages if m.role == "tool" and m.tool_call_id}
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "tool":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": message.tool_call_id or "",
                    "content": message.content,
                }
            )
        elif message.role == "assistant" and message.tool_calls:
            sent: dict[str, Any] = {
                "role": "assistant",
                # OpenAI wants null rather than "" when the reply is only tool calls.
                "content": message.content or None,
                "tool_calls": [_tool_call_json(call) for call in message.tool_calls],
            }
            if sends_reasoning_back(message, reasoning_of):
                # Thinking models with tools (DeepSeek's thinking mode) refuse the next
                # request unless the reasoning that led to the calls comes back; only the
                # model that sent it as reasoning_content gets it, with tool calls.
                sent["reasoning_content"] = message.metadata.reasoning
            out.append(sent)
            for call in message.tool_calls:
                result = _recorded_result(call)
                if call.id not in answered and result is not None:
                    out.append({"role": "tool", "tool_call_id": call.id, "content": result})
        else:
            out.append({"role": message.role, "content": message.content})
    return out


def sends_reasoning_back(message: Message, reasoning_of: tuple[str, str] | None) -> bool:
    """Whether ``message``'s reasoning goes back as ``reasoning_content`` in a request
    for ``reasoning_of`` (``(provider, model)``): it came in that field, from them."""
    metadata = message.metadata
    return (
        reasoning_of is not None
        and bool(message.tool_calls)
        and bool(metadata.reasoning)
        and metadata.reasoning_field == "reasoning_content"
        and (metadata.provider, metadata.model) == reasoning_of
    )


def to_openai_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """The ``tools`` array: each :class:`ToolSpec` as a function tool."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters),
            },
        }
        for tool in tools
    ]
