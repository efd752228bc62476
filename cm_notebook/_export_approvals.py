"""The approval state of a context in its export document: the tools allowed for the
whole context (``approve(remember="context")``, ``allow(scope="context")``) and the
audit log of every decision (:meth:`ContextSession.approval_log`).

Both live in the context's ``approvals/`` folder (see :mod:`cm_notebook._approval_log`),
beside the store's own files, so they are read and written here through the folder of
a store that keeps one; a store without folders keeps them in memory only, and its
exports carry none. Tools allowed for a session only are not the context's: never
exported.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from pydantic import BaseModel, ConfigDict, Field

from ._approval_log import (
    AllowLists,
    ApprovalLog,
    approvals_folder,
    check_tool_name,
    write_approvals,
)
from .approvals import ApprovalRecord
from .errors import InvalidInputError, StoreError
from .model import Message
from .redact import redact
from .store.base import Store
from .store.diagnostics import warn
from .store.paths import context_dir

__all__ = [
    "ExportedApprovals",
    "check_approvals",
    "not_allowed_note",
    "read_approvals",
    "write_exported_approvals",
]


class ExportedApprovals(BaseModel):
    """Tools allowed for the whole context, and the audit log, oldest first."""

    model_config = ConfigDict(extra="forbid")

    allowed_tools: list[str] = Field(default_factory=list)
    log: list[ApprovalRecord] = Field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.allowed_tools or self.log)


def _folder(store: Store, context_id: str) -> Path | None:
    data_dir = getattr(store, "data_dir", None)
    if not isinstance(data_dir, Path):
        return None
    return approvals_folder(context_dir(data_dir, context_id))


async def read_approvals(
    store: Store, context_id: str, messages: list[Message]
) -> ExportedApprovals:
    """The approval state of ``context_id``, with the log's records of ``messages``
    only (a branch's export keeps the decisions of its own turns), secrets redacted."""
    folder = _folder(store, context_id)
    if folder is None:
        return ExportedApprovals()
    kept = {message.id for message in messages}

    def read() -> ExportedApprovals:
        # A damaged allow-list or an unreadable log does not stop the export: the
        # conversation is what it is for. The warning says what was left out and why.
        try:
            tools = sorted(AllowLists(folder).context_tools())
        except StoreError as exc:
            warn(f"{exc}; the export carries no allowed tools", folder)
            tools = []
        named = [tool for tool in tools if _is_tool_name(tool)]
        if named != tools:
            warn("the allow-list names tools no tool can have; the export leaves them out", folder)
        try:
            records = [r for r in ApprovalLog(folder).read() if r.message_id in kept]
        except StoreError as exc:
            warn(f"{exc}; the export carries no approval log", folder)
            records = []
        return ExportedApprovals.model_validate(
            {"allowed_tools": named, "log": [redact(r.model_dump(mode="json")) for r in records]}
        )

    return await anyio.to_thread.run_sync(read)


def _is_tool_name(tool: str) -> bool:
    try:
        check_tool_name(tool)
    except InvalidInputError:
        return False
    return True


def check_approvals(approvals: ExportedApprovals, messages: list[Message]) -> None:
    """ValueError unless the allowed tools are tool names and every record of the log is
    of a reply in ``messages``."""
    for tool in approvals.allowed_tools:
        check_tool_name(tool)  # InvalidInputError is a ValueError
    roles = {message.id: message.role for message in messages}
    for record in approvals.log:
        role = roles.get(record.message_id)
        if role is None:
            raise ValueError(
                f"the approval log names message {record.message_id!r}, which is missing"
            )
        if role != "assistant":
            raise ValueError(
                f"the approval log's decision on {record.tool_call_id!r} names a {role} "
                f"message ({record.message_id!r}); tool calls are asked for by replies"
            )


async def write_exported_approvals(
    store: Store, context_id: str, approvals: ExportedApprovals, *, allow_tools: bool
) -> None:
    """Write ``approvals`` into the new context ``context_id`` (a store without folders
    keeps none): the audit log always, the allowed tools only with ``allow_tools``.

    An allowance lets a tool run without asking: taken from a file someone sent, it
    would be their decision, made for this machine. So it is the importer's choice.
    """
    folder = _folder(store, context_id)
    if folder is None or not approvals:
        return
    tools = frozenset(approvals.allowed_tools) if allow_tools else frozenset()
    await anyio.to_thread.run_sync(write_approvals, folder, tools, list(approvals.log))


def not_allowed_note(approvals: ExportedApprovals, how: str) -> str | None:
    """What an import without ``allow_tools`` left out, and ``how`` to allow it; None
    when the document allowed no tools."""
    tools = approvals.allowed_tools
    if not tools:
        return None
    return (
        f"the export allowed {', '.join(tools)} to run without asking in its context; "
        f"not here, where each call asks for a decision: {how}"
    )
