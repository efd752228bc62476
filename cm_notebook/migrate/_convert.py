"""Converting a v1 context into cm_notebook's models: ids, the message tree, tool calls.

Building the tree
-----------------
v1 kept messages in one flat list, and optionally named ``branches`` as ordered lists
of message ids. The tree is built in two passes:

1. **Branches first**, the v1 active branch before the others (so the branch the user
   was looking at keeps the original messages). Walking a branch's list, each message
   gets the previous listed message as its parent. A message that already has that
   parent is *shared* (a common prefix costs nothing); a message that already has a
   different parent cannot be in two places, so it is *copied*: a new message with the
   same content, ``metadata.v1_copied_from`` naming the original and ``v1_branch`` the
   branch, and the rest of the list continues from the copy. A list's first message is
   left where the flat order puts it, so a list that starts mid-conversation still hangs
   off its real predecessor.
2. **Parent links** (the per-context files' ``parent_id``) place every message the
   branches did not: under its parent, or as a root when the parent is ``null``. A
   parent that is not in the pool is reported and the message starts a new thread
   (``metadata.v1_parent_id`` keeps the name). Where a branch disagrees with a
   message's ``parent_id``, the branch was followed, and a note says so.
3. **The flat order** then gives every message still without a parent the previous
   readable message in the v1 list (or none, for the first).

Every branch keeps its v1 head and its own system prompt (``Branch.system_prompt``,
None where v1 had none: the branch then uses the context's, which is v1's context-level
prompt if the source has one). Leaves that no branch reaches
(the flat tail when v1's branches omit it, a thread on no branch) get a branch too
(``main`` if free, else ``v1-unbranched``), so no message becomes invisible.
A v1 branch name that is valid as it is stays; the others get the closest free name
only after that, so a look-alike never takes the name of the branch it imitates.

Ids
---
Safe v1 ids are kept. Missing, hostile (``../../etc``) or duplicate ids get a new id
derived from a sha256 of the context id and the record's position (and the original
id), so converting the same data again gives the same ids and re-running a migration
is idempotent. Replaced ids are kept as ``v1_id`` in the message metadata (or in
``ContextMetadata.extra`` for contexts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import InvalidIdError, InvalidInputError
from ..ids import (
    branch_name_key,
    id_key,
    validate_context_id,
    validate_message_id,
    validate_new_branch_name,
    without_invisible_letters,
)
from ..model import Branch, ContextMetadata, Message, MessageMetadata, MessageStatus
from ._toolcalls import convert_tool_calls
from ._toollinks import ToolLinks, as_sent, link_tool_results
from ._util import derived_id
from ._v1 import V1Context, V1Message

__all__ = ["ConvertedContext", "context_id_for", "convert"]


def _safe(validate: Callable[[object], str], value: str | None) -> bool:
    if value is None:
        return False
    try:
        validate(value)
    except InvalidIdError:
        return False
    return True


def context_id_for(ctx: V1Context) -> str:
    """The cm_notebook id for a v1 context: its own id if safe, else a derived one."""
    if ctx.id is not None and _safe(validate_context_id, ctx.id):
        return ctx.id
    if ctx.id is not None:
        return derived_id("c", "v1-id", ctx.id)
    # No id: derive it from the content, so the same record always gets the same id.
    return derived_id("c", "v1-content", ctx.source_sha256)


@dataclass
class ConvertedContext:
    """A v1 context as validated cm_notebook models, ready to write through a Store."""

    source: V1Context
    metadata: ContextMetadata  # branch heads are final: write the messages first
    messages: list[Message]  # parents before children
    originals: list[tuple[V1Message, str]]  # each readable v1 message and its new id
    branch_sources: dict[str, list[V1Message]]  # the v1 messages each path must end with
    copies: int = 0
    problems: list[str] = field(default_factory=list)  # losses and guesses
    notes: list[str] = field(default_factory=list)  # harmless changes

    def path(self, branch: str) -> list[str]:
        """Message ids from the root to the head of ``branch`` in the converted tree."""
        parents = {m.id: m.parent_id for m in self.messages}
        node = self.metadata.branches[branch].head
        out: list[str] = []
        while node is not None:
            out.append(node)
            node = parents[node]
        return out[::-1]


def _sanitise(name: str) -> str:
    name = re.sub(r"[^\w .+-]", "-", name)
    return re.sub(r"\.{2,}", ".", name)[:100].strip(" .-")


@dataclass
class _Node:
    id: str
    msg: V1Message
    copied_from: str | None = None
    branch: str | None = None
    missing_parent: str | None = None  # a declared parent that is not in the source


@dataclass
class _Tree:
    """Parent links under construction, refusing cycles; plus the branches found."""

    nodes: dict[str, _Node] = field(default_factory=dict)  # originals first, in v1 order
    parent: dict[str, str | None] = field(default_factory=dict)  # presence means "placed"
    has_children: set[str] = field(default_factory=set)
    heads: dict[str, str | None] = field(default_factory=dict)
    sources: dict[str, list[V1Message]] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)  # branch -> its system prompt
    branch_extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)  # new name -> v1 name
    name_of: dict[str, str] = field(default_factory=dict)  # v1 name -> new name
    taken: set[str] = field(default_factory=set)  # branch_name_key of the names given
    copies: int = 0

    def would_cycle(self, node: str, parent: str | None) -> bool:
        # Only a node that already has children can become its own ancestor, which keeps
        # the common case (a long linear chat) linear in time.
        if parent is None:
            return False
        if parent == node:
            return True  # a branch listing the same message twice in a row
        if node not in self.has_children:
            return False
        current: str | None = parent
        while current is not None:
            if current == node:
                return True
            current = self.parent.get(current)
        return False

    def place(self, node: str, parent: str | None) -> None:
        self.parent[node] = parent
        if parent is not None:
            self.has_children.add(parent)

    def branch_name(self, wanted: str) -> str:
        """A valid, unused branch name as close to ``wanted`` as possible."""
        # Tried in turn: as it is; without letters that show nothing (a Hangul filler);
        # with unsafe characters replaced; and that again with look-alike letters made
        # Latin ('mаin' with a Cyrillic а becomes 'main').
        name = "branch"
        visible = without_invisible_letters(wanted)
        for candidate in (
            wanted,
            visible,
            _sanitise(visible),
            _sanitise(branch_name_key(visible)),
        ):
            if _safe(validate_new_branch_name, candidate):
                name = candidate
                break
        # Compared by look-alike key: v1 may hold 'main' and 'Main' side by side, and
        # the look-alike 'mаin' becomes 'main' above.
        base, n = name, 2
        while branch_name_key(name) in self.taken:
            name = f"{base[:90]}-{n}"
            n += 1
        self.taken.add(branch_name_key(name))
        return name


def _assign_ids(ctx: V1Context, cid: str, notes: list[str]) -> dict[int, str]:
    """v1 position -> message id. Safe unique v1 ids are kept; others are derived.

    Unique by :func:`~cm_notebook.ids.id_key`: ids name files, and ``A`` and ``a`` are
    one file on Windows and macOS, so the second of two such ids is derived anew.
    """
    used: set[str] = set()  # id_key of each id given
    ids: dict[int, str] = {}
    # Keep safe v1 ids first, so that a derived id can never take one of them.
    for msg in ctx.messages:
        if msg.id is not None and _safe(validate_message_id, msg.id) and id_key(msg.id) not in used:
            ids[msg.position] = msg.id
            used.add(id_key(msg.id))
    for msg in ctx.messages:
        if msg.position in ids:
            continue
        nid = derived_id("m", cid, msg.position, msg.id)
        while id_key(nid) in used:
            nid = derived_id("m", nid)
        ids[msg.position] = nid
        used.add(id_key(nid))
        if msg.id is not None:
            notes.append(f"message #{msg.position}: id {msg.id!r} replaced by {nid!r}")
    return ids


_BRANCH_IDS = ("messages", "message_ids", "messageIds", "path")
_BRANCH_PROMPT = ("system_prompt", "systemPrompt", "system")


def _branch_prompt(value: Any) -> tuple[str | None, dict[str, Any]]:
    """(system prompt, fields kept in metadata) of one v1 branch value."""
    if not isinstance(value, dict):
        return None, {}
    known = {"name", *_BRANCH_IDS, *_BRANCH_PROMPT}
    extra = {k: v for k, v in value.items() if k not in known and v is not None}
    prompt: Any = next((value[k] for k in _BRANCH_PROMPT if k in value), None)
    if isinstance(prompt, dict):
        # {"id": ..., "content": ...}: a prompt picked from a library; keep which one.
        if prompt.get("id") is not None:
            extra["system_prompt_id"] = prompt["id"]
        prompt = prompt.get("content", prompt.get("text"))
    if prompt is not None and not isinstance(prompt, str):
        extra["system_prompt"] = prompt
        prompt = None
    return prompt or None, extra


def _branch_lists(raw: Any, problems: list[str]) -> list[tuple[str, list[Any], Any]]:
    """(name, list of v1 message ids, the raw value) for each usable branch in v1's
    ``branches``."""
    if raw is None or raw == {} or raw == []:
        return []
    items: list[tuple[Any, Any]]
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(b, dict) for b in raw):
        items = [(b.get("name"), b) for b in raw]
    else:
        problems.append(f"'branches' is a {type(raw).__name__} of unknown shape; ignored")
        return []
    out = []
    for name, value in items:
        ids = value
        if isinstance(value, dict):
            ids = next((value[k] for k in _BRANCH_IDS if k in value), None)
        if not isinstance(name, str) or not isinstance(ids, list):
            problems.append(f"branch {name!r} is not a list of message ids; ignored")
            continue
        out.append((name, ids, value))
    return out


def _branch_names(tree: _Tree, lists: list[tuple[str, list[Any], Any]]) -> list[str]:
    """The new name of each v1 branch, in order. Names valid as they are come first (the
    active branch before the others), so a look-alike ('mаin' with a Cyrillic а) that
    is listed earlier cannot take the name of the real 'main'."""
    names: dict[int, str] = {}
    for i, (v1_name, _refs, _value) in enumerate(lists):
        if _safe(validate_new_branch_name, v1_name) and branch_name_key(v1_name) not in tree.taken:
            names[i] = tree.branch_name(v1_name)
    for i, (v1_name, _refs, _value) in enumerate(lists):
        if i not in names:
            names[i] = tree.branch_name(v1_name)
    return [names[i] for i in range(len(lists))]


def _follow_branch(
    tree: _Tree,
    cid: str,
    v1_name: str,
    name: str,
    refs: list[Any],
    by_v1_id: dict[str, V1Message],
    ids: dict[int, str],
    problems: list[str],
    notes: list[str],
) -> None:
    """Place one v1 branch's messages in the tree (pass 1 of the module docstring)."""
    tree.name_of.setdefault(v1_name, name)
    if name != v1_name:
        tree.renamed[name] = v1_name
        notes.append(f"branch {v1_name!r} renamed to {name!r}")
    listed: list[V1Message] = []
    prev: str | None = None
    copied = 0
    for index, ref in enumerate(refs):
        found = by_v1_id.get(str(ref)) if ref is not None else None
        if found is None:
            problems.append(f"branch {v1_name!r} lists unknown message {ref!r}; skipped")
            continue
        node = ids[found.position]
        if not listed:
            pass  # the first listed message stays where the flat order puts it
        elif node in tree.parent and tree.parent[node] == prev:
            pass  # shared with an earlier branch: a common prefix costs nothing
        elif node not in tree.parent and not tree.would_cycle(node, prev):
            tree.place(node, prev)
        else:
            # Already placed under another parent: it cannot be in two places at once.
            copy = derived_id("m", cid, "copy", name, index, node)
            while copy in tree.nodes:
                copy = derived_id("m", copy)
            tree.nodes[copy] = _Node(copy, found, copied_from=node, branch=name)
            tree.place(copy, prev)
            node = copy
            copied += 1
        listed.append(found)
        prev = node
    tree.heads[name] = prev
    tree.sources[name] = listed
    if copied:
        tree.copies += copied
        notes.append(
            f"branch {v1_name!r} does not follow the message tree; {copied} message(s) "
            "copied for it (metadata.v1_copied_from names the original)"
        )


def _follow_parents(
    tree: _Tree,
    ctx: V1Context,
    by_v1_id: dict[str, V1Message],
    ids: dict[int, str],
    problems: list[str],
    notes: list[str],
) -> None:
    """Place messages by their declared ``parent_id`` (pass 2 of the module docstring)."""
    for msg in ctx.messages:
        if not msg.parent_declared:
            continue
        node = ids[msg.position]
        parent = by_v1_id.get(msg.parent_ref) if msg.parent_ref is not None else None
        if msg.parent_ref is not None and parent is None:
            tree.nodes[node].missing_parent = msg.parent_ref
            problems.append(
                f"message {msg.id!r} names parent {msg.parent_ref!r}, which is not in the "
                "source; it starts a new thread (metadata.v1_parent_id keeps the name)"
            )
        wanted = None if parent is None else ids[parent.position]
        if node in tree.parent:
            if tree.parent[node] != wanted and tree.nodes[node].missing_parent is None:
                notes.append(
                    f"message {msg.id!r}: its parent_id disagrees with a branch; the branch "
                    "was followed"
                )
        elif tree.would_cycle(node, wanted):
            notes.append(f"message {msg.id!r}: parent links form a loop; made a root")
            tree.place(node, None)
        else:
            tree.place(node, wanted)


def _build_tree(
    ctx: V1Context, cid: str, ids: dict[int, str], problems: list[str], notes: list[str]
) -> _Tree:
    tree = _Tree()
    by_v1_id: dict[str, V1Message] = {}
    for msg in ctx.messages:
        tree.nodes[ids[msg.position]] = _Node(ids[msg.position], msg)
        if msg.id is not None:
            by_v1_id.setdefault(msg.id, msg)
    # Pass 1: the branches, the v1 active branch first so that it keeps the originals.
    lists = _branch_lists(ctx.branches, problems)
    lists.sort(key=lambda item: item[0] != ctx.active_branch)
    for (v1_name, refs, value), name in zip(lists, _branch_names(tree, lists), strict=True):
        _follow_branch(tree, cid, v1_name, name, refs, by_v1_id, ids, problems, notes)
        prompt, extra = _branch_prompt(value)
        if prompt is not None:
            tree.prompts[name] = prompt
        if extra:
            tree.branch_extra[name] = extra
    # Pass 2: parent links, where the source has them.
    _follow_parents(tree, ctx, by_v1_id, ids, problems, notes)
    # Pass 3: the flat order places everything else.
    prev: str | None = None
    for msg in ctx.messages:
        node = ids[msg.position]
        if node not in tree.parent:
            if tree.would_cycle(node, prev):
                notes.append(f"message #{msg.position} would close a loop; made a root")
                tree.place(node, None)
            else:
                tree.place(node, prev)
        prev = node
    if not lists and not any(msg.parent_declared for msg in ctx.messages):
        # A flat list and no branches: the list is the conversation. (With parent
        # links, each leaf gets a branch below instead.)
        name = tree.branch_name("main")
        tree.heads[name] = prev
        tree.sources[name] = list(ctx.messages)
    # Leaves no branch reaches would be invisible: give each a branch of its own.
    covered = {h for h in tree.heads.values() if h is not None}
    for node in tree.nodes:
        if node not in tree.has_children and node not in covered:
            name = tree.branch_name("main" if "main" not in tree.taken else "v1-unbranched")
            tree.heads[name] = node
            tree.sources[name] = []
            notes.append(f"messages on no v1 branch are reachable as branch {name!r}")
    return tree


def _message(
    node: _Node,
    parent: str | None,
    created: datetime,
    cid: str,
    links: ToolLinks,
    problems: list[str],
) -> Message:
    msg = node.msg
    # A copy's tool-call problems were already reported for its original.
    calls, meta = convert_tool_calls(
        msg,
        cid,
        links.results.get(node.id, {}),
        links.ids.get(node.id, {}),
        problems if not node.copied_from else [],
    )
    if msg.id is not None and msg.id != node.id and node.copied_from is None:
        meta["v1_id"] = msg.id
    if msg.v1_role is not None:
        meta["v1_role"] = msg.v1_role
    role, call_id = msg.role, links.answers.get(node.id)
    if node.id in links.orphans:
        role = "user"  # a result that answers no call: see _toollinks
        meta["v1_role"] = msg.v1_role or msg.role
    if msg.tool_call_id is not None and msg.tool_call_id != call_id:
        meta["v1_tool_call_id"] = msg.tool_call_id
    if msg.content_parts is not None:
        meta["v1_content_parts"] = msg.content_parts
    if msg.raw_timestamp is not None:
        meta["v1_timestamp"] = msg.raw_timestamp
    if msg.extra:
        meta["v1_extra"] = msg.extra
    if node.copied_from is not None:
        meta.update(v1_copied_from=node.copied_from, v1_branch=node.branch)
    elif node.missing_parent is not None:
        meta["v1_parent_id"] = node.missing_parent
    if msg.usage is not None:
        meta["usage"] = {"input_tokens": msg.usage[0], "output_tokens": msg.usage[1]}
    if msg.duration_ms is not None:
        meta["duration_ms"] = msg.duration_ms
    if msg.model is not None:
        meta["model"] = msg.model
    if msg.is_error:
        meta["error"] = msg.content or "error (from v1)"
    return Message(
        id=node.id,
        parent_id=parent,
        role=role,
        content=msg.content,
        tool_calls=calls,
        tool_call_id=call_id,
        status=MessageStatus.ERROR if msg.is_error else MessageStatus.COMPLETE,
        created_at=created,
        metadata=MessageMetadata.model_validate(meta),
    )


def _listed(tree: _Tree, name: str) -> list[tuple[V1Message, str]]:
    """The v1 messages a branch must end with, each with the converted message that
    holds it (the end of the branch's path)."""
    listed = tree.sources[name]
    path: list[str] = []
    node = tree.heads[name]
    while node is not None and len(path) < len(listed):
        path.append(node)
        node = tree.parent[node]
    if len(path) != len(listed):
        return [(m, "") for m in listed]  # the check will say what is wrong
    return list(zip(listed, reversed(path), strict=True))


def convert(ctx: V1Context, *, context_id: str | None = None) -> ConvertedContext:
    """Turn one v1 context into validated models (pure: no I/O, deterministic).

    ``context_id`` overrides the id (used for duplicate ids within one source). Raises
    a ValueError (InvalidInputError, or pydantic's ValidationError) only when the record
    cannot be converted at all; anything smaller goes to ``problems`` or ``notes``.
    """
    if ctx.fatal is not None:
        raise InvalidInputError(ctx.fatal)
    cid = validate_context_id(context_id or context_id_for(ctx))
    problems = list(ctx.problems)
    notes = list(ctx.notes)
    ids = _assign_ids(ctx, cid, notes)
    tree = _build_tree(ctx, cid, ids, problems, notes)

    # Timestamps: a message without one inherits its predecessor's, so order is kept.
    known = [m.created_at for m in ctx.messages if m.created_at is not None]
    created = ctx.started_at()
    updated = max([created, ctx.updated_at or created, *known])
    times: dict[int, datetime] = {}
    last = created
    for msg in ctx.messages:
        last = msg.created_at or last
        times[msg.position] = last
    missing = len(ctx.messages) - len(known)
    if missing:
        notes.append(f"{missing} message(s) without a readable timestamp got the previous one")

    nodes = {node.id: (node.msg, node.copied_from) for node in tree.nodes.values()}
    links = link_tool_results(cid, nodes, tree.parent, problems, notes)
    built = {
        node.id: _message(
            node, tree.parent[node.id], times[node.msg.position], cid, links, problems
        )
        for node in tree.nodes.values()
    }
    # Write order: v1 order (copies after originals), each message after its parent.
    order: list[Message] = []
    done: set[str] = set()
    for node_id in tree.nodes:
        chain = []
        current: str | None = node_id
        while current is not None and current not in done:
            chain.append(current)
            current = tree.parent[current]
        for item in reversed(chain):
            done.add(item)
            order.append(built[item])

    branches = {
        name: Branch(
            name=name,
            head=head,
            created_at=created,
            description=f"v1 branch {tree.renamed[name]!r}" if name in tree.renamed else "",
            system_prompt=tree.prompts.get(name),
        )
        for name, head in tree.heads.items()
    }
    active = tree.name_of.get(ctx.active_branch) if ctx.active_branch is not None else None
    if active is None and ctx.active_branch is not None and tree.name_of:
        notes.append(f"v1 active branch {ctx.active_branch!r} not found")
    active = active or ("main" if "main" in branches else next(iter(branches)))
    extra: dict[str, Any] = {
        "v1_source_sha256": ctx.source_sha256,
        "v1_source_kind": ctx.kind,
        **ctx.flags,
    }
    if ctx.id is not None and ctx.id != cid:
        extra["v1_id"] = ctx.id
        notes.append(f"context id {ctx.id!r} replaced by {cid!r}")
    if ctx.extra:
        extra["v1_extra"] = ctx.extra
    if tree.branch_extra:
        extra["v1_branch_extra"] = tree.branch_extra
    # The store stamps updated_at on every write, so v1's last activity is kept here.
    extra["v1_updated_at"] = updated.isoformat()
    metadata = ContextMetadata(
        id=cid,
        title=ctx.title,
        created_at=created,
        updated_at=updated,
        branches=branches,
        active_branch=active,
        # Only v1's context-level prompt: a branch prompt stays on its branch, so that
        # a branch that had none in v1 does not inherit another branch's.
        system_prompt=ctx.system_prompt,
        tags=ctx.tags,
        extra=extra,
    )
    return ConvertedContext(
        source=ctx,
        metadata=metadata,
        messages=order,
        originals=as_sent(links, [(m, ids[m.position]) for m in ctx.messages]),
        branch_sources={
            name: [m for m, _ in as_sent(links, _listed(tree, name))] for name in tree.sources
        },
        copies=tree.copies,
        problems=problems,
        notes=notes,
    )
