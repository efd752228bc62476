"""Encoding and decoding of ``metadata.json`` and message files.

Decoding never lets a raw ``json`` or pydantic error escape: damage becomes
:class:`~cm_notebook.errors.CorruptDataError` carrying the file's path and a sentence
on what to do, and data from a newer cm_notebook becomes
:class:`~cm_notebook.errors.SchemaVersionError`. Files are indented JSON so that a
context folder stays readable and diffs well under version control.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_json

from .. import _json
from .._model_output import redact_metadata
from .._unicode import scrub
from .._validation_errors import first_error
from ..errors import CorruptDataError, InvalidInputError
from ..ids import validate_message_id
from ..model import SCHEMA_VERSION, ContextMetadata, Message
from ..redact import redact
from .atomic import is_temp_name, read_from
from .oserrors import open_regular, translate
from .schema import upgrade

__all__ = [
    "decode_message",
    "decode_metadata",
    "decode_metadata_doc",
    "encode_message",
    "encode_message_forms",
    "encode_metadata",
    "file_bytes_from_compact",
    "read_message_file",
    "read_message_folder",
    "read_regular",
]


def _dumps(obj: dict[str, Any]) -> bytes:
    # The file format is json.dumps(obj, ensure_ascii=False, indent=2) plus a newline;
    # pydantic-core writes the same bytes ~15x faster (floats may be spelled otherwise,
    # 1e-7 for 1e-07, which reads back as the same value).
    return to_json(obj, indent=2, inf_nan_mode="constants") + b"\n"


def _compact(obj: dict[str, Any]) -> bytes:
    # json.dumps(obj, ensure_ascii=False, separators=(",", ":")), UTF-8 encoded: the same
    # bytes from pydantic-core, ~5x faster (floats aside, as in _dumps).
    return to_json(obj, inf_nan_mode="constants")


def file_bytes_from_compact(data: bytes) -> bytes:
    """The file bytes of a message from its compact JSON (as in a journal line).

    The same value dumped the same way, so the result is byte for byte the file that
    was written alongside the line.
    """
    return _dumps(json.loads(data.decode("utf-8")))


#: The key in metadata.json saying which journal lines its branch heads already include.
HEADS_AT_KEY = "heads_at"


def _load_object(data: bytes, path: Path, what: str, advice: str) -> dict[str, Any]:
    try:
        raw = _json.loads(data.decode("utf-8"))
    except _json.JSONLimitError as exc:
        raise CorruptDataError(
            f"{what} {path} is beyond what cm_notebook reads: {exc}. {advice}", path
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptDataError(f"{what} {path} is not valid JSON ({exc}). {advice}", path) from exc
    if not isinstance(raw, dict):
        raise CorruptDataError(
            f"{what} {path} holds a JSON {type(raw).__name__}, not an object. {advice}", path
        )
    return raw


def _metadata_advice(path: Path) -> str:
    return (
        f"Restore it from a backup or repair it by hand; the messages in "
        f"{path.parent / 'messages'} are untouched. Deleting the context folder "
        f"{path.parent} removes the whole context."
    )


def encode_metadata(metadata: ContextMetadata, heads_at: int = 0) -> bytes:
    """The bytes of ``metadata.json`` (always the current schema version).

    ``heads_at``: the branch heads include every head move of the journal lines numbered
    below it (later lines move them on; see :mod:`cm_notebook.store.filestore`).
    """
    raw = metadata.model_dump(mode="json")
    raw["schema_version"] = SCHEMA_VERSION
    raw[HEADS_AT_KEY] = heads_at
    # Secrets are refused in provider settings; imported extra fields are only redacted.
    raw["provider"] = redact(raw["provider"])
    raw["extra"] = redact(raw["extra"])
    return _encoded(raw, f"the metadata of context {metadata.id!r}", _dumps)[0]


def decode_metadata(data: bytes, path: Path, context_id: str) -> ContextMetadata:
    """Parse ``metadata.json``; the folder name ``context_id`` wins over the stored id.

    The folder name is what every lookup uses, and copying a context folder under a new
    name is a supported way to duplicate a context, so a stale ``id`` inside the copy is
    replaced rather than treated as damage. The branch heads are those of the file
    (see :func:`decode_metadata_doc`).
    """
    return decode_metadata_doc(data, path, context_id)[0]


def decode_metadata_doc(data: bytes, path: Path, context_id: str) -> tuple[ContextMetadata, int]:
    """:func:`decode_metadata` and the file's ``heads_at`` (0 if it has none)."""
    advice = _metadata_advice(path)
    raw = upgrade(_load_object(data, path, "context metadata", advice), "metadata", path)
    raw["id"] = context_id
    heads_at = raw.pop(HEADS_AT_KEY, 0)
    if not isinstance(heads_at, int) or isinstance(heads_at, bool) or heads_at < 0:
        raise CorruptDataError(
            f"context metadata {path} has {HEADS_AT_KEY} {heads_at!r}, which is not a line "
            f"number. {advice}",
            path,
        )
    try:
        return ContextMetadata.model_validate(raw), heads_at
    except ValidationError as exc:
        error = exc
    # Settings an earlier version stored with a credential in them (a base_url with
    # "user:password@", before secrets were refused; a value that a newer rule counts as
    # a secret) are refused when written, not when read: they are read with it redacted.
    # The file is not written now (a read never writes: it may be a read-only copy);
    # the next write of metadata.json stores what was read, without the secret.
    try:
        return ContextMetadata.model_validate(_settings_redacted(raw)), heads_at
    except ValidationError as exc:
        error = exc
    raise CorruptDataError(
        f"context metadata {path} does not match the expected format: "
        f"{first_error(error)}. {advice}",
        path,
    ) from error


def _settings_redacted(raw: dict[str, Any]) -> dict[str, Any]:
    # A copy of ``raw`` with every secret redacted in the fields whose model refuses
    # secrets: the provider settings, and each branch's provider, parameters and labels.
    result = dict(raw)
    if isinstance(raw.get("provider"), dict):
        result["provider"] = redact(raw["provider"])
    branches = raw.get("branches")
    if isinstance(branches, dict):
        result["branches"] = {
            name: _branch_redacted(branch) if isinstance(branch, dict) else branch
            for name, branch in branches.items()
        }
    return result


def _branch_redacted(branch: dict[str, Any]) -> dict[str, Any]:
    return {
        key: redact(value) if key in ("provider", "params", "labels") else value
        for key, value in branch.items()
    }


def encode_message(message: Message) -> bytes:
    """The bytes of a message file: the message plus its schema version."""
    return _encoded(_message_raw(message), f"message {message.id!r}", _dumps)[0]


def encode_message_forms(message: Message) -> tuple[bytes, bytes]:
    """The message file's bytes and the same JSON compacted (for a journal line).

    Halves of UTF-16 surrogate pairs (an emoji cut in two), which UTF-8 cannot hold,
    are joined or replaced by U+FFFD (:mod:`cm_notebook._unicode`): the message is
    stored, not lost. Raises InvalidInputError if it still cannot be written as JSON.
    """
    file_bytes, line = _encoded(_message_raw(message), f"message {message.id!r}", _dumps, _compact)
    _check_readable(file_bytes, message)
    return file_bytes, line


def _check_readable(file_bytes: bytes, message: Message) -> None:
    # A message must be one the store can read back: refused here, before anything is
    # written, rather than acknowledged and then unreadable. Bytes are at least as many
    # as characters, so the exact count is only taken for the rare huge message.
    limit = _json.MAX_TEXT_CHARS
    if len(file_bytes) <= limit:
        return
    chars = len(file_bytes.decode("utf-8"))
    if chars > limit:
        raise InvalidInputError(
            f"message {message.id!r} would be a file of {chars:,} characters, beyond the "
            f"{limit:,} cm_notebook reads back; nothing was written. Store less (a shorter "
            "text, tool result or tool-call arguments)."
        )


def _encoded(
    raw: dict[str, Any], what: str, *forms: Callable[[dict[str, Any]], bytes]
) -> tuple[bytes, ...]:
    # Each form of ``raw``; text with surrogates is scrubbed first (only then: the
    # common case pays nothing for the check).
    try:
        return tuple(form(raw) for form in forms)
    except (UnicodeEncodeError, PydanticSerializationError):
        clean = scrub(raw)
    try:
        return tuple(form(clean) for form in forms)
    except (UnicodeEncodeError, PydanticSerializationError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} cannot be written as JSON: {exc}") from None


def _message_raw(message: Message) -> dict[str, Any]:
    raw: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    raw.update(message.model_dump(mode="json"))
    # How a message came to be (an error body, failed attempts, parameters) may quote a
    # key a server echoed; the message's own text and tool calls are the user's data,
    # and so is what the model wrote (its reasoning, a failed attempt's text).
    raw["metadata"] = redact_metadata(raw["metadata"])
    return raw


def decode_message(data: bytes, path: Path, expected_id: str | None) -> Message:
    """Parse a message file and check that it holds ``expected_id`` (if given)."""
    advice = (
        "Restore the file from a backup; do not delete it while later messages answer it "
        "(a repair of the context keeps it aside and brings them back). The rest of the "
        "context still works without it."
    )
    raw = upgrade(_load_object(data, path, "message file", advice), "message", path)
    raw.pop("schema_version", None)
    try:
        message = Message.model_validate(raw)
    except ValidationError as exc:
        raise CorruptDataError(
            f"message file {path} does not match the expected format: {first_error(exc)}. {advice}",
            path,
        ) from exc
    if expected_id is not None and message.id != expected_id:
        raise CorruptDataError(
            f"message file {path} holds message {message.id!r}, not {expected_id!r}. {advice}",
            path,
        )
    return message


def read_regular(path: Path | str, *, check_folder: bool = True) -> bytes:
    """The whole content of the regular file ``path`` (see :func:`.oserrors.open_regular`).

    A missing file raises ``FileNotFoundError``; anything else that goes wrong is one of
    the package's errors naming ``path``.
    """
    fd = open_regular(path, check_folder=check_folder)
    try:
        return read_from(fd, 0)
    except OSError as exc:
        raise translate(exc, path, "read") from exc
    finally:
        os.close(fd)


def read_message_file(
    path: Path | str, expected_id: str | None, *, check_folder: bool = True
) -> Message:
    """Read and decode one message file; a missing file is damage too (CorruptDataError).

    A symbolic link (the file, or, with ``check_folder``, the ``messages`` folder), a
    folder or any other non-file at the path is refused (CorruptDataError), never
    followed or read.
    """
    try:
        data = read_regular(path, check_folder=check_folder)
    except FileNotFoundError as exc:
        path = Path(path)
        raise CorruptDataError(
            f"message file {path} is missing although the message index lists it. Restore "
            "it from a backup; the rest of the context still works without it.",
            path,
        ) from exc
    return decode_message(data, Path(path), expected_id)


def read_message_folder(folder: Path) -> tuple[list[Message], list[tuple[str, Path]]]:
    """Every readable message file in ``folder`` (created if missing), and for each
    unreadable one what is wrong with it. Removes temporary files left by killed writers.
    """
    folder.mkdir(exist_ok=True)
    found = []
    skipped: list[tuple[str, Path]] = []
    for name in sorted(os.listdir(folder)):
        file = folder / name
        if is_temp_name(name):
            # Left by a writer that was killed before its rename: never committed.
            file.unlink(missing_ok=True)
            continue
        if not name.endswith(".json"):
            continue  # not ours (e.g. .DS_Store)
        try:
            message_id = validate_message_id(name[: -len(".json")])
            found.append(read_message_file(file, message_id))
        except (CorruptDataError, ValueError) as exc:
            skipped.append((str(exc), file))
    return found, skipped
