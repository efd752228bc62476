"""Replies whose writer died while streaming them: finding them, marking them ``interrupted``.

A process streaming a reply holds the OS lock on ``.streaming-<message id>.lock``
(:mod:`.streaming_locks`); the OS drops it when the process dies. A stream in the index
whose lock is free therefore lost its writer: with the context's write locks held, it is
marked ``interrupted``, keeping its partial text (:func:`interrupt_dead_streams`), with
what it streamed after its last checkpoint where the signal log has it (:mod:`.stream_tail`).

That takes a write (the message file and a journal line). A reader that cannot make it
(a read-only folder or file system, a full disk) still reads, and reads the reply as
marking would leave it, writing nothing (:mod:`.unmarked_streams`): ``interrupted`` with
the text it had reached, with a StoreWarning naming its file (:func:`warn_unmarked`), or,
if its final state reached the file but not the journal, that state, silently. The first
read or write that can write marks it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import CorruptDataError
from ..model import Message, MessageStatus, utcnow
from .atomic import atomic_write
from .base import IndexEntry
from .codec import encode_message_forms, read_message_file
from .diagnostics import warn
from .index import MessageIndex
from .oserrors import translate
from .oslock import LockTimeout, OSLock, lock_is_held
from .paths import message_path, streaming_lock_path
from .stream_tail import streamed_reasoning, streamed_text

__all__ = [
    "WRITER_DIED",
    "as_interrupted",
    "interrupt_dead_streams",
    "warn_unmarked",
    "writer_is_dead",
]

#: The error a reply whose writer died while streaming it is marked with.
WRITER_DIED = (
    "the process writing this reply stopped before it finished (it was killed, or its "
    "kernel or server died)"
)


def writer_is_dead(ctx_dir: Path, message_id: str) -> bool:
    """Whether nobody holds the streaming lock of ``message_id`` (one flock attempt).

    A writer creates its lock file before the entry is committed and removes it only
    after the stream ended, so no file means no live writer.
    """
    path = streaming_lock_path(ctx_dir, message_id)
    try:
        return not lock_is_held(path)
    except OSError as exc:
        raise translate(exc, path, "check the lock") from exc


def interrupt_dead_streams(index: MessageIndex, ctx_dir: Path, message_ids: list[str]) -> None:
    """Mark ``interrupted`` each of these streaming messages whose writer is gone.

    Runs with the context's write locks held, right after the index was refreshed;
    raises the package's errors (StoreIOError, StorageFullError, ...) if the folder
    cannot be written. A writer that died after replacing the message file with its final
    version but before journaling the new status did finish the message: the file wins,
    and its status (complete, error, ...) is journaled instead of ``interrupted``.
    """
    for message_id in message_ids:
        entry = index.entries[message_id]
        lock_path = streaming_lock_path(ctx_dir, entry.id)
        lock = OSLock(lock_path)
        try:
            lock.acquire(timeout=0)
        except LockTimeout:
            continue  # its writer is alive (in this process or another)
        except OSError as exc:
            raise translate(exc, lock_path, "lock") from exc
        try:
            _mark(index, ctx_dir, entry)
        finally:
            lock.close()
        # Only once marked: until then the stream keeps its (free) lock file. Best
        # effort: a lock file left over is removed when the context is next opened.
        with contextlib.suppress(OSError):
            lock_path.unlink(missing_ok=True)


def _mark(index: MessageIndex, ctx_dir: Path, entry: IndexEntry) -> None:
    """Mark one stream, its writer gone: its file (if readable), then the journal line."""
    path = message_path(ctx_dir, entry.id)
    status = MessageStatus.INTERRUPTED
    content: bytes | None = None
    size = 0
    try:
        message = read_message_file(path, entry.id)
    except CorruptDataError as exc:
        warn(f"could not keep the partial text of an interrupted reply: {exc}", path)
    else:
        if message.status is MessageStatus.STREAMING:
            message = as_interrupted(ctx_dir, message)
        else:
            status = message.status  # the final update reached the file
        data, content = encode_message_forms(message)
        size = len(data)
        # The journal line is the commit. Temporary file: see .leftovers.
        atomic_write(path, data, fsync=None, temp_dir=ctx_dir)
    index.append(
        entry.model_copy(update={"status": status}),
        at=utcnow().isoformat(),
        content=content,
        size=size,
    )


def as_interrupted(ctx_dir: Path, message: Message) -> Message:
    """``message`` (``streaming``, its writer gone) as marking it leaves it: ``interrupted``,
    with the text and reasoning it streamed after its last checkpoint where the signal
    log has them (:mod:`.stream_tail`), and why it was cut short. Reads nothing else."""
    update: dict[str, object] = {"status": MessageStatus.INTERRUPTED}
    text = streamed_text(ctx_dir, message)
    if text is not None:
        update["content"] = text
    meta: dict[str, object] = {}
    reasoning = streamed_reasoning(ctx_dir, message)
    if reasoning is not None:
        meta["reasoning"] = reasoning
    if message.metadata.error is None:  # why it is cut short, for a reader
        meta["error"] = WRITER_DIED
    if meta:
        update["metadata"] = message.metadata.model_copy(update=meta)
    return message.model_copy(update=update)


def warn_unmarked(ctx_dir: Path, message_id: str, error: Exception) -> None:
    """Report a dead stream that could not be marked ``interrupted`` (``error`` says
    why): it reads as marked all the same (see :mod:`.unmarked_streams`)."""
    warn(
        f"reply {message_id!r} of context {ctx_dir.name!r} was left 'streaming' by a "
        "process that died. It reads as interrupted, with the text it had reached (its "
        "file's, and what the signal log holds after it), but nothing was written: it "
        "will be marked interrupted by the first read or write that can write to its "
        f"folder. This one could not: {error}",
        message_path(ctx_dir, message_id),
    )
