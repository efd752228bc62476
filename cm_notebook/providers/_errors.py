"""Shared helpers that translate provider failures into cm_notebook's two error classes.

Every provider ends in one of two outcomes when something goes wrong:

* :class:`~cm_notebook.errors.TransientProviderError`: worth retrying (rate limits,
  5xx, timeouts, connection resets, a stream cut mid-reply, a garbled chunk), with
  ``retry_after`` in seconds when the server said how long to wait;
* :class:`~cm_notebook.errors.PermanentProviderError`: retrying will not help (bad or
  missing key, unknown model, invalid request); the message says what to do. Those
  that no request can get past, whatever it asks (a missing or refused key, an unknown
  model or address, an account out of credit), are
  :class:`~cm_notebook.errors.ProviderSetupError`, so that a sweep stops asking that
  provider after the first.

The helpers here *build* the error; the caller raises it with ``raise ... from exc`` so
the SDK's exception stays attached as ``__cause__``. They never look at, store or print
API keys.

The HTTP status classification and ``Retry-After`` parsing come from
:mod:`cm_notebook.retry`, so the state machine and the providers agree on what is
transient.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Literal

from .. import retry as _retry
from ..errors import (
    PermanentProviderError,
    ProviderError,
    ProviderSetupError,
    TransientProviderError,
)

__all__ = [
    "classify_http_status",
    "connection_error",
    "error_event",
    "error_message_from_body",
    "from_http_status",
    "is_event_stream",
    "keepalive_timeout_error",
    "malformed_response_error",
    "not_an_event_stream_error",
    "parse_retry_after",
    "provider_bug_error",
    "retry_after_from_headers",
    "stream_cut_error",
    "timeout_error",
]

Classification = Literal["transient", "permanent"]


def classify_http_status(status: int) -> Classification:
    """``"transient"`` for 408, 409, 425, 429 and 5xx; ``"permanent"`` for other errors.

    The rules are :func:`cm_notebook.retry.classify_http_status`'s, so providers and the
    retry loop agree; a status outside 100-599 (a broken server) counts as transient.
    """
    if not 100 <= status <= 599:
        return "transient"
    return _retry.classify_http_status(status)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or HTTP date), else None."""
    return _retry.parse_retry_after(value)


def retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait according to response headers, or None if they do not say.

    Honours ``retry-after-ms`` (sent by OpenAI, more precise) before ``retry-after``.
    ``headers`` should look keys up case-insensitively (httpx headers do); a plain dict
    is tried with lower-case keys.
    """
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0.0 and value != float("inf"):
            return value
    return parse_retry_after(headers.get("retry-after"))


def error_message_from_body(body: object, fallback: str) -> str:
    """The human-readable message in an error body, or ``fallback``.

    Understands the shapes OpenAI-compatible servers and Anthropic use:
    ``{"error": {"message": ...}}``, ``{"message": ...}`` and ``{"error": "..."}``.
    """
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            message = error.get("message")
            if isinstance(message, str) and message.strip():
                return message.strip()
        elif isinstance(error, str) and error.strip():
            return error.strip()
        message = body.get("message")
        if isinstance(message, str) and message.strip():
            return message.strip()
    elif isinstance(body, str) and body.strip():
        page = html_page_text(body)
        return page if page is not None else body.strip()[:500]
    return fallback


_HTML_START = re.compile(r"\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", re.I | re.S)
_PAGE_TEXT_LIMIT = 300


def html_page_text(body: str) -> str | None:
    """What an HTML error page says, for an error message; None if ``body`` is not one.

    A proxy or load balancer in front of the server (nginx, Cloudflare) answers a 5xx
    with a web page, whose first few hundred characters are markup and styles: the
    page's title (or else its visible text) is what tells the user what happened.
    """
    if not _HTML_START.match(body):
        return None
    reader = _PageReader()
    try:
        reader.feed(body)
        reader.close()
    except AssertionError:  # html.parser's way of giving up on broken markup
        pass
    said = reader.title() or reader.text()
    if not said:
        return "the server answered with an HTML page that says nothing readable"
    if len(said) > _PAGE_TEXT_LIMIT:
        said = said[: _PAGE_TEXT_LIMIT - 3].rstrip() + "..."
    return f"the server answered with an HTML error page: {said!r}"


class _PageReader(HTMLParser):
    # The title and the visible text of a page; scripts and styles are not text.
    _HIDDEN = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._open: list[str] = []
        self._title: list[str] = []
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN or tag == "title":
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        if "title" in self._open:
            self._title.append(data)
        elif not self._HIDDEN.intersection(self._open):
            self._text.append(data)

    def title(self) -> str:
        return " ".join(" ".join(self._title).split())

    def text(self) -> str:
        return " ".join(" ".join(self._text).split())


def from_http_status(
    status: int,
    message: str,
    *,
    provider: str,
    retry_after_header: str | None = None,
    retry_after: float | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    list_models_hint: str | None = None,
    error_codes: tuple[object, ...] = (),
) -> ProviderError:
    """The error to raise for an HTTP error ``status`` with the server's ``message``.

    ``error_codes``: what the error body calls the error (its ``code`` and ``type``).

    - 401: permanent, "set ``api_key_env``" (or "check the key");
    - 403: permanent, "check the key has access to ``model``";
    - 404: permanent, naming ``model`` and how to list models (``list_models_hint``);
    - 402 (DeepSeek's "Insufficient Balance", OpenRouter's "Insufficient credits"),
      429 ``insufficient_quota`` (OpenAI) and Anthropic's "credit balance is too low":
      permanent, "add credit or check the plan" (not a rate limit to wait out);
      these are :class:`~cm_notebook.errors.ProviderSetupError`: every request
      to this provider, model and key fails the same way;
    - 400 / 422 and other 4xx: permanent, with the provider's own message; a request
      longer than the context window says to go on from a shorter conversation, or,
      when the conversation fits but not with the reply's ``max_tokens`` on top, to
      send with a smaller ``max_tokens`` (the largest that fits, when the server says);
    - 408, 409, 425, 429, 5xx: transient, with ``retry_after`` taken from the
      ``retry_after`` argument or parsed from ``retry_after_header``.
    """
    detail = message.strip() or f"HTTP {status}"
    # The server's message as a sentence to go on from: one period of its own dropped,
    # so "... tokens." does not read "... tokens.. To fix".
    told = detail[:-1] if detail.endswith(".") and not detail.endswith("..") else detail
    prefix = f"{provider}: "
    if _out_of_credit(status, detail, error_codes):
        text = (
            f"{prefix}the account is out of credit or quota (HTTP {status}): {told}. To "
            "fix: add credit to the account, or check its plan and billing; until then "
            "every request fails the same way."
        )
        return ProviderSetupError(text, status_code=status, provider=provider)
    if classify_http_status(status) == "transient":
        wait = retry_after if retry_after is not None else parse_retry_after(retry_after_header)
        what = "rate limited" if status == 429 else "server error"
        if status in (408, 409, 425):
            what = "request not accepted yet"
        text = f"{prefix}{what} (HTTP {status}): {detail}"
        if wait is not None:
            text += f"; the server asks to retry after {wait:g} s"
        return TransientProviderError(text, status_code=status, provider=provider, retry_after=wait)
    if status == 401:
        todo = (
            f"set {api_key_env} to a valid API key (or build the provider with api_key=...)"
            if api_key_env
            else "check the API key"
        )
        text = f"{prefix}authentication failed (HTTP 401): {told}. To fix: {todo}."
    elif status == 403:
        target = f" to model {model!r}" if model else ""
        text = (
            f"{prefix}permission denied (HTTP 403): {told}. To fix: check the key and "
            f"that its account or project has access{target}."
        )
    elif status == 404:
        if model:
            text = f"{prefix}model {model!r} was not found (HTTP 404): {told}."
            text += f" {list_models_hint}" if list_models_hint else " Check the model name."
        else:
            text = f"{prefix}not found (HTTP 404): {told}. Check the base URL."
    elif status in (400, 422):
        too_long = _TOO_LONG.search(detail) is not None
        room = _completion_room(detail)
        text = f"{prefix}the request was rejected (HTTP {status}): {told if too_long else detail}"
        if room is not None:
            text = f"{prefix}the request was rejected (HTTP {status}): {told}. {room}"
        elif too_long:
            text += (
                ". The conversation no longer fits the model's context window, so every "
                "send on this branch will fail the same way: branch from an earlier "
                "message or edit one to go on with less"
            )
            if provider == "local":
                text += ", or give the model a larger window (provider_options={'n_ctx': 8192})"
    else:
        text = f"{prefix}request failed (HTTP {status}): {detail}"
    # The key, the model or the address is wrong: no other request would get past it.
    kind = ProviderSetupError if status in (401, 403, 404) else PermanentProviderError
    return kind(text, status_code=status, provider=provider)


def _out_of_credit(status: int, message: str, codes: tuple[object, ...]) -> bool:
    # Payment Required; OpenAI's 429 that no wait will lift; Anthropic's 400.
    if status == 402:
        return True
    if status == 429:
        return any(isinstance(code, str) and code in _QUOTA_CODES for code in codes)
    return status == 400 and _NO_CREDIT.search(message) is not None


_QUOTA_CODES = frozenset({"insufficient_quota"})  # OpenAI's code and type for it
_NO_CREDIT = re.compile(r"credit balance is too low", re.IGNORECASE)


#: How servers say a request is longer than the model's context window (llama.cpp,
#: OpenAI, vLLM, Anthropic).
_TOO_LONG = re.compile(
    r"exceeds the available context size|maximum context length|context length exceeded"
    r"|context_length_exceeded|prompt is too long",
    re.IGNORECASE,
)


def _completion_room(message: str) -> str | None:
    """What to do when ``message`` blames the reply's token allowance (``max_tokens``)
    rather than the conversation: the input alone fits the context window, but not
    with that many tokens for the reply on top. None when it does not say so.

    vLLM says "'max_tokens' or 'max_completion_tokens' is too large: 8192. This
    model's maximum context length is 4096 tokens and your request has 12 input
    tokens", or (older releases, and OpenAI) "... you requested 8204 tokens (12 in the
    messages, 8192 in the completion)"; Anthropic "input length and `max_tokens`
    exceed context limit: 197000 + 8192 > 200000".
    """
    numbers: tuple[int, int, int] | None = None  # (input, asked for the reply, window)
    if found := _MAX_TOKENS_TOO_LARGE.search(message):
        numbers = (int(found["input"]), int(found["asked"]), int(found["window"]))
    elif found := _IN_THE_COMPLETION.search(message):
        # "(12 in the messages, 300 in the functions, 8192 in the completion)"
        parts = {part: int(count) for count, part in _COUNTED_PART.findall(found["parts"])}
        asked = parts.pop("completion", None)
        if asked is not None:
            numbers = (sum(parts.values()), asked, int(found["window"]))
    elif found := _INPUT_PLUS_MAX_TOKENS.search(message):
        numbers = (int(found["input"]), int(found["asked"]), int(found["window"]))
    if numbers is None:
        if _BLAMES_MAX_TOKENS.search(message) and _TOO_LONG.search(message):
            return (
                "The reply asked for more tokens than the model's context window leaves "
                "after the conversation. To fix: send again with a smaller max_tokens"
            )
        return None
    given, asked, window = numbers
    if given >= window:
        return None  # the conversation itself no longer fits: nothing to lower
    return (
        f"The conversation ({given:,} tokens) fits the model's context window "
        f"({window:,} tokens), but not with max_tokens={asked} on top. To fix: send "
        f"again with max_tokens at most {window - given}"
    )


_MAX_TOKENS_TOO_LARGE = re.compile(
    r"max_(?:completion_)?tokens'? (?:or '?max_completion_tokens'? )?is too large: "
    r"(?P<asked>\d+)\.? This model's maximum context length is (?P<window>\d+) tokens and "
    r"your request has (?P<input>\d+) input tokens",
    re.IGNORECASE,
)
_IN_THE_COMPLETION = re.compile(
    r"maximum context length is (?P<window>\d+) tokens.*?\((?P<parts>[^()]*\bin the "
    r"completion)\)",
    re.IGNORECASE | re.DOTALL,
)
_COUNTED_PART = re.compile(r"(\d+) in the (\w+)", re.IGNORECASE)
_INPUT_PLUS_MAX_TOKENS = re.compile(
    r"input length and .?max_tokens.? exceed context limit: (?P<input>\d+) \+ "
    r"(?P<asked>\d+) > (?P<window>\d+)",
    re.IGNORECASE,
)
_BLAMES_MAX_TOKENS = re.compile(r"max_tokens|max_completion_tokens|in the completion", re.I)


def timeout_error(
    *, provider: str, timeout: float | None = None, detail: str | None = None
) -> TransientProviderError:
    """A request or read that took longer than the client's timeout."""
    after = f" after {timeout:g} s" if timeout is not None else ""
    extra = f": {detail}" if detail else ""
    return TransientProviderError(
        f"{provider}: the request timed out{after}{extra}", provider=provider
    )


def keepalive_timeout_error(
    *, provider: str, seconds: float, first: bool, received: bool, constructor: str
) -> TransientProviderError:
    """A stream kept open with keep-alive messages alone (event-stream comments such as
    ``: keep-alive``, Anthropic's ``ping`` events) for ``seconds``: no text, reasoning,
    tool call, usage or finish reason. A :func:`timeout_error`, retried as a read
    timeout is, though bytes kept coming.

    ``first``: before the reply's first piece, when ``first_token_timeout`` bounds the
    wait and keep-alives are the server saying the model is still working (a thinking
    model may take minutes); else mid-reply, when ``timeout`` bounds it. ``received``:
    some of the reply came before (kept by the caller, but incomplete).
    ``constructor``: the provider's class name, to say how to give it a larger limit.
    """
    if first:
        return timeout_error(
            provider=provider,
            detail=(
                f"the server sent only keep-alive messages for {seconds:g} s and no reply "
                "yet (the model may still be working on it: a thinking model can take "
                "minutes before its first words). To fix: give it longer with a larger "
                "first_token_timeout (provider_options={'first_token_timeout': ...} when "
                f"the session is created, or {constructor}(..., first_token_timeout=...)); "
                "if a model that answers fast keeps failing so, check the server"
            ),
        )
    before = "; the text received before them is incomplete" if received else ""
    return timeout_error(
        provider=provider,
        detail=(
            f"the server sent only keep-alive messages for {seconds:g} s mid-reply, no "
            f"more of the reply{before}. To fix: if the model needs longer between pieces "
            "of its reply, give the provider a larger timeout (provider_options="
            f"{{'timeout': ...}} when the session is created, or {constructor}(..., "
            "timeout=...)); if it keeps happening, check the server: it holds the "
            "connection open but stopped answering"
        ),
    )


def connection_error(*, provider: str, detail: str) -> TransientProviderError:
    """The connection could not be made, or was reset."""
    return TransientProviderError(f"{provider}: connection failed: {detail}", provider=provider)


def error_event(*, provider: str, message: str) -> TransientProviderError:
    """An error the server reported inside a stream it had begun (no HTTP status to
    judge it by): retried, as such errors (overload, rate limits) usually pass."""
    return TransientProviderError(
        f"{provider}: the server reported an error mid-reply: {message}", provider=provider
    )


def stream_cut_error(*, provider: str, detail: str | None = None) -> TransientProviderError:
    """The stream ended before the reply was finished (no finish reason)."""
    extra = f" ({detail})" if detail else ""
    return TransientProviderError(
        f"{provider}: stream cut mid-reply{extra}; the text received so far is incomplete",
        provider=provider,
    )


def malformed_response_error(*, provider: str, detail: str) -> TransientProviderError:
    """The server sent a chunk or body that could not be understood."""
    return TransientProviderError(
        f"{provider}: malformed response from the server: {detail}", provider=provider
    )


def is_event_stream(content_type: str | None) -> bool:
    """Whether a response's ``Content-Type`` is ``text/event-stream`` (any parameters,
    any case), or absent: a server that names no type gets the benefit of the doubt."""
    if not content_type or not content_type.strip():
        return True
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def not_an_event_stream_error(
    *, provider: str, content_type: str, base_url: str | None = None, hint: str = ""
) -> ProviderSetupError:
    """A streamed request answered with something else (an HTML page, one JSON body).

    A :class:`~cm_notebook.errors.ProviderSetupError`: the same URL gives the same
    page on every retry, and to every request. The usual cause is a
    base URL that points at the wrong place (a web UI, a router's page, a path that
    misses a part); ``hint`` says what the right one looks like.
    """
    where = f"the server at {base_url}" if base_url else "the server"
    kind = content_type.strip()[:100]
    text = (
        f"{provider}: {where} did not answer with an event stream (Content-Type "
        f"{kind!r}, not 'text/event-stream'), so it is not serving the {provider} API "
        "there. To fix: check the base URL"
    )
    return ProviderSetupError(f"{text}{hint}.", provider=provider)


def provider_bug_error(provider: str, exc: BaseException) -> PermanentProviderError:
    """What a turn fails with when a provider's code raised anything but ProviderError:
    a bug in the provider, the reply failed for good (``exc`` kept as ``__cause__`` by
    the caller). That includes SystemExit (a client library calling ``sys.exit()``):
    let through, it would end the event loop it runs on, and with it every session of
    the process (or the kernel)."""
    if isinstance(exc, SystemExit):
        return PermanentProviderError(
            f"provider {provider!r} called sys.exit({exc.code!r}) while answering: the reply "
            "failed and the session goes on; fix or replace the provider",
            provider=provider,
        )
    return PermanentProviderError(
        f"internal error in provider {provider!r}: {type(exc).__name__}: {exc}",
        provider=provider,
    )
