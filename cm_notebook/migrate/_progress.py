"""A migration's progress: one bar through its phases (reading, converting, writing).

Reading and converting a large archive takes longer than writing it (every record is
parsed, hashed, converted and checked in memory before anything is written), so the
bar opens before the file is decoded and follows each phase in turn, relabelled:
``reading`` (records read, after the JSON is decoded), ``converting`` (contexts
converted and checked), ``migrating`` (contexts written; ``checking`` in a dry run).

Where it is shown: in a Jupyter kernel, as a notebook widget when ipywidgets is
installed, else as text in the cell's stderr (a kernel's stderr is never a terminal,
yet its output is what the user watches); elsewhere only when stderr is a terminal,
so a script whose output goes to a file gets no bar in it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO, TypeVar

__all__ = ["NO_PROGRESS", "Progress", "in_kernel"]

T = TypeVar("T")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (an IPython kernel app is running)."""
    if "ipykernel" not in sys.modules:  # never import IPython only to find out
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def _bar(desc: str) -> Any:
    """A tqdm bar where the user will see it (see the module docstring), else None."""
    if in_kernel():
        if importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm(total=None, desc=desc, unit="record")
        # tqdm.auto would warn that ipywidgets is missing; text in the cell is enough.
        from tqdm import tqdm

        return tqdm(total=None, desc=desc, unit="record", file=sys.stderr)
    if _isatty(sys.stderr):
        from tqdm import tqdm

        return tqdm(total=None, desc=desc, unit="record", file=sys.stderr)
    return None


class Progress:
    """One migration's bar; every method does nothing when it is not shown.

    ``Progress(True)`` shows it where a user sees it (see the module docstring);
    ``Progress(False)`` never does. Use it as a context manager so that it is closed.
    """

    def __init__(self, enabled: bool, desc: str = "reading") -> None:
        self._bar = _bar(desc) if enabled else None
        self._notebook = self._bar is not None and type(self._bar).__module__ == "tqdm.notebook"

    @property
    def shown(self) -> bool:
        """Whether a bar is shown."""
        return self._bar is not None

    def phase(self, desc: str, total: int, unit: str = "context") -> None:
        """Start a phase of ``total`` steps: the bar restarts from 0 under ``desc``."""
        if self._bar is None:
            return
        self._bar.unit = unit
        self._bar.set_description_str(desc, refresh=False)
        self._bar.reset(total=total)

    def advance(self, steps: int = 1) -> None:
        """``steps`` more done in the current phase."""
        if self._bar is not None:
            self._bar.update(steps)

    def over(self, items: Sequence[T], desc: str, unit: str = "context") -> Iterator[T]:
        """``items`` one by one, as the phase ``desc``: each counts as done when the
        next is asked for (or the loop ends, however it ends)."""
        self.phase(desc, len(items), unit)
        for item in items:
            try:
                yield item
            finally:
                self.advance()

    def write(self, text: str) -> None:
        """Print ``text`` on stderr without breaking the bar's line on a terminal."""
        if self._bar is not None and not self._notebook:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the bar (it stays, as it ended, on the terminal or in the cell)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: A progress that is never shown (what the readers use when given none).
NO_PROGRESS = Progress(False)
