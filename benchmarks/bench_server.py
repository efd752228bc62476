"""The REST + SSE API's cost: a long reply over SSE against the same reply in-process.

Starts a real Jupyter server (``python -m cm_notebook.server``) on 127.0.0.1, then:

- streams a scripted 2,000-delta reply, paced like a fast model, over the events
  stream (httpx-sse) and through ``ContextSession.send`` in this process (the
  baseline); prints both times, their ratio and each delta's delivery latency;
- streams it unpaced (a burst) and counts what arrived one by one and the Resyncs;
- times small requests: ``GET /contexts/{id}`` and a send answered 202.

Run: ``.venv/bin/python -m benchmarks server``.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from cm_notebook import ContextSession
from cm_notebook.server.launch import server_command
from cm_notebook.testing import ScriptedProvider

DELTAS = 2_000
PACE = 0.002  # seconds between deltas: a fast model
REQUESTS = 100


def _text() -> str:
    return " ".join(f"w{i}" for i in range(DELTAS))


def _start(root: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    command = server_command(port=0, ip="127.0.0.1", data_dir=root / "data")
    command += [f"--IdentityProvider.token={token}", "--CMNotebookApp.default_provider=scripted"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        command.append("--allow-root")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(root / "rt"), JUPYTER_CONFIG_DIR=str(root))
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    runtime = root / "rt" / f"jpserver-{process.pid}.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if runtime.exists():
            try:
                port = json.loads(runtime.read_text())["port"]
            except (ValueError, KeyError):
                port = None
            if port:
                return process, f"http://127.0.0.1:{port}/cm/api/"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("the server did not start")


def _over_sse(client: httpx.Client, delay: float) -> tuple[float, list[float], Counter[str]]:
    # Returns the time to MessageCompleted, each delta's delivery latency (ms, from the
    # signal's own timestamp to its arrival here) and the count of each signal kind.
    script = [{"reply": _text(), "chunks": "words", "delay": delay}]
    created = client.post("contexts", json={"provider_options": {"script": script}})
    context_id = created.json()["context"]["id"]
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    with connect_sse(client, "GET", f"contexts/{context_id}/events") as source:
        started = time.perf_counter()
        client.post(f"contexts/{context_id}/messages", json={"text": "go"})
        for event in source.iter_sse():
            if not event.data:
                continue
            kinds[event.event] += 1
            if event.event == "ContentDelta":
                at = datetime.fromisoformat(json.loads(event.data)["at"].replace("Z", "+00:00"))
                latencies.append((datetime.now(timezone.utc) - at).total_seconds() * 1000)
            elif event.event == "MessageCompleted":
                break
    return time.perf_counter() - started, latencies, kinds


def _in_process(data_dir: Path, delay: float) -> float:
    provider = ScriptedProvider().reply(_text(), chunks="words", delay=delay)
    session = ContextSession.create("bench", provider=provider, data_dir=data_dir)
    try:
        started = time.perf_counter()
        session.send("go").result(120)
        return time.perf_counter() - started
    finally:
        session.close()


def _small_requests(client: httpx.Client) -> tuple[list[float], list[float]]:
    script = [{"reply": "ok"}] * REQUESTS
    created = client.post("contexts", json={"provider_options": {"script": script}})
    context_id = created.json()["context"]["id"]
    reads, sends = [], []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        client.get(f"contexts/{context_id}")
        reads.append((time.perf_counter() - started) * 1000)
    for i in range(REQUESTS // 2):
        started = time.perf_counter()
        answer = client.post(f"contexts/{context_id}/messages", json={"text": f"m{i}"})
        sends.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 202, answer.text
        while client.get(f"contexts/{context_id}").json()["running"]:
            time.sleep(0.005)
    return reads, sends


def main() -> None:
    """Run the benchmark and print its figures."""
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = _in_process(root / "local", PACE)
        process, url = _start(root, token)
        try:
            headers = {"Authorization": f"token {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
                paced, latencies, _kinds = _over_sse(client, PACE)
                _burst, _unused, burst = _over_sse(client, 0.0)
                reads, sends = _small_requests(client)
        finally:
            process.terminate()
            process.wait(30)
    latencies.sort()
    print(f"a {DELTAS}-delta reply paced at {PACE * 1000:.0f} ms per delta")
    print(f"  in-process session  {baseline:6.2f} s")
    print(f"  over SSE            {paced:6.2f} s   (x{paced / baseline:.2f} the time)")
    print(
        f"  delta delivery latency over SSE: median {statistics.median(latencies):.1f} ms, "
        f"p90 {latencies[int(len(latencies) * 0.9)]:.1f} ms, max {latencies[-1]:.1f} ms"
    )
    print(
        f"the same reply unpaced (a burst): {burst['ContentDelta']} deltas arrived one by one, "
        f"{burst['Resync']} Resync (the client re-pulls the message)"
    )
    print(
        f"GET /contexts/{{id}}: median {statistics.median(reads):.1f} ms over {REQUESTS}; "
        f"send (202): median {statistics.median(sends):.1f} ms over {len(sends)}"
    )


if __name__ == "__main__":
    sys.exit(main())
