"""llama.cpp's OpenAI-compatible HTTP server for a GGUF file, in this process or as a child.

:func:`serve_openai_compatible` starts ``xllamacpp.Server`` in the calling process
(for tests and for clients in other processes). Run as a program,
``python -m cm_notebook.providers._local_server``, this module is the model server
process that :class:`~cm_notebook.providers.local.LocalProvider` starts, so that
loading and running the model never hold the kernel's GIL and a llama.cpp crash
cannot take the kernel down.

The server process speaks a small line protocol with its parent:

1. stdin, first line: JSON ``{"model_path", "n_ctx", "n_threads", "api_key"}``. The
   API key locks the HTTP listener to the parent; it travels over the pipe because
   the command line of a process is readable by every local user.
2. stdout, one line: ``{"port": N}`` once ``GET /health`` answers, or
   ``{"error": "...", "kind": "not_installed" | "load"}`` (then it exits with code 1).
3. It then serves until its stdin reaches end of file (the parent closed it, or the
   parent died and the kernel closed it) or its parent process changes (the parent
   died while some other process still holds the pipe), and exits at once.

Only that one line goes to the real stdout: anything llama.cpp prints there is sent to
stderr instead, since nobody reads the pipe after the port and a full pipe would block
the server.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from ..errors import PermanentProviderError, ProviderNotInstalledError
from ._model_file import INSTALL_HINT, resolve_model_file

__all__ = ["LocalServer", "import_xllamacpp", "main", "serve_openai_compatible"]

# How long a freshly loaded server may take to answer GET /health.
_READY_TIMEOUT_SECONDS = 60.0
# How often the server process checks that its parent is still the same process.
_PARENT_CHECK_SECONDS = 1.0


def import_xllamacpp() -> Any:
    """Import ``xllamacpp``; :class:`ProviderNotInstalledError` saying how to install it."""
    try:
        import xllamacpp
    except ImportError as exc:
        raise ProviderNotInstalledError(
            f"the local provider needs xllamacpp, which is not installed ({exc}). "
            f"Install it with: {INSTALL_HINT}",
            provider="local",
        ) from exc
    return xllamacpp


def default_threads() -> int:
    """Threads llama.cpp uses unless told: the CPU count, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def _make_server(
    xllamacpp: Any,
    path: Path,
    *,
    n_ctx: int,
    n_threads: int | None,
    port: int = 0,
    alias: str | None = None,
    api_key: str | None = None,
) -> Any:
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = n_ctx
    params.n_parallel = 1  # requests are served one at a time, in order
    params.cpuparams.n_threads = n_threads or default_threads()
    params.cpuparams_batch.n_threads = n_threads or default_threads()
    params.verbosity = -1  # llama.cpp logs to stderr otherwise; quiet in notebooks
    params.hostnames = ["127.0.0.1"]  # never reachable from other machines
    params.port = port
    if alias:
        params.model_alias = {alias}
    if api_key:
        params.api_keys = [api_key]
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as exc:
        raise PermanentProviderError(
            f"local: llama.cpp could not load {str(path)!r} ({exc}). Check that it is a "
            "complete GGUF model file that this llama.cpp version supports, and that "
            f"n_ctx={n_ctx} fits in memory.",
            provider="local",
        ) from exc
    _wait_until_listening(str(server.listening_address))
    return server


def _wait_until_listening(address: str, timeout: float = _READY_TIMEOUT_SECONDS) -> None:
    # Measured: the HTTP listener comes up a little after Server() returns, and freeing
    # a Server before it is up can hang forever in its destructor. So every Server is
    # only handed out once GET /health answers 200 (it needs no API key).
    deadline = time.monotonic() + timeout
    url = f"{address.rstrip('/')}/health"
    # No proxy: urlopen() would send this to the one in http_proxy (never answering for
    # 127.0.0.1, or answering for another machine), whatever no_proxy lacks.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        try:
            with opener.open(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except OSError:  # URLError, refused, reset, 503 while loading (HTTPError)
            pass
        if time.monotonic() > deadline:
            raise PermanentProviderError(
                f"local: llama.cpp's server did not become ready at {address} within {timeout:g} s",
                provider="local",
            )
        time.sleep(0.01)


#: How long :meth:`LocalServer.close` waits for llama.cpp to shut down.
_FREE_TIMEOUT_SECONDS = 30.0


class LocalServer:
    """A running llama.cpp OpenAI-compatible HTTP server; see :func:`serve_openai_compatible`.

    ``base_url`` is ``http://127.0.0.1:<port>/v1``; ``port`` is the port chosen;
    ``model`` is the name clients ask for (any name is accepted by llama.cpp, which
    serves its one model whatever the request says). Use it as a context manager, or
    call :meth:`close`.
    """

    def __init__(self, server: Any, model: str) -> None:
        self._server: Any = server
        address = str(server.listening_address)  # "http://127.0.0.1:<port>"
        self.port = int(address.rsplit(":", 1)[1].split("/", 1)[0])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model = model

    @property
    def running(self) -> bool:
        """Whether :meth:`close` has not been called yet."""
        return self._server is not None

    @property
    def llama(self) -> Any:
        """The ``xllamacpp.Server`` itself, e.g. to call ``handle_chat_completions(body,
        callback)`` in this process without HTTP; ``None`` once closed."""
        return self._server

    def close(self, timeout: float = _FREE_TIMEOUT_SECONDS) -> None:
        """Stop the server (llama.cpp stops it when the object is freed) and free the model.

        Waits up to ``timeout`` seconds for llama.cpp to shut down.
        """
        holder = [self._server]
        self._server = None
        if holder[0] is None:
            return
        # The last reference is dropped on a daemon thread: llama.cpp's destructor has
        # been seen to hang now and then when another server runs in the same process,
        # and a hung free must not hold up the caller (or a process that is exiting).
        freed = threading.Event()

        def free() -> None:
            holder.clear()
            freed.set()

        threading.Thread(target=free, name="cm_notebook-llama-free", daemon=True).start()
        freed.wait(timeout)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "closed"
        return f"<LocalServer {self.base_url} model={self.model!r} {state}>"


def serve_openai_compatible(
    port: int = 0,
    *,
    model_path: str | Path | None = None,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    alias: str = "smollm2",
    api_key: str | None = None,
) -> tuple[str, LocalServer]:
    """Serve the local model over llama.cpp's OpenAI-compatible HTTP API on 127.0.0.1.

    Returns ``(base_url, server)``; ``base_url`` (``http://127.0.0.1:<port>/v1``) is
    ready for ``OpenAIProvider(alias, base_url=base_url)`` or the ``openai`` SDK. With
    ``port=0`` the OS picks a free port: llama.cpp reports it in
    ``Server.listening_address``, exposed as ``server.port``. ``api_key``, if given,
    is required from clients (a wrong key gets HTTP 401).

    The model runs in the calling process, separately from the server process that
    :class:`~cm_notebook.providers.local.LocalProvider` uses. Loading holds the GIL
    (about a second for SmolLM2), so other threads and the event loop stall meanwhile;
    to keep a notebook responsive use ``LocalProvider``, which loads the model in a
    child process. Stop the server with ``server.close()`` or ``with``::

        base_url, server = serve_openai_compatible()
        with server:
            ...
    """
    xllamacpp = import_xllamacpp()
    file = resolve_model_file(model_path)
    if port:
        _check_port_free(port)
    server = _make_server(
        xllamacpp,
        file.path,
        n_ctx=n_ctx,
        n_threads=n_threads,
        port=port,
        alias=alias,
        api_key=api_key,
    )
    handle = LocalServer(server, alias)
    return handle.base_url, handle


def _check_port_free(port: int) -> None:
    # llama.cpp's own failure to bind reads "Failed to init server, please check the
    # input params", which the load error then blames on the model file.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise PermanentProviderError(
                f"local: port {port} on 127.0.0.1 cannot be used ({exc.strerror or exc}); "
                "another program is probably listening there. Choose another port, or "
                "port=0 to let the system pick a free one"
            ) from None


# -- the server process -----------------------------------------------------------------


def _read_line(fd: int) -> bytes:
    # Read byte chunks from the raw descriptor (no buffered reader that could swallow
    # what the parent sends later; it sends nothing more, but select() must see EOF).
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _reply(channel: TextIO, message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def _serve_until_orphaned(parent: int) -> None:
    # Returns when stdin reaches EOF (the parent closed it or died) or when the parent
    # changes (it died while a process it forked still holds the other end of the pipe).
    while os.getppid() == parent:
        readable, _, _ = select.select([0], [], [], _PARENT_CHECK_SECONDS)
        if readable and not os.read(0, 4096):
            return


def main() -> None:
    """Entry point of the model server process; see the module docstring."""
    parent = os.getppid()
    # An interrupt meant for the kernel (Jupyter signals the whole process group) must
    # not stop the model; the parent also starts this process in its own session.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    try:
        config = json.loads(_read_line(0) or b"null")
        if not isinstance(config, dict):
            raise PermanentProviderError(
                "local: the model server got no configuration on stdin", provider="local"
            )
        _base_url, server = serve_openai_compatible(
            model_path=str(config["model_path"]),
            n_ctx=int(config["n_ctx"]),
            n_threads=config.get("n_threads"),
            api_key=str(config["api_key"]),
        )
    except ProviderNotInstalledError as exc:
        _reply(channel, {"error": str(exc), "kind": "not_installed"})
        os._exit(1)
    except (PermanentProviderError, ValueError, KeyError) as exc:
        _reply(channel, {"error": str(exc), "kind": "load"})
        os._exit(1)
    _reply(channel, {"port": server.port})
    _serve_until_orphaned(parent)
    # Exit without freeing the model: the OS reclaims everything at once, and a
    # Server's destructor was seen to hang.
    os._exit(0)


if __name__ == "__main__":
    main()
