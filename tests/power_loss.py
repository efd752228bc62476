"""What a power loss leaves of a data folder, worked out from a FileStore's fsyncs.

A ``FileStore`` sends every fsync it makes through its ``fsync`` argument. The
:class:`PowerLossRecorder` given there fsyncs for real and notes what that fsync made
durable: for a file, its bytes; for a folder, its entries (name -> inode). A power
loss just after fsync number N then leaves, under the strictest reading of POSIX
(nothing is durable that no fsync made so):

* each folder with the entries of its last fsync up to N (as at the start if none);
* each file reached through those entries with the bytes of its last fsync up to N
  (as at the start if none; empty if it was made since and never fsynced).

:meth:`PowerLossRecorder.leave` writes that folder. Real file systems keep more (ext4
orders a rename after the data it renames, for one), so a store that survives these
folders survives a real power loss at that point. With ``names_kept=True`` it writes
the other extreme: every folder as it was at fsync N (each creation, rename and
removal kept, as a file system that journals names but not data does), the files'
bytes still only what an fsync made durable: renamed files that come back empty. With
``torn=True``, the power fails during an fsync of a file that had grown (a journal, a
log; a new file's first fsync included): half of its new bytes reached the disk, the
last line is cut.

Files are told apart by inode number, so the data folder must be on ``tmpfs``, which
never hands out a number twice (ext4 gives a deleted file's number to the next new
one): :func:`tmpfs_folder`.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PowerLossRecorder", "tmpfs_folder"]

Entries = dict[str, tuple[int, bool]]  # name -> (inode, is a folder)


def tmpfs_folder() -> Path | None:
    """A ``tmpfs`` folder to make test folders in (``/dev/shm``), or None if there is none."""
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "/dev/shm" and fields[2] == "tmpfs":
                    return Path("/dev/shm")
    except OSError:
        pass
    return None


def _entries(folder: int | Path) -> Entries:
    with os.scandir(folder) as scan:
        return {e.name: (e.inode(), e.is_dir(follow_symlinks=False)) for e in scan}


@dataclass
class _History:
    # What successive fsyncs made durable, oldest first: (fsync number, state).
    dirs: dict[int, list[tuple[int, Entries]]] = field(default_factory=dict)
    files: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    # Every folder's entries as they were at each fsync (for ``names_kept``).
    trees: dict[int, dict[int, Entries]] = field(default_factory=dict)


def _as_of(history: list[tuple[int, object]] | None, after: int) -> object | None:
    found = None
    for number, state in history or ():
        if number > after:
            break
        found = state
    return found


class PowerLossRecorder:
    """A ``FileStore(fsync=...)`` argument that records what each fsync made durable.

    Everything under ``root`` when it is made counts as durable (the folder a test
    prepared). :attr:`count` is the number of fsyncs so far: note it when an operation
    returns, and every folder :meth:`leave` makes for that number or a later one must
    hold what the operation wrote.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0
        self._lock = threading.Lock()
        self._history = _History()
        self._root_inode = os.stat(root).st_ino
        self._start_dirs: dict[int, Entries] = {}
        self._start_files: dict[int, bytes] = {}
        self._snapshot(root)

    def _snapshot(self, folder: Path) -> None:
        entries = _entries(folder)
        self._start_dirs[os.stat(folder).st_ino] = entries
        for name, (inode, is_dir) in entries.items():
            if is_dir:
                self._snapshot(folder / name)
            else:
                self._start_files[inode] = (folder / name).read_bytes()

    def _tree(self, folder: Path, into: dict[int, Entries]) -> None:
        # Every folder's entries now, by inode (a folder removed meanwhile is skipped).
        try:
            entries = _entries(folder)
            into[os.stat(folder).st_ino] = entries
        except FileNotFoundError:
            return
        for name, (_inode, is_dir) in entries.items():
            if is_dir:
                self._tree(folder / name, into)

    def __call__(self, fd: int) -> None:
        os.fsync(fd)
        info = os.fstat(fd)
        with self._lock:  # one fsync at a time: each sees the folders as they are
            self.count += 1
            tree: dict[int, Entries] = {}
            self._tree(self.root, tree)
            self._history.trees[self.count] = tree
            if stat.S_ISDIR(info.st_mode):
                entries = _entries(fd)
                self._history.dirs.setdefault(info.st_ino, []).append((self.count, entries))
                return
            # The descriptor may be write-only: read the same file through /proc.
            with open(f"/proc/self/fd/{fd}", "rb") as handle:
                data = handle.read()
            self._history.files.setdefault(info.st_ino, []).append((self.count, data))

    def leave(
        self, after: int, dest: Path, *, names_kept: bool = False, torn: bool = False
    ) -> None:
        """Write into the new folder ``dest`` what a power loss after fsync ``after`` leaves.

        ``names_kept``: every folder as it was at that fsync (see the module docstring).
        ``torn``: the power failed during the next fsync, of a file that had grown (see
        :meth:`torn_points`): half of its new bytes reached the disk, cutting a line.
        """
        dest.mkdir()
        half = self._half_written(after) if torn else None
        self._build(self._root_inode, dest, after, names_kept, half)

    def synced_files(self, after: int) -> list[bytes]:
        """Each file's bytes as its last fsync up to ``after`` made them durable (files
        never fsync'd by then are left out, whatever their name is now)."""
        synced = (_as_of(history, after) for history in self._history.files.values())  # type: ignore[arg-type]
        return [data for data in synced if isinstance(data, bytes)]

    def torn_points(self) -> list[int]:
        """The fsync numbers N after which fsync N + 1 was of a file that had grown."""
        return [number - 1 for _inode, number, _old, _new in self._grown()]

    def _grown(self) -> Iterator[tuple[int, int, bytes, bytes]]:
        # (inode, fsync number, the bytes durable before it, the bytes it made durable)
        # for each fsync of a file that had grown since its last fsync, or since the
        # start: a file's first fsync counts too (a new journal, a new log).
        for inode, history in self._history.files.items():
            before = self._start_files.get(inode, b"")
            for number, data in history:
                if len(data) > len(before) and data.startswith(before):
                    yield inode, number, before, data
                before = data

    def _half_written(self, after: int) -> tuple[int, bytes] | None:
        for inode, number, old, new in self._grown():
            if number == after + 1:
                return inode, new[: len(old) + (len(new) - len(old)) // 2]
        return None

    def _build(
        self,
        inode: int,
        dest: Path,
        after: int,
        names_kept: bool,
        half: tuple[int, bytes] | None,
    ) -> None:
        if names_kept and after > 0:
            entries: object = self._history.trees[after].get(inode, {})
        else:
            entries = _as_of(self._history.dirs.get(inode), after)  # type: ignore[arg-type]
        if entries is None:
            entries = self._start_dirs.get(inode, {})
        assert isinstance(entries, dict)
        for name, (child, is_dir) in entries.items():
            if is_dir:
                (dest / name).mkdir()
                self._build(child, dest / name, after, names_kept, half)
                continue
            data = _as_of(self._history.files.get(child), after)  # type: ignore[arg-type]
            if data is None:
                data = self._start_files.get(child, b"")
            if half is not None and half[0] == child:
                data = half[1]
            assert isinstance(data, bytes)
            (dest / name).write_bytes(data)
