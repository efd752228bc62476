"""``cm-notebook serve``: a Jupyter server with only the cm_notebook API, as a child process.

The Jupyter server wants the main thread (its event loop, its signal handlers), and
the ``cm-notebook`` command runs inside its own event loop; so the server runs as
``python -m cm_notebook.server`` and the command waits for it. Ctrl-C reaches both
(same process group): the server shuts down (closing its sessions) and the command
returns its exit code. SIGTERM or SIGHUP sent to the command alone (``kill``,
``docker stop``, systemd) is passed on to the server as SIGTERM, which shuts it down
the same way; the command waits for it (at most :data:`STOP_GRACE` seconds, then kills
it) and returns its exit code. On Linux the server also gets SIGTERM when the command
dies without passing anything on (SIGKILL): see :mod:`cm_notebook.server.__main__`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["PARENT_ENV", "STOP_GRACE", "serve", "server_command"]

#: Seconds the server is given to shut down after SIGTERM before it is killed.
STOP_GRACE = 20.0

#: Environment variable telling the server which process launched it (see ``__main__``).
PARENT_ENV = "CM_NOTEBOOK_SERVE_PARENT"

# Signals that stop the command, passed on to the server. SIGHUP: a closed terminal or
# a service manager's reload; the server has no handler of its own for it.
_FORWARDED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class _StopRequested(Exception):
    """Raised by the signal handler so that the wait for the server returns."""


def server_command(
    *,
    port: int,
    ip: str,
    data_dir: Path | None,
    allow_root: bool = False,
    settings: Sequence[str] = (),
) -> list[str]:
    """The command line of a Jupyter server with only the cm_notebook extension.

    ``settings``: Jupyter settings (``--CMNotebookApp.tool_policy=deny``), which win
    over the ones made from the other arguments: ``--ServerApp.port=9000`` replaces
    ``port`` (Jupyter refuses a setting given twice, so the other is left out).
    """
    made = [
        f"--ServerApp.port={port}",
        f"--ServerApp.ip={ip}",
        "--ServerApp.open_browser=False",
    ]
    if data_dir is not None:
        made.append(f"--CMNotebookApp.data_dir={Path(data_dir).expanduser().absolute()}")
    if allow_root:
        made.append("--ServerApp.allow_root=True")
    given = {setting.partition("=")[0] for setting in settings}
    kept = [setting for setting in made if setting.partition("=")[0] not in given]
    return [sys.executable, "-m", "cm_notebook.server", *kept, *settings]


def serve(
    *,
    port: int,
    ip: str,
    data_dir: Path | None,
    allow_root: bool = False,
    settings: Sequence[str] = (),
) -> int:
    """Run the server until it stops; returns its exit code.

    Ctrl-C reaches the server directly (same process group). SIGTERM and SIGHUP sent
    to this process are passed on to the server as SIGTERM; it is then waited for at
    most :data:`STOP_GRACE` seconds, and killed after that.
    """
    command = server_command(
        port=port, ip=ip, data_dir=data_dir, allow_root=allow_root, settings=settings
    )
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
    process = subprocess.Popen(command, env=env)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _StopRequested(signum)

    previous = {signum: signal.signal(signum, stop) for signum in _FORWARDED}
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                continue  # the server got the same signal and is shutting down
            except _StopRequested:
                break
        for signum in _FORWARDED:
            signal.signal(signum, signal.SIG_IGN)  # stopping already: once is enough
        return _stop(process)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop(process: subprocess.Popen[bytes]) -> int:
    # SIGTERM makes the Jupyter server shut down as Ctrl-C does, without asking.
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while True:
        try:
            return process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            continue  # the server got it too; the deadline still holds
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
