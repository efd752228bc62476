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
from collections.abc import Sequence

from .model import Branch, ContextMetadata, Message

__all__ = ["effective_system", "prompt_label", "system_of"]


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
