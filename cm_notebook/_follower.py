"""Following a context's signal log: other processes' signals on this process's bus.

A session whose store keeps a signal log (:mod:`cm_notebook.signal_log`) runs one
:class:`LogFollower`: a daemon thread that reads the log when it changed and hands each
signal written by another process to ``relay`` with its number unchanged, so a view in
kernel B streams the reply kernel A is generating.

When it changed is told by file-change notification (:mod:`cm_notebook._file_events`:
one watcher per process wakes the followers whose folders changed), with a slow safety
read every ``safety`` seconds in case a notification is lost. Where notification is not
to be had (no ``watchfiles``, a refused watch, ``CM_NOTEBOOK_FILE_EVENTS=0``), the
follower polls every ``interval`` seconds instead: that works on every file system and
costs one ``fstat`` when nothing changed. A change that only added this process's own
records (known from the writer's :meth:`~cm_notebook.signal_log.SignalLog.own_tail` and
one ``stat`` of the log, on the watcher's thread) does not wake it: a turn run here
writes a record every few milliseconds, and the follower would read each only to skip
it.

It also remembers the turns that other processes announce on their branches
(:mod:`cm_notebook._remote_turns`), whose state ``session.state`` reports for a branch
this process is not running a turn on. While another process says a branch is busy,
the follower checks that its claim lock is still held; when it is not (the owner died,
e.g. SIGKILL), ``on_dead(branch, turn)`` is called so the session can mark the reply
interrupted and announce the turn over. A turn's end is announced once: the turn is
dropped from the follower by whoever announces it, ``on_dead``'s work or this process
taking the branch's claim for a turn of its own (:meth:`LogFollower.take_over`), which
must announce the dead turn's end before its own turn's signals.

The calls it lists as waiting in another process are those of a branch whose claim is
held, but not by this process: a claim is held by one process at a time, so while this
one holds it (a turn of its own, or settling the calls a killed process left open,
whose signals the follower does not read), a call another process asked there before
is over, though nothing the follower read says so.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from . import fsm
from ._file_events import Subscription, watch_folders
from ._open_calls import Calls, forget_branch, track_calls
from ._remote_decisions import DECISIONS_FOLDER
from ._remote_turns import RemoteTurn, RemoteTurns, track_turn
from .redact import get_logger
from .signal_log import LogReader
from .signals import Event, Resync, StateChanged, ToolApprovalRequested
from .store.folders import context_folder_of

__all__ = ["LogFollower"]

logger = get_logger(__name__)

# How long waiting_calls() waits for the follower to read the log as it is (a step
# takes milliseconds; the first, which reads the log whole, longer for a large log).
_CATCH_UP_SECONDS = 1.0

# How long after a turn let go of its claim its last signal (Idle) may still come: the
# turn writes it right after, on its loop. A process that died writes nothing.
_LAST_SIGNAL_GRACE = 0.1


class LogFollower:
    """Republishes other writers' signals from a log (see the module docstring).

    Args:
        reader: positioned where following starts (usually the log's end).
        own_writer: this process's writer token; its records are not relayed.
        relay: called on the follower's thread with each foreign signal.
        claim_held: whether the claim lock of a branch is held by a live process.
        held_here: whether this process holds the claim of a branch.
        on_dead: called on the follower's thread when a busy branch's owner is gone,
            with the turn it left: True if its end is being announced (the turn is
            then left to :meth:`end`), False to be asked again at a later step (the
            claim was taken meanwhile: a new turn, whose process announces it).
        each_poll: called on the follower's thread after every read (e.g. to pick up
            decisions other processes made for this process's tool calls).
        own_tail: this process's writer's
            :meth:`~cm_notebook.signal_log.SignalLog.own_tail`: a change of the log
            that added only this process's records (known by one ``stat``) does not
            wake the follower.
        interval: seconds between two reads of the log when polling.
        watch: folders whose changes (also in their sub-folders) wake the follower:
            by default the log's folder and the context's folder of decision records;
            empty: always poll.
        safety: seconds between two reads when notified (a lost notification costs
            at most this); ``busy_safety`` while another process runs a turn, so the
            death of its owner (which writes nothing) is noticed soon.
    """

    def __init__(
        self,
        reader: LogReader,
        own_writer: str,
        *,
        relay: Callable[[Event], None],
        claim_held: Callable[[str], bool],
        on_dead: Callable[[str, RemoteTurn], bool | None],
        held_here: Callable[[str], bool] = lambda branch: False,
        each_poll: Callable[[], None] = lambda: None,
        own_tail: Callable[[], tuple[int, int, int, int] | None] = lambda: None,
        interval: float = 0.05,
        watch: Iterable[Path] | None = None,
        safety: float = 1.0,
        busy_safety: float = 0.25,
    ) -> None:
        self._reader = reader
        self._own = own_writer
        reader.skip_writer(own_writer)  # this process's own signals are not relayed
        self._relay = relay
        self._claim_held = claim_held
        self._held_here = held_here
        self._on_dead = on_dead
        self._each_poll = each_poll
        self._own_tail = own_tail
        # (tool call id, message id) -> branch of calls waiting for approval elsewhere.
        self._calls: Calls = {}
        # Steps begun and done (the first is the whole read, _seed): see caught_up().
        self._steps = threading.Condition()
        self._begun = self._done = 0
        self._interval = interval
        self._lock = threading.Lock()
        # Notified when a signal read was relayed: a turn may have ended (take_over).
        self._ended = threading.Condition(self._lock)
        self._relaying = False  # a signal tracked is being relayed
        self._remote: RemoteTurns = {}
        self._safety, self._busy_safety = safety, busy_safety
        self._stop = threading.Event()
        self._wake = threading.Event()
        # The log's folder, and the one of decision and stop records (watched one by
        # one: see cm_notebook._file_events), both in the context folder.
        self._context = context_folder_of(reader.path)
        self._folders = (
            [reader.path.parent, self._context / DECISIONS_FOLDER] if watch is None else list(watch)
        )
        # Subscribed once the folders exist (a context being created has none yet).
        self._subscription: Subscription | None = None
        self._polling = not self._folders  # True once notification was refused
        self._thread = threading.Thread(target=self._run, name="cm-signal-follower", daemon=True)
        self._thread.start()

    @property
    def notified(self) -> bool:
        """Whether file-change notification wakes this follower (False: it polls)."""
        subscription = self._subscription
        return subscription is not None and subscription.live

    def remote_state(self, branch: str) -> fsm.State | None:
        """The state another live process last announced for ``branch`` (None: none
        known, or its process died: the follower announces that at its next step)."""
        with self._lock:
            turn = self._remote.get(branch)
        if turn is None or not self._claim_held(branch):
            return None
        return turn.state

    def remote_turn(self, branch: str) -> str | None:
        """The id of the turn another (live) process is running on ``branch``, if any.

        A turn that began before this process began following is looked up in the log.
        """
        with self._lock:
            turn = self._remote.get(branch)
        known = None if turn is None else turn.turn_id
        if known is None:
            reader = LogReader(self._reader.path, since=0)
            try:
                for writer, event in reader.poll():
                    if (
                        writer != self._own
                        and isinstance(event, StateChanged)
                        and event.branch == branch
                    ):
                        over = event.new in fsm.RESTING_STATES
                        known = None if over else (event.turn_id or known)
            finally:
                reader.close()
        if known is None or not self._claim_held(branch):
            return None
        return known

    def waiting_call(self, tool_call_id: str, branch: str | None = None) -> list[tuple[str, str]]:
        """``(message id, branch)`` of each call ``tool_call_id`` waiting for approval in
        another live process (on ``branch`` if given): two processes may each number
        their calls ``call_1``. Usually one, or none.

        A call asked for after the follower's last read is looked up in the log.
        """
        found = self.waiting_calls(branch, wait=False)
        if not any(call_id == tool_call_id for call_id, _, _ in found):
            # Not heard of yet: the log read whole (a call asked a moment ago).
            calls: Calls = {}
            reader = LogReader(self._reader.path, since=0)
            try:
                for writer, event in reader.poll():
                    self._track(calls, writer, event)
            finally:
                reader.close()
            found = self._alive(calls, branch)
        return [(message_id, on) for call_id, message_id, on in found if call_id == tool_call_id]

    def waiting_calls(
        self, branch: str | None = None, *, wait: bool = False
    ) -> list[tuple[str, str, str]]:
        """``(tool call id, message id, branch)`` of every call waiting for approval in
        another live process (only ``branch``'s if given), in the order they were asked,
        as this follower knows them (it reads the log within milliseconds of a change;
        the first read, of the whole log, may take longer).

        With ``wait``, first waits (at most a second) for the follower to read the log
        as it is now (see :meth:`caught_up`): for an action, never on a view's path.
        """
        if wait:
            self.caught_up(_CATCH_UP_SECONDS)
        with self._lock:
            calls = dict(self._calls)
        return self._alive(calls, branch)

    def _alive(self, calls: Calls, branch: str | None) -> list[tuple[str, str, str]]:
        # The calls of ``branch`` (or all) whose process still holds the branch's claim,
        # i.e. is alive to pick a decision up. Not when this process holds it: see the
        # module docstring.
        alive: dict[str, bool] = {}
        waiting = []
        for (call_id, message_id), asked_on in calls.items():
            if asked_on is None or branch not in (None, asked_on):
                continue
            if asked_on not in alive:
                alive[asked_on] = self._claim_held(asked_on) and not self._held_here(asked_on)
            if alive[asked_on]:
                waiting.append((call_id, message_id, asked_on))
        return waiting

    def _track(self, calls: Calls, writer: str, event: Event) -> None:
        # ``calls`` after ``event``, in a read of the log whole. This process's own
        # requests are not tracked (its calls are on its desk), but its other signals
        # are: they may end another process's calls (it settled those its killed
        # process left open, or began a turn on their branch).
        if writer != self._own or not isinstance(event, ToolApprovalRequested):
            track_calls(calls, event)

    def close(self) -> None:
        """Stop following. Does not wait: the thread may be inside a store read that
        needs the caller's event loop; it ends within one interval.

        A step under way when closed begins no new announcement of a dead owner, and
        an error it meets from then on (the process exiting under it, its store's
        workers gone) is not reported: a turn left unsettled still has a state other
        than Idle in the log and no claim held, so the next process that follows the
        log settles and announces it (see ``_seed``)."""
        self._stop.set()
        self._wake.set()
        if self._subscription is not None:
            self._subscription.cancel()

    def _subscribe(self) -> None:
        if self._polling or self._subscription is not None or self._stop.is_set():
            return
        if not self._context.is_dir():
            return  # not made yet: poll, and try again next time
        for folder in self._folders:
            # Made now so that it can be watched (records may come before this process
            # writes any); a folder that cannot be made is left to the safety reads.
            with contextlib.suppress(OSError):
                folder.mkdir(exist_ok=True)
        folders = [folder for folder in self._folders if folder.is_dir()]
        log = os.path.realpath(self._reader.path)
        records = {os.path.realpath(folder) for folder in self._folders[1:]}

        def wants(path: str) -> bool:
            # The log, or a record in the decisions folder: not the store's own files.
            # Not the log when all it gained is this process's own records, which the
            # follower would read only to skip them: the signals of a turn run here
            # would wake it (a thread switch, a read) every few milliseconds.
            if path == log:
                return not self._only_own_unread(log)
            return os.path.dirname(path) in records

        self._subscription = watch_folders(folders, self._wake.set, wants)
        self._polling = self._subscription is None
        if self._stop.is_set() and self._subscription is not None:
            self._subscription.cancel()  # closed meanwhile

    def _only_own_unread(self, log: str) -> bool:
        # On the watcher's thread: whether every byte of the log the reader has not
        # read is this process's writer's own (so the change needs no read). The
        # writer's own run of records must reach the end of the file (nothing appended
        # after it: files of the log only grow, and a compaction makes a new one) and
        # begin where the reader is or before (nothing of others' left unread in
        # between). A change made meanwhile is conservative: it makes the file longer
        # than the writer's end (a wake-up), or is a new change, which is dispatched
        # again; whatever cannot be told wakes the follower.
        own = self._own_tail()
        read = self._reader.position
        if own is None or read is None:
            return False
        try:
            named = os.stat(log)
        except OSError:
            return False
        dev, ino, start, end = own
        return (
            (named.st_dev, named.st_ino, named.st_size) == (dev, ino, end)
            and read[0] == dev
            and read[1] == ino
            and start <= read[2]
        )

    def _pause(self) -> float:
        # How long to wait for a wake-up before reading anyway.
        self._subscribe()
        if not self.notified:
            return self._interval
        with self._lock:
            busy = bool(self._remote)
        return self._busy_safety if busy else self._safety

    def caught_up(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until the follower has read the log as it
        is now: a signal another process wrote before this call is then known here
        (e.g. to a client that heard of a call over SSE and asks for the list). False
        on timeout, or when called from the follower's own thread (no wait)."""
        if threading.current_thread() is self._thread:
            return False
        with self._steps:
            target = self._begun + 1  # a step begun after this call
        self._wake.set()
        with self._steps:
            return self._steps.wait_for(lambda: self._done >= target, timeout)

    def _run(self) -> None:
        # Cleared before each read: a change made during the read wakes the next one.
        try:
            with self._counted():
                try:
                    if self._seed():
                        self.step()  # owners already gone are announced at once
                except Exception:
                    self._failed("reading the signal log %s failed")
            while True:
                self._wake.wait(self._pause())
                self._wake.clear()
                if self._stop.is_set():
                    return
                with self._counted():
                    try:
                        self.step()
                    except Exception:
                        # Following is a convenience: a damaged log must not kill the
                        # thread.
                        self._failed("following the signal log %s failed")
        finally:
            self._reader.close()
            with self._steps:
                self._done = self._begun = 1 << 62  # closed: nobody waits for a step
                self._steps.notify_all()

    def _failed(self, what: str) -> None:
        # In an except block. Once closed, the step's work was being cut short on
        # purpose (close() does not wait for it, and a script's exit shuts the store's
        # workers down under it): the next follower redoes it, so that is no error.
        if self._stop.is_set() or sys.is_finalizing():
            logger.debug(what, self._reader.path, exc_info=True)
        else:
            logger.exception(what, self._reader.path)

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        with self._steps:
            self._begun += 1
        try:
            yield
        finally:
            with self._steps:
                self._done += 1
                self._steps.notify_all()

    def _seed(self) -> bool:
        # Turns other processes began before this one followed the log: their last
        # state, from the log read whole (on this thread: opening never waits for it).
        # Also the turns of processes that died while nobody followed (a server killed
        # and started again): their last state is not Idle, and no live process holds
        # their claim; the first step then announces them over (on_dead), or clients
        # replaying the log would show them streaming for ever. True if any was found.
        # The calls still waiting for approval elsewhere are gathered on the way.
        turns: RemoteTurns = {}
        calls: Calls = {}
        reader = LogReader(self._reader.path, since=0)
        try:
            for writer, event in reader.poll():
                self._track(calls, writer, event)
                if writer != self._own:
                    track_turn(turns, event)
                elif isinstance(event, StateChanged) and event.branch:
                    turns.pop(event.branch, None)  # this process's own: it knows them
        finally:
            reader.close()
        found = False
        with self._lock:
            for key, asked_on in calls.items():
                self._calls.setdefault(key, asked_on)
            for branch, turn in turns.items():
                if branch not in self._remote:
                    self._remote[branch] = turn
                    found = True
        return found

    def step(self) -> None:
        """Read the log once and check busy branches' owners (the thread's loop body)."""
        self._read()
        self._each_poll()
        with self._lock:
            busy = [
                branch
                for branch, turn in self._remote.items()
                if not turn.ending and not self._claim_held(branch)
            ]
        if not busy:
            return
        # A turn that just ended is not a dead one. It lets go of its claim just before
        # it announces Idle (so that a callback of that signal may send at once), then
        # writes it within a moment: read again, and once more after that moment.
        self._read()
        with self._lock:
            busy = [branch for branch in busy if branch in self._remote]
        if busy:
            self._stop.wait(_LAST_SIGNAL_GRACE)
            self._read()
        for branch in busy:
            if self._stop.is_set():
                return  # closed: the next follower settles it (see close())
            if self._claim_held(branch):
                continue  # taken again meanwhile (a new turn): alive
            with self._lock:
                turn = self._remote.get(branch)
                if turn is None or turn.ending:
                    continue
                turn.ending = True
                forget_branch(self._calls, branch)  # no process is left to pick them up
            if not self._on_dead(branch, turn):
                with self._lock:
                    turn.ending = False  # not announced: looked at again next step

    def end(self, branch: str, turn: RemoteTurn) -> bool:
        """Drop ``turn`` (still ``branch``'s), whose end the caller is announcing: True,
        or False if it is gone already (ended, or announced over by someone else)."""
        with self._lock:
            if self._remote.get(branch) is not turn:
                return False
            del self._remote[branch]
            forget_branch(self._calls, branch)
            self._ended.notify_all()
            return True

    def take_over(self, branch: str) -> RemoteTurn | None:
        """This process took ``branch``'s claim: the turn another process ran there is
        over. Returns it, dropped, for the caller to announce its end before anything
        of its own (None: there was none, or it announced its own end).

        Its claim being free, the turn ended or its process died. A turn that ended
        lets go of its claim a moment before it writes its Idle: that is waited for
        (at most a moment). The log is read first, so a turn is judged on all it said.
        Not on the follower's own thread.
        """
        self._catch_up()
        with self._ended:
            turn = self._remote.get(branch)
            if turn is not None and not turn.ending:  # ending: known dead (see step)
                self._ended.wait_for(
                    lambda: self._remote.get(branch) is not turn, _LAST_SIGNAL_GRACE
                )
        if turn is not None:
            self._catch_up()
        with self._ended:
            # What was read is relayed (queued on the session's loop) before the caller
            # says anything: the turn's own Idle among it.
            self._ended.wait_for(lambda: not self._relaying, _CATCH_UP_SECONDS)
            turn = self._remote.pop(branch, None)
            if turn is not None:
                forget_branch(self._calls, branch)
        return turn

    def _catch_up(self) -> None:
        # Wait for the follower to read what other processes wrote in the log so far;
        # at once when there is nothing of theirs unread (the usual case).
        if self._foreign_unread():
            self.caught_up(_CATCH_UP_SECONDS)

    def _foreign_unread(self) -> bool:
        # Whether the log holds records of other writers that the reader has not read
        # (when it cannot be told: True).
        read = self._reader.position
        log = os.path.realpath(self._reader.path)
        try:
            named = os.stat(log)
        except OSError:
            return True
        if read is not None and (named.st_dev, named.st_ino, named.st_size) == read:
            return False
        return not self._only_own_unread(log)

    def _read(self) -> None:
        for writer, event in self._reader.poll():
            if writer == self._own or isinstance(event, Resync):
                continue
            with self._lock:
                track_turn(self._remote, event)
                track_calls(self._calls, event)
                self._relaying = True
            try:
                self._relay(event)
            finally:
                with self._ended:
                    self._relaying = False
                    self._ended.notify_all()  # a turn's end told: see take_over
