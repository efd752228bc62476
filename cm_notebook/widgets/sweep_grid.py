"""``SweepGrid``: a sweep's cells as a grid, filled in live as the replies stream.

Rows are the prompts (one per input row for a template), columns the variants, and
each grid cell stacks the repeats. The grid's data is one synced trait, ``cells`` (a
short dict per sweep cell: status and text). While the sweep runs, updates (at most
every :data:`GRID_INTERVAL` seconds) carry only the cells that changed since the last
one, as a custom comm message (``{"type": "cells", "cells": [...]}``) that the front
end applies to its copy; a sweep of a thousand cells would otherwise re-send the
whole grid four times a second. A cell whose reply grew carries only the text added
(``more``, after ``text_from`` UTF-16 code units of what the views hold). The trait
itself is brought up to date, in full, when the grid's shape changes, when the sweep
ends (so saved widget state is the final grid), and whenever a view starts (it sends
``{"type": "ready"}``): a new tab or a reloaded page gets the whole current grid, then
the changes after it, in that order on the one comm. :func:`grid_html` draws the same
grid as static HTML: a sweep's ``_repr_html_``, which a saved notebook shows without a
kernel. Both say which variants stopped starting cells, and why
(:attr:`~cm_notebook.sweep.Sweep.stopped`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets as t

from .. import events as ev
from .._html_text import WRAP_ANYWHERE, isolated
from .._sweep_stops import nothing_to_start
from .._theme import ERROR, MUTED
from .._unicode import grapheme_prefix
from ._base import FollowingView, static_text

if TYPE_CHECKING:
    from ..sweep import Sweep, SweepCell

__all__ = ["GRID_INTERVAL", "SweepGrid", "grid_data", "grid_html"]


#: Seconds between two updates of a grid while its cells stream.
GRID_INTERVAL = 0.25
#: The longest row label shown (the prompt's start).
_ROW_LABEL = 80


def _row_label(cell: SweepCell) -> str:
    # Cut between two user-perceived characters: never inside a flag or an emoji.
    text = " ".join(cell.text.split())
    return text if len(text) <= _ROW_LABEL else grapheme_prefix(text, _ROW_LABEL - 1) + "…"


def grid_data(sweep: Sweep) -> dict[str, Any]:
    """The grid as plain data: ``rows`` ({key, label}), ``columns`` (variant labels)
    and ``cells`` ({row, col, repeat, key, branch, status, text, error})."""
    rows: dict[tuple[int, int | None], dict[str, str]] = {}
    cells = []
    for cell in sweep.cells:
        row_key = (cell.prompt_index, cell.input_index)
        if row_key not in rows:
            key = f"p{cell.prompt_index}" + (
                "" if cell.input_index is None else f"-i{cell.input_index}"
            )
            rows[row_key] = {"key": key, "label": _row_label(cell)}
        cells.append(
            {
                "row": rows[row_key]["key"],
                "col": cell.variant_index,
                "repeat": cell.repeat,
                "key": cell.key,
                "branch": cell.branch,
                "status": cell.status,
                "text": cell.live_text,
                "error": cell.error or "",
            }
        )
    return {"rows": list(rows.values()), "columns": list(sweep.variant_labels), "cells": cells}


_STATUS_STYLE = {
    "pending": f"color:{MUTED}",
    "running": "color:var(--jp-brand-color0,#1d4ed8)",
    "done": "",
    "failed": f"color:{ERROR}",
}


def shown_text(cell: Mapping[str, Any]) -> str:
    """What a cell shows (as ``grid.js`` draws it): its reply; a running one's partial
    text marked as still running, a failed one's as failed, with why, never shown as if
    it were an answer; a cell without text, its status. In words, not only in colour:
    a screen reader, or someone who cannot tell the colours, gets the status too."""
    text, error, status = str(cell["text"]), str(cell["error"]), cell["status"]
    if status == "failed":
        why = f"[failed: {error}]" if error else "[failed]"
        return f"{text} {why}" if text else why
    if not text:
        return f"({status})"
    return f"{text} [running…]" if status == "running" else text


def _shown_html(cell: Mapping[str, Any]) -> str:
    # What shown_text says, as HTML: the reply and the error isolated, so a
    # right-to-left one, or an override in one, cannot move or reverse the status.
    text, error, status = str(cell["text"]), str(cell["error"]), cell["status"]
    if status == "failed":
        why = f"[failed: {isolated(error)}]" if error else "[failed]"
        return f"{isolated(text)} {why}" if text else why
    if not text:
        return html.escape(f"({status})")
    return f"{isolated(text)} [running…]" if status == "running" else isolated(text)


def grid_html(sweep: Sweep) -> str:
    """Static HTML of the sweep's grid (what a saved notebook shows)."""
    data = grid_data(sweep)
    by_place: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for cell in data["cells"]:
        by_place.setdefault((cell["row"], cell["col"]), []).append(cell)
    head = "".join(
        f'<th style="text-align:left;padding:4px 8px">{html.escape(c)}</th>'
        for c in data["columns"]
    )
    body = []
    for row in data["rows"]:
        tds = []
        for col in range(len(data["columns"])):
            parts = []
            for cell in by_place.get((row["key"], col), []):
                shown = _shown_html(cell)
                parts.append(
                    f'<div class="cm-grid-repeat" title="{html.escape(cell["branch"])}" '
                    f'style="border-top:1px dotted #ddd;padding:2px 0;white-space:pre-wrap;'
                    f'{_STATUS_STYLE[cell["status"]]}"><span style="color:{MUTED}">'
                    f"r{cell['repeat']}</span> {shown}</div>"
                )
            tds.append(
                f'<td style="text-align:left;vertical-align:top;padding:4px 8px;'
                f'border:1px solid #ddd">'
                f"{''.join(parts)}</td>"
            )
        body.append(
            '<tr><th style="text-align:left;vertical-align:top;padding:4px 8px;'
            f'font-weight:normal;max-width:16em">{html.escape(row["label"])}</th>'
            + "".join(tds)
            + "</tr>"
        )
    counts = ", ".join(f"{n} {k}" for k, n in sweep.counts().items() if n)
    stopped = "".join(
        f'<div style="color:{ERROR}">{html.escape(note)}</div>' for note in sweep.stopped.values()
    )
    return (
        # Long words and URLs wrap anywhere: the grid stays as wide as its place.
        f'<div class="cm-grid" style="{WRAP_ANYWHERE}">'
        f'<div style="color:{MUTED}">sweep <b>{isolated(sweep.name)}</b>: '
        f"{len(sweep.cells)} cells ({html.escape(counts)})</div>{stopped}"
        '<table style="border-collapse:collapse;font-size:90%"><tr><th></th>'
        f"{head}</tr>{''.join(body)}</table></div>"
    )


def _patch(before: Mapping[str, Any] | None, cell: dict[str, Any]) -> dict[str, Any]:
    """What an update sends of a changed ``cell``: the cell, but for a reply that grew
    since ``before`` (what the views hold), only the text added (``more``) and the
    length, in UTF-16 code units as JavaScript counts, of the text it follows
    (``text_from``). A streaming cell's whole text is not sent again four times a second.
    """
    old = before["text"] if before else ""
    text = cell["text"]
    if not old or len(text) <= len(old) or not text.startswith(old):
        return cell
    patch = {key: value for key, value in cell.items() if key != "text"}
    patch["text_from"] = len(old.encode("utf-16-le")) // 2
    patch["more"] = text[len(old) :]
    return patch


class SweepGrid(FollowingView, anywidget.AnyWidget):
    """A sweep's cells as a live grid (front end in ``static/grid.js``)."""

    _esm = static_text("isolated.js") + static_text("grid.js")
    _css = static_text("views.css")

    name = t.Unicode("", help="the sweep's name").tag(sync=True)
    rows = t.List(t.Dict(), help="one per prompt (and input row): key, label").tag(sync=True)
    columns = t.List(t.Unicode(), help="the variants' labels, in order").tag(sync=True)
    cells = t.List(
        t.Dict(), help="one per sweep cell: row, col, repeat, key, branch, status, text, error"
    ).tag(sync=True)
    notice = t.Unicode("", help="an error to show").tag(sync=True)

    def __init__(self, sweep: Sweep) -> None:
        super().__init__()
        self.sweep = sweep
        self._branches = set(sweep.branches)
        # What the front ends hold: the last full grid plus the changes sent since, by
        # cell key; and whether the next update must be a full one.
        self._shown: dict[str, dict[str, Any]] = {}
        self._shape: tuple[Any, ...] = ()
        self._full = True
        self._stop_notice = ""  # the stopped variants' notes last shown
        self._follow(sweep.session, GRID_INTERVAL)
        self._stop_listening = sweep.listen(self._on_cell)
        self.on_msg(self._on_front_end)
        self._render()

    def __repr__(self) -> str:
        return f"<cm_notebook SweepGrid {self.sweep.name!r} {len(self.sweep.cells)} cells>"

    def _show_error(self, text: str) -> None:
        self.notice = text

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ContentDelta) and event.branch in self._branches:
            self._throttle.poke()

    def _on_cell(self, cell: SweepCell) -> None:
        # Cells ending in a burst are coalesced like the rest (at most one update per
        # GRID_INTERVAL, carrying every cell changed since the last); the last cell to end is
        # shown at once, so the final grid is never held back (a stopped sweep ends
        # with cells still pending, and so does one whose variants stopped: it ends when
        # none runs).
        if self.sweep.counts()["running"] == 0 and nothing_to_start(self.sweep):
            self._throttle.now()
        else:
            self._throttle.poke()

    def _on_front_end(self, _widget: Any, content: Any, _buffers: Any) -> None:
        # A view has started: it holds the grid as its model came (perhaps older than
        # the changes sent since), so it gets the whole grid now.
        if isinstance(content, dict) and content.get("type") == "ready":
            self._follower.on_loop(self._render_full)

    def _render_full(self) -> None:
        self._full = True
        self._throttle.now()

    def _render(self) -> None:
        data = grid_data(self.sweep)
        cells: list[dict[str, Any]] = data["cells"]
        shape = (data["rows"], data["columns"], [cell["key"] for cell in cells])
        ended = self.sweep.counts()["running"] == 0 and nothing_to_start(self.sweep)
        told = "; ".join(self.sweep.stopped.values())
        if told != self._stop_notice:
            self._stop_notice = self.notice = told
        if self._full or ended or shape != self._shape:
            self._full = False
            self._shape = shape
            self._shown = {cell["key"]: cell for cell in cells}
            with self.hold_sync():
                self.name = self.sweep.name
                self.rows = data["rows"]
                self.columns = data["columns"]
                self.cells = cells
            return
        changed = [cell for cell in cells if self._shown.get(cell["key"]) != cell]
        if changed:
            patches = [_patch(self._shown.get(cell["key"]), cell) for cell in changed]
            self._shown.update((cell["key"], cell) for cell in changed)
            self.send({"type": "cells", "cells": patches})

    def close(self) -> None:
        """Stop following the sweep and its session, and close the widget."""
        if hasattr(self, "_stop_listening"):
            self._stop_listening()
        super().close()
