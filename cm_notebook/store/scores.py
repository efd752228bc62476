"""Scores on disk: one small JSON file per rated message, beside the message files.

Layout, inside a context folder::

    scores/<message_id>.json    the message's score (see :class:`cm_notebook.scores.Score`)
    scores/.lock                held while a score is read, merged and written back

Scores are kept out of the message files on purpose: a finished message never changes,
so readers may cache it, while a score changes whenever someone rates again.

Guarantees: a score file is replaced atomically (:func:`~.atomic.atomic_write`), so a
reader sees the old score or the new one, never a mix, even after ``kill -9`` (whose
temporary file the store's first rating in that folder removes, under the lock); an
update (read, merge, write) holds ``scores/.lock`` so two processes rating one
message at once never lose either rating; message ids are validated and the folder is
checked to lie inside the data directory, so a hostile id or a planted symlink cannot
make the store read or write elsewhere. The lock is not the context's ``.lock``: a
rating never waits behind a turn's message writes.

Only valid scores are written. A file that is not one (unparsable, hand-edited, from a
newer version with more fields) is damaged: listing skips it with a warning, reading
it names it, and the next update replaces it (with a warning), so one bad file never
breaks the other scores of the context.

:class:`ScoreFiles` is mixed into :class:`~cm_notebook.store.FileStore`; other stores
may offer the same three methods to keep scores.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import filelock

from .._json import JSONLimitError, loads
from ..errors import (
    CMError,
    ContextNotFoundError,
    CorruptDataError,
    InvalidInputError,
    StoreLockTimeoutError,
)
from ..ids import validate_message_id
from ..scores import stored_score
from . import oserrors
from .atomic import Fsync, atomic_write, is_temp_name, mkdir_durable
from .codec import read_regular
from .diagnostics import warn
from .paths import METADATA_NAME, context_dir, ensure_inside, safe_join
from .workers import run_blocking

__all__ = ["SCORES_DIR", "Change", "ScoreFiles"]

_T = TypeVar("_T")

#: The folder of a context that holds its scores.
SCORES_DIR = "scores"
_LOCK = ".lock"

Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]
"""Given the stored score (None: none), the one to store (None: remove it)."""


class ScoreFiles:
    """Score files of a :class:`~cm_notebook.store.FileStore` (see the module docstring)."""

    data_dir: Path
    lock_timeout: float
    fsync: Fsync
    #: The scores folders this store has cleared of dead writers' temporary files.
    _swept_scores: set[Path]

    async def read_score(self, context_id: str, message_id: str) -> dict[str, Any] | None:
        """The stored score of ``message_id`` as JSON data, or None if it has none.

        A damaged score file (not JSON, or not a valid score of that message) raises
        :class:`~cm_notebook.errors.CorruptDataError` naming it.
        """
        return await self._score_io(self._read_score, context_id, message_id)

    async def list_scores(self, context_id: str) -> dict[str, dict[str, Any]]:
        """Every stored score of the context: message id -> score data.

        A damaged score file (not JSON, or not a valid score of its message) is skipped
        with a :class:`~cm_notebook.store.StoreWarning` naming it and what is wrong.
        """
        return await self._score_io(self._list_scores, context_id)

    async def update_score(
        self, context_id: str, message_id: str, change: Change
    ) -> dict[str, Any] | None:
        """Replace the score of ``message_id`` by ``change(stored)``, under the scores lock.

        ``change`` gets the stored data (None: none) and returns what to store (None:
        remove the score); the result is returned. ``change`` may raise to abort. A
        damaged stored score is passed as None and, once the new one is written,
        reported with a :class:`~cm_notebook.store.StoreWarning`. What ``change``
        returns must be a valid score of ``message_id``
        (:class:`~cm_notebook.errors.InvalidInputError` otherwise, nothing written).
        """
        return await self._score_io(self._update_score, context_id, message_id, change)

    # -- blocking parts, run in a worker thread ----------------------------------------

    async def _score_io(self, func: Callable[..., _T], *args: Any) -> _T:
        return await run_blocking(functools.partial(_translated, func, *args))

    def _folder(self, context_id: str) -> Path:
        folder = context_dir(self.data_dir, context_id)
        if not os.path.lexists(folder / METADATA_NAME):
            raise ContextNotFoundError(f"no context {context_id!r} in {self.data_dir}")
        scores = safe_join(folder, SCORES_DIR)
        return ensure_inside(self.data_dir, scores)

    def _path(self, context_id: str, message_id: str) -> Path:
        validate_message_id(message_id)
        return safe_join(self._folder(context_id), f"{message_id}.json")

    def _read_score(self, context_id: str, message_id: str) -> dict[str, Any] | None:
        return _read(self._path(context_id, message_id), message_id)

    def _list_scores(self, context_id: str) -> dict[str, dict[str, Any]]:
        folder = self._folder(context_id)
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return {}
        found: dict[str, dict[str, Any]] = {}
        for name in names:
            if not name.endswith(".json") or is_temp_name(name) or name.startswith("."):
                continue
            message_id = name[: -len(".json")]
            path = folder / name
            try:
                validate_message_id(message_id)
                data = _load(path, message_id)
            except CMError as exc:
                warn(f"skipped the damaged score file {path}: {exc}", path)
                continue
            except _Damaged as exc:
                warn(f"skipped the score file {path}: it {exc}; delete it to drop that score", path)
                continue
            if data is not None:
                found[message_id] = data
        return found

    def _update_score(
        self, context_id: str, message_id: str, change: Change
    ) -> dict[str, Any] | None:
        path = self._path(context_id, message_id)
        mkdir_durable(path.parent, self.fsync)
        ensure_inside(self.data_dir, path.parent)  # the folder was not swapped for a link
        lock = filelock.FileLock(path.parent / _LOCK, thread_local=False, poll_interval=0.002)
        try:
            lock.acquire(timeout=self.lock_timeout)
        except filelock.Timeout:
            raise StoreLockTimeoutError(
                f"could not lock {path.parent} within {self.lock_timeout:g} s: another "
                "process is rating in this context. Try again."
            ) from None
        try:
            if path.parent not in self._swept_scores:
                _remove_leftovers(path.parent)
                self._swept_scores.add(path.parent)
            damage: str | None = None
            try:
                old = _load(path, message_id)
            except _Damaged as exc:
                # A damaged score must not block rating the message forever: the new
                # score replaces it, and the warning says what was lost.
                old, damage = None, str(exc)
            new = change(old)
            if new is not None:
                _check_new(new, message_id)
            kept = _keep_damaged(path) if damage is not None else None
            if new is None:
                path.unlink(missing_ok=True)
            else:
                data = json.dumps(new, ensure_ascii=False).encode("utf-8")
                atomic_write(path, data, fsync=self.fsync)
            if damage is not None:  # only once it is really gone (change may raise)
                done = "removed" if new is None else "replaced by the new score"
                where = f"; what it held is kept in {kept}" if kept is not None else ""
                warn(f"the score file {path} was {done}: it {damage}{where}", path)
            return new
        finally:
            lock.release()


def _translated(func: Callable[..., _T], *args: Any) -> _T:
    # The store's boundary: never a bare OSError (see FileStore._translated).
    try:
        return func(*args)
    except CMError:
        raise
    except OSError as exc:
        where = exc.filename if exc.filename is not None else "the scores folder"
        raise oserrors.translate(exc, where, "use") from exc


def _check_new(new: dict[str, Any], message_id: str) -> None:
    # Readers treat an invalid file as damaged, so one is never written.
    try:
        stored_score(new, message_id)
    except ValueError as exc:
        raise InvalidInputError(
            f"cannot store the score of {message_id!r}: it is {exc}; give a valid Score "
            "(cm_notebook.scores.Score) as JSON data"
        ) from None


def _remove_leftovers(folder: Path) -> None:
    # Called with the scores lock held. Every score write holds it, so a temporary
    # file seen now is a dead writer's (killed before its rename): listed once per
    # folder and store, not at every rating, as the folder grows with the ratings.
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if is_temp_name(name):
                with contextlib.suppress(OSError):
                    (folder / name).unlink()


def _keep_damaged(path: Path) -> Path | None:
    # A damaged score file may still hold a person's rating (a field from a newer
    # version makes it unreadable here): kept beside it, under a name no reader takes
    # for a score, before a new score replaces it. None if it could not be kept.
    kept = path.with_name(f"{path.name}.damaged")
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None  # a folder or a link in its place: nothing of ours to keep
        with contextlib.suppress(FileNotFoundError):
            os.unlink(kept)
        os.link(path, kept)
    except OSError:
        return None
    return kept


class _Damaged(Exception):
    """A score file that cannot be used; the message says what it is, to follow "it"."""


def _read(path: Path, message_id: str) -> dict[str, Any] | None:
    """The data of ``path``, a valid score of ``message_id``; None if there is none."""
    try:
        return _load(path, message_id)
    except _Damaged as exc:
        raise CorruptDataError(
            f"score file {path} cannot be read: it {exc}; delete it to drop that score", path
        ) from None


def _load(path: Path, message_id: str) -> dict[str, Any] | None:
    # A file that parses but is no valid score (hand-edited, or written by a newer
    # version with more fields) counts as damaged too: passed on, it would break every
    # reader of the context (all_scores, records, export) instead of only itself.
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return None
    try:
        parsed = loads(data)
    except (ValueError, JSONLimitError) as exc:
        raise _Damaged(f"is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise _Damaged("does not hold a JSON object")
    try:
        stored_score(parsed, message_id)
    except ValueError as exc:
        raise _Damaged(f"is {exc}") from None
    return parsed
