"""Workload 8: the built-in local model, through the session versus xllamacpp directly.

Tokens per second of a ``model_tokens``-token greedy reply: through
``ContextSession.send`` with the ``local`` provider (llama.cpp's server in a child
process, reached over HTTP on 127.0.0.1, every message stored), and from an
``xllamacpp.Server`` in this process answering ``handle_chat_completions`` with no HTTP
and no store (the baseline). Median of ``model_runs``, interleaved, after one warm-up
each. Skipped, with a note, when xllamacpp or the model file is absent.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import statistics
import time
from pathlib import Path
from typing import Any

from cm_notebook import ContextSession

from ..common import Bench
from ..report import Row, skipped

NAME = "local_model"
WORKLOAD = "8 local model"
PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."
GREEDY: dict[str, Any] = {"temperature": 0.0, "top_k": 1, "seed": 0}
N_CTX = 2048


def _model_path() -> Path | str:
    """The GGUF file the local provider runs, or why there is none."""
    if importlib.util.find_spec("xllamacpp") is None:
        return "skipped: xllamacpp is not installed (pip install cm_notebook[local])"
    from cm_notebook.errors import CMError
    from cm_notebook.providers.local import LocalProvider

    try:
        return LocalProvider(n_ctx=N_CTX).model_path
    except CMError as exc:
        return f"skipped: no model ({exc})"[:160]


def _direct_server(path: Path) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = N_CTX
    params.cpuparams.n_threads = min(os.cpu_count() or 1, 8)
    params.cpuparams_batch.n_threads = min(os.cpu_count() or 1, 8)
    params.verbosity = -1
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    return xllamacpp.Server(params)


def _direct(server: Any, tokens: int) -> float:
    """Tokens per second of one streamed reply from the in-process server."""
    usage: dict[str, Any] = {}
    pieces: list[str] = []

    def on_chunk(chunk: Any) -> bool:
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                pieces.append(text)
        usage.update(chunk.get("usage") or {})
        return False  # go on

    body = {
        **GREEDY,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    server.handle_chat_completions(body, on_chunk)
    seconds = time.perf_counter() - started
    return int(usage.get("completion_tokens") or len(pieces)) / seconds


async def _through_session(data_dir: Path, tokens: int) -> float:
    """Tokens per second of one reply through a new session (the model stays loaded)."""
    session = ContextSession.create("local", provider="local", data_dir=data_dir)
    try:
        started = time.perf_counter()
        reply = await session.send(PROMPT, max_tokens=tokens, **GREEDY)
        seconds = time.perf_counter() - started
    finally:
        await session.aclose()
    usage = reply.metadata.usage
    produced = usage.output_tokens if usage is not None else len(reply.content.split())
    return produced / seconds


def run(bench: Bench) -> list[Row]:
    """Measure both ways, interleaved."""
    path = _model_path()
    figure = f"tokens/s through ContextSession ({bench.sizes.model_tokens}-token reply)"
    if isinstance(path, str):
        return [skipped(WORKLOAD, figure, path)]
    sizes = bench.sizes
    data_dir = bench.folder("local-model")
    server = _direct_server(path)
    if not bench.smoke:  # warm both (the first session also starts the child server)
        _direct(server, sizes.model_tokens)
        asyncio.run(_through_session(data_dir, sizes.model_tokens))
    direct: list[float] = []
    session: list[float] = []
    for _ in range(sizes.model_runs):
        direct.append(_direct(server, sizes.model_tokens))
        session.append(asyncio.run(_through_session(data_dir, sizes.model_tokens)))
    del server
    return [
        Row(
            WORKLOAD,
            figure,
            statistics.median(session),
            "tokens/s",
            baseline=statistics.median(direct),
            baseline_label="xllamacpp in-process",
            note=f"{path.name}, median of {sizes.model_runs}",
        )
    ]
