"""The views without a front end: what they render and how they react, on a real
session (ScriptedProvider the only fake). The front-end protocol itself is tested in a
real kernel (test_widgets_kernel.py, test_widgets_actions_kernel.py) and a real
browser (test_views_browser.py)."""

from __future__ import annotations

import asyncio
import html
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from store_helpers import TakenMeanwhile

pytest.importorskip("anywidget")

from test_session_support import until

from cm_notebook import ContextSession, tool
from cm_notebook.errors import InvalidInputError
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider
from cm_notebook.widgets import (
    BranchTree,
    ChatView,
    CompareView,
    SessionView,
    Snapshot,
    StatusBar,
    ToolApproval,
    snapshot_html,
)
from cm_notebook.widgets._base import Throttle
from cm_notebook.widgets.approval import ARGS_ROWS, _rows_for
from cm_notebook.widgets.chat import MESSAGES_SHOWN
from cm_notebook.widgets.markdown import render_markdown
from cm_notebook.widgets.rating import RatingBar

pytestmark = pytest.mark.anyio

NewSession = Callable[..., ContextSession]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_markdown_escapes_raw_html_and_highlights_code() -> None:
    out = render_markdown(
        "<script>alert(1)</script> [x](javascript:alert(1))\n\n```python\ndef f(): pass\n```"
    )
    assert "<script>" not in out
    assert "&lt;script&gt;" in out
    assert 'href="javascript' not in out
    assert '<code class="language-python"><span style=' in out


def test_very_long_code_is_shown_plain_and_whole() -> None:
    from cm_notebook.widgets.markdown import MAX_HIGHLIGHTED_CHARS

    line = "x = a < b  # compare\n"
    long_code = line * (MAX_HIGHLIGHTED_CHARS // len(line) + 1)
    out = render_markdown(f"```python\n{long_code}```")
    assert "<span style=" not in out  # not coloured
    assert out.count("x = a &lt; b  # compare") == long_code.count("\n")  # every line
    short = render_markdown(f"```python\n{line * 3}```")
    assert "<span style=" in short


def test_remote_images_are_links_and_inline_ones_are_shown() -> None:
    # An image URL a model wrote would be fetched wherever the notebook is opened,
    # carrying whatever the model put in it: a link instead, opened only on purpose.
    out = render_markdown(
        "![the <chart>](https://example.invalid/c.png?d=secret) "
        "![dot](data:image/png;base64,iVBORw0KGgo=)"
    )
    assert '<a href="https://example.invalid/c.png?d=secret"' in out
    assert "[image: the &lt;chart&gt;]" in out
    assert out.count("<img") == 1
    assert '<img src="data:image/png;base64,iVBORw0KGgo=" alt="dot"' in out


def test_markdown_tables_scroll_on_their_own() -> None:
    # Inline (no stylesheet of ours in a compare view's column or a saved notebook): a
    # wide table scrolls rather than widen its column, its cells unbroken; a column's
    # alignment is kept.
    out = render_markdown("| a | b |\n|:-|--:|\n| 1 | 2 |\n")
    assert (
        '<table style="border-collapse:collapse;display:block;max-width:100%;overflow-x:auto">'
        in out
    )
    assert '<th style="text-align:left;overflow-wrap:normal">a</th>' in out
    assert '<td style="text-align:right;overflow-wrap:normal">2</td>' in out


@pytest.mark.parametrize(
    "text",
    [
        ">" * 60 + " the deep line <b>\n\nthe line after",
        "\n".join("  " * i + f"- item {i}" for i in range(30)) + "\n\nthe line after",
    ],
    ids=["quotes", "lists"],
)
def test_markdown_nested_too_deeply_is_shown_whole_as_text(text: str) -> None:
    # markdown-it stops at its nesting limit and drops the rest: shown as text instead.
    out = render_markdown(text)
    assert "the line after" in out
    assert "the deep line &lt;b&gt;" in out or "item 29" in out
    assert "<b>" not in out
    assert "shown as text" in out
    # Deep but within the limit (25 quotes: the probe's case) is formatted as usual.
    formatted = render_markdown(">" * 25 + " deep\n\nafter")
    assert formatted.count("<blockquote>") == 25
    assert "deep" in formatted
    assert "after" in formatted


async def test_throttle_coalesces_and_always_flushes_the_last() -> None:
    flushed: list[int] = []
    state = {"value": 0}
    done = asyncio.Event()

    def flush() -> None:
        flushed.append(state["value"])
        if state["value"] == 50:
            done.set()

    throttle = Throttle(asyncio.get_running_loop(), 0.05, flush)
    for value in range(1, 51):
        state["value"] = value
        throttle.poke()
    await asyncio.wait_for(done.wait(), 10)
    # The first poke flushed at once; the other 49 became one flush, with the last value.
    assert flushed == [1, 50]


async def test_views_have_short_stable_reprs(new_session: NewSession) -> None:
    session = new_session(provider=ScriptedProvider(["a", "b"]))
    await session.send("hi")
    session.branch("other")
    await session.send("again")
    views = [
        ChatView(session),
        BranchTree(session),
        ToolApproval(session),
        StatusBar(session),
        CompareView(session, "main", "other"),
        SessionView(session),
    ]
    assert [repr(v) for v in views] == [
        "<cm_notebook ChatView>",
        "<cm_notebook BranchTree>",
        "<cm_notebook ToolApproval>",
        "<cm_notebook StatusBar>",
        "<cm_notebook CompareView of 2 branches>",
        "<cm_notebook SessionView>",
    ]
    for view in views:
        view.close()


async def test_compare_view_needs_two_known_branches(new_session: NewSession) -> None:
    session = new_session(provider=ScriptedProvider(["a"]))
    with pytest.raises(InvalidInputError, match="two or more branches"):
        CompareView(session)
    session.branch("b")
    with pytest.raises(InvalidInputError, match="no branch 'nope'"):
        CompareView(session, "main", "nope")


async def test_a_failed_reply_shows_the_error_and_what_to_do(new_session: NewSession) -> None:
    session = new_session(
        provider=ScriptedProvider().error("permanent", message="the model does not exist")
    )
    chat = ChatView(session)
    status = StatusBar(session)
    turn = session.send("hi")
    with pytest.raises(Exception, match="does not exist"):
        await turn
    row = await until(
        lambda: status.rows and status.rows[0]["state"] == "PermanentFailure" and status.rows[0]
    )
    assert "does not exist" in row["error"]
    assert "retry" in row["hint"]
    reply = await until(
        lambda: next(
            (m for m in [f.data for f in chat.transcript.frozen] if m["role"] == "assistant"), None
        )
    )
    assert reply["status"] == "error"
    assert "does not exist" in reply["error"]
    assert "Retry" in reply["hint"]
    assert chat.send_button.disabled is False  # the user can act: retry, edit or send


async def test_the_text_box_sends_without_trailing_blank_lines(new_session: NewSession) -> None:
    session = new_session(provider=ScriptedProvider().reply("Hello."))
    chat = ChatView(session)
    chat.input.value = "  indented\nhello two\n\n  "
    chat.send_button.click()
    message = await until(lambda: next(iter(session.history()), None))
    assert message.content == "  indented\nhello two"
    assert chat.input.value == ""


async def test_the_status_bar_counts_down_a_retry(new_session: NewSession) -> None:
    session = new_session(
        provider=ScriptedProvider().error("transient", retry_after=30).reply("late")
    )
    status = StatusBar(session)
    turn = session.send("hi")
    row = await until(
        lambda: status.rows and status.rows[0]["state"] == "TransientFailure" and status.rows[0]
    )
    # The front end counts down to this instant (epoch ms): 30 s from the failure, plus
    # the retry policy's upward jitter (up to 10 %).
    assert 20_000 < row["retry_at"] - time.time() * 1000 <= 34_000
    turn.cancel()
    await until(lambda: status.rows[0]["state"] == "Idle")
    assert "retry_at" not in status.rows[0]


async def test_clicks_from_other_threads_decide_a_call_once(new_session: NewSession) -> None:
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3 it is.")
    session = new_session(provider=fake, tools=[add])
    approvals = ToolApproval(session)
    turn = session.send("add")
    row = await until(lambda: approvals.rows.get(("call_1", "main")))
    clicks = [threading.Thread(target=row.approve_button.click) for _ in range(4)]
    clicks.append(threading.Thread(target=row.deny_button.click))
    for click in clicks:
        click.start()
    for click in clicks:
        click.join()
    message = await turn
    assert message.content == "3 it is."
    assert len(fake.requests) == 2  # one decision: the tool ran once and the turn ended
    await until(lambda: "done" in row.status.value or "denied" in row.status.value)
    assert row.approve_button.disabled
    assert row.deny_button.disabled


async def test_the_arguments_box_is_as_tall_as_its_json(new_session: NewSession) -> None:
    # Its rows, not a height in em (which cut the last line of 4), within bounds; its
    # width "auto" (stretched to the row less its margins), not "100%" plus margins.
    fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("3.")
    session = new_session(provider=fake, tools=[add])
    approvals = ToolApproval(session)
    turn = session.send("add")
    row = await until(lambda: approvals.rows.get(("call_1", "main")))
    assert row.arguments.value.count("\n") + 1 == row.arguments.rows == 4
    assert row.arguments.layout.height is None
    assert row.arguments.layout.width == "auto"
    row.approve_button.click()
    await turn
    low, high = ARGS_ROWS
    assert [_rows_for(text) for text in ("{}", "{\n}", "\n" * 40)] == [low, low, high]


async def test_clicks_on_every_choice_at_once_decide_once_and_always_allow_the_context(
    new_session: NewSession,
) -> None:
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3.")
    fake.tool_call("add", {"a": 2, "b": 2}).reply("4.")
    session = new_session(provider=fake, tools=[add])
    approvals = ToolApproval(session)
    turn = session.send("add")
    row = await until(lambda: approvals.rows.get(("call_1", "main")))
    buttons = [row.context_button, row.session_button, row.approve_button, row.deny_button]
    clicks = [threading.Thread(target=button.click) for button in buttons * 2]
    clicks[0].start()
    clicks[0].join()  # the context button first: the others find the row decided
    for click in clicks[1:]:
        click.start()
    for click in clicks[1:]:
        click.join()
    assert (await turn).content == "3."
    [record] = session.approval_log()
    assert (record.approved, record.remember) == (True, "context")
    assert session.allowed_tools() == {"session": [], "context": ["add"]}
    assert (await session.send("again")).content == "4."  # not asked
    await until(lambda: approvals.history.records[-1].by == "allow-list")
    assert "Decision history (2)" in approvals.history.get_title(0)
    assert "always, context" in approvals.history.body.value
    assert all(button.disabled for button in buttons)


async def test_a_name_with_control_characters_logged_before_shows_them_escaped(
    new_session: NewSession,
) -> None:
    # ``by=`` refuses control characters now; a log written before may hold them.
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3.")
    session = new_session(provider=fake, tools=[add])
    turn = session.send("add")
    await until(lambda: session.pending_tool_calls)
    session.approve("call_1", by="ada")
    await turn
    assert session.signal_log_path is not None
    log = session.signal_log_path.parent.parent / "approvals" / "log.jsonl"
    log.write_text(log.read_text().replace('"ada"', '"\\u001b[31mada\\n"'))
    approvals = ToolApproval(session)
    assert approvals.history.records[0].by == "\x1b[31mada\n"
    shown = approvals.history.body.value
    assert "by <bdi>\\x1b[31mada\\n" in shown
    assert "\x1b" not in shown
    assert "\n" not in shown.split("by ", 1)[1].split("<", 1)[0]


async def test_the_snapshot_is_static_html_of_the_active_branch(new_session: NewSession) -> None:
    fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("**3** <b>x</b>")
    session = new_session(
        title="Snap <shot> \u202eevil",
        provider=fake,
        tools=[add],
        approval="auto",
        system="Be brief.\nUse tools.",
    )
    await session.send("add 1 and 2")
    html = snapshot_html(session)
    # The prompt's line breaks are kept (a prompt is often a list of rules).
    assert '<div style="white-space:pre-wrap">Be brief.\nUse tools.</div>' in html
    # Isolated, so a bidirectional override in the title cannot reverse the words after it.
    assert "<bdi>Snap &lt;shot&gt; \u202eevil</bdi>" in html
    assert "<bdi>Snap &lt;shot&gt; \u202eevil</bdi>" in session._repr_html_()
    assert "Be brief." in html
    assert "<strong>3</strong> &lt;b&gt;x&lt;/b&gt;" in html
    assert "add" in html
    assert "→ <bdi>3" in html


async def test_the_snapshot_of_a_long_branch_keeps_its_last_messages_and_says_so(
    new_session: NewSession, data_dir: Path
) -> None:
    session = new_session(provider=ScriptedProvider())
    for i in range(MESSAGES_SHOWN // 2 + 1):
        await session.send(f"question {i}")
    total = len(session.history())
    short = snapshot_html(session, last=4)
    assert f"the last 4 of {total} messages" in short
    assert f"{total - 4} earlier messages are not in this copy" in short
    # Said for the session's folder (not the default one), so it works pasted.
    assert f"`cm-notebook --data-dir {shlex.quote(str(data_dir))} export {session.id}`" in (
        html.unescape(short)
    )
    assert "<p>question 0</p>" not in short
    assert f"<p>question {MESSAGES_SHOWN // 2}</p>" in short
    whole = snapshot_html(session)
    assert f"{total} messages" in whole
    assert "<p>question 0</p>" in whole
    assert "earlier messages" not in whole
    # The copy shown under a session's views, saved with the notebook: what the live
    # view shows at first.
    saved = Snapshot(session)
    try:
        bundle = saved._bundle()
    finally:
        saved.close()
    assert f"the last {MESSAGES_SHOWN} of {total} messages" in bundle["text/html"]


async def test_the_branch_tree_nests_forks_under_their_branch(new_session: NewSession) -> None:
    session = new_session(provider=ScriptedProvider(["one", "two", "three"]))
    await session.send("first")
    first_reply = session.history()[-1].id
    session.branch("a", first_reply)
    await session.send("on a")
    session.branch("a-sub")
    session.branch("b", first_reply, switch=False)
    tree = BranchTree(session)
    nodes = [(n["name"], n["depth"], n["active"], n["length"]) for n in tree.nodes]
    assert nodes == [
        ("main", 0, False, 2),
        ("a", 1, False, 4),
        ("a-sub", 2, True, 4),
        ("b", 1, False, 2),
    ]
    tree.close()


async def test_the_compare_view_shows_the_tool_calls_a_branch_made(
    new_session: NewSession,
) -> None:
    # A reply that only asks for a tool has no text: its call is what it says.
    fake = ScriptedProvider().reply("Ready.").tool_call("add", {"a": 2, "b": 3}).reply("It is 5.")
    fake.reply("No tools today.")
    session = new_session(provider=fake, tools=[add], approval="auto")
    await session.send("hi")
    session.branch("plain")
    await session.send("2 + 3?", branch="main")
    await session.send("2 + 3?", branch="plain")
    view = CompareView(session, "main", "plain")
    try:
        shown = "<bdi>add</bdi>(<bdi>{&quot;a&quot;: 2, &quot;b&quot;: 3}</bdi>) &rarr; done"
        assert shown in view.value
    finally:
        view.close()


async def test_the_compare_view_shows_a_failed_arm_as_no_answer(new_session: NewSession) -> None:
    good = ScriptedProvider(["Paris is the capital."])
    broken = ScriptedProvider().error("permanent", after_chunks=2, text="Lyon is")
    session = new_session(provider=ScriptedProvider())
    await session.fan_out(
        "Capital of France?",
        [{"provider": good, "branch": "good"}, {"provider": broken, "branch": "bad"}],
    )
    view = CompareView(session, "good", "bad")
    try:
        good_column, bad_column = view.value.split('class="cm-compare-column"')[1:3]
        assert "no answer: the reply failed" in bad_column
        assert "line-through" not in view.value  # no diff against a partial text
        assert "tokens" not in bad_column.split("per turn")[0]  # an attempt's cost is no answer's
        assert "Paris is the capital." in good_column
        bars = [type(cell).__name__ for cell in view.ratings.children]
        assert bars == ["RatingBar", "Box"]  # nothing to rate in the failed arm
    finally:
        view.close()


async def test_the_compare_view_keeps_its_rating_cells_when_drawn_again(
    new_session: NewSession,
) -> None:
    # A column with no answer: drawing the view again (a score, a reply elsewhere) must
    # not send new cells, or the front end draws every bar after it anew and a bar
    # with the keyboard focus loses it.
    session = new_session(provider=ScriptedProvider(["One.", "Two.", "Three."]))
    await session.send("hi")
    session.branch("empty", session.history()[0].id, switch=False)
    await session.send("again")
    view = CompareView(session, "empty", "main")
    try:
        space, bar = view.ratings.children
        assert isinstance(bar, RatingBar)
        assert not isinstance(space, RatingBar)
        sent: list[object] = []
        view.ratings.observe(sent.append, "children")
        view._render()
        assert sent == []
        # Answered now: the space gives way to a bar and is closed (no comm left open).
        await session.send("third", branch="empty")
        await until(lambda: all(isinstance(c, RatingBar) for c in view.ratings.children))
        assert space.comm is None
    finally:
        view.close()


async def test_the_compare_view_says_so_when_a_compared_branch_is_deleted(
    new_session: NewSession,
) -> None:
    session = new_session(provider=ScriptedProvider(["One.", "Two."]))
    await session.send("hi")
    session.branch("other", switch=False)
    view = CompareView(session, "main", "other")
    try:
        session.delete_branch("other")
        await until(lambda: "was deleted" in view.value)
        assert "compare needs two or more branches" in view.value
        assert view.ratings.children == ()
    finally:
        view.close()


async def test_a_branch_another_process_deleted_is_dropped_before_its_signal_comes(
    new_session: NewSession, data_dir: Path
) -> None:
    session = new_session(provider=ScriptedProvider(["One."]))
    await session.send("hi")
    session.branch("other", switch=False)
    session.branch("third", switch=False)
    view = CompareView(session, "main", "other", "third")
    try:

        def delete_elsewhere() -> None:  # another store: another process, for locks
            async def delete() -> None:
                async with FileStore(data_dir) as other:
                    await other.delete_branch(session.id, "third")

            asyncio.run(delete())

        worker = threading.Thread(target=delete_elsewhere)
        worker.start()
        worker.join()
        # A render before the deletion's signal reaches this session (nothing here
        # yields to the loop that delivers it): as after a turn that ends first.
        view._render()
        assert view.branch_names == ["main", "other"]
        assert "third" not in view.value
        assert "One." in view.value
    finally:
        view.close()


async def test_fork_buttons_choose_another_name_when_another_process_took_theirs(
    data_dir: Path, new_session: NewSession
) -> None:
    # Each button's first free name is created elsewhere just before its own creation
    # (a click in another kernel's view at the same moment): the next one is taken.
    inner = FileStore(data_dir)
    store = TakenMeanwhile(inner, data_dir, {"main-alt-1", "main-fork-1", "main-fork-3"})
    session = new_session(provider=ScriptedProvider(["one", "two"]), store=store)
    try:
        await session.send("first")
        old = session.history()[-1].id
        await session.regenerate()  # ``old``: an alternative no branch holds
        tree, chat = BranchTree(session), ChatView(session)
        try:
            chat._show_sibling(old)  # shown: given a branch of its own
            assert session.history("main-alt-2")[-1].id == old
            session.switch("main")
            tree._fork("main")  # the branch tree's fork button
            assert session.history("main-fork-2") == session.history("main")
            reply = session.history()[-1].id
            chat._fork(reply, "main")  # a message's fork button: the next free name
            assert session.history("main-fork-4")[-1].id == reply
        finally:
            tree.close()
            chat.close()
    finally:
        session.close()
        await inner.close()
    assert store.taken == ["main-alt-1", "main-fork-1", "main-fork-3"]


def test_the_rendered_messages_kept_are_bounded_by_size_not_only_by_count() -> None:
    from cm_notebook.widgets import markdown

    # Thirty replies of 1 MB rendered once each, then dropped: at most a few stay.
    kept = markdown._RENDERED
    for i in range(30):
        render_markdown(f"{i} " + "word " * 200_000)
    assert kept.size <= kept.budget
    assert len(kept) < 30
    # A text is still served from the cache while it fits.
    text = "*kept*"
    assert render_markdown(text) is render_markdown(text)


async def test_a_comparison_of_branches_that_share_no_message_says_so(
    new_session: NewSession,
) -> None:
    session = new_session(provider=ScriptedProvider(["a"]))
    session.branch("empty")  # forked before any message: it shares none with main
    session.switch("main")
    await session.send("hi")
    view = CompareView(session, "main", "empty")
    text = await until(lambda: "branches" in view.value and view.value)
    assert "2 branches share no messages; below, what each says." in text
    assert "the first 0" not in text


async def test_a_branch_of_an_earlier_alternative_reply_is_drawn_under_its_conversation(
    new_session: NewSession,
) -> None:
    # Picking the reply a regenerate replaced forks at a message only the new branch
    # holds: it continues main's conversation, so it is drawn under main, not beside it.
    session = new_session(provider=ScriptedProvider(["one", "two", "two again"]))
    await session.send("q1")
    await session.send("q2")
    replaced = session.history()[-1].id
    await session.regenerate()
    session.branch("main-alt-1", replaced)
    tree = BranchTree(session)
    try:
        nodes = [(n["name"], n["depth"], n["length"]) for n in tree.nodes]
        assert nodes == [("main", 0, 4), ("main-alt-1", 1, 4)]
    finally:
        tree.close()
