"""FileStore costs that must not grow with the size of a context.

1. Appends: appends/s and bytes written per append around N=100 and around N=5,000
   (a small and a large context, measured in interleaved bursts so that machine noise
   hits both alike). Bytes are counted from the files (the new message file,
   metadata.json, the journal's growth, and snapshot rewrites at compaction points,
   shown separately and amortised over every append so far) and, on Linux, from the
   kernel's count of bytes this process passed to write() (``/proc/self/io``). The
   ratios N=5,000 / N=100 should be about 1.
2. Opening: the time for a fresh FileStore to show the last 50 messages of a
   10,000-message context versus a 100-message one (index load + 50 file reads), and
   the same for an already-open store; again interleaved.

Run: ``.venv/bin/python -m benchmarks store`` (or ``python benchmarks/bench_store.py``).
Prints figures and ratios; asserts nothing about timing.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore

WINDOW = 100  # appends measured around each N
CONTENT = "a typical short chat message, about one line of text. " * 3


def _proc_written() -> int | None:
    """Bytes this process has passed to write() so far (Linux), else None."""
    try:
        with open("/proc/self/io") as handle:
            for line in handle:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _sig(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_size


@dataclass
class Window:
    """What a run of appends to one context cost (accumulated over several bursts)."""

    appends: int = 0
    seconds: float = 0.0
    steady_bytes: int = 0  # message file + metadata.json + journal line
    syscall_bytes: int | None = 0  # bytes passed to write(), if the OS tells us
    snapshot_amortised: float = 0.0  # snapshot rewrites so far / appends so far

    @property
    def rate(self) -> float:
        """Appends per second."""
        return self.appends / self.seconds

    @property
    def steady(self) -> float:
        """Bytes per append, snapshot rewrites not included."""
        return self.steady_bytes / self.appends

    @property
    def syscall(self) -> float | None:
        """Bytes passed to write() per append (Linux only)."""
        return None if self.syscall_bytes is None else self.syscall_bytes / self.appends


class Appender:
    """Appends a chain of messages to one context and measures bursts of them."""

    def __init__(self, store: FileStore, folder: Path, context_id: str) -> None:
        self.store = store
        self.folder = folder
        self.context_id = context_id
        self.head: str | None = None
        self.count = 0
        self.snapshot_bytes = 0

    async def append(self, n: int, window: Window | None = None) -> None:
        """Append ``n`` messages, adding what they cost to ``window``."""
        window = window if window is not None else Window()
        index = self.folder / "message_index.json"
        journal = self.folder / "message_index.journal"
        metadata = self.folder / "metadata.json"
        proc_before = _proc_written()
        for _ in range(n):
            before_index, before_journal = _sig(index), _sig(journal)
            role = "user" if self.count % 2 == 0 else "assistant"
            message = Message(role=role, parent_id=self.head, content=CONTENT)
            started = time.perf_counter()
            await self.store.append_message(self.context_id, message, branch="main")
            window.seconds += time.perf_counter() - started
            self.head = message.id
            self.count += 1
            after_index, after_journal = _sig(index), _sig(journal)
            steady = (self.folder / "messages" / f"{message.id}.json").stat().st_size
            steady += metadata.stat().st_size
            if after_index[0] != before_index[0]:
                # A compaction: this entry went into the new snapshot instead.
                self.snapshot_bytes += after_index[1]
                steady += after_index[1] // self.count  # about one entry
            else:
                steady += after_journal[1] - before_journal[1]
            window.steady_bytes += steady
        window.appends += n
        proc_after = _proc_written()
        if proc_before is None or proc_after is None or window.syscall_bytes is None:
            window.syscall_bytes = None
        else:
            window.syscall_bytes += proc_after - proc_before
        window.snapshot_amortised = self.snapshot_bytes / self.count


async def bench_appends(data_dir: Path) -> None:
    """Appends to a small and a large context, interleaved in bursts.

    Interleaving puts both measurements in the same moments, so a busy machine slows
    both alike and the ratio stays meaningful.
    """
    async with FileStore(data_dir) as store:
        appenders = []
        for name, size in (("small", 100), ("large", 5_000)):
            await store.create_context(ContextMetadata(id=name))
            appender = Appender(store, data_dir / "contexts" / name, name)
            await appender.append(size - WINDOW // 2)
            appenders.append(appender)
        small, large = Window(), Window()
        for _ in range(WINDOW // 10):
            await appenders[0].append(10, small)
            await appenders[1].append(10, large)
    print(f"appends around N=100 and N=5,000 ({WINDOW} appends each, interleaved bursts of 10)")
    for label, w in (("N=100  ", small), ("N=5,000", large)):
        syscall = f"{w.syscall:6.0f} B" if w.syscall is not None else "   n/a"
        print(
            f"  {label}: {w.rate:5.0f} appends/s  {w.steady:5.0f} B/append (message file + "
            f"journal line + metadata) + {w.snapshot_amortised:4.0f} B amortised snapshot "
            f"rewrites;  write() {syscall}/append"
        )
    line = (
        f"  ratio N=5,000 / N=100: time per append {small.rate / large.rate:.2f}x, "
        f"bytes per append {large.steady / small.steady:.2f}x, amortised snapshot "
        f"{large.snapshot_amortised / small.snapshot_amortised:.2f}x"
    )
    if small.syscall and large.syscall:
        line += f", write() bytes {large.syscall / small.syscall:.2f}x"
    print(line)


async def build(store: FileStore, context_id: str, n: int) -> None:
    """A context with one branch of ``n`` messages."""
    await store.create_context(ContextMetadata(id=context_id))
    head = None
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        message = Message(role=role, parent_id=head, content=CONTENT)
        await store.append_message(context_id, message, branch="main")
        head = message.id


async def time_page(data_dir: Path, context_id: str) -> tuple[float, float]:
    """Seconds to get a page of 50: (fresh FileStore, the same store once more)."""
    async with FileStore(data_dir) as store:
        started = time.perf_counter()
        await store.page(context_id, limit=50)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        await store.page(context_id, limit=50)
        return cold, time.perf_counter() - started


async def bench_open(data_dir: Path, repeats: int = 7) -> None:
    async with FileStore(data_dir) as store:
        await build(store, "small", 100)
        await build(store, "big", 10_000)
    runs: dict[str, list[tuple[float, float]]] = {"small": [], "big": []}
    for _ in range(repeats):
        for name in runs:
            runs[name].append(await time_page(data_dir, name))
    print(f"show the last 50 messages (median of {repeats} interleaved runs)")
    for label, which in (("fresh FileStore", 0), ("open FileStore ", 1)):
        small = statistics.median(run[which] for run in runs["small"])
        big = statistics.median(run[which] for run in runs["big"])
        print(
            f"  {label}: 100 msgs {small * 1e3:6.2f} ms   10,000 msgs {big * 1e3:6.2f} ms   "
            f"ratio {big / small:5.2f}x"
        )


def main(argv: list[str] | None = None) -> None:
    """Run both benchmarks in a temporary data directory and print the figures."""
    del argv  # no options
    with tempfile.TemporaryDirectory(prefix="cm-bench-store-") as tmp:
        anyio.run(bench_appends, Path(tmp) / "appends")
        anyio.run(bench_open, Path(tmp) / "open")


if __name__ == "__main__":
    main()
