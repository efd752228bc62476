"""The local model's server process, seen from the process that uses it.

:func:`shared_server` starts ``python -m cm_notebook.providers._local_server`` (see that
module for the protocol) on first use and hands the same :class:`ServerProcess` to
every provider in this process that asks for the same ``(model file, n_ctx)``. It
blocks while the model loads, so call it from a worker thread.

Lifetime:

- stopped when this process exits normally (``atexit``), or by
  :func:`stop_all_servers`;
- the server exits by itself when this process dies without cleaning up (SIGKILL, a
  crash): its stdin is a pipe from this process, which the OS closes then;
- a server that dies is reaped at once (no zombie left until the next request), and
  a server found dead is started again by the next :func:`shared_server` call; the
  provider turns a connection failure on a dead server into a clear error
  (:meth:`ServerProcess.exit_description`).

The server runs in its own session (process group), so an interrupt sent to the
kernel's group does not reach it. Its stderr goes to an unnamed temporary file, read
back only to explain a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import cm_notebook

from ..errors import (
    PermanentProviderError,
    ProviderError,
    ProviderNotInstalledError,
    ProviderSetupError,
)
from ..redact import get_logger
from ._model_file import INSTALL_HINT

__all__ = [
    "ServerProcess",
    "forget_server",
    "shared_server",
    "start_server",
    "stop_all_servers",
]

logger = get_logger(__name__)

# How long a stopped server may take to exit before it is killed.
_STOP_WAIT_SECONDS = 5.0
# How much of the server's stderr an error message quotes.
_LOG_TAIL_BYTES = 1500


class ServerProcess:
    """A running model server process: its pid, URL and the key its listener wants."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, api_key: str, log: IO[bytes]
    ) -> None:
        self._process = process
        self._log = log
        self.pid: int = process.pid
        self.port = port
        #: ``http://127.0.0.1:<port>``; the chat API is under ``/v1``.
        self.address = f"http://127.0.0.1:{port}"
        self._api_key = api_key
        #: Stopped on request (unload_local_models(), this process exiting): its end
        #: is then no crash, and a reply it was writing says so.
        self.stopped_on_request = False
        # Reaped as soon as it exits, even while idle: else a server that died between
        # requests stays a zombie until the next request polls it.
        threading.Thread(
            target=self._reap_on_exit, name="cm_notebook-local-reaper", daemon=True
        ).start()

    def _reap_on_exit(self) -> None:
        # The server's stdout reaches end of file when it exits (it holds it open until
        # then, and writes nothing more after its port): no polling, no waitpid lock held.
        stdout = self._process.stdout
        assert stdout is not None
        try:
            while os.read(stdout.fileno(), 4096):
                pass
        except OSError:
            pass
        finally:
            stdout.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(_STOP_WAIT_SECONDS)  # it is exiting: a moment at most

    @property
    def headers(self) -> dict[str, str]:
        """Request headers that authenticate to this server (never logged or shown)."""
        return {"Authorization": f"Bearer {self._api_key}"}

    @property
    def returncode(self) -> int | None:
        """``None`` while the process runs, else its exit status."""
        return self._process.poll()

    def wait_exited(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the process to exit; its exit status or ``None``.

        A killed server's sockets close a moment before the OS reports the process as
        gone, so a failed connection waits briefly here before deciding.
        """
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def exit_description(self) -> str:
        """How the process ended and the end of what it printed, for error messages."""
        return _describe_exit(self._process.returncode, self._log)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the process (closing its stdin ends it; killed if it does not exit).

        ``kill``: at once, for a hung process (closing its stdin would not end it).
        """
        if kill and self._process.poll() is None:
            self._process.kill()
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(_STOP_WAIT_SECONDS)
        except subprocess.TimeoutExpired:  # e.g. still busy loading the model
            self._process.kill()
            self._process.wait()
        self._log.close()

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else "exited"
        return f"<ServerProcess pid={self.pid} {self.address} {state}>"


def _describe_exit(returncode: int | None, log: IO[bytes]) -> str:
    if returncode is None:
        how = "is still running"
    elif returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        how = f"was killed by {name}"
    else:
        how = f"exited with code {returncode}"
    try:
        log.seek(0, os.SEEK_END)
        size = log.tell()
        log.seek(max(0, size - _LOG_TAIL_BYTES))
        tail = log.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):  # ValueError: the log is already closed
        tail = ""
    return f"{how}; its last output: {tail}" if tail else how


def _child_environment() -> dict[str, str]:
    # The server process imports this package; make sure it finds the same copy even
    # when this process found it through a sys.path entry of its own (a notebook next
    # to a source checkout).
    env = dict(os.environ)
    root = str(Path(cm_notebook.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: What :func:`_read_reply` gives when the server closed its output without a reply
#: (it is exiting: a crash while loading), as against None for no reply in time.
_CLOSED = "closed"


def _read_reply(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any] | None:
    # The first line on the server's stdout; None if none came in time, ``{"kind":
    # _CLOSED}`` if the server closed its output first (before it has quite exited).
    assert process.stdout is not None
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return None
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                return {"kind": _CLOSED}
            data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        return {"error": f"unexpected reply {data[:200]!r}", "kind": "load"}
    return reply if isinstance(reply, dict) else {"error": f"unexpected reply {reply!r}"}


def start_server(
    model_path: Path, *, n_ctx: int, n_threads: int | None, timeout: float
) -> ServerProcess:
    """Start a model server process and wait until it serves (blocking).

    Raises :class:`ProviderSetupError` (saying what to do) if it cannot load the
    model or exits while loading it, :class:`PermanentProviderError` if it does not
    answer within ``timeout`` seconds, and :class:`ProviderNotInstalledError` if it
    cannot import xllamacpp.
    """
    api_key = secrets.token_urlsafe(24)
    # The log lives as long as the server; ServerProcess.stop() closes it.
    log = tempfile.TemporaryFile(prefix="cm-local-server-")  # noqa: SIM115
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "cm_notebook.providers._local_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=_child_environment(),
            start_new_session=True,
        )
    except OSError as exc:
        log.close()
        raise PermanentProviderError(
            f"local: could not start the model server process with {sys.executable} "
            f"({exc}). Check that this Python can start programs.",
            provider="local",
        ) from exc
    try:
        assert process.stdin is not None
        config = {
            "model_path": str(model_path),
            "n_ctx": n_ctx,
            "n_threads": n_threads,
            "api_key": api_key,
        }
        process.stdin.write(json.dumps(config).encode() + b"\n")
        process.stdin.flush()
        reply = _read_reply(process, timeout)
    except BaseException:
        _abandon(process, log)
        log.close()
        raise
    if reply is not None and isinstance(reply.get("port"), int):
        return ServerProcess(process, reply["port"], api_key, log)
    raise _start_failure(process, log, reply, model_path, timeout)


def _start_failure(
    process: subprocess.Popen[bytes],
    log: IO[bytes],
    reply: dict[str, Any] | None,
    model_path: Path,
    timeout: float,
) -> ProviderError:
    timed_out = reply is None
    if reply is not None and reply.get("kind") == _CLOSED:
        # It crashed while starting: its exit and its last words, not a timeout.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        reply = None
    _abandon(process, log)
    where = f"the local model server for {str(model_path)!r}"
    error: ProviderError
    if timed_out:
        error = PermanentProviderError(
            f"local: {where} did not become ready within {timeout:g} s. The machine may "
            "be overloaded or the model too large: try again, pass a larger "
            "start_timeout=..., or set CM_LOCAL_MODEL to a smaller GGUF file.",
            provider="local",
        )
    elif reply is None:
        # A crash while loading: the same file crashes it again (a sweep stops the
        # variant), unlike a timeout, which a quieter machine may not meet.
        error = ProviderSetupError(
            f"local: {where} {_describe_exit(process.returncode, log)}. Check that the "
            "file is a complete GGUF model that this llama.cpp supports; reinstall with: "
            f"{INSTALL_HINT}.",
            provider="local",
        )
    elif reply.get("kind") == "not_installed":
        error = ProviderNotInstalledError(str(reply.get("error")), provider="local")
    else:  # llama.cpp refused the file
        error = ProviderSetupError(str(reply.get("error") or reply), provider="local")
    log.close()
    return error


def _abandon(process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    # Stop a process that never became a ServerProcess (its log is read afterwards).
    if process.poll() is None:
        process.kill()
    process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


_servers: dict[tuple[Path, int], ServerProcess] = {}
# Held while a server starts, so two first uses start one server.
_servers_lock = threading.Lock()


def shared_server(
    model_path: Path, *, n_ctx: int, n_threads: int | None, timeout: float
) -> ServerProcess:
    """This process's server for ``(model_path, n_ctx)``, started if none runs (blocking).

    ``n_threads`` and ``timeout`` apply when it has to be started.
    """
    key = (model_path, n_ctx)
    with _servers_lock:
        server = _servers.get(key)
        if server is not None and server.returncode is None:
            return server
        if server is not None:
            logger.warning(
                "the local model server (pid %d) %s; starting it again",
                server.pid,
                server.exit_description(),
            )
            del _servers[key]
            server.stop()
        server = start_server(model_path, n_ctx=n_ctx, n_threads=n_threads, timeout=timeout)
        _servers[key] = server
        return server


def forget_server(server: ServerProcess, *, kill: bool = False) -> None:
    """Drop ``server`` from the shared ones and stop it (it died or misbehaves), so
    the next use starts another; ``kill``: at once (it hung)."""
    with _servers_lock:
        for key, current in list(_servers.items()):
            if current is server:
                del _servers[key]
    server.stop(kill=kill)


def stop_all_servers() -> None:
    """Stop every model server process this process started."""
    with _servers_lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.stopped_on_request = True
        server.stop()


atexit.register(stop_all_servers)
