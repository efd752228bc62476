"""A sweep's results: its replies as rows, and how stable each cell is over its repeats.

:func:`sweep_records` is :meth:`ContextSession.to_records
<cm_notebook.session.ContextSession.to_records>` restricted to the sweep's branches,
with the sweep's own columns after those (``sweep``, ``cell``, ``variant``,
``repeat``, ``input``: the input row's index, ``error``, ``failure``: why the reply
did not complete, and ``input_<name>`` per input column; :func:`refuse_clashing_inputs`
refuses, when the sweep is planned, an input whose column would be a fixed one, such
as ``tokens``). A message file that cannot be read costs no other record: the records
it concerns are marked with ``error``, the others are whole.
:class:`SweepStability` groups the repeats of each prompt x input x variant
(:mod:`cm_notebook.stability`): identical answers counted, near-identical ones diffed
against the most common. A group without answers (every repeat failed, or none has
finished) has no agreement: None in its record, "no answers" where shown, and left
out of the mean. A finished repeat whose answer cannot be read (its message file
damaged or deleted) is left out of its group's agreement but counted as
``unreadable`` there, shown, and named in a StoreWarning.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import records as rec
from ._html_text import WRAP_ANYWHERE
from ._stand_in_refusals import stand_in_error
from ._sweep_read_errors import os_refused
from ._theme import MUTED
from .compare import tool_round_stop
from .errors import CMError, InvalidInputError
from .model import Message, MessageStatus
from .stability import Stability, stability
from .store.diagnostics import StoreWarning
from .store.stand_ins import stand_in_file

if TYPE_CHECKING:
    import pandas as pd

    from .sweep import Sweep, SweepCell

__all__ = [
    "GroupStability",
    "SweepStability",
    "failure",
    "refuse_clashing_inputs",
    "sweep_dataframe",
    "sweep_records",
]

#: The sweep's columns, after those of :mod:`cm_notebook.records` (and before the
#: ``input_<name>`` ones).
SWEEP_COLUMNS = ("sweep", "cell", "repeat", "input", "error", "failure")


def refuse_clashing_inputs(rows: Sequence[Mapping[str, Any]]) -> None:
    """Refuse an input column whose ``input_<name>`` record column is already one of
    the fixed columns (``tokens``: ``input_tokens``, the reply's input token count).

    Checked when the sweep is planned, before anything is written: renamed silently,
    the column would not be where the docs say; written over the fixed one, the
    records would lose the reply's token counts without a word.
    """
    taken = {*rec.COLUMNS, *SWEEP_COLUMNS}
    for row in rows:
        for name in row:
            column = f"input_{name}"
            if column in taken:
                raise InvalidInputError(
                    f"input column {name!r} cannot be used: the sweep's records would "
                    f"show it as {column!r}, which is already the column of the reply's "
                    f"{column.replace('_', ' ')}. Rename the input column (e.g. to "
                    f"'n_{name}' or 'max_{name}'), and the {{{name}}} fields of the "
                    "prompt with it"
                )


def sweep_records(sweep: Sweep) -> list[dict[str, Any]]:
    """One dict per turn's reply on the sweep's branches (as
    :func:`~cm_notebook.records.records` has them: a turn's steps that only ask for
    tools have none), in cell order (cells not started have none).

    ``failure`` is why a reply is no answer (see :func:`failure`: a failed cell's
    reason, e.g. the provider's "quota exceeded", or where its turn was stopped in its
    tool round), None for an answer. The record of a failed cell's own turn (its
    branch's first) has the cell's ``error`` there even when its reply is whole (a reply
    to another message sent first on the cell's branch is not the cell's answer), so
    that the records of the cells' own turns whose ``failure`` is None are the
    answers that the cells count as ``done``.

    A message file that cannot be read (damaged or deleted) costs no other record:
    each readable reply keeps its record as usual, and ``error`` (None elsewhere) names
    the file and what to do in the records it concerns. An unreadable reply keeps a
    record with its place (context, branch, message id, turn, prompt, the sweep's
    columns, its labels and rating) and None for what only its file holds; a reply
    whose prompt cannot be read has None for ``prompt``; a reply after another
    unreadable message of its turn (a tool result, say, or a step before it) is whole
    but marked. A :class:`~cm_notebook.store.StoreWarning` names each such file, with
    its cell. A read the operating system refused (permission denied, too many open
    files) is no damage: it raises its :class:`~cm_notebook.errors.StoreIOError`,
    which says what to fix, rather than give records with holes.
    """
    session = sweep.session
    existing = session.branches
    tree = session.tree()  # from the index: the ids of each path, no file read
    cells = {
        cell.branch: cell
        for cell in sweep.cells
        if cell.branch in existing and cell.branch in tree.heads
    }
    if not cells:
        return []
    histories: list[tuple[str, list[Message]]] = []
    marks: dict[str, _Mark] = {}  # by reply id
    read: dict[str, Message | CMError] = {}  # a message shared by cells is read once
    for branch, cell in cells.items():
        messages: list[Message] = []
        prompt_error: str | None = None
        # Unreadable messages of the turn so far (its steps, their tool results): the
        # turn's reply, its only record, is marked with them.
        pending: list[str] = []
        for node in tree.path(branch):
            if node.id not in read:
                try:
                    # One message at a time: a file that cannot be read raises, naming
                    # itself, where a read of the whole branch would skip it unsaid.
                    read[node.id] = session.get(node.id)
                except CMError as exc:
                    if os_refused(exc):
                        # The operating system refused the read (too many open files,
                        # permission denied): the file may be whole, so no record is
                        # marked as unreadable; the error says what to fix.
                        raise
                    read[node.id] = exc
            found = read[node.id]
            error = None
            lost = isinstance(found, CMError)
            if isinstance(found, Message) and stand_in_file(found) is not None:
                # A placeholder written by a repair: its records are marked as for a
                # file that cannot be read (their row, made from it, says "unreadable").
                stand_in = stand_in_error(found)
                error = str(stand_in)
                _warn_unreadable(sweep, cell, node.role, node.id, stand_in)
            if isinstance(found, CMError):
                error = str(found)
                _warn_unreadable(sweep, cell, node.role, node.id, found)
                # In its place, what the index knows: its role keeps the turns counted.
                found = Message(
                    id=node.id, parent_id=node.parent_id, role=node.role, status=node.status
                )
            messages.append(found)
            if node.role == "user":
                prompt_error, pending = error, []
            elif node.role == "assistant":
                errors = [e for e in (prompt_error, *pending, error) if e is not None]
                if errors:
                    marks[node.id] = _Mark(lost, prompt_error is not None, errors)
            if error is not None and node.role != "user":
                pending.append(error)
        histories.append((branch, messages))
    by_branch: dict[str, list[dict[str, Any]]] = {}
    for row in rec.records(session.id, histories, existing, session.all_scores()):
        mark = marks.get(row["message_id"])
        if mark is not None:
            mark.apply(row)
        by_branch.setdefault(row["branch"], []).append(row)
    inputs: dict[str, None] = {}
    for cell in cells.values():
        inputs.update(dict.fromkeys(f"input_{key}" for key in cell.row or {}))
    rows = []
    for branch, cell in cells.items():
        for row in by_branch.get(branch, []):
            mark = marks.get(row["message_id"])
            row["variant"] = cell.variant
            row.update(
                {
                    "sweep": sweep.name,
                    "cell": cell.key,
                    "repeat": cell.repeat,
                    "input": cell.input_index,
                    "error": "; ".join(mark.errors) if mark is not None else None,
                    "failure": failure(read.get(row["message_id"])) or _cell_failure(cell, row),
                }
            )
            row.update({key: (cell.row or {}).get(key[len("input_") :]) for key in inputs})
            rows.append(row)
    return rows


def _cell_failure(cell: SweepCell, row: Mapping[str, Any]) -> str | None:
    # The row of a failed cell's own turn (its branch's first) is no answer even when
    # its reply is whole: it may answer another message sent there first, or be one
    # that cannot be read. It carries the cell's failure, so that the rows whose
    # ``failure`` is None are the answers the cells count.
    return cell.error if cell.status == "failed" and row["turn"] == 1 else None


def failure(found: Message | CMError | None) -> str | None:
    """Why a reply is no answer, as its cell's ``error`` says it: the error it was
    stored with (a provider's "quota exceeded"), else how it ended ("the reply ended
    interrupted"); for a reply that only asks for tools, where its turn was stopped in
    that round (:func:`~cm_notebook.compare.tool_round_stop`). None for an answer, a
    reply still streaming or whose tool round goes on, and one whose file cannot be read
    (its record's ``error`` says so)."""
    if not isinstance(found, Message) or found.status is MessageStatus.STREAMING:
        return None
    if found.status is MessageStatus.COMPLETE:
        return tool_round_stop(found)
    return found.metadata.error or f"the reply ended {found.status.value}"


#: What a record keeps of a reply whose file cannot be read (with its ``label_*``
#: columns, and its rating, held apart from the message): the rest only the file holds.
_PLACE = frozenset(
    {"context_id", "branch", "message_id", "turn", "prompt", "variant"}
    | {"thumbs", "score", "tags", "note"}
)


@dataclass(frozen=True)
class _Mark:
    # How the record of one reply is marked: its own file unreadable (``lost``), its
    # prompt's, and the errors of every unreadable message it concerns.
    lost: bool
    prompt_lost: bool
    errors: list[str]

    def apply(self, row: dict[str, Any]) -> None:
        if self.lost:
            for key in row:
                if key not in _PLACE and not key.startswith(("label_", "metric_")):
                    row[key] = None
        if self.prompt_lost:
            row["prompt"] = None


def _warn_unreadable(
    sweep: Sweep, cell: SweepCell, role: str, message_id: str, exc: CMError
) -> None:
    problem = StoreWarning(
        f"sweep {sweep.name!r}: cell {cell.key!r} (branch {cell.branch!r}): {role} "
        f"message {message_id!r} could not be read; the cell's other records are whole "
        f"and the ones it concerns are marked with this error: {exc}",
        getattr(exc, "path", None),
    )
    warnings.warn(problem, stacklevel=4)


def sweep_dataframe(sweep: Sweep) -> pd.DataFrame:
    """:func:`sweep_records` as a pandas DataFrame (the ``[data]`` extra)."""
    rows = sweep_records(sweep)
    if not rows:
        empty = rec.to_dataframe([])
        for column in SWEEP_COLUMNS:
            empty[column] = []
        return empty
    return rec.to_dataframe(rows)


@dataclass(frozen=True)
class GroupStability:
    """The repeats of one prompt x input x variant, grouped."""

    prompt: str
    input: int | None
    variant: str
    stability: Stability
    #: Finished repeats whose answer could not be read (a damaged or deleted message
    #: file): left out of ``stability``, counted here so the gap shows.
    unreadable: int = 0

    @property
    def agreement(self) -> float | None:
        """The share of answers equal to the most common one; None without answers
        (nothing to agree: a group whose repeats all failed is not "fully stable")."""
        return self.stability.agreement if self.stability.total else None


class SweepStability:
    """How stable each prompt x input x variant of a sweep is over its repeats.

    ``groups`` lists them in the sweep's order; each holds a
    :class:`~cm_notebook.stability.Stability` of its finished repeats, and how many of
    them could not be read (``unreadable``). Shown as a table (one row per group:
    agreement, distinct answers, the answers counted and diffed).
    """

    def __init__(self, name: str, groups: list[GroupStability]) -> None:
        self.name = name
        self.groups = groups

    @classmethod
    def of(cls, sweep: Sweep) -> SweepStability:
        """Group the finished repeats of ``sweep``'s cells.

        A finished repeat whose answer cannot be read (its message file damaged or
        deleted) is left out of its group's agreement, counted in its ``unreadable``,
        and named (sweep, cell, file) in a :class:`~cm_notebook.store.StoreWarning`.
        """
        grouped: dict[tuple[int, int | None, int], list[tuple[str, Message]]] = {}
        first: dict[tuple[int, int | None, int], Any] = {}
        unreadable: dict[tuple[int, int | None, int], int] = {}
        for cell in sweep.cells:
            first.setdefault(cell.group, cell)
            answers = grouped.setdefault(cell.group, [])
            if cell.status == "done" and cell.message_id is not None:
                try:
                    answers.append((cell.branch, sweep.session.get(cell.message_id)))
                except CMError as exc:
                    if os_refused(exc):
                        raise  # not an unreadable answer: see sweep_records
                    unreadable[cell.group] = unreadable.get(cell.group, 0) + 1
                    problem = StoreWarning(
                        f"sweep {sweep.name!r}: cell {cell.key!r} (branch {cell.branch!r}): "
                        f"its answer {cell.message_id!r} could not be read, so the "
                        f"stability of its group leaves it out (counted as unreadable): {exc}",
                        getattr(exc, "path", None),
                    )
                    warnings.warn(problem, stacklevel=3)
        groups = [
            GroupStability(
                prompt=first[key].text,
                input=first[key].input_index,
                variant=first[key].variant,
                stability=stability(answers),
                unreadable=unreadable.get(key, 0),
            )
            for key, answers in grouped.items()
        ]
        return cls(sweep.name, groups)

    @property
    def mean_agreement(self) -> float | None:
        """The mean agreement of the groups with answers (None if no group has any)."""
        found = [g.agreement for g in self.groups if g.agreement is not None]
        return sum(found) / len(found) if found else None

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per group: prompt, input, variant, answers, unreadable (finished
        repeats whose answer could not be read, not in ``answers``), distinct,
        agreement (None for a group without answers), top."""
        return [
            {
                "prompt": group.prompt,
                "input": group.input,
                "variant": group.variant,
                "answers": group.stability.total,
                "unreadable": group.unreadable,
                "distinct": group.stability.distinct,
                "agreement": group.agreement,
                "top": group.stability.top.text if group.stability.top is not None else None,
            }
            for group in self.groups
        ]

    def __repr__(self) -> str:
        mean = self.mean_agreement
        empty = sum(1 for g in self.groups if g.agreement is None)
        missing = f" ({empty} without answers)" if empty else ""
        shown = "no answers" if mean is None else f"mean agreement {mean:.0%}"
        count = f"{len(self.groups)} group{'' if len(self.groups) == 1 else 's'}"
        lost = sum(g.unreadable for g in self.groups)
        unread = f", {_unreadable(lost)}" if lost else ""
        return f"<SweepStability {self.name!r} {count}{missing}, {shown}{unread}>"

    def __str__(self) -> str:
        lines = [repr(self)]
        for group in self.groups:
            lost = f" ({_unreadable(group.unreadable)})" if group.unreadable else ""
            lines.append(f"== {group.prompt} [{group.variant}]{lost}")
            lines.append(str(group.stability) if group.agreement is not None else _none(group))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for group in self.groups:
            found = group.stability
            if group.agreement is None:
                agreement, detail = "-", html.escape(_none(group))
            else:
                agreement, detail = f"{group.agreement:.0%}", found._repr_html_()
            rows.append(
                '<tr><td style="text-align:left;vertical-align:top;padding:4px 8px;max-width:14em">'
                f"{html.escape(group.prompt)}</td>"
                f'<td style="{_LEFT}">{html.escape(group.variant)}</td>'
                f'<td style="vertical-align:top;padding:4px 8px;text-align:right">'
                f'{agreement}<br><span style="color:{MUTED}">{found.distinct} of '
                f"{found.total}</span>{_unreadable_html(group.unreadable)}</td>"
                f'<td style="{_LEFT}">{detail}</td></tr>'
            )
        return (
            # Long words and URLs wrap anywhere: the table stays as wide as its place.
            f'<div class="cm-sweep-stability" style="{WRAP_ANYWHERE}">'
            f'<div style="color:{MUTED}">'
            f"{html.escape(repr(self)[1:-1])}</div>"
            '<table style="border-collapse:collapse"><tr><th style="text-align:left">prompt</th>'
            '<th style="text-align:left">variant</th><th>agreement</th>'
            '<th style="text-align:left">answers</th></tr>' + "".join(rows) + "</table></div>"
        )


#: A text cell's style: left-aligned whatever the page's stylesheet says (JupyterLab's
#: right-aligns table cells, for numbers).
_LEFT = "text-align:left;vertical-align:top;padding:4px 8px"


# Shown for a group without answers, in place of its (empty) Stability.
_NO_ANSWERS = "no answers (no repeat finished with a complete reply)"


def _none(group: GroupStability) -> str:
    # Why a group has no answers: none finished, or none of those could be read.
    if group.unreadable:
        return f"no answers ({_unreadable(group.unreadable)}: message files damaged or deleted)"
    return _NO_ANSWERS


def _unreadable(count: int) -> str:
    # A count of finished repeats whose answer could not be read.
    return f"{count} unreadable answer{'' if count == 1 else 's'} left out"


def _unreadable_html(count: int) -> str:
    # Under "distinct of total": the finished repeats the total leaves out.
    if not count:
        return ""
    return f'<br><span style="color:#b00">{html.escape(_unreadable(count))}</span>'
