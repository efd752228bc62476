"""User and model text set among the package's own words in HTML: each piece isolated.

A branch name, a title, a tool's arguments or result may be written right to left, or
hold a bidirectional control (U+202E reverses everything after it on its line). Set
inline in a sentence of the package's own ("branch שלום · 6 messages", "lookup(...) →
denied"), such text draws those words into its run: they move, or read backwards.
:func:`isolated` puts a piece in ``<bdi>`` (a bidirectional isolate: nothing in it
reorders the text around it); :func:`json_html` also writes a JSON value's invisible
controls (bidirectional overrides, line separators, C1 controls) as ``\\uXXXX``
escapes, the same value with its controls in sight.
"""

from __future__ import annotations

import html
import json
from typing import Any

from ._unicode import json_for_terminal

__all__ = ["WRAP_ANYWHERE", "isolated", "json_html", "json_text_html"]

#: CSS of a box holding text: a long word or URL wraps anywhere, so the box keeps the
#: width of its place (a flex or grid item needs ``min-width:0`` as well).
WRAP_ANYWHERE = "overflow-wrap:anywhere"


def isolated(text: str) -> str:
    """``text`` escaped, in ``<bdi>``: its direction and controls stay inside it."""
    return f"<bdi>{html.escape(text)}</bdi>"


def json_text_html(text: str) -> str:
    """JSON text as :func:`isolated` shows it, its invisible controls as escapes."""
    return isolated(json_for_terminal(text))


def json_html(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON (non-ASCII text as written) for HTML: see :func:`json_text_html`."""
    return json_text_html(json.dumps(value, ensure_ascii=False, indent=indent, default=str))
