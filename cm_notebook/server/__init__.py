"""The Jupyter server extension: cm_notebook's REST + Server-Sent Events API.

Every client (a browser, a script, another notebook) reaches the sessions living in
the Jupyter server's process at ``<base_url>/cm/api``; ``/cm/api/openapi.json``
describes the endpoints. See :mod:`cm_notebook.server.app` for configuration and
:mod:`cm_notebook.server.signals` for the events stream.

Using this package needs ``jupyter_server`` (``pip install 'cm_notebook[server]'``).
Importing it is cheap: Jupyter imports every enabled extension at start-up, so the
application (and the session machinery behind it) is loaded only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import CMNotebookApp

__all__ = ["CMNotebookApp", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    # How Jupyter finds the extension once it is enabled in its config.
    from .app import CMNotebookApp

    return [{"module": "cm_notebook.server", "app": CMNotebookApp}]
