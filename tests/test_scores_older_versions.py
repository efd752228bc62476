"""Scores older versions still read: a score as JSON (its file, an export, a signal)
leaves out the fields added since the first scores while they are empty, since an older
version refuses a score with a field it does not know, and its next rating replaces it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_session_support import DEADLINE

from cm_notebook.scores import Score
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

# The fields of the first versions that stored scores (they refuse any other field).
OLDEST = {
    "message_id",
    "branch",
    "thumbs",
    "score",
    "tags",
    "note",
    "by",
    "metrics",
    "errors",
    "created_at",
    "updated_at",
}
# Versions that record which function gave each metric, but not who rated.
WITH_METRIC_SOURCES = OLDEST | {"metric_sources"}

# A score file as a version before metric_sources wrote it: rated by Ann, scored by
# the function "length".
BEFORE_METRIC_SOURCES = (
    '{"message_id": "MESSAGE_ID", "branch": "main", "thumbs": "up", "score": 5, '
    '"tags": ["keep"], "note": "careful person note", "by": "ann", '
    '"metrics": {"length": 24}, "errors": {}, '
    '"created_at": "2026-12-03T10:00:00Z", "updated_at": "2026-12-03T10:00:01Z"}'
)


def _reply(new_session: Callable[..., ContextSession]) -> tuple[ContextSession, str]:
    session = new_session("older", provider=ScriptedProvider(["An answer of five words."]))
    session.send("Question?").result(DEADLINE)
    return session, session.history()[-1].id


def _file(data_dir: Path, session: ContextSession, message_id: str) -> Path:
    return data_dir / "contexts" / session.id / "scores" / f"{message_id}.json"


def _written(data_dir: Path, session: ContextSession, message_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_file(data_dir, session, message_id).read_text("utf-8"))
    return data


def _stored(session: ContextSession, message_id: str) -> Score:
    score = session.scores(message_id)
    assert score is not None
    return score


def test_a_persons_rating_is_written_as_the_first_versions_read_it(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, reply = _reply(new_session)
    rated = session.rate(reply, thumbs="up", score=4, tags=["clear"], note="good", by="ann")
    assert set(_written(data_dir, session, reply)) == OLDEST
    # Read back, the fields left out are empty, as they were in memory.
    assert _stored(session, reply) == rated
    assert (rated.metric_sources, rated.rating_sources, rated.tag_sources) == ({}, {}, {})


def test_rating_a_score_an_older_version_wrote_keeps_it_in_that_format(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, reply = _reply(new_session)
    path = _file(data_dir, session, reply)
    path.parent.mkdir(exist_ok=True)
    path.write_text(BEFORE_METRIC_SOURCES.replace("MESSAGE_ID", reply), encoding="utf-8")
    read = _stored(session, reply)
    assert (read.metric_sources, read.rating_sources, read.tag_sources) == ({}, {}, {})
    session.rate(reply, tags=["second-look"], by="bob")
    written = _written(data_dir, session, reply)
    assert set(written) <= OLDEST
    assert (written["thumbs"], written["score"], written["note"], written["by"]) == (
        "up",
        5,
        "careful person note",
        "bob",
    )
    assert (written["tags"], written["metrics"]) == (["keep", "second-look"], {"length": 24})


def test_a_functions_metric_is_written_as_versions_with_metric_sources_read_it(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, reply = _reply(new_session)
    session.rate(reply, thumbs="up", by="ann")
    (scored,) = session.score(lambda m: len(m.content), name="length", progress=False)
    assert set(_written(data_dir, session, reply)) == WITH_METRIC_SOURCES
    assert _written(data_dir, session, reply)["metric_sources"] == {"length": "length"}
    assert _stored(session, reply) == scored


def test_a_functions_rating_keeps_its_sources_and_they_go_when_it_is_taken_back(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, reply = _reply(new_session)
    judge = {"thumbs": "down", "tags": ["judge:wrong"]}
    (scored,) = session.score(lambda m: judge, name="judge", progress=False)
    written = _written(data_dir, session, reply)
    assert written["rating_sources"] == {"thumbs": "judge", "by": "judge"}
    assert written["tag_sources"] == {"judge:wrong": "judge"}
    assert "metric_sources" not in written  # the judge gave no metric
    assert _stored(session, reply) == scored
    session.close()
    with ContextSession.open(session.id, data_dir=data_dir, provider="scripted") as again:
        assert _stored(again, reply) == scored
        # A person takes the judge's rating back: nothing is left an older version
        # would not read.
        cleared = again.rate(reply, clear=True, thumbs="up", by="ann")
        assert set(_written(data_dir, again, reply)) == OLDEST
        assert _stored(again, reply) == cleared


def test_a_score_signal_carries_the_score_as_older_versions_read_it(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    # Another process following the signal log may run an older version: it drops a
    # signal it cannot read, and its views would miss the rating.
    session, reply = _reply(new_session)
    session.rate(reply, score=3, by="ann")
    session.close()
    log = data_dir / "contexts" / session.id / "signals" / "signals.log"
    records = [json.loads(line) for line in log.read_text("utf-8").splitlines() if line]
    signals = [r["e"] for r in records if r["e"].get("type") == "ScoreUpdated"]
    assert [set(signal["score"]) for signal in signals] == [OLDEST]


def test_an_export_of_a_persons_rating_and_metrics_is_what_older_versions_import(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, reply = _reply(new_session)
    path = _file(data_dir, session, reply)
    path.parent.mkdir(exist_ok=True)
    # As the version before this rule wrote it: every source map, empty or not.
    path.write_text(
        json.dumps(
            {
                "message_id": reply,
                "thumbs": "up",
                "metrics": {"length": 24},
                "metric_sources": {"length": "length"},
                "rating_sources": {},
                "tag_sources": {},
            }
        ),
        encoding="utf-8",
    )
    document = json.loads(session.export().to_json())
    assert document["format_version"] == 1
    assert set(document["scores"][reply]) == WITH_METRIC_SOURCES


def test_an_export_with_a_functions_rating_says_so_in_its_format_version(
    new_session: Callable[..., ContextSession], data_dir: Path, tmp_path: Path
) -> None:
    # Versions that do not know rating_sources refuse it with "upgrade", not as malformed.
    session, reply = _reply(new_session)
    judge = {"score": 2, "tags": ["terse"]}
    (scored,) = session.score(lambda m: judge, name="judge", progress=False)
    document = json.loads(session.export().to_json())
    assert document["format_version"] == 3
    with ContextSession.from_export(document, data_dir=tmp_path / "copy") as copy:
        assert _stored(copy, reply) == scored
