"""What the durable signal log costs: per signal, and per turn.

Publishes ContentDelta (not fsynced) and StateChanged (fsynced) signals on a bus with
and without a :class:`~cm_notebook.signal_log.SignalLog`, and prints microseconds per
signal and the ratio; then the cost of one 100-delta turn's signals (100 deltas and
the 6 durable signals a plain turn publishes).

Run: ``.venv/bin/python benchmarks/bench_signal_log.py [count]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from cm_notebook.events import ContentDelta, EventBus, StateChanged
from cm_notebook.fsm import State
from cm_notebook.signal_log import SignalLog

COUNT = 2_000


def _per_signal(bus: EventBus, durable: bool, count: int) -> float:
    start = time.perf_counter()
    for n in range(count):
        if durable:
            bus.publish(StateChanged(old=State.IDLE, new=State.STREAMING, branch="main"))
        else:
            bus.publish(ContentDelta(message_id="m1", text="tok", offset=3 * n, branch="main"))
    return (time.perf_counter() - start) / count


def main() -> None:
    """Print the per-signal costs and one turn's overhead."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else COUNT
    with tempfile.TemporaryDirectory() as folder:
        costs: dict[str, tuple[float, float]] = {}
        for name, durable, n in [
            ("ContentDelta", False, count),
            ("StateChanged", True, count // 10),
        ]:
            plain = _per_signal(EventBus("bench"), durable, n)
            logged_bus = EventBus("bench", recorder=SignalLog(Path(folder) / f"{name}.log"))
            logged = _per_signal(logged_bus, durable, n)
            logged_bus.close()
            costs[name] = (plain, logged)
            print(
                f"{name:>13}: {plain * 1e6:8.1f} us in memory, {logged * 1e6:8.1f} us logged "
                f"({logged / plain:.0f}x)"
            )
        turn = 100 * (costs["ContentDelta"][1] - costs["ContentDelta"][0]) + 6 * (
            costs["StateChanged"][1] - costs["StateChanged"][0]
        )
        print(f"one turn of 100 deltas + 6 durable signals: {turn * 1e3:.2f} ms added")


if __name__ == "__main__":
    main()
