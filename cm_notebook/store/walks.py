"""Recent walks from a branch head to the root, so the next walk stops where they start.

Every turn asks for the path of its branch (root to head) to build the request; a
walk follows parent links through the whole conversation, a cost that grows with its
length. Parent links never change, so a walk from a new head can stop at the first
message that was itself the head of a recent walk and take the rest from there: a
turn then walks the two or three messages it added.

The walks are valid for one index dict: when the index is loaded anew (another
writer's compaction, a rebuild), they are dropped.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["WalkCache"]

#: How many heads' walks are kept (a few branches in use at once).
KEPT = 8


class WalkCache:
    """Walks (head first) by head id, for the index dict they were made from."""

    def __init__(self) -> None:
        self._source: object = None
        self._walks: OrderedDict[str, list[str]] = OrderedDict()

    def for_index(self, entries: object) -> None:
        """Use the walks only with ``entries``; forget them if they were made from another."""
        if entries is not self._source:
            self._walks.clear()
            self._source = entries

    def get(self, head: str) -> list[str] | None:
        """The walk from ``head`` (head first), if one is kept. Do not change it."""
        return self._walks.get(head)

    def keep(self, head: str, ids: list[str]) -> None:
        """Remember the walk ``ids`` from ``head``."""
        self._walks[head] = ids
        self._walks.move_to_end(head)
        while len(self._walks) > KEPT:
            self._walks.popitem(last=False)
