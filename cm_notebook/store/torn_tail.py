"""Telling a journal cut short mid-line from a write killed mid-line.

A journal that ends without its newline is normal: a writer was killed (or lost power)
while appending its last line. That line's change was never acknowledged (the call
returns only after the line's fsync), so readers ignore the fragment and the next
writer cuts it off. The same fragment is what a journal cut short by something else
leaves (a backup copied while it was written, a partial restore, damage), and then
the lines after it are gone: finished turns, acknowledged long ago, would vanish
without a word.

What tells the two apart costs the write path nothing: the message files. A message's
file is written before the line that commits it, and a message can only be added to
one the index lists, so a killed append leaves at most one unlisted file, whose parent
the index lists. When, with the lock held, the journal ends in a fragment and some
unlisted message file names another unlisted, finished message as its parent, that
parent's line was complete when the child was added: lines were lost after it, and the
index is rebuilt from ``messages/`` (with a warning, and a ``recovered`` branch for the
conversations whose head moves were in the lost lines: see :mod:`.recovered`).

A reader that cannot take the lock because it cannot write to the folder (read-only
permissions, a read-only mount) cannot rebuild anything: it makes the same check
without the lock (:meth:`TornTails.unwritable`), writes nothing, and, if lines were
lost, warns that the conversation reads shorter than it is and how to repair it.

A journal cut inside the line of its last message, or cut exactly between two lines,
leaves nothing of the kind to go by: it reads as the shorter journal it now is (the
branch head check of :mod:`.context` still catches a cut that takes a head saved in
metadata.json), and ``cm-notebook check`` lists the message files it hides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidIdError, StoreError
from ..ids import validate_message_id
from ..model import Message, MessageStatus
from .codec import read_message_file
from .diagnostics import warn
from .index import MessageIndex
from .snapshot import RebuildNeeded

if TYPE_CHECKING:
    from .context import ContextState

__all__ = ["TornTails", "lines_lost_before"]

_SUFFIX = ".json"
_SHOWN = 5  # ids named in the warning


class TornTails:
    """Checks a journal's trailing fragment once (per journal, place and size)."""

    def __init__(self) -> None:
        self._cleared: tuple[int, int, int, int] | None = None
        self._tried: tuple[int, int, int, int] | None = None

    def reader_due(self, index: MessageIndex) -> bool:
        """Whether a reader should try the lock (without waiting) to have a fragment it
        found checked: once per fragment, as a writer may be writing that line."""
        tail = index.torn_tail
        if tail is None or tail in (self._cleared, self._tried):
            return False
        self._tried = tail
        return True

    def due(self, index: MessageIndex) -> bool:
        """Whether :meth:`check` has work to do (a fragment not checked yet)."""
        tail = index.torn_tail
        return tail is not None and tail != self._cleared

    def check(self, index: MessageIndex, messages_dir: Path) -> None:
        """With the context's lock held, right after a refresh: raise RebuildNeeded if
        the journal's fragment is where lines were lost (see the module docstring)."""
        tail = index.torn_tail
        if tail is None or tail == self._cleared:
            return
        reason = lines_lost_before(index, messages_dir)
        if reason is not None:
            raise RebuildNeeded(reason, index.journal_path)
        # A write killed mid-line: the next write cuts the fragment off.
        self._cleared = tail

    def unwritable(self, refused: OSError | None, state: ContextState) -> None:
        """After a reader's try for the lock to check a fragment (:meth:`reader_due`):
        if it failed because the folder cannot be written (``refused``), check without
        the lock, writing nothing, and warn if lines were lost (a StoreWarning naming
        the journal, saying what is wrong and what to do). Once per fragment."""
        if refused is None:
            return
        with state.state_lock:
            index = state.index
            tail = index.torn_tail
            if tail is None or tail == self._cleared:
                return
            reason = lines_lost_before(index, Path(state.messages_dir))
            journal = index.journal_path
        if reason is None or not _unchanged(journal, tail):
            # A write killed mid-line, or the journal grew meanwhile: someone who can
            # write is writing it, and its lines are not lost.
            return
        warn(
            f"context {state.context_id!r}: {reason}. This process cannot write to the "
            f"context's folder ({refused}), so the index was not rebuilt and nothing was "
            "written: the conversation reads without those messages. Open it with write "
            "access (the first reader that can write rebuilds the index, keeping every "
            "message), or run `cm-notebook check --repair` as a user who can write to it.",
            journal,
        )


def _unchanged(journal: Path, tail: tuple[int, int, int, int]) -> bool:
    try:
        now = os.stat(journal)
    except OSError:
        return False
    return (now.st_dev, now.st_ino, now.st_size) == (tail[0], tail[1], tail[3])


def lines_lost_before(index: MessageIndex, messages_dir: Path) -> str | None:
    """Why the lines after the journal's fragment were lost, or None if the message
    files do not show that any were (see the module docstring)."""
    try:
        names = os.listdir(messages_dir)
    except OSError:
        return None  # no telling: the readers report the folder
    unlisted: list[str] = []
    for name in names:
        if not name.endswith(_SUFFIX):
            continue
        message_id = name[: -len(_SUFFIX)]
        try:
            validate_message_id(message_id)
        except InvalidIdError:
            continue  # not a message file the store wrote
        if index.lookup(message_id) is None:
            unlisted.append(message_id)
    if len(unlisted) < 2:
        return None  # at most the file of the append that was killed
    found: dict[str, Message] = {}
    for message_id in unlisted:
        try:
            found[message_id] = read_message_file(
                messages_dir / f"{message_id}{_SUFFIX}", message_id
            )
        except (StoreError, OSError):
            continue  # unreadable: the rebuild, if any, reports it
    continued = sorted(
        {
            mid
            for message in found.values()
            if (parent := found.get(message.parent_id or "")) is not None
            and parent.status is not MessageStatus.STREAMING
            for mid in (parent.id, message.id)
        },
        key=lambda mid: (found[mid].created_at, mid),
    )
    if not continued:
        return None
    shown = ", ".join(map(repr, continued[:_SHOWN])) + (", ..." if len(continued) > _SHOWN else "")
    return (
        "message_index.journal ends in the middle of a line, and lines after it were lost: "
        f"it no longer lists {len(continued)} messages whose files go on from one another "
        f"({shown}), which a write killed mid-line cannot leave (the journal was cut short, "
        "or copied while it was being written)"
    )
