"""Who gave each part of a rating: a scoring function's rating keys are its own (named
in rating_sources and tag_sources), dropped when it fails or stops giving them, and
never replace what a person rated."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from test_session_support import DEADLINE

from cm_notebook.model import Message
from cm_notebook.scores import Score
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def _reply(new_session: Callable[..., ContextSession]) -> tuple[ContextSession, str]:
    session = new_session("sources", provider=ScriptedProvider(["Paris."]))
    session.send("Capital of France?").result(DEADLINE)
    return session, session.history()[-1].id


def _stored(session: ContextSession, message_id: str) -> Score:
    score = session.scores(message_id)
    assert score is not None
    return score


def _failing(message: Message) -> dict[str, object]:
    raise TimeoutError("judge API timed out")


def test_a_functions_rating_is_credited_to_it_and_dropped_when_it_fails_or_stops(
    new_session: Callable[..., ContextSession],
) -> None:
    session, reply = _reply(new_session)
    session.score(
        lambda m: {"score": 2, "thumbs": "down", "tags": ["judge:wrong"], "confidence": 0.9},
        name="judge",
        progress=False,
    )
    rated = _stored(session, reply)
    assert (rated.score, rated.thumbs, rated.tags, rated.by) == (
        2,
        "down",
        ["judge:wrong"],
        "judge",
    )
    assert rated.rating_sources == {"score": "judge", "thumbs": "judge", "by": "judge"}
    assert rated.tag_sources == {"judge:wrong": "judge"}

    # Run again without thumbs: its old thumbs is not current any more.
    session.score(lambda m: {"score": 3, "confidence": 0.5}, name="judge", progress=False)
    again = _stored(session, reply)
    assert (again.score, again.thumbs, again.tags, again.by) == (3, None, [], "judge")

    # It fails: none of its rating is left looking current, as none of its metrics.
    session.score(_failing, name="judge", progress=False)
    failed = _stored(session, reply)
    assert (failed.score, failed.thumbs, failed.tags, failed.by, failed.metrics) == (
        None,
        None,
        [],
        None,
        {},
    )
    assert failed.rating_sources == {}
    assert session.to_records()[0]["score"] is None


def test_a_function_never_replaces_or_drops_what_a_person_rated(
    new_session: Callable[..., ContextSession],
) -> None:
    session, reply = _reply(new_session)
    session.rate(reply, score=5, thumbs="up", note="human rating", by="ann")
    session.score(
        lambda m: {"score": 2, "thumbs": "down", "tags": ["judge:wrong"], "confidence": 0.9},
        name="judge",
        progress=False,
    )
    after = _stored(session, reply)
    assert (after.score, after.thumbs, after.note, after.by) == (5, "up", "human rating", "ann")
    assert after.tags == ["judge:wrong"]  # what no person set: the function's, named so
    assert after.rating_sources == {}
    assert after.tag_sources == {"judge:wrong": "judge"}
    assert after.metrics == {"confidence": 0.9}

    session.score(_failing, name="judge", progress=False)
    failed = _stored(session, reply)
    assert (failed.score, failed.thumbs, failed.tags, failed.by) == (5, "up", [], "ann")


def test_a_person_rating_after_a_function_takes_the_field_over(
    new_session: Callable[..., ContextSession],
) -> None:
    session, reply = _reply(new_session)
    judge = {"score": 2, "thumbs": "down", "tags": ["judge:wrong", "short"]}
    session.score(lambda m: judge, name="judge", progress=False)
    # Bob agrees with the thumbs and the tag "short", and gives his own score; no name.
    session.rate(reply, score=4, tags=["short"])
    bob = _stored(session, reply)
    assert (bob.score, bob.thumbs, bob.by) == (4, "down", None)  # the judge's thumbs stays
    assert bob.rating_sources == {"thumbs": "judge"}  # by is not the judge's: Bob rated
    assert bob.tag_sources == {"judge:wrong": "judge"}

    session.score(lambda m: judge, name="judge", progress=False)  # runs again
    assert _stored(session, reply).score == 4  # Bob's score is not overwritten
    session.score(_failing, name="judge", progress=False)
    failed = _stored(session, reply)
    assert (failed.score, failed.thumbs, failed.tags) == (4, None, ["short"])
    assert (failed.rating_sources, failed.tag_sources) == ({}, {})


def test_of_two_functions_one_failing_leaves_the_others_rating_and_name(
    new_session: Callable[..., ContextSession],
) -> None:
    session, reply = _reply(new_session)
    session.score(lambda m: {"thumbs": "up"}, name="polite", progress=False)
    session.score(lambda m: {"score": 4}, name="judge", progress=False)
    both = _stored(session, reply)
    assert (both.thumbs, both.score, both.by) == ("up", 4, "judge")
    session.score(_failing, name="judge", progress=False)
    left = _stored(session, reply)
    assert (left.thumbs, left.score, left.by) == ("up", None, "polite")
    assert left.rating_sources == {"thumbs": "polite", "by": "polite"}


def test_a_score_stored_before_rating_sources_reads_and_counts_as_a_persons(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session, reply = _reply(new_session)
    folder = data_dir / "contexts" / session.id / "scores"
    folder.mkdir(exist_ok=True)
    old = {
        "message_id": reply,
        "branch": "main",
        "thumbs": "up",
        "score": 5,
        "tags": ["kept"],
        "note": None,
        "by": "ann",
        "metrics": {"length": 6},
        "errors": {},
        "metric_sources": {"length": "length"},
        "created_at": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:00Z",
    }
    (folder / f"{reply}.json").write_text(json.dumps(old), encoding="utf-8")
    read = _stored(session, reply)
    assert (read.score, read.by, read.rating_sources, read.tag_sources) == (5, "ann", {}, {})
    session.score(lambda m: {"score": 1, "tags": ["kept"]}, name="judge", progress=False)
    merged = _stored(session, reply)
    assert (merged.score, merged.tags, merged.by, merged.tag_sources) == (5, ["kept"], "ann", {})
