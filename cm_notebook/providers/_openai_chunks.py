"""OpenAI ``chat.completion.chunk`` objects assembled into the package's stream chunks.

The SDK builds its chunk objects without validating them, so a field that did not
match its type arrives as a raw dict or value: every read here takes both shapes, and
anything that is no JSON object where one belongs is a transient "malformed response"
error, never read as empty. Tool calls arrive in pieces (by index, sometimes by id) and
are emitted, whole, with the finish reason. :attr:`ChunkAssembler.progress` counts the
pieces that move a reply on, which the provider's timeout bounds the time between
(see :mod:`._progress_deadline`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ..errors import ProviderError
from ..redact import get_logger
from . import _errors
from .base import ReasoningDelta, RefusalDelta, StreamChunk, TextDelta, ToolCallRequest, Usage

__all__ = ["ChunkAssembler", "malformed"]

# The provider's logger: records through it are redacted (a server may echo a key).
logger = get_logger("cm_notebook.providers.openai")

_PROVIDER = "openai"

# The delta fields servers stream reasoning in, the first one present is read (a
# server sending both sends the same text twice).
_REASONING_FIELDS = ("reasoning_content", "reasoning")


@dataclass
class _PartialCall:
    index: int  # the server's index: calls are emitted in index order
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _get(obj: Any, name: str) -> Any:
    # SDK chunks are built without validation, so a field that did not match its type
    # is left as a raw dict or value: read both shapes.
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _object(value: Any, what: str) -> Any:
    # A JSON object as the SDK gives it (its model, or a raw dict where a field did not
    # match its type). Anything else is the server's mistake, never read as empty.
    if isinstance(value, (Mapping, BaseModel)):
        return value
    raise malformed(f"{what} is not a JSON object: {value!r:.200}")


def malformed(detail: str) -> ProviderError:
    return _errors.malformed_response_error(provider=_PROVIDER, detail=detail)


def _count(value: Any) -> int | None:
    # A token count as servers send it: an int, or a whole float (12.0) from servers
    # that serialise numbers as floats. Anything else is no count at all.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        return None
    return int(value)


def _usage(raw: Any) -> Usage | None:
    """The counts in a usage report, or None if it has none.

    A count the server left out is 0, as in :class:`~cm_notebook.model.TokenUsage`
    (and the ``local`` provider); the output count falls back to ``total_tokens``
    minus ``prompt_tokens`` when only those two are given.
    """
    prompt = _count(_get(raw, "prompt_tokens"))
    completion = _count(_get(raw, "completion_tokens"))
    total = _count(_get(raw, "total_tokens"))
    if completion is None and total is not None and prompt is not None and total >= prompt:
        completion = total - prompt
    if prompt is None and completion is None:
        if raw:  # a report, but not one we can read: worth a note, not a failure
            logger.debug("openai usage without token counts: %.200r", raw)
        return None
    return Usage(input_tokens=prompt or 0, output_tokens=completion or 0)


class ChunkAssembler:
    """Turns ``chat.completion.chunk`` objects into stream chunks; keeps partial tool calls."""

    def __init__(self) -> None:
        # In the order they started; ``_open`` maps a server index to the call that
        # index now continues (a new id under a used index starts another call).
        self.calls: list[_PartialCall] = []
        self._open: dict[int, _PartialCall] = {}
        # Per index, the name of a call announced (a name repeated after the open call's
        # arguments were whole) whose arguments have not come yet.
        self._next_name: dict[int, str] = {}
        self.finish: str | None = None
        self.usage: Usage | None = None
        # The usage chunk that ends a reply comes after its finish reason; one sent
        # earlier (servers that report usage on every chunk) is not the last.
        self.usage_after_finish = False
        self.received = 0
        #: Grows with every piece of real progress: text, reasoning, a refusal, a
        #: tool-call piece, usage, the finish reason. A chunk that leaves it as it was
        #: (an empty delta, a role alone) moved nothing on, like a keep-alive.
        self.progress = 0
        #: Grows with every delta that names the reply's role: the chunk that usually
        #: opens a reply, part of it though it moves nothing on (unlike an empty delta,
        #: which is a keep-alive in all but name).
        self.opened = 0
        self.request_id: str | None = None  # the completion's id, for provenance

    def feed(self, chunk: Any) -> list[StreamChunk]:
        self.received += 1
        chunk = _object(chunk, "a chunk")
        chunk_id = _get(chunk, "id")
        if self.request_id is None and isinstance(chunk_id, str) and chunk_id:
            self.request_id = chunk_id[:500]
        events: list[StreamChunk] = []
        raw_usage = _get(chunk, "usage")
        if raw_usage is not None:
            if self.finish is not None:
                self.usage_after_finish = True
            # Usage is optional: a report with counts missing or of the wrong type costs
            # the counts, never the reply (which is whole once the finish reason came).
            usage = _usage(raw_usage)
            if usage is not None:
                self.usage = usage
                self.progress += 1
        choices = _get(chunk, "choices")
        if choices is None:
            choices = []
        if not isinstance(choices, list):
            raise malformed(f"'choices' is not a list: {choices!r:.200}")
        for choice in choices:
            choice = _object(choice, "a choice")
            if (_get(choice, "index") or 0) != 0:
                continue  # only one reply is requested
            delta = _get(choice, "delta")
            if delta is not None:
                events.extend(self._delta(_object(delta, "a delta")))
            reason = _get(choice, "finish_reason")
            if reason is not None and not isinstance(reason, str):
                raise malformed(f"finish_reason is not a string: {reason!r:.200}")
            # Only a non-empty reason ends the reply: servers with a plain string field
            # (Go's, among others) send "" on every chunk before the last.
            if reason:
                self.finish = reason
                self.progress += 1
                if raw_usage is not None:
                    self.usage_after_finish = True  # usage in the finish reason's chunk
                events.extend(self._complete_calls())
        self.progress += len(events)
        return events

    def done(self, usage_asked: bool) -> bool:
        """Whether the reply is whole: its finish reason came, and the usage chunk
        after it too if usage was asked for."""
        return self.finish is not None and (self.usage_after_finish or not usage_asked)

    def _delta(self, delta: Any) -> list[StreamChunk]:
        events: list[StreamChunk] = []
        if _get(delta, "role"):
            self.opened += 1
        # Reasoning comes first in a reply: DeepSeek and llama.cpp name it
        # reasoning_content, vLLM and OpenRouter reasoning. Only text is read (OpenRouter
        # also sends structured reasoning_details, which carry the same text).
        for name in _REASONING_FIELDS:
            thought = _get(delta, name)
            if isinstance(thought, str) and thought:
                events.append(ReasoningDelta(thought, name))
                break
        text = _get(delta, "content")
        if text is not None and not isinstance(text, str):
            raise malformed(f"delta content is not text: {text!r:.200}")
        if text:
            events.append(TextDelta(text))
        refusal = _get(delta, "refusal")
        if isinstance(refusal, str) and refusal:
            events.append(RefusalDelta(refusal))
        pieces = _get(delta, "tool_calls")
        if pieces is None:
            return events
        if not isinstance(pieces, list):
            raise malformed(f"delta tool_calls is not a list: {pieces!r:.200}")
        if pieces and self.finish is not None:
            # The calls went out with the finish reason: a piece now would be lost.
            raise malformed("a tool-call piece came after the finish reason")
        for piece in pieces:
            function = _get(piece, "function")
            name, arguments = _get(function, "name"), _get(function, "arguments")
            if not isinstance(name, str):
                name = ""
            if isinstance(arguments, Mapping):
                # Some servers send the arguments as an object, not JSON text: kept,
                # never dropped (the tool would run with its defaults instead).
                arguments = json.dumps(arguments)
            if arguments is not None and not isinstance(arguments, str):
                raise malformed(f"tool-call arguments are not text: {arguments!r:.200}")
            call = self._call_for(piece, name, arguments or "")
            self.progress += 1
            if name and not call.name:
                call.name = name
            if arguments is not None:
                call.arguments.append(arguments)
        return events

    def _call_for(self, piece: Any, name: str, arguments: str) -> _PartialCall:
        """The call a tool-call piece belongs to, started if it is the first piece."""
        index = _get(piece, "index")
        piece_id = _get(piece, "id")
        if not isinstance(piece_id, str):
            piece_id = ""
        if isinstance(index, bool) or not isinstance(index, int):
            # Some servers leave out the index: the pieces continue the last call.
            last = self.calls[-1] if self.calls else None
            index = last.index if last is not None else 0
            call = last
        else:
            call = self._open.get(index)
        if call is None or self._starts_another(call, piece_id, name, arguments):
            call = _PartialCall(index, name=self._next_name.pop(index, ""))
            self.calls.append(call)
            self._open[index] = call
        if piece_id:
            call.id = piece_id
        return call

    def _starts_another(self, call: _PartialCall, piece_id: str, name: str, arguments: str) -> bool:
        # Some servers stream parallel calls one after the other under one index (or
        # none), with ids (a new id starts the next call) or without: then a new
        # function name does, or the same name once the call's arguments are a whole
        # JSON object (the same tool called twice). Servers that repeat the name in
        # every piece of one call send it while its arguments are still partial; a
        # repeat with no arguments after the whole object (a closing piece, or the
        # next call's first) waits for arguments before it starts a call.
        if piece_id and call.id:
            return piece_id != call.id
        if name and call.name and name != call.name:
            self._next_name.pop(call.index, None)
            return True
        # Arguments of white space only are none: a server may end an object with "\n".
        brings = bool(arguments.strip())
        whole = bool(call.name) and _whole_object(call.arguments)
        if piece_id and whole and (name or brings):
            return True  # an id for a call that had none and is whole: the next one's
        if name and whole:
            if not brings:
                self._next_name[call.index] = name
                return False
            return True
        return brings and call.index in self._next_name

    def _complete_calls(self) -> list[StreamChunk]:
        events: list[StreamChunk] = []
        # sorted() is stable: calls that share an index keep the order they came in.
        given = {call.id for call in self.calls if call.id}
        for call in sorted(self.calls, key=lambda c: c.index):
            if not call.name:
                raise malformed(f"tool call #{call.index} ended without a function name")
            call_id = call.id
            if not call_id:
                # Calls without ids that share an index get ids of their own: a tool's
                # result is matched to its call by id.
                call_id, more = f"call_{call.index}", 0
                while call_id in given:
                    more += 1
                    call_id = f"call_{call.index}_{more}"
                given.add(call_id)
            events.append(
                ToolCallRequest(
                    id=call_id,
                    name=call.name,
                    arguments_json="".join(call.arguments) or "{}",
                )
            )
        self.calls.clear()
        self._open.clear()
        self._next_name.clear()
        return events


def _whole_object(arguments: list[str]) -> bool:
    # Whether the argument text so far is a whole JSON object (a call's arguments are).
    text = "".join(arguments).strip()
    if not text.startswith("{") or not text.endswith("}"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
