"""The approval audit log and the allow-lists of a context.

Both live in ``<context>/approvals/`` when the store keeps context folders (a store
without one keeps them in memory, for this session only):

* ``log.jsonl``: one :class:`~cm_notebook.approvals.ApprovalRecord` per line, appended
  by the process whose turn applied the decision (one process per decision, so one line
  each). A line is written with a single ``write`` on a file opened for appending, so
  lines of two processes never interleave; a line torn by a crash is skipped on reading
  and the next append starts on a fresh line. Lines are parsed as bounded JSON.
* ``allowed.json``: the tools allowed for the whole context (``{"tools": [...]}``),
  replaced atomically under a lock file, and re-read by every process whenever it
  changed (an ``lstat`` of it and of its folder per check), so an allowance given or
  revoked in one process holds in every other at its next tool call.

Neither file, nor the folder, is read or written through a symbolic link, as elsewhere
in the store: a link planted in a shared context folder must not make a file outside
the data directory decide which tools run without asking. Such a link raises
:class:`~cm_notebook.errors.CorruptDataError`; a tool call that finds the allow-list so
refused asks for a decision.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from . import _json
from .approvals import ApprovalRecord, Remember
from .errors import (
    CorruptDataError,
    InvalidInputError,
    StoreError,
    StoreIOError,
    StoreLockTimeoutError,
)
from .store.atomic import Fsync, atomic_write, fsync_dir, mkdir_durable, write_all
from .store.codec import read_regular
from .store.diagnostics import warn
from .store.oserrors import linked, translate
from .store.oslock import LockTimeout, OSLock

__all__ = ["AllowLists", "ApprovalLog", "approvals_folder", "write_approvals"]

_FOLDER = "approvals"
_LOG = "log.jsonl"
_ALLOWED = "allowed.json"
_LOCK = "allowed.lock"
# A record holds a call's arguments twice at most (asked for and edited), each bounded
# by the tools' own limit; lines beyond this are not records this package wrote.
_MAX_LINE_CHARS = 8 * 1024 * 1024
_MAX_TOOL_NAME = 200
#: Seconds a change of the allow-list waits for another process changing it, unless the
#: store says otherwise (``FileStore(lock_timeout=...)``): a process stuck holding it
#: must not hang this one's approvals for ever.
LOCK_TIMEOUT = 10.0

# The log and the lock are never opened through a symbolic link planted in a shared
# folder (appending would write to any file the user can write).
_APPEND_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)

_Change = Callable[[frozenset[str]], frozenset[str]]

# Not the store's usual "replace it with what it points to": the file there may be
# someone else's allow-list, outside the data directory.
_LINK_REMEDY = (
    "Remove the link (what it points to may be someone else's file; the folder and its "
    "files are made again when needed), then allow again the tools the context should "
    "run without asking: until then their calls ask first."
)


def _linked(path: Path) -> CorruptDataError:
    return linked(path, _LINK_REMEDY)


def _refuse_link(path: Path) -> None:
    # ``path`` (a folder, or a file whose folder was checked) if it is no link.
    if os.path.islink(path):
        raise _linked(path)


def _said_of(what: str, error: StoreError) -> StoreError:
    # ``error`` (an OSError translated as every store write's is: what went wrong and
    # what to do) after what it kept from happening; its class, path and errno kept.
    message = f"{what}: {error}"
    if isinstance(error, StoreIOError):
        return type(error)(message, error.path, error.errno)
    if isinstance(error, CorruptDataError):
        return CorruptDataError(message, error.path)
    return StoreError(message)


def approvals_folder(context_dir: Path | None) -> Path | None:
    """Where a context keeps its approval log and allow-list (None: in memory)."""
    return None if context_dir is None else context_dir / _FOLDER


class ApprovalLog:
    """The audit log of approval decisions of one context, oldest first.

    ``fsync``: what every fsync of the log goes through (the store's, so that it can
    count them).
    """

    def __init__(self, folder: Path | None, fsync: Fsync = os.fsync) -> None:
        self._path = None if folder is None else folder / _LOG
        self._fsync = fsync
        self._memory: list[ApprovalRecord] = []
        self._lock = threading.Lock()
        # Whether this log's name is known to be durable in its folder: the first
        # durable record fsyncs the folder once (the log may have just been made).
        self._named = False

    def append(self, record: ApprovalRecord, *, durable: bool = True) -> None:
        """Add ``record`` at the end (fsync'd unless ``durable`` is false)."""
        if self._path is None:
            with self._lock:
                self._memory.append(record)
            return
        line = (record.model_dump_json() + "\n").encode()
        try:
            folder = self._path.parent
            _refuse_link(folder)  # planted: never followed out (a dangling one too)
            mkdir_durable(folder, self._fsync if durable else None)
            fd = os.open(self._path, _APPEND_FLAGS, 0o644)
            try:
                size = os.fstat(fd).st_size
                # A crash may have torn the last line: start this one on its own line.
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                write_all(fd, line)
                if durable:
                    self._fsync(fd)
            finally:
                os.close(fd)
            if durable and not self._named:
                fsync_dir(folder, self._fsync)  # a power loss could drop a new log's name
                self._named = True
        except CorruptDataError as exc:
            raise CorruptDataError(
                f"the approval log {self._path} was not written (the decision itself was "
                f"applied): {exc}",
                exc.path,
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # the log itself is a link (O_NOFOLLOW)
                raise CorruptDataError(
                    f"the approval log was not written (the decision itself was applied): "
                    f"{_linked(self._path)}",
                    self._path,
                ) from exc
            raise _said_of(
                f"the approval log {self._path} was not written (the decision itself was applied)",
                translate(exc, exc.filename or self._path, "write"),
            ) from exc

    def read(self, branch: str | None = None) -> list[ApprovalRecord]:
        """The records (of ``branch`` only, if given), oldest first; damaged lines skipped."""
        if self._path is None:
            with self._lock:
                records = list(self._memory)
        else:
            try:
                _refuse_link(self._path.parent)
                text = read_regular(self._path).decode("utf-8", errors="replace")
            except FileNotFoundError:
                return []
            except CorruptDataError:
                if os.path.islink(self._path):
                    raise _linked(self._path) from None
                raise  # the folder (already said so) or not a file (read_regular's error)
            except OSError as exc:
                raise translate(exc, self._path, "read") from exc
            # Lines end at "\n" only: a record's text may hold U+2028 or U+0085 raw
            # (JSON does not escape them), where splitlines() would cut it in two.
            records = [record for record in map(_parse, text.split("\n")) if record]
        return [r for r in records if branch is None or r.branch == branch]


def _parse(line: str) -> ApprovalRecord | None:
    if not line.strip():
        return None
    try:
        return ApprovalRecord.model_validate(_json.loads(line, max_chars=_MAX_LINE_CHARS))
    except (ValueError, ValidationError):  # torn by a crash, or not ours: skipped
        return None


def check_tool_name(tool: object) -> str:
    """``tool`` if it can be a tool's name; else :class:`InvalidInputError`."""
    if not isinstance(tool, str) or not tool or len(tool) > _MAX_TOOL_NAME:
        raise InvalidInputError(f"tool must be a tool's name (a non-empty string); got {tool!r}")
    return tool


class AllowLists:
    """Tools approved for the rest of the session, or for the whole context."""

    def __init__(
        self, folder: Path | None, lock_timeout: float = LOCK_TIMEOUT, fsync: Fsync = os.fsync
    ) -> None:
        self._folder = folder
        self._lock_timeout = lock_timeout
        self._fsync = fsync
        self._lock = threading.Lock()
        self._session: set[str] = set()
        self._memory_context: set[str] = set()  # no folder: the context's, in memory
        self._cache: tuple[tuple[int, int, int], frozenset[str]] | None = None

    def scope_of(self, tool: str) -> Remember | None:
        """``"session"`` or ``"context"`` if ``tool`` is allowed without asking, else None."""
        with self._lock:
            if tool in self._session:
                return "session"
        try:
            allowed = self.context_tools()
        except StoreError as exc:
            # A damaged allow-list allows nothing: the call waits for a person, and the
            # warning says which file to delete (failing the turn would blame the disk).
            where = self._folder / _ALLOWED if self._folder is not None else Path(_ALLOWED)
            warn(f"{exc}; until then every tool call asks for a decision", where)
            return None
        return "context" if tool in allowed else None

    def session_tools(self) -> frozenset[str]:
        """The tools allowed for this session."""
        with self._lock:
            return frozenset(self._session)

    def context_tools(self) -> frozenset[str]:
        """The tools allowed for the context (as stored now, by any process)."""
        if self._folder is None:
            with self._lock:
                return frozenset(self._memory_context)
        path = self._folder / _ALLOWED
        # Links are refused before the cache is consulted: the signature of a file
        # read through a link planted since would otherwise still count.
        _refuse_link(self._folder)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return frozenset()
        except OSError as exc:
            raise translate(exc, path, "read") from exc
        if stat.S_ISLNK(info.st_mode):
            raise _linked(path)
        signature = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            if self._cache is not None and self._cache[0] == signature:
                return self._cache[1]
        tools = _read_allowed(path)
        with self._lock:
            self._cache = (signature, tools)
        return tools

    def allow(self, tool: str, scope: Remember) -> None:
        """Allow ``tool`` for ``scope`` (``"once"`` does nothing)."""
        check_tool_name(tool)
        if scope == "session":
            with self._lock:
                self._session.add(tool)
        elif scope == "context":
            self._change_context(lambda tools: tools | {tool})

    def revoke(self, tool: str, scope: Remember | None = None) -> bool:
        """Stop allowing ``tool`` (in ``scope``, or both with None); True if it was allowed."""
        check_tool_name(tool)
        removed = False
        if scope in (None, "session"):
            with self._lock:
                removed = tool in self._session
                self._session.discard(tool)
        if scope in (None, "context"):
            removed = self._change_context(lambda tools: tools - {tool}) or removed
        return removed

    def _change_context(self, change: _Change) -> bool:
        # Read-modify-write under a lock file, so two processes' changes both land.
        if self._folder is None:
            with self._lock:
                before = frozenset(self._memory_context)
                self._memory_context = set(change(before))
                return before != self._memory_context
        with self._locked() as folder:
            path = folder / _ALLOWED
            before = _read_allowed(path)
            after = frozenset(change(before))
            if after != before:
                data = json.dumps({"tools": sorted(after)}, indent=1).encode()
                atomic_write(path, data, fsync=self._fsync)
        return after != before

    @contextmanager
    def _locked(self) -> Iterator[Path]:
        assert self._folder is not None
        # The store's own OS lock: it keeps its descriptor while it waits and never
        # follows a link planted in place of the lock file.
        _refuse_link(self._folder)  # planted: never followed out (a dangling one too)
        lock = OSLock(self._folder / _LOCK)
        try:
            mkdir_durable(self._folder, self._fsync)
            lock.acquire(timeout=self._lock_timeout)
        except LockTimeout:
            lock.close()
            raise StoreLockTimeoutError(
                f"could not lock the allow-list in {self._folder} within "
                f"{self._lock_timeout:g} s: "
                f"another process is changing it (or is stuck holding {_LOCK}). Try again."
            ) from None
        except OSError as exc:
            lock.close()
            if exc.errno == errno.ELOOP:  # the lock file is a link (O_NOFOLLOW)
                raise _linked(self._folder / _LOCK) from exc
            # Said as every store write says it (a read-only or locked folder, a full
            # disk), and of the allow-list.
            raise _said_of(
                f"the allow-list in {self._folder} could not be changed",
                translate(exc, exc.filename or self._folder / _LOCK, "write"),
            ) from exc
        try:
            yield self._folder
        finally:
            lock.close()  # lets go of the lock and its descriptor


def _read_allowed(path: Path) -> frozenset[str]:
    try:
        _refuse_link(path.parent)
        value = _json.loads(read_regular(path), max_chars=_MAX_LINE_CHARS)
    except FileNotFoundError:
        return frozenset()
    except CorruptDataError:
        if os.path.islink(path):
            raise _linked(path) from None
        raise  # the folder (already said so) or not a file (read_regular's error)
    except StoreIOError:
        raise  # the file system refused the read (said so, with what to do): no damage
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"the allow-list {path} is damaged ({exc}); delete it to allow no tool "
            "for the context, then allow them again"
        ) from exc
    tools = value.get("tools") if isinstance(value, dict) else None
    if not isinstance(tools, list):
        raise StoreError(f"the allow-list {path} has no list of tools; delete it and start over")
    return frozenset(t for t in tools if isinstance(t, str) and t)


def write_approvals(
    folder: Path, tools: frozenset[str], records: list[ApprovalRecord], fsync: Fsync = os.fsync
) -> None:
    """Put a whole allow-list and audit log into ``folder`` at once (an import: nothing
    else writes a context that is being made); each file replaced atomically."""
    mkdir_durable(folder, fsync)
    if os.path.islink(folder):  # planted: never followed out
        raise StoreError(f"{folder} is a symbolic link; the approvals were not written")
    if records:
        log = "".join(record.model_dump_json() + "\n" for record in records)
        atomic_write(folder / _LOG, log.encode(), fsync=fsync)
    if tools:
        data = json.dumps({"tools": sorted(tools)}, indent=1).encode()
        atomic_write(folder / _ALLOWED, data, fsync=fsync)
