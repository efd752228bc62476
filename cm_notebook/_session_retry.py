"""``session.retry()``: ask again for a reply that failed for good.

A branch whose turn failed permanently (a bad key, an unknown model) is in the state
``PermanentFailure`` in the process that ran it, which remembers the request: retrying
repeats it as it was, with the same provider and generation parameters.

The state machine lives in memory, but the failure is also on disk: the branch's head
is the failed reply (status ``error``, with the parameters it was asked with). So a
retry also works after the context was reopened (a restarted kernel, once the key is
set) and in a process that only saw another one fail (a second kernel, the server):
the branch's head is then taken as the failure, under the branch's claim, and the
request is made again with the branch's provider and the failed reply's parameters.

A reply stopped while it was failing (a try had failed and the next had not answered:
its process died while it waited to try again, or it was stopped then) failed too,
though it ends ``interrupted``: its ``failed_attempts`` say so, and it is retried
like one that ended in an error.
"""

from __future__ import annotations

from typing import Any

from . import events as ev
from . import fsm
from ._session_reading import SessionReading
from ._unwritable import unwritable
from .errors import BusyError, StateError
from .model import Message, MessageStatus
from .providers.base import Provider
from .turn import Turn

__all__ = ["RetryMethods"]


class RetryMethods(SessionReading):
    """The ``retry`` method of :class:`~cm_notebook.session.ContextSession`."""

    def retry(self, *, branch: str | None = None) -> Turn:
        """Try the failed reply again (after a permanent failure, e.g. once a key is set).

        The request is repeated as it was: same provider, same generation parameters.
        A failure this process did not see (the context was reopened since, or another
        process ran the turn) is retried with the branch's provider (the one the
        context was opened with, say) and the failed reply's parameters. Only while the
        branch is as the failure left it: once another process has written to it, this
        raises :class:`~cm_notebook.errors.StateError` and writes nothing (a retry would
        replace that process's reply). A reply stopped while it was failing (a try of it
        had failed: say, the kernel restarted while it waited to try again) is retried
        too; one stopped with no try failed is not (``regenerate()`` asks for a new
        reply beside it).
        """
        name = self._branch_name(branch)
        self._head(name)  # BranchNotFoundError for a branch that does not exist
        # A reply being made there (a retry asked twice, say) is what stands in the way,
        # whatever the branch's last reply was.
        self._refuse_running(name)
        if self.running_turn_id(name) is not None:
            raise BusyError(
                f"a reply is still being generated on branch {name!r} by another process; "
                f"wait for it, or stop it with session.stop(branch={name!r})"
            )
        self._check_retryable(name)
        cannot_write = unwritable(self._store, self.id)
        if cannot_write is not None:
            # Refused before anything is announced: taking the failure on here says the
            # branch changed state, for a retry that then could not start.
            raise cannot_write
        with self._claim(name, answer_dead_round=False) as claim:
            # Again under the claim: no other process can move the branch on from here.
            self._check_retryable(name)
            provider, params = self._failed_request(name)
            self._check_not_moved_on(name)
            prompt = self._rewind_to_prompt(name)
            return self._start(claim, fsm.Retry(), prompt, provider, params)

    def _check_retryable(self, name: str) -> None:
        state = self._machines.get(name).state
        if state is fsm.State.PERMANENT_FAILURE:
            return
        if state is fsm.State.IDLE and self._failed_reply_at_head(name) is not None:
            return
        head = self._head(name)
        last = self.get(head) if head is not None else None
        if last is None or last.role != "assistant":
            what = "it has no reply at its end"
        elif last.status is MessageStatus.INTERRUPTED:
            # Stopped (by the user, or its process died) with no try failed: it did
            # not fail, and regenerate() keeps its text beside the new reply.
            what = (
                "its last reply was stopped before it finished (status 'interrupted'), "
                "no try of it failed"
            )
        else:
            what = f"its last reply did not fail (status {last.status.value!r})"
        raise StateError(
            f"nothing to retry on branch {name!r}: its state is {state.value} and {what}; "
            "use regenerate() for a new reply"
        )

    def _failed_reply_at_head(self, name: str) -> Message | None:
        # The branch's head if it is a reply that failed: one that ended in an error,
        # or one stopped while it was failing (a try had failed, and the next one had
        # not answered: its process died while it waited to try again, say).
        head = self._head(name)
        if head is None:
            return None
        message = self.get(head)
        if message.role != "assistant":
            return None
        if message.status is MessageStatus.ERROR:
            return message
        if message.status is MessageStatus.INTERRUPTED and message.metadata.failed_attempts:
            return message
        return None

    def _failed_request(self, name: str) -> tuple[Provider, dict[str, Any]]:
        # The provider and parameters to ask again with; a failure found on disk (this
        # process's machine is Idle) becomes this process's, so the turn can start.
        if self._machines.get(name).state is fsm.State.PERMANENT_FAILURE:
            with self._lock:
                last = self._last_request.get(name)
            return last if last is not None else (self._provider(None), {})
        failed = self._failed_reply_at_head(name)
        if failed is None:  # moved on since the check before the claim
            raise StateError(
                f"branch {name!r} moved on since its reply failed (another process wrote "
                "to it); send again or regenerate() for a new reply"
            )
        provider, _ = self._defaults.for_request(self._read_metadata(), name, None, {})
        self._machines.adopt_failure(name, failed.id)
        self._publish(
            ev.StateChanged(branch=name, old=fsm.State.IDLE, new=fsm.State.PERMANENT_FAILURE)
        )
        return provider, dict(failed.metadata.parameters or {})

    def _check_not_moved_on(self, name: str) -> None:
        # The failure is known only here: another process (or a store used directly)
        # may have written to the branch since, without this process's follower having
        # seen it yet (or without any signal). Its head then is not the failed turn's.
        failed = self._machines.failed_head(name)
        if failed is None or self._head(name) == failed:
            return
        if self._machines.overtaken(name, failed):
            # This process holds the claim: nobody else runs a turn there to contradict.
            self._publish(
                ev.StateChanged(branch=name, old=fsm.State.PERMANENT_FAILURE, new=fsm.State.IDLE)
            )
        raise StateError(
            f"branch {name!r} moved on since this failure (another process wrote to it); "
            "send again or regenerate() for a new reply"
        )
