"""A ``%%cm`` reply's reasoning while it streams: a short "Thinking…" line that grows.

The reply's output is HTML replaced whole at every update (see :mod:`._reply`), so a
``<details>`` a reader opened would snap shut at the next one: while the model thinks,
the output shows instead how much it has reasoned and the last words of it, muted, in
one short block. Once the reply is stored, its reasoning is the usual collapsed block
(:func:`cm_notebook._reasoning_html.reasoning_html`), which the saved notebook keeps.
"""

from __future__ import annotations

import html

from .._theme import MUTED

__all__ = ["THINKING_TAIL", "thinking_html"]

#: The most characters of the reasoning's end shown while it streams: every update
#: re-sends the whole output, so the reasoning (which may run to many pages) is not.
THINKING_TAIL = 240


def thinking_html(reasoning: str) -> str:
    """``Thinking… (N words)`` and the last words of ``reasoning`` ("" without any)."""
    if not reasoning.strip():
        return ""
    words = len(reasoning.split())
    tail = reasoning[-THINKING_TAIL:]
    if len(reasoning) > THINKING_TAIL:
        # From a word's start, so the line does not begin mid-word.
        cut = tail.find(" ")
        tail = "…" + (tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail)
    count = f"{words} word{'s' if words != 1 else ''}"
    return (
        f'<div class="cm-thinking" style="font-size:85%;color:{MUTED};margin:2px 0 4px 0">'
        f"Thinking… ({count})"
        f'<div style="border-left:2px solid #d1d5db;padding-left:8px;white-space:pre-wrap;'
        f'overflow-wrap:anywhere">{html.escape(tail.strip())}</div></div>'
    )
