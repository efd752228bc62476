"""DeltaFeed: a turn's deltas for one async reader, fed on its loop or from threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cm_notebook.turn import DeltaFeed, TurnProgress


@pytest.mark.anyio
async def test_deltas_fed_on_the_readers_loop_arrive_in_order() -> None:
    progress = TurnProgress()
    progress.add_text("before ")
    feed = DeltaFeed(progress)
    assert feed.so_far == "before "

    async def produce() -> None:
        for i in range(200):
            progress.add_text(f"{i} ")
            if i % 7 == 0:
                await asyncio.sleep(0)
        progress.finish()

    task = asyncio.ensure_future(produce())
    got = [delta async for delta in feed]
    await task
    assert got == [f"{i} " for i in range(200)]


@pytest.mark.anyio
async def test_deltas_fed_from_other_threads_arrive_in_order_and_end() -> None:
    progress = TurnProgress()
    feed = DeltaFeed(progress)
    started = threading.Event()

    def produce() -> None:
        started.set()
        for i in range(2_000):
            progress.add_text(f"{i},")
        progress.finish()

    thread = threading.Thread(target=produce)
    thread.start()
    got = [delta async for delta in feed]
    thread.join()
    assert started.is_set()
    assert got == [f"{i}," for i in range(2_000)]


@pytest.mark.anyio
async def test_a_feed_made_after_the_turn_ended_ends_at_once() -> None:
    progress = TurnProgress()
    progress.add_text("all of it")
    progress.finish()
    feed = DeltaFeed(progress)
    assert feed.so_far == "all of it"
    assert [delta async for delta in feed] == []
