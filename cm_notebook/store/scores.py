"""Scores on disk: one small JSON file per rated message, beside the message files.

Layout, inside a context folder::

    scores/<message_id>.json    the message's score (see :class:`cm_notebook.scores.Score`)
    scores/.lock                held while a score is read, merged and written back

Scores are kept out of the message files on purpose: a finished message never changes,
so readers may cache it, while a score changes whenever someone rates again.

Guarantees: a score file is replaced atomically (:func:`~.atomic.atomic_write`), so a
reader sees the old score or the new one, never a mix, even after ``kill -9``; an
update (read, merge, write) holds ``scores/.lock`` so two processes rating one
message at once never lose either rating; message ids are validated and the folder is
checked to lie inside the data directory, so a hostile id or a planted symlink cannot
make the store read or write elsewhere. The lock is not the context's ``.lock``: a
rating never waits behind a turn's message writes.

:class:`ScoreFiles` is mixed into :class:`~cm_notebook.store.FileStore`; other stores
may offer the same three methods to keep scores.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import filelock

from .._json import JSONLimitError, loads
from ..errors import CMError, ContextNotFoundError, CorruptDataError, StoreLockTimeoutError
from ..ids import validate_message_id
from . import oserrors
from .atomic import atomic_write, is_temp_name
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

    async def read_score(self, context_id: str, message_id: str) -> dict[str, Any] | None:
        """The stored score of ``message_id`` as JSON data, or None if it has none."""
        return await self._score_io(self._read_score, context_id, message_id)

    async def list_scores(self, context_id: str) -> dict[str, dict[str, Any]]:
        """Every stored score of the context: message id -> score data.

        A damaged score file is skipped with a
        :class:`~cm_notebook.store.StoreWarning` naming it.
        """
        return await self._score_io(self._list_scores, context_id)

    async def update_score(
        self, context_id: str, message_id: str, change: Change
    ) -> dict[str, Any] | None:
        """Replace the score of ``message_id`` by ``change(stored)``, under the scores lock.

        ``change`` gets the stored data (None: none) and returns what to store (None:
        remove the score); the result is returned. ``change`` may raise to abort.
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
        return _read(self._path(context_id, message_id))

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
            try:
                validate_message_id(message_id)
                data = _read(folder / name)
            except CMError as exc:
                warn(f"skipped the damaged score file {folder / name}: {exc}", folder / name)
                continue
            if data is not None:
                found[message_id] = data
        return found

    def _update_score(
        self, context_id: str, message_id: str, change: Change
    ) -> dict[str, Any] | None:
        path = self._path(context_id, message_id)
        path.parent.mkdir(exist_ok=True)
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
            new = change(_read(path))
            if new is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, json.dumps(new, ensure_ascii=False).encode("utf-8"))
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


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return None
    try:
        parsed = loads(data)
    except (ValueError, JSONLimitError) as exc:
        raise CorruptDataError(
            f"score file {path} is not valid JSON ({exc}); delete it to drop that score",
            path,
        ) from exc
    if not isinstance(parsed, dict):
        raise CorruptDataError(
            f"score file {path} does not hold a JSON object; delete it to drop that score",
            path,
        )
    return parsed
