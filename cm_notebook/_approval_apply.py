"""Applying approval decisions to the calls waiting in this process.

Decisions reach a waiting call three ways: ``approve()``/``deny()`` here (see
:mod:`cm_notebook._session_approvals`), a decision record from another process
(:mod:`cm_notebook._remote_decisions`, applied at each poll of the log follower), and an
allow-list that now allows the call's tool (:mod:`cm_notebook._approval_log`). The last
two live here, with the checks both sides share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import _json
from . import events as ev
from ._decision_outcome import still_waits
from ._json_values import refuse_unstorable
from .approvals import Decision, PendingCall, Remember, check_remember
from .errors import (
    CMError,
    InvalidInputError,
    StorageFullError,
    StoreError,
    StoreIOError,
    ToolArgumentsError,
    ToolError,
)
from .model import ToolCall
from .tools import validate_edited_arguments
from .tools._tool import MAX_ARGUMENTS_CHARS

if TYPE_CHECKING:
    from ._remote_decisions import DecisionBox
    from ._session_core import SessionCore

__all__ = [
    "apply_remote_decision",
    "approval",
    "approve_allowed",
    "check_arguments_shape",
    "remember_approved",
]

_EDITED = "arguments edited before approval"


def check_arguments_shape(arguments: Mapping[str, Any] | str) -> dict[str, Any]:
    """Edited arguments as a dict within the JSON bounds, without a tool's schema.

    For a process that decides a call whose tool it does not have: the process running
    the call checks them against the schema before it runs anything.
    """
    value: object = arguments
    try:
        if isinstance(value, str):
            value = _json.loads(value, max_chars=MAX_ARGUMENTS_CHARS) if value.strip() else {}
        else:
            _json.check_size(value, MAX_ARGUMENTS_CHARS)
    except _json.JSONLimitError as exc:
        raise ToolArgumentsError(
            f"The edited arguments are {exc}, beyond what a tool call may carry (at most "
            f"{MAX_ARGUMENTS_CHARS:,} characters, nested at most {_json.MAX_DEPTH} levels)"
        ) from None
    except ValueError as exc:
        raise ToolArgumentsError(f"The edited arguments are not valid JSON: {exc}") from exc
    if not isinstance(value, Mapping):
        raise ToolArgumentsError(
            f"The edited arguments must be a JSON object, got {type(value).__name__}"
        )
    return dict(value)


def approval(
    session: SessionCore,
    pending: PendingCall,
    arguments: Mapping[str, Any] | str | None,
    **where: Any,
) -> Decision:
    """An approval of ``pending``, with ``arguments`` (if any) checked against its tool."""
    return approval_of(session, pending.call, arguments, **where)


def approval_of(
    session: SessionCore,
    call: ToolCall,
    arguments: Mapping[str, Any] | str | None,
    **where: Any,
) -> Decision:
    """An approval of ``call`` with ``arguments`` (if any) checked against its tool, or
    only for their shape when this process does not have the tool (a call another
    process runs)."""
    if arguments is None:
        return Decision(True, **where)
    if not isinstance(arguments, str):
        # Edited arguments replace the model's JSON ones and are stored with the call:
        # JSON values only, whatever the tool's schema would take.
        refuse_unstorable(arguments, "arguments", ToolArgumentsError)
    if call.name in session.tools:
        edited = validate_edited_arguments(session.tools.get(call.name), arguments)
    else:
        edited = check_arguments_shape(arguments)
    if edited == call.arguments:
        # The same arguments again (a form that sends them back, reformatted JSON): not
        # an edit, and not logged as one.
        return Decision(True, **where)
    return Decision(True, _EDITED, edited, **where)


def _never(_call_id: str) -> bool:
    return False


def _by_allow_list(scope: Remember) -> Callable[[PendingCall], Decision]:
    return lambda _pending: Decision(True, by="allow-list", remember=scope)


def approve_allowed(session: SessionCore) -> None:
    """Approve the waiting calls whose tools an allow-list now allows."""
    for call in session._approvals.calls():
        scope = session._allow_lists.scope_of(call.name)
        if scope is None:
            continue
        with contextlib.suppress(CMError):  # decided meanwhile
            session._approvals.decide(call.id, _never, None, _by_allow_list(scope))


def remember_approved(session: SessionCore, approved: list[ToolCall], scope: Remember) -> None:
    """Allow the tools of calls just approved for ``scope``, then approve the other
    calls waiting here that this now allows.

    The calls are approved already (their turns go on): if the allowance cannot be
    saved (a full disk), the error says so, so that nobody approves them again (they
    are no longer waiting) but allows the tool once the disk lets them.
    """
    names = list(dict.fromkeys(call.name for call in approved))
    try:
        for name in names:
            session._allow_lists.allow(name, scope)
    except StoreError as exc:
        raise _not_remembered(approved, names, scope, exc) from exc
    approve_allowed(session)


def _not_remembered(
    approved: list[ToolCall], names: list[str], scope: Remember, exc: StoreError
) -> StoreError:
    calls = ", ".join(repr(call.id) for call in approved)
    tools = ", ".join(repr(name) for name in names)
    # Not the store's own sentence: its "try again" would mean approving again.
    if isinstance(exc, StorageFullError):
        why = (
            f"no space left on the device holding {exc.path}. Free some space (or raise "
            "the disk quota), then"
        )
    else:
        why = f"{str(exc).rstrip('.')}. Once that is fixed,"
    message = (
        f"tool call {calls} was approved and runs (it is no longer waiting: do not approve "
        f"it again), but allowing {tools} for the whole {scope} could not be saved: {why} "
        f"call allow({names[0]!r}, scope={scope!r}) (or approve the "
        f"tool's next call with remember={scope!r}); until then its calls ask first. The "
        "approval log's entry for the call is written by its turn: a warning says if that "
        "failed too."
    )
    if isinstance(exc, StoreIOError):
        kind = StorageFullError if isinstance(exc, StorageFullError) else StoreIOError
        return kind(message, exc.path, exc.errno)
    return StoreError(message)


def apply_remote_decision(
    session: SessionCore, box: DecisionBox, call_id: str, message_id: str
) -> None:
    """Apply the decision another process recorded for a call waiting here, if any.

    Runs on the log follower's thread at each poll. Edited arguments are validated
    against this process's tool: if they are refused, the record is discarded (the
    call stays pending, to be decided again) and an ``Error`` signal says why.
    """
    found = box.read(call_id, message_id)
    if found is None:
        return
    where: dict[str, Any] = {"by": found.by, "remote": True, "pid": found.pid}
    with contextlib.suppress(InvalidInputError):
        where["remember"] = check_remember(found.remember)
    branch: list[str] = []
    decided: list[ToolCall] = []

    def decision_for(pending: PendingCall) -> Decision:
        branch.append(pending.branch)
        decided.append(pending.call)
        if not found.approved:
            return Decision(False, found.reason or "denied", **where)
        return approval(session, pending, found.arguments, **where)

    try:
        session._approvals.decide(call_id, _never, None, decision_for)
    except ToolError as exc:
        if not branch:  # decided here meanwhile: the first decision wins
            return
        box.discard(call_id, message_id)
        message = still_waits(call_id, exc)
        session._publish(ev.ErrorReported(branch=branch[0], kind="tool", message=message))
    except CMError:
        return
    else:
        if found.approved and where.get("remember") == "context":
            # The deciding process saves the allowance once this one has acted; saved
            # here too (the same tool, added under the file's lock), this process's other
            # calls of the tool are approved at once, as in one process, not at the
            # next look at the file. If it cannot be saved, the decider says so.
            with contextlib.suppress(CMError):
                remember_approved(session, decided, "context")
