"""An event stream's text split into lines as the SSE specification splits them.

An event stream's lines end at CR LF, CR or LF, and nowhere else. ``str.splitlines``
(and httpx's ``aiter_lines``, built on it) also breaks at U+2028, U+2029, U+0085,
form feeds and the separators U+001C-U+001E, which a server writing its JSON
without escaping non-ASCII characters (llama.cpp does) sends raw inside a reply's text:
split there, one chunk reads as two lines of broken JSON.

:class:`LineSplitter` takes the text piece by piece as it arrives, so a CR at the end of
one piece and the LF at the start of the next are one line ending, not two; one U+FEFF
at the very start of the stream is dropped, as the specification says.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["LineSplitter", "sse_lines"]

_LINE_END = re.compile(r"\r\n|\r|\n")
_BOM = "\ufeff"


class LineSplitter:
    """Whole lines out of text fed piece by piece, without their line endings."""

    def __init__(self) -> None:
        # The unfinished line so far, in the pieces it came in: joined once it ends, so
        # a long line costs its length, not its length times the number of pieces.
        self._partial: list[str] = []
        self._after_cr = False  # the last piece ended with CR: an LF next belongs to it
        self._started = False  # some text came (a BOM is dropped only at the very start)

    def feed(self, text: str) -> list[str]:
        """The lines ``text`` completes."""
        if not self._started and text:
            self._started = True
            text = text.removeprefix(_BOM)
        if self._after_cr and text:
            self._after_cr = False
            text = text.removeprefix("\n")
        lines: list[str] = []
        start = 0
        for end in _LINE_END.finditer(text):
            self._partial.append(text[start : end.start()])
            lines.append("".join(self._partial))
            self._partial.clear()
            start = end.end()
        if start < len(text):
            self._partial.append(text[start:])
        if text.endswith("\r"):
            self._after_cr = True
        return lines

    def finish(self) -> list[str]:
        """The last line, if the stream ended without a line ending after it."""
        rest = "".join(self._partial)
        self._partial.clear()
        return [rest] if rest else []


async def sse_lines(pieces: AsyncIterable[str]) -> AsyncIterator[str]:
    """The lines of the text ``pieces`` make up (say, an httpx response's ``aiter_text()``)."""
    splitter = LineSplitter()
    async for piece in pieces:
        for line in splitter.feed(piece):
            yield line
    for line in splitter.finish():
        yield line
