"""Whole context folders: create one atomically, list them, and find a trash name.

Kept apart from :mod:`~cm_notebook.store.filestore` because these operations work on
the ``contexts/`` folder rather than on one context's cached state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .._cli_advice import for_contexts_in
from ..errors import (
    CMError,
    ContextExistsError,
    CorruptDataError,
    InvalidIdError,
    InvalidInputError,
    StoreError,
)
from ..ids import id_key, validate_context_id
from ..model import ContextMetadata
from .atomic import Fsync, atomic_write, fsync_dir, mkdir_durable
from .codec import decode_metadata, encode_metadata, read_regular
from .context import ContextState, creation_lock, remove_lock_shell
from .diagnostics import warn
from .index import empty_index_bytes
from .oserrors import describe_kind, linked
from .paths import (
    INDEX_NAME,
    JOURNAL_NAME,
    LOG_NAME,
    MESSAGES_DIR,
    METADATA_NAME,
    SIGNALS_DIR,
    context_dir,
    contexts_root,
)
from .stray_folders import without_metadata

__all__ = [
    "Skipped",
    "SkippedFolder",
    "context_folder_of",
    "create_context_folder",
    "list_context_folders",
    "remove_empty_folder",
    "remove_tree",
    "signal_log_in",
    "trash_path",
    "valid_context_id",
]

_TRASH_PREFIX = ".trash-"
_TMP_PREFIX = ".tmp-"
# Creating a context takes a few small writes; this only guards against a hung creator.
_CREATING_TIMEOUT = 30.0


def valid_context_id(data_dir: Path, context_id: str) -> str:
    """``context_id`` if it is a valid id, else the InvalidIdError that says so, its
    `cm-notebook ls` given ``--data-dir`` for contexts stored in ``data_dir``."""
    try:
        return validate_context_id(context_id)
    except InvalidIdError as exc:
        raise InvalidIdError(for_contexts_in(str(exc), data_dir)) from None


def _exists(data_dir: Path, context_id: str) -> ContextExistsError:
    return ContextExistsError(
        f"a context {context_id!r} already exists in {data_dir}; choose another id or open "
        "the existing one.",
        existing=context_id,
    )


def _refuse_case_twin(root: Path, context_id: str) -> None:
    # Folders that differ only in case are one folder on Windows and macOS, so a data
    # directory holding both could not be copied there.
    key = id_key(context_id)
    for name in os.listdir(root):
        if name != context_id and not name.startswith(".") and id_key(name) == key:
            raise ContextExistsError(
                f"context id {context_id!r} differs only in case from the existing context "
                f"{name!r}, and the two would be one folder on Windows and macOS; choose "
                "another id or open the existing one.",
                existing=name,
            )


def create_context_folder(
    data_dir: Path, metadata: ContextMetadata, fsync: Fsync = os.fsync
) -> None:
    """Create the folder of a new, empty context in one atomic step."""
    folder = context_dir(data_dir, metadata.id)
    for branch in metadata.branches.values():
        if branch.head is not None or branch.forked_from is not None:
            raise InvalidInputError(
                f"branch {branch.name!r} points at a message, but a new context has no "
                "messages yet; create it with empty branches."
            )
    if folder.exists() and not remove_lock_shell(folder):
        # (A shell holding only a lock file is what a writer racing with delete_context
        # can leave behind; it is not a context and is removed above.)
        raise _exists(data_dir, metadata.id)
    root = contexts_root(data_dir)
    mkdir_durable(root, fsync, parents=True)  # the first context's data folder: new
    _refuse_case_twin(root, metadata.id)
    # Build the folder under a temporary name, then rename it into place: other
    # processes see either no context or a complete one. rename() refuses to replace a
    # non-empty folder, so two processes creating the same id cannot both succeed.
    tmp = root / f"{_TMP_PREFIX}{metadata.id}-{secrets.token_hex(6)}"
    # Creations are serialised (each holds the lock for a few small writes), so that a
    # listing can tell what a killed creator left: see _sweep_abandoned_creations.
    with creation_lock(data_dir, _CREATING_TIMEOUT):
        tmp.mkdir()
        try:
            (tmp / MESSAGES_DIR).mkdir()
            (tmp / SIGNALS_DIR).mkdir()
            atomic_write(tmp / INDEX_NAME, empty_index_bytes(), fsync=fsync)
            atomic_write(tmp / JOURNAL_NAME, b"", fsync=fsync)
            atomic_write(tmp / METADATA_NAME, encode_metadata(metadata), fsync=fsync)
            try:
                os.rename(tmp, folder)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.EACCES):
                    raise _exists(data_dir, metadata.id) from exc
                raise
        except BaseException:
            remove_tree(tmp)
            raise
    fsync_dir(root, fsync)


def _sweep_abandoned_creations(data_dir: Path, names: list[str]) -> None:
    """Remove the temporary folders of create_context calls that were killed midway."""
    if not any(name.startswith(_TMP_PREFIX) for name in names):
        return
    root = contexts_root(data_dir)
    # A creator at work (or a read-only folder) makes this wait for the next listing.
    with contextlib.suppress(StoreError, OSError), creation_lock(data_dir, 0.0):
        for name in names:
            if name.startswith(_TMP_PREFIX):
                remove_tree(root / name)


class SkippedFolder(NamedTuple):
    """An entry of ``contexts/`` that a listing skipped: not a readable context."""

    #: The entry's name (the context's id, when it is a valid one).
    name: str
    #: Why: its message names the damaged file and says what to do.
    error: InvalidInputError | StoreError


#: What a listing adds the entries it skipped to.
Skipped = list[SkippedFolder]


def remove_empty_folder(data_dir: Path, context_id: str) -> bool:
    """Remove ``contexts/<context_id>`` if it is an empty folder (which the listing of
    contexts skips, with advice to remove it); return whether it did. Nothing is lost:
    a folder with anything in it is left alone (rmdir refuses it), and a context's
    folder is never empty (it is made whole, then renamed into place)."""
    try:
        os.rmdir(context_dir(data_dir, context_id))
    except OSError:
        return False
    return True


def list_context_folders(
    data_dir: Path, skipped: list[SkippedFolder] | None = None
) -> list[ContextMetadata]:
    """Metadata of every readable context, most recently updated first.

    Anything in ``contexts/`` that is not a readable context is skipped with a
    StoreWarning (and added to ``skipped``, if given: for a caller that reports the
    skips itself, such as the server to its clients), except the store's own dot-named
    temporary and trash folders. Trash
    left by a delete_context that was killed between its rename and the removal is
    removed here (it is already invisible, so removing it late changes nothing else),
    and so are the temporary folders of create_context calls that were killed (when no
    creator holds the creation lock, none is alive).
    """
    root = contexts_root(data_dir)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    _sweep_abandoned_creations(data_dir, names)
    found: list[ContextMetadata] = []
    for name in names:
        if name.startswith(_TRASH_PREFIX):
            remove_tree(root / name)  # two removers at once are harmless
            continue
        if name.startswith("."):
            continue
        folder = root / name
        try:
            context_dir(data_dir, name)  # a valid id, and no symlink out of data_dir
            if not folder.is_dir():
                raise CorruptDataError(f"{folder} is a file, not a context folder", folder)
            path = folder / METADATA_NAME
            try:
                data = read_regular(path, check_folder=False)
            except FileNotFoundError:
                if not any(folder.iterdir()):  # nothing to keep: say how to remove it
                    advice = for_contexts_in(f"`cm-notebook rm {name} --yes` removes it", data_dir)
                    raise CorruptDataError(f"{folder} is an empty folder; {advice}", path) from None
                # What it holds, and what to do (a skipped entry, never a "not found").
                lost = without_metadata(folder, name)
                raise CorruptDataError(str(lost), path) from None
            found.append(decode_metadata(data, path, name))
        except (InvalidInputError, StoreError) as exc:
            # One damaged context must not hide the others: report it by path (the
            # error says what to do) and go on.
            where = getattr(exc, "path", None) or folder
            warn(f"skipped {folder}, which is not a readable context: {exc}", where)
            if skipped is not None:
                skipped.append(SkippedFolder(name, exc))
    found.sort(key=lambda metadata: metadata.updated_at, reverse=True)
    return found


def trash_path(data_dir: Path, context_id: str) -> Path:
    """Where delete_context moves a folder before removing it (hidden from listings)."""
    return contexts_root(data_dir) / f"{_TRASH_PREFIX}{context_id}-{secrets.token_hex(6)}"


def signal_log_in(context_folder: Path) -> Path:
    """The signal log of the context in ``context_folder``: ``signals/signals.log``.

    In a folder of its own, so that a process watching the log for other processes'
    signals is not woken by every write of the store in the context folder (each cost
    the writer the notification too: ~10% of a turn). A log that an older version kept
    in the context folder itself is moved there, keeping its numbers; if both exist
    (another process made the new one meanwhile), the new one is used.
    """
    path = context_folder / SIGNALS_DIR / LOG_NAME
    older = context_folder / LOG_NAME
    if os.path.lexists(older) and not os.path.lexists(path):
        # A link, then the old name removed: unlike a rename, it never replaces a log
        # another process has made meanwhile. Whatever fails (a read-only folder, a
        # file system without links) leaves the old log where it is.
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path.parent)
            os.link(older, path)
        except OSError:
            return path
        with contextlib.suppress(OSError):
            os.unlink(older)
    return path


def checked_signal_log(context_folder: Path) -> Path:
    """:func:`signal_log_in`, refusing a link or anything but a file where the log (or
    its folder) belongs: every process appends to it, so a link planted in a shared
    folder must not make that write land outside the data directory."""
    signals = context_folder / SIGNALS_DIR
    if os.path.islink(signals):
        raise linked(signals)
    path = signal_log_in(context_folder)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path  # made by the first signal
    except NotADirectoryError:
        raise _not_a_folder(signals) from None
    if stat.S_ISLNK(mode):
        raise linked(path)
    if not stat.S_ISREG(mode):
        raise CorruptDataError(
            f"{path} is {describe_kind(mode)}, not the context's signal log; move it out "
            "of the way (a new log is made; the messages are untouched).",
            path,
        )
    return path


def _not_a_folder(signals: Path) -> CorruptDataError:
    # Something but a folder where the log's folder belongs (a link is refused above).
    try:
        mode = os.lstat(signals).st_mode
    except OSError:
        mode = 0
    kind = "a file" if stat.S_ISREG(mode) else describe_kind(mode) if mode else "not a folder"
    return CorruptDataError(
        f"{signals} is {kind}, not the folder of the context's signal log; move it out of "
        "the way (a new folder and log are made; the messages are untouched).",
        signals,
    )


def context_folder_of(log_path: Path) -> Path:
    """The context folder of the log at ``log_path`` (see :func:`signal_log_in`)."""
    return log_path.parent.parent if log_path.parent.name == SIGNALS_DIR else log_path.parent


def remove_tree(path: Path) -> None:
    """Delete a folder that has already been renamed out of the way (best effort)."""
    shutil.rmtree(path, ignore_errors=True)


def current_metadata(
    listed: ContextMetadata,
    state: ContextState | None,
    new_state: Callable[[str], ContextState],
) -> ContextMetadata:
    """A listed context's metadata as now current: metadata.json's heads and time lag
    behind the journal, so the context is asked, through ``state`` (the store's own,
    if it has the context open) or a state made by ``new_state`` for this one read.

    That state is closed again at once: it holds four files, and a data folder of 300
    contexts would otherwise keep 1,200 open for the life of the store (past a common
    limit of 1,024). Never registered, so no other call can be using it when it closes
    (closing a registered one could release the streaming lock of a reply another
    thread had just started); its file locks keep it and a state opened meanwhile from
    writing at once. A context that cannot be read (damaged, or a read-only folder it
    had to repair) is listed as metadata.json says, and reported when it is opened.
    """
    own = state is None
    if state is None:
        state = new_state(listed.id)
    try:
        return state.view(lambda _state, metadata: metadata.model_copy(deep=True))
    except (CMError, OSError):
        return listed
    finally:
        if own:
            with state.state_lock:
                state.close()
