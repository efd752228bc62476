"""A reply's reasoning as it is stored, shown and exported: collapsed and escaped in
the static HTML, the live transcript and its saved copy, quoted in Markdown, kept in
JSON; left out of the files of replies without it, so they read as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cm_notebook.export import ExportDocument, parse_export, to_json, to_markdown
from cm_notebook.model import ContextMetadata, Message, MessageMetadata
from cm_notebook.render import conversation_html, message_html, status_label
from cm_notebook.store import FileStore
from cm_notebook.widgets._messages import message_dict, transcript_html

THOUGHT = "First <script>alert(1)</script> & then\n**bold** idea"
BLOCKS = [
    {"type": "thinking", "thinking": THOUGHT, "signature": "sig=="},
    {"type": "redacted_thinking", "data": "EmwKAhgB"},
]
# The metadata keys of a reply's file before reasoning and refusals were kept.
EARLIER_KEYS = {
    "provider",
    "model",
    "parameters",
    "usage",
    "duration_ms",
    "finish_reason",
    "error",
    "system_prompt",
    "stats",
    "seed",
    "request_id",
    "request_hash",
    "variables",
}


def thinking_reply(content: str = "The answer.", **metadata: object) -> Message:
    meta = MessageMetadata(model="m", reasoning=THOUGHT, **metadata)  # type: ignore[arg-type]
    return Message(id="m2", parent_id="m1", role="assistant", content=content, metadata=meta)


def test_static_html_shows_the_reasoning_collapsed_and_escaped() -> None:
    page = message_html(thinking_reply())
    assert "<details" in page
    assert "<details open" not in page
    assert "<summary" in page
    assert "Reasoning (6 words)" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; then" in page
    # Apart from the answer, and before it.
    assert page.index("</details>") < page.index("The answer.")
    assert "<details" not in message_html(Message(role="assistant", content="Plain."))


def test_a_reply_of_reasoning_only_says_it_gave_no_answer() -> None:
    reply = thinking_reply("", finish_reason="length")
    assert status_label(reply) == "cut off at the token limit, reasoned but gave no answer"
    page = conversation_html(ContextMetadata(id="c1"), [reply])
    assert "reasoned but gave no answer" in page
    assert "cut off at the token limit" in page
    item = message_dict(reply)
    assert item["hint"] is not None
    assert "reasoned but gave no answer" in item["hint"]


def test_a_refusal_is_labelled() -> None:
    reply = Message(
        role="assistant",
        content="I can't help with that.",
        metadata=MessageMetadata(refusal=True),
    )
    assert status_label(reply) == "the model refused"
    assert "refused" in message_html(reply)
    assert message_dict(reply)["label"] == "Assistant (refused)"


def test_the_transcript_shows_the_reasoning_collapsed_and_escaped() -> None:
    item = message_dict(thinking_reply(reasoning_blocks=BLOCKS))
    assert "<details" in item["reasoning"]
    assert "Reasoning (6 words, 1 redacted block)" in item["reasoning"]
    assert "<script>" not in item["reasoning"]
    assert "<strong>bold</strong>" in item["reasoning"]  # Markdown, safely rendered
    assert "The answer." in item["html"]
    assert THOUGHT not in item["html"]
    saved = transcript_html("T", "main", None, [item])
    assert "<details" in saved
    assert "<script>" not in saved
    assert saved.index("Reasoning (6 words") < saved.index("The answer.")
    assert message_dict(Message(role="assistant", content="Plain."))["reasoning"] == ""


def test_exports_keep_the_reasoning() -> None:
    document = ExportDocument(
        metadata=ContextMetadata(id="ctx-r"),
        messages=[
            Message(id="m1", role="user", content="Why?"),
            thinking_reply(reasoning_blocks=BLOCKS),
        ],
    )
    document.metadata.branches["main"].head = "m2"
    back = parse_export(to_json(document))
    assert back.messages[1].metadata.reasoning == THOUGHT
    assert back.messages[1].metadata.reasoning_blocks == BLOCKS
    markdown = to_markdown(document)
    assert "> **Reasoning (6 words, 1 redacted block):** First \\<script" in markdown
    assert "> \\*\\*bold\\*\\* idea" in markdown
    assert markdown.index("Reasoning (6 words") < markdown.index("The answer.")
    assert "<script>" not in markdown


@pytest.mark.anyio
async def test_files_without_reasoning_read_as_before_and_with_it_read_back(
    data_dir: Path,
) -> None:
    plain = Message(id="m1", role="user", content="Why?")
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        await store.append_message("c1", plain, branch="main", expected_head=None)
        reply = thinking_reply(reasoning_blocks=BLOCKS, refusal=True)
        await store.append_message("c1", reply, branch="main", expected_head="m1")
        old = Message(id="m3", parent_id="m2", role="assistant", content="Earlier.")
        await store.append_message("c1", old, branch="main", expected_head="m2")
    messages = data_dir / "contexts" / "c1" / "messages"
    # A reply without reasoning is written as earlier versions wrote it (they keep
    # unknown metadata keys, so they read the others too).
    written = json.loads((messages / "m3.json").read_text("utf-8"))
    assert set(written["metadata"]) == EARLIER_KEYS
    # A file of an earlier version, without the keys, reads with none.
    async with FileStore(data_dir) as store:
        loaded = await store.get_message("c1", "m3")
        assert loaded.metadata.reasoning is None
        assert loaded.metadata.reasoning_blocks == []
        assert loaded.metadata.refusal is False
        thought = await store.get_message("c1", "m2")
        assert thought.metadata.reasoning == THOUGHT
        assert thought.metadata.reasoning_blocks == BLOCKS
        assert thought.metadata.refusal is True
