"""Which v1 ``tool`` message answers which tool call, and ids that are unique.

v1 matched results to calls by id alone, and its ids were not unique: a front end that
numbered each turn's calls from ``call_0`` repeated the same id in every turn. So a
result is matched on the message tree, as the model saw it: a ``tool`` message answers
a call of the message it follows on its own path (other tool messages in between
aside), the first call with its id not yet answered on that path; that is also the
only place where providers accept a result. A ``tool`` message without an id (v1's
older "function calling": ``{"role": "function", "name": ...}`` after a
``function_call``) answers the first unanswered call there, of its tool name if it
gives one.

Then every call gets an id unique in the context (the first use of an id keeps it; a
later one gets ``_`` and 8 hex digits added, derived from its place, as the live runner
does with random ones), and each ``tool`` message carries the id of the call it answers.
A ``tool`` message that answers no call (no call there has its id, or that call is
answered already) is an *orphan*: ``_convert`` keeps it as a user message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from ._toolcalls import call_ids_of
from ._util import derived_id
from ._v1 import V1Message

__all__ = ["ToolLinks", "as_sent", "link_tool_results"]


@dataclass
class ToolLinks:
    """The outcome of :func:`link_tool_results`, by converted message id."""

    ids: dict[str, dict[int, str]] = field(default_factory=dict)  # call index -> final id
    results: dict[str, dict[int, str]] = field(default_factory=dict)  # call index -> text
    answers: dict[str, str] = field(default_factory=dict)  # tool message -> final call id
    orphans: set[str] = field(default_factory=set)  # tool messages answering no call
    renamed: dict[str, int] = field(default_factory=dict)  # v1 call id -> calls renamed


_Call = tuple[str, int]  # (asking message id, call index)


def _walk(order: list[str], parent: Mapping[str, str | None]) -> Iterator[tuple[str, bool]]:
    """(message id, True) on entering each message, (id, False) on leaving it: a
    depth-first walk of the tree, roots and children in ``order``, with no recursion."""
    children: dict[str | None, list[str]] = {}
    for node in order:
        children.setdefault(parent[node], []).append(node)
    stack: list[tuple[str, bool]] = [(n, True) for n in reversed(children.get(None, []))]
    while stack:
        node, entering = stack.pop()
        yield node, entering
        if entering:
            stack.append((node, False))
            stack.extend((c, True) for c in reversed(children.get(node, [])))


def link_tool_results(
    context_id: str,
    messages: Mapping[str, tuple[V1Message, str | None]],
    parent: Mapping[str, str | None],
    problems: list[str],
    notes: list[str],
) -> ToolLinks:
    """Match tool messages to calls and make call ids unique (see the module docstring);
    orphans go to ``problems``, renamed ids and linked function results to ``notes``.

    ``messages``: converted id -> (v1 message, the id of the message it is a copy of, or
    None), originals first in v1 order; ``parent``: the converted tree's parent links.
    """
    links = ToolLinks()
    v1_ids = {node: call_ids_of(msg, context_id) for node, (msg, _) in messages.items()}
    used: set[str] = set()
    for node, calls in v1_ids.items():
        final: dict[int, str] = {}
        for index, (v1_id, _) in calls.items():
            call_id = v1_id
            while call_id in used:
                call_id = f"{v1_id[:150]}_{derived_id('', context_id, node, index, call_id)[:8]}"
            if call_id != v1_id:
                links.renamed[v1_id] = links.renamed.get(v1_id, 0) + 1
            used.add(call_id)
            final[index] = call_id
        links.ids[node] = final

    # The nearest non-tool message above the current one, and the calls answered on
    # the current path; both undone on leaving a message.
    answered: set[_Call] = set()
    answering: dict[str, _Call] = {}  # tool message on the current path -> its call
    above: list[str] = []
    for node, entering in _walk(list(messages), parent):
        msg = messages[node][0]
        if msg.role != "tool":
            if entering:
                above.append(node)
            else:
                above.pop()
            continue
        if not entering:
            if node in answering:
                answered.discard(answering.pop(node))
            continue
        call = _answered_call(msg, answered, above, v1_ids)
        if call is None:
            links.orphans.add(node)
        else:
            answered.add(call)
            answering[node] = call
            links.answers[node] = links.ids[call[0]][call[1]]
            links.results.setdefault(call[0], {}).setdefault(call[1], msg.content)
    # A copy made for a branch keeps the results its original got (in v1 it is the same
    # message), where no tool message under the copy answers it.
    for node, (_, original) in messages.items():
        if original is not None and original in links.results:
            own = links.results.setdefault(node, {})
            for index, text in links.results[original].items():
                own.setdefault(index, text)
    _report(links, messages, problems, notes)
    return links


def _report(
    links: ToolLinks,
    messages: Mapping[str, tuple[V1Message, str | None]],
    problems: list[str],
    notes: list[str],
) -> None:
    for v1_id, count in links.renamed.items():
        notes.append(
            f"tool call id {v1_id!r} is used by {count + 1} calls; each later one got a new "
            "id so that every result stays with its own call (metadata.v1_tool_call_extra "
            "keeps the v1 id)"
        )
    for node, (msg, original) in messages.items():
        if original is not None:
            continue  # a copy: its original is reported
        if node in links.orphans:
            which = f"call {msg.tool_call_id!r}" if msg.tool_call_id is not None else "a call"
            problems.append(
                f"message #{msg.position} is a tool result for {which}, but the message "
                "before it made no such call (or it was answered already); kept as a user "
                "message (metadata.v1_role and v1_tool_call_id say what it was)"
            )
        elif msg.role == "tool" and msg.tool_call_id is None and node in links.answers:
            notes.append(
                f"message #{msg.position}: a v1 function result without a call id; linked "
                f"to the call it follows ({links.answers[node]!r})"
            )


def as_sent(links: ToolLinks, pairs: list[tuple[V1Message, str]]) -> list[tuple[V1Message, str]]:
    """(v1 message, converted id) pairs with each orphan's role as it was converted
    ("user"), so that checking the written messages against v1 expects that role."""
    return [
        (replace(msg, role="user") if node in links.orphans else msg, node) for msg, node in pairs
    ]


def _answered_call(
    msg: V1Message,
    answered: set[_Call],
    above: list[str],
    v1_ids: Mapping[str, Mapping[int, tuple[str, str]]],
) -> _Call | None:
    """The call a tool message answers, or None if it answers none: the first call not
    yet answered, with the message's id (or, without one, its tool name if it gives
    one), of the message it follows. Providers refuse a result anywhere else."""
    if not above:
        return None
    asker = above[-1]
    name = msg.raw.get("name")
    for index, (v1_id, call_name) in v1_ids[asker].items():
        if (asker, index) in answered:
            continue
        if msg.tool_call_id is not None:
            if v1_id == msg.tool_call_id[:200]:
                return asker, index
        elif not isinstance(name, str) or name == call_name:
            return asker, index
    return None
