"""The :class:`Store` protocol: what the rest of cm_notebook needs from storage.

The protocol is async (anyio) so a session can persist without blocking the kernel's
event loop. :class:`~cm_notebook.store.filestore.FileStore` is the implementation
that ships; anything with these methods can replace it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from types import EllipsisType
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from ..model import Branch, ContextMetadata, Message, MessageStatus, ProviderSettings, Role

__all__ = ["IndexEntry", "Store", "children_map"]


class IndexEntry(BaseModel):
    """What ``message_index.json`` knows about a message without opening its file."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    parent_id: str | None
    role: Role
    seq: int  # order of arrival in this context, from 0
    created_at: datetime
    status: MessageStatus = MessageStatus.COMPLETE

    @classmethod
    def of(cls, message: Message, seq: int) -> IndexEntry:
        """The index entry describing ``message`` as the ``seq``-th arrival."""
        return cls(
            id=message.id,
            parent_id=message.parent_id,
            role=message.role,
            seq=seq,
            created_at=message.created_at,
            status=message.status,
        )


def children_map(entries: dict[str, IndexEntry]) -> dict[str | None, list[str]]:
    """Parent id (None: the roots) -> ids of its children, oldest first."""
    children: dict[str | None, list[str]] = {}
    last_seq = -1
    in_order = True
    for entry in entries.values():
        siblings = children.get(entry.parent_id)
        if siblings is None:
            children[entry.parent_id] = [entry.id]
        else:
            siblings.append(entry.id)
        if entry.seq > last_seq:
            last_seq = entry.seq
        else:
            in_order = False
    if not in_order:
        # A rebuilt or hand-edited snapshot may list entries out of order.
        for siblings in children.values():
            siblings.sort(key=lambda mid: entries[mid].seq)
    return children


@runtime_checkable
class Store(Protocol):
    """Persistent storage of contexts: metadata, a message tree, and branch heads.

    Every method validates ids (raising ``InvalidIdError``) before touching storage.
    Lookups of unknown things raise ``ContextNotFoundError``, ``MessageNotFoundError``
    or ``BranchNotFoundError``. A method that returned has made its change durable.
    """

    async def create_context(self, metadata: ContextMetadata) -> ContextMetadata:
        """Create an empty context described by ``metadata``; its id must be new."""
        ...

    async def list_contexts(self) -> list[ContextMetadata]:
        """Metadata of every readable context, most recently updated first."""
        ...

    async def get_metadata(self, context_id: str) -> ContextMetadata:
        """The context's current metadata (re-read if another process changed it)."""
        ...

    async def update_metadata(
        self,
        context_id: str,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        tags: list[str] | None = None,
        provider_spec: str | None = None,
        provider_params: dict[str, object] | None = None,
        expected_title: str | None = None,
    ) -> ContextMetadata:
        """Change the given fields (None leaves a field alone); returns the new metadata.

        With ``expected_title``, a compare-and-set: ``StateError`` (and nothing written)
        if the title is no longer that one (another writer renamed the context). A store
        without this keyword (written before it) still works: the session then reads
        the title, then writes (see :func:`cm_notebook.titles.replace_title`).
        """
        ...

    async def delete_context(self, context_id: str) -> None:
        """Remove the context's folder and everything in it."""
        ...

    async def append_message(
        self,
        context_id: str,
        message: Message,
        *,
        branch: str | None,
        expected_head: str | EllipsisType | None = ...,
    ) -> Message:
        """Add ``message`` to the tree; with ``branch``, also move that branch's head to it.

        The parent (if any) must already exist. Returns once the message (and the head
        move) are durable. With ``expected_head``, the head move is a compare-and-set:
        ``BranchMovedError`` (and nothing written) if the head is no longer that id.
        """
        ...

    async def update_message(self, context_id: str, message: Message) -> None:
        """Replace a message's content/status/metadata (streaming checkpoints, final state).

        The id, parent and role must not change.
        """
        ...

    async def get_message(self, context_id: str, message_id: str) -> Message:
        """One message, read from its own file."""
        ...

    async def get_messages(self, context_id: str, message_ids: list[str]) -> list[Message]:
        """Several messages in the given order (skipping corrupt files with a warning)."""
        ...

    async def index(self, context_id: str) -> dict[str, IndexEntry]:
        """A snapshot of the message index: id -> entry."""
        ...

    async def children(self, context_id: str, message_id: str | None) -> list[str]:
        """Ids of the direct children of ``message_id`` (None: the roots), oldest first."""
        ...

    async def path(self, context_id: str, branch: str | None = None) -> list[str]:
        """Message ids from the root to the head of ``branch`` (default: active branch)."""
        ...

    async def page(
        self,
        context_id: str,
        branch: str | None = None,
        *,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Message]:
        """The last ``limit`` messages of a branch's path (oldest first), reading only those.

        With ``before``, the page ends just before that message id (for scrolling back).
        """
        ...

    async def create_branch(
        self,
        context_id: str,
        name: str,
        *,
        head: str | None,
        forked_from: str | None = None,
        description: str = "",
        system_prompt: str | None = None,
        provider: ProviderSettings | None = None,
        params: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
    ) -> Branch:
        """Create a branch pointing at ``head``; raises BranchExistsError if taken.

        ``system_prompt``, ``provider`` and ``params`` are the branch's own defaults,
        ``labels`` its labels (see :class:`~cm_notebook.model.Branch`).
        """
        ...

    async def create_branches(self, context_id: str, branches: Sequence[Branch]) -> None:
        """Create several branches in one write: all of them, or (on any error, such as
        BranchExistsError for a taken name) none."""
        ...

    async def update_branch(
        self,
        context_id: str,
        name: str,
        *,
        system_prompt: str | EllipsisType | None = ...,
        provider: ProviderSettings | EllipsisType | None = ...,
        params: dict[str, Any] | EllipsisType = ...,
        labels: dict[str, str] | EllipsisType = ...,
    ) -> Branch:
        """Change a branch's own defaults or labels (``...`` leaves one alone); never
        its head."""
        ...

    async def change_labels(
        self,
        context_id: str,
        changes: Mapping[str, Mapping[str, str | None]],
        *,
        unique: str | None = None,
    ) -> dict[str, Branch]:
        """Merge label changes into branches' labels in one write (None removes one;
        ``unique``: a label only the branches given it keep); the branches changed."""
        ...

    async def set_branch_head(
        self,
        context_id: str,
        name: str,
        head: str | None,
        *,
        expected_head: str | EllipsisType | None = ...,
    ) -> Branch:
        """Point an existing branch at another message.

        With ``expected_head``, a compare-and-set: ``BranchMovedError`` (nothing written)
        if the head is no longer that id.
        """
        ...

    async def set_active_branch(self, context_id: str, name: str) -> ContextMetadata:
        """Make ``name`` the active branch."""
        ...

    async def delete_branch(self, context_id: str, name: str) -> None:
        """Delete a branch pointer (never its messages). The active branch cannot be deleted."""
        ...

    async def close(self) -> None:
        """Release locks and file handles."""
        ...
