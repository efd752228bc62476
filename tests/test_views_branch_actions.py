"""Views acting on the right branch, in a real kernel driven as a browser drives it.

A click can be queued behind a cell that moves the view to another branch (DESIGN fact
1); ↻, Send, Stop, edit and fork must still act on the branch the person clicked on,
and what they create keeps that branch's settings. Also: a ``%%cm`` cell's approval
panel shows only its own turn's calls, and a sweep's grid keeps to its throttle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("anywidget")

from widget_frontend import FrontEnd, front_end

pytestmark = pytest.mark.slow


# Waits for the turn running on a branch, if it is still running: a turn that already
# ended (the scripted model answers at once) is not there to wait for.
_AWAIT_TURN = "_running = {session}.turn({branch})\nif _running is not None:\n    await _running"


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("views-branch-actions")) as running:
        running.run(
            """
            %load_ext cm_notebook
            import asyncio, time
            from cm_notebook import ContextSession, tool
            from cm_notebook.testing import ScriptedProvider
            from cm_notebook.widgets import BranchTree, ChatView
            """
        )
        yield running


def _transcript(fe: FrontEnd) -> str:
    chat = fe.with_class("cm-chat")[-1]
    return str(chat["children"][0]).removeprefix("IPY_MODEL_")


def _printed(fe: FrontEnd, expression: str) -> str:
    return fe.run(f"print({expression})").strip()


def _two_branches(fe: FrontEnd, name: str) -> None:
    # ``main`` and ``b`` each with a question and a reply; a view following ``main``.
    fe.run(
        f"""
        {name} = ContextSession.create("{name}", provider=ScriptedProvider())
        await {name}.send("question on main")
        {name}.branch("b", {name}.history()[0].id)
        await {name}.send("question on b")
        {name}.switch("main")
        view_{name} = ChatView({name})
        view_{name}
        """
    )


def _behind_a_cell_that_switches(fe: FrontEnd, name: str, action: object) -> None:
    # ``action()`` (a click) is sent while a cell that switches to ``b`` runs: the
    # kernel handles it only after the cell has moved the view to ``b``.
    msg_id = fe.client.execute(f"{name}.switch('b'); time.sleep(1)")
    time.sleep(0.2)
    action()  # type: ignore[operator]
    fe.reply(msg_id)
    fe.run("await asyncio.sleep(1)")


def test_regenerate_acts_on_the_reply_clicked_not_on_the_branch_shown_later(
    fe: FrontEnd,
) -> None:
    _two_branches(fe, "r1")
    transcript = _transcript(fe)
    main_reply = _printed(fe, 'r1.history("main")[-1].id')
    b_reply = _printed(fe, 'r1.history("b")[-1].id')
    replies = f'len([m for m in r1.siblings("{main_reply}") if m.role == "assistant"])'
    _behind_a_cell_that_switches(
        fe,
        "r1",
        lambda: fe.custom(transcript, {"event": "regenerate", "id": main_reply, "branch": "main"}),
    )
    assert _printed(fe, 'r1.history("b")[-1].id') == b_reply  # b untouched
    assert _printed(fe, 'r1.history("main")[-1].id') != main_reply  # main regenerated
    assert _printed(fe, replies) == "2"
    # The old reply is no longer the last one of any branch: refused, with a reason.
    fe.custom(transcript, {"event": "regenerate", "id": main_reply})
    notice = fe.wait_for(lambda: fe.models[transcript].get("notice"), what="a notice")
    assert "no longer the last one" in notice
    assert _printed(fe, replies) == "2"


def test_send_and_stop_act_on_the_branch_shown_when_clicked(fe: FrontEnd) -> None:
    _two_branches(fe, "r2")
    transcript = _transcript(fe)
    chat = fe.with_class("cm-chat")[-1]
    controls = str(chat["children"][1]).removeprefix("IPY_MODEL_")
    text_box = str(fe.models[controls]["children"][0]).removeprefix("IPY_MODEL_")
    buttons = str(fe.models[controls]["children"][1]).removeprefix("IPY_MODEL_")
    send = str(fe.models[buttons]["children"][0]).removeprefix("IPY_MODEL_")
    # What the view's front end says when it renders (transcript.js).
    fe.custom(transcript, {"event": "showing", "branch": "main"})
    fe.edit(text_box, value="typed while main was shown")
    _behind_a_cell_that_switches(fe, "r2", lambda: fe.click(send))
    assert _printed(fe, 'r2.history("main")[-2].content') == "typed while main was shown"
    assert _printed(fe, 'r2.history("b")[-1].role') == "assistant"
    assert _printed(fe, 'len(r2.history("b"))') == "3"  # nothing sent on b


def test_an_edit_in_a_pinned_view_keeps_its_branch_settings_and_the_view_follows(
    fe: FrontEnd,
) -> None:
    fe.run(
        """
        fake3 = ScriptedProvider()
        r3 = ContextSession.create("r3", provider=fake3)
        await r3.fan_out("Why is the sky blue?", [
            {"system": "Be terse.", "branch": "terse"},
            {"system": "Answer like a pirate.", "branch": "pirate", "temperature": 0.5},
        ])
        r3.switch("main")
        view_r3 = ChatView(r3, branch="pirate")
        view_r3
        """
    )
    transcript = _transcript(fe)
    user = _printed(fe, 'r3.history("pirate")[0].id')
    fe.custom(transcript, {"event": "edit", "id": user, "text": "Why is the sea blue?"})
    fe.wait_for(lambda: fe.models[transcript]["branch"] == "pirate-edit-1", what="view follows")
    fe.run(_AWAIT_TURN.format(session="r3", branch="'pirate-edit-1'"))
    assert _printed(fe, "r3.system_prompt_of('pirate-edit-1')") == "Answer like a pirate."
    assert _printed(fe, "r3.branches['pirate-edit-1'].params") == "{'temperature': 0.5}"
    assert _printed(fe, "fake3.last_request.messages[0].content") == "Answer like a pirate."
    assert _printed(fe, "view_r3.branch") == "pirate-edit-1"


def test_a_double_click_edits_or_forks_once_and_an_edit_without_text_is_refused(
    fe: FrontEnd,
) -> None:
    fe.run(
        """
        fake5 = ScriptedProvider()
        r5 = ContextSession.create("r5", provider=fake5)
        await r5.send("Why is the sky blue?")
        view_r5 = ChatView(r5)
        view_r5
        """
    )
    transcript = _transcript(fe)
    user = _printed(fe, "r5.history()[0].id")
    reply = _printed(fe, "r5.history()[-1].id")
    fe.custom(transcript, {"event": "edit", "id": user, "text": None})
    fe.wait_for(lambda: "new text" in fe.models[transcript]["notice"], what="notice")
    for _click in range(2):
        fe.custom(transcript, {"event": "edit", "id": user, "text": "Why is the sea blue?"})
    fe.wait_for(lambda: fe.models[transcript]["branch"] == "main-edit-1", what="view follows")
    fe.run(_AWAIT_TURN.format(session="r5", branch="'main-edit-1'"))
    for _click in range(2):
        fe.custom(transcript, {"event": "fork", "id": reply, "branch": "main"})
    fe.wait_for(lambda: _printed(fe, "'main-fork-1' in r5.branches") == "True", what="fork")
    fe.run("import asyncio; await asyncio.sleep(0.3)")  # time for a second one to show
    assert _printed(fe, "sorted(r5.branches)") == "['main', 'main-edit-1', 'main-fork-1']"
    assert _printed(fe, "len(fake5.requests)") == "2"  # the send and one edit


def test_a_fork_from_the_chat_or_the_branch_tree_keeps_the_branch_settings(
    fe: FrontEnd,
) -> None:
    fe.run(
        """
        r4 = ContextSession.create("r4", provider=ScriptedProvider())
        r4.branch("pirate", system="Answer like a pirate.", top_p=0.5)
        await r4.send("Ahoy?")
        r4.switch("main")
        view_r4 = ChatView(r4, branch="pirate")
        tree_r4 = BranchTree(r4)
        print(tree_r4.model_id)
        """
    )
    transcript = str(fe.run("print(view_r4.transcript.model_id)")).strip()
    tree = _printed(fe, "tree_r4.model_id")
    reply = _printed(fe, 'r4.history("pirate")[-1].id')
    fe.custom(transcript, {"event": "fork", "id": reply, "branch": "pirate"})
    fe.wait_for(lambda: _printed(fe, "'pirate-fork-1' in r4.branches") == "True", what="fork")
    fe.custom(tree, {"event": "fork", "branch": "pirate"})
    fe.wait_for(lambda: _printed(fe, "'pirate-fork-2' in r4.branches") == "True", what="fork")
    for fork in ("pirate-fork-1", "pirate-fork-2"):
        assert _printed(fe, f"r4.system_prompt_of('{fork}')") == "Answer like a pirate."
        assert _printed(fe, f"r4.branches['{fork}'].params") == "{'top_p': 0.5}"
        assert _printed(fe, f"r4.branches['{fork}'].head") == reply


def test_each_cm_cell_offers_only_its_own_turns_tool_calls(fe: FrontEnd) -> None:
    fe.run(
        """
        ran = []
        @tool
        def add(a: int, b: int) -> int:
            '''Add.'''
            ran.append((a, b))
            return a + b
        script = ScriptedProvider()
        for i in range(3):
            script.tool_call("add", {"a": i, "b": 1}).reply(f"done {i}")
        r5 = ContextSession.create("r5", provider=script, tools=[add])
        %cm use r5
        """
    )
    for i in range(3):
        fe.run(f"%%cm\nplease add {i}\n")
        call_id = fe.run("calls = await r5.wait_for_approval(); print(calls[0].id)").strip()
        if i < 2:
            fe.run(f"r5.approve('{call_id}'); await _\nawait asyncio.sleep(0.3)")
    fe.run("await asyncio.sleep(0.5)")
    rows = [m for m in fe.models.values() if "cm-call-row" in m.get("_dom_classes", [])]
    titles = [
        str(fe.models[str(r["children"][0]).removeprefix("IPY_MODEL_")].get("value", ""))
        for r in rows
    ]
    assert sum(call_id in t for t in titles) == 1  # under the third cell only
    following = (
        "import gc\nfrom cm_notebook.widgets import ToolApproval\n"
        "print(sum(1 for o in gc.get_objects()"
        " if isinstance(o, ToolApproval) and not o._follower._closed))"
    )
    assert fe.run(following).strip() == "1"  # the earlier cells' panels stopped
    fe.run(f"r5.approve('{call_id}')\nawait asyncio.sleep(0.5)")
    assert fe.run(following).strip() == "0"


def test_a_sweep_grid_keeps_to_its_throttle_and_ends_with_every_cell(fe: FrontEnd) -> None:
    cells = 60
    fe.run(
        f"""
        r6 = ContextSession.create("r6", provider=ScriptedProvider())
        sweep6 = r6.sweep("Something about {{n}}. " + "padding " * 40, [{{"temperature": 0}}],
                          inputs=[{{"n": i}} for i in range({cells})], concurrency=4,
                          progress=False)
        grid6 = sweep6.view()
        grid6
        """
    )
    grid = _printed(fe, "grid6.model_id")
    mark = fe.mark()
    fe.run("await sweep6", timeout=300)
    fe.run("await asyncio.sleep(0.5)")
    updates = [
        c
        for c in fe.comms[mark:]
        if c.comm_id == grid and c.method == "update" and "cells" in c.content.get("state", {})
    ]
    dates = [c.date for c in updates]
    most, start = 0, 0
    for end, date in enumerate(dates):
        while (date - dates[start]).total_seconds() >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    assert most <= 5, f"{most} full-grid updates within one second"
    assert len(updates) < cells // 4, f"{len(updates)} full-grid updates for {cells} cells"
    final = fe.models[grid]["cells"]
    assert len(final) == cells
    assert all(c["status"] == "done" and c["text"] for c in final)


def test_a_double_click_on_send_sends_once_and_says_nothing_false(fe: FrontEnd) -> None:
    fe.run(
        """
        r7 = ContextSession.create("r7", provider=ScriptedProvider())
        view_r7 = ChatView(r7)
        view_r7
        """
    )
    transcript = _transcript(fe)
    text_box, send = fe.run("print(view_r7.input.model_id, view_r7.send_button.model_id)").split()
    fe.click(send)  # an empty box: said
    fe.wait_for(lambda: "Type a message first" in fe.models[transcript]["notice"], what="notice")
    fe.edit(text_box, value="only once")
    fe.click(send)
    fe.click(send)  # the second click of a double click finds the box emptied
    fe.run(_AWAIT_TURN.format(session="r7", branch="") + "\nawait asyncio.sleep(0.3)")
    assert _printed(fe, "[m.content for m in r7.history() if m.role == 'user']") == "['only once']"
    assert fe.models[transcript]["notice"] == ""


def test_a_double_click_on_fork_in_the_branch_tree_forks_once(fe: FrontEnd) -> None:
    fe.run(
        """
        r8 = ContextSession.create("r8", provider=ScriptedProvider())
        await r8.send("question")
        tree_r8 = BranchTree(r8)
        print(tree_r8.model_id)
        """
    )
    tree = _printed(fe, "tree_r8.model_id")
    for _click in range(2):
        fe.custom(tree, {"event": "fork", "branch": "main"})
    fe.wait_for(lambda: _printed(fe, "'main-fork-1' in r8.branches") == "True", what="fork")
    fe.run("await asyncio.sleep(0.3)")  # time for a second one to show
    assert _printed(fe, "sorted(r8.branches)") == "['main', 'main-fork-1']"


def test_a_pinned_view_whose_branch_is_deleted_says_so_without_a_traceback(
    fe: FrontEnd,
) -> None:
    fe.run(
        """
        r9 = ContextSession.create("r9", provider=ScriptedProvider())
        await r9.send("on main")
        r9.branch("other", switch=False)
        await r9.send("on other", branch="other")
        view_r9 = ChatView(r9, branch="other")
        view_r9
        """
    )
    transcript = _transcript(fe)
    send = _printed(fe, "view_r9.send_button.model_id")
    fe.wait_for(lambda: len(fe.messages(transcript)) == 4, what="the branch's messages")
    reply, output = fe.execute("r9.delete_branch('other')\nawait asyncio.sleep(0.5)")
    assert reply["status"] == "ok"
    assert "Traceback" not in output, output
    notice = fe.wait_for(lambda: fe.models[transcript]["notice"], what="a notice")
    assert "'other' was deleted" in notice
    assert "ChatView(session, branch=" in notice  # what to do
    assert fe.messages(transcript) == []
    assert fe.models[send]["disabled"] is True
    # Signals after the deletion (a score, a resync) say the same, still without one.
    reply, output = fe.execute(
        "r9.rate(r9.history('main')[-1].id, thumbs='up')\nawait asyncio.sleep(0.5)"
    )
    assert reply["status"] == "ok"
    assert "Traceback" not in output, output
    assert "'other' was deleted" in fe.models[transcript]["notice"]
    # The branch made again under its name is shown again.
    fe.run("r9.branch('other', switch=False)")
    fe.wait_for(lambda: fe.models[transcript]["notice"] == "", what="the notice gone")
    fe.wait_for(lambda: len(fe.messages(transcript)) == 2, what="the new branch's messages")
    assert fe.models[send]["disabled"] is False
    # A view of a branch that is not there is refused when made.
    reply, output = fe.execute("ChatView(r9, branch='ghost')")
    assert reply["status"] == "error"
    assert "BranchNotFoundError" in output
    assert "no branch 'ghost'" in output
