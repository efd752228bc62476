"""The built-in local model: in this process vs in its own server process.

Measures, for the bundled SmolLM2-135M-Instruct (or ``CM_LOCAL_MODEL``), in one run:

- load time and the longest event-loop stall meanwhile, for the model loaded in this
  process (``serve_openai_compatible()`` in a worker thread: ``xllamacpp.Server()``
  holds the GIL while it loads) and for ``LocalProvider.load()``, which starts the
  child server process and waits until it answers;
- tokens/s and time to first token of a 128-token greedy generation, in-process
  (``Server.handle_chat_completions`` with a callback, in a worker thread, no HTTP)
  and through ``LocalProvider`` (HTTP to the child on 127.0.0.1), median of ``runs``,
  interleaved so that drift in machine load affects both alike;

and prints the figures and the child / in-process ratios. Asserts nothing about timing.

Run: ``.venv/bin/python benchmarks/bench_local_model.py [runs]`` (default 3).
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from cm_notebook.model import Message
from cm_notebook.providers.base import ChatRequest, Finish, TextDelta, Usage
from cm_notebook.providers.local import (
    LocalProvider,
    LocalServer,
    serve_openai_compatible,
    unload_local_models,
)

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


async def generate_child(provider: LocalProvider, request: ChatRequest) -> Run:
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


def generate_in_process(server: LocalServer, body: dict[str, Any]) -> Run:
    """One streamed reply from the in-process ``xllamacpp.Server`` (blocking)."""
    started = time.perf_counter()
    first: list[float] = []
    pieces: list[str] = []
    usage: dict[str, Any] = {}

    def on_chunk(chunk: Any) -> bool:
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                if not first:
                    first.append(time.perf_counter() - started)
                pieces.append(text)
        usage.update(chunk.get("usage") or {})
        return False  # go on

    server.llama.handle_chat_completions(body, on_chunk)
    seconds = time.perf_counter() - started
    tokens = int(usage.get("completion_tokens") or len(pieces))
    return Run(seconds, first[0] if first else seconds, tokens, "".join(pieces))


async def stall_while(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float, float]:
    """Await ``work()``; return (its result, its seconds, longest event-loop stall)."""
    longest = 0.0
    done = threading.Event()

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.005)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        result = await work()
        seconds = time.perf_counter() - started
        done.set()
    return result, seconds, longest


def summary(label: str, runs: list[Run]) -> float:
    rate = statistics.median(r.tokens_per_second for r in runs)
    ttft = statistics.median(r.first_token for r in runs) * 1000
    tokens = runs[0].tokens
    print(f"   {label:<30} {rate:7.1f} tokens/s  (first token {ttft:5.0f} ms, {tokens} tokens)")
    return rate


async def bench(runs: int) -> None:
    request = ChatRequest(
        messages=[Message(role="user", content=PROMPT)],
        params={"max_tokens": TOKENS, **GREEDY},
    )
    child = LocalProvider(n_ctx=N_CTX)
    body = {
        **GREEDY,
        "max_tokens": TOKENS,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    print(f"   model: {child.model} ({child.model_path.name})")

    def load_in_process() -> LocalServer:
        return serve_openai_compatible(n_ctx=N_CTX, model_path=child.model_path)[1]

    unload_local_models()
    server, in_load, in_stall = await stall_while(lambda: anyio.to_thread.run_sync(load_in_process))
    _, child_load, child_stall = await stall_while(child.load)
    print(
        f"   load, in-process               {in_load * 1000:7.0f} ms  "
        f"(longest event-loop stall {in_stall * 1000:5.0f} ms)"
    )
    print(
        f"   load, child process            {child_load * 1000:7.0f} ms  "
        f"(longest event-loop stall {child_stall * 1000:5.0f} ms)"
    )

    with server:
        await anyio.to_thread.run_sync(generate_in_process, server, body)  # warm both
        await generate_child(child, request)
        in_runs: list[Run] = []
        child_runs: list[Run] = []
        for _ in range(runs):  # interleaved, so drift affects both alike
            in_runs.append(await anyio.to_thread.run_sync(generate_in_process, server, body))
            child_runs.append(await generate_child(child, request))
    in_rate = summary("in-process (handle_chat)", in_runs)
    child_rate = summary("child process (LocalProvider)", child_runs)
    same = in_runs[0].text == child_runs[0].text
    print(
        f"   ratio child / in-process: throughput {child_rate / in_rate:5.2f}x, "
        f"load time {child_load / in_load:5.2f}x, "
        f"longest stall {child_stall / in_stall if in_stall else float('nan'):5.2f}x"
    )
    print(f"   same greedy text both ways     {'yes' if same else 'NO'}")
    unload_local_models()


def main() -> None:
    """Print load time, loop stall and tokens/s in-process and in the child, and ratios."""
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    anyio.run(bench, runs)


if __name__ == "__main__":
    main()
