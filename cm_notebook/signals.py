"""The signals: small, numbered notices that tell views what changed.

Signals carry ids and deltas, never whole message contents: a view that wants a
message pulls it from the session. Each has a ``type`` (its kind, e.g.
``"ContentDelta"``; the names of :data:`SIGNAL_KINDS` are the wire names), a per-context
sequence number ``seq`` and the ``branch`` it concerns, if any. They are published and
numbered by the :class:`~cm_notebook.events.EventBus`; import them from
:mod:`cm_notebook.events`, which re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .approvals import ApprovalRecord
from .fsm import State
from .model import MessageStatus, Role, ToolCallStatus, UTCDateTime, utcnow
from .scores import Score

__all__ = [
    "EVENT_TYPES",
    "SIGNAL_KINDS",
    "BaseEvent",
    "BranchCreated",
    "BranchDeleted",
    "BranchSwitched",
    "BranchUpdated",
    "ContentDelta",
    "ContextUpdated",
    "ErrorReported",
    "Event",
    "MessageAdded",
    "MessageCompleted",
    "ReasoningDelta",
    "Resync",
    "ScoreUpdated",
    "StateChanged",
    "ToolApprovalRequested",
    "ToolCallResolved",
    "parse_event",
]


class BaseEvent(BaseModel):
    """Fields every signal has. ``seq``, ``context_id`` and ``at`` are set by the bus.

    Attributes:
        seq: per-context sequence number, increasing by one per published event.
        context_id: the context the event belongs to.
        branch: the branch it concerns, if any.
        at: when it was published (UTC).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = Field(0, ge=0)
    context_id: str = ""
    branch: str | None = None
    at: UTCDateTime = Field(default_factory=utcnow)


class StateChanged(BaseEvent):
    """The state machine of ``branch`` moved from ``old`` to ``new`` (one machine per branch)."""

    type: Literal["StateChanged"] = "StateChanged"
    old: State
    new: State
    turn_id: str | None = None


class MessageAdded(BaseEvent):
    """A message was added to the tree; pull it by ``message_id`` if you show it."""

    type: Literal["MessageAdded"] = "MessageAdded"
    message_id: str
    parent_id: str | None = None
    role: Role


class ContentDelta(BaseEvent):
    """More text for a message being generated.

    ``offset`` is the length of the message's text before this delta, so a view that
    holds ``offset`` characters appends ``text``; any other length means it missed a
    delta (or got one twice) and should re-pull the message.
    """

    type: Literal["ContentDelta"] = "ContentDelta"
    message_id: str
    text: str
    offset: int = Field(ge=0)


class ReasoningDelta(BaseEvent):
    """More reasoning ("thinking") for a reply being generated, apart from its text.

    A thinking model may reason for a long time before its first word of answer: these
    let a view show that reasoning as it grows. ``offset`` is the length of the reply's
    reasoning before this delta, as :attr:`ContentDelta.offset` is of its text; a view
    holding any other length missed one and re-pulls (the turn's
    :attr:`~cm_notebook.turn.Turn.reasoning`, or the message's ``metadata.reasoning``).
    A retry starts the reasoning again at offset 0.
    """

    type: Literal["ReasoningDelta"] = "ReasoningDelta"
    message_id: str
    text: str
    offset: int = Field(ge=0)


_DELTA_FIELDS = frozenset(("seq", "context_id", "branch", "at", "message_id", "text", "offset"))
_STAMPED = frozenset(("seq", "context_id", "at"))
_SignalT = TypeVar("_SignalT", bound=BaseEvent)
_set_attribute = object.__setattr__


def _unvalidated(cls: type[_SignalT], fields: dict[str, Any], fields_set: set[str]) -> _SignalT:
    # A signal of ``cls`` holding ``fields`` as they are: the four attributes pydantic's
    # ``model_construct`` sets, set directly (it looks up every field's default each
    # time, which cost a quarter of a streamed chunk). Only for trusted values.
    event = object.__new__(cls)
    _set_attribute(event, "__dict__", fields)
    _set_attribute(event, "__pydantic_fields_set__", fields_set)
    _set_attribute(event, "__pydantic_extra__", None)
    _set_attribute(event, "__pydantic_private__", None)
    return event


def trusted_delta(
    context_id: str,
    branch: str | None,
    at: datetime,
    message_id: str,
    text: str,
    offset: int,
    seq: int,
) -> ContentDelta:
    """A :class:`ContentDelta` from values the engine made itself, without validation.

    ``seq`` comes last, so that ``functools.partial`` of the rest is the bus's stamp.

    The bus builds one per streamed chunk: built as :func:`restamped` builds its copy.
    The result equals the validated model field by field
    (tests/test_signal_log_batches.py checks it on the installed pydantic). Only for
    trusted values: nothing here checks them.
    """
    fields = {
        "seq": seq,
        "context_id": context_id,
        "branch": branch,
        "at": at,
        "type": "ContentDelta",
        "message_id": message_id,
        "text": text,
        "offset": offset,
    }
    return _unvalidated(ContentDelta, fields, set(_DELTA_FIELDS))


def trusted_reasoning_delta(
    context_id: str,
    branch: str | None,
    at: datetime,
    message_id: str,
    text: str,
    offset: int,
    seq: int,
) -> ReasoningDelta:
    """A :class:`ReasoningDelta` from the engine's own values, as :func:`trusted_delta`."""
    fields = {
        "seq": seq,
        "context_id": context_id,
        "branch": branch,
        "at": at,
        "type": "ReasoningDelta",
        "message_id": message_id,
        "text": text,
        "offset": offset,
    }
    return _unvalidated(ReasoningDelta, fields, set(_DELTA_FIELDS))


def restamped(event: _SignalT, seq: int, context_id: str, at: datetime) -> _SignalT:
    """``event`` with the bus's ``seq``, ``context_id`` and ``at``, as
    ``event.model_copy(update=...)`` makes it, at a third of its cost (pydantic's copy
    goes through ``__copy__`` and copies each attribute; tests/test_events.py checks
    the two agree for every kind). A model with extras or private attributes (no
    signal has any) is copied by pydantic."""
    if event.__pydantic_extra__ is not None or event.__pydantic_private__ is not None:
        return event.model_copy(update={"seq": seq, "context_id": context_id, "at": at})
    fields = event.__dict__.copy()
    fields["seq"], fields["context_id"], fields["at"] = seq, context_id, at
    return _unvalidated(type(event), fields, event.__pydantic_fields_set__ | _STAMPED)


class MessageCompleted(BaseEvent):
    """A message reached its final status (complete, interrupted or error)."""

    type: Literal["MessageCompleted"] = "MessageCompleted"
    message_id: str
    status: MessageStatus


class ToolApprovalRequested(BaseEvent):
    """The model's reply ``message_id`` asks to run tools that need a decision."""

    type: Literal["ToolApprovalRequested"] = "ToolApprovalRequested"
    message_id: str
    tool_call_ids: tuple[str, ...]


class ToolCallResolved(BaseEvent):
    """A tool call changed status (approved, denied, done, failed); ``reason`` if denied.

    ``decision`` is the approval audit log's record when a person or an allow-list
    decided the call (who, when, edited arguments, the scope remembered); None for the
    approval policy's own decisions and for later changes (done, failed).
    """

    type: Literal["ToolCallResolved"] = "ToolCallResolved"
    tool_call_id: str
    status: ToolCallStatus
    reason: str | None = None
    decision: ApprovalRecord | None = None


class BranchCreated(BaseEvent):
    """A branch named ``branch`` was created with head ``head``."""

    type: Literal["BranchCreated"] = "BranchCreated"
    branch: str
    head: str | None = None


class BranchSwitched(BaseEvent):
    """The active branch is now ``branch``."""

    type: Literal["BranchSwitched"] = "BranchSwitched"
    branch: str


class BranchDeleted(BaseEvent):
    """The branch pointer ``branch`` was deleted (its messages stay in the tree)."""

    type: Literal["BranchDeleted"] = "BranchDeleted"
    branch: str


class BranchUpdated(BaseEvent):
    """Something about ``branch`` changed other than by a new message.

    ``changed`` names what: ``"head"`` (moved back by a rewind of regenerate or retry,
    now ``head``), ``"system_prompt"``, ``"params"``, ``"provider"``... Re-pull the
    branch (and its messages if the head moved).
    """

    type: Literal["BranchUpdated"] = "BranchUpdated"
    branch: str
    head: str | None = None
    changed: list[str] = Field(default_factory=list)


class ContextUpdated(BaseEvent):
    """The context's own metadata changed; ``changed`` names the fields.

    E.g. ``["title"]``, ``["system_prompt"]``, ``["tags"]``, or ``["metadata"]`` when
    another process changed it and the fields are not known. Re-pull the metadata.
    """

    type: Literal["ContextUpdated"] = "ContextUpdated"
    changed: list[str] = Field(default_factory=list)


class ErrorReported(BaseEvent):
    """Something went wrong that a view should show; ``kind`` says what sort.

    ``transient``: a request failed and will be retried (the message says when);
    ``permanent``: the turn stopped and needs the user (retry, edit, fix a key);
    ``tool``: a tool call failed (the model was told and the turn goes on);
    ``internal``: a bug or an I/O failure ended the turn.
    An Error comes just before the :class:`StateChanged` it explains (e.g. into
    ``TransientFailure`` or ``PermanentFailure``).
    """

    type: Literal["Error"] = "Error"
    message: str
    kind: Literal["transient", "permanent", "tool", "internal"]


class ScoreUpdated(BaseEvent):
    """The score of the assistant message ``message_id`` changed (rated, or scored by a
    function); ``score`` is the whole score as now stored, ``branch`` the branch the
    message is on (None: on none)."""

    type: Literal["ScoreUpdated"] = "ScoreUpdated"
    message_id: str
    score: Score


class Resync(BaseEvent):
    """Events were dropped for this subscriber: re-pull the state.

    ``seq`` is the bus's last sequence number when the resync was issued; the events
    that follow it have larger numbers. A ``Resync`` made for one subscriber is not in
    the history and other subscribers never see it.
    """

    type: Literal["Resync"] = "Resync"
    reason: str


Event: TypeAlias = Annotated[
    StateChanged
    | MessageAdded
    | ContentDelta
    | ReasoningDelta
    | MessageCompleted
    | ToolApprovalRequested
    | ToolCallResolved
    | BranchCreated
    | BranchSwitched
    | BranchDeleted
    | BranchUpdated
    | ContextUpdated
    | ErrorReported
    | ScoreUpdated
    | Resync,
    Field(discriminator="type"),
]
"""Any signal, discriminated by its ``type`` field."""

#: The publishable signal classes.
EVENT_TYPES: frozenset[type[BaseEvent]] = frozenset(
    {
        StateChanged,
        MessageAdded,
        ContentDelta,
        ReasoningDelta,
        MessageCompleted,
        ToolApprovalRequested,
        ToolCallResolved,
        BranchCreated,
        BranchSwitched,
        BranchDeleted,
        BranchUpdated,
        ContextUpdated,
        ErrorReported,
        ScoreUpdated,
        Resync,
    }
)

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

#: The names of every signal kind (the ``type`` field), e.g. ``"ContentDelta"``.
SIGNAL_KINDS: frozenset[str] = frozenset(
    str(cls.model_fields["type"].default) for cls in EVENT_TYPES
)


def parse_event(data: Mapping[str, Any] | str | bytes) -> Event:
    """Turn a dict (e.g. ``event.model_dump(mode="json")``) or JSON text into an event.

    Raises:
        pydantic.ValidationError: the data is not a known event.
    """
    if isinstance(data, (str, bytes)):
        return _ADAPTER.validate_json(data)
    return _ADAPTER.validate_python(data)


# The signal's wire name, the class's name before it was renamed (a class named
# ``...Error`` reads as an exception); kept so existing imports work.
Error = ErrorReported
