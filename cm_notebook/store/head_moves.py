"""The branches whose heads journal lines moved since metadata.json was written.

metadata.json holds the branch heads as of its ``heads_at``; the journal lines after
it may move heads (every turn moves one). :class:`HeadMoves` gives the branches those
lines moved, for :class:`~.context.ContextState` to merge into the metadata it serves.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..model import Branch, ContextMetadata
from .index import MessageIndex

__all__ = ["HeadMoves"]


class HeadMoves:
    """Moved branches, each remembered as last merged (callers hold the state lock)."""

    def __init__(self) -> None:
        # A moved branch as last merged: name -> (the base's branch, the move, the
        # result). A sweep's context moves hundreds of heads between two compactions:
        # each merge after a write copies only the branches that moved since.
        self._moved: dict[str, tuple[Branch, tuple[int, str | None], Branch]] = {}

    def branches(
        self, base: ContextMetadata, index: MessageIndex, heads_at: int
    ) -> dict[str, Branch]:
        """The branches of ``base`` whose heads journal lines since ``heads_at`` moved."""
        moved = {}
        loaded = index.loaded_heads
        if loaded is not None and len(loaded) < len(base.branches):
            # The moves the journal holds, not every branch: a context with hundreds of
            # branches (a sweep's) moves a few heads between two compactions.
            moves: Iterable[tuple[str, tuple[int, str | None] | None]] = loaded.items()
        else:
            moves = ((name, index.head_move(name)) for name in base.branches)
        for name, move in moves:
            branch = base.branches.get(name)
            if branch is None or move is None:
                continue  # a move of a branch deleted since (or none at all)
            if move[0] >= heads_at and branch.head != move[1]:
                known = self._moved.get(name)
                if known is not None and known[0] is branch and known[1] == move:
                    moved[name] = known[2]
                    continue
                moved[name] = branch.model_copy(update={"head": move[1]})
                self._moved[name] = (branch, move, moved[name])
        if len(self._moved) > 2 * len(moved) + 64:  # moves folded in by a compaction
            self._moved = {name: self._moved[name] for name in moved}
        return moved
