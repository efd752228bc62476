"""Message files made durable a few at a time, so compaction never stalls one turn.

A finished message is committed by its fsync'd journal line; its file is written
without an fsync (see :mod:`.repair`). Before compaction drops the journal's copies,
those files must be durable. Done all at compaction, that is one fsync per message
written since the last one: with compaction at geometric intervals, the turn that
compacts a 1,000-message conversation would wait for hundreds of fsyncs.

So a store notes each message it commits (:class:`OwedFlushes`), and once
:data:`FLUSH_EVERY` different messages are owed, the write that commits the last one
fsyncs the batch and the ``messages`` folder. A message committed several times before
its batch (a tool call's status, saved as the call is approved, runs and returns) is
one file, fsync'd once, in its latest version. Compaction then fsyncs only what is
still owed (and what other writers committed). The fsyncs are at most as many as
before, plus one of the folder per batch; a write waits for at most one batch of them.

What a batch made durable is one version of a message: the one whose copy sits at a
given place in the journal. A message committed again (a tool call's result written
by ``update_message``, by this store or another process) has a new copy further on,
and its new file is fsync'd again, by a later batch or by compaction. The places are
forgotten when the journal is folded or read anew (another process folded or rebuilt
it), since a new journal's places name other copies.
"""

from __future__ import annotations

from .atomic import Fsync
from .index import MessageIndex
from .repair import repair_files

__all__ = ["FLUSH_EVERY", "OwedFlushes"]

#: Committed message files (different messages) per batch of fsyncs.
FLUSH_EVERY = 32
_KEPT = 65_536  # flushed copies remembered at most (compaction forgets them sooner)


class OwedFlushes:
    """The fsyncs one store owes the files of the messages it committed."""

    def __init__(self) -> None:
        #: The messages whose files are owed an fsync, in the order committed (a dict
        #: as an ordered set: a message committed again is still one file).
        self.owed: dict[str, None] = {}
        #: Journal copies (message id -> offset, length, size) whose files were fsync'd
        #: since the journal was last folded or read anew: compaction skips exactly these.
        self.flushed: dict[str, tuple[int, int, int]] = {}

    def note(self, message_id: str) -> None:
        """``message_id`` was committed with its copy in the journal."""
        self.owed[message_id] = None

    def due(self) -> bool:
        """Whether a batch is owed."""
        return len(self.owed) >= FLUSH_EVERY

    def pay(self, index: MessageIndex, fsync: Fsync) -> None:
        """fsync the owed files (restoring any a power loss took) and their folder.

        On an error nothing is marked flushed: compaction does it later.
        """
        batch, self.owed = list(self.owed), {}
        repair_files(index, fsync, flush=True, only=batch)
        if len(self.flushed) >= _KEPT:
            self.flushed.clear()  # only costs compaction an fsync per file
        for message_id in batch:
            copy = index.copy_of(message_id)  # what repair_files just made durable
            if copy is not None:
                self.flushed[message_id] = copy

    def journal_reloaded(self) -> None:
        """The journal was read anew: its places may now hold other copies."""
        self.flushed.clear()

    def clear(self) -> None:
        """The journal was folded (or the state reloaded): nothing is owed."""
        self.owed.clear()
        self.flushed.clear()
