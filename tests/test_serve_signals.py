"""``cm-notebook serve`` does not leave its Jupyter server behind when it is stopped.

Real processes: the command is started as a service manager would, its server waited
for over HTTP, then the command alone is sent SIGTERM (``docker stop``, systemd,
``kill``) or SIGKILL; the server must be gone and its port closed soon after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

TOKEN = "serve-signals-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(each) for each in (task / "children").read_text().split()]
        except OSError:
            continue  # the thread ended meanwhile
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has stopped (its parent reaps it)


def _answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/cm/api/contexts", timeout=2)
    except httpx.HTTPError:
        return False
    return True


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    port = _free_port()
    env = dict(
        os.environ,
        JUPYTER_TOKEN=TOKEN,
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
    )
    command = [sys.executable, "-m", "cm_notebook", "--data-dir", str(tmp_path / "data")]
    command += ["serve", "--port", str(port), "--ip", "127.0.0.1", "--allow-root"]
    launcher = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # signals sent to it alone, not to this test's group
    )
    deadline = time.monotonic() + 60
    while not _answers(port):
        assert launcher.poll() is None, "cm-notebook serve ended before serving"
        assert time.monotonic() < deadline, "cm-notebook serve did not answer"
        time.sleep(0.1)  # polling a condition with a deadline
    (server,) = _children(launcher.pid)
    return launcher, server, port


def _assert_stopped(server: int, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _alive(server) or _answers(port):
        assert time.monotonic() < deadline, f"the server (pid {server}) is still running"
        time.sleep(0.1)  # polling a condition with a deadline


def _cleanup(launcher: subprocess.Popen[bytes], server: int) -> None:
    # Whatever the outcome, nothing is left running.
    for pid in (server, launcher.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    launcher.wait(timeout=30)


def test_sigterm_to_serve_stops_its_server(tmp_path: Path) -> None:
    launcher, server, port = _start(tmp_path)
    try:
        launcher.send_signal(signal.SIGTERM)
        _assert_stopped(server, port, seconds=30)
        assert launcher.wait(timeout=30) == 0
    finally:
        _cleanup(launcher, server)


def test_sighup_to_serve_stops_its_server(tmp_path: Path) -> None:
    launcher, server, port = _start(tmp_path)
    try:
        launcher.send_signal(signal.SIGHUP)
        _assert_stopped(server, port, seconds=30)
        launcher.wait(timeout=30)
    finally:
        _cleanup(launcher, server)


def test_sigkill_of_serve_stops_its_server(tmp_path: Path) -> None:
    launcher, server, port = _start(tmp_path)
    try:
        launcher.kill()
        launcher.wait(timeout=30)
        _assert_stopped(server, port, seconds=30)
    finally:
        _cleanup(launcher, server)
