"""The seed's browser snippet against the real server, in Debian's Chromium.

A page of the server's own origin (Jupyter's login page: the server's default CSP, which
lets a page connect to its own origin) runs the snippet unchanged but for where the
deltas go:

    new EventSource(url).addEventListener('ContentDelta', e => JSON.parse(e.data).delta)

with ``url`` the context's events URL and ``?token=`` (an ``EventSource`` cannot set
headers). A message sent over HTTP to the scripted provider then streams into the page:
its deltas, joined, are the reply, and ``MessageCompleted`` arrives.

Without Chromium the test is skipped with the command that installs it; under CI
(``CI=true``) it fails instead.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from browser_lab import CHROMIUM, TIMEOUT_MS, need_chromium
from jupyter_server_proc import TOKEN, JupyterServer
from server_client import create_context

pytestmark = pytest.mark.slow

# The snippet, with its deltas kept in window state; an 'open' listener tells the test
# when the stream is positioned, so the message is sent after it.
SNIPPET = """(url) => {
    window.deltas = [];
    window.completed = [];
    const source = new EventSource(url);
    source.addEventListener('open', () => { window.opened = true; });
    source.addEventListener('ContentDelta', e => window.deltas.push(JSON.parse(e.data).delta));
    source.addEventListener('MessageCompleted', e => window.completed.push(JSON.parse(e.data)));
    window.source = source;
}"""


def test_the_seed_eventsource_snippet_streams_a_reply_in_chromium(tmp_path: Path) -> None:
    need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    reply = " ".join(f"word{i}" for i in range(40)) + " - the end."
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
        sync_api.sync_playwright() as p,
    ):
        context_id = create_context(client, [{"reply": reply, "chunks": "words", "delay": 0.01}])
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            # A Jupyter page of the same origin, opened without the token: nothing of the
            # page's own session helps the stream, only the token in its URL.
            page.goto(f"{server.url}login")
            events_url = server.api(f"/contexts/{context_id}/events") + f"?token={TOKEN}"
            page.evaluate(SNIPPET, events_url)
            page.wait_for_function("() => window.opened === true")

            sent = client.post(f"contexts/{context_id}/messages", json={"text": "Tell me"})
            assert sent.status_code == 202, sent.text

            page.wait_for_function("() => window.completed.length > 0")
            deltas = page.evaluate("() => window.deltas")
            [completed] = page.evaluate("() => window.completed")
            page.evaluate("() => window.source.close()")
        finally:
            browser.close()
        stored = client.get(f"contexts/{context_id}/messages/{completed['message_id']}")
        assert stored.status_code == 200, stored.text
    assert "".join(deltas) == reply
    assert len(deltas) > 1  # it streamed, word by word
    assert completed["status"] == "complete"
    assert stored.json()["content"] == reply
