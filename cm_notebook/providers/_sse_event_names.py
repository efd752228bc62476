"""Server-sent events without an ``event:`` field given the name their data's ``type``
says, for the ``anthropic`` SDK.

The Anthropic wire format names every event twice: ``event: content_block_delta`` and
``"type": "content_block_delta"`` in its data. Some proxies and compatible servers
send only the ``data:`` lines. The SDK's stream skips every event without a name, so
such a reply would be thrown away whole (and retried as a cut stream), and an
``error`` event sent so would be lost with its message. :class:`EventNames` rewrites
the body: an event with data but no ``event:`` line, whose data is a JSON object with
a ``type`` that reads as an event name, gets ``event: <type>`` before its lines. Every
other event passes unchanged.

Each event waits until the blank line that ends it (the SDK dispatches an event only
then, so nothing reaches the reader later than before); lines end at CR, LF or CR LF
and may be split anywhere across the chunks fed. A body sent compressed
(``Content-Encoding: gzip``) is not rewritten: the HTTP client's hook sees it before it
is decoded, so unnamed events in it are still skipped by the SDK.
"""

from __future__ import annotations

import json
import re

__all__ = ["EventNames"]

# What an event name taken from data may look like ("message_start", "ping", "error").
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


class EventNames:
    """An event stream's unnamed events named by their data's ``type``."""

    def __init__(self) -> None:
        self._pending = bytearray()  # bytes of a line not yet ended
        self._lines: list[bytes] = []  # the current event's lines, with their endings

    def feed(self, data: bytes) -> bytes:
        """The bytes to pass on for ``data`` (an event's lines wait for its end)."""
        buffer = self._pending
        # Only the new bytes (and a CR held last) are searched: a long line that comes
        # in many pieces is not scanned again for each.
        pos = max(len(buffer) - 1, 0)
        buffer += data
        out = bytearray()
        start = 0
        while True:
            ends = [i for i in (buffer.find(b"\r", pos), buffer.find(b"\n", pos)) if i >= 0]
            if not ends:
                break
            end = min(ends)
            if buffer[end] == 0x0D:
                if end + 1 == len(buffer):
                    break  # a CR last: the next byte may be its LF
                if buffer[end + 1] == 0x0A:
                    end += 1
            line = bytes(buffer[start : end + 1])
            pos = start = end + 1
            if line.strip(b"\r\n"):
                self._lines.append(line)
            else:
                out += self._event() + line
        del buffer[:start]
        return bytes(out)

    def finish(self) -> bytes:
        """The bytes still held when the body ends (an event without its blank line)."""
        if self._pending:
            self._lines.append(bytes(self._pending))
            self._pending.clear()
        return self._event()

    def _event(self) -> bytes:
        lines, self._lines = self._lines, []
        body = b"".join(lines)
        name = _name_from_data(lines)
        return b"event: " + name + b"\n" + body if name else body


def _name_from_data(lines: list[bytes]) -> bytes | None:
    # The event name an event without one should have: its data's "type".
    data: list[bytes] = []
    for line in lines:
        field, _, value = line.rstrip(b"\r\n").partition(b":")
        if field == b"event":
            return None  # named already
        if field == b"data":
            data.append(value.removeprefix(b" "))
    if not data:
        return None
    try:
        value = json.loads(b"\n".join(data))
    except ValueError:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, str) and _NAME.fullmatch(kind):
        return kind.encode()
    return None
