"""A sweep's cells on a session: planned against the stored branches, then started.

:func:`start_sweep` is what ``session.sweep(...)`` does: plan the cells
(:func:`~cm_notebook.sweep.plan_sweep`), check every variant against the provider that
will answer it and every cell already stored against the plan (before anything is
written), mark the cells that ended in a complete reply as done, and start the rest.
:func:`start_cell` creates a cell's branch if it is new and sends its prompt, or, for a
cell whose prompt was stored by an earlier run that did not finish, asks for a new
reply to it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import events as ev
from . import fsm
from .errors import BranchExistsError, BusyError, InvalidInputError
from .fanout import arm_settings
from .model import Message, MessageStatus, ProviderSettings
from .providers.pool import ProviderLike
from .sweep import Sweep, SweepCell, finish, plan_sweep
from .turn import Turn

if TYPE_CHECKING:
    from .session import ContextSession

__all__ = ["complete_reply", "start_cell", "start_sweep"]

# The sweeps each session started, by name: one run of a name at a time.
_RUNNING: weakref.WeakKeyDictionary[ContextSession, dict[str, Sweep]] = weakref.WeakKeyDictionary()


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
    plan = plan_sweep(prompts, variants, inputs=inputs, repeat=repeat, name=name)
    running = _RUNNING.setdefault(session, {})
    previous = running.get(plan.name)
    if previous is not None and not previous.done():
        raise BusyError(f"sweep {plan.name!r} is still running; await it (or cancel it) first")
    empty: dict[str, Any] = {"system_prompt": None, "provider": None, "params": {}}
    settings = [arm_settings(empty, arm, session._provider) for arm in plan.variants]
    seeded = [
        _seeds_repeats(session, arm.provider, found)
        for arm, found in zip(plan.variants, settings, strict=True)
    ]
    branches = session.metadata.branches
    for cell in plan.cells:
        found = branches.get(cell.branch)
        if found is None:
            continue
        if found.labels.get("sweep") != plan.name or found.labels.get("cell") != cell.key:
            raise BranchExistsError(
                f"branch {cell.branch!r} exists and is not cell {cell.key} of sweep "
                f"{plan.name!r}; give the sweep another name"
            )
        if found.labels.get("sweep_def") != plan.definition:
            raise InvalidInputError(
                f"a sweep named {plan.name!r} with other prompts, inputs or variants "
                "exists already; give this one another name"
            )
        done = complete_reply(session, cell.branch)
        if done is not None:
            finish(cell, done)
    labels = {"sweep": plan.name, "sweep_def": plan.definition}

    def start(cell: SweepCell) -> Turn:
        arm = plan.variants[cell.variant_index]
        own = settings[cell.variant_index]
        if seeded[cell.variant_index]:
            own = {**own, "params": {**own["params"], "seed": cell.repeat}}
        return start_cell(session, cell, labels, own, arm.provider)

    sweep = Sweep(session, plan, start, concurrency=concurrency, progress=progress)
    running[plan.name] = sweep
    return sweep


def _seeds_repeats(
    session: ContextSession, provider: ProviderLike | None, settings: dict[str, Any]
) -> bool:
    # Repeat n of a variant without a seed of its own is sampled with seed n, when its
    # provider takes one: repeats are distinct samples (a provider whose default seed
    # is fixed would repeat itself), and running the study again reproduces them.
    if "seed" in settings["params"]:
        return False
    answering = provider if provider is not None else settings["provider"]
    if isinstance(answering, ProviderSettings):
        answering = answering.spec
    return "seed" in getattr(session._provider(answering), "parameters", ())


def start_cell(
    session: ContextSession,
    cell: SweepCell,
    sweep_labels: dict[str, str],
    settings: dict[str, Any],
    provider: ProviderLike | None,
) -> Turn:
    """Start ``cell``'s reply: its branch made if new, its prompt sent (or, if an
    earlier run stored the prompt, a new reply asked for it)."""
    if cell.branch not in session.metadata.branches:
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
    # A provider instance is not stored with the branch: keep it for this session.
    session._defaults.remember(cell.branch, provider)
    if session._head(cell.branch) is None:
        return session.send(cell.text, branch=cell.branch, metadata=cell.variables)
    chosen, generation = session._defaults.for_request(session.metadata, cell.branch, None, {})
    with session._claim(cell.branch) as claim:
        prompt = session._rewind_to_prompt(cell.branch)
        return session._start(claim, fsm.Send(), prompt, chosen, generation)


def complete_reply(session: ContextSession, branch: str) -> Message | None:
    """The last message of ``branch`` if it is a finished reply (not one whose tool
    calls still wait), else None."""
    head = session._head(branch)
    entry = session._index().get(head) if head is not None else None
    if entry is None or entry.role != "assistant" or entry.status is not MessageStatus.COMPLETE:
        return None
    message = session.get(entry.id)
    return None if message.tool_calls else message
