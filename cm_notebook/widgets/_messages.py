"""Messages as the views show them: plain dicts for the front end, and static HTML.

The same rendering feeds the live transcript (:mod:`.chat`) and the saved-notebook
snapshot (:mod:`.snapshot`), so both show a conversation the same way.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from .._html_text import WRAP_ANYWHERE, isolated, json_text_html
from .._reasoning_html import gave_no_answer, reasoning_html
from .._theme import MUTED
from .._unicode import json_for_terminal
from ..model import Message, MessageStatus, ToolCall
from ..prompts import NO_PROMPT, PromptTrail
from ..render import call_arguments_text, shown_call
from .markdown import render_markdown

__all__ = ["message_dict", "stats_of", "transcript_html"]

# What to do about a message that did not end well, shown under it.
_HINTS = {
    MessageStatus.ERROR: (
        "Retry with ↻ (session.retry()) once the cause is fixed, or edit the prompt."
    ),
    MessageStatus.INTERRUPTED: "Stopped before the end: ↻ asks for a new reply.",
}

_ROLE_LABEL = {"user": "You", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def stats_of(message: Message) -> dict[str, Any]:
    """Model, tokens, time to first token, tokens/s and latency of a reply, where known.
    The model is named with ``via`` and the server that answered when that was not the
    provider's own (see :mod:`cm_notebook.provenance`)."""
    meta = message.metadata
    model = meta.model or meta.provider
    if model and meta.endpoint:
        model += f" via {meta.endpoint}"
    out: dict[str, Any] = {"model": model}
    if meta.usage is not None:
        out["input_tokens"] = meta.usage.input_tokens
        out["output_tokens"] = meta.usage.output_tokens
    if meta.duration_ms is not None:
        out["latency_ms"] = round(meta.duration_ms)
    stats = meta.stats  # None on replies stored before streaming statistics existed
    if stats is not None:
        if stats.ttft_ms is not None:
            out["ttft_ms"] = round(stats.ttft_ms)
        if stats.tokens_per_second is not None:
            out["tokens_per_second"] = round(stats.tokens_per_second, 1)
        if "output_tokens" not in out and stats.output_tokens:
            out["output_tokens"] = stats.output_tokens
    return out


def _call_dict(message: Message, call: ToolCall, results: Mapping[str, Message]) -> dict[str, Any]:
    # Its outcome and result on the branch shown: an edited result's, not the shared
    # call's (see shown_call); a call still waiting has no answer and shows its own.
    shown = shown_call(call, results)
    return {
        "id": call.id,
        "name": call.name,
        # Invisible controls as escapes (the same JSON value): an override in an
        # argument would otherwise reverse the text it is in, on the page.
        "args": json_for_terminal(call_arguments_text(message, call, indent=2)),
        "status": shown.status.value,
        "result": shown.result,
        "reason": shown.reason,
    }


def message_dict(
    message: Message,
    *,
    siblings: Sequence[str] = (),
    tool_names: dict[str, str] | None = None,
    tool_results: Mapping[str, Message] | None = None,
) -> dict[str, Any]:
    """``message`` as the transcript shows it (Markdown already rendered to HTML).

    ``siblings``: ids of its alternatives, itself included, oldest first;
    ``tool_names``: tool call id -> tool name, to label tool results;
    ``tool_results``: the results the branch shown holds (:func:`~..render.tool_results`),
    shown under its calls.
    """
    position = siblings.index(message.id) if message.id in siblings else 0
    out: dict[str, Any] = {
        "id": message.id,
        "role": message.role,
        "label": _ROLE_LABEL.get(message.role, message.role),
        "html": render_markdown(message.content) if message.content else "",
        "text": message.content if message.role == "user" else "",
        "status": message.status.value,
        "calls": [_call_dict(message, call, tool_results or {}) for call in message.tool_calls],
        "sibling": [position + 1, len(siblings)] if len(siblings) > 1 else None,
        "prev": siblings[position - 1] if len(siblings) > 1 and position > 0 else None,
        "next": siblings[position + 1] if position + 1 < len(siblings) else None,
        "error": message.metadata.error,
        "hint": _HINTS.get(message.status),
    }
    if message.role == "tool" and message.tool_call_id:
        out["label"] = f"Tool result: {(tool_names or {}).get(message.tool_call_id, '?')}"
    if message.role == "assistant":
        out["stats"] = stats_of(message)
        # The reasoning collapsed, apart from the answer ("" without any): Markdown
        # rendered by the same safe renderer as the answer.
        reasoning = message.metadata.reasoning
        out["reasoning"] = reasoning_html(
            message, render_markdown(reasoning) if reasoning else None
        )
        if message.metadata.refusal:
            out["label"] = "Assistant (refused)"
        if gave_no_answer(message) and out["hint"] is None:
            out["hint"] = _NO_ANSWER_HINT
    return out


# Under a reply whose only output was reasoning: it is no empty answer.
_NO_ANSWER_HINT = (
    "The model reasoned but gave no answer; if it was cut off at the token limit, "
    "raise max_tokens and ask again with ↻."
)


def transcript_html(
    title: str,
    branch: str,
    system: str | None,
    items: Sequence[dict[str, Any]],
    *,
    earlier: int = 0,
    whole: str = "",
    prompts: PromptTrail | None = None,
) -> str:
    """Static HTML of a transcript (what a saved notebook shows without a kernel).

    ``earlier``: how many of the branch's messages before ``items`` are left out;
    ``whole`` then says how to get them all. ``system`` is shown at the top;
    ``prompts`` (of the messages of ``items``) says where a later reply's prompt
    differs, and the next reply's at the end when it differs from the last one's.
    """
    colors = {"user": "#3b82f6", "assistant": "#10b981", "tool": "#8b5cf6", "system": "#f59e0b"}
    count = f"the last {len(items):,} of {len(items) + earlier:,}" if earlier else f"{len(items)}"
    parts = [
        # Long words and URLs wrap anywhere: the copy stays as wide as its place.
        f'<div class="cm-snapshot" style="font-family:sans-serif;max-width:900px;'
        f'{WRAP_ANYWHERE}">'
        # The title and the branch name isolated: their direction and overrides stay
        # in them, never moving the words around them.
        f"<div><b>{isolated(title)}</b> "
        f'<span style="color:{MUTED}">branch {isolated(branch)} · '
        f"{count} messages</span></div>"
    ]
    if earlier:
        parts.append(
            f'<div style="color:{MUTED};margin:6px 0">{earlier:,} earlier messages are not '
            f"in this copy. {html.escape(whole)}</div>"
        )
    if system:
        # Its line breaks kept, as in the live view (a prompt is often a list of rules).
        prompt = f'<div style="white-space:pre-wrap">{html.escape(system)}</div>'
        parts.append(_block("System", "#f59e0b", prompt, ""))
    changes = prompts.changes if prompts is not None else {}
    for index, item in enumerate(items):
        if index in changes:
            parts.append(_prompt_block("System prompt changed", changes[index]))
        extra = ""
        for call in item["calls"]:
            # Each piece of the model's text isolated: an override in the arguments
            # cannot reverse the status after them.
            result = f" → {isolated(call['result'])}" if call["result"] else ""
            extra += (
                # The gear outside the monospace run: monospace fonts often lack it.
                f'<div style="font-size:85%">⚙ <span style="font-family:monospace">'
                f"{isolated(call['name'])}({json_text_html(call['args'])}) "
                f"[{call['status']}]{result}</span></div>"
            )
        if item["error"]:
            extra += f'<div style="color:{_ERROR}">{html.escape(item["error"])}</div>'
        if item["hint"]:
            extra += f'<div style="color:{MUTED}">{html.escape(item["hint"])}</div>'
        body = item.get("reasoning", "") + item["html"]
        parts.append(_block(item["label"], colors.get(item["role"], "#999"), body, extra))
    if prompts is not None and prompts.next_differs:
        parts.append(_prompt_block("System prompt for the next reply", prompts.next))
    parts.append("</div>")
    return "".join(parts)


def _prompt_block(label: str, prompt: str | None) -> str:
    # Like the prompt at the top; its line breaks kept (a prompt is often a list of rules).
    text = html.escape(prompt) if prompt else f"<i>{html.escape(NO_PROMPT)}</i>"
    return _block(label, "#f59e0b", f'<div style="white-space:pre-wrap">{text}</div>', "")


# The theme's colours where JupyterLab sets them (its dark theme included), else these:
# a fixed dark grey or red is hard to read on a dark page.
_ERROR = "var(--jp-error-color1,#b91c1c)"


def _block(label: str, color: str, body: str, extra: str) -> str:
    return (
        f'<div style="border-left:3px solid {color};padding:2px 10px;margin:6px 0;'
        f'{WRAP_ANYWHERE}">'
        f'<div style="font-size:80%;color:{MUTED};font-weight:bold">{html.escape(label)}</div>'
        f"{body}{extra}</div>"
    )
