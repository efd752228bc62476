"""Public testing helpers: :class:`ScriptedProvider`, the project's one fake model.

The fake sits at the narrowest seam there is, the :class:`~cm_notebook.providers.Provider`
protocol, so everything above it (session, state machine, store, tools, widgets, REST)
runs for real in tests and notebooks. It is deterministic: no randomness, no clock, and
delays use :func:`anyio.sleep`, so cancellation behaves as it does with a real model.

A script is a queue of *turns*; each call to :meth:`ScriptedProvider.stream` consumes one
turn and records the request it was given (examples illustrate, they are not run)::

    >>> from cm_notebook.testing import ScriptedProvider
    >>> fake = (
    ...     ScriptedProvider()
    ...     .tool_call("add", {"a": 1, "b": 2})          # 1st request: ask for a tool
    ...     .reply("The sum is 3.", chunks="words")      # 2nd request: answer
    ... )
    >>> session = ContextSession.create(provider=fake, tools=[add], approval="auto")
    >>> await session.send("What is 1 + 2?")                    # doctest: +SKIP
    >>> fake.requests[1].messages[-1].content    # what the model saw: the tool's result
    '3'

When the script runs out, the fake echoes the last user message (``"echo: <text>"``),
which keeps exploratory notebooks going; pass ``strict=True`` to get a
:class:`ScriptExhaustedError` instead, which is what most tests want.

The fake is registered as the ``scripted`` provider, so ``get_provider("scripted")``
builds a fresh one (with an empty script: it echoes). To script it, build it yourself and
pass the instance wherever a provider spec is accepted, or give the script as JSON in the
provider options (``provider="scripted", provider_options={"script": [...]}``, see
:meth:`ScriptedProvider.load`), which also works where only JSON travels (the REST API).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Literal

import anyio

from ._prefix_cache import PrefixCache
from ._scripted_steps import (
    _STREAMED,
    _WORD_COUNTS_KEPT,
    Chunks,
    _check_delay,
    _Emit,
    _EstimatedUsage,
    _Hang,
    _partial,
    _Raise,
    _Sleep,
    _split_chunks,
    _Step,
    _Turn,
    _words,
)
from .errors import (
    InvalidInputError,
    PermanentProviderError,
    TransientProviderError,
)
from .model import Message
from .providers.base import (
    ChatRequest,
    Finish,
    ReasoningDelta,
    StreamChunk,
    TextDelta,
    ToolCallRequest,
    Usage,
)

__all__ = ["Chunks", "ErrorKind", "ScriptExhaustedError", "ScriptedProvider", "ToolCallLike"]

#: The kinds of scripted failure :meth:`ScriptedProvider.error` understands by name.
ErrorKind = Literal["transient", "permanent"]

#: A tool call in :meth:`ScriptedProvider.tool_calls`: ``(name, arguments)``,
#: ``(name, arguments, id)`` or a ready-made :class:`ToolCallRequest`.
ToolCallLike = (
    tuple[str, Mapping[str, Any] | str] | tuple[str, Mapping[str, Any] | str, str] | ToolCallRequest
)


class ScriptExhaustedError(PermanentProviderError):
    """A ``strict=True`` :class:`ScriptedProvider` got more requests than it was scripted for.

    It is a :class:`~cm_notebook.errors.PermanentProviderError` so that code under test
    sees an ordinary provider failure (the contract says providers raise nothing else);
    the message says which request overran the script.
    """


class ScriptedProvider:
    """A deterministic fake :class:`~cm_notebook.providers.Provider` driven by a script.

    ``replies`` seeds the script: each item is a reply text (``str``), an exception to
    raise, or a sequence of :data:`~cm_notebook.providers.StreamChunk` values streamed
    verbatim. The builder methods below append more turns and return ``self``, so they
    chain. ``delay`` is the default pause before each streamed chunk (seconds).

    Every request is appended to :attr:`requests` when :meth:`stream` is called, so a test
    can assert exactly what the model saw (tool results, edited arguments, parameters).
    Only the last ``keep_requests`` requests are kept (default
    :attr:`KEEP_REQUESTS`; ``None`` keeps all): a long run holds each request's whole
    conversation, which adds up quickly. :attr:`last_request` is always the newest and
    :attr:`request_count` counts them all.

    ``usage`` defaults to a deterministic estimate: input tokens are the words in the
    request's messages, output tokens the words in the reply (not a real tokenizer).
    Each reply's :class:`Finish` carries the request id ``scripted-<n>`` (``n``: the
    request's number, from 1), as a real API gives one.
    """

    name = "scripted"
    #: The generation parameters accepted unless ``parameters=`` says otherwise.
    DEFAULT_PARAMETERS = frozenset(
        {"model", "max_tokens", "seed", "stop", "temperature", "top_k", "top_p"}
    )
    #: How many requests :attr:`requests` keeps unless ``keep_requests=`` says otherwise.
    KEEP_REQUESTS = 200

    def __init__(
        self,
        replies: Iterable[str | BaseException | Sequence[StreamChunk]] = (),
        *,
        strict: bool = False,
        delay: float = 0.0,
        model: str = "scripted",
        parameters: Iterable[str] = DEFAULT_PARAMETERS,
        script: Iterable[Mapping[str, Any]] = (),
        keep_requests: int | None = KEEP_REQUESTS,
    ) -> None:
        if keep_requests is not None and (
            isinstance(keep_requests, bool)
            or not isinstance(keep_requests, int)
            or keep_requests < 1
        ):
            raise InvalidInputError(
                f"keep_requests must be a positive integer (or None to keep every "
                f"request), got {keep_requests!r}"
            )
        self.model = model
        #: The generation parameters a request may set; a session refuses others, as it
        #: does for a real provider.
        self.parameters = frozenset(parameters)
        self.strict = strict
        self.default_delay = _check_delay(delay)
        #: The requests received, oldest first: the last ``keep_requests`` of them.
        self.requests: list[ChatRequest] = []
        #: How many requests were received in all (including those no longer kept).
        self.request_count = 0
        self.keep_requests = keep_requests
        #: True once :meth:`aclose` has been called.
        self.closed = False
        self._script: deque[_Turn] = deque()
        self._next_call_id = 0
        # Word counts of the texts seen, so estimating a long conversation's input
        # tokens does not re-split every message on every request (strings cache
        # their hash, so a message seen before costs one lookup).
        self._word_counts: dict[str, int] = {}
        self._request_words: PrefixCache[int] = PrefixCache(kept=16)
        for item in replies:
            if isinstance(item, str):
                self.reply(item)
            elif isinstance(item, BaseException):
                self.error(item)
            else:
                self.chunks(*item)
        self.load(script)

    @classmethod
    def from_spec(cls, model: str | None, /, **options: Any) -> ScriptedProvider:
        """Registry hook: ``get_provider("scripted")`` or ``"scripted:<label>"``.

        Each call returns a fresh fake; ``options`` go to the constructor (``strict``,
        ``delay``, ``replies``, ``parameters``, ``script``). Without a script it echoes.
        The model is only a label. ``script`` (see :meth:`load`) is plain JSON, so a
        context whose provider options carry it can be scripted from anywhere JSON goes,
        e.g. a REST request.
        """
        return cls(model=model or "scripted", **options)

    def __repr__(self) -> str:
        return (
            f"ScriptedProvider(model={self.model!r}, remaining={self.remaining}, "
            f"requests={self.request_count}, strict={self.strict})"
        )

    # -- building the script ------------------------------------------------------------

    @property
    def remaining(self) -> int:
        """How many scripted turns have not been consumed yet."""
        return len(self._script)

    @property
    def last_request(self) -> ChatRequest:
        """The most recent request (``IndexError`` if there was none)."""
        return self.requests[-1]

    def _add(self, steps: list[_Step]) -> ScriptedProvider:
        self._script.append(_Turn(steps))
        return self

    def _paced(self, items: Iterable[_Emit | _EstimatedUsage], delay: float | None) -> list[_Step]:
        pause = self.default_delay if delay is None else _check_delay(delay)
        steps: list[_Step] = []
        for item in items:
            if pause and isinstance(item, _Emit) and isinstance(item.chunk, _STREAMED):
                steps.append(_Sleep(pause))
            steps.append(item)
        return steps

    @staticmethod
    def _usage_step(usage: Usage | tuple[int, int] | None, text: str) -> _Emit | _EstimatedUsage:
        if usage is None:
            return _EstimatedUsage(_words(text))
        if isinstance(usage, tuple):
            return _Emit(Usage(input_tokens=usage[0], output_tokens=usage[1]))
        return _Emit(usage)

    def reply(
        self,
        text: str,
        *,
        chunks: Chunks = None,
        usage: Usage | tuple[int, int] | None = None,
        finish: str | None = "stop",
        delay: float | None = None,
        reasoning: str = "",
    ) -> ScriptedProvider:
        """Script a text reply.

        ``chunks`` cuts the text into deltas (see :data:`Chunks`); ``usage`` is a
        :class:`Usage` or ``(input, output)`` (default: the word-count estimate);
        ``finish`` is the :class:`Finish` reason, or ``None`` to end the stream without
        one (a misbehaving backend); ``delay`` pauses before each delta.
        ``reasoning``: a thinking model's reasoning, streamed before the text as
        :class:`ReasoningDelta` chunks (cut as the text is, unless ``chunks`` is an
        explicit list, which is the text's alone: the reasoning is then one delta).

        >>> ScriptedProvider().reply("Hello there", chunks="words", delay=0.05)
        ScriptedProvider(model='scripted', remaining=1, requests=0, strict=False)
        """
        if not isinstance(reasoning, str):
            raise InvalidInputError(f"reasoning must be a string, not {reasoning!r}")
        thought = chunks if chunks is None or isinstance(chunks, (int, str)) else None
        items: list[_Emit | _EstimatedUsage] = [
            _Emit(ReasoningDelta(piece)) for piece in _split_chunks(reasoning, thought)
        ]
        items += [_Emit(TextDelta(piece)) for piece in _split_chunks(text, chunks)]
        items.append(self._usage_step(usage, text))
        if finish is not None:
            items.append(_Emit(Finish(finish)))
        return self._add(self._paced(items, delay))

    def tool_call(
        self,
        name: str,
        arguments: Mapping[str, Any] | str | None = None,
        *,
        id: str | None = None,
        text: str = "",
        usage: Usage | tuple[int, int] | None = None,
        delay: float | None = None,
    ) -> ScriptedProvider:
        """Script a reply that asks for one tool call (optionally after some ``text``).

        ``arguments`` is a dict (sent as JSON) or a raw string, which may be invalid JSON
        on purpose to test validation. ``id`` defaults to ``call_1``, ``call_2``, ...
        counted per fake, so ids are the same on every run.
        """
        return self.tool_calls(
            (name, arguments or {}, id) if id is not None else (name, arguments or {}),
            text=text,
            usage=usage,
            delay=delay,
        )

    def tool_calls(
        self,
        *calls: ToolCallLike,
        text: str = "",
        usage: Usage | tuple[int, int] | None = None,
        delay: float | None = None,
    ) -> ScriptedProvider:
        """Script a reply that asks for several tool calls at once (parallel calls).

        >>> ScriptedProvider().tool_calls(("add", {"a": 1}), ("mul", {"a": 2}, "my-id"))
        ScriptedProvider(model='scripted', remaining=1, requests=0, strict=False)
        """
        if not calls:
            raise InvalidInputError("tool_calls() needs at least one call")
        items: list[_Emit | _EstimatedUsage] = [_Emit(TextDelta(text))] if text else []
        for call in calls:
            items.append(_Emit(self._make_call(call)))
        items.append(self._usage_step(usage, text))
        items.append(_Emit(Finish("tool_calls")))
        return self._add(self._paced(items, delay))

    def _make_call(self, call: ToolCallLike) -> ToolCallRequest:
        if isinstance(call, ToolCallRequest):
            return call
        if (
            not isinstance(call, tuple)
            or len(call) not in (2, 3)
            or not isinstance(call[0], str)
            or not isinstance(call[1], (str, Mapping))
        ):
            raise InvalidInputError(
                "each tool call is (name, arguments) or (name, arguments, id), given as "
                'an argument of its own: tool_calls(("add", {"a": 1}), ("mul", '
                f'{{"a": 2}})); got {type(call).__name__} {str(call)[:80]}'
            )
        name, arguments = call[0], call[1]
        if len(call) == 3:
            call_id = call[2]
        else:
            self._next_call_id += 1
            call_id = f"call_{self._next_call_id}"
        if not name:
            raise InvalidInputError("a tool call needs a tool name")
        raw = arguments if isinstance(arguments, str) else json.dumps(dict(arguments))
        return ToolCallRequest(id=call_id, name=name, arguments_json=raw)

    def error(
        self,
        error: BaseException
        | type[BaseException]
        | Literal["transient", "permanent"] = "transient",
        *,
        after_chunks: int = 0,
        text: str = "",
        retry_after: float | None = None,
        message: str | None = None,
        delay: float | None = None,
        usage: Usage | tuple[int, int] | None = None,
    ) -> ScriptedProvider:
        """Script a failure, at the start of the stream or after ``after_chunks`` deltas.

        ``error`` is ``"transient"`` (a :class:`~cm_notebook.errors.TransientProviderError`,
        with ``retry_after`` if given), ``"permanent"`` (a
        :class:`~cm_notebook.errors.PermanentProviderError`), or an exception instance or
        class raised as-is. The partial text is ``text`` cut into ``after_chunks`` pieces,
        or ``"part1 part2 ..."`` when ``text`` is empty. ``usage`` (a :class:`Usage` or
        ``(input, output)``) is reported after the partial text, before the failure, as
        an API that counts the tokens of a request cut short does; by default none is.

        >>> ScriptedProvider().error("transient", retry_after=2.0).reply("ok")
        ScriptedProvider(model='scripted', remaining=2, requests=0, strict=False)
        """
        if after_chunks < 0:
            raise InvalidInputError(f"after_chunks must be >= 0, not {after_chunks}")
        exc = self._make_error(error, retry_after=retry_after, message=message)
        items: list[_Emit | _EstimatedUsage] = [
            _Emit(TextDelta(piece)) for piece in _partial(text, after_chunks)
        ]
        if usage is not None:
            items.append(self._usage_step(usage, text))
        steps = self._paced(items, delay)
        steps.append(_Raise(exc))
        return self._add(steps)

    @staticmethod
    def _make_error(
        error: BaseException | type[BaseException] | str,
        *,
        retry_after: float | None,
        message: str | None,
    ) -> BaseException:
        if error == "transient":
            return TransientProviderError(
                message or "scripted transient failure",
                provider="scripted",
                retry_after=retry_after,
            )
        if retry_after is not None:
            raise InvalidInputError("retry_after only applies to error='transient'")
        if error == "permanent":
            return PermanentProviderError(
                message or "scripted permanent failure", provider="scripted"
            )
        if isinstance(error, BaseException):
            return error
        if isinstance(error, type) and issubclass(error, BaseException):
            return error(message or f"scripted {error.__name__}")
        raise InvalidInputError(
            f"error must be 'transient', 'permanent' or an exception, not {error!r}"
        )

    def load(self, script: Iterable[Mapping[str, Any]]) -> ScriptedProvider:
        """Append turns described as JSON values, one mapping per turn.

        Each mapping has exactly one of the keys ``reply``, ``tool_call``, ``error`` or
        ``hang``; its other keys are the keyword arguments of the builder method of that
        name (``usage`` as ``[input, output]``)::

            {"reply": "Hi there", "chunks": "words", "delay": 0.01}
            {"tool_call": "get_weather", "arguments": {"city": "Paris"}, "id": "w1"}
            {"error": "transient", "after_chunks": 2, "retry_after": 0.1}
            {"hang": true, "after_chunks": 1, "text": "partial"}

        >>> ScriptedProvider().load([{"reply": "Hi", "chunks": "words"}, {"hang": True}])
        ScriptedProvider(model='scripted', remaining=2, requests=0, strict=False)
        """
        if isinstance(script, (str, bytes, Mapping)):
            raise InvalidInputError(
                "script must be a list of turns, e.g. [{'reply': 'Hi'}, {'tool_call': 'add'}]"
            )
        for number, turn in enumerate(script, 1):
            self._load_turn(number, turn)
        return self

    def _load_turn(self, number: int, turn: Any) -> None:
        if not isinstance(turn, Mapping):
            raise InvalidInputError(f"script turn {number} must be a mapping, not {turn!r}")
        kinds = [key for key in _SCRIPT_KEYS if key in turn]
        if len(kinds) != 1:
            raise InvalidInputError(
                f"script turn {number} must have exactly one of {list(_SCRIPT_KEYS)}; "
                f"it has {sorted(turn)}"
            )
        kind = kinds[0]
        options = {key: value for key, value in turn.items() if key != kind}
        unknown = set(options) - _SCRIPT_KEYS[kind]
        if unknown:
            raise InvalidInputError(
                f"script turn {number} ({kind}) has unknown keys {sorted(unknown)}; "
                f"allowed: {sorted(_SCRIPT_KEYS[kind])}"
            )
        if isinstance(options.get("usage"), list):
            options["usage"] = tuple(options["usage"])
        value = turn[kind]
        if kind in ("reply", "tool_call") and not isinstance(value, str):
            raise InvalidInputError(f"script turn {number}: {kind!r} must be a string")
        try:
            if kind == "reply":
                self.reply(value, **options)
            elif kind == "tool_call":
                self.tool_call(value, **options)
            elif kind == "error":
                self.error(value, **options)
            elif value is True:
                self.hang(**options)
            else:
                raise InvalidInputError(f"script turn {number}: 'hang' must be true")
        except TypeError as exc:
            raise InvalidInputError(f"script turn {number} ({kind}) is malformed: {exc}") from exc

    def hang(
        self, *, after_chunks: int = 0, text: str = "", reasoning: str = ""
    ) -> ScriptedProvider:
        """Script a turn that streams ``after_chunks`` deltas, then waits until cancelled.

        Use it to test cancellation and interrupts; the wait is :func:`anyio.sleep_forever`.
        ``reasoning`` is streamed first, one :class:`ReasoningDelta` per word: a
        thinking model still reasoning when it is stopped.
        """
        if not isinstance(reasoning, str):
            raise InvalidInputError(f"reasoning must be a string, not {reasoning!r}")
        steps: list[_Step] = [
            _Emit(ReasoningDelta(piece)) for piece in _split_chunks(reasoning, "words")
        ]
        steps += [_Emit(TextDelta(piece)) for piece in _partial(text, after_chunks)]
        steps.append(_Hang())
        return self._add(steps)

    def chunks(self, *chunks: StreamChunk, delay: float | None = None) -> ScriptedProvider:
        """Script a turn that streams exactly these chunks (no Usage or Finish added)."""
        return self._add(self._paced([_Emit(chunk) for chunk in chunks], delay))

    # -- the Provider protocol ----------------------------------------------------------

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Record ``request``, take the next turn, and return its stream of chunks.

        The turn is taken now, not at the first ``__anext__``, so the order of calls
        decides which request gets which turn even if streams are consumed concurrently.
        """
        self.requests.append(request)
        self.request_count += 1
        if self.keep_requests is not None and len(self.requests) > self.keep_requests:
            del self.requests[: len(self.requests) - self.keep_requests]
        if self._script:
            turn = self._script.popleft()
        elif self.strict:
            turn = _Turn(
                [
                    _Raise(
                        ScriptExhaustedError(
                            f"ScriptedProvider(strict=True) got request #{self.request_count} "
                            f"but its script is empty; script more turns (e.g. .reply(...))",
                            provider="scripted",
                        )
                    )
                ]
            )
        else:
            turn = self._echo_turn(request)
        return self._run(turn, request, self.request_count)

    def _echo_turn(self, request: ChatRequest) -> _Turn:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        text = f"echo: {last_user}"
        items: list[_Emit | _EstimatedUsage] = [
            _Emit(TextDelta(piece)) for piece in _split_chunks(text, "words")
        ]
        items += [_EstimatedUsage(_words(text)), _Emit(Finish("stop"))]
        return _Turn(self._paced(items, None))

    def _count_words(self, text: str) -> int:
        count = self._word_counts.get(text)
        if count is None:
            if len(self._word_counts) >= _WORD_COUNTS_KEPT:
                self._word_counts.clear()
            count = self._word_counts[text] = _words(text)
        return count

    def _count_request_words(self, messages: Sequence[Message]) -> int:
        # A running count: a turn's request is the last one plus a few messages.
        start, known = self._request_words.longest(messages)
        words = (known or 0) + sum(self._count_words(m.content) for m in messages[start:])
        self._request_words.keep(messages, words)
        return words

    async def _run(
        self, turn: _Turn, request: ChatRequest, number: int
    ) -> AsyncIterator[StreamChunk]:
        for step in turn.steps:
            if isinstance(step, _Emit):
                chunk = step.chunk
                if isinstance(chunk, Finish) and chunk.request_id is None:
                    # A deterministic request id, as a real API gives one: the fake's
                    # request number.
                    chunk = Finish(chunk.reason, f"scripted-{number}")
                yield chunk
            elif isinstance(step, _EstimatedUsage):
                words = self._count_request_words(request.messages)
                yield Usage(input_tokens=words, output_tokens=step.output_tokens)
            elif isinstance(step, _Sleep):
                await anyio.sleep(step.seconds)
            elif isinstance(step, _Raise):
                # A fresh traceback each time, so a reused exception object does not
                # accumulate frames from earlier raises.
                raise step.error.with_traceback(None)
            else:
                await anyio.sleep_forever()

    async def aclose(self) -> None:
        """Mark the fake closed (see :attr:`closed`); it holds no resources."""
        self.closed = True


# The keys each kind of JSON script turn accepts besides its own (see ScriptedProvider.load).
_SCRIPT_KEYS: dict[str, frozenset[str]] = {
    "reply": frozenset({"chunks", "usage", "finish", "delay", "reasoning"}),
    "tool_call": frozenset({"arguments", "id", "text", "usage", "delay"}),
    "error": frozenset({"after_chunks", "text", "retry_after", "message", "delay", "usage"}),
    "hang": frozenset({"after_chunks", "text", "reasoning"}),
}
