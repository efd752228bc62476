"""The provider protocol: one async generator of chunks per request.

The provider step of the send path (session -> turn runner -> state machine ->
**provider** -> store -> signals): the turn runner builds a :class:`ChatRequest` and
reads the chunks; it never sees an SDK. A provider turns a :class:`ChatRequest` (the
conversation so far, the tools on offer and generation parameters) into a stream of
:data:`StreamChunk` values. Providers
raise only :class:`~cm_notebook.errors.TransientProviderError` (worth retrying) or
:class:`~cm_notebook.errors.PermanentProviderError` (needs the user); SDK and HTTP
errors are translated at this boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..model import Message

__all__ = [
    "ChatRequest",
    "Finish",
    "Provider",
    "ReasoningBlock",
    "ReasoningDelta",
    "RefusalDelta",
    "StreamChunk",
    "TextDelta",
    "ToolCallRequest",
    "ToolSpec",
    "Usage",
]


# Chunks check their fields when made: a provider that builds a wrong one fails in its
# own code, which the turn reports as a bug in that provider (PermanentFailure, with
# retry() open), instead of failing later, far from the cause, inside the engine.


def _require(chunk: object, name: str, value: object, kind: type) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise TypeError(f"{type(chunk).__name__}.{name} must be {kind.__name__}, got {value!r}")


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply's text."""

    text: str

    def __post_init__(self) -> None:
        if type(self.text) is not str:  # once per chunk: the exact check is the cheap one
            _require(self, "text", self.text, str)


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning (its "thinking"), streamed before the answer.

    Kept on the reply (``metadata.reasoning``), apart from its text: DeepSeek's and
    llama.cpp's ``reasoning_content``, vLLM's and OpenRouter's ``reasoning``,
    Anthropic's ``thinking`` blocks. ``field_name`` is the JSON field it arrived in
    (``reasoning_content``, ``reasoning``; empty for Anthropic's blocks): recorded with
    the reply (``metadata.reasoning_field``), as servers take reasoning back only in
    the field they send it in.
    """

    text: str
    field_name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if type(self.text) is not str:
            _require(self, "text", self.text, str)


@dataclass(frozen=True)
class ReasoningBlock:
    """A whole reasoning block as the API must be sent it back (Anthropic's format).

    ``type`` is ``thinking`` (``thinking`` text and its ``signature``) or
    ``redacted_thinking`` (encrypted ``data``). Emitted when the block ends; its text
    came before as :class:`ReasoningDelta` pieces. Recorded on the reply
    (``metadata.reasoning_blocks``) and sent back, in order, at the start of the
    assistant turn, which APIs that think with tools require.
    """

    type: str
    thinking: str = ""
    signature: str = ""
    data: str = ""

    def __post_init__(self) -> None:
        for name in ("type", "thinking", "signature", "data"):
            _require(self, name, getattr(self, name), str)

    def as_json(self) -> dict[str, str]:
        """The block as the Messages API takes it back."""
        if self.type == "redacted_thinking":
            return {"type": self.type, "data": self.data}
        return {"type": self.type, "thinking": self.thinking, "signature": self.signature}


@dataclass(frozen=True)
class RefusalDelta:
    """A piece of a refusal (OpenAI's ``delta.refusal``): the model declined to answer.

    Stored as the reply's text, so it is seen wherever replies are, with the reply
    marked ``metadata.refusal = True``.
    """

    text: str

    def __post_init__(self) -> None:
        _require(self, "text", self.text, str)


@dataclass(frozen=True)
class ToolCallRequest:
    """The model asks to call a tool. ``arguments_json`` is the raw JSON text it produced;
    the tools layer parses and validates it (and reports errors back to the model)."""

    id: str
    name: str
    arguments_json: str

    def __post_init__(self) -> None:
        for name in ("id", "name", "arguments_json"):
            _require(self, name, getattr(self, name), str)


@dataclass(frozen=True)
class Usage:
    """Token counts for the request, reported once (usually at the end)."""

    input_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens"):
            _require(self, name, getattr(self, name), int)
            if getattr(self, name) < 0:
                raise ValueError(f"Usage.{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Finish:
    """The reply ended normally. ``reason`` is e.g. ``stop``, ``length`` or ``tool_calls``.

    ``request_id`` is the id the provider gave the request, if any (OpenAI's completion
    id, Anthropic's message id): recorded as the reply's provenance. It is not part of
    the chunk's equality: two finishes for the same reason are the same finish.
    """

    reason: str
    request_id: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _require(self, "reason", self.reason, str)
        if self.request_id is not None:
            _require(self, "request_id", self.request_id, str)


StreamChunk = (
    TextDelta | ReasoningDelta | ReasoningBlock | RefusalDelta | ToolCallRequest | Usage | Finish
)
"""One item of a provider's reply stream (a *chunk*; the bus's items are *signals*)."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool as offered to the model: name, description and JSON schema of arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ChatRequest:
    """Everything a provider needs for one reply.

    ``messages`` is the active path, root first; a system prompt, if any, is its first
    message with role ``system``. ``params`` holds generation parameters such as
    ``temperature``, ``max_tokens``, ``seed`` or ``model`` (overriding the spec's model).
    """

    messages: Sequence[Message]
    tools: Sequence[ToolSpec] = ()
    params: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """A model backend. Registered under a name in the ``cm_notebook.providers`` group.

    A provider should also declare ``parameters``, the set of generation parameter
    names its requests may carry (``temperature``, ``max_tokens``...): a session then
    refuses any other name before sending, with the close match, instead of storing a
    typo and ignoring it. Without it, every name is passed through. (Optional, so it
    is not part of the protocol that ``isinstance`` checks.)

    A provider that fills in parameters a request leaves out (a default ``seed`` or
    ``max_tokens``) should also have ``complete_params(params) -> dict``, returning the
    parameters it sends for ``params``: the reply then records, and its request hash
    covers, what was asked of the model rather than only what the user typed (see
    :func:`complete_params`). Optional too.

    A provider whose ``model`` is not what builds it again from a spec should have a
    ``spec`` string that does (the local provider's ``local:/path/to/model.gguf``, as
    against its ``model``, the file's stem): a session created with the instance
    stores it, and builds the provider from it when the context is reopened. Optional.
    """

    #: Registry name, e.g. ``"local"``, ``"openai"``.
    name: str
    #: The model this provider talks to by default.
    model: str

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Yield the chunks of one reply; ends after a :class:`Finish`."""
        ...

    async def aclose(self) -> None:
        """Release connections, servers or model memory."""
        ...


# The former name of StreamChunk, so code written against it still imports.
ProviderEvent = StreamChunk


def complete_params(provider: Provider, params: Mapping[str, Any]) -> dict[str, Any]:
    """The generation parameters ``provider`` sends for ``params``: ``params`` with the
    provider's own defaults added for those left out (its ``complete_params``, if it
    has one; else ``params`` as they are).

    Two requests the model sees alike then record alike, whether a default was typed
    or not, and a reply's provenance says how it was sampled (seed included).
    """
    complete = getattr(provider, "complete_params", None)
    if complete is None:
        return dict(params)
    filled = complete(params)
    if not isinstance(filled, dict):
        raise TypeError(
            f"{type(provider).__name__}.complete_params() returned "
            f"{type(filled).__name__}, not a dict of parameters"
        )
    return filled
