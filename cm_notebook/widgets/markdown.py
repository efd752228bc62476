"""Markdown to HTML for the views: markdown-it-py (CommonMark + tables + strikethrough),
code blocks highlighted by pygments with inline styles (so the HTML also looks right in a
saved notebook or nbconvert output, where no stylesheet of ours is loaded).

Raw HTML in a message is shown as text, never interpreted: a model's reply must not be
able to inject markup or script into the notebook.
"""

from __future__ import annotations

import functools
import html

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

__all__ = ["render_markdown"]

_FORMATTER = HtmlFormatter(noclasses=True, nowrap=True, style="default")
_PRE_STYLE = (
    "background:#f6f8fa;padding:8px;border-radius:4px;overflow-x:auto;"
    "font-size:90%;line-height:125%"
)


def _highlight(code: str, lang: str, _attrs: str) -> str:
    # markdown-it uses a result starting with "<pre" as is; "" means "escape it yourself".
    if not lang:
        return f'<pre style="{_PRE_STYLE}"><code>{html.escape(code)}</code></pre>'
    try:
        lexer = get_lexer_by_name(lang.strip().split()[0])
    except ClassNotFound:
        return f'<pre style="{_PRE_STYLE}"><code>{html.escape(code)}</code></pre>'
    body = highlight(code, lexer, _FORMATTER)
    return (
        f'<pre style="{_PRE_STYLE}"><code class="language-{html.escape(lang)}">{body}</code></pre>'
    )


#: How deep blocks may nest (quotes in quotes, lists in lists: a list level is two).
#: markdown-it stops parsing at its limit and drops the rest of the text without a
#: word; a text that reaches it is shown as plain text instead (see render_markdown).
_MAX_NESTING = 50

_MD = (
    MarkdownIt(
        "commonmark",
        {"html": False, "linkify": False, "highlight": _highlight, "maxNesting": _MAX_NESTING},
    )
    .enable("table")
    .enable("strikethrough")
)


@functools.lru_cache(maxsize=1024)
def render_markdown(text: str) -> str:
    """``text`` (Markdown) as HTML; raw HTML in it is escaped. Cached: messages are
    re-rendered on every view refresh, and highlighting is the slow part.

    A text nested too deeply to format (about 25 quotes or lists inside each other) is
    shown as it is, as preformatted text, rather than cut where the nesting stops."""
    tokens = _MD.parse(text)
    if any(token.level >= _MAX_NESTING - 1 for token in tokens):
        return (
            f'<pre style="white-space:pre-wrap">{html.escape(text)}</pre>'
            "<div><em>(nested too deeply to format: shown as text)</em></div>"
        )
    html_text: str = _MD.renderer.render(tokens, _MD.options, {})
    return html_text
