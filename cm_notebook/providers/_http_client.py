"""The HTTP client the SDK providers hand their SDK: the SDK's own default client, with
event streams read without a leading byte-order mark.

An event stream may begin with a UTF-8 byte-order mark (EF BB BF): servers that write
their body with a BOM-prefixing encoder send one. The SSE specification has a decoder
ignore a single leading U+FEFF, but the ``openai`` and ``anthropic`` SDKs' decoders do
not: the first line's field name reads ``\\ufeffdata`` (or ``\\ufeffevent``), so the
first event is dropped without a word. For an OpenAI-compatible server that is the
reply's first words; for Anthropic, ``message_start``, with the input token count and
the message id.

:func:`sdk_http_client` builds the SDK's own default client (``DefaultAsyncHttpxClient``:
its timeouts, pool limits, proxies from the environment and socket options stay the
SDK's) with a response hook that drops one BOM from the very start of an uncompressed
event-stream body, before the SDK decodes it. Bytes are passed on as they arrive (at
most the first three wait, while they may still be a BOM), a BOM anywhere later is
data, and closing the response closes the connection as before. A provider can have
the body read under a :class:`~._progress_deadline.ProgressDeadline`
(:func:`watch_progress`; compressed bodies too, their bytes counted as they came off the
wire), which bounds the time a reply may go without progress and tells a server that
keeps a stream alive with keep-alive messages from one that has gone silent.

The libraries behind the SDKs log the requests they send: ``httpx``/``httpx2`` the
whole URL at INFO (``user:password@`` and ``?sig=...`` included), ``httpcore``/
``httpcore2`` the connection and the response headers at DEBUG, the SDKs their request
options. :func:`redact_library_logs`, run whenever a provider builds a client, puts
cm_notebook's :class:`~cm_notebook.redact.RedactingFilter` on their loggers, as on
cm_notebook's own.

For the ``openai`` SDK the hook also reads llama.cpp's mid-reply failure lines,
``error: {"code": 500, "message": ...}`` (a field of llama.cpp's own, which the SDK's
decoder ignores), as the ``data: {"error": ...}`` lines OpenAI-compatible servers send
(:class:`_ErrorLines`), so the server's message reaches the error the reply ends with.
For the ``anthropic`` SDK it names events sent without an ``event:`` line by their
data's ``type`` (:mod:`._sse_event_names`), as the SDK skips unnamed events.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import timedelta
from functools import cache
from typing import Any, Protocol, TypeVar, cast

from ..redact import RedactingFilter
from ._errors import is_event_stream
from ._progress_deadline import ProgressDeadline
from ._sse_event_names import EventNames

__all__ = [
    "drop_leading_bom",
    "drop_leading_bom_name_events",
    "drop_leading_bom_read_error_lines",
    "redact_library_logs",
    "sdk_http_client",
    "watch_progress",
]

_BOM = b"\xef\xbb\xbf"  # U+FEFF in UTF-8
_Client = TypeVar("_Client")


class _ByteStream(Protocol):
    # What httpx and httpx2 call an AsyncByteStream (a response's raw body).
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class _LeadingBomDropped:
    """A response body without the one BOM it may begin with; otherwise the same bytes.

    Mixed into the body's own library's ``AsyncByteStream`` (see :func:`_stream_class`),
    as both httpx and httpx2 check a body's class.
    """

    def __init__(
        self,
        stream: _ByteStream,
        error_lines: bool = False,
        event_names: bool = False,
        rewrite: bool = True,
    ) -> None:
        self._stream = stream
        # False for a compressed body: passed on untouched (its bytes still read under
        # the deadline, if any).
        self._rewrite = rewrite
        #: The deadline its reads are made under, once a provider set one
        #: (:func:`watch_progress`).
        self.deadline: ProgressDeadline | None = None
        # The body's lines rewritten on the way: llama.cpp's error lines, or events
        # without names (see _sse_event_names).
        self._error_lines: _ErrorLines | EventNames | None = (
            _ErrorLines() if error_lines else EventNames() if event_names else None
        )
        # The iterations handed out, closed with the body: a response closed before its
        # end (an SDK stopping early) closes its body, not the iteration it was reading,
        # which the garbage collector would otherwise finalize at any later moment, in
        # whatever task then runs.
        self._iterations: list[AsyncGenerator[bytes, None]] = []

    @property
    def elapsed(self) -> timedelta | None:
        # httpx2 reads a response's time from its body once that is closed.
        value: timedelta | None = getattr(self._stream, "elapsed", None)
        return value

    @elapsed.setter
    def elapsed(self, value: timedelta | None) -> None:
        self._stream.elapsed = value  # type: ignore[attr-defined]

    def __aiter__(self) -> AsyncIterator[bytes]:
        iteration = self._without_bom()
        self._iterations.append(iteration)
        return iteration

    async def _without_bom(self) -> AsyncGenerator[bytes, None]:
        chunks = self._stream.__aiter__()
        head = b""  # the body's first bytes, while they may still be (part of) a BOM
        deciding = self._rewrite
        lines = self._error_lines if self._rewrite else None
        try:
            while True:
                deadline = self.deadline
                try:
                    chunk = await (
                        chunks.__anext__() if deadline is None else deadline.next(chunks)
                    )
                except StopAsyncIteration:
                    break
                if deciding:
                    head += chunk
                    if len(head) < len(_BOM) and _BOM.startswith(head):
                        continue  # too short to tell: the next chunk may complete the BOM
                    deciding = False
                    chunk = head.removeprefix(_BOM)
                    head = b""
                if lines is not None:
                    chunk = lines.feed(chunk)
                if not chunk:
                    continue
                yield chunk
            if lines is not None:
                head = lines.feed(head) + lines.finish()
            if head:  # the whole body was shorter than a BOM: data after all
                yield head
        finally:
            # Closed here, not left to the garbage collector (as httpx does itself).
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()

    async def aclose(self) -> None:
        iterations, self._iterations = self._iterations, []
        try:
            for iteration in iterations:
                if not getattr(iteration, "ag_running", False):  # one being read ends with its body
                    await iteration.aclose()
        finally:
            await self._stream.aclose()


_ERROR_FIELD = b"error:"
_CR, _LF = 0x0D, 0x0A


class _ErrorLines:
    """An event stream's ``error:`` lines rewritten as ``data: {"error": ...}`` lines;
    every other byte passed on as it comes.

    llama.cpp's server reports a failure met mid-reply (``llama_decode failed``) with a
    line of its own field, ``error: {"code": 500, "message": ...}``, which the SDK's
    decoder ignores as an unknown field: the reply would end as if the stream were cut,
    the server's message lost. As ``data: {"error": ...}``, the SDK raises it as the
    error event OpenAI-compatible servers send. Lines end at CR, LF or CR LF, and may
    be split anywhere across the chunks fed; only the start of each line (at most six
    bytes) waits, and an ``error:`` line until its end.
    """

    def __init__(self) -> None:
        self._held = bytearray()  # the line's first bytes, while they may begin "error:"
        self._mode = "start"  # "start" of a line, "pass" (not an error line), "error"
        self._after_cr = False  # the last line ended with CR: an LF next belongs to it
        self._owed = False  # an error line was rewritten; no blank line ended its event

    def feed(self, data: bytes) -> bytes:
        """The bytes to pass on for ``data`` (some may wait for the next call)."""
        out = bytearray()
        pos, size = 0, len(data)
        while pos < size:
            if self._after_cr:
                self._after_cr = False
                if data[pos] == _LF:
                    out.append(_LF)
                    pos += 1
                    continue
            if self._mode == "start":
                byte = data[pos]
                pos += 1
                if byte in (_CR, _LF):
                    if not self._held:  # a blank line: the event is dispatched
                        self._owed = False
                    out += self._held
                    out.append(byte)
                    self._held.clear()
                    self._after_cr = byte == _CR
                    continue
                self._held.append(byte)
                if self._held == _ERROR_FIELD:
                    self._mode = "error"
                elif not _ERROR_FIELD.startswith(self._held):
                    out += self._held
                    self._held.clear()
                    self._mode = "pass"
                continue
            end = _line_end(data, pos)
            if end < 0:
                (out if self._mode == "pass" else self._held).extend(data[pos:])
                break
            if self._mode == "pass":
                out += data[pos : end + 1]
            else:
                self._held += data[pos:end]
                out += _as_data_line(bytes(self._held))
                out.append(data[end])
                self._held.clear()
                self._owed = True
            self._mode = "start"
            self._after_cr = data[end] == _CR
            pos = end + 1
        return bytes(out)

    def finish(self) -> bytes:
        """The bytes still held when the body ends: an error line without its line
        ending (or without the blank line after) gets one, so the SDK reads it."""
        out = bytearray()
        unended = self._mode == "pass" or bool(self._held)  # the last line has no ending
        if self._mode == "error":
            out += _as_data_line(bytes(self._held))
            self._owed = True
        else:
            out += self._held
        if self._owed:
            out += b"\n\n" if unended else b"\n"
        self._held.clear()
        self._mode, self._owed = "start", False
        return bytes(out)


def _line_end(data: bytes, start: int) -> int:
    # Where the first CR or LF at or after ``start`` is, or -1.
    ends = [i for i in (data.find(b"\r", start), data.find(b"\n", start)) if i >= 0]
    return min(ends, default=-1)


def _as_data_line(line: bytes) -> bytes:
    # ``error: <value>`` as ``data: {"error": <value>}``; a value that is not JSON is
    # the error's text.
    value = line[len(_ERROR_FIELD) :].removeprefix(b" ")
    try:
        error: object = json.loads(value)
    except ValueError:
        error = value.decode("utf-8", "replace").strip()
    if not error:
        error = "the server reported an error without saying which"
    return b"data: " + json.dumps({"error": error}).encode()


@cache
def _stream_class(base: type) -> type[_LeadingBomDropped]:
    return cast(type[_LeadingBomDropped], type("LeadingBomDropped", (_LeadingBomDropped, base), {}))


async def drop_leading_bom(response: Any) -> None:
    """A response hook for an httpx or httpx2 ``AsyncClient``: an event-stream body is
    read without the one BOM it may begin with.

    Content-encoded bodies are not rewritten (the hook sees a body before it is
    decompressed, so its first bytes are not the text's).
    """
    _wrap_event_stream(response)


async def drop_leading_bom_read_error_lines(response: Any) -> None:
    """:func:`drop_leading_bom`, and the body's ``error:`` lines (llama.cpp's way of
    reporting a failure mid-reply) read as ``data: {"error": ...}`` lines."""
    _wrap_event_stream(response, error_lines=True)


async def drop_leading_bom_name_events(response: Any) -> None:
    """:func:`drop_leading_bom`, and the body's events without an ``event:`` line named
    by their data's ``type`` (:class:`~._sse_event_names.EventNames`), for the
    ``anthropic`` SDK, which skips unnamed events."""
    _wrap_event_stream(response, event_names=True)


def _wrap_event_stream(
    response: Any, *, error_lines: bool = False, event_names: bool = False
) -> None:
    headers = response.headers
    if not is_event_stream(headers.get("content-type", "")):
        return
    # A compressed body is wrapped but not rewritten: the hook sees it before it is
    # decompressed, so its first bytes are not the text's.
    encoding = headers.get("content-encoding", "").strip().lower()
    rewrite = encoding in ("", "identity")
    # The body must stay one of its library's AsyncByteStreams (httpx2's for recent
    # SDKs, httpx's before), which the body the client made already is.
    base = next((c for c in type(response.stream).__mro__ if c.__name__ == "AsyncByteStream"), None)
    if base is not None:
        response.stream = _stream_class(base)(response.stream, error_lines, event_names, rewrite)


def watch_progress(response: Any, deadline: ProgressDeadline) -> bool:
    """Read the rest of ``response``'s event-stream body (an httpx or httpx2 response
    from a client of :func:`sdk_http_client`) under ``deadline``; False when its body is
    not one this module wraps, so only the HTTP client's read timeout bounds it."""
    stream = getattr(response, "stream", None)
    if not isinstance(stream, _LeadingBomDropped):
        return False
    try:
        timeouts = response.request.extensions.get("timeout") or {}
    except RuntimeError:  # a response made without a request: no read timeout known
        timeouts = {}
    read = timeouts.get("read") if isinstance(timeouts, dict) else None
    deadline.read_timeout = float(read) if isinstance(read, (int, float)) else None
    stream.deadline = deadline
    return True


def sdk_http_client(
    factory: Callable[..., _Client],
    *,
    error_lines: bool = False,
    event_names: bool = False,
    **options: Any,
) -> _Client:
    """``factory(**options)`` with :func:`drop_leading_bom` as a response hook (with
    ``error_lines``, :func:`drop_leading_bom_read_error_lines`; with ``event_names``,
    :func:`drop_leading_bom_name_events`).

    ``factory`` is the SDK's ``DefaultAsyncHttpxClient``, so the client keeps the SDK's
    defaults; the SDK closes it with its own client. The libraries' logs are redacted
    from now on (:func:`redact_library_logs`).
    """
    redact_library_logs()
    hook = drop_leading_bom_read_error_lines if error_lines else drop_leading_bom
    if event_names and not error_lines:
        hook = drop_leading_bom_name_events
    return factory(event_hooks={"response": [hook]}, **options)


# The packages whose loggers see a provider's URLs, headers or request options (hpack
# logs the headers it encodes, credentials included, on HTTP/2 connections).
_LOGGING_LIBRARIES = ("httpx", "httpx2", "httpcore", "httpcore2", "hpack", "openai", "anthropic")
# The loggers they log requests on, made here if they are not there yet: a filter sees
# only its own logger's records, not those of the loggers below it.
_LIBRARY_LOGGERS = (
    *_LOGGING_LIBRARIES,
    *(
        f"{core}.{part}"
        for core in ("httpcore", "httpcore2")
        for part in ("connection", "http11", "http2", "proxy", "socks")
    ),
    *(f"{sdk}.{part}" for sdk in ("openai", "anthropic") for part in ("_base_client", "_response")),
    "hpack.hpack",
)
_redacted_loggers: set[str] = set()
_redacted_at = -1  # how many loggers there were at the last look
_redacting_lock = threading.Lock()


def redact_library_logs() -> None:
    """Put a :class:`~cm_notebook.redact.RedactingFilter` on the loggers of the HTTP
    libraries and SDKs providers use (``httpx``, ``httpx2``, ``httpcore``, ``openai``,
    ``anthropic``; every logger of theirs that exists, and the ones requests are logged
    on), once each: a request's URL logged at INFO must not show the credentials of a
    ``base_url``. Cheap to call again: it looks only when loggers were added since."""
    global _redacted_at
    manager = logging.Logger.manager
    with _redacting_lock:
        if len(manager.loggerDict) == _redacted_at:
            return
        names = {
            name
            for name in list(manager.loggerDict)
            if name.partition(".")[0] in _LOGGING_LIBRARIES
        }
        for name in (names | set(_LIBRARY_LOGGERS)) - _redacted_loggers:
            logger = logging.getLogger(name)
            if not any(isinstance(f, RedactingFilter) for f in logger.filters):
                logger.addFilter(RedactingFilter())
            _redacted_loggers.add(name)
        _redacted_at = len(manager.loggerDict)
