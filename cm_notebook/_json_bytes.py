"""The text of a JSON file's bytes, in any encoding JSON allows, or why there is none.

JSON files are UTF-8 (with or without a byte order mark), but Windows tools save
UTF-16: PowerShell 5's ``>`` and ``Out-File`` write UTF-16 LE with a BOM, and Notepad
offers "UTF-16 LE/BE". RFC 8259 and Python's ``json.loads(bytes)`` accept UTF-8, -16
and -32 (a BOM, or the zero bytes that an ASCII first character leaves), so those are
read here the same way. Bytes that are none of them get an error that says what they
seem to be (a legacy 8-bit encoding, a compressed file) and how to convert them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._cli_advice import path_argument

__all__ = ["NotJSONText", "decode_json_bytes"]

_BOMS = {
    "utf-8-sig": "a UTF-8",
    "utf-16": "a UTF-16",
    "utf-32": "a UTF-32",
}
_MAGIC = {
    b"\x1f\x8b": ("a gzip-compressed file", "decompress it first (`gunzip {}`)"),
    b"PK\x03\x04": ("a zip archive", "extract the JSON file from it first"),
    b"BZh": ("a bzip2-compressed file", "decompress it first (`bunzip2 {}`)"),
    b"\xfd7zXZ\x00": ("an xz-compressed file", "decompress it first (`unxz {}`)"),
}


class NotJSONText(ValueError):
    """The bytes are not text in an encoding JSON allows; ``str()`` says what they
    seem to be and what to do, to follow "<path> " in a message."""


def _offset(raw: bytes, exc: UnicodeDecodeError) -> str:
    if exc.start < len(raw):
        return f"byte 0x{raw[exc.start]:02X} at offset {exc.start}"
    return "its last bytes"


def _utf8_name(path: Path) -> Path:
    return path.with_name(f"{path.stem}-utf8.json")


def decode_json_bytes(raw: bytes, path: Path | None = None) -> str:
    """The text of ``raw``: UTF-8 (a BOM dropped), or UTF-16/UTF-32 (with a BOM, or
    told by the zero bytes of its first character, as ``json.loads`` does).

    Raises NotJSONText naming the encoding the bytes seem to be in and how to convert
    them (the commands it gives name ``path``, when given).
    """
    name = "FILE" if path is None else path_argument(path)
    converted = "FILE-utf8.json" if path is None else path_argument(_utf8_name(path))
    encoding = json.detect_encoding(raw)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        failure = exc
    where = _offset(raw, failure)
    for magic, (what, todo) in _MAGIC.items():
        if raw.startswith(magic):
            raise NotJSONText(f"is {what}, not JSON text: {todo.format(name)}") from None
    if not encoding.startswith("utf-8"):
        codec = encoding.upper().replace("-SIG", "")
        how = _BOMS.get(encoding, "")
        told = f"starts with {how} byte order mark" if how else "has the zero bytes of"
        raise NotJSONText(
            f"{told} {codec} text, but is not valid {codec} ({where}: the file may be cut "
            "short or damaged); save it again as UTF-8"
        ) from None
    if b"\x00" in raw:
        raise NotJSONText(
            f"is not UTF-8 text ({where}) and holds zero bytes: is it a binary file? "
            "Give a JSON text file (UTF-8, or UTF-16 with a byte order mark)"
        ) from None
    try:
        raw.decode("cp1252")
        guess, codec = "Windows-1252 (what older Windows programs save)", "WINDOWS-1252"
    except UnicodeDecodeError:
        guess, codec = "Latin-1 (ISO-8859-1)", "LATIN1"
    raise NotJSONText(
        f"is not UTF-8 text ({where} is not UTF-8); it seems to be in a legacy 8-bit "
        f"encoding such as {guess}. Convert it to UTF-8, e.g. "
        f"`iconv -f {codec} -t UTF-8 {name} > {converted}` (or save it as UTF-8 in "
        "an editor), and give that file"
    ) from None
