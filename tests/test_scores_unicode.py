"""Scores and Unicode: tags and metric names in their two spellings (a combining accent
or a composed letter) are one tag, one metric, one column, also in scores stored
before; and ``by`` (who rated) is refused with control characters but read back from a
score stored before with them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook.errors import InvalidInputError
from cm_notebook.model import Message
from cm_notebook.scores import merged, metric_name
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

NFD = "cafe\u0301"  # "café" with a combining acute accent, as macOS file names have it
NFC = "caf\u00e9"  # "café" with the composed letter


def _two_replies(
    new_session: Callable[..., ContextSession],
) -> tuple[ContextSession, list[Message]]:
    session = new_session("unicode", provider=ScriptedProvider(["one", "two"]))
    for question in ("Q1", "Q2"):
        session.send(question).result(DEADLINE)
    return session, [m for m in session.history() if m.role == "assistant"]


def _score_file(data_dir: Path, session: ContextSession, message_id: str) -> Path:
    return data_dir / "contexts" / session.id / "scores" / f"{message_id}.json"


def test_a_tag_in_either_spelling_is_one_tag(new_session: Callable[..., ContextSession]) -> None:
    session, replies = _two_replies(new_session)
    first, second = (reply.id for reply in replies)
    session.rate(first, tags=[NFD])
    assert session.rate(first, tags=[NFC, NFD]).tags == [NFC]
    session.rate(second, tags=[NFC])
    assert [row["tags"] for row in session.to_records()] == [[NFC], [NFC]]
    judged = session.score(lambda _m: {"tags": [NFD]}, name="judge", progress=False)
    assert [score.tags for score in judged] == [[NFC], [NFC]]


def test_a_metric_name_in_either_spelling_is_one_metric_and_one_column(
    new_session: Callable[..., ContextSession],
) -> None:
    session, replies = _two_replies(new_session)
    assert metric_name(NFD) == NFC
    results = session.score(lambda _m: 1.0, name=NFD, progress=False)
    assert results.name == NFC
    again = session.score(lambda _m: 2.0, name=NFC, progress=False)
    assert [score.metrics for score in again] == [{NFC: 2.0}, {NFC: 2.0}]
    session.score(lambda _m: {NFD: 3.0, "other": 1}, name="judge", progress=False)
    columns = [key for key in session.to_records()[0] if key.startswith("metric_")]
    assert columns == [f"metric_{NFC}", "metric_other"]

    # A function that fails under one spelling is found failed under the other.
    def broken(_message: Message) -> float:
        raise ValueError("no")

    failed = session.score(broken, name=NFD, progress=False)
    assert len(failed.failed) == 2
    assert all(NFC in score.errors and NFC not in score.metrics for score in failed)
    fixed = session.score(lambda _m: 4.0, name=NFC, progress=False)
    assert fixed.failed == []
    assert merged(None, replies[0].id, branch="main", metrics={NFD: 1}).metrics == {NFC: 1}


def test_a_score_stored_before_in_the_other_spelling_reads_and_merges(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    # Written by a version that kept names as given: both spellings side by side.
    session, replies = _two_replies(new_session)
    reply = replies[0].id
    session.rate(reply, thumbs="up")
    path = _score_file(data_dir, session, reply)
    raw = json.loads(path.read_text())
    raw["tags"] = [NFD, "short", NFC]
    raw["metrics"] = {NFD: 1.0, "length": 3, NFC: 2.0}
    raw["metric_sources"] = {NFD: NFD, NFC: NFC}
    raw["errors"] = {f"{NFD}-judge": "ValueError: no"}
    path.write_text(json.dumps(raw))

    stored = session.scores(reply)
    assert stored is not None
    assert stored.tags == [NFC, "short"]
    assert stored.metrics == {NFC: 2.0, "length": 3}  # the one written later kept
    assert stored.metric_sources == {NFC: NFC}
    assert session.all_scores()[reply] == stored
    [row, _other] = session.to_records()
    assert row["tags"] == [NFC, "short"]
    assert [key for key in row if key.startswith("metric_")] == [f"metric_{NFC}", "metric_length"]

    # Rating and scoring again, in either spelling, find what was stored.
    assert session.rate(reply, tags=[NFD]).tags == [NFC, "short"]
    rescored = session.score(lambda _m: 5.0, name=NFD, progress=False)[0]
    assert rescored.metrics == {NFC: 5.0, "length": 3}
    fixed = session.score(lambda _m: 1, name=f"{NFC}-judge", progress=False)[0]
    assert fixed.errors == {}


@pytest.mark.parametrize("control", ["\x1b[31m", "\n", "\x00", "\x9b", "\r"])
def test_by_with_control_characters_is_refused_and_nothing_is_stored(
    new_session: Callable[..., ContextSession], control: str
) -> None:
    session, replies = _two_replies(new_session)
    reply = replies[0].id
    with pytest.raises(InvalidInputError, match=r"by \(who rated\).* control characters"):
        session.rate(reply, thumbs="up", by=f"ann{control}")
    assert session.scores(reply) is None
    assert session.rate(reply, thumbs="up", by="ann").by == "ann"


def test_by_with_control_characters_stored_before_still_reads_and_merges(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, replies = _two_replies(new_session)
    reply = replies[0].id
    session.rate(reply, thumbs="up", by="ann")
    path = _score_file(data_dir, session, reply)
    raw = json.loads(path.read_text())
    raw["by"] = "\x1b[31mann\n"
    path.write_text(json.dumps(raw))
    assert session.scores(reply).by == "\x1b[31mann\n"  # type: ignore[union-attr]
    again = session.rate(reply, score=3)
    assert (again.by, again.thumbs, again.score) == ("\x1b[31mann\n", "up", 3)
    assert session.rate(reply, by="bob").by == "bob"
