"""What every workload shares: sizes, the durable-write floor, texts, child processes.

The suite measures through the public API only (``ContextSession``, ``FileStore``,
``ScriptedProvider``, the REST API, the views in a real kernel), so it measures the
same thing before and after the package's internals change.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TEXT = (
    "the model reads every message of the branch before it answers so a long context "
    "costs more than a short one unless the session keeps what it has read already"
)
WORDS = _TEXT.split()


@dataclass(frozen=True)
class Sizes:
    """How big each workload is: the issue's sizes, or tiny ones for ``--smoke``."""

    conversation_messages: int = 1_000  # 1: through one session (half of them replies)
    turns_per_window: int = 50  # 1: "time per 50 turns", first 50 vs last 50
    contexts: int = 10  # 2: driven concurrently
    messages_per_context: int = 100
    tool_cycles: int = 100  # 3
    stream_replies: int = 50  # 4: 5,000 chunks across 50 replies
    chunks_per_reply: int = 100
    view_replies: int = 5  # 4: replies streamed into a view in a real kernel
    scale_large: int = 10_000  # 5
    scale_small: int = 100
    scale_repeats: int = 3  # fresh processes per size (median)
    appends_measured: int = 10
    fork_at: int = 500  # 6: fork at this message of the conversation...
    fork_turns: int = 10  # ...and add this many turns
    many_branches: int = 500  # 6: turns in a context with this many branches...
    branch_turns: int = 50  # ...against the same turns with one branch
    peer_messages: int = 1_000  # 7: the conversation through both sides
    peer_forks: int = 10
    model_tokens: int = 128  # 8
    model_runs: int = 3
    server_sends: int = 50  # 9
    sse_clients: int = 50
    sse_deltas: int = 200

    @classmethod
    def smoke(cls) -> Sizes:
        """Tiny sizes: every workload runs, in seconds; the figures mean nothing."""
        return cls(
            conversation_messages=20,
            turns_per_window=2,
            contexts=2,
            messages_per_context=4,
            tool_cycles=3,
            stream_replies=2,
            chunks_per_reply=5,
            view_replies=1,
            scale_large=40,
            scale_small=10,
            scale_repeats=1,
            appends_measured=2,
            fork_at=10,
            fork_turns=2,
            many_branches=5,
            branch_turns=2,
            peer_messages=10,
            peer_forks=2,
            model_tokens=8,
            model_runs=1,
            server_sends=3,
            sse_clients=3,
            sse_deltas=5,
        )


@dataclass(frozen=True)
class Bench:
    """One run of the suite: its sizes and a scratch folder for its data."""

    sizes: Sizes
    scratch: Path
    smoke: bool = False

    def folder(self, name: str) -> Path:
        """A fresh folder under the scratch folder."""
        path = self.scratch / name
        path.mkdir(parents=True, exist_ok=False)
        return path


# -- conversation texts -----------------------------------------------------------------


def _words(start: int, count: int) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(count))


def user_text(turn: int) -> str:
    """The user's message of ``turn`` (about 130 characters)."""
    return f"Question {turn}: " + _words(turn, 20) + "?"


def reply_text(turn: int) -> str:
    """The model's reply of ``turn`` (about 600 characters)."""
    return f"Answer {turn}: " + _words(turn * 7, 100) + "."


# -- the durable-write floor ----------------------------------------------------------


def durable_write(folder: Path, name: str, data: bytes) -> None:
    """Write ``data`` as ``folder/name`` the crash-safe way: temp file, fsync, rename,
    fsync of the folder. The least a store can do to keep an acknowledged message."""
    temporary = folder / f".{name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, folder / name)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def durable_floor(folder: Path, payloads: list[bytes]) -> float:
    """Seconds to write each payload as its own atomic, durable file."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for number, data in enumerate(payloads):
        durable_write(folder, f"{number}.json", data)
    return time.perf_counter() - started


# -- measuring --------------------------------------------------------------------------


def written_bytes() -> int | None:
    """Bytes this process has passed to write() so far (Linux ``/proc/self/io``)."""
    try:
        with open("/proc/self/io") as handle:
            for line in handle:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def folder_bytes(path: Path) -> int:
    """The total size of the files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue  # a temporary file that went away meanwhile
    return total


def peak_rss() -> int:
    """This process's peak resident set size in bytes.

    On Linux from ``VmHWM`` (the high-water mark of this process image): ``ru_maxrss``
    is carried over from the parent across fork and exec, so a child started by a big
    parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def run_child(module: str, *args: str, timeout: float = 900) -> dict[str, Any]:
    """Run ``python -m module args`` and return the JSON object of its last output line.

    Workloads that measure memory or a fresh process's start run in a child, so each
    figure is its own process's and nothing of this one's heap is counted.
    """
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(
            f"{module} {' '.join(args)} failed ({completed.returncode}):\n"
            f"{completed.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def report_child(result: dict[str, Any]) -> None:
    """A child's answer to :func:`run_child`: one JSON line on stdout."""
    print(json.dumps(result), flush=True)


# -- the machine ------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _disk(path: Path) -> str:
    # The file system that holds the scratch folder: its type and device, from the
    # longest mount point that contains the path.
    best = ("", "unknown", "unknown")
    try:
        with open("/proc/mounts") as handle:
            for line in handle:
                device, mount, kind = line.split()[:3]
                if str(path).startswith(mount) and len(mount) > len(best[0]):
                    best = (mount, device, kind)
    except OSError:
        return "unknown"
    stats = os.statvfs(path)
    size = stats.f_blocks * stats.f_frsize / 1024**3
    return f"{best[2]} on {best[1]} (mounted at {best[0]}, {size:.0f} GiB)"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine(scratch: Path) -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "ram": _ram(),
        "disk": _disk(scratch),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": _commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
