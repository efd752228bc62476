"""A context whose lock is held by a stuck process cannot take the server's threads.

Requests' blocking work runs on the server's own threads (cm_notebook.server.offloop),
at most ``blocking_threads_per_context`` of them per context. Here another process
holds one context's lock while a dozen writes to it wait; a write to another context
must still be answered, before any of the waiting ones gives up.

A real Jupyter server in a child process, real HTTP, real OS locks (see
tests/test_server_loop.py for how the server's open files are read).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_server_proc import JupyterServer
from server_client import create_context, wait_for
from test_server_loop import _client, _holding, _open_files, _Request

from cm_notebook.server import CMNotebookApp
from cm_notebook.server.offloop import OffLoop, ServerStoppingError
from cm_notebook.server.settings_check import setting_problems

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the server's open files in /proc"
)

# More than the event loop's default executor has threads on small machines
# (min(32, CPUs + 4)), and more than the server's own pool.
WAITING = 12
DEADLINE = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    with JupyterServer(tmp_path_factory.mktemp("jupyter-pool")) as running:
        yield running


class _Sent(_Request):
    """A request on a thread of its own that says when it has been sent."""

    def __init__(self, server: JupyterServer, method: str, url: str, body: Any) -> None:
        self.sent = threading.Event()
        super().__init__(server, method, url, body)

    def _send(self, server: JupyterServer, method: str, url: str, body: Any) -> None:
        with _client(server) as client:
            client.event_hooks["request"] = [lambda _request: self.sent.set()]
            try:
                self.outcome.append(client.request(method, url, json=body))
            except BaseException as exc:  # reported by response()
                self.outcome.append(exc)


def test_a_stuck_context_leaves_threads_for_the_others(server: JupyterServer) -> None:
    with _client(server) as client:
        stuck = create_context(client, [])
        other = create_context(client, [])
        lock = (server.data_dir / "contexts" / stuck / ".lock").resolve()
        with _holding(lock):  # a hung process holds the context's lock
            waiting = [
                _Sent(server, "PATCH", f"contexts/{stuck}", {"title": f"Title {n}"})
                for n in range(WAITING)
            ]
            folder = f"{lock.parent}/"
            wait_for(lambda: any(path.startswith(folder) for path in _open_files(server)))
            for request in waiting:
                assert request.sent.wait(DEADLINE)
            # Each of those has reached the server once a later one to the same context
            # is answered (a read that needs no thread).
            assert client.get(f"contexts/{stuck}").status_code == 200
            renamed = client.patch(f"contexts/{other}", json={"title": "Still served"})
            assert renamed.status_code == 200, renamed.text
            # Answered at once, not after the stuck context's writes gave up waiting.
            assert all(request.waiting() for request in waiting), "a waiting write gave up"
        answers = [request.response() for request in waiting]
        assert [answer.status_code for answer in answers] == [200] * WAITING


@pytest.mark.parametrize(
    "setting", ["blocking_threads", "blocking_threads_per_context"], ids=["threads", "share"]
)
def test_thread_settings_below_one_are_refused(setting: str) -> None:
    # Named by the checks at start (a server with such a setting does not serve the API).
    [problem] = setting_problems(CMNotebookApp(**{setting: 0}))
    assert problem.text().startswith(f"CMNotebookApp.{setting} must be at least 1, not 0; ")


def test_the_tool_policy_setting_takes_any_case_and_refuses_other_words() -> None:
    assert CMNotebookApp(tool_policy=" Deny").tool_policy == "deny"
    assert CMNotebookApp().tool_policy == ""  # unset: each tool's own policy, else ask
    assert setting_problems(CMNotebookApp(tool_policy=" Deny")) == []
    [problem] = setting_problems(CMNotebookApp(tool_policy="never"))
    assert "tool_policy must be 'ask', 'auto' or 'deny', not 'never'" in problem.text()


def test_after_shutdown_calls_are_refused_and_no_share_is_kept() -> None:
    # Work queued behind a running call is dropped by shutdown() and told why; the call
    # that was running finishes; calls made afterwards are refused; no context keeps a
    # share (a server stopping and starting again in one process starts clean).
    async def scenario() -> None:
        off_loop = OffLoop(threads=1, per_context=1)
        started, release = threading.Event(), threading.Event()

        def hold() -> bool:
            started.set()
            return release.wait(10)

        running = asyncio.ensure_future(off_loop.run("a", hold))
        assert await asyncio.to_thread(started.wait, 10)
        queued = asyncio.ensure_future(off_loop.run("b", lambda: "never"))
        await asyncio.sleep(0)  # the queued call reaches the pool's queue
        assert off_loop.busy_contexts() == {"a": 1, "b": 1}
        off_loop.shutdown()
        with pytest.raises(ServerStoppingError, match="server is stopping"):
            await queued
        release.set()
        assert await running is True
        with pytest.raises(ServerStoppingError, match="server is stopping"):
            await off_loop.run("a", lambda: "late")
        assert off_loop.busy_contexts() == {}

    asyncio.run(scenario())
