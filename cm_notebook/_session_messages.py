"""The messages a session has read or written, kept so a turn reads only what is new.

Building a request needs every message on a branch's path. Reading them all from disk
on every turn makes a conversation's cost grow with the square of its length, so a
session keeps the messages it has seen in a :class:`MessageCache` and asks the store
only for the ids it does not hold. The path of a branch (ids, root first) comes from
the store: the store notices other processes' writes (new messages, moved heads)
through its change detection, and the new ids are then read from disk. A turn knows
the message it builds on (its head), and a message's parent never changes, so when the
messages from that head up to a path served before are all kept, the turn's path is
put together from them without asking the store at all.

Only *settled* messages are kept: a message file is rewritten while its reply streams
(checkpoints, the final state), and an assistant message records what became of its
tool calls until each has a result. A message that is finished and whose tool calls
all have results is never rewritten (scores and other annotations live in files of
their own), so a kept copy stays true in every process. Unsettled messages are read
from disk each time.

Memory stays bounded by what is in use: the cache remembers the paths of the last
:data:`KEPT_PATHS` branches it served, and drops messages that are on none of them
once it holds noticeably more than those paths need.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from .model import Message, MessageStatus, ToolCallStatus
from .store import Store
from .store.dead_streams import WRITER_DIED

__all__ = ["KEPT_PATHS", "MessageCache", "is_settled"]

#: How many branches' paths a session keeps the messages of.
KEPT_PATHS = 16

#: How far up from a head the kept messages are followed before the store is asked.
_WALK_LIMIT = 64

_FINAL_CALL = frozenset({ToolCallStatus.DONE, ToolCallStatus.FAILED, ToolCallStatus.DENIED})


def is_settled(message: Message) -> bool:
    """True if ``message`` will never be rewritten: finished, every tool call answered."""
    if message.status is MessageStatus.STREAMING:
        return False
    if message.metadata.error == WRITER_DIED:
        # Marked by a process that found its writer's lock free: also when the writer
        # lives on after a full disk refused the reply's final state (it let go of the
        # lock: store/refused_finals.py), and writes that state over the mark later.
        return False
    return all(
        call.status in _FINAL_CALL and call.result is not None for call in message.tool_calls
    )


class MessageCache:
    """Settled messages by id, for the paths in use (see the module docstring).

    Thread-safe: a session reads paths on its own loop (requests) and on its store
    thread (synchronous calls). The messages handed out are shared, not copies: callers
    inside the package only read them; public reads copy them first.
    """

    def __init__(self, kept_paths: int = KEPT_PATHS) -> None:
        self._lock = threading.Lock()
        self._messages: dict[str, Message] = {}
        self._paths: OrderedDict[str, list[str]] = OrderedDict()
        self._kept_paths = kept_paths
        # Per branch, the longest settled beginning of its last path: (ids, messages).
        self._prefixes: dict[str, tuple[list[str], list[Message]]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    def remember(self, message: Message) -> None:
        """Keep ``message`` if it is settled (a message just stored, or just read)."""
        if is_settled(message):
            with self._lock:
                self._messages[message.id] = message

    def lookup(self, ids: Iterable[str]) -> tuple[dict[str, Message], list[str]]:
        """The kept messages among ``ids``, and the ids that must be read."""
        found: dict[str, Message] = {}
        missing: list[str] = []
        with self._lock:
            for message_id in ids:
                message = self._messages.get(message_id)
                if message is None:
                    missing.append(message_id)
                else:
                    found[message_id] = message
        return found, missing

    def used(self, key: str, ids: list[str]) -> None:
        """Note that the path ``key`` (a branch) is ``ids`` now; drop what no path needs."""
        with self._lock:
            self._paths[key] = ids
            self._paths.move_to_end(key)
            while len(self._paths) > self._kept_paths:
                dropped, _ids = self._paths.popitem(last=False)
                self._prefixes.pop(dropped, None)
            # Pruning walks every kept path: only when the cache clearly outgrew them
            # (the sum of their lengths bounds what they need), so it is rare.
            needed = sum(len(path) for path in self._paths.values())
            if len(self._messages) <= 2 * needed + 64:
                return
            keep = {message_id for path in self._paths.values() for message_id in path}
            self._messages = {k: m for k, m in self._messages.items() if k in keep}

    def forget_path(self, key: str) -> None:
        """A branch is gone: its path no longer keeps messages (dropped on next prune)."""
        with self._lock:
            self._paths.pop(key, None)
            self._prefixes.pop(key, None)

    async def path_messages(
        self, store: Store, context_id: str, branch: str, head: str | None = None
    ) -> tuple[list[str], list[Message]]:
        """The ids of ``branch``'s path and its messages, root first, reading only those
        not kept.

        ``head``: the message the caller builds on (a turn's own head, which is the
        branch's head unless a writer that did not claim the branch moved it), if it
        knows it. When the messages from there up to the branch's last served path are
        all kept, the path ending at ``head`` is served from them with no store call.

        Unreadable message files are skipped (with the store's warning), as
        :meth:`Store.get_messages` does, so there can be fewer messages than ids.
        """
        if head is not None:
            kept = self._path_to(branch, head)
            if kept is not None:
                ids, messages = kept
                self.used(branch, ids)
                with self._lock:
                    self._prefixes[branch] = (ids, messages)
                return list(ids), list(messages)
        ids = await store.path(context_id, branch)
        if head is not None and (not ids or ids[-1] != head):
            # A writer that did not claim the branch moved it past (or away from) the
            # caller's head: the path is the one ending at ``head``, never the other's.
            ids = (
                ids[: ids.index(head) + 1]
                if head in ids
                else await _ids_up_to(store, context_id, head)
            )
        start, messages = self._settled_prefix(branch, ids)
        found, missing = self.lookup(ids[start:] if start else ids)
        if missing:
            for message in await store.get_messages(context_id, missing):
                found[message.id] = message
                self.remember(message)
        settled, extending = start, True
        for message_id in ids[start:]:
            item = found.get(message_id)
            if item is None:
                extending = False  # skipped (unreadable): ids and messages part ways here
                continue
            messages.append(item)
            if extending and is_settled(item):
                settled += 1
            else:
                extending = False
        self.used(branch, ids)
        if settled > start:
            with self._lock:
                self._prefixes[branch] = (ids[:settled], messages[:settled])
        return ids, messages

    def _path_to(self, branch: str, head: str) -> tuple[list[str], list[Message]] | None:
        # The path ending at ``head`` from kept messages alone: follow parents up from
        # ``head`` to the end of the branch's settled prefix (or to the root). None if a
        # message on the way is not kept or the walk is long (a different fork).
        with self._lock:
            known_ids, known_messages = self._prefixes.get(branch, ([], []))
            end = known_ids[-1] if known_ids else None
            walked: list[Message] = []
            current: str | None = head
            while current is not None and current != end:
                message = self._messages.get(current)
                if message is None or len(walked) == _WALK_LIMIT:
                    return None
                walked.append(message)
                current = message.parent_id
        walked.reverse()
        if current is None:  # reached the root: the prefix is not on this path
            return [m.id for m in walked], walked
        return known_ids + [m.id for m in walked], known_messages + walked

    def _settled_prefix(self, branch: str, ids: list[str]) -> tuple[int, list[Message]]:
        # How many of ``ids`` begin as the settled part of the branch's last path did,
        # and a new list of those messages: a turn's path is the last one plus a few,
        # and settled messages never change, so only the rest is looked up.
        with self._lock:
            known = self._prefixes.get(branch)
        if known is None:
            return 0, []
        known_ids, known_messages = known
        count = len(known_ids)
        if count > len(ids) or ids[count - 1] != known_ids[-1] or ids[:count] != known_ids:
            return 0, []
        return count, list(known_messages)


async def _ids_up_to(store: Store, context_id: str, head: str) -> list[str]:
    # The ids from the root to ``head``, by the parents the store's index knows.
    entries = await store.index(context_id)
    ids: list[str] = []
    current: str | None = head
    while current is not None and len(ids) <= len(entries):  # a damaged loop ends
        entry = entries.get(current)
        if entry is None:
            break  # not in the tree (any more): the path as far as it goes
        ids.append(current)
        current = entry.parent_id
    return ids[::-1]
