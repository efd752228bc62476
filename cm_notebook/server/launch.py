"""``cm-notebook serve``: a Jupyter server with only the cm_notebook API, as a child process.

The Jupyter server wants the main thread (its event loop, its signal handlers), and
the ``cm-notebook`` command runs inside its own event loop; so the server runs as
``python -m cm_notebook.server`` and the command waits for it. Ctrl-C reaches both
(same process group): the server shuts down (closing its sessions) and the command
returns its exit code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["serve", "server_command"]


def server_command(
    *, port: int, ip: str, data_dir: Path | None, allow_root: bool = False
) -> list[str]:
    """The command line of a Jupyter server with only the cm_notebook extension."""
    command = [
        sys.executable,
        "-m",
        "cm_notebook.server",
        f"--ServerApp.port={port}",
        f"--ServerApp.ip={ip}",
        "--ServerApp.open_browser=False",
    ]
    if data_dir is not None:
        command.append(f"--CMNotebookApp.data_dir={Path(data_dir).expanduser().absolute()}")
    if allow_root:
        command.append("--ServerApp.allow_root=True")
    return command


def serve(*, port: int, ip: str, data_dir: Path | None, allow_root: bool = False) -> int:
    """Run the server until it stops; returns its exit code."""
    command = server_command(port=port, ip=ip, data_dir=data_dir, allow_root=allow_root)
    process = subprocess.Popen(command)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue  # the server got the same signal and is shutting down
