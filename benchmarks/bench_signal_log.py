"""What the durable signal log costs: per signal, and per turn.

Publishes ContentDelta (never fsynced) and StateChanged (durable: fsynced by the log's
sync thread, off the caller) signals on a bus with and without a
:class:`~cm_notebook.signal_log.SignalLog`, from a plain thread (no event loop, so each
delta is written at once rather than in a batch), and prints microseconds per signal
and the ratio; then the cost of one 100-delta turn's signals (100 deltas and the 6
durable signals a plain turn publishes).

Then how soon a follower (:mod:`cm_notebook._follower`) relays a signal that another
process wrote: woken by file-change notification, and polling every 50 ms
(``CM_NOTEBOOK_FILE_EVENTS=0``). A child process appends deltas carrying the time they
were written (``time.monotonic``, one clock for the whole machine on Linux); the
follower notes when each arrives. Also the CPU time the following costs while idle.

Run: ``.venv/bin/python benchmarks/bench_signal_log.py [count]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from cm_notebook._follower import LogFollower
from cm_notebook.events import ContentDelta, Event, EventBus, StateChanged
from cm_notebook.fsm import State
from cm_notebook.signal_log import LogReader, SignalLog

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
    print("a follower relaying another process's signals:")
    follow_latency()


LATENCY_SIGNALS = 100
IDLE_SECONDS = 3.0
IDLE_CONTEXTS = 10

_WRITER = """
import random, sys, time
from cm_notebook.events import ContentDelta
from cm_notebook.signal_log import SignalLog
log = SignalLog(sys.argv[1])
for n in range(int(sys.argv[2])):
    time.sleep(random.uniform(0.01, 0.03))  # a model's pace, out of step with any poll
    sent = repr(time.monotonic())
    delta = ContentDelta(message_id="m1", text=sent, offset=0, branch="main")
    log.record(lambda seq, d=delta: d.model_copy(update={"seq": seq}))
log.close()
"""


def _follower(path: Path, relay: object) -> LogFollower:
    own = SignalLog(path)
    return LogFollower(
        LogReader(path),
        own.writer,
        relay=relay,  # type: ignore[arg-type]
        claim_held=lambda _: True,
        on_dead=lambda *_: None,
    )


def _latency(folder: Path, notify: bool, count: int) -> tuple[list[float], float, bool]:
    # Milliseconds from write to relay, CPU seconds of idle following, and the mode.
    os.environ["CM_NOTEBOOK_FILE_EVENTS"] = "1" if notify else "0"
    context = folder / ("notify" if notify else "poll")
    context.mkdir()
    path = context / "signals.log"
    path.touch()
    delays: list[float] = []
    done = threading.Event()

    def relay(event: Event) -> None:
        if isinstance(event, ContentDelta):
            delays.append((time.monotonic() - float(event.text)) * 1e3)
            if len(delays) == count:
                done.set()

    follower = _follower(path, relay)
    # Nine more contexts followed while idle, as in a process with ten open.
    others = []
    for n in range(IDLE_CONTEXTS - 1):
        (context / str(n)).mkdir()
        (context / str(n) / "signals.log").touch()
        others.append(_follower(context / str(n) / "signals.log", lambda _: None))
    try:
        deadline = time.monotonic() + 5
        while notify and not follower.notified and time.monotonic() < deadline:
            time.sleep(0.01)  # the follower subscribes on its thread
        idle_start = time.process_time()
        time.sleep(IDLE_SECONDS)
        idle = time.process_time() - idle_start
        code = textwrap.dedent(_WRITER)
        subprocess.run([sys.executable, "-c", code, str(path), str(count)], check=True)
        done.wait(30)
        return delays, idle, follower.notified
    finally:
        for each in [follower, *others]:
            each.close()


def follow_latency(count: int = LATENCY_SIGNALS) -> None:
    """Print write-to-relay latency with notification and with polling."""
    saved = os.environ.get("CM_NOTEBOOK_FILE_EVENTS")
    try:
        with tempfile.TemporaryDirectory() as folder:
            for notify in (True, False):
                delays, idle, notified = _latency(Path(folder), notify, count)
                mode = "notification" if notified else "polling 50 ms"
                if notify and not notified:
                    mode += " (notification unavailable)"
                cut = statistics.quantiles(delays, n=10)
                print(
                    f"{mode:>14}: median {statistics.median(delays):5.1f} ms, "
                    f"p90 {cut[-1]:5.1f} ms, max {max(delays):5.1f} ms over {len(delays)} "
                    f"signals; idle CPU with {IDLE_CONTEXTS} contexts followed: "
                    f"{idle / IDLE_SECONDS * 100:.2f}% of a core"
                )
    finally:
        if saved is None:
            os.environ.pop("CM_NOTEBOOK_FILE_EVENTS", None)
        else:
            os.environ["CM_NOTEBOOK_FILE_EVENTS"] = saved


if __name__ == "__main__":
    main()
