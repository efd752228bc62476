"""Markdown to HTML for the views: markdown-it-py (CommonMark + tables + strikethrough),
TeX math as MathML (:mod:`._math`), code blocks highlighted by pygments with inline
styles (so the HTML also looks right in a saved notebook or nbconvert output, where no
stylesheet of ours is loaded), but for very long ones (:data:`MAX_HIGHLIGHTED_CHARS`),
long or any ones in languages whose lexer is slow or not timed (:mod:`._lexers`), and
those past a message's share of coloured code (:data:`MAX_HIGHLIGHTED_PER_MESSAGE`),
shown plain: a view renders on the kernel's thread, and coloured code is slow to make
and about fifteen times its size as HTML.

Raw HTML in a message is shown as text, never interpreted: a model's reply must not be
able to inject markup or script into the notebook. Remote images are links, not loaded
(an image URL is a way out for what a model read); ``data:image`` ones are shown.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import ClassVar, cast

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict, OptionsType
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.style import Style
from pygments.styles.default import DefaultStyle
from pygments.token import (
    Comment,
    Error,
    Generic,
    Keyword,
    Name,
    Number,
    Operator,
    String,
    _TokenType,
)

from .._prefix_cache import CACHE_BUDGET, SizedCache
from ._lexers import lexer_for
from ._math import use_math

__all__ = ["render_markdown"]

#: JupyterLab's editor colour (``--jp-mirror-editor-<name>-color``) of each kind of
#: token, the nearest kind's for the others.
_EDITOR_COLOURS = {
    Keyword: "keyword",
    Operator.Word: "keyword",
    Name.Builtin: "builtin",
    Name.Function: "def",
    Name.Class: "def",
    Name.Namespace: "def",
    Name.Exception: "def",
    Name.Decorator: "meta",
    Name.Variable: "variable-2",
    Name.Constant: "variable-2",
    Name.Label: "variable-2",
    Name.Entity: "attribute",
    Name.Attribute: "attribute",
    Name.Tag: "tag",
    String: "string",
    String.Escape: "string-2",
    String.Interpol: "string-2",
    String.Regex: "string-2",
    Number: "number",
    Operator: "operator",
    Comment: "comment",
    Generic.Heading: "header",
    Generic.Subheading: "header",
    Generic.Deleted: "error",
    Generic.Error: "error",
    Generic.Traceback: "error",
    Generic.Inserted: "keyword",
    Generic.Prompt: "keyword",
    Error: "error",
}


def _themed(token: _TokenType, spec: str) -> str:
    # pygments' default style with each colour written as the theme's variable, the
    # default colour as its fallback: JupyterLab's dark theme gets its own editor
    # colours, and where no theme defines them (a saved notebook opened elsewhere,
    # nbconvert HTML) the default style shows as before.
    kind = next((_EDITOR_COLOURS[t] for t in token.split()[::-1] if t in _EDITOR_COLOURS), None)
    variable = f"--jp-mirror-editor-{kind}-color" if kind else "--jp-content-font-color1"
    return " ".join(
        f"var({variable},{part})" if part.startswith("#") else part for part in spec.split()
    )


class _ThemedStyle(Style):
    background_color = DefaultStyle.background_color
    styles: ClassVar[dict[_TokenType, str]] = {
        token: _themed(token, spec) for token, spec in DefaultStyle.styles.items()
    }


_FORMATTER = HtmlFormatter(noclasses=True, nowrap=True, style=_ThemedStyle)
#: The code block: JupyterLab's code background (dark in its dark theme), the light
#: default where there is none.
_PRE_STYLE = (
    "background:var(--jp-cell-editor-background,#f6f8fa);padding:8px;border-radius:4px;"
    "overflow-x:auto;font-size:90%;line-height:125%"
)


#: Code blocks longer than this are shown without colours: pygments' linear lexers take
#: about 3.5 s for a megabyte, and a view renders on the kernel's thread. Only lexers
#: timed linear get this far; the others stop much sooner or never colour (see
#: :mod:`._lexers`).
MAX_HIGHLIGHTED_CHARS = 50_000

#: Code coloured in one message, its blocks together: once a block would go past it,
#: that block and the ones after it are shown plain. Dense code (a token every two
#: characters) takes about 15 ms a kilobyte to colour and comes out about fifteen
#: times its size, so a message's colouring stays under about a second and a half and
#: adds at most about 1.5 MB to its HTML (kept in the notebook, sent again after each
#: turn), however many blocks it has; two blocks of the longest coloured size, or
#: dozens of ordinary ones, are still coloured.
MAX_HIGHLIGHTED_PER_MESSAGE = 2 * MAX_HIGHLIGHTED_CHARS


class _Colouring:
    """What is left of one message's :data:`MAX_HIGHLIGHTED_PER_MESSAGE`."""

    def __init__(self) -> None:
        self.left = MAX_HIGHLIGHTED_PER_MESSAGE

    def highlight(self, code: str, lang: str, _attrs: str) -> str:
        # markdown-it uses a result starting with "<pre" as is.
        tag = lang.strip().split()[0] if lang.strip() else ""
        lexer = lexer_for(tag, len(code), MAX_HIGHLIGHTED_CHARS) if tag else None
        if lexer is not None and len(code) > self.left:
            self.left = 0  # spent: the blocks after this one are plain too
            lexer = None
        if lexer is None:
            return f'<pre style="{_PRE_STYLE}"><code>{html.escape(code)}</code></pre>'
        self.left -= len(code)
        body = highlight(code, lexer, _FORMATTER)
        language = html.escape(lang)
        return f'<pre style="{_PRE_STYLE}"><code class="language-{language}">{body}</code></pre>'


def _fence(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    # The message's colouring kept in the render's env, which is one per message.
    colouring: _Colouring = env.setdefault("cm_colouring", _Colouring())
    with_budget = OptionsDict(cast("OptionsType", {**options, "highlight": colouring.highlight}))
    return renderer.fence(tokens, idx, with_budget, env)


#: How deep blocks may nest (quotes in quotes, lists in lists: a list level is two).
#: markdown-it stops parsing at its limit and drops the rest of the text without a
#: word; a text that reaches it is shown as plain text instead (see render_markdown).
_MAX_NESTING = 50

_MD = (
    MarkdownIt(
        "commonmark",
        {"html": False, "linkify": False, "maxNesting": _MAX_NESTING},
    )
    .enable("table")
    .enable("strikethrough")
)


def _image(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    # A remote image is a link to it, not loaded: the HTML is shown (and saved with the
    # notebook) wherever the notebook is opened, and an image URL a model wrote can
    # carry what it read out of the conversation to whoever serves it. Images inside
    # the text (data:image/...) are shown.
    token = tokens[idx]
    src = str(token.attrs.get("src", ""))
    if src.lower().startswith("data:image/"):
        return renderer.image(tokens, idx, options, env)
    alt = html.escape(token.content or "image")
    return (
        f'<a href="{html.escape(src)}" title="an image, not loaded: open it to see it">'
        f"[image: {alt}]</a>"
    )


_MD.add_render_rule("fence", _fence)
_MD.add_render_rule("image", _image)
use_math(_MD)

#: A table scrolls on its own rather than widen what holds it, its cells unbroken (a
#: column of the compare view wraps long words anywhere); inline, as the code blocks'
#: styles, for where no stylesheet of ours is loaded.
_TABLE_STYLE = "border-collapse:collapse;display:block;max-width:100%;overflow-x:auto"
_CELL_STYLE = "overflow-wrap:normal"


def _styled(style: str) -> Callable[..., str]:
    def rule(
        renderer: RendererHTML,
        tokens: Sequence[Token],
        idx: int,
        options: OptionsDict,
        env: EnvType,
    ) -> str:
        token = tokens[idx]
        given = token.attrGet("style")  # a column's alignment
        token.attrSet("style", f"{given};{style}" if given else style)
        return renderer.renderToken(tokens, idx, options, env)

    return rule


_MD.add_render_rule("table_open", _styled(_TABLE_STYLE))
_MD.add_render_rule("th_open", _styled(_CELL_STYLE))
_MD.add_render_rule("td_open", _styled(_CELL_STYLE))


#: Rendered messages, by text: messages are re-rendered on every view refresh, and
#: highlighting is the slow part. Bounded by the characters kept (a text and its HTML),
#: not only by count: a thousand long replies would otherwise stay in memory for the
#: process's life, their sessions long closed. Four times a message cache's budget: a
#: reply of a few megabytes, whose render takes seconds, is still kept.
_RENDERED: SizedCache[str, str] = SizedCache(kept=1024, budget=4 * CACHE_BUDGET)


def render_markdown(text: str) -> str:
    """``text`` (Markdown) as HTML; raw HTML in it is escaped. Cached (see
    :data:`_RENDERED`).

    A text nested too deeply to format (about 25 quotes or lists inside each other) is
    shown as it is, as preformatted text, rather than cut where the nesting stops."""
    known = _RENDERED.get(text)
    if known is None:
        known = _rendered(text)
        _RENDERED.put(text, known, len(text) + len(known))
    return known


def _rendered(text: str) -> str:
    tokens = _MD.parse(text)
    if any(token.level >= _MAX_NESTING - 1 for token in tokens):
        return (
            f'<pre style="white-space:pre-wrap">{html.escape(text)}</pre>'
            "<div><em>(nested too deeply to format: shown as text)</em></div>"
        )
    html_text: str = _MD.renderer.render(tokens, _MD.options, {})
    return html_text
