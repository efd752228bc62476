"""The reasoning a request sends back with a reply, as the converters send it.

One rule for the request and for its provenance hash (:mod:`cm_notebook.provenance`):
OpenAI-compatible servers (``openai``, ``local``) get a reply's reasoning back as
``reasoning_content`` (:func:`~cm_notebook.providers._convert.sends_reasoning_back`),
Anthropic its signed thinking blocks, each only from the provider and model that
produced it; other providers get none.
"""

from __future__ import annotations

from ..model import Message
from ._anthropic_request import own_thinking_blocks
from ._convert import sends_reasoning_back

__all__ = ["reasoning_sent_back"]


def reasoning_sent_back(
    message: Message, provider: str, model: str
) -> str | list[dict[str, str]] | None:
    """What a request to ``provider``'s ``model`` sends back of ``message``'s reasoning:
    its text, its thinking blocks, or None."""
    if provider == "anthropic":
        return own_thinking_blocks(message, (provider, model)) or None
    if provider in ("openai", "local") and sends_reasoning_back(message, (provider, model)):
        return message.metadata.reasoning
    return None
