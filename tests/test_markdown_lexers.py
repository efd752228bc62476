"""Which code blocks are coloured: only by lexers timed linear up to the big limit, by
the slower common ones up to their own small limit, by any other lexer never, so that
no block's language can hold the kernel's thread for long; and a message's blocks only
up to its budget, so that no message can. The code is always kept whole and escaped."""

from __future__ import annotations

import html
import re

from cm_notebook.widgets.markdown import (
    MAX_HIGHLIGHTED_CHARS,
    MAX_HIGHLIGHTED_PER_MESSAGE,
    render_markdown,
)

_COLOURED = "<span style="


def _text(out: str) -> str:
    """The code shown: the HTML without its tags, unescaped."""
    return html.unescape(re.sub(r"<[^>]*>", "", out))


def _fence(tag: str, code: str) -> str:
    return render_markdown(f"```{tag}\n{code}```")


def test_a_lexer_never_timed_shows_its_code_plain_and_whole() -> None:
    # systemd's lexer takes seconds on a long line, maple's backtracks exponentially
    # (an unclosed string of 60 characters takes seconds): no size is safe untimed.
    line = "ExecStart=/usr/bin/run --opt=<value> & echo 'done'\n"
    code = line * 100
    out = _fence("systemd", code)
    assert _COLOURED not in out
    shown = "ExecStart=/usr/bin/run --opt=&lt;value&gt; &amp; echo &#x27;done&#x27;"
    assert out.count(shown) == 100
    short = _fence("maple", '"a b a b a b a b a b a b a b a\n')
    assert _COLOURED not in short
    assert "&quot;a b a b" in short


def test_a_slow_common_lexer_colours_short_blocks_only() -> None:
    line = 'String s = "a < b"; // compare\n'
    assert _COLOURED in _fence("java", line * 3)
    long_code = line * (5_000 // len(line))
    out = _fence("java", long_code)
    assert _COLOURED not in out
    assert out.count("String s = &quot;a &lt; b&quot;; // compare") == long_code.count("\n")
    # The limit is the lexer's, whatever alias names it.
    assert _COLOURED not in _fence("yaml", "key: 'a < b'\n" * 1_000)
    assert _COLOURED not in _fence("yml", "key: 'a < b'\n" * 1_000)


def test_a_linear_lexer_colours_up_to_the_big_limit_by_any_alias() -> None:
    line = "x = a < b  # compare\n"
    code = line * (MAX_HIGHLIGHTED_CHARS // len(line))
    for tag in ("python", "py", "python3"):
        assert _COLOURED in _fence(tag, code)
    # ...while a slow lexer's block of that size is not coloured.
    assert _COLOURED not in _fence("csharp", "var x = a < b; // compare\n" * 1_000)


def test_long_ipython_code_is_coloured_as_python() -> None:
    # Past the IPython lexer's limit the Python lexer colours it: magics' names are
    # plain, IPython's own syntax is not marked as an error, the rest is coloured.
    cell = "%timeit f(x)\n!ls -la\ndef f(a):\n    return a < 2\n\n"
    out = _fence("ipython", cell * 200)
    assert out.count('font-weight: bold">def</span>') == 200  # keywords
    assert ">timeit<" not in out
    assert "border: 1px" not in out  # the error style
    assert _text(out) == cell * 200
    # Short, its own lexer colours the magic.
    assert _fence("ipython", cell).count(">timeit<") == 1


def test_a_message_colours_its_code_up_to_its_budget_then_shows_it_plain() -> None:
    # Blocks each short enough to colour, together far past a message's budget: the
    # first ones are coloured, from the one that would go past it on all are plain (an
    # ordinary small one too), so the HTML stays a small multiple of the message. A
    # block too long to colour at all spends none of it.
    line = "x = foo(a, b) + 1  # c\n"
    too_long = line * (MAX_HIGHLIGHTED_CHARS // len(line) + 1)
    code = line * (MAX_HIGHLIGHTED_CHARS // 4 // len(line))
    fits = MAX_HIGHLIGHTED_PER_MESSAGE // len(code)
    blocks = [f"```python\n{too_long}```\n"]
    blocks += [f"```python\n{code}```\n"] * (fits + 20) + ["```python\nx = 1\n```\n"]
    text = "\n".join(blocks)
    out = render_markdown(text)
    shown = out.split("<pre")[1:]
    assert len(shown) == len(blocks)
    assert [_COLOURED in block for block in shown] == [False] + [True] * fits + [False] * 21
    lines = too_long.count("\n") + (fits + 20) * code.count("\n")
    assert _text(out).count(line) == lines  # every line, whole
    coloured = len("".join(shown[1 : fits + 1]))
    assert len(out) - coloured < 2 * len(text)
    assert len(out) < 2 * len(text) + 20 * MAX_HIGHLIGHTED_PER_MESSAGE
    # The budget is the message's: the next one is coloured again.
    assert _COLOURED in render_markdown(f"```python\n{code}```\n\nanother message")
