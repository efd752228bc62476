"""Messages in an order where every parent comes before its children.

A context's index numbers its messages in arrival order, which puts parents first
because a reply is written after its question. A rebuilt index cannot know arrival
order and numbers messages by creation time; clocks step back, and messages written
in one second by older versions share a time, so that order alone can put a reply
before its question. :func:`parents_first` keeps a given order wherever it already
has parents first and moves each message after its parent where not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["parents_first"]

T = TypeVar("T")


def parents_first(
    items: Iterable[T], id_of: Callable[[T], str], parent_of: Callable[[T], str | None]
) -> list[T]:
    """``items`` in their order, except that a parent among them always comes before
    its children. A parent not among ``items`` does not count; nor does a parent link
    in a cycle (damaged data), which is broken where the cycle was entered."""
    given = list(items)
    by_id = {id_of(item): item for item in given}
    placed: set[str] = set()
    ordered: list[T] = []
    for item in given:
        # The chain of ancestors not placed yet, nearest first; then placed root first.
        chain: list[T] = []
        seen: set[str] = set()
        node: T | None = item
        while node is not None:
            node_id = id_of(node)
            if node_id in placed or node_id in seen:
                break
            seen.add(node_id)
            chain.append(node)
            parent = parent_of(node)
            node = by_id.get(parent) if parent is not None else None
        for ancestor in reversed(chain):
            placed.add(id_of(ancestor))
            ordered.append(ancestor)
    return ordered
