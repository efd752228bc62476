"""Approving, denying, editing arguments, switching branches, comparing and the saved
snapshot, in a real kernel driven as a browser drives it, with no further cell run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("anywidget")

from widget_frontend import FrontEnd, front_end

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("widgets-actions")) as running:
        running.run(
            """
            from cm_notebook import ContextSession, tool
            from cm_notebook.testing import ScriptedProvider
            from cm_notebook.widgets import BranchTree, ChatView, ToolApproval

            ran = []

            @tool
            def add(a: int, b: int) -> int:
                '''Add two integers.'''
                ran.append((a, b))
                return a + b
            """
        )
        yield running


def _child(fe: FrontEnd, comm_id: str, *path: int) -> str:
    # Follow a container's children (as "IPY_MODEL_<id>" references) down ``path``.
    for index in path:
        comm_id = fe.models[comm_id]["children"][index].removeprefix("IPY_MODEL_")
    return comm_id


def _row(fe: FrontEnd, approvals: str) -> dict[str, str]:
    # The first call row of a ToolApproval (header, the part that watches the
    # connection, rows..., decision history): its arguments editor, buttons and status.
    fe.wait_for(lambda: len(fe.models[approvals].get("children", [])) > 3, what="a call row")
    row = _child(fe, approvals, 2)
    return {
        "title": _child(fe, row, 0),
        "arguments": _child(fe, row, 1),
        "check": _child(fe, row, 2),
        "approve": _child(fe, row, 3, 0),
        "session": _child(fe, row, 3, 1),
        "context": _child(fe, row, 3, 2),
        "reason": _child(fe, row, 4, 0),
        "deny": _child(fe, row, 4, 1),
        "status": _child(fe, row, 5),
    }


def _history(fe: FrontEnd, approvals: str) -> str:
    # The decision history's text (the last child of a ToolApproval: an accordion).
    history = _child(fe, approvals, -1)
    return str(_value(fe, _child(fe, history, 0)))


def _value(fe: FrontEnd, comm_id: str) -> Any:
    return fe.models[comm_id].get("value")


def _start(fe: FrontEnd, name: str, script: str) -> tuple[str, str]:
    out = fe.run(
        f"""
        fake_{name} = ScriptedProvider(strict=True){script}
        {name} = ContextSession.create("{name}", provider=fake_{name}, tools=[add])
        approvals_{name} = ToolApproval({name})
        chat_{name} = ChatView({name})
        turn_{name} = {name}.send("please add")
        print(approvals_{name}.model_id, chat_{name}.transcript.model_id)
        """
    )
    approvals, transcript = out.split()
    return approvals, transcript


def _final_html(fe: FrontEnd, transcript: str) -> str:
    def done() -> str | None:
        messages = fe.messages(transcript)
        last = messages[-1] if messages else None
        if last and last["role"] == "assistant" and last["status"] == "complete" and last["html"]:
            return str(last["html"])
        return None

    return str(fe.wait_for(done, what="the final answer"))


def test_approve_click_resumes_the_turn_and_a_second_click_is_harmless(fe: FrontEnd) -> None:
    approvals, transcript = _start(
        fe, "s1", '.tool_call("add", {"a": 2, "b": 3}).reply("The sum is 5.")'
    )
    row = _row(fe, approvals)
    assert '"a": 2' in _value(fe, row["arguments"])
    assert "add" in _value(fe, row["title"])
    fe.click(row["approve"])
    fe.click(row["approve"])  # a double click
    assert _final_html(fe, transcript) == "<p>The sum is 5.</p>\n"
    fe.wait_for(lambda: "done" in _value(fe, row["status"]), what="the row says done")
    assert "5" in _value(fe, row["status"])
    assert fe.models[row["approve"]]["disabled"] is True
    assert fe.models[row["deny"]]["disabled"] is True
    tool_result = next(m for m in fe.messages(transcript) if m["role"] == "tool")
    assert tool_result["html"] == "<p>5</p>\n"
    assert fe.run("print(ran, turn_s1.done(), s1.state.value)").strip() == "[(2, 3)] True Idle"


def test_deny_with_a_reason_tells_the_model(fe: FrontEnd) -> None:
    approvals, transcript = _start(
        fe, "s2", '.tool_call("add", {"a": 1, "b": 1}).reply("Understood, no tools.")'
    )
    row = _row(fe, approvals)
    fe.edit(row["reason"], value="not on a Sunday")
    fe.click(row["deny"])
    assert _final_html(fe, transcript) == "<p>Understood, no tools.</p>\n"
    fe.wait_for(lambda: "not on a Sunday" in _value(fe, row["status"]))
    told = fe.run("print(fake_s2.requests[-1].messages[-1].content)")
    assert "not on a Sunday" in told
    assert fe.run("print(len(ran))").strip() == "1"  # only the first test's call ran


def test_edited_arguments_are_validated_then_run(fe: FrontEnd) -> None:
    approvals, transcript = _start(fe, "s3", '.tool_call("add", {"a": 2, "b": 2}).reply("Done.")')
    row = _row(fe, approvals)
    fe.edit(row["arguments"], value='{"a": 2, "b": "many"}')
    fe.wait_for(lambda: "invalid" in _value(fe, row["check"]), what="the schema error")
    fe.wait_for(lambda: fe.models[row["approve"]]["disabled"] is True)
    fe.edit(row["arguments"], value='{"a": 2, "b": ')
    fe.wait_for(
        lambda: "invalid" in _value(fe, row["check"]) and "JSON" in _value(fe, row["check"])
    )
    fe.edit(row["arguments"], value='{"a": 40, "b": 2}')
    fe.wait_for(lambda: "valid" in _value(fe, row["check"]) and "✓" in _value(fe, row["check"]))
    fe.wait_for(lambda: fe.models[row["approve"]]["disabled"] is False)
    fe.click(row["approve"])
    assert _final_html(fe, transcript) == "<p>Done.</p>\n"
    fe.wait_for(lambda: "42" in _value(fe, row["status"]), what="the edited call's result")
    assert fe.run("print(ran[-1])").strip() == "(40, 2)"


def test_always_allow_by_click_and_the_decision_history(fe: FrontEnd) -> None:
    approvals, transcript = _start(
        fe,
        "s6",
        '.tool_call("add", {"a": 1, "b": 1}).reply("Two.")'
        '.tool_call("add", {"a": 2, "b": 2}).reply("Four.")',
    )
    row = _row(fe, approvals)
    # A double click across two buttons decides once.
    fe.click(row["session"])
    fe.click(row["approve"])
    assert _final_html(fe, transcript) == "<p>Two.</p>\n"
    fe.wait_for(lambda: "done" in _value(fe, row["status"]), what="the row says done")
    # The next call of the tool runs without asking; the history shows both decisions.
    assert fe.run("print((await s6.send('again')).content)").strip() == "Four."
    fe.wait_for(lambda: "allow-list" in _history(fe, approvals), what="the rule's decision")
    text = _history(fe, approvals)
    assert text.count("approved") == 2
    assert "always, session" in text
    out = fe.run("print([r.by for r in s6.approval_log()], s6.allowed_tools())")
    assert out.strip() == "['user', 'allow-list'] {'session': ['add'], 'context': []}"


def test_a_decision_made_from_code_shows_in_the_history(fe: FrontEnd) -> None:
    approvals, _transcript = _start(fe, "s7", '.tool_call("add", {"a": 3, "b": 4}).reply("Seven.")')
    row = _row(fe, approvals)
    fe.run("s7.approve(arguments={'a': 30, 'b': 4}, tool_call_id=s7.pending_tool_calls[0].id)")
    fe.wait_for(lambda: "34" in _value(fe, row["status"]), what="the edited call's result")
    fe.wait_for(lambda: "→" in _history(fe, approvals), what="the edit in the history")
    text = _history(fe, approvals)
    assert "{&quot;a&quot;: 3, &quot;b&quot;: 4}" in text
    assert "{&quot;a&quot;: 30, &quot;b&quot;: 4}" in text
    assert fe.models[row["approve"]]["disabled"] is True


def test_rating_a_reply_in_the_chat_and_from_code(fe: FrontEnd) -> None:
    out = fe.run(
        """
        s8 = ContextSession.create("rated", provider=ScriptedProvider(["Paris."]))
        await s8.send("Capital of France?")
        chat8 = ChatView(s8)
        print(chat8.transcript.model_id, s8.history()[-1].id)
        """
    )
    transcript, reply = out.split()

    def rating() -> dict[str, Any]:
        answer = next(m for m in fe.messages(transcript) if m["id"] == reply)
        return dict(answer.get("rating") or {})

    fe.wait_for(lambda: rating() == {"thumbs": None, "score": None}, what="an unrated reply")
    fe.custom(transcript, {"event": "rate", "id": reply, "thumbs": "up"})
    fe.wait_for(lambda: rating().get("thumbs") == "up", what="the thumbs up shown")
    assert fe.run(f"print(s8.scores({reply!r}).thumbs)").strip() == "up"
    fe.custom(transcript, {"event": "rate", "id": reply, "score": 9})  # refused, told why
    fe.wait_for(lambda: "1-5" in fe.models[transcript]["notice"], what="the refusal")
    # A rating given from code shows in the view.
    fe.run(f"s8.rate({reply!r}, score=4)")
    fe.wait_for(lambda: rating() == {"thumbs": "up", "score": 4}, what="the score from code")


def test_the_retry_button_of_a_reply_that_failed_before_the_kernel_restarted(
    fe: FrontEnd,
) -> None:
    # After a restart the branch is Idle: ↻ regenerated the failed reply (a new sample,
    # temperature 0.8) where its hint promised a retry of the same request.
    out = fe.run(
        """
        failing = ScriptedProvider(strict=True).error("permanent", message="no key")
        s9 = ContextSession.create("restarted", provider=failing)
        try:
            await s9.send("Capital of France?", temperature=0.2)
        except Exception:
            pass
        s9.close()
        s9 = ContextSession.open(s9.id, provider=ScriptedProvider(["Paris."]))
        chat9 = ChatView(s9)
        print(chat9.transcript.model_id, s9.history()[-1].id)
        """
    )
    transcript, failed = out.split()
    fe.wait_for(
        lambda: any(m["id"] == failed for m in fe.messages(transcript)), what="the failed reply"
    )
    fe.custom(transcript, {"event": "regenerate", "id": failed})
    fe.wait_for(
        lambda: any("Paris." in m["html"] for m in fe.messages(transcript)),
        what="the retried reply",
    )
    asked = fe.run("print(s9.history()[-1].metadata.parameters)").strip()
    assert asked == "{'temperature': 0.2}"


def test_the_retry_button_of_a_reply_stopped_while_it_waited_to_try_again(
    fe: FrontEnd,
) -> None:
    # Stopped in its retry wait, the reply is "interrupted", but a try of it failed: ↻
    # asks it again as it was (retry), not a new sample at temperature 0.8.
    out = fe.run(
        """
        import asyncio
        model10 = ScriptedProvider().error("transient", after_chunks=1, text="Par", retry_after=60)
        model10.reply("Paris.")
        s10 = ContextSession.create("stopped in its wait", provider=model10)
        turn10 = s10.send("Capital of France?", temperature=0.2)
        while s10.state_of("main").value != "TransientFailure":
            await asyncio.sleep(0.01)
        turn10.cancel()
        await turn10
        chat10 = ChatView(s10)
        print(chat10.transcript.model_id, s10.history()[-1].id, s10.history()[-1].status.value)
        """
    )
    transcript, stopped, status = out.split()
    assert status == "interrupted"
    fe.wait_for(
        lambda: any(m["id"] == stopped for m in fe.messages(transcript)), what="the stopped reply"
    )
    fe.custom(transcript, {"event": "regenerate", "id": stopped})
    fe.wait_for(
        lambda: any("Paris." in m["html"] for m in fe.messages(transcript)),
        what="the retried reply",
    )
    asked = fe.run("print(s10.history()[-1].metadata.parameters)").strip()
    assert asked == "{'temperature': 0.2}"


def test_rating_buttons_under_a_comparison(fe: FrontEnd) -> None:
    out = fe.run(
        """
        s9 = ContextSession.create("cmp", provider=ScriptedProvider(["A.", "B."]))
        await s9.send("Letter?")
        s9.branch("other", s9.history()[0].id, switch=False)
        await s9.send("Letter?", branch="other")
        cv9 = s9.compare_view("main", "other")
        print(cv9.ratings.model_id, s9.history("other")[-1].id)
        """
    )
    ratings, other_answer = out.split()
    fe.wait_for(lambda: len(fe.models[ratings]["children"]) == 2, what="a bar per branch")
    bar = _child(fe, ratings, 1)
    down, three = _child(fe, bar, 1), _child(fe, bar, 4)
    fe.click(down)
    fe.click(three)
    fe.wait_for(lambda: fe.models[three]["button_style"] == "info", what="3 pressed")
    fe.wait_for(lambda: fe.models[down]["button_style"] == "danger", what="thumbs down pressed")
    score = fe.run(f"sc = s9.scores({other_answer!r}); print(sc.thumbs, sc.score)")
    assert score.strip() == "down 3"
    fe.run(f"s9.rate({other_answer!r}, thumbs='up')")
    fe.wait_for(lambda: fe.models[_child(fe, bar, 0)]["button_style"] == "success")
    assert fe.models[down]["button_style"] == ""


def test_switching_branch_by_click_and_a_live_comparison(fe: FrontEnd) -> None:
    out = fe.run(
        """
        s4 = ContextSession.create("branches", provider=ScriptedProvider(
            ["Paris.", "Lyon is second.", "Marseille, then Lyon."]))
        await s4.send("Largest French city?")
        await s4.send("And the second?")
        s4.branch("other", s4.history()[1].id, switch=False)
        tree = BranchTree(s4)
        chat4 = ChatView(s4)
        cv = s4.compare_view("main", "other")
        print(tree.model_id, chat4.transcript.model_id, cv.html.model_id)
        """
    )
    tree, transcript, compare = out.split()
    assert [n["name"] for n in fe.models[tree]["nodes"]] == ["main", "other"]
    assert fe.models[tree]["nodes"][1]["depth"] == 1
    fe.custom(tree, {"event": "switch", "branch": "other"})
    fe.wait_for(
        lambda: fe.models[transcript]["branch"] == "other" and len(fe.messages(transcript)) == 2,
        what="the chat showing the other branch",
    )
    fe.wait_for(lambda: [n["active"] for n in fe.models[tree]["nodes"]] == [False, True])
    assert "(no answer yet)" not in _value(fe, compare)
    # A reply on the other branch (sent from the chat's text box) reaches the comparison.
    chat_ids = fe.run("print(chat4.input.model_id, chat4.send_button.model_id)").split()
    fe.edit(chat_ids[0], value="Name two more.")
    fe.click(chat_ids[1])
    fe.wait_for(lambda: "Marseille" in _value(fe, compare), what="the new answer in the comparison")
    html = _value(fe, compare)
    assert "share the first 2 messages" in html
    assert "background:#d1fae5" in html  # words added relative to main's answer


def test_displaying_a_session_shows_the_views_and_a_snapshot_kept_current(
    fe: FrontEnd,
) -> None:
    start = fe.mark()
    fe.run(
        """
        s5 = ContextSession.create("shown", provider=ScriptedProvider(["Hello there."]))
        s5
        """
    )
    assert len(fe.displays) >= 1
    display_id, data = next(
        (key, value)
        for key, value in fe.displays.items()
        if value.get("text/plain") == "<cm_notebook conversation (HTML)>"
    )
    assert "shown" in data["text/html"]
    opened = [r for r in fe.comms[start:] if r.method == "open"]
    names = {fe.models[r.comm_id].get("_model_name") for r in opened}
    assert {"AnyModel", "VBoxModel", "ButtonModel"} <= names
    chat_ids = fe.run(
        """
        from cm_notebook.widgets import SessionView
        from ipywidgets import Widget
        view = next(w for w in list(Widget.widgets.values()) if isinstance(w, SessionView)
                    and w.session is s5)
        print(view.chat.input.model_id, view.chat.send_button.model_id)
        """
    ).split()
    fe.edit(chat_ids[0], value="Hi!")
    fe.click(chat_ids[1])
    fe.wait_for(
        lambda: "Hello there." in fe.displays[display_id]["text/html"],
        what="the snapshot updated after the turn",
    )


def test_approve_with_invalid_arguments_keeps_the_approve_buttons_disabled(fe: FrontEnd) -> None:
    # The edit and the click come at once (a click before the check has answered): the
    # refused approval gives the row back, but not its approve buttons while the
    # arguments stay invalid; Deny and the editor are usable.
    approvals, transcript = _start(fe, "s9", '.tool_call("add", {"a": 2, "b": 2}).reply("Ok.")')
    row = _row(fe, approvals)
    fe.edit(row["arguments"], value='{"a": 2, "b": ')
    fe.click(row["approve"])
    out = fe.run(
        """
        import asyncio
        await asyncio.sleep(0.5)  # the row's check and refused approval, on this loop
        r = approvals_s9.rows[next(iter(approvals_s9.rows))]
        print([b.disabled for b in r._approve_buttons], r.deny_button.disabled,
              r.arguments.disabled, r.reason.disabled, r.decided)
        """
    )
    assert out.strip() == "[True, True, True] False False False False"
    assert "JSON" in _value(fe, row["check"])
    fe.wait_for(lambda: fe.models[row["approve"]]["disabled"] is True)
    assert fe.models[row["deny"]]["disabled"] is False
    # Made valid again, the arguments can be approved.
    fe.edit(row["arguments"], value='{"a": 3, "b": 4}')
    fe.wait_for(lambda: fe.models[row["approve"]]["disabled"] is False)
    fe.click(row["approve"])
    assert _final_html(fe, transcript) == "<p>Ok.</p>\n"
    assert fe.run("print(ran[-1])").strip() == "(3, 4)"


def test_a_long_branch_shows_its_last_messages_and_earlier_ones_on_request(fe: FrontEnd) -> None:
    out = fe.run(
        """
        from cm_notebook.widgets.chat import MESSAGES_SHOWN
        s9 = ContextSession.create("long", provider=ScriptedProvider())
        for i in range(MESSAGES_SHOWN // 2 + 5):
            await s9.send(f"question {i}")
        chat9 = ChatView(s9)
        print(chat9.transcript.model_id, len(s9.history()), MESSAGES_SHOWN)
        """
    )
    transcript, total, shown = out.split()
    hidden = int(total) - int(shown)
    fe.wait_for(lambda: fe.models[transcript].get("earlier") == hidden, what="the count")
    fe.wait_for(lambda: len(fe.messages(transcript)) == int(shown), what="the last messages")
    texts = [m["text"] for m in fe.messages(transcript) if m["role"] == "user"]
    assert texts[-1] == f"question {int(total) // 2 - 1}"
    assert texts[0] == f"question {hidden // 2}"
    # A click left over from another branch shows nothing more.
    fe.custom(transcript, {"event": "earlier", "branch": "elsewhere"})
    fe.custom(transcript, {"event": "earlier", "branch": "main"})
    fe.wait_for(lambda: fe.models[transcript].get("earlier") == 0, what="none hidden")
    fe.wait_for(lambda: len(fe.messages(transcript)) == int(total), what="every message")
    assert fe.messages(transcript)[0]["text"] == "question 0"
    # A new turn keeps them shown; switching branch shows the last ones again.
    fe.run("await s9.send('one more')")
    fe.wait_for(lambda: len(fe.messages(transcript)) == int(total) + 2, what="the new turn")
    fe.run("s9.branch('other')")
    fe.wait_for(lambda: fe.models[transcript].get("branch") == "other", what="the branch")
    fe.wait_for(lambda: fe.models[transcript].get("earlier") == hidden + 2, what="hidden again")
