"""The Jupyter server extension: cm_notebook's REST + Server-Sent Events API.

Every client (a browser, a script, another notebook) reaches the sessions living in
the Jupyter server's process at ``<base_url>/cm/api``; ``/cm/api/openapi.json``
describes the endpoints. See :mod:`cm_notebook.server.app` for configuration and
:mod:`cm_notebook.server.signals` for the events stream.

Importing this package needs ``jupyter_server`` (``pip install 'cm_notebook[server]'``).
"""

from __future__ import annotations

from typing import Any

from .app import CMNotebookApp, main

__all__ = ["CMNotebookApp", "main"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    # How Jupyter finds the extension once it is enabled in its config.
    return [{"module": "cm_notebook.server", "app": CMNotebookApp}]
