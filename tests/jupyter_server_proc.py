"""A real Jupyter server with the cm_notebook extension, in a child process, for tests.

It listens on 127.0.0.1 on a port the OS picks (read back from the server's runtime
file), under a non-root base URL, with a token, a data directory of its own and the
scripted provider as default. Its output goes to a log file that the tests read for
tracebacks. Use it as a context manager::

    with JupyterServer(tmp_path) as server:
        httpx.get(server.api("/contexts"), headers=server.auth)
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["TOKEN", "JupyterServer"]

TOKEN = "test-token-4f9c2a"
BASE_URL = "/jp/"
HERE = Path(__file__).parent


def _die_with_parent() -> None:
    # A test run killed outright (Ctrl-C twice, a CI timeout) must not leave its server.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class JupyterServer:
    """``python -m cm_notebook.server`` in a child process (see the module docstring)."""

    def __init__(self, root: Path, *, heartbeat: float = 0.5, extra: Sequence[str] = ()) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.runtime_dir = root / "runtime"
        self.log_path = root / "server.log"
        self.heartbeat = heartbeat
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "cm_notebook.server",
            "--ServerApp.port=0",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.base_url={BASE_URL}",
            f"--ServerApp.root_dir={self.root / 'notebooks'}",
            f"--IdentityProvider.token={TOKEN}",
            f"--CMNotebookApp.data_dir={self.data_dir}",
            f"--CMNotebookApp.heartbeat={self.heartbeat}",
            "--CMNotebookApp.default_provider=scripted",
            "--CMNotebookApp.tools=server_tools:get_weather",
            *self.extra,
        ]
        if hasattr(os, "getuid") and os.getuid() == 0:
            command.append("--allow-root")  # containers and CI machines run as root
        return command

    def __enter__(self) -> JupyterServer:
        for path in (self.data_dir, self.runtime_dir, self.root / "notebooks"):
            path.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "JUPYTER_RUNTIME_DIR": str(self.runtime_dir),
                "JUPYTER_CONFIG_DIR": str(self.root / "config"),
                "CM_NOTEBOOK_DATA_DIR": str(self.data_dir),
                "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
            }
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            self.url = self._wait_for_runtime_file(timeout=60.0)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_runtime_file(self, timeout: float) -> str:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        path = self.runtime_dir / f"jpserver-{self.process.pid}.json"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log()}")
            if path.exists():
                try:
                    info: dict[str, Any] = json.loads(path.read_text())
                except ValueError:
                    info = {}  # being written
                if info.get("port"):
                    return f"http://127.0.0.1:{info['port']}{BASE_URL}"
            time.sleep(0.05)  # polling a condition with a deadline
        raise TimeoutError(f"the server did not start within {timeout} s:\n{self.log()}")

    def api(self, path: str) -> str:
        """The absolute URL of an API path such as ``/contexts``."""
        return f"{self.url}cm/api{path}"

    @property
    def auth(self) -> dict[str, str]:
        """Headers that authenticate with the server's token."""
        return {"Authorization": f"token {TOKEN}"}

    def log(self) -> str:
        """What the server has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """Stop the server (SIGTERM, a clean shutdown; SIGKILL if it hangs)."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
