"""What a request shows the model: a branch's path, cleaned up for providers.

Failed replies and replies cancelled before they said anything are left out, and
every tool call is paired with a result (the engine always stores one, but a write can
fail or a file be skipped as corrupt). Nothing here writes; the gaps are filled in the
request only.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ._prefix_cache import PrefixCache
from .model import Message, MessageMetadata, MessageStatus, ToolCallStatus, answer_status

__all__ = ["call_ids", "for_request"]


# The time of every request's system message (see for_request).
_SYSTEM_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)


def for_request(path: list[Message], system_prompt: str | None) -> list[Message]:
    """The messages to send for ``path`` (root first), the system prompt first if any."""
    shown = _answer_every_call(path)
    if not system_prompt:
        return shown
    # A fixed time: the same prompt gives an equal message in every request, so the
    # caches that continue the previous request's work (see PrefixCache) match it.
    system = Message(id="system", role="system", content=system_prompt, created_at=_SYSTEM_TIME)
    return [system, *shown]


def _shown_to_model(message: Message) -> bool:
    # Failed replies, and replies cancelled before they said anything, are not part of
    # the conversation the model sees (some providers refuse empty assistant turns).
    if message.status is MessageStatus.ERROR:
        return False
    return not (
        message.role == "assistant"
        and message.status is MessageStatus.INTERRUPTED
        and not message.content
        and not message.tool_calls
    )


# What _answer_every_call gave for recent paths that left no call open: a turn's path
# is the last one plus a few messages, so only those are looked at. Like every
# PrefixCache it is bounded by the characters of the messages it keeps alive.
_ANSWERED: PrefixCache[list[Message]] = PrefixCache()


def _answer_every_call(path: list[Message]) -> list[Message]:
    # The messages shown to the model, each tool call paired with a result: providers
    # refuse a conversation in which a tool call has no result. One pass over what is
    # new since a recent path (as this runs for every request).
    start, known = _ANSWERED.longest(path)
    out: list[Message] = list(known) if known is not None else []
    # id -> the result to use if never answered: the call's recorded one, else an error
    open_calls: dict[str, tuple[str, ToolCallStatus]] = {}

    def close_open() -> None:
        for call_id, (text, outcome) in open_calls.items():
            out.append(
                Message(
                    id=f"missing-{call_id}"[:128],
                    role="tool",
                    content=text,
                    tool_call_id=call_id,
                    metadata=MessageMetadata(tool_status=outcome),
                )
            )
        open_calls.clear()

    for message in path[start:] if start else path:
        if message.status is not MessageStatus.COMPLETE and not _shown_to_model(message):
            continue
        if message.role == "tool" and message.tool_call_id in open_calls:
            del open_calls[message.tool_call_id]
        elif open_calls and message.role != "tool":
            close_open()
        out.append(message)
        for call in message.tool_calls:
            open_calls[call.id] = (
                (call.result, answer_status(call))
                if call.result
                else ("error: no result was recorded for this call", ToolCallStatus.FAILED)
            )
    if not open_calls and start != len(path):
        _ANSWERED.keep(path, list(out))
    close_open()
    return out


# The tool-call ids of recent paths: a reply that calls tools needs its ids unique on
# its path, and a turn's path is the last one plus a few messages.
_CALL_IDS: PrefixCache[frozenset[str]] = PrefixCache()


def call_ids(path: list[Message]) -> frozenset[str]:
    """The ids of every tool call the messages of ``path`` made."""
    start, known = _CALL_IDS.longest(path)
    if known is not None and start == len(path):
        return known
    new = [call.id for message in path[start:] for call in message.tool_calls]
    ids = known.union(new) if known is not None else frozenset(new)
    _CALL_IDS.keep(path, ids)
    return ids
