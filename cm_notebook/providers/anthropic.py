"""The Anthropic provider: Claude models through the official ``anthropic`` SDK.

Install with ``pip install 'cm_notebook[anthropic]'`` and set ``ANTHROPIC_API_KEY``::

    >>> from cm_notebook.providers import get_provider
    >>> claude = get_provider("anthropic:claude-haiku-4-5", max_tokens=2048)  # doctest: +SKIP

Three layers, each testable on its own: :func:`build_request` (a ``ChatRequest`` as the
arguments of ``messages.create``), :class:`AnthropicEventTranslator` (the SDK's raw
stream events as :data:`~cm_notebook.providers.StreamChunk` values; pure, so recorded
streams test it without a network) and :class:`AnthropicProvider` (the I/O, with SDK
exceptions translated by :func:`translate_sdk_error` and raised ``from`` the original).

We call ``messages.create(..., stream=True)`` rather than the SDK's higher-level
``messages.stream()`` helper: the raw events are a documented wire format that we can
record and replay, while the helper's accumulated snapshots are an SDK detail.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, get_args, get_origin

import anthropic
from anthropic.types import (
    ContentBlock,
    InputJSONDelta,
    RawContentBlockDelta,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    RawMessageStreamEvent,
    RedactedThinkingBlock,
    SignatureDelta,
    TextBlock,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
)
from anthropic.types import TextDelta as SDKTextDelta
from pydantic import TypeAdapter, ValidationError

from .._url_secrets import redact_url, remember_url_secrets
from ..errors import (
    InvalidInputError,
    ProviderError,
    ProviderSetupError,
)
from ..redact import remember_secret
from ._anthropic_errors import (
    KEY_ENV,
    MODELS_HINT,
    error_from_event,
    translatable_errors,
    translate_sdk_error,
)
from ._anthropic_request import (
    build_request,
    thinking_budget,
    to_anthropic_messages,
    to_anthropic_tools,
)
from ._errors import (
    is_event_stream,
    keepalive_timeout_error,
    malformed_response_error,
    not_an_event_stream_error,
    stream_cut_error,
    timeout_error,
)
from ._http_client import sdk_http_client, watch_progress
from ._progress_deadline import ProgressDeadline, Stalled, seconds_option
from .base import (
    ChatRequest,
    Finish,
    ReasoningBlock,
    ReasoningDelta,
    StreamChunk,
    TextDelta,
    ToolCallRequest,
    Usage,
)

__all__ = [
    "AnthropicEventTranslator",
    "AnthropicProvider",
    "build_request",
    "error_from_event",
    "map_stop_reason",
    "parse_wire_event",
    "to_anthropic_messages",
    "to_anthropic_tools",
    "translate_sdk_error",
]

_PROVIDER = "anthropic"

# Anthropic's stop reasons in the vocabulary of Finish.reason (OpenAI's words, which the
# rest of cm_notebook uses). Unknown future reasons pass through unchanged, as does
# ``refusal``: the model declining is not OpenAI's ``content_filter`` (the provider's
# filter), and the views say which it was.
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
}


def map_stop_reason(reason: str | None) -> str:
    """Anthropic's ``stop_reason`` as a :class:`Finish` reason (``end_turn`` -> ``stop``,
    ``max_tokens`` -> ``length``, ``tool_use`` -> ``tool_calls``, ...)."""
    if not reason:  # None, or "" from servers that send an empty string for none
        return "stop"
    return _STOP_REASONS.get(reason, reason)


# -- stream events -----------------------------------------------------------------------


@cache
def _event_adapter() -> TypeAdapter[RawMessageStreamEvent]:
    return TypeAdapter(RawMessageStreamEvent)


@dataclass
class _ToolBlock:
    id: str
    name: str
    initial: Mapping[str, object]
    parts: list[str] = field(default_factory=list)

    def arguments_json(self) -> str:
        if self.parts:
            return "".join(self.parts)
        # No input_json_delta at all: a tool without arguments, or a block whose input
        # arrived whole in content_block_start.
        return json.dumps(dict(self.initial)) if self.initial else "{}"


class AnthropicEventTranslator:
    """Turns the raw events of one Anthropic reply into stream chunks. Pure: no I/O.

    Feed events in order with :meth:`feed`, which returns the stream chunks each one
    produces, then call :meth:`finish` when the stream ends::

        translator = AnthropicEventTranslator()
        for raw in sdk_events:
            yield from translator.feed(raw)
        translator.finish()   # raises if message_stop never came

    Events may be SDK objects (``anthropic.types.RawMessageStreamEvent``) or their wire
    JSON as mappings. Text deltas pass straight through; a tool call's input arrives as
    ``input_json_delta`` fragments and is emitted as one :class:`ToolCallRequest` at its
    ``content_block_stop``; :class:`Usage` (input tokens from ``message_start``, output
    from ``message_delta``) and :class:`Finish` are emitted at ``message_stop``.
    Extended thinking: ``thinking_delta`` text passes through as :class:`ReasoningDelta`,
    and each ``thinking`` block (with its ``signature_delta``) or ``redacted_thinking``
    block is emitted whole, as :class:`ReasoningBlock`, at its ``content_block_stop``,
    to be sent back with the reply. ``ping`` and block types we do not use are skipped;
    an ``error`` event raises :func:`error_from_event`'s error.
    """

    def __init__(self) -> None:
        self._input_tokens = 0
        self._output_tokens = 0
        self._stop_reason: str | None = None
        self._request_id: str | None = None  # the message's id, for provenance
        self._tools: dict[int, _ToolBlock] = {}
        # Thinking blocks in progress by index: [thinking text pieces, signature].
        self._thinking: dict[int, tuple[list[str], list[str]]] = {}
        self.finished = False

    def feed(self, event: RawMessageStreamEvent | Mapping[str, Any]) -> list[StreamChunk]:
        """The stream chunks that ``event`` produces (often none).

        A known event that does not fit its schema (a ``message_delta`` without
        ``usage``, say) raises a transient "malformed response" error, whether it came
        as wire JSON or as an SDK object.
        """
        if isinstance(event, Mapping):
            parsed = parse_wire_event(event)
            if parsed is None:
                return []
            return self._feed(parsed)
        try:
            return self._feed(event)
        except (AttributeError, TypeError):
            # The SDK builds its event objects from the server's JSON without validating
            # them, so a field the server left out or mistyped surfaces here. Checked as
            # wire JSON is: an event that does not parse is the server's fault (this
            # raises); one that does means the fault is ours, reported as itself.
            to_dict = getattr(event, "to_dict", None)
            if callable(to_dict) and parse_wire_event(to_dict()) is None:
                # An event type this version does not know (the SDK builds those as a
                # message_start with no message): skipped, as wire JSON of it is.
                return []
            raise

    def _feed(self, event: RawMessageStreamEvent) -> list[StreamChunk]:
        if self.finished:
            return []
        if isinstance(event, RawMessageStartEvent):
            self._request_id = event.message.id or None
            usage = event.message.usage
            self._input_tokens = _total_input(
                usage.input_tokens, usage.cache_creation_input_tokens, usage.cache_read_input_tokens
            )
            self._output_tokens = _count(usage.output_tokens)
        elif isinstance(event, RawContentBlockStartEvent):
            return self._block_start(event)
        elif isinstance(event, RawContentBlockDeltaEvent):
            return self._block_delta(event)
        elif isinstance(event, RawContentBlockStopEvent):
            tool = self._tools.pop(event.index, None)
            if tool is not None:
                return [ToolCallRequest(tool.id, tool.name, tool.arguments_json())]
            thinking = self._thinking.pop(event.index, None)
            if thinking is not None:
                text, signature = ("".join(part) for part in thinking)
                return [ReasoningBlock("thinking", thinking=text, signature=signature)]
        elif isinstance(event, RawMessageDeltaEvent):
            self._stop_reason = event.delta.stop_reason or self._stop_reason
            # Both counts in message_delta are cumulative, so they replace, not add.
            self._output_tokens = _count(event.usage.output_tokens)
            if event.usage.input_tokens is not None:
                self._input_tokens = _total_input(
                    event.usage.input_tokens,
                    event.usage.cache_creation_input_tokens,
                    event.usage.cache_read_input_tokens,
                )
        elif isinstance(event, RawMessageStopEvent):
            self.finished = True
            if self._tools:
                # A tool block without content_block_stop: its JSON may be truncated.
                raise malformed_response_error(
                    provider=_PROVIDER, detail="message_stop before a tool_use block ended"
                )
            return [
                Usage(input_tokens=self._input_tokens, output_tokens=self._output_tokens),
                Finish(map_stop_reason(self._stop_reason), self._request_id),
            ]
        return []

    def _block_start(self, event: RawContentBlockStartEvent) -> list[StreamChunk]:
        block = event.content_block
        if isinstance(block, ToolUseBlock):
            self._tools[event.index] = _ToolBlock(block.id, block.name, block.input)
        elif isinstance(block, TextBlock) and block.text:
            return [TextDelta(block.text)]
        elif isinstance(block, ThinkingBlock):
            self._thinking[event.index] = ([block.thinking], [block.signature or ""])
            return [ReasoningDelta(block.thinking)] if block.thinking else []
        elif isinstance(block, RedactedThinkingBlock):
            # Encrypted reasoning: nothing to read, but it must go back as it came.
            return [ReasoningBlock("redacted_thinking", data=block.data)]
        return []

    def _block_delta(self, event: RawContentBlockDeltaEvent) -> list[StreamChunk]:
        delta = event.delta
        if isinstance(delta, SDKTextDelta):
            return [TextDelta(delta.text)] if delta.text else []
        if isinstance(delta, InputJSONDelta):
            tool = self._tools.get(event.index)
            if tool is None:
                raise malformed_response_error(
                    provider=_PROVIDER,
                    detail=f"input_json_delta for block {event.index}, which is not a tool_use",
                )
            tool.parts.append(delta.partial_json)
        elif isinstance(delta, (ThinkingDelta, SignatureDelta)):
            thinking = self._thinking.get(event.index)
            if thinking is None:
                raise malformed_response_error(
                    provider=_PROVIDER,
                    detail=f"{delta.type} for block {event.index}, which is not a thinking block",
                )
            if isinstance(delta, SignatureDelta):
                thinking[1][:] = [delta.signature]
            elif delta.thinking:
                thinking[0].append(delta.thinking)
                return [ReasoningDelta(delta.thinking)]
        return []

    def finish(self) -> None:
        """Call when the stream has ended; raises if it ended before ``message_stop``."""
        if not self.finished:
            raise stream_cut_error(provider=_PROVIDER, detail="no message_stop event")


def _models_by_type(alias: Any) -> dict[str, Any]:
    # The SDK models in a union alias by their ``type`` literal, e.g. "text" -> TextBlock.
    union = get_args(alias)[0] if get_origin(alias) is Annotated else alias
    return {
        name: model
        for model in get_args(union)
        for name in get_args(model.model_fields["type"].annotation)
    }


def _type_names(alias: Any) -> frozenset[str]:
    # The ``type`` literals of the SDK models in a union alias, e.g. {"text", "tool_use"}.
    return frozenset(_models_by_type(alias))


# What the installed SDK can parse. Newer event, block and delta types appear over time;
# the API docs ask clients to skip what they do not know, while a known event that does
# not parse is a server error.
_KNOWN_EVENT_TYPES = _type_names(RawMessageStreamEvent)
# An event's wire type -> its SDK class's name, as validation errors name it.
_EVENT_CLASS_NAMES = {
    name: model.__name__ for name, model in _models_by_type(RawMessageStreamEvent).items()
}
_KNOWN_INNER_TYPES = _type_names(ContentBlock) | _type_names(RawContentBlockDelta)


def parse_wire_event(data: Mapping[str, Any]) -> RawMessageStreamEvent | None:
    """Parse one event's wire JSON (the ``data:`` of an SSE event) into the SDK's model.

    Returns None for ``ping`` and for event, block or delta types newer than this code;
    raises :func:`error_from_event`'s error for an ``error`` event, and a transient
    "malformed response" error for a known event that does not parse.
    """
    kind = data.get("type")
    if kind == "ping":
        return None
    if kind == "error":
        raise error_from_event(data)
    try:
        return _event_adapter().validate_python(data)
    except ValidationError as exc:
        inner = data.get("content_block") or data.get("delta")
        inner_kind = inner.get("type") if isinstance(inner, Mapping) else None
        if kind not in _KNOWN_EVENT_TYPES or (
            isinstance(inner_kind, str) and inner_kind not in _KNOWN_INNER_TYPES
        ):
            return None
        raise malformed_response_error(
            provider=_PROVIDER, detail=f"bad {kind} event: {_what_is_wrong(kind, exc)}"
        ) from exc


def _what_is_wrong(kind: object, exc: ValidationError) -> str:
    # The union's first error is often another event class's: report the one of the
    # class this event's type names, with the field it is about ("usage: Field required").
    errors = exc.errors()
    name = _EVENT_CLASS_NAMES.get(kind) if isinstance(kind, str) else None
    mine = [error for error in errors if name and error["loc"][:1] == (name,)]
    error = (mine or errors)[0]
    where = ".".join(str(part) for part in error["loc"][1 if mine else 0 :])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _count(value: object) -> int:
    # A token count from an SDK object, which the SDK does not check: a wrong one fails
    # here, on the event that carried it, rather than at message_stop.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a token count is {type(value).__name__}, not int")
    return value


def _total_input(base: object, cache_creation: object, cache_read: object) -> int:
    # Anthropic counts cached prompt tokens separately; the prompt is all three together.
    return _count(base) + _count(cache_creation or 0) + _count(cache_read or 0)


# -- the provider ------------------------------------------------------------------------


class AnthropicProvider:
    """Claude through Anthropic's Messages API with streaming.

    ``api_key`` defaults to the ``ANTHROPIC_API_KEY`` environment variable; the key goes
    to the SDK client and nowhere else (not into ``repr``, logs or saved settings).
    ``max_tokens`` (required by the API) defaults to 1024 and may be overridden per
    request in ``ChatRequest.params``, as may ``model``.

    The SDK's own retries are switched off: cm_notebook's state machine retries
    transient failures with its policy, and two retry loops would multiply the waits.

    ``timeout`` (seconds, 60 by default) bounds connecting, each read (the time
    between bytes) and the time between the reply's events once it has begun;
    ``first_token_timeout`` (seconds, 600 by default, never less than ``timeout``) the
    wait from ``message_start`` to the reply's first block. A server that holds the
    stream open with ``ping`` events or comments alone, which restart the read timeout
    with every one, fails the reply after that limit with a transient timeout error
    saying which limit it was and how to raise it ("the server sent only keep-alive
    messages for N s ..."), retried as a read timeout is, the text before it kept as
    for other failures mid-reply. A server that sends nothing at all fails at the read
    timeout. Only the time spent waiting for the server counts (see
    :mod:`._progress_deadline`).

    A reply ends at ``message_stop``: the rest of the body is not waited for, so a
    server that keeps the connection open does not hold the turn until the read
    timeout. A 200 answer that is not ``text/event-stream`` (a ``base_url`` pointing
    at a web page) is a permanent error naming its content type. A byte-order mark at
    the very start of the body is skipped, as the SSE specification asks. Errors name
    the model the request asked for (``params["model"]`` when it overrides ``model``).
    """

    name = "anthropic"
    #: The API's own base URL: a ``base_url`` equal to it is no other server (see
    #: :func:`~cm_notebook.provenance.endpoint_of`).
    default_endpoint = "https://api.anthropic.com"
    #: The generation parameters a request may set (what :func:`build_request` sends);
    #: others, e.g. ``seed``, which the API lacks, are refused before sending.
    parameters = frozenset(
        {"model", "max_tokens", "temperature", "top_p", "top_k", "stop", "thinking"}
    )

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        first_token_timeout: float = 600.0,
        max_tokens: int = 1024,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InvalidInputError("AnthropicProvider needs a model name, e.g. 'claude-haiku-4-5'")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be a positive int, not {max_tokens!r}")
        timeout = seconds_option("timeout", timeout)
        first_token_timeout = seconds_option("first_token_timeout", first_token_timeout)
        self.model = model.strip()
        self.base_url = base_url
        #: The server requests go to when not Anthropic's API (recorded with each reply):
        #: ``base_url``, else ``ANTHROPIC_BASE_URL``, which the SDK reads here.
        self.endpoint: str | None = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.timeout = timeout
        self.first_token_timeout = first_token_timeout
        self.max_tokens = max_tokens
        key = api_key if api_key is not None else os.environ.get(KEY_ENV)
        remember_secret(api_key)  # a server may echo it in an error body: never stored
        remember_url_secrets(base_url or os.environ.get("ANTHROPIC_BASE_URL"))  # as the SDK
        # Only the SDK client holds the key; this object keeps no copy of it.
        try:
            self._client = anthropic.AsyncAnthropic(
                api_key=key or None,
                base_url=base_url,
                timeout=self.timeout,
                max_retries=0,
                # The SDK's own HTTP client, but with a stream's leading byte-order mark
                # dropped (the SDK's decoder would lose message_start to it) and events
                # sent without an "event:" line named by their type (the SDK skips them).
                http_client=sdk_http_client(
                    anthropic.DefaultAsyncHttpxClient, event_names=True, timeout=self.timeout
                ),
            )
        except anthropic.AnthropicError as exc:
            # Without a key the SDK looks for credential profiles on disk, and a profile
            # the user configured but which cannot be read fails right here.
            raise ProviderSetupError(
                f"{_PROVIDER}: could not load credentials: {exc}. Set {KEY_ENV} "
                "(or build the provider with api_key=...) to use a key instead",
                provider=_PROVIDER,
            ) from exc

    @classmethod
    def from_spec(cls, model: str | None, /, **options: Any) -> AnthropicProvider:
        """Registry hook for ``"anthropic:<model>"``; ``options`` go to the constructor."""
        if not model:
            raise InvalidInputError(
                "the anthropic provider needs a model: use 'anthropic:<model>', e.g. "
                f"'anthropic:claude-haiku-4-5'. {MODELS_HINT}"
            )
        return cls(model, **options)

    def __repr__(self) -> str:
        # A base_url may carry credentials (user:key@, ?sig=): never shown.
        where = f", base_url={redact_url(self.base_url)!r}" if self.base_url else ""
        return f"AnthropicProvider(model={self.model!r}{where})"

    def complete_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with the ``max_tokens`` sent when none is given (the
        constructor's, 1024 by default: the API requires one), plus the thinking
        budget when ``thinking`` asks for one, as :func:`build_request` sends it."""
        complete = dict(params)
        if not complete.get("max_tokens"):
            complete["max_tokens"] = self.max_tokens + thinking_budget(complete.get("thinking"))
        return complete

    def _has_credentials(self) -> bool:
        # A key set after construction (in a notebook, say) is taken up now.
        if not self._client_has_credentials() and (key := os.environ.get(KEY_ENV)):
            self._client = self._client.with_options(api_key=key)
        return self._client_has_credentials()

    def _client_has_credentials(self) -> bool:
        # getattr: older SDK releases have no auth_token/credentials attributes.
        return any(
            getattr(self._client, attr, None) is not None
            for attr in ("api_key", "auth_token", "credentials")
        )

    def _error(self, exc: BaseException, model: str, *, mid_stream: bool = False) -> ProviderError:
        # ``model`` is the one the request asked for (a request may override ours).
        # Where the SDK connects (base_url, ANTHROPIC_BASE_URL or the API), never its
        # credentials (user:password@, ?sig=...).
        where = redact_url(str(self._client.base_url).rstrip("/"))
        error = translate_sdk_error(
            exc, model=model, timeout=self.timeout, mid_stream=mid_stream, where=where
        )
        # translatable_errors() and translate_sdk_error() cover the same classes.
        assert error is not None, f"untranslated {type(exc).__name__}"
        return error

    def _stalled(self, stalled: Stalled, moved: bool) -> ProviderError:
        if not stalled.keepalives:  # silence: the read timeout's error, a moment early
            return timeout_error(provider=_PROVIDER, timeout=stalled.seconds)
        return keepalive_timeout_error(
            provider=_PROVIDER,
            seconds=stalled.seconds,
            first=stalled.first,
            received=moved,
            constructor="AnthropicProvider",
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Stream one reply; see :class:`AnthropicEventTranslator` for the events."""
        if not self._has_credentials():
            raise ProviderSetupError(
                f"{_PROVIDER}: no API key; set {KEY_ENV} (or build the provider with api_key=...)",
                provider=_PROVIDER,
            )
        kwargs = build_request(request, model=self.model, max_tokens=self.max_tokens)
        model = str(kwargs["model"])
        translator = AnthropicEventTranslator()
        try:
            sdk_stream = await self._client.messages.create(**kwargs, stream=True)
        except translatable_errors() as exc:
            raise self._error(exc, model) from exc
        # ``async with`` closes the HTTP response even when our consumer stops early
        # (cancellation, or a tool-call reply it does not need to finish reading), and
        # when we stop at message_stop.
        async with sdk_stream:
            content_type = sdk_stream.response.headers.get("content-type", "")
            if not is_event_stream(content_type):
                raise not_an_event_stream_error(
                    provider=_PROVIDER,
                    content_type=content_type,
                    base_url=redact_url(self.base_url) if self.base_url else None,
                    hint=" (the API's root, without /v1)",
                )
            # The timeouts bound the time between events too, not only between bytes:
            # ping events and comments would otherwise hold the turn forever.
            deadline = ProgressDeadline(self.timeout, self.first_token_timeout)
            watch_progress(sdk_stream.response, deadline)
            moved = False  # some of the reply came (text, reasoning, a tool call)
            catchable: tuple[type[BaseException], ...] = (Stalled, *translatable_errors())
            # Ends at message_stop, the reply's last event, not at the end of the body:
            # a server that keeps the connection open would hold the turn until the
            # read timeout.
            while not translator.finished:
                try:
                    event = await sdk_stream.__anext__()
                except StopAsyncIteration:
                    break
                except catchable as exc:
                    if deadline.stalled is not None:  # passed on as a connection error
                        raise self._stalled(deadline.stalled, moved) from None
                    raise self._error(exc, model, mid_stream=True) from exc
                # Every event but a ping (which the SDK skips) moves the reply on, an
                # event type this version does not know included; but message_start
                # comes at once, before the model has written anything: the wait for
                # the first block is still first_token_timeout's.
                kind = getattr(event, "type", None)
                if kind == "message_start":
                    deadline.returned()
                elif kind != "ping":
                    deadline.progressed()
                # Yield outside the try: errors thrown into us by the consumer are not
                # the SDK's and must not be translated.
                chunks = translator.feed(event)
                moved = moved or bool(chunks)
                for out in chunks:
                    yield out
        translator.finish()

    async def aclose(self) -> None:
        """Close the SDK client's connection pool."""
        await self._client.close()
