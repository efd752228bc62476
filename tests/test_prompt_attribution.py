"""Transcripts attribute each reply to the system prompt it was made under.

A branch's prompt can differ from the one its earlier replies were made under: a fork
made by ``edit_system`` (notebook 02), or a branch made with its own prompt after
replies. The Markdown export, the session's HTML, the saved copy of the chat and
``cm-notebook show`` state the prompt of the first reply at the top, where a later
reply's differs, and the next reply's at the end when it differs from the last one's.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook.cli import main
from cm_notebook.model import Message, MessageMetadata
from cm_notebook.prompts import PromptTrail, prompt_trail
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.widgets import CompareView, snapshot_html

PIRATE = "Answer like a pirate."
POET = "Answer like a poet."
FIRST = "First question?"
SECOND = "Second question?"


def in_order(text: str, *parts: str) -> None:
    """Each of ``parts`` is in ``text``, once, in this order."""
    where = []
    for part in parts:
        assert text.count(part) == 1, (part, text)
        where.append(text.index(part))
    assert where == sorted(where), (parts, text)


def html_text(page: str) -> str:
    """The visible text of static HTML, one space between pieces."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def show(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> str:
    code = main(["--data-dir", str(data_dir), "show", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def pirate_fork(data_dir: Path, closing: list[ContextSession]) -> tuple[ContextSession, str]:
    """Notebook 02: two arms over system prompts, then ``edit_system`` on the pirate one."""
    fake = ScriptedProvider()
    fake.reply("Short: light scatters.").reply("Arr, the sea, matey!").reply("Blue verse.")
    session = ContextSession.create("A/B", provider=fake, data_dir=data_dir)
    closing.append(session)
    fan = session.fan_out(
        "Why is the sky blue?", [{"system": "Answer in five words."}, {"system": PIRATE}]
    )
    fan.result(DEADLINE)
    session.switch(fan.branches[1])
    fork = session.edit_system(POET)
    assert fork.name != fan.branches[1]  # it forks: the pirate reply keeps its prompt
    [reply] = [m for m in session.history() if m.role == "assistant"]
    assert reply.metadata.system_prompt == PIRATE
    return session, fork.name


def test_a_fork_by_edit_system_keeps_its_replies_under_the_old_prompt(
    data_dir: Path, closing: list[ContextSession], capsys: pytest.CaptureFixture[str]
) -> None:
    session, fork = pirate_fork(data_dir, closing)

    # Before any reply on the fork: the pirate reply under its prompt, the poet's next.
    markdown = session.export(fork).to_markdown()
    in_order(
        markdown,
        f"## System prompt\n\n{PIRATE}\n",
        "## User",
        "## Assistant",
        f"## System prompt for the next reply\n\n{POET}\n",
    )
    page = html_text(session._repr_html_())
    in_order(page, f"system {PIRATE}", "user Why", "assistant", f"for the next reply {POET}")
    saved = html_text(snapshot_html(session))
    in_order(saved, f"System {PIRATE}", "You Why", f"for the next reply {POET}")
    out = show(capsys, data_dir, session.id, "--branch", fork)
    in_order(out, f"system prompt: {PIRATE}", "] user", f"system prompt for the next reply: {POET}")

    # A reply on the fork is made under the poet's prompt: the change is marked before
    # its turn, and nothing is left to say at the end.
    session.send("And at sunset?").result(DEADLINE)
    markdown = session.export(fork).to_markdown()
    in_order(
        markdown,
        f"## System prompt\n\n{PIRATE}\n",
        "Why is the sky blue?",
        f"## System prompt changed\n\n{POET}\n",
        "And at sunset?",
    )
    assert "next reply" not in markdown
    assert markdown.rindex("## Assistant") > markdown.index("## System prompt changed")
    page = html_text(session._repr_html_())
    in_order(page, f"system {PIRATE}", "Why is", f"system prompt changed {POET}", "And at sunset")
    assert "next reply" not in page
    saved = html_text(snapshot_html(session))
    in_order(saved, f"System {PIRATE}", "Why is", f"System prompt changed {POET}", "And at")
    out = show(capsys, data_dir, session.id, "--branch", fork)
    in_order(out, f"system prompt: {PIRATE}", "Why is", f"prompt changed: {POET}", "And at")
    assert "next reply" not in out


def test_the_compare_view_shows_the_prompt_of_the_reply_it_shows(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    session, fork = pirate_fork(data_dir, closing)
    view = CompareView(session, "main-answer-in-five-words", fork)
    try:
        text = html_text(view.value)
    finally:
        view.close()
    in_order(
        text,
        "system prompt Answer in five words.",
        f"system prompt {PIRATE} next reply's prompt {POET}",
    )


def test_a_branch_with_its_own_prompt_keeps_mains_replies_under_the_context_prompt(
    data_dir: Path, closing: list[ContextSession], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = ScriptedProvider()
    fake.reply("a").reply("b")
    session = ContextSession.create("T", provider=fake, data_dir=data_dir, system="ctx prompt")
    closing.append(session)
    session.send(FIRST).result(DEADLINE)
    session.branch("own", system="branch prompt")
    session.send(SECOND).result(DEADLINE)

    markdown = session.export("own").to_markdown()
    in_order(
        markdown,
        "## System prompt\n\nctx prompt\n",
        FIRST,
        "## System prompt changed\n\nbranch prompt\n",
        SECOND,
    )
    page = html_text(session._repr_html_())
    in_order(page, "system ctx prompt", FIRST, "system prompt changed branch prompt", SECOND)
    saved = html_text(snapshot_html(session))
    in_order(saved, "System ctx prompt", FIRST, "System prompt changed branch prompt", SECOND)
    out = show(capsys, data_dir, session.id, "--branch", "own")
    in_order(
        out, "system prompt: ctx prompt", FIRST, "system prompt changed: branch prompt", SECOND
    )

    # One prompt throughout: just the prompt at the top, as ever.
    markdown = session.export("main").to_markdown()
    assert "changed" not in markdown
    assert "next reply" not in markdown
    assert markdown.count("## System prompt\n\nctx prompt\n") == 1
    out = show(capsys, data_dir, session.id, "--branch", "main")
    assert "changed" not in out
    assert out.count("system prompt: ctx prompt") == 1


def test_a_branch_made_without_a_prompt_says_so_where_it_changes(
    data_dir: Path, closing: list[ContextSession], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = ScriptedProvider()
    fake.reply("a")
    session = ContextSession.create("T", provider=fake, data_dir=data_dir, system="ctx prompt")
    closing.append(session)
    session.send(FIRST).result(DEADLINE)
    session.branch("bare", system="")
    markdown = session.export("bare").to_markdown()
    in_order(markdown, "## System prompt\n\nctx prompt\n", FIRST, "## System prompt for the next")
    assert markdown.endswith("## System prompt for the next reply\n\n*(no system prompt)*\n")
    out = show(capsys, data_dir, session.id, "--branch", "bare")
    assert out.rstrip().endswith("system prompt for the next reply: (no system prompt)")


def test_a_prompt_given_after_replies_made_without_one(
    data_dir: Path, closing: list[ContextSession], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = ScriptedProvider()
    fake.reply("a")
    session = ContextSession.create("T", provider=fake, data_dir=data_dir)
    closing.append(session)
    session.send(FIRST).result(DEADLINE)
    fork = session.edit_system(POET).name
    markdown = session.export(fork).to_markdown()
    assert "## System prompt\n" not in markdown  # the reply was made under none
    assert markdown.endswith(f"## System prompt for the next reply\n\n{POET}\n")
    page = html_text(session._repr_html_())
    in_order(page, f"user {FIRST}", "assistant", f"system prompt for the next reply {POET}")
    out = show(capsys, data_dir, session.id, "--branch", fork)
    assert "system prompt: " not in out
    assert out.rstrip().endswith(f"system prompt for the next reply: {POET}")


def reply(prompt: str | None = None, *, recorded: bool = True) -> Message:
    """A reply made under ``prompt``; ``recorded``: by a request it records, as the
    runner's do (else as a reply migrated or stored by an older cm_notebook)."""
    metadata = (
        MessageMetadata(system_prompt=prompt, request_hash="sha256:0")
        if recorded
        else MessageMetadata(system_prompt=prompt)
    )
    return Message(role="assistant", content="r", metadata=metadata)


def test_the_trail_of_a_path() -> None:
    user = Message(role="user", content="q")
    tool = Message(role="tool", content="42", tool_call_id="c1")
    # No replies: the branch's prompt.
    assert prompt_trail([user], "now") == PromptTrail("now", {}, "now", False)
    # Replies that record no request (migrated, stored by an older cm_notebook) are
    # taken to be made under the branch's prompt: their "none" may be no record at all.
    assert prompt_trail([user, reply(recorded=False)], "now") == PromptTrail("now", {}, "now")
    unrecorded = Message(role="assistant", content="r")
    assert prompt_trail([user, unrecorded], "now") == PromptTrail("now", {}, "now")
    # A change is marked where the turn of the first reply under it begins: after the
    # tool results that answer the reply before.
    path = [user, reply("a"), tool, user, reply("b"), user, reply("b")]
    assert prompt_trail(path, "b") == PromptTrail("a", {3: "b"}, "b", False)
    # A counterfactual's edited result, answered under a new prompt: marked before it.
    path = [user, reply("a"), tool, reply("b")]
    assert prompt_trail(path, "c") == PromptTrail("a", {3: "b"}, "c", True)
    # "" and None are both "no prompt"; a recorded "none" stays none under a prompt now.
    assert prompt_trail([user, reply("")], None) == PromptTrail(None, {}, None, False)
    assert prompt_trail([user, reply(None)], "p") == PromptTrail(None, {}, "p", True)
