"""Every write one turn makes, each extending the head the turn started from.

The store step of the send path (session -> turn runner -> state machine -> provider
-> **store** -> signals). A :class:`TurnWrites` belongs to one
:class:`~cm_notebook.runner.TurnRunner`. It knows the head the turn started from (the
user's message, or the prompt a regenerate rewound to) and moves it only by a
compare-and-set, so a turn never appends after another writer's messages.

If the head moved anyway (a writer that did not claim the branch, e.g. an older
version of this package), the turn's messages are not lost and do not interleave with
the other writer's: they go on a new branch ``<branch>-conflict-<n>`` forked at the
turn's own head, announced with ``BranchCreated``, and the rest of the turn writes
there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import anyio

from . import events as ev
from ._host import TurnHost
from ._unicode import without_surrogates
from .errors import (
    BranchExistsError,
    BranchMovedError,
    CMError,
    StoreError,
    StoreLockTimeoutError,
)
from .ids import new_branch_stem
from .model import FailedAttempt, Message, MessageMetadata, TokenUsage, ToolCall, answer_status
from .providers.base import ToolCallRequest, Usage
from .stats import StreamMeter
from .store import Store

__all__ = ["Reply", "TurnWrites", "settle_append", "store_trouble"]


async def settle_append(store: Store, context_id: str, branch: str, message: Message) -> bool:
    """After an append to ``branch`` failed (e.g. a full disk): True if ``message`` is
    on the branch now.

    An append can fail after its commit point, leaving the message in the tree but on
    no branch. This finishes the head move (a compare-and-set from the message's
    parent), so a message is either on its branch or not stored at all, never an
    orphan nobody acknowledged. False if it was not stored or the move fails too.
    """
    try:
        if message.id not in await store.index(context_id):
            return False
        if (await store.get_metadata(context_id)).branches[branch].head == message.id:
            return True  # the move was made too (an fsync that failed after the commit)
        await store.set_branch_head(context_id, branch, message.id, expected_head=message.parent_id)
    except (OSError, CMError, KeyError):
        return False
    return True


@dataclass
class Reply:
    """The assistant message being generated, and what has arrived for it so far."""

    message: Message
    tool_requests: list[ToolCallRequest] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    failed_attempts: list[FailedAttempt] = field(default_factory=list)
    meter: StreamMeter = field(default_factory=StreamMeter)  # its streaming statistics
    # The text as pieces, joined when read: ``text += chunk`` on an attribute copies the
    # whole text for every chunk, so a long reply cost more per chunk the longer it got.
    _parts: list[str] = field(default_factory=list)
    _length: int = 0
    # What the model said besides its answer (of the current attempt): its reasoning,
    # the blocks to send back (Anthropic's signed thinking), and whether the text is a
    # refusal. See MessageMetadata.
    reasoning_parts: list[str] = field(default_factory=list)
    reasoning_blocks: list[dict[str, str]] = field(default_factory=list)
    refused: bool = False
    reasoning_field: str | None = None  # the JSON field the reasoning came in
    reasoning_length: int = 0  # of the reasoning so far: the next reasoning delta's offset
    # By call id: the arguments the model wrote as text no ToolCall can hold.
    unkept_arguments: dict[str, str] = field(default_factory=dict)

    def reason(self, text: str, field_name: str) -> int:
        """Keep a piece of reasoning, and the field it came in (the first one's);
        returns the length of the reasoning before it (its offset)."""
        if not self.reasoning_parts:
            self.reasoning_field = field_name or None
        self.reasoning_parts.append(text)
        offset = self.reasoning_length
        self.reasoning_length = offset + len(text)
        return offset

    def said(self) -> dict[str, Any]:
        """The reply's metadata fields for its reasoning and refusal (current attempt)."""
        return {
            # Whole characters, as the store keeps it (an emoji split between chunks).
            "reasoning": without_surrogates("".join(self.reasoning_parts)) or None,
            "reasoning_blocks": list(self.reasoning_blocks),
            "refusal": self.refused,
            "reasoning_field": self.reasoning_field if self.reasoning_parts else None,
            "tool_arguments_text": dict(self.unkept_arguments),
        }

    def failed_attempt(
        self, error: str, status_code: int | None, retried: bool = False
    ) -> FailedAttempt:
        """The record of the current attempt, which failed (its text and reasoning).

        ``retried``: another attempt follows. The tokens the provider reported for this
        one then move into the record's ``usage`` (the reply's own ``usage`` is its last
        attempt's): counted once, whether the retry is made or the turn ends first. The
        attempt a reply ends with keeps its tokens in the reply's ``usage``, as before.
        """
        text = without_surrogates(self.text)
        record = FailedAttempt(error=error, text=text, status_code=status_code)
        if self.reasoning_parts:
            record["reasoning"] = without_surrogates("".join(self.reasoning_parts))
        if retried and self.usage is not None:
            usage, self.usage = self.usage, None
            record["usage"] = TokenUsage(
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
            )
        return record

    def restart(self) -> None:
        """Forget the current attempt: a retry starts the reply again."""
        self.text = ""
        self.tool_requests.clear()
        self.usage = None
        self.finish_reason = None
        self.reasoning_parts.clear()
        self.reasoning_length = 0
        self.reasoning_blocks.clear()
        self.refused = False
        self.reasoning_field = None
        self.unkept_arguments.clear()

    @property
    def text(self) -> str:
        """The text so far (of the current attempt)."""
        parts = self._parts
        if len(parts) > 1:
            parts[:] = ["".join(parts)]
        return parts[0] if parts else ""

    @text.setter
    def text(self, value: str) -> None:
        self._parts = [value] if value else []
        self._length = len(value)

    def add_text(self, text: str) -> int:
        """Append ``text``; returns the length of the text before it (its offset)."""
        offset = self._length
        self._parts.append(text)
        self._length = offset + len(text)
        return offset


class TurnWrites:
    """The store writes of one turn on one branch (see the module docstring)."""

    def __init__(self, host: TurnHost, branch: str, head: str | None) -> None:
        self.host = host
        #: The branch the turn's messages go to (a conflict branch once diverted).
        self.target = branch
        #: The last message this turn put at the head of ``target``.
        self.head = head

    async def append(self, message: Message) -> None:
        """Append ``message`` after :attr:`head` and move the head to it (CAS)."""
        host = self.host
        try:
            await host.store.append_message(
                host.context_id, message, branch=self.target, expected_head=self.head
            )
        except BranchMovedError:
            await self._divert()
            await host.store.append_message(
                host.context_id, message, branch=self.target, expected_head=self.head
            )
        except OSError:
            if not await settle_append(host.store, host.context_id, self.target, message):
                raise
        host.remember(message)
        self.head = message.id
        host.publish(
            ev.MessageAdded(
                branch=self.target,
                message_id=message.id,
                parent_id=message.parent_id,
                role=message.role,
            )
        )

    async def _divert(self) -> None:
        # Another writer moved our branch: carry on, from our own head, on a new branch.
        host = self.host
        # Fit for a new name: the branch may have one an earlier version allowed (β-test).
        stem = new_branch_stem(f"{self.target}-conflict")[:90]
        existing = (await host.store.get_metadata(host.context_id)).branches
        # The new branch keeps the old one's prompt, provider and parameters: the rest
        # of the turn is generated as it began.
        source = existing.get(self.target)
        settings: dict[str, Any] = (
            {}
            if source is None
            else {
                "system_prompt": source.system_prompt,
                "provider": source.provider,
                "params": dict(source.params),
            }
        )
        n = 1
        while True:
            name = f"{stem}-{n}"
            if name not in existing:
                try:
                    await host.store.create_branch(
                        host.context_id, name, head=self.head, forked_from=self.head, **settings
                    )
                except BranchExistsError:  # taken meanwhile by another process
                    pass
                else:
                    break
            n += 1
        self.target = name
        host.publish(ev.BranchCreated(branch=name, head=self.head))

    async def update(self, message: Message) -> None:
        """Rewrite a message this turn wrote (a checkpoint or its final state)."""
        await self.host.store.update_message(self.host.context_id, message)
        self.host.remember(message)

    async def start_reply(self, message: Message) -> Reply:
        """Store the assistant message at once, as ``streaming``, after the head."""
        await self.append(message)
        return Reply(message=message)

    async def checkpoint(self, reply: Reply) -> None:
        """Store the reply's text (and reasoning) so far (still ``streaming``)."""
        update: dict[str, Any] = {"content": reply.text}
        if reply.reasoning_parts:
            metadata = reply.message.metadata.model_copy(update=reply.said())
            update["metadata"] = metadata
        await self.update(reply.message.model_copy(update=update))

    async def finish_reply(self, final: Message) -> None:
        """Store the reply's final state (shielded from cancellation) and announce it.

        If the store cannot take it, the session is handed the message to store later
        (before its next write, and on close), and the error propagates.
        """
        try:
            with anyio.CancelScope(shield=True):
                await self.update(final)
        except (OSError, StoreError):
            self.host.unsettled(final)  # the session stores it once the disk allows
            await self._let_go(final)
            raise
        # A later final state (the wind-down's, after this one was refused) is the one
        # the turn reported: the refused one must not be stored over it.
        self.host.settled(final.id)
        self.host.publish(
            ev.MessageCompleted(branch=self.target, message_id=final.id, status=final.status)
        )

    async def _let_go(self, final: Message) -> None:
        # The turn ends without its final state stored: the reply must not read as
        # still being generated (store.refused_finals). A write retrying it takes the
        # lock again. Stores that are not file based have no such lock.
        release = getattr(self.host.store, "release_stream", None)
        if release is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(OSError, CMError):
                await release(self.host.context_id, final)

    async def answer_call(self, call: ToolCall, text: str) -> None:
        """Store the tool message answering ``call``, with the call's outcome."""
        metadata = MessageMetadata(tool_status=answer_status(call))
        message = Message(
            role="tool", parent_id=self.head, content=text, tool_call_id=call.id, metadata=metadata
        )
        await self.append(message)


def store_trouble(exc: OSError | StoreError) -> tuple[str, str]:
    # Why a turn stopped on its store (the cause its tool calls are given) and what to
    # do, by what went wrong: the disk, another process, or the context's own files.
    told = str(exc).rstrip(".")
    if isinstance(exc, OSError):  # a full disk, a refused write (StoreIOError)
        return "the reply could not be stored", (
            f"the reply could not be stored: {told}. Free disk space (or fix the data "
            "folder), then regenerate() the reply; the text streamed so far is kept "
            "where the disk allowed it."
        )
    if isinstance(exc, StoreLockTimeoutError):
        return "the reply could not be stored", (
            f"the reply could not be stored: {told}. regenerate() the reply once the "
            "other process is done; the text streamed so far is kept."
        )
    # Damaged, deleted or newer data: its error says which file and what to do.
    return "the context's files could not be used", (
        f"the turn could not go on: {told}. Once that is fixed, regenerate() the reply; "
        "the text streamed so far is kept where the files allowed it."
    )
