"""The built-in local model: load time and generation speed, in-process vs over HTTP.

Measures, for the bundled SmolLM2-135M-Instruct (or ``CM_LOCAL_MODEL``):

- load time of the in-process model (``LocalProvider.load()``) and how long the event
  loop stalled meanwhile (``xllamacpp.Server()`` holds the GIL while it loads);
- load-and-ready time of llama.cpp's OpenAI-compatible HTTP server;
- tokens/s of a 128-token greedy generation through ``LocalProvider`` (in-process,
  callback -> worker thread -> event loop) and through ``OpenAIProvider`` talking to
  the HTTP server on 127.0.0.1 (same model file, same greedy settings), median of
  ``runs``, with time to first token;

and prints the figures and the in-process / HTTP ratio. Asserts nothing about timing.

Run: ``.venv/bin/python benchmarks/bench_local_model.py [runs]`` (default 3).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from cm_notebook.model import Message
from cm_notebook.providers.base import ChatRequest, Finish, Provider, TextDelta, Usage
from cm_notebook.providers.local import LocalProvider, serve_openai_compatible, unload_local_models
from cm_notebook.providers.openai import OpenAIProvider

TOKENS = 128
PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."
GREEDY = {"temperature": 0.0, "top_k": 1, "seed": 0}
N_CTX = 2048


@dataclass
class Run:
    seconds: float
    first_token: float
    tokens: int
    text: str

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


async def generate(provider: Provider, request: ChatRequest) -> Run:
    started = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    tokens = 0
    async for event in provider.stream(request):
        if isinstance(event, TextDelta):
            if first is None:
                first = time.perf_counter() - started
            pieces.append(event.text)
        elif isinstance(event, Usage):
            tokens = event.output_tokens
        elif isinstance(event, Finish) and event.reason != "length":
            print(f"   note: stopped early ({event.reason}) after {tokens} tokens")
    seconds = time.perf_counter() - started
    return Run(seconds, first or seconds, tokens or len(pieces), "".join(pieces))


async def stall_while(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Run the awaitable factory ``work`` and return (its seconds, longest loop stall)."""
    longest = 0.0
    done = anyio.Event()

    async def heartbeat() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await anyio.lowlevel.checkpoint()
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        await work()
        done.set()
    return time.perf_counter() - started, longest


def summary(label: str, runs: list[Run]) -> float:
    rate = statistics.median(r.tokens_per_second for r in runs)
    ttft = statistics.median(r.first_token for r in runs) * 1000
    tokens = runs[0].tokens
    print(f"   {label:<28} {rate:7.1f} tokens/s  (first token {ttft:5.0f} ms, {tokens} tokens)")
    return rate


async def bench(runs: int) -> None:
    request = ChatRequest(
        messages=[Message(role="user", content=PROMPT)],
        params={"max_tokens": TOKENS, **GREEDY},
    )

    import_started = time.perf_counter()
    local = LocalProvider(n_ctx=N_CTX)  # imports xllamacpp, checks the model file
    imported = time.perf_counter() - import_started
    unload_local_models()
    load_seconds, stall = await stall_while(local.load)
    print(f"   model: {local.model} ({local.model_path.name})")
    print(f"   import + file check           {imported * 1000:7.0f} ms")
    print(f"   in-process load               {load_seconds * 1000:7.0f} ms")
    print(f"   longest event-loop stall      {stall * 1000:7.0f} ms  (during the load)")

    served_started = time.perf_counter()
    base_url, server = await anyio.to_thread.run_sync(
        lambda: serve_openai_compatible(n_ctx=N_CTX, model_path=local.model_path)
    )
    served = time.perf_counter() - served_started
    print(f"   HTTP server load + ready      {served * 1000:7.0f} ms  ({base_url})")

    with server:
        http = OpenAIProvider(server.model, base_url=base_url, timeout=120)
        try:
            await generate(local, request)  # warm both paths once
            await generate(http, request)
            local_runs: list[Run] = []
            http_runs: list[Run] = []
            for _ in range(runs):  # interleaved, so drift affects both alike
                local_runs.append(await generate(local, request))
                http_runs.append(await generate(http, request))
        finally:
            await http.aclose()
    in_process = summary("in-process (LocalProvider)", local_runs)
    over_http = summary("HTTP (OpenAIProvider)", http_runs)
    same = local_runs[0].text == http_runs[0].text
    print(f"   ratio in-process / HTTP       {in_process / over_http:7.2f}x")
    print(f"   same greedy text both ways    {'yes' if same else 'NO'}")


def main() -> None:
    """Print load time, tokens/s in-process and over HTTP, and their ratio."""
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    anyio.run(bench, runs)


if __name__ == "__main__":
    main()
