"""The data model: messages in a tree, named branches, and a context's metadata.

A conversation is a tree of :class:`Message` objects linked by ``parent_id``. A
:class:`Branch` is a named pointer to a head message; the branch's conversation is
the walk from the head up to the root. Forking, editing an earlier user message
(a new sibling) and regenerating a reply therefore add one message at most and
copy none.

All timestamps are timezone-aware UTC. Everything here round-trips through JSON
with ``model_dump(mode="json")`` / ``model_validate``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from ._json import check_depth
from .ids import new_id, validate_branch_name, validate_context_id, validate_message_id
from .redact import refuse_secrets

__all__ = [
    "ANSWERED",
    "SCHEMA_VERSION",
    "Branch",
    "ContextMetadata",
    "FailedAttempt",
    "Message",
    "MessageMetadata",
    "MessageStatus",
    "ProviderSettings",
    "Role",
    "StreamStats",
    "TokenUsage",
    "ToolCall",
    "ToolCallStatus",
    "answer_status",
    "refuse_secrets",
    "utcnow",
    "validate_labels",
]

#: The on-disk schema version this cm_notebook writes. Older versions are upgraded by
#: numbered steps in ``cm_notebook.store.schema``; newer ones are refused.
SCHEMA_VERSION = 3

Role = Literal["system", "user", "assistant", "tool"]

ContextId = Annotated[str, AfterValidator(validate_context_id)]
MessageId = Annotated[str, AfterValidator(validate_message_id)]
BranchName = Annotated[str, AfterValidator(validate_branch_name)]


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(timezone.utc)


def _aware(value: datetime) -> datetime:
    # Naive datetimes (e.g. from old files) are taken to be UTC rather than local time,
    # so the same file means the same instant on every machine.
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


UTCDateTime = Annotated[datetime, AfterValidator(_aware)]


class MessageStatus(str, Enum):
    """Where a message is in its life."""

    COMPLETE = "complete"
    STREAMING = "streaming"  # being generated right now (checkpointed about once a second)
    INTERRUPTED = "interrupted"  # generation stopped early: cancel or crash; text kept
    ERROR = "error"  # generation failed; metadata.error says why


class ToolCallStatus(str, Enum):
    """Where a tool call is in the approval workflow."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


def _bounded(value: Any) -> Any:
    # Free-form JSON (tool arguments, metadata) is checked before pydantic walks it:
    # nested past the limit, validating or dumping it would overflow Python's stack.
    check_depth(value)
    return value


class TokenUsage(_Model):
    """Token counts reported by the provider for one reply."""

    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class ToolCall(_Model):
    """A model's request to run a tool, and what became of it."""

    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict)
    status: ToolCallStatus = ToolCallStatus.PENDING
    reason: str | None = None  # why it was denied, or the error if it failed
    result: str | None = None  # the text sent back to the model

    _arguments_bounded = field_validator("arguments", mode="before")(_bounded)

    def __repr__(self) -> str:
        from .render import tool_call_repr  # render imports this module

        return tool_call_repr(self)


#: What a tool call can end as once it has a result: ran, failed, or was denied.
ANSWERED = frozenset({ToolCallStatus.DONE, ToolCallStatus.FAILED, ToolCallStatus.DENIED})


def answer_status(call: ToolCall) -> ToolCallStatus:
    """The outcome a ``tool`` message answering ``call`` records (``tool_status``).

    The call's own once it ended (done, failed, denied). A call still open (waiting,
    or running on another branch) has no result of its own, so the text answering it
    says it has none: an error, recorded as failed.
    """
    return call.status if call.status in ANSWERED else ToolCallStatus.FAILED


class StreamStats(_Model):
    """How the streaming of one reply went, measured by the session that received it.

    ``ttft_ms`` is the time from the request of the last attempt to its first text,
    of the answer or of the reasoning (None if no text came); ``duration_ms`` spans
    the whole reply, retries included. ``output_tokens`` comes from the provider's
    usage report when it gave one (``tokens_from_usage``), else it is the number of
    text chunks received (reasoning included), which is one token per chunk for most
    streaming APIs. ``tokens_per_second`` is the output tokens after the first over the
    time from the first text to the end (None with fewer than two chunks).
    ``attempts`` counts requests made for the reply (1 without retries).
    """

    ttft_ms: float | None = Field(None, ge=0)
    chunks: int = Field(0, ge=0)
    duration_ms: float = Field(0.0, ge=0)
    output_tokens: int = Field(0, ge=0)
    tokens_per_second: float | None = Field(None, ge=0)
    attempts: int = Field(1, ge=0)
    tokens_from_usage: bool = False


@with_config(ConfigDict(extra="allow"))
class FailedAttempt(TypedDict, total=False):
    """One try of a reply that failed and was retried (a plain dict in the metadata).

    ``error``: what went wrong, as the provider said it (redacted of secrets);
    ``text``: what the try had written before it failed (the model's own words, kept);
    ``status_code``: the HTTP status the provider answered with (None: none, e.g. a
    dropped connection); ``reasoning``: the try's reasoning text, only when it had
    some; ``usage``: the tokens the try used, when the provider reported them before
    it failed and another try followed (the try a reply ends with, failed or not, has
    its tokens in the reply's own ``usage``, so each try is counted once; records of
    tries made before it was kept have none). Every try this package records has
    ``error``, ``text`` and ``status_code``; the keys are optional only so that a
    record written elsewhere still reads, and keys it does not know are kept (a
    ``usage`` of another shape is set aside as ``usage_not_understood``).
    """

    error: str
    text: str
    status_code: int | None
    reasoning: str
    usage: TokenUsage


class MessageMetadata(BaseModel):
    """How a message came to be. Unknown keys (e.g. from imports) are kept, not dropped.

    ``system_prompt`` is the system prompt the reply was generated under (None: none),
    so a reply stays attributable after its branch's prompt changes.

    Provenance (see :mod:`cm_notebook.provenance`): ``seed`` is the request's seed,
    ``request_id`` the id the provider gave the request, ``request_hash`` the sha256 of
    the exact request's canonical JSON; ``endpoint`` the server the request went to when
    it was not the provider's default (its ``base_url``, credentials redacted; None: the
    provider's own API, or a provider without a ``base_url``); on a user message,
    ``variables`` names the kernel variables interpolated into it (name -> type, short
    repr and hash).

    What the model said besides its answer: ``reasoning`` is its reasoning ("thinking")
    text, apart from the answer (None: it gave none); ``reasoning_blocks`` the signed
    blocks Anthropic-format APIs must be sent back (``{"type": "thinking", "thinking",
    "signature"}`` or ``{"type": "redacted_thinking", "data"}``), in order;
    ``refusal`` is True when the reply's text is a refusal the API flagged as one
    (OpenAI's ``refusal``); ``reasoning_field`` the JSON field an OpenAI-compatible
    server streamed the reasoning in (``reasoning_content``, ``reasoning``; None for
    Anthropic's blocks). Reasoning goes back only to the provider and model that
    produced it (see :mod:`cm_notebook.providers`). ``tool_arguments_text`` keeps, by
    call id, the arguments of a tool call the model wrote as text that is no JSON object
    (a truncated or malformed object, an array): the call's ``arguments`` cannot hold it,
    and the model's output is never dropped. On a ``tool`` message, ``tool_status`` is
    the outcome of the call it answers (``done``, ``failed`` or ``denied``, see
    :func:`answer_status`): the result's own, which an edited result (a counterfactual)
    does not share with the call of the reply it answers; None on tool messages stored
    before it was recorded, whose call's status tells. ``failed_attempts`` lists, in
    order, the tries of a reply that failed and were retried (see
    :class:`FailedAttempt`; empty when the first try worked): the reply's text is its
    last try's. Left out of the JSON when empty, so files without them read as before.

    ``tool_status``, ``endpoint`` and ``failed_attempts`` were unknown keys, of any
    shape, before they were declared: on reading (a file, an import), a value of
    another shape (an ``endpoint`` that is no text, a ``tool_status`` other than
    ``done``, ``failed`` or ``denied``, a ``failed_attempts`` that is no list of
    records) is no error. It is kept as the unknown key ``<name>_not_understood`` and
    the field reads as empty (None, or ``[]``; ``failed_attempts: null`` is ``[]``).
    The package's own writes always fit these shapes.
    """

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)

    provider: str | None = None
    model: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    usage: TokenUsage | None = None
    duration_ms: float | None = Field(None, ge=0)
    finish_reason: str | None = None
    error: str | None = None
    system_prompt: str | None = None
    stats: StreamStats | None = None
    seed: int | None = None
    request_id: str | None = Field(None, max_length=500)
    request_hash: str | None = Field(None, max_length=200)
    endpoint: str | None = Field(None, max_length=2000)
    variables: dict[str, str] = Field(default_factory=dict)
    reasoning: str | None = None
    reasoning_blocks: list[dict[str, str]] = Field(default_factory=list)
    refusal: bool = False
    reasoning_field: str | None = None
    tool_arguments_text: dict[str, str] = Field(default_factory=dict)
    tool_status: ToolCallStatus | None = None
    failed_attempts: list[FailedAttempt] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _read_leniently(cls, data: Any) -> Any:
        # Bounded first: pydantic (and the shape checks below) walk the values.
        return _set_aside(_bounded(data))

    @model_serializer(mode="wrap")
    def _without_empty_additions(  # type: ignore[no-untyped-def]
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ):
        # Fields added after the first release of the file format are left out of the
        # JSON when empty: files and signals stay as they were for replies without them.
        # No return annotation: pydantic would describe the JSON by it.
        data: dict[str, Any] = handler(self)
        if info.mode_is_json():
            for name in _ADDED_METADATA:
                if name in data and not data[name]:
                    del data[name]
        return data


_ADDED_METADATA = (
    "reasoning",
    "reasoning_blocks",
    "refusal",
    "reasoning_field",
    "tool_arguments_text",
    "tool_status",
    "endpoint",
    # Kept from the start (as an undeclared key), and only when a try had failed.
    "failed_attempts",
)


#: The fields that were unknown keys before they were declared (see MessageMetadata):
#: a value of another shape is set aside under ``<name>_not_understood``.
_LENIENT_METADATA = ("tool_status", "endpoint", "failed_attempts")
_NOT_UNDERSTOOD = "_not_understood"
_lenient_shapes: dict[str, TypeAdapter[Any]] = {}


def _fits(name: str, value: Any) -> bool:
    if not _lenient_shapes:  # the model's own fields, constraints included
        fields = MessageMetadata.model_fields
        for field in _LENIENT_METADATA:
            # A type made at run time, which mypy cannot take for one.
            shape: Any = Annotated[fields[field].annotation, fields[field]]
            _lenient_shapes[field] = TypeAdapter(shape)
    try:
        read = _lenient_shapes[name].validate_python(value)
    except ValidationError:
        return False
    # A tool message records how the call ended; the other statuses are no outcome.
    return name != "tool_status" or read is None or read in ANSWERED


def _set_aside(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    kept = _attempts_set_aside(data)
    for name in _LENIENT_METADATA:
        if name not in kept:
            continue
        value = kept[name]
        if name == "failed_attempts" and value is None:
            kept = {key: item for key, item in kept.items() if key != name}
        elif not _fits(name, value):
            kept = {key: item for key, item in kept.items() if key != name}
            # An earlier value set aside under that name is not replaced.
            kept.setdefault(name + _NOT_UNDERSTOOD, value)
    return kept


def _attempts_set_aside(data: dict[str, Any]) -> dict[str, Any]:
    # A failed try's ``usage`` was a key of any shape before it was declared: one of
    # another shape is kept as ``usage_not_understood`` in its record, and the rest of
    # the record (its text, its error) still reads.
    attempts = data.get("failed_attempts")
    if not isinstance(attempts, list) or not any(_odd_usage(item) for item in attempts):
        return data
    fixed = []
    for item in attempts:
        if _odd_usage(item):
            item = {key: value for key, value in item.items() if key != "usage"} | {
                # An earlier value set aside under that name is not replaced.
                "usage" + _NOT_UNDERSTOOD: item.get("usage" + _NOT_UNDERSTOOD, item["usage"])
            }
        fixed.append(item)
    return {**data, "failed_attempts": fixed}


def _odd_usage(item: Any) -> bool:
    if not isinstance(item, dict) or "usage" not in item:
        return False
    try:
        TokenUsage.model_validate(item["usage"])
    except ValidationError:
        return True
    return False


class Message(_Model):
    """One message in a context's tree."""

    id: MessageId = Field(default_factory=lambda: new_id("m"))
    parent_id: MessageId | None = None
    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None  # for role "tool": which call this answers
    status: MessageStatus = MessageStatus.COMPLETE
    created_at: UTCDateTime = Field(default_factory=utcnow)
    metadata: MessageMetadata = Field(default_factory=MessageMetadata)

    def __repr__(self) -> str:
        from .render import message_repr  # render imports this module

        return message_repr(self)

    def _repr_html_(self) -> str:
        # Static HTML, so a saved notebook still shows the message without a kernel.
        from .render import message_html

        return message_html(self)


#: At most this many labels on one branch, keys of at most MAX_LABEL_KEY characters
#: (letters, digits, ``_``, ``-``, ``.``) and values of at most MAX_LABEL_VALUE.
MAX_LABELS = 32
MAX_LABEL_KEY = 40
MAX_LABEL_VALUE = 200
_LABEL_KEY = re.compile(r"[A-Za-z0-9_.\-]+")


def validate_labels(value: object) -> dict[str, str]:
    """Check a branch's labels: short keys, short one-line text values, no secrets.

    Labels are shown in listings and exported as columns, so they stay small and plain.
    Raises ValueError (InvalidInputError at the session's boundary) saying what to fix.
    This is also the rule labels are read back by, so it stays as loose as earlier
    versions were; where labels are given (``session.label()``, a sweep's labels), C1
    controls, line and paragraph separators and bidirectional overrides are refused too
    (:func:`cm_notebook._unicode.control_characters` with ``layout``).
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"labels must be a mapping of strings, got {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise ValueError(f"a branch takes at most {MAX_LABELS} labels, got {len(value)}")
    labels: dict[str, str] = {}
    for key, text in value.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key) or len(key) > MAX_LABEL_KEY:
            raise ValueError(
                f"label key {str(key)[:50]!r} is not valid: use 1-{MAX_LABEL_KEY} letters, "
                "digits, '_', '-' or '.'"
            )
        if not isinstance(text, str):
            raise ValueError(f"label {key!r} must be a string, got {type(text).__name__}")
        if len(text) > MAX_LABEL_VALUE or any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ValueError(
                f"label {key!r} is not valid: use one line of at most {MAX_LABEL_VALUE} characters"
            )
        labels[key] = text
    return refuse_secrets(labels, "branch labels")


class Branch(_Model):
    """A named head pointer into the message tree, with optional defaults of its own.

    ``system_prompt`` overrides the context's system prompt on this branch (None:
    inherit it; ``""``: no system prompt here). ``provider`` and ``params`` are the
    provider and generation parameters a send on this branch uses unless the call
    names its own (``params`` are validated like ``send()``'s keyword arguments).
    ``labels`` are free-form short ``key: value`` texts a study attaches to a branch
    (a sweep's ``sweep``, ``cell``, ``variant``, ``repeat``, ``input``; ``baseline``);
    see :func:`validate_labels`.
    """

    name: BranchName
    head: MessageId | None = None  # None: the branch has no messages yet
    forked_from: MessageId | None = None
    created_at: UTCDateTime = Field(default_factory=utcnow)
    description: str = ""
    system_prompt: str | None = None
    provider: ProviderSettings | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)

    # pydantic would otherwise print refused parameters (a key) in its error.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    @field_validator("params")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        return refuse_secrets(value, "branch parameters")

    @field_validator("labels", mode="before")
    @classmethod
    def _valid_labels(cls, value: Any) -> Any:
        return validate_labels(value)

    def __repr__(self) -> str:
        from .render import branch_repr  # render imports this module

        return branch_repr(self)


class ProviderSettings(_Model):
    """The default provider of a context: a spec string and parameters, never secrets.

    Parameters holding a secret (by name, shape or value: see :mod:`cm_notebook.redact`)
    are refused with an error that says where the secret is, never what it is.
    """

    # pydantic would otherwise print the refused parameters (the key) in its error.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    spec: str = "local"
    params: dict[str, Any] = Field(default_factory=dict)

    _params_bounded = field_validator("params", mode="before")(_bounded)

    @field_validator("params")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        return refuse_secrets(value, "provider settings")

    @field_validator("spec")
    @classmethod
    def _no_secret_in_spec(cls, value: str) -> str:
        # "openai:<key>" by mistake would be stored, and shown with every reply.
        refuse_secrets({"spec": value}, "provider settings")
        return value


class ContextMetadata(_Model):
    """Everything about a context except its messages: ``metadata.json``."""

    # A refused provider setting must not be printed back (it may be a key).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    id: ContextId = Field(default_factory=lambda: new_id("c"))
    title: str = "Untitled"
    created_at: UTCDateTime = Field(default_factory=utcnow)
    updated_at: UTCDateTime = Field(default_factory=utcnow)
    branches: dict[str, Branch] = Field(default_factory=lambda: {"main": Branch(name="main")})
    active_branch: BranchName = "main"
    provider: ProviderSettings = Field(default_factory=ProviderSettings)
    system_prompt: str | None = None
    tags: list[str] = Field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    # Fields from imported or migrated data that cm_notebook does not interpret.
    extra: dict[str, Any] = Field(default_factory=dict)

    _extra_bounded = field_validator("extra", mode="before")(_bounded)

    def __repr__(self) -> str:
        from .render import context_repr  # render imports this module

        return context_repr(self)

    @field_validator("branches")
    @classmethod
    def _keys_match_names(cls, value: dict[str, Branch]) -> dict[str, Branch]:
        for key, branch in value.items():
            if key != branch.name:
                raise ValueError(f"branch key {key!r} does not match its name {branch.name!r}")
        return value

    @model_validator(mode="after")
    def _active_branch_exists(self) -> ContextMetadata:
        if self.active_branch not in self.branches:
            raise ValueError(
                f"active branch {self.active_branch!r} is not one of {sorted(self.branches)}"
            )
        return self
