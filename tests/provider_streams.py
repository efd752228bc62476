"""Driving a provider's stream directly in tests: a request, every chunk, the text."""

from __future__ import annotations

from typing import Any

from cm_notebook.errors import ProviderError
from cm_notebook.model import Message
from cm_notebook.providers.base import ChatRequest, Provider, StreamChunk, TextDelta


def request(text: str = "Hi", **params: Any) -> ChatRequest:
    """A one-message request (``params``: generation parameters)."""
    return ChatRequest(messages=[Message(role="user", content=text)], params=params)


async def run(
    provider: Provider, req: ChatRequest | None = None
) -> tuple[list[StreamChunk], ProviderError | None]:
    """All chunks until the end or the first provider error (returned, not raised);
    the provider is closed after."""
    events: list[StreamChunk] = []
    try:
        async for event in provider.stream(req or request()):
            events.append(event)
    except ProviderError as exc:
        return events, exc
    finally:
        await provider.aclose()
    return events, None


def text_of(events: list[StreamChunk]) -> str:
    """The text the chunks stream."""
    return "".join(e.text for e in events if isinstance(e, TextDelta))
