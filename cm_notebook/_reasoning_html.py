"""A reply's reasoning as people see it: collapsed, apart from the answer, escaped.

A thinking model's reasoning (``metadata.reasoning``) is shown in a ``<details>``
element closed by default, whose summary says how long it is ("Reasoning (212
words)"), before the answer: the static HTML (:mod:`cm_notebook.render`), the live
transcript and its saved copy (:mod:`cm_notebook.widgets._messages`) and the Markdown
export all show it this way. A reply whose only output was reasoning (a thinking
model cut off by ``max_tokens`` before it answered) says so (:data:`NO_ANSWER`)
instead of looking like an empty answer.
"""

from __future__ import annotations

import html

from ._theme import MUTED
from .model import Message

__all__ = ["NO_ANSWER", "gave_no_answer", "reasoning_html", "reasoning_summary"]

#: How a reply that reasoned but gave no answer (nor tool calls) is described.
NO_ANSWER = "reasoned but gave no answer"


def gave_no_answer(message: Message) -> bool:
    """True for a reply that has reasoning but neither text nor tool calls."""
    meta = message.metadata
    return (
        message.role == "assistant"
        and not message.content
        and not message.tool_calls
        and bool(meta.reasoning or meta.reasoning_blocks)
    )


def reasoning_summary(message: Message) -> str | None:
    """``Reasoning (N words)`` (and its redacted blocks), or None without reasoning."""
    meta = message.metadata
    redacted = sum(1 for b in meta.reasoning_blocks if b.get("type") == "redacted_thinking")
    if not meta.reasoning and not redacted:
        return None
    parts = []
    if meta.reasoning:
        words = len(meta.reasoning.split())
        parts.append(f"{words:,} word{'s' if words != 1 else ''}")
    if redacted:
        parts.append(f"{redacted} redacted block{'s' if redacted != 1 else ''}")
    return f"Reasoning ({', '.join(parts)})"


def reasoning_html(message: Message, body: str | None = None) -> str:
    """The reasoning as a collapsed ``<details>`` block ("" without reasoning).

    ``body`` is its text already as safe HTML (the views render it as Markdown); by
    default it is the text escaped, line breaks kept.
    """
    summary = reasoning_summary(message)
    if summary is None:
        return ""
    if body is None:
        text = html.escape(message.metadata.reasoning or "")
        body = f'<div style="white-space:pre-wrap">{text}</div>'
    return (
        f'<details class="cm-reasoning" style="margin:2px 0 4px 0">'
        f'<summary style="font-size:85%;color:{MUTED};cursor:pointer">{summary}</summary>'
        f'<div style="font-size:90%;color:{MUTED};border-left:2px solid #d1d5db;'
        f'padding-left:8px">{body}</div></details>'
    )
