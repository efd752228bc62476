"""What dead writers leave in a context folder, and its removal when the folder opens."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Container
from pathlib import Path

from .atomic import is_temp_name
from .oslock import lock_is_held
from .paths import STREAMING_PREFIX, STREAMING_SUFFIX

__all__ = ["remove_leftovers"]


def remove_leftovers(ctx_dir: Path, streaming_ids: Container[str]) -> None:
    """Remove what dead writers left: temporary files and unused streaming locks.

    Runs with every lock of the context held. Every write happens under the context
    lock, so a temporary file seen now belongs to a writer that died before its
    rename. A streaming lock file of a message that is not streaming (not in
    ``streaming_ids``) is left over (a writer that died between its journal line and
    the removal, or a probe that raced with the removal); one that an OS lock still
    holds belongs to a live process and stays. Streams whose writer died are finished
    by :mod:`.dead_streams`.

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
            with contextlib.suppress(OSError):
                (ctx_dir / name).unlink()


def _is_leftover(path: Path, streaming_ids: Container[str]) -> bool:
    name = path.name
    if is_temp_name(name):
        return True
    if not name.startswith(STREAMING_PREFIX):
        return False
    message_id = name[len(STREAMING_PREFIX) : -len(STREAMING_SUFFIX)]
    if message_id in streaming_ids:
        return False
    try:
        return not lock_is_held(path)
    except OSError:
        return False  # not a lock file this store made (a link, say): leave it
