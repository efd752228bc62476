"""A real local HTTP server whose answers are scripted byte for byte, for provider tests:
each POST gets the next behaviour (a function writing the response) or ``default``.

Use :func:`serving` (a context manager) or the ``wire`` fixtures built on it; a
behaviour writes through :class:`WireHandler` (``start_stream``, ``event``, ``raw``,
``end_stream``, ``hold``, ``send_body``).
"""

from __future__ import annotations

import json
import select
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Behaviour = Callable[["WireHandler", dict[str, Any]], None]


class WireServer(ThreadingHTTPServer):
    """Answers each POST with the next scripted behaviour (``default`` when none is left)
    and records ``(path, headers, body)`` of every request."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), WireHandler)
        self.behaviours: deque[Behaviour] = deque()
        self.default: Behaviour = openai_reply("Hello.")
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.release = threading.Event()  # set at teardown: held connections let go
        self.client_closed = threading.Event()  # the client hung up on a held reply

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up are part of the script


class WireHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: WireServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append((self.path, headers, body))
        server = self.server
        behaviour = server.behaviours.popleft() if server.behaviours else server.default
        behaviour(self, body)

    def send_body(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def event(self, data: dict[str, Any] | str, name: str | None = None) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        payload = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
        self.raw(payload.encode())

    def raw(self, data: bytes) -> None:
        """``data`` as one HTTP chunk, flushed (so it reaches the client on its own)."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def hold(self) -> None:
        """Keep the connection open, sending nothing, until the client hangs up."""
        while not self.server.release.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and not self.connection.recv(1):
                self.server.client_closed.set()
                return


@contextmanager
def serving() -> Iterator[WireServer]:
    """A running :class:`WireServer`, shut down (held connections let go) on exit."""
    server = WireServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


# -- OpenAI chunks ---------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-wire",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(usage: dict[str, Any]) -> dict[str, Any]:
    return {**chunk({}), "choices": [], "usage": usage}


def openai_reply(
    text: str,
    *,
    usage: dict[str, Any] | None = None,
    before: list[dict[str, Any]] | None = None,
    then: str = "done",
) -> Behaviour:
    """``before`` chunks, ``text``, the finish reason, a usage chunk (if ``usage``), then
    ``[DONE]`` and the end (``then="done"``) or nothing more, connection open (``"hold"``)."""

    def behave(handler: WireHandler, body: dict[str, Any]) -> None:
        handler.start_stream()
        for extra in before or []:
            handler.event(extra)
        handler.event(chunk({"content": text}))
        handler.event(chunk({}, "stop"))
        if usage is not None:
            handler.event(usage_chunk(usage))
        if then == "hold":
            handler.hold()
            return
        handler.event("[DONE]")
        handler.end_stream()

    return behave
