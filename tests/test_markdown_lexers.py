"""Which code blocks are coloured: only by lexers timed linear up to the big limit, by
the slower common ones up to their own small limit, by any other lexer never, so that
no block's language can hold the kernel's thread for long. The code is always kept
whole and escaped."""

from __future__ import annotations

import html
import re

from cm_notebook.widgets.markdown import MAX_HIGHLIGHTED_CHARS, render_markdown

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
