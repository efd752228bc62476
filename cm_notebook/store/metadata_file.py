"""A context's ``metadata.json``: read again only when it changed, and written whole.

:class:`MetadataFile` remembers the metadata and ``heads_at`` it last read or wrote,
and the file's identity (device, inode, size, mtime) then. A read whose ``lstat`` finds
the same identity returns what it remembers without opening the file. On POSIX the file
it read stays open, so its inode number cannot be reused by a later metadata.json and
"same identity" really means "same file" (the index pins its snapshot the same way: see
:mod:`.index`).

A missing metadata.json means no such context, unless the folder still holds the
message index: then the file was lost (deleted, or dropped by a sync tool), and the
error says so rather than deny that the messages exist (see :mod:`.stray_folders`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .._cli_advice import for_contexts_in
from ..errors import ContextNotFoundError, CorruptDataError
from ..model import ContextMetadata
from .atomic import Fsync, atomic_write, read_from
from .codec import decode_metadata_doc, encode_metadata
from .oserrors import open_regular, translate
from .paths import METADATA_NAME, data_dir_of
from .stray_folders import holds_no_context, without_metadata

__all__ = ["MetadataFile"]

# Holding the last-read file open pins its inode number (see the module docstring).
# Windows refuses to replace a file that is open, so there it is closed at once.
_KEEP_OPEN = os.name != "nt"


class MetadataFile:
    """``<context>/metadata.json`` as last read or written (see the module docstring).

    Not thread-safe: the owner (a ``ContextState``) serialises calls, and writes only
    with the context's write locks held.
    """

    def __init__(self, context_id: str, ctx_dir: Path, fsync: Fsync = os.fsync) -> None:
        self.context_id = context_id
        self.dir = ctx_dir
        self.path = ctx_dir / METADATA_NAME
        self.fsync = fsync
        #: metadata.json as last read or written, and its ``heads_at``.
        self.metadata: ContextMetadata | None = None
        self.heads_at = 0
        #: metadata.json's ``stat`` result when it was last found to be the file read
        #: (or written): part of the token a write leaves (see ``ContextState``).
        self.stat: os.stat_result | None = None
        self._fd = -1
        self._id: tuple[int, int, int, int] | None = None

    def read(self, looked: os.stat_result | None = None) -> ContextMetadata:
        """The metadata now: what was last read, unless the file's identity changed.

        ``looked``: metadata.json's ``lstat`` result, if the caller has just taken it.
        Raises :meth:`missing`'s error if there is no metadata.json.
        """
        st = looked
        if st is None:
            try:
                # lstat: a link planted as metadata.json is damage to report, not "no
                # context".
                st = os.lstat(self.path)
            except (FileNotFoundError, NotADirectoryError):
                raise self.missing() from None
            except OSError as exc:
                raise translate(exc, self.path, "read") from exc
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self.metadata is not None and ident == self._id:
            self.stat = st
            return self.metadata
        try:
            fd = open_regular(self.path, check_folder=False)
        except FileNotFoundError:
            raise self.missing() from None
        try:
            fst = os.fstat(fd)
            data = read_from(fd, 0)
        except OSError as exc:
            os.close(fd)
            raise translate(exc, self.path, "read") from exc
        try:
            metadata, heads_at = decode_metadata_doc(data, self.path, self.context_id)
        except BaseException:
            os.close(fd)
            raise
        self._pin(fd, fst)
        self.metadata, self.heads_at = metadata, heads_at
        return metadata

    def write(self, metadata: ContextMetadata, heads_at: int) -> None:
        """Atomically and durably replace metadata.json; remember what was written.

        The caller holds the write locks and has made durable every journal line the
        heads of ``metadata`` name (see ``ContextState.write_metadata``).
        """
        atomic_write(self.path, encode_metadata(metadata, heads_at), fsync=self.fsync)
        self.metadata, self.heads_at = metadata, heads_at
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError:
            # The write succeeded; without the pin the next read simply re-reads the file.
            self._id = self.stat = None
            return
        self._pin(fd, os.fstat(fd))

    def _pin(self, fd: int, st: os.stat_result) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd if _KEEP_OPEN else -1
        if not _KEEP_OPEN:  # pragma: no cover - Windows
            os.close(fd)
        self._id = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.stat = st

    def not_found(self) -> ContextNotFoundError:
        """The error for a context whose folder or metadata.json is gone."""
        if self.metadata is not None:
            # It was here a moment ago: "no context" alone reads as a mistyped id.
            return ContextNotFoundError(
                for_contexts_in(
                    f"context {self.context_id!r} ({self.metadata.title!r}) was deleted from "
                    f"{self.dir.parent} while it was open here (by `cm-notebook rm`, a "
                    "DELETE over REST, or another process): what it held is gone. List "
                    "existing contexts with FileStore.list_contexts() (or `cm-notebook ls`).",
                    data_dir_of(self.dir),
                )
            )
        return ContextNotFoundError(
            for_contexts_in(
                f"no context {self.context_id!r} in {self.dir.parent}. List existing "
                "contexts with FileStore.list_contexts() (or `cm-notebook ls`).",
                data_dir_of(self.dir),
            )
        )

    def missing(self) -> ContextNotFoundError | CorruptDataError:
        """The error for a folder without metadata.json: no context, unless the folder
        still holds its messages, which "no such context" would deny; a folder that is
        there is described (empty, or what it holds) with what to do about it."""
        if not holds_no_context(self.dir):
            return self.not_found()  # no folder (deleted, or never made)
        return without_metadata(self.dir, self.context_id)

    def close(self) -> None:
        """Close the pinned file and forget what was read (the next read reads anew)."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._id = self.stat = None
        self.metadata = None
        self.heads_at = 0
