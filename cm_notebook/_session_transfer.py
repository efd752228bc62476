"""A context as one document and back: :meth:`ContextSession.export` and the import
step of :meth:`ContextSession.from_export`.

The document is the one ``cm-notebook export`` writes (:class:`~cm_notebook.export.
ExportDocument`): lossless, secrets left out, with the scores of its replies. These are
the same steps as the command line's ``export`` and ``import``, for a notebook, where a
researcher shares a conversation with a colleague or opens one a colleague sent.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias

from ._export_approvals import not_allowed_note
from ._input_files import read_input_file
from ._json_bytes import NotJSONText, decode_json_bytes
from ._session_reading import SessionReading
from ._sessionio import StoreAccess
from .errors import ContextExistsError, InvalidInputError
from .export import (
    ExportDocument,
    export_context,
    import_document,
    parse_export,
    remove_killed_import,
)
from .ids import new_id, validate_branch_name
from .store import Store

__all__ = [
    "ExportSource",
    "TransferMethods",
    "import_export",
    "kept_if_opened",
    "read_document",
]

#: What :meth:`ContextSession.from_export` takes: a document, its JSON (text, bytes or
#: decoded), or the path of a file holding it.
ExportSource: TypeAlias = "ExportDocument | Mapping[str, Any] | str | bytes | os.PathLike[str]"

_GIVE_AN_EXPORT = (
    "give the path of a JSON file made by `cm-notebook export` (or by "
    "session.export().to_json()), its text, or the document itself"
)


class TransferMethods(SessionReading):
    """The context as an export document."""

    def export(self, branch: str | None = None) -> ExportDocument:
        """The context as the document ``cm-notebook export`` writes: every message of
        every branch (or only the path of ``branch``), its metadata and the scores of
        its replies, with secrets left out. Lossless: :meth:`from_export` (or
        ``cm-notebook import``) makes the same context again.

        ``.to_json()`` gives the file's text, ``.to_markdown()`` a transcript to read.
        A reply being written is exported as far as it has been stored. A context whose
        import never finished is not exported (StateError): it may lack messages.
        """
        if branch is not None:
            branch = validate_branch_name(branch)
            self._head(branch)  # BranchNotFoundError, naming the branches there are
        return self._io.call(export_context(self._store, self.id, branch=branch))


def read_document(source: ExportSource) -> ExportDocument:
    """The export document ``source`` holds or names (see :data:`ExportSource`).

    A string is taken as JSON text when it starts with ``{``, else as a path. Raises
    InvalidInputError naming what was wrong, SchemaVersionError for a document written
    by a newer cm_notebook.
    """
    if isinstance(source, ExportDocument):
        return source
    if isinstance(source, Mapping):
        return parse_export(dict(source))
    if isinstance(source, str) and source.lstrip("\ufeff \t\r\n").startswith("{"):
        return parse_export(source.lstrip("\ufeff"))
    if isinstance(source, bytes):
        return parse_export(source.removeprefix(b"\xef\xbb\xbf"))
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidInputError(
            f"cannot import a value of type {type(source).__name__}: {_GIVE_AN_EXPORT}"
        )
    path = Path(source)
    try:
        raw, _info = read_input_file(path, remedy=_GIVE_AN_EXPORT)
    except FileNotFoundError:
        raise InvalidInputError(f"there is no file {str(path)!r}: {_GIVE_AN_EXPORT}") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{str(path)!r} is a folder: {_GIVE_AN_EXPORT}") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        text = decode_json_bytes(raw, path)  # UTF-8, or UTF-16/32 (a file saved again on Windows)
    except NotJSONText as exc:
        raise InvalidInputError(f"{str(path)!r} {exc}; {_GIVE_AN_EXPORT}") from None
    try:
        return parse_export(text)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path}: {exc}") from None


def import_export(
    source: ExportSource, *, store: Store, fresh_id: bool = False, allow_tools: bool = False
) -> str:
    """Write the context of ``source`` into ``store``; return its id.

    Under the document's own id, or a new one with ``fresh_id``. A context that an
    import killed half-way left under that id is replaced; any other context there is
    kept and ContextExistsError says what to do. The tools the document allowed to run
    without asking are allowed here only with ``allow_tools`` (else a UserWarning
    names them).
    """
    document = read_document(source)
    target = new_id("c") if fresh_id else None
    access = StoreAccess(store)
    if target is None:
        access.call(remove_killed_import(store, document.metadata.id, beside="new_id=True"))
    try:
        imported = access.call(
            import_document(store, document, context_id=target, allow_tools=allow_tools)
        )
    except ContextExistsError as exc:
        existing = exc.existing or document.metadata.id
        what = str(exc).split("; choose another id")[0]  # the store's remedy, for Python
        raise ContextExistsError(
            f"{what}: open it with ContextSession.open({existing!r}), or "
            "import this copy beside it with new_id=True",
            existing=existing,
        ) from None
    if not allow_tools:
        how = "pass allow_tools=True to allow the same, or session.allow(name, scope='context')"
        note = not_allowed_note(document.approvals, how)
        if note is not None:
            warnings.warn(note, UserWarning, stacklevel=3)
    return imported.id


@contextmanager
def kept_if_opened(store: Store, context_id: str) -> Iterator[None]:
    """Delete the context just imported as ``context_id`` if the block opening it refuses
    the options (InvalidInputError): imported to be opened, it is not kept."""
    try:
        yield
    except InvalidInputError:
        # Options refused: the import was for nothing. Anything else (a session of that
        # id still open here, the disk) leaves it, to open once that is dealt with.
        StoreAccess(store).call(store.delete_context(context_id))
        raise
