"""Tool rounds a dead process left open, read where its folder cannot be written.

A process killed while its tool calls waited for a decision (or ran) leaves them stored
``pending`` (or ``approved``, ``running``) with no answer. The next session that can
write to the context settles such a round (:mod:`cm_notebook._dead_rounds`). Where the
context's folder cannot be written (a read-only mount or copy, a folder without write
permission) nothing can settle it, and the stored calls would say for ever that they
wait, though no process waits for a decision: ``pending_tool_calls`` is empty, the
state is Idle, and a decision has nobody to reach.

Such a round is *stranded*. Readers show it as settling it will record it (the calls
denied as decided by nobody, "the process running this turn died ...", or failed when
cut off while running), without writing anything: :func:`as_ended`. A decision on one
of its calls is refused, saying why and what to do: :func:`cannot_decide`.

A round counts as stranded only while no live process holds the claim of a branch that
ends at its reply or at answers to it: a writer working through another path to the
same folder (a writable mount of what is read-only here) holds that claim while its
turn waits, and its calls are its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ._dead_rounds import round_at, settled_call
from ._unwritable import unwritable
from .errors import StoreIOError, ToolCallAlreadyResolvedError
from .model import Message, ToolCallStatus
from .store import Store
from .store.base import IndexEntry
from .store.oslock import lock_is_held

__all__ = ["as_ended", "cannot_decide", "may_hold_stranded", "stranded_replies"]

_OPEN = frozenset({ToolCallStatus.PENDING, ToolCallStatus.APPROVED, ToolCallStatus.RUNNING})


def _has_open_calls(message: Message) -> bool:
    return message.role == "assistant" and any(c.status in _OPEN for c in message.tool_calls)


def may_hold_stranded(messages: Sequence[Message]) -> bool:
    """Whether any of ``messages`` has a tool call left open (no I/O): only then may
    one of them be a stranded round's reply."""
    return any(_has_open_calls(message) for message in messages)


async def stranded_replies(
    store: Store, context_id: str, messages: Sequence[Message]
) -> dict[str, Message]:
    """Reply id -> the reply as settling its round will record it, for each reply among
    ``messages`` (a branch's path, or a whole tree) whose round is stranded (see the
    module). Empty, with nothing read, when none of them has a call left open."""
    replies = [message for message in messages if _has_open_calls(message)]  # usually none
    if not replies or unwritable(store, context_id) is None:
        return {}
    live = await _worked_on(store, context_id)
    by_id = {message.id: message for message in messages}
    ended: dict[str, Message] = {}
    for reply in replies:
        if live is None or reply.id in live:
            continue
        answers = _answers(reply, messages, by_id)
        calls = [settled_call(call, answers.get(call.id)) for call in reply.tool_calls]
        ended[reply.id] = reply.model_copy(update={"tool_calls": calls}, deep=True)
    return ended


async def as_ended(store: Store, context_id: str, messages: list[Message]) -> list[Message]:
    """``messages`` with each reply whose round is stranded shown as settling it will
    record it (see :func:`stranded_replies`); the same list when there is none."""
    ended = await stranded_replies(store, context_id, messages)
    if not ended:
        return messages
    return [ended.get(message.id, message) for message in messages]


def cannot_decide(call_id: str, why: StoreIOError) -> ToolCallAlreadyResolvedError:
    """The refusal of a decision on ``call_id``, a call of a stranded round; ``why``:
    the error a write into its folder meets (:func:`unwritable`)."""
    said = f"{why.path}: {os.strerror(why.errno)}" if why.errno is not None else str(why)
    return ToolCallAlreadyResolvedError(
        f"tool call {call_id!r} cannot be approved or denied here: the process whose turn "
        "asked for it is gone (it was killed, or its kernel restarted), so nothing waits "
        "for a decision, and this context's folder cannot be written here, so the round "
        f"cannot be settled in it ({said}). Open the context where its folder can be "
        "written (with write access, or a writable copy of it): opening it there records "
        "the call as denied, decided by nobody, and the conversation can go on"
    )


async def _worked_on(store: Store, context_id: str) -> set[str] | None:
    # The messages a live turn may still be working on: each branch whose claim a live
    # process holds, from its head up through the tool answers at its end (the reply
    # whose calls they answer included). None when a claim cannot be checked.
    path_of: Callable[[str, str], Path] | None = getattr(store, "branch_claim_path", None)
    if path_of is None:
        return None
    metadata = await store.get_metadata(context_id)
    entries: Mapping[str, IndexEntry] | None = None
    worked: set[str] = set()
    for name, branch in metadata.branches.items():
        if branch.head is None:
            continue
        try:
            if not lock_is_held(path_of(context_id, name)):
                continue
        except OSError:
            return None  # no locks to be had here: nothing is known to be dead
        if entries is None:
            entries = await store.index(context_id)
        worked.update(round_at(entries, branch.head))
    return worked


def _answers(
    reply: Message, messages: Sequence[Message], by_id: Mapping[str, Message]
) -> dict[str, Message]:
    # The tool messages among ``messages`` that answer ``reply``'s calls: those whose
    # chain of tool messages leads up to it.
    found: dict[str, Message] = {}
    for message in messages:
        if message.role != "tool" or not message.tool_call_id or message.tool_call_id in found:
            continue
        parent = by_id.get(message.parent_id) if message.parent_id else None
        while parent is not None and parent.role == "tool" and parent.parent_id:
            parent = by_id.get(parent.parent_id)
        if parent is not None and parent.id == reply.id:
            found[message.tool_call_id] = message
    return found
