"""Colours of the HTML the package writes, readable in JupyterLab's light and dark themes.

A fixed grey such as ``#555`` reads at 2.5:1 on JupyterLab Dark's background. Muted
text takes the theme's own muted colour instead, with a grey for pages that load no
Jupyter theme (a notebook rendered elsewhere, an exported file).
"""

from __future__ import annotations

__all__ = ["ERROR", "MUTED"]

#: Secondary text (facts, notes, headings of tables): JupyterLab's second font colour.
MUTED = "var(--jp-ui-font-color2,#666)"
#: Errors: JupyterLab's error colour (a light red in a dark theme: a fixed dark red
#: such as ``#b91c1c`` reads at 3:1 there), a dark red where no theme is loaded.
ERROR = "var(--jp-error-color1,#b91c1c)"
