"""A sweep's cells on a session: planned against the stored branches, then started.

:func:`start_sweep` is what ``session.sweep(...)`` does: plan the cells
(:func:`~cm_notebook.sweep.plan_sweep`), check every variant against the provider that
will answer it and every cell already stored against the plan (before anything is
written), mark the cells whose own prompt got a complete reply as done, and start the
rest. :func:`start_cell` creates a cell's branch if it is new and sends its prompt, or,
for a cell whose prompt was stored by an earlier run that did not finish, asks for a
new reply to it; a cell that another run (another kernel) answered since the plan was
made is not asked again: its reply is kept as its answer.

A cell's answer is the reply to its own prompt (the first user message on its branch),
whatever was sent on the branch after it: follow-ups on a cell continue its experiment
but are never taken for its answer. A branch whose first user message is another text
(sent on the cell's empty branch before the sweep reached it) has no answer for the cell:
the cell fails, saying how to run it. So does a cell whose prompt or reply file cannot
be read (damaged or deleted): the other cells run, and it is not asked again, as it
may have its answer (:func:`unreadable_cell` says what to do). A read the operating
system refused (permission denied, too many open files) fails the cell too, but says
so, and nothing of damage: see :mod:`cm_notebook._sweep_read_errors`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import events as ev
from . import fsm
from ._sample_seeds import takes_seed
from ._stand_in_refusals import stand_in_error
from ._sweep_read_errors import cell_read_error, unreadable_cell
from ._unicode import without_surrogates
from .compare import tool_round_stop
from .errors import (
    BranchExistsError,
    BusyError,
    CMError,
    InvalidIdError,
    InvalidInputError,
    StateError,
)
from .fanout import arm_settings
from .ids import branch_name_key
from .model import Branch, Message, MessageStatus
from .providers.pool import ProviderLike, spec_of
from .store.base import IndexEntry
from .store.stand_ins import stand_in_file
from .sweep import Sweep, SweepCell, finish, plan_sweep
from .turn import Turn

if TYPE_CHECKING:
    from .session import ContextSession

__all__ = ["complete_reply", "refresh_cells", "start_cell", "start_sweep", "unreadable_cell"]

# The sweeps running in each session, by name: one run of a name at a time. A sweep
# leaves once it has ended: it holds its session, which would otherwise keep the weak
# key (and every session that ever ran a sweep, its signals and messages) alive.
_RUNNING: weakref.WeakKeyDictionary[ContextSession, dict[str, Sweep]] = weakref.WeakKeyDictionary()
_RUNNING_LOCK = threading.Lock()


def start_sweep(
    session: ContextSession,
    prompts: str | Sequence[str],
    variants: Sequence[Any],
    *,
    inputs: Any,
    repeat: int,
    concurrency: int,
    name: str | None,
    progress: bool,
) -> Sweep:
    """Plan and start a sweep on ``session`` (see ``ContextSession.sweep``)."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidInputError(f"concurrency must be a positive integer, got {concurrency!r}")
    # The model that answers the variants naming no provider is part of the sweep: a
    # re-run after the session's default changed must not resume the cells (a
    # stability group would mix two models), so it is another sweep.
    default = spec_of(session._provider(None))
    plan = plan_sweep(
        prompts, variants, inputs=inputs, repeat=repeat, name=name, default_provider=default
    )
    with _RUNNING_LOCK:
        previous = _RUNNING.get(session, {}).get(plan.name)
    if previous is not None and not previous.done():
        raise BusyError(f"sweep {plan.name!r} is still running; await it (or cancel it) first")
    empty: dict[str, Any] = {"system_prompt": None, "provider": None, "params": {}}
    settings = [arm_settings(empty, arm, session._provider) for arm in plan.variants]
    # A variant's own "seed": None asks for the provider's default, as a fan-out arm's
    # does: arm_settings drops the None, so look at the variant's own parameters.
    seeded = [
        "seed" not in arm.params and takes_seed(session._provider, arm.provider, found)
        for arm, found in zip(plan.variants, settings, strict=True)
    ]
    branches = session._read_metadata().branches
    _refuse_look_alikes(plan.name, plan.cells, branches)
    # Any branch of a sweep of this name, not only the cells this plan shares with it:
    # two definitions under one name would mix in its results and stability groups.
    if any(
        found.labels.get("sweep") == plan.name and found.labels.get("sweep_def") != plan.definition
        for found in branches.values()
    ):
        raise InvalidInputError(
            f"a sweep named {plan.name!r} with other prompts, inputs or variants, or "
            "whose variants without a provider of their own were answered by another "
            f"default provider than this session's ({default!r}), exists already; "
            "give this one another name, or name the provider in its variants"
        )
    for cell in plan.cells:
        found = branches.get(cell.branch)
        if found is None:
            continue
        if found.labels.get("sweep") != plan.name or found.labels.get("cell") != cell.key:
            raise BranchExistsError(
                f"branch {cell.branch!r} exists and is not cell {cell.key} of sweep "
                f"{plan.name!r}; give the sweep another name"
            )
        try:
            done = complete_reply(session, cell.branch, cell.text)
        except CMError:
            # A message of the cell that cannot be read (its prompt or reply file
            # damaged): the other cells go on; this one is run as not done, and
            # start_cell fails it, naming the file, without asking the model again.
            continue
        if done is not None:
            finish(cell, done)
    labels = {"sweep": plan.name, "sweep_def": plan.definition}

    def own(cell: SweepCell) -> dict[str, Any]:
        found = settings[cell.variant_index]
        if seeded[cell.variant_index]:
            return {**found, "params": {**found["params"], "seed": cell.repeat}}
        return found

    _create_cells(session, [c for c in plan.cells if c.branch not in branches], labels, own)

    def start(cell: SweepCell) -> Turn | Message:
        arm = plan.variants[cell.variant_index]
        return start_cell(session, cell, labels, own(cell), arm.provider)

    sweep = Sweep(session, plan, start, concurrency=concurrency, progress=progress)
    with _RUNNING_LOCK:
        running = _RUNNING.setdefault(session, {})
        running[plan.name] = sweep

    def forget() -> None:
        with _RUNNING_LOCK:
            if running.get(plan.name) is sweep:  # not a later run of the same name
                del running[plan.name]

    sweep.when_done(forget)
    return sweep


def _create_cells(
    session: ContextSession,
    cells: Sequence[SweepCell],
    sweep_labels: dict[str, str],
    settings_of: Callable[[SweepCell], dict[str, Any]],
) -> None:
    # Every new cell's branch in one store write, before any cell runs: made as each
    # cell starts, every one would rewrite the metadata of all the cells before it (a
    # cost per cell growing with the sweep), and block its caller (the kernel's loop)
    # meanwhile. Cells not yet run are empty branches; a re-run uses them.
    if not cells:
        return
    made = [
        Branch(
            name=cell.branch, head=None, labels={**sweep_labels, **cell.labels}, **settings_of(cell)
        )
        for cell in cells
    ]
    try:
        session._io.call(session._store.create_branches(session.id, made))
    except (BranchExistsError, InvalidIdError):
        # Made meanwhile by another run of the sweep (another process): each cell then
        # makes its branch, or uses the one there, as it starts.
        return
    for branch in made:
        session._publish(ev.BranchCreated(branch=branch.name, head=None))


def _refuse_look_alikes(
    name: str, cells: Sequence[SweepCell], branches: Mapping[str, Branch]
) -> None:
    # Creating a branch refuses a name that looks like an existing one (by the key of
    # cm_notebook.ids); checked here for every cell, so a sweep named "Cap" after "cap"
    # is refused before anything is written, not cell by cell as the branches are made.
    keys = {branch_name_key(existing): existing for existing in branches}
    for cell in cells:
        other = keys.get(branch_name_key(cell.branch))
        if other is None or other == cell.branch:
            continue
        owner = branches[other].labels.get("sweep")
        again = f", or name={owner!r} to run that sweep again" if owner else ""
        raise InvalidInputError(
            f"sweep name {name!r}: its cell branch {cell.branch!r} looks like the existing "
            f"branch {other!r} (they differ only in case or in letters that look alike). "
            f"Give the sweep a name that reads differently{again}."
        )


def start_cell(
    session: ContextSession,
    cell: SweepCell,
    sweep_labels: dict[str, str],
    settings: dict[str, Any],
    provider: ProviderLike | None,
) -> Turn | Message:
    """Start ``cell``'s reply: its branch made if new, its prompt sent (or, if an
    earlier run stored the prompt, a new reply asked for it).

    Returns the cell's stored reply instead, asking nothing, when its prompt got a
    complete reply since the sweep was planned (another run of the sweep, in another
    process, answered it meanwhile)."""
    if cell.branch not in session._read_metadata().branches:
        try:
            session._io.call(
                session._store.create_branch(
                    session.id,
                    cell.branch,
                    head=None,
                    labels={**sweep_labels, **cell.labels},
                    **settings,
                )
            )
        except BranchExistsError:
            pass  # made meanwhile by another run of the sweep: use it
        else:
            session._publish(ev.BranchCreated(branch=cell.branch, head=None))
    # A provider instance is not stored with the branch: keep it for this session (for
    # the branch as it is now, made here or by another run of the sweep).
    made = session._read_metadata().branches.get(cell.branch) if provider is not None else None
    if made is not None:
        session._defaults.remember(made, provider)
    head = session._head(cell.branch)
    if head is None:
        return session.send(cell.text, branch=cell.branch, metadata=cell.variables)
    # The plan only knew the cells done when it was made: another kernel running the
    # same sweep may have answered this one since. Asking again would pay twice and
    # push its answer off the branch.
    own = _own_turn(session, cell.branch)
    try:
        own_prompt = _is_own_prompt(session, own, cell.text)
        done = complete_reply(session, cell.branch, cell.text) if own_prompt else None
    except CMError as exc:
        raise cell_read_error(cell.key, cell.branch, exc) from exc
    if not own_prompt:
        # The reply there answers another question: it is no answer of this cell, and
        # asking again would answer that question; the user decides what to keep.
        raise StateError(
            f"cell {cell.key}: the first message on its branch {cell.branch!r} is not the "
            "cell's prompt (another message was sent on the branch before the sweep "
            "reached it), so its reply is not the cell's answer. To run the cell, keep "
            "those messages on a branch of their own "
            f"(session.branch('<name>', from_message={head!r}, switch=False)), then "
            f"session.delete_branch({cell.branch!r}) and run the sweep again"
        )
    if done is not None:
        return done
    if own.followed:
        # Asking again would answer the last follow-up, not the cell's prompt, and
        # rewinding to the prompt would take the follow-ups off the branch: the user
        # decides what to keep.
        raise StateError(
            f"cell {cell.key}: its reply did not complete, and messages were sent after it "
            f"on its branch {cell.branch!r}; the sweep does not move the branch away from "
            "them. To run the cell again, keep them on a branch of their own "
            f"(session.branch('<name>', from_message={head!r}, switch=False)), then "
            f"session.delete_branch({cell.branch!r}) and run the sweep again"
        )
    chosen, generation = session._defaults.for_request(
        session._read_metadata(), cell.branch, None, {}
    )
    with session._claim(cell.branch) as claim:
        # Again under the claim, which other processes respect: one may have finished
        # the reply between the check above and taking the claim.
        try:
            done = complete_reply(session, cell.branch, cell.text)
        except CMError as exc:
            claim.release()
            raise cell_read_error(cell.key, cell.branch, exc) from exc
        if done is not None:
            claim.release()  # not handed to a turn: give it back here
            return done
        prompt = _rewind_to_cell_prompt(session, cell.branch)
        return session._start(claim, fsm.Send(), prompt, chosen, generation)


def _rewind_to_cell_prompt(session: ContextSession, branch: str) -> str:
    # Move the head back to the cell's prompt (its branch's first user message), so the
    # whole failed attempt (a reply, or tool rounds stopped at the limit) becomes a
    # sibling of the new reply and none of it is in the new request; returns the prompt.
    own = _own_turn(session, branch)
    if own.prompt is None:
        return session._rewind_to_prompt(branch)
    head = session._head(branch)
    prompt = own.prompt.id
    if prompt != head:
        session._io.call(
            session._store.set_branch_head(session.id, branch, prompt, expected_head=head)
        )
        session._publish_branch_update(branch, ["head"], head=prompt)
    return prompt


def refresh_cells(
    session: ContextSession, cells: Sequence[SweepCell], seen: dict[str, tuple[str, str]]
) -> None:
    """Bring the cells up to date with the store (a sweep not running).

    Another run of the sweep (a new handle, another kernel) may have answered a cell since:
    it becomes ``done`` with that answer. A cell whose latest reply to its own prompt
    ended without completing (a reply this handle did not see) becomes ``failed`` with
    that reply's error, and so does one whose turn was stopped in its tool round (its
    last reply only asks for tools), saying where it stopped. A ``done`` cell's answer
    may have changed too (:func:`refresh_done`). A cell not done is left as it is while
    its reply is still streaming, and so is one with follow-ups after a failed reply,
    and one whose branch answers another prompt (their in-memory error says what to do).
    The message index is read once; only a cell whose last answer differs from what
    ``seen`` (by cell key: the answer's id and status last looked at) holds, or a done
    cell's from its own, costs a message read, so reading a large sweep again and again
    stays cheap.
    """
    branches = session._read_metadata().branches
    index = session._index()
    for cell in cells:
        found = branches.get(cell.branch)
        if cell.status == "done":
            if found is not None and found.head is not None and found.head == cell.message_id:
                # The branch still ends at the cell's answer (no follow-ups): unchanged,
                # and known without walking to its prompt (most of a finished sweep).
                continue
            own = _own_turn_in(index, found.head) if found is not None else None
            refresh_done(session, cell, own, seen)
            continue
        if found is None or found.head is None:
            continue
        own = _own_turn_in(index, found.head)
        answer = own.answer
        if answer is not None and answer.role == "tool":
            if not own.followed:  # with follow-ups, its in-memory error says what to do
                _stopped_in_tools(session, cell, own, seen)
            continue
        if answer is None or answer.role != "assistant":
            continue
        status = answer.status
        if status is MessageStatus.STREAMING or (
            status is not MessageStatus.COMPLETE and (own.followed or answer.id == cell.message_id)
        ):
            continue
        mark = (answer.id, status.value)
        if seen.get(cell.key) == mark:
            continue
        try:
            own_prompt = _is_own_prompt(session, own, cell.text)
            message = _read(session, answer.id)
        except CMError:
            continue  # a file that cannot be read: the cell stays as it was, asked again
        seen[cell.key] = mark
        if not own_prompt or (message.status is MessageStatus.COMPLETE and message.tool_calls):
            continue  # another prompt's reply, or its tool calls still wait: no answer
        finish(cell, message)


def refresh_done(
    session: ContextSession,
    cell: SweepCell,
    own: _OwnTurn | None,
    seen: dict[str, tuple[str, str]],
) -> None:
    """Bring a ``done`` cell up to date with its branch's own turn (``own``; None when
    the branch is gone).

    A finished answer can still leave its branch: regenerated (the new reply becomes the
    cell's answer, or its failure the cell's), or taken off it (the branch deleted, its
    head moved back to the prompt). A new reply whose turn was stopped in its tool round
    is no answer: the cell is ``failed``, saying where it stopped. A cell left without
    an answer is ``pending`` again, as a cell not run: it has no record in
    ``to_records()``, and the next run of the sweep asks it again. Costs nothing beyond
    the index walk while the answer is the one the cell holds; a new reply still
    streaming leaves the cell as it is until it ends.
    """
    answer = own.answer if own is not None else None
    if answer is not None and answer.id == cell.message_id:
        return  # the answer the cell holds: the common case, no file read
    if own is not None and answer is not None and answer.role == "tool":
        if session.state_of(cell.branch) in fsm.ACTIVE_STATES:
            return  # a new reply's tool round goes on: as for one still streaming
        if not _stopped_in_tools(session, cell, own, seen):
            _unanswered(cell, seen)
        return
    if own is None or answer is None or answer.role != "assistant":
        _unanswered(cell, seen)
        return
    if answer.status is MessageStatus.STREAMING:
        return
    try:
        own_prompt = _is_own_prompt(session, own, cell.text)
        message = _read(session, answer.id)
    except CMError:
        return  # a file that cannot be read: the cell stays as it was
    if not own_prompt or (message.status is MessageStatus.COMPLETE and message.tool_calls):
        _unanswered(cell, seen)  # another prompt's reply, or its tool calls still wait
        return
    seen[cell.key] = (answer.id, answer.status.value)
    finish(cell, message)


def _stopped_in_tools(
    session: ContextSession, cell: SweepCell, own: _OwnTurn, seen: dict[str, tuple[str, str]]
) -> bool:
    """Whether the cell's own turn ends in a tool round that was stopped (its last
    reply only asks for tools, and no turn runs on its branch now); if so, the cell
    becomes ``failed``, its error saying where the turn stopped, as the run that
    stopped it reported it. A round still going on (or not readable) changes nothing."""
    reply = own.reply
    if reply is None or reply.status is not MessageStatus.COMPLETE:
        return False
    if cell.status == "failed" and cell.message_id == reply.id:
        return True  # known already (this run stopped it, or a look before): no file read
    if session.state_of(cell.branch) in fsm.ACTIVE_STATES:
        return False  # a turn goes on there: between its tools and its next request
    try:
        own_prompt = _is_own_prompt(session, own, cell.text)
        message = _read(session, reply.id)
    except CMError:
        return False
    if not own_prompt or tool_round_stop(message) is None:
        return False
    seen[cell.key] = (reply.id, reply.status.value)
    finish(cell, message)
    return True


def _unanswered(cell: SweepCell, seen: dict[str, tuple[str, str]]) -> None:
    # Back to a cell not run. Its last look is forgotten: were the same answer to come
    # back (the branch's head moved to it again), it would be the cell's once more.
    cell.status, cell.message_id, cell.reply, cell.error = "pending", None, "", None
    seen.pop(cell.key, None)


def complete_reply(session: ContextSession, branch: str, prompt: str) -> Message | None:
    """The reply to the cell prompt of ``branch`` (its first user message, whose text
    must be ``prompt``) if it is finished (not one whose tool calls still wait), else
    None; messages sent after it (follow-ups) are not the cell's answer."""
    own = _own_turn(session, branch)
    answer = own.answer
    if not _is_own_prompt(session, own, prompt):
        return None
    if answer is None or answer.role != "assistant" or answer.status is not MessageStatus.COMPLETE:
        return None
    message = _read(session, answer.id)
    return None if message.tool_calls else message


@dataclass(frozen=True)
class _OwnTurn:
    """A cell branch's own turn: its first user message (the cell's prompt, if the
    sweep sent it), the last message answering it (tool calls and their results in
    between), and whether a later user message (a follow-up) follows it."""

    answer: IndexEntry | None
    followed: bool
    prompt: IndexEntry | None = None
    #: Its last assistant message (the answer, or the step that asked for the tools
    #: whose results end the turn).
    reply: IndexEntry | None = None


def _is_own_prompt(session: ContextSession, own: _OwnTurn, prompt: str) -> bool:
    # True when the branch has no user message yet, or its first one has the cell's text.
    if own.prompt is None:
        return True
    return _read(session, own.prompt.id).content == without_surrogates(prompt)


def _read(session: ContextSession, message_id: str) -> Message:
    # A cell's prompt or reply; a stand-in that a repair wrote for an unreadable one is
    # as unreadable (its text is a placeholder: neither the prompt sent nor an answer).
    message = session.get(message_id)
    if stand_in_file(message) is not None:
        raise stand_in_error(message)
    return message


def _own_turn(session: ContextSession, branch: str) -> _OwnTurn:
    return _own_turn_in(session._index(), session._head(branch))


def _own_turn_in(index: Mapping[str, IndexEntry], head: str | None) -> _OwnTurn:
    # The own turn of the branch whose head is ``head``, from the message index.
    path: list[IndexEntry] = []
    current = head
    while current is not None and len(path) <= len(index):  # bounded: never loops
        entry = index.get(current)
        if entry is None:  # not in the index (yet): no answer we can vouch for
            return _OwnTurn(answer=None, followed=False)
        path.append(entry)
        current = entry.parent_id
    path.reverse()
    users = [at for at, entry in enumerate(path) if entry.role == "user"]
    if not users:
        return _OwnTurn(answer=None, followed=False)
    end = users[1] if len(users) > 1 else len(path)
    turn = path[users[0] + 1 : end]
    return _OwnTurn(
        answer=turn[-1] if turn else None,
        followed=len(users) > 1,
        prompt=path[users[0]],
        reply=next((entry for entry in reversed(turn) if entry.role == "assistant"), None),
    )
