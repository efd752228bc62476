"""A reply the provider's content filter stopped, or the model refused, is marked
wherever a reply cut by the token limit is: the repr, the HTML, the Markdown export
and ``cm-notebook show`` (``%cm history``: test_magics_edges.py); real OpenAI and
Anthropic streams from a local server give those finish reasons."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from wire_server import WireHandler, WireServer, chunk, usage_chunk

from cm_notebook.cli import main
from cm_notebook.export import export_context, to_markdown
from cm_notebook.model import Message, MessageMetadata
from cm_notebook.providers.anthropic import AnthropicProvider
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider

FILTERED = "stopped by the provider's content filter"
REFUSED = "the model refused"


@pytest.mark.parametrize(
    ("finish", "label", "line"),
    [
        ("content_filter", FILTERED, "Stopped by the provider's content filter: the reply is"),
        ("refusal", REFUSED, "The model refused: the reply may be incomplete"),
    ],
)
def test_a_filtered_or_refused_reply_says_so_in_every_rendering(
    data_dir: Path,
    closing: list[ContextSession],
    capsys: pytest.CaptureFixture[str],
    finish: str,
    label: str,
    line: str,
) -> None:
    provider = ScriptedProvider().reply("I can", finish=finish)
    session = ContextSession.create("Stopped", provider=provider, data_dir=data_dir)
    closing.append(session)
    session.send("Tell me").result(10)
    reply = session.history()[-1]
    assert reply.metadata.finish_reason == finish
    assert repr(reply).startswith(f"<Message {reply.id} assistant {label} 'I can'")
    assert html.escape(label) in reply._repr_html_()
    assert html.escape(label) in session._repr_html_()
    session.close()

    async def markdown() -> str:
        async with FileStore(data_dir) as store:
            return to_markdown(await export_context(store, session.id))

    text = anyio.run(markdown)
    assert f"## Assistant ({label}) · " in text
    assert f"> *{line}" in text
    assert main(["--data-dir", str(data_dir), "show", session.id]) == 0
    out, _ = capsys.readouterr()
    assert f"assistant ({label})" in out


def test_a_reply_that_ended_by_itself_has_no_mark() -> None:
    for finish in ("stop", "tool_calls", None):
        reply = Message(
            role="assistant", content="Hi", metadata=MessageMetadata(finish_reason=finish)
        )
        assert "filter" not in repr(reply)
        assert "refused" not in reply._repr_html_()


def _openai_filtered(handler: WireHandler, body: dict[str, Any]) -> None:
    handler.start_stream()
    handler.event(chunk({"role": "assistant", "content": "Hel"}))
    handler.event(chunk({}, "content_filter"))
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    handler.event(usage_chunk(usage))
    handler.event("[DONE]")
    handler.end_stream()


def _anthropic_refused(handler: WireHandler, body: dict[str, Any]) -> None:
    message = {
        "id": "msg_refused",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    handler.start_stream()
    for event in (
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "I can"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "refusal", "stop_sequence": None},
            "usage": {"output_tokens": 2},
        },
        {"type": "message_stop"},
    ):
        handler.event(json.dumps(event), name=str(event["type"]))
    handler.end_stream()


@pytest.mark.anyio
@pytest.mark.usefixtures("no_provider_env")
@pytest.mark.parametrize("which", ["openai", "anthropic"])
async def test_a_real_stream_stopped_by_a_filter_or_a_refusal_is_marked(
    wire: WireServer, data_dir: Path, which: str
) -> None:
    provider: OpenAIProvider | AnthropicProvider
    if which == "openai":
        wire.default = _openai_filtered
        provider = OpenAIProvider("m", api_key="test-key", base_url=f"{wire.url}/v1", timeout=5)
        finish, label = "content_filter", FILTERED
    else:
        wire.default = _anthropic_refused
        provider = AnthropicProvider(
            "claude-test", api_key="test-key", base_url=wire.url, timeout=5
        )
        finish, label = "refusal", REFUSED
    session = ContextSession.create(provider=provider, data_dir=data_dir)
    try:
        reply = await session.send("Hi")
    finally:
        await session.aclose()
        await provider.aclose()
    assert reply.metadata.finish_reason == finish
    assert label in repr(reply)
