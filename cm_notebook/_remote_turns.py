"""Turns other processes run on a context's branches, from the signals that say so.

The log follower (:mod:`cm_notebook._follower`) keeps one :class:`RemoteTurn` per branch
another process announced busy (a ``StateChanged`` to an active state) until that
process announces its end (a ``StateChanged`` to a resting state: Idle, or
PermanentFailure when its tries ran out). A process killed mid-turn announces nothing more, so this
process announces the turn's end itself (:mod:`cm_notebook._dead_rounds`): the reply
it was writing, which nothing else names once the branch has moved on, is therefore
tracked here too, from the turn's ``MessageAdded`` and ``ContentDelta`` signals until
its ``MessageCompleted``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import fsm
from .signals import (
    ContentDelta,
    Event,
    MessageAdded,
    MessageCompleted,
    ReasoningDelta,
    StateChanged,
)

__all__ = ["RemoteTurn", "RemoteTurns", "track_turn"]


@dataclass
class RemoteTurn:
    """A turn another process runs on a branch, as far as its signals told.

    One object per turn: whoever ends it (its own Idle, or this process announcing it
    over) removes this very object, so an announcement prepared for a turn never ends
    another that began since.
    """

    #: The state it announced last.
    state: fsm.State
    #: Its id (``StateChanged.turn_id``), if it gave one.
    turn_id: str | None = None
    #: The reply it is writing: announced added or streamed, and not completed yet.
    reply: str | None = None
    #: Its end is being announced by this process (its owner died).
    ending: bool = False


#: Branch -> the turn another process runs there.
RemoteTurns = dict[str, RemoteTurn]


def track_turn(turns: RemoteTurns, event: Event) -> None:
    """Update ``turns`` with what ``event``, another process's signal, says."""
    branch = event.branch
    if branch is None:
        return
    if isinstance(event, StateChanged):
        turn = turns.get(branch)
        # A turn ends in Idle or in PermanentFailure (its tries ran out): either way it
        # is over, and its process has nothing more to say about it.
        if event.new in fsm.RESTING_STATES:
            turns.pop(branch, None)
        elif turn is None or event.old in fsm.RESTING_STATES:
            turns[branch] = RemoteTurn(event.new, event.turn_id)  # a turn begins
        else:
            turn.state = event.new
            turn.turn_id = event.turn_id or turn.turn_id
        return
    turn = turns.get(branch)
    if turn is None:
        return
    if isinstance(event, MessageAdded) and event.role == "assistant":
        turn.reply = event.message_id
    elif isinstance(event, (ContentDelta, ReasoningDelta)):
        # Its MessageAdded may be older than the log keeps (a compaction), its text (or
        # its reasoning, which a thinking model streams first) not.
        turn.reply = event.message_id
    elif isinstance(event, MessageCompleted) and event.message_id == turn.reply:
        turn.reply = None
