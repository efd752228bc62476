"""Dead streams a reader could not mark: read as marking them would leave them.

A stream in the index whose writer died is marked by the first reader that can write
(:mod:`.dead_streams`). One that cannot (a read-only mount, a folder without write
permission, a full disk) writes nothing, but still reads what that marking would
leave, so a read-only copy of a folder reads as a writable one does once opened:

* the writer replaced the message file with its final state (complete, error, ...)
  and was killed before, or while, it appended the journal line that commits it (a
  journal whose last line was cut off): the file's state is the message's, as the
  marking journals it. The reads show the file already; the index's status (``index()``,
  what ``check`` compares the files with) is the file's too, and there is no warning:
  nothing is wrong that the next writable open does not finish without a word;
* the file is still ``streaming``: the reply reads ``interrupted``, with the text and
  reasoning it streamed after its last checkpoint where the signal log holds them,
  and why it was cut short (:func:`~.dead_streams.as_interrupted`), with a StoreWarning
  saying that nothing could be written.

A stream's writer never comes back once its lock is free, so what a stream was found to
be stays true until a process that can write marks it, after which the index no longer
lists it as streaming and the files say the same: each is read once per loaded context.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import CMError
from ..model import Message, MessageStatus
from .base import IndexEntry
from .codec import read_message_file
from .dead_streams import as_interrupted, warn_unmarked
from .paths import message_path

__all__ = ["UnmarkedStreams"]


class UnmarkedStreams:
    """The dead streams of one context that this reader found and could not mark."""

    def __init__(self, ctx_dir: Path) -> None:
        self.dir = ctx_dir
        # id -> the message as marking leaves it (None: its file did not read). Replaced
        # whole, never changed in place: readers on other threads take it without a lock.
        self._found: dict[str, Message | None] = {}

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._found

    def record(self, message_ids: list[str], error: Exception) -> None:
        """Note streams whose writer died and that could not be marked (``error``: why),
        warning about each that reads ``interrupted`` (once per loaded context)."""
        found = dict(self._found)
        for message_id in message_ids:
            if message_id in found:
                continue
            marked = self._as_marked(message_id)
            found[message_id] = marked
            if marked is None or marked.status is MessageStatus.INTERRUPTED:
                warn_unmarked(self.dir, message_id, error)
        self._found = found

    def _as_marked(self, message_id: str) -> Message | None:
        try:
            message = read_message_file(message_path(self.dir, message_id), message_id)
        except (CMError, OSError):
            return None  # the readers report the file, by path
        if message.status is MessageStatus.STREAMING:
            return as_interrupted(self.dir, message)
        return message  # its final state reached the file: that is the message's

    def as_marked(self, message: Message) -> Message:
        """``message`` as read from its file, or as marking leaves it if it is one of
        these streams and its file still says ``streaming``."""
        if message.status is not MessageStatus.STREAMING:
            return message  # marked meanwhile, or finished in its file: as it is
        marked = self._found.get(message.id)
        return message if marked is None else marked.model_copy(deep=True)

    def entries(self, entries: Mapping[str, IndexEntry]) -> dict[str, IndexEntry]:
        """A copy of the index's ``entries``, each of these streams still listed as
        ``streaming`` given the status marking journals for it."""
        shown = dict(entries)
        for message_id, marked in self._found.items():
            entry = shown.get(message_id)
            if entry is None or entry.status is not MessageStatus.STREAMING:
                continue
            status = MessageStatus.INTERRUPTED if marked is None else marked.status
            shown[message_id] = entry.model_copy(update={"status": status})
        return shown

    def resolves(self, entry: IndexEntry) -> bool:
        """Whether ``entry`` is one of these streams, still ``streaming`` in the index:
        its file's status, whatever it is, is what the marking makes the index's."""
        return entry.status is MessageStatus.STREAMING and entry.id in self._found

    def clear(self) -> None:
        """Forget them (the context is closed; a reload finds them again)."""
        self._found = {}
