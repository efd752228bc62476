"""A reply whose process was killed keeps the text it streamed after its last checkpoint.

The chunks after the checkpoint are only in the signal log's text deltas; marking the
dead stream ``interrupted`` takes them from there when the log is unambiguous, and
keeps the checkpoint otherwise (cm_notebook.store.stream_tail).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from cm_notebook._signal_records import encode_records
from cm_notebook.model import Message, MessageMetadata, MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.signals import ContentDelta, Event, MessageAdded
from cm_notebook.store.paths import LOG_NAME, SIGNALS_DIR
from cm_notebook.store.stream_tail import streamed_text
from cm_notebook.testing import ScriptedProvider

DEADLINE = 30

# Streams the turns given as JSON on argv[2], prints the context id once the deltas of
# ``argv[3]`` characters have been delivered (so they are in the log), then waits to be
# killed.
_CHILD = textwrap.dedent(
    """
    import json, sys, threading
    from cm_notebook.events import ContentDelta
    from cm_notebook.session import ContextSession
    from cm_notebook.testing import ScriptedProvider

    fake = ScriptedProvider().load(json.loads(sys.argv[2]))
    session = ContextSession.create(provider=fake, data_dir=sys.argv[1])
    wanted, seen, enough = int(sys.argv[3]), [], threading.Event()
    def count(event):
        if isinstance(event, ContentDelta):
            seen.append(event.text)
            if sum(map(len, seen)) >= wanted:
                enough.set()
    session.subscribe(count)
    session.send("hello")
    if not enough.wait(30):
        sys.exit("the reply never streamed its text")
    print(session.id, flush=True)
    threading.Event().wait()  # streaming forever, until killed
    """
)


def _killed_mid_reply(data_dir: Path, turns: list[dict[str, Any]], delivered: int) -> str:
    import json

    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data_dir), json.dumps(turns), str(delivered)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        context_id = child.stdout.readline().strip()
        assert context_id, "the child process did not stream its reply"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(DEADLINE)
        if child.stdout is not None:
            child.stdout.close()
    return context_id


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_reply_keeps_what_it_streamed_after_its_last_checkpoint(data_dir: Path) -> None:
    text = "one two three four"
    context_id = _killed_mid_reply(data_dir, [{"hang": True, "after_chunks": 4, "text": text}], 18)
    session = ContextSession.open(context_id, data_dir=data_dir, provider=ScriptedProvider(["ok"]))
    try:
        reply = session.history()[-1]
        assert (reply.status, reply.content) == (MessageStatus.INTERRUPTED, text)
        assert session.send("again").result(DEADLINE).content == "ok"
    finally:
        session.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_thinking_reply_keeps_the_reasoning_it_streamed(data_dir: Path) -> None:
    # The reasoning came before any checkpoint (a thinking model's first second): only
    # the log's reasoning deltas have it.
    turns = [{"hang": True, "reasoning": "Weighing it all.", "after_chunks": 2, "text": "one two"}]
    context_id = _killed_mid_reply(data_dir, turns, len("one two"))
    session = ContextSession.open(context_id, data_dir=data_dir, provider=ScriptedProvider(["ok"]))
    try:
        reply = session.history()[-1]
        assert (reply.status, reply.content) == (MessageStatus.INTERRUPTED, "one two")
        assert reply.metadata.reasoning == "Weighing it all."
    finally:
        session.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_after_a_retry_only_the_last_attempts_text_is_taken(data_dir: Path) -> None:
    turns = [
        {"error": "transient", "after_chunks": 2, "text": "first try", "retry_after": 0},
        {"hang": True, "after_chunks": 2, "text": "second go"},
    ]
    context_id = _killed_mid_reply(data_dir, turns, len("first try") + len("second go"))
    session = ContextSession.open(context_id, data_dir=data_dir, provider=ScriptedProvider(["ok"]))
    try:
        reply = session.history()[-1]
        assert (reply.status, reply.content) == (MessageStatus.INTERRUPTED, "second go")
        failed = reply.metadata.failed_attempts
        assert [attempt["text"] for attempt in failed] == ["first try"]
    finally:
        session.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_reply_of_an_older_version_keeps_its_text(data_dir: Path) -> None:
    # An older version kept the signal log in the context folder itself. The dead
    # stream is marked before the log is moved into signals/, and only the checkpoint's
    # text was kept: the deltas, there in the old log, were not looked at.
    text = "one two three four"
    context_id = _killed_mid_reply(data_dir, [{"hang": True, "after_chunks": 4, "text": text}], 18)
    ctx_dir = data_dir / "contexts" / context_id
    (ctx_dir / SIGNALS_DIR / LOG_NAME).rename(ctx_dir / LOG_NAME)
    (ctx_dir / SIGNALS_DIR).rmdir()
    session = ContextSession.open(context_id, data_dir=data_dir, provider=ScriptedProvider(["ok"]))
    try:
        reply = session.history()[-1]
        assert (reply.status, reply.content) == (MessageStatus.INTERRUPTED, text)
        assert (ctx_dir / SIGNALS_DIR / LOG_NAME).is_file()  # then moved, as before
    finally:
        session.close()


# -- what the log must show for its text to be taken ---------------------------------------

_AT = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _delta(message_id: str, text: str, offset: int, seq: int) -> ContentDelta:
    return ContentDelta(
        seq=seq,
        context_id="c",
        branch="main",
        at=_AT,
        message_id=message_id,
        text=text,
        offset=offset,
    )


def _log(ctx_dir: Path, events: list[Event], tail: bytes = b"") -> None:
    folder = ctx_dir / SIGNALS_DIR
    folder.mkdir(parents=True)
    (folder / LOG_NAME).write_bytes(encode_records("w1", events) + tail)


def _stream(content: str = "", failed: list[str] | None = None) -> Message:
    metadata = MessageMetadata()
    if failed is not None:
        metadata = MessageMetadata.model_validate(
            {"failed_attempts": [{"error": "e", "text": t} for t in failed]}
        )
    return Message(
        role="assistant", content=content, status=MessageStatus.STREAMING, metadata=metadata
    )


def test_deltas_that_follow_on_extend_the_checkpoint(tmp_path: Path) -> None:
    reply = _stream("Hello")
    other = _stream()
    _log(
        tmp_path,
        [
            _delta(reply.id, "Hel", 0, 1),
            _delta(other.id, "not mine", 0, 2),
            MessageAdded(seq=3, context_id="c", message_id=other.id, role="assistant"),
            _delta(reply.id, "lo", 3, 4),
            _delta(reply.id, "lo, world", 3, 5),  # the same text again, and more
            _delta(reply.id, "!", 12, 6),
        ],
        tail=b'{"w":"w1","e":{"seq":7,"type":"ContentDe',  # a record cut off by the kill
    )
    assert streamed_text(tmp_path, reply) == "Hello, world!"


@pytest.mark.parametrize(
    ("stored", "deltas", "why"),
    [
        ("Hello", [("Hel", 0)], "the log is behind the checkpoint"),
        ("Hello", [("Hello", 0)], "nothing after the checkpoint"),
        ("Hello", [("Help me", 0)], "the log disagrees with the checkpoint"),
        ("", [("lo there", 3)], "the attempt's start was compacted away"),
        ("Hel", [("Hel", 0), ("there", 5)], "a gap: the rest is not known"),
        ("Hel", [("Hel", 0), ("p!", 2)], "a delta that disagrees with the text before it"),
        ("", [("first try", 0), ("second", 0)], "an attempt the reply does not list as failed"),
    ],
)
def test_the_checkpoint_stands_unless_the_log_is_certain(
    tmp_path: Path, stored: str, deltas: list[tuple[str, int]], why: str
) -> None:
    reply = _stream(stored)
    _log(tmp_path, [_delta(reply.id, t, o, n) for n, (t, o) in enumerate(deltas, 1)])
    assert streamed_text(tmp_path, reply) is None, why


def test_failed_attempts_must_match_the_log(tmp_path: Path) -> None:
    reply = _stream("", failed=["first try", ""])  # the second failed before any text
    _log(tmp_path, [_delta(reply.id, "first try", 0, 1), _delta(reply.id, "third", 0, 2)])
    assert streamed_text(tmp_path, reply) == "third"
    other = _stream("", failed=["another try"])
    _log(tmp_path / "x", [_delta(other.id, "first try", 0, 1), _delta(other.id, "third", 0, 2)])
    assert streamed_text(tmp_path / "x", other) is None


def test_no_log_or_a_damaged_one_gives_nothing(tmp_path: Path) -> None:
    reply = _stream("Hi")
    assert streamed_text(tmp_path, reply) is None
    _log(tmp_path, [], tail=b"\x00\xff not json\n{]\n")
    assert streamed_text(tmp_path, reply) is None


def test_the_log_an_older_version_kept_beside_a_new_one_is_read_too(tmp_path: Path) -> None:
    reply = _stream("He")
    (tmp_path / LOG_NAME).write_bytes(encode_records("w0", [_delta(reply.id, "Hello", 0, 1)]))
    assert streamed_text(tmp_path, reply) == "Hello"
    # A newer process made its own log meanwhile, without this reply's deltas.
    _log(tmp_path, [_delta(_stream().id, "other", 0, 1)])
    assert streamed_text(tmp_path, reply) == "Hello"


def test_a_log_that_is_a_link_is_not_read(tmp_path: Path) -> None:
    reply = _stream("He")
    elsewhere = tmp_path / "elsewhere.log"
    elsewhere.write_bytes(encode_records("w0", [_delta(reply.id, "Hello", 0, 1)]))
    ctx_dir = tmp_path / "ctx"
    ctx_dir.mkdir()
    (ctx_dir / LOG_NAME).symlink_to(elsewhere)
    assert streamed_text(ctx_dir, reply) is None
    (ctx_dir / SIGNALS_DIR).mkdir()
    (ctx_dir / SIGNALS_DIR / LOG_NAME).symlink_to(elsewhere)
    assert streamed_text(ctx_dir, reply) is None
