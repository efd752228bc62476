"""Static HTML views: what a saved notebook shows without a kernel."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from html import escape
from pathlib import Path

import anyio
import pytest

from cm_notebook.cli import main
from cm_notebook.export import export_context, to_markdown
from cm_notebook.model import (
    Branch,
    ContextMetadata,
    Message,
    MessageMetadata,
    MessageStatus,
    ToolCall,
    utcnow,
)
from cm_notebook.render import SAVED_MESSAGES, conversation_html, one_line
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
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


@pytest.mark.parametrize("role", ["user", "assistant", "system", "tool"])
def test_a_message_card_sets_its_own_text_colour_with_its_background(role: str) -> None:
    # A light card that left its text to the page's colour was light on light under a
    # dark theme (JupyterLab Dark, VS Code): unreadable.
    html = Message(role=role, content="hello", tool_call_id="c1" if role == "tool" else None)
    styles = re.findall(r'style="([^"]*)"', html._repr_html_())
    assert any("background" in style for style in styles)
    for style in styles:
        if "background" in style:
            assert re.search(r"(^|;)color:", style), style


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


# -- short, stable reprs --------------------------------------------------------------


def test_a_message_repr_is_one_short_line() -> None:
    message = Message(
        id="m1",
        role="assistant",
        content="The capital of Australia is Canberra,\nnot Sydney. " * 20,
        tool_calls=[ToolCall(id="c1", name="lookup"), ToolCall(id="c2", name="lookup")],
    )
    text = repr(message)
    assert text == (
        "<Message m1 assistant complete 'The capital of Australia is Canberra, n…' "
        f"({len(message.content)} chars, 2 tool calls)>"
    )
    assert repr(Message(id="t1", role="tool", tool_call_id="c1", content="42")) == (
        "<Message t1 tool -> c1 complete '42' (2 chars)>"
    )
    # Stable: the same message gives the same text at any time (no timestamps).
    assert repr(message.model_copy(update={"created_at": utcnow()})) == text


def test_tool_call_branch_and_context_reprs_are_short() -> None:
    call = ToolCall(id="c1", name="lookup", arguments={"q": "x" * 200})
    assert repr(call).startswith('<ToolCall c1 lookup pending {"q": "xxx')
    assert len(repr(call)) < 100
    branch = Branch(name="terse", head="m2", forked_from="m1", system_prompt="Be brief.")
    assert repr(branch) == "<Branch 'terse' head=m2 forked_from=m1 system='Be brief.'>"
    assert repr(Branch(name="main")) == "<Branch 'main' head=None>"
    meta = ContextMetadata(
        id="c1",
        title="A\nlong title",
        branches={"main": Branch(name="main"), "alt": Branch(name="alt")},
        active_branch="alt",
    )
    assert repr(meta) == "<ContextMetadata c1 'A long title' 2 branches, active 'alt'>"


@pytest.mark.parametrize(
    "whole",
    [
        "\U0001f1eb\U0001f1f7",  # a flag: two regional indicators
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a family: a joiner sequence
        "\U0001f44d\U0001f3fd",  # a thumb and its skin tone
        "e\u0301",  # a letter and its accent
    ],
)
def test_a_short_line_is_never_cut_inside_a_character(whole: str) -> None:
    # However the cut falls on it, the character is kept whole or left out whole.
    for before in range(70, 80):
        text = "x" * before + whole + " and more"
        cut = one_line(text, 79)
        assert len(cut) <= 79
        assert cut.endswith("…")
        kept = cut[before:-1]
        assert kept in ("", whole) or kept.startswith(whole), (before, cut[-6:])


# -- replies cut by the token limit ---------------------------------------------------


def test_a_cut_reply_says_so_in_its_repr_and_html() -> None:
    cut = Message(
        id="m9",
        role="assistant",
        content="Once upon a",
        metadata=MessageMetadata(finish_reason="length"),
    )
    assert repr(cut) == "<Message m9 assistant cut off at the token limit 'Once upon a' (11 chars)>"
    assert "cut off at the token limit" in cut._repr_html_()
    whole = cut.model_copy(update={"metadata": MessageMetadata(finish_reason="stop")})
    assert "cut off" not in repr(whole)
    assert "cut off" not in whole._repr_html_()
    stopped = cut.model_copy(update={"status": MessageStatus.INTERRUPTED})
    assert "interrupted, cut off at the token limit" in repr(stopped)


def test_a_cut_reply_says_so_in_every_rendering(
    data_dir: Path, closing: list[ContextSession], capsys: pytest.CaptureFixture[str]
) -> None:
    provider = ScriptedProvider().reply("A long story that never", finish="length")
    session = ContextSession.create("Cut", provider=provider, data_dir=data_dir)
    closing.append(session)
    session.send("Tell me a long story").result(10)
    reply = session.history()[-1]
    assert reply.metadata.finish_reason == "length"
    assert "cut off at the token limit" in repr(reply)
    assert "cut off at the token limit" in session._repr_html_()
    session.close()

    async def markdown() -> str:
        async with FileStore(data_dir) as store:
            return to_markdown(await export_context(store, session.id))

    text = anyio.run(markdown)
    assert "## Assistant (cut off at the token limit) · " in text
    assert "> *Cut off at the token limit: the reply is incomplete.*" in text
    assert main(["--data-dir", str(data_dir), "show", session.id]) == 0
    out, _ = capsys.readouterr()
    assert "assistant (cut off at the token limit)" in out


# -- the session's HTML shows that other branches exist -------------------------------


def test_the_session_html_lists_every_branch_and_which_is_active(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    session = ContextSession.create(
        "<b>Branches</b>",
        provider=ScriptedProvider(["one", "two"]),
        data_dir=data_dir,
        system="Be <brief>.",
    )
    closing.append(session)
    session.send("Hello").result(10)
    session.branch("alt")
    session.branch("other", switch=False)
    html = session._repr_html_()
    assert "3 branches: <bdi>main</bdi>, <b><bdi>alt</bdi></b> (active), <bdi>other</bdi>" in html
    assert "&lt;b&gt;Branches&lt;/b&gt;" in html
    assert "<b>Branches</b>" not in html


def test_many_branches_are_counted_not_all_listed() -> None:
    names = [f"b{i}" for i in range(30)]
    meta = ContextMetadata(
        branches={n: Branch(name=n) for n in names}, active_branch="b29", title="t"
    )
    html = conversation_html(meta, [])
    assert "30 branches: <b><bdi>b0</bdi></b>" not in html
    assert "30 branches: <bdi>b0</bdi>, <bdi>b1</bdi>" in html
    assert "<bdi>b11</bdi>, <b><bdi>b29</bdi></b> (active), and 17 more" in html
    # The branch shown is the active one unless another is named; its own prompt wins.
    own = meta.model_copy(
        update={"branches": {**meta.branches, "b1": Branch(name="b1", system_prompt="Mine")}}
    )
    shown = conversation_html(own, [], branch="b1")
    assert "<b><bdi>b1</bdi></b>" in shown
    assert "Mine" in shown
    # An empty prompt of its own means none on that branch, not the context's.
    with_context = own.model_copy(update={"system_prompt": "Context-wide"})
    assert "Context-wide" in conversation_html(with_context, [], branch="b2")
    assert "Context-wide" not in conversation_html(with_context, [], branch="b1")
    silent = with_context.model_copy(
        update={"branches": {**own.branches, "b3": Branch(name="b3", system_prompt="")}}
    )
    assert "Context-wide" not in conversation_html(silent, [], branch="b3")


def test_a_long_branch_s_html_holds_its_last_messages_and_says_how_to_get_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "my data"  # not the default folder, and one to quote
    session = ContextSession.create("Long", provider=ScriptedProvider(), data_dir=data_dir)
    try:
        for i in range(SAVED_MESSAGES // 2 + 3):
            session.send(f"question {i}").result(10)
        html = session._repr_html_()
    finally:
        session.close()
    total = 2 * (SAVED_MESSAGES // 2 + 3)
    assert f"the last {SAVED_MESSAGES} of {total} messages" in html
    # The command it advises names the session's folder, and works pasted as it is.
    advised = f"`cm-notebook --data-dir {shlex.quote(str(data_dir))} export {session.id}`"
    assert f"6 earlier messages are not in this copy. {escape(advised)}" in html
    assert main(shlex.split(advised.strip("`"))[1:]) == 0
    assert f"question {SAVED_MESSAGES // 2 + 2}" in capsys.readouterr().out
    assert "question 2<" not in html  # left out
    assert "question 3<" in html  # the first kept
    assert html.count('class="cm-message') <= SAVED_MESSAGES
