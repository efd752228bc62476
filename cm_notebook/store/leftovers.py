"""What dead writers leave in a context folder, and its removal when the folder opens."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Container
from pathlib import Path

from ..errors import CMError
from ..ids import validate_message_id
from ..model import MessageStatus
from .atomic import is_temp_name
from .codec import read_message_file
from .oslock import lock_is_held
from .paths import STREAMING_PREFIX, STREAMING_SUFFIX, message_path

__all__ = ["remove_leftovers"]


def remove_leftovers(
    ctx_dir: Path, streaming_ids: Container[str], indexed: Callable[[str], bool]
) -> None:
    """Remove what dead writers left: temporary files, unused streaming locks, and the
    placeholders of replies whose append never committed.

    Runs with every lock of the context held. Every write happens under the context
    lock, so a temporary file seen now belongs to a writer that died before its
    rename. A streaming lock file of a message that is not streaming (not in
    ``streaming_ids``) is left over (a writer that died between its journal line and
    the removal, or a probe that raced with the removal); one that an OS lock still
    holds belongs to a live process and stays. Streams whose writer died are finished
    by :mod:`.dead_streams`.

    A reply's append takes its streaming lock, writes the placeholder's file, then
    commits it with a journal line. A writer killed between the file and the line
    leaves the lock and a placeholder file the index does not list (``indexed(id)``
    is False): an empty, never acknowledged reply, removed with its lock (the file
    first: a sweep cut short finds the lock again). A file with any text or tool call
    is not such a placeholder (checkpoints come only after the commit) and stays, for
    ``check`` to report.

    Only the context folder is listed, never ``messages/``, whose size grows with the
    conversation: message files are written through temporary files in the context
    folder (``atomic_write(temp_dir=...)``). Message files a power loss took are
    restored when they are read or before compaction.
    """
    try:
        names = os.listdir(ctx_dir)
    except OSError:
        return  # reported by the reads that need the folder
    for name in names:
        if name.startswith(".") and _is_leftover(ctx_dir / name, streaming_ids):
            message_id = _streaming_id(name)
            if message_id is not None and not indexed(message_id):
                _remove_uncommitted_placeholder(ctx_dir, message_id)
            with contextlib.suppress(OSError):
                (ctx_dir / name).unlink()


def _streaming_id(name: str) -> str | None:
    # The message id a streaming lock file is named after (None: not such a file).
    if not (name.startswith(STREAMING_PREFIX) and name.endswith(STREAMING_SUFFIX)):
        return None
    return name[len(STREAMING_PREFIX) : -len(STREAMING_SUFFIX)]


def _remove_uncommitted_placeholder(ctx_dir: Path, message_id: str) -> None:
    try:
        path = message_path(ctx_dir, validate_message_id(message_id))
        message = read_message_file(path, message_id)
    except (CMError, OSError):
        return  # no file (killed before writing it), or not one to judge: left alone
    if message.status is MessageStatus.STREAMING and not message.content and not message.tool_calls:
        with contextlib.suppress(OSError):
            path.unlink()


def _is_leftover(path: Path, streaming_ids: Container[str]) -> bool:
    name = path.name
    if is_temp_name(name):
        return True
    message_id = _streaming_id(name)
    if message_id is None:
        return False
    if message_id in streaming_ids:
        return False
    try:
        return not lock_is_held(path)
    except OSError:
        return False  # not a lock file this store made (a link, say): leave it
