"""Static HTML for conversations: what a saved notebook shows without a kernel."""

from __future__ import annotations

import html
from collections.abc import Sequence

from .model import ContextMetadata, Message, MessageStatus

__all__ = ["conversation_html", "message_html"]

_ROLE_STYLE = {
    "user": "background:#eef4ff;border-left:3px solid #3b82f6",
    "assistant": "background:#f6f6f6;border-left:3px solid #10b981",
    "system": "background:#fff8e6;border-left:3px solid #f59e0b",
    "tool": "background:#f3efff;border-left:3px solid #8b5cf6",
}


def message_html(message: Message) -> str:
    """One message as a static HTML block (content escaped)."""
    style = _ROLE_STYLE.get(message.role, "")
    notes = []
    if message.status is not MessageStatus.COMPLETE:
        notes.append(message.status.value)
    if message.metadata.model:
        notes.append(html.escape(message.metadata.model))
    if message.metadata.error:
        notes.append("error: " + html.escape(message.metadata.error))
    calls = "".join(
        f'<div style="font-family:monospace;font-size:90%">&#128295; {html.escape(c.name)}'
        f"({html.escape(str(c.arguments))}) &rarr; {html.escape(c.status.value)}</div>"
        for c in message.tool_calls
    )
    note = f' <span style="color:#888">({", ".join(notes)})</span>' if notes else ""
    return (
        f'<div class="cm-message cm-{message.role}" style="{style};padding:6px 10px;'
        f'margin:4px 0;border-radius:4px"><div style="font-size:80%;color:#555">'
        f"<b>{message.role}</b>{note}</div>"
        f'<div style="white-space:pre-wrap">{html.escape(message.content)}</div>{calls}</div>'
    )


def conversation_html(metadata: ContextMetadata, messages: Sequence[Message]) -> str:
    """A context's branch as static HTML: title, branch, system prompt, messages."""
    header = (
        f'<div style="font-weight:bold">{html.escape(metadata.title)} '
        f'<span style="font-weight:normal;color:#888">branch '
        f"{html.escape(metadata.active_branch)} · {len(messages)} messages</span></div>"
    )
    system = ""
    if metadata.system_prompt:
        system = message_html(Message(id="system", role="system", content=metadata.system_prompt))
    body = "".join(message_html(m) for m in messages)
    return f'<div class="cm-conversation">{header}{system}{body}</div>'
