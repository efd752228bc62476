"""Scores: rating replies, merging ratings, scoring functions, the store's score files,
and the ScoreUpdated signal seen by another process."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE, Recorder, seen

from cm_notebook._sessionio import StoreAccess
from cm_notebook.errors import InvalidIdError, InvalidInputError, PermanentProviderError
from cm_notebook.events import ScoreUpdated, parse_event
from cm_notebook.model import ContextMetadata, Message, MessageStatus
from cm_notebook.scores import Score
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool


def _two_turns(new_session: Callable[..., ContextSession]) -> tuple[ContextSession, list[Message]]:
    session = new_session("scores", provider=ScriptedProvider(["Blue.", "Red at dusk."]))
    session.send("Why is the sky blue?").result(DEADLINE)
    session.send("And the sunset?").result(DEADLINE)
    return session, session.history()


def test_rate_stores_the_score_beside_the_message_and_signals_it(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, history = _two_turns(new_session)
    reply = history[1]
    message_file = data_dir / "contexts" / session.id / "messages" / f"{reply.id}.json"
    before = message_file.read_bytes()
    recorder = Recorder(session)

    score = session.rate(reply.id, thumbs="up", score=4, tags=["concise"], note="ok", by="ann")

    assert (score.thumbs, score.score, score.tags, score.note, score.by) == (
        "up",
        4,
        ["concise"],
        "ok",
        "ann",
    )
    assert score.branch == "main"
    assert session.scores(reply.id) == score
    assert session.scores(history[3].id) is None
    stored = data_dir / "contexts" / session.id / "scores" / f"{reply.id}.json"
    assert json.loads(stored.read_text())["thumbs"] == "up"
    assert message_file.read_bytes() == before  # finished messages stay immutable
    recorder.wait(seen(ScoreUpdated, message_id=reply.id))
    event = recorder.of(ScoreUpdated)[0]
    assert event.branch == "main"
    assert event.score == score
    assert parse_event(event.model_dump_json()) == event


def test_rating_again_merges_and_clear_starts_over(
    new_session: Callable[..., ContextSession],
) -> None:
    session, history = _two_turns(new_session)
    reply = history[3].id
    first = session.rate(reply, thumbs="down", tags=["wrong"])
    second = session.rate(reply, score=2, tags=["wrong", "long"], note="too long")
    assert second.thumbs == "down"  # kept: not given again
    assert second.score == 2
    assert second.tags == ["wrong", "long"]  # added, each once
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    third = session.rate(reply, thumbs="up")
    assert (third.thumbs, third.score, third.note) == ("up", 2, "too long")
    cleared = session.rate(reply, clear=True, score=5)
    assert (cleared.thumbs, cleared.score, cleared.tags, cleared.note) == (None, 5, [], None)
    assert session.all_scores() == {reply: cleared}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"score": 0}, "score"),
        ({"score": 6}, "score"),
        ({"score": True}, "score"),
        ({"score": 4.5}, "score"),
        ({"thumbs": "sideways"}, "thumbs"),
        ({"tags": "one-string"}, "list of strings"),
        ({"tags": [""]}, "tags"),
        ({"tags": [3]}, "tags"),
        ({"tags": ["ok", "\x1b[31mred"]}, r"tag .* control characters \(found U\+001B\)"),
        ({"tags": ["a\rb"]}, r"found U\+000D"),
        ({"note": "x" * 10_001}, "note"),
    ],
)
def test_bad_ratings_are_refused_and_nothing_is_stored(
    new_session: Callable[..., ContextSession], kwargs: dict[str, object], match: str
) -> None:
    session, history = _two_turns(new_session)
    with pytest.raises(InvalidInputError, match=match):
        session.rate(history[1].id, **kwargs)  # type: ignore[arg-type]
    assert session.scores(history[1].id) is None


def test_only_assistant_messages_can_be_rated(
    new_session: Callable[..., ContextSession],
) -> None:
    session, history = _two_turns(new_session)
    with pytest.raises(InvalidInputError, match=r"is the user.s; only assistant"):
        session.rate(history[0].id, thumbs="up")
    for hostile in ["../../etc/passwd", "a/b", "..", ""]:
        with pytest.raises(InvalidIdError):
            session.rate(hostile, thumbs="up")
        with pytest.raises(InvalidIdError):
            session.scores(hostile)


def test_score_runs_a_function_over_branches_and_records_failures(
    new_session: Callable[..., ContextSession], capsys: pytest.CaptureFixture[str]
) -> None:
    session, history = _two_turns(new_session)
    session.branch("side", history[1].id, switch=False)
    session.send("Another question", branch="side").result(DEADLINE)

    def length(message: Message) -> int:
        if "sunset" in message.content or "dusk" in message.content:
            raise ValueError("cannot measure dusk")
        return len(message.content)

    results = session.score(length)
    # Three replies: "Blue." is shared by both branches and scored once.
    assert len(results) == 3
    assert [s.message_id for s in results].count(history[1].id) == 1
    assert len(results.failed) == 1
    assert results.summary() == "scored 3 messages with 'length': 2 ok, 1 failed"
    failed = results.failed[0]
    assert failed.errors == {"length": "ValueError: cannot measure dusk"}
    assert session.scores(history[1].id).metrics == {"length": 5}  # type: ignore[union-attr]
    assert "scoring length" in capsys.readouterr().err  # the progress bar

    # A mapping rates and gives several metrics; a success clears an earlier error.
    results = session.score(
        lambda m: {"thumbs": "up", "words": len(m.content.split()), "long": False},
        branches=["main"],
        name="shape",
        progress=False,
    )
    assert not results.failed
    after = session.scores(history[3].id)
    assert after is not None
    assert after.thumbs == "up"
    assert after.metrics == {"words": 3, "long": False}
    assert after.errors == {"length": "ValueError: cannot measure dusk"}
    session.score(lambda m: 1.5, branches="main", name="length", progress=False)
    fixed = session.scores(history[3].id)
    assert fixed is not None
    assert fixed.errors == {}
    assert fixed.metrics["length"] == 1.5


def test_numpy_numbers_and_bools_are_metrics(new_session: Callable[..., ContextSession]) -> None:
    np = pytest.importorskip("numpy")
    session, history = _two_turns(new_session)
    lengths = np.array([5, 7])
    results = session.score(lambda m: np.mean(lengths) > 3, name="long", progress=False)
    assert not results.failed
    results = session.score(
        lambda m: {
            "chars": np.int64(len(m.content)),
            "ratio": np.float32(0.5),
            "score": np.int8(4),
        },
        name="shape",
        progress=False,
    )
    assert not results.failed, results.failed[0].errors
    scored = session.scores(history[1].id)
    assert scored is not None
    assert scored.metrics == {"long": True, "chars": 5, "ratio": 0.5}
    assert scored.score == 4
    assert [type(v) for v in scored.metrics.values()] == [bool, int, float]
    # Several values are no number: refused with the function's name, as before.
    results = session.score(lambda m: lengths, name="many", progress=False)
    assert "returned ndarray" in results.failed[0].errors["many"]


def test_a_mapping_judge_run_again_leaves_none_of_its_old_metrics_looking_current(
    new_session: Callable[..., ContextSession],
) -> None:
    session, history = _two_turns(new_session)
    reply = history[1].id
    session.score(lambda m: {"fluency": 4, "accuracy": 0.9}, name="judge", progress=False)
    session.score(lambda m: len(m.content), name="length", progress=False)
    first = session.scores(reply)
    assert first is not None
    assert first.metrics == {"fluency": 4, "accuracy": 0.9, "length": 5}
    assert first.metric_sources == {"fluency": "judge", "accuracy": "judge", "length": "length"}

    # Run again, the judge no longer gives "accuracy": that value is not current.
    session.score(lambda m: {"fluency": 3}, name="judge", progress=False)
    again = session.scores(reply)
    assert again is not None
    assert again.metrics == {"fluency": 3, "length": 5}

    # It fails: none of its metrics is left; the other function's metric stays.
    def judge(message: Message) -> dict[str, float]:
        raise RuntimeError("judge model unreachable")

    session.score(judge, progress=False)
    failed = session.scores(reply)
    assert failed is not None
    assert failed.metrics == {"length": 5}
    assert failed.errors == {"judge": "RuntimeError: judge model unreachable"}
    assert failed.metric_sources == {"length": "length"}


def test_an_error_is_cleared_only_by_its_own_function_succeeding(
    new_session: Callable[..., ContextSession],
) -> None:
    session, history = _two_turns(new_session)
    reply = history[1].id

    def judge(message: Message) -> float:
        raise RuntimeError("judge model unreachable")

    session.score(judge, progress=False)
    # Another function whose mapping has a metric named "judge": judge still fails.
    session.score(lambda m: {"judge": 1, "chars": len(m.content)}, name="summary", progress=False)
    after = session.scores(reply)
    assert after is not None
    assert after.errors == {"judge": "RuntimeError: judge model unreachable"}
    assert after.metric_sources == {"judge": "summary", "chars": "summary"}
    session.score(lambda m: 0.5, name="judge", progress=False)
    fixed = session.scores(reply)
    assert fixed is not None
    assert fixed.errors == {}


def test_score_refuses_bad_arguments(new_session: Callable[..., ContextSession]) -> None:
    session, _history = _two_turns(new_session)
    with pytest.raises(InvalidInputError, match="no branch 'nope'"):
        session.score(len, branches=["nope"])
    with pytest.raises(InvalidInputError, match="function"):
        session.score("len", progress=False)  # type: ignore[arg-type]
    results = session.score(lambda m: "text", name="bad", progress=False)
    assert len(results.failed) == 2  # a result that is not a number is that call's error
    assert "returned str" in results.failed[0].errors["bad"]


@pytest.mark.anyio
async def test_the_store_keeps_concurrent_ratings_and_refuses_hostile_paths(
    data_dir: Path,
) -> None:
    store = FileStore(data_dir)
    await store.create_context(ContextMetadata(id="c1"))

    def add(tag: str) -> Callable[[dict[str, object] | None], dict[str, object]]:
        def change(old: dict[str, object] | None) -> dict[str, object]:
            tags = list(old["tags"]) if old else []  # type: ignore[call-overload]
            return {"message_id": "m1", "tags": [*tags, tag]}  # the store keeps valid scores

        return change

    def writer(prefix: str) -> None:
        other = FileStore(data_dir)  # its own store: as another process would
        io = StoreAccess(other)
        for i in range(15):
            io.call(other.update_score("c1", "m1", add(f"{prefix}{i}")))

    threads = [threading.Thread(target=writer, args=(p,)) for p in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = await store.read_score("c1", "m1")
    assert stored is not None
    assert len(stored["tags"]) == 30
    assert list((await store.list_scores("c1")).keys()) == ["m1"]
    for hostile in ["../x", "a/b", "..", "x\x00"]:
        with pytest.raises(InvalidIdError):
            await store.read_score("c1", hostile)
        with pytest.raises(InvalidIdError):
            await store.update_score("c1", hostile, add("t"))
    # A scores folder swapped for a link out of the data directory is refused.
    outside = data_dir.parent / "outside"
    outside.mkdir()
    await store.create_context(ContextMetadata(id="c2"))
    os.symlink(outside, data_dir / "contexts" / "c2" / "scores")
    with pytest.raises(InvalidIdError, match="outside the data directory"):
        await store.update_score("c2", "m1", add("t"))
    assert list(outside.iterdir()) == []
    # A damaged score file is skipped with a warning by list, named by read.
    (data_dir / "contexts" / "c1" / "scores" / "m2.json").write_text("{not json")
    with pytest.warns(UserWarning, match="m2.json"):
        assert list(await store.list_scores("c1")) == ["m1"]
    await store.close()


def test_a_rating_in_another_process_reaches_this_session(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, history = _two_turns(new_session)
    recorder = Recorder(session)
    reply = history[3].id
    code = textwrap.dedent(
        f"""
        from cm_notebook.session import ContextSession
        from cm_notebook.testing import ScriptedProvider
        s = ContextSession.open({session.id!r}, data_dir={str(data_dir)!r},
                                provider=ScriptedProvider())
        s.rate({reply!r}, thumbs="down", note="from afar")
        s.close()
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    recorder.wait(seen(ScoreUpdated, message_id=reply))
    heard = recorder.of(ScoreUpdated)[0]
    assert isinstance(heard.score, Score)
    assert heard.score.note == "from afar"
    assert session.scores(reply) == heard.score


def test_a_rating_in_a_kernel_reaches_sse_clients_of_the_server(tmp_path: Path) -> None:
    httpx = pytest.importorskip("httpx")
    from jupyter_server_proc import JupyterServer
    from server_client import create_context, read_events

    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [{"reply": "Blue."}])
        url = f"contexts/{context_id}/events"
        done = read_events(
            client,
            url,
            lambda e: e.event == "MessageCompleted",
            started=lambda: client.post(f"contexts/{context_id}/messages", json={"text": "Sky?"}),
        )
        reply = json.loads(done[-1].data)["message_id"]
        # A kernel (another process) rates the reply; the browser hears it over SSE.
        code = textwrap.dedent(
            f"""
            from cm_notebook.session import ContextSession
            s = ContextSession.open({context_id!r}, data_dir={str(server.data_dir)!r})
            s.rate({reply!r}, score=3, tags=["checked"])
            s.close()
            """
        )
        heard = read_events(
            client,
            f"{url}?since={done[-1].id}",
            lambda e: e.event == "ScoreUpdated",
            started=lambda: subprocess.run([sys.executable, "-c", code], check=True, timeout=120),
        )
    data = json.loads(heard[-1].data)
    assert data["message_id"] == reply
    assert (data["score"]["score"], data["score"]["tags"]) == (3, ["checked"])


def test_scores_travel_with_a_json_export_and_back(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    from cm_notebook.errors import InvalidInputError as Invalid
    from cm_notebook.export import export_context, import_document, parse_export, to_json

    session, history = _two_turns(new_session)
    io = StoreAccess(FileStore(data_dir))
    plain = to_json(io.call(export_context(io.store, session.id)))
    assert "scores" not in json.loads(plain)  # unrated: the document older versions wrote
    rated = session.rate(history[1].id, thumbs="up", tags=["kept"], note="a note")
    text = to_json(io.call(export_context(io.store, session.id)))
    document = parse_export(text)
    assert list(document.scores) == [history[1].id]
    imported = io.call(import_document(io.store, document, context_id="c-imported"))
    copy = ContextSession.open(imported.id, data_dir=data_dir)
    try:
        again = copy.scores(history[1].id)
        assert again is not None
        assert again.model_dump(exclude={"branch"}) == rated.model_dump(exclude={"branch"})
        assert copy.scores(history[3].id) is None
    finally:
        copy.close()
    # A score of a message the document lacks, or a bad score, is refused.
    data = json.loads(text)
    data["scores"]["m-missing"] = {"message_id": "m-missing"}
    with pytest.raises(Invalid, match="missing message 'm-missing'"):
        parse_export(data)
    data = json.loads(text)
    data["scores"][history[1].id]["score"] = 9
    with pytest.raises(Invalid, match="score"):
        parse_export(data)


def test_a_reply_still_being_written_is_left_out_and_the_summary_says_so(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider().hang(after_chunks=1, text="The capital"))
    turn = session.send("Capital of France?")
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and not any(m.role == "assistant" for m in session.history()):
        time.sleep(0.01)  # poll for the partial reply, with a deadline
    partial = session.history()[-1]
    assert partial.status is MessageStatus.STREAMING

    results = session.score(lambda m: "Paris" in m.content, name="paris", progress=False)
    assert list(results) == []
    assert results.left_out == (partial.id,)
    assert results.summary() == (
        "scored 0 messages with 'paris': 0 ok, 0 failed; left out 1 reply still being "
        "written: wait for the sweep or turn to finish (sweep.run(), turn.result()) and "
        "score again"
    )
    assert session.scores(partial.id) is None  # no metric of the partial text

    turn.cancel()
    turn.result(DEADLINE)
    assert session.get(partial.id).status is MessageStatus.INTERRUPTED
    # Stopped early, its text is cut off: still no answer to score.
    results = session.score(lambda m: "Paris" in m.content, name="paris", progress=False)
    assert list(results) == []
    assert results.left_out_status == {partial.id: MessageStatus.INTERRUPTED}
    assert results.summary().endswith(
        "; left out 1 reply that did not complete (1 interrupted): there is no whole "
        "answer to score"
    )
    assert session.scores(partial.id) is None


def test_only_complete_replies_are_scored_failed_ones_are_left_out_and_said_so(
    new_session: Callable[..., ContextSession],
) -> None:
    provider = ScriptedProvider(["Paris.", PermanentProviderError("rate limited"), "Paris"])
    session = new_session(provider=provider)
    session.send("Capital of France?").result(DEADLINE)
    with pytest.raises(PermanentProviderError):
        session.send("Again?").result(DEADLINE)
    session.send("Once more?").result(DEADLINE)
    replies = [m for m in session.history() if m.role == "assistant"]
    assert [m.status for m in replies] == [
        MessageStatus.COMPLETE,
        MessageStatus.ERROR,
        MessageStatus.COMPLETE,
    ]

    results = session.score(lambda m: "Paris" in m.content, name="paris", progress=False)
    assert [s.message_id for s in results] == [replies[0].id, replies[2].id]
    assert results.left_out == (replies[1].id,)
    assert results.left_out_status == {replies[1].id: MessageStatus.ERROR}
    assert results.summary() == (
        "scored 2 messages with 'paris': 2 ok, 0 failed; left out 1 reply that did not "
        "complete (1 ended in an error): there is no whole answer to score"
    )
    assert repr(results) == f"<ScoreResults {results.summary()}>"
    assert session.scores(replies[1].id) is None  # no False for the empty failed text
    records = session.to_records()
    assert [r["metric_paris"] for r in records] == [True, None, True]


def test_only_answers_are_scored_replies_that_only_ask_for_tools_are_left_out(
    new_session: Callable[..., ContextSession],
) -> None:
    @tool
    def lookup(city: str) -> str:
        """Look up the weather."""
        return "sunny"

    fake = ScriptedProvider()
    for _ in range(3):
        fake.tool_call("lookup", {"city": "Paris"}).reply("Sunny.")
    session = new_session(provider=fake, tools=[lookup], approval="auto")
    sweep = session.sweep(
        "Weather in Paris?", [{}], repeat=3, name="w", concurrency=1, progress=False
    ).run(DEADLINE)
    steps = [m.id for b in sweep.branches for m in session.history(b) if m.role == "assistant"][::2]
    assert all(session.get(step).tool_calls for step in steps)

    results = session.score(
        lambda m: len(m.content.split()) == 1,
        name="one_word",
        branches=sweep.branches,
        progress=False,
    )
    assert [s.message_id for s in results] == [c.message_id for c in sweep.cells]
    assert results.left_out == tuple(steps)
    assert set(results.left_out_status.values()) == {MessageStatus.COMPLETE}
    assert results.summary() == (
        "scored 3 messages with 'one_word': 3 ok, 0 failed; left out 3 replies that only "
        "ask for tools (a turn's steps before its answer, or a turn stopped in its tool "
        "round): they are no answer"
    )
    assert all(session.scores(step) is None for step in steps)
    # The records hold the answers only: one row per cell, every one a one-word answer.
    rows = sweep.to_records()
    assert [(r["output"], r["metric_one_word"]) for r in rows] == [("Sunny.", True)] * 3


def test_rate_takes_numpy_integers_and_whole_floats_and_still_refuses_fractions(
    new_session: Callable[..., ContextSession],
) -> None:
    np = pytest.importorskip("numpy")
    session, history = _two_turns(new_session)
    reply = history[1].id
    for given, stored in [(np.int64(4), 4), (np.int8(2), 2), (4.0, 4), (np.float64(3.0), 3)]:
        score = session.rate(reply, score=given)
        assert score.score == stored
        assert type(score.score) is int
    for bad in [4.5, np.float64(2.5), float("nan"), np.bool_(True), True, np.int64(7)]:
        with pytest.raises(InvalidInputError, match="score"):
            session.rate(reply, score=bad)
    assert session.scores(reply).score == 3  # type: ignore[union-attr]


def test_a_lambda_or_a_partial_needs_a_name_and_two_never_share_one_silently(
    new_session: Callable[..., ContextSession],
) -> None:
    session, history = _two_turns(new_session)

    def words(message: Message, *, at_least: int) -> bool:
        return len(message.content.split()) >= at_least

    with pytest.raises(InvalidInputError, match=r"fn is a lambda: pass name=, e\.g\."):
        session.score(lambda m: len(m.content), progress=False)
    with pytest.raises(InvalidInputError, match=r"a functools\.partial of words.*pass name="):
        session.score(functools.partial(words, at_least=2), progress=False)

    class Judge:
        def __call__(self, message: Message) -> float:
            return 0.5

    with pytest.raises(InvalidInputError, match=r"has no name: pass name="):
        session.score(Judge(), progress=False)
    assert session.all_scores() == {}  # nothing was scored

    session.score(lambda m: len(m.content), name="chars", progress=False)
    session.score(functools.partial(words, at_least=2), name="two_words", progress=False)
    session.score(Judge(), name="judge", progress=False)
    assert session.scores(history[3].id).metrics == {  # type: ignore[union-attr]
        "chars": 12,
        "two_words": True,
        "judge": 0.5,
    }


def test_clear_takes_the_rating_back_and_keeps_the_functions_metrics(
    new_session: Callable[..., ContextSession],
) -> None:
    session, history = _two_turns(new_session)
    reply = history[1].id
    session.score(lambda m: 0.87, name="judge", progress=False)

    def broken(message: Message) -> float:
        raise RuntimeError("down")

    session.score(broken, progress=False)
    session.rate(reply, thumbs="up", score=3, tags=["oops"], note="n", by="ann")

    cleared = session.rate(reply, clear=True)
    assert (cleared.thumbs, cleared.score, cleared.tags, cleared.note, cleared.by) == (
        None,
        None,
        [],
        None,
        None,
    )
    assert cleared.metrics == {"judge": 0.87}
    assert cleared.metric_sources == {"judge": "judge"}
    assert cleared.errors == {"broken": "RuntimeError: down"}
    assert session.to_records()[1]["metric_judge"] == 0.87

    again = session.rate(reply, clear=True, thumbs="down")
    assert (again.thumbs, again.metrics) == ("down", {"judge": 0.87})
    # Dropping the functions' results is its own, explicit keyword.
    dropped = session.rate(reply, clear_metrics=True)
    assert (dropped.thumbs, dropped.metrics, dropped.errors, dropped.metric_sources) == (
        "down",
        {},
        {},
        {},
    )
