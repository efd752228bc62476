"""A marked stand-in for a message whose file cannot be read, so that the messages
after it are not lost with it.

Every message names its parent, and an index rebuilt from the files puts a message in
only if its conversation leads back to a first message (see :func:`.order.unrooted`).
When a message file is damaged beyond reading (emptied, cut short, overwritten) and no
journal line or old index entry tells what it was, every message after it would stay
out of the index: intact, yet on no branch, and every branch through it unreadable.

``check --repair`` (:func:`stand_in_unreadable`) does not let one file take the rest:

* the damaged file is kept, never deleted, as ``damaged/<id>.json`` in the context
  folder (``<id>-2.json``, ... if that is taken), byte for byte as it was (a second
  name is made for it before the stand-in replaces its name in ``messages/``, so a
  repair stopped in between leaves it in both places and is simply done again);
* a stand-in message is written in its place, with the same id, so the messages after
  it lead back through it again. It says, in its text, that the message could not be
  read and where the damaged file is kept, and its metadata names that file
  (``unreadable_file``). Its parent and role are what can still be read from the
  damaged bytes (``"parent_id": ...``, ``"role": ...`` before the damage), else: no
  parent (the conversation starts again at the stand-in; the messages before it stay
  where they were, and the repair gives a ``recovered`` branch to the one the damaged
  message most likely answered, if no branch shows it: :func:`ends_cut_off`), and
  the role its replies suggest (``user`` before an ``assistant`` reply, ...);
* so that the branch can be sent to a provider again (every tool result must answer a
  call of the message before it): a ``tool`` stand-in keeps the ``tool_call_id`` still
  readable in the damaged bytes, and is a ``user`` message if none is (a result that
  answers no known call is refused by the APIs; the call before it, left without a
  result, is given one in the request like any unanswered call); an ``assistant``
  stand-in followed by tool results makes the calls they answer (``tool_calls`` with
  their ids, ``done``, named as the damaged bytes still show, else
  :data:`UNKNOWN_TOOL`; their arguments are lost with the file);
* a damaged message that a stand-in answers (two or more damaged in a row) gets one
  too, so the links still readable keep the conversation one chain (a loop of such
  links is cut where it closes).

Then the repair rebuilds the index from the files as for any message it had lost:
the branches that went through the damaged message read again. Only damaged files
that other messages go back to get a stand-in; one at the end of a conversation is
only reported (reads skip it), as nothing is lost with it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast, get_args

from pydantic import ValidationError

from ..errors import CorruptDataError, InvalidIdError, StoreError
from ..ids import validate_message_id
from ..model import Message, Role, ToolCall, ToolCallStatus
from .atomic import atomic_write, fsync_dir, mkdir_durable
from .base import IndexEntry
from .codec import encode_message, read_message_file, read_regular
from .diagnostics import warn
from .oserrors import linked, translate
from .paths import MESSAGES_DIR, message_path

if TYPE_CHECKING:
    from .context import ContextState

__all__ = [
    "DAMAGED_DIR",
    "STAND_IN_MARK",
    "UNKNOWN_TOOL",
    "ends_cut_off",
    "stand_in_file",
    "stand_in_unreadable",
]

#: The folder of a context where damaged message files are kept (see the module).
DAMAGED_DIR = "damaged"
#: The name of a tool call made by a stand-in when the damaged file does not show it.
UNKNOWN_TOOL = "unknown_tool"

#: The metadata key that marks a stand-in; its value is where the damaged file is kept.
STAND_IN_MARK = "unreadable_file"


def stand_in_file(message: Message) -> str | None:
    """Where the damaged file that ``message`` stands in for is kept (``damaged/<id>.json``
    in the context's folder) if ``message`` is a stand-in, else None.

    A stand-in's text is a placeholder, not what was said: it is no answer to score or
    count, and no prompt to send again."""
    found = (message.metadata.model_extra or {}).get(STAND_IN_MARK)
    return found if isinstance(found, str) else None


_PARENT = re.compile(rb'"parent_id"\s*:\s*(?:null|"([^"\\]{1,200})")')
_ROLE = re.compile(rb'"role"\s*:\s*"([a-z]{1,20})"')
_CALL_ID = re.compile(rb'"tool_call_id"\s*:\s*"([^"\\]{1,200})"')
_MAX_CALL_ID = 200  # ToolCall.id's limit
_CREATED = re.compile(rb'"created_at"\s*:\s*"([^"\\]{1,64})"')
_ROLES: tuple[str, ...] = get_args(Role)
# The role a message most likely had, by the role of a reply to it.
_BEFORE = {"assistant": "user", "tool": "assistant", "user": "assistant", "system": "user"}


def stand_in_unreadable(
    state: ContextState,
    unreadable: Iterable[str],
    children: Mapping[str, list[Message]],
    known: set[str],
) -> list[tuple[str, str, Message]]:
    """Put a stand-in in place of each ``unreadable`` message (ids) that ``children``
    (replies by parent id, as their files tell) go back to, and of each unreadable
    message such a stand-in goes back to in turn, keeping the damaged files aside (see
    the module; write locks held). ``known``: the ids of messages the index lists or
    whose file reads (a parent read from damaged bytes is taken only if it is one of
    these or gets a stand-in). Returns (file name, what was done, the stand-in) for
    each."""
    damaged: dict[str, bytes] = {}
    for message_id in unreadable:
        try:
            validate_message_id(message_id)
        except InvalidIdError:
            continue  # not a message's file name: no message goes back to it
        damaged[message_id] = _damaged_bytes(state, message_id)
    # The damaged messages that replies go back to, and (a chain of damaged messages)
    # those that they go back to: a stand-in answers them.
    said = {mid: _said_parent(data, mid) for mid, data in damaged.items()}
    todo = [mid for mid in damaged if children.get(mid)]
    needed = set(todo)
    while todo:
        parent = said[todo.pop()]
        if parent in damaged and parent not in needed:
            needed.add(parent)
            todo.append(parent)
    links = {
        mid: said[mid] if said[mid] in known or said[mid] in needed else None for mid in needed
    }
    depths = _depths(links, {mid for mid in needed if children.get(mid)})
    tree = {parent: list(replies) for parent, replies in children.items()}
    done = []
    # Replies first: a stand-in's role and calls follow from its replies.
    for message_id in sorted(needed, key=lambda mid: (-depths[mid], mid)):
        made = _stand_in(state, message_id, damaged[message_id], links[message_id], tree)
        if made[2].parent_id is not None:
            tree.setdefault(made[2].parent_id, []).append(made[2])
        done.append(made)
    return done


def _depths(links: dict[str, str | None], answered: set[str]) -> dict[str, int]:
    # How many stand-ins come before each one; a loop of links read from damaged bytes
    # is cut where it closes. Each stand-in is walked past once. The walks start from
    # those with readable replies (``answered``), so the one a loop is cut before is
    # where a walk entered it: it keeps a reply from outside the loop.
    depths: dict[str, int] = {}
    for start in sorted(links, key=lambda mid: (mid not in answered, mid)):
        path: list[str] = []
        on_path: set[str] = set()
        at: str | None = start
        while at is not None and at in links and at not in depths:
            if at in on_path:
                links[path[-1]] = None  # the loop closes here
                at = None
                break
            path.append(at)
            on_path.add(at)
            at = links[at]
        depth = depths[at] + 1 if at is not None and at in depths else 0
        for message_id in reversed(path):
            depths[message_id] = depth
            depth += 1
    return depths


def _damaged_bytes(state: ContextState, message_id: str) -> bytes:
    try:
        return read_regular(state.dir / MESSAGES_DIR / f"{message_id}.json")
    except (OSError, StoreError):
        return b""  # a folder or a link in its place: nothing to read it from


def _stand_in(
    state: ContextState,
    message_id: str,
    damaged: bytes,
    parent_id: str | None,
    tree: Mapping[str, list[Message]],
) -> tuple[str, str, Message]:
    name = f"{message_id}.json"
    file = state.dir / MESSAGES_DIR / name
    replies = tree[message_id]
    kept = _keep_aside(state, file, message_id)
    where = f"{DAMAGED_DIR}/{kept.name}"
    role = _role(damaged, replies)
    tool_call_id = _said_call_id(damaged) if role == "tool" else None
    if role == "tool" and tool_call_id is None:
        role = "user"  # a result that answers no known call: no API takes one
    calls = _placeholder_calls(message_id, damaged, tree) if role == "assistant" else []
    stand_in = Message(
        id=message_id,
        parent_id=parent_id,
        role=role,
        content=(
            f"[This message could not be read: its file was damaged. The damaged file is "
            f"kept as {where} in the context's folder; restore the message from a backup "
            "if you have one. The messages after it are intact.]"
        ),
        tool_calls=calls,
        tool_call_id=tool_call_id,
        created_at=_created(damaged, replies),
        metadata={STAND_IN_MARK: where},
    )
    atomic_write(file, encode_message(stand_in), fsync=state.fsync, temp_dir=state.dir)
    how = (
        f"could not be read: a stand-in that says so took its place, so that the "
        f"{len(replies)} message(s) answering it (and those after them) read again; "
        f"the damaged file is kept as {where}"
    )
    warn(f"message file {file} {how} in the context's folder", file)
    return name, how, stand_in


def _placeholder_calls(
    message_id: str, damaged: bytes, tree: Mapping[str, list[Message]]
) -> list[ToolCall]:
    # The calls the tool results after it (one after another) answer, named as the
    # damaged bytes still show, else UNKNOWN_TOOL: each result then answers a call of
    # the message before it, as APIs require.
    ids: dict[str, datetime] = {}
    todo = [reply for reply in tree.get(message_id, []) if reply.role == "tool"]
    seen: set[str] = set()
    while todo:
        reply = todo.pop()
        if reply.id in seen:
            continue
        seen.add(reply.id)
        if reply.tool_call_id:
            ids[reply.tool_call_id] = min(
                reply.created_at, ids.get(reply.tool_call_id, reply.created_at)
            )
        todo.extend(after for after in tree.get(reply.id, []) if after.role == "tool")
    return [
        ToolCall(id=call_id, name=_said_call_name(damaged, call_id), status=ToolCallStatus.DONE)
        for call_id in sorted(ids, key=lambda call_id: (ids[call_id], call_id))
        if len(call_id) <= _MAX_CALL_ID
    ]


def ends_cut_off(
    stand_ins: Iterable[Message],
    entries: Mapping[str, IndexEntry],
    found: Mapping[str, Message],
    heads: Iterable[str | None],
    ctx_dir: Path,
) -> dict[str, Message]:
    """For each of ``stand_ins`` whose parent could not be read: the message it most
    likely answered, if no branch reaches it and nothing answers it now (the latest
    such one made before it), read from its file, so that a branch can be given to
    the conversation before the damaged message (see the module). ``entries``: the
    index's; ``found``: messages read from files the index lacks; ``heads``: the
    branches' heads."""
    links: dict[str, str | None] = {mid: entry.parent_id for mid, entry in entries.items()}
    links.update((mid, message.parent_id) for mid, message in found.items())
    created = {mid: entry.created_at for mid, entry in entries.items()}
    created.update((mid, message.created_at) for mid, message in found.items())
    orphans = [message for message in stand_ins if message.parent_id is None]
    if not orphans:
        return {}
    for message in orphans:
        links[message.id] = None
    answered = set(links.values())
    reached: set[str] = set()
    for head in heads:
        at = head
        while at is not None and at not in reached and at in links:
            reached.add(at)
            at = links[at]
    ends = [mid for mid in links if mid not in answered and mid not in reached]
    chosen: dict[str, Message] = {}
    for message in orphans:
        before = [mid for mid in ends if mid in created and created[mid] < message.created_at]
        if not before:
            continue
        end = max(before, key=lambda mid: (created[mid], mid))
        if end in found:
            chosen[end] = found[end]
            continue
        try:
            chosen[end] = read_message_file(message_path(ctx_dir, end), end)
        except CorruptDataError:
            continue  # reported as unreadable by the check itself
    return chosen


def _keep_aside(state: ContextState, file: Path, message_id: str) -> Path:
    # The damaged file given a name in damaged/ (never copied, never deleted); the
    # stand-in then replaces its name in messages/.
    folder = state.dir / DAMAGED_DIR
    if os.path.islink(folder):
        raise linked(folder)  # moving the file through it would move it outside
    try:
        mkdir_durable(folder, state.fsync)
    except OSError as exc:
        raise translate(exc, folder, "create") from exc
    number = 1
    while True:
        kept = folder / (f"{message_id}.json" if number == 1 else f"{message_id}-{number}.json")
        if not os.path.lexists(kept):
            break
        number += 1
    try:
        # A second name first: stopped before the stand-in replaces it, the damaged
        # file is still in messages/ too, and the next repair does this again.
        os.link(file, kept, follow_symlinks=False)
    except OSError:
        try:
            os.rename(file, kept)  # no hard links here (or a folder in its place)
        except OSError as exc:
            raise translate(exc, file, "move aside") from exc
    fsync_dir(folder, state.fsync)
    return kept


def _said_parent(damaged: bytes, message_id: str) -> str | None:
    found = _PARENT.search(damaged)
    if found is None or found.group(1) is None:
        return None
    parent = found.group(1).decode("utf-8", "replace")
    return parent if parent != message_id else None


def _said_call_id(damaged: bytes) -> str | None:
    found = _CALL_ID.search(damaged)
    return found.group(1).decode("utf-8", "replace") if found is not None else None


def _said_call_name(damaged: bytes, call_id: str) -> str:
    found = re.search(
        rb'"id"\s*:\s*"' + re.escape(call_id.encode()) + rb'"\s*,\s*"name"\s*:\s*"([^"\\]{1,200})"',
        damaged,
    )
    return found.group(1).decode("utf-8", "replace") if found is not None else UNKNOWN_TOOL


def _role(damaged: bytes, replies: list[Message]) -> Role:
    found = _ROLE.search(damaged)
    said = found.group(1).decode() if found is not None else ""
    if said in _ROLES:
        return cast(Role, said)
    reply_roles = {reply.role for reply in replies}
    for reply_role in ("tool", "assistant", "user", "system"):
        if reply_role in reply_roles:
            return cast(Role, _BEFORE[reply_role])
    return "user"


def _created(damaged: bytes, replies: list[Message]) -> datetime:
    earliest = min(reply.created_at for reply in replies) - timedelta(milliseconds=1)
    found = _CREATED.search(damaged)
    if found is None:
        return earliest
    try:
        said = Message.model_validate(
            {"role": "user", "created_at": found.group(1).decode("utf-8", "replace")}
        ).created_at
    except ValidationError:
        return earliest
    return min(said, earliest)
