"""The read side of a session: title, messages, the tree, prompts and comparisons.

:class:`SessionReading` sits between :class:`~cm_notebook._session_core.SessionCore`
(the runtime) and :class:`~cm_notebook.session.ContextSession` (the operations); its
methods are public API of ``ContextSession``. Reads that a view repeats (the tree,
a page of history, a comparison) are served from the message index and read only the
message files they return. The title's upkeep lives here too: an untitled context is
named after its first message, and with ``auto_title`` the model is asked for a
better title in the background (:mod:`cm_notebook.titles`).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from . import fsm, titles
from ._approval_apply import check_arguments_shape
from ._decision_outcome import DecisionOutcomes, Outcome, PostedCall
from ._loop import schedule_on
from ._session_core import SessionCore
from ._stranded_rounds import as_ended, may_hold_stranded
from .approvals import already_resolved
from .compare import BranchResult, Comparison
from .errors import (
    CMError,
    InvalidInputError,
    ToolArgumentsError,
    ToolCallAlreadyResolvedError,
)
from .ids import validate_branch_name, validate_message_id
from .labels import baseline_of
from .model import Message, MessageStatus, ToolCall, ToolCallStatus
from .prompts import effective_system
from .providers import Provider
from .store import IndexEntry
from .titles import UNTITLED, replace_title, title_from_text, validate_title
from .tools import validate_edited_arguments
from .tree import MessageTree
from .turn import Turn

__all__ = ["SessionReading", "WaitingCall"]

# A decision the waiting process has not acted on in time counts as made: its record
# stays, and the process applies it when it next looks.
_NO_ANSWER_YET = Outcome(applied=True)


class WaitingCall(NamedTuple):
    """A tool call waiting for approval in another process: the call, its reply's id
    and its branch."""

    call: ToolCall
    message_id: str
    branch: str


class SessionReading(SessionCore):
    """Title, history, tree, system prompts and comparisons of a session's context."""

    # -- the title ---------------------------------------------------------------------

    @property
    def title(self) -> str:
        """The context's title; assign to rename it (``session.title = "..."``)."""
        return self._read_metadata().title

    @title.setter
    def title(self, value: str) -> None:
        self.rename(value)

    def rename(self, title: str) -> str:
        """Give the context a new title (white space collapsed); returns it."""
        self._check_open()
        title = validate_title(title)
        self._io.call(self._store.update_metadata(self.id, title=title))
        self._publish_context_update(["title"])
        return title

    # -- reading -----------------------------------------------------------------------

    def history(
        self,
        branch: str | None = None,
        *,
        before: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[Message]:
        """The messages of a branch (default: active), root first.

        ``limit``: only the last N. ``before``: only those before that message of the
        branch, to scroll back through a long conversation page by page::

            page = session.history(limit=50)
            older = session.history(before=page[0].id, limit=50)

        With ``limit``, only the page's message files are read, however long the branch.
        """
        name = self._branch_name(branch)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise InvalidInputError(f"limit must be a positive integer, got {limit!r}")
        if before is not None:
            validate_message_id(before)
        if limit is not None:
            page = self._io.call(self._store.page(self.id, name, limit=limit, before=before))
            return self._as_left(page)
        ids = self._io.call(self._store.path(self.id, name))
        if before is not None:
            if before not in ids:
                raise InvalidInputError(
                    f"message {before!r} is not on branch {name!r}; history(before=...) "
                    "takes an id from that branch"
                )
            ids = ids[: ids.index(before)]
        return self._as_left(self._io.call(self._store.get_messages(self.id, ids)))

    def _read_path(self, branch: str) -> builtins.list[Message]:
        # The messages of ``branch`` for the package's own views, which only read them:
        # the settled ones served from this session's cache (shared, not copied, and no
        # file read), the others read from disk. history() copies every message it
        # returns, read from its file: a view redrawn after each turn of a long
        # conversation paid that for all of them.
        name = self._branch_name(branch)
        _, messages = self._io.call(self._messages.path_messages(self._store, self.id, name))
        return self._as_left(messages)

    def _as_left(self, messages: builtins.list[Message]) -> builtins.list[Message]:
        # A reply whose final state the disk refused (TurnHost.unsettled) reads as its
        # turn left it (interrupted, with its text), not as stored (streaming) until
        # the disk has room for it. A tool round a dead process left open in a folder
        # that cannot be written reads as settling it will record it (_stranded_rounds).
        if may_hold_stranded(messages):
            messages = self._io.call(as_ended(self._store, self.id, messages))
        with self._lock:
            if not self._unsettled:
                return messages
            unsettled = dict(self._unsettled)
        return [unsettled[m.id].model_copy(deep=True) if m.id in unsettled else m for m in messages]

    def tree(self) -> MessageTree:
        """The whole message tree (ids, parents, roles, branch heads), for a tree view.

        Built from the index: no message file is read. Pull a message's content with
        :meth:`get`.
        """
        # The metadata first: the index read after it holds every head it names.
        metadata = self._read_metadata()
        entries = self._index()
        return MessageTree.build(entries, metadata.branches, metadata.active_branch)

    def get(self, message_id: str) -> Message:
        """One message by id."""
        validate_message_id(message_id)
        return self._as_left([self._io.call(self._store.get_message(self.id, message_id))])[0]

    def siblings(self, message_id: str) -> builtins.list[Message]:
        """The alternatives of a message (same parent), oldest first, itself included."""
        message = self.get(message_id)
        ids = self._io.call(self._store.children(self.id, message.parent_id))
        return self._io.call(self._store.get_messages(self.id, ids))

    def _decide_elsewhere(
        self,
        call_id: str,
        *,
        approved: bool,
        reason: str | None,
        arguments: Mapping[str, Any] | str | None = None,
        by: str = "user",
        remember: str = "once",
        branch: str | None = None,
    ) -> builtins.list[ToolCall] | None:
        # A call waiting in another process: record the decision for it to pick up.
        # None if it waits here, or no other process is known to wait on it.
        if self._follower is None or self._decisions is None:
            return None
        here = self._approvals.branches().get(call_id)
        if here is not None and branch in (None, here):
            # It waits here; without a branch, another process's call of the same id
            # (each numbers its own ``call_1``) makes the id ambiguous, as below.
            there = [on for each, _, on in self._follower.waiting_calls(None) if each == call_id]
            if branch is None and there:
                on = ", ".join(repr(name) for name in [here, *there])
                raise InvalidInputError(
                    f"tool calls waiting on branches {on} all have the id {call_id!r}: "
                    "say which with branch="
                )
            return None
        found = self._follower.waiting_call(call_id, branch)
        if not found:
            return None
        if len(found) > 1:
            on = ", ".join(repr(asked_on) for _, asked_on in found)
            raise InvalidInputError(
                f"tool calls waiting in other processes on branches {on} all have the id "
                f"{call_id!r}: say which with branch="
            )
        [(message_id, asked_on)] = found
        calls = [call for call in self.get(message_id).tool_calls if call.id == call_id]
        edited = None
        if arguments is not None:
            # Checked here when this process has the tool (the waiting one checks again).
            name = calls[0].name if calls else None
            if name is not None and name in self.tools:
                edited = validate_edited_arguments(self.tools.get(name), arguments)
            else:
                edited = check_arguments_shape(arguments)
        outcomes = self._outcomes_of([PostedCall(call_id, message_id, asked_on)])
        try:
            posted = self._decisions.post(
                call_id,
                message_id,
                approved=approved,
                reason=reason,
                arguments=edited,
                by=by,
                remember=remember,
            )
        except BaseException:
            outcomes.close()  # refused (a full disk, a planted link): nothing to wait for
            raise
        if not posted:
            outcomes.close()
            # Say what became of it, as far as the file says yet (the other process may
            # not have stored its decision, or the denial it made as it ended).
            stored = [call for call in self.get(message_id).tool_calls if call.id == call_id]
            raise already_resolved(call_id, stored[0] if stored else None)
        outcome = outcomes.wait().get((call_id, message_id))
        if outcome is not None and outcome.refused is not None:
            raise ToolArgumentsError(outcome.refused)
        if outcome is not None and not outcome.applied:
            raise ToolCallAlreadyResolvedError(
                f"tool call {call_id!r} on branch {asked_on!r} ended before this decision "
                "reached the process running it (its turn was stopped): the call did not "
                "run, and the decision was not recorded"
            )
        return calls

    def _post_elsewhere(
        self,
        waiting: builtins.list[WaitingCall],
        *,
        approved: bool,
        reason: str | None,
        by: str,
        remember: str = "once",
    ) -> builtins.list[ToolCall]:
        # The decision for each of these calls waiting in other processes (see
        # _waiting_elsewhere); those another client decided meanwhile, and those whose
        # turn ended before the decision reached it, are left out.
        if self._decisions is None or not waiting:
            return []
        outcomes = self._outcomes_of(
            PostedCall(call.id, message_id, asked_on) for call, message_id, asked_on in waiting
        )
        posted = []
        try:
            for call, message_id, _ in waiting:
                if self._decisions.post(
                    call.id,
                    message_id,
                    approved=approved,
                    reason=reason,
                    arguments=None,
                    by=by,
                    remember=remember,
                ):
                    posted.append((call, message_id))
                else:
                    outcomes.forget(call.id, message_id)
        except BaseException:
            outcomes.close()  # refused (a full disk, a planted link): its reader goes too
            raise
        applied = outcomes.wait()
        return [
            call
            for call, message_id in posted
            if applied.get((call.id, message_id), _NO_ANSWER_YET).applied
        ]

    def _outcomes_of(self, calls: Iterable[PostedCall]) -> DecisionOutcomes:
        # Read from the log's end as it is now: before the decisions are posted.
        assert self._signal_log is not None  # a session with a follower keeps a log
        return DecisionOutcomes(self._signal_log.path, calls)

    def _waiting_elsewhere(
        self, branch: str | None, *, wait: bool = False
    ) -> builtins.list[WaitingCall]:
        # The calls waiting for approval in other live processes, with their messages:
        # as the log follower knows them (milliseconds behind the log), or with
        # ``wait`` once it has read the log as it is now (an action, off a view's path).
        if self._follower is None:
            return []
        waiting: builtins.list[WaitingCall] = []
        for call_id, message_id, asked_on in self._follower.waiting_calls(branch, wait=wait):
            try:
                message = self.get(message_id)
            except CMError:
                continue  # its reply was deleted since: nothing can pick a decision up
            waiting.extend(
                WaitingCall(
                    call.model_copy(update={"status": ToolCallStatus.PENDING}),
                    message_id,
                    asked_on,
                )
                for call in message.tool_calls
                if call.id == call_id
            )
        return waiting

    def _pending_on_branches(self) -> builtins.list[tuple[ToolCall, str]]:
        # Every call waiting, here then elsewhere, with its branch (for the views: two
        # processes may both have a ``call_1`` waiting, each on its own branch).
        return self._approvals.calls_with_branches() + [
            (waiting.call, waiting.branch) for waiting in self._waiting_elsewhere(None)
        ]

    def _mid_turn(self, branch: str) -> bool:
        # A turn runs on ``branch`` and the branch's head is not a place to continue
        # from: the turn's own prompt, its unfinished reply, or tool answers the next
        # reply is coming after. (A reply waiting for tool approval is finished.)
        claimed = branch in self._claims.held()  # (not under self._lock: its own lock)
        with self._lock:
            setting_up = claimed and branch not in self._runners
        if setting_up:
            # A send on it has claimed the branch and may have written its prompt,
            # but its turn does not run yet: the head is that unanswered prompt.
            return True
        return (
            self.running_turn_id(branch) is not None
            and self.state_of(branch) is not fsm.State.AWAITING_TOOL_APPROVAL
        )

    def running_turn_id(self, branch: str | None = None) -> str | None:
        """The id of the turn running on ``branch`` (default: active): this session's,
        or one another live process that opened the context runs (a kernel's, seen
        from the server); None when none runs."""
        name = self._branch_name(branch)
        with self._lock:
            runner = self._runners.get(name)
        if runner is not None:
            return runner.turn.id
        if self._follower is None or self.state_of(name) is fsm.State.IDLE:
            return None
        return self._follower.remote_turn(name)

    @property
    def signal_log_path(self) -> Path | None:
        """The context's signal log (:mod:`cm_notebook.signal_log`), if its store keeps one."""
        return None if self._signal_log is None else self._signal_log.path

    @property
    def state(self) -> fsm.State:
        """The state machine's state on the active branch."""
        return self.state_of(self.active_branch)

    def state_of(self, branch: str) -> fsm.State:
        """The state machine's state on ``branch`` (each branch has its own machine).

        For a branch another process is running a turn on, the state it announced. A
        branch whose last reply failed before this session saw it (the context was
        reopened after a restart, or another process ran the turn) is in
        ``PermanentFailure`` too: :meth:`retry` tries that reply again.
        """
        state = self._machines.get(branch).state
        if state is fsm.State.IDLE and self._follower is not None:
            state = self._follower.remote_state(branch) or state
        if state is fsm.State.IDLE and self._failed_head_entry(branch) is not None:
            return fsm.State.PERMANENT_FAILURE
        return state

    def _failed_head_entry(self, branch: str) -> IndexEntry | None:
        # The index entry of the branch's head if it is a failed reply (None for an
        # unknown branch): without reading the message.
        found = self._read_metadata().branches.get(branch)
        if found is None or found.head is None:
            return None
        entry = self._index_entry(found.head)
        if entry is None or entry.role != "assistant" or entry.status is not MessageStatus.ERROR:
            return None
        return entry

    # -- prompts -----------------------------------------------------------------------

    def system_prompt_of(self, branch: str | None = None) -> str | None:
        """The system prompt replies on ``branch`` (default: active) are generated under."""
        name = self._branch_name(branch)
        self._head(name)  # BranchNotFoundError for an unknown branch
        return effective_system(self._read_metadata(), name)

    # -- comparing ---------------------------------------------------------------------

    def compare(self, *branches: str) -> Comparison:
        """Compare the last answers of ``branches`` (default: every branch).

        The first branch is the one the others are diffed and measured against: the
        pinned baseline (:meth:`pin_baseline`) when it is among the compared branches,
        the others following in the order given (as the compare view shows them); else
        the first given."""
        names = [validate_branch_name(name) for name in branches] or list(self.branches)
        baseline = baseline_of(self.metadata)
        if baseline in names:  # pinned as the branch comparisons are measured against
            names = [baseline, *(name for name in names if name != baseline)]
        paths = [self._io.call(self._store.path(self.id, name)) for name in names]
        # Read after the paths, so it holds every id on them; only answers' files are read.
        index = self._index()
        results = []
        for name, path in zip(names, paths, strict=True):
            last = next((mid for mid in reversed(path) if index[mid].role == "assistant"), None)
            answer = self.get(last) if last is not None else None
            results.append(BranchResult.of(name, answer, self.system_prompt_of(name)))
        return Comparison(results=results)

    # -- private helpers ---------------------------------------------------------------

    async def _title_quietly(self, sent: Message, turn: Turn, provider: Provider) -> None:
        # A title is a convenience: failing to write one must not fail the send (the
        # context stays untitled and the next send tries again).
        with contextlib.suppress(CMError, OSError):
            await self._name_after(sent, turn, provider)

    async def _name_after(self, sent: Message, turn: Turn, provider: Provider) -> None:
        # An untitled context is named after its first user message (usually the one
        # just sent); with auto_title the model is asked for a better title once the
        # turn is over, in the background.
        index = await self._store.index(self.id)
        users = [entry for entry in index.values() if entry.role == "user"]
        first_id = min(users, key=lambda entry: entry.seq).id if users else sent.id
        first = sent if first_id == sent.id else await self._store.get_message(self.id, first_id)
        title = title_from_text(first.content)
        # Only while still untitled: whether it was untitled was read when the send
        # began, and a title given since (rename() here or in another process) stays.
        if not await replace_title(self._store, self.id, title, UNTITLED):
            return  # named meanwhile: no automatic title, none asked of the model
        self._publish_context_update(["title"])
        if self._auto_title:
            job = schedule_on(self._loop, self._ask_title(turn, provider, first.content, title))
            self._background.add(job)
            job.add_done_callback(self._background.discard)

    async def _ask_title(self, turn: Turn, provider: Provider, text: str, made: str) -> None:
        # After the turn, so the title request never competes with the reply.
        with contextlib.suppress(CMError):
            await turn
        suggested = await titles.ask_model(provider, text)
        if suggested is None:
            return
        # Keep a title the user chose meanwhile.
        if not await replace_title(self._store, self.id, suggested, made):
            return
        self._publish_context_update(["title"])
