"""Helpers shared by the store tests: build messages and chains of them."""

from __future__ import annotations

from types import EllipsisType
from typing import Any

from cm_notebook.model import Message
from cm_notebook.store import FileStore


def msg(role: str = "user", parent: str | None = None, content: str = "", **kw: object) -> Message:
    """A message with the given role, parent and content (extra fields via ``kw``)."""
    return Message.model_validate({"role": role, "parent_id": parent, "content": content, **kw})


async def chain(store: FileStore, cid: str, n: int, branch: str = "main") -> list[str]:
    """Append ``n`` alternating user/assistant messages after the branch head."""
    head = (await store.get_metadata(cid)).branches[branch].head
    ids = []
    for i in range(n):
        message = msg("user" if i % 2 == 0 else "assistant", head, f"{branch} {i}")
        await store.append_message(cid, message, branch=branch)
        head = message.id
        ids.append(message.id)
    return ids


class FailingStore:
    """The real FileStore, except that appending one chosen message fails like a full disk."""

    def __init__(self, inner: FileStore, fail_on: str) -> None:
        self.inner = inner
        self.fail_on = fail_on

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append_message(
        self,
        context_id: str,
        message: Message,
        *,
        branch: str | None,
        expected_head: str | EllipsisType | None = ...,
    ) -> Message:
        if message.id == self.fail_on:
            raise OSError(28, "No space left on device")
        return await self.inner.append_message(
            context_id, message, branch=branch, expected_head=expected_head
        )
