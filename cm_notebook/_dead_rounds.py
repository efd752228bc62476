"""Tool rounds whose turn died: settling the calls a killed process left open.

A turn records what becomes of each tool call in the assistant message that asked for
it (``pending`` while it waits for a decision, ``running`` from just before its tool
runs, or a few calls earlier in a round of many) and answers each call with a tool
message. A process killed in between (``kill -9``, a kernel restarted while a call
waited for approval) leaves the calls ``pending`` or ``running`` for ever, with no tool
message: no desk waits for a decision any more and no tool is running, but the stored
history says otherwise.

:func:`settle_dead_round` finishes such a round the way a cancelled turn does
(:mod:`cm_notebook._runner_tools`): a call still waiting for a decision is *denied*
("do not retry it unchanged"), one approved but not started *failed* ("never run"),
one cut off while running *failed*, "interrupted while running", since it may have
done its work, and one that had finished keeps its result.
Each call left unanswered on the branch gets its tool message, then the assistant
message is rewritten with the settled calls. Writing the answers first makes it safe
to stop anywhere: a second run finds the answers and only rewrites the calls.

It runs under the branch's claim (no turn of any process is on that branch), when a
turn is about to start there, when a session opens, and when a session sees another
process's turn die. A round that a live turn on *another* branch is still working on
(a fork made at its reply while it waited) is left to that turn; the fork answers its
calls on its own branch, once, as having no result there. A branch that shares a
reply whose calls were settled on another branch (a fork made at it) gets its own
tool messages, from the calls' recorded results, so its stored history pairs every
call as its requests do.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import events as ev
from . import fsm
from ._claims import BranchClaims, Claim
from ._runner_tools import approved_not_run_reason, approved_not_run_result, interrupted_result
from ._session_messages import MessageCache, is_settled
from ._sessionio import StoreAccess
from ._unwritable import unwritable
from .errors import BranchMovedError, BusyError, CMError
from .model import (
    ContextMetadata,
    Message,
    MessageMetadata,
    MessageStatus,
    ToolCall,
    ToolCallStatus,
    answer_status,
)
from .redact import get_logger
from .store import Store
from .store.base import IndexEntry
from .store.oslock import lock_is_held
from .tools import denied_result

if TYPE_CHECKING:
    from ._follower import LogFollower
    from ._remote_turns import RemoteTurn

__all__ = [
    "NOT_STARTED",
    "STOPPED",
    "UNDECIDED",
    "DeadRounds",
    "may_hold_dead_round",
    "settle_dead_round",
    "settled_call",
]

_log = get_logger(__name__)

#: Why the calls of a dead round stopped, as the model and the views are told.
STOPPED = "the process running this turn died, e.g. it was killed or its kernel restarted"
UNDECIDED = f"no decision was made: {STOPPED}"
NOT_STARTED = f"approved, but never started: {STOPPED}"

_OPEN = frozenset({ToolCallStatus.PENDING, ToolCallStatus.APPROVED, ToolCallStatus.RUNNING})


def may_hold_dead_round(head: Message | None) -> bool:
    """Whether the branch ending at ``head`` may end in an unfinished tool round.

    False for an assistant message without tool calls (every turn that completes ends
    on one) and for a user message, so a send reads nothing more; True for a tool
    message (the round it answers may have more calls) and an assistant message with
    tool calls: open ones, or calls settled on another branch that shares the message
    and answered there, not on this one.
    """
    if head is None or head.role == "user":
        return False
    return head.role == "tool" or bool(head.tool_calls)


async def settle_dead_round(
    store: Store,
    context_id: str,
    branch: str,
    cache: MessageCache,
    claim_held: Callable[[str], bool],
    *,
    answer: bool = True,
) -> list[ev.Event]:
    """Settle the tool round at the end of ``branch`` if its turn died (see the module).

    The caller holds ``branch``'s claim. ``claim_held(other)`` says whether a live turn
    holds another branch's claim. Without ``answer`` only the reply records what became
    of its calls, and no tool message is written: a turn that is about to replace that
    reply (regenerate, retry) makes a sibling of it, not a reply to its answers.
    Returns the events to announce, in order (none: there was nothing to settle).
    """
    ids, path = await cache.path_messages(store, context_id, branch)
    start = len(path) - 1
    while start >= 0 and path[start].role == "tool":
        start -= 1
    if start < 0 or not ids or path[-1].id != ids[-1]:
        return []  # no round, or the path has an unreadable message at its end
    reply = path[start]
    if not reply.tool_calls:
        return []
    answers = {m.tool_call_id: m for m in path[start + 1 :] if m.tool_call_id}
    if is_settled(reply):
        # Settled on a branch that shares the reply (a fork made at it): this branch
        # only lacks the answers, which the calls' results give.
        if not answer or all(call.id in answers for call in reply.tool_calls):
            return []
    elif await _worked_on_elsewhere(store, context_id, branch, reply.id, claim_held):
        # The live turn's own: its calls are left to it. This branch (a fork made at
        # the reply while they waited) answers them for itself, once, so its stored
        # history and its requests agree now and later (the shared reply's results
        # change when the other turn finishes).
        if not answer:
            return []
        elsewhere = [
            call.model_copy(update={"result": _elsewhere_result(call.name)})
            for call in reply.tool_calls
            if call.id not in answers
        ]
        added = await _answer(store, context_id, branch, ids[-1], elsewhere, cache)
        return [] if added is None else added
    calls = [settled_call(call, answers.get(call.id)) for call in reply.tool_calls]
    events: list[ev.Event] = []
    if answer:
        unanswered = [call for call in calls if call.id not in answers]
        added = await _answer(store, context_id, branch, ids[-1], unanswered, cache)
        if added is None:
            return []  # a writer that did not claim the branch: leave the round to it
        events.extend(added)
    final = reply.model_copy(update={"tool_calls": calls})
    if final != reply:
        await store.update_message(context_id, final)
        cache.remember(final)
    for before, after in zip(reply.tool_calls, calls, strict=True):
        if before.status is not after.status:
            events.append(
                ev.ToolCallResolved(
                    branch=branch, tool_call_id=after.id, status=after.status, reason=after.reason
                )
            )
    return events


async def _answer(
    store: Store,
    context_id: str,
    branch: str,
    head: str,
    calls: list[ToolCall],
    cache: MessageCache,
) -> list[ev.Event] | None:
    # A tool message on ``branch`` for each of ``calls`` (its ``result``), after
    # ``head``; their MessageAdded events. None if another writer moved the branch.
    events: list[ev.Event] = []
    for call in calls:
        tool_message = Message(
            role="tool",
            parent_id=head,
            content=call.result or "",
            tool_call_id=call.id,
            metadata=MessageMetadata(tool_status=answer_status(call)),
        )
        try:
            await store.append_message(context_id, tool_message, branch=branch, expected_head=head)
        except BranchMovedError:
            return None
        cache.remember(tool_message)
        head = tool_message.id
        events.append(
            ev.MessageAdded(
                branch=branch,
                message_id=tool_message.id,
                parent_id=tool_message.parent_id,
                role="tool",
            )
        )
    return events


def _elsewhere_result(tool_name: str) -> str:
    # The answer on a fork for a call another branch's live turn had not finished.
    return (
        f"error: the call to tool {tool_name!r} has no result on this branch: it was still "
        "waiting or running on another branch when this branch continued from the reply "
        "that asked for it."
    )


def settled_call(call: ToolCall, answer: Message | None) -> ToolCall:
    """``call`` as settling its dead round records it; ``answer``: its stored tool
    message, if it has one (unchanged if it is settled already)."""
    if call.status not in _OPEN and call.result is not None:
        return call  # settled already (its answer may be all that is missing)
    if answer is not None:
        return _from_answer(call, answer)
    if call.status is ToolCallStatus.RUNNING:
        reason = f"interrupted while running ({STOPPED})"
        text = interrupted_result(call.name, STOPPED)
        return call.model_copy(
            update={"status": ToolCallStatus.FAILED, "reason": reason, "result": text}
        )
    if call.status is ToolCallStatus.APPROVED:
        # Not a denial: the person (or policy) said yes. It did not run, so it failed.
        text = _never_run(call.name)
        return call.model_copy(
            update={"status": ToolCallStatus.FAILED, "reason": NOT_STARTED, "result": text}
        )
    if call.status in _OPEN:
        text = denied_result(call.name, UNDECIDED)
        return call.model_copy(
            update={"status": ToolCallStatus.DENIED, "reason": UNDECIDED, "result": text}
        )
    # Denied or failed, its text never stored: the text its turn would have sent.
    text = (
        denied_result(call.name, call.reason)
        if call.status is ToolCallStatus.DENIED
        else (f"error: {call.reason or 'the call failed'}")
    )
    return call.model_copy(update={"result": text})


def _never_run(tool_name: str) -> str:
    return (
        f"error: the call to tool {tool_name!r} was approved but never run ({STOPPED}); "
        "it had no effect, and may be asked for again."
    )


def _from_answer(call: ToolCall, message: Message) -> ToolCall:
    # Answered (``message``), but the process died before recording it in the reply: a
    # turn that died after answering, or a settle cut short after writing its answers.
    # The status and reason are read back from the answer, so that a settle finished on
    # a second try records what one run to the end would have.
    name = call.name
    answer = message.content
    update: dict[str, object]
    if answer == _never_run(name):
        update = {"status": ToolCallStatus.FAILED, "reason": NOT_STARTED}
    elif (cause := _cause_in(answer, interrupted_result(name, "\0"))) is not None:
        update = {"status": ToolCallStatus.FAILED, "reason": f"interrupted while running ({cause})"}
    elif (cause := _cause_in(answer, approved_not_run_result(name, "\0"))) is not None:
        # Approved, then its turn was stopped before it ran: not a denial.
        update = {"status": ToolCallStatus.FAILED, "reason": approved_not_run_reason(cause)}
    elif call.status is ToolCallStatus.RUNNING:
        # The outcome the answer records: a tool may return a text starting "error:"
        # and have run. An answer stored before outcomes were recorded tells by its
        # text: failures are answered "error: ..." (cm_notebook.tools).
        outcome = message.metadata.tool_status
        if outcome is None:
            failed = answer.startswith("error:")
            outcome = ToolCallStatus.FAILED if failed else ToolCallStatus.DONE
        update = {"status": outcome}
    else:
        # A call never started can only have been refused.
        update = {"status": ToolCallStatus.DENIED, "reason": _denial_reason(name, answer)}
    return call.model_copy(update={**update, "result": answer})


def _cause_in(answer: str, template: str) -> str | None:
    # What stands in ``answer`` where ``template`` has its NUL, if ``answer`` is that
    # text; None if it is not.
    head, _, tail = template.partition("\0")
    if len(answer) >= len(head) + len(tail) and answer.startswith(head) and answer.endswith(tail):
        return answer[len(head) : len(answer) - len(tail)]
    return None


def _denial_reason(tool_name: str, answer: str) -> str | None:
    # The reason ``denied_result(tool_name, reason)`` wrote into ``answer``, if it did.
    bare = denied_result(tool_name)
    head, tail = bare[: -len(_DENIED_TAIL)], _DENIED_TAIL
    if answer.startswith(f"{head}: ") and answer.endswith(tail):
        return answer[len(head) + 2 : len(answer) - len(tail)] or None
    return None


#: How a denial's text ends, after its reason (cm_notebook.tools.denied_result).
_DENIED_TAIL = ". Do not retry it unchanged."


def round_at(entries: Mapping[str, IndexEntry], head: str) -> list[str]:
    """The ids a turn ending at ``head`` may still be working on: ``head``, and up from
    it through the tool messages at the branch's end to the first other message (the
    reply whose calls they answer, when they answer one)."""
    ids: list[str] = []
    current: str | None = head
    while current is not None:
        ids.append(current)
        entry = entries.get(current)
        current = entry.parent_id if entry is not None and entry.role == "tool" else None
    return ids


async def _worked_on_elsewhere(
    store: Store, context_id: str, branch: str, reply_id: str, claim_held: Callable[[str], bool]
) -> bool:
    # A live turn on another branch whose head is the reply, or one of the tool
    # messages answering it, may still be deciding or running these calls.
    entries = await store.index(context_id)
    metadata = await store.get_metadata(context_id)
    for name, other in metadata.branches.items():
        if name == branch or other.head is None:
            continue
        if reply_id in round_at(entries, other.head) and claim_held(name):
            return True
    return False


class DeadRounds:
    """A session's side of settling dead rounds: when to look, and announcing it; and
    announcing the end of a turn whose process died (:meth:`owner_gone`,
    :meth:`claimed`), which that process never did."""

    def __init__(
        self,
        store: Store,
        context_id: str,
        io: StoreAccess,
        cache: MessageCache,
        claims: BranchClaims,
        publish: Callable[[ev.Event], None],
        metadata: Callable[[], ContextMetadata],
    ) -> None:
        self._store = store
        self._context_id = context_id
        self._io = io
        self._cache = cache
        self._claims = claims
        self._publish = publish
        self._metadata = metadata
        self._settling = threading.Lock()  # held while if_free settles a branch
        # Set by follow(), when the session follows other processes' signals.
        self._follower: LogFollower | None = None
        self._soon: Callable[[Callable[[], None]], object] | None = None
        self._claim_path: Callable[[str, str], Path] | None = getattr(
            store, "branch_claim_path", None
        )

    def take_claim(self, branch: str) -> Claim:
        """Claim ``branch`` (BusyError if taken), first waiting for a settle that this
        session is running on it for another process's dead turn (a few writes)."""
        with self._settling:
            return self._claims.take(branch)

    def before_turn(self, branch: str, head: str | None, *, answer: bool = True) -> None:
        """Settle a dead round ending at ``head`` on ``branch`` (its claim is held).

        Costs nothing when the head is a settled reply this session holds (the end of
        every finished turn); otherwise reads the head, and the path only if it may end
        in an unfinished round. ``answer``: see :func:`settle_dead_round`. A round that
        cannot be settled (a damaged file, a full disk) is logged and left: the turn's
        request fills in what is missing.
        """
        if head is None:
            return
        found, _missing = self._cache.lookup([head])
        message = found.get(head)
        try:
            if message is None:
                message = self._io.call(self._store.get_message(self._context_id, head))
                self._cache.remember(message)
            if not may_hold_dead_round(message):
                return
            if message.role == "tool":
                # No reply at the head for the turn to replace: the round's other
                # calls are answered, as its request will show them answered.
                answer = True
            settled = self._io.call(
                settle_dead_round(
                    self._store, self._context_id, branch, self._cache, self._held, answer=answer
                )
            )
        except (OSError, CMError) as exc:
            # A folder that cannot be written: its readers show the round as ended
            # (cm_notebook._stranded_rounds), and the first writable open settles it.
            cannot_write = unwritable(self._store, self._context_id) is not None
            _log.log(
                logging.DEBUG if cannot_write else logging.WARNING,
                "could not settle the tool calls left open on branch %r: %s",
                branch,
                exc,
            )
            return
        for event in settled:
            self._publish(event)

    def if_free(self, branch: str, head: str | None) -> None:
        """Settle a dead round on ``branch`` if no turn (in any process) holds it."""
        with self._settling:  # a send here waits for this (take_claim), not BusyError
            try:
                claim = self._claims.take(branch)
            except (BusyError, OSError, CMError):
                return  # a live turn: it settles its own round
            try:
                self.before_turn(branch, head)
            finally:
                claim.release()

    def follow(self, follower: LogFollower, soon: Callable[[Callable[[], None]], object]) -> None:
        """Announce the ends of the turns other processes ran that ``follower`` lists
        (see :meth:`owner_gone` and :meth:`claimed`); ``soon(fn)`` runs ``fn`` on the
        session's loop after what is queued there (RuntimeError: the loop is closed)."""
        self._follower, self._soon = follower, soon

    def claimed(self, branch: str, head: str | None, *, answer: bool = True) -> None:
        """This session just took ``branch``'s claim for a turn, its head then ``head``.

        A dead round ending at the head is settled (:meth:`before_turn`). A turn another
        process was running there is over, the claim being free (its process died, say,
        and its end was not announced yet): announced now, before anything the new turn
        says, so that views see one turn end before the next begins, and not again
        once the new turn lets go of the claim.
        """
        self.before_turn(branch, head, answer=answer)
        if self._follower is None or self._soon is None:
            return
        turn = self._follower.take_over(branch)
        if turn is None:
            return
        reply = self._ended_reply(turn, head)
        # On the loop, after the dead turn's last signals relayed (queued there).
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._soon(functools.partial(self._announce, branch, turn, reply))

    def owner_gone(self, branch: str, turn: RemoteTurn) -> bool:
        """The process running ``turn`` on ``branch`` died (seen by the log follower, on
        its thread).

        With the branch's claim, the tool calls it left open are settled and its reply
        is read (which makes the store mark it interrupted); then, on the session's
        loop, the reply's end and the branch idle are announced, unless the turn was
        announced over meanwhile by a turn of this session taking the branch (see
        :meth:`claimed`): whichever drops the turn from the follower first announces
        it, and on the loop, so before the signals of what that session does next.
        False, and nothing done, when the claim is taken: by a turn of this session,
        which announces it, or of another process, which does too (its signals are
        relayed here); the follower asks again once the claim is free.
        """
        follower, soon = self._follower, self._soon
        if follower is None or soon is None:
            return False
        with self._settling:  # a send here waits for this (take_claim), not BusyError
            try:
                claim: Claim | None = self._claims.take(branch)
            except BusyError:
                return False
            except (OSError, CMError):
                claim = None  # cannot be claimed (a read-only folder): nothing is settled
            try:
                ids = self._io.call(self._store.path(self._context_id, branch))
                head = ids[-1] if ids else None
                if claim is not None:
                    self.before_turn(branch, head)
                reply = self._ended_reply(turn, head)
            except (OSError, CMError):
                reply = None  # the branch unreadable (or deleted): its end is still said
            finally:
                if claim is not None:
                    claim.release()

        def announce() -> None:
            if follower.end(branch, turn):
                self._announce(branch, turn, reply)

        try:
            soon(announce)
        except RuntimeError:  # the session's loop is closed: nobody is left to tell
            follower.end(branch, turn)
        return True

    def _ended_reply(self, turn: RemoteTurn, head: str | None) -> Message | None:
        # The reply ``turn`` left, as stored now (reading it makes the store mark it
        # interrupted if its writer is gone), if it is final and its end was not said:
        # the reply it was writing, or, when that is not known (a turn whose first
        # signals a compaction of the log dropped), the head if it was cut short.
        try:
            if turn.reply is not None:
                reply = self._io.call(self._store.get_message(self._context_id, turn.reply))
                return None if reply.status is MessageStatus.STREAMING else reply
            if head is None:
                return None
            last = self._io.call(self._store.get_message(self._context_id, head))
        except (OSError, CMError):
            return None
        return last if last.status is MessageStatus.INTERRUPTED else None

    def _announce(self, branch: str, turn: RemoteTurn, reply: Message | None) -> None:
        # The end of another process's ``turn``, as the turn would have said it.
        if reply is not None:
            self._publish(
                ev.MessageCompleted(branch=branch, message_id=reply.id, status=reply.status)
            )
        self._publish(
            ev.StateChanged(branch=branch, old=turn.state, new=fsm.State.IDLE, turn_id=turn.turn_id)
        )

    def claim_locked(self, branch: str) -> bool:
        """Whether a live process (this one included) holds ``branch``'s claim lock."""
        path_of = self._claim_path
        return path_of is not None and lock_is_held(path_of(self._context_id, branch))

    def held_here(self, branch: str) -> bool:
        """Whether this session was granted ``branch``'s claim (a turn, a settle, a
        deletion): not while it is only asking for it, which may be refused."""
        return branch in self._claims.taken()

    def _held(self, branch: str) -> bool:
        # A claim being asked for in this session counts too: it may be granted.
        return branch in self._claims.held() or self.claim_locked(branch)
