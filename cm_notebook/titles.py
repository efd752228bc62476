"""Context titles: validation, the automatic title, and the title asked of the model.

A context created without a title is ``"Untitled"`` (:data:`UNTITLED`). Its first user
message then gives it a short, deterministic title (:func:`title_from_text`: the first
words of the message), so a list of contexts is readable without any model call.
With ``auto_title=True`` the session also asks the model for a better title once the
first reply is done (:func:`ask_model`); that runs in the background, never delays a
send, and on any provider failure the deterministic title simply stays.
"""

from __future__ import annotations

import functools
import inspect
import re
import unicodedata
from typing import TYPE_CHECKING

import anyio

from ._unicode import grapheme_prefix, refuse_control_characters, without_controls
from .errors import CMError, InvalidInputError, StateError
from .model import Message
from .providers.base import ChatRequest, Provider, TextDelta

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "MAX_TITLE_CHARS",
    "UNTITLED",
    "ask_model",
    "checked_description",
    "checked_tags",
    "clean_model_title",
    "replace_title",
    "title_from_text",
    "validate_title",
]

#: The title of a context that has none yet; it is replaced by an automatic one.
UNTITLED = "Untitled"

#: The longest title accepted (characters).
MAX_TITLE_CHARS = 200

#: How long a model may take to suggest a title before the attempt is given up.
MODEL_TITLE_TIMEOUT = 60.0

_SPACE = re.compile(r"\s+")


def validate_title(value: object) -> str:
    """Return ``value`` stripped if it is an acceptable title, else raise InvalidInputError."""
    if not isinstance(value, str):
        raise InvalidInputError(f"title must be a string, got {type(value).__name__}")
    title = _SPACE.sub(" ", value).strip()
    if not title:
        raise InvalidInputError("title is empty; give the context a name")
    refuse_control_characters(title, "a title")
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidInputError(
            f"title is {len(title)} characters; the limit is {MAX_TITLE_CHARS}. Shorten it."
        )
    return title


def checked_tags(tags: object) -> list[str]:
    """A context's tags, each once, in Unicode normal form C (``"café"`` typed with a
    combining accent and with ``é`` is one tag), in the order given; InvalidInputError
    unless each is a non-empty string without control characters (they are listed
    wherever contexts are)."""
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise InvalidInputError(f"tags must be a list of strings, e.g. ['study'], got {tags!r:.80}")
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise InvalidInputError(f"each tag must be a non-empty string, got {tag!r:.80}")
        refuse_control_characters(tag, f"the tag {tag!r:.40}")
    return list(dict.fromkeys(unicodedata.normalize("NFC", tag) for tag in tags))


def checked_description(description: object) -> str:
    """A branch description, if it is a string whose only control characters are line
    breaks (``\\n``, ``\\r\\n``) and tabs; else InvalidInputError."""
    if not isinstance(description, str):
        raise InvalidInputError(f"description must be a string, got {type(description).__name__}")
    refuse_control_characters(description, "a branch description", lines=True)
    return description


def title_from_text(text: str, *, max_words: int = 8, max_chars: int = 60) -> str:
    """A short title made from a message: its first words, ``…`` if cut; without
    escape sequences and control characters, which a title may not hold (so it is a
    title :func:`validate_title` takes as it is).

    >>> title_from_text("Why is the sky blue?")
    'Why is the sky blue?'
    >>> title_from_text("Please explain in detail how a transformer model computes attention")
    'Please explain in detail how a transformer model…'
    """
    words = _SPACE.sub(" ", without_controls(text)).strip().split(" ")
    title = " ".join(words[:max_words])
    cut = len(words) > max_words
    if len(title) > max_chars:
        # Cut between user-perceived characters, not code points: slicing could leave
        # half a flag, a family emoji's first person, or a letter without its accent.
        head = grapheme_prefix(title, max_chars) or title[:max_chars]
        title = head.rsplit(" ", 1)[0] if " " in head else head
        cut = True
    title = title.rstrip(" ,;:-")
    return (title + "…" if cut else title) or UNTITLED


def clean_model_title(text: str) -> str | None:
    """The title in a model's answer: first line, no quotes or ``Title:`` prefix, no
    escape sequences or control characters (a title :func:`validate_title` takes as it
    is), or None if nothing is left."""
    text = without_controls(text)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = _SPACE.sub(" ", re.sub(r"(?i)^(title\s*:\s*)", "", line))
    line = line.strip().rstrip(".").strip().strip("\"'`*#").strip()
    if not line:
        return None
    return line if len(line) <= 80 else title_from_text(line)


def _request(first_message: str) -> ChatRequest:
    prompt = (
        "Write a title of at most six words for a conversation that begins with the "
        "message below. Answer with the title only.\n\n" + first_message[:2000]
    )
    return ChatRequest(
        messages=[Message(id="title", role="user", content=prompt)],
        params={"max_tokens": 24},
    )


async def ask_model(provider: Provider, first_message: str) -> str | None:
    """Ask ``provider`` for a title; None if it fails, times out or says nothing usable.

    A provider failure is not the user's problem here: the deterministic title stays.
    """
    text = ""
    try:
        with anyio.fail_after(MODEL_TITLE_TIMEOUT):
            async for event in provider.stream(_request(first_message)):
                if isinstance(event, TextDelta):
                    text += event.text
    except (CMError, TimeoutError):
        return None
    return clean_model_title(text)


async def replace_title(store: Store, context_id: str, title: str, expected: str) -> bool:
    """Set ``title`` if the context is still titled ``expected``; False (nothing
    written) if it is not (renamed meanwhile, here or in another process).

    A compare-and-set under the store's lock where the store takes ``expected_title``
    (:class:`~cm_notebook.store.FileStore` does); a store written to the protocol
    before it had that keyword is read, then written, as it was then.
    """
    if _takes_expected_title(type(store)):
        try:
            await store.update_metadata(context_id, title=title, expected_title=expected)
        except StateError:
            return False
        return True
    if (await store.get_metadata(context_id)).title != expected:
        return False
    await store.update_metadata(context_id, title=title)
    return True


@functools.cache
def _takes_expected_title(store_type: type) -> bool:
    method = getattr(store_type, "update_metadata", None)
    if method is None:
        return False  # a proxy answering through __getattr__: its signature is unknown
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "expected_title" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
