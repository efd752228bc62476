"""The ``cm-notebook`` command run as a user runs it: in a child process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli(data_dir: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``cm-notebook --data-dir DATA_DIR ARGV...`` in a child process, its output read
    as UTF-8 and its stdin empty (never the test run's terminal); ``timeout`` seconds
    turn a command that waits for ever into a failure."""
    return subprocess.run(
        [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), *argv],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
