"""``python -m cm_notebook`` is the ``cm-notebook`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
