"""Final states of replies that a full disk refused, written by the store's next write.

A FileStore holds a reply's streaming lock until the reply's final state is committed
(:mod:`.streaming_locks`). When that write fails (a full disk), the turn still ends: a
lock kept until the disk has room would show the reply as being generated for as long
as the process lives (to other processes, to ``branch()``, to ``show``). So the writer
lets go of the lock and hands the final state here (``FileStore.release_stream``):

* To other processes the reply is then a stream whose writer is gone (lock free), as
  after a crash: marked ``interrupted`` by the first of them that can write (see
  :mod:`.dead_streams`), read as left (``streaming``, with a warning) until then. The
  session that wrote it stores its own final state over that when it can.
* This FileStore does not take it for another writer's dead stream (no warning, no
  "writer died" mark): it writes the kept state first, under the write locks, at the
  start of its next write to the context. If that fails too, the write goes on without
  it, and the next one tries again.
* A kill before then leaves what a crash while streaming leaves (lock free, the reply
  ``streaming`` as last checkpointed), which readers mark ``interrupted``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import StoreError
from ..model import Message, MessageStatus, utcnow
from .atomic import atomic_write
from .base import IndexEntry
from .codec import encode_message_forms
from .index import MessageIndex
from .paths import message_path, streaming_lock_path

__all__ = ["RefusedFinals"]


class RefusedFinals:
    """The refused final states of one context's replies (callers hold its state lock)."""

    def __init__(self) -> None:
        self._kept: dict[str, Message] = {}

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._kept

    def __bool__(self) -> bool:
        return bool(self._kept)

    def keep(self, final: Message) -> None:
        """Write ``final`` with the next write (a later one replaces an earlier one)."""
        self._kept[final.id] = final

    def forget(self, message_id: str) -> None:
        """The message's final state was stored another way (an update that succeeded)."""
        self._kept.pop(message_id, None)

    def write(self, index: MessageIndex, ctx_dir: Path) -> None:
        """Store the kept final states, with the context's write locks held: the file,
        then the journal line (the commit). What fails is kept for the next write."""
        for message_id, final in list(self._kept.items()):
            entry = index.entries.get(message_id)
            if entry is None or entry.status is not MessageStatus.STREAMING:
                # Gone, or marked by another process first: the session that wrote it
                # stores its final state with an update of its own.
                del self._kept[message_id]
                continue
            try:
                data, content = encode_message_forms(final)
                # Temporary file: see .leftovers.
                atomic_write(message_path(ctx_dir, message_id), data, fsync=None, temp_dir=ctx_dir)
                index.append(
                    IndexEntry.of(final, entry.seq),
                    at=utcnow().isoformat(),
                    content=content,
                    size=len(data),
                )
            except (OSError, StoreError):
                return  # still no room: the next write tries again
            del self._kept[message_id]
            with contextlib.suppress(OSError):  # (else removed when the context opens)
                streaming_lock_path(ctx_dir, message_id).unlink(missing_ok=True)
