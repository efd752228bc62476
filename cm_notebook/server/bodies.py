"""The REST API's request and response bodies, as pydantic models.

Requests are validated with these models (unknown fields are refused), and
``/cm/api/openapi.json`` is generated from the same models, so the documented shapes
are the enforced ones. Responses reuse the package's own data models
(:class:`~cm_notebook.model.Message`, :class:`~cm_notebook.model.ContextMetadata`, ...)
so a REST client sees exactly what a notebook sees.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool

from .._session_approvals import MAX_REASON_CHARS
from .._unicode import control_characters
from ..approvals import ApprovalRecord
from ..fsm import State
from ..model import Branch, ContextMetadata, Message, ToolCall
from ..params import MAX_MESSAGE_CHARS

__all__ = [
    "Approve",
    "BranchList",
    "CompareQuery",
    "ContextDetail",
    "ContextList",
    "CreateBranch",
    "CreateContext",
    "Decided",
    "Decisions",
    "DecisionsQuery",
    "Deny",
    "EditMessage",
    "ErrorBody",
    "EventsQuery",
    "FieldError",
    "MessagePage",
    "MessagesQuery",
    "Regenerate",
    "SendMessage",
    "SkippedContext",
    "Stop",
    "ToolCallQuery",
    "ToolCallView",
    "TurnStarted",
    "UpdateBranch",
    "UpdateContext",
]

MAX_PAGE = 500
#: The longest system prompt: as long as a message, since every reply's request carries it.
MAX_SYSTEM_CHARS = MAX_MESSAGE_CHARS
#: How many tags a context may have, and how long each may be (characters).
MAX_TAGS = 50
MAX_TAG_CHARS = 100
#: The longest branch description (characters): a few sentences. Every branch's is in
#: the context's metadata, which is rewritten and copied on each change of a branch.
MAX_DESCRIPTION_CHARS = 1_000
#: The largest signal sequence number a client may name (18 digits).
MAX_SEQ = 10**18 - 1


class _Body(BaseModel):
    # A field the API does not know is a client bug worth reporting, not ignoring.
    model_config = ConfigDict(extra="forbid")


class _Query(BaseModel):
    # Query strings carry the server's own parameters too (e.g. ``token``): ignore them.
    model_config = ConfigDict(extra="ignore")


# Keys that name the API's own arguments rather than generation parameters.
_RESERVED_PARAMS = frozenset(
    {
        "text",
        "branch",
        "provider",
        "metadata",
        "message_id",
        "name",
        "from_message",
        "switch",
        "description",
        "system",
    }
)


def _no_reserved_keys(params: dict[str, Any]) -> dict[str, Any]:
    clash = sorted(_RESERVED_PARAMS & set(params))
    if clash:
        raise ValueError(
            f"{clash} are not generation parameters; give them beside 'params' where the "
            "request has them"
        )
    return params


GenerationParameters = Annotated[dict[str, Any], AfterValidator(_no_reserved_keys)]


def _printable_title(title: str | None) -> str | None:
    # Line breaks and tabs are whitespace, folded into spaces; other control characters
    # (NUL, escape sequences) would garble every list that shows the title.
    if title is not None:
        bad = control_characters(" ".join(title.split()))
        if bad:
            raise ValueError(
                f"a title cannot contain control characters (found {', '.join(bad[:5])}); "
                "remove them"
            )
    return title


SystemPrompt = Annotated[
    str | None,
    Field(
        max_length=MAX_SYSTEM_CHARS,
        description=f"A system prompt, at most {MAX_SYSTEM_CHARS:,} characters.",
    ),
]
Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS)]


# -- requests ----------------------------------------------------------------------------


class CreateContext(_Body):
    """``POST /contexts``: a new context."""

    title: Annotated[str | None, AfterValidator(_printable_title)] = Field(
        None,
        max_length=500,
        description="Left out, empty or white space only: 'Untitled' (then named after "
        "the first message).",
    )
    provider: str | None = Field(
        None,
        description="A provider spec such as 'local' or 'openai:gpt-4o-mini' "
        "(default: the server's default provider); its name is case-insensitive, stored "
        "lower-case.",
    )
    provider_options: dict[str, Any] = Field(
        default_factory=dict, description="Stored with the context; never secrets."
    )
    system: SystemPrompt = Field(None, description="The context's system prompt.")
    tags: list[Tag] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description=f"At most {MAX_TAGS}, each of 1 to {MAX_TAG_CHARS} characters.",
    )


class UpdateContext(_Body):
    """``PATCH /contexts/{context_id}``: change the title."""

    title: Annotated[str, AfterValidator(_printable_title)] = Field(min_length=1, max_length=500)


class SendMessage(_Body):
    """``POST /contexts/{context_id}/messages``: a user message, then a reply."""

    text: str = Field(min_length=1)
    branch: str | None = Field(None, description="Default: the active branch.")
    params: GenerationParameters = Field(
        default_factory=dict, description="temperature, max_tokens, top_p, seed, stop, model"
    )


class EditMessage(_Body):
    """``POST /contexts/{context_id}/messages/{message_id}/edit``: replace a user message."""

    text: str = Field(min_length=1)
    branch: str | None = Field(None, description="The new branch (default: '<active>-edit-N').")
    params: GenerationParameters = Field(default_factory=dict)


class Regenerate(_Body):
    """``POST /contexts/{context_id}/regenerate``: a new reply to the last prompt."""

    branch: str | None = None
    params: GenerationParameters = Field(default_factory=dict)


class Retry(_Body):
    """``POST /contexts/{context_id}/retry``: ask again for a reply that failed for good."""

    branch: str | None = None


class Stop(_Body):
    """``POST /contexts/{context_id}/stop``: stop the reply being generated."""

    branch: str | None = None


class CreateBranch(_Body):
    """``POST /contexts/{context_id}/branches``: fork a branch."""

    name: str
    from_message: str | None = Field(None, description="Default: the active branch's head.")
    switch: StrictBool = Field(False, description="Make the new branch the active one.")
    description: str = Field(
        "",
        max_length=MAX_DESCRIPTION_CHARS,
        description=f"What the branch is for, at most {MAX_DESCRIPTION_CHARS:,} characters.",
    )
    system: SystemPrompt = Field(None, description="Its own system prompt (default: inherit).")
    provider: str | None = Field(None, description="Its own provider spec (default: inherit).")
    params: GenerationParameters = Field(
        default_factory=dict, description="Its own generation parameters."
    )


class UpdateBranch(_Body):
    """``PUT /contexts/{context_id}/branches/{branch}``: switch to it, or change it."""

    active: StrictBool | None = Field(None, description="true: make it the active branch.")
    system: SystemPrompt = Field(
        None, description="Its own system prompt; null: inherit the context's; '': none."
    )


class Approve(_Body):
    """``POST /contexts/{context_id}/tools/approve``: approve pending tool calls."""

    tool_call_id: str | None = Field(None, description="Default: every pending call.")
    branch: str | None = Field(None, description="Only the calls of this branch.")
    arguments: dict[str, Any] | None = Field(
        None,
        description="Edited arguments (with a tool_call_id only), checked against the "
        "tool's schema; for a call waiting in a kernel, by that kernel.",
    )
    remember: Literal["once", "session", "context"] = Field(
        "once",
        description="'session': also allow the tool from now on for the server's session "
        "of the context; 'context': for every process that opens the context.",
    )


class Deny(_Body):
    """``POST /contexts/{context_id}/tools/deny``: deny pending tool calls."""

    tool_call_id: str | None = None
    branch: str | None = None
    reason: str = Field(
        "denied by the user",
        max_length=MAX_REASON_CHARS,
        description=f"What the model is told, at most {MAX_REASON_CHARS:,} characters.",
    )


class DecisionsQuery(_Query):
    """The query of ``GET /contexts/{context_id}/tools/decisions``."""

    branch: str | None = Field(None, description="Only this branch's decisions.")


class ToolCallQuery(_Query):
    """The query of ``GET /contexts/{context_id}/tools/{tool_call_id}``."""

    branch: str | None = Field(
        None,
        description="Look only on this branch (needed when calls on two branches share the id).",
    )


class Decisions(BaseModel):
    """The approval audit log: every decision on a tool call, oldest first."""

    decisions: list[ApprovalRecord]


class MessagesQuery(_Query):
    """The query of ``GET /contexts/{context_id}/messages``."""

    branch: str | None = None
    before: str | None = None
    limit: int = Field(50, ge=1, le=MAX_PAGE)


class CompareQuery(_Query):
    """The query of ``GET /contexts/{context_id}/compare``."""

    branch: list[str] = Field(default_factory=list, description="Repeat for each branch.")


class EventsQuery(_Query):
    """The query of ``GET /contexts/{context_id}/events``."""

    since: int | None = Field(None, ge=0, le=MAX_SEQ)


# -- responses ---------------------------------------------------------------------------


class SkippedContext(BaseModel):
    """A folder among the contexts that could not be read as one (damaged, written by a
    newer cm_notebook, or not a context at all)."""

    id: str = Field(
        description="The folder's name: the context's id, if it is a valid one (bytes of "
        "a name that are not UTF-8 shown as \\xNN escapes)."
    )
    message: str = Field(description="What is wrong with it and what to do.")
    reason: str = Field(description="The kind of error, e.g. CorruptDataError.")


class ContextList(BaseModel):
    """Every stored context, most recently updated first."""

    contexts: list[ContextMetadata]
    skipped: list[SkippedContext] = Field(
        default_factory=list,
        description="The folders that are not readable contexts, left out of 'contexts' "
        "(DELETE /contexts/{id} removes a damaged one).",
    )


class ContextDetail(BaseModel):
    """One context: its metadata and what its session is doing."""

    context: ContextMetadata
    state: State = Field(
        description="The state of the active branch (never Idle while a turn runs on it)."
    )
    states: dict[str, State] = Field(
        description="The state of every branch (never Idle while a turn runs on it)."
    )
    running: dict[str, str] = Field(description="Branch name -> id of the turn running on it.")
    pending_tool_calls: list[ToolCall]
    last_seq: int = Field(description="The sequence number of the last signal.")
    streams: int = Field(0, description="Events streams of this context open on the server.")


class MessagePage(BaseModel):
    """A page of a branch's messages, oldest first."""

    branch: str
    messages: list[Message]
    has_more: bool = Field(description="Older messages exist: ask with before=<first id>.")


class TurnStarted(BaseModel):
    """A reply was started; follow it on the events stream."""

    turn_id: str
    branch: str


class BranchList(BaseModel):
    """A context's branches."""

    active: str
    branches: list[Branch]


class ToolCallView(BaseModel):
    """One tool call: its status, result, and the reply that asked for it."""

    tool_call: ToolCall
    message_id: str | None = None
    branch: str | None = None


class Decided(BaseModel):
    """The tool calls that were approved or denied."""

    tool_calls: list[ToolCall]


class FieldError(BaseModel):
    """One problem with a request's body or query."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error response: what was wrong and what to do, never a traceback."""

    message: str
    reason: str = Field(description="The kind of error, e.g. BusyError or ValidationError.")
    errors: list[FieldError] = Field(default_factory=list)
