"""``ConnectionWatch``: the part of a view made of stock ipywidgets that the others
get from their own front end.

The tool approvals and a comparison are built from stock ipywidgets, which load none
of the views' stylesheet (``static/views.css``): shown without another view on the
page, they would lack its rules, the one that hides ipywidgets' broken-link icons after
a kernel restart among them. This invisible part carries it. After a kernel restart
it disables the view's buttons (a click would reach no kernel, and throw), makes its
text boxes read-only and says that the view is not connected, as the transcript does.
"""

from __future__ import annotations

import anywidget

from ._base import static_text

__all__ = ["ConnectionWatch"]


class ConnectionWatch(anywidget.AnyWidget):
    """Brings the views' stylesheet; after a kernel restart, disables the view it is in."""

    _esm = static_text("connection.js")
    _css = static_text("views.css")

    def __repr__(self) -> str:
        return "<cm_notebook ConnectionWatch>"
