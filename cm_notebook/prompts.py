"""System prompts per branch: which prompt a branch's replies are generated under.

A context has a system prompt (``ContextMetadata.system_prompt``) and each branch may
override it (``Branch.system_prompt``): ``None`` inherits the context's, ``""`` means
"no system prompt on this branch", any other text replaces it. This is what lets one
question be asked under two prompts side by side (an A/B prompt experiment):
``session.fan_out(question, [{"system": "..."}, {"system": "..."}])``.

Everything here is pure: no I/O, so the rules are tested without a session.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .model import Branch, ContextMetadata, Message

__all__ = [
    "NO_PROMPT",
    "PromptTrail",
    "effective_system",
    "prompt_label",
    "prompt_trail",
    "reply_prompt",
    "system_of",
]

#: How a transcript names "no system prompt" where one changes to none.
NO_PROMPT = "(no system prompt)"


def effective_system(metadata: ContextMetadata, branch: str) -> str | None:
    """The system prompt a reply on ``branch`` is generated under (None: none).

    A branch that is not (or no longer) in ``metadata`` inherits the context's prompt.
    """
    found: Branch | None = metadata.branches.get(branch)
    if found is not None and found.system_prompt is not None:
        return found.system_prompt or None
    return metadata.system_prompt or None


def system_of(request: Sequence[Message]) -> dict[str, str | None]:
    """``{"system_prompt": ...}``: the system prompt a request's messages begin with."""
    first = request[0] if request else None
    return {
        "system_prompt": first.content if first is not None and first.role == "system" else None
    }


_WORD = re.compile(r"[^\W_]+")


def prompt_label(prompt: str | None, *, words: int = 4) -> str:
    """A short branch-name part naming a prompt: its first words, lower case.

    ``"Answer in five words."`` gives ``"answer-in-five-words"``; no prompt gives
    ``"no-system"``. Used to name fan-out arms that differ by their system prompt.
    """
    if not prompt:
        return "no-system"
    found = _WORD.findall(prompt.lower())[:words]
    return "-".join(found) or "system"


def reply_prompt(reply: Message, current: str | None) -> str | None:
    """The system prompt ``reply`` was generated under (None: none).

    A reply records it (``metadata.system_prompt``, set by the runner). A recorded
    "none" is trusted only on a reply that also records the request it was made by
    (``request_hash``): every stored message has the key, so a reply written another
    way (migrated from v1, stored by an older cm_notebook, built by hand) reads as
    "none" too. Such a reply is taken to be made under ``current``, its branch's
    prompt now (what views showed for every reply before they recorded their own).
    """
    meta = reply.metadata
    if meta.system_prompt:
        return meta.system_prompt
    if "system_prompt" in meta.model_fields_set and meta.request_hash is not None:
        return None
    return current or None


@dataclass(frozen=True)
class PromptTrail:
    """Which system prompt each part of a branch's transcript was made under.

    ``first`` is shown at the top: the prompt of the first reply (the branch's current
    prompt when there is none). ``changes`` maps the index of a message to the prompt
    in force from there on, where it differs from the one before: the index is where
    the turn of the first reply made under it begins (after the last reply made under
    the one before, and the tool results answering that reply). ``next`` is the
    branch's current prompt, which the next reply is generated under, and
    ``next_differs`` whether it differs from the last reply's (then a transcript says
    so at its end).
    """

    first: str | None
    changes: Mapping[int, str | None] = field(default_factory=dict)
    next: str | None = None
    next_differs: bool = False


def prompt_trail(messages: Sequence[Message], current: str | None) -> PromptTrail:
    """The :class:`PromptTrail` of ``messages`` (a branch's path, or the part of it a
    view shows) on a branch whose prompt is now ``current``.

    Every transcript (the Markdown export, the static HTML, ``cm-notebook show``, the
    saved copy of the chat) states prompts by it: a branch forked by
    :meth:`~cm_notebook.session.ContextSession.edit_system`, or made with its own
    prompt after replies, keeps its earlier replies attributed to the prompt they were
    made under. With one prompt throughout it is just ``first``, as before.
    """
    current = current or None
    changes: dict[int, str | None] = {}
    replied = False
    last: str | None = None
    first: str | None = current
    turn_start = 0  # where the turn of the next reply begins
    for index, message in enumerate(messages):
        if message.role == "assistant":
            prompt = reply_prompt(message, current)
            if not replied:
                first, replied = prompt, True
            elif prompt != last:
                changes[turn_start] = prompt
            last = prompt
            turn_start = index + 1
        elif message.role == "tool" and turn_start == index:
            # A tool result answers the reply before it: part of that reply's round.
            turn_start = index + 1
    return PromptTrail(first, changes, current, replied and current != last)
