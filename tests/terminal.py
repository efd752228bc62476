"""Running a command in a pseudo-terminal, as a user at a terminal would see it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import struct
import subprocess
import termios
from collections.abc import Sequence


def in_a_terminal(command: Sequence[str], *, columns: int | None = None) -> tuple[int, bytes]:
    """Run ``command`` with stdout and stderr on a new pseudo-terminal (``columns``
    wide, if given); its exit code and every byte it showed there."""
    leader, follower = pty.openpty()
    if columns is not None:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with subprocess.Popen(command, stdout=follower, stderr=follower) as child:
        os.close(follower)
        shown = b""
        with contextlib.suppress(OSError):  # the terminal closes when the child ends
            while chunk := os.read(leader, 4096):
                shown += chunk
        code = child.wait(timeout=60)
    os.close(leader)
    return code, shown
