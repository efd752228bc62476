"""``python -m cm_notebook.server``: a Jupyter server with only the cm_notebook API."""

from __future__ import annotations

from .app import main

main()
