"""A Markdown export shows HTML from a conversation as text: nothing in it renders live.

The export is rendered here with markdown-it (CommonMark, raw HTML allowed, as a
notebook's or a viewer's Markdown renderer does) to see what a reader would get.
"""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from cm_notebook.export import ExportDocument, to_markdown
from cm_notebook.model import Branch, ContextMetadata, Message, MessageMetadata

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
    assert "    <i>indented</i>" in markdown
    assert "Tom &amp; Jerry &lt;3" in markdown
    rendered = RENDER.render(markdown)
    assert '<code class="language-html">&lt;b&gt;bold&lt;/b&gt; &amp; co\n</code>' in rendered
    assert "<code>&lt;i&gt;indented&lt;/i&gt;\n</code>" in rendered
    assert "Tom &amp; Jerry &lt;3" in rendered
