"""Anthropic SDK and transport exceptions, and in-stream ``error`` events, as
cm_notebook's provider errors: transient (retried) or permanent (the user must act),
each saying what went wrong and what to do, and never holding the API key.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from functools import cache

import anthropic

from ..errors import (
    PermanentProviderError,
    ProviderError,
    ProviderSetupError,
    TransientProviderError,
)
from ..redact import scrub_exception
from ._errors import (
    connection_error,
    error_message_from_body,
    from_http_status,
    malformed_response_error,
    retry_after_from_headers,
    timeout_error,
)

__all__ = [
    "KEY_ENV",
    "MODELS_HINT",
    "error_from_event",
    "translatable_errors",
    "translate_sdk_error",
]

_PROVIDER = "anthropic"
#: The environment variable the SDK reads the API key from.
KEY_ENV = "ANTHROPIC_API_KEY"
#: Where to find the model names a key can use.
MODELS_HINT = (
    "List the models your key can use with `anthropic.Anthropic().models.list()` or see "
    "https://docs.anthropic.com/en/docs/about-claude/models."
)

# Error types (``error.type`` in an error body) that are worth retrying. Anything else,
# e.g. ``invalid_request_error`` or ``authentication_error``, needs the user.
_TRANSIENT_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)
# Error types that fail every request made with this key and model, whatever it asks:
# the same as HTTP 401, 403 and 404 (a sweep stops the variant).
_SETUP_ERROR_TYPES = frozenset({"authentication_error", "permission_error", "not_found_error"})
_SETUP_HINTS = {
    "authentication_error": f"Check the key in {KEY_ENV} (or the api_key=... given).",
    "permission_error": "This key may not use this model or feature; check its workspace.",
    "not_found_error": MODELS_HINT,
}


def error_from_event(body: object) -> ProviderError:
    """The error to raise for an in-stream ``error`` event such as
    ``{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}``.

    Overload, rate-limit, timeout and internal API errors are transient; a refused key,
    a permission denied or an unknown model are setup errors (as their HTTP statuses
    401, 403 and 404 are); all other types (``invalid_request_error``, ...) are
    permanent.
    """
    error = body.get("error") if isinstance(body, Mapping) else None
    kind = error.get("type") if isinstance(error, Mapping) else None
    message = error_message_from_body(body, "no message")
    if kind in _TRANSIENT_ERROR_TYPES:
        return TransientProviderError(
            f"{_PROVIDER}: {kind} during the stream: {message}", provider=_PROVIDER
        )
    text = f"{_PROVIDER}: the API reported {kind or 'an error'} during the stream: {message}"
    if kind not in _SETUP_ERROR_TYPES:
        return PermanentProviderError(text, provider=_PROVIDER)
    hint = _SETUP_HINTS.get(str(kind), "")
    return ProviderSetupError(f"{text.rstrip('.')}. {hint}".rstrip(), provider=_PROVIDER)


@cache
def _transport_errors() -> tuple[type[BaseException], ...]:
    # The SDK wraps errors raised while *sending*, but a connection that breaks while we
    # iterate the body surfaces as the HTTP library's own error. Which library that is
    # depends on the SDK release (httpx, later httpx2), so accept whichever is installed.
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found.append(module.TransportError)
    return tuple(found)


@cache
def translatable_errors() -> tuple[type[BaseException], ...]:
    """Exactly what :func:`translate_sdk_error` understands."""
    # Exactly what translate_sdk_error() understands; anything else is a bug and must
    # surface as itself rather than be disguised as a provider failure.
    return (
        anthropic.AnthropicError,
        json.JSONDecodeError,
        UnicodeDecodeError,
        *_transport_errors(),
    )


def translate_sdk_error(
    exc: BaseException,
    *,
    model: str | None = None,
    timeout: float | None = None,
    mid_stream: bool = False,
    where: str | None = None,
) -> ProviderError | None:
    """The cm_notebook error for an SDK or transport exception, or None if it is not one.

    ``mid_stream``: raised while reading the reply's events (a connection lost then
    broke the stream; it did not fail to connect). ``where``: the API's address, its
    credentials redacted, named when no connection could be made (default: Anthropic's).
    The caller raises the result ``from exc``. Messages never include the API key.
    """
    scrub_exception(exc)  # kept as __cause__: a server may echo the key in its body
    if isinstance(exc, anthropic.APIStatusError):
        if exc.status_code < 400:
            # An ``error`` event inside a 200 stream: the SDK raises it as a status error.
            return error_from_event(exc.body)
        return from_http_status(
            exc.status_code,
            exc.api_message or error_message_from_body(exc.body, exc.message),
            provider=_PROVIDER,
            retry_after=retry_after_from_headers(exc.response.headers),
            model=model,
            api_key_env=KEY_ENV,
            list_models_hint=MODELS_HINT,
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return timeout_error(provider=_PROVIDER, timeout=timeout)
    if isinstance(exc, anthropic.APIConnectionError):
        # Newer SDK releases wrap a transport error met while reading the stream too.
        cause = exc.__cause__ or exc
        broke = "the stream broke: " if mid_stream else f"{where or 'api.anthropic.com'}: "
        return connection_error(
            provider=_PROVIDER, detail=f"{broke}{type(cause).__name__}: {cause}"
        )
    if isinstance(exc, anthropic.APIResponseValidationError):
        return malformed_response_error(provider=_PROVIDER, detail=exc.message)
    if isinstance(exc, _transport_errors()):
        return connection_error(
            provider=_PROVIDER, detail=f"the stream broke: {type(exc).__name__}: {exc}"
        )
    if isinstance(exc, json.JSONDecodeError):
        return malformed_response_error(provider=_PROVIDER, detail=f"bad JSON in an event: {exc}")
    if isinstance(exc, UnicodeDecodeError):
        detail = f"an event is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        return malformed_response_error(provider=_PROVIDER, detail=detail)
    if isinstance(exc, anthropic.AnthropicError):
        # E.g. the SDK could not load credentials from its config files.
        return PermanentProviderError(f"{_PROVIDER}: {exc}", provider=_PROVIDER)
    return None
