"""A real, misbehaving OpenAI-compatible HTTP server for tests.

:class:`FaultServer` listens on 127.0.0.1 (an ephemeral port) in a background thread
and speaks the OpenAI chat-completions protocol over real HTTP/1.1 sockets:
``POST /v1/chat/completions`` with ``"stream": true`` answers ``text/event-stream``
(chunked) with ``data: {chat.completion.chunk}`` lines and ``data: [DONE]``; without
``stream`` it answers one ``chat.completion`` JSON; ``GET /v1/models`` lists one model.

Each request takes the next behaviour from a script queue (:meth:`FaultServer.script`);
when the queue is empty it answers with ``default`` (a short normal reply). Every
request body is recorded in :attr:`FaultServer.requests`, in order. Behaviours::

    Reply("Hello there")                         a normal streamed reply (+ usage)
    Reply(tool_calls=[ToolCall(...)])            a tool call split across deltas
    Status(429, retry_after="2")                 an HTTP error with a JSON error body
    Status.unknown_model("gpt-nope")             404 model_not_found, like OpenAI
    ResetAfter(["Hel", "lo"])                    chunks, then a TCP reset (RST)
    EndWithoutFinish(["Hel", "lo"])              chunks, then a clean end: no finish reason
    Malformed(["Hel"], raw="{not json")          chunks, then a line that is not JSON
    ErrorEvent("overloaded", after=["Hel"])      chunks, then an in-stream error object
    Hang(seconds=5, after=["Hel"])               chunks (or none), then silence
    ByteOrderMark(Reply("Hello there"))          a reply whose body begins with EF BB BF
    KeepAlive(["Hel"])                           chunks, then keep-alive comments only
    SlowReply(Reply("Hello there"), pause=0.3)   keep-alives for 0.3 s before each piece

``Hang`` and ``KeepAlive`` wait at most ``seconds`` and are cut short by
:meth:`FaultServer.stop` (``KeepAlive`` also by the client hanging up), so a test that
uses them costs only its client's timeout. Use it as a context manager::

    with FaultServer() as server:
        server.script([Status(500), Reply("ok")])
        provider = OpenAIProvider("gpt-test", base_url=server.url, timeout=1.0)
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = [
    "BOM",
    "Behaviour",
    "ByteOrderMark",
    "EndWithoutFinish",
    "ErrorEvent",
    "FaultServer",
    "Hang",
    "KeepAlive",
    "Malformed",
    "Reply",
    "ResetAfter",
    "SlowReply",
    "Status",
    "ToolCall",
]

MODEL = "fault-model"
BOM = b"\xef\xbb\xbf"  # U+FEFF in UTF-8: the byte-order mark


@dataclass(frozen=True)
class ToolCall:
    """A tool call to stream; ``pieces`` splits ``arguments`` into that many deltas."""

    id: str
    name: str
    arguments: str
    pieces: int = 3


@dataclass(frozen=True)
class Reply:
    """A normal reply: ``text`` streamed in ``pieces`` (default: one per word)."""

    text: str = "Hello from the fault server."
    pieces: list[str] | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None  # default: "tool_calls" if tool_calls else "stop"
    usage: tuple[int, int] | None = (7, 5)  # (prompt, completion); None: no usage chunk
    reset_after_finish: bool = False  # reset the connection right after the finish reason

    def text_pieces(self) -> list[str]:
        if self.pieces is not None:
            return list(self.pieces)
        words = self.text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0]


@dataclass(frozen=True)
class Status:
    """An HTTP error status with an OpenAI-style JSON error body."""

    code: int
    message: str = "fault server error"
    error_type: str = "server_error"
    error_code: str | None = None
    retry_after: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def unknown_model(cls, model: str) -> Status:
        """What OpenAI answers for a model that does not exist."""
        return cls(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            error_type="invalid_request_error",
            error_code="model_not_found",
        )


@dataclass(frozen=True)
class ResetAfter:
    """Stream ``pieces`` as text deltas, then reset the TCP connection."""

    pieces: list[str] = field(default_factory=lambda: ["Hel", "lo"])


@dataclass(frozen=True)
class EndWithoutFinish:
    """Stream ``pieces``, then end the response cleanly with no finish reason.

    ``done=True`` also sends ``data: [DONE]``."""

    pieces: list[str] = field(default_factory=lambda: ["Hel", "lo"])
    done: bool = False


@dataclass(frozen=True)
class Malformed:
    """Stream ``pieces``, then ``data: <raw>`` where raw is not a valid chunk (or each
    line of a list of them; bytes are sent as they are, say invalid UTF-8)."""

    pieces: list[str] = field(default_factory=lambda: ["Hel"])
    raw: str | bytes | list[str] = '{"choices": [{"delta": {"content": "x"'


@dataclass(frozen=True)
class ErrorEvent:
    """Stream ``after``, then ``data: {"error": {...}}`` as llama.cpp or OpenAI do."""

    message: str = "the server is overloaded"
    code: int | None = None
    error_type: str = "server_error"
    after: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Hang:
    """Send ``after`` (headers first if any), then nothing for ``seconds``; close."""

    seconds: float = 5.0
    after: list[str] | None = None  # None: hang before sending the status line


@dataclass(frozen=True)
class ByteOrderMark:
    """``reply`` with its body prefixed by ``mark`` (one UTF-8 byte-order mark), which an
    event-stream client must skip. The role comes with the first words (no empty role
    chunk first, as some servers send it), so a client that reads ``\\ufeffdata`` as an
    unknown field loses those words. ``split`` sends the mark a byte per HTTP chunk
    (each flushed on its own) before the first event; otherwise they share one chunk.
    """

    reply: Reply = field(default_factory=Reply)
    split: bool = False
    mark: bytes = BOM


KEEP_ALIVE = b": keep-alive\n\n"  # an event-stream comment, as proxies send to keep a line up


@dataclass(frozen=True)
class KeepAlive:
    """Stream ``after``, then ``comment`` (an event-stream comment; any bytes) every
    ``every`` seconds and nothing else, until the client hangs up, ``seconds`` pass or
    the server stops."""

    after: list[str] = field(default_factory=lambda: ["Hel", "lo"])
    every: float = 0.05
    seconds: float = 30.0
    comment: bytes = KEEP_ALIVE


@dataclass(frozen=True)
class SlowReply:
    """``reply``, with ``comment`` every ``every`` seconds for ``pause`` seconds before
    each piece of its text and before its finish reason: slow, but moving on."""

    reply: Reply = field(default_factory=Reply)
    pause: float = 0.3
    every: float = 0.05
    comment: bytes = KEEP_ALIVE


Behaviour = (
    Reply
    | Status
    | ResetAfter
    | EndWithoutFinish
    | Malformed
    | ErrorEvent
    | Hang
    | ByteOrderMark
    | KeepAlive
    | SlowReply
)


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def _tool_call_chunks(calls: list[ToolCall]) -> Iterator[dict[str, Any]]:
    for index, call in enumerate(calls):
        yield _chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
        )
        size = max(1, -(-len(call.arguments) // max(1, call.pieces)))
        for start in range(0, len(call.arguments), size):
            part = call.arguments[start : start + size]
            yield _chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------
    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write(self, payload: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        self.wfile.flush()

    def _event(self, data: dict[str, Any] | str) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        self._write(f"data: {text}\n\n".encode())

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _keep_alive(self, seconds: float, every: float, comment: bytes) -> None:
        # ``comment`` every ``every`` seconds for ``seconds``; a client that hung up
        # ends it (the write fails, and the handler with it).
        stopping = self.server.fault.stopping
        for _ in range(max(1, round(seconds / every))):
            if stopping.wait(every):
                return
            self._write(comment)

    def _text(
        self,
        pieces: Iterable[str],
        prefix: bytes = b"",
        split: bool = False,
        slow: SlowReply | None = None,
    ) -> None:
        deltas: list[dict[str, Any]] = [{"content": piece} for piece in pieces]
        if not prefix:
            deltas.insert(0, {"role": "assistant", "content": ""})
        elif deltas:
            # The role rides with the first piece, so the event after the prefix holds words.
            deltas[0] = {"role": "assistant", **deltas[0]}
        if split:  # the prefix a byte per HTTP chunk, ahead of the first event
            for byte in prefix:
                self._write(bytes([byte]))
            prefix = b""
        for delta in deltas:
            if slow is not None and delta.get("content"):
                self._keep_alive(slow.pause, slow.every, slow.comment)
            self._write(prefix + f"data: {json.dumps(_chunk(delta))}\n\n".encode())
            prefix = b""
        if prefix:
            self._write(prefix)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    # -- requests -------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        behaviour = self.server.fault.take(body, headers)
        self._behave(behaviour, body)

    def _behave(self, behaviour: Behaviour, body: dict[str, Any]) -> None:
        stream = bool(body.get("stream"))
        if isinstance(behaviour, Status):
            headers = dict(behaviour.headers)
            if behaviour.retry_after is not None:
                headers["Retry-After"] = behaviour.retry_after
            error = {
                "message": behaviour.message,
                "type": behaviour.error_type,
                "param": None,
                "code": behaviour.error_code,
            }
            self._json(behaviour.code, {"error": error}, headers)
        elif isinstance(behaviour, Reply):
            if stream:
                self._stream_reply(behaviour, body)
            else:
                self._json(200, self._whole_reply(behaviour))
        elif isinstance(behaviour, ByteOrderMark):
            self._stream_reply(behaviour.reply, body, behaviour.mark, behaviour.split)
        elif isinstance(behaviour, SlowReply):
            self._stream_reply(behaviour.reply, body, slow=behaviour)
        elif isinstance(behaviour, KeepAlive):
            self._start_stream()
            self._text(behaviour.after)
            self._keep_alive(behaviour.seconds, behaviour.every, behaviour.comment)
            self.close_connection = True
        elif isinstance(behaviour, Hang):
            if behaviour.after is not None:
                self._start_stream()
                self._text(behaviour.after)
            self.server.fault.stopping.wait(behaviour.seconds)
            self.close_connection = True
        else:
            self._start_stream()
            if isinstance(behaviour, ResetAfter):
                self._text(behaviour.pieces)
                self._reset()
            elif isinstance(behaviour, EndWithoutFinish):
                self._text(behaviour.pieces)
                if behaviour.done:
                    self._event("[DONE]")
                self._end_stream()
            elif isinstance(behaviour, Malformed):
                self._text(behaviour.pieces)
                raw = behaviour.raw
                for line in raw if isinstance(raw, list) else [raw]:
                    if isinstance(line, bytes):
                        self._write(b"data: " + line + b"\n\n")
                    else:
                        self._event(line)
                self._event("[DONE]")
                self._end_stream()
            elif isinstance(behaviour, ErrorEvent):
                self._text(behaviour.after)
                error: dict[str, Any] = {"message": behaviour.message, "type": behaviour.error_type}
                if behaviour.code is not None:
                    error["code"] = behaviour.code
                self._event({"error": error})
                self._end_stream()

    def _stream_reply(
        self,
        reply: Reply,
        body: dict[str, Any],
        prefix: bytes = b"",
        split: bool = False,
        slow: SlowReply | None = None,
    ) -> None:
        self._start_stream()
        pieces = reply.text_pieces() if reply.text or reply.pieces else []
        self._text(pieces, prefix, split, slow)
        for chunk in _tool_call_chunks(reply.tool_calls):
            self._event(chunk)
        if slow is not None:
            self._keep_alive(slow.pause, slow.every, slow.comment)
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        self._event(_chunk({}, finish))
        if reply.reset_after_finish:
            self._reset()
            return
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if wants_usage and reply.usage is not None:
            prompt, completion = reply.usage
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            self._event({**_chunk({}), "choices": [], "usage": usage})
        self._event("[DONE]")
        self._end_stream()

    def _whole_reply(self, reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in reply.tool_calls
            ]
        prompt, completion = reply.usage or (0, 0)
        return {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": reply.finish_reason
                    or ("tool_calls" if reply.tool_calls else "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fault: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Resets and hung-up clients are the point of this server: no tracebacks.
        pass


class FaultServer:
    """An OpenAI-compatible server on 127.0.0.1 that misbehaves on cue; see the module doc.

    :attr:`url` is the ``base_url`` for clients (``http://127.0.0.1:<port>/v1``);
    :attr:`requests` holds each request's JSON body and :attr:`headers` its headers
    (names lower-cased).
    """

    def __init__(self, default: Behaviour | None = None) -> None:
        self.default: Behaviour = default if default is not None else Reply()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.stopping = threading.Event()
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the fault server is not running; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, behaviours: Iterable[Behaviour]) -> None:
        """Queue behaviours for the next requests, in order (appends to the queue)."""
        with self._lock:
            self._queue.extend(behaviours)

    @property
    def pending(self) -> int:
        """How many scripted behaviours have not been used yet."""
        with self._lock:
            return len(self._queue)

    def take(self, body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        """Record a request and return the behaviour it gets (used by the handler)."""
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            self._arrived.notify_all()
            return self._queue.popleft() if self._queue else self.default

    def start(self) -> FaultServer:
        if self._httpd is not None:
            return self
        self.stopping.clear()
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.fault = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging responses are released at once."""
        self.stopping.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> None:
        """Block until at least ``count`` requests arrived (for tests racing a client)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"{len(self.requests)} of {count} requests arrived")
