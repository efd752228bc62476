"""Running a tool call: time limit, worker thread for sync code, result text for the model.

A tool's failure is part of the conversation, not a crash: exceptions and time-outs
become a FAILED :class:`ToolOutcome` whose text tells the model what went wrong. That
includes what a tool raises that is not an ``Exception``: ``SystemExit`` (a tool that
calls ``sys.exit()``), ``KeyboardInterrupt``, and a ``CancelledError`` of the tool's own
(an async tool awaiting a task someone else cancelled). Only a real cancellation of the
caller (a cancel scope around the call, or its task being cancelled) propagates, as it
must: that is the turn being stopped, not the tool failing.

There is no time limit unless one is given (the session's ``tool_timeout``, or the
tool's own ``timeout``): Python cannot stop a sync tool's thread, so a limit does not
stop the work, only the wait for it, and a long job (training a model) is a fine tool.

Every result text is valid UTF-8 text: lone halves of surrogate pairs (a file name
``os.listdir`` decoded with ``surrogateescape``, quoted in a result or an error) are
replaced, so the text can be stored and sent (see :mod:`cm_notebook._unicode`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic_core import to_json

from .. import _json
from .._unicode import scrub, without_surrogates
from ..errors import ToolArgumentsError
from ..model import ToolCallStatus
from ..redact import redact_text
from ._threads import run_in_daemon_thread
from ._tool import Tool

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_RESULT_CHARS",
    "ToolOutcome",
    "denied_result",
    "encode_result",
    "run_tool",
    "truncate_result",
]

#: Seconds a tool call may take when neither the call nor the tool says otherwise: no
#: limit (a limit cannot stop a sync tool's thread, and long jobs are legitimate tools).
DEFAULT_TIMEOUT = math.inf
#: Longest result text sent back to the model, so one tool cannot flood the context.
MAX_RESULT_CHARS = 20_000


@dataclass(frozen=True)
class ToolOutcome:
    """How a tool call ended.

    Attributes:
        status: ``ToolCallStatus.DONE`` or ``ToolCallStatus.FAILED``.
        result: The text that goes back to the model (``"error: ..."`` when FAILED).
        duration_ms: Wall-clock time of the call, validation included.
    """

    status: ToolCallStatus
    result: str
    duration_ms: float

    @property
    def ok(self) -> bool:
        """True when the tool returned normally."""
        return self.status is ToolCallStatus.DONE


async def run_tool(
    tool: Tool[..., Any],
    arguments: Mapping[str, Any],
    *,
    # A parameter, not the caller's cancel scope: the limit is per tool and it is
    # reported to the model as a result, which an outer scope could not do.
    timeout: float | None = None,  # noqa: ASYNC109
    max_result_chars: int = MAX_RESULT_CHARS,
    on_start: Callable[[], bool] | None = None,
) -> ToolOutcome:
    """Run ``tool`` with validated ``arguments``; never raises for the tool's own failures.

    ``on_start`` is called just as the tool's function is entered (in its worker thread,
    for a sync tool), so a caller cancelled before that knows the tool never ran; if it
    returns False (the caller has stopped waiting), the function is not entered.

    The tool's own failures include ``SystemExit``, ``KeyboardInterrupt`` and a
    ``CancelledError`` it raises itself; only a cancellation of the caller propagates.

    ``timeout`` defaults to ``tool.timeout``, else :data:`DEFAULT_TIMEOUT` (no limit);
    ``math.inf`` is no limit too. Sync tools run in a worker thread so a slow tool does
    not freeze the kernel; on time-out or cancellation that thread is abandoned (Python
    cannot stop a thread): it runs on, its side effects still happen, and its eventual
    result is discarded. It is a daemon thread, so a call that never returns does not
    keep the process from exiting (see :mod:`._threads`). Async tools are cancelled at
    the time limit. The time-out's text tells the model so: the call may have had (or
    may yet have) its effects.

    The result text is the return value itself if it is a ``str``, else its JSON
    (pydantic-aware: models, dataclasses, datetimes...), cut to ``max_result_chars``.

    >>> import anyio
    >>> from cm_notebook.tools import tool
    >>> @tool
    ... def double(x: int) -> int:
    ...     '''Double a number.'''
    ...     return 2 * x
    >>> anyio.run(run_tool, double, {"x": 21}).result  # doctest: +SKIP
    '42'
    """
    limit = timeout if timeout is not None else tool.timeout
    limit = DEFAULT_TIMEOUT if limit is None else limit
    started = time.perf_counter()

    def finish(status: ToolCallStatus, text: str) -> ToolOutcome:
        elapsed = (time.perf_counter() - started) * 1000
        # Scrubbed before cutting: no half of a character is left to cut in two.
        text = truncate_result(without_surrogates(text), max_result_chars)
        return ToolOutcome(status, text, elapsed)

    try:
        args, kwargs = tool._call_args(arguments)
    except ToolArgumentsError as exc:
        return finish(ToolCallStatus.FAILED, f"error: {exc}")
    with anyio.move_on_after(limit) as scope:
        try:
            value = await _invoke(tool, args, kwargs, on_start or _always, max_result_chars)
        except _NotStarted:
            return finish(
                ToolCallStatus.FAILED,
                f"error: the call to tool {tool.name!r} was stopped before the tool started; "
                "it had no effect",
            )
        except Exception as exc:  # the tool's own failure: tell the model, keep talking
            return finish(ToolCallStatus.FAILED, _describe_exception(exc))
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()) and _being_cancelled():
                raise  # the time limit, or the caller stopping: not the tool's failure
            # SystemExit, KeyboardInterrupt, a CancelledError of the tool's own: still
            # the tool's failure. Let through, it would stop the turn with the branch
            # busy, or (SystemExit on the loop's thread) every session of the process.
            return finish(ToolCallStatus.FAILED, _describe_escape(tool, exc))
    if scope.cancelled_caught:
        return finish(ToolCallStatus.FAILED, _timed_out(tool, limit))
    try:
        _json.check_depth(value)  # encoding it, or the model reading it, would fail
    except _json.JSONLimitError as exc:
        return finish(
            ToolCallStatus.FAILED,
            f"error: tool {tool.name!r} returned a {type(value).__name__} {exc}, which cannot "
            "be sent to the model",
        )
    return finish(ToolCallStatus.DONE, encode_result(value))


class _Carried(Exception):
    # A BaseException a sync tool raised in its thread, brought back as an Exception:
    # it then crosses the thread's future like any error (a GeneratorExit, thrown into
    # the awaiting coroutines, would close them instead), and is raised again here.
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc


def _always() -> bool:
    return True


class _NotStarted(Exception):
    # The caller stopped waiting before a sync tool's thread got to it: never entered.
    pass


def _in_thread(
    fn: Any, args: list[Any], kwargs: dict[str, Any], on_start: Callable[[], bool], most: int
) -> Any:
    if not on_start():
        raise _NotStarted
    try:
        return _drained(fn(*args, **kwargs), most)
    except Exception:
        raise
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, CancelledError...
        raise _Carried(exc) from None


def _drained(value: Any, most: int) -> Any:
    # A lazy result (a generator, ``map``, a database cursor) as the list it yields,
    # read where the tool made it (see _invoke): encoding it later would run the tool's
    # own code on the event loop, past its time limit and out of a stop's reach, and an
    # error it raised would not be the tool's failure. At most ``most`` + 1 items: the
    # result's text is cut at ``most`` characters, and each item takes at least one.
    if isinstance(value, Iterator) and not inspect.isawaitable(value):
        return list(itertools.islice(value, most + 1))
    return value


async def _invoke(
    tool: Tool[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    on_start: Callable[[], bool],
    most: int,
) -> Any:
    if tool.is_async:
        if not on_start():
            raise _NotStarted
        value = await tool.fn(*args, **kwargs)
    else:
        call = functools.partial(_in_thread, tool.fn, args, kwargs, on_start, most)
        try:
            # A daemon thread: an abandoned call that never returns must not keep the
            # process (a script, a kernel being shut down) from exiting.
            value = await run_in_daemon_thread(call, f"cm_notebook-tool-{tool.name}")
        except _Carried as carried:
            raise carried.exc from None
        # A sync callable may still hand back an awaitable (e.g. a lambda around a
        # coroutine); else a lazy result was read in the tool's thread.
        if not inspect.isawaitable(value):
            return value
        value = await value
    # A lazy result of async code is read on the loop's thread, where it was made (a
    # sqlite3 cursor can be read only there), within the limits.
    return _drained(value, most)


def _being_cancelled() -> bool:
    # Whether the task running the tool is being cancelled (so a CancelledError is the
    # cancellation's, not one the tool raised of its own): a cancel scope around the
    # call was cancelled (its time limit, the turn's cancel), or, on asyncio, someone
    # cancelled the task itself (Python 3.11+ counts that; on 3.10 only scopes are seen).
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio (trio): cancel scopes are the only way
        return False
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling is not None and cancelling())


def _message_of(exc: BaseException) -> str:
    # str(exc), which is the exception's own code and may itself fail. Redacted, as a
    # provider's errors are: it is stored, shown, and sent to the model, and a tool's
    # error may quote a key it used (``f"bad key {os.environ['X_API_KEY']}"``).
    try:
        return redact_text(str(exc))
    except Exception as error:
        return f"<its message could not be shown: {type(error).__name__}>"


def _describe_exception(exc: BaseException) -> str:
    message = _message_of(exc)
    return f"error: {type(exc).__name__}: {message}" if message else f"error: {type(exc).__name__}"


def _describe_escape(tool: Tool[..., Any], exc: BaseException) -> str:
    # The text for a BaseException that is not an Exception, raised by the tool.
    name = tool.name
    if isinstance(exc, SystemExit):
        code = exc.code
        return (
            f"error: tool {name!r} raised SystemExit({code!r}) (it called sys.exit() or "
            "exit()); a tool cannot end the process: the call failed and did not finish"
        )
    if isinstance(exc, KeyboardInterrupt):
        return f"error: tool {name!r} was interrupted (KeyboardInterrupt) before it finished"
    if isinstance(exc, asyncio.CancelledError):
        return (
            f"error: tool {name!r} raised CancelledError (something it waited for was "
            "cancelled); the call failed and did not finish"
        )
    return f"error: tool {name!r} raised {_describe_exception(exc).removeprefix('error: ')}"


def _timed_out(tool: Tool[..., Any], limit: float) -> str:
    # A time limit stops the wait, not necessarily the work: say what may have happened.
    said = f"error: tool {tool.name!r} timed out after {limit:g} s"
    if tool.is_async:
        return (
            f"{said} and was cancelled part way: some of its side effects may have happened; "
            "check before running it again"
        )
    return (
        f"{said}, but it may still be running (Python cannot stop it): its side effects "
        "may have happened, or may yet happen; check before running it again"
    )


def denied_result(tool_name: str, reason: str | None = None) -> str:
    """The text the model gets when a person (or the policy) refuses a call.

    Worded so the model knows not to simply retry the same call.

    >>> denied_result("rm", "too risky")
    "error: the call to tool 'rm' was denied: too risky. Do not retry it unchanged."
    """
    why = f": {reason.strip()}" if reason and reason.strip() else ""
    return f"error: the call to tool {tool_name!r} was denied{why}. Do not retry it unchanged."


def encode_result(value: object) -> str:
    """The text for a tool's return value: ``str`` as-is, anything else as JSON.

    NaN and the infinities, which JSON has no numbers for, are written as the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``: the text stays JSON any reader takes,
    and the model still learns which it was (``null`` would say "no value").

    >>> encode_result("plain"), encode_result({"n": 1}), encode_result(None)
    ('plain', '{"n":1}', 'null')
    >>> encode_result({"mean": float("nan"), "max": float("inf")})
    '{"mean":"NaN","max":"Infinity"}'

    Values JSON has no type for are written as the plain values they hold when they
    have a ``tolist()`` (NumPy's numbers and arrays), else as their ``repr``.
    """
    if isinstance(value, str):
        return value
    try:
        return to_json(value, fallback=_plain, inf_nan_mode="strings").decode()
    except Exception:
        pass
    try:  # text UTF-8 cannot hold (a file name from os.listdir): JSON of it, cleaned
        return to_json(scrub(value), fallback=_plain, inf_nan_mode="strings").decode()
    except Exception:  # e.g. bytes that are not UTF-8: still say something useful
        try:
            return repr(value)
        except Exception:  # a repr that fails too (or recurses through an object)
            return f"<{type(value).__name__} that cannot be shown>"


def _plain(value: Any) -> Any:
    # What JSON has no type for: NumPy's numbers and arrays as the numbers and lists
    # they hold (``tolist()``; a model reads ``7``, not ``"np.int64(7)"``), anything
    # else as its repr.
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        try:
            plain = tolist()
        except Exception:
            plain = value
        if plain is not value:
            return plain
    return repr(value)


def truncate_result(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """Cut ``text`` to at most ``limit`` characters, saying so at the end.

    >>> truncate_result("x" * 100, 60)
    'xxxxxxxx\\n[truncated: showing the first 8 of 100 characters]'
    """
    if len(text) <= limit:
        return text
    note = "\n[truncated: showing the first {} of " + f"{len(text):,} characters]"
    # Room for the note with the widest number it could show, so the total fits.
    keep = max(0, limit - len(note.format(f"{limit:,}")))
    return text[:keep] + note.format(f"{keep:,}")
