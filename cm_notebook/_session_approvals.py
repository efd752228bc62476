"""Approval choices of a session: approve (once or always), edit, deny, and the audit log.

:class:`ApprovalMethods` holds the public approval API of
:class:`~cm_notebook.session.ContextSession`; the desk itself is
:mod:`cm_notebook.approvals`, the log and allow-lists :mod:`cm_notebook._approval_log`,
and calls waiting in another process are decided through
:mod:`cm_notebook._remote_decisions`.

Every decision a person (or an allow-list) makes is applied by the process running the
turn, which appends it to the context's audit log and publishes it in the
``ToolCallResolved`` signal's ``decision``: the same record in the log, in the signal
log (so over SSE) and in the views.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ._approval_apply import approval, approval_of, approve_allowed, remember_approved
from ._session_reading import SessionReading
from ._stranded_rounds import cannot_decide, may_hold_stranded, stranded_replies
from ._unicode import refuse_control_characters
from ._unwritable import unwritable
from .approvals import ApprovalRecord, Decision, PendingCall, Remember, check_remember
from .errors import InvalidInputError, ToolCallAlreadyResolvedError, ToolCallNotFoundError
from .ids import validate_branch_name
from .model import Message, ToolCall, ToolCallStatus

__all__ = ["MAX_REASON_CHARS", "ApprovalMethods"]

_MAX_BY = 200
#: The longest denial reason: it is told to the model, logged, and passed to the
#: process running the call.
MAX_REASON_CHARS = 10_000
# Names the log gives to decisions nobody made by hand.
_RULES = frozenset({"policy", "allow-list"})


def _check_by(by: object) -> str:
    if not isinstance(by, str) or not by.strip() or len(by) > _MAX_BY:
        raise InvalidInputError(
            f"by must name who decides (a non-empty string of at most {_MAX_BY} characters); "
            f"got {by!r}"
        )
    # It is shown in the approval log, its view and its exports: no escape sequence,
    # NUL or line break (a log written before with one still reads).
    refuse_control_characters(by, f"by (who decides), {by!r:.40},")
    if by.strip() in _RULES:
        raise InvalidInputError(
            f"by={by!r} is how the log names a rule's decisions; name the person or program"
        )
    return by.strip()


def _as_decided(call: ToolCall, decision: Decision) -> ToolCall:
    # What approve()/deny() return: the call as the decision leaves it (approved with
    # the arguments that will run, or denied with the reason), not as it waited. A copy:
    # the waiting turn's own object is its to change.
    update: dict[str, Any] = {
        "status": ToolCallStatus.APPROVED if decision.approved else ToolCallStatus.DENIED,
        "reason": decision.reason,
    }
    if decision.arguments is not None:
        update["arguments"] = decision.arguments
    return call.model_copy(update=update, deep=True)


class ApprovalMethods(SessionReading):
    """Approve or deny tool calls; allow tools for a session or context; the audit log."""

    def approve(
        self,
        tool_call_id: str | None = None,
        *,
        arguments: Mapping[str, Any] | str | None = None,
        branch: str | None = None,
        remember: Remember = "once",
        by: str = "user",
    ) -> builtins.list[ToolCall]:
        """Approve one pending tool call, or all of them with ``tool_call_id=None``
        (only those of ``branch`` if given, e.g. one arm of a fan-out), including those
        waiting in other processes (see :attr:`pending_tool_calls`). With one
        ``tool_call_id``, ``branch`` says which call is meant when calls on several
        branches share the id (each process numbers its own ``call_1``);
        InvalidInputError names those branches when it is left out.

        ``arguments`` replaces the model's arguments for that call after validation
        against the tool's schema (only with a single ``tool_call_id``); a call waiting
        in another process gets them too, validated again there.
        ``remember="session"`` also allows the call's tool from now on in this session,
        ``"context"`` in this context for every process that opens it (see
        :meth:`allowed_tools`, :meth:`revoke`); other calls of that tool already waiting
        are approved with it. ``by`` names who decides, for :meth:`approval_log` (a
        name without control characters: no escape sequence, NUL or line break).

        Returns the calls decided, as the decision leaves them: status ``approved``,
        with the arguments that will run (the edited ones, if any). Other calls a
        ``remember`` scope approves along with them are not listed.
        """
        if arguments is not None and tool_call_id is None:
            raise InvalidInputError("arguments= needs a tool_call_id: edit one call at a time")
        remember = check_remember(remember)
        by = _check_by(by)
        only = None if branch is None else validate_branch_name(branch)
        plain = Decision(True, by=by, remember=remember)
        # The decision made for each call decided here (by object: two branches' calls
        # may share an id), so what is returned shows its edited arguments.
        made: dict[int, Decision] = {}

        def decide(pending: PendingCall) -> Decision:
            decision = approval(self, pending, arguments, by=by, remember=remember)
            made[id(pending.call)] = decision
            return decision

        elsewhere = None
        if tool_call_id is not None:
            elsewhere = self._decide_elsewhere(
                tool_call_id,
                approved=True,
                reason=None,
                arguments=arguments,
                by=by,
                remember=remember,
                branch=only,
            )
        if elsewhere is not None:
            decided = [self._approved_elsewhere(call, arguments, plain) for call in elsewhere]
        else:
            decided = self._decide_here_and_elsewhere(
                tool_call_id,
                only,
                decide,
                approved=True,
                reason=None,
                by=by,
                remember=remember,
            )
        if remember != "once":
            remember_approved(self, decided, remember)
        if elsewhere is not None:
            return decided  # as _approved_elsewhere made them (the edit's reason kept)
        return [_as_decided(call, made.get(id(call), plain)) for call in decided]

    def _approved_elsewhere(
        self, call: ToolCall, arguments: Mapping[str, Any] | str | None, plain: Decision
    ) -> ToolCall:
        # A call another process runs, approved from here: its edited arguments as that
        # process gets them (they were checked before the decision was posted, so
        # checking them again cannot fail).
        return _as_decided(call, approval_of(self, call, arguments, by=plain.by))

    def deny(
        self,
        tool_call_id: str | None = None,
        *,
        reason: str = "denied by the user",
        branch: str | None = None,
        by: str = "user",
    ) -> builtins.list[ToolCall]:
        """Deny one pending tool call, or all (of ``branch`` if given, here and in other
        processes); the model is told ``reason`` (at most :data:`MAX_REASON_CHARS`
        characters). ``by`` names who decides, for
        :meth:`approval_log`, as for :meth:`approve`.

        Returns the calls denied, as the decision leaves them: status ``denied``, with
        ``reason``.
        """
        if not isinstance(reason, str):
            raise InvalidInputError("reason must be a string")
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidInputError(
                f"reason is {len(reason):,} characters; the limit is {MAX_REASON_CHARS:,} "
                "(it is what the model is told): shorten it"
            )
        by = _check_by(by)
        only = None if branch is None else validate_branch_name(branch)
        # A blank reason tells the model nothing: the default says who denied it.
        decision = Decision(False, reason.strip() or "denied by the user", by=by)
        if tool_call_id is not None:
            elsewhere = self._decide_elsewhere(
                tool_call_id, approved=False, reason=decision.reason, by=by, branch=only
            )
            if elsewhere is not None:
                return [_as_decided(call, decision) for call in elsewhere]
        decided = self._decide_here_and_elsewhere(
            tool_call_id,
            only,
            lambda pending: decision,
            approved=False,
            reason=decision.reason,
            by=by,
        )
        return [_as_decided(call, decision) for call in decided]

    def _decide_here_and_elsewhere(
        self,
        tool_call_id: str | None,
        branch: str | None,
        decision_for: Callable[[PendingCall], Decision],
        *,
        approved: bool,
        reason: str | None,
        by: str,
        remember: str = "once",
    ) -> builtins.list[ToolCall]:
        # One call waiting here, or every call (of ``branch``): those waiting here and
        # those waiting in other processes (a kernel's turn seen from the server, say).
        if tool_call_id is not None:
            return self._approvals.decide(
                tool_call_id, self._was_resolved, branch, decision_for, self._claim_here
            )
        elsewhere = self._waiting_elsewhere(branch, wait=True)
        decided: builtins.list[ToolCall] = []
        try:
            decided = self._approvals.decide(
                None, self._was_resolved, branch, decision_for, self._claim_here
            )
        except (ToolCallNotFoundError, ToolCallAlreadyResolvedError):
            if not elsewhere:
                raise
        decided += self._post_elsewhere(
            elsewhere, approved=approved, reason=reason, by=by, remember=remember
        )
        if not decided:  # every call listed was decided or ended meanwhile
            raise ToolCallAlreadyResolvedError(
                "the tool calls waiting were decided by another client first, or their "
                "turns ended (stopped) before this decision reached them: nothing was decided"
            )
        return decided

    def _claim_here(self, pending: PendingCall, decision: Decision) -> bool:
        # A call on this desk: mark it decided here, unless another process was first.
        return self._decisions is None or self._decisions.claim(pending.call.id, pending.message_id)

    def allowed_tools(self) -> dict[Literal["session", "context"], list[str]]:
        """The tools that run without asking, by scope: ``{"session": [...], "context": [...]}``.

        Only tools whose policy is ``"ask"`` are affected; a ``"deny"`` rule still denies.
        """
        return {
            "session": sorted(self._allow_lists.session_tools()),
            "context": sorted(self._allow_lists.context_tools()),
        }

    def allow(self, tool: str, *, scope: Literal["session", "context"] = "session") -> None:
        """Run ``tool`` without asking from now on, in this session or the whole context.

        The same as approving one of its calls with ``remember=scope``; calls of it
        already waiting here are approved. Undo with :meth:`revoke`.
        """
        self._check_open()
        if scope not in ("session", "context"):
            raise InvalidInputError(f"scope must be 'session' or 'context'; got {scope!r}")
        self._allow_lists.allow(tool, scope)
        approve_allowed(self)

    def revoke(self, tool: str, *, scope: Literal["session", "context"] | None = None) -> bool:
        """Ask again before running ``tool`` (in ``scope``; both with None).

        Returns whether it was allowed. A context's allowance is revoked for every
        process at its next tool call.
        """
        self._check_open()
        if scope is not None and scope not in ("session", "context"):
            raise InvalidInputError(f"scope must be 'session', 'context' or None; got {scope!r}")
        return self._allow_lists.revoke(tool, scope)

    def approval_log(self, branch: str | None = None) -> builtins.list[ApprovalRecord]:
        """The audit log of approval decisions, oldest first: every branch, or ``branch``'s.

        Each :class:`~cm_notebook.approvals.ApprovalRecord` says who decided (``by``;
        ``remote`` if another process did), when, on which call and tool, the arguments
        asked for and any edited ones, the reason and the scope remembered. Kept in the
        context's folder, so every process sees every decision.
        """
        only = None if branch is None else validate_branch_name(branch)
        return self._approval_log.read(only)

    def _was_resolved(self, tool_call_id: str) -> ToolCall | None:
        # Not pending, but asked for by a stored reply: it was settled already (decided,
        # or failed unasked); the stored call says which. Any branch may hold it (a turn
        # can run on a branch that is not the active one).
        names = [self.active_branch, *self.branches]
        for name in dict.fromkeys(names):
            _ids, path = self._io.call(self._messages.path_messages(self._store, self.id, name))
            for message in reversed(path):
                for call in message.tool_calls:
                    if call.id == tool_call_id:
                        self._refuse_stranded(tool_call_id, message, path)
                        return call
        return None

    def _refuse_stranded(
        self, tool_call_id: str, reply: Message, path: builtins.list[Message]
    ) -> None:
        # Stored as waiting, its process gone, and its folder not writable here: no
        # read "in a moment" will find it settled (see cm_notebook._stranded_rounds).
        if not may_hold_stranded([reply]):
            return
        ended = self._io.call(stranded_replies(self._store, self.id, path))
        why = unwritable(self._store, self.id) if reply.id in ended else None
        if why is not None:
            raise cannot_decide(tool_call_id, why)
