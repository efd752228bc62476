"""File-change notification for the signal log's followers: one watcher per process.

A follower (:mod:`cm_notebook._follower`) wants to know when another process appended
to its context's signal log or recorded a decision, without reading the log 20 times
a second. :func:`watch_folders` subscribes a wake-up callback to a few folders (the
context folder, which holds the log and the ``decisions`` folder); one watcher per
process, built on ``watchfiles`` (inotify on Linux, FSEvents on macOS), waits for
changes in every subscribed folder on one thread and calls the callbacks of the
folders that changed. Folders are watched without their sub-folders: a context's
``messages/`` holds a file per message, and watching it recursively would walk
(and watch) every one of them when a context is opened; a subscriber names each
folder it cares about.

It returns None when notification is not to be had, and the caller then polls:
``watchfiles`` is not installed, the operating system refused a watch (e.g. inotify's
watch limit), or it was turned off with the environment variable
``CM_NOTEBOOK_FILE_EVENTS=0`` (for file systems whose changes made by another machine
raise no notification, such as NFS). If the watcher fails later, every subscription
is marked dead (:attr:`Subscription.live`) and woken, so its follower goes back to
polling.

``watchfiles`` checks for collected changes every ``_STEP_MS`` milliseconds on its own
thread (with the GIL released in between), so a change is seen within one or two steps.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .redact import get_logger

__all__ = ["ENV_VAR", "Subscription", "notification_enabled", "watch_folders"]

logger = get_logger(__name__)

#: Set to ``0`` (or ``off``, ``false``, ``no``) to poll instead of asking for notifications.
ENV_VAR = "CM_NOTEBOOK_FILE_EVENTS"

_STEP_MS = 10  # how often the watcher looks at the changes it collected
_TIMEOUT_MS = 5_000  # a watch call returns this often with nothing, to look around


def notification_enabled() -> bool:
    """Whether file-change notification may be used (``CM_NOTEBOOK_FILE_EVENTS``)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in {"0", "off", "false", "no"}


class Subscription:
    """One subscriber's wake-ups; :meth:`cancel` ends them."""

    def __init__(
        self,
        watcher: _Watcher,
        folders: tuple[str, ...],
        wake: Callable[[], None],
        wants: Callable[[str], bool] | None = None,
    ):
        self.folders = folders
        self.wake = wake
        #: Which changed paths wake it (None: any in its folders).
        self.wants = wants
        #: False once the watcher failed: the subscriber must poll.
        self.live = True
        self._watcher = watcher

    def cancel(self) -> None:
        """Stop the wake-ups (safe more than once)."""
        self._watcher.remove(self)


class _Watcher:
    # The process's one watcher: a RustNotify over the union of subscribed folders,
    # rebuilt when that union grows (a new RustNotify starts collecting at once, so
    # nothing is lost while the thread moves from the old one to the new).

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._notify: Any = None
        self._watched: frozenset[str] = frozenset()
        self._swap = threading.Event()  # the thread's current watch returns: look again
        self._thread: threading.Thread | None = None

    def add(
        self,
        folders: Iterable[Path],
        wake: Callable[[], None],
        wants: Callable[[str], bool] | None = None,
    ) -> Subscription | None:
        names = tuple(os.path.realpath(folder) for folder in folders)
        if not names or not all(os.path.isdir(name) for name in names):
            return None  # nothing to watch there (yet): the caller polls
        subscription = Subscription(self, names, wake, wants)
        with self._lock:
            # The live subscriptions' folders and the new ones: the folders of closed
            # sessions are dropped here, at the next rebuild, not kept for the process's
            # life (each is a watch of the user's limited number, and makes every
            # rebuild dearer).
            wanted = frozenset(names).union(*(sub.folders for sub in self._subs))
            if wanted != self._watched and not self._rebuild(wanted):
                return None
            self._subs.append(subscription)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cm-file-events", daemon=True
                )
                self._thread.start()
        return subscription

    def remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription not in self._subs:
                return
            self._subs.remove(subscription)
            if not self._subs:
                # Nobody left: the thread closes the watch and ends.
                self._watched = frozenset()
                self._notify = None
                self._swap.set()
            # Otherwise the folders stay watched until the next subscription rebuilds
            # the watch without them: cheaper than a rebuild per closed session, and
            # their changes only wake nobody meanwhile.

    def _rebuild(self, folders: frozenset[str]) -> bool:
        # Under the lock. False if the folders cannot be watched (the caller polls).
        try:
            from watchfiles._rust_notify import RustNotify
        except ImportError:
            return False
        present = sorted(folder for folder in folders if os.path.isdir(folder))
        try:
            # Not recursive (see the module docstring); permission errors ignored.
            notify = RustNotify(present, False, False, 300, False, True)
        except Exception as exc:  # the OS refused (watch limit, unsupported file system)
            logger.info("file-change notification unavailable (%s); polling instead", exc)
            return False
        self._notify, self._watched = notify, frozenset(present)
        self._swap.set()
        return True

    def _run(self) -> None:
        current: Any = None
        while True:
            with self._lock:
                self._swap.clear()
                if self._notify is None:
                    self._thread = None
                    if current is not None:
                        current.close()
                    return
                if self._notify is not current:
                    if current is not None:
                        current.close()
                    current = self._notify
            try:
                changes = current.watch(_STEP_MS, _STEP_MS, _TIMEOUT_MS, self._swap)
            except Exception:
                logger.exception("file-change notification failed; following by polling")
                self._fail(current)
                return
            if isinstance(changes, set):
                self._dispatch({path for _, path in changes})

    def _dispatch(self, paths: set[str]) -> None:
        # A change in a subscribed folder (or below, on systems that report deeper paths)
        # wakes its subscribers.
        folders: set[str] = set()
        for path in paths:
            while path not in folders:
                folders.add(path)
                path = os.path.dirname(path)
        with self._lock:
            concerned = [sub for sub in self._subs if folders.intersection(sub.folders)]
        # Asked outside the lock: a subscriber's ``wants`` may look at a file (the log
        # follower stats the log), and a slow file system must not hold up every
        # session of the process subscribing or cancelling meanwhile.
        woken = [
            sub for sub in concerned if sub.wants is None or any(sub.wants(path) for path in paths)
        ]
        for subscription in woken:
            subscription.wake()

    def _fail(self, notify: Any) -> None:
        with self._lock:
            subs, self._subs = self._subs, []
            self._notify, self._watched, self._thread = None, frozenset(), None
        notify.close()
        for subscription in subs:
            subscription.live = False
            subscription.wake()


_WATCHER = _Watcher()


def watch_folders(
    folders: Iterable[Path],
    wake: Callable[[], None],
    wants: Callable[[str], bool] | None = None,
) -> Subscription | None:
    """Call ``wake()`` (on the watcher's thread) whenever something in ``folders`` changes.

    With ``wants``, only changes of paths it accepts (real paths, as the folders are
    resolved) wake it: a context folder sees a write of some file many times a turn,
    and a follower cares only for its log and the decision records.

    Changes in their sub-folders do not count. The folders must exist. Returns None when
    notification is off or unavailable (see the module docstring): poll then. ``wake``
    must be quick (e.g. set an event).
    """
    if not notification_enabled():
        return None
    return _WATCHER.add(folders, wake, wants)
