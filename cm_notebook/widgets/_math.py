"""TeX math in messages, as MathML the browser lays out itself.

Models write math as ``$x^2$``, ``$$\\sum_i x_i$$``, ``\\(x^2\\)`` and ``\\[x^2\\]``.
The views render Markdown kernel-side and the front end only sets the HTML, so a
typesetting script (MathJax, KaTeX) has nothing to run on: the TeX is converted to
MathML here (latex2mathml), which every current browser draws natively, in the live view
and in the copy a saved notebook keeps alike.

latex2mathml's output is not safe as it stands (``\\text{<b>}`` comes out as markup,
``\\href{javascript:...}`` as an attribute): it is parsed and written again keeping only
MathML elements and layout attributes. Anything that cannot be converted or parsed is
shown as its TeX source, in code style, never dropped; so are a formula too long to
convert (:data:`MAX_TEX_CHARS`) and the formulas past a message's share of math
(:data:`MAX_TEX_PER_MESSAGE`, :data:`MAX_FORMULAS_PER_MESSAGE`): conversion runs on the
kernel's thread, and its MathML is several times the size of the TeX.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence

from latex2mathml.converter import convert
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from mdit_py_plugins.dollarmath import dollarmath_plugin

__all__ = [
    "MAX_FORMULAS_PER_MESSAGE",
    "MAX_TEX_CHARS",
    "MAX_TEX_PER_MESSAGE",
    "math_html",
    "use_math",
]

#: Formulas longer than this are shown as source: converting one is recursive and takes
#: time growing with its length, on the kernel's thread.
MAX_TEX_CHARS = 4_000

#: TeX converted in one message, its formulas together, and how many formulas: once a
#: formula would go past either, it and the ones after it are shown as source.
#: Converting takes about 0.2 ms a formula however short, 15 to 30 µs a character of a
#: long one, and writes 5 to 30 times the TeX's size as MathML, so a message's math stays
#: under about a second and a few hundred kilobytes of HTML (kept in the notebook, sent
#: again after each turn); a reply full of math (hundreds of formulas, a long
#: derivation) is still drawn whole. A formula over :data:`MAX_TEX_CHARS`, never
#: converted, counts for nothing.
MAX_TEX_PER_MESSAGE = 20_000
MAX_FORMULAS_PER_MESSAGE = 1_000

#: The presentation MathML elements (MathML Core and the common rest).
_ELEMENTS = frozenset(
    {
        "math",
        "mrow",
        "mi",
        "mn",
        "mo",
        "ms",
        "mtext",
        "mspace",
        "mfrac",
        "msqrt",
        "mroot",
        "msub",
        "msup",
        "msubsup",
        "munder",
        "mover",
        "munderover",
        "mmultiscripts",
        "mprescripts",
        "none",
        "mtable",
        "mtr",
        "mtd",
        "mlabeledtr",
        "mstyle",
        "mpadded",
        "mphantom",
        "menclose",
        "merror",
        "mfenced",
        "semantics",
        "annotation",
    }
)
#: Attributes that only lay the math out (no links, events, styles or URLs).
_ATTRIBUTES = frozenset(
    {
        "display",
        "mathvariant",
        "stretchy",
        "fence",
        "form",
        "separator",
        "lspace",
        "rspace",
        "width",
        "height",
        "depth",
        "voffset",
        "accent",
        "accentunder",
        "movablelimits",
        "minsize",
        "maxsize",
        "symmetric",
        "largeop",
        "linethickness",
        "scriptlevel",
        "displaystyle",
        "notation",
        "columnalign",
        "rowalign",
        "columnlines",
        "rowlines",
        "columnspacing",
        "rowspacing",
        "columnspan",
        "rowspan",
        "frame",
        "framespacing",
        "align",
        "equalrows",
        "equalcolumns",
        "open",
        "close",
        "separators",
        "mathsize",
        "encoding",
    }
)
#: Colours (``\\color{red}``) as names or hex digits only.
_COLOUR_ATTRIBUTES = frozenset({"mathcolor", "mathbackground"})
_COLOUR = re.compile(r"#?[A-Za-z0-9]{1,20}")


def math_html(tex: str, *, display: bool) -> str:
    """``tex`` as MathML (a block of its own when ``display``), or, when it cannot be
    converted, its source in code style with the delimiters it was written with."""
    source = tex.strip()
    if source and len(source) <= MAX_TEX_CHARS:
        try:
            mathml = convert(source, display="block" if display else "inline")
            return _clean(ET.fromstring(_as_xml(mathml)), source)
        except Exception:  # any failure of a third-party parser: show the source
            pass
    return _source(tex, display=display)


def _source(tex: str, *, display: bool) -> str:
    shown = html.escape(f"$${tex}$$" if display else f"${tex}$")
    return f'<code class="cm-tex">{shown}</code>'


class _MathBudget:
    """What is left of one message's :data:`MAX_TEX_PER_MESSAGE` and
    :data:`MAX_FORMULAS_PER_MESSAGE`."""

    def __init__(self) -> None:
        self.chars = MAX_TEX_PER_MESSAGE
        self.formulas = MAX_FORMULAS_PER_MESSAGE

    def spend(self, tex: str) -> bool:
        """Whether ``tex`` may be converted; counted if so."""
        size = len(tex.strip())
        if not size or size > MAX_TEX_CHARS:
            return True  # shown as source without converting: costs nothing
        if self.formulas < 1 or size > self.chars:
            self.chars = self.formulas = 0  # spent: the formulas after this one too
            return False
        self.chars -= size
        self.formulas -= 1
        return True


#: What latex2mathml leaves unescaped: an ``&`` of an alignment (``a &= b``), a ``<``
#: in ``\\text{a < b}``; an entity or a tag is left alone.
_BARE_AMPERSAND = re.compile(r"&(?!#?[A-Za-z0-9]+;)")
_BARE_LESS_THAN = re.compile(r"<(?![A-Za-z/])")


def _as_xml(mathml: str) -> str:
    return _BARE_LESS_THAN.sub("&lt;", _BARE_AMPERSAND.sub("&amp;", mathml))


def _clean(root: ET.Element, source: str) -> str:
    # The tree written again with only what _ELEMENTS and _ATTRIBUTES allow; the TeX
    # source rides along as alttext (read out by screen readers, kept when copied).
    if _local(root.tag) != "math":
        raise ValueError("not MathML")
    root.set("alttext", source)
    return _written(root)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]  # ElementTree spells a namespaced tag "{uri}name"


def _written(element: ET.Element) -> str:
    name = _local(element.tag)
    if name not in _ELEMENTS:
        raise ValueError(f"not a MathML element: {name!r}")
    attributes = "".join(
        f' {key}="{html.escape(value)}"'
        for key, value in sorted(element.attrib.items())
        if _allowed(key, value)
    )
    inner = html.escape(element.text or "", quote=False)
    for child in element:
        inner += _written(child) + html.escape(child.tail or "", quote=False)
    return f"<{name}{attributes}>{inner}</{name}>"


def _allowed(key: str, value: str) -> bool:
    if key == "alttext":
        return True
    if key in _COLOUR_ATTRIBUTES:
        return _COLOUR.fullmatch(value) is not None
    return key in _ATTRIBUTES


def _bracket_math(state: StateInline, silent: bool) -> bool:
    # \( ... \) inline and \[ ... \] displayed, as models write them (CommonMark would
    # read "\(" as an escaped parenthesis and drop the backslash). Inline, so a \[ ... \]
    # spanning lines of its paragraph is one formula.
    start = state.pos
    if state.src[start] != "\\" or start + 1 >= state.posMax:
        return False
    opener = state.src[start + 1]
    if opener not in "([":
        return False
    closer = "\\)" if opener == "(" else "\\]"
    # Where the paragraph's last closer is, found once per paragraph: a search to its
    # end from every opener would take time quadratic in a text of unclosed "\(".
    closers: dict[tuple[str, str, int], int] = state.env.setdefault("cm_math_closers", {})
    key = (state.src, closer, state.posMax)
    if key not in closers:
        closers[key] = state.src.rfind(closer, 0, state.posMax)
    if closers[key] < start + 2:
        return False
    end = state.src.find(closer, start + 2, state.posMax)
    if end < 0 or not state.src[start + 2 : end].strip():
        return False
    if not silent:
        token = state.push("math_inline" if opener == "(" else "math_inline_double", "math", 0)
        token.content = state.src[start + 2 : end]
        token.markup = "\\" + opener
    state.pos = end + 2
    return True


def _render(display: bool) -> Callable[..., str]:
    def rule(
        _renderer: RendererHTML,
        tokens: Sequence[Token],
        idx: int,
        _options: OptionsDict,
        env: EnvType,
    ) -> str:
        # The message's budget kept in the render's env, which is one per message.
        budget: _MathBudget = env.setdefault("cm_math_budget", _MathBudget())
        tex = tokens[idx].content
        affordable = budget.spend(tex)
        shown = math_html(tex, display=display) if affordable else _source(tex, display=display)
        return f'<div class="cm-math">{shown}</div>\n' if tokens[idx].block else shown

    return rule


def use_math(md: MarkdownIt) -> None:
    """Teach ``md`` TeX math: ``$...$``, ``$$...$$``, ``\\(...\\)`` and ``\\[...\\]``.

    A ``$`` next to a space or a digit on its inner side opens or closes nothing, so
    prices ("$5 and $10") stay text, as in Pandoc.
    """
    dollarmath_plugin(
        md, allow_space=False, allow_digits=False, double_inline=True, allow_labels=False
    )
    md.inline.ruler.before("escape", "math_brackets", _bracket_math)
    md.add_render_rule("math_inline", _render(display=False))
    for name in ("math_inline_double", "math_block"):
        md.add_render_rule(name, _render(display=True))
