"""``/contexts/{context_id}/tools``: pending calls, approve, deny, and one call's status.

Approving and denying run on a worker thread, not on the server's event loop: a
decision may read every branch's messages (for a call that is no longer pending),
write a record with an fsync (for a call waiting in another process), or change the
context's allow-list under its lock file, which another process may hold for as long
as it likes. The session takes decisions from any thread and hands them to the
waiting turn on its own loop.
"""

from __future__ import annotations

from ..errors import InvalidInputError, StateError, ToolCallNotFoundError
from ..model import ToolCall
from ..session import ContextSession
from .base import CMHandler, operation
from .bodies import (
    Approve,
    Decided,
    Decisions,
    DecisionsQuery,
    Deny,
    ToolCallQuery,
    ToolCallView,
)
from .branches import require_branch

__all__ = [
    "ApproveHandler",
    "DecisionsHandler",
    "DenyHandler",
    "ToolCallHandler",
    "ToolCallsHandler",
    "find_call",
]

#: Who decides, in the approval audit log, when a decision comes over HTTP.
_BY = "http"


def find_call(
    session: ContextSession, tool_call_id: str, branch: str | None = None
) -> ToolCallView:
    """Where ``tool_call_id`` is: pending, or stored in a reply on some branch (only
    ``branch``, if given). Two different calls of that id on different branches (each
    process numbers its own ``call_1``) make it ambiguous without ``branch``."""
    waiting = [call for call in session.pending_tool_calls if call.id == tool_call_id]
    pending = {call.id for call in waiting}
    names = [branch] if branch is not None else [session.active_branch, *session.branch_names]
    found: dict[str, ToolCallView] = {}  # by message id: a fork shares its stem's calls
    for name in dict.fromkeys(names):
        for message in session.history(name):
            for call in message.tool_calls:
                if call.id == tool_call_id and message.id not in found:
                    # The stored copy may lag while the call waits: the desk is current.
                    if call.id in pending:
                        call = call.model_copy(update={"status": "pending"})
                    found[message.id] = ToolCallView(
                        tool_call=call, message_id=message.id, branch=name
                    )
    if len(found) > 1:
        on = ", ".join(repr(view.branch) for view in found.values())
        raise InvalidInputError(
            f"tool calls on branches {on} all have the id {tool_call_id!r}: say which with ?branch="
        )
    if found:
        return next(iter(found.values()))
    if waiting and branch is None:  # asked for by a reply that is not stored yet
        return ToolCallView(tool_call=waiting[0])
    where = f" on branch {branch!r}" if branch is not None else " in this context"
    raise ToolCallNotFoundError(f"there is no tool call {tool_call_id!r}{where}")


def _nothing_pending(exc: ToolCallNotFoundError) -> StateError:
    return StateError(f"{exc}; approve or deny once a ToolApprovalRequested signal says so")


async def _existing(handler: CMHandler, context_id: str) -> ContextSession:
    """The session of ``context_id``, whose folder must still be there (else 404).

    A session outlives its folder removed behind the server's back, and its approval
    desk answers without the store (no calls waiting, nothing to decide): without this
    check such a context would answer 200 and 409 here where every other route answers
    404 and closes its session. Its metadata is read as the other routes read it (a
    few ``stat`` calls while the files have not changed).
    """
    session = await handler.session(context_id)
    session.active_branch  # noqa: B018 -- raises ContextNotFoundError for a removed folder
    return session


class ToolCallsHandler(CMHandler):
    """The calls waiting for a decision."""

    @operation("Tool calls waiting for approval, oldest first", response=Decided)
    async def get(self, context_id: str) -> None:
        self.reply(Decided(tool_calls=(await _existing(self, context_id)).pending_tool_calls))


class ApproveHandler(CMHandler):
    """Approve pending calls."""

    @operation(
        "Approve one pending tool call (optionally with edited arguments) or all",
        response=Decided,
        body=Approve,
        errors=(400, 404, 409),
    )
    async def post(self, context_id: str) -> None:
        session = await _existing(self, context_id)
        request = self.body(Approve)
        if request.branch is not None:
            require_branch(session, request.branch)  # 404, as everywhere for a branch
        try:
            # On a worker thread (see the module docstring).
            decided: list[ToolCall] = await self.blocking(
                session,
                session.approve,
                request.tool_call_id,
                arguments=request.arguments,
                branch=request.branch,
                remember=request.remember,
                by=_BY,
            )
        except ToolCallNotFoundError as exc:
            if request.tool_call_id is None:
                raise _nothing_pending(exc) from exc
            raise
        self.reply(Decided(tool_calls=decided))


class DenyHandler(CMHandler):
    """Deny pending calls."""

    @operation(
        "Deny one pending tool call or all; the model is told the reason",
        response=Decided,
        body=Deny,
        errors=(400, 404, 409),
    )
    async def post(self, context_id: str) -> None:
        session = await _existing(self, context_id)
        request = self.body(Deny)
        if request.branch is not None:
            require_branch(session, request.branch)
        try:
            # On a worker thread (see the module docstring).
            decided = await self.blocking(
                session,
                session.deny,
                request.tool_call_id,
                reason=request.reason,
                branch=request.branch,
                by=_BY,
            )
        except ToolCallNotFoundError as exc:
            if request.tool_call_id is None:
                raise _nothing_pending(exc) from exc
            raise
        self.reply(Decided(tool_calls=decided))


class DecisionsHandler(CMHandler):
    """The approval audit log."""

    @operation(
        "Every decision on a tool call (who, when, edited arguments, reason), oldest first",
        response=Decisions,
        query=DecisionsQuery,
    )
    async def get(self, context_id: str) -> None:
        session = await _existing(self, context_id)
        query = self.query(DecisionsQuery)
        if query.branch is not None:
            require_branch(session, query.branch)
        # Reads the whole log file: on a worker thread, not the event loop.
        log = await self.blocking(session, session.approval_log, query.branch)
        self.reply(Decisions(decisions=log))


class ToolCallHandler(CMHandler):
    """One tool call."""

    @operation("One tool call's status and result", response=ToolCallView, query=ToolCallQuery)
    async def get(self, context_id: str, tool_call_id: str) -> None:
        session = await _existing(self, context_id)
        query = self.query(ToolCallQuery)
        if query.branch is not None:
            require_branch(session, query.branch)
        # It may read every branch's messages: on a worker thread, not the event loop.
        view = await self.blocking(session, find_call, session, tool_call_id, query.branch)
        self.reply(view)
