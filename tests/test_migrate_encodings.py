"""v1 data and exports saved by Windows tools: UTF-16 (PowerShell's `>` and `Out-File`)
and UTF-32 are read like UTF-8; bytes in no encoding JSON allows are refused with what
they seem to be and how to convert them."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
POOL = FIXTURES / "context_files" / "3f6c1a52-8a4e-4d2b-9c1e-2b7f4e9a1c01.json"

RECORDS = [
    {
        "id": "c1",
        "title": "Windows export",
        "messages": [
            {"id": "m1", "role": "user", "content": "héllo ✓ 😀"},
            {"id": "m2", "role": "assistant", "content": "hi"},
        ],
    }
]


def cli(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), *argv],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


def texts(data_dir: Path, context_id: str) -> set[str]:
    folder = data_dir / "contexts" / context_id / "messages"
    return {json.loads(path.read_text("utf-8"))["content"] for path in folder.glob("*.json")}


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom", "utf-32"])
def test_a_contexts_json_saved_as_utf16_or_utf32_is_migrated(tmp_path: Path, encoding: str) -> None:
    text = json.dumps(RECORDS, ensure_ascii=False)
    # "utf-16" is what PowerShell 5's `>` writes (little-endian, with a BOM).
    raw = (
        b"\xfe\xff" + text.encode("utf-16-be")
        if encoding.endswith("bom")
        else text.encode(encoding)
    )
    source = tmp_path / "contexts.json"
    source.write_bytes(raw)
    data = tmp_path / "data"
    done = cli(data, "migrate", "--no-backup", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 migrated, 0 partial, 0 skipped, 0 failed; 2 message(s) migrated" in done.stdout
    assert texts(data, "c1") == {"héllo ✓ 😀", "hi"}
    # Imported, it is the same.
    other = tmp_path / "other"
    done = cli(other, "import", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    assert texts(other, "c1") == {"héllo ✓ 😀", "hi"}


def test_a_folder_with_a_utf16_per_context_file_migrates_it(tmp_path: Path) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / POOL.name).write_bytes(POOL.read_text("utf-8").encode("utf-16"))
    done = cli(tmp_path / "data", "migrate", "--no-backup", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 migrated, 0 partial, 0 skipped, 0 failed; 5 message(s) migrated" in done.stdout


def test_an_export_saved_again_as_utf16_is_imported(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    assert cli(origin, "migrate", "--no-backup", str(FIXTURES / "branches.json")).returncode == 0
    exported = tmp_path / "ctx-branches.json"
    assert cli(origin, "export", "ctx-branches", "-o", str(tmp_path)).returncode == 0
    exported.write_bytes(exported.read_text("utf-8").encode("utf-16"))
    done = cli(tmp_path / "data", "import", str(exported))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported ctx-branches ('Shared prefix'): 6 message(s)" in done.stdout


def test_legacy_or_compressed_bytes_are_refused_with_how_to_convert(tmp_path: Path) -> None:
    latin = tmp_path / "contexts.json"
    latin.write_bytes(json.dumps(RECORDS[:1]).replace("\\u00e9", "\xe9").encode("latin-1"))
    done = cli(tmp_path / "data", "migrate", "--no-backup", str(latin))
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"cm-notebook: error: {latin} is not UTF-8 text (byte 0xE9 at offset ")
    assert "it seems to be in a legacy 8-bit encoding such as Windows-1252" in line
    assert f"`iconv -f WINDOWS-1252 -t UTF-8 {latin} > {tmp_path / 'contexts-utf8.json'}`" in line
    # In a folder, the file is reported and the others are migrated.
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "a.json").write_bytes(latin.read_bytes())
    (folder / POOL.name).write_bytes(POOL.read_bytes())
    done = cli(tmp_path / "data", "migrate", "--no-backup", str(folder))
    assert done.returncode == 1
    assert "1 migrated, 0 partial, 0 skipped, 1 failed" in done.stdout
    assert "a.json is not UTF-8 text (byte 0xE9" in done.stdout
    packed = tmp_path / "packed.json"
    packed.write_bytes(gzip.compress(json.dumps(RECORDS).encode()))
    done = cli(tmp_path / "data", "migrate", "--no-backup", str(packed))
    assert done.returncode == 1
    assert f"{packed} is a gzip-compressed file, not JSON text: decompress it first" in done.stderr
