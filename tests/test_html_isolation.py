"""User and model text in the static HTML: isolated from the words around it, wrapped.

A right-to-left branch name set inline in "branch … · 6 messages" pulls the words next to
it into its run; a bidirectional override (U+202E) in a tool call's arguments reverses
the status written after them. Each such piece is in ``<bdi>``, and JSON shows its
overrides as ``\\u202e``. One long word (a URL) must not widen a whole output either.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

pytest.importorskip("anywidget")

from cm_notebook import ContextSession, tool
from cm_notebook.model import Message, ToolCall, ToolCallStatus
from cm_notebook.render import message_html
from cm_notebook.stability import stability
from cm_notebook.testing import ScriptedProvider
from cm_notebook.widgets import ToolApproval
from cm_notebook.widgets._messages import message_dict, transcript_html
from cm_notebook.widgets.compare import comparison_html
from cm_notebook.widgets.snapshot import snapshot_html
from cm_notebook.widgets.sweep_grid import grid_html

pytestmark = pytest.mark.anyio

NewSession = Callable[..., ContextSession]

SHALOM = "\u05e9\u05dc\u05d5\u05dd"  # a Hebrew word: a right-to-left name
OVERRIDE = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: reverses what follows it on its line


@tool
def delete_file(path: str) -> str:
    """Delete a file."""
    return f"{OVERRIDE}gone"


def _no_raw_override_outside_bdi(page: str) -> None:
    # Every override left in the page is inside a <bdi> (where it stops at the end).
    outside = re.sub(r"<bdi>.*?</bdi>", "", page, flags=re.S)
    assert OVERRIDE not in outside


def test_an_override_in_a_tool_calls_arguments_leaves_the_status_after_it_alone() -> None:
    call = ToolCall(
        id="c1",
        name="delete_file",
        arguments={"path": f"{OVERRIDE}boring.txt"},
        status=ToolCallStatus.DENIED,
    )
    message = Message(role="assistant", content="Let me check.", tool_calls=[call])
    card = message_html(message)
    # The arguments shown with the override as an escape, isolated, the status after.
    assert (
        "<bdi>delete_file</bdi>(<bdi>{&quot;path&quot;: &quot;\\u202eboring.txt&quot;}</bdi>)"
        " &rarr; denied" in card
    )
    assert OVERRIDE not in card
    # The live transcript's data too: the arguments' own block shows the escape, so
    # the override cannot reverse the path it is in.
    assert message_dict(message)["calls"][0]["args"] == ('{\n  "path": "\\u202eboring.txt"\n}')
    copy = transcript_html("t", "main", None, [message_dict(message)])
    assert "\\u202eboring.txt" in copy
    assert OVERRIDE not in copy
    shown = r"<bdi>delete_file</bdi>\(<bdi>\{[^<]*\\u202eboring\.txt[^<]*\}</bdi>\) \[denied\]"
    assert re.search(shown, copy)


async def test_a_decided_calls_reason_and_result_are_isolated_wherever_shown(
    new_session: NewSession,
) -> None:
    from cm_notebook.magics._reply import tool_rounds_html

    fake = ScriptedProvider(strict=True)
    fake.tool_call("delete_file", {"path": f"{OVERRIDE}a.txt"}).tool_call(
        "delete_file", {"path": "b.txt"}
    )
    fake.reply("Done.")
    session = new_session(provider=fake, tools=[delete_file])
    turn = session.send("delete them")
    [first] = await session.wait_for_approval()
    session.deny(first.id, reason=f"{OVERRIDE}not that one")
    [second] = await session.wait_for_approval()
    session.approve(second.id)
    final = await turn
    lines = tool_rounds_html(session, final)
    assert "(<bdi>{&quot;path&quot;: &quot;\\u202ea.txt&quot;}</bdi>) [denied]" in lines
    assert f"[denied] (<bdi>{OVERRIDE}not that one</bdi>)" in lines
    assert f"[done] → <bdi>{OVERRIDE}gone</bdi>" in lines
    _no_raw_override_outside_bdi(lines)
    history = ToolApproval(session).history.body.value
    assert f"reason: <bdi>{OVERRIDE}not that one</bdi>" in history
    assert "on <bdi>main</bdi>" in history
    _no_raw_override_outside_bdi(history)


def test_a_right_to_left_branch_name_is_isolated_from_the_words_around_it(
    new_session: NewSession,
) -> None:
    session = new_session(provider=ScriptedProvider(["Paris.", "Rome."]))
    session.send("Capital?").result(10)
    session.branch(SHALOM, session.history()[0].id)
    session.send("Capital of Italy?").result(10)
    name = f"<bdi>{SHALOM}</bdi>"
    # The header and the list of branches, in the session's HTML and the snapshot.
    page = session._repr_html_()
    assert f"branch {name} · 3 messages" in page
    assert f"<bdi>main</bdi>, <b>{name}</b> (active)" in page
    assert f"branch {name} · 3 messages" in snapshot_html(session)
    # The comparisons: the cards, the per-turn diff, the compare view's columns.
    assert f"<b>{name}</b> " in session.compare("main", SHALOM)._repr_html_()
    turns = session.compare_turns(SHALOM, "main")._repr_html_()
    assert f"<b>{name}</b> against <b><bdi>main</bdi></b>" in turns
    columns = [
        {"branch": b, "system": None, "messages": session.history(b), "state": "Idle"}
        for b in ("main", SHALOM)
    ]
    assert f'<div style="font-weight:600">{name}</div>' in comparison_html(columns)
    # Who gave each of a group of answers (branches, or message ids), listed.
    answers = [session.history("main")[-1], session.history(SHALOM)[-1]]
    grouped = stability(answers)._repr_html_()
    assert all(f"<bdi>{answer.id}</bdi>" in grouped for answer in answers)


_WRAPS = re.compile(r'^<div [^>]*style="[^"]*overflow-wrap:anywhere')


def test_one_long_word_wraps_instead_of_widening_the_output(new_session: NewSession) -> None:
    word = "https://example.com/" + "a" * 400
    session = new_session(provider=ScriptedProvider([f"See {word}"] * 3))
    session.send(f"q {word}").result(10)
    sweep = session.sweep([f"Q {word}"], [{"label": "v"}], repeat=2, name="w", progress=False)
    sweep.run(30)
    pages = {
        "message": session.history()[-1]._repr_html_(),
        "session": session._repr_html_(),
        "snapshot": snapshot_html(session),
        "grid": grid_html(sweep),
        "stability": stability([session.history()[-1], "Paris."])._repr_html_(),
        "sweep stability": sweep.stability()._repr_html_(),
    }
    for what, page in pages.items():
        assert _WRAPS.match(page), (what, page[:200])
