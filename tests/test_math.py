"""TeX math in messages, drawn as MathML: what is read as math, what stays text, and
that a formula can carry no markup, link or script into the page, and that a message
draws only up to its budget."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from cm_notebook.widgets._math import (
    MAX_FORMULAS_PER_MESSAGE,
    MAX_TEX_CHARS,
    MAX_TEX_PER_MESSAGE,
    math_html,
)
from cm_notebook.widgets.markdown import render_markdown


def _formulas(html: str) -> list[str]:
    """The TeX of each formula drawn (its alttext)."""
    return re.findall(r'<math alttext="([^"]*)"', html)


@pytest.mark.parametrize(
    ("text", "tex", "display"),
    [
        (r"The area is $\pi r^2$.", r"\pi r^2", "inline"),
        (
            "$$\n\\sum_{i=1}^n i = \\frac{n(n+1)}{2}\n$$",
            r"\sum_{i=1}^n i = \frac{n(n+1)}{2}",
            "block",
        ),
        (r"Inline \(x^2\) here.", "x^2", "inline"),
        ("Solve:\n\\[\na^2 + b^2 = c^2\n\\]\nso", "\na^2 + b^2 = c^2\n", "block"),
        (r"In a sentence $$E = mc^2$$ too.", "E = mc^2", "block"),
        (r"$x < y$ and $a > b$", "x &lt; y", "inline"),
    ],
)
def test_tex_is_drawn_as_mathml(text: str, tex: str, display: str) -> None:
    html = render_markdown(text)
    assert tex.strip() in [formula.strip() for formula in _formulas(html)], html
    assert f'display="{display}"' in html
    assert "$" not in re.sub(r'alttext="[^"]*"', "", html)


@pytest.mark.parametrize(
    "text",
    [
        "It costs $5 and $10.",  # prices: a $ next to a digit or a space opens nothing
        "Between $ 3 and 4 $ dollars",
        r"Escaped \$x\$ stays text",
        "`$x^2$` in code",
        "```\n$x^2$ and \\(y\\)\n```",
        r"A backslash \\(not math\\)",
    ],
)
def test_what_is_not_math_stays_text(text: str) -> None:
    assert "<math" not in render_markdown(text)


@pytest.mark.parametrize(
    "tex",
    [
        r"\text{<script>alert(1)</script>}",
        r"\text{<img src=x onerror=alert(1)>}",
        r"\href{javascript:alert(1)}{x}",
        r'\color{red" onmouseover="alert(1)}{x}',
        r"\text{</math><script>alert(1)</script>}",
    ],
)
def test_a_formula_carries_no_markup_link_or_script(tex: str) -> None:
    html = render_markdown(f"${tex}$")
    assert "<script" not in html
    assert "<img" not in html
    assert "javascript:" not in html.replace('alttext="', "").split('"', 1)[-1]
    assert "href" not in re.sub(r'alttext="[^"]*"', "", html)
    assert "onmouseover" not in re.sub(r'alttext="[^"]*"', "", html)
    # What is drawn is well-formed MathML (or the source, as code).
    body = html.removeprefix("<p>").removesuffix("</p>\n")
    ET.fromstring(body)


def test_what_cannot_be_drawn_is_shown_as_its_source() -> None:
    long = "x+" * (MAX_TEX_CHARS // 2 + 1) + "x"
    shown = math_html(long, display=False)
    assert shown.startswith('<code class="cm-tex">$x+x+')
    # An element outside MathML in latex2mathml's output: the source, escaped.
    shown = math_html(r"\text{<b>bold</b>}", display=True)
    assert shown == '<code class="cm-tex">$$\\text{&lt;b&gt;bold&lt;/b&gt;}$$</code>'


def test_alignment_and_text_with_markup_characters_are_drawn() -> None:
    # latex2mathml leaves "&" and "<" bare here; they are escaped, not refused.
    html = render_markdown(r"$\text{a < b}$ and $\begin{cases} 1 & x>0 \\ 0 & x \le 0\end{cases}$")
    assert len(_formulas(html)) == 2, html
    assert re.search(r"<mtext>a\s&lt;\sb</mtext>", html), html
    assert "<mtable>" in html


def test_openers_without_a_closer_stay_text_and_a_later_closer_still_ends_one() -> None:
    # Many "\(" with no closer after them (a reply quoting TeX source) are text; the
    # paragraph's last closer is looked up once, not searched for from every opener.
    unclosed = render_markdown("\\( a " * 2_000)
    assert "<math" not in unclosed
    assert unclosed.count("(") == 2_000
    closed_late = render_markdown(r"\) one \( x^2 \) two \( y")
    assert _formulas(closed_late) == ["x^2"]
    assert closed_late.startswith("<p>) one <math")
    assert closed_late.endswith("</math> two ( y</p>\n")


def test_a_message_draws_formulas_up_to_its_budget_then_shows_their_source() -> None:
    # Many short formulas: the first MAX_FORMULAS_PER_MESSAGE are drawn, the rest shown
    # as their source, so the HTML stays a small multiple of the message.
    count = 10 * MAX_FORMULAS_PER_MESSAGE
    text = "$x_1$ " * count
    html = render_markdown(text)
    assert _formulas(html) == ["x_1"] * MAX_FORMULAS_PER_MESSAGE
    assert html.count('<code class="cm-tex">$x_1$</code>') == count - MAX_FORMULAS_PER_MESSAGE
    assert html.index("<math") < html.index("cm-tex") > html.rindex("</math>")
    assert len(html) < 6 * len(text) + 100 * MAX_FORMULAS_PER_MESSAGE
    # Long formulas: drawn until the next would go past the TeX budget, then source
    # from there on (a short one too); one too long to draw spends none of it.
    tex = r"\frac{a_1+b}{c^2} + \sqrt{x_i} " * (MAX_TEX_CHARS // 40)
    fits = MAX_TEX_PER_MESSAGE // len(tex.strip())
    too_long = "x+" * (MAX_TEX_CHARS // 2 + 1) + "x"
    formulas = [too_long] + [tex] * (fits + 3) + ["y^2"]
    html = render_markdown("\n\n".join(f"$${formula}$$" for formula in formulas))
    assert [formula.strip() for formula in _formulas(html)] == [tex.strip()] * fits
    assert html.count('<code class="cm-tex">$$') == 1 + 3 + 1
    assert html.endswith('<code class="cm-tex">$$y^2$$</code></div>\n')
    # The budget is the message's: the next one is drawn again.
    assert _formulas(render_markdown("$x_1$ in another message")) == ["x_1"]
