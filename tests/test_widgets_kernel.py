"""The views inside a real kernel, driven as a browser drives them (tests/widget_frontend.py).

Every interaction here happens with no further cell run: a cell starts the work and
ends, then only widget messages flow (DESIGN fact 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("anywidget")

from widget_frontend import CommRecord, FrontEnd, front_end

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("widgets-kernel")) as running:
        running.run(
            """
            import asyncio
            from cm_notebook import ContextSession, tool
            from cm_notebook.testing import ScriptedProvider
            from cm_notebook.widgets import ChatView
            """
        )
        yield running


def _ids(fe: FrontEnd, code: str) -> list[str]:
    return fe.run(code).split()


def _js_length(text: str) -> int:
    # JavaScript's ``string.length``: UTF-16 code units (an emoji counts two).
    return len(text.encode("utf-16-le")) // 2


def _live_text(fe: FrontEnd, comm_id: str, message_id: str) -> str:
    # What a browser's transcript holds: deltas applied where their offset matches.
    text = ""
    for msg in fe.customs.get(comm_id, []):
        if msg.get("id") != message_id:
            continue
        if msg["kind"] == "snapshot":
            text = msg["text"]
        elif msg["kind"] == "delta":
            assert msg["offset"] == _js_length(text), "a delta that does not continue the text"
            text += msg["text"]
    return text


def _screen(fe: FrontEnd, comm_id: str, since: int, live_id: str | None = None) -> tuple[str, int]:
    """The live text transcript.js shows after the comm messages from ``since`` on, in
    the order they came (the last one shown, if the reply is over), and how many times
    the page had to ask for the whole text.

    As the page does: a change of ``live`` to another message starts an empty text; a
    snapshot counts only for the message ``live`` names; a delta only where its offset
    is the length of the text held (in UTF-16 code units), else the page pulls.
    """
    text, pulls = "", 0
    for record in fe.comms[since:]:
        if record.comm_id != comm_id:
            continue
        if record.method == "update" and "live" in record.content.get("state", {}):
            new = (record.content["state"]["live"] or {}).get("id")
            if new != live_id:
                live_id = new
                text = "" if new else text  # over: the text it showed last is kept
        elif record.method == "custom":
            msg = record.content.get("content", {})
            if msg.get("kind") == "snapshot" and msg.get("id") == live_id:
                text = msg["text"]
            elif msg.get("kind") == "delta":
                if msg.get("id") == live_id and msg["offset"] == _js_length(text):
                    text += msg["text"]
                else:
                    pulls += 1
    return text, pulls


def _last_reply(fe: FrontEnd, comm_id: str) -> dict[str, Any] | None:
    replies = [m for m in fe.messages(comm_id) if m["role"] == "assistant"]
    return replies[-1] if replies else None


def _most_per_second(records: list[CommRecord]) -> int:
    # The most messages sent within any one second (kernel-side send times).
    dates = sorted(r.date for r in records)
    most, start = 0, 0
    for end, date in enumerate(dates):
        while (date - dates[start]).total_seconds() >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_a_reply_streams_live_and_within_the_message_budget(fe: FrontEnd) -> None:
    (transcript,) = _ids(
        fe,
        """
        words = "".join(f"word{i} " for i in range(300))
        fake = ScriptedProvider().reply(words, chunks="words", delay=0.01)
        s1 = ContextSession.create("live", provider=fake)
        v1 = ChatView(s1)
        print(v1.transcript.model_id)
        """,
    )
    start = fe.mark()
    fe.run("t1 = s1.send('go')")  # the cell ends at once; the reply streams afterwards
    reply = fe.wait_for(
        lambda: (r := _last_reply(fe, transcript)) and r["status"] == "complete" and r,
        what="the completed reply in the transcript's state",
    )
    expected = "".join(f"word{i} " for i in range(300))
    assert fe.models[transcript]["live"] == {}
    # The browser's live text, built from the deltas only, is the whole reply.
    assert _live_text(fe, transcript, reply["id"]) == expected
    records = fe.comms[start:]
    deltas = [i for i, r in enumerate(records) if r.comm_id == transcript and r.method == "custom"]
    # The finished reply arrives as its own model (a FrozenMessage opened once).
    final = next(
        i
        for i, r in enumerate(records)
        if r.method == "open" and r.content["state"].get("data", {}).get("id") == reply["id"]
    )
    # Live: several deltas reached the browser before the reply was final.
    assert len([i for i in deltas if i < final]) >= 3
    assert _most_per_second([r for r in records if r.comm_id == transcript]) <= 20


def test_a_long_reply_costs_o_of_its_length(fe: FrontEnd) -> None:
    (transcript,) = _ids(
        fe,
        """
        long_text = "".join(f"tok{i % 1000} " for i in range(20_000))
        # 20,000 tokens in deltas of about four (24 characters each), streamed over seconds.
        fake = ScriptedProvider().reply(long_text, chunks=24, delay=0.0002)
        s2 = ContextSession.create("long", provider=fake)
        v2 = ChatView(s2)
        print(v2.transcript.model_id)
        """,
    )
    size = len("".join(f"tok{i % 1000} " for i in range(20_000)))
    start = fe.mark()
    fe.run("t2 = s2.send('go')")
    fe.wait_for(
        lambda: (r := _last_reply(fe, transcript)) and r["status"] == "complete",
        timeout=180,
        what="the long reply",
    )
    records = fe.comms[start:]
    sent = sum(r.size for r in records)
    assert sent <= 3 * size, f"{sent} bytes of comm messages for a {size}-byte reply"
    assert _most_per_second([r for r in records if r.comm_id == transcript]) <= 20


def test_a_new_turn_does_not_resend_the_finished_messages(fe: FrontEnd) -> None:
    # s2 (the previous test) holds a 138 KB reply; a short turn after it costs little,
    # because finished messages are frozen in their own models.
    (transcript,) = _ids(fe, "print(v2.transcript.model_id)")
    before = len(fe.messages(transcript))
    start = fe.mark()
    fe.run("t2b = s2.send('and now briefly?')")  # the script is used up: the fake echoes
    fe.wait_for(
        lambda: (
            len(fe.messages(transcript)) == before + 2
            and fe.messages(transcript)[-1]["status"] == "complete"
        ),
        what="the short reply",
    )
    sent = sum(r.size for r in fe.comms[start:])
    assert sent < 20_000, f"{sent} bytes for a short turn after a long one"


def test_send_from_the_text_box_and_stop(fe: FrontEnd) -> None:
    transcript, text_box, send, stop = _ids(
        fe,
        """
        fake = ScriptedProvider().reply("Short answer.")
        fake.reply("".join(f"slow{i} " for i in range(400)), chunks="words", delay=0.05)
        s3 = ContextSession.create("buttons", provider=fake)
        v3 = ChatView(s3)
        print(v3.transcript.model_id, v3.input.model_id, v3.send_button.model_id,
              v3.stop_button.model_id)
        """,
    )
    fe.edit(text_box, value="first question")
    fe.click(send)
    fe.wait_for(
        lambda: (r := _last_reply(fe, transcript)) and r["status"] == "complete",
        what="the reply to the typed message",
    )
    assert next((m["role"], m["text"]) for m in fe.messages(transcript)) == (
        "user",
        "first question",
    )
    assert _last_reply(fe, transcript)["html"] == "<p>Short answer.</p>\n"
    assert fe.models[text_box]["value"] == ""  # cleared once sent

    fe.edit(text_box, value="now a long one")
    fe.click(send)
    fe.wait_for(lambda: not fe.models[stop].get("disabled", True), what="Stop enabled")
    fe.wait_for(lambda: fe.models[transcript]["live"], what="the reply streaming")
    live_id = fe.models[transcript]["live"]["id"]
    fe.wait_for(lambda: len(_live_text(fe, transcript, live_id)) > 0, what="some text")
    fe.click(stop)
    stopped = fe.wait_for(
        lambda: (
            (r := _last_reply(fe, transcript))
            and r["id"] == live_id
            and r["status"] == "interrupted"
            and r
        ),
        what="the reply stopped",
    )
    assert stopped["hint"]  # says what to do next
    assert len(stopped["html"]) > 0
    fe.wait_for(
        lambda: fe.models[send]["disabled"] is False and fe.models[stop]["disabled"] is True,
        what="Send enabled again, Stop disabled",
    )


def test_a_late_front_end_pulls_the_live_text(fe: FrontEnd) -> None:
    (transcript,) = _ids(
        fe,
        """
        fake = ScriptedProvider().reply(
            "".join(f"late{i} " for i in range(200)), chunks="words", delay=0.02
        )
        s4 = ContextSession.create("late", provider=fake)
        t4 = s4.send("go")
        await asyncio.sleep(0.5)
        v4 = ChatView(s4)  # attached while the reply streams
        print(v4.transcript.model_id)
        """,
    )
    live_id = fe.wait_for(lambda: fe.models[transcript].get("live", {}).get("id"))
    fe.custom(transcript, {"event": "pull"})  # what a view that renders now sends
    snapshot = fe.wait_for(
        lambda: next((m for m in fe.customs.get(transcript, []) if m["kind"] == "snapshot"), None),
        what="the snapshot",
    )
    assert snapshot["id"] == live_id
    assert snapshot["text"].startswith("late0 late1 ")
    reply = fe.wait_for(
        lambda: (r := _last_reply(fe, transcript)) and r["status"] == "complete" and r
    )
    assert _live_text(fe, transcript, reply["id"]) == "".join(f"late{i} " for i in range(200))


def test_regenerate_siblings_and_edit_from_the_transcript(fe: FrontEnd) -> None:
    (transcript,) = _ids(
        fe,
        """
        fake = ScriptedProvider(["first reply", "second reply", "edited reply"])
        s5 = ContextSession.create("alternatives", provider=fake)
        v5 = ChatView(s5)
        await s5.send("question")
        print(v5.transcript.model_id)
        """,
    )
    first = fe.wait_for(
        lambda: (r := _last_reply(fe, transcript)) and r["status"] == "complete" and r
    )
    fe.custom(transcript, {"event": "regenerate", "id": first["id"]})
    second = fe.wait_for(
        lambda: (r := _last_reply(fe, transcript)) and r["html"] == "<p>second reply</p>\n" and r
    )
    assert second["sibling"] == [2, 2]
    assert second["prev"] == first["id"]
    fe.custom(transcript, {"event": "sibling", "id": first["id"]})
    back = fe.wait_for(lambda: (r := _last_reply(fe, transcript)) and r["id"] == first["id"] and r)
    assert back["sibling"] == [1, 2]
    user = fe.messages(transcript)[0]
    fe.custom(transcript, {"event": "edit", "id": user["id"], "text": "better question"})
    fe.wait_for(lambda: (r := _last_reply(fe, transcript)) and r["html"] == "<p>edited reply</p>\n")
    messages = fe.messages(transcript)
    assert messages[0]["text"] == "better question"
    assert messages[0]["sibling"] == [2, 2]
    assert fe.models[transcript]["branch"] != "main"
    assert fe.run("print(s5.active_branch == v5.branch)").strip() == "True"


def test_a_view_switched_back_to_a_reply_streaming_shows_its_text_so_far(fe: FrontEnd) -> None:
    # The reply streams some text, then waits (a slow model): no delta comes to make the
    # page notice it lacks the text, so the snapshot sent on the switch back must count.
    (transcript,) = _ids(
        fe,
        """
        fake6 = ScriptedProvider(["Paris."]).hang(after_chunks=3, text="The partial answer")
        s6 = ContextSession.create("switch back", provider=fake6)
        await s6.send("Capital?")
        s6.branch("other", switch=False)
        v6 = ChatView(s6)
        t6 = s6.send("Tell me more")
        while t6.text != "The partial answer":
            await asyncio.sleep(0.02)
        print(v6.transcript.model_id)
        """,
    )
    fe.run("s6.switch('other')")
    fe.wait_for(lambda: fe.models[transcript]["live"] == {}, what="nothing streaming on other")
    # The model is slow: time passes on the other branch, longer than the view's gap
    # between two text updates, so the switch back sends the text at once.
    fe.run("await asyncio.sleep(0.5)")
    start = fe.mark()
    fe.run("s6.switch('main'); await asyncio.sleep(0.3)")
    fe.wait_for(lambda: fe.models[transcript]["live"], what="main's reply live again")
    assert _screen(fe, transcript, start) == ("The partial answer", 0)
    fe.run("t6.cancel(); await asyncio.sleep(0.1)")


def test_a_reply_with_emoji_streams_without_pulls(fe: FrontEnd) -> None:
    # Offsets are in the page's units (UTF-16): an emoji (two units) and a character
    # of the Basic Multilingual Plane (one) do not make each later delta look torn.
    reply = "🙂 café " + "".join(f"w{i} " for i in range(40)) + "👍🏽 done"
    (transcript,) = _ids(
        fe,
        f"""
        fake7 = ScriptedProvider().reply({reply!r}, chunks="words", delay=0.01)
        s7 = ContextSession.create("emoji", provider=fake7)
        v7 = ChatView(s7)
        print(v7.transcript.model_id)
        """,
    )
    start = fe.mark()
    fe.run("t7 = s7.send('go')")
    done = fe.wait_for(
        lambda: (r := _last_reply(fe, transcript)) and r["status"] == "complete" and r,
        what="the reply",
    )
    text, pulls = _screen(fe, transcript, start)
    assert pulls == 0
    assert text == reply
    assert _live_text(fe, transcript, done["id"]) == reply


def test_malformed_events_from_the_page_are_ignored(fe: FrontEnd) -> None:
    # An event that is not a string (a hostile or broken page) is dropped like other
    # malformed content: no exception (ipywidgets shows its traceback as an output of
    # the message) and nothing said in the view.
    (transcript,) = _ids(
        fe,
        """
        s8 = ContextSession.create("hostile", provider=ScriptedProvider())
        v8 = ChatView(s8)
        print(v8.transcript.model_id)
        """,
    )
    sent = [fe.custom(transcript, {"event": e, "id": "m1"}) for e in (["x"], {"a": 1}, None, 3)]
    # The shell channel handles comm messages and cells in order: they were handled.
    fe.run("await asyncio.sleep(0.1)")
    assert [fe.output(msg_id) for msg_id in sent] == ["", "", "", ""]
    assert fe.models[transcript]["notice"] == ""


def test_a_reply_waiting_to_retry_shows_no_text_of_the_failed_attempt(fe: FrontEnd) -> None:
    # The failed attempt's text is kept in the reply's failed_attempts, not as its text:
    # the page shows what the reply holds while the retry waits, which is nothing yet.
    (transcript,) = _ids(
        fe,
        """
        from cm_notebook.retry import RetryPolicy
        fake9 = ScriptedProvider().error("transient", after_chunks=2, text="Hello wor")
        fake9.reply("Hello world")
        s9 = ContextSession.create(
            "retry wait", provider=fake9, retry=RetryPolicy(initial_delay=3.0, jitter=0)
        )
        v9 = ChatView(s9)
        print(v9.transcript.model_id)
        """,
    )
    start = fe.mark()
    fe.run(
        """
        t9 = s9.send("go")
        while s9.state.value != "TransientFailure":
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # longer than the views take to send text
        """
    )
    assert fe.run("print(repr(t9.text), s9.state.value)").split() == ["''", "TransientFailure"]
    assert _screen(fe, transcript, start)[0] == ""
    reply = fe.wait_for(
        lambda: (r := _last_reply(fe, transcript)) and r["status"] == "complete" and r,
        what="the retried reply",
    )
    assert _live_text(fe, transcript, reply["id"]) == "Hello world"
