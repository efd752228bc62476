"""The tokens of a try that failed and was retried are recorded and counted.

A provider may report usage before a reply fails (the tokens of the request cut
short are billed all the same). A try that is retried keeps them in its
``failed_attempts`` record (``usage``), and the turn's totals in the records
(``turn_input_tokens``, ``turn_output_tokens``) count them, once each: the try a reply
ends with keeps its tokens in the reply's own ``usage``, as before. Records written
before, or elsewhere, still read; a ``usage`` of another shape is kept aside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_metadata_older_shapes import exported_with, imported_reply_metadata
from test_session_support import DEADLINE

from cm_notebook import ContextSession, RetryPolicy
from cm_notebook.errors import PermanentProviderError
from cm_notebook.model import MessageStatus, TokenUsage
from cm_notebook.store.codec import decode_message
from cm_notebook.testing import ScriptedProvider

FAST = RetryPolicy(initial_delay=0.01, jitter=0.0)


def _tokens(row: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("input_tokens", "output_tokens", "turn_input_tokens", "turn_output_tokens")
    return tuple(row[key] for key in keys)


def test_a_retried_try_keeps_its_tokens_and_the_turn_counts_them(data_dir: Path) -> None:
    model = ScriptedProvider(strict=True)
    model.error("transient", after_chunks=2, usage=(100, 7)).reply("Paris.", usage=(100, 2))
    with ContextSession.create(data_dir=data_dir, provider=model, retry=FAST) as session:
        reply = session.send("Capital of France?").result(DEADLINE)
        rows = session.to_records()
    assert (reply.status, reply.content) == (MessageStatus.COMPLETE, "Paris.")
    assert reply.metadata.usage == TokenUsage(input_tokens=100, output_tokens=2)
    (attempt,) = reply.metadata.failed_attempts
    assert attempt["usage"] == TokenUsage(input_tokens=100, output_tokens=7)
    # The reply's own columns are its last try's; the turn's add the retried one.
    assert [_tokens(row) for row in rows] == [(100, 2, 200, 9)]

    # On disk, and read back by another session.
    path = data_dir / "contexts" / session.id / "messages" / f"{reply.id}.json"
    stored = json.loads(path.read_bytes())
    assert stored["metadata"]["failed_attempts"][0]["usage"] == {
        "input_tokens": 100,
        "output_tokens": 7,
    }
    with ContextSession.open(session.id, data_dir=data_dir, provider=model) as again:
        assert [_tokens(row) for row in again.to_records()] == [(100, 2, 200, 9)]


def test_the_try_a_reply_ends_with_is_counted_once(data_dir: Path) -> None:
    # Both tries fail: the first is retried (its tokens in its record), the last ends
    # the turn (its tokens in the reply's usage, as before, not in its record too).
    model = ScriptedProvider(strict=True)
    model.error("transient", after_chunks=1, usage=(10, 1))
    model.error("transient", after_chunks=2, usage=(20, 2))
    policy = RetryPolicy(initial_delay=0.01, jitter=0.0, max_attempts=2)
    with ContextSession.create(data_dir=data_dir, provider=model, retry=policy) as session:
        with pytest.raises(PermanentProviderError):
            session.send("Hi").result(DEADLINE)
        reply = session.history()[-1]
        rows = session.to_records()
    assert reply.status is MessageStatus.ERROR
    assert reply.metadata.usage == TokenUsage(input_tokens=20, output_tokens=2)
    first, last = reply.metadata.failed_attempts
    assert first["usage"] == TokenUsage(input_tokens=10, output_tokens=1)
    assert "usage" not in last
    assert [_tokens(row) for row in rows] == [(20, 2, 30, 3)]


def test_a_try_without_usage_records_none(data_dir: Path) -> None:
    model = ScriptedProvider(strict=True)
    model.load([{"error": "transient", "after_chunks": 1}, {"reply": "ok", "usage": [5, 1]}])
    with ContextSession.create(data_dir=data_dir, provider=model, retry=FAST) as session:
        reply = session.send("Hi").result(DEADLINE)
        rows = session.to_records()
    (attempt,) = reply.metadata.failed_attempts
    assert "usage" not in attempt
    assert [_tokens(row) for row in rows] == [(5, 1, 5, 1)]


def test_a_scripted_failure_reports_usage_from_json() -> None:
    model = ScriptedProvider().load([{"error": "transient", "usage": [3, 1]}])
    assert model.remaining == 1


def test_records_written_before_read_and_count_nothing_more(data_dir: Path) -> None:
    model = ScriptedProvider().error("transient", text="cut", after_chunks=1).reply("whole")
    with ContextSession.create(data_dir=data_dir, provider=model, retry=FAST) as session:
        reply = session.send("Hi").result(DEADLINE)
    path = data_dir / "contexts" / session.id / "messages" / f"{reply.id}.json"
    stored = json.loads(path.read_bytes())
    older = [{"error": "503", "text": "Par", "status_code": 503}]
    stored["metadata"]["failed_attempts"] = older
    read = decode_message(json.dumps(stored).encode(), path, reply.id)
    assert read.metadata.failed_attempts == older
    assert json.loads(read.model_dump_json())["metadata"]["failed_attempts"] == older


def test_a_usage_of_another_shape_is_kept_aside_and_the_try_still_reads(
    tmp_path: Path,
) -> None:
    odd = [{"error": "x", "text": "Par", "status_code": 429, "usage": "lots"}]
    metadata, again = imported_reply_metadata(
        tmp_path, exported_with(tmp_path, "failed_attempts", odd)
    )
    (attempt,) = metadata.failed_attempts
    assert {key: attempt.get(key) for key in ("error", "text", "status_code")} == {
        "error": "x",
        "text": "Par",
        "status_code": 429,
    }
    assert "usage" not in attempt
    assert attempt.get("usage_not_understood") == "lots"
    assert "failed_attempts_not_understood" not in (metadata.model_extra or {})
    (reply,) = [m for m in again["messages"] if m["role"] == "assistant"]
    assert reply["metadata"]["failed_attempts"][0]["usage_not_understood"] == "lots"
