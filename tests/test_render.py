"""Static HTML views: what a saved notebook shows without a kernel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cm_notebook.model import Message, MessageStatus, ToolCall
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def test_a_message_renders_escaped_with_its_status_and_tool_calls() -> None:
    message = Message(
        role="assistant",
        content="<script>alert(1)</script> & more",
        status=MessageStatus.INTERRUPTED,
        tool_calls=[ToolCall(id="c1", name="lookup", arguments={"q": "<b>"})],
    )
    html = message._repr_html_()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "interrupted" in html
    assert "lookup" in html
    assert "&lt;b&gt;" in html


def test_a_session_renders_its_active_branch_and_system_prompt(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(
        "<Title>",
        provider=ScriptedProvider(["Hi <there>"]),
        system="Be <brief>.",
    )
    session.send("Hello").result(10)
    html = session._repr_html_()
    assert "&lt;Title&gt;" in html
    assert "Be &lt;brief&gt;." in html
    assert html.index("Hello") < html.index("Hi &lt;there&gt;")
    assert "2 messages" in html
