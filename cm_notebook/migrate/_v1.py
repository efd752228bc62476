"""Reading v1 records: liberal parsing of one context and its messages.

This layer only reads. It turns whatever JSON the v1 system (or a user's hand) left
behind into :class:`V1Context` / :class:`V1Message` values with normalised roles,
text content and aware timestamps, and it records what it could not read as
problems instead of raising. Which records a source holds (its shape) is decided in
``_sources``; the per-context files of the original are flattened in ``_pool``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from .._cli_advice import path_argument
from ..model import Role
from ._util import (
    canonical_json,
    json_text,
    replaced_note,
    sha256_text,
    too_deep,
    without_half_emojis,
)

__all__ = [
    "EXPECTED_SHAPES",
    "SourceKind",
    "V1Context",
    "V1Message",
    "V1Source",
    "not_v1_but_export",
    "parse_timestamp",
    "refused_if_too_deep",
]

SourceKind = Literal["contexts.json", "localstorage", "context-files"]

EXPECTED_SHAPES = (
    "a v1 contexts.json (a JSON list of contexts, or an object with a 'contexts' list), "
    "a v1 LocalStorage export ({'state': {'chats': [...], 'currentChatId': ...}, "
    "'version': N}), a v1 per-context file (an object with a 'message_pool' and "
    "'branches') or a folder of such files"
)


def not_v1_but_export(data: Any, name: object) -> str | None:
    """If ``data`` is a cm_notebook export (what ``cm-notebook export`` writes), why it
    is not migrated and what to do instead; else None.

    An export holds a ``messages`` list, which the most liberal v1 shape accepts: read as
    v1 it would lose its title, branches and everything else the import keeps. The
    format name is cm_notebook.export's ``EXPORT_FORMAT``, repeated so that reading v1
    data does not load the export machinery.
    """
    if not (isinstance(data, dict) and data.get("format") == "cm_notebook.export"):
        return None
    # Quoted, so that the command pasted into a shell works for a path with a space;
    # parse_v1's "<data>" (JSON given in memory) is no file, so it stays a placeholder.
    argument = name if name == "<data>" else path_argument(str(name))
    return (
        f"{name} is a cm_notebook export, not v1 data: import it with "
        f"`cm-notebook import {argument}` (in Python: cm_notebook.export.import_document)"
    )


# Used when no timestamp at all can be found and no file gives a better guess: an
# obviously "unknown" instant rather than the time of the migration, so that converting
# the same data twice gives the same result.
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# v1 and its front end were not consistent about field names; the first one present wins.
_CTX_CREATED = ("created_at", "createdAt", "created", "timestamp")
_CTX_UPDATED = ("updated_at", "updatedAt", "updated", "last_modified", "lastModified")
_CTX_TITLE = ("title", "name")
_CTX_SYSTEM = ("systemPrompt", "system_prompt")
_CTX_ACTIVE = (
    "active_branch",
    "activeBranch",
    "active_branch_name",
    "current_branch",
    "currentBranch",
)
_CTX_KNOWN = {
    "id",
    "messages",
    "branches",
    "tags",
    *_CTX_CREATED,
    *_CTX_UPDATED,
    *_CTX_TITLE,
    *_CTX_SYSTEM,
    *_CTX_ACTIVE,
}
_MSG_TIME = ("timestamp", "created_at", "createdAt", "time", "date")
_MSG_CONTENT = ("content", "text")
_MSG_ROLE = ("role", "sender", "author")
_MSG_TOOL_CALLS = ("tool_calls", "toolCalls")
_MSG_TOOL_CALL_ID = ("tool_call_id", "toolCallId")
_MSG_FUNCTION_CALL = ("function_call", "functionCall")  # OpenAI's older function calling
_MSG_KNOWN = {
    *_MSG_FUNCTION_CALL,
    "id",
    "model",
    *_MSG_TIME,
    *_MSG_CONTENT,
    *_MSG_ROLE,
    *_MSG_TOOL_CALLS,
    *_MSG_TOOL_CALL_ID,
}

# Role spellings seen in chat front ends. Anything else is kept as "user" and reported:
# dropping the message would lose data, and "user" is what a human-facing UI most often
# meant by an unlabelled speaker.
_ROLE_ALIASES: dict[str, Role] = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "gpt": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
    "tool_result": "tool",
    "error": "assistant",  # v1's UI showed failures as chat bubbles; see V1Message.is_error
}


@dataclass
class V1Message:
    """One v1 message, normalised but not yet placed in a tree."""

    position: int  # index in the v1 context's messages list (bad records included)
    raw: dict[str, Any]
    id: str | None  # the v1 id as a string, None if it had none
    role: Role
    content: str
    created_at: datetime | None
    tool_calls: list[Any] = field(default_factory=list)  # raw; converted later
    tool_call_id: str | None = None
    model: str | None = None
    v1_role: Any = None  # the original role when it was not already canonical (any JSON)
    parent_declared: bool = False  # the record said who its parent is (per-context files)
    parent_ref: str | None = None  # that parent's v1 id (None: a root)
    usage: tuple[int, int] | None = None  # (input, output) tokens, where v1 recorded them
    duration_ms: float | None = None
    is_error: bool = False  # v1 role "error": an assistant failure shown in the chat
    role_guessed: bool = False  # the v1 role was unknown; kept as "user"
    content_parts: list[Any] | None = None  # the original list when content was parts
    content_type: str | None = None  # the JSON type of content that was not text or parts
    raw_timestamp: Any = None  # the original timestamp when it could not be parsed
    extra: dict[str, Any] = field(default_factory=dict)  # fields cm_notebook has no use for


@dataclass
class V1Context:
    """One v1 context (or LocalStorage chat) with its readable messages."""

    position: int  # index in the source
    kind: SourceKind
    raw: Any
    source_sha256: str  # of the record's canonical JSON: detects re-migration
    fallback_time: datetime  # when nothing in the record says when it happened
    id: str | None = None
    title: str = "Untitled"
    created_at: datetime | None = None
    updated_at: datetime | None = None
    system_prompt: str | None = None
    tags: list[str] = field(default_factory=list)
    messages: list[V1Message] = field(default_factory=list)
    message_count: int = 0  # records in the v1 list, readable or not
    branches: Any = None  # raw; interpreted by the converter
    active_branch: str | None = None
    source_file: Path | None = None  # the file it came from, when a source is a folder
    extra: dict[str, Any] = field(default_factory=dict)  # fields cm_notebook has no use for
    flags: dict[str, Any] = field(default_factory=dict)  # facts from around the record
    problems: list[str] = field(default_factory=list)  # messages that could not be read
    notes: list[str] = field(default_factory=list)
    fatal: str | None = None  # why the whole record cannot be converted

    def started_at(self) -> datetime:
        """When the conversation started: v1's own time, else its earliest message's,
        else the fallback."""
        known = [m.created_at for m in self.messages if m.created_at is not None]
        return self.created_at or (min(known) if known else self.fallback_time)


@dataclass
class V1Source:
    """A whole v1 source: its shape, contexts and source-level notes."""

    name: str
    kind: SourceKind
    contexts: list[V1Context]
    notes: list[str] = field(default_factory=list)


_DATETIME = TypeAdapter(datetime)
_JS_DATE = re.compile(r"^\w{3} (\w{3} \d{1,2} \d{4} \d{2}:\d{2}:\d{2}) GMT([+-]\d{4})(?: \(.*\))?$")


def _from_epoch(value: float) -> datetime:
    # Epoch numbers come in seconds (Python), milliseconds (JavaScript's Date.now()) or
    # finer. Seconds below 1e11 reach the year 5138 and milliseconds above 1e11 start in
    # 1973, so magnitude tells them apart for any date a chat can have.
    size = abs(value)
    if size >= 1e17:
        value /= 1e9
    elif size >= 1e14:
        value /= 1e6
    elif size >= 1e11:
        value /= 1e3
    return datetime.fromtimestamp(value, timezone.utc)


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from a v1 timestamp, or None if it cannot be read.

    Accepts epoch numbers in seconds, milliseconds, microseconds or nanoseconds (also
    as strings), ISO 8601 / RFC 3339 text with or without a zone (naive means UTC),
    and JavaScript's ``Date.toString()`` form.
    """
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, (int, float)):
            return _from_epoch(float(value))
        if not isinstance(value, str) or not value.strip():
            return None
        text = value.strip()
        try:
            return _from_epoch(float(text))
        except ValueError:
            pass
        js = _JS_DATE.match(text)
        if js:
            return datetime.strptime(f"{js[1]} {js[2]}", "%b %d %Y %H:%M:%S %z").astimezone(
                timezone.utc
            )
        parsed = _DATETIME.validate_python(text)
    except (ValidationError, ValueError, OverflowError, OSError):
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _first(record: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    for name in names:
        if name in record:
            return name, record[name]
    return None, None


def _id_text(value: Any) -> str | None:
    # JavaScript front ends often used Date.now() numbers as ids; they are fine as text.
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, str)):
        text = str(value)
        return text or None
    return None


def _unusable_id_note(value: Any) -> str:
    """What the report says of a context id it could not use (a new one was made)."""
    if value == "":
        return "id is empty; a new id was made"
    return f"id {value!r} is not text or a number; a new id was made"


def _content(value: Any) -> tuple[str, list[Any] | None] | None:
    """(text, original parts or None) for a v1 content value; None if unusable."""
    if value is None:
        return "", None
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return None
    texts: list[str] = []
    for part in value:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
    # Text parts are joined as paragraphs; the original list is kept in metadata whenever
    # the joined text alone would not reproduce it (several parts or non-text parts).
    keep = value if len(value) != 1 or len(texts) != 1 else None
    return "\n\n".join(texts), keep


def _message(record: Any, position: int) -> V1Message | str:
    """A V1Message, or a sentence saying why the record cannot be used."""
    if not isinstance(record, dict):
        return f"message #{position} is a {type(record).__name__}, not an object; skipped"
    raw_id = record.get("id")
    # A role that is not a known name (or no name at all: missing, a number...) is kept
    # as "user" and reported, like an unknown name: dropping the message would lose it.
    _, role_value = _first(record, _MSG_ROLE)
    role_key = role_value.strip().lower() if isinstance(role_value, str) else ""
    role: Role = _ROLE_ALIASES.get(role_key, "user")
    content_name, content_value = _first(record, _MSG_CONTENT)
    content = _content(content_value)
    content_type = None
    if content is None:
        # A number or true/false: kept as its JSON text (the value stays in v1_extra).
        content_type = "boolean" if isinstance(content_value, bool) else "number"
        if not isinstance(content_value, (bool, int, float)):
            content_type = type(content_value).__name__
        content = json_text(content_value), None
    _, time_value = _first(record, _MSG_TIME)
    created = parse_timestamp(time_value)
    _, calls = _first(record, _MSG_TOOL_CALLS)
    _, call_id = _first(record, _MSG_TOOL_CALL_ID)
    calls = calls if isinstance(calls, list) else [] if calls is None else [calls]
    function_name, function_call = _first(record, _MSG_FUNCTION_CALL)
    if isinstance(function_call, dict):
        # A call without an id: it gets a derived one, and the ``function`` message
        # after it (role "tool") is linked to it by position (see _toollinks).
        calls = [*calls, {**function_call, "v1_field": function_name}]
    model = record.get("model")
    message = V1Message(
        position=position,
        raw=record,
        id=_id_text(raw_id),
        role=role,
        content=content[0],
        content_parts=content[1],
        content_type=content_type,
        created_at=created,
        raw_timestamp=time_value if created is None and time_value is not None else None,
        tool_calls=calls,
        tool_call_id=_id_text(call_id),
        model=model if isinstance(model, str) else None,
        v1_role=role_value if role_value != role else None,
        is_error=role_key == "error",
        role_guessed=role_key not in _ROLE_ALIASES,
        extra={k: v for k, v in record.items() if k not in _MSG_KNOWN},
    )
    if not isinstance(model, str) and model is not None:
        message.extra["model"] = model
    if content_type is not None and content_name is not None:
        message.extra[content_name] = content_value
    if function_name is not None and not isinstance(function_call, dict):
        message.extra[function_name] = function_call  # not a call: kept as it was
    return message


def refused_if_too_deep(
    record: Any, position: int, kind: SourceKind, fallback: datetime, key: str | None = None
) -> V1Context | None:
    """A failed V1Context if ``record`` nests too deeply to migrate (see ``too_deep``),
    made without reading it recursively; else None."""
    why = too_deep(record)
    if why is None:
        return None
    try:
        digest = sha256_text(canonical_json(record))
    except RecursionError:  # deeper than the encoder goes: a stand-in, never compared
        digest = sha256_text(f"too deep: {kind} #{position}")
    ctx = V1Context(position, kind, record, digest, fallback, fatal=f"context #{position}: {why}")
    if isinstance(record, dict):  # what the report names it by
        ctx.id = without_half_emojis(_id_text(record.get("id")) or key)[0]
        title = _first(record, _CTX_TITLE)[1]
        if isinstance(title, str) and title.strip():
            ctx.title = without_half_emojis(title)[0]
    return ctx


def _context(
    record: Any, position: int, kind: SourceKind, fallback: datetime, key: str | None = None
) -> V1Context:
    refused = refused_if_too_deep(record, position, kind, fallback, key)
    if refused is not None:
        return refused
    # Half emojis first: everything below (the hash that recognises the record on a
    # second run included) sees only text that UTF-8 can hold.
    record, replaced = without_half_emojis(record)
    if key is not None:
        key = without_half_emojis(key)[0]
    ctx = V1Context(
        position=position,
        kind=kind,
        raw=record,
        source_sha256=sha256_text(canonical_json(record)),
        fallback_time=fallback,
    )
    if replaced:
        ctx.notes.append(replaced_note(replaced))
    if not isinstance(record, dict):
        ctx.fatal = f"context #{position} is a {type(record).__name__}, not an object"
        return ctx
    ctx.id = _id_text(record.get("id")) or key
    if record.get("id") is not None and _id_text(record.get("id")) is None:
        ctx.notes.append(_unusable_id_note(record["id"]))
    _, title = _first(record, _CTX_TITLE)
    if isinstance(title, str) and title.strip():
        ctx.title = title
    elif title is not None and not isinstance(title, str):
        ctx.title = str(title)
    ctx.created_at = parse_timestamp(_first(record, _CTX_CREATED)[1])
    ctx.updated_at = parse_timestamp(_first(record, _CTX_UPDATED)[1])
    _, system = _first(record, _CTX_SYSTEM)
    if isinstance(system, str) and system:
        ctx.system_prompt = system
    _, active = _first(record, _CTX_ACTIVE)
    ctx.active_branch = active if isinstance(active, str) else None
    tags = record.get("tags")
    if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        ctx.tags = list(tags)
    elif tags is not None:
        ctx.extra["tags"] = tags
    ctx.branches = record.get("branches")
    ctx.extra.update({k: v for k, v in record.items() if k not in _CTX_KNOWN})
    messages = record.get("messages")
    if messages is None:
        ctx.notes.append("the context has no 'messages' field; migrated as empty")
        messages = []
    if isinstance(messages, dict):
        # An id -> message mapping: keep its order and let the keys stand in for ids.
        messages = [
            {"id": k, **v} if isinstance(v, dict) and "id" not in v else v
            for k, v in messages.items()
        ]
    if not isinstance(messages, list):
        ctx.fatal = f"'messages' is a {type(messages).__name__}, not a list"
        return ctx
    ctx.message_count = len(messages)
    for index, item in enumerate(messages):
        parsed = _message(item, index)
        if isinstance(parsed, str):
            ctx.problems.append(parsed)
            continue
        if parsed.role_guessed:
            ctx.problems.append(
                f"message #{index} has no role; kept as 'user'"
                if parsed.v1_role is None
                else f"message #{index} has unknown role {parsed.v1_role!r}; kept as 'user' "
                "(the original is in metadata.v1_role)"
            )
        if parsed.content_type is not None:
            ctx.notes.append(
                f"message #{index}: its content is a {parsed.content_type}; kept as text "
                "(the original value is in metadata.v1_extra)"
            )
        ctx.messages.append(parsed)
    return ctx
