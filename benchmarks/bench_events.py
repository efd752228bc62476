"""How fast the event bus publishes ContentDelta signals, and what subscribers cost.

Publishes 100k ContentDelta events (building each one, as the session does) with 0, 1
and 10 subscribers, first as synchronous callbacks, then as async streams read by
concurrent tasks, and prints events/s and the ratio to the run with no subscribers.

Run: ``.venv/bin/python benchmarks/bench_events.py [count]``.
"""

from __future__ import annotations

import sys
import time

import anyio
import anyio.lowlevel

from cm_notebook.events import ContentDelta, Event, EventBus

COUNT = 100_000
SUBSCRIBERS = (0, 1, 10)
# The publisher yields to the readers this often; well under the default
# subscriber_buffer (1,000), so readers keep up and never need a Resync.
BATCH = 100


def _publish(bus: EventBus, count: int) -> None:
    offset = 0
    for _ in range(count):
        bus.publish(ContentDelta(message_id="m1", text="tok", offset=offset, branch="main"))
        offset += 3


def bench_callbacks(subscribers: int, count: int) -> float:
    """Seconds to publish ``count`` events with ``subscribers`` no-op callbacks."""
    bus = EventBus("bench", history=10_000)
    seen = [0]

    def callback(event: Event) -> None:
        seen[0] += 1

    for _ in range(subscribers):
        bus.subscribe(callback)
    start = time.perf_counter()
    _publish(bus, count)
    elapsed = time.perf_counter() - start
    assert seen[0] == subscribers * count
    return elapsed


async def _bench_streams(subscribers: int, count: int) -> float:
    bus = EventBus("bench", history=10_000)
    received = [0] * subscribers

    async def reader(index: int) -> None:
        async with bus.stream() as stream:
            async for event in stream:
                received[index] += 1
                if event.seq == count:
                    return

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(subscribers):
            tg.start_soon(reader, index)
        await anyio.wait_all_tasks_blocked()
        offset = 0
        for i in range(count):
            bus.publish(ContentDelta(message_id="m1", text="tok", offset=offset, branch="main"))
            offset += 3
            if i % BATCH == BATCH - 1:
                await anyio.lowlevel.checkpoint()
    elapsed = time.perf_counter() - start
    assert received == [count] * subscribers, "a reader fell behind and got a Resync"
    return elapsed


def bench_streams(subscribers: int, count: int) -> float:
    """Seconds to publish ``count`` events and have ``subscribers`` async streams read them."""
    return anyio.run(_bench_streams, subscribers, count)


def main(argv: list[str] | None = None) -> None:
    """Print events/s for 0, 1 and 10 subscribers, and the ratio to 0 subscribers."""
    args = sys.argv[1:] if argv is None else argv
    count = int(args[0]) if args else COUNT
    print(f"EventBus.publish of {count:,} ContentDelta events (event construction included)")
    for label, bench in (("callbacks", bench_callbacks), ("async streams", bench_streams)):
        baseline = 0.0
        for subscribers in SUBSCRIBERS:
            elapsed = bench(subscribers, count)
            if subscribers == 0:
                baseline = elapsed
            rate = count / elapsed
            ratio = elapsed / baseline if baseline else 1.0
            print(
                f"  {label:<13} {subscribers:>2} subscribers: {rate:>10,.0f} events/s  "
                f"{ratio:5.2f}x the time of 0 subscribers"
            )


if __name__ == "__main__":
    main()
