"""Workload 9: the REST + SSE API of a real Jupyter server on 127.0.0.1.

- Sends per second: ``server_sends`` sends of a short scripted reply, one after
  another, each answered 202 and then waited for (polling the context until it is no
  longer running), against the same sends through ``ContextSession`` in this process.
- SSE fan-out: ``sse_clients`` clients follow one context's events while one reply of
  ``sse_deltas`` deltas (2 ms apart, a fast model) streams; the time from the send to
  the last client's ``MessageCompleted``, how much of the reply's text each client got
  (chunks that come together arrive as one delta) and the median delta delivery
  latency (from the signal's own timestamp, which is its first chunk's), against one
  client alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse

from cm_notebook import ContextSession
from cm_notebook.server.launch import server_command
from cm_notebook.testing import ScriptedProvider

from ..common import Bench
from ..report import Row

NAME = "server"
WORKLOAD = "9 server"
PACE = 0.002
START_TIMEOUT = 60.0


def _start(root: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    command = server_command(port=0, ip="127.0.0.1", data_dir=root / "data")
    command += [f"--IdentityProvider.token={token}", "--CMNotebookApp.default_provider=scripted"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        command.append("--allow-root")  # Jupyter refuses root unless told (containers)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(root / "rt"), JUPYTER_CONFIG_DIR=str(root))
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    runtime = root / "rt" / f"jpserver-{process.pid}.json"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if runtime.exists():
            try:
                port = json.loads(runtime.read_text())["port"]
            except (ValueError, KeyError):
                port = None
            if port:
                return process, f"http://127.0.0.1:{port}/cm/api/"
        if process.poll() is not None:
            break
        time.sleep(0.05)  # the server writes its runtime file when it listens
    process.kill()
    raise RuntimeError("the Jupyter server did not start")


def _in_process(data_dir: Path, sends: int) -> float:
    provider = ScriptedProvider(["ok"] * sends, strict=True)
    session = ContextSession.create("sends", provider=provider, data_dir=data_dir)
    try:
        started = time.perf_counter()
        for number in range(sends):
            session.send(f"m{number}").result(120)
        return time.perf_counter() - started
    finally:
        session.close()


async def _sends(client: httpx.AsyncClient, sends: int) -> float:
    created = await client.post(
        "contexts", json={"provider_options": {"script": [{"reply": "ok"}] * sends}}
    )
    context_id = created.json()["context"]["id"]
    started = time.perf_counter()
    for number in range(sends):
        answer = await client.post(f"contexts/{context_id}/messages", json={"text": f"m{number}"})
        if answer.status_code != 202:
            raise RuntimeError(f"send answered {answer.status_code}: {answer.text}")
        while True:  # polling, as a REST client without SSE does
            if not (await client.get(f"contexts/{context_id}")).json()["running"]:
                break
            await asyncio.sleep(0.002)
    return time.perf_counter() - started


def _reply_text(chunks: int) -> str:
    """The fan-out's reply: ``chunks`` words, streamed one a chunk."""
    return " ".join(f"w{n}" for n in range(chunks))


@dataclass
class _Listener:
    done_at: float = 0.0
    deltas: int = 0
    characters: int = 0
    resyncs: int = 0
    latencies: list[float] = field(default_factory=list)


async def _listen(
    client: httpx.AsyncClient, context_id: str, connected: asyncio.Queue[None]
) -> _Listener:
    heard = _Listener()
    async with aconnect_sse(client, "GET", f"contexts/{context_id}/events") as source:
        await connected.put(None)  # the server subscribes before it answers with headers
        async for event in source.aiter_sse():
            if event.event == "ContentDelta":
                delta = json.loads(event.data)
                heard.deltas += 1
                heard.characters += len(delta["delta"])
                at = delta["at"].replace("Z", "+00:00")
                age = datetime.now(timezone.utc) - datetime.fromisoformat(at)
                heard.latencies.append(age.total_seconds())
            elif event.event == "Resync":
                heard.resyncs += 1
            elif event.event == "MessageCompleted":
                heard.done_at = time.perf_counter()
                return heard
    return heard


async def _fan_out(
    client: httpx.AsyncClient, clients: int, deltas: int
) -> tuple[float, list[_Listener]]:
    script = [{"reply": _reply_text(deltas), "chunks": "words", "delay": PACE}]
    created = await client.post("contexts", json={"provider_options": {"script": script}})
    context_id = created.json()["context"]["id"]
    connected: asyncio.Queue[None] = asyncio.Queue()
    tasks = [asyncio.create_task(_listen(client, context_id, connected)) for _ in range(clients)]
    for _ in range(clients):
        await asyncio.wait_for(connected.get(), START_TIMEOUT)
    started = time.perf_counter()
    await client.post(f"contexts/{context_id}/messages", json={"text": "go"})
    heard = await asyncio.wait_for(asyncio.gather(*tasks), 300)
    return max(h.done_at for h in heard) - started, list(heard)


@dataclass
class _Measured:
    sends: float
    alone: float
    one: list[_Listener]
    crowd: float
    many: list[_Listener]


async def _over_http(url: str, token: str, bench: Bench) -> _Measured:
    sizes = bench.sizes
    limits = httpx.Limits(max_connections=sizes.sse_clients + 10)
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=120, limits=limits
    ) as client:
        sends = await _sends(client, sizes.server_sends)
        alone, one = await _fan_out(client, 1, sizes.sse_deltas)
        crowd, many = await _fan_out(client, sizes.sse_clients, sizes.sse_deltas)
    return _Measured(sends, alone, one, crowd, many)


def _latency(heard: list[_Listener]) -> float:
    every = [latency for h in heard for latency in h.latencies]
    return statistics.median(every) if every else float("nan")


def run(bench: Bench) -> list[Row]:
    """Start the server, measure, stop it."""
    sizes = bench.sizes
    token = secrets.token_hex(16)
    root = bench.folder("server")
    baseline = _in_process(root / "local", sizes.server_sends)
    process, url = _start(root, token)
    try:
        got = asyncio.run(_over_http(url, token, bench))
    finally:
        process.terminate()
        process.wait(30)
    many, one = got.many, got.one
    reply = len(_reply_text(sizes.sse_deltas))
    delivered = sum(h.characters for h in many) / (len(many) * reply)
    signals = statistics.fmean(h.deltas for h in many)
    resyncs = sum(h.resyncs for h in many)
    return [
        Row(
            WORKLOAD,
            f"sends/s over REST ({sizes.server_sends} sends, each waited for)",
            sizes.server_sends / got.sends,
            "/s",
            baseline=sizes.server_sends / baseline,
            baseline_label="ContextSession.send in-process",
        ),
        Row(
            WORKLOAD,
            f"SSE fan-out: a {sizes.sse_deltas}-chunk reply to {sizes.sse_clients} clients",
            got.crowd,
            "s",
            baseline=got.alone,
            baseline_label="1 client",
            note=(
                f"{delivered:.0%} of the text delivered, in {signals:.0f} deltas per client; "
                f"{resyncs} Resync"
            ),
        ),
        Row(
            WORKLOAD,
            f"SSE fan-out: median delta latency, {sizes.sse_clients} clients",
            _latency(many) * 1000,
            "ms",
            baseline=_latency(one) * 1000,
            baseline_label="1 client",
        ),
    ]
