"""Requests for the Anthropic provider: a ``ChatRequest`` as ``messages.create`` takes it.

Pure (no I/O, no SDK calls): :func:`build_request` and the conversions it is made of,
re-exported by :mod:`cm_notebook.providers.anthropic`, where they are documented as
its first layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import PermanentProviderError
from ..model import Message, ToolCallStatus
from .base import ChatRequest, ToolSpec

__all__ = ["build_request", "to_anthropic_messages", "to_anthropic_tools"]

_PROVIDER = "anthropic"


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _tool_use_block(call_id: str, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": dict(arguments)}


def to_anthropic_messages(
    messages: Sequence[Message], reasoning_of: tuple[str, str] | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """Convert a conversation to ``(system, messages)`` in Anthropic's format.

    - ``system`` messages are joined (blank line between) into the separate ``system``
      parameter, since the Messages API has no system role;
    - assistant tool calls become ``tool_use`` blocks after the assistant's text, and
      the reply's recorded thinking blocks (``metadata.reasoning_blocks``, signatures
      included) come first when the reply is from ``reasoning_of`` (the ``(provider,
      model)`` the request is for: signatures are checked per model; None: never);
    - ``tool`` messages become ``tool_result`` blocks in a *user* message; consecutive
      results (parallel calls) share one user message, as the API requires, and the
      result of a failed or denied call is flagged ``is_error`` so the model knows it
      did not run: by the outcome the tool message records (``metadata.tool_status``,
      its own even where a counterfactual edited it), else, for messages stored before
      it was recorded, by the status of the call it answers;
    - consecutive messages of the same role are merged, so the result alternates;
    - a reply with neither text nor tool calls (one that only thought) is left out;
    - empty text is dropped (the API rejects empty text blocks).
    """
    system_parts: list[str] = []
    converted: list[dict[str, Any]] = []
    # A tool message stored by an older version has only the text: its call's status
    # (on the assistant's ToolCall) tells how it ended, so remember each as we pass it.
    call_status: dict[str, ToolCallStatus] = {}

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if converted and converted[-1]["role"] == role:
            converted[-1]["content"].extend(blocks)
        else:
            converted.append({"role": role, "content": blocks})

    for message in messages:
        if message.role == "system":
            if message.content.strip():
                system_parts.append(message.content)
        elif message.role == "user":
            append("user", [_text_block(message.content)] if message.content else [])
        elif message.role == "assistant":
            # Its signed thinking blocks lead, in order, as the API requires of a
            # turn that thought before calling tools (nothing if none was recorded).
            blocks = [dict(block) for block in own_thinking_blocks(message, reasoning_of)]
            if message.content:
                blocks.append(_text_block(message.content))
            for call in message.tool_calls:
                call_status[call.id] = call.status
                blocks.append(_tool_use_block(call.id, call.name, call.arguments))
            append("assistant", blocks)
        else:  # "tool"
            if not message.tool_call_id:
                raise PermanentProviderError(
                    f"tool message {message.id} has no tool_call_id, so Anthropic cannot "
                    "match it to a tool_use block",
                    provider=_PROVIDER,
                )
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
            # The result's own outcome first: a counterfactual's edited result shares
            # the call (and its status) of the reply it answers, not its outcome.
            outcome = message.metadata.tool_status or call_status.get(message.tool_call_id)
            if outcome in (ToolCallStatus.FAILED, ToolCallStatus.DENIED):
                result["is_error"] = True
            append("user", [result])
    system = "\n\n".join(system_parts) if system_parts else None
    return system, converted


def own_thinking_blocks(
    message: Message, reasoning_of: tuple[str, str] | None
) -> list[dict[str, str]]:
    """``message``'s thinking blocks, if ``reasoning_of`` (the ``(provider, model)`` the
    request is for) wrote them; else none.

    None either for a reply that only thought (cut off by ``max_tokens``, no text nor
    tool calls): the API refuses a turn whose last block is thinking ("The final block
    in an assistant message cannot be `thinking`"), and needs no thinking back from a
    turn that called no tools. Such a reply is then left out of the request."""
    metadata = message.metadata
    if reasoning_of is None or (metadata.provider, metadata.model) != reasoning_of:
        return []
    if not (message.content or message.tool_calls):
        return []
    return metadata.reasoning_blocks


def to_anthropic_tools(tools: Iterable[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs as Anthropic tool definitions (``name``, ``description``,
    ``input_schema``); an empty schema becomes an object with no properties."""
    result = []
    for tool in tools:
        schema = dict(tool.parameters) or {"type": "object", "properties": {}}
        entry: dict[str, Any] = {"name": tool.name, "input_schema": schema}
        if tool.description:
            entry["description"] = tool.description
        result.append(entry)
    return result


# Sampling parameters go in ``extra_body``: they are plain JSON fields of the Messages
# API, and recent SDK releases no longer list all of them as keyword arguments.
_SAMPLING_PARAMS = ("temperature", "top_p", "top_k")


def build_request(request: ChatRequest, *, model: str, max_tokens: int) -> dict[str, Any]:
    """The keyword arguments for ``AsyncAnthropic().messages.create`` (without ``stream``).

    ``request.params`` may set ``model``, ``max_tokens``, ``temperature``, ``top_p``,
    ``top_k``, ``stop`` (a string or list, sent as ``stop_sequences``) and ``thinking``:
    extended thinking, as a token budget (``thinking=2000``: ``{"type": "enabled",
    "budget_tokens": 2000}``) or the API's own object, sent as given. The budget counts
    within ``max_tokens``, so without a ``max_tokens`` parameter the provider's is added
    to it. Other keys are left out here; a session refuses them before a request is
    made (:attr:`AnthropicProvider.parameters`).
    """
    params = request.params
    model = str(params.get("model") or model)
    system, messages = to_anthropic_messages(request.messages, (_PROVIDER, model))
    thinking = _thinking(params.get("thinking"))
    budget = _budget(thinking)
    kwargs: dict[str, Any] = {
        "model": model,
        "max_tokens": int(params.get("max_tokens") or max_tokens + budget),
        "messages": messages,
    }
    if system is not None:
        kwargs["system"] = system
    if request.tools:
        kwargs["tools"] = to_anthropic_tools(request.tools)
    stop = params.get("stop")
    if stop:
        kwargs["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    extra = {key: params[key] for key in _SAMPLING_PARAMS if params.get(key) is not None}
    if thinking:
        extra["thinking"] = thinking
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def thinking_budget(value: object) -> int:
    """The token budget the ``thinking`` parameter ``value`` asks for (0: none, or a
    setting :func:`build_request` refuses)."""
    try:
        return _budget(_thinking(value))
    except PermanentProviderError:
        return 0


def _budget(thinking: Mapping[str, Any] | None) -> int:
    budget = thinking.get("budget_tokens") if thinking else None
    return budget if isinstance(budget, int) and not isinstance(budget, bool) else 0


def _thinking(value: object) -> dict[str, Any] | None:
    # The ``thinking`` parameter as the API's object (None: not asked for).
    if value is None or value is False:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return {"type": "enabled", "budget_tokens": value}
    if isinstance(value, Mapping) and isinstance(value.get("type"), str):
        return dict(value)
    raise PermanentProviderError(
        f"{_PROVIDER}: thinking={value!r} is not a thinking setting; give a token budget "
        "(thinking=2000, at least 1024 for the Anthropic API) or the API's object "
        "(thinking={'type': 'enabled', 'budget_tokens': 2000})",
        provider=_PROVIDER,
    )
