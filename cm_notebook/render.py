"""How messages and contexts look to people: short reprs, static HTML, status words.

Static HTML is what a saved notebook shows without a kernel: inline styles only, and
every piece of user or model text escaped. The reprs are one line, stable across runs
(no timestamps, no addresses), so nbval can compare them and a list of messages reads
at a glance. :func:`status_label` is the one place that says how a message ended, used
by the HTML, the Markdown export, ``cm-notebook show`` and the reprs alike: a reply
cut by the token limit (``finish_reason == "length"``), stopped by the provider's
content filter (``"content_filter"``) or refused by the model (``"refusal"``) says so
everywhere (:func:`stop_note`), as do a refusal the API flagged in its stream and a
reply that reasoned but gave no answer. A tool call is shown as the branch shown holds
it, its outcome and its result both (:func:`shown_call`).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._cli_advice import for_contexts_in
from ._html_text import WRAP_ANYWHERE, isolated, json_text_html
from ._reasoning_html import NO_ANSWER, gave_no_answer, reasoning_html
from ._theme import MUTED
from ._unicode import grapheme_prefix
from .model import Branch, ContextMetadata, Message, MessageStatus, ToolCall, ToolCallStatus
from .prompts import NO_PROMPT, effective_system, prompt_trail

__all__ = [
    "CONTENT_FILTERED",
    "CUT_OFF",
    "REFUSED",
    "SAVED_MESSAGES",
    "ShownCall",
    "branch_repr",
    "code_fence",
    "context_repr",
    "conversation_html",
    "longest_backtick_run",
    "message_html",
    "message_repr",
    "one_line",
    "shown_call",
    "status_label",
    "stop_note",
    "tool_call_repr",
    "tool_results",
    "was_cut_off",
]

#: How many of a branch's last messages a saved copy of it holds: the views and the
#: session's own HTML (a branch of thousands would be megabytes in the notebook).
SAVED_MESSAGES = 200

#: How a reply cut by the token limit is described wherever it is shown.
CUT_OFF = "cut off at the token limit"

#: How a reply stopped by the provider's content filter is described.
CONTENT_FILTERED = "stopped by the provider's content filter"

#: How a reply the model refused to give (Anthropic's ``refusal`` finish, OpenAI's
#: ``refusal`` text) is described.
REFUSED = "the model refused"

# Finish reasons meaning "the token limit stopped it": OpenAI's word, which the
# providers translate to, and Anthropic's own, which imported data may carry.
_LENGTH_REASONS = {"length", "max_tokens"}

# Finish reasons meaning the reply was stopped before its end by something other than
# the token limit, with what is said of them; the text received is all there is.
_STOP_NOTES = {
    "content_filter": (CONTENT_FILTERED, "the reply is incomplete"),
    "refusal": (REFUSED, "the reply may be incomplete"),
}
# How many branch names the HTML lists before saying how many more there are.
_MAX_BRANCHES_SHOWN = 12

# Light cards with their own dark text: a dark theme's light text (JupyterLab Dark, VS
# Code) on these backgrounds could not be read.
_ROLE_STYLE = {
    "user": "background:#eef4ff;color:#1f2937;border-left:3px solid #3b82f6",
    "assistant": "background:#f6f6f6;color:#1f2937;border-left:3px solid #10b981",
    "system": "background:#fff8e6;color:#1f2937;border-left:3px solid #f59e0b",
    "tool": "background:#f3efff;color:#1f2937;border-left:3px solid #8b5cf6",
}


def longest_backtick_run(text: str) -> int:
    """The length of the longest run of backticks in ``text`` (0 for none), found in
    one pass: a fence grown one backtick at a time rescans the text at each length."""
    return max(map(len, _BACKTICK_RUNS.findall(text)), default=0)


_BACKTICK_RUNS = re.compile(r"`+")


def code_fence(text: str, info: str = "") -> str:
    """``text`` as a fenced Markdown code block whose fence is longer than any backtick
    run inside, so nothing in the text can close it."""
    ticks = "`" * max(3, longest_backtick_run(text) + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def was_cut_off(message: Message) -> bool:
    """True if the model stopped because it reached its token limit."""
    return message.metadata.finish_reason in _LENGTH_REASONS


def stop_note(message: Message) -> tuple[str, str] | None:
    """What stopped a reply before its natural end, and what that means for its text:
    ``(CUT_OFF, "the reply is incomplete")`` for the token limit, the same with
    :data:`CONTENT_FILTERED` for a content filter, ``(REFUSED, "the reply may be
    incomplete")`` for a refusal; None for a reply that ended by itself."""
    reason = message.metadata.finish_reason
    if reason in _LENGTH_REASONS:
        return CUT_OFF, "the reply is incomplete"
    return _STOP_NOTES.get(reason) if reason else None


def status_label(message: Message) -> str | None:
    """How the message ended, in words, or None for a reply that simply completed."""
    parts = [] if message.status is MessageStatus.COMPLETE else [message.status.value]
    note = stop_note(message)
    if note is not None:
        parts.append(note[0])
    if message.metadata.refusal and (note is None or note[0] != REFUSED):
        parts.append(REFUSED)  # flagged in the stream (OpenAI's refusal), not by a finish
    if gave_no_answer(message):
        parts.append(NO_ANSWER)
    return ", ".join(parts) or None


def one_line(text: str, width: int = 40) -> str:
    """``text`` on one line (white space runs as one space), cut to ``width``
    characters with an ellipsis: for a repr, a table cell, a line of a saved output.
    The cut falls between two user-perceived characters: never inside a flag, an emoji
    sequence or a letter with its accent."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else grapheme_prefix(flat, width - 1) + "…"


def message_repr(message: Message) -> str:
    """``<Message m… assistant complete 'The capital…' (42 chars)>``."""
    status = status_label(message) or message.status.value
    answers = f" -> {message.tool_call_id}" if message.tool_call_id else ""
    calls = len(message.tool_calls)
    tools = f", {calls} tool call{'s' if calls != 1 else ''}" if calls else ""
    return (
        f"<Message {message.id} {message.role}{answers} {status} "
        f"{one_line(message.content)!r} ({len(message.content)} chars{tools})>"
    )


def tool_call_repr(call: ToolCall) -> str:
    """``<ToolCall call_1 lookup pending {"q": "x"}>``."""
    args = one_line(json.dumps(call.arguments, ensure_ascii=False, default=str))
    return f"<ToolCall {call.id} {call.name} {call.status.value} {args}>"


def branch_repr(branch: Branch) -> str:
    """``<Branch 'main' head=m…>`` (and where it forked, and its own system prompt)."""
    parts = [f"<Branch {branch.name!r} head={branch.head}"]
    if branch.forked_from is not None:
        parts.append(f"forked_from={branch.forked_from}")
    if branch.system_prompt is not None:
        parts.append(f"system={one_line(branch.system_prompt)!r}")
    if branch.labels:
        parts.append("labels=" + ",".join(f"{k}={v}" for k, v in sorted(branch.labels.items())))
    return " ".join(parts) + ">"


def context_repr(metadata: ContextMetadata) -> str:
    """``<ContextMetadata c… 'Title' 3 branches, active 'main'>``."""
    count = len(metadata.branches)
    return (
        f"<ContextMetadata {metadata.id} {one_line(metadata.title)!r} {count} "
        f"branch{'es' if count != 1 else ''}, active {metadata.active_branch!r}>"
    )


def message_html(message: Message, results: Mapping[str, Message] | None = None) -> str:
    """One message as a static HTML block (content escaped; a reply's reasoning
    collapsed before it, see :mod:`cm_notebook._reasoning_html`); its tool calls as the
    branch whose :func:`tool_results` are ``results`` holds them (:func:`shown_call`)."""
    role = html.escape(message.role)
    style = _ROLE_STYLE.get(message.role, "")
    notes = []
    label = status_label(message)
    if label:
        notes.append(f'<b style="color:#b45309">{html.escape(label)}</b>')
    if message.metadata.model:
        via = f" via {message.metadata.endpoint}" if message.metadata.endpoint else ""
        notes.append(isolated(message.metadata.model + via))
    if message.metadata.error:
        notes.append("error: " + isolated(message.metadata.error))
    calls = tool_calls_html(message, results)
    note = f' <span style="color:{MUTED}">({", ".join(notes)})</span>' if notes else ""
    stopped = stop_note(message)
    cut = (
        f'<div style="font-size:80%;color:#b45309">&#9986; {html.escape(stopped[0])}: '
        f"{stopped[1]}</div>"
        if stopped
        else ""
    )
    return (
        # Long words and URLs wrap anywhere: the card stays as wide as its place.
        f'<div class="cm-message cm-{role}" style="{style};padding:6px 10px;'
        f'margin:4px 0;border-radius:4px;{WRAP_ANYWHERE}"><div style="font-size:80%;color:{MUTED}">'
        f"<b>{role}</b>{note}</div>{reasoning_html(message)}"
        f'<div style="white-space:pre-wrap">{html.escape(message.content)}</div>{calls}{cut}'
        "</div>"
    )


def call_arguments_text(message: Message, call: ToolCall, *, indent: int | None = None) -> str:
    """``call``'s arguments as text: their JSON, or what the model wrote when it was no
    JSON object (``MessageMetadata.tool_arguments_text``: the call failed on it)."""
    written = message.metadata.tool_arguments_text.get(call.id)
    if written is not None:
        return written
    return json.dumps(call.arguments, ensure_ascii=False, indent=indent, default=str)


def tool_results(messages: Iterable[Message]) -> dict[str, Message]:
    """The results a branch holds: tool call id -> the tool message among ``messages``
    (the branch's, in order) that answers it (see :func:`shown_call`)."""
    return {m.tool_call_id: m for m in messages if m.role == "tool" and m.tool_call_id}


@dataclass(frozen=True)
class ShownCall:
    """A tool call as a branch shows it (see :func:`shown_call`): how it ended there
    (``status``), the result the model was sent there (``result``, None while it has
    none) and why it ended so (``reason``, None when the branch's outcome is not the
    call's own)."""

    status: ToolCallStatus
    result: str | None
    reason: str | None


def shown_call(call: ToolCall, results: Mapping[str, Message]) -> ShownCall:
    """``call`` as shown on a branch whose :func:`tool_results` are ``results``.

    The tool message there that answers it tells its outcome (``metadata.tool_status``;
    the call's status for a message stored before it was recorded) and its result, which
    is what the model was sent. They differ from the call's own after a counterfactual
    edit of a result: the new branch holds the edited tool message, and shares the reply
    that made the call, with its original status and result, with the branch it came
    from; a failed call edited into an answer is shown done there. Without an answer on
    the branch (a call waiting for a decision or running; a reply shown alone, with
    empty ``results``) the call shows its own status, result and reason. The call's
    ``reason`` (a denial's, a failure's) is shown only where its outcome is the call's.
    """
    answer = results.get(call.id)
    if answer is None:
        return ShownCall(call.status, call.result, call.reason)
    status = answer.metadata.tool_status or call.status
    return ShownCall(status, answer.content, call.reason if status is call.status else None)


def tool_calls_html(message: Message, results: Mapping[str, Message] | None = None) -> str:
    """The tool calls a reply asked for, one line each: name, arguments (JSON), status
    (the outcome the branch whose :func:`tool_results` are ``results`` holds, see
    :func:`shown_call`; the call's own without them). The name and the arguments are
    isolated (:mod:`._html_text`): a right-to-left argument, or a bidirectional
    override in one, cannot move or reverse the status."""
    return "".join(
        # A gear (not the wrench emoji, which needs a color-emoji font), outside the
        # monospace run: monospace fonts often lack it.
        f'<div class="cm-tool-call" style="font-size:90%">&#9881; '
        f'<span style="font-family:monospace">{isolated(c.name)}'
        f"({json_text_html(call_arguments_text(message, c))})"
        f" &rarr; {html.escape(shown_call(c, results or {}).status.value)}</span></div>"
        for c in message.tool_calls
    )


def _branches_html(metadata: ContextMetadata, shown: str) -> str:
    names = list(metadata.branches)
    listed = names[:_MAX_BRANCHES_SHOWN]
    # However many there are, the branch shown and the active one are always named.
    listed += [n for n in dict.fromkeys((shown, metadata.active_branch)) if n not in listed]
    items = []
    for name in listed:
        text = isolated(name)  # a right-to-left name cannot reorder the list around it
        if name == shown:
            text = f"<b>{text}</b>"
        if name == metadata.active_branch:
            text += " (active)"
        items.append(text)
    more = len(names) - len(listed)
    if more > 0:
        items.append(f"and {more} more")
    count = len(names)
    return (
        f'<div class="cm-branches" style="font-size:85%;color:{MUTED}">{count} '
        f"branch{'es' if count != 1 else ''}: {', '.join(items)}</div>"
    )


def _prompt_html(label: str, prompt: str | None) -> str:
    # A system card like the one at the top, its heading saying what changed.
    text = html.escape(prompt) if prompt else f"<i>{html.escape(NO_PROMPT)}</i>"
    return (
        f'<div class="cm-message cm-system" style="{_ROLE_STYLE.get("system", "")};'
        f'padding:6px 10px;margin:4px 0;border-radius:4px;{WRAP_ANYWHERE}">'
        f'<div style="font-size:80%;color:{MUTED}"><b>{html.escape(label)}</b></div>'
        f'<div style="white-space:pre-wrap">{text}</div></div>'
    )


def conversation_html(
    metadata: ContextMetadata,
    messages: Sequence[Message],
    branch: str | None = None,
    *,
    last: int | None = None,
    data_dir: Path | None = None,
) -> str:
    """A context's branch as static HTML: title, every branch (which one is shown and
    which is active), the system prompt its first reply shown was made under (the
    branch's when none is shown), a note where a later reply's prompt differs and one
    at the end when the branch's prompt (the next reply's) differs from the last
    reply's (see :func:`~cm_notebook.prompts.prompt_trail`), its messages (with
    ``last``, only the last ``last`` of them, and a line saying how many are left out
    and how to get all, the command given ``--data-dir`` when ``data_dir``, the folder
    the context is stored in, is not the default one)."""
    shown = branch or metadata.active_branch
    kept = messages if last is None or len(messages) <= last else messages[-last:]
    earlier = len(messages) - len(kept)
    count = f"the last {len(kept):,} of {len(messages):,}" if earlier else f"{len(messages)}"
    header = (
        # <bdi>: a title's or a branch name's bidirectional overrides, and its
        # right-to-left letters, stay in it, never moving the words after it.
        f'<div style="font-weight:bold">{isolated(metadata.title)} '
        f'<span style="font-weight:normal;color:{MUTED}">branch '
        f"{isolated(shown)} · {count} messages</span></div>"
    )
    # Each reply under the prompt it was made under (see prompt_trail), for the part shown.
    prompts = prompt_trail(kept, effective_system(metadata, shown))
    system = ""
    if prompts.first:
        system = message_html(Message(id="system", role="system", content=prompts.first))
    left_out = ""
    if earlier:
        whole = for_contexts_in(
            f"`cm-notebook export {metadata.id}` (or session.export() in Python) writes the "
            "whole conversation.",
            data_dir,
        )
        left_out = (
            f'<div style="color:{MUTED};margin:4px 0">{earlier:,} earlier messages are not in '
            f"this copy. {html.escape(whole)}</div>"
        )
    results = tool_results(messages)  # the calls' outcomes on this branch
    body = "".join(
        (_prompt_html("system prompt changed", prompts.changes[i]) if i in prompts.changes else "")
        + message_html(m, results)
        for i, m in enumerate(kept)
    )
    if prompts.next_differs:
        body += _prompt_html("system prompt for the next reply", prompts.next)
    branches = _branches_html(metadata, shown)
    return (
        f'<div class="cm-conversation" style="{WRAP_ANYWHERE}">'
        f"{header}{branches}{system}{left_out}{body}</div>"
    )
