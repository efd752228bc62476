"""Updates of finished messages: telling one cut short by a kill from damage.

An update of a message that is already finished (complete -> complete: every save of
a tool call's status is one) replaces the message file, without an fsync, and then
commits with the fsync'd journal line that carries the new version (see
:mod:`.filestore`). A writer killed between the two leaves the file newer than the
journal's last committed copy. Restoring it from that copy (:mod:`.repair`) is right
(the update never returned), but it is no damage: after ``kill -9`` a context opens
without a :class:`~.diagnostics.StoreWarning`.

So such an update first appends a *marker* to the journal, without an fsync: an entry
line that restates the message's committed entry and adds ``"pending": <digest>``, the
digest of the file it is about to put in place (see :mod:`.journal`). A repair that
finds a file differing from the committed copy restores it quietly when the journal's
last line for that message is a marker and the file holds exactly the bytes its
digest names: the update cut short. Anything else (a missing, empty, older, zeroed or
hand-edited file, also after a power loss that took the marker or the commit line) is
still restored with a warning. After a power loss the marker and the new file may be
all that reached the disk: that update was not acknowledged either, and restoring it
quietly loses nothing.

Why a marker before the file rather than the alternatives: writing the file only
after the commit line would move the window, not close it (killed between the two,
the file is *older* than the committed copy, which is what a power loss leaves), and
readers would meet a file behind the journal after every update; a revision number
in the file would change the message file's format, which older versions refuse
(a message's unknown fields are an error).

Its cost: one ``write`` of some 200 bytes to the journal descriptor the commit line
uses next, and a BLAKE2b digest of the file's bytes: no fsync (the commit line's
fsync makes it durable with it) and no rename, so the fsyncs and renames of an update
stay as :mod:`.filestore` lists them. Markers are not counted among the lines that
make a compaction due (:meth:`.index.MessageIndex.compaction_due`; a journal read
lazily counts those it held when read), so a tool cycle compacts no more often than
before. An update writes one only while the journal holds the message's committed
copy: without one, no repair looks at the file. A journal whose last line is a marker
(a writer died) is read whole on opening rather than lazily, as it carries no time.

Older versions read a marker as an entry line that changes nothing. One that reads
the journal lazily takes the marker for the message's last line and finds no copy
there, so it leaves the file of an update cut short as it is: a complete, readable
version that the update was writing.
"""

from __future__ import annotations

import hashlib

from ..errors import CMError
from .codec import read_regular
from .index_contents import IndexContents

__all__ = ["file_digest", "update_cut_short"]


def file_digest(data: bytes) -> str:
    """The digest a marker carries for a message file's bytes (hex, 32 characters)."""
    # Not a defence against anyone: it names one file's bytes among the few versions a
    # crash can leave, and BLAKE2b is the fastest hash the standard library has.
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def update_cut_short(index: IndexContents, message_id: str, path: str) -> bool:
    """Whether the file at ``path`` is what an update of ``message_id`` that never
    committed wrote: the journal's last line for it is a marker, and the file's bytes
    are those the marker names. Read without following a link."""
    digest = index.pending_update(message_id)
    if digest is None:
        return False
    try:
        data = read_regular(path, check_folder=False)
    except (OSError, CMError):
        return False  # missing, a link, not a file: damage, not an update
    return file_digest(data) == digest
