"""Shared helpers for the ``test_session_*`` modules (this module holds no tests).

Tests never sleep to wait: :class:`Recorder` subscribes to a session's signals and
waits on a condition over them with a deadline, from sync code (a ``threading``
condition) or async code (an event set from whichever thread published).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from cm_notebook.events import BaseEvent, Event, StateChanged
from cm_notebook.fsm import State
from cm_notebook.model import Message
from cm_notebook.session import ContextSession

E = TypeVar("E", bound=BaseEvent)

#: Generous deadline for anything that should take milliseconds.
DEADLINE = 10.0


class Recorder:
    """Every signal a session publishes from now on, with waits on conditions over them."""

    def __init__(self, session: ContextSession) -> None:
        self.session = session
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.unsubscribe = session.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, flag in waiters:
            loop.call_soon_threadsafe(flag.set)

    def snapshot(self) -> list[Event]:
        with self._cond:
            return list(self.events)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.snapshot() if isinstance(e, kind)]

    def types(self) -> list[str]:
        return [e.type for e in self.snapshot()]

    def states(self, branch: str | None = None) -> list[State]:
        """The sequence of states entered (the first one is the ``old`` of the first change)."""
        changes = [e for e in self.of(StateChanged) if branch is None or e.branch == branch]
        return [changes[0].old, *(e.new for e in changes)] if changes else []

    def wait(self, predicate: Callable[[list[Event]], bool], timeout: float = DEADLINE) -> None:
        """Block (sync code only) until ``predicate(events)`` holds."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.events), timeout):
                raise AssertionError(f"not seen within {timeout} s; events: {self.types()}")

    async def await_(
        self, predicate: Callable[[list[Event]], bool], within: float = DEADLINE
    ) -> None:
        """Wait (async code) until ``predicate(events)`` holds."""
        with anyio.fail_after(within):
            while True:
                with self._cond:
                    if predicate(self.events):
                        return
                    flag = asyncio.Event()
                    self._waiters.append((asyncio.get_running_loop(), flag))
                await flag.wait()


def seen(kind: type[BaseEvent], /, **fields: Any) -> Callable[[list[Event]], bool]:
    """A predicate: some event of ``kind`` has all of ``fields``."""

    def check(events: list[Event]) -> bool:
        return any(
            isinstance(e, kind) and all(getattr(e, k) == v for k, v in fields.items())
            for e in events
        )

    return check


def entered(state: State, branch: str | None = None) -> Callable[[list[Event]], bool]:
    """A predicate: the state machine entered ``state`` (on ``branch``)."""
    return seen(StateChanged, new=state, **({"branch": branch} if branch else {}))


async def until(condition: Callable[[], Any], within: float = DEADLINE) -> Any:
    """Poll ``condition`` on the running loop until it is truthy (with a deadline); for
    what no signal announces (a view's widgets, a file)."""
    deadline = time.monotonic() + within
    while not (value := condition()):
        assert time.monotonic() < deadline, f"condition not met within {within} s"
        await asyncio.sleep(0.01)
    return value


def message_files(data_dir: Path, session: ContextSession) -> list[Path]:
    """The message files of the session's context, read from the real directory."""
    folder = data_dir / "contexts" / session.id / "messages"
    return sorted(folder.glob("*.json")) if folder.exists() else []


def roles(messages: list[Message]) -> list[str]:
    return [m.role for m in messages]


def close_all(sessions: list[ContextSession]) -> None:
    """Close sessions made from sync code, so that a turn left hanging by a failed
    assertion does not run into the next test (``close()`` cancels and waits)."""
    for session in sessions:
        session.close()
