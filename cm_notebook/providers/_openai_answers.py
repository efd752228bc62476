"""What an OpenAI-compatible server answers instead of ``chat.completion.chunk`` events:
error objects (in a 200 JSON body, or inside the stream in a shape the SDK does not
raise) and one whole ``chat.completion`` from a server that ignores ``stream: true``.

An error object is judged by its ``code`` when that is an HTTP status (a 5xx or 429 is
retried, a 4xx is not), else by its ``type`` (an invalid request is not retried),
else, inside a stream, retried. A whole completion is turned into the one chunk that
would have carried it, so the chunk reader checks it as it checks a stream.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import Any

from ..errors import PermanentProviderError, ProviderError, TransientProviderError
from . import _errors

__all__ = [
    "completion_as_chunk",
    "error_in_answer",
    "error_in_chunk",
    "error_object",
    "read_json_answer",
    "transport_errors",
]

_PROVIDER = "openai"

# Error types (an error object's ``type``) that say a later try may succeed.
_TRANSIENT_ERROR_TYPES = frozenset(
    {"server_error", "rate_limit_error", "rate_limit_exceeded", "overloaded_error", "timeout"}
)
# How much of a 200 answer that is not an event stream is read.
_ANSWER_LIMIT = 256 * 1024


def transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """The (timeout, other transport) errors of the HTTP library behind the SDK.

    Errors that escape the SDK while a stream is being read come from its HTTP library
    unwrapped: httpx2 for openai >= 3, httpx before."""
    timeouts: list[type[BaseException]] = [TimeoutError]
    transport: list[type[BaseException]] = [ConnectionError]
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transport.append(module.TransportError)
        transport.append(module.StreamError)
    return tuple(timeouts), tuple(transport)


def error_object(
    error: Mapping[str, Any], fallback: str, model: str, *, mid_reply: bool
) -> ProviderError:
    """The error for an error object a server sent without an HTTP error status to judge
    it by: inside the stream (``mid_reply``), or as a 200 answer's JSON body.

    Its ``code``, when an HTTP status, and its ``type`` say whether to retry; an error
    inside the stream that says neither is retried (overloads, rate limits usually
    pass), a 200 answer that is an error is not (nothing says waiting would change it).
    """
    message = _errors.error_message_from_body(error, fallback)
    code = error.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    kind = error.get("type")
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return _errors.from_http_status(
            code, message, provider=_PROVIDER, model=model, error_codes=(kind,)
        )
    if "invalid_request" in str(kind or ""):
        return PermanentProviderError(
            f"openai: the request was rejected: {message}", provider=_PROVIDER
        )
    if mid_reply:
        return _errors.error_event(provider=_PROVIDER, message=message)
    if isinstance(kind, str) and kind in _TRANSIENT_ERROR_TYPES:
        return TransientProviderError(
            f"openai: the server answered with an error ({kind}): {message}", provider=_PROVIDER
        )
    return PermanentProviderError(
        f"openai: the server answered with an error instead of a reply: {message}",
        provider=_PROVIDER,
    )


def _fields(obj: Any) -> Mapping[str, Any]:
    # A chunk as the SDK gives it (a model built without validation, its unknown fields
    # kept as extras) or a dict, as the fields the server sent.
    if isinstance(obj, Mapping):
        return obj
    sent = getattr(obj, "model_fields_set", None)
    fields = {name: getattr(obj, name, None) for name in sent or ()}
    fields.update(getattr(obj, "model_extra", None) or {})
    return fields


def error_in_chunk(chunk: Any) -> Mapping[str, Any] | None:
    """The error object a stream event carries in a shape the SDK does not raise, or None.

    The SDK raises only events with an ``"error"`` key. vLLM sends its error response
    as is (``{"object": "error", "message": ..., "code": 400}``), and servers that name
    the event ``error`` (``event: error`` + ``data: {"message": ..., "code": 429}``)
    lose the name in the SDK: read as a chunk, either would have no choices and the
    reply would end as a cut stream, the server's message lost. An event with no
    ``choices`` and a ``message`` text is no chunk: it is such an error.
    """
    fields = _fields(chunk)
    message = fields.get("message")
    if fields.get("object") == "error" or (
        fields.get("choices") is None and isinstance(message, str) and message.strip()
    ):
        return fields
    return None


async def read_json_answer(response: Any, content_type: str) -> Mapping[str, Any] | None:
    """A 200 answer's JSON object (read whole, up to 256 KiB), or None when it is not
    JSON, not an object, too long or not all of it came."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if not (kind == "application/json" or kind.endswith("+json")):
        return None
    timeouts, transport = transport_errors()
    data = b""
    unread: tuple[type[BaseException], ...] = (ValueError, *timeouts, *transport)
    try:
        async for piece in response.aiter_bytes():
            data += piece
            if len(data) > _ANSWER_LIMIT:
                return None
        body = json.loads(data)
    except unread:
        return None
    return body if isinstance(body, Mapping) else None


def error_in_answer(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The error object in a 200 JSON answer (``{"error": {...}}``, ``{"error": "text"}``,
    or vLLM's ``{"object": "error", "message": ...}``), or None when it holds none."""
    error = body.get("error")
    if isinstance(error, Mapping) and error:
        return error
    if isinstance(error, str) and error.strip():
        return {"message": error}
    return body if body.get("object") == "error" else None


def completion_as_chunk(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """A whole ``chat.completion`` (from a server that ignored ``stream: true``) as the
    one ``chat.completion.chunk`` that carries all of it, or None if it is not one.

    The message becomes the delta and its tool calls get their list positions as
    indexes. The body was read whole, so a completion without a finish reason ended
    all the same: ``"tool_calls"`` if it has tool calls, else ``"stop"``.
    """
    choices = body.get("choices")
    if body.get("object") != "chat.completion" and not (
        isinstance(choices, list)
        and choices
        and all(isinstance(c, Mapping) and isinstance(c.get("message"), Mapping) for c in choices)
    ):
        return None
    if not isinstance(choices, list):
        return None  # the chunk reader would call it malformed; not a completion to take
    converted: list[Any] = []
    for choice in choices:
        if not isinstance(choice, Mapping) or not isinstance(choice.get("message"), Mapping):
            converted.append(choice)  # left for the chunk reader to refuse as malformed
            continue
        delta = dict(choice["message"])
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            delta["tool_calls"] = [
                {**call, "index": i} if isinstance(call, Mapping) else call
                for i, call in enumerate(calls)
            ]
        reason = choice.get("finish_reason") or ("tool_calls" if calls else "stop")
        converted.append({"index": choice.get("index", 0), "delta": delta, "finish_reason": reason})
    chunk = {key: value for key, value in body.items() if key != "choices"}
    chunk["choices"] = converted
    return chunk
