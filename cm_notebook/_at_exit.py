"""Sessions still open when the interpreter exits are closed first, in order.

A script that never calls ``close()``, a kernel shut down or restarted from the
notebook: the sessions still open then used to be left to the process's end, so a
reply still streaming stayed ``streaming`` in the store, and the next process to open
the context settled it as cut short by a killed process. Here each is closed as its
last ``close()`` would: a reply under way is stopped, and stored as interrupted with
the reason a session's closing gives (see ``SessionCore.close``).

This runs first thing in the interpreter's exit: among ``threading``'s exit hooks,
before the interpreter waits for the threads that are not daemons and before
:mod:`concurrent.futures` shuts its thread pools down (the store writes through them;
the :mod:`atexit` module's handlers come only after that). A session's loop is then:

* running in another thread (the private loop of scripts, a daemon thread): the
  session is closed there, and waited for;
* stopped but not closed (a kernel's loop, stopped by its shutdown): run again here
  until the sessions on it are closed;
* closed (an ``asyncio.run()`` that ended): ``close()`` releases what is left; no turn
  can be running on it.

All of it is bounded by :data:`EXIT_TIMEOUT`: a kernel's manager kills a kernel that
has not exited a few seconds after asking it to.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import concurrent.futures.thread  # its exit hook first: this module's then runs before it
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Protocol, cast

from .redact import get_logger

__all__ = ["EXIT_TIMEOUT", "close_at_exit", "close_open_sessions"]

_log = get_logger(__name__)

#: Seconds the exit gives the sessions still open to close, in all.
EXIT_TIMEOUT = 2.0
#: How often a stopped loop is run again when other work left on it raises.
_RERUNS = 5


class _Session(Protocol):
    _loop: asyncio.AbstractEventLoop

    def close(self, timeout: float | None = ...) -> None: ...

    async def aclose(self) -> None: ...


class _Registry(Protocol):
    def open_sessions(self) -> list[object]: ...

    def to_last_hold(self, session: object) -> bool: ...


def close_at_exit(registry: _Registry) -> None:
    """Have the sessions of ``registry`` still open at exit closed then (see the
    module docstring)."""
    hook = functools.partial(close_open_sessions, registry)
    # A private hook of threading's, public in effect: concurrent.futures uses it for
    # the same reason (to act before the interpreter joins threads); atexit otherwise.
    register: Callable[[Callable[[], None]], object] = (
        getattr(threading, "_register_atexit", None) or atexit.register
    )
    with contextlib.suppress(RuntimeError):  # imported while the interpreter exits: too late
        register(hook)


def close_open_sessions(registry: _Registry, timeout: float = EXIT_TIMEOUT) -> None:
    """Close every session of ``registry`` still open, as its last holder would;
    return once all are closed or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    elsewhere: list[concurrent.futures.Future[None]] = []
    stopped: dict[asyncio.AbstractEventLoop, list[_Session]] = {}
    for each in registry.open_sessions():
        session = cast(_Session, each)
        if not registry.to_last_hold(session):
            continue
        loop = session._loop
        try:
            if loop.is_closed():
                session.close()
            elif loop.is_running():
                elsewhere.append(asyncio.run_coroutine_threadsafe(session.aclose(), loop))
            else:
                stopped.setdefault(loop, []).append(session)
        except Exception as exc:  # the others are still closed
            _log.warning("could not close a session at exit: %s", exc)
    for loop, sessions in stopped.items():
        _close_on(loop, sessions, deadline - time.monotonic())
    done, late = concurrent.futures.wait(elsewhere, max(0.0, deadline - time.monotonic()))
    for future in done:
        if future.exception() is not None:
            _log.warning("could not close a session at exit: %s", future.exception())
    if late:
        _log.warning("%d session(s) were still closing when the process exited", len(late))


def _close_on(loop: asyncio.AbstractEventLoop, sessions: list[_Session], timeout: float) -> None:
    # Run the stopped ``loop`` here again until its sessions are closed: their turns
    # are tasks on it, and a reply is stored as interrupted only by its own turn.
    async def close_all() -> set[asyncio.Task[None]]:
        tasks = {asyncio.ensure_future(session.aclose()) for session in sessions}
        _done, late = await asyncio.wait(tasks, timeout=max(0.0, timeout))
        for task in tasks - late:
            if task.exception() is not None:
                _log.warning("could not close a session at exit: %s", task.exception())
        return late

    try:
        closing = loop.create_task(close_all())
    except Exception as exc:  # e.g. the loop was closed meanwhile
        _log.warning("could not run the sessions' loop at exit to close them: %s", exc)
        _close_each(sessions)
        return
    # The loop runs whatever else was left on it too: a server's request handler that
    # Ctrl-C interrupted re-raises its KeyboardInterrupt there. That is its own end,
    # not the closing's: the loop is run again for the sessions, a few times at most.
    for _attempt in range(_RERUNS):
        try:
            late = loop.run_until_complete(closing)
        except BaseException as exc:
            if closing.done():
                _log.warning("could not close the sessions at exit: %r", exc)
                return
            _log.debug("work left on the sessions' loop raised at exit: %r", exc)
            continue
        if late:
            _log.warning("%d session(s) were still closing when the process exited", len(late))
        return
    closing.cancel()
    _log.warning("could not run the sessions' loop at exit to close them")


def _close_each(sessions: list[_Session]) -> None:
    for session in sessions:
        try:
            session.close()
        except Exception as error:
            _log.warning("could not close a session at exit: %s", error)
