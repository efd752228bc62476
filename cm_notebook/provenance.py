"""Provenance: what exactly produced a reply, recorded with it.

Every assistant message's metadata records the provider, model and parameters of its
request, and also:

* ``seed``: the ``seed`` generation parameter of the request (None: none was sent);
* ``request_id``: the id the provider gave the request (OpenAI's completion id,
  Anthropic's message id, the local server's id; the scripted fake numbers its
  requests), None if it gave none;
* ``request_hash``: ``sha256:`` and the hex digest of the request's canonical JSON
  (:func:`canonical_request`): the messages as sent (role, content, tool calls, tool
  call ids, and the reasoning sent back with a reply: its ``reasoning_content`` or
  signed thinking blocks, see :mod:`cm_notebook.providers._reasoning_back`), the tools
  on offer, the generation parameters, the provider's name and the model. Two replies
  with the same hash were asked the very same thing, so a difference between them is
  the model's. Keys never enter a request (parameters refuse secrets), so none enter
  the hash;
* ``endpoint``: the server that answered when it is not the provider's default: the
  provider's ``base_url`` (given, from the session's provider options, or from an
  environment variable such as ``OPENAI_BASE_URL``), its credentials (a
  ``user:password@`` part, ``?sig=``-like query values) redacted (:func:`endpoint_of`).
  None for a provider's own API and for providers without one (``local``, ``scripted``).
  Another model of the session's provider is sent to the session's ``base_url`` too, so
  a reply stored as ``gpt-4o-mini`` with an endpoint was answered by that server, not
  by OpenAI. Not part of the request hash: the same request to another server hashes
  the same, so their replies can be compared.

A user message written from a ``%%cm`` cell records ``variables``: the kernel variables
that ``{name}`` fields put into it, each as its type, a short repr and a hash of the
full repr (:func:`describe_value`), never the whole value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ._prefix_cache import PrefixCache, SizedCache, message_chars
from ._url_secrets import redact_url
from .model import Message
from .providers._reasoning_back import reasoning_sent_back
from .providers.base import ChatRequest
from .redact import redact_text

__all__ = [
    "canonical_request",
    "describe_value",
    "describe_variables",
    "endpoint_of",
    "provenance_of",
    "request_hash",
    "with_provenance",
]

_REDACTED_PREFIX = 10_000  # characters of a repr redacted before the start is shown
_SHORT = 60


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


# Canonical JSON of messages already seen, by object: a session hands the same finished
# Message objects to every request of a conversation, so each is encoded once and a
# turn's hash costs one pass of sha256 rather than re-encoding the whole conversation.
# Keyed by id() with the object kept (an id is not reused while it is alive), checked
# against the fields it was made from (a message changed in place is encoded again).
# Bounded by the characters kept (the JSON and the message it keeps alive), not only by
# count: the cache outlives sessions, and a closed one's large messages must not stay.
_ENCODED: SizedCache[int, tuple[Message, tuple[Any, ...], str]] = SizedCache(kept=8192)


def _message_json(message: Message, sent_back: object = None) -> str:
    # ``sent_back``: the reasoning the request sends back with the message (None: none).
    if sent_back is not None:
        return _dumps({**json.loads(_message_json(message)), "reasoning": sent_back})
    calls = tuple((call.id, call.name, _dumps(call.arguments)) for call in message.tool_calls)
    fields = (message.role, message.content, message.tool_call_id, calls)
    known = _ENCODED.get(id(message))
    if known is not None and known[0] is message and known[1] == fields:
        return known[2]
    text = _dumps(
        {
            "role": message.role,
            "content": message.content,
            "tool_calls": [
                {"id": call.id, "name": call.name, "arguments": call.arguments}
                for call in message.tool_calls
            ],
            "tool_call_id": message.tool_call_id,
        }
    )
    # What the entry keeps alive: the JSON, the message, and the arguments' JSON in fields.
    weight = len(text) + message_chars(message) + sum(len(call[2]) for call in calls)
    _ENCODED.put(id(message), (message, fields, text), weight)
    return text


def canonical_request(request: ChatRequest, provider: str, model: str) -> str:
    """The request as canonical JSON text (sorted keys, no white space): an object with
    ``messages`` (role, content, tool calls, tool call id of each, and ``reasoning``
    where reasoning is sent back with it), ``model``, ``params`` (without ``model``),
    ``provider`` and ``tools`` (name, description, parameters)."""
    return (
        _OPENING.decode()
        + ",".join(
            _message_json(message, reasoning_sent_back(message, provider, model))
            for message in request.messages
        )
        + _canonical_tail(request, provider, model)
    )


def _canonical_tail(request: ChatRequest, provider: str, model: str) -> str:
    """What follows the messages in :func:`canonical_request`."""
    tools = [
        {"name": spec.name, "description": spec.description, "parameters": spec.parameters}
        for spec in request.tools
    ]
    params = {key: value for key, value in request.params.items() if key != "model"}
    # The keys in sorted order, as json.dumps(..., sort_keys=True) would write them.
    return (
        '],"model":'
        + _dumps(model)
        + ',"params":'
        + _dumps(params)
        + ',"provider":'
        + _dumps(provider)
        + ',"tools":'
        + _dumps(tools)
        + "}"
    )


# sha256 states after the messages of recent requests: a turn's request is the last
# one plus a few messages, so its hash feeds only those (see cm_notebook._prefix_cache).
_STATES: PrefixCache[Any] = PrefixCache()
_OPENING = b'{"messages":['


def _messages_state(messages: list[Message]) -> Any:
    # The sha256 state after '{"messages":[' and the messages' JSON, comma-separated.
    start, known = _STATES.longest(messages)
    state = known.copy() if known is not None else hashlib.sha256(_OPENING)
    for position in range(start, len(messages)):
        if position:
            state.update(b",")
        # surrogatepass: half of an emoji in memory hashes (stably) instead of failing.
        state.update(_message_json(messages[position]).encode("utf-8", "surrogatepass"))
    if start != len(messages):
        _STATES.keep(messages, state.copy())
    return state


def request_hash(request: ChatRequest, provider: str, model: str) -> str:
    """``sha256:<hex>`` of :func:`canonical_request`.

    Fed incrementally: the messages a recent request already had are not encoded and
    hashed again, so a turn's hash costs what it adds, not the length of the
    conversation.
    """
    messages = list(request.messages)
    if any(reasoning_sent_back(message, provider, model) is not None for message in messages):
        # Reasoning goes back (to this provider and model only): hashed whole, as its
        # messages' JSON depends on whom the request is for.
        state = hashlib.sha256(
            canonical_request(request, provider, model).encode("utf-8", "surrogatepass")
        )
        return "sha256:" + str(state.hexdigest())
    state = _messages_state(messages)
    state.update(_canonical_tail(request, provider, model).encode("utf-8", "surrogatepass"))
    digest: str = state.hexdigest()
    return "sha256:" + digest


def endpoint_of(provider: object) -> str | None:
    """Where ``provider`` sends its requests when that is not its default endpoint: its
    ``endpoint`` attribute if it has one, else its ``base_url``, shown by
    :func:`~cm_notebook._url_secrets.redact_url` (credentials, and path segments and
    query values shaped like keys, ``[REDACTED]``: it is written to disk); None when it
    has neither (no HTTP server at all) or when it is the provider's own API (its
    ``default_endpoint``, compared without a trailing slash, the case of the scheme and
    host, or a default port)."""
    url = getattr(provider, "endpoint", None)
    if url is None:
        url = getattr(provider, "base_url", None)
    if not isinstance(url, str) or not url.strip():
        return None
    default = getattr(provider, "default_endpoint", None)
    if isinstance(default, str) and _same_url(url.strip(), default):
        return None
    # Redacted before it is cut: a credential cut short is no longer recognised.
    return redact_url(url.strip())[:_ENDPOINT_CHARS]


def _same_url(url: str, other: str) -> bool:
    return _normal_url(url) == _normal_url(other)


def _normal_url(url: str) -> str:
    # Scheme and host in lower case, no default port, no trailing slash: the spellings
    # of one URL that a client sends to the same place.
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    scheme, host = scheme.lower(), host.lower()
    for name, port in (("https", ":443"), ("http", ":80")):
        if scheme == name and host.endswith(port):
            host = host[: -len(port)]
    return scheme + sep + host + (slash + path).rstrip("/")


_ENDPOINT_CHARS = 2000  # MessageMetadata.endpoint's bound


def with_provenance(
    message: Message,
    request: ChatRequest | None = None,
    provider: str | None = None,
    *,
    request_id: str | None = None,
) -> Message:
    """``message`` (a reply) with its provenance filled in: from ``request`` (asked of
    ``provider``) its ``seed`` and ``request_hash``; else the provider's ``request_id``."""
    fields: dict[str, Any]
    if request is not None:
        seed = request.params.get("seed")
        model = str(message.metadata.model)
        fields = {
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            "request_hash": request_hash(
                request, provider or str(message.metadata.provider), model
            ),
        }
    else:
        fields = {"request_id": request_id}
    metadata = message.metadata.model_copy(update=fields)
    return message.model_copy(update={"metadata": metadata})


def describe_value(value: object) -> str:
    """``<type> <short repr> sha256:<12 hex>``: which value fed a message, without it.

    The repr is cut to a few dozen characters and redacted (a key-shaped string shows as
    ``[REDACTED]``); the hash is of the whole repr, so equal values match.
    """
    try:
        full = repr(value)
    except Exception:  # a broken __repr__ must not fail the send
        full = f"<{type(value).__name__}>"
    digest = hashlib.sha256(full.encode("utf-8", "replace")).hexdigest()[:12]
    # Redacted before it is cut: a secret cut short no longer has the shape (or the
    # whole value) redaction knows, and its first characters would be kept. Only the
    # start is redacted, which is all that is shown (a huge repr costs no more).
    shown = redact_text(full[:_REDACTED_PREFIX])
    short = shown if len(shown) <= _SHORT else shown[: _SHORT - 1] + "…"
    return f"{type(value).__name__} {short} sha256:{digest}"


def describe_variables(names: list[str], namespace: Mapping[str, Any]) -> dict[str, str]:
    """:func:`describe_value` of each of ``names`` in ``namespace``."""
    return {name: describe_value(namespace[name]) for name in names if name in namespace}


def provenance_of(message: Message, variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A reply's provenance as plain JSON data (for a notebook cell's output metadata).

    ``variables`` are those of the user message it answers (see :func:`describe_value`).
    """
    meta = message.metadata
    return {
        "message_id": message.id,
        "status": message.status.value,
        "provider": meta.provider,
        "model": meta.model,
        "parameters": json.loads(json.dumps(meta.parameters, default=str)),
        "seed": meta.seed,
        "request_id": meta.request_id,
        "request_hash": meta.request_hash,
        "endpoint": meta.endpoint,
        "finish_reason": meta.finish_reason,
        "variables": dict(variables or {}),
        "created_at": message.created_at.isoformat(),
    }
