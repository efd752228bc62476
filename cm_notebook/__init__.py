"""cm_notebook: a conversation workbench for LLM research inside Jupyter."""

from __future__ import annotations

__version__ = "0.1.0"
