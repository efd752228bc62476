"""``SavedCopyHider``: hides a live view's saved-notebook copy on a live page.

A view shown on its own is followed by a separate output with static HTML, kept for
viewers without a kernel (:mod:`.snapshot`, ``cm_notebook.magics._saved``). On a page
where the view is live, that copy repeats it. This invisible part of the view hides
the copy, found by the id both carry, in the page only: the saved notebook keeps it.
"""

from __future__ import annotations

import uuid

import anywidget
import traitlets as t

from ._base import static_text

__all__ = ["SavedCopyHider", "mark_copy"]


class SavedCopyHider(anywidget.AnyWidget):
    """Hides, on the page, the output marked with :attr:`copy_id` (see :func:`mark_copy`)."""

    _esm = static_text("copy_hider.js")
    # The views' stylesheet: the views made of stock ipywidgets (a comparison) load
    # none of their own (see :mod:`._connection`).
    _css = static_text("views.css")

    copy_id = t.Unicode(help="the id the saved copy's HTML carries").tag(sync=True)

    def __init__(self) -> None:
        super().__init__(copy_id=uuid.uuid4().hex)

    def __repr__(self) -> str:
        return "<cm_notebook SavedCopyHider>"


def mark_copy(html: str, copy_id: str | None) -> str:
    """``html`` wrapped so that the hider with ``copy_id`` finds it (unchanged if None)."""
    if copy_id is None:
        return html
    return f'<div data-cm-copy="{copy_id}">{html}</div>'
