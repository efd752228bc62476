"""Helpers shared by the store tests: build messages and chains of them."""

from __future__ import annotations

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
