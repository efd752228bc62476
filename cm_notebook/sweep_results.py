"""A sweep's results: its replies as rows, and how stable each cell is over its repeats.

:func:`sweep_records` is :meth:`ContextSession.to_records
<cm_notebook.session.ContextSession.to_records>` restricted to the sweep's branches,
with the sweep's own columns after those (``sweep``, ``cell``, ``variant``,
``repeat``, ``input``: the input row's index, ``error``, and ``input_<name>`` per input
column). A cell whose message files cannot all be read keeps a record, marked with
``error``, and the other cells keep theirs.
:class:`SweepStability` groups the repeats of each prompt x input x variant
(:mod:`cm_notebook.stability`): identical answers counted, near-identical ones diffed
against the most common. A group without answers (every repeat failed, or none has
finished) has no agreement: None in its record, "no answers" where shown, and left
out of the mean.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import records as rec
from .errors import CMError
from .model import Message
from .stability import Stability, stability
from .store.diagnostics import StoreWarning

if TYPE_CHECKING:
    import pandas as pd

    from .sweep import Sweep, SweepCell

__all__ = ["GroupStability", "SweepStability", "sweep_dataframe", "sweep_records"]

#: The sweep's columns, after those of :mod:`cm_notebook.records` (and before the
#: ``input_<name>`` ones).
SWEEP_COLUMNS = ("sweep", "cell", "repeat", "input", "error")


def sweep_records(sweep: Sweep) -> list[dict[str, Any]]:
    """One dict per reply on the sweep's branches, in cell order (cells not started
    have none).

    A cell whose messages cannot all be read (a message file damaged or deleted) does
    not cost the others their records: it has one record of its own, with its place
    (context, branch, its reply's id, the sweep's columns and its labels), None for
    what only its messages hold, and ``error`` naming the file and what to do; a
    :class:`~cm_notebook.store.StoreWarning` says the same. ``error`` is None in every
    other record.
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
    unreadable: dict[str, str] = {}
    for branch, cell in cells.items():
        try:
            # One message at a time: a file that cannot be read raises, naming itself,
            # where a read of the whole branch would skip it and lose the cell's row.
            histories.append((branch, [session.get(node.id) for node in tree.path(branch)]))
        except CMError as exc:
            unreadable[branch] = str(exc)
            problem = StoreWarning(
                f"sweep {sweep.name!r}: cell {cell.key!r} (branch {branch!r}) could not "
                f"be read; its record holds only its place and this error: {exc}",
                getattr(exc, "path", None),
            )
            warnings.warn(problem, stacklevel=3)
    read = rec.records(session.id, histories, existing, session.all_scores())
    columns = list(read[0]) if read else list(rec.COLUMNS)
    by_branch: dict[str, list[dict[str, Any]]] = {}
    for row in read:
        by_branch.setdefault(row["branch"], []).append(row)
    inputs: dict[str, None] = {}
    for cell in cells.values():
        inputs.update(dict.fromkeys(f"input_{key}" for key in cell.row or {}))
    rows = []
    for branch, cell in cells.items():
        if branch in unreadable:
            found = [_unreadable(session.id, cell, existing[branch].labels, columns)]
        else:
            found = by_branch.get(branch, [])
        for row in found:
            row["variant"] = cell.variant
            row.update(
                {
                    "sweep": sweep.name,
                    "cell": cell.key,
                    "repeat": cell.repeat,
                    "input": cell.input_index,
                    "error": unreadable.get(branch),
                }
            )
            row.update({key: (cell.row or {}).get(key[len("input_") :]) for key in inputs})
            rows.append(row)
    return rows


def _unreadable(
    context_id: str, cell: SweepCell, labels: Mapping[str, str], columns: list[str]
) -> dict[str, Any]:
    # The record of a cell whose messages could not all be read: where it is, and None
    # for every value only its messages hold (the same columns as the others).
    row: dict[str, Any] = dict.fromkeys(columns)
    row.update(context_id=context_id, branch=cell.branch, message_id=cell.message_id)
    for key, value in labels.items():
        if f"label_{key}" in row:
            row[f"label_{key}"] = value
    return row


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

    @property
    def agreement(self) -> float | None:
        """The share of answers equal to the most common one; None without answers
        (nothing to agree: a group whose repeats all failed is not "fully stable")."""
        return self.stability.agreement if self.stability.total else None


class SweepStability:
    """How stable each prompt x input x variant of a sweep is over its repeats.

    ``groups`` lists them in the sweep's order; each holds a
    :class:`~cm_notebook.stability.Stability` of its finished repeats. Shown as a table
    (one row per group: agreement, distinct answers, the answers counted and diffed).
    """

    def __init__(self, name: str, groups: list[GroupStability]) -> None:
        self.name = name
        self.groups = groups

    @classmethod
    def of(cls, sweep: Sweep) -> SweepStability:
        """Group the finished repeats of ``sweep``'s cells."""
        grouped: dict[tuple[int, int | None, int], list[tuple[str, Message]]] = {}
        first: dict[tuple[int, int | None, int], Any] = {}
        for cell in sweep.cells:
            first.setdefault(cell.group, cell)
            answers = grouped.setdefault(cell.group, [])
            if cell.status == "done" and cell.message_id is not None:
                try:
                    answers.append((cell.branch, sweep.session.get(cell.message_id)))
                except CMError:  # deleted meanwhile: left out
                    continue
        groups = [
            GroupStability(
                prompt=first[key].text,
                input=first[key].input_index,
                variant=first[key].variant,
                stability=stability(answers),
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
        """One dict per group: prompt, input, variant, answers, distinct, agreement
        (None for a group without answers), top."""
        return [
            {
                "prompt": group.prompt,
                "input": group.input,
                "variant": group.variant,
                "answers": group.stability.total,
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
        return f"<SweepStability {self.name!r} {count}{missing}, {shown}>"

    def __str__(self) -> str:
        lines = [repr(self)]
        for group in self.groups:
            lines.append(f"== {group.prompt} [{group.variant}]")
            lines.append(str(group.stability) if group.agreement is not None else _NO_ANSWERS)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for group in self.groups:
            found = group.stability
            if group.agreement is None:
                agreement, detail = "-", html.escape(_NO_ANSWERS)
            else:
                agreement, detail = f"{group.agreement:.0%}", found._repr_html_()
            rows.append(
                '<tr><td style="vertical-align:top;padding:4px 8px;max-width:14em">'
                f"{html.escape(group.prompt)}</td>"
                f'<td style="vertical-align:top;padding:4px 8px">{html.escape(group.variant)}</td>'
                f'<td style="vertical-align:top;padding:4px 8px;text-align:right">'
                f'{agreement}<br><span style="color:#888">{found.distinct} of '
                f"{found.total}</span></td>"
                f'<td style="vertical-align:top;padding:4px 8px">{detail}</td></tr>'
            )
        return (
            f'<div class="cm-sweep-stability"><div style="color:#444">'
            f"{html.escape(repr(self)[1:-1])}</div>"
            '<table style="border-collapse:collapse"><tr><th>prompt</th><th>variant</th>'
            "<th>agreement</th><th>answers</th></tr>" + "".join(rows) + "</table></div>"
        )


# Shown for a group without answers, in place of its (empty) Stability.
_NO_ANSWERS = "no answers (no repeat finished with a complete reply)"
