"""OpenAI and OpenAI-compatible servers (llama.cpp, vLLM, Ollama, LM Studio, ...).

Uses the official ``openai`` SDK (``pip install 'cm_notebook[openai]'``) with
``AsyncOpenAI(..., max_retries=0)``: retries belong to cm_notebook's state machine,
which sees every failure as a :class:`~cm_notebook.errors.TransientProviderError` or
:class:`~cm_notebook.errors.PermanentProviderError` (translated here with
``raise ... from exc``).

Streaming
---------
``chat.completions.create(stream=True, stream_options={"include_usage": True})``.
Text deltas are yielded as they arrive. Tool calls arrive in pieces keyed by
``index`` (the id and name first, then the JSON arguments in fragments); a piece with
an id other than its index's call starts a new call (some servers send parallel calls
one after another under index 0), and without ids so does a piece with another function
name, or with the same name once the call's arguments are a whole JSON object (a name
repeated in every piece of one call does not split it). They are assembled and emitted as
:class:`ToolCallRequest` when the finish reason arrives, in index order.
:class:`Usage` (when the server reports it) and :class:`Finish` come last.
A thinking model's reasoning (``delta.reasoning_content``: DeepSeek, llama.cpp;
``delta.reasoning``: vLLM, OpenRouter) is yielded as :class:`ReasoningDelta`, kept
apart from the answer, and a refusal (``delta.refusal``) as :class:`RefusalDelta`.

Usage is optional: a report with a count missing gives 0 for it (as
:class:`~cm_notebook.model.TokenUsage` does), whole floats are taken as ints, and a
report with no readable count is left out; none of these fails the reply.

The reply ends at its last chunk: the usage chunk after the finish reason, or the
finish reason itself with ``include_usage=False``. ``[DONE]`` and the end of the body
are not waited for, so a server that keeps the connection open does not hold the turn
until the read timeout; the response is closed then. A byte-order mark at the very
start of the body is skipped, as the SSE specification asks (the SDK's decoder would
read it as part of the first field name and lose the first event).

An error the server reports mid-reply, as ``data: {"error": {...}}``, as llama.cpp's
own ``error: {...}`` line, or as an event with no ``choices`` but a ``message`` (vLLM's
``{"object": "error", ...}``, or an ``event: error`` whose data has no ``error`` key;
see :mod:`._openai_answers`), ends the reply with the server's message: judged by the
HTTP status in its ``code`` (a 5xx, say llama.cpp's "out of KV cache slots", is
retried; a 4xx is not), else by its ``type`` (an invalid request is not retried), else
retried.

A stream that ends without a finish reason is a transient "stream cut mid-reply"
error, as is a connection reset or read timeout mid-reply; a chunk that is not valid
JSON, or not shaped like a ``chat.completion.chunk``, is a transient "malformed
response" error. The deltas yielded before the failure stay with the consumer. A
connection that drops *after* the finish reason (while waiting for the usage chunk or
``[DONE]``) loses nothing of the reply, so the reply is finished without usage. A 200
answer that is not ``text/event-stream`` (an HTML page: a base URL pointing elsewhere)
is a permanent error naming its content type; one that is a JSON error
(``{"error": {...}}``) fails with that error's message instead, retried only if its
``code`` (an HTTP status) or ``type`` says a later try may succeed. One that is a whole
``chat.completion`` (a server or proxy that ignores ``stream: true``) is the reply, in
one piece: its text, reasoning, tool calls, finish reason and usage.

Timeouts
--------
``timeout`` (seconds, 60 by default) bounds connecting, each read (the time between
bytes), and the time between pieces of real progress once the reply has begun: text,
reasoning, a tool-call piece, usage, the finish reason. ``first_token_timeout``
(seconds, 600 by default, as the SDK's own total timeout; never less than ``timeout``)
bounds the wait for the first piece. Keep-alive comments (``: keep-alive``, ``: ping``,
OpenRouter's ``: OPENROUTER PROCESSING``, or chunks with nothing in them) restart the
read timeout with every one: before the first piece they are the server saying the
model is still working (a thinking model may take minutes to its first words), after it
a server stuck mid-reply. A reply that gets only keep-alives for the limit fails with a
transient timeout error that says which limit it was and how to raise it ("the server
sent only keep-alive messages for N s ..."), retried as a read timeout is; the text
before it stays with the consumer, as for the other failures above. A server that sends
nothing at all fails at the read timeout, ``timeout``, before the reply as after it.
After the finish reason, a stream that stalls so ends the reply without usage, as a
drop then does. Only the time spent waiting for the server counts (see
:mod:`._progress_deadline`).

Keys
----
``api_key`` defaults to ``OPENAI_API_KEY``. With a ``base_url`` (or ``OPENAI_BASE_URL``)
and no key, the placeholder ``"not-needed"`` is sent, which local servers accept. The
key is handed to the SDK client and never stored, logged or shown by this class.
Credentials in ``default_headers`` (headers named like ``Authorization``, ``api-key``,
``X-Api-Token``, ``Cookie``, or with a value shaped like a key) are redacted wherever
they appear, like the key: a server that echoes one in an error gets it stored nowhere.
So are credentials in the ``base_url`` (a ``user:password@`` part, query values such as
an Azure ``?sig=`` or ``?code=``), which ``repr`` and errors show as ``[REDACTED]``.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio

from .._url_secrets import redact_url, remember_url_secrets
from ..errors import (
    InvalidInputError,
    PermanentProviderError,
    ProviderError,
    ProviderSetupError,
)
from ..redact import (
    get_logger,
    remember_header_secrets,
    remember_secret,
    scrub_exception,
)
from . import _errors
from ._convert import to_openai_messages, to_openai_tools
from ._http_client import sdk_http_client, watch_progress
from ._openai_answers import (
    completion_as_chunk,
    error_in_answer,
    error_in_chunk,
    error_object,
    read_json_answer,
    transport_errors,
)
from ._openai_chunks import ChunkAssembler, malformed
from ._progress_deadline import ProgressDeadline, Stalled, seconds_option
from .base import ChatRequest, Finish, StreamChunk

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["OpenAIProvider"]

logger = get_logger(__name__)

_PROVIDER = "openai"
_KEY_ENV = "OPENAI_API_KEY"
_BASE_URL_ENV = "OPENAI_BASE_URL"
_PLACEHOLDER_KEY = "not-needed"

# Parameters the chat-completions API takes by name; anything else in
# ``ChatRequest.params`` goes in the request body as is (``extra_body``), so
# server-specific knobs such as llama.cpp's ``top_k`` reach the server, and a server
# that does not know a parameter says so (a permanent 400 with its message).
_NAMED_PARAMS = frozenset(
    {
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "parallel_tool_calls",
        "presence_penalty",
        "reasoning_effort",
        "response_format",
        "seed",
        "service_tier",
        "stop",
        "temperature",
        "tool_choice",
        "top_logprobs",
        "top_p",
        "user",
    }
)
# Sampling knobs that OpenAI-compatible servers (llama.cpp, vLLM, Ollama) take beyond
# OpenAI's own; like every name outside _NAMED_PARAMS they go in the body as is.
_SERVER_PARAMS = frozenset(
    {
        "grammar",
        "json_schema",
        "min_p",
        "mirostat",
        "mirostat_eta",
        "mirostat_tau",
        "repeat_penalty",
        "repetition_penalty",
        "top_k",
        "typical_p",
    }
)
# Keys the provider sets itself.
_RESERVED = frozenset({"model", "messages", "stream", "stream_options", "tools", "n"})


def _import_openai() -> Any:
    try:
        return importlib.import_module("openai")
    except ImportError as exc:
        from ..errors import ProviderNotInstalledError

        raise ProviderNotInstalledError(
            f"the openai provider needs the openai SDK, which is not installed ({exc}); "
            "install it with: pip install 'cm_notebook[openai]'",
            provider=_PROVIDER,
        ) from exc


def _has_web_scheme(url: str) -> bool:
    return urlsplit(url.strip()).scheme.lower() in ("http", "https")


class OpenAIProvider:
    """Chat through the OpenAI API, or any OpenAI-compatible server via ``base_url``.

    ``model`` is the default model (a request's ``params["model"]`` overrides it).
    ``base_url`` defaults to ``OPENAI_BASE_URL``, then to OpenAI. ``api_key`` defaults
    to ``OPENAI_API_KEY`` (``"not-needed"`` for a base_url without a key). ``timeout``
    (seconds) bounds connecting, each read, and the time between pieces of the reply,
    so a server that stops sending, or sends only keep-alive comments mid-reply, fails
    fast; ``first_token_timeout`` (seconds, at least ``timeout``) bounds the wait for
    the reply's first piece while the server sends keep-alives, as gateways such as
    OpenRouter do while a model thinks (see the module's "Timeouts").
    ``include_usage=False`` leaves out ``stream_options`` for servers that reject it.
    ``organization``, ``project`` and ``default_headers`` go to the SDK client.
    """

    name = "openai"
    #: The API's own base URL: a ``base_url`` equal to it is no other server (see
    #: :func:`~cm_notebook.provenance.endpoint_of`).
    default_endpoint = "https://api.openai.com/v1"
    #: The generation parameters a request may set; others are refused before sending.
    #: ``extra_body`` (a mapping) is merged into the request body unchecked, for any
    #: other knob a particular server understands.
    parameters = _NAMED_PARAMS | _SERVER_PARAMS | {"model", "extra_body"}

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        first_token_timeout: float = 600.0,
        organization: str | None = None,
        project: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        include_usage: bool = True,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InvalidInputError("OpenAIProvider needs a model name, e.g. 'gpt-4o-mini'")
        timeout = seconds_option("timeout", timeout)
        first_token_timeout = seconds_option("first_token_timeout", first_token_timeout)
        self._sdk = _import_openai()
        self.model: str = model.strip()
        self.base_url: str | None = base_url or os.environ.get(_BASE_URL_ENV) or None
        if self.base_url is not None and not _has_web_scheme(self.base_url):
            # Without one the SDK fails every request as a "connection error", retried.
            where = "base_url" if base_url else _BASE_URL_ENV
            raise InvalidInputError(
                f"{where} must start with http:// or https://, e.g. "
                f"'http://localhost:8080/v1'; got {redact_url(self.base_url)!r}"
            )
        self.timeout = timeout
        self.first_token_timeout = first_token_timeout
        self.include_usage = include_usage
        if default_headers is not None and not (
            isinstance(default_headers, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in default_headers.items())
        ):
            raise InvalidInputError(
                "default_headers must map header names to text values, e.g. {'X-Team': 'research'}"
            )
        self._timeouts, self._transport = transport_errors()
        key = api_key or os.environ.get(_KEY_ENV) or (_PLACEHOLDER_KEY if self.base_url else None)
        # A server may echo a key in an error body: remembered, so it is never stored.
        remember_secret(api_key)
        remember_header_secrets(default_headers)  # credentials sent as headers too
        remember_url_secrets(self.base_url)  # and in the URL (user:password@, ?sig=...)
        self._client: AsyncOpenAI | None = None
        self._closed = False
        self._client_options: dict[str, Any] = {
            "base_url": self.base_url,
            "timeout": self.timeout,
            "max_retries": 0,
            "organization": organization,
            "project": project,
            "default_headers": dict(default_headers) if default_headers else None,
        }
        if key is not None:
            # The key goes straight into the SDK client; this object keeps no copy.
            self._client = self._new_client(key)

    @classmethod
    def from_spec(cls, model: str | None = None, /, **options: Any) -> OpenAIProvider:
        """Build from a spec such as ``openai:gpt-4o-mini``; ``options`` are keyword
        arguments of the constructor (``model=`` may stand in for the spec's model)."""
        model = model or options.pop("model", None)
        if not model:
            raise InvalidInputError(
                "the openai provider needs a model: use a spec like 'openai:gpt-4o-mini', "
                "or give one in provider_options={'model': ...} when the session is created "
                "(or OpenAIProvider(model=...))"
            )
        return cls(model, **options)

    def __repr__(self) -> str:
        # A base_url may carry credentials (user:key@, ?sig=): never shown.
        where = f", base_url={redact_url(self.base_url)!r}" if self.base_url else ""
        return f"OpenAIProvider(model={self.model!r}{where})"

    def _ensure_client(self) -> AsyncOpenAI:
        if self._closed:
            raise PermanentProviderError("openai: this provider was closed", provider=_PROVIDER)
        if self._client is None:
            key = os.environ.get(_KEY_ENV)  # set after construction, e.g. in a notebook
            if not key:
                raise ProviderSetupError(
                    f"openai: no API key. To fix: set {_KEY_ENV} (or build the provider with "
                    "api_key=...), or give base_url=... for a local OpenAI-compatible server.",
                    provider=_PROVIDER,
                )
            self._client = self._new_client(key)
        return self._client

    def _new_client(self, key: str) -> AsyncOpenAI:
        # The SDK's own HTTP client, but with a stream's leading byte-order mark dropped
        # before the SDK's decoder reads it as part of the first field name, and
        # llama.cpp's "error:" lines read as the error events the SDK understands.
        http_client = sdk_http_client(
            self._sdk.DefaultAsyncHttpxClient, error_lines=True, timeout=self.timeout
        )
        client: AsyncOpenAI = self._sdk.AsyncOpenAI(
            api_key=key, http_client=http_client, **self._client_options
        )
        return client

    def _request(self, request: ChatRequest, model: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": to_openai_messages(request.messages, (self.name, model)),
            "stream": True,
        }
        if self.include_usage:
            kwargs["stream_options"] = {"include_usage": True}
        if request.tools:
            kwargs["tools"] = to_openai_tools(request.tools)
        extra: dict[str, Any] = {}
        for key, value in request.params.items():
            if key in _RESERVED or value is None:
                continue
            if key == "extra_body" and isinstance(value, Mapping):
                extra.update(value)
                continue
            (kwargs if key in _NAMED_PARAMS else extra)[key] = value
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    def _models_hint(self) -> str:
        if self.base_url:
            # The real URL is split (the constructor checked that it splits): a redacted
            # one may not ("http://[REDACTED]@host" reads as an IPv6 address). Its
            # user:password@ is left out and the query (a tenant, say) kept, its
            # credentials hidden however short: a URL to paste, not "[REDACTED]@host".
            base = urlsplit(self.base_url)
            host = base.netloc.rpartition("@")[2]
            path = base.path.rstrip("/") + "/models"
            models = redact_url(urlunsplit((base.scheme, host, path, base.query, "")))
            return (
                f"List the models this server offers at {models}. If the name is right, "
                "check base_url: OpenAI-compatible servers usually serve under /v1 "
                "(e.g. http://localhost:8080/v1)."
            )
        return (
            "List the models your key can use with `openai.OpenAI().models.list()` or see "
            "https://platform.openai.com/docs/models."
        )

    def _translate(self, exc: BaseException, model: str, received: int) -> ProviderError:
        scrub_exception(exc)  # kept as __cause__: a server may echo the key in its body
        sdk = self._sdk
        if isinstance(exc, sdk.APIStatusError):
            message = _errors.error_message_from_body(exc.body, exc.message)
            if self.include_usage and exc.status_code == 400 and "stream_options" in message:
                # Older servers and gateways refuse the usage request: every send would.
                told = message.strip().removesuffix(".")
                return ProviderSetupError(
                    f"openai: the server does not take stream_options (HTTP 400): {told}. "
                    "To fix: leave it out with provider_options={'include_usage': False} "
                    "when the session is created (or OpenAIProvider(..., include_usage="
                    "False)); replies then come without token counts.",
                    status_code=400,
                    provider=_PROVIDER,
                )
            return _errors.from_http_status(
                exc.status_code,
                message,
                provider=_PROVIDER,
                retry_after=_errors.retry_after_from_headers(exc.response.headers),
                model=model,
                api_key_env=_KEY_ENV,
                # Only a 404 (an unknown model) says where to list the models.
                list_models_hint=self._models_hint() if exc.status_code == 404 else None,
                error_codes=(exc.code, exc.type),
            )
        if isinstance(exc, (sdk.APITimeoutError, *self._timeouts)):
            return self._read_timeout(received)
        if isinstance(exc, (sdk.APIConnectionError, *self._transport)):
            cause = exc.__cause__ or exc
            detail = f"{type(cause).__name__}: {cause}".rstrip(": ")
            if received:
                return _errors.stream_cut_error(provider=_PROVIDER, detail=detail)
            target = redact_url(self.base_url) if self.base_url else "api.openai.com"
            return _errors.connection_error(provider=_PROVIDER, detail=f"{target}: {detail}")
        if isinstance(exc, sdk.APIResponseValidationError):
            return malformed(str(exc))
        if isinstance(exc, json.JSONDecodeError):
            return malformed(f"a chunk is not valid JSON ({exc})")
        if isinstance(exc, UnicodeDecodeError):
            return malformed(f"a chunk is not valid UTF-8 ({exc.reason} at byte {exc.start})")
        if isinstance(exc, sdk.APIError):
            # An error event inside the stream: {"error": {...}} with no HTTP status, or
            # {"error": "text"} from some servers.
            body = exc.body if isinstance(exc.body, Mapping) else {}
            if isinstance(exc.body, str) and exc.body.strip():
                body = {"message": exc.body}
            return error_object(body, exc.message, model, mid_reply=True)
        # OpenAIError without a response (configuration); nothing to retry.
        return PermanentProviderError(f"openai: {exc}", provider=_PROVIDER)

    def _read_timeout(self, received: int, seconds: float | None = None) -> ProviderError:
        # Nothing came for the timeout: mid-reply, the stream is cut; before, the
        # request timed out.
        seconds = self.timeout if seconds is None else seconds
        if received:
            return _errors.stream_cut_error(provider=_PROVIDER, detail=f"no data for {seconds:g} s")
        return _errors.timeout_error(provider=_PROVIDER, timeout=seconds)

    def _stalled(self, stalled: Stalled, assembler: ChunkAssembler) -> ProviderError:
        if not stalled.keepalives:
            # Silence: the read timeout's own error, which the HTTP client was about to
            # raise (it counts from the last byte, a moment after the last event).
            return self._read_timeout(assembler.received, stalled.seconds)
        return _errors.keepalive_timeout_error(
            provider=_PROVIDER,
            seconds=stalled.seconds,
            first=stalled.first,
            received=assembler.progress > 0,
            constructor="OpenAIProvider",
        )

    def _catchable(self) -> tuple[type[BaseException], ...]:
        return (
            self._sdk.OpenAIError,
            json.JSONDecodeError,
            UnicodeDecodeError,
            *self._timeouts,
            *self._transport,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Yield text deltas, then tool calls, :class:`Usage` and :class:`Finish`."""
        client = self._ensure_client()
        model = str(request.params.get("model") or self.model)
        catchable = self._catchable()
        try:
            response = await client.chat.completions.create(**self._request(request, model))
        except catchable as exc:
            raise self._translate(exc, model, 0) from exc
        content_type = response.response.headers.get("content-type", "")
        if not _errors.is_event_stream(content_type):
            try:
                # A server that answers an error as a 200 JSON body: its message, not
                # "check the base URL" (it is the right server).
                body = await read_json_answer(response.response, content_type)
            finally:
                with anyio.CancelScope(shield=True):
                    await response.close()
            error = error_in_answer(body) if body is not None else None
            if error is not None:
                raise error_object(error, "no message", model, mid_reply=False)
            whole = completion_as_chunk(body) if body is not None else None
            if whole is not None:
                # A server that ignores "stream": true answers the whole completion:
                # the reply, in one piece, not a wrong base URL.
                logger.debug("openai: the server answered a whole completion, not a stream")
                assembler = ChunkAssembler()
                for event in assembler.feed(whole):
                    yield event
                if assembler.finish is None:
                    raise malformed("the completion has no choice to reply with")
                if assembler.usage is not None:
                    yield assembler.usage
                yield Finish(assembler.finish, assembler.request_id)
                return
            raise _errors.not_an_event_stream_error(
                provider=_PROVIDER,
                content_type=content_type,
                base_url=redact_url(self.base_url) if self.base_url else None,
                hint=" (for OpenAI-compatible servers it usually ends in /v1)",
            )
        assembler = ChunkAssembler()
        iterator = response.__aiter__()
        # The timeouts bound the time between pieces of progress too, not only between
        # bytes: keep-alive comments would otherwise hold the turn forever.
        deadline = ProgressDeadline(self.timeout, self.first_token_timeout)
        watch_progress(response.response, deadline)
        catchable = (*catchable, Stalled)  # raised by the body's reads, passed on by the SDK
        try:
            # Ends at the reply's last chunk rather than at [DONE] or the end of the body:
            # a server that sends neither would hold the turn until the read timeout.
            while not assembler.done(self.include_usage):
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except catchable as exc:
                    if assembler.finish is not None:
                        # The reply itself is complete; only usage/[DONE] was lost (to a
                        # drop, or to keep-alives alone for the timeout).
                        logger.debug("openai stream dropped after the finish reason: %r", exc)
                        break
                    if deadline.stalled is not None:
                        raise self._stalled(deadline.stalled, assembler) from None
                    raise self._translate(exc, model, assembler.received) from exc
                error = error_in_chunk(chunk)
                if error is not None:
                    # An error event the SDK did not raise (no "error" key): the
                    # server's message, judged by its code, not a cut stream.
                    if assembler.finish is not None:
                        # As for an error the SDK raises: the reply itself is whole.
                        logger.debug("openai error event after the finish reason: %.300r", error)
                        break
                    raise error_object(error, "no message", model, mid_reply=True)
                progress, opened = assembler.progress, assembler.opened
                events = assembler.feed(chunk)
                if assembler.progress != progress:
                    deadline.progressed()
                elif assembler.opened != opened:
                    # The reply's opening chunk (a role alone): its bytes are the reply's,
                    # not keep-alives. A chunk with nothing in it is one, and not noted.
                    deadline.returned()
                for event in events:
                    yield event
        finally:
            with anyio.CancelScope(shield=True):
                # The SDK's iterator is an async generator made for this loop: closed here
                # (a no-op if it finished), not left for the garbage collector to finalize
                # later, perhaps once the loop is closed.
                if isinstance(iterator, AsyncGenerator):
                    await iterator.aclose()
                await response.close()
        if assembler.finish is None:
            raise _errors.stream_cut_error(
                provider=_PROVIDER,
                detail="the stream ended without a finish reason"
                if assembler.received
                else "the stream ended before any data",
            )
        if assembler.usage is not None:
            yield assembler.usage
        yield Finish(assembler.finish, assembler.request_id)

    async def aclose(self) -> None:
        """Close the SDK client's connections. The provider can't be used afterwards."""
        self._closed = True
        if self._client is not None:
            await self._client.close()
