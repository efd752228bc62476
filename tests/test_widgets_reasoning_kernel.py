"""A thinking model's reasoning streams live into the chat view, in a real kernel.

Driven as a browser drives the view (tests/widget_frontend.py): a cell starts the
reply and ends, then only widget messages flow. The page's "Thinking…" section is
rebuilt here from the comm messages, as static/transcript.js builds it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("anywidget")

from widget_frontend import FrontEnd, front_end

pytestmark = pytest.mark.slow

THOUGHT = "".join(f"step{i} " for i in range(60))


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("widgets-reasoning")) as running:
        running.run(
            """
            from cm_notebook import ContextSession
            from cm_notebook.testing import ScriptedProvider
            from cm_notebook.widgets import ChatView
            """
        )
        yield running


def _js_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _thinking(fe: FrontEnd, comm_id: str, message_id: str, since: int = 0) -> str:
    """The reasoning the page's live "Thinking…" section holds for ``message_id``: a
    snapshot's ``reasoning`` replaces it, a ``reasoning`` message appends where its
    offset is the length held (anything else would make the page pull)."""
    thought = ""
    for record in fe.comms[since:]:
        if record.comm_id != comm_id or record.method != "custom":
            continue
        msg = record.content.get("content", {})
        if msg.get("id") != message_id:
            continue
        if msg.get("kind") == "snapshot":
            thought = msg.get("reasoning", "")
        elif msg.get("kind") == "reasoning":
            assert msg["offset"] == _js_length(thought), "a delta that does not continue"
            thought += msg["text"]
    return thought


def _live_id(fe: FrontEnd, comm_id: str) -> str | None:
    live: dict[str, Any] = fe.models.get(comm_id, {}).get("live") or {}
    return live.get("id")


def test_the_reasoning_streams_live_before_the_answer_and_ends_as_the_reply_block(
    fe: FrontEnd,
) -> None:
    (transcript,) = fe.run(
        f"""
        fake = ScriptedProvider().reply(
            "The answer is four.", reasoning={THOUGHT!r}, chunks="words", delay=0.01
        )
        s1 = ContextSession.create("thinks", provider=fake)
        v1 = ChatView(s1)
        print(v1.transcript.model_id)
        """
    ).split()
    start = fe.mark()
    fe.run("t1 = s1.send('2+2?')")  # the cell ends at once; the reply streams afterwards
    reply = fe.wait_for(
        lambda: next((m for m in fe.messages(transcript) if m["role"] == "assistant"), None),
        what="the finished reply",
    )
    records = [r for r in fe.comms[start:] if r.comm_id == transcript]
    # When the finished reply reached the page: the update that names its model.
    final = next(
        i
        for i, r in enumerate(records)
        if r.method == "update" and len(r.content.get("state", {}).get("frozen", [])) == 2
    )
    customs = [(i, r.content["content"]) for i, r in enumerate(records) if r.method == "custom"]
    thoughts = [i for i, c in customs if c["kind"] == "reasoning"]
    texts = [i for i, c in customs if c["kind"] == "delta"]
    # Live: the reasoning reached the page in several updates, all before the answer's
    # first word, and before the reply was finished.
    assert len(thoughts) >= 3
    assert texts
    assert max(thoughts) < min(texts) < final
    # Throttled as the text is (at most ten updates a second, kernel-side send times),
    # whatever the rate of the model's chunks; only the last may come sooner: what was
    # left is flushed at once when the reply completes.
    sent = sorted(records[i].date for i in thoughts)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sent)]
    assert all(gap >= 0.09 for gap in gaps[:-1]), gaps
    # The page's "Thinking…" section held the whole reasoning, from the deltas alone.
    assert _thinking(fe, transcript, reply["id"], start) == THOUGHT
    # Finished: the reply's own collapsed reasoning block, as a saved copy shows it.
    assert "Reasoning (60 words)" in reply["reasoning"]
    assert "<details open" not in reply["reasoning"]
    assert "step59" in reply["reasoning"]
    assert fe.run("print(s1.history()[-1].metadata.reasoning == " + repr(THOUGHT) + ")") == (
        "True\n"
    )


def test_a_model_still_thinking_shows_its_reasoning_and_a_late_view_pulls_it(
    fe: FrontEnd,
) -> None:
    # A model that reasons and then thinks on, silent, for as long as it likes: what it
    # reasoned so far is on the page, though no word of its answer has come.
    (transcript,) = fe.run(
        """
        s2 = ContextSession.create(
            "still thinking",
            provider=ScriptedProvider().hang(reasoning="Weighing every option slowly."),
        )
        v2 = ChatView(s2)
        print(v2.transcript.model_id)
        """
    ).split()
    fe.run("t2 = s2.send('Hard question?')")
    live_id = fe.wait_for(lambda: _live_id(fe, transcript), what="the live reply")
    fe.wait_for(
        lambda: _thinking(fe, transcript, live_id) == "Weighing every option slowly.",
        what="the reasoning on the page while the model still thinks",
    )
    assert fe.run("print(t2.done(), repr(t2.text), repr(t2.reasoning))") == (
        "False '' 'Weighing every option slowly.'\n"
    )
    # A view opened now (or a page that rendered late) gets it in its snapshot.
    (late,) = fe.run("v3 = ChatView(s2)\nprint(v3.transcript.model_id)").split()
    fe.wait_for(lambda: _live_id(fe, late) == live_id, what="the late view's live reply")
    fe.custom(late, {"event": "pull"})
    fe.wait_for(
        lambda: _thinking(fe, late, live_id) == "Weighing every option slowly.",
        what="the late view's snapshot with the reasoning",
    )
    # Stopped while thinking: the reply keeps its reasoning, shown as its block.
    fe.run("t2.cancel()")
    stopped = fe.wait_for(
        lambda: next(
            (m for m in fe.messages(transcript) if m["id"] == live_id and m.get("reasoning")),
            None,
        ),
        what="the stopped reply with its reasoning",
    )
    assert "Weighing every option slowly." in stopped["reasoning"]
    assert _live_id(fe, transcript) is None


def _live_text(fe: FrontEnd, comm_id: str, message_id: str, since: int = 0) -> str:
    """The answer's text the page's live reply holds, from snapshots and deltas."""
    text = ""
    for record in fe.comms[since:]:
        msg = record.content.get("content", {}) if record.method == "custom" else {}
        if record.comm_id != comm_id or msg.get("id") != message_id:
            continue
        if msg.get("kind") == "snapshot":
            text = msg.get("text", "")
        elif msg.get("kind") == "delta":
            assert msg["offset"] == _js_length(text), "a delta that does not continue"
            text += msg["text"]
    return text


def test_a_character_split_between_chunks_reaches_the_page_whole(fe: FrontEnd) -> None:
    # A provider passes on half of a surrogate pair when a JSON "\ud83d" escape is split
    # from its "\ude00" between chunks: one character a chunk splits every emoji. The
    # halves reach the page as the one character they make, in the reasoning and the
    # answer alike; before, each lone half failed the view's update and was lost.
    odd = "I think \ud83d\ude00 so"
    (transcript,) = fe.run(
        f"""
        split = ScriptedProvider().reply({odd!r}, reasoning={odd!r}, chunks=1, delay=0.06)
        s4 = ContextSession.create("split", provider=split)
        v4 = ChatView(s4)
        print(v4.transcript.model_id)
        """
    ).split()
    start = fe.mark()
    fe.run("t4 = s4.send('Smile?')")
    live_id = fe.wait_for(lambda: _live_id(fe, transcript), what="the live reply")
    fe.wait_for(
        lambda: next((m for m in fe.messages(transcript) if m["id"] == live_id), None),
        what="the finished reply",
    )
    assert _thinking(fe, transcript, live_id, start) == "I think 😀 so"
    assert _live_text(fe, transcript, live_id, start) == "I think 😀 so"
    (reply,) = [m for m in fe.messages(transcript) if m["id"] == live_id]
    assert "I think 😀 so" in reply["reasoning"]  # the finished block, drawn whole
