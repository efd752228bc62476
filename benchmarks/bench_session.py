"""What the session adds on top of a provider: signals, checkpoints and the store.

Streams the same scripted 2,000-delta reply twice: once straight from the provider
(the baseline), once through ``ContextSession.send`` (FSM, events, store writes,
checkpoints). Prints deltas/s for both and the overhead ratio; also the cost of a
short turn (send + reply + store) in milliseconds.

Run: ``.venv/bin/python benchmarks/bench_session.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

from cm_notebook import ContextSession
from cm_notebook.providers import ChatRequest
from cm_notebook.testing import ScriptedProvider

DELTAS = 2_000
SHORT_TURNS = 50


def _reply_text() -> str:
    return " ".join(f"w{i}" for i in range(DELTAS))


async def _baseline() -> float:
    provider = ScriptedProvider().reply(_reply_text(), chunks="words")
    started = time.perf_counter()
    async for _event in provider.stream(ChatRequest(messages=[])):
        pass
    return time.perf_counter() - started


async def _through_session(data_dir: str) -> float:
    provider = ScriptedProvider().reply(_reply_text(), chunks="words")
    session = ContextSession.create("bench", provider=provider, data_dir=data_dir)
    started = time.perf_counter()
    await session.send("go")
    return time.perf_counter() - started


async def _short_turns(data_dir: str) -> list[float]:
    provider = ScriptedProvider()
    for i in range(SHORT_TURNS):
        provider.reply(f"reply {i}")
    session = ContextSession.create("bench-short", provider=provider, data_dir=data_dir)
    times = []
    for i in range(SHORT_TURNS):
        started = time.perf_counter()
        await session.send(f"message {i}")
        times.append((time.perf_counter() - started) * 1000)
    return times


async def _main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        base = await _baseline()
        full = await _through_session(data_dir)
        short = await _short_turns(data_dir)
    print(f"session streaming: {DELTAS} deltas")
    print(f"  provider alone   {DELTAS / base:12,.0f} deltas/s")
    print(f"  through session  {DELTAS / full:12,.0f} deltas/s   (x{full / base:.1f} the time)")
    p90 = sorted(short)[int(len(short) * 0.9)]
    print(
        f"short turn (send, 1-delta reply, all stored): median "
        f"{statistics.median(short):.1f} ms, p90 {p90:.1f} ms over {SHORT_TURNS} turns"
    )


def main() -> None:
    """Run the benchmark and print its figures."""
    asyncio.run(_main())


if __name__ == "__main__":
    main()
