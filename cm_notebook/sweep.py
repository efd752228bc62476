"""Sweeps: prompts (or a template over rows of inputs) crossed with variants, repeated.

``session.sweep(prompts, variants, inputs=..., repeat=n)`` plans one *cell* per
prompt x input row x variant x repeat. Each cell is its own branch, started from the
root of the context, named ``<sweep>-p<i>[-i<j>]-v<k>-r<n>`` and labelled ``sweep``,
``cell``, ``variant``, ``repeat``, ``input`` (and ``prompt``, ``sweep_def``), so the
cells can be found, exported and grouped later. The variant's system prompt, provider
and generation parameters are the branch's own defaults (as for a fan-out arm, see
:mod:`cm_notebook.fanout`), so a follow-up send on a cell continues its experiment.
Repeat ``n`` of a variant that sets no ``seed`` is sampled with ``seed=n`` when its
provider takes a seed: the repeats are distinct samples even where a provider's
default seed is fixed (the built-in model's is 0), and running the study again
reproduces them.

Cells run on the session's event loop, at most ``concurrency`` at once. A sweep is
identified by its name (by default derived from its prompts, inputs and variants, not
from ``repeat``, so asking for more repeats extends it): running the same sweep again,
in this process or a new one after a kernel restart, skips the cells whose prompt got
a complete reply and runs the rest (unstarted, interrupted or failed cells). A cell's
answer is always the reply to its own prompt: follow-ups sent on its branch later are
kept there, but never counted as the cell's answer. A variant whose provider refuses
every request (no or a refused API key, an unknown model) starts no more cells after the
first fails so: they stay pending for a re-run (see :mod:`cm_notebook._sweep_stops`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable, KeysView, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ._loop import schedule_on
from ._sweep_inputs import fill as fill  # where it was defined before
from ._sweep_inputs import filled, refuse_missing
from ._sweep_labels import MAX_SWEEP_NAME as MAX_SWEEP_NAME  # where it was defined before
from ._sweep_labels import check_labels, check_name
from ._sweep_stops import VariantStops, progress_bar
from .compare import is_answer
from .errors import CMError, InvalidInputError
from .fanout import Variant, variant_labels
from .ids import validate_new_branch_name
from .model import Message
from .params import validate_text
from .providers import Provider
from .providers.pool import spec_of
from .sweep_results import failure, refuse_clashing_inputs
from .turn import Handle, Turn

if TYPE_CHECKING:
    import pandas as pd

    from .session import ContextSession
    from .sweep_results import SweepStability
    from .widgets.sweep_grid import SweepGrid

__all__ = ["CellStatus", "Sweep", "SweepCell", "SweepPlan", "plan_sweep"]

#: Where a cell is: not run yet, running, ended in a complete reply (``done``; also
#: for one finished before this run), or ended otherwise (``failed``, see ``error``).
CellStatus = Literal["pending", "running", "done", "failed"]

#: The most cells one sweep may have (each is a branch of the context).
MAX_SWEEP_CELLS = 10_000
#: A variant is a provider spec, a Provider, or a mapping of these keys (and
#: generation parameters, flat or under ``params``).
_VARIANT_KEYS = frozenset({"label", "provider", "system", "params"})


@dataclass
class SweepCell:
    """One prompt x input x variant x repeat of a sweep: its branch and its outcome.

    ``status``, ``message_id`` (the reply), ``reply`` (its text) and ``error`` change
    while the sweep runs (on the session's loop), and, once it has ended, when read
    through :attr:`Sweep.cells` after another run of the sweep answered the cell;
    ``turn`` is the running turn.
    """

    key: str
    branch: str
    prompt_index: int
    input_index: int | None
    variant_index: int
    variant: str
    repeat: int
    text: str
    row: dict[str, Any] | None = None
    status: CellStatus = "pending"
    message_id: str | None = None
    reply: str = ""
    error: str | None = None
    turn: Turn | None = field(default=None, repr=False)

    @property
    def labels(self) -> dict[str, str]:
        """The labels its branch carries (without the sweep's name and definition)."""
        return {
            "cell": self.key,
            "variant": self.variant,
            "repeat": str(self.repeat),
            "input": "" if self.input_index is None else str(self.input_index),
            "prompt": str(self.prompt_index),
        }

    @property
    def variables(self) -> dict[str, Any]:
        """The user message's metadata: which input values filled its template."""
        if not self.row:
            return {}
        return {"variables": {key: _short(value) for key, value in self.row.items()}}

    @property
    def group(self) -> tuple[int, int | None, int]:
        """What its repeats share: (prompt, input row, variant)."""
        return (self.prompt_index, self.input_index, self.variant_index)

    @property
    def live_text(self) -> str:
        """The reply so far: the running turn's text, else the stored reply."""
        turn = self.turn
        if self.status == "running" and turn is not None:
            return turn.text
        return self.reply


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will run: its name, definition hash, variants and cells."""

    name: str
    definition: str
    variants: list[Variant]
    labels: list[str]
    cells: list[SweepCell]


def _short(value: object) -> str:
    # An input value as recorded with the message: text as is, else its repr, cut short.
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _rows(inputs: object) -> list[dict[str, Any]] | None:
    # A list of mappings, or anything with pandas' ``to_dict("records")`` (a DataFrame).
    if inputs is None:
        return None
    to_dict = getattr(inputs, "to_dict", None)
    if callable(to_dict) and not isinstance(inputs, Mapping):
        inputs = to_dict("records")
    if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Iterable):
        raise InvalidInputError(
            "inputs must be a list of mappings (or a DataFrame), e.g. [{'city': 'Paris'}, ...]"
        )
    rows = []
    for index, row in enumerate(inputs):
        if not isinstance(row, Mapping) or not all(isinstance(k, str) for k in row):
            raise InvalidInputError(f"input row {index} is not a mapping of names to values")
        rows.append(dict(row))
    if not rows:
        raise InvalidInputError("inputs is empty: give at least one row, or leave it out")
    return rows


def _variant(raw: object, index: int) -> tuple[dict[str, Any], Variant]:
    # The variant flattened (for its label and hash) and as a fan-out arm.
    if isinstance(raw, (str, Provider)) and not isinstance(raw, Mapping):
        return {"provider": raw}, Variant(branch="", provider=raw)
    if not isinstance(raw, Mapping):
        raise InvalidInputError(
            f"variant {index} must be a mapping (e.g. {{'temperature': 0.7}}), a provider "
            f"spec or a Provider, got {type(raw).__name__}"
        )
    flat = {k: v for k, v in raw.items() if k != "params"}
    nested = raw.get("params", {})
    if not isinstance(nested, Mapping):
        raise InvalidInputError(f"variant {index}: params must be a mapping")
    flat.update(nested)
    system = flat.get("system")
    if system is not None and not isinstance(system, str):
        raise InvalidInputError(f"variant {index}: system must be a string")
    label = flat.get("label")
    if label is not None and not isinstance(label, str):
        raise InvalidInputError(f"variant {index}: label must be a string")
    params = {k: v for k, v in flat.items() if k not in _VARIANT_KEYS}
    return flat, Variant(branch="", provider=flat.get("provider"), params=params, system=system)


def _canonical(value: object) -> object:
    # A stable, JSON-able form of a sweep's definition (providers by spec).
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Provider):
        return spec_of(value)
    if isinstance(value, (set, frozenset)):
        # Iterated in an order that changes from one process to the next.
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, default=str))
    text = repr(value)
    if _ADDRESS.search(text):
        # The name and the resume of a sweep rest on this form: one that changes with
        # every process would make a re-run after a restart redo (and pay for) every cell.
        raise InvalidInputError(
            f"a {type(value).__name__} in the sweep's inputs or variants has no stable "
            f"form ({text[:80]} names a place in memory), so a re-run could not find its "
            "cells again: pass a str, a number, or a list or dict of them"
        )
    return text


#: The memory address in a default repr, "<Foo object at 0x7f...>".
_ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]+")


def plan_sweep(
    prompts: str | Sequence[str],
    variants: Sequence[object],
    *,
    inputs: object = None,
    repeat: int = 1,
    name: str | None = None,
    default_provider: str | None = None,
) -> SweepPlan:
    """Check a sweep's definition and plan its cells (pure: nothing is written).

    ``default_provider`` is the spec of the provider that answers the variants that
    name none: it is part of the definition, so the same prompts answered by another
    model are another sweep, never resumed into this one's cells.
    """
    if not isinstance(prompts, Iterable) or isinstance(prompts, (bytes, Mapping)):
        raise InvalidInputError(
            f"prompts must be a string or a list of strings, got {type(prompts).__name__}"
        )
    if isinstance(prompts, AbstractSet) and not isinstance(prompts, KeysView):
        # A set has no order of its own (a dict's keys have one): its order (the cells'
        # p<i> keys, the default name) differs in every process, so a re-run would
        # resume nothing.
        raise InvalidInputError(
            f"prompts must be in an order of their own, got a {type(prompts).__name__}, "
            "whose order changes from one process to the next (a re-run would not resume "
            "the sweep); pass a list, e.g. sorted(prompts)"
        )
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompt_list:
        raise InvalidInputError("a sweep needs at least one prompt")
    for prompt in prompt_list:
        validate_text(prompt)
    if isinstance(variants, (str, bytes, Mapping)) or not isinstance(variants, Sequence):
        raise InvalidInputError("variants must be a list, e.g. [{'temperature': 0}, ...]")
    if not variants:
        raise InvalidInputError("a sweep needs at least one variant, e.g. [{}]")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise InvalidInputError(f"repeat must be a positive integer, got {repeat!r}")
    rows = _rows(inputs)
    if rows is not None:
        refuse_clashing_inputs(rows)
        refuse_missing(prompt_list, rows)
    flat, arms = zip(*(_variant(v, i) for i, v in enumerate(variants)), strict=True)
    labels = variant_labels(list(flat))
    defined: dict[str, object] = {"prompts": prompt_list, "inputs": rows, "variants": list(flat)}
    if default_provider is not None and any(v.get("provider") is None for v in flat):
        defined["default_provider"] = default_provider
    definition = hashlib.sha256(
        json.dumps(_canonical(defined), sort_keys=True).encode()
    ).hexdigest()[:12]
    if name is None:
        name = f"sweep-{definition[:8]}"
    check_name(name)
    check_labels(name, labels)
    count = len(prompt_list) * (len(rows) if rows is not None else 1) * len(labels) * repeat
    if count > MAX_SWEEP_CELLS:
        # Each cell is a branch with its own files, and the plan is built in memory:
        # refused before either, rather than running out of memory or disk half-way.
        raise InvalidInputError(
            f"this sweep has {count:,} cells (prompts x input rows x variants x repeat); "
            f"the limit is {MAX_SWEEP_CELLS:,}. Split it into several sweeps, or use fewer "
            "repeats or rows"
        )
    cells = []
    for p, template in enumerate(prompt_list):
        for i, row in enumerate(rows) if rows is not None else [(None, None)]:
            text = template if row is None else filled(template, row, p, i)
            for v, label in enumerate(labels):
                for r in range(repeat):
                    key = f"p{p}" + (f"-i{i}" if i is not None else "") + f"-v{v}-r{r}"
                    cells.append(
                        SweepCell(
                            key=key,
                            branch=validate_new_branch_name(f"{name}-{key}"),
                            prompt_index=p,
                            input_index=i,
                            variant_index=v,
                            variant=label,
                            repeat=r,
                            text=text,
                            row=row,
                        )
                    )
    return SweepPlan(name, definition, list(arms), labels, cells)


class Sweep(Handle["Sweep"]):
    """A sweep running on a session: ``await sweep`` (notebooks) or ``sweep.run()``
    (scripts) waits for every cell; both return the sweep itself.

    A cell that fails does not stop the others: it ends ``failed`` with its ``error``
    (the ``failure`` of its reply's record), and running the same sweep again runs it
    again; this handle then reads the cell as the store has it (see :attr:`cells`).
    Only a failure that every cell of its variant would meet (the provider refuses the
    key, or does not know the model) starts no more cells of that variant: they stay
    pending, and :attr:`stopped` says why.
    :meth:`cancel` interrupts the running cells and starts no more; the sweep then
    ends (and can be resumed).
    Read the results with :meth:`to_dataframe` / :meth:`to_records`,
    :meth:`stability` and :meth:`view`.
    """

    def __init__(
        self,
        session: ContextSession,
        plan: SweepPlan,
        start: Callable[[SweepCell], Turn | Message],
        *,
        concurrency: int,
        progress: bool,
    ) -> None:
        super().__init__(session._loop)
        self.session = session
        self.name = plan.name
        self.definition = plan.definition
        self.variant_labels = plan.labels
        self._cells = plan.cells
        # Reading a sweep that has ended brings its cells up to date with the store
        # (see ``cells``): the store's change token when it last did, and the answer
        # (id, status) last looked at per cell, so that reading again costs little.
        self._reading = threading.Lock()
        self._read_token: object | None = None
        self._seen: dict[str, tuple[str, str]] = {}
        self._start_cell = start
        self._concurrency = concurrency
        self._listeners: list[Callable[[SweepCell], None]] = []
        self._stopping = False
        self._stops = VariantStops(plan.labels)
        self._bar = progress_bar(self, progress)
        self.attach(schedule_on(self._loop, self._run()), self._cancel_all)

    # -- running ------------------------------------------------------------------------

    def run(self, timeout: float | None = None) -> Sweep:
        """Block until every cell has finished (scripts); returns the sweep."""
        return self.result(timeout)

    async def _run(self) -> Sweep:
        limit = asyncio.Semaphore(self._concurrency)

        async def one(cell: SweepCell) -> None:
            async with limit:
                if not self._stopping and not self._stops.stopped(cell.variant_index):
                    await self._run_cell(cell)

        try:
            await asyncio.gather(*(one(cell) for cell in self._cells if cell.status != "done"))
        finally:
            if self._bar is not None:
                self._bar.close()
        return self

    async def _run_cell(self, cell: SweepCell) -> None:
        cell.status, cell.error = "running", None
        self._changed(cell)
        try:
            started = self._start_cell(cell)
            if isinstance(started, Message):
                # Answered meanwhile by another run of the sweep: its reply is kept.
                finish(cell, started)
                return
            cell.turn = started
            self._changed(cell)
            finish(cell, await started)
        except CMError as exc:
            cell.status, cell.error = "failed", str(exc)
            turn = cell.turn
            cell.message_id = turn.message_id if turn is not None else None
            # The partial text the failed reply was stored with, as its records say.
            cell.reply = turn.text if turn is not None else ""
            if self._stops.note(cell, exc) and self._bar is not None:
                self._bar.set_postfix_str(self._stops.postfix())
        finally:
            if self._bar is not None:
                self._bar.update(1)
            self._changed(cell)

    def _cancel_all(self) -> None:
        # Stop: running cells are interrupted (their text kept), pending ones stay
        # pending; the sweep then ends as usual and a later run resumes it.
        self._stopping = True
        for cell in self._cells:
            if cell.turn is not None and cell.status == "running":
                cell.turn.cancel()

    # -- listening ----------------------------------------------------------------------

    def listen(self, listener: Callable[[SweepCell], None]) -> Callable[[], None]:
        """Call ``listener(cell)`` (on the session's loop) whenever a cell changes;
        returns a function that stops it."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def _changed(self, cell: SweepCell) -> None:
        for listener in list(self._listeners):
            listener(cell)

    # -- reading ------------------------------------------------------------------------

    @property
    def cells(self) -> list[SweepCell]:
        """The cells, in plan order.

        While the sweep runs they change as it goes. Once it has ended they are read
        up to date with the store: a cell that another run of the sweep (a new handle,
        a re-run after a restart, another kernel) answered since shows as ``done`` with
        that answer, as :meth:`to_records` does, and so does everything read from them
        (:meth:`counts`, :meth:`stability`, :meth:`view`, the repr). A ``done`` cell
        whose reply was regenerated shows the new reply (or its failure); one whose
        branch was deleted, or that has no answer left on it, is ``pending`` again.
        They are looked at only when the context's files changed since the last look,
        and only a cell whose answer changed costs a message read.
        """
        if self.done():
            self._refresh()
        return self._cells

    def _refresh(self) -> None:
        from .sweep_cells import refresh_cells

        token = self.session._change_token()  # taken first: a racing write reads again
        with self._reading:
            if token is not None and token == self._read_token:
                return
            try:
                refresh_cells(self.session, self._cells, self._seen)
            except CMError:
                return  # the store cannot be read now: the cells as last known
            self._read_token = token

    @property
    def branches(self) -> list[str]:
        """The cells' branches, in cell order."""
        return [cell.branch for cell in self._cells]

    def counts(self) -> dict[str, int]:
        """How many cells are pending, running, done and failed (once the sweep has
        ended, as the store has them now: see :attr:`cells`)."""
        out = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        for cell in self.cells:
            out[cell.status] += 1
        return out

    @property
    def stopped(self) -> dict[str, str]:
        """By variant label, why the variants whose provider refused a cell in a way
        that would fail all of them (a missing or refused key, an unknown model) started
        no more cells, and how many stay pending (for the next run of the sweep)."""
        return self._stops.notes(self.cells)

    def cell(self, key: str) -> SweepCell:
        """The cell with key ``key`` (``"p0-v1-r2"``) or branch name."""
        for cell in self.cells:
            if key in (cell.key, cell.branch):
                return cell
        raise KeyError(key)

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per reply of the sweep's cells (see :meth:`to_dataframe`).

        ``failure`` says why a reply did not complete: the error it was stored with
        (a provider's "quota exceeded", a cancel), as the cell's ``error`` says it; None
        for a complete reply.

        A message file that cannot be read (damaged or deleted) costs no other record,
        not even of its own cell (a cell with follow-ups keeps its readable replies):
        ``error`` names the file and what to do in the records it concerns (None
        elsewhere), an unreadable reply keeps a record with its place only, and a
        StoreWarning names the sweep, the cell and the file. A read the operating
        system refused (permission denied, too many open files) raises its StoreIOError.
        """
        from .sweep_results import sweep_records

        return sweep_records(self)

    def to_dataframe(self) -> pd.DataFrame:
        """The sweep's replies as a pandas DataFrame: the columns of
        ``session.to_dataframe()`` for its branches, plus ``sweep``, ``cell``,
        ``variant``, ``repeat``, ``input`` (the row's index), ``error`` and ``failure``
        (see :meth:`to_records`) and ``input_<name>`` per input column. Needs the
        ``[data]`` extra (pandas)."""
        from .sweep_results import sweep_dataframe

        return sweep_dataframe(self)

    def stability(self) -> SweepStability:
        """How stable each prompt x input x variant is over its repeats: identical
        answers grouped and counted, near-identical ones diffed against the most
        common (a :class:`~cm_notebook.sweep_results.SweepStability`). An answer that
        cannot be read is left out, counted as ``unreadable`` and named in a
        StoreWarning (a read the operating system refused raises its StoreIOError)."""
        from .sweep_results import SweepStability

        return SweepStability.of(self)

    def view(self) -> SweepGrid:
        """A live grid of the cells: rows are prompts (and input rows), columns are
        variants, repeats stacked in each; replies stream in as they are generated."""
        from .widgets.sweep_grid import SweepGrid

        return SweepGrid(self)

    def __repr__(self) -> str:
        counts = self.counts()
        shown = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        why = "".join(f"; {note}" for note in self.stopped.values())
        return f"<Sweep {self.name!r} {len(self.cells)} cells: {shown}{why}>"

    def _repr_html_(self) -> str:
        from .widgets.sweep_grid import grid_html

        return grid_html(self)


def finish(cell: SweepCell, message: Message) -> None:
    """Record ``message`` (the cell's last reply) as the cell's outcome: ``done`` for an
    answer, else ``failed`` with why. A reply that only asks for tools is no answer: its
    turn was stopped in that tool round (while its calls waited for approval, or a tool
    ran), and the next run of the sweep asks the cell again."""
    cell.message_id = message.id
    cell.reply = message.content
    if is_answer(message):
        cell.status, cell.error = "done", None
    else:
        cell.status = "failed"
        ended = message.status.value
        cell.error = failure(message) or (
            "the reply only asks for tools, and its turn ended in that round"
            if ended == "complete"
            else f"the reply ended {ended}"
        )
