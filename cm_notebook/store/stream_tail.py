"""The text a dead writer streamed after its last checkpoint, read back from the signal log.

A reply's file holds its text as of its last checkpoint (one a second while it streams:
``cm_notebook.runner.CHECKPOINT_SECONDS``). Every chunk after that went to the context's
signal log as a text delta, written at once (not fsynced: it survives the writer's
process being killed, not a power loss). When a stream whose writer died is marked
``interrupted`` (:mod:`.dead_streams`), :func:`streamed_text` gives the text the reply
had reached, so a killed kernel loses only what it had not yet written anywhere.

It answers only when the log leaves no doubt, and otherwise keeps the checkpoint:

* the deltas of one attempt start at offset 0 and follow on without a gap (a retry
  starts a new attempt at 0; a gap or a delta that disagrees with the text before it
  ends what is known of that attempt);
* the attempts in the log must be the reply's failed attempts that had text (their
  texts equal, in order) and then one more, the attempt the writer died in; a log
  compacted past an attempt's start, or any other mismatch, gives ``None``;
* that last attempt's text must begin with the checkpoint's and be longer.

A thinking model's reasoning is read back the same way (:func:`streamed_reasoning`),
from its ``ReasoningDelta`` records: a model may reason for minutes, streaming nothing
else, before the next checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..model import Message
from .paths import LOG_NAME, SIGNALS_DIR

__all__ = ["streamed_reasoning", "streamed_text"]

# The log is compacted at a few MiB; a file far larger is not one to read whole here.
_LARGEST_LOG = 64 * 1024 * 1024


def streamed_text(ctx_dir: Path, message: Message) -> str | None:
    """The text ``message`` (a stream whose writer died) had reached, if longer than its
    stored text and certain (see the module docstring); else None.

    Reading the log is best effort: a log that is missing, unreadable, too large or a
    link gives None, and the stored text stands. The log in ``signals/`` is read, then
    the one an older version kept in the context folder itself: a writer of that
    version that died left its deltas there, and this may run before the log is moved
    (:func:`~cm_notebook.store.folders.signal_log_in`), or after a newer process made
    a log of its own beside it.
    """
    return _streamed(ctx_dir, message, "ContentDelta")


def streamed_reasoning(ctx_dir: Path, message: Message) -> str | None:
    """The reasoning ``message`` had reached, as :func:`streamed_text` gives its text
    (longer than its stored reasoning, and certain; else None)."""
    return _streamed(ctx_dir, message, "ReasoningDelta")


def _streamed(ctx_dir: Path, message: Message, kind: str) -> str | None:
    for path in (ctx_dir / SIGNALS_DIR / LOG_NAME, ctx_dir / LOG_NAME):
        data = _log_bytes(path)
        text = None if data is None else _text_from_log(data, message, kind)
        if text is not None:
            return text
    return None


def _log_bytes(path: Path) -> bytes | None:
    try:
        if os.path.islink(path.parent) or os.path.islink(path):
            return None
        if os.path.getsize(path) > _LARGEST_LOG:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _text_from_log(data: bytes, message: Message, kind: str) -> str | None:
    attempts = _attempts(data, message.id, kind)
    if not attempts or attempts[0] is None:
        return None  # the log was compacted past the start of an attempt
    failed = message.metadata.failed_attempts
    field = "text" if kind == "ContentDelta" else "reasoning"
    earlier = [text for text in (_attempt_text(a, field) for a in failed) if text]
    if len(attempts) != len(earlier) + 1 or attempts[:-1] != earlier:
        return None
    text = attempts[-1]
    stored = message.content if field == "text" else message.metadata.reasoning or ""
    if text is None or len(text) <= len(stored) or not text.startswith(stored):
        return None
    return text


def _attempts(data: bytes, message_id: str, kind: str) -> list[str | None]:
    # The text of each attempt whose deltas (of ``kind``) are in the log, in order: None
    # for deltas that do not start at offset 0 (the attempt's start was compacted away).
    needle = b'"message_id":' + json.dumps(message_id).encode()
    kind_needle = json.dumps(kind).encode()
    attempts: list[str | None] = []
    broken = False  # the current attempt had a gap: nothing after it is known
    for line in data.split(b"\n"):
        if needle not in line or kind_needle not in line:
            continue
        delta = _delta(line, message_id, kind)
        if delta is None:
            continue
        text, offset = delta
        if offset == 0:
            attempts.append(text)
            broken = False
            continue
        if not attempts:
            attempts.append(None)
        current = attempts[-1]
        if current is None or broken:
            continue
        if offset > len(current) or current[offset:] != text[: len(current) - offset]:
            broken = True  # a gap, or text that disagrees with what came before
            continue
        attempts[-1] = current + text[len(current) - offset :]
    return attempts


def _delta(line: bytes, message_id: str, kind: str) -> tuple[str, int] | None:
    # (text, offset) of a record that is a delta of ``kind`` of ``message_id``; None
    # otherwise.
    try:
        record = json.loads(line)
    except ValueError:
        return None
    event: Any = record.get("e") if isinstance(record, dict) else None
    if not isinstance(event, dict) or event.get("type") != kind:
        return None
    text, offset = event.get("text"), event.get("offset")
    if event.get("message_id") != message_id or not isinstance(text, str):
        return None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return None
    return text, offset


def _attempt_text(attempt: Any, field: str) -> str:
    text = attempt.get(field) if isinstance(attempt, dict) else None
    return text if isinstance(text, str) else ""
