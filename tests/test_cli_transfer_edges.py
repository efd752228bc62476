"""Export and import at their edges: outputs that are not plain files, numbers Python will
not read, exports of unusual contexts, and what `check` restores on its own."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import anyio
import pytest

from cm_notebook import ContextSession
from cm_notebook.cli import main
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.testing import ScriptedProvider


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data_dir), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_showing_warnings(
    capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str
) -> tuple[int, str, str]:
    """``run``, the store's warnings shown as the command shows them (on stderr), not
    raised by the test run's filters."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", StoreWarning)
        return run(capsys, data_dir, *argv)


def export(
    capsys: pytest.CaptureFixture[str], data_dir: Path, session: ContextSession, to: Path
) -> Path:
    """``session``'s context exported as JSON to ``to`` (which is returned)."""
    assert run(capsys, data_dir, "export", session.id, "-o", str(to))[0] == 0
    return to


def a_context(data_dir: Path, replies: int = 1) -> ContextSession:
    provider = ScriptedProvider()
    for number in range(replies):
        provider.reply(f"answer {number}")
    session = ContextSession.create("edges", data_dir=data_dir, provider=provider)
    for number in range(replies):
        session.send(f"question {number}").result(30)
    return session


def test_export_into_a_pipe_writes_into_it(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    with a_context(data_dir) as session:
        pipe = tmp_path / "pipe"
        os.mkfifo(pipe)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()))
        reader.start()
        code, _out, _err = run(capsys, data_dir, "export", session.id, "-o", str(pipe))
        reader.join(timeout=30)
        assert code == 0
        assert json.loads(received[0])["metadata"]["id"] == session.id
        assert pipe.is_fifo()  # not replaced by a plain file


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_export_into_a_full_device_says_which_and_why(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    with a_context(data_dir) as session:
        code, out, err = run(capsys, data_dir, "export", session.id, "-o", "/dev/full")
    assert (code, out) == (1, "")
    assert err == (
        "cm-notebook: error: cannot write /dev/full: No space left on device; nothing else "
        "was written\n"
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize("command", ["export", "ls", "show"])
def test_a_full_standard_output_is_named(command: str, data_dir: Path) -> None:
    with a_context(data_dir) as session:
        pass
    argv = [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), command]
    argv += [] if command == "ls" else [session.id]
    with open("/dev/full", "wb") as full:
        done = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == (
        "cm-notebook: error: cannot write to standard output: No space left on device\n"
    )


#: The command line, in a child whose files may not grow past 64 bytes: a write past
#: that fails (EFBIG) instead of killing the process (SIGXFSZ). A real refusal of the
#: file system's, which root gets too.
_SMALL_FILES_ONLY = """
import resource, signal, sys
from cm_notebook.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="no file size limits here")
def test_an_export_the_file_system_refuses_says_to_choose_another_place_with_o(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    # The store's wording (a data directory to choose, data_dir=) is not the export's:
    # -o chose where it goes.
    with a_context(data_dir, replies=3) as session:
        pass
    target = tmp_path / "out.json"
    argv = ["--data-dir", str(data_dir), "export", session.id, "-o", str(target)]
    done = subprocess.run(
        [sys.executable, "-c", _SMALL_FILES_ONLY, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == (
        f"cm-notebook: error: cannot write {target}: File too large; choose another place "
        "with -o (nothing was written)\n"
    )
    assert os.listdir(tmp_path) == [data_dir.name]  # no half file, no temporary file
    too_long = tmp_path / ("x" * 300 + ".json")
    code, _out, err = run(capsys, data_dir, "export", session.id, "-o", str(too_long))
    assert code == 1
    assert err == (
        f"cm-notebook: error: cannot write {too_long}: File name too long; choose another "
        "place with -o (nothing was written)\n"
    )


def _write_access_is_checked(tmp_path: Path) -> bool:
    # Not for root (or a process with CAP_DAC_OVERRIDE), nor on Windows.
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    try:
        (probe / "file").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
    return False


def test_an_export_into_a_folder_without_write_access_says_to_choose_another_place(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    if not _write_access_is_checked(tmp_path):
        pytest.skip("this process may write into any folder")
    with a_context(data_dir) as session:
        pass
    for mode, folder in ((0o555, tmp_path / "read-only"), (0o000, tmp_path / "forbidden")):
        folder.mkdir(mode=mode)
        try:
            for given in (str(folder / "e.json"), str(folder), f"{folder}/"):
                code, out, err = run(capsys, data_dir, "export", session.id, "-o", given)
                assert (code, out) == (1, "")
                assert err.startswith(f"cm-notebook: error: cannot write {folder}{os.sep}")
                assert err.endswith(
                    ": Permission denied; choose another place with -o (nothing was written)\n"
                )
        finally:
            folder.chmod(0o755)


def test_export_through_a_link_writes_the_file_it_names(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    with a_context(data_dir) as session:
        real = tmp_path / "real.json"
        real.write_text("old")
        link = tmp_path / "link.json"
        link.symlink_to(real)
        code, _out, _err = run(capsys, data_dir, "export", session.id, "-o", str(link))
        assert code == 0
        assert link.is_symlink()
        assert json.loads(real.read_text())["metadata"]["id"] == session.id


def test_a_number_too_long_for_python_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    with a_context(data_dir) as session:
        exported = export(capsys, data_dir, session, tmp_path / "e.json")
        document = json.loads(exported.read_text())
        document["metadata"]["extra"] = {"n": 1}
        text = json.dumps(document).replace('{"n": 1}', '{"n": ' + "9" * 5000 + "}")
        exported.write_text(text)
        folder = data_dir / "contexts" / session.id
        metadata = (folder / "metadata.json").read_text()
    code, _out, err = run(capsys, tmp_path / "other", "import", str(exported))
    assert code == 1, err
    assert "Traceback" not in err
    assert "it is past the 4,300-digit limit for a number" in err
    # In a stored file it is damage like any other: the listing goes on without it.
    (folder / "metadata.json").write_text(
        metadata.replace('"title"', '"huge": ' + "9" * 5000 + ', "title"', 1)
    )
    code, _out, err = run_showing_warnings(capsys, data_dir, "ls")
    assert "past the 4,300-digit limit for a number" in err
    assert "Traceback" not in err
    assert code == 0


def test_an_export_with_forked_branches_named_like_the_placeholder_imports(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    with a_context(data_dir) as session:
        reply = session.history()[-1]
        session.branch("import-0", from_message=reply.id)
        session.branch("import-1", from_message=reply.id)
        session.switch("import-0")
        session.delete_branch("main")
        exported = export(capsys, data_dir, session, tmp_path / "e.json")
    code, _out, err = run(capsys, tmp_path / "other", "import", str(exported))
    assert code == 0, err
    with ContextSession.open(session.id, data_dir=tmp_path / "other") as imported:
        assert sorted(imported.branches) == ["import-0", "import-1"]
        assert imported.active_branch == "import-0"


def test_a_json_round_trip_keeps_everything_but_updated_at(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    with a_context(data_dir, replies=2) as session:
        question = session.history()[0]
        session.edit(question.id, "question 0, again", branch="alt").result(30)
        session.branch("later", from_message=session.history()[-1].id)
        exported = export(capsys, data_dir, session, tmp_path / "e.json")
    document = json.loads(exported.read_text())
    # Dated well before the import: a branch stamped with the import's time shows.
    for number, branch in enumerate(document["metadata"]["branches"].values()):
        branch["created_at"] = f"2021-0{number + 1}-02T03:04:05.678901Z"
    exported.write_text(json.dumps(document))
    other = tmp_path / "other"
    assert run(capsys, other, "import", str(exported))[0] == 0
    again = json.loads(export(capsys, other, session, tmp_path / "again.json").read_text())
    for each in (document, again):
        del each["exported_at"], each["metadata"]["updated_at"]
    assert again == document
    assert [b["forked_from"] is None for b in again["metadata"]["branches"].values()] == [
        True,
        False,
        False,
    ]


def test_a_branch_whose_head_is_lost_blocks_only_the_whole_export_which_says_what_to_do(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    with a_context(data_dir, replies=2) as session:
        first_reply = session.history()[1]
        session.branch("side", from_message=first_reply.id)
    # main's head names a message whose file and index entry are gone (lost damage).
    metadata_file = data_dir / "contexts" / session.id / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["branches"]["main"]["head"] = "m01nonexistent0000000"
    metadata_file.write_text(json.dumps(metadata))
    code, out, err = run(capsys, data_dir, "export", session.id, "-o", str(tmp_path / "e.json"))
    assert (code, out) == (1, "")
    assert err == (
        f"cm-notebook: error: context {session.id!r} cannot be exported whole: branch "
        "'main' points at message 'm01nonexistent0000000', which is missing. Export each "
        "branch that still reads on its own with --branch ('side'); or point the broken "
        "branch at a message that is there, or delete it (from Python: "
        "FileStore.set_branch_head or FileStore.delete_branch; cm-notebook has no command "
        "for it), then export the whole context again. `cm-notebook --data-dir "
        f"{shlex.quote(str(data_dir))} check {session.id}` "
        "lists the damage.\n"
    )
    # Each remedy it names works.
    side = tmp_path / "side.json"
    code, _out, err = run(
        capsys, data_dir, "export", session.id, "--branch", "side", "-o", str(side)
    )
    assert code == 0, err
    assert json.loads(side.read_text())["branch"] == "side"

    async def point_main_back() -> None:
        async with FileStore(data_dir) as store:
            await store.set_branch_head(session.id, "main", first_reply.id)

    anyio.run(point_main_back)
    code, _out, err = run(capsys, data_dir, "export", session.id, "-o", str(tmp_path / "e.json"))
    assert code == 0, err


def test_no_backup_on_an_export_file_imports_and_says_it_does_nothing(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    with a_context(data_dir) as session:
        exported = export(capsys, data_dir, session, tmp_path / "e.json")
    other = tmp_path / "other"
    code, out, err = run(capsys, other, "import", str(exported), "--no-backup")
    assert code == 0
    assert out.startswith(f"imported {session.id} ")
    assert err == (
        "cm-notebook: note: --no-backup is for v1 data; an export file is never copied\n"
    )


def test_an_export_of_a_cut_short_import_is_not_imported_as_whole(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    # Made by a version that exported such a context: it may hold only a part.
    with a_context(data_dir) as session:
        exported = export(capsys, data_dir, session, tmp_path / "e.json")
    document = json.loads(exported.read_text())
    document["metadata"]["tags"] = ["kept", "unfinished-import"]
    exported.write_text(json.dumps(document))
    other = tmp_path / "other"
    code, out, err = run(capsys, other, "import", str(exported))
    assert (code, out) == (1, "")
    assert err == (
        f"cm-notebook: error: {exported}: this export of context {session.id!r} was made "
        "while its import was unfinished (the process was stopped), so it may hold only "
        "part of that context: import the file that import was reading instead; to import "
        "this part all the same, remove 'unfinished-import' from the tags in its metadata "
        "first\n"
    )
    assert not (other / "contexts").exists() or not os.listdir(other / "contexts")
    # As it says: without the mark, it imports (as the part it is, on the user's word).
    document["metadata"]["tags"] = ["kept"]
    exported.write_text(json.dumps(document))
    assert run(capsys, other, "import", str(exported))[0] == 0
    with ContextSession.open(session.id, data_dir=other) as imported:
        assert imported.metadata.tags == ["kept"]


def test_an_import_of_a_case_twin_id_names_the_context_there_and_an_rm_that_works(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    with a_context(data_dir) as session:
        exported = export(capsys, data_dir, session, tmp_path / "e.json")
    document = json.loads(exported.read_text())
    twin = session.id.upper()
    document["metadata"]["id"] = twin
    exported.write_text(json.dumps(document))
    code, _out, err = run(capsys, data_dir, "import", str(exported))
    assert code == 1
    assert err == (
        f"cm-notebook: error: context id {twin!r} differs only in case from the context "
        f"{session.id!r} in {data_dir} (the two would be one folder on Windows and macOS): "
        "import this copy beside it with --new-id, or remove the one there first "
        f"(`cm-notebook --data-dir {shlex.quote(str(data_dir))} rm {session.id}`)\n"
    )
    # The remedy it names works: that rm, then the import.
    assert run(capsys, data_dir, "rm", session.id, "--yes")[0] == 0
    code, out, err = run(capsys, data_dir, "import", str(exported))
    assert (code, err) == (0, "")
    assert out.startswith(f"imported {twin} ")


@pytest.mark.parametrize("tokens", ["0", "-3"])
def test_demo_refuses_a_length_limit_below_one_before_making_a_context(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tokens: str
) -> None:
    code, _out, err = run(capsys, data_dir, "demo", "--max-tokens", tokens)
    assert code == 2
    assert "argument --max-tokens: must be at least 1" in err
    assert ContextSession.list(data_dir) == []


def test_check_restores_a_damaged_file_the_journal_still_holds(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    with a_context(data_dir) as session:
        reply = session.history()[-1]
    path = data_dir / "contexts" / session.id / "messages" / f"{reply.id}.json"
    path.write_bytes(b"\0" * path.stat().st_size)  # what a power loss may leave
    code, out, err = run_showing_warnings(capsys, data_dir, "check")
    assert "restored from the journal" in err
    assert code == 0, out
    assert json.loads(path.read_text())["content"] == "answer 0"


def test_check_of_an_invalid_id_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, _out, err = run(capsys, data_dir, "check", "../x")
    assert code == 2
    assert "context id '../x' is not valid" in err
