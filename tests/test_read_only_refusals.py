"""Writes refused in a data folder that may only be read: what each says, and what to do.

A researcher opening a colleague's folder (mounted read-only, or without write
permission) learns, from every write refused there, that its contexts can still be
read, how to keep working on them (a writable copy of the folder, or an export
imported into a data directory of their own) and how to work elsewhere: an import
into it, a change of its allow-list, and the store's own writes alike, each a
StoreIOError without a bare errno. A CSV file written there is the caller's own path:
its remedy is another path. The folder is made read-only for real (see
test_store_journal_cut_read_only.py); nothing in it changes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_store_journal_cut_read_only import _files, _make_read_only
from test_store_journal_cut_read_only import read_only as read_only

from cm_notebook import ContextSession
from cm_notebook._approval_log import AllowLists, ApprovalLog
from cm_notebook.approvals import ApprovalRecord
from cm_notebook.cli import main
from cm_notebook.errors import StoreIOError
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")

#: What a write refused in a folder that may only be read is (read-only as root under a
#: bind mount, permission denied otherwise).
REFUSED = (errno.EROFS, errno.EACCES)


def _context(data_dir: Path) -> str:
    session = ContextSession.create(
        "shared", provider=ScriptedProvider(["an answer"]), data_dir=data_dir
    )
    try:
        session.send("a question").result(30)
    finally:
        session.close()
    return session.id


def _advised_for_a_data_folder(error: BaseException) -> str:
    # Both ways on: keep these contexts (a copy, or export and import), or work elsewhere.
    text = str(error)
    assert isinstance(error, StoreIOError), repr(error)
    assert error.errno in REFUSED
    assert "[Errno" not in text, text
    assert "To keep working on these contexts, copy the data directory" in text, text
    assert "`cm-notebook export` a context" in text
    assert "choose a writable data directory" in text
    return text


def test_an_import_into_a_read_only_folder_says_what_to_do(
    read_only: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, view = read_only
    context_id = _context(data_dir)
    exported = tmp_path / "shared.json"
    with ContextSession.open(context_id, provider=ScriptedProvider(), data_dir=data_dir) as s:
        exported.write_text(s.export().to_json())
    _make_read_only(data_dir, view)
    before = _files(view)

    with pytest.raises(StoreIOError) as caught:
        ContextSession.from_export(exported, data_dir=view, new_id=True)
    text = _advised_for_a_data_folder(caught.value)
    assert ".import-" in text  # the file it could not make, named
    assert "its contexts can be read, not changed" in text or "permission denied" in text

    # The command line says it on one line, with its own option for the data directory.
    code = main(["--data-dir", str(view), "import", str(exported), "--new-id"])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("cm-notebook: error: "), err
    assert "[Errno" not in err, err
    assert "data_dir=" not in err, err
    assert "(--data-dir or $CM_NOTEBOOK_DATA_DIR)" in err
    assert f"`cm-notebook --data-dir {view} export` a context" in err  # from where it is
    assert "with cm-notebook import" in err  # into one's own: no --data-dir added
    assert _files(view) == before


def test_the_allow_list_of_a_read_only_folder_refuses_with_the_stores_advice(
    read_only: tuple[Path, Path],
) -> None:
    data_dir, view = read_only
    context_id = _context(data_dir)
    _make_read_only(data_dir, view)
    before = _files(view)

    with ContextSession.open(context_id, provider=ScriptedProvider(), data_dir=view) as session:
        for change in (
            lambda: session.revoke("get_weather"),
            lambda: session.allow("get_weather", scope="context"),
        ):
            with pytest.raises(StoreIOError) as caught:
                change()
            text = _advised_for_a_data_folder(caught.value)
            assert text.startswith("the allow-list in "), text
            assert "could not be changed: " in text
        # Nothing is allowed for the context, and this session's own allowance works.
        session.allow("get_weather")
        assert session.allowed_tools() == {"session": ["get_weather"], "context": []}
    assert _files(view) == before


def test_a_decision_not_logged_in_a_read_only_folder_says_why(
    read_only: tuple[Path, Path],
) -> None:
    # The audit log's append (a turn's, after the decision was applied): the store's
    # remedy, not "[Errno 30] ... fix the folder's permissions".
    data_dir, view = read_only
    context_id = _context(data_dir)
    _make_read_only(data_dir, view)
    folder = view / "contexts" / context_id / "approvals"
    record = ApprovalRecord(
        tool_call_id="call_1",
        tool="get_weather",
        branch="main",
        message_id="m1",
        approved=True,
    )
    with pytest.raises(StoreIOError) as caught:
        ApprovalLog(folder).append(record)
    text = _advised_for_a_data_folder(caught.value)
    assert text.startswith(f"the approval log {folder / 'log.jsonl'} was not written"), text
    assert "(the decision itself was applied)" in text


def test_a_csv_file_in_a_read_only_folder_is_told_to_go_elsewhere(
    read_only: tuple[Path, Path],
) -> None:
    # The caller chose the path: no data directory to copy or choose.
    data_dir, view = read_only
    context_id = _context(data_dir)
    _make_read_only(data_dir, view)
    before = _files(view)
    target = view / "study.csv"

    session = ContextSession.open(context_id, provider=ScriptedProvider(), data_dir=view)
    with session, pytest.raises(StoreIOError) as caught:
        session.to_csv(target)
    text = str(caught.value)
    assert caught.value.errno in REFUSED
    assert caught.value.path == target
    assert str(target) in text
    assert text.endswith("choose another path for the CSV file (nothing was written)."), text
    assert "data dir" not in text, text
    assert "data_dir" not in text, text
    assert _files(view) == before


def test_an_allow_list_or_log_the_file_system_refuses_to_read_is_said_so(
    tmp_path: Path,
) -> None:
    # A name longer than the file system takes: the refusal, translated as the store's
    # reads are (StoreIOError, no errno in brackets), not a bare "[Errno 36]".
    folder = tmp_path / ("a" * 300) / "approvals"
    for read in (AllowLists(folder).context_tools, ApprovalLog(folder).read):
        with pytest.raises(StoreIOError) as caught:
            read()
        assert caught.value.errno == errno.ENAMETOOLONG
        assert "[Errno" not in str(caught.value)
        assert "could not read" in str(caught.value)


#: Reads the allow-list of the folder given, and prints what it was told.
_READ_ALLOWED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cm_notebook._approval_log import AllowLists
    from cm_notebook.errors import CMError
    try:
        AllowLists(Path(sys.argv[1])).context_tools()
    except CMError as exc:
        print(type(exc).__name__, exc, sep=": ")
    """
)


def test_an_allow_list_that_may_not_be_read_is_not_called_damaged(tmp_path: Path) -> None:
    # Permission denied is no damage: "delete it" would throw away the allowances.
    folder = tmp_path / "approvals"
    folder.mkdir()
    allowed = folder / "allowed.json"
    allowed.write_text('{"tools": ["get_weather"]}')
    allowed.chmod(0o000)
    command = [sys.executable, "-c", _READ_ALLOWED, str(folder)]
    if os.geteuid() == 0:
        # Root reads whatever the permissions say, unless it gives up that power.
        without = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={without}", f"--inh-caps={without}", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        pytest.skip("setpriv is not installed")
    finally:
        allowed.chmod(0o644)
    said = done.stdout.strip()
    assert said.startswith("StoreIOError: permission denied to read "), (said, done.stderr)
    assert "damaged" not in said, said
    assert "delete it" not in said, said
    assert allowed.read_text() == '{"tools": ["get_weather"]}'
