"""Scores under bad input and damage: a scoring function's bad value for one message,
errors cleared by a later success, numbers beyond the float range, and score files
that are unparsable or not valid scores."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_session_support import DEADLINE

from cm_notebook._sessionio import StoreAccess
from cm_notebook.errors import CorruptDataError, InvalidInputError
from cm_notebook.export import export_context
from cm_notebook.model import ContextMetadata, Message
from cm_notebook.scores import Score, merged
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.testing import ScriptedProvider


def _three_replies(
    new_session: Callable[..., ContextSession],
) -> tuple[ContextSession, list[Message]]:
    session = new_session("faults", provider=ScriptedProvider(["one", "two", "three"]))
    for question in ("Q1", "Q2", "Q3"):
        session.send(question).result(DEADLINE)
    return session, [m for m in session.history() if m.role == "assistant"]


def _score_file(data_dir: Path, session: ContextSession, message_id: str) -> Path:
    return data_dir / "contexts" / session.id / "scores" / f"{message_id}.json"


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (10**400, "not a finite number"),
        ({"score": 0, "relevance": 0.5}, "score"),
        ({"thumbs": "sideways"}, "thumbs"),
        ({"tags": 5}, "tags must be a list"),
    ],
    ids=["nan", "inf", "huge-int", "score-0", "bad-thumbs", "tags-not-a-list"],
)
def test_a_bad_value_for_one_message_is_its_error_and_the_run_goes_on(
    new_session: Callable[..., ContextSession], bad: object, match: str
) -> None:
    session, replies = _three_replies(new_session)
    session.score(lambda m: 1, name="check", progress=False)  # an old value to drop

    def check(message: Message) -> object:
        return bad if message.content == "two" else len(message.content)

    results = session.score(check, progress=False)

    assert len(results) == 3
    assert results.summary() == "scored 3 messages with 'check': 2 ok, 1 failed"
    (failed,) = results.failed
    assert failed.message_id == replies[1].id
    assert failed.errors["check"].startswith("InvalidInputError: ")
    assert match in failed.errors["check"]
    assert failed.metrics == {}  # neither the old value nor part of the bad result
    assert failed.score is None
    assert failed.thumbs is None
    for reply in (replies[0], replies[2]):  # the messages after the bad one were scored
        stored = session.scores(reply.id)
        assert stored is not None
        assert stored.metrics == {"check": len(reply.content)}
        assert stored.errors == {}


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ('{"message_id": "', "is not valid JSON"),
        ("[1, 2]", "does not hold a JSON object"),
        ('{"message_id": "%s", "reviewer": "x"}', "reviewer: Extra inputs"),
        ('{"message_id": "%s", "score": "high"}', "score"),
        ('{"message_id": "m-other"}', "score of another message"),
    ],
    ids=["truncated", "not-an-object", "extra-field", "wrong-type", "other-message"],
)
def test_a_damaged_score_file_is_replaced_by_a_run_with_a_warning(
    new_session: Callable[..., ContextSession], data_dir: Path, damage: str, match: str
) -> None:
    session, replies = _three_replies(new_session)
    first = replies[0].id
    session.rate(first, score=3)
    path = _score_file(data_dir, session, first)
    path.write_text(damage.replace("%s", first))

    with pytest.warns(StoreWarning, match=match) as caught:
        results = session.score(lambda m: len(m.content), name="length", progress=False)

    assert results.summary() == "scored 3 messages with 'length': 3 ok, 0 failed"
    warning = next(w.message for w in caught if isinstance(w.message, StoreWarning))
    assert warning.path == path
    assert "replaced by the new score" in str(warning)
    # What it held is kept beside it (a newer version's rating, say), out of every read.
    kept = path.with_name(f"{path.name}.damaged")
    assert str(kept) in str(warning)
    assert kept.read_text() == damage.replace("%s", first)
    replaced = Score.model_validate(json.loads(path.read_text()))
    assert (replaced.message_id, replaced.score, replaced.metrics) == (first, None, {"length": 3})
    stored = session.all_scores()
    assert [stored[r.id].metrics["length"] for r in replies] == [3, 3, 5]


def test_rating_replaces_a_damaged_score_file_and_a_refused_rating_keeps_it(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, replies = _three_replies(new_session)
    path = _score_file(data_dir, session, replies[0].id)
    path.parent.mkdir(exist_ok=True)
    path.write_text("{not json")
    with pytest.raises(InvalidInputError, match="score"):
        session.rate(replies[0].id, score=9)
    assert path.read_text() == "{not json"  # nothing replaced it: no warning to give
    with pytest.warns(StoreWarning, match="replaced by the new score: it is not valid JSON"):
        rated = session.rate(replies[0].id, thumbs="up")
    assert session.scores(replies[0].id) == rated


def test_a_success_clears_the_error_of_a_function_that_returns_a_mapping(
    new_session: Callable[..., ContextSession],
) -> None:
    session, replies = _three_replies(new_session)
    failing = True

    def judge(message: Message) -> dict[str, Any]:
        if failing:
            raise TimeoutError("judge API timed out")
        return {"score": 4, "relevance": 0.9}  # no key named "judge"

    session.score(lambda m: 1 / 0, name="other", progress=False)
    assert len(session.score(judge, progress=False).failed) == 3
    failing = False
    results = session.score(judge, progress=False)

    assert results.summary() == "scored 3 messages with 'judge': 3 ok, 0 failed"
    stored = session.scores(replies[0].id)
    assert stored is not None
    assert (stored.score, stored.metrics) == (4, {"relevance": 0.9})
    # Only the function's own error is cleared: another one's stays until it succeeds.
    assert stored.errors == {"other": "ZeroDivisionError: division by zero"}


@pytest.mark.parametrize(
    "number", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400", "1e5000"]
)
def test_numbers_beyond_the_float_range_are_refused(
    new_session: Callable[..., ContextSession], number: int
) -> None:
    with pytest.raises(InvalidInputError, match="'big' is not a finite number"):
        merged(None, "m1", branch=None, metrics={"big": number})
    # A large int within the float range is kept.
    assert merged(None, "m1", branch=None, metrics={"big": 10**300}).metrics["big"] == 10**300

    session, replies = _three_replies(new_session)
    results = session.score(lambda m: number, name="big", progress=False)
    assert len(results.failed) == 3
    assert "not a finite number" in results.failed[0].errors["big"]
    # Nothing unreadable was stored: the readers that compute with metrics still work.
    assert all("big" not in score.metrics for score in session.all_scores().values())
    assert len(session.to_records()) == 3
    session.rate(replies[0].id, thumbs="up")


def test_a_score_file_that_is_not_a_valid_score_is_skipped_by_every_reader(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, replies = _three_replies(new_session)
    good, bad = replies[0].id, replies[1].id
    session.rate(good, score=4)
    session.rate(bad, score=3)
    path = _score_file(data_dir, session, bad)
    data = json.loads(path.read_text())
    data["reviewer_id"] = "x"  # e.g. a field a newer version adds
    path.write_text(json.dumps(data))

    for read in (session.all_scores, session.to_records):
        with pytest.warns(StoreWarning, match=r"reviewer_id: Extra inputs") as caught:
            read()
        assert [w.message.path for w in caught] == [path]  # type: ignore[union-attr]
    with pytest.warns(StoreWarning, match=bad):
        assert list(session.all_scores()) == [good]
    with pytest.warns(StoreWarning, match=bad):
        records = session.to_records()
    assert [r["score"] for r in records] == [4, None, None]
    io = StoreAccess(FileStore(data_dir))
    with pytest.warns(StoreWarning, match=bad):
        document = io.call(export_context(io.store, session.id))
    assert list(document.scores) == [good]
    with pytest.raises(CorruptDataError, match=r"reviewer_id: Extra inputs.*delete it") as exc:
        session.scores(bad)
    assert exc.value.path == path
    assert session.scores(good) is not None


@pytest.mark.anyio
async def test_the_store_writes_only_valid_scores(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        await store.update_score("c1", "m1", lambda old: {"message_id": "m1", "score": 2})
        for bad, match in [
            ({"message_id": "m1", "score": 7}, "score"),
            ({"message_id": "m1", "metrics": {"x": 10**5000}}, "not a finite number"),
            ({"tags": ["no message id"]}, "message_id"),
            ({"message_id": "m2"}, "another message"),
        ]:
            with pytest.raises(InvalidInputError, match=match):
                await store.update_score("c1", "m1", lambda old, bad=bad: bad)
        assert await store.read_score("c1", "m1") == {"message_id": "m1", "score": 2}


def test_a_name_that_is_not_utf8_is_stored_as_a_replacement(
    new_session: Callable[..., ContextSession],
) -> None:
    # E.g. a tag or a metric named after a file name decoded with os.fsdecode.
    session, replies = _three_replies(new_session)
    first = replies[0].id
    rated = session.rate(first, tags=["caf\udce9"])
    assert rated.tags == ["caf\ufffd"]
    results = session.score(lambda m: {"len\udce9": 1.0}, name="fn\udce9", progress=False)
    assert results.summary().endswith("3 ok, 0 failed")
    stored = session.scores(first)
    assert stored is not None
    assert (stored.tags, stored.metrics) == (["caf\ufffd"], {"len\ufffd": 1.0})
    assert stored.metric_sources == {"len\ufffd": "fn\ufffd"}


@pytest.mark.anyio
async def test_a_dead_writers_temporary_score_file_is_removed_by_the_next_rating(
    data_dir: Path,
) -> None:
    # A process killed between writing a score's temporary file and renaming it leaves
    # the file behind (named as atomic_write names it); the next rating in that folder
    # removes it, and leaves the lock and the scores alone.
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        await store.update_score("c1", "m1", lambda old: {"message_id": "m1", "score": 2})
    folder = data_dir / "contexts" / "c1" / "scores"
    leftover = folder / ".m2.json.0123456789ab.tmp"
    leftover.write_bytes(b'{"message_id": "m2", "sc')
    async with FileStore(data_dir) as store:
        await store.update_score("c1", "m3", lambda old: {"message_id": "m3", "score": 4})
        assert not leftover.exists()
        assert sorted(p.name for p in folder.iterdir()) == [".lock", "m1.json", "m3.json"]
        assert (await store.list_scores("c1")).keys() == {"m1", "m3"}


def test_a_tag_with_control_characters_stored_before_still_reads_and_merges(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    # Refused where tags are given, never on reading: a score written before reads, and
    # rating the message again keeps it.
    session, replies = _three_replies(new_session)
    reply = replies[0].id
    session.rate(reply, tags=["kept"])
    path = _score_file(data_dir, session, reply)
    raw = json.loads(path.read_text())
    raw["tags"] = ["old\x1btag"]
    path.write_text(json.dumps(raw))
    assert session.scores(reply).tags == ["old\x1btag"]  # type: ignore[union-attr]
    assert session.rate(reply, thumbs="up", tags=["new"]).tags == ["old\x1btag", "new"]
    with pytest.raises(InvalidInputError, match=r"found U\+0000"):
        session.rate(reply, tags=["\x00"])
    judged = session.score(lambda _m: {"tags": ["\x07bell"]}, name="judge", progress=False)
    assert "control characters" in judged[0].errors["judge"]  # that message's error


@pytest.mark.parametrize("control", ["\x00", "\x1b[31m", "\n", "\x9b"])
def test_a_metric_name_with_control_characters_is_refused_where_it_is_given(
    new_session: Callable[..., ContextSession], data_dir: Path, control: str
) -> None:
    # A metric name becomes a column of records, DataFrames and CSV headers: refused
    # as a tag is, where it is given, never on reading a score stored before.
    session, replies = _three_replies(new_session)
    with pytest.raises(InvalidInputError, match=r"the metric name .* control characters"):
        session.score(lambda _m: 1, name=f"le{control}n", progress=False)
    judged = session.score(lambda _m: {f"multi{control}line": 2}, name="judge", progress=False)
    assert [r.errors["judge"] for r in judged] == [judged[0].errors["judge"]] * 3
    assert "the metric name" in judged[0].errors["judge"]
    assert "control characters" in judged[0].errors["judge"]
    assert all(not r.metrics for r in judged)
    with pytest.raises(InvalidInputError, match="control characters"):
        merged(None, replies[0].id, branch="main", metrics={f"m{control}x": 1})
    assert not any(key.startswith("metric_") for key in session.to_records()[0])

    reply = replies[0].id
    session.score(lambda _m: 1, name="kept", progress=False)
    path = _score_file(data_dir, session, reply)
    raw = json.loads(path.read_text())
    raw["metrics"][f"old{control}x"] = 3
    path.write_text(json.dumps(raw))
    assert session.scores(reply).metrics[f"old{control}x"] == 3  # type: ignore[union-attr]
    assert session.rate(reply, thumbs="up").metrics[f"old{control}x"] == 3
