"""Text (and reasoning) deltas held for the next batch, merged while they continue one
another.

A model streams a reply in many small chunks; the bus holds the deltas of a batch
back (see :mod:`cm_notebook.events`) and numbers, records and delivers them together.
Chunks of one message that continue each other (each starts where the one before it
ended) say no more as one delta than as many, so a batch keeps them as one
:class:`DeltaRun`: one number, one record in the signal log, one event for every
subscriber (a view, each SSE client), however many chunks the model sent meanwhile.
A reply's reasoning (:class:`~cm_notebook.signals.ReasoningDelta`) is held the same
way, in runs of its own: reasoning and text never join.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from .signals import ContentDelta, ReasoningDelta, trusted_delta, trusted_reasoning_delta

__all__ = ["RUN_LIMIT", "DeltaRun"]

#: The most characters a run merges into one delta: a signal says what changed, it is
#: no copy of the message (a longer chunk still makes one delta of its own).
RUN_LIMIT = 4096


class DeltaRun:
    """Contiguous text deltas of one message, waiting for their number.

    Called with a number, it is the bus's stamp for them: one :class:`ContentDelta`
    (a :class:`ReasoningDelta` if ``reasoning``) with their texts joined, at the offset
    of the first and the time of the first.
    """

    __slots__ = (
        "_context_id",
        "_pieces",
        "at",
        "branch",
        "end",
        "message_id",
        "offset",
        "reasoning",
    )

    def __init__(
        self,
        context_id: str,
        branch: str | None,
        message_id: str,
        text: str,
        offset: int,
        at: datetime,
        reasoning: bool = False,
    ) -> None:
        self._context_id = context_id
        self.reasoning = reasoning
        self.branch = branch
        self.message_id = message_id
        self.offset = offset
        self.end = offset + len(text)
        self.at = at
        self._pieces = [text]

    def continued_by(
        self,
        branch: str | None,
        message_id: str,
        text: str,
        offset: int,
        reasoning: bool = False,
    ) -> bool:
        """Whether a delta of ``message_id`` at ``offset`` starts where this run ends,
        is of the same kind (text or reasoning), and ``text`` still fits in it
        (:data:`RUN_LIMIT`)."""
        return (
            offset == self.end
            and reasoning == self.reasoning
            and message_id == self.message_id
            and branch == self.branch
            and offset + len(text) - self.offset <= RUN_LIMIT
        )

    def add(self, text: str) -> None:
        """Add the text of a delta that :meth:`continued_by` accepted."""
        self._pieces.append(text)
        self.end += len(text)

    def __call__(self, seq: int) -> ContentDelta | ReasoningDelta:
        pieces = self._pieces
        text = pieces[0] if len(pieces) == 1 else "".join(pieces)
        build: Callable[..., ContentDelta | ReasoningDelta] = (
            trusted_reasoning_delta if self.reasoning else trusted_delta
        )
        return build(
            self._context_id, self.branch, self.at, self.message_id, text, self.offset, seq
        )
