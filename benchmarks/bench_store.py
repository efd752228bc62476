"""FileStore costs that must not grow with the size of a context.

1. Appends: appends/s and bytes written per append around N=100 and around N=5,000
   in one growing context. Bytes are counted from the files (the new message file,
   metadata.json, the journal's growth, and snapshot rewrites at compaction points,
   shown separately and amortised over every append so far) and, on Linux, from the
   kernel's count of bytes this process passed to write() (``/proc/self/io``). The
   ratios N=5,000 / N=100 should be about 1.
2. Opening: the time for a fresh FileStore to show the last 50 messages of a
   10,000-message context versus a 100-message one (index load + 50 file reads), and
   the same for an already-open store.

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
    """What a run of appends cost."""

    rate: float  # appends per second
    steady: float  # bytes per append: message file + metadata.json + journal line
    snapshot_amortised: float  # snapshot rewrites so far / appends so far
    syscall: float | None  # bytes passed to write() per append, if known


class Appender:
    """Appends a chain of messages to one context and measures runs of them."""

    def __init__(self, store: FileStore, folder: Path, context_id: str) -> None:
        self.store = store
        self.folder = folder
        self.context_id = context_id
        self.head: str | None = None
        self.count = 0
        self.snapshot_bytes = 0

    async def append(self, n: int) -> Window:
        """Append ``n`` messages and report what they cost."""
        index = self.folder / "message_index.json"
        journal = self.folder / "message_index.journal"
        metadata = self.folder / "metadata.json"
        steady = 0
        proc_before = _proc_written()
        started = time.perf_counter()
        for _ in range(n):
            before_index, before_journal = _sig(index), _sig(journal)
            role = "user" if self.count % 2 == 0 else "assistant"
            message = Message(role=role, parent_id=self.head, content=CONTENT)
            await self.store.append_message(self.context_id, message, branch="main")
            self.head = message.id
            self.count += 1
            after_index, after_journal = _sig(index), _sig(journal)
            steady += (self.folder / "messages" / f"{message.id}.json").stat().st_size
            steady += metadata.stat().st_size
            if after_index[0] != before_index[0]:
                # A compaction: the journal line went into the new snapshot.
                self.snapshot_bytes += after_index[1]
                steady += after_index[1] // max(1, self.count)  # about one entry
            else:
                steady += after_journal[1] - before_journal[1]
        elapsed = time.perf_counter() - started
        proc_after = _proc_written()
        syscall = None
        if proc_before is not None and proc_after is not None:
            syscall = (proc_after - proc_before) / n
        return Window(n / elapsed, steady / n, self.snapshot_bytes / self.count, syscall)


async def bench_appends(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="grow"))
        appender = Appender(store, data_dir / "contexts" / "grow", "grow")
        await appender.append(100 - WINDOW // 2)
        small = await appender.append(WINDOW)
        await appender.append(5_000 - WINDOW // 2 - appender.count)
        large = await appender.append(WINDOW)
    print(f"appends around N=100 and N=5,000 ({WINDOW} appends each, one growing context)")
    for label, w in (("N=100  ", small), ("N=5,000", large)):
        syscall = f"{w.syscall:7.0f} B" if w.syscall is not None else "    n/a"
        print(
            f"  {label}: {w.rate:6.0f} appends/s  {w.steady:5.0f} B/append (file+journal+"
            f"metadata) + {w.snapshot_amortised:4.0f} B amortised snapshot rewrites;  "
            f"write() {syscall}/append"
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


async def time_page(data_dir: Path, context_id: str, repeats: int = 7) -> tuple[float, float]:
    """Median seconds to get a page of 50: (fresh FileStore, already-open FileStore)."""
    cold, warm = [], []
    for _ in range(repeats):
        async with FileStore(data_dir) as store:
            started = time.perf_counter()
            await store.page(context_id, limit=50)
            cold.append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.page(context_id, limit=50)
            warm.append(time.perf_counter() - started)
    return statistics.median(cold), statistics.median(warm)


async def bench_open(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await build(store, "small", 100)
        await build(store, "big", 10_000)
    small_cold, small_warm = await time_page(data_dir, "small")
    big_cold, big_warm = await time_page(data_dir, "big")
    print("show the last 50 messages (median of 7 runs)")
    for label, small, big in (
        ("fresh FileStore", small_cold, big_cold),
        ("open FileStore ", small_warm, big_warm),
    ):
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
