"""Client helpers for the server tests: create scripted contexts, read SSE with a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, connect_sse

__all__ = ["create_context", "read_events", "wait_for"]


def create_context(client: httpx.Client, script: list[dict[str, Any]], **fields: Any) -> str:
    """A new context on the scripted provider playing ``script``; returns its id."""
    body = {"provider": "scripted", "provider_options": {"script": script}, **fields}
    response = client.post("contexts", json=body)
    assert response.status_code == 201, response.text
    context_id: str = response.json()["context"]["id"]
    return context_id


@contextmanager
def _deadline(response: httpx.Response, seconds: float) -> Iterator[None]:
    # The server's heartbeats keep a stalled stream alive forever; closing the response
    # after a deadline turns a hang into a failure.
    timer = threading.Timer(seconds, response.close)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def read_events(
    client: httpx.Client,
    url: str,
    until: Callable[[ServerSentEvent], bool],
    *,
    headers: dict[str, str] | None = None,
    started: Callable[[], object] | None = None,
    timeout: float = 60.0,
) -> list[ServerSentEvent]:
    """Open an SSE stream, call ``started()`` once it is open, read until ``until(event)``.

    Returns the events read, the matching one last; the stream is then closed (the
    client leaves).
    """
    events: list[ServerSentEvent] = []
    with connect_sse(client, "GET", url, headers=headers or {}) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        if started is not None:
            started()
        with _deadline(source.response, timeout):
            for event in source.iter_sse():
                if not event.data:
                    continue  # a 'retry:' line alone; browsers dispatch nothing for it
                events.append(event)
                if until(event):
                    return events
    raise AssertionError(f"the stream ended before the awaited event; got {events}")


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds (AssertionError after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
