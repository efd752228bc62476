"""The steps a :class:`~cm_notebook.testing.ScriptedProvider` turn is made of, and the
helpers that cut a scripted reply into chunks (private: the provider's builder methods
are the public vocabulary)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .errors import InvalidInputError
from .providers.base import ReasoningDelta, RefusalDelta, StreamChunk, TextDelta, ToolCallRequest

#: How a reply's text is cut into :class:`TextDelta` chunks: ``None`` one delta,
#: an ``int`` that many characters per delta, ``"words"`` one word (with its trailing
#: whitespace) per delta, or an explicit sequence of pieces.
Chunks = int | Literal["words"] | Sequence[str] | None


# One step of a turn. Kept private: the builder methods are the public vocabulary.
@dataclass(frozen=True)
class _Emit:
    chunk: StreamChunk


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Raise:
    error: BaseException


@dataclass(frozen=True)
class _Hang:
    pass


@dataclass(frozen=True)
class _EstimatedUsage:
    # Usage computed from the request at stream time (word counts), because the
    # request is not known when the turn is scripted.
    output_tokens: int


# The chunks a per-chunk delay applies to: what a real model produces one by one (its
# reasoning too: a thinking model may reason for long before it answers).
_STREAMED = (TextDelta, ReasoningDelta, RefusalDelta, ToolCallRequest)

_Step = _Emit | _Sleep | _Raise | _Hang | _EstimatedUsage


@dataclass
class _Turn:
    steps: list[_Step] = field(default_factory=list)


def _split_chunks(text: str, chunks: Chunks) -> list[str]:
    """Cut ``text`` into stream pieces as :data:`Chunks` describes (empty text: none)."""
    if chunks is None:
        return [text] if text else []
    if chunks == "words":
        # Split before every word that follows whitespace: "a b" -> ["a ", "b"].
        return [piece for piece in re.split(r"(?<=\s)(?=\S)", text) if piece]
    if isinstance(chunks, int):
        if isinstance(chunks, bool) or chunks < 1:
            raise InvalidInputError(f"chunk size must be a positive int, not {chunks!r}")
        return [text[i : i + chunks] for i in range(0, len(text), chunks)]
    if isinstance(chunks, str):
        raise InvalidInputError(f"chunks must be None, an int, 'words' or a list, not {chunks!r}")
    pieces = list(chunks)
    if "".join(pieces) != text:
        raise InvalidInputError("explicit chunks must join up to exactly the reply text")
    return [piece for piece in pieces if piece]


_WORD_COUNTS_KEPT = 4096


def _words(text: str) -> int:
    return len(text.split())


def _check_delay(delay: float) -> float:
    if delay < 0:
        raise InvalidInputError(f"delay must be >= 0 seconds, not {delay!r}")
    return float(delay)


def _partial(text: str, count: int) -> list[str]:
    if count == 0:
        return []
    if not text:
        return [f"part{i} " for i in range(1, count + 1)]
    # Near-equal pieces, the first ones one character longer when it does not divide.
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return [piece for piece in pieces if piece]
