"""What a reply keeps of a failed attempt's text: the reply's content when the failure
ends the turn, only its metadata's ``failed_attempts`` when a retry follows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook import ContextSession, RetryPolicy
from cm_notebook.errors import PermanentProviderError
from cm_notebook.model import MessageStatus
from cm_notebook.store.codec import decode_message
from cm_notebook.testing import ScriptedProvider

LAST = "the last try's text"


@pytest.mark.parametrize("case", ["attempts used up", "one attempt", "retry-after too long"])
def test_a_transient_failure_that_ends_the_turn_keeps_its_text_as_the_reply(
    data_dir: Path, case: str
) -> None:
    model = ScriptedProvider()
    if case == "attempts used up":
        model.error("transient", after_chunks=2, text="the first try's text")
    model.error(
        "transient",
        after_chunks=3,
        text=LAST,
        retry_after=3600.0 if case == "retry-after too long" else None,
    )
    policy = {
        "attempts used up": RetryPolicy(initial_delay=0.01, max_attempts=2),
        "one attempt": RetryPolicy(max_attempts=1),
        "retry-after too long": RetryPolicy(max_retry_after=1.0),
    }[case]
    with ContextSession.create(data_dir=data_dir, provider=model, retry=policy) as session:
        turn = session.send("Hi")
        with pytest.raises(PermanentProviderError):
            turn.result(DEADLINE)
        assert turn.text == LAST
        failed = session.history()[-1]
        assert (failed.status, failed.content) == (MessageStatus.ERROR, LAST)
        assert failed.metadata.failed_attempts[-1]["text"] == LAST
    with ContextSession.open(session.id, data_dir=data_dir) as again:
        assert again.history()[-1].content == LAST


def test_a_retried_reply_holds_only_the_text_of_the_attempt_that_answered(
    data_dir: Path,
) -> None:
    model = ScriptedProvider().error("transient", after_chunks=2, text="cut off").reply("whole")
    policy = RetryPolicy(initial_delay=0.01)
    with ContextSession.create(data_dir=data_dir, provider=model, retry=policy) as session:
        reply = session.send("Hi").result(DEADLINE)
        assert reply.content == "whole"
        assert [a["text"] for a in reply.metadata.failed_attempts] == ["cut off"]


def test_failed_attempts_is_a_field_empty_when_no_try_failed(data_dir: Path) -> None:
    # Read on every reply (a first try's too, where it is empty), with what each failed
    # try holds; left out of the file when empty, as before it was declared.
    model = ScriptedProvider().reply("first time").error("transient", text="cut", after_chunks=1)
    model.reply("second time")
    policy = RetryPolicy(initial_delay=0.01)
    with ContextSession.create(data_dir=data_dir, provider=model, retry=policy) as session:
        first = session.send("Hi").result(DEADLINE)
        retried = session.send("Again").result(DEADLINE)
    folder = data_dir / "contexts" / session.id / "messages"
    assert first.metadata.failed_attempts == []
    assert "failed_attempts" not in (folder / f"{first.id}.json").read_text()
    (attempt,) = retried.metadata.failed_attempts
    assert attempt == {"error": attempt["error"], "text": "cut", "status_code": None}
    assert attempt["error"]


def test_failed_attempts_of_files_written_before_still_read(data_dir: Path) -> None:
    # A message file as this package wrote it, and a record from elsewhere (no
    # status_code, a key this version does not know): both read, and are written back
    # as they were.
    model = ScriptedProvider().error("transient", text="cut", after_chunks=1).reply("whole")
    policy = RetryPolicy(initial_delay=0.01)
    with ContextSession.create(data_dir=data_dir, provider=model, retry=policy) as session:
        reply = session.send("Hi").result(DEADLINE)
    path = data_dir / "contexts" / session.id / "messages" / f"{reply.id}.json"
    stored = json.loads(path.read_bytes())
    read = decode_message(path.read_bytes(), path, reply.id)
    assert read.metadata.failed_attempts == stored["metadata"]["failed_attempts"]
    assert {"schema_version": stored["schema_version"], **read.model_dump(mode="json")} == stored
    older = [{"error": "503", "text": "Par", "reasoning": "hm", "attempt_id": 7}]
    stored["metadata"]["failed_attempts"] = older
    read = decode_message(json.dumps(stored).encode(), path, reply.id)
    assert read.metadata.failed_attempts == older
    assert json.loads(read.model_dump_json())["metadata"]["failed_attempts"] == older
