"""Text deltas held for the next batch, merged while they continue one another.

A model streams a reply in many small chunks; the bus holds the deltas of a batch
back (see :mod:`cm_notebook.events`) and numbers, records and delivers them together.
Chunks of one message that continue each other (each starts where the one before it
ended) say no more as one delta than as many, so a batch keeps them as one
:class:`DeltaRun`: one number, one record in the signal log, one event for every
subscriber (a view, each SSE client), however many chunks the model sent meanwhile.
"""

from __future__ import annotations

from datetime import datetime

from .signals import ContentDelta, trusted_delta

__all__ = ["RUN_LIMIT", "DeltaRun"]

#: The most characters a run merges into one delta: a signal says what changed, it is
#: no copy of the message (a longer chunk still makes one delta of its own).
RUN_LIMIT = 4096


class DeltaRun:
    """Contiguous text deltas of one message, waiting for their number.

    Called with a number, it is the bus's stamp for them: one :class:`ContentDelta`
    with their texts joined, at the offset of the first and the time of the first.
    """

    __slots__ = ("_context_id", "_pieces", "at", "branch", "end", "message_id", "offset")

    def __init__(
        self,
        context_id: str,
        branch: str | None,
        message_id: str,
        text: str,
        offset: int,
        at: datetime,
    ) -> None:
        self._context_id = context_id
        self.branch = branch
        self.message_id = message_id
        self.offset = offset
        self.end = offset + len(text)
        self.at = at
        self._pieces = [text]

    def continued_by(self, branch: str | None, message_id: str, text: str, offset: int) -> bool:
        """Whether a delta of ``message_id`` at ``offset`` starts where this run ends,
        and ``text`` still fits in it (:data:`RUN_LIMIT`)."""
        return (
            offset == self.end
            and message_id == self.message_id
            and branch == self.branch
            and offset + len(text) - self.offset <= RUN_LIMIT
        )

    def add(self, text: str) -> None:
        """Add the text of a delta that :meth:`continued_by` accepted."""
        self._pieces.append(text)
        self.end += len(text)

    def __call__(self, seq: int) -> ContentDelta:
        pieces = self._pieces
        text = pieces[0] if len(pieces) == 1 else "".join(pieces)
        return trusted_delta(
            self._context_id, self.branch, self.at, self.message_id, text, self.offset, seq
        )
