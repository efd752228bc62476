"""Which tool calls still wait for a decision, from the signals that say so.

A call waits from its ``ToolApprovalRequested`` until a ``ToolCallResolved`` decides
it, or until its branch's turn ends (a turn stopped while waiting announces no
decision), or another turn begins there: a turn holds its branch's claim, so the one
that asked is over, though a process killed while its call waited announced no end.
The follower tracks this to list another process's waiting calls; the signal log's
compaction to keep their requests.
"""

from __future__ import annotations

from . import fsm
from .model import ToolCallStatus
from .signals import Event, StateChanged, ToolApprovalRequested, ToolCallResolved

__all__ = ["Calls", "forget_branch", "track_calls"]

#: A waiting call, keyed by its id and its reply's (call ids are unique only within
#: one process's reply) -> the branch it was asked on.
Calls = dict[tuple[str, str], str | None]

_DECIDED = frozenset(
    {ToolCallStatus.APPROVED, ToolCallStatus.DENIED, ToolCallStatus.DONE, ToolCallStatus.FAILED}
)


def track_calls(calls: Calls, event: Event) -> None:
    """Update ``calls`` with what ``event`` says (see the module docstring)."""
    if isinstance(event, ToolApprovalRequested):
        calls.update({(call_id, event.message_id): event.branch for call_id in event.tool_call_ids})
    elif isinstance(event, ToolCallResolved) and event.status in _DECIDED:
        for key in [k for k, on in calls.items() if k[0] == event.tool_call_id]:
            if event.branch in (None, calls[key]):
                del calls[key]
    elif (
        isinstance(event, StateChanged)
        and event.branch is not None
        and fsm.State.IDLE in (event.old, event.new)
    ):
        forget_branch(calls, event.branch)


def forget_branch(calls: Calls, branch: str) -> None:
    """Drop the calls asked on ``branch`` (its turn ended)."""
    for key in [key for key, asked_on in calls.items() if asked_on == branch]:
        del calls[key]
