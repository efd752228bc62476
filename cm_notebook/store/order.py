"""Messages in an order where every parent comes before its children.

A context's index numbers its messages in arrival order, which puts parents first
because a reply is written after its question. A rebuilt index cannot know arrival
order and numbers messages by creation time; clocks step back, and messages written
in one second by older versions share a time, so that order alone can put a reply
before its question. :func:`parents_first` keeps a given order wherever it already
has parents first and moves each message after its parent where not.

Damaged data can have messages no such order takes in: a message whose parent is
neither a file nor an entry any more, the messages after it, and parent links that
go round in a loop. :func:`unrooted` finds them, so that a rebuilt index leaves them
out (their files stay) and a check names them, rather than listing a conversation
that no read, show or export can walk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

__all__ = ["parents_first", "unrooted"]

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


def unrooted(parents: Mapping[str, str | None]) -> dict[str, str]:
    """The ids among ``parents`` (id -> parent id, None for a first message) whose
    parent links lead to no first message among them, each with what they lead to
    instead: ``"message 'x', which is missing or unreadable"`` (a parent not among
    them) or ``"a loop of parent links through 'a', 'b'"``. Every message after such
    a one is among them too. In time linear in the number of ids."""
    rooted: set[str] = set()
    broken: dict[str, str] = {}
    for start in parents:
        path: list[str] = []  # from ``start`` up, none of them settled yet
        on_path: dict[str, int] = {}
        at: str | None = start
        cause: str | None = None
        while at is not None and at not in rooted:
            known = broken.get(at)
            if known is not None:
                cause = known
            elif at not in parents:
                cause = f"message {at!r}, which is missing or unreadable"
            elif at in on_path:
                loop = ", ".join(map(repr, path[on_path[at] :]))
                cause = f"a loop of parent links through {loop}"
            else:
                on_path[at] = len(path)
                path.append(at)
                at = parents[at]
                continue
            break
        if cause is None:
            rooted.update(path)
        else:
            broken.update(dict.fromkeys(path, cause))
    return broken
