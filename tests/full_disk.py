"""A real full disk for tests: a small tmpfs mounted for the test, and a filler file.

Mounting needs root on Linux; where it cannot be had (CI without the right to mount)
the test is skipped, saying why. Used as a fixture::

    from full_disk import Filler, small_disk  # noqa: F401 (the fixture)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

PAGE = 4096


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str = "2m") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``mount`` (made here) for the ``with`` block;
    the test is skipped, saying why, where one cannot be mounted (needs root on Linux)."""
    mount.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root on Linux")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here for a real full disk: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root: skipped where it cannot be mounted)."""
    with mounted_tmpfs(tmp_path / "disk") as mount:
        yield mount


class Filler:
    """Takes every free page of a file system, then gives back ``k`` of them, or all."""

    def __init__(self, disk: Path) -> None:
        self.path = disk / "filler"
        self.full = 0

    def fill(self, leave: int = 0) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * PAGE)
        finally:
            os.close(fd)
        self.full = self.path.stat().st_size // PAGE * PAGE
        os.truncate(self.path, max(0, self.full - leave * PAGE))

    def leave_free(self, pages: int) -> None:
        """After :meth:`fill`: exactly ``pages`` free pages."""
        os.truncate(self.path, max(0, self.full - pages * PAGE))

    def empty(self) -> None:
        self.path.unlink(missing_ok=True)
